//! Configuration: the TOML schema as written on disk, and the validated [`Config`] the server
//! runs with.
//!
//! The on-disk structs ([`FileConfig`] and its sections) reject unknown keys, so a typo is an
//! error that names the key instead of a silently ignored setting. [`Config::from_file_config`]
//! checks values and resolves relative paths against the config file's folder.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use std::collections::BTreeMap;

use crate::policy::{BootDecision, Decision, OptionValue};

/// The standard ports of a real network.
pub const STANDARD_DHCP_PORT: u16 = 67;
/// PXE boot server port.
pub const STANDARD_PXE_PORT: u16 = 4011;
/// TFTP.
pub const STANDARD_TFTP_PORT: u16 = 69;
/// `[dhcp] batch_ms` unless set: under load, requests are taken every 3 ms (in full mode the
/// REQUESTs that take up a batch's stored offers are answered as they arrive, in between).
pub const DEFAULT_DHCP_BATCH_MS: f64 = 3.0;

/// Worker threads per DHCP listener unless `[dhcp] workers` says otherwise: twice the CPUs,
/// at least 4 and at most 64. One drives the listener's socket at a time; the others stand by
/// (parked) to take it over while it blocks in a slow policy call or a slow commit.
pub fn default_dhcp_workers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cpus).clamp(4, 64)
}

/// `pixie.toml` as written on disk.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]`
    #[serde(default)]
    pub server: ServerSection,
    /// `[dhcp]`
    #[serde(default)]
    pub dhcp: DhcpSection,
    /// `[tftp]`
    #[serde(default)]
    pub tftp: TftpSection,
    /// `[policy]`
    #[serde(default)]
    pub policy: PolicySection,
}

/// `[server]`: where to listen.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to bind (default `0.0.0.0` when `interfaces` is set, else `127.0.0.1`).
    pub listen: Option<String>,
    /// Interfaces to serve (`SO_BINDTODEVICE`); empty = not tied to an interface.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Folder for state that survives restarts: `pixie.db` (leases, the per-host store) and
    /// `leases.journal` in it.
    pub state_dir: Option<PathBuf>,
}

/// `[dhcp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpSection {
    /// `proxy` (default), `full` or `off`.
    pub mode: Option<String>,
    /// DHCP server port (67 on a real network).
    pub port: Option<u16>,
    /// PXE boot server port (4011).
    pub pxe_port: Option<u16>,
    /// Address to announce as server identifier / next server when the receiving interface's
    /// own address cannot be used.
    pub server_ip: Option<String>,
    /// Full mode: default lease time, seconds (default 3600).
    pub lease_time: Option<u32>,
    /// Full mode: how long a declined address stays quarantined, seconds (default 600).
    pub decline_time: Option<u32>,
    /// Full mode: how long an offered address is held for the client, seconds (default 30).
    pub offer_time: Option<u32>,
    /// Worker threads per DHCP listener: one drives the socket, the others stand by for slow
    /// calls (default [`default_dhcp_workers`], 1..=256).
    pub workers: Option<usize>,
    /// Under load, how long requests gather before a worker takes them all, milliseconds
    /// (default [`DEFAULT_DHCP_BATCH_MS`], 0..=50; 0: as soon as they arrive).
    pub batch_ms: Option<f64>,
    /// Full mode: `[[dhcp.subnet]]` tables.
    #[serde(default)]
    pub subnet: Vec<SubnetSection>,
}

/// `[[dhcp.subnet]]`: one network pixie hands out addresses on (full mode).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetSection {
    /// `"10.0.0.0/24"`.
    pub network: Option<String>,
    /// Address ranges `"10.0.0.100-10.0.0.199"`.
    #[serde(default)]
    pub pools: Vec<String>,
    /// Option 3.
    #[serde(default)]
    pub routers: Vec<String>,
    /// Option 6.
    #[serde(default)]
    pub dns_servers: Vec<String>,
    /// Option 15.
    pub domain_name: Option<String>,
    /// Option 28 (default: the network's broadcast address).
    pub broadcast: Option<String>,
    /// Option 51 for this subnet (default `[dhcp] lease_time`).
    pub lease_time: Option<u32>,
    /// Option 58 (default half the lease).
    pub renew_time: Option<u32>,
    /// Option 59 (default 7/8 of the lease).
    pub rebind_time: Option<u32>,
    /// Any other option: code → string, integer or list of IPv4 addresses.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, OptionSetting>,
}

/// The value of an option in `[[dhcp.subnet]] options`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OptionSetting {
    /// Sent in the option's natural width.
    Int(u64),
    /// Sent as text.
    Text(String),
    /// IPv4 addresses.
    Ips(Vec<String>),
}

/// One validated subnet (full mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length (8..=30).
    pub prefix: u8,
    /// Inclusive address ranges to allocate from, inside the network, not overlapping.
    pub pools: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Option 3.
    pub routers: Vec<Ipv4Addr>,
    /// Option 6.
    pub dns_servers: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain_name: Option<String>,
    /// Option 28.
    pub broadcast: Ipv4Addr,
    /// Option 51, seconds.
    pub lease_time: u32,
    /// Option 58, seconds.
    pub renew_time: u32,
    /// Option 59, seconds.
    pub rebind_time: u32,
    /// Other options.
    pub options: BTreeMap<u16, OptionValue>,
}

impl Subnet {
    /// The netmask (option 1).
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix))
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & prefix_mask(self.prefix) == u32::from(self.network)
    }

    /// Whether `ip` is inside one of the pools.
    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pools.iter().any(|(a, b)| (*a..=*b).contains(&ip))
    }

    /// `10.0.0.0/24`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }
}

fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
}

/// Full-mode settings, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FullDhcp {
    /// Subnets, in the order of the file.
    pub subnets: Vec<Subnet>,
    /// Quarantine of a declined address, seconds.
    pub decline_time: u32,
    /// How long an offer holds its address, seconds.
    pub offer_time: u32,
}

/// `[tftp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpSection {
    /// Serve TFTP at all (default true).
    pub enabled: Option<bool>,
    /// Port (69 on a real network).
    pub port: Option<u16>,
    /// Folder served (read-only).
    pub root: Option<PathBuf>,
    /// Concurrent transfers, in all.
    pub max_transfers: Option<usize>,
    /// Concurrent transfers per client address.
    pub max_per_client: Option<usize>,
    /// Largest block size granted.
    pub max_blksize: Option<u16>,
    /// Largest window × block size in flight, bytes.
    pub max_window_bytes: Option<usize>,
    /// Microseconds a lock-step transfer polls for the next ACK before sleeping (0: never).
    pub busy_poll_us: Option<u64>,
}

/// `[policy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Folder of `*.rhai` scripts forming the policy.
    pub scripts: Option<PathBuf>,
    /// Folder of modules scripts may `import`.
    pub plugins: Option<PathBuf>,
    /// What a client gets when the policy fails for it: `"ignore"` (default) or a boot file name.
    pub fallback: Option<String>,
    /// Wall-clock limit for one hook call, milliseconds.
    pub deadline_ms: Option<u64>,
    /// Rhai operation limit for one hook call.
    pub max_operations: Option<u64>,
}

/// DHCPv4 mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpMode {
    /// Answer PXE clients only, beside the network's DHCP server; hand out no addresses.
    Proxy,
    /// Be the DHCP server.
    Full,
    /// No DHCP.
    Off,
}

impl std::str::FromStr for DhcpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "proxy" => Ok(DhcpMode::Proxy),
            "full" => Ok(DhcpMode::Full),
            "off" => Ok(DhcpMode::Off),
            _ => Err(format!("'{s}' is not a DHCP mode (use proxy, full or off)")),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bind address for every listener.
    pub listen: IpAddr,
    /// Interfaces to tie listeners to (one socket set per interface); empty = one unbound set.
    pub interfaces: Vec<String>,
    /// State folder (`pixie.db`: leases and the per-host store, SQLite in WAL mode; `leases.journal`).
    pub state_dir: PathBuf,
    /// DHCPv4 mode.
    pub dhcp_mode: DhcpMode,
    /// DHCP port.
    pub dhcp_port: u16,
    /// PXE port.
    pub pxe_port: u16,
    /// Announced server address override.
    pub server_ip: Option<Ipv4Addr>,
    /// Worker threads per DHCP listener.
    pub dhcp_workers: usize,
    /// `[dhcp] batch_ms`.
    pub dhcp_batch: std::time::Duration,
    /// TFTP on or off.
    pub tftp_enabled: bool,
    /// TFTP port.
    pub tftp_port: u16,
    /// TFTP root.
    pub tftp_root: PathBuf,
    /// TFTP concurrent transfers.
    pub tftp_max_transfers: usize,
    /// TFTP concurrent transfers per client.
    pub tftp_max_per_client: usize,
    /// TFTP largest block size.
    pub tftp_max_blksize: u16,
    /// TFTP window bytes cap.
    pub tftp_max_window_bytes: usize,
    /// `[tftp] busy_poll_us`.
    pub tftp_busy_poll: std::time::Duration,
    /// Scripts folder.
    pub scripts: PathBuf,
    /// Plugins folder.
    pub plugins: PathBuf,
    /// Decision applied when the policy fails for a client.
    pub fallback: Decision,
    /// Hook deadline.
    pub deadline: Duration,
    /// Hook operation limit.
    pub max_operations: u64,
    /// Full DHCP mode: subnets, pools, lease times (empty subnets in the other modes).
    pub full: FullDhcp,
}

/// A configuration error: names the file and key, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax or schema error (unknown key, wrong type).
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// toml's message, which names the key and line.
        message: String,
    },
    /// A value is not acceptable.
    #[error("{path}: {key}: {message}")]
    Value {
        /// File (or `command line`).
        path: PathBuf,
        /// Dotted key.
        key: String,
        /// What is wrong and what to use instead.
        message: String,
    },
}

/// Settings given on the command line; they override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--interface` (repeatable).
    pub interfaces: Vec<String>,
    /// `--listen`.
    pub listen: Option<IpAddr>,
    /// `--scripts`.
    pub scripts: Option<PathBuf>,
    /// `--plugins`.
    pub plugins: Option<PathBuf>,
    /// `--tftp-root`.
    pub tftp_root: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--dhcp-mode`.
    pub dhcp_mode: Option<DhcpMode>,
    /// `--dhcp-port`.
    pub dhcp_port: Option<u16>,
    /// `--pool START-END` (full mode without a config file; the subnet comes from the interface).
    pub pool: Option<String>,
    /// `--pxe-port`.
    pub pxe_port: Option<u16>,
    /// `--tftp-port`.
    pub tftp_port: Option<u16>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path, ov: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let file: FileConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::from_file_config(file, path, &base, ov)
    }

    /// Validates an already parsed file. Relative paths are taken from `base`.
    pub fn from_file_config(
        f: FileConfig,
        path: &Path,
        base: &Path,
        ov: &Overrides,
    ) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| ConfigError::Value {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let resolve = |p: PathBuf| if p.is_absolute() || base.as_os_str().is_empty() { p } else { base.join(p) };

        let interfaces = if ov.interfaces.is_empty() { f.server.interfaces } else { ov.interfaces.clone() };
        for i in &interfaces {
            if i.is_empty() || i.len() >= 16 || i.contains('/') {
                return Err(err("server.interfaces", format!("'{i}' is not an interface name")));
            }
        }
        // `--interface` on the command line means "serve a real network": standard ports unless
        // the ports are given on the command line too.
        let real_network = !ov.interfaces.is_empty();
        let listen = match (ov.listen, &f.server.listen) {
            (Some(a), _) => a,
            (None, Some(s)) if !real_network => s
                .parse()
                .map_err(|_| err("server.listen", format!("'{s}' is not an IP address (e.g. \"0.0.0.0\")")))?,
            _ if !interfaces.is_empty() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let dhcp_mode = match (ov.dhcp_mode, &f.dhcp.mode) {
            (Some(m), _) => m,
            (None, Some(s)) => s.parse().map_err(|m| err("dhcp.mode", m))?,
            (None, None) => DhcpMode::Proxy,
        };
        let full = full_dhcp(&f.dhcp, dhcp_mode, &interfaces, listen, ov, &err)?;
        let port = |o: Option<u16>, file: Option<u16>, std: u16| {
            o.unwrap_or(if real_network { std } else { file.unwrap_or(std) })
        };
        let server_ip = match &f.dhcp.server_ip {
            None => None,
            Some(s) => Some(s.parse().map_err(|_| err("dhcp.server_ip", format!("'{s}' is not an IPv4 address")))?),
        };
        let max_blksize = f.tftp.max_blksize.unwrap_or(65464);
        if !(512..=65464).contains(&max_blksize) {
            return Err(err("tftp.max_blksize", format!("{max_blksize} is outside 512..=65464")));
        }
        let fallback = match f.policy.fallback.as_deref() {
            None | Some("ignore") => Decision::Ignore,
            Some("") => return Err(err("policy.fallback", "empty; use \"ignore\" or a boot file name".into())),
            Some(file) => Decision::Boot(BootDecision { filename: Some(file.to_string()), ..Default::default() }),
        };
        let dhcp_workers = f.dhcp.workers.unwrap_or_else(default_dhcp_workers);
        if !(1..=256).contains(&dhcp_workers) {
            return Err(err("dhcp.workers", format!("{dhcp_workers} is outside 1..=256")));
        }
        let batch_ms = f.dhcp.batch_ms.unwrap_or(DEFAULT_DHCP_BATCH_MS);
        if !(0.0..=50.0).contains(&batch_ms) {
            return Err(err("dhcp.batch_ms", format!("{batch_ms} is outside 0..=50 (milliseconds; 0 takes each request as it arrives)")));
        }
        let dhcp_batch = std::time::Duration::from_secs_f64(batch_ms / 1000.0);
        let busy_poll_us = f.tftp.busy_poll_us.unwrap_or(crate::tftp::DEFAULT_BUSY_POLL.as_micros() as u64);
        if busy_poll_us > 1000 {
            return Err(err("tftp.busy_poll_us", format!("{busy_poll_us} is over 1000 (a millisecond); 0 turns polling off")));
        }
        let tftp_busy_poll = std::time::Duration::from_micros(busy_poll_us);
        let deadline_ms = f.policy.deadline_ms.unwrap_or(100);
        if !(1..=10_000).contains(&deadline_ms) {
            return Err(err("policy.deadline_ms", format!("{deadline_ms} is outside 1..=10000")));
        }
        Ok(Config {
            listen,
            interfaces,
            state_dir: ov.state_dir.clone().unwrap_or_else(|| resolve(f.server.state_dir.unwrap_or("state".into()))),
            dhcp_mode,
            dhcp_port: port(ov.dhcp_port, f.dhcp.port, STANDARD_DHCP_PORT),
            pxe_port: port(ov.pxe_port, f.dhcp.pxe_port, STANDARD_PXE_PORT),
            server_ip,
            dhcp_workers,
            dhcp_batch,
            tftp_enabled: f.tftp.enabled.unwrap_or(true),
            tftp_port: port(ov.tftp_port, f.tftp.port, STANDARD_TFTP_PORT),
            tftp_root: ov.tftp_root.clone().unwrap_or_else(|| resolve(f.tftp.root.unwrap_or("tftproot".into()))),
            tftp_max_transfers: f.tftp.max_transfers.unwrap_or(512).max(1),
            tftp_max_per_client: f.tftp.max_per_client.unwrap_or(8).max(1),
            tftp_max_blksize: max_blksize,
            tftp_max_window_bytes: f.tftp.max_window_bytes.unwrap_or(64 * 1024).max(512),
            tftp_busy_poll,
            scripts: ov.scripts.clone().unwrap_or_else(|| resolve(f.policy.scripts.unwrap_or("scripts".into()))),
            plugins: ov.plugins.clone().unwrap_or_else(|| resolve(f.policy.plugins.unwrap_or("plugins".into()))),
            fallback,
            deadline: Duration::from_millis(deadline_ms),
            max_operations: f.policy.max_operations.unwrap_or(1_000_000),
            full,
        })
    }

    /// The configuration when no file is given: like the shipped `pixie.toml`.
    ///
    /// Panics if the overrides are invalid; see [`Config::try_defaults`].
    pub fn defaults(ov: &Overrides) -> Config {
        Config::try_defaults(ov).expect("shipped defaults are valid")
    }

    /// The built-in defaults with command-line overrides, which may be invalid (`--pool`).
    pub fn try_defaults(ov: &Overrides) -> Result<Config, ConfigError> {
        let f: FileConfig = toml::from_str(SHIPPED_DEFAULTS).expect("shipped defaults parse");
        Config::from_file_config(f, Path::new("command line"), Path::new(""), ov)
    }
}

fn parse_v4(s: &str) -> Option<Ipv4Addr> {
    s.trim().parse().ok()
}

/// Parses `START-END` (spaces allowed around the dash).
pub fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let bad = || format!("'{s}' is not an address range (expected e.g. \"10.0.0.100-10.0.0.199\")");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b) = (parse_v4(a).ok_or_else(bad)?, parse_v4(b).ok_or_else(bad)?);
    if a > b {
        return Err(format!("'{s}': the range starts after it ends"));
    }
    Ok((a, b))
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("'{s}' is not a network (expected e.g. \"10.0.0.0/24\")");
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let a = parse_v4(a).ok_or_else(bad)?;
    let p: u8 = p.trim().parse().map_err(|_| bad())?;
    if !(1..=30).contains(&p) {
        return Err(format!("'{s}': prefix length {p} is outside 1..=30"));
    }
    if u32::from(a) & !prefix_mask(p) != 0 {
        let net = Ipv4Addr::from(u32::from(a) & prefix_mask(p));
        return Err(format!("'{s}' has host bits set; the network is {net}/{p}"));
    }
    Ok((a, p))
}

/// Builds and validates the full-mode settings (empty outside full mode).
fn full_dhcp(
    d: &DhcpSection,
    mode: DhcpMode,
    interfaces: &[String],
    listen: IpAddr,
    ov: &Overrides,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<FullDhcp, ConfigError> {
    let decline_time = d.decline_time.unwrap_or(600);
    let offer_time = d.offer_time.unwrap_or(30);
    if mode != DhcpMode::Full {
        if ov.pool.is_some() {
            return Err(err("--pool", "a pool needs --dhcp-mode full (or mode = \"full\" in [dhcp])".into()));
        }
        return Ok(FullDhcp { subnets: Vec::new(), decline_time, offer_time });
    }
    if !(1..=3600).contains(&offer_time) {
        return Err(err("dhcp.offer_time", format!("{offer_time} is outside 1..=3600 seconds")));
    }
    let default_lease = d.lease_time.unwrap_or(3600);
    if default_lease < 10 {
        return Err(err("dhcp.lease_time", format!("{default_lease} s is too short (at least 10)")));
    }
    let mut subnets = Vec::new();
    for (i, s) in d.subnet.iter().enumerate() {
        let key = |k: &str| format!("dhcp.subnet[{i}].{k}");
        let net = s.network.as_deref().ok_or_else(|| err(&key("network"), "missing (e.g. \"10.0.0.0/24\")".into()))?;
        let (network, prefix) = parse_cidr(net).map_err(|m| err(&key("network"), m))?;
        let ips = |k: &str, v: &[String]| -> Result<Vec<Ipv4Addr>, ConfigError> {
            v.iter()
                .map(|x| parse_v4(x).ok_or_else(|| err(&key(k), format!("'{x}' is not an IPv4 address"))))
                .collect()
        };
        let mut pools = Vec::new();
        for (j, p) in s.pools.iter().enumerate() {
            pools.push(parse_range(p).map_err(|m| err(&format!("dhcp.subnet[{i}].pools[{j}]"), m))?);
        }
        let lease_time = s.lease_time.unwrap_or(default_lease);
        if lease_time < 10 {
            return Err(err(&key("lease_time"), format!("{lease_time} s is too short (at least 10)")));
        }
        let renew_time = s.renew_time.unwrap_or(lease_time / 2);
        let rebind_time = s.rebind_time.unwrap_or((lease_time as u64 * 7 / 8) as u32);
        if renew_time >= rebind_time || rebind_time >= lease_time {
            return Err(err(
                &key("rebind_time"),
                format!("need renew_time < rebind_time < lease_time, got {renew_time} / {rebind_time} / {lease_time}"),
            ));
        }
        let mut options = BTreeMap::new();
        for (code, v) in &s.options {
            let k = format!("dhcp.subnet[{i}].options.{code}");
            let c: u16 = code.parse().map_err(|_| err(&k, "the key must be an option number (1-254)".into()))?;
            if !(1..=254).contains(&c) || [53, 54, 82].contains(&c) {
                return Err(err(&k, format!("option {c} cannot be configured (1-254 except 53, 54, 82)")));
            }
            let value = match v {
                OptionSetting::Int(n) => OptionValue::Int(*n),
                OptionSetting::Text(t) => OptionValue::Text(t.clone()),
                OptionSetting::Ips(l) => OptionValue::Ips(ips(&format!("options.{code}"), l)?),
            };
            options.insert(c, value);
        }
        let bcast = Ipv4Addr::from(u32::from(network) | !prefix_mask(prefix));
        let broadcast = match &s.broadcast {
            None => bcast,
            Some(b) => parse_v4(b).ok_or_else(|| err(&key("broadcast"), format!("'{b}' is not an IPv4 address")))?,
        };
        subnets.push(Subnet {
            network,
            prefix,
            pools,
            routers: ips("routers", &s.routers)?,
            dns_servers: ips("dns_servers", &s.dns_servers)?,
            domain_name: s.domain_name.clone(),
            broadcast,
            lease_time,
            renew_time,
            rebind_time,
            options,
        });
    }
    if let Some(p) = &ov.pool {
        let range = parse_range(p).map_err(|m| err("--pool", m))?;
        match subnets.iter_mut().find(|s| s.contains(range.0)) {
            Some(s) => s.pools.push(range),
            None => subnets.push(subnet_from_interfaces(range, interfaces, listen, default_lease).map_err(|m| err("--pool", m))?),
        }
    }
    if subnets.is_empty() {
        return Err(err(
            "dhcp.subnet",
            "full mode needs at least one [[dhcp.subnet]] with pools, or --pool START-END with --interface IF".into(),
        ));
    }
    // Pools inside their network, not its network or broadcast address, and nowhere overlapping.
    let mut all: Vec<(Ipv4Addr, Ipv4Addr, String)> = Vec::new();
    for (i, s) in subnets.iter().enumerate() {
        for (j, o) in subnets.iter().enumerate().take(i) {
            if o.contains(s.network) || s.contains(o.network) {
                return Err(err(
                    &format!("dhcp.subnet[{i}].network"),
                    format!("{} overlaps dhcp.subnet[{j}] ({})", s.cidr(), o.cidr()),
                ));
            }
        }
        let bcast = Ipv4Addr::from(u32::from(s.network) | !prefix_mask(s.prefix));
        for (j, (a, b)) in s.pools.iter().enumerate() {
            let key = format!("dhcp.subnet[{i}].pools[{j}]");
            if !s.contains(*a) || !s.contains(*b) {
                return Err(err(&key, format!("{a}-{b} is not inside {}", s.cidr())));
            }
            if *a == s.network || *b == bcast {
                return Err(err(&key, format!("{a}-{b} includes the network or broadcast address of {}", s.cidr())));
            }
            if let Some((_, _, other)) = all.iter().find(|(x, y, _)| *a <= *y && *x <= *b) {
                return Err(err(&key, format!("{a}-{b} overlaps {other}")));
            }
            all.push((*a, *b, key));
        }
        if s.pools.is_empty() {
            tracing::debug!("subnet {} has no pool: reservations only", s.cidr());
        }
    }
    Ok(FullDhcp { subnets, decline_time, offer_time })
}

/// The quick start's subnet: the network of the interface address that contains the pool.
fn subnet_from_interfaces(
    range: (Ipv4Addr, Ipv4Addr),
    interfaces: &[String],
    listen: IpAddr,
    lease_time: u32,
) -> Result<Subnet, String> {
    let addrs = crate::net::ipv4_addrs().map_err(|e| format!("cannot list interface addresses: {e}"))?;
    let found = addrs.iter().find(|(name, ip, prefix)| {
        let on_if = if interfaces.is_empty() {
            listen.is_unspecified() || listen == IpAddr::V4(*ip)
        } else {
            interfaces.contains(name)
        };
        on_if && *prefix > 0 && *prefix <= 30 && u32::from(range.0) & prefix_mask(*prefix) == u32::from(*ip) & prefix_mask(*prefix)
    });
    let Some((name, ip, prefix)) = found else {
        let wher = if interfaces.is_empty() { format!("on the interface of {listen}") } else { format!("on {}", interfaces.join(", ")) };
        return Err(format!(
            "no IPv4 address {wher} is in the network of {}; give the interface an address in that network or use [[dhcp.subnet]]",
            range.0
        ));
    };
    let network = Ipv4Addr::from(u32::from(*ip) & prefix_mask(*prefix));
    tracing::info!("--pool: subnet {network}/{prefix} from {ip} on {name}");
    Ok(Subnet {
        network,
        prefix: *prefix,
        pools: vec![range],
        routers: Vec::new(),
        dns_servers: Vec::new(),
        domain_name: None,
        broadcast: Ipv4Addr::from(u32::from(network) | !prefix_mask(*prefix)),
        lease_time,
        renew_time: lease_time / 2,
        rebind_time: (lease_time as u64 * 7 / 8) as u32,
        options: BTreeMap::new(),
    })
}

/// The defaults used when no configuration file exists; `pixie.toml` at the repository root says
/// the same with comments.
pub const SHIPPED_DEFAULTS: &str = r#"
[server]
listen = "127.0.0.1"
state_dir = "state"
[dhcp]
mode = "proxy"
port = 6767
pxe_port = 4011
[tftp]
port = 6969
root = "tftproot"
[policy]
scripts = "scripts"
plugins = "plugins"
fallback = "ignore"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        let f: FileConfig = toml::from_str(s)
            .map_err(|e| ConfigError::Parse { path: "t.toml".into(), message: e.to_string() })?;
        Config::from_file_config(f, Path::new("t.toml"), Path::new("/etc/pixie"), &Overrides::default())
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("[dhcp]\nmdoe = \"proxy\"\n").unwrap_err().to_string();
        assert!(e.contains("mdoe"), "{e}");
        let e = parse("[tftpp]\n").unwrap_err().to_string();
        assert!(e.contains("tftpp"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse("[dhcp]\nmode = \"fast\"\n").unwrap_err().to_string();
        assert!(e.contains("dhcp.mode") && e.contains("proxy"), "{e}");
        let e = parse("[server]\nlisten = \"nowhere\"\n").unwrap_err().to_string();
        assert!(e.contains("server.listen"), "{e}");
        let e = parse("[tftp]\nmax_blksize = 7\n").unwrap_err().to_string();
        assert!(e.contains("tftp.max_blksize"), "{e}");
        let e = parse("[tftp]\nbusy_poll_us = 5000\n").unwrap_err().to_string();
        assert!(e.contains("tftp.busy_poll_us") && e.contains("0 turns"), "{e}");
        assert_eq!(parse("[tftp]\nbusy_poll_us = 0\n").unwrap().tftp_busy_poll, std::time::Duration::ZERO);
        assert_eq!(parse("").unwrap().tftp_busy_poll, crate::tftp::DEFAULT_BUSY_POLL);
    }

    #[test]
    fn relative_paths_follow_the_file_and_defaults_are_safe() {
        let c = parse("").unwrap();
        assert_eq!(c.scripts, PathBuf::from("/etc/pixie/scripts"));
        assert_eq!(c.listen, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(c.fallback, Decision::Ignore);
        let d = Config::defaults(&Overrides::default());
        assert_eq!(d.dhcp_port, 6767);
        assert_eq!(d.listen, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn full_mode_subnets_are_validated_with_named_keys() {
        let ok = parse(
            "[dhcp]\nmode = \"full\"\nlease_time = 600\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\n\
             pools = [\"10.0.0.100-10.0.0.199\"]\nrouters = [\"10.0.0.1\"]\noptions = { 42 = [\"10.0.0.1\"], 252 = \"x\" }\n",
        )
        .unwrap();
        let s = &ok.full.subnets[0];
        assert_eq!((s.lease_time, s.renew_time, s.rebind_time), (600, 300, 525));
        assert_eq!(s.broadcast, Ipv4Addr::new(10, 0, 0, 255));
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(s.in_pool(Ipv4Addr::new(10, 0, 0, 150)) && !s.in_pool(Ipv4Addr::new(10, 0, 0, 50)));
        let cases = [
            ("[dhcp]\nmode = \"full\"\n", "dhcp.subnet"),
            ("[dhcp]\nmode = \"full\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.1/24\"\n", "dhcp.subnet[0].network"),
            ("[dhcp]\nmode = \"full\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\npools = [\"10.0.1.1-10.0.1.5\"]\n", "dhcp.subnet[0].pools[0]"),
            ("[dhcp]\nmode = \"full\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\npools = [\"10.0.0.9-10.0.0.5\"]\n", "dhcp.subnet[0].pools[0]"),
            ("[dhcp]\nmode = \"full\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\npools = [\"10.0.0.1-10.0.0.9\", \"10.0.0.5-10.0.0.20\"]\n", "dhcp.subnet[0].pools[1]"),
            ("[dhcp]\nmode = \"full\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrenew_time = 5000\n", "dhcp.subnet[0].rebind_time"),
            ("[dhcp]\nmode = \"full\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\noptions = { 53 = 1 }\n", "dhcp.subnet[0].options.53"),
            ("[dhcp]\nmode = \"full\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrouters = [\"x\"]\n", "dhcp.subnet[0].routers"),
            ("[dhcp]\nmode = \"full\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/16\"\n", "dhcp.subnet[1].network"),
            ("[dhcp]\nmode = \"full\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\npool = []\n", "pool"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn quick_start_pool_takes_the_subnet_from_the_interface() {
        let ov = Overrides {
            dhcp_mode: Some(DhcpMode::Full),
            pool: Some("127.0.5.1-127.0.5.9".into()),
            ..Default::default()
        };
        let c = Config::defaults(&ov);
        assert_eq!(c.full.subnets[0].cidr(), "127.0.0.0/8");
        let ov = Overrides { dhcp_mode: Some(DhcpMode::Full), pool: Some("192.0.2.1-192.0.2.9".into()), ..Default::default() };
        let f: FileConfig = toml::from_str(SHIPPED_DEFAULTS).unwrap();
        let e = Config::from_file_config(f, Path::new("x"), Path::new(""), &ov).unwrap_err().to_string();
        assert!(e.contains("--pool"), "{e}");
    }

    #[test]
    fn interface_on_the_command_line_means_standard_ports() {
        let ov = Overrides { interfaces: vec!["eth1".into()], ..Default::default() };
        let c = Config::defaults(&ov);
        assert_eq!((c.dhcp_port, c.pxe_port, c.tftp_port), (67, 4011, 69));
        assert_eq!(c.listen, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let ov = Overrides { interfaces: vec!["eth1".into()], tftp_port: Some(1069), ..Default::default() };
        assert_eq!(Config::defaults(&ov).tftp_port, 1069);
    }
}
