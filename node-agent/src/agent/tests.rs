use std::sync::atomic::{AtomicU64, Ordering};

use proto::wire::{AttachmentKey, GcAttachment, IpState, PodRef};

use super::*;
use crate::cloud::Limits;
use crate::cloud::fake::FakeCloud;
use crate::dataplane::{FakeDataplane, Recorded};
use crate::store::{MemoryStore, RedbStore};

type TestAgent = Agent<FakeCloud, FakeDataplane>;

struct Harness {
    agent: TestAgent,
    now: Arc<AtomicU64>,
}

const DEFAULT_LIMITS: Limits = Limits {
    max_enis: 4,
    max_ips_per_eni: 20,
};

fn config() -> AgentConfig {
    AgentConfig {
        leaked_eni_grace: Duration::from_secs(600),
        claim_expiry: None,
        enable_ownerref: true,
        ip_cooldown: Duration::from_secs(30),
        pool: pool::Targets {
            warm_ip: 2,
            warm_eni: 0,
            min_ip: 0,
            max_eni: None,
            release_batch: 5,
        },
    }
}

async fn harness_with(limits: Limits, store: Box<dyn Store>) -> Harness {
    harness_configured(limits, store, config()).await
}

async fn harness_configured(limits: Limits, store: Box<dyn Store>, config: AgentConfig) -> Harness {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let t = Arc::clone(&now);
    let clock: Clock = Arc::new(move || t.load(Ordering::SeqCst));
    let cloud = FakeCloud::new(limits);
    let agent = Agent::start(cloud, FakeDataplane::default(), store, config, clock)
        .await
        .expect("start");
    Harness { agent, now }
}

async fn harness() -> Harness {
    harness_with(DEFAULT_LIMITS, Box::new(MemoryStore::default())).await
}

fn key(c: &str) -> AttachmentKey {
    AttachmentKey {
        network: "vpc".into(),
        container_id: c.into(),
        ifname: "eth0".into(),
    }
}

fn add_req(c: &str) -> Request {
    Request::Add(AddRequest {
        key: key(c),
        netns: format!("/var/run/netns/{c}"),
        pod: Some(PodRef {
            namespace: "default".into(),
            name: c.into(),
            uid: None,
        }),
        deadline_ms: None,
        static_ip: None,
    })
}

fn del_req(c: &str) -> Request {
    Request::Del(DelRequest {
        key: key(c),
        netns: None,
    })
}

async fn add(a: &TestAgent, c: &str) -> AddReply {
    match a.handle(add_req(c), None).await {
        Ok(Response::Added(r)) => r,
        other => panic!("ADD {c}: {other:?}"),
    }
}

fn allocated(a: &TestAgent) -> Vec<(String, std::net::Ipv4Addr)> {
    let mut v: Vec<_> = a
        .lock()
        .ipam
        .allocations()
        .map(|x| (x.key.container_id.clone(), x.ip))
        .collect();
    v.sort();
    v
}

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
    let view = h.agent.lock().ipam.view(h.now.load(Ordering::SeqCst));
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
        let subnet = a.node.subnet.clone().expect("a subnet").id;
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
    assert_eq!(a.lock().ipam.enis().len(), 2, "the unknown ENI was adopted");
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
    assert!(h.agent.lock().ipam.enis().is_empty());
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
    let before = h.agent.lock().ipam.counts(h.now.load(Ordering::SeqCst));
    h.agent.shrink().await.expect("shrink");
    let after = h.agent.lock().ipam.counts(h.now.load(Ordering::SeqCst));
    assert_eq!(after.total, before.total - 5, "one batch of five");
    while h
        .agent
        .lock()
        .ipam
        .counts(h.now.load(Ordering::SeqCst))
        .free
        > 2
    {
        h.agent.shrink().await.expect("shrink");
    }
    let end = h.agent.lock().ipam.counts(h.now.load(Ordering::SeqCst));
    assert_eq!(end.free, 2, "the warm target stays");
    assert_eq!(cloud_ips(&h).await, end.total, "the cloud got them back");
}

#[tokio::test]
async fn the_minimum_holds_and_an_emptied_eni_goes() {
    let targets = |min_ip| AgentConfig {
        ip_cooldown: Duration::from_secs(30),
        leaked_eni_grace: Duration::from_secs(600),
        claim_expiry: None,
        enable_ownerref: true,
        pool: pool::Targets {
            warm_ip: 0,
            warm_eni: 0,
            min_ip,
            max_eni: None,
            release_batch: 100,
        },
    };
    let h = harness_configured(DEFAULT_LIMITS, Box::new(MemoryStore::default()), targets(3)).await;
    churn(&h, 6).await;
    h.agent.shrink().await.expect("shrink");
    assert_eq!(
        h.agent
            .lock()
            .ipam
            .counts(h.now.load(Ordering::SeqCst))
            .total,
        3,
        "never below the minimum"
    );

    let h = harness_configured(DEFAULT_LIMITS, Box::new(MemoryStore::default()), targets(0)).await;
    churn(&h, 6).await;
    h.agent.shrink().await.expect("shrink");
    assert!(
        h.agent.lock().ipam.enis().is_empty(),
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
    let config = AgentConfig {
        ip_cooldown: Duration::from_secs(30),
        leaked_eni_grace: Duration::from_secs(600),
        claim_expiry: None,
        enable_ownerref: true,
        pool: pool::Targets {
            warm_ip: 0,
            warm_eni: 0,
            min_ip: 0,
            max_eni: Some(2),
            release_batch: 5,
        },
    };
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
        let store = Box::new(RedbStore::open(&db).expect("store"));
        let a = Agent::start(
            cloud.clone(),
            FakeDataplane::default(),
            store,
            config(),
            system_clock(),
        )
        .await
        .expect("start");
        let held = add(&a, "keeper").await.ip;
        let eni = a.lock().ipam.enis()[0].clone();
        let spare: Vec<_> = eni.ips.iter().copied().filter(|ip| *ip != held).collect();
        (held, spare, eni.id)
    };
    // Behind the agent's back: the spare IPs go.
    cloud.unassign_ips(&eni, &spare).await.expect("unassign");
    let store = Box::new(RedbStore::open(&db).expect("store"));
    let a = Agent::start(
        cloud.clone(),
        FakeDataplane::default(),
        store,
        config(),
        system_clock(),
    )
    .await
    .expect("restart");
    let ips = a
        .lock()
        .ipam
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
        a.lock().ipam.eni(&eni).is_none(),
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
    let subnet = a.node.subnet.clone().expect("subnet").id;
    let old = cloud.create_eni(&subnet, 0).await.expect("create");
    let young = cloud.create_eni(&subnet, 0).await.expect("create");
    cloud.age_eni(&old.id, 3600);
    assert_eq!(a.reap_leaked_enis().await.expect("reap"), 1);
    let left: Vec<String> = cloud
        .list_cluster_enis()
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(!left.contains(&old.id), "the old unattached ENI went");
    assert!(
        left.contains(&young.id),
        "a young one may be on its way to a node"
    );
    assert_eq!(left.len(), 2, "the pool's attached ENI stays: {left:?}");
}

/// A claim store that records what it is told and answers `locate` as set.
#[derive(Default)]
struct RecordingClaims {
    answer: Mutex<Option<Result<Option<crate::claims::HeldElsewhere>, String>>>,
    located: Mutex<Vec<String>>,
    synced: Mutex<Vec<Vec<crate::ipam::Claim>>>,
    published: Mutex<Vec<ClaimChange>>,
}

impl ClaimStore for RecordingClaims {
    fn locate<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> crate::claims::ClaimFuture<'a, Option<crate::claims::HeldElsewhere>> {
        self.located
            .lock()
            .expect("lock")
            .push(format!("{namespace}/{name}"));
        let answer = self
            .answer
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or(Ok(None));
        Box::pin(async move { answer.map_err(crate::claims::ClaimStoreError) })
    }

    fn sync(&self, _: &str, claims: &[crate::ipam::Claim]) {
        self.synced.lock().expect("lock").push(claims.to_vec());
    }

    fn publish(&self, _: &str, changes: &[ClaimChange]) {
        self.published
            .lock()
            .expect("lock")
            .extend_from_slice(changes);
    }
}

fn static_add_req(c: &str, pod: &str) -> Request {
    let Request::Add(mut req) = add_req(c) else {
        unreachable!()
    };
    req.pod.as_mut().expect("pod").name = pod.into();
    req.static_ip = Some(proto::wire::StaticIpRequest::default());
    Request::Add(req)
}

async fn with_claims(store: Box<dyn Store>, claims: Arc<RecordingClaims>) -> TestAgent {
    Agent::start_with_claims(
        FakeCloud::new(DEFAULT_LIMITS),
        FakeDataplane::default(),
        store,
        config(),
        system_clock(),
        claims,
    )
    .await
    .expect("start")
}

#[tokio::test]
async fn the_claim_store_sees_every_claim_change_in_order_and_all_claims_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(
        Box::new(RedbStore::open(&path).expect("store")),
        Arc::clone(&claims),
    )
    .await;
    a.handle(static_add_req("s1", "web-0"), None)
        .await
        .expect("ADD");
    a.handle(del_req("s1"), None).await.expect("DEL");
    a.handle(static_add_req("s2", "web-0"), None)
        .await
        .expect("ADD again");
    add(&a, "plain").await;
    assert_eq!(
        *claims.located.lock().expect("lock"),
        ["default/web-0"],
        "asked once: after that the node holds the claim; plain pods are never asked"
    );
    let published = claims.published.lock().expect("lock").clone();
    let states: Vec<_> = published
        .iter()
        .map(|c| match c {
            ClaimChange::Put(c) => (c.name.as_str(), c.released_ms.is_some()),
            ClaimChange::Removed(_, n) => (n.as_str(), true),
        })
        .collect();
    assert_eq!(
        states,
        [("web-0", false), ("web-0", true), ("web-0", false)],
        "made, released, bound again"
    );
    a.handle(del_req("s2"), None).await.expect("DEL");
    a.handle(
        Request::DeleteClaim {
            namespace: "default".into(),
            name: "web-0".into(),
            force: false,
        },
        None,
    )
    .await
    .expect("delete claim");
    assert!(matches!(
        claims.published.lock().expect("lock").last(),
        Some(ClaimChange::Removed(ns, n)) if ns == "default" && n == "web-0"
    ));
    a.handle(static_add_req("s3", "db-0"), None)
        .await
        .expect("ADD");
    drop(a);

    let again = Arc::new(RecordingClaims::default());
    let _restarted = with_claims(
        Box::new(RedbStore::open(&path).expect("store")),
        Arc::clone(&again),
    )
    .await;
    let synced = again.synced.lock().expect("lock").clone();
    assert_eq!(synced.len(), 1);
    assert_eq!(
        synced[0]
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["db-0"],
        "at start the cluster learns what the store holds"
    );
}

#[tokio::test]
async fn a_static_pod_held_on_another_node_or_unlocatable_gets_no_new_ip() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    *claims.answer.lock().expect("lock") = Some(Ok(Some(crate::claims::HeldElsewhere {
        node: "ins-other".into(),
        ip: std::net::Ipv4Addr::new(10, 0, 9, 9),
        subnet_id: "subnet-1".into(),
        eni_id: "eni-9".into(),
    })));
    let e = a
        .handle(static_add_req("s1", "web-0"), None)
        .await
        .expect_err("held elsewhere");
    assert_eq!(e.kind, ErrorKind::NotReady);
    assert!(
        e.message.contains("10.0.9.9") && e.message.contains("ins-other"),
        "{}",
        e.message
    );
    *claims.answer.lock().expect("lock") = Some(Err("apiserver unreachable".into()));
    let e = a
        .handle(static_add_req("s1", "web-0"), None)
        .await
        .expect_err("cannot ask");
    assert_eq!(e.kind, ErrorKind::NotReady);
    assert!(e.message.contains("apiserver unreachable"), "{}", e.message);
    assert!(allocated(&a).is_empty(), "no IP handed out meanwhile");
    assert!(claims.published.lock().expect("lock").is_empty());

    *claims.answer.lock().expect("lock") = Some(Ok(None));
    a.handle(static_add_req("s1", "web-0"), None)
        .await
        .expect("claimed nowhere: a new IP");
}
