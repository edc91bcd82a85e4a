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
//! # Memory and read-ahead
//! The blocks of the current window stay in one ring buffer of (windowsize + 1) × (4 + blksize)
//! bytes (windowsize × blksize is bounded by negotiation, see [`super::options`]), so re-sending
//! never re-reads the source and sending never allocates. Blocks are read from the source in
//! order, exactly once. The one slot beyond the window lets the caller read the block after the
//! window while it waits for the ACK ([`Transfer::read_ahead`]): in lock-step, block *n*+1 is then
//! ready when ACK *n* arrives, and the file read is out of the round trip, as tftpd-hpa's double
//! buffer does. A block is only read into a slot whose previous block is acknowledged.
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
    /// Payload bytes read from the source (file bytes sent at least once, plus at most one block
    /// read ahead when the transfer ended early).
    pub bytes: u64,
    /// DATA packets sent, including re-sends.
    pub data_sent: u64,
    /// DATA and OACK packets sent again (timeouts and windows restarted after a gap).
    pub resent: u64,
    /// Timer expiries that led to a re-send.
    pub timeouts: u64,
}

/// DATA packets to send at once, from [`Transfer::poll_transmit_batch`].
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// `segment`-byte packets back to back (the very last possibly shorter), to be sent as
    /// `parts[0]` followed by `parts[1]`. `parts[1]` is empty unless the batch wraps around the
    /// ring; then `parts[0]` holds whole packets only.
    pub parts: [&'a [u8]; 2],
    /// Packet size (blksize + 4, or the length of a lone OACK or ERROR).
    pub segment: usize,
}

impl Batch<'_> {
    /// Bytes in both parts.
    pub fn len(&self) -> usize {
        self.parts[0].len() + self.parts[1].len()
    }

    /// Whether there is nothing to send (never, for a batch handed out).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The packets one by one, in order.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let seg = self.segment.max(1);
        self.parts.iter().flat_map(move |p| p.chunks(seg))
    }
}

/// One read transfer. See the module docs.
pub struct Transfer {
    blksize: usize,
    window: u64,
    timeout: Duration,
    retries: u32,
    source: Box<dyn Read + Send>,
    /// A read error met ahead of time ([`Transfer::read_ahead`], or the rest of a batch): the
    /// source is not read again, and the error is reported when its block is due.
    read_error: Option<io::Error>,
    /// Slots in the ring: `window + 1`.
    slots: u64,
    /// `slots` slots of `DATA_HEADER + blksize` bytes; block n lives in slot (n - 1) % slots.
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
        let slots = window + 1;
        let mut t = Transfer {
            blksize,
            window,
            timeout: params.timeout,
            retries: params.retries,
            source,
            read_error: None,
            slots,
            ring: vec![0; slots as usize * (DATA_HEADER + blksize)],
            slot_len: vec![0; slots as usize],
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
        // One segment never wraps around the ring: it is all in the first part.
        self.poll_transmit_batch(1, usize::MAX).map(|b| b.parts[0])
    }

    /// Like [`Transfer::poll_transmit`], but hands out up to `max_segments` consecutive DATA
    /// packets (at most `max_bytes` in all) as `segment`-byte packets back to back, the last
    /// possibly shorter: the layout UDP GSO (`UDP_SEGMENT`) sends with one system call. Where the
    /// batch wraps around the end of the ring it comes in two parts (two iovecs of one `sendmsg`);
    /// a packet never straddles them. An OACK or ERROR always comes alone (`segment` = its length).
    /// Nothing is copied.
    pub fn poll_transmit_batch(&mut self, max_segments: usize, max_bytes: usize) -> Option<Batch<'_>> {
        if self.control_pending {
            self.control_pending = false;
            return Some(Batch { parts: [&self.control, &[]], segment: self.control.len() });
        }
        if !self.is_running() || self.next_send > self.send_upto {
            return None;
        }
        let seg = DATA_HEADER + self.blksize;
        let first = self.next_send;
        let mut n = first;
        let mut len = 0;
        while n <= self.send_upto && (n - first) < max_segments.max(1) as u64 {
            if n > first && len + seg > max_bytes {
                break; // the batch is full
            }
            // Blocks are sent in order, so at most block n itself is still to be read.
            if self.loaded < n {
                if let Err(e) = self.load_next() {
                    if n > first {
                        // Send what is ready; the error comes with the next call.
                        self.read_error = Some(e);
                        break;
                    }
                    self.fail_with_error(Failure::Read(e.to_string()), ErrorCode::NotDefined, "read error");
                    self.control_pending = false;
                    return Some(Batch { parts: [&self.control, &[]], segment: self.control.len() });
                }
            }
            if self.last_block.is_some_and(|l| n > l) {
                break;
            }
            let slot_len = self.slot_len[self.slot(n)];
            len += slot_len;
            n += 1;
            if slot_len < seg {
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
        // A batch holds at most `window` < `slots` blocks, so it wraps at most once. Only its last
        // block can be short, so every block before the wrap is a whole segment.
        let first_slot = self.slot(first);
        let before_wrap = count.min(self.slots - first_slot as u64) as usize;
        let start = first_slot * seg;
        if before_wrap as u64 == count {
            Some(Batch { parts: [&self.ring[start..start + len], &[]], segment: seg })
        } else {
            let head = before_wrap * seg;
            Some(Batch { parts: [&self.ring[start..start + head], &self.ring[..len - head]], segment: seg })
        }
    }

    /// Reads the next block not yet read into its slot, if that slot's previous block is
    /// acknowledged (so a block that may still have to be re-sent is never overwritten). Call it
    /// after sending and before waiting for the client: in lock-step the block after the one in
    /// flight is then read while the client handles that one, not after its ACK. Reads at most one
    /// block; does nothing once the final block has been read, after a read error (kept, and
    /// reported by [`Transfer::poll_transmit`] when that block is due, exactly as without
    /// read-ahead) or once the transfer has ended.
    pub fn read_ahead(&mut self) {
        if !self.is_running() || self.last_block.is_some() || self.read_error.is_some() {
            return;
        }
        // Block n lives in the slot of block n - slots, which must be acknowledged.
        if self.loaded + 1 > self.acked + self.slots {
            return;
        }
        if let Err(e) = self.load_next() {
            self.read_error = Some(e);
        }
    }

    fn slot(&self, n: u64) -> usize {
        ((n - 1) % self.slots) as usize
    }

    /// Reads block `loaded + 1` into its slot; a read error met earlier is returned instead.
    fn load_next(&mut self) -> io::Result<()> {
        if let Some(e) = self.read_error.take() {
            return Err(e);
        }
        let n = self.loaded + 1;
        let slot = self.slot(n);
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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
        // Without read-ahead (a server loop that never calls it must work as well).
        let f = data(512 * 300 + 17);
        assert_eq!(lossy_run(&f, 512, 8, 99, 5, false, false), f);
    }

    /// A source that counts its reads and fails once `fail_at` bytes have been handed out.
    struct Flaky {
        data: Vec<u8>,
        pos: usize,
        fail_at: usize,
        reads: Arc<AtomicUsize>,
    }

    impl Read for Flaky {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.pos >= self.fail_at {
                return Err(io::Error::other("disk on fire"));
            }
            let k = b.len().min(self.data.len() - self.pos).min(self.fail_at - self.pos);
            b[..k].copy_from_slice(&self.data[self.pos..self.pos + k]);
            self.pos += k;
            Ok(k)
        }
    }

    fn start_flaky(file: &[u8], fail_at: usize, blksize: u16, window: u16) -> (Transfer, Arc<AtomicUsize>, Instant) {
        let reads = Arc::new(AtomicUsize::new(0));
        let src = Flaky { data: file.to_vec(), pos: 0, fail_at, reads: reads.clone() };
        let p = Params { blksize, windowsize: window, timeout: T, retries: 3, oack: vec![] };
        let now = Instant::now();
        (Transfer::new(p, Box::new(src), now), reads, now)
    }

    fn payload(pkt: &[u8]) -> Vec<u8> {
        let Packet::Data { data, .. } = Packet::parse(pkt).unwrap() else { panic!("expected DATA") };
        data.to_vec()
    }

    #[test]
    fn read_ahead_in_lock_step_reads_one_block_ahead_and_never_overwrites_the_unacked_one() {
        let f = data(512 * 6 + 100);
        let (mut t, now) = start(&f, 512, 1, &[("blksize", "512")]);
        assert_eq!(drain(&mut t).len(), 1); // OACK
        // While the OACK waits for ACK 0, blocks 1 and 2 fit the two slots; no further.
        for _ in 0..5 {
            t.read_ahead();
        }
        assert_eq!(t.stats().bytes, 1024);
        t.on_packet(&ack(0), now);
        let mut got = Vec::new();
        let mut at = now;
        for block in 1..=7u16 {
            let out = drain(&mut t);
            assert_eq!(blocks(&out), [block]);
            for _ in 0..3 {
                t.read_ahead();
            }
            // Block + 1 is read (or the file has ended); never block + 2.
            let ahead = (512 * (u64::from(block) + 1)).min(f.len() as u64);
            assert_eq!(t.stats().bytes, ahead);
            if block % 2 == 1 {
                // Lost twice: the timeouts re-send this very block, not the one read ahead.
                for _ in 0..2 {
                    at += T;
                    t.on_timeout(at);
                    assert_eq!(drain(&mut t), out);
                    t.read_ahead();
                    assert_eq!(t.stats().bytes, ahead);
                }
                // A duplicate of the previous ACK re-sends nothing and changes no slot.
                t.on_packet(&ack(block - 1), at);
                assert!(drain(&mut t).is_empty());
                t.read_ahead();
            }
            got.extend(payload(&out[0]));
            t.on_packet(&ack(block), at);
        }
        assert_eq!(t.status(), &Status::Done);
        assert_eq!(got, f);
        assert_eq!(t.stats().bytes, f.len() as u64);
        assert_eq!(t.stats().data_sent, 7 + 4 * 2);
        // Ended: nothing more is read.
        t.read_ahead();
        assert_eq!(t.stats().bytes, f.len() as u64);
    }

    #[test]
    fn read_ahead_stops_at_the_final_block_and_when_ended() {
        // Exactly 2 full blocks: the final block 3 is empty. Read-ahead must not read past it.
        let f = data(1024);
        let (mut t, reads, now) = start_flaky(&f, usize::MAX, 512, 1);
        assert_eq!(blocks(&drain(&mut t)), [1]);
        t.read_ahead(); // block 2
        t.on_packet(&ack(1), now);
        assert_eq!(blocks(&drain(&mut t)), [2]);
        t.read_ahead(); // block 3, empty: the end of the file
        let before = reads.load(Ordering::SeqCst);
        t.on_packet(&ack(2), now);
        let out = drain(&mut t);
        assert_eq!(out, vec![vec![0, 3, 0, 3]]);
        t.read_ahead();
        t.read_ahead();
        assert_eq!(reads.load(Ordering::SeqCst), before);
        t.on_packet(&ack(3), now);
        assert_eq!(t.status(), &Status::Done);
        assert_eq!(t.stats().data_sent, 3);

        // A cancelled transfer reads nothing more.
        let (mut t, reads, _) = start_flaky(&data(5000), usize::MAX, 512, 1);
        drain(&mut t);
        t.cancel();
        let before = reads.load(Ordering::SeqCst);
        t.read_ahead();
        assert_eq!(reads.load(Ordering::SeqCst), before);
        assert_eq!(drain(&mut t), vec![wire::error_packet(ErrorCode::NotDefined, "server shutting down")]);
    }

    #[test]
    fn read_error_met_ahead_is_reported_when_its_block_is_due() {
        // The source fails after 1.5 blocks: block 2 cannot be read.
        let f = data(512 * 4);
        let (mut t, reads, now) = start_flaky(&f, 512 + 256, 512, 1);
        assert_eq!(blocks(&drain(&mut t)), [1]);
        t.read_ahead(); // meets the error; block 1 is still in flight
        assert!(t.is_running(), "the error waits for its block");
        let after_error = reads.load(Ordering::SeqCst);
        t.read_ahead(); // the source is not read again
        assert_eq!(reads.load(Ordering::SeqCst), after_error);
        // Block 1 is lost: its re-send is block 1, not the error.
        t.on_timeout(now + T);
        assert_eq!(blocks(&drain(&mut t)), [1]);
        assert!(t.is_running());
        // ACK 1: block 2 is due now, and the error goes out in its place.
        t.on_packet(&ack(1), now + T);
        assert_eq!(drain(&mut t), vec![wire::error_packet(ErrorCode::NotDefined, "read error")]);
        assert!(matches!(t.status(), Status::Failed(Failure::Read(_))));
        assert_eq!(reads.load(Ordering::SeqCst), after_error);

        // Without read-ahead, the same error at the same point.
        let (mut t, _, now) = start_flaky(&f, 512 + 256, 512, 1);
        assert_eq!(blocks(&drain(&mut t)), [1]);
        assert!(t.is_running());
        t.on_packet(&ack(1), now);
        assert_eq!(drain(&mut t), vec![wire::error_packet(ErrorCode::NotDefined, "read error")]);
        assert!(matches!(t.status(), Status::Failed(Failure::Read(_))));
    }

    #[test]
    fn read_error_in_a_window_sends_the_blocks_before_it_first() {
        // Window 4; the source fails inside block 3, met by the batch (not by read-ahead).
        let f = data(512 * 8);
        let (mut t, reads, now) = start_flaky(&f, 512 * 2 + 10, 512, 4);
        let b = drain_batches(&mut t, 64);
        // Blocks 1 and 2 go out; then the error, on the next call, without reading again.
        assert_eq!(blocks(&b[0]), [1, 2]);
        assert_eq!(b[1], vec![wire::error_packet(ErrorCode::NotDefined, "read error")]);
        assert!(matches!(t.status(), Status::Failed(Failure::Read(_))));
        let n = reads.load(Ordering::SeqCst);
        t.read_ahead();
        t.on_packet(&ack(2), now);
        assert!(drain(&mut t).is_empty());
        assert_eq!(reads.load(Ordering::SeqCst), n);
    }

    /// A client that loses about one packet in `loss` (xorshift from `seed`), acknowledges the
    /// end of each window or the last in-order block after a gap, with the server reading ahead
    /// (`read_ahead`) after every send as the server loops do; batches of up to 64 when
    /// `batched`; without any read-ahead unless `ahead`. Returns the bytes received in order.
    fn lossy_run(f: &[u8], blksize: u16, window: u16, seed: u32, loss: u32, batched: bool, ahead: bool) -> Vec<u8> {
        // Retries enough that a run of losses never ends the transfer.
        let p = Params { blksize, windowsize: window, timeout: T, retries: 1000, oack: vec![] };
        let mut now = Instant::now();
        let mut t = Transfer::new(p, Box::new(Cursor::new(f.to_vec())), now);
        let w = u64::from(window);
        let mut got = Vec::new();
        let mut expect: u64 = 1;
        let mut seed = seed;
        let mut rounds = 0;
        while t.is_running() {
            rounds += 1;
            assert!(rounds < 1_000_000, "stalled: {t:?}");
            let out: Vec<Vec<u8>> =
                if batched { drain_batches(&mut t, 64).into_iter().flatten().collect() } else { drain(&mut t) };
            if ahead {
                t.read_ahead();
            }
            let mut acked_something = false;
            for p in &out {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                if seed % loss == 0 {
                    continue; // lost
                }
                let Packet::Data { block, data } = Packet::parse(p).unwrap() else { panic!() };
                if block == expect as u16 {
                    got.extend_from_slice(data);
                    expect += 1;
                    if (expect - 1) % w == 0 || data.len() < usize::from(blksize) {
                        t.on_packet(&ack(block), now);
                        acked_something = true;
                    }
                } else {
                    // Gap: acknowledge the last in-order block, drop the rest of the window.
                    t.on_packet(&ack((expect - 1) as u16), now);
                    acked_something = true;
                    break;
                }
                if ahead {
                    t.read_ahead();
                }
            }
            if !acked_something {
                now += T;
                t.on_timeout(now);
            }
        }
        assert_eq!(t.status(), &Status::Done);
        got
    }

    #[test]
    fn read_ahead_with_random_loss_delivers_everything_byte_identical() {
        let f = data(512 * 300 + 17);
        for (window, seed) in [(1, 7u32), (2, 11), (3, 13), (8, 99), (16, 12345), (44, 4242)] {
            for batched in [false, true] {
                assert_eq!(lossy_run(&f, 512, window, seed, 5, batched, true), f, "window {window}, batched {batched}");
            }
        }
        // An exact multiple of the block size (empty final block), small blocks with rollover.
        let f = data(64 * 200);
        assert_eq!(lossy_run(&f, 64, 4, 3, 4, true, true), f);
        let f = data(8 * 70_000 + 3);
        assert_eq!(lossy_run(&f, 8, 1, 5, 50, false, true), f);
        assert_eq!(lossy_run(&f, 8, 7, 17, 50, true, true), f);
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
        drain_batches_parts(t, max).into_iter().map(|(b, _)| b).collect()
    }

    /// Like `drain_batches`, with the number of packets in each batch's first part.
    fn drain_batches_parts(t: &mut Transfer, max: usize) -> Vec<(Vec<Vec<u8>>, usize)> {
        let mut out = Vec::new();
        while let Some(b) = t.poll_transmit_batch(max, 65_000) {
            let seg = b.segment;
            assert!(b.len() <= 65_000 || b.len() == seg);
            assert!(!b.is_empty());
            if !b.parts[1].is_empty() {
                assert_eq!(b.parts[0].len() % seg, 0, "a packet straddles the wrap");
            }
            let head = b.parts[0].len().div_ceil(seg);
            out.push((b.packets().map(|c| c.to_vec()).collect::<Vec<_>>(), head));
            assert!(out.len() < 10_000, "runaway");
        }
        out
    }

    #[test]
    fn batches_are_consecutive_blocks_and_wrap_with_the_ring() {
        // Window 4: a ring of 5 slots, block n in slot (n - 1) % 5.
        let f = data(512 * 10 + 7);
        let (mut t, now) = start(&f, 512, 4, &[]);
        let b = drain_batches_parts(&mut t, 64);
        assert_eq!(b.len(), 1);
        assert_eq!(blocks(&b[0].0), [1, 2, 3, 4]);
        assert_eq!(b[0].1, 4);
        // ACK 2: the window restarts at 3; slots 2, 3, 4 then wrap to slot 0 for 6: still one
        // batch, in two parts.
        t.on_packet(&ack(2), now);
        let b = drain_batches_parts(&mut t, 64);
        assert_eq!(b.len(), 1);
        assert_eq!(blocks(&b[0].0), [3, 4, 5, 6]);
        assert_eq!(b[0].1, 3);
        // With read-ahead, block 7 goes into slot 1 (block 2's, acknowledged) before ACK 6.
        t.read_ahead();
        t.on_packet(&ack(6), now);
        let b = drain_batches_parts(&mut t, 3);
        assert_eq!(b.iter().map(|x| blocks(&x.0)).collect::<Vec<_>>(), vec![vec![7, 8, 9], vec![10]]);
        t.on_packet(&ack(10), now);
        let b = drain_batches(&mut t, 64);
        assert_eq!(b.len(), 1);
        assert_eq!(blocks(&b[0]), [11]);
        assert_eq!(b[0][0].len(), 4 + 7);
        t.on_packet(&ack(11), now);
        assert_eq!(t.status(), &Status::Done);
        assert_eq!(t.stats().bytes, f.len() as u64);
    }

    #[test]
    fn wrapped_batch_ends_with_the_short_block_after_the_wrap() {
        // Window 3, 4 slots; the file ends in block 6, a short block just past the wrap.
        let f = data(512 * 5 + 9);
        let (mut t, now) = start(&f, 512, 3, &[]);
        assert_eq!(blocks(&drain_batches(&mut t, 64)[0]), [1, 2, 3]);
        t.on_packet(&ack(3), now);
        let b = drain_batches_parts(&mut t, 64);
        assert_eq!(b.len(), 1);
        assert_eq!(blocks(&b[0].0), [4, 5, 6]);
        assert_eq!(b[0].1, 1); // block 4 in slot 3, then 5 and 6 in slots 0 and 1
        assert_eq!(b[0].0[2].len(), 4 + 9);
        let got: Vec<u8> = b[0].0.iter().flat_map(|p| p[4..].to_vec()).collect();
        assert_eq!(got, f[512 * 3..]);
        t.on_packet(&ack(6), now);
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
