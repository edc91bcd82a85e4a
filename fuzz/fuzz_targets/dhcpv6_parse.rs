//! DHCPv6 parser: never panics; whatever parses converts to a BootRequest.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pixie::policy::BootRequest;
use pixie::wire::dhcpv6;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = dhcpv6::parse(data) {
        if let Some(r) = BootRequest::from_dhcpv6(&m, None) {
            let _ = (r.arch(), r.firmware(), r.http(), r.mac.to_string(), r.uuid.map(|u| u.to_string()));
        }
        let _ = (m.vendor_class(), m.user_classes(), m.nii(), m.mac(), m.uuid());
    }
});
