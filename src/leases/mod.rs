//! Lease persistence for full DHCP mode: what was acknowledged to whom, durably.
//!
//! The store is split in two so that durability never caps throughput:
//!
//! - [`LeaseBackend`] — the small trait a storage engine implements: load every lease at
//!   start, and apply one batch of lease records *atomically and durably* (one transaction).
//!   The server uses [`journal::JournaledLeases`]: each batch is one synchronous write to a
//!   preallocated journal (`<state_dir>/leases.journal`), checkpointed in bulk into
//!   [`sqlite::SqliteLeases`] (`<state_dir>/pixie.db`, WAL mode, `synchronous=FULL`), which is
//!   also a backend on its own. [`memory::MemoryLeases`] is for tests. A PostgreSQL backend for
//!   several servers sharing one lease space fits the same trait.
//! - [`LeaseWriter`] — group commit without a thread of its own: records are queued with what
//!   to do once they are durable, and the first caller of [`LeaseWriter::commit`] to find no
//!   commit running takes every queued record and commits them in one transaction (one durable
//!   write), then runs each record's follow-up (the DHCP server's: send the ACK). The DHCP
//!   server queues the ACKs of a whole batch of requests and commits once per batch, and while
//!   one write is in flight the next batch queues up, so at 2,000 ACKs/s a write carries
//!   several leases instead of costing one each. An ACK is only ever sent by that follow-up,
//!   after its transaction committed: no ACK leaves for a lease that is not on disk.
//!
//! Records are keyed by address: the table holds at most one row per address, so an address can
//! never be recorded as held by two clients. A client that moves to another address has its
//! old row removed in the same transaction (see [`LeaseBackend::apply`]).

pub mod journal;
pub mod memory;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
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
    /// Offered to the client and stored before the OFFER left (a durable offer), so that its
    /// REQUEST can be acknowledged with nothing left to write. The client may hold it until
    /// `expires` (the ACK may have left before a crash): it is kept for the client like a bound
    /// lease. A `Bound` record replaces it shortly after the ACK.
    Offered,
}

impl LeaseState {
    /// `bound`, `released`, `declined`, `offered` (as stored and printed).
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
            LeaseState::Offered => "offered",
        }
    }

    /// Whether the record's client may hold the address until `expires` (bound, or offered and
    /// perhaps acknowledged since).
    pub fn held(self) -> bool {
        matches!(self, LeaseState::Bound | LeaseState::Offered)
    }

    /// Inverse of [`LeaseState::as_str`].
    pub fn from_name(s: &str) -> Option<LeaseState> {
        match s {
            "bound" => Some(LeaseState::Bound),
            "released" => Some(LeaseState::Released),
            "declined" => Some(LeaseState::Declined),
            "offered" => Some(LeaseState::Offered),
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
    /// Bound, released, declined or offered.
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
    /// `Bound` or `Offered` record also removes any other row of the same (non-empty) client.
    fn apply(&mut self, batch: &[Lease]) -> Result<(), StoreError>;
}

/// Lease rows keyed by address, with [`LeaseBackend::apply`]'s rules, in memory: what a journal
/// replay (and the test backend) builds. The client index keeps a replay linear.
#[derive(Debug, Default, Clone)]
pub struct LeaseMap {
    rows: BTreeMap<Ipv4Addr, Lease>,
    by_client: HashMap<Vec<u8>, Vec<Ipv4Addr>>,
}

impl LeaseMap {
    /// A map holding `rows` (as loaded from a store: one row per address).
    pub fn from_rows(rows: Vec<Lease>) -> LeaseMap {
        let mut m = LeaseMap::default();
        for l in rows {
            m.put(l);
        }
        m
    }

    /// Applies one record: it replaces its address's row; a `Bound` or `Offered` one also
    /// removes every other row of its (non-empty) client.
    pub fn apply(&mut self, l: &Lease) {
        if l.state.held() && !l.client.is_empty() {
            if let Some(ips) = self.by_client.remove(&l.client) {
                for ip in ips.into_iter().filter(|ip| *ip != l.ip) {
                    self.rows.remove(&ip);
                }
            }
        }
        self.put(l.clone());
    }

    fn put(&mut self, l: Lease) {
        if let Some(old) = self.rows.get(&l.ip) {
            if old.client != l.client {
                if let Some(ips) = self.by_client.get_mut(&old.client) {
                    ips.retain(|ip| *ip != l.ip);
                }
            }
        }
        if !l.client.is_empty() {
            let ips = self.by_client.entry(l.client.clone()).or_default();
            if !ips.contains(&l.ip) {
                ips.push(l.ip);
            }
        }
        self.rows.insert(l.ip, l);
    }

    /// Every row, ordered by address.
    pub fn rows(&self) -> impl Iterator<Item = &Lease> + '_ {
        self.rows.values()
    }

    /// Every row, ordered by address.
    pub fn into_rows(self) -> Vec<Lease> {
        self.rows.into_values().collect()
    }
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
    /// The slowest commit so far, in microseconds.
    pub slowest_us: AtomicU64,
}

/// Largest batch in one transaction (bounds the latency of the first waiter in a burst).
pub const MAX_BATCH: usize = 4096;

/// What runs once a submitted record's commit has finished, with its outcome: on the thread that
/// committed it, right after the transaction (it sends the DHCPACK, or rolls the binding back).
pub type OnDurable = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// The group commit's state, all behind one mutex.
struct Queue {
    pending: Vec<(Lease, OnDurable)>,
    /// A caller is committing right now: it takes whatever is queued when it is done.
    committing: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Only the committing caller touches the backend; the mutex only makes that visible.
    backend: Mutex<Box<dyn LeaseBackend>>,
    /// How long the latest commit took, in microseconds (a slow disk shows here).
    last_commit_us: AtomicU64,
}

/// The group-commit handle: cheap to clone, shared by the DHCP worker threads.
///
/// Leader-based, and nobody waits for another caller's commit: [`LeaseWriter::queue`] adds a
/// record with what to do once it is durable, and [`LeaseWriter::commit`] makes everything
/// queued durable in one transaction and then runs each record's follow-up (sending its ACK).
/// A caller that finds a commit running leaves its records to it: the running committer
/// repeats while records arrived meanwhile. The DHCP server queues the ACKs of a whole batch
/// of requests and commits once per batch, so a burst of ACKs shares one durable write, and
/// only one thread at a time waits for the disk.
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
            queue: Mutex::new(Queue { pending: Vec::new(), committing: false }),
            backend: Mutex::new(backend),
            last_commit_us: AtomicU64::new(0),
        });
        Ok(LeaseWriter { shared, stats: Arc::default() })
    }

    /// Queues `lease`; `then` runs with the outcome once a [`LeaseWriter::commit`] stored it.
    /// Never blocks for long (a mutex around a vector).
    pub fn queue(&self, lease: Lease, then: OnDurable) {
        lock(&self.shared.queue).pending.push((lease, then));
    }

    /// Whether records are queued and no commit is running to take them.
    pub fn has_queued(&self) -> bool {
        let q = lock(&self.shared.queue);
        !q.committing && !q.pending.is_empty()
    }

    /// How long the latest commit took.
    pub fn last_commit(&self) -> Duration {
        Duration::from_micros(self.shared.last_commit_us.load(Ordering::Relaxed))
    }

    /// Makes every queued record durable. If a commit is running, returns at once: that
    /// committer takes these records next. Otherwise this thread commits everything queued in
    /// one transaction, runs the follow-ups (never under a lock), and repeats while records
    /// arrived meanwhile. Call from a thread that may block (a DHCP worker).
    pub fn commit(&self) {
        let sh = &self.shared;
        let mut q = lock(&sh.queue);
        if q.committing || q.pending.is_empty() {
            return;
        }
        q.committing = true;
        loop {
            let n = q.pending.len().min(MAX_BATCH);
            let batch: Vec<(Lease, OnDurable)> = q.pending.drain(..n).collect();
            drop(q);
            let (records, follow_ups): (Vec<Lease>, Vec<OnDurable>) = batch.into_iter().unzip();
            let started = Instant::now();
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| lock(&sh.backend).apply(&records)))
                .unwrap_or_else(|p| Err(StoreError(format!("the store panicked: {}", crate::panic_message(&*p)))));
            let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            sh.last_commit_us.store(took, Ordering::Relaxed);
            self.stats.slowest_us.fetch_max(took, Ordering::Relaxed);
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
            for then in follow_ups {
                // A failing follow-up must not leave `committing` set: nothing would commit again.
                let r = r.clone();
                if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(move || then(r))) {
                    tracing::error!("internal error after a lease commit (please report): {}", crate::panic_message(&*p));
                }
            }
            q = lock(&sh.queue);
            if q.pending.is_empty() {
                q.committing = false;
                return;
            }
            // More records queued during this commit: they are the next batch.
        }
    }

    /// [`LeaseWriter::queue`] then [`LeaseWriter::commit`]: stored durably before this returns
    /// unless another caller's commit is running, which then stores it and runs `then`.
    pub fn submit(&self, lease: Lease, then: OnDurable) {
        self.queue(lease, then);
        self.commit();
    }

    /// Stores `lease` durably, blocking until it is (or the commit failed). Call from a thread
    /// that may block, not from an async task.
    pub fn write_blocking(&self, lease: Lease) -> Result<(), StoreError> {
        let done: Arc<OnceLock<Result<(), StoreError>>> = Arc::new(OnceLock::new());
        let (set, me) = (done.clone(), std::thread::current());
        self.submit(
            lease,
            Box::new(move |r| {
                let _ = set.set(r);
                me.unpark();
            }),
        );
        loop {
            if let Some(r) = done.get() {
                return r.clone();
            }
            std::thread::park();
        }
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

    #[test]
    fn group_commit_batches_concurrent_writes_and_answers_each() {
        let mem = memory::MemoryLeases::default();
        let w = LeaseWriter::start(Box::new(mem.clone())).unwrap();
        std::thread::scope(|s| {
            let w = &w;
            let writers: Vec<_> = (0..200u8).map(|i| s.spawn(move || w.write_blocking(lease(i, i)))).collect();
            for t in writers {
                t.join().unwrap().unwrap();
            }
        });
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
    fn queued_records_wait_for_commit_and_share_one_transaction() {
        let mem = memory::MemoryLeases::default();
        let w = LeaseWriter::start(Box::new(mem.clone())).unwrap();
        let done: Arc<Mutex<Vec<u8>>> = Arc::default();
        for i in 1..=5u8 {
            let done = done.clone();
            w.queue(lease(i, i), Box::new(move |r| {
                r.unwrap();
                lock(&done).push(i);
            }));
        }
        assert!(w.has_queued());
        assert!(mem.rows().is_empty(), "queue() stored something");
        assert!(lock(&done).is_empty(), "a follow-up ran before any commit");
        w.commit();
        assert!(!w.has_queued());
        assert_eq!(mem.rows().len(), 5);
        assert_eq!(*lock(&done), vec![1, 2, 3, 4, 5]);
        assert_eq!(w.stats.commits.load(Ordering::Relaxed), 1);
        w.commit();
        assert_eq!(w.stats.commits.load(Ordering::Relaxed), 1, "an empty commit wrote");
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

    #[test]
    fn a_failed_commit_is_reported_to_every_waiter() {
        let mem = memory::MemoryLeases::default();
        mem.fail_next(true);
        let w = LeaseWriter::start(Box::new(mem.clone())).unwrap();
        assert!(w.write_blocking(lease(1, 1)).is_err());
        mem.fail_next(false);
        w.write_blocking(lease(1, 1)).unwrap();
        assert_eq!(mem.rows().len(), 1);
    }

    /// A backend whose `apply` waits at a gate: the test decides when a commit may finish.
    #[derive(Debug, Clone, Default)]
    struct Gated {
        /// (commits entered, commits allowed to finish)
        gate: Arc<(Mutex<(u32, u32)>, std::sync::Condvar)>,
        rows: Arc<Mutex<Vec<Lease>>>,
    }

    impl Gated {
        fn wait_entered(&self, n: u32) {
            let (m, cv) = &*self.gate;
            let _g = cv.wait_while(lock(m), |(entered, _)| *entered < n).unwrap();
        }
        fn allow(&self, n: u32) {
            let (m, cv) = &*self.gate;
            lock(m).1 += n;
            cv.notify_all();
        }
    }

    impl LeaseBackend for Gated {
        fn load(&mut self) -> Result<Vec<Lease>, StoreError> {
            Ok(Vec::new())
        }
        fn apply(&mut self, batch: &[Lease]) -> Result<(), StoreError> {
            let (m, cv) = &*self.gate;
            let mut g = lock(m);
            g.0 += 1;
            let me = g.0;
            cv.notify_all();
            let _g = cv.wait_while(g, |(_, allowed)| *allowed < me).unwrap();
            lock(&self.rows).extend_from_slice(batch);
            Ok(())
        }
    }

    #[test]
    fn a_submit_during_a_commit_returns_at_once_and_the_committer_sends_its_follow_up() {
        let gated = Gated::default();
        let w = LeaseWriter::start(Box::new(gated.clone())).unwrap();
        let w1 = w.clone();
        let committer = std::thread::spawn(move || {
            w1.write_blocking(lease(1, 1)).unwrap();
            std::thread::current().id()
        });
        gated.wait_entered(1);
        // A commit is running: this queues and returns without waiting for any commit.
        // What the follow-up saw: its result, the thread it ran on, the rows stored by then.
        type Seen = (Result<(), StoreError>, std::thread::ThreadId, usize);
        let ran: Arc<Mutex<Option<Seen>>> = Arc::default();
        let (ran2, rows, w2) = (ran.clone(), gated.rows.clone(), w.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            w2.submit(
                lease(2, 2),
                Box::new(move |r| {
                    // Runs after its own commit: the row is stored by then.
                    let stored = lock(&rows).len();
                    *lock(&ran2) = Some((r, std::thread::current().id(), stored));
                }),
            );
            let _ = tx.send(());
        });
        // (A submit that waited for the gated commit would never return: fail, do not hang.)
        rx.recv_timeout(std::time::Duration::from_secs(20)).expect("submit waited for the running commit");
        assert!(lock(&ran).is_none(), "the follow-up ran before its commit");
        assert!(lock(&gated.rows).is_empty());
        // Let the first commit finish; the committer then commits the queued record as well.
        gated.allow(2);
        let committer_id = committer.join().unwrap();
        let (r, on, stored) = lock(&ran).take().expect("the follow-up never ran");
        r.unwrap();
        assert_eq!(on, committer_id, "the follow-up runs on the committing thread");
        assert_eq!(stored, 2);
        assert_eq!(w.stats.commits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_panicking_follow_up_does_not_stop_later_commits() {
        let mem = memory::MemoryLeases::default();
        let w = LeaseWriter::start(Box::new(mem.clone())).unwrap();
        w.submit(lease(1, 1), Box::new(|_| panic!("follow-up bug")));
        // Had the panic left `committing` set, this would queue forever.
        w.write_blocking(lease(2, 2)).unwrap();
        assert_eq!(mem.rows().len(), 2);
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
