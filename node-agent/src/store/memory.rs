//! An in-memory store for tests, with a switch that makes commits fail.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Store, StoreError};
use crate::ipam::{Allocation, AttachmentKey, Change, Claim, EniRecord, Snapshot, UnixMillis};

/// A store that lives in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    enis: Vec<EniRecord>,
    allocations: BTreeMap<AttachmentKey, Allocation>,
    cooling: BTreeMap<Ipv4Addr, UnixMillis>,
    claims: BTreeMap<(String, String), Claim>,
    /// While set, every commit fails and changes nothing.
    pub fail_commits: Arc<AtomicBool>,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            enis: self.enis.clone(),
            allocations: self.allocations.values().cloned().collect(),
            cooling: self.cooling.iter().map(|(ip, t)| (*ip, *t)).collect(),
            claims: self.claims.values().cloned().collect(),
        })
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(StoreError::Io("injected commit failure".into()));
        }
        for c in changes {
            match c {
                Change::PutEni(e) => match self.enis.iter_mut().find(|x| x.id == e.id) {
                    Some(slot) => *slot = e.clone(),
                    None => self.enis.push(e.clone()),
                },
                Change::RemoveEni(id) => self.enis.retain(|e| &e.id != id),
                Change::PutClaim(c) => {
                    self.claims.insert(c.id(), c.clone());
                }
                Change::RemoveClaim(ns, name) => {
                    self.claims.remove(&(ns.clone(), name.clone()));
                }
                Change::PutAllocation(a) => {
                    self.allocations.insert(a.key.clone(), a.clone());
                }
                Change::RemoveAllocation(k) => {
                    self.allocations.remove(k);
                }
                Change::PutCooling(ip, t) => {
                    self.cooling.insert(*ip, *t);
                }
                Change::RemoveCooling(ip) => {
                    self.cooling.remove(ip);
                }
            }
        }
        Ok(())
    }
}
