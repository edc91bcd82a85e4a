//! `pixie replay` and `pixie simulate --from-capture` on real firmware captures: the shared
//! reference captures (`../shared/fixtures`, `SKIPPED` when absent) and the project's own
//! (`tests/captures/*.pcap*`, checked for whatever is there).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const MAC: &str = "52:54:00:77:00:10";

fn pixie() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pixie"));
    c.current_dir(root());
    c
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `pixie replay --json` with the shipped policy: one JSON object per request.
fn replay(capture: &Path, extra: &[&str]) -> Vec<Value> {
    let out = pixie().arg("replay").arg(capture).arg("--json").args(extra).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}: {stdout}{}", capture.display(), String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

/// (arch, phase, decision) of each row, decision being the file name or `skip`/`ignore`/….
fn summary(rows: &[Value]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|r| {
            let d = match r["decision"].as_str().unwrap() {
                "boot" => r["filename"].as_str().unwrap_or("(none)").to_string(),
                other => other.to_string(),
            };
            (r["arch"].as_str().unwrap().to_string(), r["phase"].as_str().unwrap().to_string(), d)
        })
        .collect()
}

/// (arch, phase, decision) as expected.
type Row = (&'static str, &'static str, &'static str);

fn rows(expected: &[Row]) -> Vec<(String, String, String)> {
    expected.iter().map(|(a, p, d)| (a.to_string(), p.to_string(), d.to_string())).collect()
}

/// `../shared/fixtures` beside the checkout (or beside a worktree's parent folder), or
/// `$PIXIE_SHARED_FIXTURES`.
fn shared_fixtures() -> Option<PathBuf> {
    let env = std::env::var_os("PIXIE_SHARED_FIXTURES").map(PathBuf::from);
    env.into_iter()
        .chain(["../shared/fixtures", "../../shared/fixtures"].map(|p| root().join(p)))
        .find(|d| d.is_dir())
}

#[test]
fn replay_of_every_shared_fixture_gives_the_shipped_policys_decisions() {
    let Some(dir) = shared_fixtures() else {
        eprintln!("SKIPPED: ../shared/fixtures is absent");
        return;
    };
    // What the shipped policy (scripts/boot.rhai) decides for each firmware request, in
    // proxyDHCP mode: DHCPREQUESTs on port 67 are the network DHCP server's.
    let skip = "skip";
    let expected: &[(&str, &[Row])] = &[
        // SeaBIOS + iPXE ROM: iPXE already runs, so it gets its script.
        ("qemu-ipxe-bios-dnsmasq.pcap", &[("x86-bios", "discover", "boot.ipxe"), ("x86-bios", "discover", "boot.ipxe"), ("x86-bios", "request", skip)]),
        ("qemu-ipxe-bios-dnsmasq-proxy.pcap", &[("x86-bios", "discover", "boot.ipxe"), ("x86-bios", "request", skip), ("x86-bios", "proxy-4011", "boot.ipxe")]),
        // OVMF's own PXE (EDK2): chain-load iPXE.
        ("ovmf-uefi-dnsmasq.pcap", &[("x64-uefi", "discover", "ipxe.efi"), ("x64-uefi", "request", skip)]),
        ("ovmf-uefi-dnsmasq-proxy.pcap", &[("x64-uefi", "discover", "ipxe.efi"), ("x64-uefi", "request", skip), ("x64-uefi", "proxy-4011", "ipxe.efi")]),
        // OVMF + iPXE EFI ROM.
        ("ovmf-ipxe-efi-dnsmasq.pcap", &[("x64-uefi", "discover", "boot.ipxe"), ("x64-uefi", "discover", "boot.ipxe"), ("x64-uefi", "request", skip)]),
        ("ovmf-ipxe-efi-dnsmasq-proxy.pcap", &[("x64-uefi", "discover", "boot.ipxe"), ("x64-uefi", "discover", "boot.ipxe"), ("x64-uefi", "request", skip), ("x64-uefi", "proxy-4011", "boot.ipxe")]),
    ];
    let mut seen = 0;
    for (file, want) in expected {
        let path = dir.join(file);
        if !path.is_file() {
            eprintln!("SKIPPED: {} is absent", path.display());
            continue;
        }
        let got = replay(&path, &[]);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r["mac"], MAC, "{file} row {i}");
            assert_eq!(r["index"], i + 1, "{file} row {i}");
        }
        assert_eq!(summary(&got), rows(want), "{file}");
        // The skip says why; --all asks the policy anyway.
        let reqs: Vec<&Value> = got.iter().filter(|r| r["phase"] == "request").collect();
        assert!(reqs.iter().all(|r| r["reason"].as_str().unwrap().contains("DHCP server")), "{file}");
        let all = replay(&path, &["--all"]);
        assert!(all.iter().all(|r| r["decision"] == "boot"), "{file}: {all:?}");
        seen += 1;
    }
    // Every *.pcap in the folder is covered above, so a new fixture gets expectations.
    let listed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".pcap") || n.ends_with(".pcapng"))
        .collect();
    for n in &listed {
        assert!(expected.iter().any(|(f, _)| f == n), "{n} has no expected replay in this test");
    }
    assert!(seen > 0);
}

#[test]
fn replay_table_and_time_used() {
    let Some(dir) = shared_fixtures() else {
        eprintln!("SKIPPED: ../shared/fixtures is absent");
        return;
    };
    let cap = dir.join("ovmf-uefi-dnsmasq-proxy.pcap");
    let out = pixie().arg("replay").arg(&cap).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("#") && lines[0].contains("MAC") && lines[0].contains("DECISION"), "{text}");
    assert!(lines[1].contains("+0.000") && lines[1].contains(MAC) && lines[1].contains("x64-uefi"), "{text}");
    assert!(lines[1].trim_end().ends_with("ipxe.efi"), "{text}");
    assert!(lines[3].contains("proxy-4011"), "{text}");

    // A time-based policy sees the capture's own time, or --at.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("scripts")).unwrap();
    std::fs::write(tmp.path().join("scripts/boot.rhai"), "fn boot(req) { #{ filename: now().date } }").unwrap();
    let (scripts, plugins) = (tmp.path().join("scripts"), tmp.path().join("plugins"));
    let args = ["--scripts", scripts.to_str().unwrap(), "--plugins", plugins.to_str().unwrap()];
    let got = replay(&cap, &args);
    let captured = got[0]["captured_at"].as_str().unwrap();
    assert_eq!(got[0]["filename"].as_str().unwrap(), &captured[..10]);
    assert_eq!(got[0]["now"].as_str().unwrap()[..19], captured[..19]);
    let mut with_at = args.to_vec();
    with_at.extend(["--at", "2030-01-02T03:04:05+00:00"]);
    let got = replay(&cap, &with_at);
    assert_eq!(got[0]["filename"], "2030-01-02");
    assert_eq!(got[0]["now"], "2030-01-02T03:04:05+00:00");
}

#[test]
fn simulate_from_capture_takes_the_nth_request() {
    let Some(dir) = shared_fixtures() else {
        eprintln!("SKIPPED: ../shared/fixtures is absent");
        return;
    };
    let cap = dir.join("ovmf-uefi-dnsmasq-proxy.pcap");
    let out = pixie().args(["simulate", "--json", "--index", "3", "--from-capture"]).arg(&cap).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["filename"], "ipxe.efi");
    assert_eq!(v["request"]["phase"], "proxy-4011");
    assert_eq!(v["request"]["mac"], MAC);
    assert_eq!(v["request"]["arch"], "x64-uefi");

    let out = pixie().args(["simulate", "--index", "9", "--from-capture"]).arg(&cap).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has 3 client request(s)") && err.contains("--index 9"), "{err}");
}

/// The project's own captures (recorded by the e2e harness): whatever is there must replay,
/// each request with the client's MAC and architecture and a decision, never an error.
#[test]
fn replay_of_the_projects_own_captures() {
    let dir = root().join("tests/captures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        eprintln!("SKIPPED: no captures in tests/captures yet");
        return;
    }
    for f in &files {
        let got = replay(f, &[]);
        for r in &got {
            let what = format!("{} #{}", f.display(), r["index"]);
            let decision = r["decision"].as_str().unwrap();
            assert_ne!(decision, "error", "{what}: {r}");
            assert_ne!(decision, "malformed", "{what}: {r}");
            let mac = r["mac"].as_str().unwrap();
            assert_eq!(mac.len(), 17, "{what}: MAC {mac:?}");
            if decision == "boot" {
                assert!(r["filename"].as_str().is_some_and(|f| !f.is_empty()), "{what}: {r}");
            }
        }
    }
}

#[test]
fn a_damaged_capture_is_an_error_that_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("junk.pcap");
    std::fs::write(&f, b"this is not a capture").unwrap();
    let out = pixie().arg("replay").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.pcap") && err.contains("not a pcap"), "{err}");
}

/// A classic pcap holding one Ethernet/IPv6/UDP frame per payload (port 546 → 547).
fn v6_capture(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    pcap.extend_from_slice(&65535u32.to_le_bytes());
    pcap.extend_from_slice(&1u32.to_le_bytes());
    for (i, p) in payloads.iter().enumerate() {
        let mut f = vec![0x33, 0x33, 0, 1, 0, 2, 0x52, 0x54, 0, 0x77, 0, 0x10, 0x86, 0xdd];
        let ulen = (8 + p.len()) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&ulen.to_be_bytes());
        f.extend_from_slice(&[17, 1]);
        f.extend_from_slice(&"fe80::5054:ff:fe77:10".parse::<std::net::Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&"ff02::1:2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&546u16.to_be_bytes());
        f.extend_from_slice(&547u16.to_be_bytes());
        f.extend_from_slice(&ulen.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(p);
        pcap.extend_from_slice(&(100 + i as u32).to_le_bytes());
        pcap.extend_from_slice(&0u32.to_le_bytes());
        pcap.extend_from_slice(&(f.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(f.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&f);
    }
    pcap
}

fn v6_message(msg_type: u8, opts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![msg_type, 0, 0, 1];
    for (code, v) in opts {
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(&(v.len() as u16).to_be_bytes());
        b.extend_from_slice(v);
    }
    b
}

/// DHCPv6 (RFC 5970) requests are decided like v4 ones: EDK2's PXEv6 Solicit (DUID-UUID, arch 7,
/// vendor class with enterprise 343) reaches the policy with family v6, the UUID in canonical
/// form and the MAC from the frame; a non-PXE Solicit is skipped; a Release is not listed.
#[test]
fn replay_decides_dhcpv6_requests() {
    let mut duid = vec![0, 4];
    duid.extend_from_slice(&[0xde, 0xc0, 0x57, 0x7e, 0x77, 0, 0, 0x40, 0x80, 0, 0x52, 0x54, 0, 0x77, 0, 0x10]);
    let vc = b"PXEClient:Arch:00007:UNDI:003000";
    let mut vendor = 343u32.to_be_bytes().to_vec();
    vendor.extend_from_slice(&(vc.len() as u16).to_be_bytes());
    vendor.extend_from_slice(vc);
    let pxe = v6_message(1, &[(1, duid.clone()), (61, vec![0, 7]), (62, vec![1, 3, 0]), (16, vendor)]);
    let plain = v6_message(1, &[(1, vec![0, 3, 0, 1, 0x52, 0x54, 0, 0, 0, 9])]);
    let release = v6_message(8, &[(1, duid)]);
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("v6.pcap");
    std::fs::write(&cap, v6_capture(&[pxe, plain, release])).unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::write(
        scripts.join("boot.rhai"),
        "fn boot(req) {\n    if req.family == \"v6\" && req.arch_name == \"x64-uefi\" {\n        return #{ filename: `tftp://[fd77::1]/${req.uuid}.efi` };\n    }\n    ()\n}\n",
    )
    .unwrap();
    let rows = replay(&cap, &["--scripts", scripts.to_str().unwrap(), "--plugins", dir.path().to_str().unwrap()]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["phase"], "solicit");
    assert_eq!(rows[0]["mac"], MAC);
    assert_eq!(rows[0]["arch"], "x64-uefi");
    assert_eq!(rows[0]["decision"], "boot");
    assert_eq!(rows[0]["filename"], "tftp://[fd77::1]/7e57c0de-0077-4000-8000-525400770010.efi");
    assert_eq!(rows[1]["decision"], "skip");
    assert_eq!(rows[1]["mac"], "52:54:00:00:00:09");
}
