//! The DHCPv4 server: proxyDHCP on the DHCP port (67) and the PXE boot server port (4011), or
//! in full mode ([`full`]) the network's DHCP server on 67 with port 4011 still answered as a
//! PXE boot server.
//!
//! Each listener loops: receive → parse (malformed: counted, dropped, logged at debug) →
//! [`proxy::classify`] → build a [`BootRequest`] → ask the policy (off the reactor, bounded) →
//! [`proxy::build_reply`] → send out of the interface the request came in on. Every request is
//! handled in its own task, bounded by a semaphore, so one slow policy call never delays others.

pub mod full;
pub mod proxy;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::clients::ClientTable;
use crate::net::{ifname, PktInfo, PktSocket};
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
    /// Requests dropped because too many were in flight.
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

/// What the DHCPv4 tasks need besides their socket.
#[derive(Debug, Clone)]
pub struct Context {
    /// The policy.
    pub policy: Arc<dyn Policy>,
    /// Decision applied when the policy fails.
    pub fallback: Decision,
    /// Upper bound on one policy call, beyond the policy's own deadline.
    pub policy_timeout: Duration,
    /// Server address to announce when the receiving interface's cannot be determined.
    pub server_ip: Option<Ipv4Addr>,
    /// Where DHCP records which MAC uses which address.
    pub clients: ClientTable,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Bound on requests in flight per listener.
    pub max_in_flight: usize,
    /// Full DHCP mode: leases and subnets. `None` in proxy mode.
    pub full: Option<Arc<full::Full>>,
}

/// Serves one listener socket until `shutdown` is cancelled.
pub async fn serve(
    sock: PktSocket,
    listener: Listener,
    ctx: Context,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let sock = Arc::new(sock);
    let local = sock.local_addr()?;
    let limit = Arc::new(Semaphore::new(ctx.max_in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    info!(%local, ?listener, "DHCPv4 listener ready");
    loop {
        let r = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = sock.recv(&mut buf) => r,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (n, from, info) = match r {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                ctx.stats.received.fetch_add(1, Ordering::Relaxed);
                ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
                debug!(%local, "dropping datagram: {e}");
                continue;
            }
            Err(e) => {
                warn!(%local, "receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        ctx.stats.received.fetch_add(1, Ordering::Relaxed);
        let pkt = match dhcpv4::parse(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
                debug!(%from, "dropping malformed DHCP packet: {e}");
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            debug!(%from, "dropping request: too many in flight");
            continue;
        };
        let (sock, ctx) = (sock.clone(), ctx.clone());
        let mac = crate::policy::HwAddr(pkt.mac().to_vec());
        let span = info_span!("dhcp", %mac, xid = format_args!("{:#010x}", pkt.xid));
        tasks.spawn(
            async move {
                handle(&sock, listener, &ctx, pkt, from, info).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    tasks.shutdown().await;
    Ok(())
}

pub(crate) fn our_ipv4(info: &PktInfo, sock: &PktSocket, ctx: &Context) -> Option<Ipv4Addr> {
    let candidates = [Some(info.local), sock.local_addr().ok().map(|a| a.ip())];
    for c in candidates.into_iter().flatten() {
        if let IpAddr::V4(v4) = c {
            if !v4.is_unspecified() && !v4.is_broadcast() {
                return Some(v4);
            }
        }
    }
    ctx.server_ip
}

async fn handle(sock: &PktSocket, listener: Listener, ctx: &Context, pkt: dhcpv4::Packet, from: SocketAddr, info: PktInfo) {
    if let (Listener::Dhcp, Some(f)) = (listener, &ctx.full) {
        return full::handle(f, sock, ctx, pkt, from, info).await;
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
    let decision = ask_policy(ctx, req).await;
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
    send_reply(sock, ctx, &bytes, to, server_ip, info.ifindex).await;
}

/// Sends an encoded reply from `server_ip` out of interface `ifindex` and counts the outcome.
pub(crate) async fn send_reply(
    sock: &PktSocket,
    ctx: &Context,
    bytes: &[u8],
    to: SocketAddr,
    server_ip: Ipv4Addr,
    ifindex: u32,
) {
    match sock.send(bytes, to, Some(IpAddr::V4(server_ip)), ifindex).await {
        Ok(_) => {
            ctx.stats.answered.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            ctx.stats.send_errors.fetch_add(1, Ordering::Relaxed);
            warn!(%to, "sending the reply failed: {e}");
        }
    }
}

/// Asks the policy off the reactor; a failure or timeout gives the fallback, logged.
pub async fn ask_policy(ctx: &Context, req: BootRequest) -> Decision {
    let policy = ctx.policy.clone();
    // The blocking pool does not inherit the span: carry it so script logs name the client.
    let span = tracing::Span::current();
    let call = tokio::task::spawn_blocking(move || span.in_scope(|| policy.boot(&req)));
    match tokio::time::timeout(ctx.policy_timeout, call).await {
        Ok(Ok(Ok(d))) => d,
        Ok(Ok(Err(e))) => {
            ctx.stats.policy_errors.fetch_add(1, Ordering::Relaxed);
            warn!("policy failed: {e}; using the fallback ({})", describe(&ctx.fallback));
            ctx.fallback.clone()
        }
        Ok(Err(join)) => {
            ctx.stats.policy_errors.fetch_add(1, Ordering::Relaxed);
            warn!("policy call panicked: {join}; using the fallback ({})", describe(&ctx.fallback));
            ctx.fallback.clone()
        }
        Err(_) => {
            ctx.stats.policy_errors.fetch_add(1, Ordering::Relaxed);
            warn!(
                "policy did not answer within {:?}; using the fallback ({})",
                ctx.policy_timeout,
                describe(&ctx.fallback)
            );
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
