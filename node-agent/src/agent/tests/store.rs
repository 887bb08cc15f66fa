use super::*;

#[tokio::test]
async fn a_failed_commit_stops_all_changes_until_restart() {
    let store = MemoryStore::default();
    let fail = Arc::clone(&store.fail_commits);
    let h = harness_with(DEFAULT_LIMITS, Box::new(store)).await;
    add(&h.agent, "c1").await;
    fail.store(true, Ordering::SeqCst);
    let e = h
        .agent
        .handle(add_req("c2"), None)
        .await
        .expect_err("store down");
    assert_eq!(e.kind, ErrorKind::Store);
    assert!(
        h.agent
            .dataplane
            .wired()
            .iter()
            .all(|w| w != &crate::dataplane::host_ifname("c2", "eth0")),
        "the failed ADD was unwired"
    );
    fail.store(false, Ordering::SeqCst);
    let e = h
        .agent
        .handle(del_req("c1"), None)
        .await
        .expect_err("poisoned");
    assert!(e.message.contains("restart"), "{}", e.message);
    let e = h
        .agent
        .handle(del_req("c2"), None)
        .await
        .expect_err("poisoned");
    assert_eq!(
        e.kind,
        ErrorKind::Store,
        "even a DEL with nothing to do must not claim success"
    );
    assert!(matches!(
        h.agent.handle(Request::Status, None).await,
        Ok(Response::Status(StatusReply { ready: false, .. }))
    ));
}

#[tokio::test]
async fn hole_2_a_poisoned_agent_stops_talking_to_the_cloud_and_asks_to_exit() {
    let store = MemoryStore::default();
    let fail = Arc::clone(&store.fail_commits);
    let h = harness_with(DEFAULT_LIMITS, Box::new(store)).await;
    let agent = Arc::new(h.agent);
    add(&agent, "c1").await;
    let mut poisoned = agent.poisoned();
    assert!(poisoned.borrow().is_none());
    fail.store(true, Ordering::SeqCst);
    agent
        .handle(add_req("c2"), None)
        .await
        .expect_err("store down");
    let why = tokio::time::timeout(Duration::from_secs(1), poisoned.wait_for(Option::is_some))
        .await
        .expect("the run loop hears of it at once")
        .expect("watch")
        .clone();
    assert!(why.expect("a reason").contains("injected"));
    let enis_before = agent.cloud.list_enis().await.expect("list");
    // Far more demand than the pool holds: a healthy agent would create ENIs.
    let e = agent.grow_locked(50).await.expect_err("no cloud work");
    assert_eq!(e.kind, ErrorKind::Store);
    assert_eq!(
        agent.cloud.list_enis().await.expect("list"),
        enis_before,
        "no ENI created or changed after the poison"
    );
    tokio::time::timeout(Duration::from_secs(1), Arc::clone(&agent).maintain_pool())
        .await
        .expect("the maintenance loop ends instead of growing every tick");
}
