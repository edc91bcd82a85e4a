//! DHCPv6 client messages (RFC 8415) with the network-boot options of RFC 5970: parse only.
//!
//! Relay-forward wrappers are unwrapped (up to [`MAX_RELAY_HOPS`]); the innermost relay's
//! link address, interface-id (18) and remote-id (37) are kept. Every option must fit its
//! container; anything else is a [`ParseError6`]. Never panics.

use std::net::Ipv6Addr;

/// Relay-forward nesting we accept (RFC 8415 HOP_COUNT_LIMIT is 8; be generous but bounded).
pub const MAX_RELAY_HOPS: usize = 32;

/// Option codes used by name.
#[allow(missing_docs)]
pub mod opt6 {
    pub const CLIENT_ID: u16 = 1;
    pub const RELAY_MSG: u16 = 9;
    pub const USER_CLASS: u16 = 15;
    pub const VENDOR_CLASS: u16 = 16;
    pub const INTERFACE_ID: u16 = 18;
    pub const REMOTE_ID: u16 = 37;
    pub const BOOTFILE_URL: u16 = 59;
    pub const BOOTFILE_PARAM: u16 = 60;
    pub const CLIENT_ARCH: u16 = 61;
    pub const NII: u16 = 62;
}

/// Why a datagram is not an acceptable DHCPv6 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError6 {
    /// Too short for its header.
    #[error("message of {0} bytes is shorter than its header")]
    TooShort(usize),
    /// An option runs past the end of its container.
    #[error("option {code} at offset {offset} claims {len} bytes but only {left} remain")]
    Truncated {
        /// Option code.
        code: u16,
        /// Offset within the options area.
        offset: usize,
        /// Claimed length.
        len: usize,
        /// Bytes left.
        left: usize,
    },
    /// Relay-forward without a relay message, or nested too deeply.
    #[error("relay-forward: {0}")]
    Relay(String),
    /// An option we interpret is malformed.
    #[error("option {code}: {why}")]
    BadOption {
        /// Option code.
        code: u16,
        /// What is wrong.
        why: String,
    },
}

/// The relay that forwarded a message (the innermost one, closest to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay6 {
    /// link-address: identifies the client's link.
    pub link: Ipv6Addr,
    /// peer-address: the client (or the next relay).
    pub peer: Ipv6Addr,
    /// Option 18.
    pub interface_id: Option<Vec<u8>>,
    /// Option 37 (enterprise number stripped).
    pub remote_id: Option<Vec<u8>>,
}

/// A parsed DHCPv6 client message.
#[derive(Debug, Clone)]
pub struct Message6 {
    /// Message type (1 Solicit, 3 Request, 5 Renew, …).
    pub msg_type: u8,
    /// Transaction id (24 bits).
    pub xid: u32,
    /// Options in order (repeated codes kept as separate entries).
    pub options: Vec<(u16, Vec<u8>)>,
    /// The relay, when the message came through one.
    pub relay: Option<Relay6>,
}

fn walk(area: &[u8], out: &mut Vec<(u16, Vec<u8>)>) -> Result<(), ParseError6> {
    let mut i = 0;
    while i < area.len() {
        if i + 4 > area.len() {
            return Err(ParseError6::Truncated { code: 0, offset: i, len: 4, left: area.len() - i });
        }
        let code = u16::from_be_bytes([area[i], area[i + 1]]);
        let len = u16::from_be_bytes([area[i + 2], area[i + 3]]) as usize;
        let left = area.len() - i - 4;
        if len > left {
            return Err(ParseError6::Truncated { code, offset: i, len, left });
        }
        out.push((code, area[i + 4..i + 4 + len].to_vec()));
        i += 4 + len;
    }
    Ok(())
}

/// Parses a client message, unwrapping relay-forward messages.
pub fn parse(buf: &[u8]) -> Result<Message6, ParseError6> {
    let mut b = buf;
    let mut relay = None;
    for _ in 0..=MAX_RELAY_HOPS {
        let t = *b.first().ok_or(ParseError6::TooShort(0))?;
        if t == 12 {
            if b.len() < 34 {
                return Err(ParseError6::TooShort(b.len()));
            }
            let link = Ipv6Addr::from(<[u8; 16]>::try_from(&b[2..18]).expect("16"));
            let peer = Ipv6Addr::from(<[u8; 16]>::try_from(&b[18..34]).expect("16"));
            let mut opts = Vec::new();
            walk(&b[34..], &mut opts)?;
            let get = |c: u16| opts.iter().find(|(k, _)| *k == c).map(|(_, v)| v.clone());
            // Each hop inwards is closer to the client: the last one seen is the innermost.
            relay = Some(Relay6 {
                link,
                peer,
                interface_id: get(opt6::INTERFACE_ID),
                remote_id: get(opt6::REMOTE_ID).map(|v| v.get(4..).unwrap_or_default().to_vec()),
            });
            let inner = opts
                .iter()
                .position(|(k, _)| *k == opt6::RELAY_MSG)
                .ok_or_else(|| ParseError6::Relay("no relay message (option 9)".into()))?;
            // Borrow from the original buffer: find the option's bytes again by offset.
            let start = offset_of(b, 34, inner)?;
            let len = opts[inner].1.len();
            b = &b[start..start + len];
            continue;
        }
        if b.len() < 4 {
            return Err(ParseError6::TooShort(b.len()));
        }
        let xid = u32::from_be_bytes([0, b[1], b[2], b[3]]);
        let mut options = Vec::new();
        walk(&b[4..], &mut options)?;
        let m = Message6 { msg_type: t, xid, options, relay };
        m.validate()?;
        return Ok(m);
    }
    Err(ParseError6::Relay(format!("nested more than {MAX_RELAY_HOPS} relays deep")))
}

/// Offset of the value of the `index`-th option in the options area starting at `from`.
fn offset_of(b: &[u8], from: usize, index: usize) -> Result<usize, ParseError6> {
    let mut i = from;
    for _ in 0..index {
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        i += 4 + len;
    }
    Ok(i + 4)
}

/// Reads an RFC 8415 list of (u16 length, bytes) items.
fn length_prefixed(code: u16, v: &[u8]) -> Result<Vec<Vec<u8>>, ParseError6> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        if i + 2 > v.len() {
            return Err(ParseError6::BadOption { code, why: "item length cut short".into() });
        }
        let len = u16::from_be_bytes([v[i], v[i + 1]]) as usize;
        let item = v
            .get(i + 2..i + 2 + len)
            .ok_or_else(|| ParseError6::BadOption { code, why: format!("item of {len} bytes runs past the option") })?;
        out.push(item.to_vec());
        i += 2 + len;
    }
    Ok(out)
}

impl Message6 {
    /// First value of option `code`.
    pub fn option(&self, code: u16) -> Option<&[u8]> {
        self.options.iter().find(|(c, _)| *c == code).map(|(_, v)| v.as_slice())
    }

    fn validate(&self) -> Result<(), ParseError6> {
        if let Some(v) = self.option(opt6::CLIENT_ARCH) {
            if v.is_empty() || v.len() % 2 != 0 {
                return Err(ParseError6::BadOption { code: opt6::CLIENT_ARCH, why: format!("length {}", v.len()) });
            }
        }
        if let Some(v) = self.option(opt6::VENDOR_CLASS) {
            if v.len() < 4 {
                return Err(ParseError6::BadOption { code: opt6::VENDOR_CLASS, why: "no enterprise number".into() });
            }
            length_prefixed(opt6::VENDOR_CLASS, &v[4..])?;
        }
        if let Some(v) = self.option(opt6::USER_CLASS) {
            length_prefixed(opt6::USER_CLASS, v)?;
        }
        Ok(())
    }

    /// The client's DUID (option 1).
    pub fn duid(&self) -> Option<&[u8]> {
        self.option(opt6::CLIENT_ID)
    }

    /// The link-layer address in a DUID-LLT (1) or DUID-LL (3) client id.
    pub fn mac(&self) -> Option<Vec<u8>> {
        let v = self.duid()?;
        let t = u16::from_be_bytes([*v.first()?, *v.get(1)?]);
        match t {
            1 => v.get(8..).map(<[u8]>::to_vec),
            3 => v.get(4..).map(<[u8]>::to_vec),
            _ => None,
        }
        .filter(|a| !a.is_empty() && a.len() <= 16)
    }

    /// The machine UUID of a DUID-UUID (type 4, RFC 6355) client id, canonical byte order.
    ///
    /// EDK2 fills it from SMBIOS like option 97 (first three fields little-endian), so it is
    /// converted the same way (`../shared/tools/README.md`, gotcha 19).
    pub fn uuid(&self) -> Option<[u8; 16]> {
        let v = self.duid()?;
        if v.len() != 18 || v[..2] != [0, 4] {
            return None;
        }
        let g: [u8; 16] = v[2..].try_into().ok()?;
        (g != [0; 16]).then(|| crate::wire::dhcpv4::guid_to_canonical(g))
    }

    /// Option 61: every architecture code.
    pub fn arches(&self) -> Vec<u16> {
        self.option(opt6::CLIENT_ARCH)
            .map(|v| v.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect())
            .unwrap_or_default()
    }

    /// Option 16: the enterprise number and the first class string (lossy).
    pub fn vendor_class(&self) -> Option<(u32, String)> {
        let v = self.option(opt6::VENDOR_CLASS)?;
        let ent = u32::from_be_bytes(v.get(..4)?.try_into().ok()?);
        let first = length_prefixed(opt6::VENDOR_CLASS, &v[4..]).ok()?.into_iter().next().unwrap_or_default();
        Some((ent, String::from_utf8_lossy(&first).into_owned()))
    }

    /// Option 15: every user class (lossy).
    pub fn user_classes(&self) -> Vec<String> {
        self.option(opt6::USER_CLASS)
            .and_then(|v| length_prefixed(opt6::USER_CLASS, v).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .collect()
    }

    /// Option 62 (type, major, minor).
    pub fn nii(&self) -> Option<(u8, u8, u8)> {
        match self.option(opt6::NII)? {
            [t, a, b] => Some((*t, *a, *b)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EDK2's PXEv6 Solicit as described in the firmware notes: client id DUID-UUID, elapsed
    /// time, IA_NA, ORO, NII, arch, vendor class with enterprise 343.
    fn edk2_solicit() -> Vec<u8> {
        let mut b = vec![1, 0xab, 0xcd, 0xef];
        let mut o = |code: u16, v: &[u8]| {
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(&(v.len() as u16).to_be_bytes());
            b.extend_from_slice(v);
        };
        let mut duid = vec![0, 4];
        duid.extend_from_slice(&[0xde, 0xc0, 0x57, 0x7e, 0x77, 0, 0, 0x40, 0x80, 0, 0x52, 0x54, 0, 0x77, 0, 0x10]);
        o(1, &duid);
        o(8, &[0, 0]);
        o(3, &[0; 12]);
        o(6, &[0, 59, 0, 60, 0, 23, 0, 16]);
        o(62, &[1, 3, 0]);
        o(61, &[0, 7]);
        let vc = b"PXEClient:Arch:00007:UNDI:003000";
        let mut v = 343u32.to_be_bytes().to_vec();
        v.extend_from_slice(&(vc.len() as u16).to_be_bytes());
        v.extend_from_slice(vc);
        o(16, &v);
        b
    }

    #[test]
    fn edk2_pxev6_solicit() {
        let m = parse(&edk2_solicit()).unwrap();
        assert_eq!(m.msg_type, 1);
        assert_eq!(m.xid, 0xabcdef);
        assert_eq!(m.arches(), vec![7]);
        assert_eq!(m.nii(), Some((1, 3, 0)));
        assert_eq!(m.vendor_class(), Some((343, "PXEClient:Arch:00007:UNDI:003000".into())));
        let u = m.uuid().unwrap();
        assert_eq!(u[..4], [0x7e, 0x57, 0xc0, 0xde]);
        assert!(m.mac().is_none(), "DUID-UUID has no MAC");
    }

    #[test]
    fn relay_forward_is_unwrapped() {
        let inner = edk2_solicit();
        let mut b = vec![12, 0];
        b.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&"fe80::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&18u16.to_be_bytes());
        b.extend_from_slice(&3u16.to_be_bytes());
        b.extend_from_slice(b"et0");
        b.extend_from_slice(&9u16.to_be_bytes());
        b.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        b.extend_from_slice(&inner);
        let m = parse(&b).unwrap();
        assert_eq!(m.arches(), vec![7]);
        let r = m.relay.unwrap();
        assert_eq!(r.link, "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(r.interface_id.as_deref(), Some(&b"et0"[..]));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[1, 0, 0]).is_err());
        assert!(parse(&[1, 0, 0, 0, 0, 1, 0, 9, 1]).is_err());
        assert!(parse(&[12; 40]).is_err());
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend_from_slice(&[12, 0]);
            deep.extend_from_slice(&[0; 32]);
        }
        assert!(parse(&deep).is_err());
        // Every prefix of a real message either parses or errors.
        let s = edk2_solicit();
        for n in 0..s.len() {
            let _ = parse(&s[..n]);
        }
        // DUID-LL gives the MAC.
        let mut b = vec![1, 0, 0, 1, 0, 1, 0, 10, 0, 3, 0, 1];
        b.extend_from_slice(&[0x52, 0x54, 0, 0x77, 0, 0x10]);
        assert_eq!(parse(&b).unwrap().mac(), Some(vec![0x52, 0x54, 0, 0x77, 0, 0x10]));
    }
}
