//! Crash test: `pixie serve` in full mode under load from many test clients, `kill -9` (by its
//! PID) mid-load, restart on the same state folder, then audit the store against every ACK the
//! load generator saw: each ACKed (MAC, address) must be there, and no address may be held by
//! two MACs. Loopback only (127.0.0.1, high ports; the clients act as relays, giaddr 127.0.0.1).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pixie::wire::dhcpv4::{self, opt, MessageType};

/// One ACK the load generator saw: (MAC, address).
type Acked = ([u8; 6], Ipv4Addr);

/// Kills the child on drop (a failed assertion must not leave a server running).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(dir: &Path) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_pixie"))
        .args(["serve", "--config"])
        .arg(dir.join("pixie.toml"))
        .env("PIXIE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pixie");
    Server(child)
}

fn packet(mac: [u8; 6], xid: u32, mt: u8, opts: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; dhcpv4::HEADER_LEN];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[3] = 1;
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[24..28].copy_from_slice(&[127, 0, 0, 1]);
    b[28..34].copy_from_slice(&mac);
    b.extend_from_slice(&dhcpv4::MAGIC);
    b.extend_from_slice(&[53, 1, mt]);
    b.extend_from_slice(opts);
    b.push(255);
    b
}

fn recv(s: &UdpSocket, xid: u32, want: MessageType) -> Option<dhcpv4::Packet> {
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = s.recv_from(&mut buf).ok()?;
        if let Ok(p) = dhcpv4::parse(&buf[..n]) {
            if p.xid == xid && p.message_type() == Some(want) {
                return Some(p);
            }
        }
    }
}

/// One DORA; `Some(address)` when ACKed.
fn dora(s: &UdpSocket, to: SocketAddr, mac: [u8; 6], xid: u32) -> Option<Ipv4Addr> {
    s.send_to(&packet(mac, xid, 1, &[]), to).ok()?;
    let offer = recv(s, xid, MessageType::Offer)?;
    let mut o = vec![50, 4];
    o.extend_from_slice(&offer.yiaddr.octets());
    o.extend_from_slice(&[54, 4]);
    o.extend_from_slice(offer.option(opt::SERVER_ID)?);
    s.send_to(&packet(mac, xid, 3, &o), to).ok()?;
    let ack = recv(s, xid, MessageType::Ack)?;
    (ack.yiaddr == offer.yiaddr).then_some(ack.yiaddr)
}

fn wait_ready(to: SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if s.send_to(&packet([2, 0xff, 0, 0, 0, 1], 1, 1, &[]), to).is_ok() && recv(&s, 1, MessageType::Offer).is_some() {
            return;
        }
    }
    panic!("pixie did not answer within 20 s");
}

fn leases_json(dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_pixie"))
        .args(["leases", "--json", "--state-dir"])
        .arg(dir.join("state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "pixie leases: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::create_dir_all(dir.join("tftproot")).unwrap();
    std::fs::write(dir.join("scripts/boot.rhai"), "fn boot(req) { #{} }\n").unwrap();
    let (dhcp, pxe) = (free_port(), free_port());
    std::fs::write(
        dir.join("pixie.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1\"\nstate_dir = \"state\"\n[dhcp]\nmode = \"full\"\nport = {dhcp}\npxe_port = {pxe}\n\
             lease_time = 86400\n[[dhcp.subnet]]\nnetwork = \"127.0.0.0/8\"\npools = [\"127.1.0.1-127.1.255.254\"]\n\
             [tftp]\nenabled = false\n[policy]\nscripts = \"scripts\"\nplugins = \"plugins\"\n"
        ),
    )
    .unwrap();
    let to: SocketAddr = format!("127.0.0.1:{dhcp}").parse().unwrap();
    let mut server = spawn(dir);
    wait_ready(to);

    // Load: 16 threads, each a stream of new clients doing DORA, until the server dies.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..16u8 {
        let (acked, stop) = (acked.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            for i in 0..20_000u32 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let mac = [0x02, 0xc0, t, (i >> 16) as u8, (i >> 8) as u8, i as u8];
                if let Some(ip) = dora(&s, to, mac, (u32::from(t) << 24) | i) {
                    acked.lock().unwrap().push((mac, ip));
                }
            }
        }));
    }
    // Let it run, then kill -9 while requests are in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 1500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.0.kill().unwrap(); // SIGKILL to our own child, by PID
    server.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 100, "too few ACKs before the kill ({})", acked.len());

    // The store as the crash left it (`pixie leases` reads SQLite and the lease journal without
    // writing), then after a restart (which replays the journal into SQLite).
    let before = audit(&leases_json(dir), &acked, "before the restart");
    let server2 = spawn(dir);
    wait_ready(to);
    let rows = leases_json(dir);
    let after = audit(&rows, &acked, "after the restart");
    let only = |a: &[(String, String, String)], b: &[(String, String, String)]| a.iter().filter(|x| !b.contains(x)).cloned().collect::<Vec<_>>();
    assert!(before == after, "the restart changed the stored leases: only before {:?}, only after {:?}", only(&before, &after), only(&after, &before));
    // After the restart, a new client never gets an ACKed address.
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
    let taken: HashSet<Ipv4Addr> = acked.iter().map(|(_, ip)| *ip).collect();
    for i in 0..50u32 {
        let ip = dora(&s, to, [0x02, 0xd0, 0, 0, 0, i as u8], 0x7700_0000 + i).expect("DORA after restart");
        assert!(!taken.contains(&ip), "{ip} given twice");
    }
    eprintln!("{} ACKs before kill -9, all {} present after restart ({} rows)", acked.len(), acked.len(), rows.len());
    drop(server2);
    check_paths_exist(dir);
}

/// Checks `rows` (from `pixie leases --json`): one row per address, one bound address per MAC,
/// and every ACKed lease present. Returns the rows as (ip, mac, state).
fn audit(rows: &[serde_json::Value], acked: &[([u8; 6], Ipv4Addr)], when: &str) -> Vec<(String, String, String)> {
    let mut by_ip: HashMap<String, String> = HashMap::new();
    let mut bound_macs = HashSet::new();
    for r in rows {
        let (ip, mac) = (r["ip"].as_str().unwrap().to_string(), r["mac"].as_str().unwrap().to_string());
        assert!(by_ip.insert(ip.clone(), mac.clone()).is_none(), "{when}: {ip} stored twice");
        if r["state"] == "bound" {
            assert!(bound_macs.insert(mac.clone()), "{when}: {mac} holds two addresses");
        }
    }
    let mut missing = 0;
    for (mac, ip) in acked {
        let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        if by_ip.get(&ip.to_string()) != Some(&mac) {
            missing += 1;
            eprintln!("{when}: ACKed {ip} to {mac} but the store has {:?}", by_ip.get(&ip.to_string()));
        }
    }
    assert_eq!(missing, 0, "{when}: {missing} of {} ACKed leases lost", acked.len());
    rows.iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (f("ip"), f("mac"), f("state"))
        })
        .collect()
}

fn check_paths_exist(dir: &Path) {
    assert!(dir.join("state/pixie.db").is_file());
    assert!(dir.join("state/leases.journal").is_file());
}
