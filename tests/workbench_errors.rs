//! What a user sees when a policy is wrong: each message names the file, line and column and
//! says how to fix it. One test per mistake, through the commands a user runs.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Policy {
    tmp: tempfile::TempDir,
}

impl Policy {
    fn new(script: &str, plugins: &[(&str, &str)]) -> Policy {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("scripts")).unwrap();
        std::fs::create_dir(tmp.path().join("plugins")).unwrap();
        std::fs::write(tmp.path().join("scripts/boot.rhai"), script).unwrap();
        for (n, t) in plugins {
            std::fs::write(tmp.path().join("plugins").join(n), t).unwrap();
        }
        Policy { tmp }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// Runs `pixie <cmd> --scripts … --plugins … <args>`: (exit code, stdout + stderr) with the
    /// temporary folder shown as `POLICY/`.
    fn run(&self, cmd: &str, args: &[&str]) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_pixie"))
            .arg(cmd)
            .arg("--scripts")
            .arg(self.path("scripts"))
            .arg("--plugins")
            .arg(self.path("plugins"))
            .args(args)
            .env("PIXIE_LOG", "off")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text.replace(&format!("{}/", self.tmp.path().display()), "POLICY/"))
    }

    fn simulate(&self) -> (i32, String) {
        self.run("simulate", &["--mac", "52:54:00:00:00:01", "--arch", "x64-uefi"])
    }
}

fn has(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "{text}\n--- lacks: {p}");
    }
}

#[test]
fn a_typo_in_a_script() {
    // `retrun` for `return`: a parse error at the word after it.
    let p = Policy::new("fn boot(req) {\n    if req.ipxe {\n        retrun #{ filename: \"boot.ipxe\" };\n    }\n}\n", &[]);
    let (code, text) = p.run("check", &[]);
    assert_eq!(code, 1, "{text}");
    has(&text, &["POLICY/scripts/boot.rhai:3:16: ", "`retrun` is not a keyword: did you mean `return`?"]);

    // An unclosed brace: the end of the file, and what to look for.
    let p = Policy::new("fn boot(req) {\n    #{ filename: \"x\" }\n", &[]);
    let (code, text) = p.run("check", &[]);
    assert_eq!(code, 1);
    has(&text, &["POLICY/scripts/boot.rhai:3:1: ", "unclosed `{`"]);
}

#[test]
fn an_unknown_request_field() {
    let p = Policy::new("fn boot(req) {\n    if req.arch_nmae == \"x64-uefi\" { return #{ filename: \"a\" }; }\n}\n", &[]);
    let (code, text) = p.simulate();
    assert_eq!(code, 1, "{text}");
    has(&text, &["POLICY/scripts/boot.rhai:2:11: ", "`arch_nmae` is not a field", "did you mean `arch_name`?"]);
}

#[test]
fn an_unknown_request_field_in_a_cases_file() {
    let p = Policy::new("fn boot(req) { () }", &[]);
    std::fs::write(
        p.path("cases.toml"),
        "[[case]]\nname = \"x\"\nmac = \"52:54:00:00:00:01\"\nhostnmae = \"a\"\nexpect = { silent = true }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pixie")).arg("test").arg(p.tmp.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // toml names the line and column, the key, and the keys it knows.
    has(&err, &["cases.toml", "line 4, column 1", "unknown field `hostnmae`", "`hostname`"]);
}

#[test]
fn a_wrong_type_in_the_returned_map() {
    let p = Policy::new(
        "fn boot(req) {\n    #{\n        filename: \"ipxe.efi\",\n        next_server: 10,\n    }\n}\n",
        &[],
    );
    let (code, text) = p.simulate();
    assert_eq!(code, 1, "{text}");
    has(&text, &["POLICY/scripts/boot.rhai:4:9: ", "`next_server` must be a string, not an integer (10)"]);

    let p = Policy::new("fn boot(req) {\n  #{ filename: \"a\", options: #{ \"3\": [\"10.0.0.300\"] } }\n}\n", &[]);
    let (_, text) = p.simulate();
    has(&text, &["POLICY/scripts/boot.rhai:2:33: ", "option 3: an array must hold IPv4 address strings"]);

    let p = Policy::new("fn boot(req) {\n  #{ filenmae: \"a\" }\n}\n", &[]);
    let (_, text) = p.simulate();
    has(&text, &["POLICY/scripts/boot.rhai:2:6: ", "unknown key `filenmae`", "did you mean `filename`?"]);
}

#[test]
fn an_import_of_a_missing_plugin() {
    let p = Policy::new(
        "// policy\nimport \"inventroy\" as inv;\nfn boot(req) { () }\n",
        &[("inventory.rhai", "fn find(x) { x }"), ("arch.rhai", "fn f() { 1 }")],
    );
    let (code, text) = p.run("check", &[]);
    assert_eq!(code, 1, "{text}");
    has(
        &text,
        &[
            "POLICY/scripts/boot.rhai:2:8: ",
            "import \"inventroy\": cannot open POLICY/plugins/inventroy.rhai: no such plugin",
            "did you mean `import \"inventory\"`?",
            "plugins in POLICY/plugins: arch, inventory",
        ],
    );
}

#[test]
fn a_failing_case_prints_expected_and_got_and_fails() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("cases.toml"),
        format!(
            "[policy]\nscripts = \"{0}/scripts\"\nplugins = \"{0}/plugins\"\n\
             [[case]]\nname = \"right\"\nmac = \"52:54:00:00:00:01\"\narch = \"x64-uefi\"\nexpect = {{ filename = \"ipxe.efi\" }}\n\
             [[case]]\nname = \"wrong file\"\nmac = \"52:54:00:00:00:01\"\narch = \"x64-uefi\"\nexpect = {{ filename = \"snp.efi\", options = {{ \"3\" = [\"10.0.0.1\"] }} }}\n\
             [[case]]\nname = \"wrong silence\"\nmac = \"52:54:00:00:00:01\"\narch = \"x86-bios\"\nexpect = {{ silent = true }}\n",
            root.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pixie")).arg("test").arg(tmp.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    has(
        &text,
        &[
            "  ok    right\n",
            "  FAIL  wrong file\n",
            "filename: expected \"snp.efi\"\n",
            "got      \"ipxe.efi\"\n",
            "option 3: expected [\"10.0.0.1\"]\n",
            "got      (not set)\n",
            "  FAIL  wrong silence\n",
            "decision: expected silence (the policy ignores this client)\n",
            "got      boot undionly.kpxe\n",
            "3 case(s): 1 passed, 2 failed\n",
        ],
    );
    has(&String::from_utf8_lossy(&out.stderr), &["2 case(s) failed"]);
}
