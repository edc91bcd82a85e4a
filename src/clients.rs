//! Which MAC was last seen at which client address.
//!
//! DHCP learns it, TFTP and HTTP read it so file hooks can key on the machine, not the address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::policy::HwAddr;

/// How long an address → MAC mapping stays valid.
pub const CLIENT_TTL: Duration = Duration::from_secs(600);
/// Upper bound on remembered clients (oldest are evicted past it).
pub const MAX_CLIENTS: usize = 65_536;

/// A cheap-to-clone handle on the shared client table.
#[derive(Debug, Clone, Default)]
pub struct ClientTable {
    // std Mutex, not tokio's: nothing awaits while it is held, and holds are a map lookup long.
    inner: Arc<Mutex<HashMap<IpAddr, (HwAddr, Instant)>>>,
}

impl ClientTable {
    /// Remembers that `mac` was seen at `ip` now.
    pub fn record(&self, ip: IpAddr, mac: HwAddr) {
        if ip.is_unspecified() {
            return;
        }
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() >= MAX_CLIENTS && !map.contains_key(&ip) {
            map.retain(|_, (_, seen)| now.duration_since(*seen) < CLIENT_TTL);
            if map.len() >= MAX_CLIENTS {
                if let Some(oldest) = map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(ip, (mac, now));
    }

    /// The MAC last seen at `ip`, if seen within [`CLIENT_TTL`].
    pub fn lookup(&self, ip: IpAddr) -> Option<HwAddr> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip)
            .filter(|(_, seen)| seen.elapsed() < CLIENT_TTL)
            .map(|(mac, _)| mac.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_looks_up() {
        let t = ClientTable::default();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(t.lookup(ip).is_none());
        t.record(ip, HwAddr(vec![1, 2, 3, 4, 5, 6]));
        assert_eq!(t.lookup(ip).unwrap().to_string(), "01:02:03:04:05:06");
        t.record("0.0.0.0".parse().unwrap(), HwAddr(vec![9]));
        assert!(t.lookup("0.0.0.0".parse().unwrap()).is_none());
    }
}
