//! Socket tasks: the listener on port 69 and one task per transfer.
//!
//! The listener only classifies datagrams, enforces the transfer limits and spawns; what may
//! block (the policy call, opening the file) runs inside the transfer's own task: inline while
//! it is quick, on `spawn_blocking` once it has been slow ([`PrepareGate`]), so one slow script
//! or disk does not go on delaying other clients' requests.
//! Each transfer owns its socket (its transfer ID), bound to the local address the request was
//! sent to, and drives a [`Transfer`] state machine; this file is the thin glue between them.
//! A lock-step transfer (windowsize 1) of 32 blocks or more hands its socket and state machine to
//! a thread of its own with a blocking socket ([`TftpConfig::lockstep_threads`]): lock-step speed
//! is one round trip per block, and a thread woken straight out of `recv` answers an ACK sooner
//! than a readiness event followed by a task wake-up. Both loops read the next block
//! ([`Transfer::read_ahead`]) after sending and before waiting, so the file read is not between
//! an ACK and the block it asks for.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::netascii::{converted_size, NetasciiReader};
use super::options::{blksize_for_mtu, negotiate, Limits};
use super::root::Root;
use super::transfer::{Batch, Failure, Params, Status, Transfer};
use super::TftpConfig;
use crate::clients::ClientTable;
use crate::net::{PktInfo, PktSocket};
use crate::policy::{FileDecision, FileRequest, HwAddr, Policy};
use crate::wire::tftp::{error_packet, ErrorCode, Mode, Packet, ParseError, Request};

/// How long a cached interface MTU is trusted.
const MTU_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl Shared {
    /// The MTU of interface `ifindex`, cached for [`MTU_CACHE_TTL`]. Blocking (sysfs).
    fn mtu(&self, ifindex: u32) -> Option<u32> {
        let now = Instant::now();
        if let Some((m, at)) = self.mtu_cache.lock().unwrap_or_else(|e| e.into_inner()).get(&ifindex) {
            if now.duration_since(*at) < MTU_CACHE_TTL {
                return *m;
            }
        }
        let m = interface_mtu(ifindex);
        let mut cache = self.mtu_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(ifindex, (m, now));
        m
    }
}

/// How long in-flight transfers get to send their shutdown ERROR before they are aborted.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// State every transfer task reads; immutable after start but for the MTU cache.
#[derive(Debug)]
struct Shared {
    /// ifindex → (MTU, when read): interface MTUs rarely change, and reading one costs a socket,
    /// an ioctl and a sysfs read per request otherwise. std Mutex: held for a map lookup only.
    mtu_cache: std::sync::Mutex<HashMap<u32, (Option<u32>, Instant)>>,
    cfg: TftpConfig,
    root: Root,
    policy: Arc<dyn Policy>,
    clients: ClientTable,
    /// The listener's `SO_BINDTODEVICE`, copied onto every transfer socket.
    device: Option<Vec<u8>>,
    /// The listener's port (for [`FileRequest::local`]).
    port: u16,
    /// Lock-step transfers that may busy-poll, running now ([`BusyPoll`]).
    polling: Arc<Polling>,
    /// Whether transfers are prepared on the runtime or on the blocking pool.
    prepare_gate: Arc<PrepareGate>,
    /// Transfers sending now (counted from negotiation to the end, [`Sending`]).
    sending: std::sync::atomic::AtomicUsize,
    /// CPUs this process may use.
    cpus: usize,
}

/// Counts a transfer in [`Shared::sending`] while it lives, and tells whether it started crowded:
/// with as many transfers sending as there are CPUs already. A crowded transfer gets no thread
/// of its own and no read buffer: with every CPU busy, a thread per transfer only adds wake-ups
/// and stacks (the runtime's `epoll_wait` hands its workers several ready sockets at once), and
/// what bounds throughput is CPU, not the `read` per block a buffer saves. Measured with 20
/// parallel 64 MiB downloads at blksize 1468 on 2 CPUs: as fast or faster (11-14 s against
/// 13-15 s per run), and +0.3 MiB of RSS instead of +1.0 MiB.
struct Sending<'a> {
    shared: &'a Shared,
    crowded: bool,
}

impl<'a> Sending<'a> {
    fn new(shared: &'a Shared) -> Sending<'a> {
        let others = shared.sending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Sending { shared, crowded: others >= shared.cpus }
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.shared.sending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A preparation (policy hook, path resolution, open) that took at least this long sends the
/// next [`POOL_AFTER_SLOW`] ones to the blocking pool.
const SLOW_PREPARE: std::time::Duration = std::time::Duration::from_millis(1);
/// Quick preparations in a row that bring preparing back onto the runtime.
const POOL_AFTER_SLOW: u32 = 64;

/// Decides where a transfer is prepared: the policy's `tftp` hook, resolving the path under the
/// root and opening the file.
///
/// On the runtime (in the transfer's task) while that is quick, as it is with no hook or a
/// short one and a local file system: there it costs ~10 µs, while a trip to the blocking pool
/// costs two thread wake-ups (~50 µs here, most of a 4 KiB file's setup). Once a preparation
/// takes [`SLOW_PREPARE`] or longer (a slow script, NFS, a cold disk), the next ones go to the
/// blocking pool, so a slow hook or disk never holds up the runtime's other transfers again,
/// until [`POOL_AFTER_SLOW`] quick ones in a row show the slowness has passed.
#[derive(Debug, Default)]
struct PrepareGate {
    /// Preparations still to run on the blocking pool; 0: prepare inline.
    pool_left: std::sync::atomic::AtomicU32,
}

impl PrepareGate {
    fn inline(&self) -> bool {
        self.pool_left.load(std::sync::atomic::Ordering::Relaxed) == 0
    }

    fn observe(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        if took >= SLOW_PREPARE {
            if self.pool_left.swap(POOL_AFTER_SLOW, Relaxed) == 0 {
                info!(
                    took_ms = took.as_secs_f64() * 1e3,
                    "preparing a TFTP transfer (policy hook, opening the file) was slow; \
                     preparing the next ones on the blocking pool"
                );
            }
        } else {
            let _ = self.pool_left.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        }
    }
}

/// Serves TFTP read requests arriving on `socket` until `shutdown` is cancelled; then cancels the
/// transfers in flight (each sends the client an ERROR 0 "server shutting down"), waits for them
/// (at most 2 s) and returns.
///
/// Fails only at start, when the root cannot be opened; per-request problems are logged.
pub async fn serve(
    socket: PktSocket,
    cfg: TftpConfig,
    policy: Arc<dyn Policy>,
    clients: ClientTable,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let root = Root::new(&cfg.root)?;
    let device = SockRef::from(socket.inner()).device().ok().flatten();
    let port = socket.local_addr()?.port();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    info!(addr = %socket.local_addr()?, root = %root.path().display(), "TFTP server listening");
    let shared = Arc::new(Shared {
        cfg,
        root,
        policy,
        clients,
        device,
        port,
        mtu_cache: Default::default(),
        polling: Arc::new(Polling::for_cpus(cpus)),
        prepare_gate: Default::default(),
        sending: Default::default(),
        cpus,
    });
    let mut listener = Listener {
        socket,
        shared,
        tasks: JoinSet::new(),
        owners: HashMap::new(),
        per_client: HashMap::new(),
        shutdown: shutdown.clone(),
    };
    // A request larger than any TFTP packet is an error from `recv`, not a silent truncation.
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = listener.tasks.join_next_with_id(), if !listener.tasks.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        if e.is_panic() {
                            error!("TFTP transfer task panicked: {e}");
                        }
                        e.id()
                    }
                };
                listener.release(id);
            }
            r = listener.socket.recv(&mut buf) => match r {
                Ok((n, from, info)) => listener.on_datagram(&buf[..n], from, info).await,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => debug!("TFTP listener: {e}"),
                Err(e) => {
                    warn!("TFTP listener receive failed: {e}");
                    // Do not spin on a persistent error.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
        }
    }
    // Transfers hold child tokens of `shutdown`: they are cancelled already.
    let n = listener.tasks.len();
    if n > 0 {
        info!(transfers = n, "TFTP server stopping: cancelling transfers in flight");
    }
    let drained =
        tokio::time::timeout(DRAIN_TIMEOUT, async { while listener.tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!("TFTP transfers did not stop within {DRAIN_TIMEOUT:?}; aborting them");
        listener.tasks.abort_all();
        while listener.tasks.join_next().await.is_some() {}
    }
    Ok(())
}

struct Listener {
    socket: PktSocket,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    owners: HashMap<tokio::task::Id, IpAddr>,
    per_client: HashMap<IpAddr, usize>,
    shutdown: CancellationToken,
}

impl Listener {
    fn release(&mut self, id: tokio::task::Id) {
        if let Some(ip) = self.owners.remove(&id) {
            if let Some(n) = self.per_client.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_client.remove(&ip);
                }
            }
        }
    }

    async fn reply_error(&self, to: SocketAddr, info: &PktInfo, code: ErrorCode, msg: &str) {
        if to.port() == 0 {
            return;
        }
        let pkt = error_packet(code, msg);
        let src = reply_source(info);
        let src = (!src.is_unspecified()).then_some(src);
        if let Err(e) = self.socket.send(&pkt, to, src, info.ifindex).await {
            debug!(client = %to, "cannot send TFTP error: {e}");
        }
    }

    async fn on_datagram(&mut self, pkt: &[u8], from: SocketAddr, info: PktInfo) {
        match Packet::parse(pkt) {
            Ok(Packet::Rrq(req)) => self.on_rrq(req, from, info).await,
            Ok(Packet::Wrq(req)) => {
                warn!(client = %from, file = %String::from_utf8_lossy(&req.filename), "TFTP write refused: read-only server");
                self.reply_error(from, &info, ErrorCode::AccessViolation, "read-only server").await;
            }
            // Never answer an error with an error.
            Ok(Packet::Error { .. }) => {}
            Ok(_) => {
                debug!(client = %from, "TFTP DATA/ACK/OACK sent to the listener port");
                self.reply_error(from, &info, ErrorCode::UnknownTid, "unknown transfer ID").await;
            }
            Err(ParseError::UnknownOpcode(op)) => {
                debug!(client = %from, "TFTP packet with unknown opcode {op}");
                self.reply_error(from, &info, ErrorCode::IllegalOperation, "unknown opcode").await;
            }
            Err(e) => {
                debug!(client = %from, "malformed TFTP request: {e}");
                self.reply_error(from, &info, e.code(), "malformed request").await;
            }
        }
    }

    async fn on_rrq(&mut self, req: Request, client: SocketAddr, info: PktInfo) {
        let name = String::from_utf8_lossy(&req.filename).into_owned();
        if !matches!(req.mode, Mode::Octet | Mode::Netascii) {
            warn!(%client, file = %name, mode = req.mode.as_str(), "TFTP request refused: unsupported mode");
            self.reply_error(client, &info, ErrorCode::IllegalOperation, "unsupported mode").await;
            return;
        }
        let cfg = &self.shared.cfg;
        let from_client = self.per_client.get(&client.ip()).copied().unwrap_or(0);
        if self.tasks.len() >= cfg.max_transfers || from_client >= cfg.max_per_client {
            warn!(
                %client, file = %name, active = self.tasks.len(), from_client,
                "TFTP request refused: too many transfers (max {} in total, {} per client)",
                cfg.max_transfers, cfg.max_per_client
            );
            self.reply_error(client, &info, ErrorCode::DiskFull, "too many transfers, try again later").await;
            return;
        }
        let job = Job {
            shared: self.shared.clone(),
            req,
            name,
            client,
            local: reply_source(&info),
            ifindex: info.ifindex,
            cancel: self.shutdown.child_token(),
        };
        let span = info_span!("tftp", %client, mac = tracing::field::Empty, file = %job.name);
        let handle = self.tasks.spawn(job.run().instrument(span));
        self.owners.insert(handle.id(), client.ip());
        *self.per_client.entry(client.ip()).or_default() += 1;
    }
}

/// The address to answer from: where the request was sent, or for a broadcast the interface's
/// own address (`ipi_spec_dst`, which Linux sets to the destination for unicast).
fn reply_source(info: &PktInfo) -> IpAddr {
    let usable =
        |a: &IpAddr| !a.is_unspecified() && !a.is_multicast() && a != &IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
    if usable(&info.local) {
        info.local
    } else if usable(&info.dst) {
        info.dst
    } else {
        info.local
    }
}

/// What a transfer reads its blocks from.
enum Source {
    /// A file served as it is (octet mode); how it is read depends on the negotiated blksize.
    File {
        file: std::fs::File,
        /// Read buffer for small blocks.
        buffer: usize,
    },
    /// Generated content, or a file converted to netascii on the fly.
    Reader(Box<dyn Read + Send>),
}

/// Blocks of at least this many bytes are read from a file straight into the transfer's ring,
/// one `read` per block, instead of through a read buffer: a buffer would cost a second copy
/// of every block (at 65464 bytes, a 64 KiB copy per round trip) to save one system call per
/// block. Smaller blocks come out of a buffer of [`TftpConfig::read_ahead`] bytes.
const DIRECT_READ_MIN_BLKSIZE: usize = 8192;

impl Source {
    /// `crowded`: read every block straight from the file, whatever its size ([`Sending`]).
    fn into_reader(self, blksize: usize, crowded: bool) -> Box<dyn Read + Send> {
        match self {
            Source::File { file, .. } if crowded || blksize >= DIRECT_READ_MIN_BLKSIZE => Box::new(file),
            Source::File { file, buffer } => Box::new(BufReader::with_capacity(buffer, file)),
            Source::Reader(r) => r,
        }
    }
}

/// One accepted read request, moved into its task.
struct Job {
    shared: Arc<Shared>,
    req: Request,
    name: String,
    client: SocketAddr,
    local: IpAddr,
    ifindex: u32,
    cancel: CancellationToken,
}

/// What will be sent, decided before the transfer starts.
struct Prepared {
    source: Source,
    /// Bytes that will be sent (after netascii conversion), when known.
    size: Option<u64>,
    /// What is served, for the log: the root-relative path or "generated".
    what: String,
    /// blksize limit from the interface MTU.
    mtu_blksize: Option<u16>,
}

impl Job {
    async fn run(self) {
        let span = tracing::Span::current();
        let sock = match bind_transfer_socket(self.local, self.ifindex, self.shared.device.as_deref(), self.client) {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot open a transfer socket from {} to the client: {e}", self.local);
                return;
            }
        };
        let mac = self.shared.clients.lookup(self.client.ip());
        if let Some(m) = &mac {
            span.record("mac", tracing::field::display(m));
        }
        let prepared = tokio::select! {
            p = self.prepare(mac) => p,
            _ = self.cancel.cancelled() => return,
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err((code, msg)) => {
                let _ = sock.send(&error_packet(code, msg));
                return;
            }
        };
        self.transfer(sock, prepared).await;
    }

    /// Asks the policy and opens what will be served. On refusal the error to send is returned;
    /// the reason has been logged.
    async fn prepare(&self, mac: Option<HwAddr>) -> Result<Prepared, (ErrorCode, &'static str)> {
        let options: BTreeMap<String, String> =
            self.req.options.iter().rev().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())).collect();
        let freq = FileRequest {
            protocol: "tftp",
            path: self.name.clone(),
            client: self.client,
            local: Some(SocketAddr::new(self.local, self.shared.port)),
            mac: mac.clone(),
            options,
        };
        let shared = self.shared.clone();
        let name = self.req.filename.clone();
        let netascii = self.req.mode == Mode::Netascii;
        let wants_tsize = self.req.option("tsize").is_some();
        let (ifindex, v6) = (self.ifindex, self.local.is_ipv6());
        let span = tracing::Span::current();
        let work = move || -> Result<Prepared, (ErrorCode, &'static str)> {
            // Everything below logs inside the transfer's span (client, MAC, file).
            let _in_span = span.enter();
            let policy = &shared.policy;
            let decision = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| policy.file(&freq))) {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    warn!(mac = %fmt_mac(&mac), "policy file hook failed, serving the file as requested: {e}");
                    FileDecision::Serve
                }
                Err(_) => {
                    error!(mac = %fmt_mac(&mac), "policy file hook panicked, serving the file as requested");
                    FileDecision::Serve
                }
            };
            let mtu_blksize = if shared.cfg.clamp_blksize_to_mtu {
                shared.mtu(ifindex).map(|m| blksize_for_mtu(m, v6))
            } else {
                None
            };
            let read_ahead = shared.cfg.read_ahead.max(512);
            let (source, size, what): (Source, Option<u64>, String) = match decision {
                FileDecision::Refuse => {
                    warn!("refused by policy");
                    return Err((ErrorCode::AccessViolation, "access violation"));
                }
                FileDecision::Content(bytes) => {
                    let len = bytes.len() as u64;
                    let what = format!("generated content ({len} bytes)");
                    let size = if netascii && wants_tsize { converted_size(&bytes[..]).ok() } else { Some(len) };
                    // The bytes are in memory already: no read buffer in front of them.
                    let source: Box<dyn Read + Send> = if netascii {
                        Box::new(NetasciiReader::new(Cursor::new(bytes)))
                    } else {
                        Box::new(Cursor::new(bytes))
                    };
                    (Source::Reader(source), size, what)
                }
                FileDecision::Serve | FileDecision::Remap(_) => {
                    let target = match &decision {
                        FileDecision::Remap(p) => p.as_bytes().to_vec(),
                        _ => name,
                    };
                    let mut opened = match shared.root.open(&target) {
                        Ok(o) => o,
                        Err(r) => {
                            warn!(path = %String::from_utf8_lossy(&target), "TFTP request refused: {r}");
                            return Err((r.code(), r.client_message()));
                        }
                    };
                    let mut size = Some(opened.size);
                    if netascii {
                        size = None;
                        if wants_tsize {
                            let counted = converted_size(&mut opened.file);
                            if opened.file.seek(SeekFrom::Start(0)).is_err() {
                                return Err((ErrorCode::NotDefined, "read error"));
                            }
                            size = counted.ok();
                        }
                    }
                    let cap = read_ahead.min(usize::try_from(opened.size).unwrap_or(usize::MAX).saturating_add(1));
                    let what = match &decision {
                        FileDecision::Remap(_) => format!("{} (remapped by policy)", opened.relative),
                        _ => opened.relative,
                    };
                    let source = if netascii {
                        let file = BufReader::with_capacity(cap.max(512), opened.file);
                        Source::Reader(Box::new(NetasciiReader::new(file)))
                    } else {
                        Source::File { file: opened.file, buffer: cap.max(512) }
                    };
                    (source, size, what)
                }
            };
            Ok(Prepared { source, size, what, mtu_blksize })
        };
        let gate = self.shared.prepare_gate.clone();
        let timed = move || {
            let started = Instant::now();
            let r = work();
            gate.observe(started.elapsed());
            r
        };
        // Inline while preparing is quick: a trip to the blocking pool costs two thread
        // wake-ups, most of what a small file costs (see [`PrepareGate`]).
        let opened = if self.shared.prepare_gate.inline() {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(timed)).map_err(|p| crate::panic_message(&*p).to_owned())
        } else {
            tokio::task::spawn_blocking(timed).await.map_err(|e| e.to_string())
        };
        match opened {
            Ok(r) => r,
            Err(e) => {
                error!("opening the file panicked: {e}");
                Err((ErrorCode::NotDefined, "internal error"))
            }
        }
    }

    async fn transfer(self, sock: std::net::UdpSocket, p: Prepared) {
        let cfg = &self.shared.cfg;
        let max_blksize = p.mtu_blksize.map_or(cfg.max_blksize, |m| m.min(cfg.max_blksize));
        let limits = Limits { max_blksize, max_window_bytes: cfg.max_window_bytes };
        let neg = negotiate(&self.req.options, limits, p.size);
        let params = Params {
            blksize: neg.blksize,
            windowsize: neg.windowsize,
            timeout: neg.timeout.unwrap_or(cfg.timeout),
            retries: cfg.retries,
            oack: neg.oack,
        };
        let had_oack = !params.oack.is_empty();
        let started = Instant::now();
        let sending = Sending::new(&self.shared);
        let crowded = sending.crowded;
        let source = p.source.into_reader(usize::from(params.blksize), crowded);
        let mut t = Transfer::new(params, source, started);
        let lockstep_thread = cfg.lockstep_threads
            && !crowded
            && t.windowsize() == 1
            && p.size.is_some_and(|n| n >= LOCKSTEP_THREAD_MIN_BLOCKS * t.blksize() as u64);
        debug!(
            what = %p.what, blksize = t.blksize(), windowsize = t.windowsize(), crowded, on_thread = lockstep_thread,
            "transfer starting"
        );
        if lockstep_thread {
            t = self.run_on_thread(sock, t).await;
        } else {
            self.run_async(TransferSocket::Plain(sock), &mut t, started).await;
        }
        self.log_end(&t, &p.what, started, had_oack);
    }

    /// The transfer loop on the runtime: windows, GSO, one task per transfer.
    async fn run_async(&self, mut sock: TransferSocket, t: &mut Transfer, started: Instant) {
        let cfg = &self.shared.cfg;
        // ACKs and ERRORs only; a larger datagram is truncated by the kernel, which is harmless.
        let mut buf = [0u8; 1024];
        let first_deadline = t.deadline().unwrap_or(started);
        // One timer for the whole transfer. Deadlines only move later, so the timer may fire
        // early; it is then re-armed, at most once per timeout period instead of once per ACK.
        let sleep = tokio::time::sleep_until(first_deadline.into());
        tokio::pin!(sleep);
        let cancelled = self.cancel.cancelled();
        tokio::pin!(cancelled);
        // Windows go out with UDP GSO: one system call for up to 64 packets. If the kernel or
        // the route refuses it (no checksum offload, blksize above the path MTU), fall back to
        // one send per packet for the rest of the transfer.
        let mut gso = cfg.udp_gso && t.windowsize() > 1;
        // Lock-step on the runtime (short files): the same busy-polling as on a thread, so that
        // a quick client's ACK is taken without a trip through epoll and the scheduler.
        let budget = if t.windowsize() == 1 { cfg.busy_poll } else { std::time::Duration::ZERO };
        let mut poll = BusyPoll::new(budget, &self.shared.polling);
        loop {
            loop {
                let max_segments = if gso { GSO_MAX_SEGMENTS } else { 1 };
                let Some(batch) = t.poll_transmit_batch(max_segments, GSO_MAX_BYTES) else { break };
                let several = batch.len() > batch.segment;
                let mut r = if several {
                    match sock.registered() {
                        Ok(s) => send_gso(s, &batch).await,
                        Err(e) => Err(e),
                    }
                } else {
                    sock.send(batch.parts[0]).await
                };
                if let Err(e) = &r {
                    if several && e.kind() != io::ErrorKind::ConnectionRefused {
                        debug!("UDP GSO unavailable ({e}); sending packets one by one");
                        gso = false;
                        r = Ok(());
                        for p in batch.packets() {
                            if let Err(e) = sock.send(p).await {
                                r = Err(e);
                                break;
                            }
                        }
                    }
                }
                match r {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => t.abandon(Failure::Unreachable),
                    // Treated as a lost packet: the retransmission timer covers it.
                    Err(e) => debug!("send failed: {e}"),
                }
            }
            if !t.is_running() {
                break;
            }
            let sent = Instant::now();
            // Read the block after the window now, not after the ACK that makes it due.
            t.read_ahead();
            if self.cancel.is_cancelled() {
                t.cancel();
                continue;
            }
            if let Some(n) = poll.poll(sock.as_raw_fd(), &mut buf) {
                let now = Instant::now();
                t.on_packet(&buf[..n], now);
                // A stream of duplicate ACKs must not hold off the retransmission timer.
                t.on_timeout(now);
                continue;
            }
            let sock = match sock.registered() {
                Ok(s) => s,
                Err(e) => {
                    warn!("cannot register the transfer socket with the runtime: {e}");
                    t.abandon(Failure::Read(e.to_string()));
                    continue;
                }
            };
            tokio::select! {
                biased;
                _ = &mut cancelled => t.cancel(),
                r = sock.recv(&mut buf) => match r {
                    Ok(n) => {
                        poll.observe(sent.elapsed());
                        t.on_packet(&buf[..n], Instant::now())
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => t.abandon(Failure::Unreachable),
                    Err(e) => debug!("receive failed: {e}"),
                },
                _ = &mut sleep => {
                    let now = Instant::now();
                    t.on_timeout(now);
                    if let Some(d) = t.deadline() {
                        sleep.as_mut().reset(d.into());
                    }
                }
            }
        }
    }

    /// Runs a lock-step transfer on a thread of its own with a blocking socket: each ACK wakes
    /// that thread straight out of `recv`, which sends the next block at once (two system calls
    /// per block, as tftpd-hpa's process per transfer), instead of a readiness event, a task
    /// wake-up and a scheduler hop on the runtime. Falls back to the runtime if no thread can be
    /// started.
    async fn run_on_thread(&self, std_sock: std::net::UdpSocket, mut t: Transfer) -> Transfer {
        let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<(std::net::UdpSocket, Transfer)>(1);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let cancel = self.cancel.clone();
        let span = tracing::Span::current();
        let (polling, budget) = (self.shared.polling.clone(), self.shared.cfg.busy_poll);
        let spawned = std::thread::Builder::new()
            .name("tftp-lockstep".into())
            .stack_size(LOCKSTEP_THREAD_STACK)
            .spawn(move || {
                let _in_span = span.enter();
                if let Ok((sock, mut t)) = job_rx.recv() {
                    let mut poll = BusyPoll::new(budget, &polling);
                    run_lockstep(&sock, &mut t, &cancel, &mut poll);
                    let _ = done_tx.send(t);
                }
            });
        if let Err(e) = spawned {
            debug!("cannot start a transfer thread ({e}); running on the runtime");
            self.run_async(TransferSocket::Plain(std_sock), &mut t, Instant::now()).await;
            return t;
        }
        if job_tx.send((std_sock, t)).is_err() {
            // The thread died before taking the job (it cannot: it only waits for it).
            error!("transfer thread vanished");
        }
        match done_rx.await {
            Ok(t) => t,
            Err(_) => {
                error!("transfer thread panicked");
                let mut t = Transfer::new(
                    Params { blksize: 512, windowsize: 1, timeout: self.shared.cfg.timeout, retries: 0, oack: vec![] },
                    Box::new(std::io::empty()),
                    Instant::now(),
                );
                t.abandon(Failure::Read("transfer thread panicked".into()));
                t
            }
        }
    }
}

/// A transfer's socket on the runtime, registered with the runtime's epoll only once the
/// transfer first has to sleep until a datagram comes. A lock-step transfer whose ACKs are all
/// caught by busy-polling ([`BusyPoll`]) never registers it: registered, every ACK would also
/// wake the thread waiting in `epoll_wait` (on another CPU, the client's) for nothing.
enum TransferSocket {
    Plain(std::net::UdpSocket),
    Registered(UdpSocket),
    /// Registration failed; the socket is closed.
    Lost,
}

impl TransferSocket {
    /// The socket registered with the runtime (registering it now if it is not yet).
    fn registered(&mut self) -> io::Result<&UdpSocket> {
        if matches!(self, TransferSocket::Plain(_)) {
            let TransferSocket::Plain(s) = std::mem::replace(self, TransferSocket::Lost) else { unreachable!() };
            *self = TransferSocket::Registered(UdpSocket::from_std(s)?);
        }
        match self {
            TransferSocket::Registered(s) => Ok(s),
            _ => Err(io::Error::other("transfer socket lost")),
        }
    }

    /// Sends one datagram: straight from the plain socket, or waiting for room once registered.
    async fn send(&mut self, pkt: &[u8]) -> io::Result<()> {
        if let TransferSocket::Plain(s) = self {
            match s.send(pkt) {
                // A full send buffer: register and wait for room.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r.map(drop),
            }
        }
        self.registered()?.send(pkt).await.map(drop)
    }

    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            TransferSocket::Plain(s) => s.as_raw_fd(),
            TransferSocket::Registered(s) => s.as_raw_fd(),
            TransferSocket::Lost => -1,
        }
    }
}

/// Lock-step transfers of at least this many blocks (known size) run on their own thread; shorter
/// ones stay on the runtime, where they cost no thread start.
const LOCKSTEP_THREAD_MIN_BLOCKS: u64 = 32;
/// Stack of a lock-step transfer thread: the loop below needs a few KiB (plus logging).
const LOCKSTEP_THREAD_STACK: usize = 256 * 1024;
/// How long a lock-step thread blocks in `recv` before it looks at the shutdown token and the
/// retransmission deadline again.
const LOCKSTEP_POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// The lock-step transfers of one server that may busy-poll.
#[derive(Debug)]
struct Polling {
    /// Running now.
    active: std::sync::atomic::AtomicUsize,
    /// Most running at once for which polling is allowed: half the CPUs, at least one.
    max_active: usize,
}

impl Polling {
    /// Half of `cpus`, at least one.
    fn for_cpus(cpus: usize) -> Polling {
        Polling { active: Default::default(), max_active: (cpus / 2).max(1) }
    }
}

/// Misses in a row (no ACK within the budget) that stop a transfer's busy-polling.
const BUSY_POLL_MISSES: u32 = 3;
/// ACKs in a row that arrived within the budget while sleeping that start it again.
const BUSY_POLL_HITS: u32 = 16;

/// Adaptive busy-polling for a lock-step transfer's next ACK ([`TftpConfig::busy_poll`]).
///
/// A lock-step block costs one round trip, and when the client answers within microseconds (a
/// VM on this host, loopback) putting the thread to sleep and waking it again is a large part of
/// it. So after a send the thread polls its socket for up to the budget before it sleeps, but
/// only while it pays: a transfer stops polling after [`BUSY_POLL_MISSES`] ACKs in a row missed
/// the budget (firmware on a real network answers in hundreds of microseconds), and starts
/// again after [`BUSY_POLL_HITS`] ACKs in a row that would have been caught. Only while at most
/// half the CPUs' worth of lock-step transfers run (at least one) does anyone poll, so a busy
/// server never spends a CPU waiting.
///
/// A client on this host may run on the very CPU the transfer polls on: its datagrams then
/// arrive on that CPU ([`client_shares_our_cpu`]), and spinning there only keeps it from
/// answering. Such a transfer yields the CPU between its looks at the socket instead
/// (`sched_yield`): the client, woken by the block just sent, runs at once and its ACK is there
/// when the transfer gets the CPU back, with no sleep and wake-up in between. 4 KiB files to
/// curl on loopback, both pinned to one CPU: ~3300 requests/s yielding, ~2700 sleeping, ~2300
/// spinning; dnsmasq 3000-3400 (bench/RESULTS-tftp.md, stage 10).
struct BusyPoll<'a> {
    budget: std::time::Duration,
    /// The server's polling transfers; this one is counted in it while it lives (unless its
    /// budget is zero: it never polls then).
    polling: &'a Polling,
    on: bool,
    misses: u32,
    hits: u32,
    /// `sched_yield` calls so far (for tests and debugging).
    yields: u64,
}

impl<'a> BusyPoll<'a> {
    fn new(budget: std::time::Duration, polling: &'a Polling) -> BusyPoll<'a> {
        if !budget.is_zero() {
            polling.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        BusyPoll { budget, polling, on: !budget.is_zero(), misses: 0, hits: 0, yields: 0 }
    }

    /// Polls `sock` for a datagram for up to the budget, if polling is on and allowed now.
    /// `Some(len)` when one arrived; `None`: the caller sleeps in `recv` as usual.
    fn poll(&mut self, fd: std::os::fd::RawFd, buf: &mut [u8]) -> Option<usize> {
        if !self.on || self.polling.active.load(std::sync::atomic::Ordering::Relaxed) > self.polling.max_active {
            return None;
        }
        let until = Instant::now() + self.budget;
        let mut first = true;
        let mut yielding = false;
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call, and the
            // caller's socket owns `fd` for at least as long. (Reading past tokio's readiness
            // tracking is fine: its next `recv` finds the queue empty and waits for readiness.)
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n >= 0 {
                self.misses = 0;
                return Some(n as usize);
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                // ICMP "port unreachable" and the like: the blocking `recv` reports it.
                return None;
            }
            if first {
                yielding = client_shares_our_cpu(fd);
                first = false;
            }
            if Instant::now() >= until {
                self.misses += 1;
                if self.misses >= BUSY_POLL_MISSES {
                    self.on = false;
                    self.hits = 0;
                }
                return None;
            }
            if yielding {
                self.yields += 1;
                // SAFETY: no arguments; it cannot fail on Linux.
                unsafe { libc::sched_yield() };
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Tells a transfer that is not polling how long the client took to answer (from our send to
    /// its ACK waking us): enough fast answers in a row turn polling back on.
    fn observe(&mut self, answered_in: std::time::Duration) {
        if self.on || self.budget.is_zero() {
            return;
        }
        if answered_in <= self.budget {
            self.hits += 1;
            if self.hits >= BUSY_POLL_HITS {
                self.on = true;
                self.misses = 0;
            }
        } else {
            self.hits = 0;
        }
    }
}

/// Whether the client's last datagram was delivered on the CPU this thread runs on
/// (`SO_INCOMING_CPU`, kept by connected sockets): the mark of a client on this host (loopback,
/// a VM's tap) that runs here. Unknown (no datagram yet, an old kernel): false.
fn client_shares_our_cpu(fd: std::os::fd::RawFd) -> bool {
    let mut cpu: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `cpu` and `len` are valid for writes and `len` is `cpu`'s size.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_INCOMING_CPU, (&mut cpu as *mut libc::c_int).cast(), &mut len)
    };
    // SAFETY: no arguments; returns -1 where unsupported.
    r == 0 && cpu >= 0 && cpu == unsafe { libc::sched_getcpu() }
}

impl Drop for BusyPoll<'_> {
    fn drop(&mut self) {
        if !self.budget.is_zero() {
            self.polling.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The blocking twin of the runtime's loop for windowsize 1: send what the state machine has,
/// then wait for the ACK: busy-polling first if `poll` says it pays, then blocking in `recv`
/// (at most [`LOCKSTEP_POLL`]).
fn run_lockstep(sock: &std::net::UdpSocket, t: &mut Transfer, cancel: &CancellationToken, poll: &mut BusyPoll<'_>) {
    if let Err(e) = sock.set_nonblocking(false).and_then(|()| sock.set_read_timeout(Some(LOCKSTEP_POLL))) {
        warn!("cannot make the transfer socket blocking: {e}");
        t.abandon(Failure::Read(e.to_string()));
        return;
    }
    let mut buf = [0u8; 1024];
    loop {
        while let Some(pkt) = t.poll_transmit() {
            match sock.send(pkt) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => t.abandon(Failure::Unreachable),
                // Treated as a lost packet: the retransmission timer covers it.
                Err(e) => debug!("send failed: {e}"),
            }
        }
        if !t.is_running() {
            break;
        }
        if cancel.is_cancelled() {
            t.cancel();
            continue;
        }
        let sent = Instant::now();
        // Read the next block while the client handles this one: when its ACK arrives, the
        // next block is ready and goes out at once (tftpd-hpa's double buffer).
        t.read_ahead();
        let received = match poll.poll(sock.as_raw_fd(), &mut buf) {
            Some(n) => Ok(n),
            None => {
                let r = sock.recv(&mut buf);
                if r.is_ok() {
                    poll.observe(sent.elapsed());
                }
                r
            }
        };
        match received {
            Ok(n) => {
                let now = Instant::now();
                t.on_packet(&buf[..n], now);
                // A stream of duplicate ACKs must not hold off the retransmission timer.
                t.on_timeout(now);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                t.on_timeout(Instant::now())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => t.abandon(Failure::Unreachable),
            Err(e) => {
                debug!("receive failed: {e}");
                // Do not spin on a persistent error; the deadline still ends the transfer.
                std::thread::sleep(std::time::Duration::from_millis(5));
                t.on_timeout(Instant::now());
            }
        }
    }
}

impl Job {
    fn log_end(&self, t: &Transfer, p_what: &str, started: Instant, had_oack: bool) {
        let st = t.stats();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match t.status() {
            Status::Done => info!(
                what = %p_what, bytes = st.bytes, blksize = t.blksize(), windowsize = t.windowsize(),
                ms = format_args!("{ms:.1}"), resent = st.resent, "TFTP transfer complete"
            ),
            // EDK2 reads tsize from the OACK, then aborts with ERROR 8 and asks again: normal.
            Status::Failed(Failure::ClientError { code: ErrorCode::OptionNegotiation, .. })
                if had_oack && st.data_sent == 0 =>
            {
                info!(what = %p_what, "client ended the transfer after option negotiation (size probe)")
            }
            Status::Failed(f) => warn!(
                what = %p_what, bytes = st.bytes, blksize = t.blksize(), ms = format_args!("{ms:.1}"),
                "TFTP transfer failed: {f}"
            ),
            Status::Running => {}
        }
    }
}

/// Most segments in one GSO send (the kernel's `UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send: below the 65 507-byte UDP payload limit.
const GSO_MAX_BYTES: usize = 65_000;

/// Sends a batch as datagrams of `batch.segment` bytes (the last may be shorter) with one
/// `sendmsg` and `UDP_SEGMENT` on a connected socket; its two parts are two iovecs (the kernel
/// segments their concatenation).
async fn send_gso(sock: &UdpSocket, batch: &Batch<'_>) -> io::Result<()> {
    let seg = u16::try_from(batch.segment).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        sock.writable().await?;
        match sock.try_io(tokio::io::Interest::WRITABLE, || sendmsg_gso(sock.as_raw_fd(), &batch.parts, seg)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

fn sendmsg_gso(fd: std::os::fd::RawFd, parts: &[&[u8]; 2], seg: u16) -> io::Result<()> {
    #[repr(C, align(8))]
    struct Cmsg([u8; 32]);
    let mut cbuf = Cmsg([0; 32]);
    let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2];
    let mut n = 0;
    for p in parts.iter().filter(|p| !p.is_empty()) {
        iov[n] = libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() };
        n += 1;
    }
    // SAFETY: msg points at live locals; the control buffer is 8-aligned and larger than
    // CMSG_SPACE(2); the kernel only reads from the iovecs, which point into `parts`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n as _;
        msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
        if libc::sendmsg(fd, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn fmt_mac(mac: &Option<HwAddr>) -> String {
    mac.as_ref().map_or_else(|| "unknown".to_string(), |m| m.to_string())
}

/// A transfer's socket: a new port (its transfer ID) on `local`, on the listener's device if it
/// had one, non-blocking, connected to the client. Connected, the kernel drops datagrams from
/// other transfer IDs (as tftpd-hpa's connected sockets do; RFC 1350's ERROR 5 to them is a
/// "should"), skips a route lookup per packet, and reports ICMP port unreachable, so a vanished
/// client ends the transfer at once instead of after all retries. Not yet registered with the
/// runtime.
fn bind_transfer_socket(
    local: IpAddr,
    ifindex: u32,
    device: Option<&[u8]>,
    client: SocketAddr,
) -> io::Result<std::net::UdpSocket> {
    let addr = match local {
        IpAddr::V6(a) if is_link_local(&a) => SocketAddr::V6(SocketAddrV6::new(a, 0, 0, ifindex)),
        a => SocketAddr::new(a, 0),
    };
    // SOCK_NONBLOCK (and SOCK_CLOEXEC) at creation: no fcntl calls per transfer.
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
    if let Some(dev) = device {
        s.bind_device(Some(dev))?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.connect(&client.into())?;
    Ok(s.into())
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

/// The MTU of interface `ifindex`, from sysfs. `None` when unknown.
fn interface_mtu(ifindex: u32) -> Option<u32> {
    let name = crate::net::ifname(ifindex)?;
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod busy_poll_tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::{client_shares_our_cpu, BusyPoll, Polling, BUSY_POLL_HITS, BUSY_POLL_MISSES};

    /// One CPU's worth: one polling transfer allowed.
    fn polling() -> Polling {
        Polling { active: Default::default(), max_active: 1 }
    }

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        (a, b)
    }

    /// Waits until `sock` has a datagram queued (without taking it).
    fn queued(sock: &UdpSocket) {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.peek(&mut [0u8; 8]).unwrap();
    }

    #[test]
    fn a_waiting_ack_is_taken_by_polling() {
        let (server, client) = pair();
        let polling = polling();
        let mut p = BusyPoll::new(Duration::from_micros(200), &polling);
        client.send(b"ack1").unwrap();
        queued(&server);
        let mut buf = [0u8; 16];
        assert_eq!(p.poll(server.as_raw_fd(), &mut buf), Some(4));
        assert_eq!(&buf[..4], b"ack1");
    }

    /// Pins the calling thread to `cpu`; false where that is not allowed (a CPU outside the
    /// process's set, a container's seccomp filter).
    fn pin_to(cpu: usize) -> bool {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it for cpu < 1024.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }

    /// The CPUs this process may run on.
    fn allowed_cpus() -> Vec<usize> {
        // SAFETY: `set` is written by sched_getaffinity and only read by CPU_ISSET below.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
            (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
        }
    }

    /// Sends `msg` from a thread pinned to `cpu` (so the datagram is delivered on that CPU).
    fn send_from_cpu(sock: &UdpSocket, cpu: usize, msg: &[u8]) {
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(pin_to(cpu), "cannot pin a thread to CPU {cpu}");
                sock.send(msg).unwrap();
            });
        });
    }

    /// Runs `f` on a thread pinned to the first of two CPUs this process may use, with the
    /// other one as argument; false (after saying why) where that cannot be arranged.
    fn on_pinned_thread(f: impl FnOnce(usize, usize) + Send + 'static) -> bool {
        let cpus = allowed_cpus();
        if cpus.len() < 2 {
            println!("SKIPPED: needs two CPUs to tell a client on our CPU from one elsewhere, has {cpus:?}");
            return false;
        }
        let (us, other) = (cpus[0], cpus[1]);
        // A thread of its own: pinning must not leak into other tests.
        std::thread::spawn(move || {
            if !pin_to(us) {
                println!("SKIPPED: cannot pin a thread to CPU {us} here");
                return;
            }
            f(us, other)
        })
        .join()
        .unwrap();
        true
    }

    #[test]
    fn a_client_is_on_our_cpu_when_its_datagrams_arrive_there() {
        on_pinned_thread(|us, other| {
            let (server, client) = pair();
            assert!(!client_shares_our_cpu(server.as_raw_fd()), "nothing received yet");
            for (from, expected) in [(us, true), (other, false), (us, true)] {
                send_from_cpu(&client, from, b"ack1");
                server.recv(&mut [0u8; 16]).unwrap();
                assert_eq!(client_shares_our_cpu(server.as_raw_fd()), expected, "datagram sent on CPU {from}, we run on {us}");
            }
        });
    }

    #[test]
    fn a_client_on_our_cpu_gets_it_while_we_wait_and_one_elsewhere_does_not() {
        on_pinned_thread(|us, other| {
            let polling = polling();
            let budget = Duration::from_millis(200);
            for (cpu, yields) in [(us, true), (other, false)] {
                // A client on `cpu` that answers every block with an ACK. It never sleeps (it
                // looks at its socket and yields): on our CPU it only runs when we let it, so
                // a transfer that spun would wait for the scheduler tick to take our CPU away.
                let (server, client) = pair();
                client.set_nonblocking(true).unwrap();
                let echo = std::thread::spawn(move || {
                    assert!(pin_to(cpu));
                    let mut b = [0u8; 16];
                    let mut answered = 0;
                    while answered < 20 {
                        match client.recv(&mut b) {
                            Ok(n) => {
                                client.send(&b[..n]).unwrap();
                                answered += 1;
                            }
                            // SAFETY: no arguments.
                            Err(_) => unsafe {
                                libc::sched_yield();
                            },
                        }
                    }
                });
                let mut p = BusyPoll::new(budget, &polling);
                let mut buf = [0u8; 16];
                for i in 0..20u8 {
                    server.send(&[0, 3, 0, i]).unwrap();
                    let got = p.poll(server.as_raw_fd(), &mut buf).or_else(|| {
                        // Not polled for (no datagram yet to tell where the client is): sleep.
                        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        server.recv(&mut buf).ok()
                    });
                    assert_eq!(got, Some(4), "ACK {i} from the client on CPU {cpu}");
                    assert_eq!(buf[3], i);
                }
                echo.join().unwrap();
                assert_eq!(p.misses, 0, "client on CPU {cpu}");
                assert_eq!(p.yields > 0, yields, "client on CPU {cpu}, we run on {us}: {} yields", p.yields);
            }
        });
    }

    #[test]
    fn slow_clients_turn_polling_off_and_fast_ones_back_on() {
        let (server, _client) = pair();
        let polling = polling();
        let budget = Duration::from_micros(100);
        let mut p = BusyPoll::new(budget, &polling);
        let mut buf = [0u8; 16];
        for _ in 0..BUSY_POLL_MISSES {
            assert!(p.on);
            assert_eq!(p.poll(server.as_raw_fd(), &mut buf), None);
        }
        assert!(!p.on, "still polling after {BUSY_POLL_MISSES} misses in a row");
        // Off: answers slower than the budget keep it off, a run of fast ones turns it on.
        p.observe(budget * 10);
        for _ in 0..BUSY_POLL_HITS - 1 {
            p.observe(budget / 2);
        }
        p.observe(budget * 10);
        for _ in 0..BUSY_POLL_HITS - 1 {
            p.observe(budget / 2);
        }
        assert!(!p.on, "an interrupted run of fast answers turned polling on");
        p.observe(budget / 2);
        assert!(p.on);
    }

    #[test]
    fn no_polling_when_disabled_or_when_many_transfers_run() {
        let (server, client) = pair();
        let mut buf = [0u8; 16];
        client.send(b"ack").unwrap();
        queued(&server);
        // Disabled: never polls, even with a datagram waiting (the blocking recv takes it).
        let polling = polling();
        let mut off = BusyPoll::new(Duration::ZERO, &polling);
        assert_eq!(off.poll(server.as_raw_fd(), &mut buf), None);
        off.observe(Duration::ZERO);
        assert!(!off.on);
        // Too many lock-step transfers at once (two, one allowed): nobody polls.
        let first = BusyPoll::new(Duration::from_micros(200), &polling);
        let mut busy = BusyPoll::new(Duration::from_micros(200), &polling);
        assert_eq!(busy.poll(server.as_raw_fd(), &mut buf), None);
        assert!(busy.on, "being crowded out is not a miss");
        // When the other ends, this one may poll again.
        drop(first);
        assert_eq!(busy.poll(server.as_raw_fd(), &mut buf), Some(3));
    }
}

#[cfg(test)]
mod prepare_gate_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_slow_preparation_sends_the_next_ones_to_the_pool_until_a_quick_run() {
        let gate = PrepareGate::default();
        let (quick, slow) = (Duration::from_micros(20), SLOW_PREPARE);
        gate.observe(quick);
        assert!(gate.inline());
        gate.observe(slow);
        assert!(!gate.inline());
        for _ in 1..POOL_AFTER_SLOW {
            gate.observe(quick);
        }
        assert!(!gate.inline(), "one quick preparation short");
        // A slow one on the pool starts the count again.
        gate.observe(slow);
        for _ in 0..POOL_AFTER_SLOW - 1 {
            gate.observe(quick);
        }
        assert!(!gate.inline());
        gate.observe(quick);
        assert!(gate.inline());
        gate.observe(quick);
        assert!(gate.inline());
    }
}
