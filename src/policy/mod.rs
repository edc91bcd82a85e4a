//! The boot policy contract: [`BootRequest`] in, [`Decision`] out.
//!
//! Protocol servers build a `BootRequest` from a parsed packet and ask a [`Policy`]; they never
//! see how the policy is implemented. [`FnPolicy`] wraps a plain closure (tests, `--no-scripts`);
//! [`rhai`] is the scripted implementation and the only module that imports Rhai.
//!
//! Every call is synchronous and bounded: implementations must return within their own deadline
//! (the Rhai policy enforces one). Callers never run them on the async reactor: the DHCP
//! workers call them on their own threads (one that runs long hands its socket to a standby
//! worker, [`crate::handoff`]), TFTP inline while calls are quick and on `spawn_blocking` once
//! one was slow, so a slow script never stalls other clients for long.

pub mod rhai;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::wire::arch::{Arch, Firmware};

/// A MAC (or other link-layer) address, printed lower-case and colon-separated.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HwAddr(pub Vec<u8>);

impl fmt::Display for HwAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for HwAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for HwAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() > 16 {
            return Err(format!("'{s}' is not a MAC address (expected e.g. 52:54:00:12:34:56)"));
        }
        let mut out = Vec::with_capacity(parts.len());
        for p in parts {
            if p.len() != 2 {
                return Err(format!("'{s}' is not a MAC address (expected e.g. 52:54:00:12:34:56)"));
            }
            out.push(u8::from_str_radix(p, 16).map_err(|_| {
                format!("'{s}' is not a MAC address (expected e.g. 52:54:00:12:34:56)")
            })?);
        }
        Ok(HwAddr(out))
    }
}

/// A client machine UUID (option 97 / DUID-UUID), stored in canonical (RFC 4122 / `dmidecode`)
/// byte order: the wire form's first three fields are little-endian (SMBIOS), and
/// [`crate::wire`] swaps them when parsing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// All-zero UUIDs are what firmware sends when the machine has none; treat as absent.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Uuid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "'{s}' is not a UUID (expected 8-4-4-4-12 hex digits, e.g. 7e57c0de-0077-4000-8000-525400770010)"
            ));
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        Ok(Uuid(out))
    }
}

/// IP family of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// DHCPv4.
    V4,
    /// DHCPv6.
    V6,
}

impl Family {
    /// `v4` / `v6`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// Which step of which exchange the request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// DHCPDISCOVER on port 67.
    Discover,
    /// DHCPREQUEST on port 67.
    Request,
    /// DHCPINFORM on port 67.
    Inform,
    /// A request to the PXE boot server port 4011 (proxyDHCP REQUEST or PXEBS discovery).
    Proxy4011,
    /// DHCPv6 Solicit.
    Solicit,
    /// DHCPv6 Request.
    Request6,
    /// DHCPv6 Information-request.
    InfoRequest6,
    /// DHCPv6 Renew / Rebind / Confirm.
    Renew6,
}

impl Phase {
    /// The name scripts see: `discover`, `request`, `inform`, `proxy-4011`, `solicit`,
    /// `request6`, `info-request6`, `renew6`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Discover => "discover",
            Phase::Request => "request",
            Phase::Inform => "inform",
            Phase::Proxy4011 => "proxy-4011",
            Phase::Solicit => "solicit",
            Phase::Request6 => "request6",
            Phase::InfoRequest6 => "info-request6",
            Phase::Renew6 => "renew6",
        }
    }

    /// Inverse of [`Phase::as_str`].
    pub fn from_name(s: &str) -> Option<Phase> {
        [
            Phase::Discover,
            Phase::Request,
            Phase::Inform,
            Phase::Proxy4011,
            Phase::Solicit,
            Phase::Request6,
            Phase::InfoRequest6,
            Phase::Renew6,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// Everything a policy may look at for one boot-relevant DHCP request.
///
/// Built by the protocol servers from a validated packet (or synthesised by `pixie simulate`).
/// Raw options are kept so the policy can read anything this struct does not name.
#[derive(Debug, Clone)]
pub struct BootRequest {
    /// v4 or v6.
    pub family: Family,
    /// Which exchange step this is.
    pub phase: Phase,
    /// Client hardware address (chaddr for v4; from the DUID or relay for v6, may be empty).
    pub mac: HwAddr,
    /// Machine UUID (option 97 / DUID-UUID); `None` if absent or all zeros.
    pub uuid: Option<Uuid>,
    /// All architectures from option 93 (v4) or 61 (v6), in the client's order.
    pub arches: Vec<Arch>,
    /// Option 60 (v4) or the vendor-class data (v6), lossily decoded as UTF-8.
    pub vendor_class: Option<String>,
    /// Option 77 (RFC 3004 list; a bare string is one entry) or v6 option 15.
    pub user_class: Vec<String>,
    /// Option 12 host name.
    pub hostname: Option<String>,
    /// Whether the client is iPXE (user class `iPXE` or option 175 present).
    pub ipxe: bool,
    /// Option 94 client network interface identifier (type, major, minor).
    pub client_ndi: Option<(u8, u8, u8)>,
    /// Relay agent address (giaddr for v4, link-address for relayed v6); `None` if direct.
    pub relay: Option<IpAddr>,
    /// Option 82 sub-option 1 (circuit id).
    pub circuit_id: Option<Vec<u8>>,
    /// Option 82 sub-option 2 (remote id).
    pub remote_id: Option<Vec<u8>>,
    /// Name of the interface the request arrived on, when known.
    pub interface: Option<String>,
    /// Where the packet came from.
    pub source: Option<SocketAddr>,
    /// Client's own address (ciaddr), when it has one.
    pub client_ip: Option<IpAddr>,
    /// pixie's own address on the interface the request came in on (the default next server).
    pub server: Option<IpAddr>,
    /// Every option as raw bytes, keyed by option code (v4 codes 0–255, v6 codes 0–65535).
    pub options: BTreeMap<u16, Vec<u8>>,
}

impl BootRequest {
    /// An empty v4 request for `mac` in `phase`: the base for tests and `simulate`.
    pub fn new_v4(mac: HwAddr, phase: Phase) -> BootRequest {
        BootRequest {
            family: Family::V4,
            phase,
            mac,
            uuid: None,
            arches: Vec::new(),
            vendor_class: None,
            user_class: Vec::new(),
            hostname: None,
            ipxe: false,
            client_ndi: None,
            relay: None,
            circuit_id: None,
            remote_id: None,
            interface: None,
            source: None,
            client_ip: None,
            server: None,
            options: BTreeMap::new(),
        }
    }

    /// Builds the request from a validated DHCPv4 packet. `interface` and `source` come from the
    /// socket layer.
    pub fn from_dhcpv4(
        pkt: &crate::wire::dhcpv4::Packet,
        phase: Phase,
        interface: Option<String>,
        source: Option<SocketAddr>,
    ) -> BootRequest {
        use crate::wire::dhcpv4::opt;
        let user_class = pkt.user_classes();
        let relay_info = pkt.relay_info().unwrap_or_default();
        BootRequest {
            family: Family::V4,
            phase,
            mac: HwAddr(pkt.mac().to_vec()),
            uuid: pkt.uuid().map(Uuid),
            arches: pkt.arches(),
            vendor_class: pkt.vendor_class(),
            ipxe: user_class.iter().any(|c| c == "iPXE") || pkt.option(opt::IPXE_ENCAP).is_some(),
            user_class,
            hostname: pkt.hostname(),
            client_ndi: pkt.client_ndi(),
            relay: (!pkt.giaddr.is_unspecified()).then_some(IpAddr::V4(pkt.giaddr)),
            circuit_id: relay_info.circuit_id,
            remote_id: relay_info.remote_id,
            interface,
            source,
            client_ip: (!pkt.ciaddr.is_unspecified()).then_some(IpAddr::V4(pkt.ciaddr)),
            server: None,
            options: pkt.options().map(|(c, v)| (u16::from(c), v.to_vec())).collect(),
        }
    }

    /// Builds the request from a parsed DHCPv6 client message (RFC 5970 options). `None` for
    /// messages that ask for nothing (release, decline).
    pub fn from_dhcpv6(msg: &crate::wire::dhcpv6::Message6, source: Option<SocketAddr>) -> Option<BootRequest> {
        let phase = match msg.msg_type {
            1 => Phase::Solicit,
            3 => Phase::Request6,
            4..=6 => Phase::Renew6,
            11 => Phase::InfoRequest6,
            _ => return None,
        };
        let user_class = msg.user_classes();
        let relay = msg.relay.clone();
        Some(BootRequest {
            family: Family::V6,
            phase,
            mac: HwAddr(msg.mac().unwrap_or_default()),
            uuid: msg.uuid().map(Uuid),
            arches: msg.arches().into_iter().map(Arch::from).collect(),
            vendor_class: msg.vendor_class().map(|(_, s)| s),
            ipxe: user_class.iter().any(|c| c == "iPXE"),
            user_class,
            hostname: None,
            client_ndi: msg.nii(),
            relay: relay.as_ref().map(|r| IpAddr::V6(r.link)),
            circuit_id: relay.as_ref().and_then(|r| r.interface_id.clone()),
            remote_id: relay.and_then(|r| r.remote_id),
            interface: None,
            source,
            client_ip: None,
            server: None,
            options: msg.options.iter().map(|(c, v)| (*c, v.clone())).collect(),
        })
    }

    /// First architecture, the one that decides (`None` if the client sent none).
    pub fn arch(&self) -> Option<Arch> {
        self.arches.first().copied()
    }

    /// Firmware family implied by the first architecture (BIOS when absent: old PXE ROMs omit 93).
    pub fn firmware(&self) -> Firmware {
        self.arch().map(|a| a.firmware()).unwrap_or(Firmware::Bios)
    }

    /// Whether this is a UEFI HTTP boot client (HTTP arch code or vendor class `HTTPClient`).
    pub fn http(&self) -> bool {
        self.arch().map(|a| a.is_http()).unwrap_or(false)
            || self.vendor_class.as_deref().is_some_and(|v| v.starts_with("HTTPClient"))
    }

    /// Whether option 60 starts with `PXEClient`.
    pub fn pxe_client(&self) -> bool {
        self.vendor_class.as_deref().is_some_and(|v| v.starts_with("PXEClient"))
    }
}

/// The value of one option a policy sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    /// Sent as its bytes (no terminating NUL).
    Text(String),
    /// Sent verbatim.
    Bytes(Vec<u8>),
    /// An IPv4 address (4 bytes) or list of them.
    Ips(Vec<Ipv4Addr>),
    /// An integer sent in the option's natural width: 1, 2 or 4 bytes by value range unless the
    /// option code is known to need a fixed width (e.g. 51 lease time: 4).
    Int(u64),
}

impl OptionValue {
    /// Encodes the value for the wire, picking the width for integers from `code`.
    pub fn to_bytes(&self, code: u16) -> Vec<u8> {
        match self {
            OptionValue::Text(s) => s.as_bytes().to_vec(),
            OptionValue::Bytes(b) => b.clone(),
            OptionValue::Ips(ips) => ips.iter().flat_map(|ip| ip.octets()).collect(),
            OptionValue::Int(n) => {
                let width = match code {
                    // 32-bit options: time offset, lease/renew/rebind times, 4-byte timers
                    2 | 24 | 35 | 38 | 51 | 58 | 59 => 4,
                    // 16-bit options: max size, MTU, boot size, arch
                    13 | 22 | 26 | 57 | 93 => 2,
                    _ if *n <= 0xff => 1,
                    _ if *n <= 0xffff => 2,
                    _ => 4,
                };
                n.to_be_bytes()[8 - width..].to_vec()
            }
        }
    }
}

/// What to tell a client that will be answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootDecision {
    /// Boot file name (BOOTP `file` and option 67; v6: part of the option 59 URL).
    pub filename: Option<String>,
    /// Next server (BOOTP `siaddr` and option 66). Defaults to the address that received the request.
    pub next_server: Option<IpAddr>,
    /// BOOTP `sname` field.
    pub server_name: Option<String>,
    /// Extra options (code → value); they override the ones pixie would set.
    pub options: BTreeMap<u16, OptionValue>,
    /// Full DHCP mode: the address to give (a reservation).
    pub address: Option<IpAddr>,
    /// Full DHCP mode: lease time in seconds.
    pub lease_time: Option<u32>,
}

/// The policy's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stay silent for this client.
    Ignore,
    /// Answer with this.
    Boot(BootDecision),
}

/// A file request (TFTP RRQ or HTTP GET) the policy may inspect.
#[derive(Debug, Clone)]
pub struct FileRequest {
    /// `tftp` or `http`.
    pub protocol: &'static str,
    /// Path as the client sent it (after protocol decoding, before root resolution).
    pub path: String,
    /// Client address.
    pub client: SocketAddr,
    /// Our address that received the request.
    pub local: Option<SocketAddr>,
    /// The client's MAC, when a recent DHCP exchange from that address is known.
    pub mac: Option<HwAddr>,
    /// Options the client requested (TFTP: blksize, tsize, …; lower-cased names).
    pub options: BTreeMap<String, String>,
}

/// What to do with a file request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDecision {
    /// Serve the requested path from the root as it is.
    Serve,
    /// Serve this other path (relative to the root) instead.
    Remap(String),
    /// Serve these bytes (generated content).
    Content(Vec<u8>),
    /// Refuse (TFTP: access violation; HTTP: 403).
    Refuse,
}

/// Why a policy call did not produce a decision. Callers log it with the client's MAC and fall
/// back to the configured fallback decision.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    /// The script threw, hit an engine limit or ran past its deadline.
    #[error("{location}: {message}")]
    Runtime {
        /// `file:line:column` (or `file` when unknown).
        location: String,
        /// What went wrong.
        message: String,
    },
    /// The script returned something the contract does not allow.
    #[error("{location}: {message}")]
    BadReturn {
        /// `file:line:column` of the hook, or the hook name.
        location: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// A booted payload reporting back ("it took over the machine").
#[derive(Debug, Clone)]
pub struct BootedEvent {
    /// Client MAC, when known.
    pub mac: Option<HwAddr>,
    /// Client address.
    pub client: Option<IpAddr>,
    /// Free-form fields the payload sent.
    pub fields: BTreeMap<String, String>,
}

/// The decision interface every protocol server uses.
///
/// Implementations must be cheap to call concurrently (`&self`) and bounded in time.
pub trait Policy: Send + Sync + fmt::Debug {
    /// Decide how to answer one DHCP request.
    fn boot(&self, req: &BootRequest) -> Result<Decision, PolicyError>;

    /// [`Policy::boot`] for a caller that no longer needs the request, so an implementation
    /// that must own it (a script engine) need not copy it.
    fn boot_owned(&self, req: BootRequest) -> Result<Decision, PolicyError> {
        self.boot(&req)
    }

    /// Decide how to serve one file request. Default: serve it from the root.
    fn file(&self, _req: &FileRequest) -> Result<FileDecision, PolicyError> {
        Ok(FileDecision::Serve)
    }

    /// A payload reported a successful boot. Default: nothing.
    fn booted(&self, _ev: &BootedEvent) -> Result<(), PolicyError> {
        Ok(())
    }
}

/// A policy made of a plain closure: for tests and `--no-scripts`.
pub struct FnPolicy<F>(pub F);

impl<F> fmt::Debug for FnPolicy<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnPolicy")
    }
}

impl<F> Policy for FnPolicy<F>
where
    F: Fn(&BootRequest) -> Result<Decision, PolicyError> + Send + Sync,
{
    fn boot(&self, req: &BootRequest) -> Result<Decision, PolicyError> {
        (self.0)(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_and_mac_print_canonically() {
        let u: Uuid = "7E57C0DE-0077-4000-8000-525400770010".parse().unwrap();
        assert_eq!(u.to_string(), "7e57c0de-0077-4000-8000-525400770010");
        let m: HwAddr = "52:54:00:77:00:10".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:77:00:10");
        assert!("52:54:00:77:00".parse::<HwAddr>().is_ok());
        assert!("zz:54".parse::<HwAddr>().is_err());
        assert!("7e57".parse::<Uuid>().is_err());
    }

    #[test]
    fn int_options_take_their_width() {
        assert_eq!(OptionValue::Int(3600).to_bytes(51), vec![0, 0, 0x0e, 0x10]);
        assert_eq!(OptionValue::Int(1500).to_bytes(26), vec![0x05, 0xdc]);
        assert_eq!(OptionValue::Int(5).to_bytes(200), vec![5]);
        assert_eq!(OptionValue::Int(70000).to_bytes(200), vec![0, 1, 0x11, 0x70]);
    }
}
