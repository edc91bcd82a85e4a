//! The `pixie` binary from the outside: `check`, `simulate`, and `serve` on loopback with hot
//! reload, a broken save, and a runaway script.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pixie::wire::dhcpv4;

fn pixie() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pixie"))
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Dirs {
    tmp: tempfile::TempDir,
}

impl Dirs {
    fn new(script: &str) -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["scripts", "plugins", "tftproot"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        std::fs::write(tmp.path().join("scripts/boot.rhai"), script).unwrap();
        Dirs { tmp }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
}

#[test]
fn check_accepts_the_shipped_policy() {
    let out = pixie().current_dir(root()).arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("boot.rhai: ok (boot)"), "{stdout}");
}

#[test]
fn check_reports_file_line_column_and_fails() {
    let d = Dirs::new("fn boot(req) {\n    let x = 1\n    #{ filename: \"a\" }\n}\n");
    let out = pixie()
        .args(["check", "--scripts"])
        .arg(d.path("scripts"))
        .arg("--plugins")
        .arg(d.path("plugins"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = format!("{}:", d.path("scripts/boot.rhai").display());
    let line = stdout.lines().find(|l| l.starts_with(&want)).unwrap_or_else(|| panic!("{stdout}"));
    // file:line:column: message
    let rest = &line[want.len()..];
    let mut parts = rest.splitn(3, ':');
    let (l, c) = (parts.next().unwrap(), parts.next().unwrap());
    assert!(l.parse::<u32>().is_ok() && c.parse::<u32>().is_ok(), "{line}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("error"), "stderr names the failure");
}

#[test]
fn simulate_prints_the_decision() {
    let out = pixie()
        .current_dir(root())
        .args(["simulate", "--mac", "52:54:00:12:34:56", "--arch", "x64-uefi", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "boot");
    assert_eq!(v["filename"], "ipxe.efi");
    let out = pixie()
        .current_dir(root())
        .args(["simulate", "--mac", "52:54:00:12:34:56", "--arch", "0", "--user-class", "iPXE", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["filename"], "boot.ipxe");
    // Bad input is a usage error that says what to do.
    let out = pixie().current_dir(root()).args(["simulate", "--mac", "52:54", "--arch", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("x64-uefi"));
}

/// A `pixie serve` child with its log collected; killed (by PID) when dropped.
struct Serve {
    child: Child,
    log: Arc<Mutex<String>>,
    dhcp_port: u16,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Serve {
    fn start(d: &Dirs, extra: &[&str]) -> Serve {
        // Port 0 cannot be used through the CLI, so take free ports; retry on the rare clash.
        for _ in 0..5 {
            let (dhcp, pxe, tftp) = (free_udp_port(), free_udp_port(), free_udp_port());
            let mut child = pixie()
                .arg("serve")
                .args(["--listen", "127.0.0.1"])
                .args(["--dhcp-port", &dhcp.to_string(), "--pxe-port", &pxe.to_string()])
                .args(["--tftp-port", &tftp.to_string()])
                .arg("--scripts")
                .arg(d.path("scripts"))
                .arg("--plugins")
                .arg(d.path("plugins"))
                .arg("--tftp-root")
                .arg(d.path("tftproot"))
                .arg("--state-dir")
                .arg(d.path("state"))
                .args(extra)
                .env("PIXIE_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let log = Arc::new(Mutex::new(String::new()));
            let (l2, err) = (log.clone(), child.stderr.take().unwrap());
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    l2.lock().unwrap().push_str(&(line + "\n"));
                }
            });
            let s = Serve { child, log, dhcp_port: dhcp };
            let start = Instant::now();
            loop {
                let text = s.log.lock().unwrap().clone();
                if text.contains("pixie is serving") && text.matches("listener ready").count() >= 2 {
                    return s;
                }
                if text.contains("cannot listen") || start.elapsed() > Duration::from_secs(20) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("pixie serve did not become ready");
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_log(&self, within: Duration, what: &str) {
        let start = Instant::now();
        while !self.log().contains(what) {
            assert!(start.elapsed() < within, "log never showed {what:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn discover(mac_last: u8) -> Vec<u8> {
    let mut b = vec![0u8; dhcpv4::HEADER_LEN];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4] = mac_last;
    b[28..34].copy_from_slice(&[0x52, 0x54, 0, 0, 0, mac_last]);
    b.extend_from_slice(&dhcpv4::MAGIC);
    b.extend_from_slice(&[53, 1, 1, 60, 9]);
    b.extend_from_slice(b"PXEClient");
    b.extend_from_slice(&[93, 2, 0, 7, 255]);
    b
}

/// Sends a DISCOVER; returns the offered file name (None: no answer within `wait`).
fn ask(port: u16, mac_last: u8, wait: Duration) -> Option<String> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(&discover(mac_last), ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    let p = dhcpv4::parse(&buf[..n]).unwrap();
    Some(String::from_utf8_lossy(&p.file).into_owned())
}

fn boot_returning(name: &str) -> String {
    format!("fn boot(req) {{\n    #{{ filename: \"{name}\" }}\n}}\n")
}

#[test]
fn serve_reloads_a_saved_script_within_a_second_and_keeps_the_last_good_one() {
    let d = Dirs::new(&boot_returning("one.efi"));
    let srv = Serve::start(&d, &[]);
    assert_eq!(ask(srv.dhcp_port, 1, Duration::from_secs(3)).as_deref(), Some("one.efi"));

    // Save a new version: the next decision changes within 1 s.
    std::fs::write(d.path("scripts/boot.rhai"), boot_returning("two.efi")).unwrap();
    let saved = Instant::now();
    loop {
        if ask(srv.dhcp_port, 1, Duration::from_secs(1)).as_deref() == Some("two.efi") {
            break;
        }
        assert!(saved.elapsed() < Duration::from_secs(1), "reload took over 1 s:\n{}", srv.log());
    }

    // A broken save keeps generation 2 and the log says where the error is.
    std::fs::write(d.path("scripts/boot.rhai"), "fn boot(req) {\n    #{ filename: \"three.efi\" \n").unwrap();
    let want = format!("{}:", d.path("scripts/boot.rhai").display());
    srv.wait_log(Duration::from_secs(3), &want);
    assert_eq!(ask(srv.dhcp_port, 1, Duration::from_secs(3)).as_deref(), Some("two.efi"));
    let log = srv.log();
    let line = log.lines().find(|l| l.contains(&want)).unwrap();
    let after = &line[line.find(&want).unwrap() + want.len()..];
    let mut it = after.split(':');
    assert!(it.next().unwrap().parse::<u32>().is_ok() && it.next().unwrap().parse::<u32>().is_ok(), "{line}");
}

#[test]
fn runaway_script_gets_the_fallback_within_the_deadline_and_others_are_answered() {
    let script = "fn boot(req) {\n    if req.mac == \"52:54:00:00:00:66\" { loop {} }\n    #{ filename: \"fine.efi\" }\n}\n";
    let d = Dirs::new(script);
    // A long deadline: the other client must not wait for it. The worker stuck in the runaway
    // call hands the socket to another worker after a millisecond (crate::handoff).
    std::fs::write(
        d.path("pixie.toml"),
        "[policy]\nfallback = \"rescue.efi\"\ndeadline_ms = 3000\nmax_operations = 1000000000000\n",
    )
    .unwrap();
    let cfg = d.path("pixie.toml");
    let srv = Serve::start(&d, &["--config", cfg.to_str().unwrap()]);
    let port = srv.dhcp_port;
    // The runaway client first, then a well-behaved one while the runaway call runs.
    let runaway = std::thread::spawn(move || {
        let t = Instant::now();
        (ask(port, 0x66, Duration::from_secs(8)), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(ask(port, 2, Duration::from_secs(5)).as_deref(), Some("fine.efi"));
    let quick = t.elapsed();
    let (file, took) = runaway.join().unwrap();
    assert_eq!(file.as_deref(), Some("rescue.efi"), "{}", srv.log());
    assert!(took >= Duration::from_millis(2900) && took < Duration::from_secs(6), "fallback took {took:?}");
    assert!(quick < Duration::from_secs(1), "the other client waited {quick:?} for the runaway call");
    srv.wait_log(Duration::from_secs(2), "using the fallback");
    assert!(srv.log().lines().any(|l| l.contains("52:54:00:00:00:66") && l.contains("policy failed")), "{}", srv.log());
}
