//! Lease persistence for full DHCP mode: what was acknowledged to whom, durably.
//!
//! The store is split in two so that durability never caps throughput:
//!
//! - [`LeaseBackend`] — the small trait a storage engine implements: load every lease at
//!   start, and apply one batch of lease records *atomically and durably* (one transaction).
//!   [`sqlite::SqliteLeases`] is the real one (`<state_dir>/pixie.db`, WAL mode,
//!   `synchronous=FULL`, so a returned `apply` has been fsynced); [`memory::MemoryLeases`] is
//!   for tests. A PostgreSQL backend for several servers sharing one lease space fits the same
//!   trait.
//! - [`LeaseWriter`] — group commit: one writer thread owns the backend, takes every queued
//!   write, commits them in one transaction (one fsync), then answers each waiter. While one
//!   fsync is in flight the next batch queues up, so at 2,000 ACKs/s a commit carries many
//!   leases instead of costing one fsync each. The DHCP server awaits the answer before the ACK
//!   leaves: no ACK is ever sent for a lease that is not on disk.
//!
//! Records are keyed by address: the table holds at most one row per address, so an address can
//! never be recorded as held by two clients. A client that moves to another address has its
//! old row removed in the same transaction (see [`LeaseBackend::apply`]).

pub mod memory;
pub mod sqlite;

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::policy::HwAddr;

/// Name of the state database inside the state folder (shared with the per-host store).
pub const DB_FILE: &str = "pixie.db";

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a lease record says about its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseState {
    /// Acknowledged to the client until `expires`.
    Bound,
    /// Given back by the client (DHCPRELEASE); remembered so the client gets it again.
    Released,
    /// Declined by a client (DHCPDECLINE: in use by someone else); quarantined until `expires`.
    Declined,
}

impl LeaseState {
    /// `bound`, `released`, `declined` (as stored and printed).
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
        }
    }

    /// Inverse of [`LeaseState::as_str`].
    pub fn from_name(s: &str) -> Option<LeaseState> {
        match s {
            "bound" => Some(LeaseState::Bound),
            "released" => Some(LeaseState::Released),
            "declined" => Some(LeaseState::Declined),
            _ => None,
        }
    }
}

/// One lease record: the row for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address (primary key).
    pub ip: Ipv4Addr,
    /// The client's identity: option 61 when sent, else hardware type + chaddr. Empty for a
    /// declined address (it belongs to nobody while quarantined).
    pub client: Vec<u8>,
    /// The client's hardware address, for people and for `pixie leases`.
    pub mac: HwAddr,
    /// Option 12 as the client sent it.
    pub hostname: Option<String>,
    /// Bound, released or declined.
    pub state: LeaseState,
    /// End of the lease (or of the quarantine), Unix seconds.
    pub expires: u64,
}

/// A storage failure, with the engine's message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("lease store: {0}")]
pub struct StoreError(pub String);

/// A lease storage engine. Called from one thread at a time (the writer thread, or startup).
pub trait LeaseBackend: Send + fmt::Debug + 'static {
    /// Every stored lease.
    fn load(&mut self) -> Result<Vec<Lease>, StoreError>;

    /// Stores `batch` atomically and durably: when this returns `Ok`, every record survives a
    /// crash; on `Err`, none was stored. Each record replaces the row of its address; a
    /// `Bound` record also removes any other row of the same (non-empty) client.
    fn apply(&mut self, batch: &[Lease]) -> Result<(), StoreError>;
}

/// Counters of the writer thread.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Lease records written.
    pub records: AtomicU64,
    /// Transactions that failed.
    pub failures: AtomicU64,
}

type Waiter = tokio::sync::oneshot::Sender<Result<(), StoreError>>;

/// Largest batch in one transaction (bounds the latency of the first waiter in a burst).
pub const MAX_BATCH: usize = 4096;

/// The group-commit handle: cheap to clone, usable from async tasks.
#[derive(Clone)]
pub struct LeaseWriter {
    tx: mpsc::Sender<(Lease, Waiter)>,
    /// Counters.
    pub stats: Arc<WriterStats>,
}

impl fmt::Debug for LeaseWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseWriter").field("stats", &self.stats).finish()
    }
}

impl LeaseWriter {
    /// Starts the writer thread that owns `backend`. The thread ends when every handle is
    /// dropped, after committing what was queued.
    pub fn start(mut backend: Box<dyn LeaseBackend>) -> std::io::Result<LeaseWriter> {
        let (tx, rx) = mpsc::channel::<(Lease, Waiter)>();
        let stats = Arc::new(WriterStats::default());
        let st = stats.clone();
        std::thread::Builder::new().name("pixie-leases".into()).spawn(move || {
            let mut batch = Vec::new();
            let mut waiters = Vec::new();
            // Blocks for the first write, then takes whatever queued meanwhile: the group.
            while let Ok(first) = rx.recv() {
                batch.clear();
                waiters.clear();
                let (l, w) = first;
                batch.push(l);
                waiters.push(w);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok((l, w)) => {
                            batch.push(l);
                            waiters.push(w);
                        }
                        Err(_) => break,
                    }
                }
                let r = backend.apply(&batch);
                match &r {
                    Ok(()) => {
                        st.commits.fetch_add(1, Ordering::Relaxed);
                        st.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        st.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("committing {} lease(s) failed: {e}", batch.len());
                    }
                }
                for w in waiters.drain(..) {
                    let _ = w.send(r.clone());
                }
            }
        })?;
        Ok(LeaseWriter { tx, stats })
    }

    /// Queues `lease` and waits until it is durable (or the commit failed).
    pub async fn write(&self, lease: Lease) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send((lease, tx)).map_err(|_| StoreError("the lease writer has stopped".into()))?;
        rx.await.map_err(|_| StoreError("the lease writer stopped before committing".into()))?
    }

    /// Blocking variant of [`LeaseWriter::write`] for non-async callers and tests.
    pub fn write_blocking(&self, lease: Lease) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send((lease, tx)).map_err(|_| StoreError("the lease writer has stopped".into()))?;
        rx.blocking_recv().map_err(|_| StoreError("the lease writer stopped before committing".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(n: u8, client: u8) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, n),
            client: vec![1, client],
            mac: HwAddr(vec![2, 0, 0, 0, 0, client]),
            hostname: None,
            state: LeaseState::Bound,
            expires: 100,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_batches_concurrent_writes_and_answers_each() {
        let mem = memory::MemoryLeases::default();
        let w = LeaseWriter::start(Box::new(mem.clone())).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u8 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move { w.write(lease(i, i)).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(mem.rows().len(), 200);
        let commits = w.stats.commits.load(Ordering::Relaxed);
        assert_eq!(w.stats.records.load(Ordering::Relaxed), 200);
        assert!(commits <= 200, "{commits}");
    }

    #[tokio::test]
    async fn a_failed_commit_is_reported_to_every_waiter() {
        let mem = memory::MemoryLeases::default();
        mem.fail_next(true);
        let w = LeaseWriter::start(Box::new(mem.clone())).unwrap();
        assert!(w.write(lease(1, 1)).await.is_err());
        mem.fail_next(false);
        w.write(lease(1, 1)).await.unwrap();
        assert_eq!(mem.rows().len(), 1);
    }

    #[test]
    fn a_client_that_moves_keeps_one_row() {
        let mut mem = memory::MemoryLeases::default();
        mem.apply(&[lease(1, 7)]).unwrap();
        mem.apply(&[lease(2, 7)]).unwrap();
        let rows = mem.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].ip, Ipv4Addr::new(10, 0, 0, 2));
    }
}
