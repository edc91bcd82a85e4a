//! The per-host store: small pieces of state that policy scripts keep across requests and
//! restarts (`store.get/set/del` in Rhai), e.g. "this machine is installed, boot it from disk".
//!
//! Keys are strings chosen by the scripts (usually the client's MAC, or `mac/what`); values are
//! JSON values (strings, numbers, booleans, arrays, maps). Two implementations sit behind the
//! [`HostStore`] trait:
//! - [`SqliteStore`]: table `host_store` in `<state_dir>/pixie.db`, the same SQLite file as the
//!   DHCP leases (which keep their own tables). WAL mode so readers never wait for a writer,
//!   `synchronous = FULL` so a `set` is on disk before it returns (the hook that called it has
//!   not returned yet either), and a busy timeout so `pixie store set` may run beside
//!   `pixie serve`.
//! - [`MemoryStore`]: for `pixie simulate`, `pixie test` and unit tests.
//!
//! Both are safe to call from many threads at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

/// The database file inside the state folder.
pub const DB_FILE: &str = "pixie.db";
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Largest value, in bytes of its JSON text.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// How long a writer waits for another process holding the database (e.g. the CLI beside
/// `pixie serve`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Value,
    /// When it was last set, seconds since the Unix epoch.
    pub updated: i64,
}

/// Why the store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key or value breaks the store's rules; the message says which and what to do.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("{path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The state folder could not be created.
    #[error("cannot create the state folder {path}: {source}")]
    Dir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stored value is not valid JSON (the file was edited by hand?).
    #[error("{path}: the value of `{key}` is not valid JSON: {message}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The key.
        key: String,
        /// serde_json's message.
        message: String,
    },
}

/// Key/value state shared by every request, every policy generation and (for
/// [`SqliteStore`]) every restart.
pub trait HostStore: Send + Sync + fmt::Debug {
    /// The value of `key`, `None` if it has none.
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError>;
    /// Sets `key`; durable when this returns.
    fn set(&self, key: &str, value: &Value) -> Result<(), StoreError>;
    /// Removes `key`; whether it existed.
    fn del(&self, key: &str) -> Result<bool, StoreError>;
    /// Every entry, sorted by key.
    fn list(&self) -> Result<Vec<Entry>, StoreError>;
}

/// Checks a key and a value against the store's rules.
pub fn validate(key: &str, value: Option<&Value>) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid(
            "store keys must not be empty; use e.g. the client's MAC (req.mac)".into(),
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::Invalid(format!(
            "store key of {} bytes is longer than {MAX_KEY_LEN}; use a shorter key such as the MAC",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "store key {key:?} contains control characters; use printable text"
        )));
    }
    if let Some(v) = value {
        if v.is_null() {
            return Err(StoreError::Invalid(format!(
                "cannot store () under `{key}`; to remove the key use store.del(key)"
            )));
        }
        let len = v.to_string().len();
        if len > MAX_VALUE_LEN {
            return Err(StoreError::Invalid(format!(
                "the value for `{key}` is {len} bytes as JSON, more than {MAX_VALUE_LEN}; keep \
                 per-host state small (store a name, not a file)"
            )));
        }
    }
    Ok(())
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A store in memory: lost when the process ends.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// std Mutex: held only for a map operation, never across an await.
    map: Mutex<BTreeMap<String, (Value, i64)>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl HostStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.map.lock().expect("store poisoned").get(key).map(|(v, _)| v.clone()))
    }

    fn set(&self, key: &str, value: &Value) -> Result<(), StoreError> {
        validate(key, Some(value))?;
        self.map
            .lock()
            .expect("store poisoned")
            .insert(key.to_string(), (value.clone(), unix_now()));
        Ok(())
    }

    fn del(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.map.lock().expect("store poisoned").remove(key).is_some())
    }

    fn list(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .map
            .lock()
            .expect("store poisoned")
            .iter()
            .map(|(k, (v, t))| Entry { key: k.clone(), value: v.clone(), updated: *t })
            .collect())
    }
}

/// The store in `<state_dir>/pixie.db`, table `host_store`.
pub struct SqliteStore {
    path: PathBuf,
    /// One connection, serialised: each operation is a single short statement, and SQLite
    /// serialises writers anyway. std Mutex: never held across an await.
    conn: Mutex<rusqlite::Connection>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `<state_dir>/pixie.db` and its `host_store` table.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| StoreError::Dir { path: state_dir.to_path_buf(), source })?;
        let path = state_dir.join(DB_FILE);
        let db = |source| StoreError::Db { path: path.clone(), source };
        let conn = rusqlite::Connection::open(&path).map_err(db)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        // WAL: readers do not block the writer (and the lease tables share the file).
        // FULL: a committed `set` survives a power cut, not just a crash of pixie.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS host_store (
                 key TEXT PRIMARY KEY NOT NULL,
                 value TEXT NOT NULL,
                 updated INTEGER NOT NULL
             );",
        )
        .map_err(db)?;
        Ok(SqliteStore { path, conn: Mutex::new(conn) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Db { path: self.path.clone(), source }
    }

    fn parse(&self, key: &str, text: &str) -> Result<Value, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            message: e.to_string(),
        })
    }
}

impl HostStore for SqliteStore {
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        use rusqlite::OptionalExtension;
        let conn = self.conn.lock().expect("store poisoned");
        let text: Option<String> = conn
            .prepare_cached("SELECT value FROM host_store WHERE key = ?1")
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(|e| self.db(e))?;
        text.map(|t| self.parse(key, &t)).transpose()
    }

    fn set(&self, key: &str, value: &Value) -> Result<(), StoreError> {
        validate(key, Some(value))?;
        let conn = self.conn.lock().expect("store poisoned");
        conn.prepare_cached(
            "INSERT INTO host_store (key, value, updated) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
        )
        .and_then(|mut s| s.execute(rusqlite::params![key, value.to_string(), unix_now()]))
        .map_err(|e| self.db(e))?;
        Ok(())
    }

    fn del(&self, key: &str) -> Result<bool, StoreError> {
        let conn = self.conn.lock().expect("store poisoned");
        let n = conn
            .prepare_cached("DELETE FROM host_store WHERE key = ?1")
            .and_then(|mut s| s.execute([key]))
            .map_err(|e| self.db(e))?;
        Ok(n > 0)
    }

    fn list(&self) -> Result<Vec<Entry>, StoreError> {
        let conn = self.conn.lock().expect("store poisoned");
        let rows: Vec<(String, String, i64)> = conn
            .prepare_cached("SELECT key, value, updated FROM host_store ORDER BY key")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect()
            })
            .map_err(|e| self.db(e))?;
        drop(conn);
        rows.into_iter()
            .map(|(key, text, updated)| {
                let value = self.parse(&key, &text)?;
                Ok(Entry { key, value, updated })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exercise(s: &dyn HostStore) {
        assert_eq!(s.get("a").unwrap(), None);
        s.set("a", &json!({"state": "installed", "n": 2})).unwrap();
        s.set("b", &json!("text")).unwrap();
        s.set("a", &json!({"state": "local"})).unwrap();
        assert_eq!(s.get("a").unwrap(), Some(json!({"state": "local"})));
        let keys: Vec<String> = s.list().unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["a", "b"]);
        assert!(s.del("b").unwrap());
        assert!(!s.del("b").unwrap());
        let e = s.set("", &json!(1)).unwrap_err().to_string();
        assert!(e.contains("must not be empty"), "{e}");
        let e = s.set("k", &Value::Null).unwrap_err().to_string();
        assert!(e.contains("store.del"), "{e}");
        let big = "x".repeat(MAX_VALUE_LEN + 1);
        assert!(s.set("k", &json!(big)).is_err());
    }

    #[test]
    fn memory_store_follows_the_contract() {
        exercise(&MemoryStore::new());
    }

    #[test]
    fn sqlite_store_follows_the_contract_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        {
            let s = SqliteStore::open(&state).unwrap();
            exercise(&s);
        }
        let s = SqliteStore::open(&state).unwrap();
        assert_eq!(s.get("a").unwrap(), Some(json!({"state": "local"})));
        let mode: String = s
            .conn
            .lock()
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
