//! proxyDHCP on loopback: real firmware requests (from captures) and synthetic edge cases
//! against a running pixie with a plain-closure policy.

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pixie::policy::{BootDecision, BootRequest, Decision, FnPolicy, PolicyError};
use pixie::wire::dhcpv4::{self, opt, MessageType};

fn by_arch() -> Arc<FnPolicy<impl Fn(&BootRequest) -> Result<Decision, PolicyError> + Send + Sync>> {
    Arc::new(FnPolicy(|r: &BootRequest| {
        let file = match (r.ipxe, r.arch().map(|a| a.name())) {
            (true, Some(a)) if a != "x86-bios" => "boot.ipxe",
            (_, Some(a)) if a == "x86-bios" => "pixie-bios.0",
            (_, Some(a)) if a == "x64-uefi" => "ipxe.efi",
            (_, None) => "pxebs.0",
            _ => return Ok(Decision::Ignore),
        };
        Ok(Decision::Boot(BootDecision { filename: Some(file.into()), ..Default::default() }))
    }))
}

fn discover(vendor: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; dhcpv4::HEADER_LEN];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&[1, 2, 3, 4]);
    b[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x77, 0, 0x10]);
    b.extend_from_slice(&dhcpv4::MAGIC);
    b.extend_from_slice(&[53, 1, 1]);
    if !vendor.is_empty() {
        b.push(60);
        b.push(vendor.len() as u8);
        b.extend_from_slice(vendor);
    }
    b.extend_from_slice(extra);
    b.push(255);
    b
}

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn captured_firmware_requests_get_proxy_answers() {
    let (files, shared) = capture_files();
    if !shared {
        eprintln!("SKIPPED (part): ../shared/fixtures is absent; using the project's own captures only");
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(loopback_config(tmp.path()), by_arch()).await;
    let mut answered = 0;
    for f in &files {
        for (port, payload) in client_requests(f) {
            let req = dhcpv4::parse(&payload).unwrap();
            let mt = req.message_type();
            let to = if port == 67 { srv.dhcp } else { srv.pxe };
            let wait = if port == 67 && mt != Some(MessageType::Discover) { Duration::from_millis(300) } else { WAIT };
            let reply = exchange(to, &payload, wait).await;
            let what = format!("{} {:?} to {port}", f.display(), mt);
            match (port, mt) {
                (67, Some(MessageType::Discover)) | (4011, _) => {
                    let r = reply.unwrap_or_else(|| panic!("{what}: no answer"));
                    let want = if port == 67 { MessageType::Offer } else { MessageType::Ack };
                    assert_eq!(r.message_type(), Some(want), "{what}");
                    assert_eq!(r.xid, req.xid, "{what}");
                    assert_eq!(r.chaddr, req.chaddr, "{what}");
                    assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED, "{what}: proxyDHCP gives no address");
                    assert_eq!(r.siaddr, Ipv4Addr::LOCALHOST, "{what}");
                    assert_eq!(r.option(opt::SERVER_ID), Some(&[127, 0, 0, 1][..]), "{what}");
                    assert_eq!(r.option(opt::VENDOR_CLASS), Some(&b"PXEClient"[..]), "{what}");
                    assert_eq!(r.option(opt::TFTP_SERVER), Some(&b"127.0.0.1"[..]), "{what}");
                    assert_eq!(r.option(opt::CLIENT_UUID), req.option(opt::CLIENT_UUID), "{what}");
                    assert!(!r.file.is_empty(), "{what}: file field");
                    assert_eq!(r.option(opt::BOOTFILE), Some(&r.file[..]), "{what}: option 67 = file");
                    if let Some(item) = req.pxe_boot_item() {
                        let mut want43 = vec![71, 4];
                        want43.extend_from_slice(&item);
                        want43.push(255);
                        assert_eq!(r.option(opt::VENDOR_SPECIFIC), Some(&want43[..]), "{what}: PXEBS item echoed");
                    } else {
                        assert_eq!(r.option(opt::VENDOR_SPECIFIC), Some(&[6, 1, 0x0b, 255][..]), "{what}");
                    }
                    let arch = req.arches().first().map(|a| a.name());
                    let file = String::from_utf8_lossy(&r.file).into_owned();
                    let ipxe = req.user_classes().iter().any(|c| c == "iPXE");
                    match arch.as_deref() {
                        Some("x86-bios") => assert_eq!(file, "pixie-bios.0", "{what}"),
                        Some("x64-uefi") if ipxe => assert_eq!(file, "boot.ipxe", "{what}"),
                        Some("x64-uefi") => assert_eq!(file, "ipxe.efi", "{what}"),
                        _ => assert_eq!(file, "pxebs.0", "{what}"),
                    }
                    answered += 1;
                }
                _ => assert!(reply.is_none(), "{what}: proxyDHCP must leave this to the DHCP server"),
            }
        }
    }
    eprintln!("{answered} captured requests answered");
    if !files.is_empty() {
        assert!(answered > 0);
    }
    srv.stop().await;
}

#[tokio::test]
async fn synthetic_clients_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(loopback_config(tmp.path()), by_arch()).await;
    // A PXE client.
    let r = exchange(srv.dhcp, &discover(b"PXEClient:Arch:00007:UNDI:003000", &[93, 2, 0, 7]), WAIT).await.unwrap();
    assert_eq!(r.file, b"ipxe.efi");
    // Not a PXE client: silence.
    assert!(exchange(srv.dhcp, &discover(b"", &[]), Duration::from_millis(300)).await.is_none());
    assert!(exchange(srv.dhcp, &discover(b"MSFT 5.0", &[]), Duration::from_millis(300)).await.is_none());
    // The policy ignores arm64: silence.
    let arm = discover(b"PXEClient:Arch:00011:UNDI:003000", &[93, 2, 0, 11]);
    assert!(exchange(srv.dhcp, &arm, Duration::from_millis(300)).await.is_none());
    // Malformed: counted and dropped; the server keeps answering.
    let before = srv.stats.malformed.load(Ordering::Relaxed);
    let mut hlen = discover(b"PXEClient", &[]);
    hlen[2] = 200;
    let mut trunc = discover(b"PXEClient", &[]);
    trunc.pop();
    trunc.extend_from_slice(&[97, 17, 0, 1]);
    for bad in [&b"short"[..], &hlen, &trunc, &vec![0xffu8; 1500]] {
        assert!(exchange(srv.dhcp, bad, Duration::from_millis(200)).await.is_none());
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while srv.stats.malformed.load(Ordering::Relaxed) < before + 4 {
        assert!(tokio::time::Instant::now() < deadline, "malformed packets not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = exchange(srv.dhcp, &discover(b"PXEClient:Arch:00000:UNDI:002001", &[93, 2, 0, 0]), WAIT).await.unwrap();
    assert_eq!(r.file, b"pixie-bios.0");
    srv.stop().await;
}

#[tokio::test]
async fn failing_policy_gives_the_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = Arc::new(FnPolicy(|r: &BootRequest| {
        if r.arch().map(|a| a.code()) == Some(0) {
            Err(PolicyError::Runtime { location: "t.rhai:1:1".into(), message: "boom".into() })
        } else {
            Ok(Decision::Boot(BootDecision { filename: Some("ok.efi".into()), ..Default::default() }))
        }
    }));
    let mut cfg = loopback_config(tmp.path());
    cfg.fallback = Decision::Boot(BootDecision { filename: Some("rescue.0".into()), ..Default::default() });
    let srv = start(cfg, policy).await;
    let r = exchange(srv.dhcp, &discover(b"PXEClient:Arch:00000:UNDI:002001", &[93, 2, 0, 0]), WAIT).await.unwrap();
    assert_eq!(r.file, b"rescue.0");
    assert_eq!(srv.stats.policy_errors.load(Ordering::Relaxed), 1);
    let r = exchange(srv.dhcp, &discover(b"PXEClient:Arch:00007:UNDI:003000", &[93, 2, 0, 7]), WAIT).await.unwrap();
    assert_eq!(r.file, b"ok.efi");
    srv.stop().await;
}

/// One worker held by a policy that waits for a gate, and a burst of 20,000 DISCOVERs: the
/// socket's receive buffer overflows, and every datagram is accounted for, as received or as
/// dropped by the kernel (`overloaded`), none silently lost. Once the gate opens the server
/// drains the backlog and answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_workers_is_counted_as_overloaded() {
    use std::sync::atomic::AtomicBool;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = loopback_config(tmp.path());
    cfg.dhcp_workers = 1;
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let held = Arc::new(FnPolicy(move |_: &BootRequest| {
        // Bounded: at most 10 s even if the test never opens the gate.
        for _ in 0..10_000 {
            if gate.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Decision::Boot(BootDecision { filename: Some("x.0".into()), ..Default::default() }))
    }));
    let srv = start(cfg, held).await;
    let pkt = discover(b"PXEClient:Arch:00000:UNDI:002001", &[93, 2, 0, 0]);
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    const SENT: u64 = 20_000;
    for _ in 0..SENT {
        s.send_to(&pkt, srv.dhcp).unwrap();
    }
    open.store(true, Ordering::Relaxed);
    // The kernel reports drops with the next datagram read, so one more request after the
    // backlog is drained makes the last count visible. Bounded: 20 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut received, mut overloaded);
    let mut extra = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        received = srv.stats.received.load(Ordering::Relaxed);
        overloaded = srv.stats.overloaded.load(Ordering::Relaxed);
        if received + overloaded >= SENT + extra || std::time::Instant::now() > deadline {
            break;
        }
        if srv.stats.answered.load(Ordering::Relaxed) >= received {
            s.send_to(&pkt, srv.dhcp).unwrap();
            extra += 1;
        }
    }
    assert!(overloaded > 0, "a 20,000-request burst against one held worker dropped nothing?");
    assert!(
        received + overloaded >= SENT + extra,
        "received {received} + overloaded {overloaded} < sent {SENT} + {extra}"
    );
    assert!(received < SENT, "the receive buffer held all {SENT}: the test proves nothing");
    // Still answering afterwards.
    let r = exchange(srv.dhcp, &pkt, WAIT).await.expect("answered after the burst");
    assert_eq!(r.file, b"x.0");
    srv.stop().await;
}

#[tokio::test]
async fn a_worker_stalled_without_warning_loses_the_socket_to_a_standby() {
    // A policy that blocks for one client without telling anyone (a plain closure: no Rhai
    // progress hook, nothing calls crate::handoff). The watcher must notice the stalled batch
    // and take the socket over, so the next client is answered long before the stall ends.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = loopback_config(tmp.path());
    cfg.dhcp_workers = 2;
    let policy = Arc::new(FnPolicy(|r: &BootRequest| {
        if r.mac.0.last() == Some(&0x66) {
            std::thread::sleep(Duration::from_millis(1500));
        }
        Ok(Decision::Boot(BootDecision { filename: Some("x.0".into()), ..Default::default() }))
    }));
    let srv = start(cfg, policy).await;
    let vendor = b"PXEClient:Arch:00000:UNDI:002001";
    // Traffic first, so the watcher checks every few milliseconds.
    assert!(exchange(srv.dhcp, &discover(vendor, &[93, 2, 0, 0]), WAIT).await.is_some());
    let mut stuck = discover(vendor, &[93, 2, 0, 0]);
    stuck[33] = 0x66;
    stuck[4..8].copy_from_slice(&[6, 6, 6, 6]);
    let to = srv.dhcp;
    let slow = tokio::spawn(async move {
        let t = std::time::Instant::now();
        (exchange(to, &stuck, Duration::from_secs(5)).await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    let r = exchange(srv.dhcp, &discover(vendor, &[93, 2, 0, 0]), WAIT).await.expect("the other client got no answer");
    let quick = t.elapsed();
    assert_eq!(r.file, b"x.0");
    assert!(quick < Duration::from_millis(600), "the other client waited {quick:?} behind the stalled worker");
    let (stalled, took) = slow.await.unwrap();
    assert!(stalled.is_some(), "the stalled request was never answered");
    assert!(took >= Duration::from_millis(1400), "{took:?}");
}
