//! Lock-step downloads at large block sizes, byte for byte, with lost ACKs: the block re-sent
//! after a timeout must be the one lost, not the one read ahead into the ring's other slot
//! (`Transfer::read_ahead`). blksize 65464 and 8192, where blocks are read straight from the file
//! into the ring (`DIRECT_READ_MIN_BLKSIZE`); files long enough for a thread of their own (32
//! blocks or more), and a whole number of blocks at one of the sizes (ending with an empty block).

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

mod common;
use common::pattern;

async fn recv(sock: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 70_000];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

/// Downloads `name` at `blksize` in lock-step, not acknowledging the blocks in `lose` the first
/// time they come (the server re-sends them after its 1 s timeout). Returns the bytes.
async fn download(server: SocketAddr, name: &str, blksize: usize, lose: &[u16]) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rrq = Packet::Rrq(Request {
        filename: name.as_bytes().to_vec(),
        mode: Mode::Octet,
        options: vec![("blksize".into(), blksize.to_string()), ("timeout".into(), "1".into())],
    });
    sock.send_to(&rrq.to_vec(), server).await.unwrap();
    let (oack, tid) = recv(&sock, Duration::from_secs(5)).await.expect("no OACK");
    assert!(matches!(Packet::parse(&oack).unwrap(), Packet::Oack(_)), "{oack:?}");
    sock.send_to(&Packet::Ack(0).to_vec(), tid).await.unwrap();
    let mut got = Vec::new();
    let mut expect: u16 = 1;
    let mut lost = Vec::new();
    for _ in 0..100_000 {
        let (pkt, from) = recv(&sock, Duration::from_secs(5)).await.expect("no DATA");
        assert_eq!(from, tid);
        let Packet::Data { block, data } = Packet::parse(&pkt).unwrap() else { panic!("{pkt:?}") };
        assert_eq!(block, expect, "{name} at {blksize}: block out of order");
        if lose.contains(&block) && !lost.contains(&block) {
            lost.push(block);
            // The re-send must be this very block, with the same bytes.
            let (again, _) = recv(&sock, Duration::from_secs(5)).await.expect("no re-send");
            assert_eq!(again, pkt, "{name} at {blksize}: block {block} re-sent differently");
        }
        got.extend_from_slice(data);
        expect = expect.wrapping_add(1);
        sock.send_to(&Packet::Ack(block).to_vec(), tid).await.unwrap();
        if data.len() < blksize {
            assert_eq!(lost.len(), lose.len(), "{name} at {blksize}: a lost block never came");
            return got;
        }
    }
    panic!("download did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_block_downloads_with_lost_acks_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("odd.bin", pattern(40 * 65_464 + 777, 3)),
        ("exact.bin", pattern(36 * 65_464, 5)),
        ("exact8k.bin", pattern(300 * 8192, 7)),
    ];
    for (name, bytes) in &files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let cfg = TftpConfig { root: dir.path().to_path_buf(), ..TftpConfig::default() };
    let socket = bind_udp("127.0.0.1:0".parse().unwrap(), &BindOptions::default()).unwrap();
    let addr = socket.local_addr().unwrap();
    let policy = Arc::new(FnPolicy(|_: &_| Ok(Decision::Ignore)));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(socket, cfg, policy, ClientTable::default(), shutdown.clone()));

    for (name, bytes) in &files {
        for blksize in [65_464, 8192] {
            let blocks = bytes.len() / blksize + 1;
            // The first block, one in the middle and the final one.
            let lose = [1, (blocks / 2) as u16, blocks as u16];
            let got = download(addr, name, blksize, &lose).await;
            assert!(got == *bytes, "{name} at blksize {blksize} differs");
        }
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}
