//! Wiring: binds every listener the configuration asks for, runs the protocol tasks, and drains
//! them on shutdown.
//!
//! Binding is separate from running ([`Server::bind`] then [`Server::run`]) so that callers learn
//! the bound addresses (tests bind port 0) and so that a port already in use is reported before
//! anything starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::clients::ClientTable;
use crate::config::{Config, DhcpMode};
use crate::dhcpv4::{self, Listener, Stats};
use crate::net::{bind_udp, BindOptions, PktSocket};
use crate::policy::Policy;
use crate::tftp::{self, TftpConfig};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}{dev}: {source}{hint}")]
    Bind {
        /// `DHCP`, `PXE` or `TFTP`.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// ` (interface X)` or empty.
        dev: String,
        /// Cause.
        source: std::io::Error,
        /// What to try.
        hint: &'static str,
    },
    /// The lease store could not be opened.
    #[error("cannot open the lease store in {dir}: {source}")]
    Store {
        /// State folder.
        dir: std::path::PathBuf,
        /// Cause.
        source: crate::leases::StoreError,
    },
    /// A task failed.
    #[error("{what} stopped: {source}")]
    Task {
        /// Which task.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Bound listeners, ready to run.
#[derive(Debug)]
pub struct Server {
    cfg: Config,
    dhcp: Vec<(PktSocket, Listener)>,
    tftp: Vec<PktSocket>,
    /// DHCPv4 counters.
    pub stats: Arc<Stats>,
    /// The MAC ↔ address table DHCP fills and TFTP reads.
    pub clients: ClientTable,
    /// Full DHCP mode state (leases, subnets), opened at bind time.
    pub full: Option<Arc<dhcpv4::full::Full>>,
}

fn bind_one(what: &'static str, addr: SocketAddr, device: Option<&String>, broadcast: bool) -> Result<PktSocket, ServerError> {
    let opts = BindOptions {
        device: device.cloned(),
        broadcast,
        reuse_addr: true,
        recv_buffer: Some(1 << 20),
        send_buffer: Some(1 << 20),
    };
    bind_udp(addr, &opts).map_err(|source| {
        let hint = match source.kind() {
            std::io::ErrorKind::PermissionDenied => {
                " (ports below 1024 and --interface need root or CAP_NET_BIND_SERVICE + CAP_NET_RAW)"
            }
            std::io::ErrorKind::AddrInUse => " (another server is using it: stop it or choose another port)",
            _ => "",
        };
        ServerError::Bind {
            what,
            addr,
            dev: device.map(|d| format!(" (interface {d})")).unwrap_or_default(),
            source,
            hint,
        }
    })
}

/// Full mode: opens the lease store in the state folder (`pixie.db` behind `leases.journal`) and
/// loads the leases (before any socket serves).
fn open_full(cfg: &Config) -> Result<Option<Arc<dhcpv4::full::Full>>, ServerError> {
    if cfg.dhcp_mode != DhcpMode::Full {
        return Ok(None);
    }
    let store = |source| ServerError::Store { dir: cfg.state_dir.clone(), source };
    let backend = crate::leases::journal::JournaledLeases::open(&cfg.state_dir).map_err(store)?;
    let full = dhcpv4::full::Full::open(cfg.full.clone(), Box::new(backend)).map_err(store)?;
    Ok(Some(Arc::new(full)))
}

impl Server {
    /// Binds every listener in `cfg`. Must be called inside a tokio runtime.
    pub fn bind(cfg: Config) -> Result<Server, ServerError> {
        let devices: Vec<Option<&String>> =
            if cfg.interfaces.is_empty() { vec![None] } else { cfg.interfaces.iter().map(Some).collect() };
        let mut dhcp = Vec::new();
        let mut tftp = Vec::new();
        for dev in devices {
            if cfg.dhcp_mode != DhcpMode::Off {
                let a = SocketAddr::new(cfg.listen, cfg.dhcp_port);
                dhcp.push((bind_one("DHCP", a, dev, true)?, Listener::Dhcp));
                let a = SocketAddr::new(cfg.listen, cfg.pxe_port);
                dhcp.push((bind_one("PXE", a, dev, true)?, Listener::Pxe));
            }
            if cfg.tftp_enabled {
                let a = SocketAddr::new(cfg.listen, cfg.tftp_port);
                tftp.push(bind_one("TFTP", a, dev, false)?);
            }
        }
        let full = open_full(&cfg)?;
        Ok(Server { cfg, dhcp, tftp, stats: Arc::default(), clients: ClientTable::default(), full })
    }

    /// Bound DHCP-port addresses.
    pub fn dhcp_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(Listener::Dhcp)
    }

    /// Bound PXE-port addresses.
    pub fn pxe_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(Listener::Pxe)
    }

    /// Bound TFTP addresses.
    pub fn tftp_addrs(&self) -> Vec<SocketAddr> {
        self.tftp.iter().filter_map(|s| s.local_addr().ok()).collect()
    }

    fn addrs(&self, l: Listener) -> Vec<SocketAddr> {
        self.dhcp.iter().filter(|(_, k)| *k == l).filter_map(|(s, _)| s.local_addr().ok()).collect()
    }

    /// Runs until `shutdown` is cancelled (or a task fails), then drains every task.
    pub async fn run(self, policy: Arc<dyn Policy>, shutdown: CancellationToken) -> Result<(), ServerError> {
        let cfg = self.cfg;
        let ctx = dhcpv4::Context {
            policy: policy.clone(),
            fallback: cfg.fallback.clone(),
            slow_policy: cfg.deadline + Duration::from_millis(50),
            server_ip: cfg.server_ip,
            clients: self.clients.clone(),
            stats: self.stats.clone(),
            workers: cfg.dhcp_workers,
            batch: cfg.dhcp_batch,
            full: self.full.clone(),
        };
        let tcfg = TftpConfig {
            root: cfg.tftp_root.clone(),
            max_transfers: cfg.tftp_max_transfers,
            max_per_client: cfg.tftp_max_per_client,
            max_blksize: cfg.tftp_max_blksize,
            max_window_bytes: cfg.tftp_max_window_bytes,
            busy_poll: cfg.tftp_busy_poll,
            ..TftpConfig::default()
        };
        let mut tasks: JoinSet<(String, std::io::Result<()>)> = JoinSet::new();
        for (sock, l) in self.dhcp {
            let name = format!("{l:?} listener {}", sock.local_addr().map(|a| a.to_string()).unwrap_or_default());
            let (ctx, sd) = (ctx.clone(), shutdown.clone());
            tasks.spawn(async move { (name, dhcpv4::serve(sock, l, ctx, sd).await) });
        }
        for sock in self.tftp {
            let name = format!("TFTP listener {}", sock.local_addr().map(|a| a.to_string()).unwrap_or_default());
            let (policy, clients, sd, tcfg) = (policy.clone(), self.clients.clone(), shutdown.clone(), tcfg.clone());
            tasks.spawn(async move { (name, tftp::serve(sock, tcfg, policy, clients, sd).await) });
        }
        info!(
            listen = %cfg.listen,
            interfaces = ?cfg.interfaces,
            dhcp = ?cfg.dhcp_mode,
            tftp_root = %cfg.tftp_root.display(),
            "pixie is serving"
        );
        // DHCP counters in the log once a minute when they changed, and once at shutdown, so
        // that dropped and malformed packets are visible without a status endpoint.
        let (stats, sd) = (self.stats.clone(), shutdown.clone());
        let reporter = tokio::spawn(async move {
            let mut last = String::new();
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
                let now = stats.to_string();
                if now != last {
                    info!("DHCP counters: {now}");
                    last = now;
                }
            }
        });
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((what, Err(source))) => {
                    error!("{what} failed: {source}");
                    if result.is_ok() {
                        result = Err(ServerError::Task { what, source });
                    }
                    shutdown.cancel();
                }
                Err(e) => {
                    error!("a task panicked: {e}");
                    shutdown.cancel();
                }
            }
        }
        reporter.abort();
        if let Some(full) = self.full.clone() {
            let _ = tokio::task::spawn_blocking(move || full.withdraw_stored_offers()).await;
        }
        info!("pixie stopped; DHCP counters: {}", self.stats);
        result
    }
}
