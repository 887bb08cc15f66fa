use super::*;

#[tokio::test]
async fn add_grows_an_empty_pool_and_is_idempotent() {
    let h = harness().await;
    let first = add(&h.agent, "c1").await;
    assert_eq!(first.gateway, POD_GATEWAY);
    assert!(first.host_ifname.starts_with("vpc"));
    let again = add(&h.agent, "c1").await;
    assert_eq!(first, again);
    let other = add(&h.agent, "c2").await;
    assert_ne!(other.ip, first.ip);
    assert!(
        h.agent
            .dataplane
            .calls()
            .iter()
            .any(|c| matches!(c, Recorded::ProgramEni(_)))
    );
}

#[tokio::test]
async fn del_unwires_releases_and_is_idempotent() {
    let h = harness().await;
    let r = add(&h.agent, "c1").await;
    assert_eq!(
        h.agent.handle(del_req("c1"), None).await,
        Ok(Response::Deleted)
    );
    assert!(h.agent.dataplane.wired().is_empty());
    assert!(allocated(&h.agent).is_empty());
    assert_eq!(
        h.agent.handle(del_req("c1"), None).await,
        Ok(Response::Deleted)
    );
    assert_eq!(
        h.agent.handle(del_req("never-added"), None).await,
        Ok(Response::Deleted)
    );
    let view = h.agent.pool_view();
    let state = view
        .enis
        .iter()
        .flat_map(|e| &e.ips)
        .find(|i| i.ip == r.ip)
        .expect("ip")
        .state
        .clone();
    assert!(matches!(state, IpState::Cooling { .. }));
}

#[tokio::test]
async fn a_released_ip_is_not_reused_during_its_cooldown() {
    let h = harness_with(
        Limits {
            max_enis: 2,
            max_ips_per_eni: 3,
        },
        Box::new(MemoryStore::default()),
    )
    .await;
    let a = add(&h.agent, "c1").await;
    add(&h.agent, "c2").await;
    h.agent.handle(del_req("c1"), None).await.expect("del");
    let err = h
        .agent
        .handle(add_req("c3"), None)
        .await
        .expect_err("only a cooling IP is left");
    assert_eq!(err.kind, ErrorKind::NoIpAvailable);
    assert!(err.message.contains("limits"), "{}", err.message);
    h.now.fetch_add(30_001, Ordering::SeqCst);
    assert_eq!(add(&h.agent, "c3").await.ip, a.ip);
}

#[tokio::test]
async fn check_confirms_and_reports_what_is_wrong() {
    let h = harness().await;
    let r = add(&h.agent, "c1").await;
    let check = |expected: Vec<String>, c: &str| {
        Request::Check(CheckRequest {
            key: key(c),
            netns: "/var/run/netns/c1".into(),
            expected_addresses: expected,
        })
    };
    assert_eq!(
        h.agent
            .handle(check(vec![format!("{}/32", r.ip)], "c1"), None)
            .await,
        Ok(Response::Checked)
    );
    assert_eq!(
        h.agent.handle(check(vec![], "c1"), None).await,
        Ok(Response::Checked)
    );
    let e = h
        .agent
        .handle(check(vec!["10.9.9.9/32".into()], "c1"), None)
        .await
        .expect_err("mismatch");
    assert_eq!(e.kind, ErrorKind::Mismatch);
    let e = h
        .agent
        .handle(check(vec![], "nobody"), None)
        .await
        .expect_err("unknown");
    assert_eq!(e.kind, ErrorKind::UnknownAttachment);
}

#[tokio::test]
async fn gc_releases_only_stale_attachments_of_its_network() {
    let h = harness().await;
    add(&h.agent, "keep").await;
    add(&h.agent, "stale").await;
    let other = AttachmentKey {
        network: "other".into(),
        ..key("elsewhere")
    };
    h.agent
        .handle(
            Request::Add(AddRequest {
                key: other,
                netns: "/n".into(),
                pod: None,
                deadline_ms: None,
                static_ip: None,
            }),
            None,
        )
        .await
        .expect("add other network");
    let reply = h
        .agent
        .handle(
            Request::Gc(GcRequest {
                network: "vpc".into(),
                valid: vec![GcAttachment {
                    container_id: "keep".into(),
                    ifname: "eth0".into(),
                }],
            }),
            None,
        )
        .await;
    assert_eq!(reply, Ok(Response::Collected { released: 1 }));
    let left: Vec<String> = allocated(&h.agent).into_iter().map(|(c, _)| c).collect();
    assert_eq!(left, ["elsewhere", "keep"]);
}

#[tokio::test]
async fn a_failed_wiring_rolls_the_allocation_back() {
    let h = harness().await;
    h.agent.dataplane.fail_attach.store(true, Ordering::SeqCst);
    let e = h
        .agent
        .handle(add_req("c1"), None)
        .await
        .expect_err("fails");
    assert_eq!(e.kind, ErrorKind::Dataplane);
    assert!(allocated(&h.agent).is_empty());
}

#[tokio::test]
async fn hole_4_a_failed_repeated_add_never_unwires_a_working_pod() {
    let h = harness().await;
    let first = add(&h.agent, "c1").await;
    h.agent.dataplane.fail_attach.store(true, Ordering::SeqCst);
    let e = h
        .agent
        .handle(add_req("c1"), None)
        .await
        .expect_err("the repeated ADD fails");
    assert_eq!(e.kind, ErrorKind::Dataplane);
    assert_eq!(
        h.agent.dataplane.wired(),
        vec![first.host_ifname.clone()],
        "the pod stays wired"
    );
    assert_eq!(allocated(&h.agent), vec![("c1".to_string(), first.ip)]);
    h.agent.dataplane.fail_attach.store(false, Ordering::SeqCst);
    assert_eq!(add(&h.agent, "c1").await, first);
}

#[tokio::test]
async fn status_is_ready_until_nothing_can_be_served() {
    let h = harness_with(
        Limits {
            max_enis: 2,
            max_ips_per_eni: 2,
        },
        Box::new(MemoryStore::default()),
    )
    .await;
    let ready = |r: Reply| matches!(r, Ok(Response::Status(StatusReply { ready: true, .. })));
    assert!(
        ready(h.agent.handle(Request::Status, None).await),
        "an empty pool that can grow is ready"
    );
    add(&h.agent, "c1").await;
    let r = h.agent.handle(Request::Status, None).await;
    match r {
        Ok(Response::Status(StatusReply {
            ready: false,
            reason: Some(reason),
        })) => assert!(reason.contains("limits")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn start_programs_egress_and_check_fails_when_it_is_lost() {
    let egress = crate::dataplane::Egress::masquerade(vec!["10.0.0.0/16".parse().expect("cidr")])
        .expect("egress");
    let now = Arc::new(AtomicU64::new(1_000_000));
    let t = Arc::clone(&now);
    let clock: Clock = Arc::new(move || t.load(Ordering::SeqCst));
    let agent = Agent::start(
        FakeCloud::new(DEFAULT_LIMITS),
        FakeDataplane::with_egress(egress.clone()),
        Box::new(MemoryStore::default()),
        config(),
        clock,
    )
    .await
    .expect("start");
    assert!(
        agent
            .dataplane
            .calls()
            .contains(&Recorded::ProgramEgress(egress))
    );
    add(&agent, "c1").await;
    let check = || {
        Request::Check(CheckRequest {
            key: key("c1"),
            netns: "/var/run/netns/c1".into(),
            expected_addresses: vec![],
        })
    };
    assert_eq!(agent.handle(check(), None).await, Ok(Response::Checked));
    agent.dataplane.lose_egress();
    let e = agent.handle(check(), None).await.expect_err("egress lost");
    assert_eq!(e.kind, ErrorKind::Mismatch);
    assert!(
        e.message
            .contains("egress masquerade and connmark of the node"),
        "{}",
        e.message
    );
    // The reconcile period's repair programs it again.
    agent.repair_egress().await;
    assert_eq!(agent.handle(check(), None).await, Ok(Response::Checked));
    let programs = agent
        .dataplane
        .calls()
        .iter()
        .filter(|c| matches!(c, Recorded::ProgramEgress(_)))
        .count();
    assert_eq!(programs, 2);
    agent.repair_egress().await;
    assert_eq!(
        agent
            .dataplane
            .calls()
            .iter()
            .filter(|c| matches!(c, Recorded::ProgramEgress(_)))
            .count(),
        2,
        "nothing to repair: nothing programmed"
    );
}
