//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pixie::config::{Config, Overrides};
use pixie::policy::Policy;
use pixie::server::Server;
use pixie::wire::{dhcpv4, pcap};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// A running pixie on 127.0.0.1 with ephemeral ports; stops when dropped.
pub struct Running {
    pub dhcp: SocketAddr,
    pub pxe: SocketAddr,
    pub tftp: SocketAddr,
    pub stats: Arc<pixie::dhcpv4::Stats>,
    /// Full DHCP mode's state (leases, the lease writer and its counters).
    pub full: Option<Arc<pixie::dhcpv4::full::Full>>,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<Result<(), pixie::server::ServerError>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Running {
    /// Stops the server and checks it drained cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let t = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("server did not stop within 5 s")
            .unwrap()
            .unwrap();
    }
}

/// Loopback config with ephemeral ports.
pub fn loopback_config(tftp_root: &Path) -> Config {
    let mut cfg = Config::defaults(&Overrides::default());
    cfg.listen = "127.0.0.1".parse().unwrap();
    cfg.dhcp_port = 0;
    cfg.pxe_port = 0;
    cfg.tftp_port = 0;
    cfg.tftp_root = tftp_root.to_path_buf();
    cfg
}

pub async fn start(cfg: Config, policy: Arc<dyn Policy>) -> Running {
    let server = Server::bind(cfg).expect("bind");
    let dhcp = server.dhcp_addrs()[0];
    let pxe = server.pxe_addrs()[0];
    let tftp = server.tftp_addrs().first().copied().unwrap_or(dhcp);
    let stats = server.stats.clone();
    let full = server.full.clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(policy, shutdown.clone()));
    Running { dhcp, pxe, tftp, stats, full, shutdown, task: Some(task) }
}

/// Sends `payload` from a fresh loopback socket and waits up to `wait` for one reply.
pub async fn exchange(to: SocketAddr, payload: &[u8], wait: Duration) -> Option<dhcpv4::Packet> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(payload, to).await.unwrap();
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, s.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => {
            assert!(n >= 300, "reply of {n} bytes is shorter than the 300-byte BOOTP minimum");
            Some(dhcpv4::parse(&buf[..n]).expect("our reply parses"))
        }
        _ => None,
    }
}

/// The project's own captures plus, when present, `../shared/fixtures`.
pub fn capture_files() -> (Vec<PathBuf>, bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut shared = false;
    for (dir, is_shared) in [(root.join("tests/captures"), false), (root.join("../shared/fixtures"), true)] {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pcap" || x == "pcapng") {
                out.push(p);
                shared |= is_shared;
            }
        }
    }
    out.sort();
    (out, shared)
}

/// Client requests (port, payload) in a capture.
pub fn client_requests(path: &Path) -> Vec<(u16, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    pcap::read_udp(&bytes)
        .unwrap()
        .into_iter()
        .filter(|d| (d.dst.port() == 67 || d.dst.port() == 4011) && d.payload.first() == Some(&1))
        .map(|d| (d.dst.port(), d.payload))
        .collect()
}

/// `len` pseudo-random bytes (xorshift from `seed`): test files whose every block differs.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
