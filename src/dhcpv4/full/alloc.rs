//! The in-memory lease table: which address is offered, bound, released or quarantined, and
//! the allocator that picks an address for a client. Sans-IO: time comes in as Unix seconds,
//! persistence is the caller's job (it writes the [`Lease`] records this table hands back).
//!
//! Invariant: an address has at most one slot, and a client (key) maps to at most one address,
//! so an address is never given to two clients at once. Callers hold the table's lock for the
//! whole check-and-mark step (a `std::sync::Mutex`: nothing awaits while it is held); the
//! durable write happens after, with [`LeaseTable::rollback`] if it fails.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::config::Subnet;
use crate::leases::{Lease, LeaseState};
use crate::policy::HwAddr;

/// State of one address in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Offered (not persisted); held until `until`.
    Offered,
    /// Acknowledged until `until`.
    Bound,
    /// Given back; free, but remembered so the client gets it again.
    Released,
    /// Declined: quarantined until `until`.
    Declined,
}

/// One address's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Client key (empty while declined).
    pub client: Vec<u8>,
    /// Client MAC.
    pub mac: HwAddr,
    /// Option 12.
    pub hostname: Option<String>,
    /// State.
    pub state: SlotState,
    /// Unix seconds the state lasts until.
    pub until: u64,
    /// Until when the store holds this address for this client (Unix seconds; 0: it does
    /// not): an ACK that ends no later needs no write of its own ([`LeaseTable::bind`]).
    pub stored_until: u64,
    /// Whether that stored record is a durable offer ([`LeaseState::Offered`]) rather than a
    /// bound lease.
    pub stored_offer: bool,
}

impl Slot {
    /// The store's record for this slot's client at `ip`.
    fn record(&self, ip: Ipv4Addr, state: LeaseState, expires: u64) -> Lease {
        Lease { ip, client: self.client.clone(), mac: self.mac.clone(), hostname: self.hostname.clone(), state, expires }
    }

    /// Whether the address is unavailable to other clients at `now`.
    pub fn busy(&self, now: u64) -> bool {
        self.state != SlotState::Released && self.until > now
    }
}

/// Why no address could be offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// Every pool address of the subnet is in use or quarantined.
    Exhausted,
    /// The policy pinned an address that cannot be given to this client.
    Reserved(Ipv4Addr, &'static str),
}

/// [`LeaseTable::bind`] refused: another client holds the address (or it is quarantined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken;

/// What an ACK needs from the store ([`LeaseTable::bind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// This record, durable before the ACK leaves.
    Write(Lease),
    /// Nothing: the store already holds the lease for as long (a durable offer, or an earlier
    /// write). `Some`: a record to store after the ACK, turning a stored offer into a bound
    /// lease for `pixie leases`; nothing waits for it, and it ends no sooner than the offer did.
    Stored(Option<Lease>),
}

/// What [`LeaseTable::bind`] changed, to undo it if the durable write fails.
#[derive(Debug, Clone)]
pub struct Undo {
    slots: Vec<(Ipv4Addr, Option<Slot>)>,
    client: (Vec<u8>, Option<Ipv4Addr>),
}

#[derive(Debug, Default, Clone)]
struct PoolCursor {
    /// Next never-used candidate (offset in the pool).
    fresh: u64,
    /// Set once a whole pass found no never-used address.
    fresh_done: bool,
    /// Next reuse candidate (offset).
    reuse: u64,
}

/// Every address pixie knows about, plus allocation cursors.
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_ip: HashMap<Ipv4Addr, Slot>,
    by_client: HashMap<Vec<u8>, Ipv4Addr>,
    /// Per subnet (index in the config), per pool.
    cursors: HashMap<(usize, usize), PoolCursor>,
    /// Per subnet: no free address until this second (saves rescanning a full pool).
    exhausted_until: HashMap<usize, u64>,
}

impl LeaseTable {
    /// A table holding the stored leases.
    pub fn from_leases(leases: Vec<Lease>) -> LeaseTable {
        let mut t = LeaseTable::default();
        for l in leases {
            let state = match l.state {
                // A stored offer may have been acknowledged before the restart: the client
                // holds it as if bound.
                LeaseState::Bound | LeaseState::Offered => SlotState::Bound,
                LeaseState::Released => SlotState::Released,
                LeaseState::Declined => SlotState::Declined,
            };
            if !l.client.is_empty() {
                t.by_client.insert(l.client.clone(), l.ip);
            }
            let stored_until = if state == SlotState::Bound { l.expires } else { 0 };
            let stored_offer = l.state == LeaseState::Offered;
            let slot = Slot { client: l.client, mac: l.mac, hostname: l.hostname, state, until: l.expires, stored_until, stored_offer };
            t.by_ip.insert(l.ip, slot);
        }
        t
    }

    /// Number of addresses with a record.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// Whether no address has a record.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// The record of `ip`.
    pub fn slot(&self, ip: Ipv4Addr) -> Option<&Slot> {
        self.by_ip.get(&ip)
    }

    /// The address `client` holds or held last.
    pub fn address_of(&self, client: &[u8]) -> Option<Ipv4Addr> {
        self.by_client.get(client).copied()
    }

    /// Whether `ip` may be given to `client` at `now`.
    pub fn available_for(&self, ip: Ipv4Addr, client: &[u8], now: u64) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(s) if s.state == SlotState::Declined => !s.busy(now),
            Some(s) => s.client == client || !s.busy(now),
        }
    }

    /// Whether `ip` is held (offered, bound, quarantined) by someone other than `client`.
    pub fn held_by_other(&self, ip: Ipv4Addr, client: &[u8], now: u64) -> bool {
        !self.available_for(ip, client, now)
    }

    /// Whether the table records `ip` as `client`'s (in any state but declined).
    pub fn is_clients(&self, ip: Ipv4Addr, client: &[u8]) -> bool {
        self.by_ip.get(&ip).is_some_and(|s| s.state != SlotState::Declined && s.client == client)
    }

    fn set(&mut self, ip: Ipv4Addr, slot: Slot) {
        self.set_slot(ip, slot, true);
    }

    /// Puts `slot` at `ip`; `map_client` also points the client at `ip`.
    fn set_slot(&mut self, ip: Ipv4Addr, slot: Slot, map_client: bool) {
        if let Some(old) = self.by_ip.get(&ip) {
            if old.client != slot.client && self.by_client.get(&old.client) == Some(&ip) {
                let c = old.client.clone();
                self.by_client.remove(&c);
            }
        }
        if map_client && !slot.client.is_empty() {
            self.by_client.insert(slot.client.clone(), ip);
        }
        self.by_ip.insert(ip, slot);
    }

    /// Picks an address for `client` in `subnet` and holds it as offered for `offer_time`.
    ///
    /// Preference: the policy's pinned address (`reserved`, which must be in the subnet but
    /// need not be in a pool); the client's current or previous address; the address it asks
    /// for (option 50); a never-used pool address; an expired or released one.
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &mut self,
        idx: usize,
        subnet: &Subnet,
        client: &[u8],
        mac: &HwAddr,
        hostname: Option<String>,
        requested: Option<Ipv4Addr>,
        reserved: Option<Ipv4Addr>,
        now: u64,
        offer_time: u32,
    ) -> Result<Ipv4Addr, AllocError> {
        let ip = if let Some(r) = reserved {
            if !subnet.contains(r) {
                return Err(AllocError::Reserved(r, "it is outside the client's subnet"));
            }
            if !self.available_for(r, client, now) {
                return Err(AllocError::Reserved(r, "another client holds it (or it is quarantined)"));
            }
            r
        } else if let Some(ip) = self
            .address_of(client)
            .filter(|ip| subnet.in_pool(*ip) && self.available_for(*ip, client, now))
        {
            ip
        } else if let Some(ip) = requested.filter(|ip| subnet.in_pool(*ip) && self.available_for(*ip, client, now)) {
            ip
        } else {
            self.scan(idx, subnet, now)?
        };
        // A client that holds a lease elsewhere (the policy now pins another address) keeps
        // pointing at that lease until it REQUESTs the new one; `bind` then frees the old one.
        let holds_other = self.address_of(client).is_some_and(|p| {
            p != ip && self.by_ip.get(&p).is_some_and(|s| s.client == client && s.state == SlotState::Bound && s.until > now)
        });
        // A client holds one address: an earlier offer of another one is withdrawn.
        if let Some(prev) = self.address_of(client) {
            if prev != ip && self.by_ip.get(&prev).is_some_and(|s| s.state == SlotState::Offered) {
                self.by_ip.remove(&prev);
            }
        }
        let keep_bound = self.by_ip.get(&ip).filter(|s| s.client == client && s.state == SlotState::Bound && s.until > now);
        // What the store holds for this client at `ip` carries over to the fresh offer.
        let (stored_until, stored_offer) =
            self.by_ip.get(&ip).filter(|s| s.client == client).map_or((0, false), |s| (s.stored_until, s.stored_offer));
        let slot = match keep_bound {
            // A bound client asking again keeps its lease as it is; the REQUEST extends it.
            Some(s) => s.clone(),
            None => Slot {
                client: client.to_vec(),
                mac: mac.clone(),
                hostname,
                state: SlotState::Offered,
                until: now + u64::from(offer_time),
                stored_until,
                stored_offer,
            },
        };
        self.set_slot(ip, slot, !holds_other);
        Ok(ip)
    }

    fn scan(&mut self, idx: usize, subnet: &Subnet, now: u64) -> Result<Ipv4Addr, AllocError> {
        if self.exhausted_until.get(&idx).is_some_and(|t| *t > now) {
            return Err(AllocError::Exhausted);
        }
        for (p, (a, b)) in subnet.pools.iter().enumerate() {
            let size = u64::from(u32::from(*b) - u32::from(*a)) + 1;
            let c = self.cursors.entry((idx, p)).or_default();
            if !c.fresh_done {
                for i in 0..size {
                    let off = (c.fresh + i) % size;
                    let ip = Ipv4Addr::from(u32::from(*a) + off as u32);
                    if !self.by_ip.contains_key(&ip) {
                        c.fresh = (off + 1) % size;
                        return Ok(ip);
                    }
                }
                c.fresh_done = true;
            }
        }
        for (p, (a, b)) in subnet.pools.iter().enumerate() {
            let size = u64::from(u32::from(*b) - u32::from(*a)) + 1;
            let start = self.cursors.get(&(idx, p)).map(|c| c.reuse).unwrap_or(0);
            for i in 0..size {
                let off = (start + i) % size;
                let ip = Ipv4Addr::from(u32::from(*a) + off as u32);
                if self.by_ip.get(&ip).is_none_or(|s| !s.busy(now)) {
                    self.cursors.entry((idx, p)).or_default().reuse = (off + 1) % size;
                    return Ok(ip);
                }
            }
        }
        self.exhausted_until.insert(idx, now + 1);
        Err(AllocError::Exhausted)
    }

    /// The record that makes the offer of `ip` to `client` (just made by [`LeaseTable::offer`])
    /// durable until `until`, so that its ACK needs no write: an [`LeaseState::Offered`] record
    /// for a fresh offer, a longer [`LeaseState::Bound`] one for a bound client asking again for
    /// its address (unless the store only ever held an offer for it). `None` when the offer must stay in memory: the client holds a lease on
    /// another address, which the record would replace in the store before the client has
    /// accepted this one.
    pub fn offer_record(&self, ip: Ipv4Addr, client: &[u8], until: u64) -> Option<Lease> {
        let s = self.by_ip.get(&ip).filter(|s| s.client == client && s.state != SlotState::Declined)?;
        if self.address_of(client) != Some(ip) {
            return None;
        }
        let state = match s.state {
            // Bound, but all the store knows is an offer (its ACK's marker is not stored yet,
            // or it was restored from one): still an offer as far as anyone can tell.
            SlotState::Bound if !s.stored_offer => LeaseState::Bound,
            SlotState::Offered | SlotState::Bound => LeaseState::Offered,
            _ => return None,
        };
        Some(s.record(ip, state, until.max(s.stored_until)))
    }

    /// Notes that the store now holds `record` (an offered or bound lease), if its address
    /// still belongs to the same client.
    pub fn stored(&mut self, record: &Lease) {
        if let Some(s) = self.by_ip.get_mut(&record.ip).filter(|s| s.client == record.client) {
            s.stored_until = s.stored_until.max(record.expires);
            s.stored_offer = record.state == LeaseState::Offered;
        }
    }

    /// Marks `ip` bound to `client` until `now + lease`. Fails if someone else holds it.
    /// Returns what the store needs ([`Binding::Write`] unless it already holds this lease
    /// for as long, with the same MAC and hostname: a durable offer,
    /// [`LeaseTable::offer_record`]) and how to undo the change.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &mut self,
        ip: Ipv4Addr,
        client: &[u8],
        mac: &HwAddr,
        hostname: Option<String>,
        lease: u32,
        now: u64,
    ) -> Result<(Binding, Undo), Taken> {
        if !self.available_for(ip, client, now) {
            return Err(Taken);
        }
        let until = now + u64::from(lease);
        let stored = self.by_ip.get(&ip).filter(|s| {
            s.client == client
                && s.stored_until >= until
                && s.mac == *mac
                && s.hostname == hostname
                && self.address_of(client) == Some(ip)
        });
        let (stored_until, stored_offer) = stored.map_or((0, false), |s| (s.stored_until, s.stored_offer));
        let mut undo = Undo { slots: vec![(ip, self.by_ip.get(&ip).cloned())], client: (client.to_vec(), self.address_of(client)) };
        // The store drops the client's other row in the same transaction; so does memory.
        if let Some(prev) = self.address_of(client).filter(|p| *p != ip) {
            if self.by_ip.get(&prev).is_some_and(|s| s.client == client) {
                undo.slots.push((prev, self.by_ip.remove(&prev)));
            }
        }
        let slot = Slot { client: client.to_vec(), mac: mac.clone(), hostname, state: SlotState::Bound, until, stored_until, stored_offer };
        let binding = if stored_until > 0 {
            // The store already says so; nothing else changes there either, as the client held
            // no other address when its offer was stored.
            Binding::Stored(stored_offer.then(|| slot.record(ip, LeaseState::Bound, stored_until)))
        } else {
            Binding::Write(slot.record(ip, LeaseState::Bound, until))
        };
        self.set(ip, slot);
        Ok((binding, undo))
    }

    /// Restores what [`LeaseTable::bind`] changed.
    pub fn rollback(&mut self, undo: Undo) {
        for (ip, slot) in undo.slots.into_iter().rev() {
            match slot {
                Some(s) => {
                    self.by_ip.insert(ip, s);
                }
                None => {
                    self.by_ip.remove(&ip);
                }
            }
        }
        match undo.client.1 {
            Some(ip) => self.by_client.insert(undo.client.0, ip),
            None => self.by_client.remove(&undo.client.0),
        };
    }

    /// Withdraws an offer to `client` (it chose another server, or its lease could not be
    /// stored). Bound leases stay. Returns the record that ends a stored offer in the store (as
    /// released: the client gets the address again if it comes back), if it was stored.
    pub fn cancel_offer(&mut self, client: &[u8], now: u64) -> Option<Lease> {
        let ip = self.address_of(client)?;
        let s = self.by_ip.get(&ip).filter(|s| s.state == SlotState::Offered && s.client == client)?;
        let record = (s.stored_until > 0).then(|| s.record(ip, LeaseState::Released, now));
        self.by_ip.remove(&ip);
        self.by_client.remove(client);
        record
    }

    /// Ends every stored offer that no REQUEST took up (at a clean stop): returns the records
    /// that mark them released, so that they are free after a restart. An offer whose REQUEST
    /// was ACKed is bound in memory and stays.
    pub fn withdraw_stored_offers(&mut self, now: u64) -> Vec<Lease> {
        let mut out = Vec::new();
        for (ip, s) in self.by_ip.iter_mut().filter(|(_, s)| s.state == SlotState::Offered && s.stored_offer) {
            out.push(s.record(*ip, LeaseState::Released, now));
            s.state = SlotState::Released;
            s.until = now;
            s.stored_until = 0;
            s.stored_offer = false;
        }
        out
    }

    /// DHCPRELEASE: `client` gives `ip` back. Returns the record to persist, if it was its lease.
    pub fn release(&mut self, ip: Ipv4Addr, client: &[u8], now: u64) -> Option<Lease> {
        let s = self.by_ip.get_mut(&ip).filter(|s| s.client == client && s.state == SlotState::Bound)?;
        s.state = SlotState::Released;
        s.until = now;
        s.stored_until = 0;
        s.stored_offer = false;
        Some(s.record(ip, LeaseState::Released, now))
    }

    /// DHCPDECLINE: `client` found `ip` in use. Quarantines it for `secs` if it was offered or
    /// bound to that client; returns the record to persist.
    pub fn decline(&mut self, ip: Ipv4Addr, client: &[u8], secs: u32, now: u64) -> Option<Lease> {
        let s = self.by_ip.get(&ip).filter(|s| s.client == client && s.state != SlotState::Declined)?;
        let mac = s.mac.clone();
        self.by_client.remove(client);
        let until = now + u64::from(secs);
        self.by_ip.insert(ip, Slot { client: Vec::new(), mac: mac.clone(), hostname: None, state: SlotState::Declined, until, stored_until: 0, stored_offer: false });
        Some(Lease { ip, client: Vec::new(), mac, hostname: None, state: LeaseState::Declined, expires: until })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn subnet(a: u8, b: u8) -> Subnet {
        Subnet {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 24,
            pools: vec![(Ipv4Addr::new(10, 0, 0, a), Ipv4Addr::new(10, 0, 0, b))],
            routers: vec![],
            dns_servers: vec![],
            domain_name: None,
            broadcast: Ipv4Addr::new(10, 0, 0, 255),
            lease_time: 100,
            renew_time: 50,
            rebind_time: 87,
            options: BTreeMap::new(),
        }
    }

    fn mac(n: u8) -> HwAddr {
        HwAddr(vec![2, 0, 0, 0, 0, n])
    }

    #[test]
    fn offers_distinct_addresses_and_the_same_one_again() {
        let s = subnet(10, 12);
        let mut t = LeaseTable::default();
        let a = t.offer(0, &s, b"a", &mac(1), None, None, None, 1000, 30).unwrap();
        let b = t.offer(0, &s, b"b", &mac(2), None, None, None, 1000, 30).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.offer(0, &s, b"a", &mac(1), None, None, None, 1001, 30).unwrap(), a);
        let c = t.offer(0, &s, b"c", &mac(3), None, None, None, 1000, 30).unwrap();
        assert!(![a, b].contains(&c));
        assert_eq!(t.offer(0, &s, b"d", &mac(4), None, None, None, 1000, 30), Err(AllocError::Exhausted));
        // Offers expire; the exhausted memo lasts one second.
        assert!(t.offer(0, &s, b"d", &mac(4), None, None, None, 1031, 30).is_ok());
    }

    #[test]
    fn bind_conflicts_and_rollback() {
        let s = subnet(10, 20);
        let mut t = LeaseTable::default();
        let ip = t.offer(0, &s, b"a", &mac(1), None, None, None, 0, 30).unwrap();
        assert!(t.bind(ip, b"b", &mac(2), None, 100, 0).is_err(), "offered to a");
        let (rec, undo) = t.bind(ip, b"a", &mac(1), None, 100, 0).unwrap();
        assert!(matches!(rec, Binding::Write(Lease { expires: 100, .. })), "{rec:?}");
        assert!(t.held_by_other(ip, b"b", 50));
        t.rollback(undo);
        assert_eq!(t.slot(ip).unwrap().state, SlotState::Offered);
        // Bound then moved: the old address is freed.
        let (_, _) = t.bind(ip, b"a", &mac(1), None, 100, 0).unwrap();
        let other = Ipv4Addr::new(10, 0, 0, 19);
        t.bind(other, b"a", &mac(1), None, 100, 0).unwrap();
        assert!(t.slot(ip).is_none());
        assert_eq!(t.address_of(b"a"), Some(other));
    }

    /// Whether `b` asks for a record before the ACK.
    fn writes(b: &Binding) -> bool {
        matches!(b, Binding::Write(_))
    }

    #[test]
    fn a_stored_offer_is_acked_without_a_record_and_only_while_the_store_covers_it() {
        let s = subnet(10, 20);
        let mut t = LeaseTable::default();
        let ip = t.offer(0, &s, b"a", &mac(1), Some("pc".into()), None, None, 0, 30).unwrap();
        let rec = t.offer_record(ip, b"a", 130).expect("a fresh offer can be stored");
        assert_eq!((rec.state, rec.expires, rec.hostname.as_deref()), (LeaseState::Offered, 130, Some("pc")));
        // Not stored yet (the write has not returned): the ACK needs its own record.
        let (r, undo) = t.bind(ip, b"a", &mac(1), Some("pc".into()), 100, 10).unwrap();
        assert!(writes(&r));
        t.rollback(undo);
        t.stored(&rec);
        // Stored: an ACK ending by then needs nothing written before it, and a record after it
        // that marks the offer bound, for as long as the offer was stored...
        let (r, _) = t.bind(ip, b"a", &mac(1), Some("pc".into()), 100, 30).unwrap();
        let Binding::Stored(Some(marker)) = r else { panic!("{r:?}") };
        assert_eq!((marker.state, marker.expires, marker.hostname.as_deref()), (LeaseState::Bound, 130, Some("pc")));
        assert_eq!(t.slot(ip).unwrap().state, SlotState::Bound);
        // ...a second one before the marker is stored asks for it again; after, for nothing.
        assert_eq!(t.bind(ip, b"a", &mac(1), Some("pc".into()), 100, 30).unwrap().0, Binding::Stored(Some(marker.clone())));
        t.stored(&marker);
        assert_eq!(t.bind(ip, b"a", &mac(1), Some("pc".into()), 100, 30).unwrap().0, Binding::Stored(None));
        // One ending later needs a write (a renewal), as does one with another hostname.
        assert!(writes(&t.bind(ip, b"a", &mac(1), Some("pc".into()), 100, 31).unwrap().0));
        let mut t2 = LeaseTable::default();
        let ip2 = t2.offer(0, &s, b"a", &mac(1), Some("pc".into()), None, None, 0, 30).unwrap();
        t2.stored(&t2.offer_record(ip2, b"a", 130).unwrap());
        assert!(writes(&t2.bind(ip2, b"a", &mac(1), Some("laptop".into()), 100, 0).unwrap().0));
        // Another client taking the address over never inherits what was stored for the first.
        let mut t3 = LeaseTable::default();
        let ip3 = t3.offer(0, &s, b"a", &mac(1), None, None, Some(Ipv4Addr::new(10, 0, 0, 10)), 0, 30).unwrap();
        t3.stored(&t3.offer_record(ip3, b"a", 130).unwrap());
        assert_eq!(t3.offer(0, &s, b"b", &mac(2), None, None, Some(ip3), 31, 30), Ok(ip3), "a's offer lapsed");
        assert!(writes(&t3.bind(ip3, b"b", &mac(2), None, 100, 31).unwrap().0));
    }

    #[test]
    fn a_bound_client_asking_again_gets_its_lease_stored_longer_but_not_one_moving_elsewhere() {
        let s = subnet(10, 20);
        let mut t = LeaseTable::default();
        let old = t.offer(0, &s, b"a", &mac(1), None, None, None, 0, 30).unwrap();
        let Binding::Write(rec) = t.bind(old, b"a", &mac(1), None, 1000, 0).unwrap().0 else { panic!() };
        t.stored(&rec);
        // The policy now pins another address: storing its offer would drop the bound lease
        // from the store before the client accepted the new one.
        let new = Ipv4Addr::new(10, 0, 0, 15);
        assert_eq!(t.offer(0, &s, b"a", &mac(1), None, None, Some(new), 10, 30), Ok(new));
        assert!(t.offer_record(new, b"a", 2000).is_none());
        // Asking again for its own address: stored bound for longer, never shorter, so that the
        // REQUEST that renews it needs no write.
        assert_eq!(t.offer(0, &s, b"a", &mac(1), None, None, None, 10, 30), Ok(old));
        let longer = t.offer_record(old, b"a", 2000).expect("a bound lease can be stored longer");
        assert_eq!((longer.state, longer.expires), (LeaseState::Bound, 2000));
        assert_eq!(t.offer_record(old, b"a", 500).unwrap().expires, 1000, "shortened");
        t.stored(&longer);
        assert_eq!(t.bind(old, b"a", &mac(1), None, 1000, 20).unwrap().0, Binding::Stored(None));
        assert_eq!(t.slot(old).unwrap().until, 1020);
    }

    #[test]
    fn a_clean_stop_releases_stored_offers_nobody_requested() {
        let s = subnet(10, 20);
        let mut t = LeaseTable::default();
        let a = t.offer(0, &s, b"a", &mac(1), None, None, None, 0, 30).unwrap();
        let b = t.offer(0, &s, b"b", &mac(2), None, None, None, 0, 30).unwrap();
        let c = t.offer(0, &s, b"c", &mac(3), None, None, None, 0, 30).unwrap();
        for (ip, client) in [(a, &b"a"[..]), (b, b"b")] {
            t.stored(&t.offer_record(ip, client, 130).unwrap());
        }
        t.bind(a, b"a", &mac(1), None, 100, 5).unwrap();
        // a was ACKed (bound), c's offer was never stored: only b's is withdrawn.
        let w = t.withdraw_stored_offers(9);
        assert_eq!(w.iter().map(|l| (l.ip, l.state, l.expires)).collect::<Vec<_>>(), vec![(b, LeaseState::Released, 9)]);
        assert_eq!(t.slot(a).unwrap().state, SlotState::Bound);
        assert_eq!(t.slot(c).unwrap().state, SlotState::Offered);
        assert!(t.withdraw_stored_offers(10).is_empty());
    }

    #[test]
    fn stored_offers_are_held_after_a_restart_as_if_acknowledged() {
        let offered = Lease {
            ip: Ipv4Addr::new(10, 0, 0, 12),
            client: b"a".to_vec(),
            mac: mac(1),
            hostname: None,
            state: LeaseState::Offered,
            expires: 500,
        };
        let mut t = LeaseTable::from_leases(vec![offered.clone()]);
        assert_eq!(t.slot(offered.ip).unwrap().state, SlotState::Bound);
        assert!(t.held_by_other(offered.ip, b"b", 499));
        assert_eq!(t.address_of(b"a"), Some(offered.ip));
        // Asking again: stored longer, still as an offer (nothing says it was ever ACKed).
        let s = subnet(10, 20);
        assert_eq!(t.offer(0, &s, b"a", &mac(1), None, None, None, 200, 30), Ok(offered.ip));
        let again = t.offer_record(offered.ip, b"a", 600).unwrap();
        assert_eq!((again.state, again.expires), (LeaseState::Offered, 600));
        // Its ACK (if the client REQUESTs it) marks it bound; no record before.
        let Binding::Stored(Some(m)) = t.bind(offered.ip, b"a", &mac(1), None, 100, 300).unwrap().0 else { panic!() };
        assert_eq!((m.state, m.expires), (LeaseState::Bound, 500));
    }

    #[test]
    fn reservations_requested_and_previous_addresses() {
        let s = subnet(10, 20);
        let mut t = LeaseTable::default();
        let r = Ipv4Addr::new(10, 0, 0, 200);
        assert_eq!(t.offer(0, &s, b"a", &mac(1), None, None, Some(r), 0, 30), Ok(r));
        assert!(matches!(t.offer(0, &s, b"b", &mac(2), None, None, Some(r), 0, 30), Err(AllocError::Reserved(..))));
        let out = Ipv4Addr::new(192, 168, 0, 1);
        assert!(matches!(t.offer(0, &s, b"b", &mac(2), None, None, Some(out), 0, 30), Err(AllocError::Reserved(..))));
        let want = Ipv4Addr::new(10, 0, 0, 15);
        assert_eq!(t.offer(0, &s, b"c", &mac(3), None, Some(want), None, 0, 30), Ok(want));
        let (_, _) = t.bind(want, b"c", &mac(3), None, 100, 0).unwrap();
        t.release(want, b"c", 10).unwrap();
        assert!(!t.held_by_other(want, b"z", 10));
        assert_eq!(t.offer(0, &s, b"c", &mac(3), None, None, None, 20, 30), Ok(want), "previous address again");
    }

    #[test]
    fn a_new_reservation_replaces_the_old_lease_only_when_requested() {
        let s = subnet(10, 20);
        let mut t = LeaseTable::default();
        let old = t.offer(0, &s, b"a", &mac(1), None, None, None, 0, 30).unwrap();
        t.bind(old, b"a", &mac(1), None, 100, 0).unwrap();
        let pinned = Ipv4Addr::new(10, 0, 0, 222);
        assert_eq!(t.offer(0, &s, b"a", &mac(1), None, None, Some(pinned), 1, 30), Ok(pinned));
        assert_eq!(t.address_of(b"a"), Some(old), "still on its lease until it requests the new one");
        t.bind(pinned, b"a", &mac(1), None, 100, 2).unwrap();
        assert!(t.slot(old).is_none(), "the old lease is freed, as in the store");
        assert_eq!(t.address_of(b"a"), Some(pinned));
    }

    #[test]
    fn declined_addresses_are_quarantined() {
        let s = subnet(10, 10);
        let mut t = LeaseTable::default();
        let ip = t.offer(0, &s, b"a", &mac(1), None, None, None, 0, 30).unwrap();
        assert!(t.decline(ip, b"b", 600, 0).is_none(), "only its client may decline it");
        let rec = t.decline(ip, b"a", 600, 0).unwrap();
        assert_eq!(rec.state, LeaseState::Declined);
        assert!(rec.client.is_empty());
        assert_eq!(t.offer(0, &s, b"a", &mac(1), None, None, None, 5, 30), Err(AllocError::Exhausted));
        assert_eq!(t.offer(0, &s, b"a", &mac(1), None, None, None, 601, 30), Ok(ip));
    }

    #[test]
    fn reload_from_records() {
        let rec = Lease {
            ip: Ipv4Addr::new(10, 0, 0, 10),
            client: b"a".to_vec(),
            mac: mac(1),
            hostname: None,
            state: LeaseState::Bound,
            expires: 1000,
        };
        let s = subnet(10, 11);
        let mut t = LeaseTable::from_leases(vec![rec]);
        assert_eq!(t.offer(0, &s, b"b", &mac(2), None, None, None, 0, 30), Ok(Ipv4Addr::new(10, 0, 0, 11)));
        assert_eq!(t.offer(0, &s, b"a", &mac(1), None, None, None, 0, 30), Ok(Ipv4Addr::new(10, 0, 0, 10)));
    }
}
