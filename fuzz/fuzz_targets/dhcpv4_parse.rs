//! DHCPv4 parser: never panics; whatever parses converts to a BootRequest, and a reply built to it
//! encodes and parses back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pixie::policy::{BootDecision, BootRequest, Phase};
use pixie::wire::dhcpv4;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = dhcpv4::parse(data) {
        let r = BootRequest::from_dhcpv4(&p, Phase::Discover, None, None);
        let _ = (r.arch(), r.firmware(), r.http(), r.mac.to_string(), r.uuid.map(|u| u.to_string()));
        let _ = p.pxe_boot_item();
        let d = BootDecision { filename: Some("f".into()), ..Default::default() };
        let (reply, _) = pixie::dhcpv4::proxy::build_reply(&p, Phase::Discover, &d, "10.0.0.1".parse().unwrap());
        let (bytes, _) = reply.encode();
        let back = dhcpv4::parse(&bytes).expect("our own reply parses");
        assert_eq!(back.xid, p.xid);
    }
});
