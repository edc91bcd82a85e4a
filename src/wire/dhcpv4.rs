//! DHCPv4 / BOOTP messages: a validating parser on top of `dhcproto`, and a reply emitter.
//!
//! `dhcproto` decodes the fixed header well, but it has properties we cannot accept for
//! untrusted input: `chaddr()` panics when `hlen > 16`, option 93 keeps only its first entry,
//! and an option list that is cut short is silently returned as a shorter list. So [`parse`]
//! checks `hlen` first, lets `dhcproto` decode the header, and then walks the option area itself:
//! every option must fit, the magic cookie must be there, option overload (52) is honoured, and
//! repeated options are concatenated (RFC 3396). Anything else is a [`ParseError`].
//!
//! Replies are emitted by [`Reply`] with options in a stable order (53 and 54 first, as old PXE
//! ROMs expect), long options split per RFC 3396, and padded to the 300-byte BOOTP minimum.

use std::net::Ipv4Addr;

use dhcproto::{Decodable, Decoder};

use crate::wire::arch::Arch;

/// BOOTP header length before the magic cookie.
pub const HEADER_LEN: usize = 236;
/// The DHCP magic cookie (RFC 2131 §3).
pub const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Smallest reply we send: BOOTP's 300 bytes (RFC 951; many PXE ROMs drop shorter replies).
pub const MIN_REPLY_LEN: usize = 300;
/// Largest reply we send unless the client allows more with option 57 (576-byte IP datagram).
pub const DEFAULT_MAX_REPLY_LEN: usize = 576 - 28;

/// BOOTREQUEST.
pub const OP_REQUEST: u8 = 1;
/// BOOTREPLY.
pub const OP_REPLY: u8 = 2;

/// Option codes used by name in pixie.
#[allow(missing_docs)]
pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const VENDOR_SPECIFIC: u8 = 43;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAM_REQUEST: u8 = 55;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const TFTP_SERVER: u8 = 66;
    pub const BOOTFILE: u8 = 67;
    pub const USER_CLASS: u8 = 77;
    pub const RELAY_AGENT: u8 = 82;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_UUID: u8 = 97;
    pub const IPXE_ENCAP: u8 = 175;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// 1
    Discover,
    /// 2
    Offer,
    /// 3
    Request,
    /// 4
    Decline,
    /// 5
    Ack,
    /// 6
    Nak,
    /// 7
    Release,
    /// 8
    Inform,
    /// Any other value, kept.
    Other(u8),
}

impl From<u8> for MessageType {
    fn from(n: u8) -> Self {
        match n {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            n => MessageType::Other(n),
        }
    }
}

impl From<MessageType> for u8 {
    fn from(m: MessageType) -> u8 {
        match m {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Decline => 4,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
            MessageType::Release => 7,
            MessageType::Inform => 8,
            MessageType::Other(n) => n,
        }
    }
}

/// Why a datagram is not an acceptable DHCPv4 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than header + cookie.
    #[error("datagram of {0} bytes is shorter than the 240-byte DHCP header")]
    TooShort(usize),
    /// `hlen` exceeds the 16-byte chaddr field.
    #[error("hlen {0} exceeds the 16-byte chaddr field")]
    BadHlen(u8),
    /// Not op 1 or 2.
    #[error("op {0} is neither BOOTREQUEST nor BOOTREPLY")]
    BadOp(u8),
    /// The magic cookie is missing (plain BOOTP without vendor extensions, or garbage).
    #[error("magic cookie {0:02x?} is not 63 82 53 63")]
    BadMagic([u8; 4]),
    /// An option runs past the end of its area.
    #[error("option {code} at offset {offset} claims {len} bytes but only {left} remain in the {area}")]
    Truncated {
        /// Option code.
        code: u8,
        /// Offset of the option's code byte within its area.
        offset: usize,
        /// Claimed length.
        len: usize,
        /// Bytes left in the area after the length byte.
        left: usize,
        /// `options`, `file` or `sname`.
        area: &'static str,
    },
    /// An option we interpret has a malformed value.
    #[error("option {code}: {why}")]
    BadOption {
        /// Option code.
        code: u8,
        /// What is wrong.
        why: String,
    },
    /// `dhcproto` refused the header.
    #[error("header: {0}")]
    Header(String),
}

/// A parsed, validated DHCPv4 message.
#[derive(Debug, Clone)]
pub struct Packet {
    /// 1 = request, 2 = reply.
    pub op: u8,
    /// Hardware type (1 = Ethernet).
    pub htype: u8,
    /// Hardware address length (≤ 16, checked).
    pub hlen: u8,
    /// Relay hops.
    pub hops: u8,
    /// Transaction id.
    pub xid: u32,
    /// Seconds since the client began.
    pub secs: u16,
    /// Flags (bit 15 = broadcast).
    pub flags: u16,
    /// Client address (when bound/renewing).
    pub ciaddr: Ipv4Addr,
    /// "Your" address.
    pub yiaddr: Ipv4Addr,
    /// Next server.
    pub siaddr: Ipv4Addr,
    /// Relay agent address.
    pub giaddr: Ipv4Addr,
    /// Full 16-byte chaddr field.
    pub chaddr: [u8; 16],
    /// `sname` up to its first NUL (empty when overloaded with options).
    pub sname: Vec<u8>,
    /// `file` up to its first NUL (empty when overloaded with options).
    pub file: Vec<u8>,
    /// Options in first-seen order; repeated codes concatenated (RFC 3396). Excludes pad/end.
    options: OptionList,
}

/// A message's options: (code, offset, length) in the order first seen or set, and every value
/// back to back in one buffer (instead of one allocation per option).
#[derive(Debug, Clone, Default)]
struct OptionList {
    index: Vec<(u8, u32, u32)>,
    values: Vec<u8>,
}

impl OptionList {
    fn with_capacity(options: usize, bytes: usize) -> OptionList {
        OptionList { index: Vec::with_capacity(options), values: Vec::with_capacity(bytes) }
    }

    fn value(&self, at: u32, len: u32) -> &[u8] {
        &self.values[at as usize..(at + len) as usize]
    }

    fn get(&self, code: u8) -> Option<&[u8]> {
        self.index.iter().find(|(c, ..)| *c == code).map(|&(_, at, len)| self.value(at, len))
    }

    fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> + '_ {
        self.index.iter().map(|&(c, at, len)| (c, self.value(at, len)))
    }

    fn codes(&self) -> impl Iterator<Item = &u8> + '_ {
        self.index.iter().map(|(c, ..)| c)
    }

    /// Sets option `code` to `val`, replacing any value (a replaced value's bytes stay in the
    /// buffer, unused: a reply is short-lived).
    fn set(&mut self, code: u8, val: &[u8]) {
        let entry = (code, self.values.len() as u32, val.len() as u32);
        self.values.extend_from_slice(val);
        match self.index.iter_mut().find(|(c, ..)| *c == code) {
            Some(e) => *e = entry,
            None => self.index.push(entry),
        }
    }

    fn remove(&mut self, code: u8) {
        self.index.retain(|(c, ..)| *c != code);
    }

    /// Adds `val` to option `code`: a new option, or more of a repeated one (RFC 3396: the
    /// pieces are concatenated in order).
    fn add(&mut self, code: u8, val: &[u8]) {
        match self.index.iter().position(|(c, ..)| *c == code) {
            None => self.set(code, val),
            Some(i) => {
                let (_, at, len) = self.index[i];
                let end = (at + len) as usize;
                if end != self.values.len() {
                    // Not the last value written: move it to the end first, then append.
                    self.values.extend_from_within(at as usize..end);
                    self.index[i].1 = (self.values.len() - len as usize) as u32;
                }
                self.values.extend_from_slice(val);
                self.index[i].2 = len + val.len() as u32;
            }
        }
    }
}

fn walk_options(area: &[u8], name: &'static str, out: &mut OptionList) -> Result<(), ParseError> {
    let mut i = 0;
    while i < area.len() {
        let code = area[i];
        match code {
            opt::PAD => i += 1,
            opt::END => return Ok(()),
            _ => {
                if i + 1 >= area.len() {
                    return Err(ParseError::Truncated { code, offset: i, len: 0, left: 0, area: name });
                }
                let len = area[i + 1] as usize;
                let left = area.len() - (i + 2);
                if len > left {
                    return Err(ParseError::Truncated { code, offset: i, len, left, area: name });
                }
                out.add(code, &area[i + 2..i + 2 + len]);
                i += 2 + len;
            }
        }
    }
    // Ran to the end of the area without an END option. The options area of a well-formed
    // message ends with END; the overloaded `file`/`sname` areas may simply be full.
    Ok(())
}

fn until_nul(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    b[..end].to_vec()
}

/// Parses and validates one DHCPv4 datagram. Never panics.
pub fn parse(buf: &[u8]) -> Result<Packet, ParseError> {
    if buf.len() < HEADER_LEN + 4 {
        return Err(ParseError::TooShort(buf.len()));
    }
    // Checked before anything reads chaddr: dhcproto's chaddr() slices [..hlen] and panics.
    let hlen = buf[2];
    if hlen > 16 {
        return Err(ParseError::BadHlen(hlen));
    }
    let op = buf[0];
    if op != OP_REQUEST && op != OP_REPLY {
        return Err(ParseError::BadOp(op));
    }
    let magic: [u8; 4] = buf[HEADER_LEN..HEADER_LEN + 4].try_into().expect("length checked");
    if magic != MAGIC {
        return Err(ParseError::BadMagic(magic));
    }
    // dhcproto decodes the fixed header only: its option decoder asserts on malformed lengths
    // (found by fuzzing: `assertion failed: len == 4` in dhcproto 0.15's options.rs), so it gets
    // the header, the cookie and an END, and the options are walked below.
    let mut header = [0u8; HEADER_LEN + 5];
    header[..HEADER_LEN + 4].copy_from_slice(&buf[..HEADER_LEN + 4]);
    header[HEADER_LEN + 4] = opt::END;
    let msg = dhcproto::v4::Message::decode(&mut Decoder::new(&header))
        .map_err(|e| ParseError::Header(e.to_string()))?;

    let mut options = OptionList::with_capacity(16, buf.len() - HEADER_LEN);
    walk_options(&buf[HEADER_LEN + 4..], "options", &mut options)?;
    let sname_raw = &buf[44..108];
    let file_raw = &buf[108..236];
    let overload = options.get(opt::OVERLOAD).map(<[u8]>::to_vec);
    let (mut sname, mut file) = (until_nul(sname_raw), until_nul(file_raw));
    if let Some(v) = overload {
        let mode = match v.as_slice() {
            [m @ 1..=3] => *m,
            _ => {
                return Err(ParseError::BadOption {
                    code: opt::OVERLOAD,
                    why: format!("overload value {v:02x?} is not 1, 2 or 3"),
                })
            }
        };
        // RFC 2131 §4.1: options, then file, then sname.
        if mode & 1 != 0 {
            walk_options(file_raw, "file", &mut options)?;
            file.clear();
        }
        if mode & 2 != 0 {
            walk_options(sname_raw, "sname", &mut options)?;
            sname.clear();
        }
    }

    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&buf[28..44]);
    let pkt = Packet {
        op,
        htype: buf[1],
        hlen,
        hops: msg.hops(),
        xid: msg.xid(),
        secs: msg.secs(),
        flags: u16::from_be_bytes([buf[10], buf[11]]),
        ciaddr: msg.ciaddr(),
        yiaddr: msg.yiaddr(),
        siaddr: msg.siaddr(),
        giaddr: msg.giaddr(),
        chaddr,
        sname,
        file,
        options,
    };
    pkt.validate_options()?;
    Ok(pkt)
}

/// Option 82 sub-options we expose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayInfo {
    /// Sub-option 1.
    pub circuit_id: Option<Vec<u8>>,
    /// Sub-option 2.
    pub remote_id: Option<Vec<u8>>,
    /// Sub-option 5 (RFC 3527 link selection).
    pub link_selection: Option<Ipv4Addr>,
}

/// Parses a list of (code, len, value) sub-options as used by options 43 and 82.
pub fn sub_options(code: u8, v: &[u8]) -> Result<Vec<(u8, &[u8])>, ParseError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        if c == 255 {
            break;
        }
        if c == 0 {
            i += 1;
            continue;
        }
        if i + 1 >= v.len() || i + 2 + v[i + 1] as usize > v.len() {
            return Err(ParseError::BadOption {
                code,
                why: format!("sub-option {c} at offset {i} runs past the end of the option"),
            });
        }
        let len = v[i + 1] as usize;
        out.push((c, &v[i + 2..i + 2 + len]));
        i += 2 + len;
    }
    Ok(out)
}

impl Packet {
    /// Raw value of option `code` (concatenated if it was split).
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options.get(code)
    }

    /// Every option, in first-seen order: (code, value). Excludes pad and end.
    pub fn options(&self) -> impl Iterator<Item = (u8, &[u8])> + '_ {
        self.options.iter()
    }

    /// Option 53, if present.
    pub fn message_type(&self) -> Option<MessageType> {
        self.option(opt::MESSAGE_TYPE).and_then(|v| v.first()).map(|b| MessageType::from(*b))
    }

    /// The client hardware address: `chaddr[..hlen]`.
    pub fn mac(&self) -> &[u8] {
        &self.chaddr[..self.hlen as usize]
    }

    /// Whether the broadcast flag is set.
    pub fn broadcast(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// Option 93 as the full list of architectures (RFC 4578 allows several).
    pub fn arches(&self) -> Vec<Arch> {
        self.option(opt::CLIENT_ARCH)
            .map(|v| v.chunks_exact(2).map(|c| Arch::from(u16::from_be_bytes([c[0], c[1]]))).collect())
            .unwrap_or_default()
    }

    /// Option 97 as a canonical (RFC 4122 byte order) UUID; `None` if absent or all zeros.
    ///
    /// The wire form is type 0 followed by the 16-byte GUID whose first three fields are
    /// little-endian, as in SMBIOS: QEMU `-uuid 7e57c0de-0077-4000-8000-…` is sent as
    /// `00 de c0 57 7e 77 00 00 40 …`.
    pub fn uuid(&self) -> Option<[u8; 16]> {
        let v = self.option(opt::CLIENT_UUID)?;
        let g: [u8; 16] = v.get(1..17)?.try_into().ok()?;
        if g == [0; 16] {
            return None;
        }
        Some(guid_to_canonical(g))
    }

    /// Option 60 as text (lossy).
    pub fn vendor_class(&self) -> Option<String> {
        self.option(opt::VENDOR_CLASS).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Option 77: an RFC 3004 list of classes; iPXE and many others send one bare string
    /// instead, which is taken as a single class.
    pub fn user_classes(&self) -> Vec<String> {
        let Some(v) = self.option(opt::USER_CLASS) else { return Vec::new() };
        let mut out = Vec::new();
        let mut i = 0;
        let mut rfc3004 = !v.is_empty();
        while i < v.len() {
            let len = v[i] as usize;
            if len == 0 || i + 1 + len > v.len() {
                rfc3004 = false;
                break;
            }
            out.push(String::from_utf8_lossy(&v[i + 1..i + 1 + len]).into_owned());
            i += 1 + len;
        }
        if rfc3004 {
            out
        } else {
            vec![String::from_utf8_lossy(v).into_owned()]
        }
    }

    /// Option 12.
    pub fn hostname(&self) -> Option<String> {
        self.option(opt::HOSTNAME).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Option 94 (type, major, minor).
    pub fn client_ndi(&self) -> Option<(u8, u8, u8)> {
        match self.option(opt::CLIENT_NDI)? {
            [t, a, b] => Some((*t, *a, *b)),
            _ => None,
        }
    }

    /// Option 82 sub-options.
    pub fn relay_info(&self) -> Option<RelayInfo> {
        let v = self.option(opt::RELAY_AGENT)?;
        let mut r = RelayInfo::default();
        for (c, val) in sub_options(opt::RELAY_AGENT, v).ok()? {
            match c {
                1 => r.circuit_id = Some(val.to_vec()),
                2 => r.remote_id = Some(val.to_vec()),
                5 if val.len() == 4 => r.link_selection = Some(Ipv4Addr::new(val[0], val[1], val[2], val[3])),
                _ => {}
            }
        }
        Some(r)
    }

    /// Option 57, if present and sane (≥ 576).
    pub fn max_message_size(&self) -> Option<u16> {
        match self.option(opt::MAX_MESSAGE_SIZE)? {
            [a, b] => Some(u16::from_be_bytes([*a, *b])).filter(|n| *n >= 576),
            _ => None,
        }
    }

    /// PXE sub-option 71 (boot item: type, layer) of a boot-server discovery request's option 43.
    pub fn pxe_boot_item(&self) -> Option<[u8; 4]> {
        let v = self.option(opt::VENDOR_SPECIFIC)?;
        sub_options(opt::VENDOR_SPECIFIC, v)
            .ok()?
            .into_iter()
            .find(|(c, _)| *c == pxe::BOOT_ITEM)
            .and_then(|(_, val)| val.try_into().ok())
    }

    /// Checks the options pixie interprets, so later accessors never see a malformed value.
    fn validate_options(&self) -> Result<(), ParseError> {
        let bad = |code: u8, why: String| Err(ParseError::BadOption { code, why });
        if let Some(v) = self.option(opt::MESSAGE_TYPE) {
            if v.len() != 1 {
                return bad(opt::MESSAGE_TYPE, format!("length {} (must be 1)", v.len()));
            }
        }
        if let Some(v) = self.option(opt::CLIENT_ARCH) {
            if v.is_empty() || v.len() % 2 != 0 {
                return bad(opt::CLIENT_ARCH, format!("length {} is not a non-zero multiple of 2", v.len()));
            }
        }
        if let Some(v) = self.option(opt::CLIENT_UUID) {
            if v.len() != 17 || v[0] != 0 {
                return bad(
                    opt::CLIENT_UUID,
                    format!("expected type 0 and a 16-byte GUID (17 bytes), got {} bytes", v.len()),
                );
            }
        }
        if let Some(v) = self.option(opt::CLIENT_NDI) {
            if v.len() != 3 {
                return bad(opt::CLIENT_NDI, format!("length {} (must be 3)", v.len()));
            }
        }
        if let Some(v) = self.option(opt::SERVER_ID) {
            if v.len() != 4 {
                return bad(opt::SERVER_ID, format!("length {} (must be 4)", v.len()));
            }
        }
        if let Some(v) = self.option(opt::RELAY_AGENT) {
            sub_options(opt::RELAY_AGENT, v)?;
        }
        if let Some(v) = self.option(opt::VENDOR_SPECIFIC) {
            // Only PXE clients' encapsulated options are interpreted; others are opaque.
            if self.vendor_class().is_some_and(|c| c.starts_with("PXEClient")) {
                sub_options(opt::VENDOR_SPECIFIC, v)?;
            }
        }
        Ok(())
    }
}

/// Converts an SMBIOS/GUID byte order (first three fields little-endian) to RFC 4122 order.
/// The conversion is its own inverse.
pub fn guid_to_canonical(g: [u8; 16]) -> [u8; 16] {
    let mut u = g;
    u[0..4].reverse();
    u[4..6].reverse();
    u[6..8].reverse();
    u
}

/// PXE (Intel PXE 2.1 spec) encapsulated option 43 sub-options.
pub mod pxe {
    /// PXE_DISCOVERY_CONTROL.
    pub const DISCOVERY_CONTROL: u8 = 6;
    /// PXE_BOOT_ITEM (type u16, layer u16).
    pub const BOOT_ITEM: u8 = 71;
    /// Discovery control bit 3: the offer's boot file name is to be downloaded directly,
    /// without boot server discovery or a menu.
    pub const DC_USE_BOOTFILE: u8 = 0x08;
    /// Discovery control bits 0 and 1: no broadcast or multicast discovery.
    pub const DC_NO_DISCOVERY: u8 = 0x03;

    /// Option 43 telling a PXE client to boot the offered file directly.
    pub fn direct_boot() -> [u8; 4] {
        [DISCOVERY_CONTROL, 1, DC_USE_BOOTFILE | DC_NO_DISCOVERY, 255]
    }

    /// Option 43 answering a boot-server discovery for `item` (echoes PXE_BOOT_ITEM).
    pub fn boot_item_reply(item: [u8; 4]) -> [u8; 7] {
        [BOOT_ITEM, 4, item[0], item[1], item[2], item[3], 255]
    }
}

/// A BOOTREPLY under construction.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Header fields copied from the request (xid, flags, giaddr, chaddr, hlen, htype).
    pub xid: u32,
    /// Flags.
    pub flags: u16,
    /// Client address field.
    pub ciaddr: Ipv4Addr,
    /// Your address field.
    pub yiaddr: Ipv4Addr,
    /// Next server.
    pub siaddr: Ipv4Addr,
    /// Relay agent.
    pub giaddr: Ipv4Addr,
    /// Hardware type.
    pub htype: u8,
    /// Hardware length.
    pub hlen: u8,
    /// chaddr field.
    pub chaddr: [u8; 16],
    /// sname field (≤ 63 bytes are written; longer is dropped).
    pub sname: Vec<u8>,
    /// file field (≤ 127 bytes are written; longer goes only into option 67).
    pub file: Vec<u8>,
    /// Options in the order they were first set (53 and 54 are always emitted first; see
    /// [`Reply::encode`]).
    options: OptionList,
    /// Largest datagram the client accepts (from option 57, else 548).
    pub max_len: usize,
    /// The request's parameter request list (option 55). Requested options go out right after
    /// 53 and 54, in this order (RFC 2132 §9.8: the server "MUST try to insert the requested
    /// options in the order requested by the client"), then the others in `options` order; so
    /// when a reply must shrink to `max_len`, what the client did not ask for goes first.
    pub requested: Vec<u8>,
}

impl Reply {
    /// A reply to `req` with message type `mt`.
    pub fn to(req: &Packet, mt: MessageType) -> Reply {
        let mut r = Reply {
            xid: req.xid,
            flags: req.flags,
            ciaddr: req.ciaddr,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: req.giaddr,
            htype: req.htype,
            hlen: req.hlen,
            chaddr: req.chaddr,
            sname: Vec::new(),
            file: Vec::new(),
            options: OptionList::with_capacity(16, 256),
            max_len: req.max_message_size().map(|n| n as usize - 28).unwrap_or(DEFAULT_MAX_REPLY_LEN),
            requested: req.option(opt::PARAM_REQUEST).map(<[u8]>::to_vec).unwrap_or_default(),
        };
        r.set(opt::MESSAGE_TYPE, [u8::from(mt)]);
        r
    }

    /// Sets (replaces) option `code`.
    pub fn set(&mut self, code: u8, value: impl AsRef<[u8]>) -> &mut Self {
        self.options.set(code, value.as_ref());
        self
    }

    /// Removes option `code`.
    pub fn remove(&mut self, code: u8) -> &mut Self {
        self.options.remove(code);
        self
    }

    /// Encodes the reply. Options that do not fit `max_len` are dropped from the end (except 53,
    /// 54 and 255) and returned as the second element so the caller can log them.
    pub fn encode(&self) -> (Vec<u8>, Vec<u8>) {
        let limit = self.max_len.max(MIN_REPLY_LEN);
        let mut b = Vec::with_capacity(limit.min(1500));
        b.push(OP_REPLY);
        b.push(self.htype);
        b.push(self.hlen);
        b.push(0); // hops
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes()); // secs
        b.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr);
        let mut field = |v: &[u8], n: usize| {
            let v = if v.len() < n { v } else { &[][..] };
            b.extend_from_slice(v);
            b.resize(b.len() + n - v.len(), 0);
        };
        field(&self.sname, 64);
        field(&self.file, 128);
        b.extend_from_slice(&MAGIC);

        // 53 and 54 first, then what the client asked for in its order, then the rest; option
        // 82 last (RFC 3046 §2.1). Each code once, even if the request lists it twice.
        let mut placed = [false; 256];
        for special in [opt::PAD, opt::END, opt::RELAY_AGENT] {
            placed[usize::from(special)] = true;
        }
        let mut dropped = Vec::new();
        let order = [opt::MESSAGE_TYPE, opt::SERVER_ID].iter().chain(&self.requested);
        for &code in order.chain(self.options.codes()) {
            if !std::mem::replace(&mut placed[usize::from(code)], true) {
                self.emit(&mut b, code, limit, &mut dropped);
            }
        }
        self.emit(&mut b, opt::RELAY_AGENT, limit, &mut dropped);
        b.push(opt::END);
        if b.len() < MIN_REPLY_LEN {
            b.resize(MIN_REPLY_LEN, 0);
        }
        (b, dropped)
    }

    /// Appends option `code` (split into 255-byte pieces, RFC 3396) if it is set and fits
    /// `limit` with the END byte after it; an option that does not fit is left out and its
    /// code added to `dropped` (53 and 54 always go in).
    fn emit(&self, b: &mut Vec<u8>, code: u8, limit: usize, dropped: &mut Vec<u8>) {
        let Some(val) = self.options.get(code) else { return };
        let mark = b.len();
        if val.is_empty() {
            b.extend_from_slice(&[code, 0]);
        }
        for chunk in val.chunks(255) {
            b.push(code);
            b.push(chunk.len() as u8);
            b.extend_from_slice(chunk);
        }
        let essential = code == opt::MESSAGE_TYPE || code == opt::SERVER_ID;
        if !essential && b.len() + 1 > limit {
            b.truncate(mark);
            dropped.push(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal well-formed DISCOVER with the given options area (without END).
    pub(crate) fn discover_with(opts: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x77, 0, 0x10]);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&[53, 1, 1]);
        b.extend_from_slice(opts);
        b.push(255);
        b
    }

    #[test]
    fn hlen_over_16_is_refused_before_chaddr_is_read() {
        let mut b = discover_with(&[]);
        b[2] = 17;
        assert_eq!(parse(&b).unwrap_err(), ParseError::BadHlen(17));
        b[2] = 255;
        assert_eq!(parse(&b).unwrap_err(), ParseError::BadHlen(255));
    }

    #[test]
    fn truncated_option_is_malformed_not_shorter() {
        let mut b = discover_with(&[]);
        b.pop(); // END
        b.extend_from_slice(&[60, 9, b'P', b'X']);
        match parse(&b).unwrap_err() {
            ParseError::Truncated { code: 60, len: 9, left: 2, .. } => {}
            e => panic!("unexpected {e:?}"),
        }
        // A lone code byte at the very end.
        let mut b = discover_with(&[]);
        b.pop();
        b.push(60);
        assert!(matches!(parse(&b).unwrap_err(), ParseError::Truncated { code: 60, .. }));
    }

    #[test]
    fn fuzz_crash_dhcproto_option_assertion() {
        // Found by `cargo fuzz run dhcpv4_parse`: dhcproto asserted on an option length.
        let mut b = discover_with(&[]);
        b.pop();
        b.extend_from_slice(&[1, 2, 255, 0, 3, 3, 1, 2, 3, 54, 2, 1, 1, 255]);
        let _ = parse(&b);
        for code in 1..=254u8 {
            for len in 0..=6u8 {
                let mut b = discover_with(&[]);
                b.pop();
                b.extend_from_slice(&[code, len]);
                b.extend(std::iter::repeat_n(0xa5, len as usize));
                b.push(255);
                let _ = parse(&b);
            }
        }
    }

    #[test]
    fn short_and_bad_magic() {
        assert_eq!(parse(&[0u8; 100]).unwrap_err(), ParseError::TooShort(100));
        let mut b = discover_with(&[]);
        b[236] = 0;
        assert!(matches!(parse(&b).unwrap_err(), ParseError::BadMagic(_)));
        let mut b = discover_with(&[]);
        b[0] = 3;
        assert_eq!(parse(&b).unwrap_err(), ParseError::BadOp(3));
    }

    #[test]
    fn option_93_keeps_every_entry() {
        let p = parse(&discover_with(&[93, 6, 0, 7, 0, 0, 0, 11])).unwrap();
        assert_eq!(p.arches(), vec![Arch::X64Uefi, Arch::X86Bios, Arch::Arm64Uefi]);
        assert!(parse(&discover_with(&[93, 3, 0, 7, 0])).is_err());
        assert!(parse(&discover_with(&[93, 0])).is_err());
    }

    #[test]
    fn rfc3396_concatenates_split_options() {
        let p = parse(&discover_with(&[60, 3, b'P', b'X', b'E', 60, 6, b'C', b'l', b'i', b'e', b'n', b't'])).unwrap();
        assert_eq!(p.vendor_class().as_deref(), Some("PXEClient"));
        // Pieces with other options between them (and a third piece), order of first sight kept.
        let p = parse(&discover_with(&[
            60, 3, b'P', b'X', b'E', 12, 2, b'h', b'n', 60, 4, b'C', b'l', b'i', b'e', 97, 0, 60, 2, b'n', b't',
        ]))
        .unwrap_err();
        assert!(matches!(p, ParseError::BadOption { code: 97, .. }), "{p:?}");
        let p = parse(&discover_with(&[60, 3, b'P', b'X', b'E', 12, 2, b'h', b'n', 60, 4, b'C', b'l', b'i', b'e', 61, 1, 7, 60, 2, b'n', b't']))
            .unwrap();
        assert_eq!(p.vendor_class().as_deref(), Some("PXEClient"));
        assert_eq!(p.hostname().as_deref(), Some("hn"));
        assert_eq!(p.option(61), Some(&[7][..]));
        let codes: Vec<u8> = p.options().map(|(c, _)| c).collect();
        assert_eq!(codes, vec![53, 60, 12, 61]);
    }

    #[test]
    fn overloaded_file_field_is_parsed() {
        let mut b = discover_with(&[52, 1, 1]);
        b[108..114].copy_from_slice(&[12, 3, b'a', b'b', b'c', 255]);
        let p = parse(&b).unwrap();
        assert_eq!(p.hostname().as_deref(), Some("abc"));
        assert!(p.file.is_empty());
        let mut b = discover_with(&[52, 1, 1]);
        b[230..234].copy_from_slice(&[0, 0, 12, 30]);
        assert!(matches!(parse(&b).unwrap_err(), ParseError::Truncated { area: "file", .. }));
        assert!(parse(&discover_with(&[52, 1, 9])).is_err());
    }

    #[test]
    fn user_class_bare_string_and_rfc3004_list() {
        let p = parse(&discover_with(&[77, 4, b'i', b'P', b'X', b'E'])).unwrap();
        assert_eq!(p.user_classes(), vec!["iPXE"]);
        let p = parse(&discover_with(&[77, 7, 2, b'a', b'b', 3, b'c', b'd', b'e'])).unwrap();
        assert_eq!(p.user_classes(), vec!["ab", "cde"]);
    }

    #[test]
    fn uuid_is_canonicalised_and_zero_is_absent() {
        let mut o = vec![97, 17, 0];
        o.extend_from_slice(&[0xde, 0xc0, 0x57, 0x7e, 0x77, 0, 0, 0x40, 0x80, 0, 0x52, 0x54, 0, 0x77, 0, 0x10]);
        let p = parse(&discover_with(&o)).unwrap();
        let u = p.uuid().unwrap();
        assert_eq!(u[..8], [0x7e, 0x57, 0xc0, 0xde, 0x00, 0x77, 0x40, 0x00]);
        let mut z = vec![97, 17];
        z.extend_from_slice(&[0; 17]);
        assert!(parse(&discover_with(&z)).unwrap().uuid().is_none());
        assert!(parse(&discover_with(&[97, 3, 0, 1, 2])).is_err());
    }

    #[test]
    fn relay_sub_options() {
        let p = parse(&discover_with(&[82, 8, 1, 2, b'e', b'1', 2, 2, b'r', b'x'])).unwrap();
        let r = p.relay_info().unwrap();
        assert_eq!(r.circuit_id.as_deref(), Some(&b"e1"[..]));
        assert_eq!(r.remote_id.as_deref(), Some(&b"rx"[..]));
        assert!(parse(&discover_with(&[82, 3, 1, 5, b'e'])).is_err());
    }

    #[test]
    fn reply_is_padded_ordered_and_round_trips() {
        let req = parse(&discover_with(&[60, 9, b'P', b'X', b'E', b'C', b'l', b'i', b'e', b'n', b't'])).unwrap();
        let mut r = Reply::to(&req, MessageType::Offer);
        r.set(opt::VENDOR_CLASS, b"PXEClient");
        r.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
        r.set(opt::BOOTFILE, vec![b'x'; 300]);
        r.file = b"boot.efi".to_vec();
        r.max_len = 1400;
        let (bytes, dropped) = r.encode();
        assert!(dropped.is_empty());
        assert!(bytes.len() >= MIN_REPLY_LEN);
        assert_eq!(&bytes[240..243], &[53, 1, 2]);
        assert_eq!(&bytes[243..245], &[54, 4]);
        let back = parse(&bytes).unwrap();
        assert_eq!(back.op, OP_REPLY);
        assert_eq!(back.xid, 0x1234_5678);
        assert_eq!(back.option(opt::BOOTFILE).unwrap().len(), 300);
        assert_eq!(back.file, b"boot.efi");
        assert_eq!(back.message_type(), Some(MessageType::Offer));
        // A small reply is padded to 300 bytes.
        let (small, _) = Reply::to(&req, MessageType::Ack).encode();
        assert_eq!(small.len(), MIN_REPLY_LEN);
    }

    #[test]
    fn oversized_options_are_dropped_not_overflowed() {
        let req = parse(&discover_with(&[])).unwrap();
        let mut r = Reply::to(&req, MessageType::Offer);
        r.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
        r.set(200, vec![0; 400]);
        let (bytes, dropped) = r.encode();
        assert_eq!(dropped, vec![200]);
        assert!(bytes.len() <= DEFAULT_MAX_REPLY_LEN);
    }

    /// Codes of the options in an encoded reply, in order.
    fn option_codes(bytes: &[u8]) -> Vec<u8> {
        let mut codes = Vec::new();
        let mut i = 240;
        while i < bytes.len() && bytes[i] != opt::END {
            codes.push(bytes[i]);
            i += 2 + usize::from(bytes[i + 1]);
        }
        codes
    }

    #[test]
    fn requested_options_go_first_in_the_clients_order() {
        // Parameter request list 67, 66, 3, 1, 3 (listed twice), 6 (not in the reply), 53.
        let req = parse(&discover_with(&[55, 7, 67, 66, 3, 1, 3, 6, 53, 82, 2, 1, 0])).unwrap();
        let mut r = Reply::to(&req, MessageType::Offer);
        r.giaddr = Ipv4Addr::new(10, 0, 0, 254);
        for code in [1, 3, 60, 66, 67, 43] {
            r.set(code, vec![code; 16]);
        }
        r.set(opt::RELAY_AGENT, vec![1, 0]);
        r.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
        let (bytes, dropped) = r.encode();
        assert!(dropped.is_empty());
        assert_eq!(option_codes(&bytes), [53, 54, 67, 66, 3, 1, 60, 43, 82]);
        // Short of room, what was not asked for goes first.
        r.max_len = 240 + 3 + 6 + 4 * 18 + 4 + 1;
        let (bytes, dropped) = r.encode();
        assert_eq!(option_codes(&bytes), [53, 54, 67, 66, 3, 1, 82]);
        assert_eq!(dropped, [60, 43]);
        // Without a list: the order the reply was built in.
        let plain = parse(&discover_with(&[])).unwrap();
        let mut r = Reply::to(&plain, MessageType::Offer);
        for code in [1, 3, 60] {
            r.set(code, vec![code; 4]);
        }
        assert_eq!(option_codes(&r.encode().0), [53, 1, 3, 60]);
    }

    #[test]
    fn pxe_boot_item_from_bios_ipxe_pxebs() {
        let p = parse(&discover_with(&[
            60, 9, b'P', b'X', b'E', b'C', b'l', b'i', b'e', b'n', b't', 43, 7, 0x47, 4, 0x80, 0, 0, 0, 0xff,
        ]))
        .unwrap();
        assert_eq!(p.pxe_boot_item(), Some([0x80, 0, 0, 0]));
        assert_eq!(pxe::boot_item_reply([0x80, 0, 0, 0]), [0x47, 4, 0x80, 0, 0, 0, 0xff]);
    }
}
