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

use crate::policy::{BootDecision, Decision};

/// The standard ports of a real network.
pub const STANDARD_DHCP_PORT: u16 = 67;
/// PXE boot server port.
pub const STANDARD_PXE_PORT: u16 = 4011;
/// TFTP.
pub const STANDARD_TFTP_PORT: u16 = 69;

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
    /// Folder for state that survives restarts (leases, the per-host store): `pixie.db` in it.
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
    /// State folder (`pixie.db`: leases and the per-host store, SQLite in WAL mode).
    pub state_dir: PathBuf,
    /// DHCPv4 mode.
    pub dhcp_mode: DhcpMode,
    /// DHCP port.
    pub dhcp_port: u16,
    /// PXE port.
    pub pxe_port: u16,
    /// Announced server address override.
    pub server_ip: Option<Ipv4Addr>,
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
        if dhcp_mode == DhcpMode::Full {
            return Err(err(
                "dhcp.mode",
                "full DHCP mode is not available in this version; use \"proxy\" beside your DHCP server".into(),
            ));
        }
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
            tftp_enabled: f.tftp.enabled.unwrap_or(true),
            tftp_port: port(ov.tftp_port, f.tftp.port, STANDARD_TFTP_PORT),
            tftp_root: ov.tftp_root.clone().unwrap_or_else(|| resolve(f.tftp.root.unwrap_or("tftproot".into()))),
            tftp_max_transfers: f.tftp.max_transfers.unwrap_or(512).max(1),
            tftp_max_per_client: f.tftp.max_per_client.unwrap_or(8).max(1),
            tftp_max_blksize: max_blksize,
            tftp_max_window_bytes: f.tftp.max_window_bytes.unwrap_or(64 * 1024).max(512),
            scripts: ov.scripts.clone().unwrap_or_else(|| resolve(f.policy.scripts.unwrap_or("scripts".into()))),
            plugins: ov.plugins.clone().unwrap_or_else(|| resolve(f.policy.plugins.unwrap_or("plugins".into()))),
            fallback,
            deadline: Duration::from_millis(deadline_ms),
            max_operations: f.policy.max_operations.unwrap_or(1_000_000),
        })
    }

    /// The configuration when no file is given: like the shipped `pixie.toml`.
    pub fn defaults(ov: &Overrides) -> Config {
        let f: FileConfig = toml::from_str(SHIPPED_DEFAULTS).expect("shipped defaults parse");
        Config::from_file_config(f, Path::new("pixie.toml (built-in)"), Path::new(""), ov)
            .expect("shipped defaults are valid")
    }
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
    fn interface_on_the_command_line_means_standard_ports() {
        let ov = Overrides { interfaces: vec!["eth1".into()], ..Default::default() };
        let c = Config::defaults(&ov);
        assert_eq!((c.dhcp_port, c.pxe_port, c.tftp_port), (67, 4011, 69));
        assert_eq!(c.listen, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let ov = Overrides { interfaces: vec!["eth1".into()], tftp_port: Some(1069), ..Default::default() };
        assert_eq!(Config::defaults(&ov).tftp_port, 1069);
    }
}
