//! TFTP packets (RFC 1350) with option extension (RFC 2347): parse and emit, no I/O.
//!
//! # Parsing contract
//! [`Packet::parse`] takes untrusted bytes. It never panics, allocates at most a small multiple of
//! the input (option names and values; capped at [`MAX_OPTIONS`] pairs), and returns a
//! [`ParseError`] saying what was wrong. Parsing a DATA or ACK packet does not allocate: the hot
//! path of a transfer parses one ACK per window.
//!
//! Leniency, chosen after what real clients send:
//! - A request whose option list ends in an incomplete pair (a name with no value, or bytes with no
//!   terminating NUL after the mode) keeps the complete pairs and drops the rest: the file is still
//!   served, only the broken option is ignored (RFC 2347 lets a server ignore any option).
//! - Option names keep the client's spelling; compare them with [`eq_ignore_ascii_case`]
//!   (RFC 2347: option names are case-insensitive). Non-UTF-8 names and values are decoded lossily:
//!   no option we understand contains such bytes.
//! - The file name is kept as raw bytes: whether it is acceptable is the root resolver's decision.
//!
//! [`eq_ignore_ascii_case`]: str::eq_ignore_ascii_case

use std::fmt;

/// Read request.
pub const OP_RRQ: u16 = 1;
/// Write request.
pub const OP_WRQ: u16 = 2;
/// Data block.
pub const OP_DATA: u16 = 3;
/// Acknowledgement.
pub const OP_ACK: u16 = 4;
/// Error.
pub const OP_ERROR: u16 = 5;
/// Option acknowledgement (RFC 2347).
pub const OP_OACK: u16 = 6;

/// Default block size (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Smallest block size a client may ask for (RFC 2348).
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size a client may ask for (RFC 2348): 65535 − 20 (IP) − 8 (UDP) − 4 (TFTP) − 39.
pub const MAX_BLKSIZE: u16 = 65464;
/// TFTP header in front of a DATA payload (opcode + block number).
pub const DATA_HEADER: usize = 4;
/// The largest datagram a transfer sends or expects: one DATA packet of [`MAX_BLKSIZE`].
pub const MAX_PACKET: usize = DATA_HEADER + MAX_BLKSIZE as usize;
/// The most option pairs a request may carry; more is an error (RFC 2347 clients send ≤ 5).
pub const MAX_OPTIONS: usize = 32;

/// Option names this crate knows (lower-case).
pub mod opt {
    /// RFC 2348 block size.
    pub const BLKSIZE: &str = "blksize";
    /// RFC 2349 transfer size.
    pub const TSIZE: &str = "tsize";
    /// RFC 2349 timeout (seconds).
    pub const TIMEOUT: &str = "timeout";
    /// RFC 7440 window size (blocks).
    pub const WINDOWSIZE: &str = "windowsize";
}

/// TFTP error codes (RFC 1350, RFC 2347). Unknown codes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: not defined, see the message.
    NotDefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTid,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: option negotiation refused / transfer aborted (RFC 2347; EDK2 sends it after a tsize probe).
    OptionNegotiation,
    /// Any other code, kept as sent.
    Unknown(u16),
}

impl From<u16> for ErrorCode {
    fn from(n: u16) -> ErrorCode {
        match n {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionNegotiation,
            n => ErrorCode::Unknown(n),
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(c: ErrorCode) -> u16 {
        match c {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionNegotiation => 8,
            ErrorCode::Unknown(n) => n,
        }
    }
}

/// Transfer mode of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `octet`: bytes as they are.
    Octet,
    /// `netascii`: text with CR LF line ends (the server converts on the fly).
    Netascii,
    /// `mail` (obsolete; refused by a read-only server).
    Mail,
    /// Anything else, as sent (lower-cased).
    Unknown(String),
}

impl Mode {
    fn from_bytes(b: &[u8]) -> Mode {
        if b.eq_ignore_ascii_case(b"octet") {
            Mode::Octet
        } else if b.eq_ignore_ascii_case(b"netascii") {
            Mode::Netascii
        } else if b.eq_ignore_ascii_case(b"mail") {
            Mode::Mail
        } else {
            Mode::Unknown(String::from_utf8_lossy(b).to_ascii_lowercase())
        }
    }

    /// The name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
            Mode::Mail => "mail",
            Mode::Unknown(s) => s,
        }
    }
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// File name as sent (raw bytes; not validated here).
    pub filename: Vec<u8>,
    /// Transfer mode.
    pub mode: Mode,
    /// Options in the client's order, names as spelled by the client.
    pub options: Vec<(String, String)>,
}

impl Request {
    /// The value of option `name` (case-insensitive), first occurrence.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One TFTP packet. DATA borrows its payload from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request),
    /// Write request.
    Wrq(Request),
    /// Data block.
    Data {
        /// Block number (wraps past 65535).
        block: u16,
        /// Payload, 0..=blksize bytes.
        data: &'a [u8],
    },
    /// Acknowledgement of a block (0 acknowledges an OACK).
    Ack(u16),
    /// Error; ends the transfer.
    Error {
        /// Error code.
        code: ErrorCode,
        /// Message (lossy UTF-8; empty when missing).
        message: String,
    },
    /// Option acknowledgement.
    Oack(Vec<(String, String)>),
}

/// Why bytes are not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer than the 2 bytes of an opcode, or a fixed-size field cut short.
    #[error("truncated TFTP packet ({0} bytes)")]
    Truncated(usize),
    /// An opcode RFC 1350/2347 does not define.
    #[error("unknown TFTP opcode {0}")]
    UnknownOpcode(u16),
    /// The file name or mode of a request is not NUL-terminated.
    #[error("request {0} is not NUL-terminated")]
    Unterminated(&'static str),
    /// An ACK longer than 4 bytes or similar trailing garbage in a fixed-size packet.
    #[error("{0} packet has {1} trailing bytes")]
    Trailing(&'static str, usize),
    /// More than [`MAX_OPTIONS`] option pairs.
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
}

impl ParseError {
    /// The error code a server answers this with (RFC 1350: malformed → illegal operation).
    pub fn code(&self) -> ErrorCode {
        ErrorCode::IllegalOperation
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Splits off one NUL-terminated string.
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    Some((&b[..nul], &b[nul + 1..]))
}

/// Parses NUL-terminated name/value pairs; an incomplete trailing pair is dropped (see module docs).
fn parse_options(mut rest: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    let mut out = Vec::new();
    while let Some((name, after)) = cstr(rest) {
        let Some((value, after)) = cstr(after) else { break };
        rest = after;
        if name.is_empty() && value.is_empty() {
            // Some clients pad requests with NULs; an empty pair carries nothing.
            continue;
        }
        if out.len() == MAX_OPTIONS {
            return Err(ParseError::TooManyOptions);
        }
        out.push((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()));
    }
    Ok(out)
}

fn parse_request(b: &[u8]) -> Result<Request, ParseError> {
    let (filename, rest) = cstr(b).ok_or(ParseError::Unterminated("file name"))?;
    let (mode, rest) = cstr(rest).ok_or(ParseError::Unterminated("mode"))?;
    Ok(Request { filename: filename.to_vec(), mode: Mode::from_bytes(mode), options: parse_options(rest)? })
}

impl<'a> Packet<'a> {
    /// Parses one datagram. See the module docs for the contract.
    pub fn parse(b: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        let op = be16(b, 0).ok_or(ParseError::Truncated(b.len()))?;
        let body = &b[2..];
        match op {
            OP_RRQ => Ok(Packet::Rrq(parse_request(body)?)),
            OP_WRQ => Ok(Packet::Wrq(parse_request(body)?)),
            OP_DATA => {
                let block = be16(b, 2).ok_or(ParseError::Truncated(b.len()))?;
                Ok(Packet::Data { block, data: &b[4..] })
            }
            OP_ACK => {
                let block = be16(b, 2).ok_or(ParseError::Truncated(b.len()))?;
                if b.len() > 4 {
                    return Err(ParseError::Trailing("ACK", b.len() - 4));
                }
                Ok(Packet::Ack(block))
            }
            OP_ERROR => {
                let code = be16(b, 2).ok_or(ParseError::Truncated(b.len()))?;
                // Tolerate a missing NUL after the message: it ends the transfer either way.
                let msg = &b[4..];
                let msg = cstr(msg).map(|(m, _)| m).unwrap_or(msg);
                Ok(Packet::Error { code: code.into(), message: String::from_utf8_lossy(msg).into_owned() })
            }
            OP_OACK => Ok(Packet::Oack(parse_options(body)?)),
            n => Err(ParseError::UnknownOpcode(n)),
        }
    }

    /// Appends the packet's wire form to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Packet::Rrq(r) | Packet::Wrq(r) => {
                let op = if matches!(self, Packet::Rrq(_)) { OP_RRQ } else { OP_WRQ };
                out.extend_from_slice(&op.to_be_bytes());
                out.extend_from_slice(&r.filename);
                out.push(0);
                out.extend_from_slice(r.mode.as_str().as_bytes());
                out.push(0);
                emit_options(out, &r.options);
            }
            Packet::Data { block, data } => {
                emit_data_header(out, *block);
                out.extend_from_slice(data);
            }
            Packet::Ack(block) => emit_ack(out, *block),
            Packet::Error { code, message } => emit_error(out, *code, message),
            Packet::Oack(opts) => {
                out.extend_from_slice(&OP_OACK.to_be_bytes());
                emit_options(out, opts);
            }
        }
    }

    /// The wire form as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.emit(&mut v);
        v
    }
}

fn emit_options(out: &mut Vec<u8>, opts: &[(String, String)]) {
    for (n, v) in opts {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
}

/// Appends a DATA header (opcode, block) to `out`; the payload follows.
pub fn emit_data_header(out: &mut Vec<u8>, block: u16) {
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

/// Writes a DATA header into the first 4 bytes of `buf` (which must hold at least 4 bytes).
/// Returns false, writing nothing, when `buf` is shorter.
pub fn write_data_header(buf: &mut [u8], block: u16) -> bool {
    let Some(h) = buf.get_mut(..DATA_HEADER) else { return false };
    h[..2].copy_from_slice(&OP_DATA.to_be_bytes());
    h[2..].copy_from_slice(&block.to_be_bytes());
    true
}

/// Appends an ACK.
pub fn emit_ack(out: &mut Vec<u8>, block: u16) {
    out.extend_from_slice(&OP_ACK.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

/// Appends an ERROR. NUL bytes inside `message` are dropped so the packet stays well-formed.
pub fn emit_error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&u16::from(code).to_be_bytes());
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
}

/// An ERROR packet as a new vector.
pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + message.len());
    emit_error(&mut v, code, message);
    v
}

/// Fast path for the transfer loop: the block number of an ACK, or `None` for anything else.
/// Same acceptance as [`Packet::parse`] for ACKs.
pub fn ack_block(b: &[u8]) -> Option<u16> {
    if b.len() == 4 && be16(b, 0) == Some(OP_ACK) {
        be16(b, 2)
    } else {
        None
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorCode::NotDefined => "not defined",
            ErrorCode::FileNotFound => "file not found",
            ErrorCode::AccessViolation => "access violation",
            ErrorCode::DiskFull => "disk full",
            ErrorCode::IllegalOperation => "illegal operation",
            ErrorCode::UnknownTid => "unknown transfer ID",
            ErrorCode::FileExists => "file exists",
            ErrorCode::NoSuchUser => "no such user",
            ErrorCode::OptionNegotiation => "option negotiation / aborted",
            ErrorCode::Unknown(n) => return write!(f, "error {n}"),
        };
        write!(f, "{} ({s})", u16::from(*self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut v = vec![0, 1];
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        v.extend_from_slice(mode.as_bytes());
        v.push(0);
        for (n, val) in opts {
            v.extend_from_slice(n.as_bytes());
            v.push(0);
            v.extend_from_slice(val.as_bytes());
            v.push(0);
        }
        v
    }

    #[test]
    fn ipxe_rrq_parses() {
        // What iPXE sends (tools/README.md gotcha 6).
        let b = rrq("undionly.kpxe", "octet", &[("blksize", "1432"), ("tsize", "0")]);
        let Packet::Rrq(r) = Packet::parse(&b).unwrap() else { panic!() };
        assert_eq!(r.filename, b"undionly.kpxe");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.option("BLKSIZE"), Some("1432"));
        assert_eq!(r.option("tsize"), Some("0"));
        assert_eq!(r.option("windowsize"), None);
        assert_eq!(Packet::Rrq(r).to_vec(), b);
    }

    #[test]
    fn mode_is_case_insensitive() {
        let b = rrq("f", "NetASCII", &[]);
        let Packet::Rrq(r) = Packet::parse(&b).unwrap() else { panic!() };
        assert_eq!(r.mode, Mode::Netascii);
        let b = rrq("f", "weird", &[]);
        let Packet::Rrq(r) = Packet::parse(&b).unwrap() else { panic!() };
        assert_eq!(r.mode, Mode::Unknown("weird".into()));
    }

    #[test]
    fn round_trips() {
        let pkts = [
            Packet::Wrq(Request { filename: b"x".to_vec(), mode: Mode::Octet, options: vec![] }),
            Packet::Data { block: 65535, data: b"hello" },
            Packet::Data { block: 0, data: b"" },
            Packet::Ack(0),
            Packet::Ack(65535),
            Packet::Error { code: ErrorCode::OptionNegotiation, message: "User aborted the transfer".into() },
            Packet::Error { code: ErrorCode::Unknown(99), message: String::new() },
            Packet::Oack(vec![("blksize".into(), "1468".into()), ("tsize".into(), "8704".into())]),
            Packet::Oack(vec![]),
        ];
        for p in pkts {
            let b = p.to_vec();
            assert_eq!(Packet::parse(&b).unwrap(), p, "{b:?}");
        }
    }

    #[test]
    fn error_codes_are_lossless() {
        for n in 0..=20u16 {
            assert_eq!(u16::from(ErrorCode::from(n)), n);
        }
        assert_eq!(u16::from(ErrorCode::from(65535)), 65535);
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(Packet::parse(&[]), Err(ParseError::Truncated(0)));
        assert_eq!(Packet::parse(&[0]), Err(ParseError::Truncated(1)));
        assert_eq!(Packet::parse(&[0, 9]), Err(ParseError::UnknownOpcode(9)));
        assert_eq!(Packet::parse(&[0, 0]), Err(ParseError::UnknownOpcode(0)));
        assert_eq!(Packet::parse(&[0, 4, 0]), Err(ParseError::Truncated(3)));
        assert_eq!(Packet::parse(&[0, 4, 0, 1, 0]), Err(ParseError::Trailing("ACK", 1)));
        assert_eq!(Packet::parse(&[0, 3, 0]), Err(ParseError::Truncated(3)));
        assert_eq!(Packet::parse(&[0, 5, 0]), Err(ParseError::Truncated(3)));
        // Request without NULs.
        assert_eq!(Packet::parse(b"\x00\x01file"), Err(ParseError::Unterminated("file name")));
        assert_eq!(Packet::parse(b"\x00\x01file\x00octet"), Err(ParseError::Unterminated("mode")));
        assert_eq!(Packet::parse(b"\x00\x01"), Err(ParseError::Unterminated("file name")));
        assert_eq!(Packet::parse(b"\x00\x02f\x00"), Err(ParseError::Unterminated("mode")));
    }

    #[test]
    fn incomplete_option_pairs_are_dropped() {
        let mut b = rrq("f", "octet", &[("blksize", "1468")]);
        b.extend_from_slice(b"tsize\x00");
        let Packet::Rrq(r) = Packet::parse(&b).unwrap() else { panic!() };
        assert_eq!(r.options, vec![("blksize".to_string(), "1468".to_string())]);
        let mut b = rrq("f", "octet", &[]);
        b.extend_from_slice(b"tsize");
        let Packet::Rrq(r) = Packet::parse(&b).unwrap() else { panic!() };
        assert!(r.options.is_empty());
        // NUL padding.
        let mut b = rrq("f", "octet", &[("tsize", "0")]);
        b.extend_from_slice(&[0; 10]);
        let Packet::Rrq(r) = Packet::parse(&b).unwrap() else { panic!() };
        assert_eq!(r.options.len(), 1);
    }

    #[test]
    fn huge_option_lists_are_refused() {
        let opts: Vec<(String, String)> = (0..MAX_OPTIONS + 1).map(|i| (format!("o{i}"), "1".into())).collect();
        let refs: Vec<(&str, &str)> = opts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(Packet::parse(&rrq("f", "octet", &refs)), Err(ParseError::TooManyOptions));
        assert!(Packet::parse(&rrq("f", "octet", &refs[..MAX_OPTIONS])).is_ok());
        // A 64 KiB datagram of tiny pairs stops at the cap instead of allocating per pair.
        let mut b = rrq("f", "octet", &[]);
        while b.len() < 65_000 {
            b.extend_from_slice(b"a\x00b\x00");
        }
        assert_eq!(Packet::parse(&b), Err(ParseError::TooManyOptions));
    }

    #[test]
    fn error_message_without_nul_and_with_embedded_nul() {
        let p = Packet::parse(b"\x00\x05\x00\x08abort").unwrap();
        assert_eq!(p, Packet::Error { code: ErrorCode::OptionNegotiation, message: "abort".into() });
        let v = error_packet(ErrorCode::AccessViolation, "a\0b");
        assert_eq!(v, b"\x00\x05\x00\x02ab\x00");
    }

    #[test]
    fn ack_fast_path_matches_parse() {
        assert_eq!(ack_block(&[0, 4, 1, 2]), Some(0x0102));
        assert_eq!(ack_block(&[0, 4, 1]), None);
        assert_eq!(ack_block(&[0, 4, 1, 2, 3]), None);
        assert_eq!(ack_block(&[0, 3, 1, 2]), None);
        let mut h = [0u8; 6];
        assert!(write_data_header(&mut h, 513));
        assert_eq!(h[..4], [0, 3, 2, 1]);
        assert!(!write_data_header(&mut h[..3], 1));
    }

    #[test]
    fn never_panics_on_any_short_input() {
        // Exhaustive over all inputs of up to 2 bytes, every 3- and 4-byte input with a defined
        // opcode, and a pseudo-random sample of longer ones.
        for n in 0..=0xffffu32 {
            let _ = Packet::parse(&[]);
            let _ = Packet::parse(&[n as u8]);
            let _ = Packet::parse(&[(n >> 8) as u8, n as u8]);
        }
        for op in 0..=7u8 {
            for n in 0..=0xffffu32 {
                let _ = Packet::parse(&[0, op, n as u8]);
                let _ = Packet::parse(&[0, op, (n >> 8) as u8, n as u8]);
            }
        }
        let alphabet = [0u8, 1, 2, 3, 4, 5, 6, 7, b'a', 0xff];
        let mut seed = 0x1234_5678u32;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = (seed % 40) as usize;
            let b: Vec<u8> = (0..len).map(|i| alphabet[((seed >> (i % 24)) as usize + i) % alphabet.len()]).collect();
            let _ = Packet::parse(&b);
        }
    }
}
