//! An in-memory [`LeaseBackend`] for tests: the same semantics as SQLite, no disk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Lease, LeaseBackend, LeaseMap, StoreError};

/// Leases in a map shared by every clone (so a test keeps a handle to inspect).
#[derive(Debug, Clone, Default)]
pub struct MemoryLeases {
    rows: Arc<Mutex<LeaseMap>>,
    fail: Arc<AtomicBool>,
    /// Time every `apply` takes, like an fsync (microseconds).
    delay_us: Arc<AtomicU64>,
}

impl MemoryLeases {
    /// Every row, ordered by address.
    pub fn rows(&self) -> Vec<Lease> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).rows().cloned().collect()
    }

    /// Makes every following `apply` fail (`true`) or succeed again (`false`).
    pub fn fail_next(&self, fail: bool) {
        self.fail.store(fail, Ordering::Relaxed);
    }

    /// Makes every following `apply` take `d` (a stand-in for an fsync).
    pub fn set_delay(&self, d: std::time::Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }
}

impl LeaseBackend for MemoryLeases {
    fn load(&mut self) -> Result<Vec<Lease>, StoreError> {
        Ok(self.rows())
    }

    fn apply(&mut self, batch: &[Lease]) -> Result<(), StoreError> {
        let delay = self.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_micros(delay));
        }
        if self.fail.load(Ordering::Relaxed) {
            return Err(StoreError("injected failure".into()));
        }
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        for l in batch {
            rows.apply(l);
        }
        Ok(())
    }
}
