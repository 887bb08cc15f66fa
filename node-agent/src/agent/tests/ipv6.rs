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
    all_paired_on(&h.agent);
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

/// A dual-stack agent with `claims` as the cluster's, and the other node's
/// static claim web-0 (its IPv4 address and, on the same ENI of that node,
/// its IPv6 address) taken over by this node.
async fn taking_over_web_0(
    claims: &Arc<claims::RecordingClaims>,
) -> (TestAgent, crate::cluster_claims::HeldElsewhere) {
    let cloud = FakeCloud::new(DEFAULT_LIMITS);
    cloud.give_ipv6_blocks();
    let a = dual_with_claims(cloud, Box::new(MemoryStore::default()), claims).await;
    take_over_web_0(a, claims).await
}

async fn dual_with_claims(
    cloud: FakeCloud,
    store: Box<dyn Store>,
    claims: &Arc<claims::RecordingClaims>,
) -> TestAgent {
    Agent::start_with_claims(
        cloud,
        FakeDataplane::default(),
        store,
        dual(),
        system_clock(),
        Arc::clone(claims) as Arc<dyn crate::cluster_claims::ClusterClaims>,
    )
    .await
    .expect("start")
}

async fn take_over_web_0(
    a: TestAgent,
    claims: &Arc<claims::RecordingClaims>,
) -> (TestAgent, crate::cluster_claims::HeldElsewhere) {
    let mut held = claims::held_on_another_node(&a).await;
    let v6 = a
        .cloud
        .assign_ipv6s(&held.eni_id, 1, &[])
        .await
        .expect("its IPv6 address there");
    held.ipv6 = Some(v6[0]);
    *claims.answer.lock().expect("lock") = Some(Ok(Some(held.clone())));
    *claims.take.lock().expect("lock") = Some(Ok(crate::cluster_claims::TakeOver::Taken(
        crate::cluster_claims::HeldElsewhere {
            moving_here: true,
            ..held.clone()
        },
    )));
    (a, held)
}

#[tokio::test]
async fn a_static_pods_ipv6_address_follows_it_to_another_node() {
    let claims = Arc::new(claims::RecordingClaims::default());
    let (a, held) = taking_over_web_0(&claims).await;
    let v6 = held.ipv6.expect("v6");
    let r = match a.handle(claims::static_add_req("s1", "web-0"), None).await {
        Ok(Response::Added(r)) => r,
        other => panic!("ADD of a pod whose claim moves here: {other:?}"),
    };
    assert_eq!((r.ip, r.ipv6), (held.ip, Some(v6)), "both addresses moved");
    assert!(a.cloud.ipv6_of(&held.eni_id).is_empty(), "off the old ENI");
    assert!(a.cloud.ipv6_of(&r.eni_id).contains(&v6), "on the new one");
    let eni = a.pool().eni(&r.eni_id).cloned().expect("its ENI");
    assert_eq!(eni.ipv6_of(r.ip), Some(v6), "the partner of its address");
    // What operators see, and the cluster's objects are made of.
    let view = super::super::views::claims(&a.pool(), "ins-test", None);
    let web = view.iter().find(|c| c.name == "web-0").expect("claim");
    assert_eq!((web.ip, web.ipv6), (held.ip, Some(v6)));
    // Its next sandbox, after the first ends, has both again.
    a.handle(del_req("s1"), None).await.expect("DEL");
    let again = match a.handle(claims::static_add_req("s2", "web-0"), None).await {
        Ok(Response::Added(r)) => r,
        other => panic!("ADD: {other:?}"),
    };
    assert_eq!((again.ip, again.ipv6), (held.ip, Some(v6)));
}

#[tokio::test]
async fn a_static_ipv6_address_taken_meanwhile_is_replaced_and_the_pod_has_both() {
    let claims = Arc::new(claims::RecordingClaims::default());
    let (a, held) = taking_over_web_0(&claims).await;
    let v6 = held.ipv6.expect("v6");
    // Its old node let it go, and someone else in the VPC took it before
    // it could follow.
    a.cloud
        .unassign_ipv6s(&held.eni_id, &[v6])
        .await
        .expect("let go");
    let subnet = a.node().and_then(|n| n.subnet).expect("subnet").id;
    let stranger = a.cloud.create_eni(&subnet, 0).await.expect("create");
    a.cloud
        .assign_named_ipv6s(&stranger.id, &[v6])
        .await
        .expect("taken");
    let r = match a.handle(claims::static_add_req("s1", "web-0"), None).await {
        Ok(Response::Added(r)) => r,
        other => panic!("ADD: {other:?}"),
    };
    assert_eq!(r.ip, held.ip, "the IPv4 address moved");
    let new = r.ipv6.expect("an IPv6 address all the same");
    assert_ne!(new, v6);
    assert_eq!(a.cloud.ipv6_of(&stranger.id), [v6], "never taken from them");
    all_paired_on(&a);
}

/// [`all_paired`] for an agent outside a harness.
fn all_paired_on(a: &TestAgent) {
    for eni in a.pool().enis() {
        assert!(eni.unpaired().is_empty(), "{eni:?}");
        let mut ours: Vec<_> = eni.ipv6.iter().map(|(_, v6)| *v6).collect();
        let mut cloud = a.cloud.ipv6_of(&eni.id);
        ours.sort();
        cloud.sort();
        assert_eq!(ours, cloud, "the cloud's IPv6 addresses of {}", eni.id);
    }
}

#[tokio::test]
async fn a_static_ipv6_address_assigned_here_before_a_crash_is_the_claims_after_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let cloud = FakeCloud::new(DEFAULT_LIMITS);
    cloud.give_ipv6_blocks();
    let claims = Arc::new(claims::RecordingClaims::default());
    let store = || Box::new(RedbStore::open(&path).expect("store"));
    let a = dual_with_claims(cloud.clone(), store(), &claims).await;
    let (a, held) = take_over_web_0(a, &claims).await;
    let v6 = held.ipv6.expect("v6");
    // Both addresses arrive; the reply of the IPv6 assignment is lost, and
    // the agent dies before anything is committed.
    cloud
        .lose_next_ipv6_reply
        .store(true, std::sync::atomic::Ordering::SeqCst);
    a.handle(claims::static_add_req("s1", "web-0"), None)
        .await
        .expect_err("the reply was lost");
    drop(a);
    let here: Vec<String> = cloud
        .list_cluster_enis()
        .await
        .expect("list")
        .into_iter()
        .filter(|e| e.ipv6s.contains(&v6))
        .map(|e| e.id)
        .collect();
    assert_eq!(here.len(), 1, "on one ENI: {here:?}");
    assert_ne!(here[0], held.eni_id, "the new one");

    *claims.word.lock().expect("lock") = Some(crate::ipam::Word::Here);
    let b = dual_with_claims(cloud.clone(), store(), &claims).await;
    // Other pods first: none gets the claim's IPv6 address.
    for i in 0..5 {
        let r = add(&b, &format!("p{i}")).await;
        assert_ne!(
            r.ipv6,
            Some(v6),
            "pod p{i} got the static pod's IPv6 address"
        );
    }
    b.drive_handovers().await.expect("drive");
    let r = match b.handle(claims::static_add_req("s2", "web-0"), None).await {
        Ok(Response::Added(r)) => r,
        other => panic!("ADD after the restart: {other:?}"),
    };
    assert_eq!((r.ip, r.ipv6), (held.ip, Some(v6)));
    all_paired_on(&b);
}

#[tokio::test]
async fn a_reclaimed_static_ip_frees_its_ipv6_address_with_it() {
    let h = harness_configured(
        DEFAULT_LIMITS,
        Box::new(MemoryStore::default()),
        AgentConfig {
            claim_expiry: Some(Duration::from_secs(3600)),
            ..dual()
        },
    )
    .await;
    h.agent.cloud.give_ipv6_blocks();
    h.agent.pair_ipv6().await.expect("pair");
    let owner = proto::wire::OwnerRef {
        kind: "StatefulSet".into(),
        name: "web".into(),
        uid: "u1".into(),
    };
    // web-0 for a reclaim by hand, web-1 owned by a workload that goes,
    // web-2 expiring ten minutes after its release.
    let static_add = |c: &str, pod: &str| {
        let Request::Add(mut req) = claims::static_add_req(c, pod) else {
            unreachable!()
        };
        let asked = req.static_ip.as_mut().expect("static");
        match pod {
            "web-1" => asked.owner = Some(owner.clone()),
            "web-2" => asked.expire_after_ms = Some(600_000),
            _ => {}
        }
        Request::Add(req)
    };
    let mut held = Vec::new();
    for (c, pod) in [("s0", "web-0"), ("s1", "web-1"), ("s2", "web-2")] {
        match h.agent.handle(static_add(c, pod), None).await {
            Ok(Response::Added(r)) => held.push((r.ip, r.ipv6.expect("both"))),
            other => panic!("ADD {pod}: {other:?}"),
        }
        h.agent.handle(del_req(c), None).await.expect("DEL");
    }
    let by_hand = Request::DeleteClaim {
        namespace: "default".into(),
        name: "web-0".into(),
        force: false,
    };
    h.agent.handle(by_hand, None).await.expect("delete");
    h.agent
        .handle(Request::OwnerDeleted(owner.clone()), None)
        .await
        .expect("owner deleted");
    h.now.fetch_add(
        Duration::from_secs(601).as_millis() as u64,
        std::sync::atomic::Ordering::SeqCst,
    );
    h.agent
        .handle(Request::Reclaim { dry_run: false }, None)
        .await
        .expect("reclaim");
    let gone = |name: &str| h.agent.pool().claim("default", name).is_none();
    assert!(
        gone("web-0") && gone("web-1") && gone("web-2"),
        "every claim ended"
    );
    let pool = h.agent.pool();
    for (v4, v6) in held {
        let eni = pool
            .enis()
            .iter()
            .find(|e| e.ips.contains(&v4))
            .cloned()
            .expect("still pooled");
        assert_eq!(
            eni.ipv6_of(v4),
            Some(v6),
            "the partner stays with its address"
        );
        assert!(
            !matches!(
                pool.ip_use(&v4, u64::MAX),
                crate::ipam::IpUse::Reserved(_) | crate::ipam::IpUse::Allocated(_)
            ),
            "{v4} is free again (after its cooldown)"
        );
        assert!(pool.allocations().all(|a| a.ipv6 != Some(v6)));
    }
}
