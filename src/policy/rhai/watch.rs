//! Reload the policy when its files change.
//!
//! The *directories* are watched, not the files: editors save in place, or write a temporary
//! file and rename it over the old one (which a file watch would lose track of). Events are
//! debounced so that one save — often several events — causes one reload.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RhaiPolicy;

/// Quiet time after the last event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Whether an event may change the policy: anything touching a `*.rhai` path (including the
/// old or new name of a rename), or an event without paths (rescan).
fn relevant(ev: &notify::Event) -> bool {
    if matches!(ev.kind, notify::EventKind::Access(_)) {
        return false;
    }
    ev.paths.is_empty()
        || ev
            .paths
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "rhai"))
}

/// Watches the policy's scripts and plugins directories and reloads on change, until
/// `shutdown` is cancelled.
///
/// Must be called inside a tokio runtime. A missing plugins directory is not watched. Each
/// reload runs on the blocking pool and logs `policy reloaded generation=N` (info) or the
/// whole [`super::CompileReport`] with "keeping generation N" (error).
pub fn spawn_watcher(
    policy: Arc<RhaiPolicy>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Event>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            Ok(ev) => {
                // The receiver is gone only after shutdown; nothing to do then.
                let _ = tx.send(ev);
            }
            Err(e) => tracing::warn!(error = %e, "policy file watcher error"),
        }
    })?;
    let cfg = policy.config();
    watcher.watch(&cfg.scripts_dir, RecursiveMode::NonRecursive)?;
    if Path::new(&cfg.plugins_dir).is_dir() {
        watcher.watch(&cfg.plugins_dir, RecursiveMode::NonRecursive)?;
    } else {
        tracing::debug!(dir = %cfg.plugins_dir.display(), "plugins directory missing, not watched");
    }

    Ok(tokio::spawn(async move {
        // Keep the watcher alive as long as the task runs.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = rx.recv() => match ev {
                    None => return,
                    Some(ev) if !relevant(&ev) => continue,
                    Some(_) => {}
                },
            }
            // Debounce: wait until no relevant event arrived for DEBOUNCE.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    ev = rx.recv() => if ev.is_none() { return },
                }
            }
            let p = policy.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let r = p.reload();
                (r, p.generation())
            })
            .await;
            match outcome {
                Ok((Ok(generation), _)) => {
                    tracing::info!(generation, "policy reloaded generation={generation}")
                }
                Ok((Err(report), kept)) => {
                    tracing::error!("policy reload failed, keeping generation {kept}:\n{report}")
                }
                Err(e) => tracing::error!(error = %e, "policy reload task failed"),
            }
        }
    }))
}
