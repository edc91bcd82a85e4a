//! Capture reader: never panics on any file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pixie::wire::pcap::read_udp(data);
});
