//! Wire formats: parse and emit, no I/O.
//!
//! # Parsing contract
//! Every parser here takes untrusted bytes from the network. It never panics, never allocates
//! more than a small multiple of its input, and returns a typed error that says what was wrong.
//! A decode that stopped early (truncated option, bad length) is an error, not a shorter packet.

pub mod arch;
pub mod dhcpv4;
pub mod dhcpv6;
pub mod pcap;
pub mod tftp;
