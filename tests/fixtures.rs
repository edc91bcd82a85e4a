//! Every client request in the real-firmware captures parses to the right values.
//!
//! Two sources: the project's own captures in `tests/captures/` (recorded by `tests/e2e`), which
//! are always there, and the reference captures in `../shared/fixtures/`, which a fresh clone may
//! not have — those tests say `SKIPPED` and pass when the folder is absent.

use std::path::{Path, PathBuf};

use pixie::policy::{BootRequest, Phase};
use pixie::wire::arch::Arch;
use pixie::wire::dhcpv4::{self, MessageType};
use pixie::wire::pcap;

const MAC: &str = "52:54:00:77:00:10";
const UUID: &str = "7e57c0de-0077-4000-8000-525400770010";

fn shared_fixtures() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    d.is_dir().then_some(d)
}

/// (file name, requests) where each request is (phase, parsed request).
fn client_requests(path: &Path) -> Vec<(Phase, BootRequest, dhcpv4::Packet)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    for d in pcap::read_udp(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        let port = d.dst.port();
        if port != 67 && port != 4011 {
            continue;
        }
        let pkt = dhcpv4::parse(&d.payload).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if pkt.op != dhcpv4::OP_REQUEST {
            continue;
        }
        let phase = match (port, pkt.message_type()) {
            (4011, _) => Phase::Proxy4011,
            (_, Some(MessageType::Discover)) => Phase::Discover,
            (_, Some(MessageType::Request)) => Phase::Request,
            (_, other) => panic!("unexpected {other:?}"),
        };
        out.push((phase, BootRequest::from_dhcpv4(&pkt, phase, None, Some(d.src)), pkt));
    }
    out
}

fn check_capture(path: &Path, arch: Arch, ipxe: bool, ndi: (u8, u8, u8), uuid: Option<&str>) -> usize {
    let reqs = client_requests(path);
    assert!(!reqs.is_empty(), "{}: no client requests", path.display());
    for (phase, r, pkt) in &reqs {
        let what = format!("{} {:?}", path.display(), phase);
        assert_eq!(r.mac.to_string(), MAC, "{what}");
        assert_eq!(r.uuid.map(|u| u.to_string()).as_deref(), uuid, "{what}");
        assert!(r.pxe_client(), "{what}: option 60 {:?}", r.vendor_class);
        if *phase == Phase::Proxy4011 && pkt.pxe_boot_item().is_some() {
            // BIOS iPXE's PXEBS discovery: option 60 is just "PXEClient", no 93/94.
            assert_eq!(r.vendor_class.as_deref(), Some("PXEClient"), "{what}");
            assert_eq!(pkt.pxe_boot_item(), Some([0x80, 0, 0, 0]), "{what}");
            assert_eq!(pkt.xid, 0, "{what}: PXEBS uses xid 0");
            continue;
        }
        assert_eq!(r.arches, vec![arch], "{what}");
        assert_eq!(r.arch().unwrap().name(), arch.name(), "{what}");
        assert_eq!(r.ipxe, ipxe, "{what}");
        assert_eq!(r.client_ndi, Some(ndi), "{what}");
        let vc = format!("PXEClient:Arch:{:05}:UNDI:{:03}{:03}", arch.code(), ndi.1, ndi.2);
        assert_eq!(r.vendor_class.as_deref(), Some(vc.as_str()), "{what}");
        if ipxe {
            assert_eq!(r.user_class, vec!["iPXE".to_string()], "{what}");
            assert!(r.options.contains_key(&175), "{what}");
        } else {
            assert!(r.user_class.is_empty(), "{what}");
        }
    }
    reqs.len()
}

#[test]
fn shared_fixtures_parse_to_the_right_values() {
    let Some(dir) = shared_fixtures() else {
        eprintln!("SKIPPED: ../shared/fixtures is absent (the project's own captures are checked below)");
        return;
    };
    let u = Some(UUID);
    let n = check_capture(&dir.join("qemu-ipxe-bios-dnsmasq.pcap"), Arch::X86Bios, true, (1, 2, 1), u)
        + check_capture(&dir.join("qemu-ipxe-bios-dnsmasq-proxy.pcap"), Arch::X86Bios, true, (1, 2, 1), u)
        + check_capture(&dir.join("ovmf-uefi-dnsmasq.pcap"), Arch::X64Uefi, false, (1, 3, 0), u)
        + check_capture(&dir.join("ovmf-uefi-dnsmasq-proxy.pcap"), Arch::X64Uefi, false, (1, 3, 0), u)
        + check_capture(&dir.join("ovmf-ipxe-efi-dnsmasq.pcap"), Arch::X64Uefi, true, (1, 3, 10), u)
        + check_capture(&dir.join("ovmf-ipxe-efi-dnsmasq-proxy.pcap"), Arch::X64Uefi, true, (1, 3, 10), u);
    assert!(n >= 18, "only {n} client requests found");
}

#[test]
fn shared_fixture_quirks() {
    let Some(dir) = shared_fixtures() else {
        eprintln!("SKIPPED: ../shared/fixtures is absent");
        return;
    };
    // EDK2 asks from source port 4011, with ciaddr set; option 57 differs between phases.
    let reqs = client_requests(&dir.join("ovmf-uefi-dnsmasq-proxy.pcap"));
    let (_, r, pkt) = reqs.iter().find(|(p, _, _)| *p == Phase::Proxy4011).unwrap();
    assert_eq!(r.source.unwrap().port(), 4011);
    assert!(!pkt.ciaddr.is_unspecified());
    let (_, _, req) = reqs.iter().find(|(p, _, _)| *p == Phase::Request).unwrap();
    assert_eq!(req.max_message_size(), Some(65280));
    assert!(req.broadcast());
    // iPXE-EFI asks 4011 from port 68 with the DHCP session's xid.
    let reqs = client_requests(&dir.join("ovmf-ipxe-efi-dnsmasq-proxy.pcap"));
    let disc_xid = reqs.iter().find(|(p, _, _)| *p == Phase::Discover).unwrap().2.xid;
    let (_, r, pkt) = reqs.iter().find(|(p, _, _)| *p == Phase::Proxy4011).unwrap();
    assert_eq!(r.source.unwrap().port(), 68);
    assert_eq!(pkt.xid, disc_xid);
    assert_ne!(disc_xid, 0);
}

#[test]
fn own_captures_parse_to_the_right_values() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures");
    let u = Some(UUID);
    let n = check_capture(&dir.join("bios-ipxe-proxy.pcap"), Arch::X86Bios, true, (1, 2, 1), u)
        + check_capture(&dir.join("bios-ipxe-proxy-4011.pcap"), Arch::X86Bios, true, (1, 2, 1), u)
        + check_capture(&dir.join("uefi-ipxe-proxy.pcap"), Arch::X64Uefi, true, (1, 3, 10), u);
    assert!(n >= 6, "only {n} client requests");
    // The EDK2 capture holds two clients in turn: EDK2 itself, then the chain-loaded iPXE.
    for name in ["uefi-edk2-proxy.pcap", "uefi-edk2-proxy-4011.pcap"] {
        let reqs = client_requests(&dir.join(name));
        let (edk2, ipxe): (Vec<_>, Vec<_>) = reqs.iter().partition(|(_, r, _)| !r.ipxe);
        assert!(!edk2.is_empty() && !ipxe.is_empty(), "{name}");
        for (_, r, _) in &edk2 {
            assert_eq!(r.arches, vec![Arch::X64Uefi]);
            assert_eq!(r.vendor_class.as_deref(), Some("PXEClient:Arch:00007:UNDI:003000"));
            assert_eq!(r.uuid.map(|u| u.to_string()).as_deref(), u);
        }
        for (_, r, _) in &ipxe {
            assert_eq!(r.user_class, vec!["iPXE".to_string()]);
            assert_eq!(r.mac.to_string(), MAC);
        }
    }
}

#[test]
fn own_captures_show_every_shape_of_port_4011_request() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures");
    let reqs = client_requests(&dir.join("uefi-edk2-proxy-4011.pcap"));
    let at_4011: Vec<_> = reqs.iter().filter(|(p, _, _)| *p == Phase::Proxy4011).collect();
    assert_eq!(at_4011.len(), 2, "EDK2 and then iPXE-EFI ask port 4011");
    // EDK2: from source port 4011, ciaddr set, its own xid.
    let (_, r, pkt) = at_4011.iter().find(|(_, r, _)| !r.ipxe).unwrap();
    assert_eq!(r.source.unwrap().port(), 4011);
    assert!(!pkt.ciaddr.is_unspecified());
    // iPXE-EFI: from port 68 with the xid of its DHCP exchange.
    let (_, r, pkt) = at_4011.iter().find(|(_, r, _)| r.ipxe).unwrap();
    assert_eq!(r.source.unwrap().port(), 68);
    let disc = reqs.iter().rfind(|(p, r, _)| *p == Phase::Discover && r.ipxe).unwrap();
    assert_eq!(pkt.xid, disc.2.xid);
    // BIOS iPXE asks 4011 from port 68 too.
    let reqs = client_requests(&dir.join("bios-ipxe-proxy-4011.pcap"));
    let (_, r, _) = reqs.iter().find(|(p, _, _)| *p == Phase::Proxy4011).unwrap();
    assert_eq!(r.source.unwrap().port(), 68);
}
