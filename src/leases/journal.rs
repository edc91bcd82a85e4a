//! The lease journal: a preallocated write-ahead log in front of SQLite, so that making a batch of
//! leases durable costs one synchronous write of a few blocks instead of a SQLite transaction.
//!
//! Why: on this project's bench box (ext4 on a virtio disk), a SQLite WAL commit of three lease
//! rows with `synchronous=FULL` costs ~130 µs of CPU, one `O_DIRECT | O_DSYNC` write of 4 KiB
//! into a preallocated file ~30 µs (both measured with `getrusage` over 1,500 commits). The commit
//! was the largest share of pixie's CPU per DHCP exchange (bench/RESULTS-dhcp.md).
//!
//! **File.** `<state_dir>/leases.journal`, [`Limits::blocks`] blocks of 4 KiB in two halves,
//! zero-filled when it is created so that every later write overwrites allocated, written
//! blocks: with `O_DSYNC` (and `O_DIRECT`, where the file system takes it) a returned write is on
//! stable storage, with no metadata to flush. Generation `g` is written into half `g % 2`, from
//! its first block. Each [`LeaseBackend::apply`] writes one frame at the next block boundary:
//!
//! | bytes   | field                                                        |
//! |---------|--------------------------------------------------------------|
//! | 0..4    | magic `PXJ1`                                                 |
//! | 4..12   | generation (little endian)                                   |
//! | 12..16  | sequence number within the generation: 0, 1, 2, …            |
//! | 16..20  | payload length                                               |
//! | 20..24  | CRC-32 of bytes 4..20 and of the payload                     |
//! | 24..    | payload: the batch's records ([`encode`]), zeros to the next block |
//!
//! **Checkpoint.** When the half is full, holds [`Limits::records`] records, or its oldest record
//! is [`Limits::age`] old, writing moves on to generation `g + 1` in the other half, and a
//! background thread stores generation `g`'s records in SQLite in one transaction that also
//! records `g + 1` (table `lease_journal`: "everything before generation `g + 1` is here"). The
//! commits go on meanwhile; only a half that fills up before the previous checkpoint finished
//! waits for it (its blocks still hold that checkpoint's frames).
//!
//! **Recovery.** With SQLite at generation `s`, the journal holds generation `s` (a checkpoint
//! was in flight) and `s + 1`. Each is replayed from the first block of its half while every
//! frame has that generation, the next sequence number and a good CRC; the first frame that does
//! not ends it (a torn frame is one whose write never returned, so none of its ACKs was sent;
//! stale frames of older generations never match). At open, what was replayed goes to SQLite at
//! once and writing starts a new generation. [`read_all`] (for `pixie leases`) reads SQLite and
//! the journal the same way without writing.
//!
//! One server per state folder: the journal is locked (`flock`) while open.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::sqlite::SqliteLeases;
use super::{Lease, LeaseBackend, LeaseMap, LeaseState, StoreError};
use crate::policy::HwAddr;

/// Name of the journal inside the state folder.
pub const JOURNAL_FILE: &str = "leases.journal";

/// Unit of the journal's writes (and of `O_DIRECT` alignment).
const BLOCK: usize = 4096;
const MAGIC: [u8; 4] = *b"PXJ1";
const HEADER: usize = 24;
/// Length marker of a record without a hostname.
const NO_HOSTNAME: u16 = u16::MAX;
/// How long a commit waits for a checkpoint that must finish before its half can be reused.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(5);

/// When the journal moves to its other half (and checkpoints the one it leaves).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Size of the journal in 4 KiB blocks, both halves (each batch takes at least one block).
    pub blocks: u64,
    /// Records in the current half that make the next batch start the other half.
    pub records: usize,
    /// Age of the current half's oldest record that does the same (SQLite stays about this fresh
    /// for other readers under steady load).
    pub age: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        // 16 MiB: at 1,000 ACKs/s in batches of ~3, a half lasts ~6 s.
        Limits { blocks: 4096, records: 8192, age: Duration::from_secs(30) }
    }
}

fn io_err(path: &Path, what: &str, e: io::Error) -> StoreError {
    StoreError(format!("{}: {what}: {e}", path.display()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Leases in SQLite behind the journal: what the server uses in full DHCP mode.
#[derive(Debug)]
pub struct JournaledLeases {
    path: PathBuf,
    /// Held open for its `flock`.
    _lock: File,
    /// The writing handle: `O_DSYNC`, and `O_DIRECT` when `direct`.
    file: File,
    direct: bool,
    /// Blocks per half.
    half: u64,
    limits: Limits,
    generation: u64,
    seq: u32,
    /// Next block to write, within the current half.
    next_block: u64,
    /// The current generation's records (in the journal, not yet in SQLite), in order.
    current: Vec<Lease>,
    /// When the oldest of them was written.
    oldest: Option<Instant>,
    frame: AlignedBuf,
    payload: Vec<u8>,
    checkpointer: Checkpointer,
    /// Checkpoint on drop (a clean stop); tests turn it off to leave the journal as a crash would.
    checkpoint_on_drop: bool,
}

/// A generation's records on their way into SQLite.
#[derive(Debug)]
struct Job {
    records: Vec<Lease>,
    /// The generation SQLite holds everything before once they are in.
    next: u64,
}

#[derive(Debug, Default)]
struct CheckpointState {
    /// The job waiting for the thread (or failed, to be retried).
    job: Option<Job>,
    /// The thread is storing a job in SQLite right now.
    running: bool,
    stop: bool,
    /// The last failure of the current job (it is retried every second).
    error: Option<StoreError>,
}

impl CheckpointState {
    /// A job is queued, running, or failed and waiting for its retry.
    fn busy(&self) -> bool {
        self.job.is_some() || self.running
    }
}

/// The background thread that moves a finished generation into SQLite.
#[derive(Debug)]
struct Checkpointer {
    shared: Arc<(Mutex<CheckpointState>, Condvar)>,
    db: Arc<Mutex<SqliteLeases>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// How long a commit waits for a checkpoint that must finish first.
    wait: Duration,
}

impl Checkpointer {
    fn start(db: Arc<Mutex<SqliteLeases>>) -> Result<Checkpointer, StoreError> {
        let shared: Arc<(Mutex<CheckpointState>, Condvar)> = Arc::default();
        let (sh, db2) = (shared.clone(), db.clone());
        let thread = std::thread::Builder::new()
            .name("lease-checkpoint".into())
            .spawn(move || Checkpointer::run(&sh, &db2))
            .map_err(|e| StoreError(format!("cannot start the lease checkpoint thread: {e}")))?;
        Ok(Checkpointer { shared, db, thread: Some(thread), wait: CHECKPOINT_WAIT })
    }

    fn run(shared: &(Mutex<CheckpointState>, Condvar), db: &Mutex<SqliteLeases>) {
        let (m, cv) = shared;
        let mut st = lock(m);
        loop {
            let Some(job) = st.job.take() else {
                if st.stop {
                    return;
                }
                st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            st.running = true;
            drop(st);
            let started = Instant::now();
            let r = lock(db).checkpoint(&job.records, job.next);
            let took = started.elapsed();
            st = lock(m);
            st.running = false;
            match r {
                Ok(()) => {
                    tracing::debug!(records = job.records.len(), generation = job.next, ?took, "lease journal checkpointed");
                    st.error = None;
                }
                Err(e) => {
                    tracing::error!(
                        "moving {} lease record(s) from the journal into SQLite failed (retrying every second; \
                         they are safe in the journal): {e}",
                        job.records.len()
                    );
                    st.error = Some(e);
                    st.job = Some(job);
                    if st.stop {
                        return;
                    }
                    st = cv.wait_timeout(st, Duration::from_secs(1)).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
            cv.notify_all();
        }
    }

    /// Waits (at most `self.wait`) until no checkpoint is queued, failed or running.
    fn wait_idle(&self) -> Result<(), StoreError> {
        let (m, cv) = &*self.shared;
        let started = Instant::now();
        let (st, timeout) = cv
            .wait_timeout_while(lock(m), self.wait, |st| st.busy())
            .unwrap_or_else(|e| e.into_inner());
        let waited = started.elapsed();
        if waited > Duration::from_millis(10) {
            tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                "lease commits waited {waited:?} for the previous journal checkpoint into SQLite (a slow disk, or a journal too small for this rate)"
            );
        }
        if timeout.timed_out() {
            return Err(StoreError(match &st.error {
                Some(e) => format!("the lease journal is full and its checkpoint into SQLite keeps failing: {e}"),
                None => "the lease journal is full and its checkpoint into SQLite is still running".into(),
            }));
        }
        Ok(())
    }

    fn is_idle(&self) -> bool {
        !lock(&self.shared.0).busy()
    }

    fn submit(&self, job: Job) {
        let (m, cv) = &*self.shared;
        lock(m).job = Some(job);
        cv.notify_all();
    }

    fn stop(&mut self) {
        let (m, cv) = &*self.shared;
        lock(m).stop = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl JournaledLeases {
    /// Opens the store in `state_dir` (creating what is missing), replays the journal into SQLite
    /// and locks it against a second server.
    pub fn open(state_dir: &Path) -> Result<JournaledLeases, StoreError> {
        JournaledLeases::open_with(state_dir, Limits::default())
    }

    /// [`JournaledLeases::open`] with other limits.
    pub fn open_with(state_dir: &Path, limits: Limits) -> Result<JournaledLeases, StoreError> {
        let mut db = SqliteLeases::open(state_dir)?;
        let path = state_dir.join(JOURNAL_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(&path, "cannot open", e))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StoreError(format!(
                    "{} is in use by another pixie process; stop it, or give this one its own --state-dir",
                    path.display()
                ))
            } else {
                io_err(&path, "cannot lock", e)
            });
        }
        let stored = db.journal_generation()?;
        let replayed = scan_both(&lock_file, &path, stored)?;
        // Everything replayed goes to SQLite now, and writing starts past both generations the
        // file may hold: no frame now in it is ever replayed again.
        let generation = stored + 2;
        db.checkpoint(&replayed, generation)?;
        if !replayed.is_empty() {
            tracing::info!(records = replayed.len(), journal = %path.display(), "lease journal replayed into SQLite");
        }
        let half = limits.blocks.max(2) / 2;
        let bytes = 2 * half * BLOCK as u64;
        if lock_file.metadata().map_err(|e| io_err(&path, "cannot stat", e))?.len() != bytes {
            preallocate(&lock_file, &path, bytes)?;
        }
        let (file, direct) = open_for_writes(&path, true)?;
        Ok(JournaledLeases {
            path,
            _lock: lock_file,
            file,
            direct,
            half,
            limits,
            generation,
            seq: 0,
            next_block: 0,
            current: Vec::new(),
            oldest: None,
            frame: AlignedBuf::default(),
            payload: Vec::new(),
            checkpointer: Checkpointer::start(Arc::new(Mutex::new(db)))?,
            checkpoint_on_drop: true,
        })
    }

    /// Starts the next generation in the other half and hands the current one to the checkpoint
    /// thread. Waits first if the previous checkpoint has not finished (the other half holds its
    /// frames).
    fn rotate(&mut self) -> Result<(), StoreError> {
        self.checkpointer.wait_idle()?;
        let records = std::mem::take(&mut self.current);
        self.next_generation();
        self.checkpointer.submit(Job { records, next: self.generation });
        Ok(())
    }

    /// Moves writing to the first block of the next generation's half.
    fn next_generation(&mut self) {
        self.generation += 1;
        self.seq = 0;
        self.next_block = 0;
        self.oldest = None;
    }

    /// Moves every journal record into SQLite now (with `batch`, not in the journal, in the same
    /// transaction) and starts a new generation.
    pub fn checkpoint(&mut self, batch: &[Lease]) -> Result<(), StoreError> {
        self.checkpointer.wait_idle()?;
        let mut all = std::mem::take(&mut self.current);
        let kept = all.len();
        all.extend_from_slice(batch);
        let r = lock(&self.checkpointer.db).checkpoint(&all, self.generation + 1);
        match r {
            Ok(()) => {
                self.next_generation();
                Ok(())
            }
            Err(e) => {
                all.truncate(kept);
                self.current = all;
                Err(e)
            }
        }
    }

    #[cfg(test)]
    fn crash(mut self) {
        self.checkpoint_on_drop = false;
    }

    /// Writes the first `frame_len` bytes of the frame buffer at the next block; durable when
    /// this returns.
    fn write_frame(&mut self, frame_len: usize) -> Result<(), StoreError> {
        let at = ((self.generation % 2) * self.half + self.next_block) * BLOCK as u64;
        let frame = self.frame.get(frame_len);
        match self.file.write_all_at(frame, at) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // The file system took O_DIRECT at open but refuses this write (alignment):
                // O_DSYNC alone is just as durable.
                tracing::warn!(journal = %self.path.display(), "O_DIRECT write refused ({e}); using O_DSYNC alone");
                let (file, _) = open_for_writes(&self.path, false)?;
                self.file = file;
                self.direct = false;
                self.file.write_all_at(self.frame.get(frame_len), at)
            }
            r => r,
        }
        .map_err(|e| io_err(&self.path, "journal write failed", e))
    }
}

impl LeaseBackend for JournaledLeases {
    fn load(&mut self) -> Result<Vec<Lease>, StoreError> {
        // `open` replayed the journal into SQLite; after that, SQLite lags by what is queued for
        // the checkpoint and the current generation.
        self.checkpointer.wait_idle()?;
        let rows = lock(&self.checkpointer.db).load()?;
        let mut map = LeaseMap::from_rows(rows);
        self.current.iter().for_each(|l| map.apply(l));
        Ok(map.into_rows())
    }

    fn apply(&mut self, batch: &[Lease]) -> Result<(), StoreError> {
        self.payload.clear();
        for l in batch {
            encode(l, &mut self.payload);
        }
        let frame_len = (HEADER + self.payload.len()).next_multiple_of(BLOCK);
        let frame_blocks = (frame_len / BLOCK) as u64;
        if frame_blocks > self.half {
            // Larger than a whole half: straight into SQLite.
            return self.checkpoint(batch);
        }
        let full = self.next_block + frame_blocks > self.half;
        let due = self.current.len() + batch.len() > self.limits.records
            || self.oldest.is_some_and(|t| t.elapsed() >= self.limits.age);
        // A half that is only "due" moves on when the checkpoint thread is free; a full one must.
        if full || due && self.checkpointer.is_idle() {
            self.rotate()?;
        }
        let buf = self.frame.get(frame_len);
        buf[..4].copy_from_slice(&MAGIC);
        buf[4..12].copy_from_slice(&self.generation.to_le_bytes());
        buf[12..16].copy_from_slice(&self.seq.to_le_bytes());
        buf[16..20].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
        let crc = frame_crc(&buf[4..20], &self.payload);
        buf[20..24].copy_from_slice(&crc.to_le_bytes());
        buf[HEADER..HEADER + self.payload.len()].copy_from_slice(&self.payload);
        buf[HEADER + self.payload.len()..].fill(0);
        self.write_frame(frame_len)?;
        self.next_block += frame_blocks;
        self.seq += 1;
        self.current.extend_from_slice(batch);
        self.oldest.get_or_insert_with(Instant::now);
        Ok(())
    }
}

impl Drop for JournaledLeases {
    fn drop(&mut self) {
        if self.checkpoint_on_drop && !self.current.is_empty() {
            if let Err(e) = self.checkpoint(&[]) {
                tracing::warn!("lease journal not checkpointed at stop (it is replayed at the next start): {e}");
            }
        }
        self.checkpointer.stop();
    }
}

/// Every lease in `state_dir`: SQLite's rows with the journal's records applied, without writing
/// anything (a server may be running). For `pixie leases`.
pub fn read_all(state_dir: &Path) -> Result<Vec<Lease>, StoreError> {
    let mut db = SqliteLeases::open_read_only(state_dir)?;
    let path = state_dir.join(JOURNAL_FILE);
    for _ in 0..10 {
        let (rows, generation) = db.load_with_generation()?;
        let records = match File::open(&path) {
            Ok(f) => scan_both(&f, &path, generation)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&path, "cannot open", e)),
        };
        // A checkpoint that ended while the journal was read may have let a half be reused: read again.
        if db.journal_generation()? != generation {
            continue;
        }
        let mut map = LeaseMap::from_rows(rows);
        records.iter().for_each(|l| map.apply(l));
        return Ok(map.into_rows());
    }
    Err(StoreError(format!("{}: the server checkpointed during every read; try again", path.display())))
}

/// The records of generations `stored` and `stored + 1`, each from its half, in order.
fn scan_both(file: &File, path: &Path, stored: u64) -> Result<Vec<Lease>, StoreError> {
    let len = file.metadata().map_err(|e| io_err(path, "cannot stat", e))?.len();
    let half = len / BLOCK as u64 / 2 * BLOCK as u64;
    let mut out = scan(file, path, stored, (stored % 2) * half, half)?;
    out.extend(scan(file, path, stored + 1, ((stored + 1) % 2) * half, half)?);
    Ok(out)
}

/// The records of every frame of `generation` in the `len` bytes from `start`, in order, up to
/// the first frame that is not the next one (see the module doc).
fn scan(file: &File, path: &Path, generation: u64, start: u64, len: u64) -> Result<Vec<Lease>, StoreError> {
    let end = start + len;
    let mut out = Vec::new();
    let (mut at, mut seq) = (start, 0u32);
    let mut head = [0u8; HEADER];
    let mut payload = Vec::new();
    let read = |buf: &mut [u8], at: u64| file.read_exact_at(buf, at).map_err(|e| io_err(path, "cannot read", e));
    while at + HEADER as u64 <= end {
        read(&mut head, at)?;
        let word = |r: std::ops::Range<usize>| u32::from_le_bytes(head[r].try_into().expect("4 bytes"));
        let frame_gen = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
        let plen = word(16..20) as usize;
        if head[..4] != MAGIC || frame_gen != generation || word(12..16) != seq || at + (HEADER + plen) as u64 > end {
            break;
        }
        payload.resize(plen, 0);
        read(&mut payload, at + HEADER as u64)?;
        if frame_crc(&head[4..20], &payload) != word(20..24) {
            break;
        }
        let mut rest = &payload[..];
        while !rest.is_empty() {
            let l = decode(&mut rest).ok_or_else(|| {
                StoreError(format!(
                    "{}: frame {seq} of generation {generation} (byte {at}) has a good checksum but a \
                     malformed record: written by another pixie version? Move the file away to start \
                     without the leases it holds",
                    path.display()
                ))
            })?;
            out.push(l);
        }
        at += (HEADER + plen).next_multiple_of(BLOCK) as u64;
        seq += 1;
    }
    Ok(out)
}

fn frame_crc(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// Creates the journal's blocks: zeros, written and synced (with the folder's entry).
fn preallocate(file: &File, path: &Path, bytes: u64) -> Result<(), StoreError> {
    let fail = |e| io_err(path, "cannot create the journal", e);
    file.set_len(0).map_err(fail)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < bytes {
        let n = (bytes - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at).map_err(fail)?;
        at += n as u64;
    }
    file.sync_all().map_err(fail)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    }
    Ok(())
}

/// Opens the journal for frame writes: `O_DSYNC`, plus `O_DIRECT` when asked and taken.
fn open_for_writes(path: &Path, direct: bool) -> Result<(File, bool), StoreError> {
    let open = |flags| OpenOptions::new().write(true).custom_flags(flags).open(path);
    if direct {
        match open(libc::O_DSYNC | libc::O_DIRECT) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(journal = %path.display(), "no O_DIRECT on this file system; journal writes use O_DSYNC");
            }
            Err(e) => return Err(io_err(path, "cannot open", e)),
        }
    }
    open(libc::O_DSYNC).map(|f| (f, false)).map_err(|e| io_err(path, "cannot open", e))
}

/// Appends one record: address (4, big endian), state (1), expires (8, LE), then client, hardware
/// address and hostname, each as a 16-bit LE length and bytes (hostname length 0xffff: none).
pub fn encode(l: &Lease, out: &mut Vec<u8>) {
    let field = |out: &mut Vec<u8>, b: &[u8]| {
        let b = &b[..b.len().min(usize::from(u16::MAX - 1))];
        out.extend_from_slice(&(b.len() as u16).to_le_bytes());
        out.extend_from_slice(b);
    };
    out.extend_from_slice(&l.ip.octets());
    out.push(match l.state {
        LeaseState::Bound => 0,
        LeaseState::Released => 1,
        LeaseState::Declined => 2,
        LeaseState::Offered => 3,
    });
    out.extend_from_slice(&l.expires.to_le_bytes());
    field(out, &l.client);
    field(out, &l.mac.0);
    match &l.hostname {
        Some(h) => field(out, h.as_bytes()),
        None => out.extend_from_slice(&NO_HOSTNAME.to_le_bytes()),
    }
}

/// Reads one record written by [`encode`] off the front of `buf`.
pub fn decode(buf: &mut &[u8]) -> Option<Lease> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = buf.split_at_checked(n)?;
        *buf = rest;
        Some(head)
    }
    fn len16(buf: &mut &[u8]) -> Option<u16> {
        take(buf, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    let ip: [u8; 4] = take(buf, 4)?.try_into().ok()?;
    let state = match take(buf, 1)?[0] {
        0 => LeaseState::Bound,
        1 => LeaseState::Released,
        2 => LeaseState::Declined,
        3 => LeaseState::Offered,
        _ => return None,
    };
    let expires = u64::from_le_bytes(take(buf, 8)?.try_into().ok()?);
    let n = len16(buf)?;
    let client = take(buf, n.into())?.to_vec();
    let n = len16(buf)?;
    let mac = HwAddr(take(buf, n.into())?.to_vec());
    let hostname = match len16(buf)? {
        NO_HOSTNAME => None,
        n => Some(String::from_utf8(take(buf, n.into())?.to_vec()).ok()?),
    };
    Some(Lease { ip: ip.into(), client, mac, hostname, state, expires })
}

/// A zeroed byte buffer whose start is aligned to [`BLOCK`] (what `O_DIRECT` asks of memory).
#[derive(Debug, Default)]
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    /// The first `len` aligned bytes (growing the buffer if needed).
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.raw.len() < self.start + len {
            self.raw = vec![0u8; len + BLOCK];
            self.start = self.raw.as_ptr().align_offset(BLOCK);
        }
        &mut self.raw[self.start..self.start + len]
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::leases::memory::MemoryLeases;

    fn lease(ip: u8, client: u8, state: LeaseState, expires: u64) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, ip),
            client: if state == LeaseState::Declined { Vec::new() } else { vec![1, client] },
            mac: HwAddr(vec![2, 0, 0, 0, 0, client]),
            hostname: (client % 2 == 0).then(|| format!("host-{client}")),
            state,
            expires,
        }
    }

    /// Batches covering every rule: moves, releases, declines, re-binds, a long client id.
    fn batches() -> Vec<Vec<Lease>> {
        let mut long = lease(40, 40, LeaseState::Bound, 900);
        long.client = (0..=255).map(|i| i as u8).collect();
        long.hostname = Some("é".repeat(100));
        vec![
            vec![lease(1, 1, LeaseState::Bound, 100), lease(2, 2, LeaseState::Bound, 100)],
            vec![lease(3, 1, LeaseState::Bound, 200)], // client 1 moves from .1 to .3
            vec![lease(2, 2, LeaseState::Released, 300), lease(9, 0, LeaseState::Declined, 400), long],
            (10..60).map(|i| lease(i + 100, i, LeaseState::Bound, 500 + u64::from(i))).collect(),
            vec![lease(2, 2, LeaseState::Bound, 600)],
            // Durable offers: a fresh one, one that moves client 1 from .3, then the first is
            // acknowledged.
            vec![lease(61, 61, LeaseState::Offered, 700), lease(62, 1, LeaseState::Offered, 700)],
            vec![lease(61, 61, LeaseState::Bound, 700)],
        ]
    }

    fn expected(batches: &[Vec<Lease>]) -> Vec<Lease> {
        let mut mem = MemoryLeases::default();
        batches.iter().for_each(|b| mem.apply(b).unwrap());
        mem.rows()
    }

    #[test]
    fn records_round_trip() {
        for l in batches().concat() {
            let mut buf = Vec::new();
            encode(&l, &mut buf);
            buf.extend_from_slice(b"next");
            let mut rest = &buf[..];
            assert_eq!(decode(&mut rest).as_ref(), Some(&l));
            assert_eq!(rest, b"next");
            for cut in 0..buf.len() - 4 {
                assert_eq!(decode(&mut &buf[..cut]), None, "a record cut at {cut} decoded");
            }
        }
    }

    #[test]
    fn a_crash_loses_nothing_and_the_restart_moves_the_journal_into_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = JournaledLeases::open(dir.path()).unwrap();
        for b in batches() {
            j.apply(&b).unwrap();
        }
        assert_eq!(j.current.len(), batches().concat().len(), "nothing should be checkpointed yet");
        j.crash();
        let want = expected(&batches());
        // SQLite alone does not have them yet; the journal does.
        assert!(SqliteLeases::open_read_only(dir.path()).unwrap().load().unwrap().is_empty());
        assert_eq!(read_all(dir.path()).unwrap(), want);
        // A restart replays them into SQLite and starts a new generation.
        let mut j = JournaledLeases::open(dir.path()).unwrap();
        assert_eq!(j.load().unwrap(), want);
        assert_eq!(j.current.len(), 0);
        drop(j);
        assert_eq!(SqliteLeases::open_read_only(dir.path()).unwrap().load().unwrap(), want);
        assert_eq!(read_all(dir.path()).unwrap(), want);
    }

    #[test]
    fn a_torn_last_frame_is_where_the_journal_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = JournaledLeases::open(dir.path()).unwrap();
        let b = batches();
        for batch in &b {
            j.apply(batch).unwrap();
        }
        let last_frame = ((j.generation % 2) * j.half + j.next_block - 1) * BLOCK as u64;
        j.crash();
        // Damage one payload byte of the last frame (as a write cut short by the crash would).
        let f = OpenOptions::new().read(true).write(true).open(dir.path().join(JOURNAL_FILE)).unwrap();
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, last_frame + HEADER as u64 + 5).unwrap();
        f.write_all_at(&[byte[0] ^ 0x40], last_frame + HEADER as u64 + 5).unwrap();
        assert_eq!(read_all(dir.path()).unwrap(), expected(&b[..b.len() - 1]));
    }

    #[test]
    fn frames_of_an_older_generation_are_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = JournaledLeases::open(dir.path()).unwrap();
        // Generation g, in its half: frame 0 binds .5 until 100, frame 1 binds it again until 150.
        j.apply(&[lease(5, 7, LeaseState::Bound, 100)]).unwrap();
        j.apply(&[lease(5, 7, LeaseState::Bound, 150)]).unwrap();
        j.checkpoint(&[]).unwrap();
        // Generation g + 1, in the other half.
        j.apply(&[lease(6, 8, LeaseState::Bound, 160)]).unwrap();
        j.checkpoint(&[]).unwrap();
        // Generation g + 2, back in the first half, over the old frame 0: the client releases .5.
        j.apply(&[lease(5, 7, LeaseState::Released, 200)]).unwrap();
        j.crash();
        // Block 1 still holds generation g's frame 1, whose sequence number (1) is the next one
        // after frame 0: only the generation tells that it is stale.
        let want = vec![lease(5, 7, LeaseState::Released, 200), lease(6, 8, LeaseState::Bound, 160)];
        assert_eq!(read_all(dir.path()).unwrap(), want);
        assert_eq!(JournaledLeases::open(dir.path()).unwrap().load().unwrap(), want);
    }

    #[test]
    fn commits_go_on_while_a_checkpoint_runs_and_both_generations_are_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits { blocks: 8, records: 1000, age: Duration::from_secs(3600) };
        let mut j = JournaledLeases::open_with(dir.path(), limits).unwrap();
        let mut all = Vec::new();
        // The checkpoint thread cannot reach SQLite while this is held: a slow checkpoint.
        let db = j.checkpointer.db.clone();
        let held = lock(&db);
        let g = j.generation;
        for i in 0..7u8 {
            let b = vec![lease(i, i, LeaseState::Bound, 100 + u64::from(i))];
            let t = Instant::now();
            j.apply(&b).unwrap();
            assert!(t.elapsed() < Duration::from_secs(2), "a commit waited for the checkpoint");
            all.push(b);
        }
        // Four frames filled generation g's half; the next three went to the other half.
        assert_eq!(j.generation, g + 1);
        assert!(!j.checkpointer.is_idle());
        // What a crash now would leave: SQLite without either generation.
        assert_eq!(read_all(dir.path()).unwrap(), expected(&all));
        let copy = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
        }
        assert_eq!(JournaledLeases::open(copy.path()).unwrap().load().unwrap(), expected(&all));
        // The eighth frame fills generation g + 1's half; the ninth needs the first half back,
        // whose frames the stuck checkpoint has not stored yet: it waits, then fails (no ACK).
        let b8 = vec![lease(7, 7, LeaseState::Bound, 107)];
        j.apply(&b8).unwrap();
        all.push(b8);
        j.checkpointer.wait = Duration::from_millis(300);
        let b9 = vec![lease(8, 8, LeaseState::Bound, 108)];
        let e = j.apply(&b9).unwrap_err();
        assert!(e.0.contains("still running"), "{e}");
        assert_eq!(read_all(dir.path()).unwrap(), expected(&all), "a refused batch was stored, or a frame lost");
        drop(held);
        j.checkpointer.wait = Duration::from_secs(20);
        j.checkpointer.wait_idle().unwrap();
        assert_eq!(SqliteLeases::open_read_only(dir.path()).unwrap().load().unwrap(), expected(&all[..4]));
        j.apply(&b9).unwrap();
        all.push(b9);
        assert_eq!(j.generation, g + 2);
        j.crash();
        assert_eq!(read_all(dir.path()).unwrap(), expected(&all));
        assert_eq!(JournaledLeases::open(dir.path()).unwrap().load().unwrap(), expected(&all));
    }

    #[test]
    fn checkpoints_come_with_the_limits_and_the_journal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits { blocks: 8, records: 10, age: Duration::from_secs(3600) };
        let mut j = JournaledLeases::open_with(dir.path(), limits).unwrap();
        let g0 = j.generation;
        let mut all = Vec::new();
        for i in 0..30u8 {
            let b = vec![lease(i, i, LeaseState::Bound, 100 + u64::from(i))];
            j.apply(&b).unwrap();
            all.push(b);
            assert!(j.current.len() <= 10 && j.next_block <= j.half, "{} records, block {}", j.current.len(), j.next_block);
        }
        assert!(j.generation >= g0 + 7, "30 one-record frames in halves of 4 blocks: {} checkpoints", j.generation - g0);
        j.crash();
        assert_eq!(read_all(dir.path()).unwrap(), expected(&all));
        assert_eq!(JournaledLeases::open(dir.path()).unwrap().load().unwrap(), expected(&all));
        // A batch larger than the whole journal goes straight to SQLite.
        let mut j = JournaledLeases::open_with(dir.path(), Limits { blocks: 1, ..limits }).unwrap();
        let big: Vec<Lease> = (0..200u8).map(|i| lease(i, i, LeaseState::Released, 7)).collect();
        j.apply(&big).unwrap();
        assert_eq!(j.current.len(), 0);
    }

    #[test]
    fn the_journal_is_written_synchronously_and_locked_against_a_second_server() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournaledLeases::open(dir.path()).unwrap();
        // The write handle's flags, as the kernel reports them (octal).
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", j.file.as_raw_fd())).unwrap();
        let flags = fdinfo.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
        let flags = i32::from_str_radix(flags, 8).unwrap();
        assert_ne!(flags & libc::O_DSYNC, 0, "journal writes are not O_DSYNC: {fdinfo}");
        assert_eq!(flags & libc::O_DIRECT != 0, j.direct);
        if !j.direct {
            println!("note: no O_DIRECT for the journal on this file system (O_DSYNC alone)");
        }
        let e = JournaledLeases::open(dir.path()).unwrap_err();
        assert!(e.0.contains("in use by another pixie process"), "{e}");
        drop(j);
        JournaledLeases::open(dir.path()).unwrap();
    }
}
