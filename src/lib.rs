//! pixie — a network-boot (PXE) server whose boot decisions are hot-reloaded Rhai scripts.
//!
//! # Layout
//!
//! The dependency rule runs top to bottom; a module only uses the ones above it.
//!
//! | module | what it owns |
//! |---|---|
//! | [`handoff`] | how code deep inside a request says "this thread is about to be slow" to the server driving it. |
//! | [`wire`] | pure parse/emit of DHCPv4 (on `dhcproto`), PXE sub-options, TFTP packets, the IANA architecture registry, and a pcap/pcapng reader. No sockets, no tokio, no Rhai. Fuzzed. |
//! | [`policy`] | the contract: [`policy::BootRequest`] in, [`policy::Decision`] out, behind the [`policy::Policy`] trait. [`policy::rhai`] is the only module that knows Rhai. |
//! | [`net`] | UDP sockets that report and choose the interface of each datagram (`IP_PKTINFO`). |
//! | [`clients`] | the one piece of state shared between protocol servers: which MAC was last seen at which address. |
//! | [`leases`] | full DHCP mode's durable lease store: a small backend trait (SQLite, in-memory) and the group-commit writer. |
//! | [`dhcpv4`], [`tftp`] | protocol servers: sockets → requests → policy → replies. |
//! | [`config`] | the on-disk TOML schema and the validated runtime [`config::Config`]. |
//! | [`server`] | binds sockets, runs the tasks, drains on shutdown. |
//! | [`store`] | the per-host store scripts keep state in (SQLite `host_store` in `pixie.db`, or memory). |
//! | [`workbench`] | no sockets: replaying captures through a policy, and policy tests (`cases.toml`). |
//!
//! `main.rs` is the CLI: it only parses arguments, calls into this crate, and turns errors into
//! messages and exit codes.
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

pub mod clients;
pub mod config;
pub mod dhcpv4;
pub mod handoff;
pub mod leases;
pub mod net;
pub mod policy;
pub mod server;
pub mod store;
pub mod tftp;
pub mod wire;
pub mod workbench;

/// The message of a caught panic (`catch_unwind`'s payload), for the log line that reports it.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str)).unwrap_or("panic")
}
