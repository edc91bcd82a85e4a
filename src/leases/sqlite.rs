//! The SQLite [`LeaseBackend`]: table `dhcp4_leases` in `<state_dir>/pixie.db`.
//!
//! The database file is shared with the per-host store (table `host_store`); both open it in
//! WAL mode with a busy timeout, so a reader (`pixie leases`) or the other writer never fails
//! on a lock. `synchronous = FULL`: in WAL mode each commit fsyncs the log, which is what makes
//! a returned [`LeaseBackend::apply`] durable across power loss, not only across `kill -9`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::{Lease, LeaseBackend, LeaseState, StoreError};
use crate::policy::HwAddr;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dhcp4_leases (
    ip       INTEGER PRIMARY KEY,   -- IPv4 address as a 32-bit number
    client   BLOB NOT NULL,         -- option 61, else htype + chaddr; empty when declined
    mac      TEXT NOT NULL,         -- aa:bb:cc:dd:ee:ff
    hostname TEXT,
    state    TEXT NOT NULL,         -- bound | released | declined | offered
    expires  INTEGER NOT NULL,      -- Unix seconds
    updated  INTEGER NOT NULL       -- Unix seconds of the last write
);
CREATE INDEX IF NOT EXISTS dhcp4_leases_client ON dhcp4_leases(client);
-- The generation of the lease journal (src/leases/journal.rs) whose records this table already
-- holds: frames of an older generation are never replayed. Written in the checkpoint's transaction.
CREATE TABLE IF NOT EXISTS lease_journal (
    id         INTEGER PRIMARY KEY CHECK (id = 0),
    generation INTEGER NOT NULL
);
";

fn err(e: rusqlite::Error) -> StoreError {
    StoreError(e.to_string())
}

/// Leases in SQLite.
#[derive(Debug)]
pub struct SqliteLeases {
    conn: Connection,
}

impl SqliteLeases {
    /// Opens (creating the folder, file and table as needed) `<state_dir>/pixie.db`.
    pub fn open(state_dir: &Path) -> Result<SqliteLeases, StoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| StoreError(format!("cannot create state folder {}: {e}", state_dir.display())))?;
        let path = state_dir.join(super::DB_FILE);
        let conn = Connection::open(&path).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError(format!("{}: cannot switch to WAL mode (got {mode})", path.display())));
        }
        conn.execute_batch("PRAGMA synchronous=FULL;").map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(SqliteLeases { conn })
    }

    /// Opens an existing database read-only (for `pixie leases`).
    pub fn open_read_only(state_dir: &Path) -> Result<SqliteLeases, StoreError> {
        let path = state_dir.join(super::DB_FILE);
        if !path.is_file() {
            return Err(StoreError(format!(
                "{} does not exist (no leases yet, or pass --state-dir DIR)",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        Ok(SqliteLeases { conn })
    }
}

impl LeaseBackend for SqliteLeases {
    fn load(&mut self) -> Result<Vec<Lease>, StoreError> {
        read_rows(&self.conn)
    }

    fn apply(&mut self, batch: &[Lease]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(err)?;
        write_rows(&tx, batch)?;
        tx.commit().map_err(err)
    }
}

impl SqliteLeases {
    /// The journal generation this table holds everything of (0: none recorded yet).
    pub fn journal_generation(&self) -> Result<u64, StoreError> {
        journal_generation(&self.conn)
    }

    /// Every lease and the journal generation they include, read in one transaction (so a
    /// checkpoint by the server cannot fall between the two reads).
    pub fn load_with_generation(&mut self) -> Result<(Vec<Lease>, u64), StoreError> {
        let tx = self.conn.transaction().map_err(err)?;
        let rows = read_rows(&tx)?;
        let generation = journal_generation(&tx)?;
        tx.commit().map_err(err)?;
        Ok((rows, generation))
    }

    /// Stores `batch` (as [`LeaseBackend::apply`]) and records `generation` as the journal
    /// generation the table now holds, in one durable transaction.
    pub fn checkpoint(&mut self, batch: &[Lease], generation: u64) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(err)?;
        write_rows(&tx, batch)?;
        tx.execute("INSERT OR REPLACE INTO lease_journal (id, generation) VALUES (0, ?1)", params![generation as i64])
            .map_err(err)?;
        tx.commit().map_err(err)
    }
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    let n: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?1", [name], |r| r.get(0))
        .map_err(err)?;
    Ok(n > 0)
}

fn journal_generation(conn: &Connection) -> Result<u64, StoreError> {
    if !table_exists(conn, "lease_journal")? {
        return Ok(0);
    }
    let g: Option<i64> = conn
        .query_row("SELECT generation FROM lease_journal WHERE id = 0", [], |r| r.get(0))
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
        .map_err(err)?;
    Ok(g.unwrap_or(0).max(0) as u64)
}

/// Every lease row (none when the table does not exist yet).
fn read_rows(conn: &Connection) -> Result<Vec<Lease>, StoreError> {
    if !table_exists(conn, "dhcp4_leases")? {
        return Ok(Vec::new());
    }
    let mut st = conn
        .prepare("SELECT ip, client, mac, hostname, state, expires FROM dhcp4_leases ORDER BY ip")
        .map_err(err)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .map_err(err)?;
    let mut out = Vec::new();
    for row in rows {
        let (ip, client, mac, hostname, state, expires) = row.map_err(err)?;
        let state = LeaseState::from_name(&state)
            .ok_or_else(|| StoreError(format!("row {ip}: unknown state '{state}'")))?;
        out.push(Lease {
            ip: Ipv4Addr::from(ip as u32),
            client,
            mac: mac.parse().unwrap_or(HwAddr(Vec::new())),
            hostname,
            state,
            expires: expires.max(0) as u64,
        });
    }
    Ok(out)
}

/// Writes `batch` inside the caller's transaction (see [`LeaseBackend::apply`]).
fn write_rows(tx: &Connection, batch: &[Lease]) -> Result<(), StoreError> {
    let now = super::unix_now() as i64;
    let mut moved = tx
        .prepare_cached("DELETE FROM dhcp4_leases WHERE client = ?1 AND ip <> ?2")
        .map_err(err)?;
    let mut put = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO dhcp4_leases (ip, client, mac, hostname, state, expires, updated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(err)?;
    for l in batch {
        let ip = u32::from(l.ip) as i64;
        if l.state.held() && !l.client.is_empty() {
            moved.execute(params![l.client, ip]).map_err(err)?;
        }
        put.execute(params![
            ip,
            l.client,
            l.mac.to_string(),
            l.hostname,
            l.state.as_str(),
            l.expires as i64,
            now
        ])
        .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wal() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteLeases::open(dir.path()).unwrap();
        let l = Lease {
            ip: Ipv4Addr::new(10, 0, 0, 9),
            client: vec![1, 2, 3],
            mac: HwAddr(vec![2, 0, 0, 0, 0, 9]),
            hostname: Some("h".into()),
            state: LeaseState::Bound,
            expires: 1234,
        };
        s.apply(std::slice::from_ref(&l)).unwrap();
        let moved = Lease { ip: Ipv4Addr::new(10, 0, 0, 10), ..l.clone() };
        s.apply(std::slice::from_ref(&moved)).unwrap();
        drop(s);
        let mut r = SqliteLeases::open_read_only(dir.path()).unwrap();
        assert_eq!(r.load().unwrap(), vec![moved]);
        let mode: String = r.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    /// Makes `fsync` fail with EPERM on the calling thread (a seccomp filter: the thread's own,
    /// not inherited by the rest of the process). Err: seccomp is not available here.
    fn forbid_fsync_on_this_thread() -> std::io::Result<()> {
        use libc::{sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
        let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter { code: code as u16, jt, jf, k };
        let filter = [
            // The system call number is the first word of `struct seccomp_data`.
            op(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),
            op(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, libc::SYS_fsync as u32),
            op(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
            op(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
        // SAFETY: plain prctl calls; `prog` and `filter` outlive the second one, which copies them.
        let ok = unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                && libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const sock_fprog) == 0
        };
        if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }

    /// A commit syncs with `fdatasync` (no inode write for the mtime), not `fsync`: SQLite only
    /// does so when built with HAVE_FDATASYNC, which `.cargo/config.toml` sets. With `fsync`
    /// forbidden on its thread, a commit must still succeed, and `fsync` must really be refused
    /// there (else this test proves nothing).
    #[test]
    fn commits_sync_with_fdatasync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            if let Err(e) = forbid_fsync_on_this_thread() {
                println!("SKIPPED: commits_sync_with_fdatasync: no seccomp filters here ({e})");
                return;
            }
            let f = std::fs::File::create(path.join("probe")).unwrap();
            assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(libc::EPERM), "fsync is not forbidden");
            let mut s = SqliteLeases::open(&path).unwrap();
            let l = Lease {
                ip: Ipv4Addr::new(10, 0, 0, 9),
                client: vec![1, 2, 3],
                mac: HwAddr(vec![2, 0, 0, 0, 0, 9]),
                hostname: None,
                state: LeaseState::Bound,
                expires: 1234,
            };
            s.apply(std::slice::from_ref(&l)).expect(
                "a lease commit called fsync: is SQLite built with -DHAVE_FDATASYNC=1 (LIBSQLITE3_FLAGS, .cargo/config.toml)?",
            );
        })
        .join()
        .unwrap();
    }
}
