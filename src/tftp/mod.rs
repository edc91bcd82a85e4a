//! Read-only TFTP server: RFC 1350 with option negotiation (RFC 2347), blksize (RFC 2348),
//! tsize and timeout (RFC 2349) and windowsize (RFC 7440).
//!
//! # Layout
//! | module | what |
//! |---|---|
//! | [`crate::wire::tftp`] | packet parse/emit, no I/O |
//! | [`options`] | negotiation: which options are acknowledged with which values |
//! | [`transfer`] | the sans-IO state machine of one read transfer (windows, ACKs, timeouts) |
//! | [`root`] | resolving a client's file name safely inside the root |
//! | [`netascii`] | LF → CR LF conversion on the fly |
//! | [`server`] | the socket tasks: one listener, one task and socket per transfer; [`serve`] |
//!
//! # Behaviour an operator sees
//! - Requests are answered from the address they were sent to (multi-homed hosts), each transfer
//!   from its own ephemeral port, bound to the listener's interface if the listener was.
//! - Before a file is opened the policy's `file` hook decides: serve, remap, generate or refuse.
//!   A policy error is logged with the client's MAC and the file is served as requested (the same
//!   as a policy without a `tftp` hook): a broken script must not stop machines from booting.
//! - blksize is limited by [`TftpConfig::max_blksize`] and by the MTU of the interface the request
//!   arrived on ([`TftpConfig::clamp_blksize_to_mtu`]), so data never relies on IP fragmentation
//!   (some PXE ROMs cannot reassemble). windowsize is capped so that window × blksize stays within
//!   [`TftpConfig::max_window_bytes`].
//! - Write requests get ERROR 2 "read-only server"; more than [`TftpConfig::max_transfers`]
//!   transfers, or [`TftpConfig::max_per_client`] from one address, get ERROR 3.

pub mod netascii;
pub mod options;
pub mod root;
pub mod server;
pub mod transfer;

use std::path::PathBuf;
use std::time::Duration;

pub use server::serve;

/// Runtime settings of the TFTP server (already validated).
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Directory served; nothing outside it is ever read (see [`root`]).
    pub root: PathBuf,
    /// Transfers in progress at once, over all clients; further requests get ERROR 3.
    pub max_transfers: usize,
    /// Transfers in progress at once from one client address.
    pub max_per_client: usize,
    /// Retransmission timeout unless the client negotiates one.
    pub timeout: Duration,
    /// Consecutive retransmissions without progress before a transfer is abandoned.
    pub retries: u32,
    /// Largest blksize granted (RFC 2348 maximum: 65464).
    pub max_blksize: u16,
    /// Whether blksize is also limited to the MTU of the interface the request came in on.
    pub clamp_blksize_to_mtu: bool,
    /// Upper bound on windowsize × blksize: the bytes in flight per transfer. Its window buffer
    /// holds one block more, read ahead while the window waits for its ACK.
    pub max_window_bytes: usize,
    /// Bytes read from a file at once for blocks under 8192 bytes (read buffer per transfer);
    /// larger blocks are read straight into the window buffer, one `read` per block. Default
    /// 16 KiB: one `read` per 32 blocks of 512 bytes or 11 of 1468, and a lock-step transfer
    /// holds ~25 KiB. Transfers that start while as many run as there are CPUs read
    /// each block straight from the file instead (20 parallel transfers: +0.3 MiB RSS).
    pub read_ahead: usize,
    /// Send each window (windowsize > 1) with UDP GSO, one system call per up to 64 blocks; the
    /// transfer falls back to one send per block by itself where GSO is refused.
    pub udp_gso: bool,
    /// Run each lock-step (windowsize 1) transfer of a known size of 32 blocks or more on a
    /// thread of its own with a blocking socket: one wake-up per ACK instead of a readiness
    /// event and a task hop, which is what bounds lock-step throughput. At most one such
    /// thread per CPU: a transfer that starts while as many transfers run as there are CPUs
    /// stays on the runtime (threads then only add wake-ups and stacks).
    pub lockstep_threads: bool,
    /// On a lock-step thread, how long to poll the socket for the next ACK before sleeping
    /// (zero: never). Adaptive: only while the client answers within this time and few
    /// lock-step transfers run (see `BusyPoll` in `server.rs`). Trades CPU for latency with
    /// fast clients (VMs on the same host); slow firmware on a real network never triggers it.
    pub busy_poll: Duration,
}

/// Default [`TftpConfig::busy_poll`]: a loopback or same-host client answers a block within ~20 µs.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

impl Default for TftpConfig {
    fn default() -> TftpConfig {
        TftpConfig {
            root: PathBuf::from("/srv/tftp"),
            max_transfers: 512,
            max_per_client: 8,
            timeout: Duration::from_secs(1),
            retries: 5,
            max_blksize: crate::wire::tftp::MAX_BLKSIZE,
            clamp_blksize_to_mtu: true,
            max_window_bytes: 64 * 1024,
            read_ahead: 16 * 1024,
            udp_gso: true,
            lockstep_threads: true,
            busy_poll: DEFAULT_BUSY_POLL,
        }
    }
}
