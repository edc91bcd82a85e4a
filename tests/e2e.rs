//! End-to-end netboot tests: real PXE firmware (SeaBIOS + iPXE ROM, OVMF's own
//! PXE, iPXE's EFI driver) in QEMU boots against `pixie serve` in proxyDHCP
//! mode, next to a plain DHCP server, all inside private network namespaces
//! built by `tests/e2e/netboot.sh`.
//!
//! Needs root, `qemu-system-x86_64`, `nasm`, `dnsmasq`, OVMF and Debian's
//! `ipxe` package.  Without them each test prints `SKIPPED: ...` and passes,
//! unless `CI=true`, where a missing prerequisite is a failure.
//!
//! Environment knobs:
//! * `PIXIE_E2E_PCAP_DIR=DIR` — record `DIR/<flow>.pcap` (how
//!   `tests/captures/` was made).
//! * `PIXIE_E2E_SERVER=dnsmasq` — boot against the dnsmasq stand-in
//!   (`tests/e2e/dnsmasq-proxy.sh`) instead of pixie, to check the harness.
//! * `PIXIE_E2E_KEEP=1` — keep the work directory (logs) even on success.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

const CLIENT_MAC: &str = "52:54:00:77:00:10";
const CLIENT_UUID: &str = "7e57c0de-0077-4000-8000-525400770010";
const BRIDGE: &str = "e2e-br0";
/// Harness timeout: QEMU start to marker.
const BOOT_TIMEOUT_S: u64 = 120;
/// Hard bound on one harness run (readiness + boot + teardown).
const HARNESS_DEADLINE: Duration = Duration::from_secs(220);
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";

/// One QEMU at a time in this process; across processes, see `HostSlot`.
static ONE_VM: Mutex<()> = Mutex::new(());

struct Flow {
    /// Also the pcap name under `PIXIE_E2E_PCAP_DIR`.
    name: &'static str,
    firmware: &'static str,
    nic: &'static str,
    nic_rom: &'static str,
    marker: &'static str,
    /// File names pixie must have decided for the client, in boot order.
    decisions: &'static [&'static str],
    /// Policy scripts folder, relative to the repository root.
    scripts: &'static str,
    /// Plugins folder, relative to the repository root.
    plugins: &'static str,
    /// iPXE scripts to put in the TFTP root: (file name, word). Each prints
    /// `PIXIE-IPXE-OK <word>`, so the marker tells which one the policy chose.
    extra: &'static [(&'static str, &'static str)],
    /// The phase the decisions must be logged in (`discover` or `proxy-4011`).
    phase: &'static str,
    /// `proxy`: beside the plain DHCP server in the aux namespace; `full`: pixie is the only
    /// DHCP server on the segment and hands out the address too.
    dhcp: &'static str,
}

const BIOS_IPXE: Flow = Flow {
    name: "bios-ipxe-proxy",
    firmware: "bios",
    nic: "e1000",
    nic_rom: "default",
    marker: "PIXIE-NBP-OK",
    decisions: &["pixie-bios.0"],
    scripts: "tests/e2e/scripts",
    plugins: "tests/e2e/plugins",
    extra: &[],
    phase: "discover",
    dhcp: "proxy",
};

const UEFI_EDK2: Flow = Flow {
    name: "uefi-edk2-proxy",
    firmware: "uefi",
    nic: "virtio-net-pci",
    nic_rom: "none",
    marker: "PIXIE-IPXE-OK",
    decisions: &["ipxe.efi", "boot.ipxe"],
    scripts: "tests/e2e/scripts",
    plugins: "tests/e2e/plugins",
    extra: &[],
    phase: "discover",
    dhcp: "proxy",
};

const UEFI_IPXE: Flow = Flow {
    name: "uefi-ipxe-proxy",
    firmware: "uefi",
    nic: "e1000",
    nic_rom: "default",
    marker: "PIXIE-IPXE-OK",
    decisions: &["boot.ipxe"],
    scripts: "tests/e2e/scripts",
    plugins: "tests/e2e/plugins",
    extra: &[],
    phase: "discover",
    dhcp: "proxy",
};

/// The same BIOS boot, but the policy leaves the boot file out of the OFFER (phase
/// `discover`) and gives it only on port 4011: BIOS iPXE must ask the boot server port.
const BIOS_IPXE_4011: Flow = Flow {
    name: "bios-ipxe-proxy-4011",
    scripts: "tests/e2e/scripts-4011",
    phase: "proxy-4011",
    ..BIOS_IPXE
};

/// EDK2 asks port 4011 from source port 4011 (with ciaddr), then the chain-loaded iPXE-EFI
/// asks it from port 68 with its DHCP xid: both shapes of 4011 request, from real firmware.
const UEFI_EDK2_4011: Flow = Flow {
    name: "uefi-edk2-proxy-4011",
    scripts: "tests/e2e/scripts-4011",
    phase: "proxy-4011",
    ..UEFI_EDK2
};

/// examples/per-arch on BIOS: the iPXE ROM is already iPXE, so it gets its platform's script.
const EXAMPLE_PER_ARCH_BIOS: Flow = Flow {
    name: "example-per-arch-bios",
    marker: "PIXIE-IPXE-OK per-arch-bios",
    decisions: &["boot-bios.ipxe"],
    scripts: "examples/per-arch/scripts",
    plugins: "examples/per-arch/plugins",
    extra: &[("boot-bios.ipxe", "per-arch-bios")],
    ..BIOS_IPXE
};

/// examples/per-arch on UEFI: EDK2 gets ipxe.efi, which then gets the x64 EFI script.
const EXAMPLE_PER_ARCH_UEFI: Flow = Flow {
    name: "example-per-arch-uefi",
    marker: "PIXIE-IPXE-OK per-arch-x64-efi",
    decisions: &["ipxe.efi", "boot-x64-efi.ipxe"],
    scripts: "examples/per-arch/scripts",
    plugins: "examples/per-arch/plugins",
    extra: &[("boot-x64-efi.ipxe", "per-arch-x64-efi")],
    ..UEFI_EDK2
};

/// examples/install-once, first boot: a new machine gets the installer.
const EXAMPLE_INSTALL_FIRST: Flow = Flow {
    name: "example-install-once-1",
    marker: "PIXIE-IPXE-OK installer",
    decisions: &["install.ipxe"],
    scripts: "examples/install-once/scripts",
    plugins: "examples/install-once/plugins",
    extra: &[("install.ipxe", "installer"), ("local.ipxe", "local-disk")],
    ..BIOS_IPXE
};

/// examples/install-once, after the installer reported back: the local-disk script.
const EXAMPLE_INSTALL_SECOND: Flow = Flow {
    name: "example-install-once-2",
    marker: "PIXIE-IPXE-OK local-disk",
    decisions: &["local.ipxe"],
    ..EXAMPLE_INSTALL_FIRST
};

#[test]
fn example_per_arch_boots_bios_and_uefi() {
    if skip(&EXAMPLE_PER_ARCH_UEFI) {
        return;
    }
    run_flow_with_state(&EXAMPLE_PER_ARCH_BIOS, None);
    run_flow_with_state(&EXAMPLE_PER_ARCH_UEFI, None);
}

/// Two boots of one machine on one state folder: the first installs, then the installer's
/// callback (here: `pixie store set`, as the example's README shows) marks it installed, and
/// the second boot goes to the local disk.
#[test]
fn example_install_once_installs_then_boots_from_disk() {
    if skip(&EXAMPLE_INSTALL_FIRST) {
        return;
    }
    let state = tempfile::Builder::new().prefix("pixie-e2e-state.").tempdir().expect("tempdir");
    run_flow_with_state(&EXAMPLE_INSTALL_FIRST, Some(state.path()));
    let pixie = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pixie"))
            .arg("store")
            .arg("--state-dir")
            .arg(state.path())
            .args(args)
            .output()
            .expect("run pixie store");
        assert!(out.status.success(), "pixie store {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let during = pixie(&["get", CLIENT_MAC]);
    assert!(during.contains("installing"), "after the first boot the store says: {during}");
    pixie(&["set", CLIENT_MAC, r#"{"state":"installed"}"#]);
    run_flow_with_state(&EXAMPLE_INSTALL_SECOND, Some(state.path()));
}

/// Full DHCP mode: no other DHCP server; pixie gives the address and the boot file.
const FULL_BIOS: Flow = Flow { name: "full-bios-ipxe", dhcp: "full", ..BIOS_IPXE };

/// Full DHCP mode with OVMF's own PXE client, chain-loading ipxe.efi and boot.ipxe.
const FULL_UEFI: Flow = Flow { name: "full-uefi-edk2", dhcp: "full", ..UEFI_EDK2 };

/// Boots in full mode on one state folder and checks the lease pixie stored for the VM.
fn full_mode_boot(flow: &Flow) {
    if skip(flow) {
        return;
    }
    let state = tempfile::Builder::new().prefix("pixie-e2e-state.").tempdir().expect("tempdir");
    run_flow_with_state(flow, Some(state.path()));
    let out = Command::new(env!("CARGO_BIN_EXE_pixie"))
        .args(["leases", "--json", "--state-dir"])
        .arg(state.path())
        .output()
        .expect("run pixie leases");
    assert!(out.status.success(), "pixie leases: {}", String::from_utf8_lossy(&out.stderr));
    let leases: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pixie leases --json");
    let mine: Vec<_> = leases
        .as_array()
        .expect("an array of leases")
        .iter()
        .filter(|l| l.to_string().contains(CLIENT_MAC))
        .collect();
    assert_eq!(mine.len(), 1, "{}: one lease for the VM expected, got {leases}", flow.name);
    assert!(mine[0].to_string().contains("10.77.0."), "{}: lease outside the pool: {}", flow.name, mine[0]);
}

#[test]
fn full_mode_bios_ipxe_gets_its_address_and_boots() {
    full_mode_boot(&FULL_BIOS);
}

#[test]
fn full_mode_ovmf_gets_its_address_and_boots() {
    full_mode_boot(&FULL_UEFI);
}

#[test]
fn bios_ipxe_rom_boots_via_the_4011_boot_server() {
    run_flow(&BIOS_IPXE_4011);
}

#[test]
fn uefi_edk2_and_ipxe_efi_boot_via_the_4011_boot_server() {
    run_flow(&UEFI_EDK2_4011);
}

#[test]
fn bios_ipxe_rom_boots_our_nbp_via_proxydhcp() {
    run_flow(&BIOS_IPXE);
}

#[test]
fn uefi_edk2_pxe_chains_ipxe_efi_and_script_via_proxydhcp() {
    run_flow(&UEFI_EDK2);
}

#[test]
fn uefi_ipxe_rom_boots_script_via_proxydhcp() {
    run_flow(&UEFI_IPXE);
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// PATH with the sbin directories (dnsmasq, ip and ss live there on Debian).
fn search_path() -> String {
    let mut path = std::env::var("PATH").unwrap_or_default();
    for dir in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        if !path.split(':').any(|p| p == dir) {
            if !path.is_empty() {
                path.push(':');
            }
            path.push_str(dir);
        }
    }
    path
}

fn find_tool(name: &str) -> Option<PathBuf> {
    search_path().split(':').map(|d| Path::new(d).join(name)).find(|p| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Why this flow cannot run here, if it cannot.
fn missing_prerequisite(flow: &Flow) -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and tap devices need root)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun missing".into());
    }
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("nasm", "nasm"),
        ("dnsmasq", "dnsmasq-base"),
        ("ip", "iproute2"),
        ("ss", "iproute2"),
        ("setsid", "util-linux"),
        ("bash", "bash"),
    ] {
        if find_tool(tool).is_none() {
            return Some(format!("{tool} not found (apt-get install {package})"));
        }
    }
    if std::env::var_os("PIXIE_E2E_PCAP_DIR").is_some() && find_tool("tcpdump").is_none() {
        return Some("PIXIE_E2E_PCAP_DIR is set but tcpdump is missing".into());
    }
    // QEMU's default e1000 ROM (iPXE, BIOS + EFI), from ipxe-qemu.
    let roms = ["/usr/lib/ipxe/qemu/efi-e1000.rom", "/usr/share/qemu/efi-e1000.rom"];
    if flow.nic_rom == "default" && !roms.iter().any(|r| Path::new(r).exists()) {
        return Some("QEMU's efi-e1000.rom missing (apt-get install ipxe-qemu)".into());
    }
    if flow.firmware == "uefi" {
        for f in [OVMF_CODE, OVMF_VARS] {
            if !Path::new(f).exists() {
                return Some(format!("{f} missing (apt-get install ovmf)"));
            }
        }
    }
    if flow.decisions.contains(&"ipxe.efi") && !Path::new(IPXE_EFI).exists() {
        return Some(format!("{IPXE_EFI} missing (apt-get install ipxe)"));
    }
    None
}

/// At most two QEMU VMs on this host at once, across test processes and
/// worktrees: hold an flock on one of two slot files for the run.
struct HostSlot(#[allow(dead_code)] fs::File);

fn host_slot() -> HostSlot {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        for i in 0..2 {
            let path = format!("/tmp/pixie-e2e-qemu-slot{i}.lock");
            let Ok(file) = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return HostSlot(file);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no free QEMU slot (/tmp/pixie-e2e-qemu-slot*.lock) after 900 s"
        );
        sleep(Duration::from_millis(500));
    }
}

/// Assemble the NBP and stage the boot files into a fresh TFTP root.
fn build_tftp_root(dir: &Path, flow: &Flow) {
    for (name, word) in flow.extra {
        let script = format!("#!ipxe\necho PIXIE-IPXE-OK {word} ${{net0/mac}} ${{platform}}\nsleep 600\n");
        fs::write(dir.join(name), script).expect("write an iPXE marker script");
    }
    let src = manifest_dir().join("tests/e2e");
    let out = Command::new(find_tool("nasm").expect("nasm"))
        .args(["-f", "bin", "-o"])
        .arg(dir.join("pixie-bios.0"))
        .arg(src.join("nbp/bios.asm"))
        .output()
        .expect("run nasm");
    assert!(
        out.status.success(),
        "nasm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::copy(src.join("ipxe/boot.ipxe"), dir.join("boot.ipxe")).expect("copy boot.ipxe");
    if Path::new(IPXE_EFI).exists() {
        fs::copy(IPXE_EFI, dir.join("ipxe.efi")).expect("copy ipxe.efi");
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod tftp root");
}

fn server_command(tftp_root: &Path, dnsmasq: bool, flow: &Flow, state_dir: &Path) -> Vec<String> {
    let e2e = manifest_dir().join("tests/e2e");
    if dnsmasq {
        return vec![
            e2e.join("dnsmasq-proxy.sh").display().to_string(),
            tftp_root.display().to_string(),
        ];
    }
    let mode: Vec<String> = if flow.dhcp == "full" {
        vec!["full".into(), "--pool".into(), "10.77.0.50-10.77.0.99".into()]
    } else {
        vec!["proxy".into()]
    };
    let mut cmd = vec![
        env!("CARGO_BIN_EXE_pixie").to_string(),
        "serve".into(),
        "--interface".into(),
        BRIDGE.into(),
        "--scripts".into(),
        manifest_dir().join(flow.scripts).display().to_string(),
        "--plugins".into(),
        manifest_dir().join(flow.plugins).display().to_string(),
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--tftp-root".into(),
        tftp_root.display().to_string(),
        "--dhcp-mode".into(),
    ];
    cmd.extend(mode);
    cmd
}

/// Remove ANSI escape sequences (tracing's colours, firmware consoles).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    strip_ansi(&String::from_utf8_lossy(&bytes))
}

/// The INFO line pixie logs for its decision on `mac` with `filename`.
fn decision_line<'a>(log: &'a str, mac: &str, filename: &str, phase: &str) -> Option<&'a str> {
    log.lines().find(|line| {
        let plain = line.replace('"', "");
        plain.contains("INFO")
            && plain.contains(&format!("mac={mac}"))
            && plain.contains("decision")
            && plain.contains(&format!("filename={filename}"))
            && plain.contains(&format!("phase={phase}"))
    })
}

fn run_flow(flow: &Flow) {
    if skip(flow) {
        return;
    }
    run_flow_with_state(flow, None);
}

/// Whether `flow` cannot run here (printed as SKIPPED; a failure under CI=true).
fn skip(flow: &Flow) -> bool {
    if let Some(why) = missing_prerequisite(flow) {
        if in_ci() {
            panic!("{}: prerequisite missing with CI=true: {why}", flow.name);
        }
        eprintln!("SKIPPED: {}: {why}", flow.name);
        return true;
    }
    false
}

/// Runs one boot; `state_dir` is pixie's `--state-dir` (a fresh one when `None`).
fn run_flow_with_state(flow: &Flow, state_dir: Option<&Path>) {
    let use_dnsmasq = std::env::var("PIXIE_E2E_SERVER").map(|v| v == "dnsmasq").unwrap_or(false);

    let _vm = ONE_VM.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let _slot = host_slot();

    let tftp_root = tempfile::Builder::new().prefix("pixie-e2e-root.").tempdir().expect("tempdir");
    build_tftp_root(tftp_root.path(), flow);
    let workdir = tempfile::Builder::new().prefix("pixie-e2e-work.").tempdir().expect("tempdir");
    let harness_log = workdir.path().join("harness.log");

    let mut cmd = Command::new("bash");
    cmd.arg(manifest_dir().join("tests/e2e/netboot.sh"))
        .args(["--firmware", flow.firmware, "--nic", flow.nic, "--nic-rom", flow.nic_rom])
        .args(["--marker", flow.marker, "--mac", CLIENT_MAC, "--uuid", CLIENT_UUID])
        .args(["--timeout", &BOOT_TIMEOUT_S.to_string()])
        .args(if flow.dhcp == "full" { &["--no-aux"][..] } else { &[][..] })
        .arg("--workdir")
        .arg(workdir.path());
    if let Some(dir) = std::env::var_os("PIXIE_E2E_PCAP_DIR") {
        let dir = PathBuf::from(dir);
        fs::create_dir_all(&dir).expect("create PIXIE_E2E_PCAP_DIR");
        cmd.arg("--pcap").arg(dir.join(format!("{}.pcap", flow.name)));
    }
    let own_state = workdir.path().join("state");
    let state_dir = state_dir.unwrap_or(&own_state);
    cmd.arg("--").args(server_command(tftp_root.path(), use_dnsmasq, flow, state_dir));
    cmd.env("PATH", search_path())
        .env("NO_COLOR", "1")
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&harness_log).expect("harness log"))
        .stderr(fs::File::create(workdir.path().join("harness.err")).expect("harness err"));

    let started = Instant::now();
    let mut child = cmd.spawn().expect("start tests/e2e/netboot.sh");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for harness") {
            break status;
        }
        if started.elapsed() > HARNESS_DEADLINE {
            // The harness bounds its own waits; this is the last resort.
            // SIGTERM lets its trap tear the namespaces down.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let grace = Instant::now();
            while child.try_wait().ok().flatten().is_none() && grace.elapsed() < Duration::from_secs(20) {
                sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            let kept = workdir.keep();
            panic!(
                "{}: harness did not finish within {:?}; logs in {}",
                flow.name,
                HARNESS_DEADLINE,
                kept.display()
            );
        }
        sleep(Duration::from_millis(200));
    };
    let elapsed = started.elapsed();

    let out = read_lossy(&harness_log);
    let err = read_lossy(&workdir.path().join("harness.err"));
    let serial = read_lossy(&workdir.path().join("serial.log"));
    let server_log = read_lossy(&workdir.path().join("server.log"));
    eprintln!("=== {} ({:.1}s) ===\n{out}{err}", flow.name, elapsed.as_secs_f64());

    let mut problems = Vec::new();
    if !status.success() {
        problems.push(format!("netboot.sh exited with {status}"));
    }
    if !out.contains(&format!("PASS: '{}'", flow.marker)) {
        problems.push("harness did not report PASS".into());
    }
    if !serial.contains(flow.marker) {
        problems.push(format!("marker {} not on the serial console", flow.marker));
    }
    if !use_dnsmasq {
        for file in flow.decisions {
            if decision_line(&server_log, CLIENT_MAC, file, flow.phase).is_none() {
                problems.push(format!(
                    "server.log has no INFO line with mac={CLIENT_MAC}, 'decision', filename={file} and phase={}",
                    flow.phase
                ));
            }
        }
    }
    if !problems.is_empty() || std::env::var_os("PIXIE_E2E_KEEP").is_some() {
        let kept = workdir.keep();
        assert!(
            problems.is_empty(),
            "{}: {}\n--- server.log ---\n{}\nlogs kept in {}",
            flow.name,
            problems.join("; "),
            server_log,
            kept.display()
        );
        eprintln!("{}: logs kept in {}", flow.name, kept.display());
    }
}

#[test]
fn decision_line_matcher() {
    let log = "2025-01-01T00:00:00Z  INFO pixie::dhcpv4: decision mac=52:54:00:77:00:10 phase=discover filename=\"pixie-bios.0\"\n\
               2025-01-01T00:00:00Z  INFO pixie::dhcpv4: decision mac=52:54:00:77:00:11 filename=boot.ipxe\n";
    assert!(decision_line(log, CLIENT_MAC, "pixie-bios.0", "discover").is_some());
    assert!(decision_line(log, CLIENT_MAC, "pixie-bios.0", "proxy-4011").is_none());
    assert!(decision_line(log, CLIENT_MAC, "boot.ipxe", "discover").is_none());
    assert_eq!(strip_ansi("\u{1b}[3mmac\u{1b}[0m\u{1b}[2m=\u{1b}[0mx"), "mac=x");
}
