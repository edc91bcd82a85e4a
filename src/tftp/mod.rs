//! TFTP server (being written on its own branch; this placeholder keeps the wiring compiling).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Placeholder configuration.
#[derive(Debug, Clone, Default)]
pub struct TftpConfig {
    /// Root.
    pub root: PathBuf,
    /// Max transfers.
    pub max_transfers: usize,
    /// Per client.
    pub max_per_client: usize,
    /// Timeout.
    pub timeout: Duration,
    /// Retries.
    pub retries: u32,
    /// Max blksize.
    pub max_blksize: u16,
    /// Window bytes.
    pub max_window_bytes: usize,
}

/// Placeholder: waits for shutdown.
pub async fn serve(
    _socket: crate::net::PktSocket,
    _cfg: TftpConfig,
    _policy: Arc<dyn crate::policy::Policy>,
    _clients: crate::clients::ClientTable,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    shutdown.cancelled().await;
    Ok(())
}
