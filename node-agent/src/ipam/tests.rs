//! Unit tests of the pool.

use super::testing::key;
use super::*;

fn eni(id: &str, ips: &[u8]) -> EniRecord {
    testing::eni(id, 101, ips)
}

fn pool(ips: &[u8], cooldown: u64) -> Ipam {
    let mut p = Ipam::new(cooldown);
    p.apply(&[Change::PutEni(eni("eni-1", ips))]);
    p
}

fn add(p: &mut Ipam, c: &str, now: u64) -> Result<Ipv4Addr, IpamError> {
    let plan = p.plan_add(&key(c), "/n", None, None, now)?;
    p.apply(&plan.changes);
    Ok(plan.allocation.ip)
}

fn del(p: &mut Ipam, c: &str, now: u64) -> Option<Ipv4Addr> {
    let (a, changes) = p.plan_release(&key(c), now)?;
    p.apply(&changes);
    Some(a.ip)
}

#[test]
fn add_is_idempotent_per_key() {
    let mut p = pool(&[10, 11], 0);
    let a = add(&mut p, "c1", 0).expect("ip");
    let plan = p.plan_add(&key("c1"), "/n", None, None, 1).expect("again");
    assert!(plan.existing);
    assert!(plan.changes.is_empty());
    assert_eq!(plan.allocation.ip, a);
    assert_ne!(add(&mut p, "c2", 0).expect("ip"), a);
}

#[test]
fn the_same_container_on_another_ifname_is_another_attachment() {
    let mut p = pool(&[10, 11], 0);
    let a = add(&mut p, "c1", 0).expect("ip");
    let other = AttachmentKey {
        ifname: "net1".into(),
        ..key("c1")
    };
    let plan = p.plan_add(&other, "/n", None, None, 0).expect("ip");
    assert_ne!(plan.allocation.ip, a);
}

#[test]
fn released_ips_cool_down_before_reuse() {
    let mut p = pool(&[10], 30_000);
    let a = add(&mut p, "c1", 1_000).expect("ip");
    assert_eq!(del(&mut p, "c1", 2_000), Some(a));
    let err = add(&mut p, "c2", 2_001).expect_err("cooling");
    assert_eq!(
        err,
        IpamError::Exhausted {
            total: 1,
            allocated: 0,
            cooling: 1
        }
    );
    assert_eq!(add(&mut p, "c2", 32_000).expect("cooled"), a);
}

#[test]
fn reusing_a_cooled_ip_clears_its_record() {
    let mut p = pool(&[10], 10);
    add(&mut p, "c1", 0).expect("ip");
    del(&mut p, "c1", 0);
    let plan = p.plan_add(&key("c2"), "/n", None, None, 100).expect("ip");
    assert_eq!(
        plan.changes[0],
        Change::RemoveCooling(Ipv4Addr::new(10, 0, 0, 10))
    );
}

#[test]
fn fresh_ips_are_preferred_over_cooled_ones() {
    let mut p = pool(&[10, 11], 30_000);
    add(&mut p, "c1", 0).expect("ip");
    del(&mut p, "c1", 0);
    assert_eq!(
        add(&mut p, "c2", 1).expect("ip"),
        Ipv4Addr::new(10, 0, 0, 11)
    );
}

#[test]
fn releasing_an_unknown_attachment_is_a_no_op() {
    let p = pool(&[10], 0);
    assert!(p.plan_release(&key("nobody"), 0).is_none());
}

#[test]
fn counts_and_view_agree() {
    let mut p = pool(&[10, 11, 12], 100);
    add(&mut p, "c1", 0).expect("ip");
    add(&mut p, "c2", 0).expect("ip");
    del(&mut p, "c2", 0);
    assert_eq!(
        p.counts(50),
        Counts {
            total: 3,
            allocated: 1,
            cooling: 1,
            reserved: 0,
            free: 1
        }
    );
    assert_eq!(
        p.counts(200),
        Counts {
            total: 3,
            allocated: 1,
            cooling: 0,
            reserved: 0,
            free: 2
        }
    );
    let ips = &p.enis()[0].ips;
    assert!(matches!(p.ip_use(&ips[0], 50), IpUse::Allocated(_)));
    assert_eq!(p.ip_use(&ips[1], 50), IpUse::Cooling(100));
    assert_eq!(p.ip_use(&ips[2], 50), IpUse::Free);
}

#[test]
fn restore_rebuilds_the_same_pool() {
    let mut p = pool(&[10, 11, 12], 100);
    add(&mut p, "c1", 0).expect("ip");
    add(&mut p, "c2", 0).expect("ip");
    del(&mut p, "c1", 5);
    let snap = Snapshot {
        enis: p.enis().to_vec(),
        allocations: p.allocations().cloned().collect(),
        cooling: vec![(Ipv4Addr::new(10, 0, 0, 10), 105)],
        claims: vec![],
    };
    let q = Ipam::restore(100, snap).expect("restore");
    assert_eq!(q.snapshot(), p.snapshot());
    assert_eq!(q.counts(6), p.counts(6));
}

#[test]
fn restore_refuses_double_allocation() {
    let a = Allocation {
        key: key("c1"),
        ip: Ipv4Addr::new(10, 0, 0, 10),
        ipv6: None,
        eni_id: "eni-1".into(),
        netns: "/n".into(),
        pod: None,
        created_ms: 0,
    };
    let b = Allocation {
        key: key("c2"),
        ..a.clone()
    };
    let snap = Snapshot {
        enis: vec![eni("eni-1", &[10])],
        allocations: vec![a, b],
        cooling: vec![],
        claims: vec![],
    };
    assert!(matches!(
        Ipam::restore(0, snap),
        Err(IpamError::DoubleAllocation { .. })
    ));
}

fn pod(name: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: name.into(),
        uid: None,
    }
}

fn add_pod(
    p: &mut Ipam,
    c: &str,
    name: &str,
    claim: Option<StaticIp>,
    now: u64,
) -> Result<Ipv4Addr, IpamError> {
    let plan = p.plan_add(&key(c), "/n", Some(&pod(name)), claim, now)?;
    p.apply(&plan.changes);
    Ok(plan.allocation.ip)
}

const STATIC: Option<StaticIp> = Some(StaticIp {
    expire_after_ms: None,
    owner: None,
});

#[test]
fn a_static_ip_stays_reserved_for_its_pod_and_comes_back_to_it() {
    let mut p = pool(&[10, 11, 12], 0);
    let ip = add_pod(&mut p, "sandbox-1", "web-0", STATIC, 0).expect("ip");
    assert_eq!(del(&mut p, "sandbox-1", 10), Some(ip));
    assert_eq!(p.counts(20).reserved, 1);
    assert!(matches!(p.ip_use(&ip, 20), IpUse::Reserved(_)));
    for (i, other) in ["a", "b"].iter().enumerate() {
        let got = add_pod(&mut p, &format!("other-{i}"), other, None, 20).expect("ip");
        assert_ne!(got, ip, "nobody else gets a reserved IP");
    }
    assert!(
        add_pod(&mut p, "other-2", "c", None, 20).is_err(),
        "the reserved IP is not free"
    );
    let again = add_pod(&mut p, "sandbox-2", "web-0", STATIC, 30).expect("its own IP");
    assert_eq!(again, ip);
    let claim = p.claims().next().expect("claim");
    assert_eq!(
        (claim.released_ms, claim.last_bound_ms, claim.created_ms),
        (None, 30, 0)
    );
}

#[test]
fn a_plain_pod_keeps_nothing() {
    let mut p = pool(&[10, 11], 30_000);
    let ip = add_pod(&mut p, "s1", "job-0", None, 0).expect("ip");
    del(&mut p, "s1", 0);
    assert_ne!(add_pod(&mut p, "s2", "job-0", None, 1).expect("ip"), ip);
    assert_eq!(p.claims().count(), 0);
}

#[test]
fn a_claim_held_by_another_sandbox_is_refused_until_that_one_goes() {
    let mut p = pool(&[10, 11], 0);
    add_pod(&mut p, "old", "web-0", STATIC, 0).expect("ip");
    assert!(matches!(
        add_pod(&mut p, "new", "web-0", STATIC, 1),
        Err(IpamError::ClaimInUse { .. })
    ));
    del(&mut p, "old", 2);
    assert!(add_pod(&mut p, "new", "web-0", STATIC, 3).is_ok());
}

#[test]
fn released_claims_expire_by_their_own_time_or_the_default() {
    let mut p = pool(&[10, 11], 1_000);
    let own = Some(StaticIp {
        expire_after_ms: Some(100),
        owner: None,
    });
    let a = add_pod(&mut p, "s1", "short", own, 0).expect("ip");
    add_pod(&mut p, "s2", "long", STATIC, 0).expect("ip");
    del(&mut p, "s1", 10);
    del(&mut p, "s2", 10);
    assert!(p.plan_expire(100, None).is_empty(), "not yet");
    let changes = p.plan_expire(110, None);
    assert_eq!(
        changes,
        vec![
            Change::RemoveClaim("default".into(), "short".into()),
            Change::PutCooling(a, 1_110)
        ]
    );
    p.apply(&changes);
    assert!(
        p.plan_expire(1_000_000, None).is_empty(),
        "no default: the other never expires"
    );
    assert_eq!(
        p.plan_expire(1_010, Some(1_000)).len(),
        2,
        "with a default it does"
    );
}

#[test]
fn claims_are_deleted_by_hand_or_with_their_owner() {
    let mut p = pool(&[10, 11, 12], 100);
    let ip = add_pod(&mut p, "s1", "web-0", STATIC, 0).expect("ip");
    assert!(matches!(
        p.plan_delete_claim("default", "web-0", false, 1),
        Err(IpamError::ClaimBound { .. })
    ));
    let (_, holder, changes) = p
        .plan_delete_claim("default", "web-0", true, 1)
        .expect("forced");
    assert_eq!(holder.expect("the running sandbox").ip, ip);
    p.apply(&changes);
    assert_eq!(p.claims().count(), 0);
    assert_eq!(p.counts(2).cooling, 1, "its IP cools down");
    assert!(matches!(
        p.plan_delete_claim("default", "web-0", false, 1),
        Err(IpamError::ClaimNotFound { .. })
    ));

    let owner = OwnerRef {
        kind: "StatefulSet".into(),
        name: "db".into(),
        uid: "u".into(),
    };
    let owned = Some(StaticIp {
        expire_after_ms: None,
        owner: Some(owner.clone()),
    });
    add_pod(&mut p, "s2", "db-0", owned.clone(), 10).expect("ip");
    add_pod(&mut p, "s3", "db-1", owned, 10).expect("ip");
    del(&mut p, "s2", 20);
    let (ended, changes) = p.plan_owner_deleted(&owner, 30);
    assert_eq!(ended.len(), 2);
    p.apply(&changes);
    assert_eq!(p.claims().count(), 0);
    assert_eq!(p.counts(31).allocated, 1, "db-1's sandbox keeps running");
    del(&mut p, "s3", 40);
    assert_eq!(
        p.counts(41).reserved,
        0,
        "and at its DEL its IP is not kept"
    );
}

#[test]
fn claims_survive_restore() {
    let mut p = pool(&[10, 11], 0);
    let ip = add_pod(&mut p, "s1", "web-0", STATIC, 0).expect("ip");
    del(&mut p, "s1", 5);
    let snap = Snapshot {
        enis: p.enis().to_vec(),
        allocations: p.allocations().cloned().collect(),
        cooling: vec![],
        claims: p.claims().cloned().collect(),
    };
    let mut q = Ipam::restore(0, snap).expect("restore");
    assert_eq!(add_pod(&mut q, "s2", "web-0", STATIC, 9).expect("ip"), ip);
}

#[test]
fn ips_spread_over_enis_in_attach_order() {
    let mut p = Ipam::new(0);
    p.apply(&[
        Change::PutEni(eni("eni-b", &[20])),
        Change::PutEni(eni("eni-a", &[10])),
    ]);
    let plan = p.plan_add(&key("c1"), "/n", None, None, 0).expect("ip");
    assert_eq!(plan.allocation.eni_id, "eni-b");
}

#[test]
fn hole_4_a_workload_recreated_over_an_orphaned_claim_adopts_it() {
    let mut p = pool(&[10, 11], 0);
    let owner = |uid: &str| {
        Some(StaticIp {
            expire_after_ms: None,
            owner: Some(OwnerRef {
                kind: "StatefulSet".into(),
                name: "web".into(),
                uid: uid.into(),
            }),
        })
    };
    let ip = add_pod(&mut p, "s1", "web-0", owner("u-old"), 0).expect("ip");
    del(&mut p, "s1", 1);
    // Orphaned (the owner's reference was taken off), then re-created.
    let mut orphan = p.claim("default", "web-0").cloned().expect("claim");
    orphan.owner = None;
    p.apply(&[Change::PutClaim(orphan)]);
    assert_eq!(
        add_pod(&mut p, "s2", "web-0", owner("u-new"), 2),
        Ok(ip),
        "the same IP"
    );
    let claim = p.claim("default", "web-0").expect("claim");
    assert_eq!(claim.owner.as_ref().map(|o| o.uid.as_str()), Some("u-new"));
    // The old owner going takes nothing; the new one's would.
    let old = OwnerRef {
        kind: "StatefulSet".into(),
        name: "web".into(),
        uid: "u-old".into(),
    };
    assert!(p.plan_owner_deleted(&old, 3).0.is_empty());
}

fn v6(n: u16) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n)
}

#[test]
fn ipv6_addresses_pair_with_unpaired_ips_lowest_first_and_the_rest_is_given_back() {
    let mut e = eni("eni-1", &[12, 10, 11]);
    assert_eq!(e.unpaired().len(), 4, "the ENI's own address and its 3 IPs");
    assert_eq!(e.unpaired()[0], e.primary_ip, "the ENI's own first");
    let left = e.pair_ipv6(&[v6(1), v6(2), v6(3)]);
    assert!(left.is_empty());
    assert_eq!(e.own_ipv6(), Some(v6(1)));
    assert_eq!(e.ipv6_of(Ipv4Addr::new(10, 0, 0, 10)), Some(v6(2)));
    assert_eq!(e.ipv6_of(Ipv4Addr::new(10, 0, 0, 11)), Some(v6(3)));
    assert_eq!(e.unpaired(), [Ipv4Addr::new(10, 0, 0, 12)]);
    // An address already paired is not paired twice; more than the
    // unpaired IPs need is given back.
    let left = e.pair_ipv6(&[v6(3), v6(4), v6(5)]);
    assert_eq!(left, [v6(5)]);
    assert_eq!(e.ipv6_of(Ipv4Addr::new(10, 0, 0, 12)), Some(v6(4)));
    assert!(e.unpaired().is_empty());
    // A pair whose IPv4 address left the ENI goes with it; the ENI's own
    // stays.
    e.ips.retain(|ip| *ip != Ipv4Addr::new(10, 0, 0, 10));
    assert!(e.pair_ipv6(&[]).is_empty());
    assert_eq!(e.ipv6.len(), 3);
    assert_eq!(e.ipv6_of(Ipv4Addr::new(10, 0, 0, 10)), None);
    assert_eq!(e.own_ipv6(), Some(v6(1)));
}

#[test]
fn a_pod_gets_its_ips_ipv6_partner_and_none_without_one() {
    let mut e = eni("eni-1", &[10, 11]);
    // The ENI's own first, then 10.0.0.10.
    e.pair_ipv6(&[v6(1), v6(2)]);
    let mut p = Ipam::new(0);
    p.apply(&[Change::PutEni(e)]);
    let plan = p.plan_add(&key("c1"), "/n", None, None, 0).expect("plan");
    assert_eq!(plan.allocation.ip, Ipv4Addr::new(10, 0, 0, 10));
    assert_eq!(plan.allocation.ipv6, Some(v6(2)));
    p.apply(&plan.changes);
    let plan = p.plan_add(&key("c2"), "/n", None, None, 0).expect("plan");
    assert_eq!(plan.allocation.ipv6, None, "an IP without a partner");
    // The pair survives the store.
    let q = Ipam::restore(0, p.snapshot()).expect("restore");
    assert_eq!(q.allocation(&key("c1")).and_then(|a| a.ipv6), Some(v6(2)));
}

#[test]
fn a_free_ip_with_an_ipv6_partner_is_handed_out_first() {
    let mut e = eni("eni-1", &[10, 11, 12]);
    e.ips.retain(|ip| *ip != Ipv4Addr::new(10, 0, 0, 11));
    e.pair_ipv6(&[]);
    e.ips.push(Ipv4Addr::new(10, 0, 0, 11));
    e.ipv6.push((Ipv4Addr::new(10, 0, 0, 11), v6(7)));
    let mut p = Ipam::new(0);
    p.apply(&[Change::PutEni(e)]);
    assert_eq!(add(&mut p, "c1", 0), Ok(Ipv4Addr::new(10, 0, 0, 11)));
    assert_eq!(add(&mut p, "c2", 0), Ok(Ipv4Addr::new(10, 0, 0, 10)));
}
