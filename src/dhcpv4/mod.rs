//! The DHCPv4 server: proxyDHCP on the DHCP port (67) and the PXE boot server port (4011), or
//! in full mode ([`full`]) the network's DHCP server on 67 with port 4011 still answered as a
//! PXE boot server.
//!
//! Each listener has a few worker threads (see [`serve`]), each looping: receive → parse
//! (malformed: counted, dropped, logged at debug) → [`proxy::classify`] → build a
//! [`BootRequest`] → ask the policy (bounded by its deadline) → [`proxy::build_reply`] → send
//! out of the interface the request came in on. A slow policy call holds one worker; the others
//! keep answering.

pub mod full;
pub mod proxy;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    /// Worker threads per listener: requests handled at once.
    pub workers: usize,
    /// Full DHCP mode: leases and subnets. `None` in proxy mode.
    pub full: Option<Arc<full::Full>>,
}

/// How long a worker blocks in `recv` before it looks at the shutdown flag again.
const WORKER_POLL: Duration = Duration::from_millis(100);

/// Sets the flag when dropped: workers stop even if the serving future is dropped, not awaited.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Serves one listener socket until `shutdown` is cancelled.
///
/// `ctx.workers` threads block in `recv` on the socket (the kernel wakes one per datagram) and
/// each handles its request to the end: parse, policy, lease, reply. Nothing hops between
/// threads on the way, which is where a DHCP server's CPU goes at high rates. An ACK goes to
/// the lease writer with its lease and is sent by whichever worker commits that lease, so only
/// that one worker waits for the disk, and a slow policy call holds only its own worker. When
/// every worker is busy, requests wait in the socket's receive buffer; what the kernel drops
/// from a full buffer is counted in `overloaded`.
pub async fn serve(
    sock: PktSocket,
    listener: Listener,
    ctx: Context,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let local = sock.local_addr()?;
    let sock = Arc::new(sock.into_blocking(WORKER_POLL)?);
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let mut workers = Vec::with_capacity(ctx.workers.max(1));
    for i in 0..ctx.workers.max(1) {
        let (sock, ctx, flag) = (sock.clone(), ctx.clone(), stop.0.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("dhcp-{}-{i}", local.port()))
            .spawn(move || worker(&sock, listener, &ctx, &flag));
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) if workers.is_empty() => return Err(e),
            Err(e) => {
                warn!(%local, "started {i} DHCP workers, not more: {e}");
                break;
            }
        }
    }
    info!(%local, ?listener, workers = workers.len(), "DHCPv4 listener ready");
    shutdown.cancelled().await;
    stop.0.store(true, Ordering::Relaxed);
    let joined = tokio::task::spawn_blocking(move || workers.into_iter().map(|w| w.join()).filter(Result::is_err).count()).await;
    if let Ok(n) = joined {
        if n > 0 {
            error!(%local, "{n} DHCP worker(s) ended by a panic");
        }
    }
    Ok(())
}

/// One worker thread: receive, handle, repeat until `stop`.
fn worker(sock: &Arc<SyncPktSocket>, listener: Listener, ctx: &Context, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    let local = sock.local_addr();
    while !stop.load(Ordering::Relaxed) {
        let (n, from, info, dropped) = match sock.recv(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => continue,
            Err(e) if e.kind() == ErrorKind::InvalidData => {
                ctx.stats.received.fetch_add(1, Ordering::Relaxed);
                ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
                debug!(%local, "dropping datagram: {e}");
                continue;
            }
            Err(e) => {
                warn!(%local, "receive failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if dropped > 0 {
            ctx.stats.overloaded.fetch_add(u64::from(dropped), Ordering::Relaxed);
            debug!(%local, dropped, "the kernel dropped requests: every worker was busy and the receive buffer full");
        }
        ctx.stats.received.fetch_add(1, Ordering::Relaxed);
        let pkt = match dhcpv4::parse(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
                debug!(%from, "dropping malformed DHCP packet: {e}");
                continue;
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
    }
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
        warn!(?took, "the policy took {took:?} to decide (its worker answered nobody else meanwhile)");
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
