//! Full DHCP mode on loopback: every RFC 2131 transition with a test client that speaks the
//! protocol, against a running pixie with a plain-closure policy.
//!
//! How replies reach the test on loopback: the test client acts as a relay agent (giaddr
//! 127.0.0.1, subnet 127.0.0.0/8 in the config), and pixie answers a relayed request to the
//! address and port it came from. A RENEWING/RELEASE/INFORM client sends from its leased
//! address (any 127.x.y.z is local), and pixie unicasts to ciaddr on the client's port.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pixie::config::{Config, DhcpMode, FileConfig, Overrides};
use pixie::leases::{journal, unix_now, LeaseState};
use pixie::policy::{BootDecision, BootRequest, Decision, FnPolicy, PolicyError};
use pixie::wire::dhcpv4::{self, opt, MessageType, Packet};
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(300);

fn full_config(dir: &Path) -> Config {
    config_from(dir, FULL_CONFIG)
}

const FULL_CONFIG: &str = r#"
[dhcp]
mode = "full"
lease_time = 3600
decline_time = 600
[[dhcp.subnet]]
network = "127.0.0.0/8"
pools = ["127.0.10.1-127.0.10.50"]
routers = ["127.0.0.1"]
dns_servers = ["127.0.0.53"]
domain_name = "loop.test"
[[dhcp.subnet]]
network = "10.99.0.0/24"
pools = ["10.99.0.100-10.99.0.110"]
[[dhcp.subnet]]
network = "10.98.0.0/24"
pools = ["10.98.0.10-10.98.0.11"]
"#;

fn config_from(dir: &Path, text: &str) -> Config {
    let f: FileConfig = toml::from_str(text).unwrap();
    let mut cfg = Config::from_file_config(f, Path::new("t.toml"), dir, &Overrides::default()).unwrap();
    assert_eq!(cfg.dhcp_mode, DhcpMode::Full);
    let lb = loopback_config(dir);
    cfg.listen = lb.listen;
    cfg.dhcp_port = 0;
    cfg.pxe_port = 0;
    cfg.tftp_port = 0;
    cfg.tftp_root = dir.to_path_buf();
    cfg.state_dir = dir.join("state");
    cfg
}

/// MAC last byte 0xee: ignored; 0xaa: pinned to 127.0.10.200; 0xbb: lease 120 s;
/// PXE clients: a boot file by arch.
fn policy() -> Arc<FnPolicy<impl Fn(&BootRequest) -> Result<Decision, PolicyError> + Send + Sync>> {
    Arc::new(FnPolicy(|r: &BootRequest| {
        let last = *r.mac.0.last().unwrap();
        let mut d = BootDecision::default();
        match last {
            0xee => return Ok(Decision::Ignore),
            0xaa => d.address = Some("127.0.10.200".parse().unwrap()),
            0xbb => d.lease_time = Some(120),
            _ => {}
        }
        if r.pxe_client() {
            d.filename = Some(if r.arch().map(|a| a.code()) == Some(0) { "undionly.kpxe" } else { "ipxe.efi" }.into());
        }
        Ok(Decision::Boot(d))
    }))
}

/// A protocol-speaking test client.
struct Client {
    mac: [u8; 6],
    xid: u32,
}

impl Client {
    fn new(n: u8) -> Client {
        Client { mac: [0x02, 0, 0, 0x7e, 0x57, n], xid: 0x5000_0000 + u32::from(n) }
    }

    /// A packet: message type, ciaddr, giaddr and options (without 53 and END).
    fn packet(&self, mt: u8, ciaddr: Ipv4Addr, giaddr: Ipv4Addr, opts: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; dhcpv4::HEADER_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[3] = u8::from(!giaddr.is_unspecified());
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        b[12..16].copy_from_slice(&ciaddr.octets());
        b[24..28].copy_from_slice(&giaddr.octets());
        b[28..34].copy_from_slice(&self.mac);
        b.extend_from_slice(&dhcpv4::MAGIC);
        b.extend_from_slice(&[53, 1, mt]);
        b.extend_from_slice(opts);
        b.push(255);
        b
    }

    fn relayed(&self, mt: u8, opts: &[u8]) -> Vec<u8> {
        self.packet(mt, Ipv4Addr::UNSPECIFIED, Ipv4Addr::LOCALHOST, opts)
    }

    async fn discover(&self, srv: SocketAddr) -> Option<Packet> {
        exchange(srv, &self.relayed(1, &[]), WAIT).await
    }

    /// The relayed REQUEST (SELECTING) that takes up `offer`.
    fn request_for(&self, offer: &Packet) -> Vec<u8> {
        let mut o = vec![50, 4];
        o.extend_from_slice(&offer.yiaddr.octets());
        o.extend_from_slice(&[54, 4]);
        o.extend_from_slice(offer.option(opt::SERVER_ID).unwrap());
        self.relayed(3, &o)
    }

    async fn select(&self, srv: SocketAddr, offer: &Packet) -> Option<Packet> {
        exchange(srv, &self.request_for(offer), WAIT).await
    }

    async fn dora(&self, srv: SocketAddr) -> Ipv4Addr {
        let offer = self.discover(srv).await.expect("OFFER");
        assert_eq!(offer.message_type(), Some(MessageType::Offer));
        let ack = self.select(srv, &offer).await.expect("ACK");
        assert_eq!(ack.message_type(), Some(MessageType::Ack), "{:?}", ack.option(56).map(String::from_utf8_lossy));
        assert_eq!(ack.yiaddr, offer.yiaddr);
        ack.yiaddr
    }
}

/// Sends from `from` (an address of the client) and waits for one reply there.
async fn from_addr(from: Ipv4Addr, to: SocketAddr, payload: &[u8], wait: Duration) -> Option<Packet> {
    let s = UdpSocket::bind(SocketAddr::new(from.into(), 0)).await.unwrap();
    s.send_to(payload, to).await.unwrap();
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, s.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(dhcpv4::parse(&buf[..n]).unwrap()),
        _ => None,
    }
}

/// The next reply on `s`, which must be a `mt`.
async fn reply(s: &UdpSocket, mt: MessageType) -> Packet {
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(WAIT, s.recv_from(&mut buf)).await.unwrap_or_else(|_| panic!("no {mt:?}")).unwrap();
    let p = dhcpv4::parse(&buf[..n]).unwrap();
    assert_eq!(p.message_type(), Some(mt));
    p
}

fn stored(dir: &Path) -> Vec<pixie::leases::Lease> {
    journal::read_all(&dir.join("state")).unwrap()
}

fn u32_opt(p: &Packet, code: u8) -> u32 {
    u32::from_be_bytes(p.option(code).unwrap().try_into().unwrap())
}

#[tokio::test]
async fn selecting_renewing_rebooting_releasing() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(full_config(tmp.path()), policy()).await;
    let c = Client::new(1);

    // SELECTING: DISCOVER → OFFER → REQUEST(54, 50) → ACK.
    let offer = c.discover(srv.dhcp).await.expect("OFFER");
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    let ip = offer.yiaddr;
    assert!((Ipv4Addr::new(127, 0, 10, 1)..=Ipv4Addr::new(127, 0, 10, 50)).contains(&ip), "{ip}");
    assert_eq!(offer.option(opt::SERVER_ID), Some(&[127, 0, 0, 1][..]));
    assert_eq!(offer.option(1), Some(&[255, 0, 0, 0][..]));
    assert_eq!(offer.option(3), Some(&[127, 0, 0, 1][..]));
    assert_eq!(offer.option(6), Some(&[127, 0, 0, 53][..]));
    assert_eq!(offer.option(15), Some(&b"loop.test"[..]));
    assert_eq!(offer.option(28), Some(&[127, 255, 255, 255][..]));
    assert_eq!((u32_opt(&offer, 51), u32_opt(&offer, 58), u32_opt(&offer, 59)), (3600, 1800, 3150));
    assert_eq!(offer.giaddr, Ipv4Addr::LOCALHOST);
    // The offer's lease is stored before the OFFER leaves, for the lease time plus the offer's
    // hold (30 s): the ACK then needs no write of its own.
    let rows = stored(tmp.path());
    assert_eq!(rows.len(), 1, "the offered lease is not stored");
    assert_eq!((rows[0].ip, rows[0].state, rows[0].mac.0.clone()), (ip, LeaseState::Offered, c.mac.to_vec()));
    assert!(rows[0].expires >= unix_now() + 3600 + 29, "{rows:?}");
    let ack = c.select(srv.dhcp, &offer).await.expect("ACK");
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr, ip);
    // Durable before the ACK: the row is there the moment the ACK arrived...
    let rows = stored(tmp.path());
    assert_eq!(rows.len(), 1);
    assert!(rows[0].state.held() && rows[0].ip == ip, "{rows:?}");
    assert!(rows[0].expires >= unix_now() + u64::from(u32_opt(&ack, 51)));
    let first_expiry = rows[0].expires;
    // ...and marked bound soon after, for as long as the offer was stored.
    wait_for(|| stored(tmp.path())[0].state == LeaseState::Bound).await;
    assert_eq!(stored(tmp.path())[0].expires, first_expiry);

    // A second DISCOVER from the bound client offers its address again, stored bound for
    // longer (so that the REQUEST which follows needs no write), never shorter.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.discover(srv.dhcp).await.unwrap().yiaddr, ip);
    let rows = stored(tmp.path());
    assert_eq!((rows[0].ip, rows[0].state), (ip, LeaseState::Bound));
    assert!(rows[0].expires > first_expiry, "{rows:?}");
    let first_expiry = rows[0].expires;

    // RENEWING: unicast from the leased address, ciaddr set, no 50/54 → ACK to ciaddr.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let renew = c.packet(3, ip, Ipv4Addr::UNSPECIFIED, &[]);
    let ack = from_addr(ip, srv.dhcp, &renew, WAIT).await.expect("renew ACK");
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!((ack.yiaddr, ack.ciaddr), (ip, ip));
    // Its lease ends no later than the stored one: nothing new to store. A renewal beyond the
    // stored end is written first (`a_renewal_past_the_stored_lease_is_stored_first`).
    let rows = stored(tmp.path());
    assert_eq!(rows[0].expires, first_expiry);
    assert!(rows[0].expires >= unix_now() + u64::from(u32_opt(&ack, 51)), "the renewal ACKed more than is stored");

    // INIT-REBOOT: 50 = remembered address, no 54, ciaddr 0 → ACK.
    let mut o = vec![50, 4];
    o.extend_from_slice(&ip.octets());
    let ack = exchange(srv.dhcp, &c.relayed(3, &o), WAIT).await.expect("INIT-REBOOT ACK");
    assert_eq!((ack.message_type(), ack.yiaddr), (Some(MessageType::Ack), ip));

    // INIT-REBOOT on a wrong network → NAK (relayed: broadcast bit set).
    let nak = exchange(srv.dhcp, &c.relayed(3, &[50, 4, 192, 168, 77, 7]), WAIT).await.expect("NAK");
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    assert!(nak.broadcast());

    // Another client INIT-REBOOTing into our address → NAK; into an address nobody holds → silence.
    let other = Client::new(2);
    let nak = exchange(srv.dhcp, &other.relayed(3, &o), WAIT).await.expect("NAK for a taken address");
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    assert!(exchange(srv.dhcp, &other.relayed(3, &[50, 4, 127, 0, 10, 49]), QUIET).await.is_none());

    // RELEASE from the leased address → stored as released, no reply.
    let rel = c.packet(7, ip, Ipv4Addr::UNSPECIFIED, &[54, 4, 127, 0, 0, 1]);
    assert!(from_addr(ip, srv.dhcp, &rel, QUIET).await.is_none());
    wait_for(|| stored(tmp.path())[0].state == LeaseState::Released).await;
    assert_eq!(srv.stats.releases.load(Ordering::Relaxed), 1);
    // The released client gets the same address back.
    assert_eq!(c.dora(srv.dhcp).await, ip);
    srv.stop().await;
}

#[tokio::test]
async fn decline_inform_other_server_ignore_and_reservations() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(full_config(tmp.path()), policy()).await;

    // DECLINE: the address is quarantined and the client gets another one.
    let c = Client::new(3);
    let ip = c.dora(srv.dhcp).await;
    let mut o = vec![50, 4];
    o.extend_from_slice(&ip.octets());
    o.extend_from_slice(&[54, 4, 127, 0, 0, 1]);
    assert!(exchange(srv.dhcp, &c.relayed(4, &o), QUIET).await.is_none());
    wait_for(|| stored(tmp.path()).iter().any(|l| l.ip == ip && l.state == LeaseState::Declined)).await;
    assert_eq!(srv.stats.declines.load(Ordering::Relaxed), 1);
    let ip2 = c.dora(srv.dhcp).await;
    assert_ne!(ip2, ip);
    assert!(Client::new(4).dora(srv.dhcp).await != ip, "quarantined for everyone");

    // INFORM: an ACK without address or lease time, to ciaddr.
    let inf = c.packet(8, ip2, Ipv4Addr::UNSPECIFIED, &[]);
    let ack = from_addr(ip2, srv.dhcp, &inf, WAIT).await.expect("INFORM ACK");
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert!(ack.option(51).is_none());
    assert_eq!(ack.option(15), Some(&b"loop.test"[..]));

    // SELECTING another server: silence, and our offer is withdrawn.
    let d = Client::new(5);
    let offer = d.discover(srv.dhcp).await.unwrap();
    let mut o = vec![50, 4];
    o.extend_from_slice(&offer.yiaddr.octets());
    o.extend_from_slice(&[54, 4, 127, 0, 0, 99]);
    assert!(exchange(srv.dhcp, &d.relayed(3, &o), QUIET).await.is_none());
    // Its stored lease is ended (released: the client gets the address again if it returns).
    wait_for(|| stored(tmp.path()).iter().all(|l| l.ip != offer.yiaddr || l.state == LeaseState::Released)).await;

    // The policy's silence: no OFFER.
    assert!(Client::new(0xee).discover(srv.dhcp).await.is_none());
    assert!(srv.stats.ignored.load(Ordering::Relaxed) >= 1);

    // A pinned address (outside the pool, inside the subnet) is offered and acknowledged.
    let r = Client::new(0xaa);
    assert_eq!(r.dora(srv.dhcp).await, Ipv4Addr::new(127, 0, 10, 200));
    // A REQUEST for anything else from that client is NAKed.
    let nak = exchange(srv.dhcp, &r.relayed(3, &[50, 4, 127, 0, 10, 7, 54, 4, 127, 0, 0, 1]), WAIT).await.unwrap();
    assert_eq!(nak.message_type(), Some(MessageType::Nak));

    // The policy's lease time.
    let b = Client::new(0xbb);
    let offer = b.discover(srv.dhcp).await.unwrap();
    assert_eq!(u32_opt(&offer, 51), 120);
    srv.stop().await;
}

#[tokio::test]
async fn relay_link_selection_option82_pxe_and_exhaustion() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(full_config(tmp.path()), policy()).await;

    // Option 82 with RFC 3527 link selection picks 10.99.0.0/24; 82 is echoed back.
    let c = Client::new(6);
    let o82 = [82, 12, 1, 4, b'e', b't', b'h', b'7', 5, 4, 10, 99, 0, 1];
    let offer = exchange(srv.dhcp, &c.relayed(1, &o82), WAIT).await.expect("OFFER");
    assert!((Ipv4Addr::new(10, 99, 0, 100)..=Ipv4Addr::new(10, 99, 0, 110)).contains(&offer.yiaddr));
    assert_eq!(offer.option(opt::RELAY_AGENT), Some(&o82[2..]));
    let mut o = o82.to_vec();
    o.extend_from_slice(&[50, 4]);
    o.extend_from_slice(&offer.yiaddr.octets());
    o.extend_from_slice(&[54, 4, 127, 0, 0, 1]);
    let ack = exchange(srv.dhcp, &c.relayed(3, &o), WAIT).await.expect("ACK");
    assert_eq!((ack.message_type(), ack.yiaddr), (Some(MessageType::Ack), offer.yiaddr));
    assert_eq!(ack.option(opt::RELAY_AGENT), Some(&o82[2..]));
    assert_eq!(ack.option(1), Some(&[255, 255, 255, 0][..]));

    // A PXE client in full mode gets its address and its boot file in the same OFFER/ACK.
    let pxe = Client::new(7);
    let mut po = vec![60, 32];
    po.extend_from_slice(b"PXEClient:Arch:00000:UNDI:002001");
    po.extend_from_slice(&[93, 2, 0, 0]);
    let offer = exchange(srv.dhcp, &pxe.relayed(1, &po), WAIT).await.unwrap();
    assert_ne!(offer.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.file, b"undionly.kpxe");
    assert_eq!(offer.option(opt::BOOTFILE), Some(&b"undionly.kpxe"[..]));
    assert_eq!(offer.option(opt::VENDOR_CLASS), Some(&b"PXEClient"[..]));
    assert_eq!(offer.option(opt::TFTP_SERVER), Some(&b"127.0.0.1"[..]));
    assert_eq!(offer.option(opt::VENDOR_SPECIFIC), Some(&[6, 1, 0x0b, 255][..]));
    let mut ro = po.clone();
    ro.extend_from_slice(&[50, 4]);
    ro.extend_from_slice(&offer.yiaddr.octets());
    ro.extend_from_slice(&[54, 4, 127, 0, 0, 1]);
    let ack = exchange(srv.dhcp, &pxe.relayed(3, &ro), WAIT).await.unwrap();
    assert_eq!((ack.message_type(), ack.file.as_slice()), (Some(MessageType::Ack), &b"undionly.kpxe"[..]));
    // Port 4011 still answers as a PXE boot server.
    let mut r4011 = vec![60, 32];
    r4011.extend_from_slice(b"PXEClient:Arch:00000:UNDI:002001");
    r4011.extend_from_slice(&[93, 2, 0, 0]);
    let p = pxe.packet(3, ack.yiaddr, Ipv4Addr::UNSPECIFIED, &r4011);
    let r = exchange(srv.pxe, &p, WAIT).await.expect("4011 ACK");
    assert_eq!(r.file, b"undionly.kpxe");

    // A two-address pool: the third client gets nothing, counted.
    let sel = [82, 6, 5, 4, 10, 98, 0, 1];
    for n in 0..2u8 {
        assert!(exchange(srv.dhcp, &Client::new(0x20 + n).relayed(1, &sel), WAIT).await.is_some());
    }
    assert!(exchange(srv.dhcp, &Client::new(0x22).relayed(1, &sel), QUIET).await.is_none());
    assert!(srv.stats.pool_exhausted.load(Ordering::Relaxed) >= 1);
    srv.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_counted_and_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(full_config(tmp.path()), policy()).await;
    let c = Client::new(8);
    let mut hlen = c.relayed(1, &[]);
    hlen[2] = 17;
    let mut truncated = c.relayed(1, &[]);
    truncated.pop();
    truncated.extend_from_slice(&[12, 40, b'x']);
    let mut overload = c.relayed(1, &[52, 1, 1]);
    overload[108..112].copy_from_slice(&[12, 200, b'a', b'b']);
    let bad_overload = c.relayed(1, &[52, 1, 7]);
    let mut no53 = c.relayed(1, &[]);
    no53[240..243].copy_from_slice(&[0, 0, 0]);
    let before = srv.stats.malformed.load(Ordering::Relaxed);
    for bad in [&hlen, &truncated, &overload, &bad_overload, &no53] {
        assert!(exchange(srv.dhcp, bad, Duration::from_millis(200)).await.is_none());
    }
    wait_for(|| srv.stats.malformed.load(Ordering::Relaxed) >= before + 5).await;
    // Still serving.
    c.dora(srv.dhcp).await;
    srv.stop().await;
}

#[tokio::test]
async fn leases_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(full_config(tmp.path()), policy()).await;
    let mut got = Vec::new();
    for n in 0x30..0x38u8 {
        got.push((n, Client::new(n).dora(srv.dhcp).await));
    }
    // A client that vanishes after its OFFER: its lease is stored as an offer...
    let gone = Client::new(0x3f).discover(srv.dhcp).await.expect("OFFER").yiaddr;
    assert_eq!(stored(tmp.path()).iter().find(|l| l.ip == gone).map(|l| l.state), Some(LeaseState::Offered));
    srv.stop().await;
    // ...and released by the clean stop; the ACKed ones are all bound.
    let rows = stored(tmp.path());
    assert_eq!(rows.iter().find(|l| l.ip == gone).map(|l| l.state), Some(LeaseState::Released), "{rows:?}");
    assert!(got.iter().all(|(_, ip)| rows.iter().any(|l| l.ip == *ip && l.state == LeaseState::Bound)), "{rows:?}");
    let srv = start(full_config(tmp.path()), policy()).await;
    for (n, ip) in &got {
        // INIT-REBOOT after the restart: the server remembers.
        let mut o = vec![50, 4];
        o.extend_from_slice(&ip.octets());
        let ack = exchange(srv.dhcp, &Client::new(*n).relayed(3, &o), WAIT).await.expect("ACK after restart");
        assert_eq!((ack.message_type(), ack.yiaddr), (Some(MessageType::Ack), *ip));
    }
    // A new client never gets one of them.
    let fresh = Client::new(0x40).dora(srv.dhcp).await;
    assert!(got.iter().all(|(_, ip)| *ip != fresh));
    srv.stop().await;
}

async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_burst_of_discovers_is_stored_in_batches_and_the_requests_need_no_write() {
    // 40 DISCOVERs arrive at once: the worker takes them as one or a few batches and stores
    // their offered leases in one write per batch, before the OFFERs leave. The 40 REQUESTs
    // that follow, also at once, find their leases stored and are ACKed without a write
    // before them; records marking them bound follow.
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(full_config(tmp.path()), policy()).await;
    let clients: Vec<Client> = (1..=40u8).map(|n| Client::new(0x40 + n)).collect();
    let writer = srv.full.as_ref().expect("full mode").writer();
    let mut sockets = Vec::new();
    let commits_before = writer.stats.commits.load(Ordering::Relaxed);
    for c in &clients {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(&c.relayed(1, &[]), srv.dhcp).await.unwrap();
        sockets.push(s);
    }
    let mut requests = Vec::new();
    for (c, s) in clients.iter().zip(&sockets) {
        requests.push(c.request_for(&reply(s, MessageType::Offer).await));
    }
    let commits = writer.stats.commits.load(Ordering::Relaxed) - commits_before;
    assert!((1..20).contains(&commits), "{commits} durable writes for 40 OFFERs sent at once: no batching");
    // Every OFFER's lease was on disk before it left, as an offer.
    let rows = stored(tmp.path());
    assert_eq!(rows.iter().filter(|l| l.state == LeaseState::Offered).count(), 40, "{rows:?}");
    for (r, s) in requests.iter().zip(&sockets) {
        s.send_to(r, srv.dhcp).await.unwrap();
    }
    let mut acked = Vec::new();
    for s in &sockets {
        let ack = reply(s, MessageType::Ack).await;
        acked.push((ack.yiaddr, u32_opt(&ack, 51)));
    }
    // Every ACKed lease is on disk for at least as long as ACKed (the journal, read as
    // `pixie leases` reads it), and soon marked bound.
    let now = unix_now();
    let rows = stored(tmp.path());
    for (ip, secs) in &acked {
        assert!(
            rows.iter().any(|l| l.ip == *ip && l.state.held() && l.expires >= now + u64::from(*secs)),
            "{ip} ACKed, not stored"
        );
    }
    wait_for(|| stored(tmp.path()).iter().all(|l| l.state == LeaseState::Bound)).await;
    assert_eq!(stored(tmp.path()).len(), 40);
}

#[tokio::test]
async fn a_request_for_a_stored_offer_is_answered_before_the_next_batch() {
    // Batches every 50 ms: a REQUEST sent as soon as its OFFER arrives would wait for the
    // next batch (~50 ms) if the worker slept between batches. It waits on the socket for the
    // REQUESTs of the OFFERs it just sent instead, and ACKs each as it arrives.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = full_config(tmp.path());
    cfg.dhcp_batch = Duration::from_millis(50);
    let srv = start(cfg, policy()).await;
    let mut waits = Vec::new();
    for n in 0..9u8 {
        let c = Client::new(0x90 + n);
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(&c.relayed(1, &[]), srv.dhcp).await.unwrap();
        let request = c.request_for(&reply(&s, MessageType::Offer).await);
        let sent = std::time::Instant::now();
        s.send_to(&request, srv.dhcp).await.unwrap();
        reply(&s, MessageType::Ack).await;
        waits.push(sent.elapsed());
        // Let the batch end (and the marker be written) before the next client.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    waits.sort();
    // The median: one slow wake-up on a busy machine must not fail the test; a worker
    // sleeping through the batch would make most of them ~50 ms.
    assert!(waits[4] < Duration::from_millis(20), "REQUESTs waited for the next batch: {waits:?}");
    srv.stop().await;
}

#[tokio::test]
async fn requests_are_answered_as_they_arrive_while_discovers_keep_coming() {
    // Batches every 50 ms, two clients per batch: A's DISCOVER arrives while the worker waits
    // for the previous REQUESTs (so it is taken there), B's while it sleeps before the next
    // batch (taken in it). That batch sends both OFFERs, and must wait for both REQUESTs.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = full_config(tmp.path());
    cfg.dhcp_batch = Duration::from_millis(50);
    let srv = start(cfg, policy()).await;
    let pair = |r: u8| [Client::new(0xa0 + 2 * r), Client::new(0xa1 + 2 * r)];
    let rounds = 7u8;
    let mut sockets = Vec::new();
    for _ in 0..2 * (rounds + 1) {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let first = pair(0);
    for (c, s) in first.iter().zip(&sockets) {
        s.send_to(&c.relayed(1, &[]), srv.dhcp).await.unwrap();
    }
    let mut slowest = Vec::new();
    for r in 0..rounds {
        let (ab, next) = (pair(r), pair(r + 1));
        let (mine, theirs) = sockets[2 * usize::from(r)..].split_at(2);
        let mut requests = Vec::new();
        for (c, s) in ab.iter().zip(mine) {
            requests.push(c.request_for(&reply(s, MessageType::Offer).await));
        }
        // The next A first, then both REQUESTs.
        theirs[0].send_to(&next[0].relayed(1, &[]), srv.dhcp).await.unwrap();
        let sent = std::time::Instant::now();
        for (req, s) in requests.iter().zip(mine) {
            s.send_to(req, srv.dhcp).await.unwrap();
        }
        for s in mine {
            reply(s, MessageType::Ack).await;
        }
        slowest.push(sent.elapsed());
        // The next B while the worker sleeps before its next batch.
        tokio::time::sleep(Duration::from_millis(5)).await;
        theirs[1].send_to(&next[1].relayed(1, &[]), srv.dhcp).await.unwrap();
    }
    slowest.sort();
    assert!(slowest[3] < Duration::from_millis(20), "REQUESTs waited for the next batch: {slowest:?}");
    srv.stop().await;
}

#[tokio::test]
async fn a_renewal_past_the_stored_lease_is_stored_first() {
    // A lease time of 10 s (the least allowed) and an offer hold of 1 s: the offer is stored
    // until 11 s from its second; a renewal 2.5 s later ends beyond that, so it is written
    // before its ACK.
    let tmp = tempfile::tempdir().unwrap();
    let text = FULL_CONFIG.replace("lease_time = 3600", "lease_time = 10\noffer_time = 1");
    let srv = start(config_from(tmp.path(), &text), policy()).await;
    let c = Client::new(0x77);
    let ip = c.dora(srv.dhcp).await;
    // The record marking the stored offer bound, written after the ACK.
    wait_for(|| stored(tmp.path())[0].state == LeaseState::Bound).await;
    let first = stored(tmp.path())[0].expires;
    let writer = srv.full.as_ref().expect("full mode").writer();
    let commits = writer.stats.commits.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let renew = c.packet(3, ip, Ipv4Addr::UNSPECIFIED, &[]);
    let ack = from_addr(ip, srv.dhcp, &renew, WAIT).await.expect("renew ACK");
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(writer.stats.commits.load(Ordering::Relaxed), commits + 1, "the renewal was not written");
    let rows = stored(tmp.path());
    assert!(rows[0].expires > first, "the renewal did not extend the stored lease");
    assert!(rows[0].expires >= unix_now() + u64::from(u32_opt(&ack, 51)));
    srv.stop().await;
}
