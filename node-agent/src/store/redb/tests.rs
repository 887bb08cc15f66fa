//! The store on disk: commits survive, one opener at a time, formats.

use std::net::Ipv4Addr;

use super::*;
use crate::ipam::Allocation;
use crate::ipam::testing;

fn eni(id: &str, table: u32) -> EniRecord {
    testing::eni(id, table, &[10, 11])
}

fn alloc(c: &str, ip: u8) -> Allocation {
    testing::allocation(c, ip, "eni-z")
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
fn newer_formats_are_refused() {
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

/// `tests/fixtures/state-v1.redb` was written by the release before format
/// 2 (two allocations, a bound claim with its owner, a reserved claim with
/// its own expiry, a cooling IP): it opens with all of it intact and is
/// format 2 afterwards.
#[test]
fn a_format_1_store_is_migrated_with_everything_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v1.redb");
    std::fs::copy(&fixture, &path).expect("copy the fixture");
    let s = RedbStore::open(&path).expect("open a format-1 store");
    assert_eq!(s.format().expect("format"), FORMAT_VERSION);
    let snap = s.load().expect("load");
    assert_eq!(snap.enis.len(), 1);
    assert_eq!(snap.enis[0].ips.len(), 6);
    let mut allocated: Vec<_> = snap
        .allocations
        .iter()
        .map(|a| (a.key.container_id.as_str(), a.ip.to_string()))
        .collect();
    allocated.sort();
    assert_eq!(
        allocated,
        [
            ("sandbox-job", "10.0.1.11".to_string()),
            ("sandbox-web-0", "10.0.1.10".to_string())
        ]
    );
    let web = snap
        .allocations
        .iter()
        .find(|a| a.key.container_id == "sandbox-web-0")
        .and_then(|a| a.pod.clone())
        .expect("pod");
    assert_eq!(
        (web.namespace.as_str(), web.uid.as_deref()),
        ("default", Some("uid-web-0"))
    );
    assert_eq!(snap.claims.len(), 2);
    let bound = snap
        .claims
        .iter()
        .find(|c| c.name == "web-0")
        .expect("web-0");
    assert_eq!(bound.released_ms, None);
    assert_eq!(
        bound.owner.as_ref().map(|o| o.kind.as_str()),
        Some("StatefulSet")
    );
    let reserved = snap.claims.iter().find(|c| c.name == "pg-1").expect("pg-1");
    assert_eq!(reserved.released_ms, Some(1_699_000_000_000));
    assert_eq!(reserved.expire_after_ms, Some(3_600_000));
    assert_eq!(reserved.ip, Ipv4Addr::new(10, 0, 1, 12));
    assert_eq!(
        snap.cooling,
        vec![(Ipv4Addr::new(10, 0, 1, 13), 1_700_000_030_000)]
    );
    drop(s);
    // Opening again is a no-op.
    let s = RedbStore::open(&path).expect("reopen");
    assert_eq!(s.load().expect("load"), snap);
}
