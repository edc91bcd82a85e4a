//! The sending side of one read transfer as a sans-IO state machine.
//!
//! The caller feeds it datagrams ([`Transfer::on_packet`]) and timer expiries
//! ([`Transfer::on_timeout`]), and drains what to send with [`Transfer::poll_transmit`] until it
//! returns `None`; then it sleeps until [`Transfer::deadline`]. Nothing here touches a socket or a
//! clock, so tests are scripts of packets in and packets out.
//!
//! # Windows (RFC 7440; windowsize 1 is RFC 1350 lock-step)
//! Up to `windowsize` blocks after the last acknowledged one are in flight. An ACK for block *k*
//! means "I have everything up to *k* and want *k*+1 next": a receiver only acknowledges at the
//! end of a window or when it saw a gap, and drops what follows a gap. So an ACK that moves the
//! acknowledged block forward starts a new window at *k*+1, re-sending blocks after *k* that were
//! already sent. A duplicate ACK (same *k* again), a stale one (before *k*) or one for a block not
//! yet sent changes nothing and sends nothing: re-sending on duplicates is the Sorcerer's
//! Apprentice bug (RFC 1350 errata / RFC 1123 4.2.3.1). On timeout the window after the last
//! acknowledged block is sent again, up to `retries` times in a row, then the transfer fails.
//!
//! # Memory
//! The blocks of the current window stay in one ring buffer of windowsize × (4 + blksize) bytes
//! (bounded by negotiation, see [`super::options`]), so re-sending never re-reads the source and
//! sending never allocates. Blocks are read from the source in order, exactly once.
//!
//! Block numbers are tracked as `u64` internally; on the wire they wrap from 65535 to 0, the
//! convention of tftpd-hpa, iPXE and EDK2 for files over 32 MiB at 512-byte blocks.

use std::fmt;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::wire::tftp::{self as wire, ErrorCode, Packet, DATA_HEADER};

/// How one transfer runs, fixed at negotiation.
#[derive(Debug, Clone)]
pub struct Params {
    /// Payload bytes per DATA block.
    pub blksize: u16,
    /// Blocks in flight (1 = lock-step). Must be ≥ 1 and < 32768.
    pub windowsize: u16,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// Consecutive timeouts tolerated before giving up.
    pub retries: u32,
    /// Options to acknowledge first (then wait for ACK 0); empty → DATA 1 at once.
    pub oack: Vec<(String, String)>,
}

/// Why a transfer ended without the last ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The client sent an ERROR (EDK2 sends 8 after a tsize probe: a normal end for it).
    ClientError {
        /// Code as sent.
        code: ErrorCode,
        /// Message as sent.
        message: String,
    },
    /// No progress after `retries` retransmissions.
    TimedOut {
        /// The block the client last acknowledged.
        acked: u64,
    },
    /// Reading the source failed; an ERROR 0 went to the client.
    Read(String),
    /// The server shut down; an ERROR 0 went to the client.
    Cancelled,
    /// The client's port is closed (ICMP port unreachable): it went away.
    Unreachable,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::ClientError { code, message } => write!(f, "client sent error {code}: {message:?}"),
            Failure::TimedOut { acked } => write!(f, "client silent after block {acked}, gave up"),
            Failure::Read(e) => write!(f, "read error: {e}"),
            Failure::Cancelled => f.write_str("server shutting down"),
            Failure::Unreachable => f.write_str("client port unreachable, client gone"),
        }
    }
}

/// Where a transfer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Still sending or waiting for ACKs.
    Running,
    /// The client acknowledged the last block.
    Done,
    /// Ended early.
    Failed(Failure),
}

/// Counters for the completion log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Payload bytes read from the source (= file bytes sent at least once).
    pub bytes: u64,
    /// DATA packets sent, including re-sends.
    pub data_sent: u64,
    /// DATA and OACK packets sent again (timeouts and windows restarted after a gap).
    pub resent: u64,
    /// Timer expiries that led to a re-send.
    pub timeouts: u64,
}

/// One read transfer. See the module docs.
pub struct Transfer {
    blksize: usize,
    window: u64,
    timeout: Duration,
    retries: u32,
    source: Box<dyn Read + Send>,
    /// `window` slots of `DATA_HEADER + blksize` bytes; block n lives in slot (n - 1) % window.
    ring: Vec<u8>,
    /// Packet length of each slot.
    slot_len: Vec<usize>,
    /// Encoded OACK (empty when none).
    oack: Vec<u8>,
    /// An OACK or ERROR to send before any DATA.
    control: Vec<u8>,
    control_pending: bool,
    awaiting_oack_ack: bool,
    /// Highest block the client acknowledged (0 = none yet, or the OACK).
    acked: u64,
    /// Highest block read into the ring.
    loaded: u64,
    /// Highest block ever sent.
    highest_sent: u64,
    /// Number of the final (short, possibly empty) block once it has been read.
    last_block: Option<u64>,
    /// Next block `poll_transmit` hands out, up to `send_upto`.
    next_send: u64,
    send_upto: u64,
    deadline: Option<Instant>,
    retries_left: u32,
    status: Status,
    stats: Stats,
}

impl fmt::Debug for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transfer")
            .field("blksize", &self.blksize)
            .field("window", &self.window)
            .field("acked", &self.acked)
            .field("highest_sent", &self.highest_sent)
            .field("last_block", &self.last_block)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Transfer {
    /// Starts a transfer whose request has been accepted: the first `poll_transmit` yields the
    /// OACK (when options were accepted) or DATA 1.
    pub fn new(params: Params, source: Box<dyn Read + Send>, now: Instant) -> Transfer {
        let blksize = usize::from(params.blksize.max(1));
        let window = u64::from(params.windowsize.clamp(1, super::options::MAX_WINDOW));
        let mut oack = Vec::new();
        if !params.oack.is_empty() {
            Packet::Oack(params.oack).emit(&mut oack);
        }
        let has_oack = !oack.is_empty();
        let mut t = Transfer {
            blksize,
            window,
            timeout: params.timeout,
            retries: params.retries,
            source,
            ring: vec![0; window as usize * (DATA_HEADER + blksize)],
            slot_len: vec![0; window as usize],
            control: oack.clone(),
            oack,
            control_pending: has_oack,
            awaiting_oack_ack: has_oack,
            acked: 0,
            loaded: 0,
            highest_sent: 0,
            last_block: None,
            next_send: 1,
            send_upto: if has_oack { 0 } else { window },
            deadline: Some(now + params.timeout),
            retries_left: params.retries,
            status: Status::Running,
            stats: Stats::default(),
        };
        t.clamp_window();
        t
    }

    /// Current status.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Whether the transfer still wants packets and timers.
    pub fn is_running(&self) -> bool {
        self.status == Status::Running
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Block size in use.
    pub fn blksize(&self) -> usize {
        self.blksize
    }

    /// Window size in use.
    pub fn windowsize(&self) -> u64 {
        self.window
    }

    /// When [`Transfer::on_timeout`] should be called; `None` once the transfer has ended.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Handles one datagram from the client's transfer ID (the caller filters other sources).
    pub fn on_packet(&mut self, pkt: &[u8], now: Instant) {
        if !self.is_running() {
            return;
        }
        if let Some(block) = wire::ack_block(pkt) {
            self.on_ack(block, now);
            return;
        }
        // Anything but ACK and ERROR is ignored: a stray packet must not kill a good transfer.
        if let Ok(Packet::Error { code, message }) = Packet::parse(pkt) {
            // The client gave up: stop at once, send nothing more (not even the pending OACK).
            self.finish(Status::Failed(Failure::ClientError { code, message }));
        }
    }

    fn on_ack(&mut self, block: u16, now: Instant) {
        if self.awaiting_oack_ack {
            if block == 0 {
                self.awaiting_oack_ack = false;
                self.control_pending = false;
                self.progress(0, now);
            }
            return;
        }
        // Resolve the 16-bit number to the one block in [acked, acked + 65535] it can mean.
        let ahead = u64::from(block.wrapping_sub(self.acked as u16));
        let abs = self.acked + ahead;
        if ahead == 0 || abs > self.highest_sent {
            return; // duplicate, stale (wrapped far ahead) or not yet sent: nothing to do
        }
        self.progress(abs, now);
    }

    fn progress(&mut self, acked: u64, now: Instant) {
        self.acked = acked;
        self.retries_left = self.retries;
        if self.last_block == Some(acked) {
            self.finish(Status::Done);
            return;
        }
        if acked < self.highest_sent {
            self.stats.resent += self.highest_sent - acked;
        }
        self.next_send = acked + 1;
        self.send_upto = acked + self.window;
        self.clamp_window();
        self.deadline = Some(now + self.timeout);
    }

    /// Call when [`Transfer::deadline`] has passed.
    pub fn on_timeout(&mut self, now: Instant) {
        if !self.is_running() || self.deadline.is_some_and(|d| d > now) {
            return;
        }
        if self.retries_left == 0 {
            self.finish(Status::Failed(Failure::TimedOut { acked: self.acked }));
            return;
        }
        self.retries_left -= 1;
        self.stats.timeouts += 1;
        if self.awaiting_oack_ack {
            self.control.clone_from(&self.oack);
            self.control_pending = true;
            self.stats.resent += 1;
        } else {
            self.stats.resent += (self.highest_sent - self.acked).min(self.window);
            self.next_send = self.acked + 1;
            self.send_upto = self.acked + self.window;
            self.clamp_window();
        }
        self.deadline = Some(now + self.timeout);
    }

    /// Ends the transfer because the server is shutting down; the next `poll_transmit` yields an
    /// ERROR 0 for the client so it does not wait for its timeouts.
    pub fn cancel(&mut self) {
        if self.is_running() {
            self.fail_with_error(Failure::Cancelled, ErrorCode::NotDefined, "server shutting down");
        }
    }

    /// Ends the transfer without sending anything more (e.g. the client's port is unreachable).
    pub fn abandon(&mut self, why: Failure) {
        if self.is_running() {
            self.finish(Status::Failed(why));
        }
    }

    /// The next datagram to send, if any. Call until it returns `None` after every input.
    pub fn poll_transmit(&mut self) -> Option<&[u8]> {
        self.poll_transmit_batch(1, usize::MAX).map(|(b, _)| b)
    }

    /// Like [`Transfer::poll_transmit`], but hands out up to `max_segments` consecutive DATA
    /// packets (at most `max_bytes` in all) as one buffer of `segment`-byte packets back to back,
    /// the last possibly shorter: the layout UDP GSO (`UDP_SEGMENT`) sends with one system call.
    /// Returns `(buffer, segment)`; an OACK or ERROR always comes alone (`segment` = its length).
    /// The window's blocks are contiguous in the ring, so this copies nothing.
    pub fn poll_transmit_batch(&mut self, max_segments: usize, max_bytes: usize) -> Option<(&[u8], usize)> {
        if self.control_pending {
            self.control_pending = false;
            return Some((&self.control, self.control.len()));
        }
        if !self.is_running() || self.next_send > self.send_upto {
            return None;
        }
        let seg = DATA_HEADER + self.blksize;
        let first = self.next_send;
        let first_slot = ((first - 1) % self.window) as usize;
        let mut n = first;
        let mut len = 0;
        while n <= self.send_upto && (n - first) < max_segments.max(1) as u64 {
            let slot = ((n - 1) % self.window) as usize;
            if n > first && (slot == 0 || len + seg > max_bytes) {
                break; // the ring wraps here, or the batch is full
            }
            while self.loaded < n {
                if let Err(e) = self.load_next() {
                    if n > first {
                        break; // send what is ready; the error comes with the next call
                    }
                    self.fail_with_error(Failure::Read(e.to_string()), ErrorCode::NotDefined, "read error");
                    self.control_pending = false;
                    return Some((&self.control, self.control.len()));
                }
            }
            if self.loaded < n || self.last_block.is_some_and(|l| n > l) {
                break;
            }
            len = (n - first) as usize * seg + self.slot_len[slot];
            n += 1;
            if self.slot_len[slot] < seg {
                break; // the final, short block
            }
        }
        self.clamp_window();
        let count = n - first;
        if count == 0 {
            return None;
        }
        self.next_send = n;
        self.highest_sent = self.highest_sent.max(n - 1);
        self.stats.data_sent += count;
        let start = first_slot * seg;
        Some((&self.ring[start..start + len], seg))
    }

    /// Reads block `loaded + 1` into its slot.
    fn load_next(&mut self) -> io::Result<()> {
        let n = self.loaded + 1;
        let slot = ((n - 1) % self.window) as usize;
        let start = slot * (DATA_HEADER + self.blksize);
        let pkt = &mut self.ring[start..start + DATA_HEADER + self.blksize];
        wire::write_data_header(pkt, n as u16);
        let payload = &mut pkt[DATA_HEADER..];
        let mut got = 0;
        while got < payload.len() {
            match self.source.read(&mut payload[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.slot_len[slot] = DATA_HEADER + got;
        self.stats.bytes += got as u64;
        self.loaded = n;
        if got < self.blksize {
            self.last_block = Some(n);
        }
        Ok(())
    }

    fn clamp_window(&mut self) {
        if let Some(l) = self.last_block {
            self.send_upto = self.send_upto.min(l);
        }
    }

    fn fail_with_error(&mut self, why: Failure, code: ErrorCode, msg: &str) {
        self.control.clear();
        wire::emit_error(&mut self.control, code, msg);
        self.control_pending = true;
        self.finish(Status::Failed(why));
        self.control_pending = true;
    }

    fn finish(&mut self, status: Status) {
        self.status = status;
        self.deadline = None;
        self.control_pending = false;
        self.send_upto = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const T: Duration = Duration::from_secs(1);

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn start(file: &[u8], blksize: u16, window: u16, oack: &[(&str, &str)]) -> (Transfer, Instant) {
        let now = Instant::now();
        let p = Params {
            blksize,
            windowsize: window,
            timeout: T,
            retries: 3,
            oack: oack.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        };
        (Transfer::new(p, Box::new(Cursor::new(file.to_vec())), now), now)
    }

    fn drain(t: &mut Transfer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(p) = t.poll_transmit() {
            out.push(p.to_vec());
            assert!(out.len() < 100_000, "runaway");
        }
        out
    }

    fn ack(n: u16) -> Vec<u8> {
        Packet::Ack(n).to_vec()
    }

    /// Block numbers of a batch of DATA packets.
    fn blocks(pkts: &[Vec<u8>]) -> Vec<u16> {
        pkts.iter()
            .map(|p| match Packet::parse(p).unwrap() {
                Packet::Data { block, .. } => block,
                other => panic!("expected DATA, got {other:?}"),
            })
            .collect()
    }

    /// Runs a well-behaved client to the end; returns the bytes received.
    fn client_run(t: &mut Transfer, now: Instant) -> Vec<u8> {
        let mut got = Vec::new();
        let mut expect: u16 = 1;
        let mut out = drain(t);
        while t.is_running() {
            assert!(!out.is_empty(), "stalled: {t:?}");
            let mut last = None;
            for p in &out {
                let Packet::Data { block, data } = Packet::parse(p).unwrap() else { panic!() };
                assert_eq!(block, expect);
                got.extend_from_slice(data);
                expect = expect.wrapping_add(1);
                last = Some(block);
            }
            t.on_packet(&ack(last.unwrap()), now);
            out = drain(t);
        }
        got
    }

    #[test]
    fn lock_step_small_file() {
        let f = data(1300);
        let (mut t, now) = start(&f, 512, 1, &[]);
        let out = drain(&mut t);
        assert_eq!(blocks(&out), [1]);
        assert_eq!(out[0].len(), 516);
        t.on_packet(&ack(1), now);
        assert_eq!(blocks(&drain(&mut t)), [2]);
        t.on_packet(&ack(2), now);
        let out = drain(&mut t);
        assert_eq!(blocks(&out), [3]);
        assert_eq!(out[0].len(), 4 + 1300 - 1024);
        assert!(t.is_running());
        t.on_packet(&ack(3), now);
        assert_eq!(t.status(), &Status::Done);
        assert!(drain(&mut t).is_empty());
        assert_eq!(t.deadline(), None);
        assert_eq!(t.stats().bytes, 1300);
    }

    #[test]
    fn empty_file_is_one_empty_block() {
        let (mut t, now) = start(&[], 512, 1, &[]);
        let out = drain(&mut t);
        assert_eq!(out, vec![vec![0, 3, 0, 1]]);
        t.on_packet(&ack(1), now);
        assert_eq!(t.status(), &Status::Done);
    }

    #[test]
    fn exact_multiple_ends_with_empty_block() {
        let f = data(1024);
        let (mut t, now) = start(&f, 512, 1, &[]);
        assert_eq!(client_run(&mut t, now), f);
        assert_eq!(t.stats().data_sent, 3);
        assert_eq!(t.status(), &Status::Done);
    }

    #[test]
    fn oack_flow_waits_for_ack_zero() {
        let f = data(3000);
        let (mut t, now) = start(&f, 1468, 1, &[("blksize", "1468"), ("tsize", "3000")]);
        let out = drain(&mut t);
        assert_eq!(out.len(), 1);
        assert_eq!(
            Packet::parse(&out[0]).unwrap(),
            Packet::Oack(vec![("blksize".into(), "1468".into()), ("tsize".into(), "3000".into())])
        );
        // Nothing but ACK 0 starts the data.
        t.on_packet(&ack(1), now);
        t.on_packet(&ack(5), now);
        assert!(drain(&mut t).is_empty());
        t.on_packet(&ack(0), now);
        let out = drain(&mut t);
        assert_eq!(blocks(&out), [1]);
        assert_eq!(out[0].len(), 4 + 1468);
        // A duplicate ACK 0 must not resend DATA 1.
        t.on_packet(&ack(0), now);
        assert!(drain(&mut t).is_empty());
        t.on_packet(&ack(1), now);
        assert_eq!(blocks(&drain(&mut t)), [2]);
        t.on_packet(&ack(2), now);
        let out = drain(&mut t);
        assert_eq!(out[0].len(), 4 + 3000 - 2936);
        t.on_packet(&ack(3), now);
        assert_eq!(t.status(), &Status::Done);
    }

    #[test]
    fn edk2_probe_abort_sends_nothing_more() {
        // EDK2: RRQ tsize=0 blksize=1468 windowsize=4 → OACK → ERROR 8 (tools/README.md gotcha 6).
        let (mut t, now) =
            start(&data(10_000), 1468, 4, &[("tsize", "10000"), ("blksize", "1468"), ("windowsize", "4")]);
        assert_eq!(drain(&mut t).len(), 1);
        t.on_packet(
            &Packet::Error { code: ErrorCode::OptionNegotiation, message: "User aborted the transfer".into() }.to_vec(),
            now,
        );
        assert_eq!(
            t.status(),
            &Status::Failed(Failure::ClientError {
                code: ErrorCode::OptionNegotiation,
                message: "User aborted the transfer".into()
            })
        );
        assert!(drain(&mut t).is_empty());
        assert_eq!(t.deadline(), None);
        // Later timers and packets change nothing (async-tftp re-sends its OACK here).
        t.on_timeout(now + T * 10);
        t.on_packet(&ack(0), now);
        assert!(drain(&mut t).is_empty());
    }

    #[test]
    fn client_error_mid_transfer_stops() {
        let (mut t, now) = start(&data(5000), 512, 1, &[]);
        drain(&mut t);
        t.on_packet(&ack(1), now);
        drain(&mut t);
        t.on_packet(b"\x00\x05\x00\x00disk full\x00", now);
        assert!(matches!(t.status(), Status::Failed(Failure::ClientError { .. })));
        assert!(drain(&mut t).is_empty());
    }

    #[test]
    fn duplicate_stale_and_future_acks_send_nothing() {
        let (mut t, now) = start(&data(5000), 512, 1, &[]);
        drain(&mut t);
        t.on_packet(&ack(1), now);
        assert_eq!(blocks(&drain(&mut t)), [2]);
        t.on_packet(&ack(1), now); // duplicate (Sorcerer's Apprentice)
        assert!(drain(&mut t).is_empty());
        t.on_packet(&ack(0), now); // stale
        assert!(drain(&mut t).is_empty());
        t.on_packet(&ack(7), now); // future
        assert!(drain(&mut t).is_empty());
        t.on_packet(&ack(65535), now); // wrapped-stale
        assert!(drain(&mut t).is_empty());
        t.on_packet(b"\x00\x03\x00\x01abc", now); // DATA to a read-only server: ignored
        t.on_packet(b"\x00", now); // garbage: ignored
        assert!(drain(&mut t).is_empty());
        t.on_packet(&ack(2), now);
        assert_eq!(blocks(&drain(&mut t)), [3]);
        assert_eq!(t.stats().resent, 0);
    }

    #[test]
    fn timeout_retransmits_then_gives_up() {
        let (mut t, now) = start(&data(5000), 512, 1, &[]);
        drain(&mut t);
        t.on_packet(&ack(1), now);
        assert_eq!(blocks(&drain(&mut t)), [2]);
        // Too early: nothing.
        t.on_timeout(now + T / 2);
        assert!(drain(&mut t).is_empty());
        let mut at = now;
        for _ in 0..3 {
            at += T;
            assert_eq!(t.deadline(), Some(at));
            t.on_timeout(at);
            assert_eq!(blocks(&drain(&mut t)), [2]);
        }
        at += T;
        t.on_timeout(at);
        assert_eq!(t.status(), &Status::Failed(Failure::TimedOut { acked: 1 }));
        assert!(drain(&mut t).is_empty());
        assert_eq!(t.stats().timeouts, 3);
    }

    #[test]
    fn progress_resets_the_retry_budget() {
        let (mut t, now) = start(&data(3000), 512, 1, &[]);
        drain(&mut t);
        let mut at = now;
        for b in 1..=5u16 {
            for _ in 0..3 {
                at += T;
                t.on_timeout(at);
                assert_eq!(blocks(&drain(&mut t)), [b]);
            }
            t.on_packet(&ack(b), at);
            drain(&mut t);
        }
        assert!(t.is_running());
    }

    #[test]
    fn oack_is_resent_on_timeout() {
        let (mut t, now) = start(&data(10), 512, 1, &[("tsize", "10")]);
        let first = drain(&mut t);
        t.on_timeout(now + T);
        assert_eq!(drain(&mut t), first);
        t.on_packet(&ack(0), now + T);
        assert_eq!(blocks(&drain(&mut t)), [1]);
    }

    #[test]
    fn rollover_with_tiny_blocks() {
        // 70 000 blocks of 8 bytes: block numbers wrap 65535 → 0 → 1 …
        let f = data(8 * 70_000 + 3);
        let (mut t, now) = start(&f, 8, 1, &[("blksize", "8")]);
        drain(&mut t);
        t.on_packet(&ack(0), now);
        assert_eq!(client_run(&mut t, now), f);
        assert_eq!(t.status(), &Status::Done);
        assert_eq!(t.stats().data_sent, 70_001);
    }

    #[test]
    fn rollover_sequence_on_the_wire() {
        let f = data(8 * 65_537);
        let (mut t, now) = start(&f, 8, 1, &[]);
        let mut seen = Vec::new();
        let mut out = drain(&mut t);
        while t.is_running() {
            let b = blocks(&out)[0];
            if !(5..=65_530).contains(&b) {
                seen.push(b);
            }
            t.on_packet(&ack(b), now);
            out = drain(&mut t);
        }
        assert_eq!(seen, [1, 2, 3, 4, 65531, 65532, 65533, 65534, 65535, 0, 1, 2]);
    }

    #[test]
    fn window_sends_a_window_then_slides() {
        let f = data(512 * 10 + 100);
        let (mut t, now) = start(&f, 512, 4, &[("windowsize", "4")]);
        drain(&mut t);
        t.on_packet(&ack(0), now);
        assert_eq!(blocks(&drain(&mut t)), [1, 2, 3, 4]);
        t.on_packet(&ack(4), now);
        assert_eq!(blocks(&drain(&mut t)), [5, 6, 7, 8]);
        t.on_packet(&ack(8), now);
        assert_eq!(blocks(&drain(&mut t)), [9, 10, 11]);
        t.on_packet(&ack(11), now);
        assert_eq!(t.status(), &Status::Done);
        assert_eq!(t.stats().resent, 0);
    }

    #[test]
    fn window_ack_for_an_earlier_block_restarts_after_it() {
        let f = data(512 * 10);
        let (mut t, now) = start(&f, 512, 4, &[]);
        assert_eq!(blocks(&drain(&mut t)), [1, 2, 3, 4]);
        // Block 3 lost: the client acknowledges 2 and wants 3 onwards.
        t.on_packet(&ack(2), now);
        assert_eq!(blocks(&drain(&mut t)), [3, 4, 5, 6]);
        // Its duplicate ACK 2 (e.g. sent again on its own timer) sends nothing.
        t.on_packet(&ack(2), now);
        assert!(drain(&mut t).is_empty());
        t.on_packet(&ack(6), now);
        assert_eq!(blocks(&drain(&mut t)), [7, 8, 9, 10]);
        // Timeout: the whole window after the last ACK again.
        t.on_timeout(now + T);
        assert_eq!(blocks(&drain(&mut t)), [7, 8, 9, 10]);
        t.on_packet(&ack(10), now + T);
        assert_eq!(blocks(&drain(&mut t)), [11]); // empty final block
        t.on_packet(&ack(11), now + T);
        assert_eq!(t.status(), &Status::Done);
        assert_eq!(t.stats().resent, 2 + 4);
    }

    #[test]
    fn window_larger_than_file_and_rollover() {
        let f = data(100);
        let (mut t, now) = start(&f, 512, 16, &[]);
        assert_eq!(blocks(&drain(&mut t)), [1]);
        t.on_packet(&ack(1), now);
        assert_eq!(t.status(), &Status::Done);

        let f = data(8 * 70_000);
        let (mut t, now) = start(&f, 8, 64, &[]);
        assert_eq!(client_run(&mut t, now), f);
    }

    #[test]
    fn window_with_random_loss_delivers_everything() {
        let f = data(512 * 300 + 17);
        let (mut t, mut now) = start(&f, 512, 8, &[]);
        let mut got = Vec::new();
        let mut expect: u64 = 1;
        let mut seed = 99u32;
        let mut out = drain(&mut t);
        let mut rounds = 0;
        while t.is_running() {
            rounds += 1;
            assert!(rounds < 10_000);
            let mut acked_something = false;
            for p in &out {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                if seed % 5 == 0 {
                    continue; // lost
                }
                let Packet::Data { block, data } = Packet::parse(p).unwrap() else { panic!() };
                if block == expect as u16 {
                    got.extend_from_slice(data);
                    expect += 1;
                    if (expect - 1) % 8 == 0 || data.len() < 512 {
                        t.on_packet(&ack(block), now);
                        acked_something = true;
                    }
                } else {
                    // Gap: acknowledge the last in-order block, drop the rest of the window.
                    t.on_packet(&ack((expect - 1) as u16), now);
                    acked_something = true;
                    break;
                }
            }
            if !acked_something {
                now += T;
                t.on_timeout(now);
            }
            out = drain(&mut t);
        }
        assert_eq!(t.status(), &Status::Done);
        assert_eq!(got, f);
    }

    #[test]
    fn read_error_sends_error_zero() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let p = Params { blksize: 512, windowsize: 1, timeout: T, retries: 1, oack: vec![] };
        let mut t = Transfer::new(p, Box::new(Broken), Instant::now());
        let out = drain(&mut t);
        assert_eq!(out, vec![wire::error_packet(ErrorCode::NotDefined, "read error")]);
        assert!(matches!(t.status(), Status::Failed(Failure::Read(_))));
    }

    /// Splits batches into packets, checking the layout promise.
    fn drain_batches(t: &mut Transfer, max: usize) -> Vec<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some((b, seg)) = t.poll_transmit_batch(max, 65_000) {
            assert!(b.len() <= 65_000 || b.len() == seg);
            out.push(b.chunks(seg).map(|c| c.to_vec()).collect::<Vec<_>>());
            assert!(out.len() < 10_000, "runaway");
        }
        out
    }

    #[test]
    fn batches_are_consecutive_blocks_and_wrap_with_the_ring() {
        let f = data(512 * 10 + 7);
        let (mut t, now) = start(&f, 512, 4, &[]);
        let b = drain_batches(&mut t, 64);
        assert_eq!(b.len(), 1);
        assert_eq!(blocks(&b[0]), [1, 2, 3, 4]);
        // ACK 2: the window restarts at 3; slots of 3, 4 then wrap to 5, 6.
        t.on_packet(&ack(2), now);
        let b = drain_batches(&mut t, 64);
        assert_eq!(b.iter().map(|x| blocks(x)).collect::<Vec<_>>(), vec![vec![3, 4], vec![5, 6]]);
        t.on_packet(&ack(6), now);
        let b = drain_batches(&mut t, 3);
        assert_eq!(b.iter().map(|x| blocks(x)).collect::<Vec<_>>(), vec![vec![7, 8], vec![9, 10]]);
        t.on_packet(&ack(10), now);
        let b = drain_batches(&mut t, 64);
        assert_eq!(b.len(), 1);
        assert_eq!(blocks(&b[0]), [11]);
        assert_eq!(b[0][0].len(), 4 + 7);
        t.on_packet(&ack(11), now);
        assert_eq!(t.status(), &Status::Done);
    }

    #[test]
    fn batches_respect_the_byte_limit_and_end_at_the_short_block() {
        let f = data(1468 * 44 + 100);
        let (mut t, now) = start(&f, 1468, 44, &[]);
        let b = drain_batches(&mut t, 64);
        // 44 × 1472 = 64 768 bytes fit in 65 000.
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].len(), 44);
        t.on_packet(&ack(44), now);
        let b = drain_batches(&mut t, 64);
        assert_eq!(blocks(&b[0]), [45]);
        assert_eq!(b[0][0].len(), 104);
        let (mut t, _) = start(&data(8192 * 16), 8192, 16, &[]);
        let b = drain_batches(&mut t, 64);
        assert_eq!(b.iter().map(|x| x.len()).collect::<Vec<_>>(), vec![7, 7, 2]);
    }

    #[test]
    fn batched_client_run_with_rollover() {
        let f = data(8 * 70_000 + 5);
        let (mut t, now) = start(&f, 8, 64, &[]);
        let mut got = Vec::new();
        let mut expect: u16 = 1;
        let mut batches = drain_batches(&mut t, 64);
        while t.is_running() {
            let mut last = 0;
            for p in batches.iter().flatten() {
                let Packet::Data { block, data } = Packet::parse(p).unwrap() else { panic!() };
                assert_eq!(block, expect);
                got.extend_from_slice(data);
                expect = expect.wrapping_add(1);
                last = block;
            }
            t.on_packet(&ack(last), now);
            batches = drain_batches(&mut t, 64);
        }
        assert_eq!(got, f);
    }

    #[test]
    fn abandon_sends_nothing() {
        let (mut t, now) = start(&data(5000), 512, 1, &[("tsize", "5000")]);
        t.abandon(Failure::Unreachable);
        assert!(drain(&mut t).is_empty());
        t.on_timeout(now + T);
        assert!(drain(&mut t).is_empty());
        assert_eq!(t.status(), &Status::Failed(Failure::Unreachable));
    }

    #[test]
    fn cancel_sends_one_error() {
        let (mut t, _) = start(&data(5000), 512, 1, &[]);
        drain(&mut t);
        t.cancel();
        assert_eq!(drain(&mut t), vec![wire::error_packet(ErrorCode::NotDefined, "server shutting down")]);
        assert_eq!(t.status(), &Status::Failed(Failure::Cancelled));
        t.cancel();
        assert!(drain(&mut t).is_empty());
    }
}
