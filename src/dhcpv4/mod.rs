//! The DHCPv4 server: proxyDHCP on the DHCP port (67) and the PXE boot server port (4011), or
//! in full mode ([`full`]) the network's DHCP server on 67 with port 4011 still answered as a
//! PXE boot server.
//!
//! Each listener has a few worker threads (see [`serve`]). One of them at a time drives the
//! socket: it waits for requests, takes every one that has arrived, and handles each: receive →
//! parse (malformed: counted, dropped, logged at debug) → [`proxy::classify`] → build a
//! [`BootRequest`] → ask the policy (bounded by its deadline) → [`proxy::build_reply`] → send
//! out of the interface the request came in on. Under load it takes requests in batches, every
//! [`Context::batch`], so that one wake-up and one durable lease write serve a whole batch; in
//! full mode the REQUESTs that follow a batch's OFFERs are answered as they arrive. A
//! worker about to block (a slow policy call, a per-host store commit, a slow disk) hands the
//! socket to another one first, so the others keep being answered.

pub mod full;
pub mod proxy;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn};

use crate::clients::ClientTable;
use crate::net::{ifname, PktInfo, PktSocket, SyncPktSocket};
use crate::policy::{BootRequest, Decision, Policy};
use crate::wire::dhcpv4;

pub use proxy::Listener;

/// Counters, shared with whoever reports status.
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Datagrams that failed to parse (dropped).
    pub malformed: AtomicU64,
    /// Requests not for us (not PXE, left to the DHCP server, …).
    pub skipped: AtomicU64,
    /// Requests the policy chose to ignore.
    pub ignored: AtomicU64,
    /// Replies sent.
    pub answered: AtomicU64,
    /// Policy failures (fallback applied).
    pub policy_errors: AtomicU64,
    /// Requests the kernel dropped because every worker was busy and the socket's receive
    /// buffer was full.
    pub overloaded: AtomicU64,
    /// Replies that could not be sent.
    pub send_errors: AtomicU64,
    /// Full mode: DHCPOFFERs sent.
    pub offers: AtomicU64,
    /// Full mode: DHCPACKs with a lease (each durable before it was sent).
    pub acks: AtomicU64,
    /// Full mode: DHCPNAKs.
    pub naks: AtomicU64,
    /// Full mode: DHCPDECLINEs accepted (address quarantined).
    pub declines: AtomicU64,
    /// Full mode: DHCPRELEASEs accepted.
    pub releases: AtomicU64,
    /// Full mode: DHCPINFORMs answered.
    pub informs: AtomicU64,
    /// Full mode: DISCOVERs left unanswered because the subnet's pools were full.
    pub pool_exhausted: AtomicU64,
    /// Full mode: leases that could not be stored (no ACK was sent).
    pub store_errors: AtomicU64,
}

/// What the DHCPv4 workers need besides their socket.
#[derive(Debug, Clone)]
pub struct Context {
    /// The policy.
    pub policy: Arc<dyn Policy>,
    /// Decision applied when the policy fails.
    pub fallback: Decision,
    /// A policy call that takes longer than this is logged (it held a worker that long).
    pub slow_policy: Duration,
    /// Server address to announce when the receiving interface's cannot be determined.
    pub server_ip: Option<Ipv4Addr>,
    /// Where DHCP records which MAC uses which address.
    pub clients: ClientTable,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Worker threads per listener: one drives the socket, the others stand by to take it over
    /// while one is blocked.
    pub workers: usize,
    /// Under load, how long requests gather in the socket before the driving worker takes them
    /// all (zero: as soon as they arrive).
    pub batch: Duration,
    /// Full DHCP mode: leases and subnets. `None` in proxy mode.
    pub full: Option<Arc<full::Full>>,
}

/// How long a worker waits for a request (or the socket) before it looks at the shutdown flag
/// again.
const WORKER_POLL: Duration = Duration::from_millis(100);

/// Most requests taken in one batch; more waiting are taken at once in the next one.
const MAX_BATCH: usize = 64;

/// A lease commit that took longer than this marks the disk as slow: the next commit is made
/// after handing the socket to another worker.
const SLOW_COMMIT: Duration = Duration::from_millis(2);

/// A batch (requests and their lease commit) running longer than this is a stall (a slow disk,
/// a hook blocked in a call that gave no warning): a standby worker takes the socket over.
const STALL: Duration = Duration::from_millis(25);

/// Which worker drives a listener's socket. Exactly one at a time waits on it and handles what
/// arrives; the others wait here until it hands the socket over (it is about to block), until
/// one of them, the watcher, finds it stalled in a batch for longer than [`STALL`], or until
/// the listener stops.
#[derive(Debug)]
struct Baton {
    /// The worker holding the socket, or [`Baton::FREE`].
    holder: AtomicUsize,
    /// The standby that checks the holder for stalls while traffic flows, or [`Baton::FREE`].
    watcher: AtomicUsize,
    /// When the holder began its current batch, in nanoseconds since `epoch`; 0 between batches.
    busy_since: AtomicU64,
    /// When the latest batch began (nanoseconds since `epoch`): traffic is flowing.
    last_batch: AtomicU64,
    epoch: Instant,
    stop: AtomicBool,
    parked: Mutex<()>,
    wake: Condvar,
}

impl Baton {
    const FREE: usize = usize::MAX;

    fn new() -> Baton {
        Baton {
            holder: AtomicUsize::new(Baton::FREE),
            watcher: AtomicUsize::new(Baton::FREE),
            busy_since: AtomicU64::new(0),
            last_batch: AtomicU64::new(0),
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            parked: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Nanoseconds since `epoch`, never 0.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    fn try_take(&self, me: usize) -> bool {
        let took = self.holder.compare_exchange(Baton::FREE, me, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if took {
            let _ = self.watcher.compare_exchange(me, Baton::FREE, Ordering::AcqRel, Ordering::Acquire);
        }
        took
    }

    fn holds(&self, me: usize) -> bool {
        self.holder.load(Ordering::Acquire) == me
    }

    fn begin_batch(&self) {
        let t = self.now();
        self.last_batch.store(t, Ordering::Relaxed);
        self.busy_since.store(t, Ordering::Release);
    }

    /// Ends `me`'s batch (a worker that lost the socket mid-batch must not clear the flag of
    /// the one that took it).
    fn end_batch(&self, me: usize) {
        if self.holds(me) {
            self.busy_since.store(0, Ordering::Release);
        }
    }

    /// Gives the socket up (if `me` holds it) and wakes one waiting worker to take it.
    fn release(&self, me: usize) {
        if self.holder.compare_exchange(me, Baton::FREE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.busy_since.store(0, Ordering::Release);
            let _g = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_one();
        }
    }

    /// A standby's wait: until the socket is free or a while passed. The watcher (the first
    /// standby to wait) wakes every [`STALL`] while traffic flows and takes the socket from a
    /// holder stuck in one batch for longer than that; `true` when it did.
    fn wait_free(&self, me: usize) -> bool {
        let watching = match self.watcher.compare_exchange(Baton::FREE, me, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(w) => w == me,
        };
        let flowing = self.now().saturating_sub(self.last_batch.load(Ordering::Relaxed)) < 1_000_000_000;
        let g = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        if self.holder.load(Ordering::Acquire) != Baton::FREE && !self.stopped() {
            let wait = if watching && flowing { STALL } else { Duration::from_secs(1) };
            let _ = self.wake.wait_timeout(g, wait);
        } else {
            drop(g);
        }
        if !watching {
            return false;
        }
        let holder = self.holder.load(Ordering::Acquire);
        let since = self.busy_since.load(Ordering::Acquire);
        let stalled = Duration::from_nanos(self.now().saturating_sub(since));
        if holder == Baton::FREE || since == 0 || stalled <= STALL || self.stopped() {
            return false;
        }
        if self.holder.compare_exchange(holder, me, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        let _ = self.watcher.compare_exchange(me, Baton::FREE, Ordering::AcqRel, Ordering::Acquire);
        warn!(
            stalled_ms = stalled.as_millis() as u64,
            "a DHCP worker has been busy with one batch for {stalled:?} (slow disk or hook?); another takes over the socket"
        );
        true
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _g = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }
}

/// The hook a driving worker arms on its thread: about to block, it gives the socket to
/// another worker and finishes the request it is on.
struct HandOver {
    baton: Arc<Baton>,
    me: usize,
}

impl crate::handoff::Handoff for HandOver {
    fn hand_off(&self) {
        debug!("this worker is about to block: another one takes the socket meanwhile");
        self.baton.release(self.me);
    }
}

/// Stops the workers when dropped: they stop even if the serving future is dropped, not awaited.
struct StopOnDrop(Arc<Baton>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Serves one listener socket until `shutdown` is cancelled.
///
/// `ctx.workers` threads share the socket, one driving it at a time (see [`Baton`]): it sleeps
/// until a request arrives, handles everything that has arrived (parse, policy, lease, reply),
/// then, while requests keep coming, sleeps [`Context::batch`] before it takes the next batch.
/// A wake-up is much of what a request costs on a virtual machine (an idle vCPU halts and
/// must be woken: ~14 µs of CPU per wake-up across vCPUs on the benchmark VM, `perf bench
/// sched pipe -T`), and a durable write more, so under load one wake-up serves a batch, and
/// so does one durable lease write: the ACKs of a batch leave after one commit. Nothing hops
/// between threads on the way. A worker about to block hands the socket to a standby worker
/// first ([`crate::handoff`]), so a slow policy call delays only its own request. Requests
/// wait in the socket's receive buffer meanwhile; what the kernel drops from a full buffer is
/// counted in `overloaded`.
pub async fn serve(
    sock: PktSocket,
    listener: Listener,
    ctx: Context,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let local = sock.local_addr()?;
    let sock = Arc::new(sock.into_sync()?);
    let stop = StopOnDrop(Arc::new(Baton::new()));
    let mut workers = Vec::with_capacity(ctx.workers.max(1));
    for i in 0..ctx.workers.max(1) {
        let (sock, ctx, baton) = (sock.clone(), ctx.clone(), stop.0.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("dhcp-{}-{i}", local.port()))
            .spawn(move || worker(i, &sock, listener, &ctx, &baton));
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) if workers.is_empty() => return Err(e),
            Err(e) => {
                warn!(%local, "started {i} DHCP workers, not more: {e}");
                break;
            }
        }
    }
    info!(%local, ?listener, workers = workers.len(), batch = ?ctx.batch, "DHCPv4 listener ready");
    shutdown.cancelled().await;
    stop.0.stop();
    let joined = tokio::task::spawn_blocking(move || workers.into_iter().map(|w| w.join()).filter(Result::is_err).count()).await;
    if let Ok(n) = joined {
        if n > 0 {
            error!(%local, "{n} DHCP worker(s) ended by a panic");
        }
    }
    Ok(())
}

/// One worker thread: drive the socket whenever it is free, until the listener stops.
fn worker(me: usize, sock: &Arc<SyncPktSocket>, listener: Listener, ctx: &Context, baton: &Arc<Baton>) {
    short_slice();
    let mut buf = vec![0u8; 65_536];
    while !baton.stopped() {
        if !baton.try_take(me) && !baton.wait_free(me) {
            continue;
        }
        crate::handoff::arm(Box::new(HandOver { baton: baton.clone(), me }));
        drive(me, sock, listener, ctx, baton, &mut buf);
        crate::handoff::disarm();
        baton.release(me);
    }
}

/// Asks the scheduler for a short time slice for this thread (EEVDF, Linux 6.12 and later:
/// `sched_attr.sched_runtime` of a normal task; older kernels ignore it). A reply wakes its
/// client, and a client on this CPU would otherwise preempt the worker before the other
/// replies of a burst are out: a REQUEST burst's second ACK left ~100 µs after the first,
/// while the client read the first. With an earlier deadline the worker keeps the CPU for
/// the few microseconds each reply takes. Nice level and policy stay as they are.
fn short_slice() {
    /// `struct sched_attr` (include/uapi/linux/sched/types.h), version 1 (56 bytes).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
        util_min: u32,
        util_max: u32,
    }
    // SAFETY: getpriority takes plain integers; errno is not consulted (a nice of -1 is
    // indistinguishable from an error, and keeping -1 is right then too).
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: 100_000, // ns: the shortest slice the kernel grants
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: `attr` is a valid, fully initialised sched_attr of the size it states; pid 0 is
    // the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
    if r != 0 {
        debug!("a short scheduler slice for the DHCP worker was refused: {}", std::io::Error::last_os_error());
    }
}

/// Waits for requests and handles them in batches while this worker holds the socket.
///
/// In full mode, a batch's OFFERs leave after their commit, and their REQUESTs follow within
/// a round trip. Their leases are stored already, so their ACKs need no write: until those
/// REQUESTs are in (or the next batch is due), the worker waits on the socket instead of
/// sleeping and answers each as it arrives ([`expect_requests`]).
fn drive(me: usize, sock: &Arc<SyncPktSocket>, listener: Listener, ctx: &Context, baton: &Baton, buf: &mut [u8]) {
    // Under load: when to take the next batch. `None`: sleep until a request arrives.
    let mut next: Option<Instant> = None;
    // REQUESTs expected for the OFFERs the last batch sent.
    let mut expected = 0u64;
    // The OFFER counter when this worker last committed: OFFERs counted since then (in the
    // batch, or in the wait before it) leave with the next commit.
    let mut offers_committed = ctx.stats.offers.load(Ordering::Relaxed);
    loop {
        if baton.stopped() || !baton.holds(me) {
            return;
        }
        match next {
            Some(at) => {
                if expected > 0 {
                    expect_requests(me, sock, listener, ctx, baton, buf, expected, at);
                    if !baton.holds(me) {
                        return;
                    }
                }
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
            }
            None => match sock.wait_readable(WORKER_POLL) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    warn!(local = %sock.local_addr(), "waiting for requests failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        }
        let started = Instant::now();
        baton.begin_batch();
        let taken = take_waiting(me, sock, listener, ctx, baton, buf);
        // The ACKs of this batch leave once their leases are durable: one write for them all.
        let offers = ctx.stats.offers.load(Ordering::Relaxed);
        if let Some(full) = &ctx.full {
            let writer = full.writer();
            if writer.has_queued() {
                if writer.last_commit() > SLOW_COMMIT {
                    crate::handoff::about_to_block();
                }
                writer.commit();
            }
        }
        baton.end_batch(me);
        expected = match (listener, &ctx.full) {
            (Listener::Dhcp, Some(_)) => offers.saturating_sub(offers_committed),
            _ => 0,
        };
        offers_committed = offers;
        next = if taken == 0 || ctx.batch.is_zero() {
            None
        } else if taken >= MAX_BATCH {
            Some(Instant::now())
        } else {
            Some(started + ctx.batch)
        };
    }
}

/// Until `until`, or until `expected` REQUESTs have been ACKed, waits on the socket and
/// handles each request as it arrives: a REQUEST for a stored offer is ACKed at once, while
/// whatever needs a write (a DISCOVER's offer, another ACK) waits in the writer's queue for
/// the batch at `until`. One wake-up per arrival, so only while REQUESTs are due.
#[allow(clippy::too_many_arguments)]
fn expect_requests(
    me: usize,
    sock: &Arc<SyncPktSocket>,
    listener: Listener,
    ctx: &Context,
    baton: &Baton,
    buf: &mut [u8],
    expected: u64,
    until: Instant,
) {
    // ACKs leave here only for stored offers (the others wait for the batch's commit).
    let acked_before = ctx.stats.acks.load(Ordering::Relaxed);
    while ctx.stats.acks.load(Ordering::Relaxed).saturating_sub(acked_before) < expected && baton.holds(me) && !baton.stopped() {
        let now = Instant::now();
        if now >= until {
            return;
        }
        match sock.wait_readable(until - now) {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
        baton.begin_batch();
        let taken = take_waiting(me, sock, listener, ctx, baton, buf);
        baton.end_batch(me);
        if taken == 0 {
            return;
        }
    }
}

/// Takes and handles the requests waiting, at most [`MAX_BATCH`]; returns how many. Stops
/// early if a slow request made this worker hand the socket over: the rest is for the worker
/// that took it.
fn take_waiting(me: usize, sock: &Arc<SyncPktSocket>, listener: Listener, ctx: &Context, baton: &Baton, buf: &mut [u8]) -> usize {
    let mut taken = 0;
    while taken < MAX_BATCH && baton.holds(me) {
        match take_one(sock, listener, ctx, buf) {
            Took::One => taken += 1,
            Took::Nothing => break,
            Took::Failed => {
                // Not a busy loop on a socket that keeps failing.
                std::thread::sleep(Duration::from_millis(10));
                break;
            }
        }
    }
    taken
}

/// What [`take_one`] found.
enum Took {
    /// A datagram, handled (answered, ignored or dropped as malformed).
    One,
    /// Nothing waiting.
    Nothing,
    /// The socket failed (logged).
    Failed,
}

/// Takes one waiting datagram and handles it.
fn take_one(sock: &Arc<SyncPktSocket>, listener: Listener, ctx: &Context, buf: &mut [u8]) -> Took {
    let local = sock.local_addr();
    let (n, from, info, dropped) = match sock.recv(buf) {
        Ok(x) => x,
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Took::Nothing,
        Err(e) if e.kind() == ErrorKind::Interrupted => return Took::One,
        Err(e) if e.kind() == ErrorKind::InvalidData => {
            ctx.stats.received.fetch_add(1, Ordering::Relaxed);
            ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
            debug!(%local, "dropping datagram: {e}");
            return Took::One;
        }
        Err(e) => {
            warn!(%local, "receive failed: {e}");
            return Took::Failed;
        }
    };
    if dropped > 0 {
        ctx.stats.overloaded.fetch_add(u64::from(dropped), Ordering::Relaxed);
        debug!(%local, dropped, "the kernel dropped requests: the receive buffer was full");
    }
    ctx.stats.received.fetch_add(1, Ordering::Relaxed);
    let pkt = match dhcpv4::parse(&buf[..n]) {
        Ok(p) => p,
        Err(e) => {
            ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
            debug!(%from, "dropping malformed DHCP packet: {e}");
            return Took::One;
        }
    };
    let span = info_span!(
        "dhcp",
        mac = %crate::policy::HwAddr(pkt.mac().to_vec()),
        xid = format_args!("{:#010x}", pkt.xid)
    );
    let _in_span = span.enter();
    let handled = std::panic::catch_unwind(AssertUnwindSafe(|| handle(sock, listener, ctx, pkt, from, info)));
    if let Err(p) = handled {
        error!("internal error while handling this request (dropped; please report): {}", crate::panic_message(&*p));
    }
    Took::One
}

pub(crate) fn our_ipv4(info: &PktInfo, sock: &SyncPktSocket, ctx: &Context) -> Option<Ipv4Addr> {
    [info.local, sock.local_addr().ip()]
        .into_iter()
        .find_map(|a| match a {
            IpAddr::V4(v4) if !v4.is_unspecified() && !v4.is_broadcast() => Some(v4),
            _ => None,
        })
        .or(ctx.server_ip)
}

fn handle(sock: &Arc<SyncPktSocket>, listener: Listener, ctx: &Context, pkt: dhcpv4::Packet, from: SocketAddr, info: PktInfo) {
    if let (Listener::Dhcp, Some(f)) = (listener, &ctx.full) {
        return full::handle(f, sock, ctx, pkt, from, info);
    }
    let Some(server_ip) = our_ipv4(&info, sock, ctx) else {
        warn!("cannot tell our own address on interface {}; set [dhcp] server_ip", info.ifindex);
        return;
    };
    // A unicast to our PXE port is for us whatever option 54 says (it may name another of our
    // addresses); only a broadcast one is checked against our address.
    let broadcast_dst = info.dst != info.local;
    let ours: &[Ipv4Addr] = if broadcast_dst { &[server_ip] } else { &[] };
    let phase = match proxy::classify(&pkt, listener, ours) {
        Ok(p) => p,
        Err(why) => {
            ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
            debug!(%from, "not answering: {why}");
            return;
        }
    };
    let iface = ifname(info.ifindex);
    let mut req = BootRequest::from_dhcpv4(&pkt, phase, iface.clone(), Some(from));
    req.server = Some(IpAddr::V4(server_ip));
    if let Some(ip) = req.client_ip.or_else(|| (!from.ip().is_unspecified()).then_some(from.ip())) {
        ctx.clients.record(ip, req.mac.clone());
    }
    let arch = req.arch().map(|a| a.name()).unwrap_or_else(|| "none".into());
    let decision = ask_policy(ctx, req);
    let d = match decision {
        Decision::Ignore => {
            ctx.stats.ignored.fetch_add(1, Ordering::Relaxed);
            info!(phase = %phase.as_str(), %arch, "decision: ignore (the policy stays silent for this client)");
            return;
        }
        Decision::Boot(d) => d,
    };
    let (reply, warnings) = proxy::build_reply(&pkt, phase, &d, server_ip);
    for w in warnings {
        warn!("{w}");
    }
    let (bytes, dropped) = reply.encode();
    if !dropped.is_empty() {
        warn!(?dropped, max = reply.max_len, "options did not fit the client's maximum message size");
    }
    let (to, broadcast) = proxy::destination(&pkt, from);
    if broadcast && info.ifindex == 0 {
        warn!("cannot broadcast a reply: the request's interface is unknown");
        return;
    }
    info!(
        phase = %phase.as_str(),
        %arch,
        filename = %d.filename.as_deref().unwrap_or(""),
        next_server = %reply.siaddr,
        %to,
        interface = %iface.as_deref().unwrap_or("?"),
        "decision"
    );
    send_reply(sock, &ctx.stats, &bytes, to, server_ip, info.ifindex);
}

/// Sends an encoded reply from `server_ip` out of interface `ifindex` and counts the outcome.
pub(crate) fn send_reply(sock: &SyncPktSocket, stats: &Stats, bytes: &[u8], to: SocketAddr, server_ip: Ipv4Addr, ifindex: u32) {
    match sock.send(bytes, to, Some(IpAddr::V4(server_ip)), ifindex) {
        Ok(_) => {
            stats.answered.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
            warn!(%to, "sending the reply failed: {e}");
        }
    }
}

/// Asks the policy on this worker thread; a failure (or panic) gives the fallback, logged.
/// The call is bounded by the policy's own deadline (the Rhai policy enforces one).
pub fn ask_policy(ctx: &Context, req: BootRequest) -> Decision {
    let started = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| ctx.policy.boot_owned(req)));
    let took = started.elapsed();
    if took > ctx.slow_policy {
        warn!(?took, "the policy took {took:?} to decide");
    }
    match result {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            ctx.stats.policy_errors.fetch_add(1, Ordering::Relaxed);
            warn!("policy failed: {e}; using the fallback ({})", describe(&ctx.fallback));
            ctx.fallback.clone()
        }
        Err(p) => {
            ctx.stats.policy_errors.fetch_add(1, Ordering::Relaxed);
            warn!("policy call panicked: {}; using the fallback ({})", crate::panic_message(&*p), describe(&ctx.fallback));
            ctx.fallback.clone()
        }
    }
}

fn describe(d: &Decision) -> String {
    match d {
        Decision::Ignore => "stay silent".into(),
        Decision::Boot(b) => format!("boot {}", b.filename.as_deref().unwrap_or("(no file)")),
    }
}

impl Stats {
    /// Every counter by name, in a stable order (for logs and status output).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("received", c(&self.received)),
            ("malformed", c(&self.malformed)),
            ("skipped", c(&self.skipped)),
            ("ignored", c(&self.ignored)),
            ("answered", c(&self.answered)),
            ("policy_errors", c(&self.policy_errors)),
            ("overloaded", c(&self.overloaded)),
            ("send_errors", c(&self.send_errors)),
            ("offers", c(&self.offers)),
            ("acks", c(&self.acks)),
            ("naks", c(&self.naks)),
            ("declines", c(&self.declines)),
            ("releases", c(&self.releases)),
            ("informs", c(&self.informs)),
            ("pool_exhausted", c(&self.pool_exhausted)),
            ("store_errors", c(&self.store_errors)),
        ]
    }
}

impl std::fmt::Display for Stats {
    /// `name=value` for every non-zero counter (`no DHCP traffic` when all are zero).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nonzero: Vec<String> =
            self.snapshot().into_iter().filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        if nonzero.is_empty() {
            f.write_str("no DHCP traffic")
        } else {
            f.write_str(&nonzero.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_print_only_what_happened() {
        let s = Stats::default();
        assert_eq!(s.to_string(), "no DHCP traffic");
        s.received.fetch_add(3, Ordering::Relaxed);
        s.malformed.fetch_add(1, Ordering::Relaxed);
        assert_eq!(s.to_string(), "received=3 malformed=1");
    }
}
