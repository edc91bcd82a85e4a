//! Real clients against full mode, inside two network namespaces this test creates and deletes
//! (also on failure): pixie serves `--interface` on one end of a veth pair with the quick-start
//! flags (`--dhcp-mode full --pool`, subnet from the interface), busybox `udhcpc` runs in the
//! other namespace, and — when installed — ISC `perfdhcp` acts as a relay agent (giaddr set).
//!
//! Needs root, `ip` and busybox. Without them it prints `SKIPPED:` and passes, unless `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn skip_or_fail(why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} (CI=true: this test must run)");
    }
    eprintln!("SKIPPED: {why}");
    true
}

fn sh(args: &[&str]) -> std::process::Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The namespaces and the server; everything goes away on drop.
struct Lab {
    server_ns: String,
    client_ns: String,
    pixie: Option<Child>,
    /// A background udhcpc.
    client: Option<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut c in [self.client.take(), self.pixie.take()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

const SIF: &str = "pxfd-s0";
const CIF: &str = "pxfd-c0";

fn lab() -> Lab {
    let id = std::process::id();
    let lab = Lab { server_ns: format!("pxfd-s-{id}"), client_ns: format!("pxfd-c-{id}"), pixie: None, client: None };
    let (s, c) = (lab.server_ns.as_str(), lab.client_ns.as_str());
    sh(&["ip", "netns", "add", s]);
    sh(&["ip", "netns", "add", c]);
    // Created inside the server namespace, so no interface ever exists in ours.
    sh(&["ip", "-n", s, "link", "add", SIF, "type", "veth", "peer", "name", CIF, "netns", c]);
    sh(&["ip", "-n", s, "addr", "add", "10.211.0.1/24", "dev", SIF]);
    for (ns, dev) in [(s, SIF), (c, CIF), (s, "lo"), (c, "lo")] {
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    lab
}

fn wait_listening(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let out = Command::new("ip").args(["netns", "exec", ns, "ss", "-Hlun", "sport = :67"]).output().unwrap();
        if !out.stdout.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("pixie did not listen on port 67 within 20 s");
}

fn leases(state: &Path) -> Vec<serde_json::Value> {
    let out = sh(&[env!("CARGO_BIN_EXE_pixie"), "leases", "--json", "--state-dir", state.to_str().unwrap()]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

fn mac_of(ns: &str, dev: &str) -> String {
    let out = sh(&["ip", "-n", ns, "-o", "link", "show", dev]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap().to_string()
}

#[test]
fn udhcpc_and_perfdhcp_get_leases_in_a_namespace() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("not root (network namespaces need it)");
        return;
    }
    for tool in ["ip", "busybox", "ss"] {
        if !have(tool) {
            skip_or_fail(&format!("{tool} is not installed (apt-get install iproute2 busybox)"));
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for d in ["scripts", "plugins", "tftproot"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("scripts/boot.rhai"), "fn boot(req) { #{} }\n").unwrap();
    let state: PathBuf = dir.join("state");
    let record = dir.join("udhcpc.log");
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 ip=$ip mask=$subnet lease=$lease serverid=$serverid\" >> {rec}\n\
             if [ \"$1\" = bound ]; then ip addr flush dev \"$interface\"; ip addr add \"$ip/$subnet\" dev \"$interface\"; fi\n",
            rec = record.display()
        ),
    )
    .unwrap();
    sh(&["chmod", "755", script.to_str().unwrap()]);

    let mut lab = lab();
    let (s, c) = (lab.server_ns.clone(), lab.client_ns.clone());
    let pixie = Command::new("ip")
        .args(["netns", "exec", &s, env!("CARGO_BIN_EXE_pixie"), "serve", "--interface", SIF, "--dhcp-mode", "full"])
        .args(["--pool", "10.211.0.100-10.211.0.120", "--state-dir"])
        .arg(&state)
        .arg("--scripts")
        .arg(dir.join("scripts"))
        .arg("--plugins")
        .arg(dir.join("plugins"))
        .arg("--tftp-root")
        .arg(dir.join("tftproot"))
        .env("PIXIE_LOG", std::env::var("PIXIE_LOG").unwrap_or("info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    lab.pixie = Some(pixie);
    wait_listening(&s);

    // 1. A fresh client: no broadcast flag (udhcpc without -B), so the OFFER/ACK are unicast
    //    to the new address via the ARP entry pixie sets on the receiving interface.
    let cmac = mac_of(&c, CIF);
    let udhcpc = |extra: &[&str]| {
        let mut a = vec!["netns", "exec", &c, "busybox", "udhcpc", "-i", CIF, "-f", "-q", "-n", "-t", "5", "-T", "1"];
        a.extend_from_slice(&["-s", script.to_str().unwrap(), "-x", "hostname:bbox"]);
        a.extend_from_slice(extra);
        let out = Command::new("ip").args(&a).output().unwrap();
        assert!(out.status.success(), "udhcpc failed: {}", String::from_utf8_lossy(&out.stderr));
    };
    udhcpc(&[]);
    let log = std::fs::read_to_string(&record).unwrap();
    let bound = log.lines().find(|l| l.starts_with("bound")).unwrap_or_else(|| panic!("no lease: {log}"));
    assert!(bound.contains("mask=255.255.255.0") && bound.contains("lease=3600") && bound.contains("serverid=10.211.0.1"), "{bound}");
    let ip = bound.split_whitespace().find_map(|w| w.strip_prefix("ip=")).unwrap().to_string();
    assert!(ip.starts_with("10.211.0.1"), "{ip}");
    let neigh = String::from_utf8_lossy(&sh(&["ip", "-n", &s, "neigh", "show", "dev", SIF]).stdout).into_owned();
    assert!(neigh.contains(&ip) && neigh.contains(&cmac), "ARP entry for {ip} at {cmac} on {SIF}: {neigh}");
    // Stored as an offer before the OFFER left; marked bound just after the ACK.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = leases(&state);
        let row = rows.iter().find(|r| r["ip"] == ip.as_str()).unwrap_or_else(|| panic!("{ip} not in {rows:?}"));
        assert_eq!((row["mac"].as_str(), row["hostname"].as_str()), (Some(cmac.as_str()), Some("bbox")));
        if row["state"] == "bound" {
            break;
        }
        assert_eq!(row["state"], "offered");
        assert!(Instant::now() < deadline, "the ACKed offer was never marked bound: {row:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 2. The same client again, in the background: it asks for its address (option 50), then
    //    SIGUSR1 makes it RENEW (unicast REQUEST with ciaddr) and SIGUSR2 makes it RELEASE.
    let before = leases(&state).iter().find(|r| r["ip"] == ip.as_str()).unwrap()["expires"].as_u64().unwrap();
    let bg = Command::new("ip")
        .args(["netns", "exec", &c, "busybox", "udhcpc", "-i", CIF, "-f", "-t", "5", "-T", "1", "-r", &ip])
        .args(["-s", script.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = bg.id().to_string(); // `ip netns exec` execs udhcpc: this is udhcpc's PID
    lab.client = Some(bg);
    let wait_log = |what: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&record).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| l.starts_with(what)).collect();
            if lines.len() >= n {
                return lines[n - 1].to_string();
            }
            assert!(Instant::now() < deadline, "no '{what}' #{n} from udhcpc: {log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(wait_log("bound", 2).contains(&format!("ip={ip} ")));
    std::thread::sleep(Duration::from_millis(1100));
    // Unix seconds before the RENEW (a renewal written first ends exactly 3600 s after its ACK).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    sh(&["kill", "-USR1", &pid]);
    assert!(wait_log("renew", 1).contains(&format!("ip={ip} ")), "renewed the same address");
    let after = leases(&state).iter().find(|r| r["ip"] == ip.as_str()).unwrap()["expires"].as_u64().unwrap();
    // The renewed lease (3600 s from its ACK) is stored: either its offer's stored lease (lease
    // time plus the 30 s offer hold) still covers it, or the renewal was written first.
    assert!(after >= now + 3600, "the renewed lease is not stored: {after} (before {before}, now {now})");
    sh(&["kill", "-USR2", &pid]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while leases(&state).iter().find(|r| r["ip"] == ip.as_str()).map(|r| r["state"] != "released").unwrap_or(true) {
        assert!(Instant::now() < deadline, "the release never reached the store: {:?}", leases(&state));
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(mut bg) = lab.client.take() {
        let _ = bg.kill();
        let _ = bg.wait();
    }

    // 3. perfdhcp as a relay agent (giaddr = its address): a short DORA run.
    if !have("perfdhcp") {
        eprintln!("SKIPPED (part): perfdhcp is not installed (apt-get install kea-admin)");
        return;
    }
    sh(&["ip", "-n", &c, "addr", "flush", "dev", CIF]);
    sh(&["ip", "-n", &c, "addr", "add", "10.211.0.2/24", "dev", CIF]);
    let out = Command::new("ip")
        .args(["netns", "exec", &c, "perfdhcp", "-4", "-l", CIF, "-r", "50", "-R", "15", "-p", "3", "10.211.0.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ra = text.split("REQUEST-ACK").nth(1).unwrap_or_else(|| panic!("perfdhcp output: {text}"));
    let received: u64 = ra
        .lines()
        .find_map(|l| l.strip_prefix("received packets: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("perfdhcp output: {text}"));
    assert!(received >= 100, "perfdhcp got only {received} ACKs:\n{text}");
}
