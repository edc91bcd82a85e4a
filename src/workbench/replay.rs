//! Replaying a packet capture through a policy (`pixie replay`).
//!
//! [`client_requests`] finds every DHCP client request in a pcap/pcapng capture: DHCPv4
//! BOOTREQUESTs to port 67 (DISCOVER, REQUEST, INFORM) and anything to the PXE port 4011, and
//! DHCPv6 client messages to port 547 (Solicit, Request, Renew/Rebind/Confirm, Information-request;
//! RFC 5970 options; relay-forward unwrapped) are decided too, as `family == "v6"`.
//! [`replay`] asks the policy about each one, the way `pixie serve` in proxyDHCP mode would:
//! requests proxyDHCP leaves to the network's DHCP server are shown as skipped, with the
//! reason, unless [`Options::all`] asks the policy about them too.
//!
//! Time: `now()` in the scripts returns the moment the packet was captured (in the local
//! time zone), so time-based policies decide as they would have then; [`Options::at`] fixes
//! one time for every request instead.

use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, FixedOffset, Local, TimeZone};

use crate::dhcpv4::proxy::{self, Listener};
use crate::policy::rhai::RhaiPolicy;
use crate::policy::{BootRequest, Decision, HwAddr, Phase, PolicyError};
use crate::wire::dhcpv4::{self, opt, MessageType, OP_REPLY, OP_REQUEST};
use crate::wire::pcap;

/// DHCPv6 server port.
const DHCPV6_SERVER_PORT: u16 = 547;

/// One client request found in a capture.
#[derive(Debug, Clone)]
pub struct CapturedRequest {
    /// 1-based position among the capture's client requests (`simulate --index N`).
    pub index: usize,
    /// Seconds since the capture's first packet.
    pub offset: f64,
    /// When it was captured, in the local time zone.
    pub at: DateTime<FixedOffset>,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// What it is.
    pub kind: RequestKind,
}

/// What kind of client request a capture holds.
#[derive(Debug, Clone)]
pub enum RequestKind {
    /// A DHCPv4 or DHCPv6 request the policy can decide on.
    Dhcp {
        /// The request as the policy sees it (`server` set to the boot server's address).
        req: Box<BootRequest>,
        /// Why proxyDHCP would not ask the policy (`None`: it would).
        skip: Option<String>,
    },
    /// A DHCPv4 or DHCPv6 datagram to a server port that does not parse.
    Malformed {
        /// The parser's reason.
        why: String,
    },
}

impl CapturedRequest {
    /// The client's MAC as printed (`""` when unknown).
    pub fn mac(&self) -> String {
        match &self.kind {
            RequestKind::Dhcp { req, .. } => req.mac.to_string(),
            RequestKind::Malformed { .. } => String::new(),
        }
    }

    /// The architecture name (`x64-uefi`; `""` when the client sent none).
    pub fn arch(&self) -> String {
        match &self.kind {
            RequestKind::Dhcp { req, .. } => req.arch().map(|a| a.name()).unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// The phase name (`discover`, `proxy-4011`, `solicit`, …).
    pub fn phase(&self) -> String {
        match &self.kind {
            RequestKind::Dhcp { req, .. } => req.phase.as_str().to_string(),
            RequestKind::Malformed { .. } => "malformed".into(),
        }
    }
}

/// Why a capture cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The capture.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The capture is damaged or of an unsupported kind.
    #[error("{path}: {source}")]
    Capture {
        /// The capture.
        path: std::path::PathBuf,
        /// The cause.
        source: pcap::CaptureError,
    },
}

/// Reads a capture file and finds its client requests (see [`client_requests`]).
pub fn read_capture(
    path: &std::path::Path,
    server: Option<IpAddr>,
) -> Result<Vec<CapturedRequest>, ReplayError> {
    let bytes = std::fs::read(path)
        .map_err(|source| ReplayError::Read { path: path.to_path_buf(), source })?;
    client_requests(&bytes, server)
        .map_err(|source| ReplayError::Capture { path: path.to_path_buf(), source })
}

/// Every client request in a capture's bytes, in capture order.
///
/// `server` is pixie's address as the policy should see it (`req.server`); `None`: the
/// address the request was unicast to, else the boot server that answered in the capture
/// (the first BOOTREPLY carrying option 60 `PXEClient`, else any BOOTREPLY's sender).
pub fn client_requests(
    bytes: &[u8],
    server: Option<IpAddr>,
) -> Result<Vec<CapturedRequest>, pcap::CaptureError> {
    let datagrams = pcap::read_udp(bytes)?;
    let first = datagrams.first().map(|d| d.time).unwrap_or(0.0);
    let answering = server.or_else(|| answering_server(&datagrams));
    let mut out = Vec::new();
    for d in &datagrams {
        let port = d.dst.port();
        let kind = match port {
            67 | 4011 => match dhcpv4::parse(&d.payload) {
                Err(e) => RequestKind::Malformed { why: e.to_string() },
                Ok(pkt) if pkt.op != OP_REQUEST => continue,
                Ok(pkt) => {
                    let listener = if port == 4011 { Listener::Pxe } else { Listener::Dhcp };
                    let phase = match (listener, pkt.message_type()) {
                        (Listener::Pxe, _) => Phase::Proxy4011,
                        (_, Some(MessageType::Discover)) => Phase::Discover,
                        (_, Some(MessageType::Request)) => Phase::Request,
                        (_, Some(MessageType::Inform)) => Phase::Inform,
                        // Release, decline, plain BOOTP: not a request for boot information.
                        _ => continue,
                    };
                    let skip = proxy::classify(&pkt, listener, &[]).err().map(|s| s.to_string());
                    let mut req = BootRequest::from_dhcpv4(&pkt, phase, None, Some(d.src));
                    let unicast = match d.dst.ip() {
                        IpAddr::V4(v4) => !v4.is_broadcast() && !v4.is_unspecified(),
                        IpAddr::V6(_) => false,
                    };
                    req.server = if unicast { Some(d.dst.ip()) } else { answering };
                    RequestKind::Dhcp { req: Box::new(req), skip }
                }
            },
            DHCPV6_SERVER_PORT => match crate::wire::dhcpv6::parse(&d.payload) {
                Err(e) => RequestKind::Malformed { why: e.to_string() },
                Ok(msg) => match BootRequest::from_dhcpv6(&msg, Some(d.src)) {
                    // Advertise/Reply from a server, release, decline: nothing to decide.
                    None => continue,
                    Some(mut req) => {
                        if req.mac.0.is_empty() {
                            // DUID-UUID/-EN carry no MAC: the capture's Ethernet source does.
                            if let Some(m) = d.src_mac {
                                req.mac = HwAddr(m.to_vec());
                            }
                        }
                        let skip = (!req.pxe_client() && !req.http())
                            .then(|| "no vendor class PXEClient/HTTPClient: not a network-boot client".to_string());
                        RequestKind::Dhcp { req: Box::new(req), skip }
                    }
                },
            },
            _ => continue,
        };
        out.push(CapturedRequest {
            index: out.len() + 1,
            offset: d.time - first,
            at: local_time(d.time),
            src: d.src,
            dst: d.dst,
            kind,
        });
    }
    Ok(out)
}

fn local_time(t: f64) -> DateTime<FixedOffset> {
    // Captures carry microseconds (or nanoseconds); round away the float noise at 1 µs.
    let secs = t.floor() as i64;
    let nanos = ((t - t.floor()) * 1e6).round() as u32 * 1000;
    Local
        .timestamp_opt(secs, nanos.min(999_999_999))
        .single()
        .unwrap_or_else(Local::now)
        .fixed_offset()
}

fn answering_server(datagrams: &[pcap::Datagram]) -> Option<IpAddr> {
    let replies: Vec<(IpAddr, bool)> = datagrams
        .iter()
        .filter(|d| d.src.port() == 67 || d.src.port() == 4011)
        .filter_map(|d| {
            let pkt = dhcpv4::parse(&d.payload).ok()?;
            (pkt.op == OP_REPLY).then(|| {
                let pxe = pkt.option(opt::VENDOR_CLASS).is_some_and(|v| v.starts_with(b"PXEClient"));
                (d.src.ip(), pxe)
            })
        })
        .filter(|(ip, _)| !ip.is_unspecified())
        .collect();
    replies.iter().find(|(_, pxe)| *pxe).or(replies.first()).map(|(ip, _)| *ip)
}

/// How to replay.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Ask the policy about every DHCPv4 request, even those proxyDHCP leaves to the network's
    /// DHCP server (as full DHCP mode would).
    pub all: bool,
    /// Evaluate every request at this time instead of its capture time.
    pub at: Option<DateTime<FixedOffset>>,
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The policy decided.
    Decided(Decision),
    /// The policy failed (pixie serve would apply the fallback).
    Failed(PolicyError),
    /// proxyDHCP would not ask the policy; the reason.
    Skipped(String),
    /// The datagram does not parse; the reason.
    Malformed(String),
}

/// One replayed request.
#[derive(Debug, Clone)]
pub struct Row {
    /// The request.
    pub request: CapturedRequest,
    /// The outcome.
    pub outcome: Outcome,
    /// The time the policy's `now()` returned, if it called it.
    pub now: Option<DateTime<FixedOffset>>,
}

impl Row {
    /// The decision column: the file name, `ignore`, `skip: …`, or `error: …`.
    pub fn decision(&self) -> String {
        match &self.outcome {
            Outcome::Decided(d) => super::decision_summary(d),
            Outcome::Failed(e) => super::error_summary(e),
            Outcome::Skipped(why) => format!("skip: {why}"),
            Outcome::Malformed(why) => format!("malformed: {why}"),
        }
    }

    /// The row as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        let r = &self.request;
        let mut m = serde_json::Map::new();
        m.insert("index".into(), r.index.into());
        m.insert("time".into(), ((r.offset * 1000.0).round() / 1000.0).into());
        m.insert("captured_at".into(), r.at.to_rfc3339().into());
        m.insert("src".into(), r.src.to_string().into());
        m.insert("dst".into(), r.dst.to_string().into());
        m.insert("mac".into(), r.mac().into());
        m.insert("arch".into(), r.arch().into());
        m.insert("phase".into(), r.phase().into());
        match &self.outcome {
            Outcome::Decided(Decision::Ignore) => {
                m.insert("decision".into(), "ignore".into());
            }
            Outcome::Decided(Decision::Boot(b)) => {
                m.insert("decision".into(), "boot".into());
                m.extend(super::boot_json(b));
            }
            Outcome::Failed(e) => {
                m.insert("decision".into(), "error".into());
                m.insert("error".into(), e.to_string().into());
            }
            Outcome::Skipped(why) => {
                m.insert("decision".into(), "skip".into());
                m.insert("reason".into(), why.clone().into());
            }
            Outcome::Malformed(why) => {
                m.insert("decision".into(), "malformed".into());
                m.insert("reason".into(), why.clone().into());
            }
        }
        if let Some(t) = self.now {
            m.insert("now".into(), t.to_rfc3339().into());
        }
        m.into()
    }
}

/// Runs every request through `policy`. Sets the policy's clock per request (see the module
/// docs) and leaves it fixed at the last one's time.
pub fn replay(policy: &RhaiPolicy, requests: Vec<CapturedRequest>, opts: &Options) -> Vec<Row> {
    requests
        .into_iter()
        .map(|request| {
            let (outcome, now) = match &request.kind {
                RequestKind::Dhcp { skip: Some(why), .. } if !opts.all => {
                    (Outcome::Skipped(why.clone()), None)
                }
                RequestKind::Dhcp { req, .. } => {
                    policy.set_clock(Some(opts.at.unwrap_or(request.at)));
                    let (d, now) = policy.boot_traced(req);
                    (d.map_or_else(Outcome::Failed, Outcome::Decided), now)
                }
                RequestKind::Malformed { why } => (Outcome::Malformed(why.clone()), None),
            };
            Row { request, outcome, now }
        })
        .collect()
}

/// The rows as a table with a header line.
pub fn table(rows: &[Row]) -> String {
    let head = ["#", "TIME", "MAC", "ARCH", "PHASE", "DECISION"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let q = &r.request;
            let arch = q.arch();
            [
                q.index.to_string(),
                format!("+{:.3}", q.offset),
                q.mac(),
                if arch.is_empty() { "-".into() } else { arch },
                q.phase(),
                r.decision(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let mut s = String::new();
        for (i, (cell, w)) in c.iter().zip(width).enumerate() {
            if i == 5 {
                s.push_str(cell);
            } else if i <= 1 {
                s.push_str(&format!("{cell:>w$}  "));
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head);
    for c in &cells {
        out.push_str(&line([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_captures_are_errors_not_panics() {
        assert!(client_requests(b"nope", None).is_err());
        assert!(client_requests(&[], None).is_err());
    }
}
