//! Sans-IO tests (subnet choice, client states, destinations, reply contents) and one over
//! loopback: a lease the store cannot take gets no ACK.

use std::collections::BTreeMap;

use super::*;
use crate::leases::LeaseState;
use crate::policy::OptionValue;
use crate::wire::dhcpv4::{parse, HEADER_LEN, MAGIC};

fn subnet(net: [u8; 3]) -> Subnet {
    let ip = |d| Ipv4Addr::new(net[0], net[1], net[2], d);
    Subnet {
        network: ip(0),
        prefix: 24,
        pools: vec![(ip(100), ip(199))],
        routers: vec![ip(1)],
        dns_servers: vec![ip(2), ip(3)],
        domain_name: Some("lab.test".into()),
        broadcast: ip(255),
        lease_time: 3600,
        renew_time: 1800,
        rebind_time: 3150,
        options: BTreeMap::from([(42, OptionValue::Ips(vec![ip(4)]))]),
    }
}

/// A request with `mt`, header fields and extra options.
fn req(mt: u8, ciaddr: [u8; 4], giaddr: [u8; 4], flags: u16, opts: &[u8]) -> Packet {
    let mut b = vec![0u8; HEADER_LEN];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[10..12].copy_from_slice(&flags.to_be_bytes());
    b[12..16].copy_from_slice(&ciaddr);
    b[24..28].copy_from_slice(&giaddr);
    b[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&[53, 1, mt]);
    b.extend_from_slice(opts);
    b.push(255);
    parse(&b).unwrap()
}

const Z: [u8; 4] = [0; 4];

#[test]
fn subnet_by_link_selection_then_giaddr_then_interface() {
    let subnets = [subnet([10, 0, 0]), subnet([10, 0, 1])];
    let local = Some(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(select_subnet(&subnets, &req(1, Z, Z, 0, &[]), local), Some(0));
    assert_eq!(select_subnet(&subnets, &req(1, Z, [10, 0, 1, 1], 0, &[]), local), Some(1));
    // RFC 3527: sub-option 5 wins over giaddr.
    let p = req(1, Z, [192, 168, 9, 1], 0, &[82, 6, 5, 4, 10, 0, 1, 7]);
    assert_eq!(select_subnet(&subnets, &p, local), Some(1));
    assert_eq!(select_subnet(&subnets, &req(1, Z, [192, 168, 9, 1], 0, &[]), local), None, "unknown relay link");
}

#[test]
fn client_states_per_rfc2131_4_3_2() {
    let sel = req(3, Z, Z, 0, &[54, 4, 10, 0, 0, 1, 50, 4, 10, 0, 0, 150]);
    assert_eq!(
        client_state(&sel, true),
        Some(ClientState::Selecting { server: Ipv4Addr::new(10, 0, 0, 1), requested: Ipv4Addr::new(10, 0, 0, 150) })
    );
    let reboot = req(3, Z, Z, 0, &[50, 4, 10, 0, 0, 150]);
    assert_eq!(client_state(&reboot, true), Some(ClientState::InitReboot(Ipv4Addr::new(10, 0, 0, 150))));
    let renew = req(3, [10, 0, 0, 150], Z, 0, &[]);
    assert_eq!(client_state(&renew, false), Some(ClientState::Renewing(Ipv4Addr::new(10, 0, 0, 150))));
    assert_eq!(client_state(&renew, true), Some(ClientState::Rebinding(Ipv4Addr::new(10, 0, 0, 150))));
    assert_eq!(client_state(&req(3, Z, Z, 0, &[]), true), None);
}

#[test]
fn destinations_per_rfc2131_4_1() {
    let from0: SocketAddr = "0.0.0.0:68".parse().unwrap();
    let yi = Ipv4Addr::new(10, 0, 0, 150);
    // Relayed: to the relay (the sender when it has an address, else giaddr:67).
    let relayed = req(1, Z, [10, 0, 1, 1], 0, &[]);
    assert_eq!(destination(&relayed, MessageType::Offer, yi, "10.0.1.1:67".parse().unwrap()), Dest::Unicast("10.0.1.1:67".parse().unwrap()));
    assert_eq!(destination(&relayed, MessageType::Offer, yi, from0), Dest::Unicast("10.0.1.1:67".parse().unwrap()));
    assert_eq!(destination(&relayed, MessageType::Nak, yi, from0), Dest::Unicast("10.0.1.1:67".parse().unwrap()));
    // ciaddr: unicast there.
    let renew = req(3, [10, 0, 0, 150], Z, 0, &[]);
    assert_eq!(destination(&renew, MessageType::Ack, yi, "10.0.0.150:68".parse().unwrap()), Dest::Unicast("10.0.0.150:68".parse().unwrap()));
    // Broadcast flag, NAK: broadcast.
    assert_eq!(destination(&req(1, Z, Z, 0x8000, &[]), MessageType::Offer, yi, from0), Dest::Broadcast(68));
    assert_eq!(destination(&renew, MessageType::Nak, yi, from0), Dest::Broadcast(68));
    // No flag, no address: unicast to yiaddr (after an ARP entry).
    assert_eq!(destination(&req(1, Z, Z, 0, &[]), MessageType::Offer, yi, from0), Dest::UnicastNew("10.0.0.150:68".parse().unwrap()));
}

#[test]
fn offer_carries_lease_network_and_boot_options_and_echoes_82() {
    let s = subnet([10, 0, 0]);
    let mut o = vec![60, 32];
    o.extend_from_slice(b"PXEClient:Arch:00000:UNDI:002001");
    o.extend_from_slice(&[93, 2, 0, 0, 82, 4, 1, 2, b'p', b'1']);
    let p = req(1, Z, [10, 0, 0, 1], 0, &o);
    let mut d = BootDecision { filename: Some("undionly.kpxe".into()), ..Default::default() };
    d.options.insert(6, OptionValue::Ips(vec![Ipv4Addr::new(9, 9, 9, 9)]));
    let yi = Ipv4Addr::new(10, 0, 0, 150);
    let (r, w) = build(&p, MessageType::Offer, Phase::Discover, &s, Ipv4Addr::new(10, 0, 0, 1), yi, Some(lease_times(&s, &d)), &d);
    assert!(w.is_empty());
    let b = parse(&r.encode().0).unwrap();
    assert_eq!(b.message_type(), Some(MessageType::Offer));
    assert_eq!(b.yiaddr, yi);
    assert_eq!(b.option(1), Some(&[255, 255, 255, 0][..]));
    assert_eq!(b.option(3), Some(&[10, 0, 0, 1][..]));
    assert_eq!(b.option(6), Some(&[9, 9, 9, 9][..]), "the policy's options win");
    assert_eq!(b.option(15), Some(&b"lab.test"[..]));
    assert_eq!(b.option(28), Some(&[10, 0, 0, 255][..]));
    assert_eq!(b.option(42), Some(&[10, 0, 0, 4][..]));
    assert_eq!(b.option(51), Some(&3600u32.to_be_bytes()[..]));
    assert_eq!(b.option(54), Some(&[10, 0, 0, 1][..]));
    assert_eq!(b.option(58), Some(&1800u32.to_be_bytes()[..]));
    assert_eq!(b.option(59), Some(&3150u32.to_be_bytes()[..]));
    assert_eq!(b.file, b"undionly.kpxe");
    assert_eq!(b.siaddr, Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(b.option(60), Some(&b"PXEClient"[..]));
    assert_eq!(b.option(43), Some(&[6, 1, 0x0b, 255][..]));
    assert_eq!(b.option(82), Some(&[1, 2, b'p', b'1'][..]));
    // A policy lease time overrides 51/58/59.
    let d2 = BootDecision { lease_time: Some(600), ..Default::default() };
    assert_eq!(lease_times(&s, &d2), (600, 300, 525));
}

#[test]
fn plain_client_without_boot_file_gets_no_boot_options() {
    let s = subnet([10, 0, 0]);
    let p = req(1, Z, Z, 0, &[]);
    let d = BootDecision::default();
    let (r, _) = build(&p, MessageType::Offer, Phase::Discover, &s, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 150), Some((60, 30, 50)), &d);
    let b = parse(&r.encode().0).unwrap();
    for code in [43, 60, 66, 67] {
        assert!(b.option(code).is_none(), "option {code}");
    }
    assert_eq!(b.siaddr, Ipv4Addr::UNSPECIFIED);
    assert!(b.file.is_empty());
}

#[test]
fn relayed_nak_sets_the_broadcast_bit() {
    let p = req(3, Z, [10, 0, 1, 1], 0, &[50, 4, 10, 0, 0, 5]);
    let b = parse(&build_nak(&p, Ipv4Addr::new(10, 0, 0, 1), "no").encode().0).unwrap();
    assert_eq!(b.message_type(), Some(MessageType::Nak));
    assert!(b.broadcast());
    assert_eq!(b.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(b.option(56), Some(&b"no"[..]));
}

/// A relayed request from `mac`'s client with `opts` (giaddr 10.9.9.1, the test's subnet).
fn relayed(mt: u8, opts: &[u8]) -> Packet {
    req(mt, Z, [10, 9, 9, 1], 0, opts)
}

/// A full-mode server on a memory store, answering requests relayed from `relay` (giaddr
/// 10.9.9.1): replies to a relayed request go back to where it came from. Every client boots
/// `x.efi`; the worker's batches are left to the test (`full.writer().commit()`).
struct Rig {
    store: crate::leases::memory::MemoryLeases,
    full: Arc<Full>,
    sock: Arc<crate::net::SyncPktSocket>,
    relay: std::net::UdpSocket,
    ctx: Context,
    info: PktInfo,
    from: SocketAddr,
}

impl Rig {
    fn new() -> Rig {
        use crate::net::{bind_udp, BindOptions};
        use crate::policy::FnPolicy;

        let store = crate::leases::memory::MemoryLeases::default();
        let cfg = FullDhcp { subnets: vec![subnet([10, 9, 9])], decline_time: 600, offer_time: 30 };
        let full = Arc::new(Full::open(cfg, Box::new(store.clone())).unwrap());
        let lo = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let sock = Arc::new(bind_udp(lo(0), &BindOptions::default()).unwrap().into_sync().unwrap());
        let relay = std::net::UdpSocket::bind(lo(0)).unwrap();
        relay.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let boot = |_: &BootRequest| Ok(Decision::Boot(BootDecision { filename: Some("x.efi".into()), ..Default::default() }));
        let ctx = Context {
            policy: Arc::new(FnPolicy(boot)),
            fallback: Decision::Ignore,
            slow_policy: Duration::from_secs(1),
            server_ip: None,
            clients: Default::default(),
            stats: Arc::default(),
            workers: 1,
            batch: Duration::ZERO,
            full: Some(full.clone()),
        };
        let info = PktInfo { dst: IpAddr::V4(Ipv4Addr::LOCALHOST), local: IpAddr::V4(Ipv4Addr::LOCALHOST), ifindex: 1 };
        let from = relay.local_addr().unwrap();
        Rig { store, full, sock, relay, ctx, info, from }
    }
}

#[tokio::test]
async fn a_lease_that_cannot_be_stored_gets_no_offer_or_ack_and_its_binding_is_undone() {
    let Rig { store, full, sock, relay, ctx, info, from } = Rig::new();
    let answer = |pkt: Packet| -> Option<Packet> {
        handle(&full, &sock, &ctx, pkt, from, info);
        // What the worker does at the end of a batch: stored OFFERs and ACKs leave after this
        // commit.
        full.writer().commit();
        let mut buf = [0u8; 1500];
        relay.recv(&mut buf).ok().map(|n| parse(&buf[..n]).unwrap())
    };

    // The store fails while the offer is stored: no OFFER, the failure is counted, nothing held.
    store.fail_next(true);
    assert!(answer(relayed(1, &[])).is_none(), "an OFFER left without a stored lease");
    assert_eq!(ctx.stats.store_errors.load(Ordering::Relaxed), 1);
    assert!(store.rows().is_empty());

    // It works again: the OFFER's lease is stored before the OFFER leaves.
    store.fail_next(false);
    let offer = answer(relayed(1, &[])).expect("no OFFER");
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    let ip = offer.yiaddr;
    assert_eq!(slot_state(&full, ip), Some(SlotState::Offered));
    assert_eq!(store.rows().iter().map(|l| (l.ip, l.state)).collect::<Vec<_>>(), vec![(ip, LeaseState::Offered)]);

    // A REQUEST that changes what is stored (a hostname now) needs its own write. The store
    // fails: no ACK, the failure is counted, the address is not left bound.
    let mut opts = vec![54, 4, 127, 0, 0, 1, 50, 4];
    opts.extend_from_slice(&ip.octets());
    let mut named = opts.clone();
    named.extend_from_slice(&[12, 2, b'p', b'c']);
    store.fail_next(true);
    assert!(answer(relayed(3, &named)).is_none(), "an ACK left without a stored lease");
    assert_eq!(ctx.stats.store_errors.load(Ordering::Relaxed), 2);
    assert_eq!(ctx.stats.acks.load(Ordering::Relaxed), 0);
    assert_ne!(slot_state(&full, ip), Some(SlotState::Bound));
    assert_eq!(store.rows()[0].hostname, None);

    // The client retries once the store works again: acknowledged, and stored before that.
    store.fail_next(false);
    let ack = answer(relayed(3, &named)).expect("no ACK after the store recovered");
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr, ip);
    assert_eq!(slot_state(&full, ip), Some(SlotState::Bound));
    assert_eq!(store.rows().iter().map(|l| (l.ip, l.hostname.as_deref())).collect::<Vec<_>>(), vec![(ip, Some("pc"))]);
    assert_eq!(ctx.stats.acks.load(Ordering::Relaxed), 1);
}

/// Option 51 of a reply, in seconds.
fn lease_secs(p: &Packet) -> u64 {
    u64::from(u32::from_be_bytes(p.option(51).expect("no lease time").try_into().unwrap()))
}

#[tokio::test]
async fn a_stored_offer_is_acked_at_once_even_while_the_store_fails() {
    let Rig { store, full, sock, relay, ctx, info, from } = Rig::new();
    let mut buf = [0u8; 1500];

    handle(&full, &sock, &ctx, relayed(1, &[]), from, info);
    assert!(relay.recv(&mut buf).is_err(), "the OFFER left before its lease was stored");
    full.writer().commit();
    let n = relay.recv(&mut buf).expect("no OFFER after the commit");
    let offer = parse(&buf[..n]).unwrap();
    let stored = store.rows();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].expires >= lease_secs(&offer) + 30, "{stored:?}");

    // The REQUEST for it: the ACK leaves without a commit, and a failing store cannot stop it,
    // as nothing is written.
    store.fail_next(true);
    let mut opts = vec![54, 4, 127, 0, 0, 1, 50, 4];
    opts.extend_from_slice(&offer.yiaddr.octets());
    handle(&full, &sock, &ctx, relayed(3, &opts), from, info);
    let n = relay.recv(&mut buf).expect("no ACK without a commit");
    let ack = parse(&buf[..n]).unwrap();
    assert_eq!((ack.message_type(), ack.yiaddr), (Some(MessageType::Ack), offer.yiaddr));
    let granted = lease_secs(&ack);
    assert!(crate::leases::unix_now() + granted <= stored[0].expires, "the ACK grants more than is stored");
    assert_eq!(ctx.stats.store_errors.load(Ordering::Relaxed), 0);
    assert_eq!(slot_state(&full, offer.yiaddr), Some(SlotState::Bound));

    // After it, a record marking the offer bound is queued; nothing waits for it. While the
    // store fails, the stored offer stays, and still holds the address for the client.
    assert!(full.writer().has_queued(), "no record marks the acknowledged offer bound");
    full.writer().commit();
    assert_eq!(store.rows().iter().map(|l| l.state).collect::<Vec<_>>(), vec![LeaseState::Offered]);
    // A retransmitted REQUEST once the store works: ACKed at once again, and marked bound
    // after, ending when the stored offer did.
    store.fail_next(false);
    handle(&full, &sock, &ctx, relayed(3, &opts), from, info);
    let n = relay.recv(&mut buf).expect("no ACK for the retransmitted REQUEST");
    assert_eq!(parse(&buf[..n]).unwrap().message_type(), Some(MessageType::Ack));
    full.writer().commit();
    let rows = store.rows();
    assert_eq!(rows.iter().map(|l| (l.state, l.expires)).collect::<Vec<_>>(), vec![(LeaseState::Bound, stored[0].expires)]);
    assert!(!full.writer().has_queued());
}
