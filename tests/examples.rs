//! Every example's policy passes its own cases (`pixie test examples/NAME`), as do the shared
//! plugins' cases and the shipped policy's; the examples are complete, and the plugin copies
//! they carry are the shared plugins, unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `pixie test DIR`: passes, with at least `min` cases and no failure.
fn pixie_test(dir: &Path, min: usize) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixie")).current_dir(root()).arg("test").arg(dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pixie test {}:\n{stdout}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or("");
    let n: usize = summary.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(n >= min, "{}: only {n} case(s): {summary}", dir.display());
    assert!(summary.ends_with(" 0 failed"), "{summary}");
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_is_there_and_complete() {
    let names: Vec<String> =
        examples().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in [
        "per-arch",
        "per-host",
        "ipxe-chain",
        "boot-menu",
        "maintenance-window",
        "install-once",
        "proxy-beside-existing-dhcp",
        "full-dhcp-lab",
        "relay",
    ] {
        assert!(names.iter().any(|n| n == want), "examples/{want} is missing");
    }
    for dir in examples() {
        for f in ["README.md", "cases.toml", "scripts"] {
            assert!(dir.join(f).exists(), "{} has no {f}", dir.display());
        }
    }
}

#[test]
fn every_examples_cases_pass() {
    for dir in examples() {
        pixie_test(&dir, 5);
    }
}

#[test]
fn the_shared_plugins_cases_pass() {
    pixie_test(&root().join("plugins/tests"), 20);
}

#[test]
fn the_shipped_policys_cases_pass() {
    pixie_test(root(), 5);
}

/// Examples carry copies of the shared plugins (imports never leave a policy's plugins
/// folder); a copy that drifted from plugins/ would test something nobody ships.
#[test]
fn example_plugins_are_the_shared_plugins() {
    for dir in examples() {
        let Ok(rd) = std::fs::read_dir(dir.join("plugins")) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            let shared = root().join("plugins").join(p.file_name().unwrap());
            if shared.is_file() {
                assert_eq!(
                    std::fs::read_to_string(&p).unwrap(),
                    std::fs::read_to_string(&shared).unwrap(),
                    "{} differs from {}; copy it again: cp {} {}",
                    p.display(),
                    shared.display(),
                    shared.display(),
                    p.display()
                );
            }
        }
    }
}

/// `pixie check` accepts every example and lists its hooks.
#[test]
fn every_example_checks() {
    for dir in examples() {
        let out = Command::new(env!("CARGO_BIN_EXE_pixie"))
            .arg("check")
            .arg("--scripts")
            .arg(dir.join("scripts"))
            .arg("--plugins")
            .arg(dir.join("plugins"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {stdout}", dir.display());
        assert!(stdout.contains("ok (boot"), "{}: {stdout}", dir.display());
    }
}
