//! Option negotiation for a read request: RFC 2347 (framework), 2348 (blksize), 2349 (tsize,
//! timeout) and 7440 (windowsize). Pure functions; the limits come from [`Limits`].
//!
//! Rules (each from its RFC unless marked as ours):
//! - The OACK carries only options the client asked for *and* we accept, in the client's order and
//!   spelling (names match case-insensitively). Unknown options are ignored. No accepted option →
//!   no OACK: DATA 1 follows the request directly (RFC 2347).
//! - A repeated option: the first occurrence counts (ours).
//! - `blksize` 8..=65464 is accepted and lowered to our limit; outside that range (or not a number)
//!   it is ignored, as RFC 2348 says for invalid values.
//! - `tsize` must be `0` in a read request; we answer with the size in bytes that will be sent
//!   (after netascii conversion). Any other value, or an unknown size, ignores the option; so
//!   does a size of 0 (ours: curl treats `tsize 0` in an OACK as an illegal operation).
//! - `timeout` 1..=255 seconds is accepted as is; otherwise ignored.
//! - `windowsize` 1..=65535 is accepted and lowered so that window × blksize stays within
//!   [`Limits::max_window_bytes`] (ours: a client's default 208 KiB UDP receive buffer overflows
//!   with 8 × 64 KiB blocks in flight, shared/bench/PEERS.md) and below 32768, so that a 16-bit ACK
//!   number always resolves unambiguously within the window (ours).

use std::time::Duration;

use crate::wire::tftp::{opt, MAX_BLKSIZE, MIN_BLKSIZE};

/// What the server allows for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted (already lowered to the path MTU where that applies).
    pub max_blksize: u16,
    /// Upper bound on window × blksize, in bytes. A window is never below one block.
    pub max_window_bytes: usize,
}

/// Largest window granted regardless of the byte budget (half the 16-bit block space).
pub const MAX_WINDOW: u16 = 32767;

/// The outcome of negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Block size in use (512 unless negotiated).
    pub blksize: u16,
    /// Blocks in flight per window (1 = RFC 1350 lock-step).
    pub windowsize: u16,
    /// Retransmission timeout the client asked for, if accepted.
    pub timeout: Option<Duration>,
    /// Options to acknowledge; empty means "send no OACK".
    pub oack: Vec<(String, String)>,
}

/// Negotiates the options of a read request. `size` is the number of bytes that will be sent, when
/// known before the transfer starts.
pub fn negotiate(requested: &[(String, String)], limits: Limits, size: Option<u64>) -> Negotiated {
    let mut n = Negotiated { blksize: 512, windowsize: 1, timeout: None, oack: Vec::new() };
    let mut seen = [false; 4];
    let mut window_at: Option<(usize, u16)> = None;
    for (name, value) in requested {
        let value = value.trim();
        let Some(idx) =
            [opt::BLKSIZE, opt::TSIZE, opt::TIMEOUT, opt::WINDOWSIZE].iter().position(|o| name.eq_ignore_ascii_case(o))
        else {
            continue;
        };
        if std::mem::replace(&mut seen[idx], true) {
            continue;
        }
        let reply = match idx {
            0 => match value.parse::<u32>() {
                Ok(b) if (u32::from(MIN_BLKSIZE)..=u32::from(MAX_BLKSIZE)).contains(&b) => {
                    let b = (b as u16).min(limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE));
                    n.blksize = b;
                    Some(b.to_string())
                }
                _ => None,
            },
            1 => match (value, size) {
                // Not for an empty file: curl (7.88, 8.x) fails with "invalid tsize -:0:- value
                // in OACK packet"; the empty DATA 1 tells every client the size anyway.
                ("0", Some(s)) if s > 0 => Some(s.to_string()),
                _ => None,
            },
            2 => match value.parse::<u32>() {
                Ok(t) if (1..=255).contains(&t) => {
                    n.timeout = Some(Duration::from_secs(u64::from(t)));
                    Some(t.to_string())
                }
                _ => None,
            },
            _ => match value.parse::<u32>() {
                Ok(w) if (1..=65535).contains(&w) => {
                    // Capped below once blksize is known (it may come later in the list).
                    window_at = Some((n.oack.len(), w as u16));
                    Some(String::new())
                }
                _ => None,
            },
        };
        if let Some(v) = reply {
            n.oack.push((name.clone(), v));
        }
    }
    if let Some((at, asked)) = window_at {
        let budget = (limits.max_window_bytes / usize::from(n.blksize)).clamp(1, usize::from(MAX_WINDOW));
        let w = asked.min(budget as u16);
        n.windowsize = w;
        n.oack[at].1 = w.to_string();
    }
    n
}

/// The largest block size that fits in one datagram on a link with this MTU (IPv4: 20-byte IP
/// header, IPv6: 40; plus 8 UDP and 4 TFTP), within RFC 2348's range.
pub fn blksize_for_mtu(mtu: u32, ipv6: bool) -> u16 {
    let overhead = if ipv6 { 52 } else { 32 };
    mtu.saturating_sub(overhead).clamp(u32::from(MIN_BLKSIZE), u32::from(MAX_BLKSIZE)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { max_blksize: MAX_BLKSIZE, max_window_bytes: 64 * 1024 };

    fn o(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn ipxe_request() {
        let n = negotiate(&o(&[("blksize", "1432"), ("tsize", "0")]), L, Some(8704));
        assert_eq!(n.blksize, 1432);
        assert_eq!(n.windowsize, 1);
        assert_eq!(n.oack, o(&[("blksize", "1432"), ("tsize", "8704")]));
    }

    #[test]
    fn edk2_probe_and_second_request() {
        let n = negotiate(&o(&[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]), L, Some(100));
        assert_eq!(n.oack, o(&[("tsize", "100"), ("blksize", "1468"), ("windowsize", "4")]));
        assert_eq!((n.blksize, n.windowsize), (1468, 4));
    }

    #[test]
    fn no_accepted_option_means_no_oack() {
        let n = negotiate(&o(&[("multicast", ""), ("blksize", "7"), ("tsize", "5")]), L, Some(1));
        assert!(n.oack.is_empty());
        assert_eq!(n.blksize, 512);
        let n = negotiate(&o(&[("blksize", "65465"), ("timeout", "0"), ("windowsize", "0")]), L, None);
        assert!(n.oack.is_empty());
        let n = negotiate(&o(&[("timeout", "256"), ("windowsize", "65536"), ("blksize", "x")]), L, None);
        assert!(n.oack.is_empty());
    }

    #[test]
    fn names_are_case_insensitive_and_echoed_as_sent() {
        let n = negotiate(&o(&[("BlkSize", "1024"), ("TIMEOUT", "3")]), L, None);
        assert_eq!(n.oack, o(&[("BlkSize", "1024"), ("TIMEOUT", "3")]));
        assert_eq!(n.timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn first_occurrence_wins() {
        let n = negotiate(&o(&[("blksize", "1024"), ("blksize", "2048")]), L, None);
        assert_eq!(n.oack, o(&[("blksize", "1024")]));
    }

    #[test]
    fn blksize_is_clamped_to_our_limit() {
        let lim = Limits { max_blksize: 1468, ..L };
        let n = negotiate(&o(&[("blksize", "65464")]), lim, None);
        assert_eq!(n.oack, o(&[("blksize", "1468")]));
        let n = negotiate(&o(&[("blksize", "8")]), lim, None);
        assert_eq!(n.blksize, 8);
    }

    #[test]
    fn tsize_only_when_zero_and_known() {
        assert!(negotiate(&o(&[("tsize", "0")]), L, None).oack.is_empty());
        assert!(negotiate(&o(&[("tsize", "12")]), L, Some(12)).oack.is_empty());
        assert!(negotiate(&o(&[("tsize", "0")]), L, Some(0)).oack.is_empty());
        assert_eq!(negotiate(&o(&[("tsize", "0")]), L, Some(1)).oack, o(&[("tsize", "1")]));
    }

    #[test]
    fn windowsize_is_capped_by_bytes_in_flight() {
        // atftp's 8192 × 16 and 65464 × 8 (PEERS.md): capped to 64 KiB in flight.
        let n = negotiate(&o(&[("windowsize", "16"), ("blksize", "8192")]), L, None);
        assert_eq!(n.oack, o(&[("windowsize", "8"), ("blksize", "8192")]));
        let n = negotiate(&o(&[("blksize", "65464"), ("windowsize", "8")]), L, None);
        assert_eq!(n.windowsize, 1);
        let n = negotiate(&o(&[("blksize", "1468"), ("windowsize", "64")]), L, None);
        assert_eq!(n.windowsize, 44);
        let n = negotiate(
            &o(&[("blksize", "8"), ("windowsize", "65535")]),
            Limits { max_window_bytes: usize::MAX, ..L },
            None,
        );
        assert_eq!(n.windowsize, MAX_WINDOW);
    }

    #[test]
    fn mtu_limits() {
        assert_eq!(blksize_for_mtu(1500, false), 1468);
        assert_eq!(blksize_for_mtu(1500, true), 1448);
        assert_eq!(blksize_for_mtu(65536, false), MAX_BLKSIZE);
        assert_eq!(blksize_for_mtu(0, false), MIN_BLKSIZE);
    }
}
