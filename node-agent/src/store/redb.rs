//! The store on disk: one redb database (copy-on-write B-trees, checksummed
//! commits, fsync on commit), values as JSON so an operator can read them.
//!
//! Tables: `meta` (format version), `enis` (id → ENI), `allocations`
//! (`network/container/ifname` → allocation), `claims` (`namespace/name`
//! → static IP claim), `cooling` (IPv4 as u32 → end of cooldown in Unix
//! ms). The attachment key joins its parts with `/`, which none of them may
//! contain. Records are the types of `records.rs`, versioned there.

use std::net::Ipv4Addr;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::info;

use super::records::{AllocationRow, ClaimRow, EniRow, FORMAT_VERSION, OLDEST_FORMAT};
use super::{Store, StoreError};
use crate::ipam::{Change, EniRecord, Snapshot};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ENIS: TableDefinition<&str, &[u8]> = TableDefinition::new("enis");
const ALLOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("allocations");
const COOLING: TableDefinition<u32, u64> = TableDefinition::new("cooling");
const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("claims");
const FORMAT_KEY: &str = "format_version";
/// redb's page cache. A node's store is a few hundred KiB (a full node:
/// 8 ENIs, 250 pods), read whole once at start; writes are a few pages per
/// commit. redb's default (1 GiB) let the cache keep every page a commit
/// ever wrote, several MiB of the agent's memory on a busy node.
const CACHE_BYTES: usize = 1 << 20;

/// The redb-backed store.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (creating if needed) the store at `path`, migrating an older
    /// format in place. Fails if another process holds it or it was written
    /// in a format this agent does not know.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: Box::new(e),
            })?;
        let txn = db.begin_write().map_err(io)?;
        {
            let mut meta = txn.open_table(META).map_err(io)?;
            let found = meta.get(FORMAT_KEY).map_err(io)?.map(|v| v.value());
            match found {
                Some(v) if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&v) => {
                    return Err(StoreError::Format { found: v });
                }
                Some(v) if v < FORMAT_VERSION => {
                    // 1 → 2: the claims table may be missing (it came
                    // without a bump); rows gain fields with defaults.
                    info!(from = v, to = FORMAT_VERSION, "migrating the state store");
                    meta.insert(FORMAT_KEY, FORMAT_VERSION).map_err(io)?;
                }
                Some(_) => {}
                None => {
                    meta.insert(FORMAT_KEY, FORMAT_VERSION).map_err(io)?;
                }
            }
            txn.open_table(ENIS).map_err(io)?;
            txn.open_table(ALLOCATIONS).map_err(io)?;
            txn.open_table(COOLING).map_err(io)?;
            txn.open_table(CLAIMS).map_err(io)?;
        }
        txn.commit().map_err(io)?;
        Ok(RedbStore { db })
    }

    /// The format version recorded in the store.
    #[cfg(test)]
    pub fn format(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let meta = txn.open_table(META).map_err(io)?;
        Ok(meta.get(FORMAT_KEY).map_err(io)?.map_or(0, |v| v.value()))
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let mut snap = Snapshot::default();
        for row in txn.open_table(ENIS).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let eni: EniRow = decode("enis", k.value(), v.value())?;
            snap.enis.push(eni.into());
        }
        for row in txn
            .open_table(ALLOCATIONS)
            .map_err(io)?
            .iter()
            .map_err(io)?
        {
            let (k, v) = row.map_err(io)?;
            let a: AllocationRow = decode("allocations", k.value(), v.value())?;
            snap.allocations.push(a.into());
        }
        for row in txn.open_table(COOLING).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            snap.cooling.push((Ipv4Addr::from(k.value()), v.value()));
        }
        for row in txn.open_table(CLAIMS).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let c: ClaimRow = decode("claims", k.value(), v.value())?;
            snap.claims.push(c.into());
        }
        // ENIs come back in id order; the pool keeps them in attach order,
        // which the table number records.
        snap.enis.sort_by_key(|e: &EniRecord| e.table);
        Ok(snap)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut enis = txn.open_table(ENIS).map_err(io)?;
            let mut allocations = txn.open_table(ALLOCATIONS).map_err(io)?;
            let mut cooling = txn.open_table(COOLING).map_err(io)?;
            let mut claims = txn.open_table(CLAIMS).map_err(io)?;
            for c in changes {
                match c {
                    Change::PutEni(e) => {
                        enis.insert(e.id.as_str(), encode(&EniRow::from(e)).as_slice())
                            .map_err(io)?;
                    }
                    Change::RemoveEni(id) => {
                        enis.remove(id.as_str()).map_err(io)?;
                    }
                    Change::PutAllocation(a) => {
                        allocations
                            .insert(
                                a.key.to_string().as_str(),
                                encode(&AllocationRow::from(a)).as_slice(),
                            )
                            .map_err(io)?;
                    }
                    Change::RemoveAllocation(k) => {
                        allocations.remove(k.to_string().as_str()).map_err(io)?;
                    }
                    Change::PutCooling(ip, t) => {
                        cooling.insert(u32::from(*ip), *t).map_err(io)?;
                    }
                    Change::RemoveCooling(ip) => {
                        cooling.remove(u32::from(*ip)).map_err(io)?;
                    }
                    Change::PutClaim(c) => {
                        let key = format!("{}/{}", c.namespace, c.name);
                        claims
                            .insert(key.as_str(), encode(&ClaimRow::from(c)).as_slice())
                            .map_err(io)?;
                    }
                    Change::RemoveClaim(ns, name) => {
                        claims.remove(format!("{ns}/{name}").as_str()).map_err(io)?;
                    }
                }
            }
        }
        txn.commit().map_err(io)
    }
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records always serialise")
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        table,
        key: key.to_string(),
        source,
    })
}

fn io(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Io(Box::new(e.into()))
}

#[cfg(test)]
mod tests;
