//! Dual stack over the fake cloud: IPs get IPv6 partners, pods get both,
//! what is given back takes its partner along.

use super::*;

fn dual() -> AgentConfig {
    AgentConfig {
        ipv6: true,
        ..config()
    }
}

/// Every IP of the pool's ENIs has a partner, and the cloud's IPv6
/// addresses of each ENI are exactly its partners.
fn all_paired(h: &Harness) {
    for eni in h.agent.pool().enis() {
        assert!(eni.unpaired().is_empty(), "{eni:?}");
        let mut ours: Vec<_> = eni.ipv6.iter().map(|(_, v6)| *v6).collect();
        let mut cloud = h.agent.cloud.ipv6_of(&eni.id);
        ours.sort();
        cloud.sort();
        assert_eq!(ours, cloud, "the cloud's IPv6 addresses of {}", eni.id);
    }
}

#[tokio::test]
async fn a_dual_stack_pod_gets_its_ips_partner_and_the_pool_keeps_them_paired() {
    let h = harness_configured(DEFAULT_LIMITS, Box::new(MemoryStore::default()), dual()).await;
    // Without IPv6 blocks the pool still serves IPv4, and says why not
    // both.
    let a = add(&h.agent, "v4only").await;
    assert_eq!((a.ipv6, a.gateway_v6), (None, None));
    assert!(h.agent.pair_ipv6().await.is_err(), "the subnet has no /64");

    h.agent.cloud.give_ipv6_blocks();
    let programmed = |h: &Harness| {
        h.agent
            .dataplane
            .calls()
            .iter()
            .filter(|c| matches!(c, Recorded::ProgramEni(_)))
            .count()
    };
    let before = programmed(&h);
    let paired = h.agent.pair_ipv6().await.expect("pair");
    assert!(paired > 0);
    all_paired(&h);
    // Each ENI has its own IPv6 address (its primary address's partner),
    // put on its link at once.
    for eni in h.agent.pool().enis() {
        assert!(eni.own_ipv6().is_some(), "{eni:?}");
    }
    assert_eq!(programmed(&h), before + h.agent.pool().enis().len());
    let r = add(&h.agent, "c1").await;
    let v6 = r.ipv6.expect("an IPv6 address");
    assert_eq!(r.gateway_v6, Some(crate::dataplane::POD_GATEWAY_V6));
    let eni = h.agent.pool().eni(&r.eni_id).cloned().expect("its ENI");
    assert_eq!(
        eni.ipv6_of(r.ip),
        Some(v6),
        "the partner of its IPv4 address"
    );
    // A repeated ADD answers the same; the next pod gets another pair.
    assert_eq!(add(&h.agent, "c1").await.ipv6, Some(v6));
    assert_ne!(add(&h.agent, "c2").await.ipv6, Some(v6));

    // Growth pairs what it adds before ADDs see it.
    for i in 0..30 {
        let r = add(&h.agent, &format!("p{i}")).await;
        assert!(r.ipv6.is_some(), "pod p{i}: {r:?}");
    }
    all_paired(&h);

    // Given back, IPs take their partners along.
    for i in 0..30 {
        h.agent
            .handle(del_req(&format!("p{i}")), None)
            .await
            .expect("DEL");
    }
    h.now.fetch_add(3_600_000, Ordering::SeqCst);
    for _ in 0..10 {
        h.agent.shrink().await.expect("shrink");
    }
    all_paired(&h);
    let left: usize = h.agent.pool().enis().iter().map(|e| e.ips.len()).sum();
    assert!(left < 30, "the pool shrank: {left}");
}

/// A static pod's two addresses come back together after its agent dies
/// without a word (kill -9: no DEL, nothing flushed by hand) and a new one
/// starts on the same store, and after the pod's own restart.
#[tokio::test]
async fn a_static_pod_gets_both_addresses_back_after_a_crash_and_its_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.redb");
    let cloud = FakeCloud::new(DEFAULT_LIMITS);
    cloud.give_ipv6_blocks();
    let start = |cloud: FakeCloud| {
        let db = db.clone();
        async move {
            Agent::start(
                cloud,
                FakeDataplane::default(),
                Box::new(RedbStore::open(&db).expect("store")),
                dual(),
                system_clock(),
            )
            .await
            .expect("start")
        }
    };
    let added = |r: Result<Response, proto::wire::AgentError>| match r {
        Ok(Response::Added(r)) => (r.ip, r.ipv6.expect("an IPv6 address")),
        other => panic!("ADD: {other:?}"),
    };
    let a = start(cloud.clone()).await;
    let first = added(a.handle(claims::static_add_req("s1", "web-0"), None).await);
    // Other pods come and go around it.
    for i in 0..5 {
        add(&a, &format!("p{i}")).await;
    }
    drop(a);

    let b = start(cloud.clone()).await;
    b.handle(del_req("s1"), None).await.expect("DEL");
    for i in 0..5 {
        b.handle(del_req(&format!("p{i}")), None)
            .await
            .expect("DEL");
        add(&b, &format!("q{i}")).await;
    }
    let again = added(b.handle(claims::static_add_req("s2", "web-0"), None).await);
    assert_eq!(again, first, "the same IPv4 and IPv6 addresses");
    let eni = b
        .pool()
        .enis()
        .iter()
        .find(|e| e.ips.contains(&first.0))
        .cloned()
        .expect("its ENI");
    assert!(
        cloud.ipv6_of(&eni.id).contains(&first.1),
        "still on the ENI in the cloud"
    );
}
