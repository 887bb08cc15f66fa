//! The store on disk: one redb database (copy-on-write B-trees, checksummed
//! commits, fsync on commit), values as JSON so an operator can read them.
//!
//! Tables: `meta` (format version), `enis` (id → ENI), `allocations`
//! (`network/container/ifname` → allocation), `claims` (`namespace/name`
//! → static IP claim), `cooling` (IPv4 as u32 →
//! end of cooldown in Unix ms). The attachment key joins its parts with `/`,
//! which none of them may contain.

use std::net::Ipv4Addr;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{FORMAT_VERSION, Store, StoreError};
use crate::ipam::{Allocation, Change, EniRecord, Snapshot};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ENIS: TableDefinition<&str, &[u8]> = TableDefinition::new("enis");
const ALLOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("allocations");
const COOLING: TableDefinition<u32, u64> = TableDefinition::new("cooling");
const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("claims");
const FORMAT_KEY: &str = "format_version";

/// The redb-backed store.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (creating if needed) the store at `path`. Fails if another
    /// process holds it or it was written in another format.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        let txn = db.begin_write().map_err(io)?;
        {
            let mut meta = txn.open_table(META).map_err(io)?;
            let found = meta.get(FORMAT_KEY).map_err(io)?.map(|v| v.value());
            match found {
                Some(v) if v != FORMAT_VERSION => return Err(StoreError::Format { found: v }),
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
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let mut snap = Snapshot::default();
        for row in txn.open_table(ENIS).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            snap.enis.push(decode("enis", k.value(), v.value())?);
        }
        for row in txn
            .open_table(ALLOCATIONS)
            .map_err(io)?
            .iter()
            .map_err(io)?
        {
            let (k, v) = row.map_err(io)?;
            snap.allocations
                .push(decode::<Allocation>("allocations", k.value(), v.value())?);
        }
        for row in txn.open_table(COOLING).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            snap.cooling.push((Ipv4Addr::from(k.value()), v.value()));
        }
        for row in txn.open_table(CLAIMS).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            snap.claims.push(decode("claims", k.value(), v.value())?);
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
                        enis.insert(e.id.as_str(), encode(e).as_slice())
                            .map_err(io)?;
                    }
                    Change::RemoveEni(id) => {
                        enis.remove(id.as_str()).map_err(io)?;
                    }
                    Change::PutAllocation(a) => {
                        allocations
                            .insert(a.key.to_string().as_str(), encode(a).as_slice())
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
                            .insert(key.as_str(), encode(c).as_slice())
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
mod tests {
    use super::*;
    use proto::wire::AttachmentKey;

    fn eni(id: &str, table: u32) -> EniRecord {
        EniRecord {
            id: id.into(),
            mac: "02:00:00:00:00:01".into(),
            subnet_id: "subnet-1".into(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            primary_ip: Ipv4Addr::new(10, 0, 0, 2),
            mtu: 1500,
            table,
            ips: vec![Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)],
        }
    }

    fn alloc(c: &str, ip: u8) -> Allocation {
        Allocation {
            key: AttachmentKey {
                network: "vpc".into(),
                container_id: c.into(),
                ifname: "eth0".into(),
            },
            ip: Ipv4Addr::new(10, 0, 0, ip),
            eni_id: "eni-z".into(),
            netns: "/n".into(),
            pod: None,
            created_ms: 7,
        }
    }

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let mut s = RedbStore::open(&path).expect("open");
            s.commit(&[
                Change::PutEni(eni("eni-z", 101)),
                Change::PutEni(eni("eni-a", 102)),
                Change::PutAllocation(alloc("c1", 10)),
                Change::PutAllocation(alloc("c2", 11)),
            ])
            .expect("commit");
            s.commit(&[
                Change::RemoveAllocation(alloc("c2", 11).key),
                Change::PutCooling(Ipv4Addr::new(10, 0, 0, 11), 99),
            ])
            .expect("commit");
        }
        let s = RedbStore::open(&path).expect("reopen");
        let snap = s.load().expect("load");
        assert_eq!(
            snap.enis.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["eni-z", "eni-a"]
        );
        assert_eq!(snap.allocations, vec![alloc("c1", 10)]);
        assert_eq!(snap.cooling, vec![(Ipv4Addr::new(10, 0, 0, 11), 99)]);
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let _held = RedbStore::open(&path).expect("open");
        assert!(matches!(
            RedbStore::open(&path),
            Err(StoreError::Open { .. })
        ));
    }

    #[test]
    fn other_formats_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let s = RedbStore::open(&path).expect("open");
            let txn = s.db.begin_write().expect("txn");
            txn.open_table(META)
                .expect("meta")
                .insert(FORMAT_KEY, 99)
                .expect("insert");
            txn.commit().expect("commit");
        }
        assert!(matches!(
            RedbStore::open(&path),
            Err(StoreError::Format { found: 99 })
        ));
    }

    #[test]
    fn corrupt_records_are_reported_with_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let s = RedbStore::open(&path).expect("open");
        let txn = s.db.begin_write().expect("txn");
        txn.open_table(ALLOCATIONS)
            .expect("t")
            .insert("vpc/c/eth0", &b"{not json"[..])
            .expect("insert");
        txn.commit().expect("commit");
        match s.load() {
            Err(StoreError::Corrupt {
                table: "allocations",
                key,
                ..
            }) => assert_eq!(key, "vpc/c/eth0"),
            other => panic!("{other:?}"),
        }
    }
}
