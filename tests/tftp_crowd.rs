//! A crowd of lock-step transfers: once as many transfers send as there are CPUs, the next ones
//! run on the runtime instead of a thread each (see `Sending` in `src/tftp/server.rs`).
//!
//! A test binary of its own: it counts this process's `tftp-lockstep` threads, which transfers
//! of other tests would add to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pixie::clients::ClientTable;
use pixie::net::{bind_udp, BindOptions};
use pixie::policy::{Decision, FnPolicy};
use pixie::tftp::{serve, TftpConfig};
use pixie::wire::tftp::{Mode, Packet, Request};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Threads of this process named `tftp-lockstep`.
fn lockstep_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == "tftp-lockstep")
        .count()
}

async fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("no DATA within 5 s")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_one_transfer_per_cpu_transfers_share_the_runtime() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir().unwrap();
    // 128 blocks of 512 bytes: long enough for a lock-step thread (32 blocks or more).
    let content: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &content).unwrap();
    let cfg = TftpConfig {
        root: dir.path().to_path_buf(),
        max_per_client: 1024,
        ..TftpConfig::default()
    };
    let socket = bind_udp("127.0.0.1:0".parse().unwrap(), &BindOptions::default()).unwrap();
    let server = socket.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let policy = Arc::new(FnPolicy(|_: &_| Ok(Decision::Ignore)));
    let handle = tokio::spawn(serve(socket, cfg, policy, ClientTable::default(), shutdown.clone()));
    assert_eq!(lockstep_threads(), 0);

    // cpus + 3 clients ask, and hold their first ACK: every transfer stays open.
    let n = cpus + 3;
    let mut clients = Vec::new();
    for _ in 0..n {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rrq = Packet::Rrq(Request {
            filename: b"big.bin".to_vec(),
            mode: Mode::Octet,
            options: vec![],
        });
        sock.send_to(&rrq.to_vec(), server).await.unwrap();
        clients.push(sock);
    }
    let mut firsts = Vec::new();
    for sock in &clients {
        firsts.push(recv(sock).await);
    }
    // Each transfer's first DATA is sent by its thread, if it has one: all threads exist now.
    assert_eq!(
        lockstep_threads(),
        cpus,
        "{n} transfers open on {cpus} CPUs: one thread per CPU, the rest on the runtime"
    );

    // Every transfer, on a thread or not, completes byte for byte.
    let mut downloads = tokio::task::JoinSet::new();
    for (sock, first) in clients.into_iter().zip(firsts) {
        downloads.spawn(async move {
            let (mut pkt, tid) = first;
            let mut got = Vec::new();
            loop {
                let Packet::Data { block, data } = Packet::parse(&pkt).unwrap() else {
                    panic!("not DATA: {pkt:?}")
                };
                if usize::from(block) == got.len() / 512 + 1 {
                    got.extend_from_slice(data);
                }
                sock.send_to(&Packet::Ack(block).to_vec(), tid).await.unwrap();
                if data.len() < 512 {
                    return got;
                }
                pkt = recv(&sock).await.0;
            }
        });
    }
    while let Some(got) = downloads.join_next().await {
        assert!(got.unwrap() == content, "a download differs from the file");
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("serve did not stop")
        .unwrap()
        .unwrap();
}
