//! Full DHCP mode (RFC 2131): pixie is the network's DHCP server, and every answer still comes
//! from the policy.
//!
//! One request, in [`handle`]: pick the subnet (RFC 3527 link selection, else the relay's
//! giaddr, else our address on the receiving interface) → work out the client's state from
//! the message (RFC 2131 §4.3.2: SELECTING, INIT-REBOOT, RENEWING, REBINDING) → ask the policy
//! (`phase` `discover`, `request` or `inform`; `()` means silence) → allocate or check the
//! address in the [`alloc::LeaseTable`] → reply, to the relay, the client's address, a
//! broadcast, or a unicast to the new address after setting its ARP entry (§4.1).
//!
//! Durability: no ACK leaves before its lease is durable. An OFFER is queued in the
//! [`crate::leases::LeaseWriter`] with its lease, stored for the lease time plus the offer's
//! hold (a durable offer, [`crate::leases::LeaseState::Offered`]), and leaves after the commit
//! the worker makes at the end of its batch of requests (one durable write for the batch). The
//! REQUEST that takes the offer up then finds its whole lease stored, and its ACK leaves at
//! once; a record marking the lease bound follows in a later commit, and nobody waits for it.
//! An ACK that needs more than is stored (a renewal past it, another hostname, a REBOOT with
//! no stored offer) is queued with its record and leaves after the batch's commit. A clean
//! stop releases the stored offers no REQUEST took up; after a crash they stay held for their
//! lease time, as their ACK may have left.
//!
//! The sans-IO parts ([`select_subnet`], [`client_state`], [`destination`], [`build`]) are
//! plain functions tested below; [`handle`] strings them together with the socket, policy and
//! store.
//!
//! Loopback tests and relays: a relayed request (giaddr set) is answered to the address and
//! port it came *from* when it has one — the same rule as [`super::proxy::destination`] — and
//! to `giaddr:67` otherwise. A real relay sends from port 67 on (usually) giaddr, so this is
//! the same place; a test on 127.0.0.1 acting as a relay (giaddr 127.0.0.1) gets its replies
//! on its own high port.

pub mod alloc;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use self::alloc::{AllocError, Binding, LeaseTable, SlotState, Undo};
use super::{ask_policy, Context, Stats};
use crate::config::{FullDhcp, Subnet};
use crate::leases::{unix_now, Lease, LeaseBackend, LeaseWriter, StoreError};
use crate::net::{ifname, PktInfo, SyncPktSocket};
use crate::policy::{BootDecision, BootRequest, Decision, HwAddr, Phase};
use crate::wire::dhcpv4::{opt, MessageType, Packet, Reply, OP_REQUEST};

/// How often an exhausted pool is logged (it is counted every time).
pub const EXHAUSTED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Option 56, error message in a NAK.
const OPT_MESSAGE: u8 = 56;
/// Option 28.
const OPT_BROADCAST: u8 = 28;
/// Option 15.
const OPT_DOMAIN: u8 = 15;
/// Option 58 / 59.
const OPT_RENEW: u8 = 58;
const OPT_REBIND: u8 = 59;

/// The full-mode server state shared by the DHCP listeners.
#[derive(Debug)]
pub struct Full {
    cfg: FullDhcp,
    /// Never held across a policy call or a commit (the durable write happens
    /// after it is released, with a rollback on failure).
    table: Mutex<LeaseTable>,
    writer: LeaseWriter,
    exhausted_log: Mutex<HashMap<usize, (Instant, u64)>>,
}

impl Full {
    /// Loads every stored lease from `backend` and starts its writer thread.
    pub fn open(cfg: FullDhcp, mut backend: Box<dyn LeaseBackend>) -> Result<Full, StoreError> {
        let leases = backend.load()?;
        let n = leases.len();
        let table = LeaseTable::from_leases(leases);
        let writer = LeaseWriter::start(backend).map_err(|e| StoreError(format!("cannot start the lease writer: {e}")))?;
        info!(leases = n, subnets = cfg.subnets.len(), "full DHCP mode: lease store loaded");
        Ok(Full { cfg, table: Mutex::new(table), writer, exhausted_log: Mutex::default() })
    }

    /// The group-commit writer (its counters tell how many leases each durable write carried).
    pub fn writer(&self) -> &LeaseWriter {
        &self.writer
    }

    /// At a clean stop, once no worker handles requests: marks released every stored offer
    /// that no REQUEST took up, so that a restart finds those addresses free (after a crash
    /// they stay held for their lease time, as an ACK may have left), and stores whatever is
    /// still queued. Blocks until written.
    pub fn withdraw_stored_offers(&self) {
        let records = self.lock().withdraw_stored_offers(unix_now());
        let n = records.len();
        for r in records {
            self.store_unawaited(r, "an offer nobody requested could not be marked released", || {});
        }
        self.writer.commit();
        if n > 0 {
            info!("released {n} stored offer(s) that no REQUEST took up");
        }
    }

    /// Queues `record` for the next commit, which nothing waits for; `then` runs once it is
    /// stored, and a failure is logged as `what`.
    fn store_unawaited(&self, record: Lease, what: &'static str, then: impl FnOnce() + Send + 'static) {
        let (ip, span) = (record.ip, tracing::Span::current());
        self.writer.queue(
            record,
            Box::new(move |r| {
                let _in_span = span.enter();
                match r {
                    Ok(()) => then(),
                    Err(e) => warn!(%ip, "{what}: {e}"),
                }
            }),
        );
    }

    /// Number of addresses with a record in memory.
    pub fn known_addresses(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_exhausted(&self, ctx: &Context, idx: usize, subnet: &Subnet) {
        ctx.stats.pool_exhausted.fetch_add(1, Ordering::Relaxed);
        let mut log = self.exhausted_log.lock().unwrap_or_else(|e| e.into_inner());
        let e = log.entry(idx).or_insert((Instant::now() - EXHAUSTED_LOG_INTERVAL * 2, 0));
        e.1 += 1;
        if e.0.elapsed() >= EXHAUSTED_LOG_INTERVAL {
            warn!(
                subnet = %subnet.cidr(),
                times = e.1,
                "address pool exhausted: no free address for new clients (logged at most once a minute; \
                 counted in pool_exhausted)"
            );
            *e = (Instant::now(), 0);
        }
    }
}

impl Drop for Full {
    fn drop(&mut self) {
        let st = &self.writer.stats;
        let (commits, records) = (st.commits.load(Ordering::Relaxed), st.records.load(Ordering::Relaxed));
        info!(
            target: "pixie::leases::stats",
            commits,
            records,
            failures = st.failures.load(Ordering::Relaxed),
            "lease writer: {records} lease record(s) in {commits} durable write(s) ({:.1} per write, slowest {:.1} ms)",
            records as f64 / commits.max(1) as f64,
            st.slowest_us.load(Ordering::Relaxed) as f64 / 1000.0
        );
    }
}

/// The client's identity for leases: option 61 when present, else htype + chaddr (RFC 2131 §4.2).
pub fn client_key(pkt: &Packet) -> Vec<u8> {
    match pkt.option(opt::CLIENT_ID) {
        Some(id) if !id.is_empty() => id.to_vec(),
        _ => {
            let mut k = vec![pkt.htype];
            k.extend_from_slice(pkt.mac());
            k
        }
    }
}

fn opt_ip(pkt: &Packet, code: u8) -> Option<Ipv4Addr> {
    let v: [u8; 4] = pkt.option(code)?.try_into().ok()?;
    Some(Ipv4Addr::from(v))
}

/// Picks the subnet for a request: RFC 3527 link selection (option 82 sub-option 5), else
/// giaddr, else `local` (our address on the receiving interface). Returns its index.
pub fn select_subnet(subnets: &[Subnet], pkt: &Packet, local: Option<Ipv4Addr>) -> Option<usize> {
    let link = pkt
        .relay_info()
        .and_then(|r| r.link_selection)
        .or_else(|| (!pkt.giaddr.is_unspecified()).then_some(pkt.giaddr))
        .or(local)?;
    subnets.iter().position(|s| s.contains(link))
}

/// The client state a DHCPREQUEST reveals (RFC 2131 §4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Option 54 present: answering an offer of `server` for `requested`.
    Selecting {
        /// Option 54.
        server: Ipv4Addr,
        /// Option 50.
        requested: Ipv4Addr,
    },
    /// No 54, option 50, ciaddr 0: verifying a remembered address after a reboot.
    InitReboot(Ipv4Addr),
    /// ciaddr set, unicast to us: extending its lease.
    Renewing(Ipv4Addr),
    /// ciaddr set, broadcast: any server may extend it.
    Rebinding(Ipv4Addr),
}

/// Works out the state from a DHCPREQUEST; `broadcast` says whether it was sent to a broadcast
/// address. `None` for a request that fits no state (dropped).
pub fn client_state(pkt: &Packet, broadcast: bool) -> Option<ClientState> {
    let requested = opt_ip(pkt, opt::REQUESTED_IP);
    match opt_ip(pkt, opt::SERVER_ID) {
        Some(server) => {
            let requested = requested.or_else(|| (!pkt.ciaddr.is_unspecified()).then_some(pkt.ciaddr))?;
            Some(ClientState::Selecting { server, requested })
        }
        None if !pkt.ciaddr.is_unspecified() => Some(if broadcast {
            ClientState::Rebinding(pkt.ciaddr)
        } else {
            ClientState::Renewing(pkt.ciaddr)
        }),
        None => requested.map(ClientState::InitReboot),
    }
}

/// Where a full-mode reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Unicast to this address and port.
    Unicast(SocketAddr),
    /// Unicast to a client without an address: needs an ARP entry for `yiaddr` first.
    UnicastNew(SocketAddr),
    /// Broadcast to 255.255.255.255 on this port, out of the receiving interface.
    Broadcast(u16),
}

/// Chooses the destination of a reply: relay (giaddr) first; a NAK without relay is broadcast;
/// then ciaddr; then the broadcast flag; then unicast to `yiaddr` at the client's MAC.
pub fn destination(pkt: &Packet, mt: MessageType, yiaddr: Ipv4Addr, from: SocketAddr) -> Dest {
    let client_port = if from.port() == 0 { 68 } else { from.port() };
    let from_ip = match from.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    };
    if !pkt.giaddr.is_unspecified() {
        return match from_ip {
            Some(_) => Dest::Unicast(from),
            None => Dest::Unicast(SocketAddr::new(IpAddr::V4(pkt.giaddr), 67)),
        };
    }
    if mt == MessageType::Nak {
        return Dest::Broadcast(client_port);
    }
    if !pkt.ciaddr.is_unspecified() {
        return Dest::Unicast(SocketAddr::new(IpAddr::V4(pkt.ciaddr), client_port));
    }
    if pkt.broadcast() || yiaddr.is_unspecified() || pkt.htype != 1 || pkt.hlen != 6 {
        return Dest::Broadcast(client_port);
    }
    Dest::UnicastNew(SocketAddr::new(IpAddr::V4(yiaddr), client_port))
}

/// Lease times to put in a reply: (51, 58, 59).
pub fn lease_times(subnet: &Subnet, d: &BootDecision) -> (u32, u32, u32) {
    match d.lease_time {
        Some(l) => {
            let l = l.max(10);
            (l, l / 2, (u64::from(l) * 7 / 8) as u32)
        }
        None => (subnet.lease_time, subnet.renew_time, subnet.rebind_time),
    }
}

#[allow(clippy::too_many_arguments)]
/// Builds an OFFER, ACK (with a lease when `lease` is given; INFORM without) for `yiaddr`.
pub fn build(
    pkt: &Packet,
    mt: MessageType,
    phase: Phase,
    subnet: &Subnet,
    server_ip: Ipv4Addr,
    yiaddr: Ipv4Addr,
    lease: Option<(u32, u32, u32)>,
    d: &BootDecision,
) -> (Reply, Vec<String>) {
    let mut warnings = Vec::new();
    let mut r = Reply::to(pkt, mt);
    r.yiaddr = yiaddr;
    if mt == MessageType::Offer {
        r.ciaddr = Ipv4Addr::UNSPECIFIED;
    }
    r.set(opt::SERVER_ID, server_ip.octets());
    if let Some((l, t1, t2)) = lease {
        r.set(opt::LEASE_TIME, l.to_be_bytes());
        r.set(OPT_RENEW, t1.to_be_bytes());
        r.set(OPT_REBIND, t2.to_be_bytes());
    }
    r.set(opt::SUBNET_MASK, subnet.mask().octets());
    if !subnet.routers.is_empty() {
        r.set(opt::ROUTER, subnet.routers.iter().flat_map(|i| i.octets()).collect::<Vec<u8>>());
    }
    if !subnet.dns_servers.is_empty() {
        r.set(opt::DNS, subnet.dns_servers.iter().flat_map(|i| i.octets()).collect::<Vec<u8>>());
    }
    if let Some(dn) = &subnet.domain_name {
        r.set(OPT_DOMAIN, dn.as_bytes());
    }
    r.set(OPT_BROADCAST, subnet.broadcast.octets());
    for (code, v) in &subnet.options {
        if let Ok(c) = u8::try_from(*code) {
            r.set(c, v.to_bytes(*code));
        }
    }
    super::proxy::boot_fields(&mut r, pkt, phase, d, server_ip, &mut warnings);
    echo_relay_info(&mut r, pkt);
    (r, warnings)
}

/// A DHCPNAK with an explanation (option 56).
pub fn build_nak(pkt: &Packet, server_ip: Ipv4Addr, why: &str) -> Reply {
    let mut r = Reply::to(pkt, MessageType::Nak);
    r.ciaddr = Ipv4Addr::UNSPECIFIED;
    r.set(opt::SERVER_ID, server_ip.octets());
    r.set(OPT_MESSAGE, why.as_bytes());
    if !pkt.giaddr.is_unspecified() {
        // RFC 2131 §4.3.2: a relayed NAK asks the relay to broadcast it.
        r.flags |= 0x8000;
    }
    echo_relay_info(&mut r, pkt);
    r
}

/// RFC 3046 §2.2: the server copies option 82 into its reply to the relay.
fn echo_relay_info(r: &mut Reply, pkt: &Packet) {
    if let Some(v) = pkt.option(opt::RELAY_AGENT) {
        if !pkt.giaddr.is_unspecified() {
            r.set(opt::RELAY_AGENT, v);
        }
    }
}

/// What the request handler decided to send.
struct Outgoing {
    reply: Reply,
    mt: MessageType,
    yiaddr: Ipv4Addr,
}

/// An ACK that may only leave once its lease is durable.
struct DurableAck {
    out: Outgoing,
    record: Lease,
    /// Undoes the binding in memory if the lease cannot be stored.
    undo: Undo,
    lease_time: u32,
    filename: String,
}

/// An OFFER whose lease is stored before it leaves (a durable offer): the client's REQUEST
/// for it is then ACKed at once, with nothing left to write.
struct DurableOffer {
    out: Outgoing,
    record: Lease,
}

/// What a request gets.
enum Answer {
    /// This reply, now.
    Now(Outgoing),
    /// This ACK, after its lease is stored.
    Durable(DurableAck),
    /// This OFFER, after its lease is stored.
    DurableOffer(DurableOffer),
    /// This ACK now, its lease being stored already as an offer; then this record, which
    /// marks the stored offer bound (nothing waits for it).
    AckThenMark(Outgoing, Lease),
}

/// Handles one request on the DHCP port in full mode. NAKs, INFORM answers and the ACKs of
/// stored offers leave at once; an OFFER, or an ACK that needs a write, is queued with its
/// lease in [`Full::writer`] and leaves after the caller's next [`LeaseWriter::commit`] (the
/// worker commits once per batch of requests).
pub fn handle(full: &Arc<Full>, sock: &Arc<SyncPktSocket>, ctx: &Context, pkt: Packet, from: SocketAddr, info: PktInfo) {
    if pkt.op != OP_REQUEST {
        ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(mt) = pkt.message_type() else {
        // A plain BOOTP request: full mode is a DHCP server, not a BOOTP one.
        ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
        debug!(%from, "dropping a request without option 53 (BOOTP is not served)");
        return;
    };
    let Some(server_ip) = super::our_ipv4(&info, sock, ctx) else {
        warn!("cannot tell our own address on interface {}; set [dhcp] server_ip", info.ifindex);
        return;
    };
    let local = match info.local {
        IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
        _ => Some(server_ip),
    };
    let Some(idx) = select_subnet(&full.cfg.subnets, &pkt, local) else {
        ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
        debug!(%from, giaddr = %pkt.giaddr, "no configured subnet for this request's link; not answering");
        return;
    };
    let subnet = &full.cfg.subnets[idx];
    let out = match mt {
        MessageType::Discover => discover(full, ctx, &pkt, from, &info, idx, subnet, server_ip),
        MessageType::Request => request(full, ctx, &pkt, from, &info, idx, subnet, server_ip),
        MessageType::Decline => {
            decline(full, ctx, &pkt, server_ip);
            None
        }
        MessageType::Release => {
            release(full, ctx, &pkt, server_ip);
            None
        }
        MessageType::Inform => inform(ctx, &pkt, from, &info, subnet, server_ip).map(Answer::Now),
        other => {
            ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
            debug!(%from, "ignoring {other:?}: not a client message");
            None
        }
    };
    match out {
        None => {}
        Some(Answer::Now(out)) => {
            let p = prepare(&pkt, out, from);
            transmit(sock, &ctx.stats, p, &info, server_ip);
        }
        Some(Answer::AckThenMark(out, marker)) => {
            let p = prepare(&pkt, out, from);
            transmit(sock, &ctx.stats, p, &info, server_ip);
            let (full2, stored) = (full.clone(), marker.clone());
            // On failure the stored offer still holds the address for the client.
            full.store_unawaited(marker, "an acknowledged offer could not be marked bound in the store", move || {
                full2.lock().stored(&stored)
            });
        }
        Some(Answer::DurableOffer(o)) => {
            let ip = o.out.yiaddr;
            let p = prepare(&pkt, o.out, from);
            let (full2, sock, stats, record) = (full.clone(), sock.clone(), ctx.stats.clone(), o.record.clone());
            let span = tracing::Span::current();
            full.writer.queue(
                o.record,
                Box::new(move |stored| {
                    let _in_span = span.enter();
                    if let Err(e) = stored {
                        // Never stored, so nothing to end in the store.
                        full2.lock().cancel_offer(&record.client, unix_now());
                        stats.store_errors.fetch_add(1, Ordering::Relaxed);
                        error!(%ip, "not offering: the lease could not be stored: {e}");
                        return;
                    }
                    full2.lock().stored(&record);
                    transmit(&sock, &stats, p, &info, server_ip);
                }),
            );
        }
        Some(Answer::Durable(a)) => {
            let ip = a.out.yiaddr;
            let p = prepare(&pkt, a.out, from);
            let (full2, sock, stats, clients) = (full.clone(), sock.clone(), ctx.stats.clone(), ctx.clients.clone());
            let (undo, lease_time, filename, mac) = (a.undo, a.lease_time, a.filename, a.record.mac.clone());
            let record = a.record.clone();
            let span = tracing::Span::current();
            full.writer.queue(
                a.record,
                Box::new(move |stored| {
                    let _in_span = span.enter();
                    if let Err(e) = stored {
                        full2.lock().rollback(undo);
                        stats.store_errors.fetch_add(1, Ordering::Relaxed);
                        error!(%ip, "not acknowledging: the lease could not be stored: {e}");
                        return;
                    }
                    full2.lock().stored(&record);
                    clients.record(IpAddr::V4(ip), mac);
                    stats.acks.fetch_add(1, Ordering::Relaxed);
                    info!(phase = "request", address = %ip, lease = lease_time, %filename, "decision: ack");
                    transmit(&sock, &stats, p, &info, server_ip);
                }),
            );
        }
    }
}

fn decide(ctx: &Context, pkt: &Packet, phase: Phase, from: SocketAddr, info: &PktInfo, server_ip: Ipv4Addr) -> Option<BootDecision> {
    let mut req = BootRequest::from_dhcpv4(pkt, phase, ifname(info.ifindex), Some(from));
    req.server = Some(IpAddr::V4(server_ip));
    match ask_policy(ctx, req) {
        Decision::Ignore => {
            ctx.stats.ignored.fetch_add(1, Ordering::Relaxed);
            debug!(phase = %phase.as_str(), "decision: ignore (the policy stays silent for this client)");
            None
        }
        Decision::Boot(d) => Some(d),
    }
}

fn pinned(d: &BootDecision) -> Option<Ipv4Addr> {
    match d.address {
        Some(IpAddr::V4(a)) => Some(a),
        Some(IpAddr::V6(a)) => {
            warn!("the policy pinned IPv6 address {a} for a DHCPv4 client; ignored");
            None
        }
        None => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn discover(
    full: &Full,
    ctx: &Context,
    pkt: &Packet,
    from: SocketAddr,
    info: &PktInfo,
    idx: usize,
    subnet: &Subnet,
    server_ip: Ipv4Addr,
) -> Option<Answer> {
    let d = decide(ctx, pkt, Phase::Discover, from, info, server_ip)?;
    let client = client_key(pkt);
    let mac = HwAddr(pkt.mac().to_vec());
    let times = lease_times(subnet, &d);
    let now = unix_now();
    let (offered, record) = {
        let mut t = full.lock();
        let offered =
            t.offer(idx, subnet, &client, &mac, pkt.hostname(), opt_ip(pkt, opt::REQUESTED_IP), pinned(&d), now, full.cfg.offer_time);
        // Stored bound for the lease time plus the offer's hold, so the REQUEST may come as late
        // as the hold allows and still find its whole lease stored.
        let until = now + u64::from(times.0) + u64::from(full.cfg.offer_time);
        let record = offered.as_ref().ok().and_then(|ip| t.offer_record(*ip, &client, until));
        (offered, record)
    };
    let ip = match offered {
        Ok(ip) => ip,
        Err(AllocError::Exhausted) => {
            full.note_exhausted(ctx, idx, subnet);
            return None;
        }
        Err(AllocError::Reserved(ip, why)) => {
            warn!(%ip, "the policy pinned {ip}, but {why}; not answering");
            return None;
        }
    };
    let (reply, warnings) = build(pkt, MessageType::Offer, Phase::Discover, subnet, server_ip, ip, Some(times), &d);
    for w in warnings {
        warn!("{w}");
    }
    ctx.stats.offers.fetch_add(1, Ordering::Relaxed);
    info!(phase = "discover", address = %ip, filename = %d.filename.as_deref().unwrap_or(""), "decision: offer");
    let out = Outgoing { reply, mt: MessageType::Offer, yiaddr: ip };
    Some(match record {
        Some(record) => Answer::DurableOffer(DurableOffer { out, record }),
        None => Answer::Now(out),
    })
}

fn nak(ctx: &Context, pkt: &Packet, server_ip: Ipv4Addr, why: &str) -> Option<Outgoing> {
    ctx.stats.naks.fetch_add(1, Ordering::Relaxed);
    info!("NAK: {why}");
    Some(Outgoing { reply: build_nak(pkt, server_ip, why), mt: MessageType::Nak, yiaddr: Ipv4Addr::UNSPECIFIED })
}

#[allow(clippy::too_many_arguments)]
fn request(
    full: &Full,
    ctx: &Context,
    pkt: &Packet,
    from: SocketAddr,
    info: &PktInfo,
    _idx: usize,
    subnet: &Subnet,
    server_ip: Ipv4Addr,
) -> Option<Answer> {
    let nak = |why: &str| nak(ctx, pkt, server_ip, why).map(Answer::Now);
    let broadcast = info.dst != info.local;
    let Some(state) = client_state(pkt, broadcast) else {
        ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
        debug!(%from, "DHCPREQUEST with neither server identifier, requested address nor ciaddr; dropped");
        return None;
    };
    let client = client_key(pkt);
    let ours = |sid: Ipv4Addr| sid == server_ip || Some(sid) == ctx.server_ip || local_is(info, sid);
    let requested = match state {
        ClientState::Selecting { server, requested } => {
            if !ours(server) {
                // The client took another server's offer: ours is withdrawn (RFC 2131 §4.3.2),
                // and ended in the store if it was stored (no hurry: nobody waits for it).
                if let Some(record) = full.lock().cancel_offer(&client, unix_now()) {
                    full.store_unawaited(record, "a withdrawn offer could not be marked released in the store", || {});
                }
                ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
                debug!(%server, "the client chose another server");
                return None;
            }
            requested
        }
        ClientState::InitReboot(ip) | ClientState::Renewing(ip) | ClientState::Rebinding(ip) => ip,
    };
    if !subnet.contains(requested) {
        return nak(&format!("{requested} is not on this network ({})", subnet.cidr()));
    }
    let now = unix_now();
    let (held, known) = {
        let t = full.lock();
        (t.held_by_other(requested, &client, now), t.is_clients(requested, &client))
    };
    if held {
        return nak(&format!("{requested} belongs to another client"));
    }
    match state {
        // RFC 2131 §4.3.2: no record of this client → remain silent (another server may own
        // it), unless the policy pins exactly this address.
        ClientState::InitReboot(_) if !known => {
            let d = decide(ctx, pkt, Phase::Request, from, info, server_ip)?;
            if pinned(&d) != Some(requested) {
                ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
                debug!(%requested, "INIT-REBOOT for an address we have no record of; silent");
                return None;
            }
            return ack(full, ctx, pkt, subnet, server_ip, requested, &client, d);
        }
        ClientState::Selecting { .. } if !known => {
            return nak(&format!("{requested} was not offered to this client"));
        }
        _ => {}
    }
    let d = decide(ctx, pkt, Phase::Request, from, info, server_ip)?;
    if let Some(p) = pinned(&d) {
        if p != requested {
            return nak(&format!("this client's address is {p}, not {requested}"));
        }
    } else if !subnet.in_pool(requested) && !full.lock().is_clients(requested, &client) {
        return nak(&format!("{requested} is not in a pool"));
    }
    ack(full, ctx, pkt, subnet, server_ip, requested, &client, d)
}

fn local_is(info: &PktInfo, ip: Ipv4Addr) -> bool {
    info.local == IpAddr::V4(ip) || info.dst == IpAddr::V4(ip)
}

#[allow(clippy::too_many_arguments)]
fn ack(
    full: &Full,
    ctx: &Context,
    pkt: &Packet,
    subnet: &Subnet,
    server_ip: Ipv4Addr,
    ip: Ipv4Addr,
    client: &[u8],
    d: BootDecision,
) -> Option<Answer> {
    let times = lease_times(subnet, &d);
    let mac = HwAddr(pkt.mac().to_vec());
    let bound = full.lock().bind(ip, client, &mac, pkt.hostname(), times.0, unix_now());
    let Ok((binding, undo)) = bound else {
        return nak(ctx, pkt, server_ip, &format!("{ip} belongs to another client")).map(Answer::Now);
    };
    let (reply, warnings) = build(pkt, MessageType::Ack, Phase::Request, subnet, server_ip, ip, Some(times), &d);
    for w in warnings {
        warn!("{w}");
    }
    let out = Outgoing { reply, mt: MessageType::Ack, yiaddr: ip };
    let record = match binding {
        Binding::Write(record) => record,
        Binding::Stored(marker) => {
            // The store holds this lease already (its offer was stored): the ACK leaves now.
            ctx.clients.record(IpAddr::V4(ip), mac);
            ctx.stats.acks.fetch_add(1, Ordering::Relaxed);
            info!(phase = "request", address = %ip, lease = times.0, filename = %d.filename.as_deref().unwrap_or(""), "decision: ack");
            return Some(match marker {
                Some(m) => Answer::AckThenMark(out, m),
                None => Answer::Now(out),
            });
        }
    };
    // Durable before the ACK leaves: the lease writer sends it after the commit.
    Some(Answer::Durable(DurableAck {
        out,
        record,
        undo,
        lease_time: times.0,
        filename: d.filename.unwrap_or_default(),
    }))
}

fn decline(full: &Full, ctx: &Context, pkt: &Packet, server_ip: Ipv4Addr) {
    let Some(ip) = opt_ip(pkt, opt::REQUESTED_IP) else {
        debug!("DHCPDECLINE without option 50; dropped");
        return;
    };
    if opt_ip(pkt, opt::SERVER_ID).is_some_and(|s| s != server_ip) {
        return;
    }
    let secs = full.cfg.decline_time;
    let Some(record) = full.lock().decline(ip, &client_key(pkt), secs, unix_now()) else {
        debug!(%ip, "DHCPDECLINE for an address this client does not hold; ignored");
        return;
    };
    ctx.stats.declines.fetch_add(1, Ordering::Relaxed);
    warn!(%ip, "the client declined {ip} (something else answers ARP for it); quarantined for {secs} s");
    if let Err(e) = full.writer.write_blocking(record) {
        ctx.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        error!(%ip, "the quarantine could not be stored: {e}");
    }
}

fn release(full: &Full, ctx: &Context, pkt: &Packet, server_ip: Ipv4Addr) {
    if opt_ip(pkt, opt::SERVER_ID).is_some_and(|s| s != server_ip) {
        return;
    }
    let ip = pkt.ciaddr;
    let Some(record) = full.lock().release(ip, &client_key(pkt), unix_now()) else {
        debug!(%ip, "DHCPRELEASE for an address this client does not hold; ignored");
        return;
    };
    ctx.stats.releases.fetch_add(1, Ordering::Relaxed);
    info!(%ip, "released");
    if let Err(e) = full.writer.write_blocking(record) {
        ctx.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        error!(%ip, "the release could not be stored: {e}");
    }
}

fn inform(ctx: &Context, pkt: &Packet, from: SocketAddr, info: &PktInfo, subnet: &Subnet, server_ip: Ipv4Addr) -> Option<Outgoing> {
    let d = decide(ctx, pkt, Phase::Inform, from, info, server_ip)?;
    // RFC 2131 §3.4: no lease, no yiaddr; the reply goes to ciaddr.
    let (reply, warnings) = build(pkt, MessageType::Ack, Phase::Inform, subnet, server_ip, Ipv4Addr::UNSPECIFIED, None, &d);
    for w in warnings {
        warn!("{w}");
    }
    ctx.stats.informs.fetch_add(1, Ordering::Relaxed);
    Some(Outgoing { reply, mt: MessageType::Ack, yiaddr: Ipv4Addr::UNSPECIFIED })
}

/// A reply ready to go: its bytes and where to.
struct Prepared {
    bytes: Vec<u8>,
    dest: Dest,
    yiaddr: Ipv4Addr,
    /// The client's hardware address, for the ARP entry of [`Dest::UnicastNew`].
    chaddr: Vec<u8>,
}

fn prepare(pkt: &Packet, out: Outgoing, from: SocketAddr) -> Prepared {
    let (bytes, dropped) = out.reply.encode();
    if !dropped.is_empty() {
        warn!(?dropped, max = out.reply.max_len, "options did not fit the client's maximum message size");
    }
    let dest = destination(pkt, out.mt, out.yiaddr, from);
    Prepared { bytes, dest, yiaddr: out.yiaddr, chaddr: pkt.mac().to_vec() }
}

fn transmit(sock: &SyncPktSocket, stats: &Stats, p: Prepared, info: &PktInfo, server_ip: Ipv4Addr) {
    let bcast = |port: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), port);
    let to = match p.dest {
        Dest::Unicast(a) => a,
        Dest::Broadcast(port) => bcast(port),
        Dest::UnicastNew(a) => {
            // The client has no address yet and cannot answer ARP: tell the kernel its MAC on
            // the receiving interface (only there), else fall back to a broadcast.
            match ifname(info.ifindex) {
                Some(dev) => match crate::net::set_arp_entry(sock.raw_fd(), &dev, p.yiaddr, &p.chaddr) {
                    Ok(()) => a,
                    Err(e) => {
                        debug!(%dev, "cannot set the ARP entry for {} ({e}); broadcasting instead", p.yiaddr);
                        bcast(a.port())
                    }
                },
                None => bcast(a.port()),
            }
        }
    };
    if to.ip() == IpAddr::V4(Ipv4Addr::BROADCAST) && info.ifindex == 0 {
        warn!("cannot broadcast a reply: the request's interface is unknown");
        return;
    }
    super::send_reply(sock, stats, &p.bytes, to, server_ip, info.ifindex);
}

/// The state of an address in memory, for tests and status.
pub fn slot_state(full: &Full, ip: Ipv4Addr) -> Option<SlotState> {
    full.lock().slot(ip).map(|s| s.state)
}

#[cfg(test)]
mod tests;
