//! A TFTP server process for `bench/tftp.sh`: pixie's server, or async-tftp as a peer.
//!
//! Not a criterion benchmark (`harness = false`): it serves until killed.
//!
//! ```text
//! tftp_serve pixie|async-tftp ROOT ADDR [--current-thread]
//! ```
//! Prints `READY <addr>` on stdout once the socket is bound. Logs at `warn` unless `RUST_LOG` says
//! otherwise (the peers run with their routine logging off, too).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use pixie::clients::ClientTable;
use pixie::net::{bind_udp, BindOptions};
use pixie::policy::{Decision, FnPolicy};
use pixie::tftp::{serve, TftpConfig};
use tokio_util::sync::CancellationToken;

fn usage() -> ! {
    eprintln!("usage: tftp_serve pixie|async-tftp ROOT ADDR [--current-thread]");
    std::process::exit(2)
}

fn env_num(name: &str) -> Option<usize> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.is_empty() {
        // `cargo bench` / `cargo test --all-targets` run this target without arguments.
        eprintln!("tftp_serve: a server for bench/tftp.sh; nothing to do without arguments");
        return;
    }
    if args.len() < 3 {
        usage();
    }
    let which = args[0].clone();
    let root = PathBuf::from(&args[1]);
    let addr: SocketAddr = args[2].parse().unwrap_or_else(|_| usage());
    let current = args.iter().any(|a| a == "--current-thread");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let rt = if current {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    }
    .expect("tokio runtime");
    rt.block_on(async move {
        match which.as_str() {
            "pixie" => {
                let socket = bind_udp(addr, &BindOptions::default()).expect("bind");
                println!("READY {}", socket.local_addr().unwrap());
                // All bench clients share 127.0.0.1: lift the per-client limit (default 8).
                let mut cfg = TftpConfig { root, max_per_client: 1024, ..TftpConfig::default() };
                // A/B knobs for bench/tftp.sh (unset: pixie's defaults).
                if let Some(n) = env_num("PIXIE_TFTP_READ_AHEAD") {
                    cfg.read_ahead = n;
                }
                if let Some(n) = env_num("PIXIE_TFTP_LOCKSTEP_THREADS") {
                    cfg.lockstep_threads = n != 0;
                }
                if let Some(n) = env_num("PIXIE_TFTP_BUSY_POLL_US") {
                    cfg.busy_poll = std::time::Duration::from_micros(n as u64);
                }
                let policy = Arc::new(FnPolicy(|_: &_| Ok(Decision::Ignore)));
                // On a worker, as `pixie serve` runs it (server.rs spawns every listener), not
                // on the thread that blocks on the runtime.
                tokio::spawn(serve(socket, cfg, policy, ClientTable::default(), CancellationToken::new()))
                    .await
                    .expect("serve task")
                    .expect("serve");
            }
            "async-tftp" => {
                let tftpd = async_tftp::server::TftpServerBuilder::with_dir_ro(&root)
                    .expect("root")
                    .bind(addr)
                    .build()
                    .await
                    .expect("bind");
                println!("READY {}", tftpd.listen_addr().unwrap());
                tftpd.serve().await.expect("serve");
            }
            _ => usage(),
        }
    });
}
