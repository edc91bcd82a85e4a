//! TFTP packet parser: never panics, and whatever parses re-emits to bytes that parse again to
//! the same packet.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pixie::wire::tftp::Packet;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::parse(data) {
        let bytes = p.to_vec();
        let again = Packet::parse(&bytes).expect("an emitted packet parses");
        assert_eq!(format!("{p:?}"), format!("{again:?}"));
    }
});
