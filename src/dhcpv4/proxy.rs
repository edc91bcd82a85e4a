//! proxyDHCP behaviour, sans-IO: which requests to answer, and what the answer holds.
//!
//! What the firmware in `../shared/fixtures` taught us (see also the README's quirks list):
//! - Offers carry option 60 `PXEClient`; iPXE otherwise waits 3 s for a ProxyDHCP offer.
//! - The boot file goes in both the BOOTP `file` field and option 67, and the next server in both
//!   `siaddr` and option 66: EDK2 caches the raw packet and reads 67, iPXE builds `file`.
//! - Option 43 with discovery control "use the boot file, no discovery" so PXE 2.1 clients boot
//!   the offered file directly instead of running boot server discovery.
//! - Port 4011 sees three shapes of request, all answered with an ACK to the sender:
//!   EDK2 from source port 4011 with ciaddr set; iPXE-EFI from port 68 with the DHCP xid;
//!   BIOS iPXE's boot server discovery (PXEBS) with xid 0, option 60 just `PXEClient` and
//!   option 43 holding boot item 71 (type 0x8000, layer 0), which the ACK must echo.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::policy::{BootDecision, Phase};
use crate::wire::dhcpv4::{opt, pxe, MessageType, Packet, Reply, OP_REQUEST};

/// Which listener a datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The DHCP port (67).
    Dhcp,
    /// The PXE boot server port (4011).
    Pxe,
}

/// Why a request is not answered (before the policy is asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// A BOOTREPLY (another server's answer) or not a request.
    NotARequest,
    /// No option 60 `PXEClient` / `HTTPClient`: not a network-boot client.
    NotPxe,
    /// A message type proxyDHCP leaves to the network's DHCP server.
    LeftToDhcpServer(Option<MessageType>),
    /// A 4011 request addressed (option 54) to another boot server.
    OtherServer(Ipv4Addr),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NotARequest => f.write_str("not a BOOTREQUEST"),
            Skip::NotPxe => f.write_str("no option 60 PXEClient/HTTPClient: not a network-boot client"),
            Skip::LeftToDhcpServer(Some(t)) => write!(f, "{t:?} is for the network's DHCP server"),
            Skip::LeftToDhcpServer(None) => f.write_str("plain BOOTP request (no option 53)"),
            Skip::OtherServer(ip) => write!(f, "addressed to boot server {ip}"),
        }
    }
}

/// Decides whether a request is one proxyDHCP answers, and in which phase.
pub fn classify(pkt: &Packet, listener: Listener, our_ips: &[Ipv4Addr]) -> Result<Phase, Skip> {
    if pkt.op != OP_REQUEST {
        return Err(Skip::NotARequest);
    }
    let vc = pkt.option(opt::VENDOR_CLASS).unwrap_or_default();
    if !vc.starts_with(b"PXEClient") && !vc.starts_with(b"HTTPClient") {
        return Err(Skip::NotPxe);
    }
    let mt = pkt.message_type();
    match listener {
        Listener::Dhcp => match mt {
            Some(MessageType::Discover) => Ok(Phase::Discover),
            other => Err(Skip::LeftToDhcpServer(other)),
        },
        Listener::Pxe => match mt {
            Some(MessageType::Request) | Some(MessageType::Inform) => {
                if let Some([a, b, c, d]) = pkt.option(opt::SERVER_ID).and_then(|v| <[u8; 4]>::try_from(v).ok()) {
                    let sid = Ipv4Addr::new(a, b, c, d);
                    if !our_ips.is_empty() && !our_ips.contains(&sid) {
                        return Err(Skip::OtherServer(sid));
                    }
                }
                Ok(Phase::Proxy4011)
            }
            other => Err(Skip::LeftToDhcpServer(other)),
        },
    }
}

/// Builds the proxy OFFER (phase discover) or ACK (port 4011) for a decision.
///
/// `server_ip` is our address on the interface the request came in on (option 54, and the
/// default next server).
pub fn build_reply(pkt: &Packet, phase: Phase, d: &BootDecision, server_ip: Ipv4Addr) -> (Reply, Vec<String>) {
    let mut warnings = Vec::new();
    let mt = if phase == Phase::Discover { MessageType::Offer } else { MessageType::Ack };
    let mut r = Reply::to(pkt, mt);
    r.set(opt::SERVER_ID, server_ip.octets());
    boot_fields(&mut r, pkt, phase, d, server_ip, &mut warnings);
    (r, warnings)
}

/// Writes a decision's boot information into a reply: `siaddr`/66, `file`/67, `sname`, and for
/// PXE/HTTP clients options 60, 97 and 43; then the policy's own options, which win.
///
/// Shared by proxyDHCP (where every client is a PXE/HTTP client) and full mode (where a client
/// that is not one gets the boot file only when the policy names one).
pub fn boot_fields(r: &mut Reply, pkt: &Packet, phase: Phase, d: &BootDecision, server_ip: Ipv4Addr, warnings: &mut Vec<String>) {
    let vc = pkt.option(opt::VENDOR_CLASS).unwrap_or_default();
    let http = vc.starts_with(b"HTTPClient");
    let pxe = vc.starts_with(b"PXEClient");
    let next = match d.next_server {
        Some(IpAddr::V4(ip)) => ip,
        Some(IpAddr::V6(ip)) => {
            warnings.push(format!("next_server {ip} is IPv6; a DHCPv4 client needs IPv4, using {server_ip}"));
            server_ip
        }
        None => server_ip,
    };
    if pxe || http || d.filename.is_some() || d.next_server.is_some() {
        r.siaddr = next;
    }
    if pxe || http {
        r.set(opt::VENDOR_CLASS, if http { &b"HTTPClient"[..] } else { &b"PXEClient"[..] });
        if let Some(u) = pkt.option(opt::CLIENT_UUID) {
            r.set(opt::CLIENT_UUID, u);
        }
    }
    if !http && (pxe || d.filename.is_some()) {
        // Dotted-quad text into a stack buffer: no allocation per reply.
        let mut text = [0u8; 15];
        let mut rest = &mut text[..];
        std::io::Write::write_fmt(&mut rest, format_args!("{next}")).expect("an IPv4 address fits 15 bytes");
        let n = 15 - rest.len();
        r.set(opt::TFTP_SERVER, &text[..n]);
    }
    if let Some(f) = &d.filename {
        if f.len() < 128 {
            r.file = f.as_bytes().to_vec();
        } else {
            warnings.push(format!("boot file name is {} bytes; only option 67 carries it", f.len()));
        }
        r.set(opt::BOOTFILE, f.as_bytes());
    }
    if let Some(s) = &d.server_name {
        if s.len() < 64 {
            r.sname = s.as_bytes().to_vec();
        } else {
            warnings.push(format!("server_name is {} bytes, longer than the 63 the field holds; dropped", s.len()));
        }
    }
    if pxe && !http {
        match pkt.pxe_boot_item() {
            Some(item) if phase == Phase::Proxy4011 => {
                r.set(opt::VENDOR_SPECIFIC, pxe::boot_item_reply(item));
            }
            _ if d.filename.is_some() => {
                r.set(opt::VENDOR_SPECIFIC, pxe::direct_boot());
            }
            _ => {}
        }
    }
    for (code, value) in &d.options {
        match u8::try_from(*code) {
            Ok(c) if c != opt::PAD && c != opt::END && c != opt::MESSAGE_TYPE => {
                r.set(c, value.to_bytes(*code));
            }
            _ => warnings.push(format!("option {code} cannot be set in a DHCPv4 reply; skipped")),
        }
    }
}

/// Where a reply goes: `(destination, broadcast?)`.
///
/// A sender with an address (a relay, a client on 4011, a test on loopback) gets a unicast
/// reply to its address and port. A client without an address (source 0.0.0.0) gets a broadcast
/// to 255.255.255.255 on its port, sent out of the interface the request came in on.
pub fn destination(pkt: &Packet, from: SocketAddr) -> (SocketAddr, bool) {
    match from.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => (from, false),
        _ if !pkt.giaddr.is_unspecified() => (SocketAddr::new(IpAddr::V4(pkt.giaddr), 67), false),
        _ => (SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), from.port()), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OptionValue;
    use crate::wire::dhcpv4::{parse, HEADER_LEN, MAGIC};

    fn req(opts: &[u8]) -> Packet {
        let mut b = vec![0u8; HEADER_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x77, 0, 0x10]);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(opts);
        b.push(255);
        parse(&b).unwrap()
    }

    fn pxe_discover() -> Packet {
        let mut o = vec![53, 1, 1, 60, 32];
        o.extend_from_slice(b"PXEClient:Arch:00000:UNDI:002001");
        o.extend_from_slice(&[93, 2, 0, 0, 97, 17, 0]);
        o.extend_from_slice(&[0xde, 0xc0, 0x57, 0x7e, 0x77, 0, 0, 0x40, 0x80, 0, 0x52, 0x54, 0, 0x77, 0, 0x10]);
        req(&o)
    }

    #[test]
    fn classification() {
        let ours = [Ipv4Addr::new(10, 0, 0, 1)];
        assert_eq!(classify(&pxe_discover(), Listener::Dhcp, &ours), Ok(Phase::Discover));
        assert_eq!(classify(&req(&[53, 1, 1]), Listener::Dhcp, &ours), Err(Skip::NotPxe));
        let mut r = vec![53, 1, 3, 60, 9];
        r.extend_from_slice(b"PXEClient");
        assert_eq!(
            classify(&req(&r), Listener::Dhcp, &ours),
            Err(Skip::LeftToDhcpServer(Some(MessageType::Request)))
        );
        assert_eq!(classify(&req(&r), Listener::Pxe, &ours), Ok(Phase::Proxy4011));
        r.extend_from_slice(&[54, 4, 10, 0, 0, 2]);
        assert_eq!(classify(&req(&r), Listener::Pxe, &ours), Err(Skip::OtherServer(Ipv4Addr::new(10, 0, 0, 2))));
    }

    #[test]
    fn offer_carries_everything_firmware_reads() {
        let p = pxe_discover();
        let mut d = BootDecision { filename: Some("pixie-bios.0".into()), ..Default::default() };
        d.options.insert(3, OptionValue::Ips(vec![Ipv4Addr::new(10, 0, 0, 254)]));
        let (r, warnings) = build_reply(&p, Phase::Discover, &d, Ipv4Addr::new(10, 0, 0, 1));
        assert!(warnings.is_empty());
        let back = parse(&r.encode().0).unwrap();
        assert_eq!(back.message_type(), Some(MessageType::Offer));
        assert_eq!(back.yiaddr, Ipv4Addr::UNSPECIFIED, "proxyDHCP hands out no address");
        assert_eq!(back.siaddr, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(back.file, b"pixie-bios.0");
        assert_eq!(back.option(opt::BOOTFILE), Some(&b"pixie-bios.0"[..]));
        assert_eq!(back.option(opt::TFTP_SERVER), Some(&b"10.0.0.1"[..]));
        assert_eq!(back.option(opt::SERVER_ID), Some(&[10, 0, 0, 1][..]));
        assert_eq!(back.option(opt::VENDOR_CLASS), Some(&b"PXEClient"[..]));
        assert_eq!(back.option(opt::CLIENT_UUID), p.option(opt::CLIENT_UUID));
        assert_eq!(back.option(opt::VENDOR_SPECIFIC), Some(&[6, 1, 0x0b, 255][..]));
        assert_eq!(back.option(3), Some(&[10, 0, 0, 254][..]));
        assert_eq!(back.xid, p.xid);
    }

    #[test]
    fn pxebs_ack_echoes_the_boot_item() {
        let mut o = vec![53, 1, 3, 60, 9];
        o.extend_from_slice(b"PXEClient");
        o.extend_from_slice(&[43, 7, 0x47, 4, 0x80, 0, 0, 0, 0xff]);
        let p = req(&o);
        let d = BootDecision { filename: Some("x.0".into()), ..Default::default() };
        let (r, _) = build_reply(&p, Phase::Proxy4011, &d, Ipv4Addr::new(10, 0, 0, 1));
        let back = parse(&r.encode().0).unwrap();
        assert_eq!(back.message_type(), Some(MessageType::Ack));
        assert_eq!(back.option(opt::VENDOR_SPECIFIC), Some(&[0x47, 4, 0x80, 0, 0, 0, 0xff][..]));
    }

    #[test]
    fn http_clients_get_httpclient_and_no_pxe_options() {
        let mut o = vec![53, 1, 1, 60, 33];
        o.extend_from_slice(b"HTTPClient:Arch:00016:UNDI:003000");
        let p = req(&o);
        let d = BootDecision { filename: Some("http://10.0.0.1/x.efi".into()), ..Default::default() };
        let (r, _) = build_reply(&p, Phase::Discover, &d, Ipv4Addr::new(10, 0, 0, 1));
        let back = parse(&r.encode().0).unwrap();
        assert_eq!(back.option(opt::VENDOR_CLASS), Some(&b"HTTPClient"[..]));
        assert!(back.option(opt::VENDOR_SPECIFIC).is_none());
        assert_eq!(back.option(opt::BOOTFILE), Some(&b"http://10.0.0.1/x.efi"[..]));
    }

    #[test]
    fn destinations() {
        let p = pxe_discover();
        let (to, bcast) = destination(&p, "0.0.0.0:68".parse().unwrap());
        assert_eq!((to, bcast), ("255.255.255.255:68".parse().unwrap(), true));
        let (to, bcast) = destination(&p, "10.0.0.115:4011".parse().unwrap());
        assert_eq!((to, bcast), ("10.0.0.115:4011".parse().unwrap(), false));
    }
}
