//! Reading UDP datagrams out of packet captures (classic pcap and pcapng).
//!
//! Used by `pixie replay` and by the tests that check the parsers against real firmware captures.
//! Link types: Ethernet (with 802.1Q tags), Linux cooked v1/v2 and raw IP. IPv4 fragments other
//! than the first are skipped (DHCP and TFTP requests are never fragmented). Never panics:
//! a damaged capture yields an error that names the byte offset.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One UDP datagram found in a capture.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
    /// Ethernet source MAC, when the link layer has one.
    pub src_mac: Option<[u8; 6]>,
}

/// Why a capture could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    /// Neither pcap nor pcapng.
    #[error("not a pcap or pcapng file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// A record or block runs past the end of the file.
    #[error("capture truncated at byte {0}")]
    Truncated(usize),
    /// The link type is not one we decode.
    #[error("link type {0} is not supported (Ethernet, Linux cooked and raw IP are)")]
    LinkType(u32),
}

const LINK_RAW: u32 = 101;
const LINK_ETHERNET: u32 = 1;
const LINK_SLL: u32 = 113;
const LINK_SLL2: u32 = 276;
const LINK_IPV4: u32 = 228;
const LINK_IPV6: u32 = 229;

fn supported(link: u32) -> bool {
    matches!(link, LINK_ETHERNET | LINK_SLL | LINK_SLL2 | LINK_RAW | LINK_IPV4 | LINK_IPV6)
}

struct Rd<'a> {
    b: &'a [u8],
    le: bool,
}

impl Rd<'_> {
    fn u32(&self, at: usize) -> Result<u32, CaptureError> {
        let s: [u8; 4] = self.b.get(at..at + 4).ok_or(CaptureError::Truncated(at))?.try_into().expect("4");
        Ok(if self.le { u32::from_le_bytes(s) } else { u32::from_be_bytes(s) })
    }
    fn u16(&self, at: usize) -> Result<u16, CaptureError> {
        let s: [u8; 2] = self.b.get(at..at + 2).ok_or(CaptureError::Truncated(at))?.try_into().expect("2");
        Ok(if self.le { u16::from_le_bytes(s) } else { u16::from_be_bytes(s) })
    }
    fn slice(&self, at: usize, len: usize) -> Result<&[u8], CaptureError> {
        self.b.get(at..at.checked_add(len).ok_or(CaptureError::Truncated(at))?).ok_or(CaptureError::Truncated(at))
    }
}

/// Reads every UDP datagram from a pcap or pcapng file's bytes.
pub fn read_udp(file: &[u8]) -> Result<Vec<Datagram>, CaptureError> {
    let magic: [u8; 4] = file.get(0..4).ok_or(CaptureError::Truncated(0))?.try_into().expect("4");
    let mut out = Vec::new();
    match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0xa1, 0xb2, 0xc3, 0xd4] | [0x4d, 0x3c, 0xb2, 0xa1] | [0xa1, 0xb2, 0x3c, 0x4d] => {
            let le = magic[0] == 0xd4 || magic[0] == 0x4d;
            let nanos = magic == [0x4d, 0x3c, 0xb2, 0xa1] || magic == [0xa1, 0xb2, 0x3c, 0x4d];
            let r = Rd { b: file, le };
            let link = r.u32(20)? & 0x0fff_ffff;
            if !supported(link) {
                return Err(CaptureError::LinkType(link));
            }
            let mut at = 24;
            while at < file.len() {
                let sec = r.u32(at)? as f64;
                let frac = r.u32(at + 4)? as f64;
                let incl = r.u32(at + 8)? as usize;
                let data = r.slice(at + 16, incl)?;
                let time = sec + if nanos { frac / 1e9 } else { frac / 1e6 };
                if let Some(d) = decode_frame(link, data, time) {
                    out.push(d);
                }
                at += 16 + incl;
            }
        }
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            let mut at = 0;
            let mut le = true;
            let mut links: Vec<(u32, f64)> = Vec::new();
            while at < file.len() {
                // Section header: learn the byte order from its magic before reading lengths.
                if file.get(at..at + 4) == Some(&[0x0a, 0x0d, 0x0d, 0x0a]) {
                    let bom = file.get(at + 8..at + 12).ok_or(CaptureError::Truncated(at + 8))?;
                    le = bom == [0x4d, 0x3c, 0x2b, 0x1a];
                    links.clear();
                }
                let r = Rd { b: file, le };
                let btype = r.u32(at)?;
                let blen = r.u32(at + 4)? as usize;
                if blen < 12 || blen % 4 != 0 {
                    return Err(CaptureError::Truncated(at));
                }
                let body = r.slice(at + 8, blen - 12)?;
                let rb = Rd { b: body, le };
                match btype {
                    1 => {
                        let link = rb.u16(0)? as u32;
                        // if_tsresol option (9) could change the unit; microseconds is the default.
                        let mut unit = 1e-6;
                        let mut o = 8;
                        while o + 4 <= body.len() {
                            let code = rb.u16(o)?;
                            let len = rb.u16(o + 2)? as usize;
                            if code == 0 {
                                break;
                            }
                            if code == 9 && len >= 1 {
                                let v = *body.get(o + 4).ok_or(CaptureError::Truncated(at + 8 + o))?;
                                unit = if v & 0x80 != 0 { 2f64.powi(-((v & 0x7f) as i32)) } else { 10f64.powi(-(v as i32)) };
                            }
                            o += 4 + len.div_ceil(4) * 4;
                        }
                        links.push((link, unit));
                    }
                    6 => {
                        let iface = rb.u32(0)? as usize;
                        let (link, unit) = *links.get(iface).ok_or(CaptureError::Truncated(at))?;
                        let ts = ((rb.u32(4)? as u64) << 32) | rb.u32(8)? as u64;
                        let caplen = rb.u32(12)? as usize;
                        let data = rb.slice(20, caplen)?;
                        if supported(link) {
                            if let Some(d) = decode_frame(link, data, ts as f64 * unit) {
                                out.push(d);
                            }
                        }
                    }
                    3 => {
                        let (link, _) = *links.first().ok_or(CaptureError::Truncated(at))?;
                        let data = &body[4.min(body.len())..];
                        if supported(link) {
                            if let Some(d) = decode_frame(link, data, 0.0) {
                                out.push(d);
                            }
                        }
                    }
                    _ => {}
                }
                at += blen;
            }
        }
        m => return Err(CaptureError::BadMagic(m)),
    }
    Ok(out)
}

fn decode_frame(link: u32, f: &[u8], time: f64) -> Option<Datagram> {
    let (ethertype, ip, src_mac) = match link {
        LINK_ETHERNET => {
            let mut et = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
            let mut off = 14;
            while et == 0x8100 || et == 0x88a8 {
                et = u16::from_be_bytes([*f.get(off + 2)?, *f.get(off + 3)?]);
                off += 4;
            }
            let mac: [u8; 6] = f.get(6..12)?.try_into().ok()?;
            (et, f.get(off..)?, Some(mac))
        }
        LINK_SLL => (u16::from_be_bytes([*f.get(14)?, *f.get(15)?]), f.get(16..)?, None),
        LINK_SLL2 => (u16::from_be_bytes([*f.first()?, *f.get(1)?]), f.get(20..)?, None),
        LINK_RAW | LINK_IPV4 | LINK_IPV6 => {
            let v = f.first()? >> 4;
            (if v == 6 { 0x86dd } else { 0x0800 }, f, None)
        }
        _ => return None,
    };
    let (src, dst, udp) = match ethertype {
        0x0800 => {
            let ihl = ((ip.first()? & 0x0f) as usize) * 4;
            if ip.len() < 20 || ip[9] != 17 || ihl < 20 {
                return None;
            }
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            if frag & 0x1fff != 0 {
                return None;
            }
            let total = (u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]) as usize).min(ip.len());
            let s = Ipv4Addr::new(*ip.get(12)?, ip[13], ip[14], ip[15]);
            let d = Ipv4Addr::new(*ip.get(16)?, ip[17], ip[18], ip[19]);
            (IpAddr::V4(s), IpAddr::V4(d), ip.get(ihl..total)?)
        }
        0x86dd => {
            if *ip.get(6)? != 17 {
                return None;
            }
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)), ip.get(40..(40 + plen).min(ip.len()))?)
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let ulen = (u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]) as usize).clamp(8, udp.len());
    Some(Datagram {
        time,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        payload: udp.get(8..ulen)?.to_vec(),
        src_mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth_udp(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x52, 0x54, 0, 0x77, 0, 0x10, 0x08, 0x00]);
        let total = 20 + 8 + payload.len();
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255]);
        let ul = 8 + payload.len();
        f.extend_from_slice(&[0, 68, 0, 67, (ul >> 8) as u8, ul as u8, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn classic_and_ng_round_trip() {
        let frame = eth_udp(b"hello");
        let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&65535u32.to_le_bytes());
        pcap.extend_from_slice(&1u32.to_le_bytes());
        pcap.extend_from_slice(&10u32.to_le_bytes());
        pcap.extend_from_slice(&500_000u32.to_le_bytes());
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&frame);
        let d = read_udp(&pcap).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].payload, b"hello");
        assert_eq!(d[0].dst.port(), 67);
        assert!((d[0].time - 10.5).abs() < 1e-9);
        assert_eq!(d[0].src_mac, Some([0x52, 0x54, 0, 0x77, 0, 0x10]));

        // pcapng: SHB, IDB, EPB.
        let mut ng = Vec::new();
        let block = |t: u32, body: &[u8]| {
            let mut b = Vec::new();
            let pad = body.len().div_ceil(4) * 4;
            let len = (12 + pad) as u32;
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(body);
            b.resize(8 + pad, 0);
            b.extend_from_slice(&len.to_le_bytes());
            b
        };
        let mut shb = vec![0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0];
        shb.extend_from_slice(&[0xff; 8]);
        let mut s = block(0x0a0d0d0a, &shb);
        s[0..4].copy_from_slice(&[0x0a, 0x0d, 0x0d, 0x0a]);
        ng.extend_from_slice(&s);
        ng.extend_from_slice(&block(1, &[1, 0, 0, 0, 0, 0, 0, 0]));
        let mut epb = vec![0u8; 20];
        epb[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        epb[16..20].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        epb.extend_from_slice(&frame);
        ng.extend_from_slice(&block(6, &epb));
        let d = read_udp(&ng).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].payload, b"hello");
    }

    #[test]
    fn fuzz_crash_short_ipv4_header() {
        // Found by `cargo fuzz run pcap_read`: an IPv4 header cut after byte 16 indexed past it.
        let crash: &[u8] = &[212, 195, 178, 161, 0, 63, 0, 212, 10, 0, 0, 0, 12, 93, 64, 0, 10, 0, 0, 1, 229, 0, 0, 0, 0, 0, 0, 1, 0, 0, 161, 0, 18, 0, 0, 0, 12, 0, 0, 0, 12, 147, 0, 0, 0, 0, 0, 0, 12, 17, 0, 0, 0, 0, 0, 40, 0, 0, 0, 40, 0, 0, 0];
        let _ = read_udp(crash);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read_udp(b"nope").is_err());
        assert!(read_udp(&[]).is_err());
        let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        pcap.extend_from_slice(&[0; 12]);
        pcap.extend_from_slice(&1u32.to_le_bytes());
        pcap.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]);
        assert_eq!(read_udp(&pcap).unwrap_err(), CaptureError::Truncated(40));
    }
}
