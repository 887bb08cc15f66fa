use super::claims::eventually;
use super::*;

#[tokio::test]
async fn restart_restores_allocations_and_adopts_unknown_enis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.redb");
    let shared = FakeCloud::new(DEFAULT_LIMITS);
    let clock = system_clock();
    let first = {
        let cloud = shared.clone();
        let store = Box::new(RedbStore::open(&db).expect("store"));
        let a = Agent::start(
            cloud,
            FakeDataplane::default(),
            store,
            config(),
            Arc::clone(&clock),
        )
        .await
        .expect("start");
        let r = add(&a, "c1").await;
        // An ENI attached behind the pool's back, as if the agent died
        // between attaching and committing.
        let subnet = a.node().and_then(|n| n.subnet).expect("a subnet").id;
        let eni = a.cloud.create_eni(&subnet, 0).await.expect("create");
        a.cloud.attach_eni(&eni.id).await.expect("attach");
        a.cloud.assign_ips(&eni.id, 2, &[]).await.expect("assign");
        r
    };
    let cloud = shared.clone();
    let store = Box::new(RedbStore::open(&db).expect("store"));
    let a = Agent::start(cloud, FakeDataplane::default(), store, config(), clock)
        .await
        .expect("restart");
    assert_eq!(allocated(&a), vec![("c1".to_string(), first.ip)]);
    assert_eq!(add(&a, "c1").await.ip, first.ip);
    assert_eq!(a.pool().enis().len(), 2, "the unknown ENI was adopted");
}

#[tokio::test]
async fn pods_get_the_mtu_of_their_enis_link_and_a_restart_records_a_changed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.redb");
    let shared = FakeCloud::new(DEFAULT_LIMITS);
    let start = |mtu: u32| {
        let dataplane = FakeDataplane::default();
        dataplane.eni_mtu.store(mtu, Ordering::SeqCst);
        let store = Box::new(RedbStore::open(&db).expect("store"));
        Agent::start(shared.clone(), dataplane, store, config(), system_clock())
    };
    {
        // A new ENI: its link says 9001, whatever the cloud's default.
        let a = start(9001).await.expect("start");
        assert_eq!(add(&a, "c1").await.mtu, 9001);
        assert!(a.pool().enis().iter().all(|e| e.mtu == 9001));
    }
    // The link changed while the agent was down: the stored record follows
    // it at start, and the next pod gets it (the store keeps it too).
    let a = start(1450).await.expect("restart");
    assert!(
        a.pool().enis().iter().all(|e| e.mtu == 1450),
        "{:?}",
        a.pool().enis()
    );
    assert_eq!(add(&a, "c2").await.mtu, 1450);
    drop(a);
    let reopened = RedbStore::open(&db).expect("store");
    let snapshot = reopened.load().expect("load");
    assert!(
        snapshot.enis.iter().all(|e| e.mtu == 1450),
        "{:?}",
        snapshot.enis
    );
}

#[tokio::test]
async fn an_eni_that_cannot_be_programmed_is_detached_and_deleted() {
    let h = harness().await;
    h.agent
        .dataplane
        .fail_program_eni
        .store(true, Ordering::SeqCst);
    let e = h
        .agent
        .handle(add_req("c1"), None)
        .await
        .expect_err("no usable ENI");
    assert_eq!(e.kind, ErrorKind::Dataplane);
    let enis = h.agent.cloud.list_enis().await.expect("list");
    assert!(
        enis.iter().all(|e| e.primary),
        "no ENI left behind: {enis:?}"
    );
    assert!(h.agent.pool().enis().is_empty());
}

#[tokio::test]
async fn an_add_past_the_callers_deadline_is_refused_and_leaves_nothing() {
    let h = harness().await;
    let now = h.now.load(Ordering::SeqCst);
    let late = Request::Add(AddRequest {
        key: key("late"),
        netns: "/n".into(),
        pod: None,
        deadline_ms: Some(now - 1),
        static_ip: None,
    });
    let e = h.agent.handle(late, None).await.expect_err("too late");
    assert_eq!(e.kind, ErrorKind::NotReady);
    assert!(allocated(&h.agent).is_empty());
    assert!(h.agent.dataplane.wired().is_empty());
}

/// Hole 7: an ADD that waits for the pool to grow is cut off at its
/// caller's deadline (a maintenance round stuck behind a throttling cloud
/// here), instead of holding a serving task for as long as the round takes.
#[tokio::test]
async fn hole_7_an_add_waiting_for_growth_is_cut_off_at_the_callers_deadline() {
    let h = harness_configured(
        Limits {
            max_enis: 2,
            max_ips_per_eni: 2,
        },
        Box::new(MemoryStore::default()),
        with_targets(0, 0, None),
    )
    .await;
    // The maintenance loop grows (it is running), but its round never
    // ends: the ADD can only wait.
    h.agent.loop_grows.store(true, Ordering::SeqCst);
    let Request::Add(mut req) = add_req("waits") else {
        unreachable!("an ADD")
    };
    req.deadline_ms = deadline_in(300);
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        h.agent.handle(Request::Add(req), None),
    )
    .await
    .expect("answered, not left waiting for the round");
    let e = answer.expect_err("no IP within the deadline");
    assert_eq!(e.kind, ErrorKind::NotReady, "{e:?}");
    assert!(e.message.contains("deadline"), "{}", e.message);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off at the deadline: {:?}",
        started.elapsed()
    );
    assert!(allocated(&h.agent).is_empty());
    assert!(h.agent.dataplane.wired().is_empty());
}

async fn churn(h: &Harness, pods: usize) {
    for i in 0..pods {
        add(&h.agent, &format!("p{i}")).await;
    }
    for i in 0..pods {
        h.agent
            .handle(del_req(&format!("p{i}")), None)
            .await
            .expect("del");
    }
    h.now.fetch_add(30_001, Ordering::SeqCst);
}

async fn cloud_ips(h: &Harness) -> usize {
    h.agent
        .cloud
        .list_enis()
        .await
        .expect("list")
        .iter()
        .filter(|e| !e.primary)
        .map(|e| e.secondary_ips.len())
        .sum()
}

#[tokio::test]
async fn spare_ips_go_back_a_batch_at_a_time_down_to_the_warm_target() {
    let h = harness().await;
    churn(&h, 10).await;
    let before = h.agent.pool().counts(h.now.load(Ordering::SeqCst));
    h.agent.shrink().await.expect("shrink");
    let after = h.agent.pool().counts(h.now.load(Ordering::SeqCst));
    assert_eq!(after.total, before.total - 5, "one batch of five");
    while h.agent.pool().counts(h.now.load(Ordering::SeqCst)).free > 2 {
        h.agent.shrink().await.expect("shrink");
    }
    let end = h.agent.pool().counts(h.now.load(Ordering::SeqCst));
    assert_eq!(end.free, 2, "the warm target stays");
    assert_eq!(cloud_ips(&h).await, end.total, "the cloud got them back");
}

#[tokio::test]
async fn the_minimum_holds_and_an_emptied_eni_goes() {
    let targets = |min_ip| AgentConfig {
        pool: crate::sizing::Targets {
            warm_ip: 0,
            warm_eni: 0,
            min_ip,
            max_eni: None,
            release_batch: 100,
        },
        ..config()
    };
    let h = harness_configured(DEFAULT_LIMITS, Box::new(MemoryStore::default()), targets(3)).await;
    churn(&h, 6).await;
    h.agent.shrink().await.expect("shrink");
    assert_eq!(
        h.agent.pool().counts(h.now.load(Ordering::SeqCst)).total,
        3,
        "never below the minimum"
    );

    let h = harness_configured(DEFAULT_LIMITS, Box::new(MemoryStore::default()), targets(0)).await;
    churn(&h, 6).await;
    h.agent.shrink().await.expect("shrink");
    assert!(
        h.agent.pool().enis().is_empty(),
        "the empty ENI left the pool"
    );
    assert!(
        h.agent
            .cloud
            .list_enis()
            .await
            .expect("list")
            .iter()
            .all(|e| e.primary),
        "and the node"
    );
}

#[tokio::test]
async fn max_eni_caps_growth() {
    let config = with_targets(0, 0, Some(2));
    let h = harness_configured(
        Limits {
            max_enis: 4,
            max_ips_per_eni: 3,
        },
        Box::new(MemoryStore::default()),
        config,
    )
    .await;
    add(&h.agent, "a").await;
    add(&h.agent, "b").await;
    let e = h
        .agent
        .handle(add_req("c"), None)
        .await
        .expect_err("one secondary ENI of two IPs at most");
    assert_eq!(e.kind, ErrorKind::NoIpAvailable);
}

#[tokio::test]
async fn restart_drops_what_vanished_from_the_cloud_but_never_a_held_ip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.redb");
    let cloud = FakeCloud::new(Limits {
        max_enis: 4,
        max_ips_per_eni: 4,
    });
    let (held, spare, eni) = {
        let a = start_on(&cloud, &db).await;
        let held = add(&a, "keeper").await.ip;
        let eni = a.pool().enis()[0].clone();
        let spare: Vec<_> = eni.ips.iter().copied().filter(|ip| *ip != held).collect();
        (held, spare, eni.id)
    };
    // Behind the agent's back: the spare IPs go.
    cloud.unassign_ips(&eni, &spare).await.expect("unassign");
    let a = start_on(&cloud, &db).await;
    let ips = a
        .pool()
        .eni(&eni)
        .expect("eni kept: a pod holds one of its IPs")
        .ips
        .clone();
    assert_eq!(ips, vec![held]);
    assert_eq!(allocated(&a), vec![("keeper".to_string(), held)]);
    a.handle(del_req("keeper"), None).await.expect("del");
    drop(a);
    // Now the whole ENI goes, and no pod holds anything on it.
    cloud.detach_eni(&eni).await.expect("detach");
    cloud.delete_eni(&eni).await.expect("delete");
    let store = Box::new(RedbStore::open(&db).expect("store"));
    let a = Agent::start(
        cloud,
        FakeDataplane::default(),
        store,
        config(),
        system_clock(),
    )
    .await
    .expect("restart");
    assert!(
        a.pool().eni(&eni).is_none(),
        "the vanished ENI left the pool"
    );
}

#[tokio::test]
async fn leaked_enis_are_deleted_once_older_than_the_grace_period() {
    let cloud = FakeCloud::new(DEFAULT_LIMITS);
    let store = Box::new(MemoryStore::default());
    let a = Agent::start(
        cloud.clone(),
        FakeDataplane::default(),
        store,
        config(),
        system_clock(),
    )
    .await
    .expect("start");
    add(&a, "in-use").await;
    let subnet = a.node().and_then(|n| n.subnet).expect("subnet").id;
    let old = cloud.create_eni(&subnet, 0).await.expect("create");
    let young = cloud.create_eni(&subnet, 0).await.expect("create");
    cloud.age_eni(&old.id, 3600);
    assert_eq!(a.reap_leaked_enis().await.expect("reap"), 1);
    let mut left: Vec<String> = cloud
        .list_node_detached_enis()
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.id)
        .collect();
    left.extend(
        cloud
            .list_enis()
            .await
            .expect("list")
            .into_iter()
            .filter(|e| !e.primary)
            .map(|e| e.id),
    );
    assert!(!left.contains(&old.id), "the old unattached ENI went");
    assert!(
        left.contains(&young.id),
        "a young one may be on its way to a node"
    );
    assert_eq!(left.len(), 2, "the pool's attached ENI stays: {left:?}");
}

/// An agent on `cloud` with its store at `db` (a restart when it exists).
async fn start_on(cloud: &FakeCloud, db: &std::path::Path) -> TestAgent {
    let store = Box::new(RedbStore::open(db).expect("store"));
    Agent::start(
        cloud.clone(),
        FakeDataplane::default(),
        store,
        config(),
        system_clock(),
    )
    .await
    .expect("start")
}

/// `n` ADDs at once; the distinct IPs they got and the growth calls they
/// cost.
async fn burst(agent: &Arc<TestAgent>, prefix: &str, n: usize) -> (usize, usize) {
    let calls = || {
        agent
            .cloud
            .growth_calls
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before = calls();
    let adds: Vec<_> = (0..n)
        .map(|i| {
            let agent = Arc::clone(agent);
            let id = format!("{prefix}{i}");
            tokio::spawn(async move { add(&agent, &id).await })
        })
        .collect();
    let mut ips = std::collections::HashSet::new();
    for a in adds {
        ips.insert(a.await.expect("ADD").ip);
    }
    (ips.len(), calls() - before)
}

/// [`burst`] while the pool cannot grow until every ADD got an IP or waits
/// for one. The fake cloud answers at once; a real one takes a while,
/// during which a burst's ADDs pile up behind the first growth. Without
/// this the growth count depended on how fast the spawned ADDs happened to
/// arrive (and failed on a loaded machine).
async fn burst_behind_a_busy_cloud(
    agent: &Arc<TestAgent>,
    prefix: &'static str,
    n: usize,
) -> (usize, usize) {
    let cloud_busy = agent.grow_lock.lock().await;
    let bursting = tokio::spawn({
        let agent = Arc::clone(agent);
        async move { burst(&agent, prefix, n).await }
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let allocated = agent.txn.read(|ipam, now| ipam.counts(now).allocated);
            let waiting = agent
                .waiting_for_ip
                .load(std::sync::atomic::Ordering::SeqCst);
            if allocated + waiting == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("every ADD got an IP or waits for one");
    drop(cloud_busy);
    bursting.await.expect("burst")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_adds_on_a_cold_pool_grows_in_few_rounds() {
    let agent = Arc::new(harness().await.agent);
    let (ips, rounds) = burst_behind_a_busy_cloud(&agent, "burst", 30).await;
    assert_eq!(ips, 30);
    assert!(
        rounds <= 6,
        "30 ADDs waiting on a warm pool of 2 took {rounds} growth calls; \
         each waiting ADD must not grow on its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_maintenance_loop_a_burst_is_served_as_ips_arrive_and_nothing_is_given_back_meanwhile()
 {
    let agent = Arc::new(harness().await.agent);
    let maintenance = tokio::spawn(Arc::clone(&agent).maintain_pool());
    let (ips, calls) = burst_behind_a_busy_cloud(&agent, "looped", 30).await;
    assert_eq!(ips, 30, "30 ADDs, 30 distinct IPs");
    assert!(
        calls <= 6,
        "the loop grew for all waiting ADDs at once: {calls} growth calls"
    );
    // Right after the burst the spare IPs stay (a burst comes in waves).
    one_more_round(&agent).await;
    let counts = agent.txn.read(|ipam, now| ipam.counts(now));
    assert_eq!(counts.allocated, 30);
    assert!(
        counts.total >= 30 + 2,
        "nothing given back right after a burst: {counts:?}"
    );
    maintenance.abort();
}

/// Maintenance rounds run so far.
fn rounds(agent: &TestAgent) -> u64 {
    agent.growth_rounds.borrow().count
}

/// Waits until the maintenance loop sleeps with nothing asked of it;
/// the rounds it finished.
async fn loop_asleep(agent: &TestAgent) -> u64 {
    let asleep = || {
        agent
            .maintenance_view()
            .filter(|m| m.asleep_until_ms.is_some())
    };
    eventually("the maintenance loop asleep", || asleep().is_some()).await;
    asleep().map_or(0, |m| m.rounds)
}

/// One whole maintenance round from here: the loop asleep, woken, and
/// that round finished.
async fn one_more_round(agent: &TestAgent) {
    let before = loop_asleep(agent).await;
    agent.pool_changed.notify_one();
    eventually("the round after the wake-up", || {
        agent.maintenance_view().is_some_and(|m| m.rounds > before)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_that_leaves_the_pool_short_gets_it_refilled_after_its_reply() {
    let agent = Arc::new(harness().await.agent);
    let maintenance = tokio::spawn(Arc::clone(&agent).maintain_pool());
    eventually("the first round", || rounds(&agent) >= 1).await;
    let before = rounds(&agent);
    add(&agent, "short").await;
    let free = || agent.txn.read(|ipam, now| ipam.counts(now).free);
    eventually("the warm pool of 2 refilled", || free() >= 2).await;
    // The round's IPs are in the pool a moment before its end is counted.
    eventually("a round refilled it", || rounds(&agent) > before).await;
    maintenance.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_on_a_pool_above_its_targets_costs_no_cloud_call() {
    let config = with_targets(2, 10, None);
    let agent = Arc::new(
        harness_configured(DEFAULT_LIMITS, Box::new(MemoryStore::default()), config)
            .await
            .agent,
    );
    let maintenance = tokio::spawn(Arc::clone(&agent).maintain_pool());
    let total = || agent.txn.read(|ipam, now| ipam.counts(now).total);
    eventually("the minimum of 10 IPs", || total() >= 10).await;
    // Counted as calls to the cloud, not as rounds of the loop: the loop
    // also wakes to give freed memory back (once a second, process-wide,
    // so other agents of this test process wake it too).
    let calls = || agent.cloud.growth_calls.load(Ordering::SeqCst);
    // Whatever the start asked for is done once the loop sleeps.
    loop_asleep(&agent).await;
    let before = calls();
    for i in 0..3 {
        add(&agent, &format!("calm{i}")).await;
    }
    // A round that runs after the ADDs grows nothing.
    one_more_round(&agent).await;
    assert_eq!(
        calls(),
        before,
        "7 IPs still free against a warm target of 2: nothing to grow"
    );
    assert_eq!(total(), 10, "and nothing grown");
    maintenance.abort();
}

/// A round that grows IPs on an ENI and a new ENI at once: the new ENI is
/// refused, the IPs arrive. The ADD that waited gets one (it also saw the
/// round end with an error, and took the error when it looked at that
/// first: half the time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_add_gets_the_ips_of_a_round_whose_other_step_failed() {
    let limits = Limits {
        max_enis: 4,
        max_ips_per_eni: 3,
    };
    for attempt in 0..8 {
        let h = harness_configured(
            limits,
            Box::new(MemoryStore::default()),
            with_targets(1, 0, None),
        )
        .await;
        let agent = Arc::new(h.agent);
        let maintenance = tokio::spawn(Arc::clone(&agent).maintain_pool());
        let free = || agent.txn.read(|ipam, now| ipam.counts(now).free);
        eventually("the warm IP", || free() >= 1).await;
        // The ENI has room for one IP more; the rest asks for an ENI.
        agent.cloud.set_eni_quota(0);
        add(&agent, "first").await;
        let second = agent.handle(add_req("second"), None).await;
        assert!(
            matches!(second, Ok(Response::Added(_))),
            "attempt {attempt}: {second:?}"
        );
        maintenance.abort();
    }
}

/// The VPC's ENI quota used up: the ADD is refused `ENILimit`, the node
/// shows the condition (its event follows) and the metrics count it.
#[tokio::test]
async fn an_eni_refused_for_the_quota_sets_enilimit_and_is_counted() {
    let count = || {
        crate::metrics::render(&std::collections::BTreeMap::new())
            .lines()
            .find_map(|l| {
                l.strip_prefix("vpc_cni_eni_limit_total ")?
                    .parse::<f64>()
                    .ok()
            })
            .expect("always shown")
    };
    let h = harness().await;
    h.agent.cloud.set_eni_quota(0);
    let before = count();
    let e = h
        .agent
        .handle(add_req("no-eni"), None)
        .await
        .expect_err("no ENI to take an IP from");
    assert_eq!(e.kind, ErrorKind::EniLimit, "{e:?}");
    assert!(
        h.agent
            .conditions
            .get(super::super::conditions::ENI_LIMIT)
            .is_some()
    );
    // Process-wide: other tests may count meanwhile.
    assert!(count() >= before + 1.0, "{before}");
}

/// The test configuration with these pool targets (no warm ENI, a release
/// batch of 5).
fn with_targets(warm_ip: usize, min_ip: usize, max_eni: Option<u32>) -> AgentConfig {
    AgentConfig {
        pool: crate::sizing::Targets {
            warm_ip,
            warm_eni: 0,
            min_ip,
            max_eni,
            release_batch: 5,
        },
        ..config()
    }
}
