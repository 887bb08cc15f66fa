//! The IP pool as a pure data structure: secondary ENIs and their IPs,
//! allocations keyed by (network, container id, ifname), static claims and
//! the cooldown of released IPs. No I/O and no clock: every operation takes
//! `now`, and every change is first *planned* as a list of [`Change`]s,
//! which the caller applies and commits to the store in one order. The
//! store's contents replayed through `apply` rebuild the same pool.
//!
//! `records.rs` holds the types, `allocation.rs` ADD and DEL, `claims.rs`
//! the static claims' plans, `handover.rs` a claim between nodes (the
//! durable state machine of a move), `requested.rs` a requested address, `errors.rs`
//! why the pool refuses.

mod allocation;
mod claims;
mod errors;
mod handover;
mod records;
mod requested;
#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

pub use allocation::{AddPlan, StaticIp};
pub use errors::IpamError;
pub use handover::{Handover, Seen, Source, Step, Word, step};
pub use records::{
    Allocation, AttachmentKey, Change, Claim, Counts, EniRecord, EniUsage, IpUse, OwnerRef, PodRef,
    Snapshot, UnixMillis,
};
pub use requested::RequestedSpot;

/// The pool.
#[derive(Clone, Debug, Default)]
pub struct Ipam {
    cooldown_ms: u64,
    enis: Vec<EniRecord>,
    allocations: BTreeMap<AttachmentKey, Allocation>,
    holder: HashMap<Ipv4Addr, AttachmentKey>,
    cooling: HashMap<Ipv4Addr, UnixMillis>,
    claims: BTreeMap<(String, String), Claim>,
    /// Claimed addresses and their claim's key, so lookups by IP are O(1).
    claimed: HashMap<Ipv4Addr, (String, String)>,
}

impl Ipam {
    /// An empty pool whose released IPs cool down for `cooldown_ms`.
    pub fn new(cooldown_ms: u64) -> Ipam {
        Ipam {
            cooldown_ms,
            ..Ipam::default()
        }
    }

    /// Rebuilds the pool from a snapshot, refusing one that allocates an IP
    /// twice.
    pub fn restore(cooldown_ms: u64, snapshot: Snapshot) -> Result<Ipam, IpamError> {
        let mut ipam = Ipam::new(cooldown_ms);
        let mut changes: Vec<Change> = snapshot.enis.into_iter().map(Change::PutEni).collect();
        changes.extend(
            snapshot
                .cooling
                .into_iter()
                .map(|(ip, until)| Change::PutCooling(ip, until)),
        );
        for a in snapshot.allocations {
            if let Some(first) = ipam.holder.get(&a.ip) {
                return Err(IpamError::DoubleAllocation {
                    ip: a.ip,
                    first: Box::new(first.clone()),
                    second: Box::new(a.key),
                });
            }
            ipam.holder.insert(a.ip, a.key.clone());
            changes.push(Change::PutAllocation(a));
        }
        changes.extend(snapshot.claims.into_iter().map(Change::PutClaim));
        ipam.apply(&changes);
        Ok(ipam)
    }

    /// The whole pool, as the store would hold it.
    pub fn snapshot(&self) -> Snapshot {
        let mut cooling: Vec<_> = self.cooling.iter().map(|(ip, t)| (*ip, *t)).collect();
        cooling.sort();
        Snapshot {
            enis: self.enis.clone(),
            allocations: self.allocations.values().cloned().collect(),
            cooling,
            claims: self.claims.values().cloned().collect(),
        }
    }

    /// Applies changes, in order.
    pub fn apply(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::PutEni(eni) => {
                    let mut eni = eni.clone();
                    eni.ips.sort();
                    match self.enis.iter_mut().find(|e| e.id == eni.id) {
                        Some(slot) => *slot = eni,
                        None => self.enis.push(eni),
                    }
                }
                Change::RemoveEni(id) => self.enis.retain(|e| &e.id != id),
                Change::PutAllocation(a) => {
                    self.holder.insert(a.ip, a.key.clone());
                    self.allocations.insert(a.key.clone(), a.clone());
                }
                Change::RemoveAllocation(key) => {
                    if let Some(a) = self.allocations.remove(key) {
                        self.holder.remove(&a.ip);
                    }
                }
                Change::PutClaim(c) => {
                    if let Some(old) = self.claims.insert(c.id(), c.clone()) {
                        self.claimed.remove(&old.ip);
                    }
                    self.claimed.insert(c.ip, c.id());
                }
                Change::RemoveClaim(namespace, name) => {
                    if let Some(old) = self.claims.remove(&(namespace.clone(), name.clone())) {
                        self.claimed.remove(&old.ip);
                    }
                }
                Change::PutCooling(ip, until) => {
                    self.cooling.insert(*ip, *until);
                }
                Change::RemoveCooling(ip) => {
                    self.cooling.remove(ip);
                }
            }
        }
    }

    /// The attachment's allocation.
    pub fn allocation(&self, key: &AttachmentKey) -> Option<&Allocation> {
        self.allocations.get(key)
    }

    /// Every allocation, ordered by key.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    /// The allocation holding `ip`.
    pub fn holder_of(&self, ip: &Ipv4Addr) -> Option<&Allocation> {
        self.holder.get(ip).and_then(|k| self.allocations.get(k))
    }

    /// An ENI by id.
    pub fn eni(&self, id: &str) -> Option<&EniRecord> {
        self.enis.iter().find(|e| e.id == id)
    }

    /// Every ENI in the order it joined the pool.
    pub fn enis(&self) -> &[EniRecord] {
        &self.enis
    }

    /// What `ip` is doing at `now`.
    pub fn ip_use(&self, ip: &Ipv4Addr, now: UnixMillis) -> IpUse<'_> {
        if let Some(a) = self.holder_of(ip) {
            return IpUse::Allocated(a);
        }
        if let Some(c) = self.claimed.get(ip).and_then(|k| self.claims.get(k)) {
            return IpUse::Reserved(c);
        }
        match self.cooling.get(ip) {
            Some(until) if *until > now => IpUse::Cooling(*until),
            _ => IpUse::Free,
        }
    }

    /// Counters at `now`.
    pub fn counts(&self, now: UnixMillis) -> Counts {
        let mut c = Counts::default();
        for ip in self.enis.iter().flat_map(|e| &e.ips) {
            c.total += 1;
            match self.ip_use(ip, now) {
                IpUse::Allocated(_) => c.allocated += 1,
                IpUse::Reserved(_) => c.reserved += 1,
                IpUse::Cooling(_) => c.cooling += 1,
                IpUse::Free => c.free += 1,
            }
        }
        c
    }

    /// Per ENI, in attach order: its free IPs and how many it holds in all.
    pub fn usage(&self, now: UnixMillis) -> Vec<EniUsage> {
        self.enis
            .iter()
            .map(|e| EniUsage {
                id: e.id.clone(),
                free: e
                    .ips
                    .iter()
                    .filter(|ip| self.is_free(ip, now))
                    .copied()
                    .collect(),
                total: e.ips.len(),
            })
            .collect()
    }

    fn is_free(&self, ip: &Ipv4Addr, now: UnixMillis) -> bool {
        self.ip_use(ip, now) == IpUse::Free
    }

    fn first_free(&self, now: UnixMillis) -> Option<(Ipv4Addr, &EniRecord)> {
        let free = |paired: bool| {
            self.enis.iter().find_map(|eni| {
                eni.ips
                    .iter()
                    .find(|ip| self.is_free(ip, now) && (!paired || eni.ipv6_of(**ip).is_some()))
                    .map(|ip| (*ip, eni))
            })
        };
        // Dual stack: an IP with its IPv6 partner first, so a pod gets
        // both families while any such IP is free.
        let dual = self.enis.iter().any(|e| !e.ipv6.is_empty());
        dual.then(|| free(true)).flatten().or_else(|| free(false))
    }
}
