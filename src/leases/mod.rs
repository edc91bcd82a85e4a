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
//! - [`LeaseWriter`] — group commit without a thread of its own: the first caller to find no
//!   commit running takes every queued write and commits them in one transaction (one fsync),
//!   then answers each waiter. While one fsync is in flight the next batch queues up, so at
//!   2,000 ACKs/s a commit carries several leases instead of costing one fsync each. The DHCP
//!   worker waits for the answer before the ACK leaves: no ACK is ever sent for a lease that is
//!   not on disk.
//!
//! Records are keyed by address: the table holds at most one row per address, so an address can
//! never be recorded as held by two clients. A client that moves to another address has its
//! old row removed in the same transaction (see [`LeaseBackend::apply`]).

pub mod memory;
pub mod sqlite;

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// A lease storage engine. Called from one thread at a time (the committing caller, or startup).
pub trait LeaseBackend: Send + fmt::Debug + 'static {
    /// Every stored lease.
    fn load(&mut self) -> Result<Vec<Lease>, StoreError>;

    /// Stores `batch` atomically and durably: when this returns `Ok`, every record survives a
    /// crash; on `Err`, none was stored. Each record replaces the row of its address; a
    /// `Bound` record also removes any other row of the same (non-empty) client.
    fn apply(&mut self, batch: &[Lease]) -> Result<(), StoreError>;
}

/// Counters of the group commit.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Lease records written.
    pub records: AtomicU64,
    /// Transactions that failed.
    pub failures: AtomicU64,
}

/// Largest batch in one transaction (bounds the latency of the first waiter in a burst).
pub const MAX_BATCH: usize = 4096;

/// Under load, how long a committer waits for more records before it commits: one fsync then
/// carries every ACK of that interval (PostgreSQL's `commit_delay`, MySQL's
/// `binlog_group_commit_sync_delay`). "Under load" means the previous write arrived less than
/// [`HOT_GAP`] before this one, so a lone ACK on a quiet network never waits.
pub const COMMIT_GATHER: Duration = Duration::from_millis(2);

/// Writes closer together than this make the next commit wait [`COMMIT_GATHER`].
pub const HOT_GAP: Duration = Duration::from_millis(4);

/// After a gather that caught no other record, this many commits go without one (one writer
/// waiting for each of its writes in turn gains nothing from waiting).
const SKIP_AFTER_LONELY_GATHER: u32 = 16;

type Done = Arc<OnceLock<Result<(), StoreError>>>;

/// The group commit's state, all behind one mutex.
struct Queue {
    pending: Vec<(Lease, Done)>,
    /// A caller is committing a batch right now (the others wait on the condvar).
    committing: bool,
    /// When the previous write arrived.
    last_arrival: Option<Instant>,
    /// Commits left that skip the gather.
    skip_gather: u32,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled after every commit.
    committed: Condvar,
    /// Only the committing caller touches the backend; the mutex only makes that visible.
    backend: Mutex<Box<dyn LeaseBackend>>,
}

/// The group-commit handle: cheap to clone, shared by the DHCP worker threads.
///
/// Leader-based: a caller queues its record; if no commit is running it becomes the committer,
/// takes everything queued (its own record and any that arrived meanwhile) and applies it in
/// one transaction; callers that queue during that commit wait, and the first of them to wake
/// commits the next batch. No thread hop sits between a request and its fsync, and a burst of
/// ACKs shares one fsync.
#[derive(Clone)]
pub struct LeaseWriter {
    shared: Arc<Shared>,
    /// Counters.
    pub stats: Arc<WriterStats>,
}

impl fmt::Debug for LeaseWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseWriter").field("stats", &self.stats).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LeaseWriter {
    /// Takes ownership of `backend`. (Kept fallible for backends that need a connection.)
    pub fn start(backend: Box<dyn LeaseBackend>) -> std::io::Result<LeaseWriter> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { pending: Vec::new(), committing: false, last_arrival: None, skip_gather: 0 }),
            committed: Condvar::new(),
            backend: Mutex::new(backend),
        });
        Ok(LeaseWriter { shared, stats: Arc::default() })
    }

    /// Stores `lease` durably, blocking until it is (or the commit failed). Call from a thread
    /// that may block (a DHCP worker), not from an async task.
    pub fn write_blocking(&self, lease: Lease) -> Result<(), StoreError> {
        let sh = &self.shared;
        let done: Done = Arc::new(OnceLock::new());
        let now = Instant::now();
        let mut q = lock(&sh.queue);
        let hot = q.last_arrival.is_some_and(|prev| now.saturating_duration_since(prev) < HOT_GAP);
        q.last_arrival = Some(now);
        q.pending.push((lease, done.clone()));
        loop {
            if let Some(r) = done.get() {
                return r.clone();
            }
            if !q.committing {
                q.committing = true;
                if q.skip_gather > 0 {
                    q.skip_gather -= 1;
                } else if hot && q.pending.len() < MAX_BATCH {
                    // Writes are arriving close together: let the next ones join this commit.
                    let before = q.pending.len();
                    drop(q);
                    std::thread::sleep(COMMIT_GATHER);
                    q = lock(&sh.queue);
                    if q.pending.len() == before {
                        q.skip_gather = SKIP_AFTER_LONELY_GATHER;
                    }
                }
                let n = q.pending.len().min(MAX_BATCH);
                let batch: Vec<(Lease, Done)> = q.pending.drain(..n).collect();
                drop(q);
                let (records, waiters): (Vec<Lease>, Vec<Done>) = batch.into_iter().unzip();
                let r = lock(&sh.backend).apply(&records);
                match &r {
                    Ok(()) => {
                        self.stats.commits.fetch_add(1, Ordering::Relaxed);
                        self.stats.records.fetch_add(records.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("committing {} lease(s) failed: {e}", records.len());
                    }
                }
                for w in waiters {
                    let _ = w.set(r.clone());
                }
                q = lock(&sh.queue);
                q.committing = false;
                sh.committed.notify_all();
                // Our record was in this batch unless more than MAX_BATCH were queued before
                // it: then the loop commits the next batch.
                continue;
            }
            q = sh.committed.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Async variant of [`LeaseWriter::write_blocking`] (runs it on the blocking pool).
    pub async fn write(&self, lease: Lease) -> Result<(), StoreError> {
        let w = self.clone();
        tokio::task::spawn_blocking(move || w.write_blocking(lease))
            .await
            .map_err(|e| StoreError(format!("the lease commit did not finish: {e}")))?
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

    #[test]
    fn concurrent_writers_share_commits_and_each_returns_only_once_durable() {
        let mem = memory::MemoryLeases::default();
        mem.set_delay(std::time::Duration::from_millis(2));
        let w = LeaseWriter::start(Box::new(mem.clone())).unwrap();
        let threads: Vec<_> = (0..16u8)
            .map(|t| {
                let (w, mem) = (w.clone(), mem.clone());
                std::thread::spawn(move || {
                    for i in 0..10u8 {
                        let l = lease(t * 10 + i + 1, t * 10 + i + 1);
                        w.write_blocking(l.clone()).unwrap();
                        // Returned means stored: the row is there now.
                        assert!(mem.rows().contains(&l), "{l:?} returned before it was stored");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(mem.rows().len(), 160);
        let commits = w.stats.commits.load(Ordering::Relaxed);
        assert_eq!(w.stats.records.load(Ordering::Relaxed), 160);
        // 16 writers against a 2 ms commit: most commits must carry several records.
        assert!(commits <= 80, "{commits} commits for 160 records: no grouping");
    }

    #[test]
    fn a_lone_sequential_writer_stops_gathering() {
        let mem = memory::MemoryLeases::default();
        let w = LeaseWriter::start(Box::new(mem.clone())).unwrap();
        for i in 1..=40u8 {
            w.write_blocking(lease(i, i)).unwrap();
        }
        // Back-to-back writes look "hot", but each gather finds nobody to wait for, so after
        // one lonely gather the next SKIP_AFTER_LONELY_GATHER commits skip it.
        let skipped = lock(&w.shared.queue).skip_gather;
        assert!(skipped > 0, "no gather was skipped");
        assert_eq!(w.stats.commits.load(Ordering::Relaxed), 40);
        assert_eq!(mem.rows().len(), 40);
    }

    #[test]
    fn a_failed_group_fails_every_member_and_the_next_one_succeeds() {
        let mem = memory::MemoryLeases::default();
        mem.set_delay(std::time::Duration::from_millis(20));
        mem.fail_next(true);
        let w = LeaseWriter::start(Box::new(mem.clone())).unwrap();
        let threads: Vec<_> = (1..=4u8)
            .map(|i| {
                let w = w.clone();
                std::thread::spawn(move || w.write_blocking(lease(i, i)))
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(results.iter().all(|r| r.is_err()), "{results:?}");
        mem.fail_next(false);
        w.write_blocking(lease(9, 9)).unwrap();
        assert_eq!(mem.rows().len(), 1);
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
