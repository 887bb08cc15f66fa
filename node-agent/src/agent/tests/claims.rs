use super::*;
use crate::phase::ClaimPhase;

/// A claim store that records what it is told and answers `locate` as set.
#[derive(Default)]
pub(super) struct RecordingClaims {
    pub(super) answer: Mutex<Option<Result<Option<crate::cluster_claims::HeldElsewhere>, String>>>,
    pub(super) located: Mutex<Vec<String>>,
    pub(super) synced: Mutex<Vec<Vec<crate::ipam::Claim>>>,
    pub(super) published: Mutex<Vec<ClaimChange>>,
    /// What `pod_facts` answers; `None`: no cluster.
    pub(super) facts: Mutex<
        Option<Result<crate::cluster_claims::PodFacts, crate::cluster_claims::PodFactsError>>,
    >,
    /// Claims announced, and whether announcing fails.
    pub(super) announced: Mutex<Vec<String>>,
    pub(super) announce_fails: std::sync::atomic::AtomicBool,
    /// What `take_over` answers; `None`: the trait's default (refused).
    pub(super) take: Mutex<Option<Result<crate::cluster_claims::TakeOver, String>>>,
    /// Take-overs asked for (namespace/name by node).
    pub(super) taken: Mutex<Vec<String>>,
    /// What `word` answers; `None`: unknown.
    pub(super) word: Mutex<Option<crate::ipam::Word>>,
    /// Words asked for so far, and what each answer waits for first
    /// (`None`: answered at once).
    pub(super) words_asked: std::sync::atomic::AtomicUsize,
    pub(super) word_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// Claims given back (namespace/name to node).
    pub(super) given_back: Mutex<Vec<String>>,
}

impl ClusterClaims for RecordingClaims {
    fn locate<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> crate::cluster_claims::ClaimFuture<'a, Option<crate::cluster_claims::HeldElsewhere>> {
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
        Box::pin(async move { answer.map_err(crate::cluster_claims::ClusterClaimsError) })
    }

    fn sync<'a>(
        &'a self,
        _: &'a str,
        claims: &'a [crate::ipam::Claim],
    ) -> crate::cluster_claims::ClaimFuture<'a, ()> {
        self.synced.lock().expect("lock").push(claims.to_vec());
        Box::pin(async { Ok(()) })
    }

    fn publish<'a>(
        &'a self,
        _: &'a str,
        changes: &'a [ClaimChange],
    ) -> crate::cluster_claims::ClaimFuture<'a, ()> {
        self.published
            .lock()
            .expect("lock")
            .extend_from_slice(changes);
        Box::pin(async { Ok(()) })
    }

    fn pod_facts<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<
                        Option<crate::cluster_claims::PodFacts>,
                        crate::cluster_claims::PodFactsError,
                    >,
                > + Send
                + 'a,
        >,
    > {
        let answer = self.facts.lock().expect("lock").clone();
        Box::pin(async move { answer.transpose() })
    }

    fn take_over<'a>(
        &'a self,
        node: &'a str,
        namespace: &'a str,
        name: &'a str,
        _: &'a crate::cluster_claims::HeldElsewhere,
    ) -> crate::cluster_claims::ClaimFuture<'a, crate::cluster_claims::TakeOver> {
        self.taken
            .lock()
            .expect("lock")
            .push(format!("{namespace}/{name} by {node}"));
        let answer = self.take.lock().expect("lock").clone().unwrap_or_else(|| {
            Ok(crate::cluster_claims::TakeOver::Refused(
                "this claim store cannot move claims between nodes".into(),
            ))
        });
        Box::pin(async move { answer.map_err(crate::cluster_claims::ClusterClaimsError) })
    }

    fn word<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> crate::cluster_claims::ClaimFuture<'a, crate::ipam::Word> {
        let word = self
            .word
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or(crate::ipam::Word::Unknown);
        let gate = self.word_gate.lock().expect("lock").clone();
        self.words_asked
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.notified().await;
            }
            Ok(word)
        })
    }

    fn give_back<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        held: &'a crate::cluster_claims::HeldElsewhere,
        _: &'a str,
    ) -> crate::cluster_claims::ClaimFuture<'a, ()> {
        self.given_back
            .lock()
            .expect("lock")
            .push(format!("{namespace}/{name} to {}", held.node));
        Box::pin(async { Ok(()) })
    }

    fn announce<'a>(
        &'a self,
        _: &'a str,
        claim: &'a crate::ipam::Claim,
    ) -> crate::cluster_claims::ClaimFuture<'a, ()> {
        let fails = self
            .announce_fails
            .load(std::sync::atomic::Ordering::SeqCst);
        if !fails {
            self.announced
                .lock()
                .expect("lock")
                .push(format!("{}/{} {}", claim.namespace, claim.name, claim.ip));
        }
        Box::pin(async move {
            if fails {
                Err(crate::cluster_claims::ClusterClaimsError(
                    "apiserver down".into(),
                ))
            } else {
                Ok(())
            }
        })
    }
}

/// Waits (a few seconds at most) until `done` holds: the claim store hears
/// from the outbox asynchronously.
pub(super) async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

fn delete_claim_req(pod: &str) -> Request {
    Request::DeleteClaim {
        namespace: "default".into(),
        name: pod.into(),
        force: false,
    }
}

pub(super) fn static_add_req(c: &str, pod: &str) -> Request {
    let Request::Add(mut req) = add_req(c) else {
        unreachable!()
    };
    req.pod.as_mut().expect("pod").name = pod.into();
    req.static_ip = Some(proto::wire::StaticIpRequest::default());
    Request::Add(req)
}

pub(super) async fn with_claims(store: Box<dyn Store>, claims: Arc<RecordingClaims>) -> TestAgent {
    with_claims_on(FakeCloud::new(DEFAULT_LIMITS), store, claims).await
}

/// [`with_claims`] on `cloud` (an agent restarting on one node).
pub(super) async fn with_claims_on(
    cloud: FakeCloud,
    store: Box<dyn Store>,
    claims: Arc<RecordingClaims>,
) -> TestAgent {
    Agent::start_with_claims(
        cloud,
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
async fn the_cluster_claims_sees_every_claim_change_in_order_and_all_claims_at_start() {
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
    eventually("three claim changes published", || {
        claims.published.lock().expect("lock").len() >= 3
    })
    .await;
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
    a.handle(delete_claim_req("web-0"), None)
        .await
        .expect("delete claim");
    eventually("the release and the removal published", || {
        claims.published.lock().expect("lock").len() >= 5
    })
    .await;
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
    eventually("the restarted agent synced", || {
        !again.synced.lock().expect("lock").is_empty()
    })
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
    *claims.answer.lock().expect("lock") = Some(Ok(Some(crate::cluster_claims::HeldElsewhere {
        node: "ins-other".into(),
        ip: std::net::Ipv4Addr::new(10, 0, 9, 9),
        ipv6: None,
        subnet_id: "subnet-1".into(),
        zone: String::new(),
        eni_id: "eni-9".into(),
        moving_here: false,
        created_ms: None,
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

/// A reserved static claim, `web-0`'s, on the pool's ENI; a second ENI of
/// the node in the same subnet, attached behind the pool's back; then the
/// claim's ENI deleted in the console. Returns the claim's IP and the
/// second ENI.
async fn claim_whose_eni_vanishes(a: &TestAgent) -> (std::net::Ipv4Addr, String) {
    let ip = match a.handle(static_add_req("s1", "web-0"), None).await {
        Ok(Response::Added(r)) => r.ip,
        other => panic!("ADD: {other:?}"),
    };
    a.handle(del_req("s1"), None).await.expect("DEL");
    let old = a
        .pool()
        .claim("default", "web-0")
        .expect("claim")
        .eni_id
        .clone();
    let subnet = a.node().and_then(|n| n.subnet).expect("subnet").id;
    let other = a.cloud.create_eni(&subnet, 1).await.expect("create");
    a.cloud.attach_eni(&other.id).await.expect("attach");
    a.cloud.detach_eni(&old).await.expect("detach");
    a.cloud.delete_eni(&old).await.expect("delete");
    (ip, other.id)
}

#[tokio::test]
async fn hole_1_a_static_claim_whose_eni_vanished_gets_the_same_address_back() {
    let h = harness().await;
    let a = &h.agent;
    let (ip, other) = claim_whose_eni_vanishes(a).await;
    match a.handle(static_add_req("s2", "web-0"), None).await {
        Ok(Response::Added(r)) => {
            assert_eq!(r.ip, ip, "the same address");
            assert_eq!(r.eni_id, other, "on the node's ENI that is left");
        }
        other => panic!("ADD after the ENI vanished: {other:?}"),
    }
    let listed = a.cloud.list_enis().await.expect("list");
    assert!(
        listed
            .iter()
            .any(|e| e.id == other && e.secondary_ips.contains(&ip)),
        "the cloud has it there: {listed:?}"
    );
    let claim = a.pool().claim("default", "web-0").cloned().expect("claim");
    assert_eq!((claim.eni_id.as_str(), claim.lost), (other.as_str(), None));
}

#[tokio::test]
async fn hole_1_a_static_claim_whose_address_was_taken_is_lost_with_its_own_code() {
    let h = harness().await;
    let a = &h.agent;
    let (ip, _) = claim_whose_eni_vanishes(a).await;
    // Someone else in the VPC takes the address meanwhile.
    let subnet = a.node().and_then(|n| n.subnet).expect("subnet").id;
    let thief = a.cloud.create_eni(&subnet, 0).await.expect("create");
    a.cloud
        .assign_named_ips(&thief.id, &[ip])
        .await
        .expect("taken");
    let e = a
        .handle(static_add_req("s2", "web-0"), None)
        .await
        .expect_err("lost");
    assert_eq!(e.kind, ErrorKind::ClaimLost);
    assert!(
        e.message.contains(&ip.to_string()) && e.message.contains("claims delete default/web-0"),
        "says what happened and what to do: {}",
        e.message
    );
    assert!(
        allocated(a).is_empty(),
        "nothing committed that cannot be wired"
    );
    let views = a.claim_views();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].status, "Lost");
    a.handle(delete_claim_req("web-0"), None)
        .await
        .expect("a lost claim is deleted by hand");
    match a.handle(static_add_req("s3", "web-0"), None).await {
        Ok(Response::Added(r)) => assert_ne!(r.ip, ip, "a new address"),
        other => panic!("ADD after the claim was deleted: {other:?}"),
    }
}

#[tokio::test]
async fn the_pods_annotations_decide_whether_it_keeps_its_ip() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    // The runtime said nothing; the pod's annotation says Never.
    *claims.facts.lock().expect("lock") = Some(Ok(crate::cluster_claims::PodFacts {
        keep_ip: Some(true),
        expire_after_ms: Some(3_600_000),
        owner: None,
        requested_ip: None,
    }));
    let Request::Add(mut plain) = add_req("s1") else {
        unreachable!()
    };
    plain.pod.as_mut().expect("pod").name = "web-0".into();
    a.handle(Request::Add(plain.clone()), None)
        .await
        .expect("ADD");
    let claim = a
        .pool()
        .claim("default", "web-0")
        .cloned()
        .expect("a static claim made from the annotation");
    assert_eq!(claim.expire_after_ms, Some(3_600_000));
    // An annotation saying Immediate wins over a runtime asking for a static IP.
    *claims.facts.lock().expect("lock") = Some(Ok(crate::cluster_claims::PodFacts {
        keep_ip: Some(false),
        ..Default::default()
    }));
    a.handle(static_add_req("s2", "app"), None)
        .await
        .expect("ADD");
    assert!(a.pool().claim("default", "app").is_none());
    // A malformed annotation fails the ADD with its own words.
    *claims.facts.lock().expect("lock") = Some(Err(crate::cluster_claims::PodFactsError::Invalid(
        "annotation tke.cloud.tencent.com/vpc-ip-claim-delete-policy: \"never\"".into(),
    )));
    let e = a
        .handle(static_add_req("s3", "bad"), None)
        .await
        .expect_err("invalid annotation");
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert!(
        e.message.contains("vpc-ip-claim-delete-policy"),
        "{}",
        e.message
    );
    // The cluster cannot be asked: not ready, retried by the runtime.
    *claims.facts.lock().expect("lock") = Some(Err(
        crate::cluster_claims::PodFactsError::Unavailable("apiserver down".into()),
    ));
    let e = a
        .handle(static_add_req("s4", "later"), None)
        .await
        .expect_err("cluster unavailable");
    assert_eq!(e.kind, ErrorKind::NotReady);
}

#[tokio::test]
async fn a_first_static_bind_is_announced_before_the_add_answers_or_undone() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    claims
        .announce_fails
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = a
        .handle(static_add_req("s1", "web-0"), None)
        .await
        .expect_err("the cluster could not be told");
    assert_eq!(e.kind, ErrorKind::NotReady);
    let pool = a.pool();
    assert!(
        pool.claim("default", "web-0").is_none() && pool.allocations().next().is_none(),
        "nothing promised, nothing held"
    );
    claims
        .announce_fails
        .store(false, std::sync::atomic::Ordering::SeqCst);
    a.handle(static_add_req("s2", "web-0"), None)
        .await
        .expect("ADD");
    a.handle(del_req("s2"), None).await.expect("DEL");
    a.handle(static_add_req("s3", "web-0"), None)
        .await
        .expect("ADD again");
    let announced = claims.announced.lock().expect("lock").clone();
    assert_eq!(
        announced.len(),
        1,
        "only the first bind waits on the cluster: {announced:?}"
    );
    assert!(announced[0].starts_with("default/web-0 "));
}

/// Another node's ENI in this node's subnet (attached nowhere here) with
/// one secondary IP: where a static claim held elsewhere lives.
pub(super) async fn held_on_another_node(a: &TestAgent) -> crate::cluster_claims::HeldElsewhere {
    let subnet = a.node().and_then(|n| n.subnet).expect("subnet").id;
    let theirs = a.cloud.create_eni(&subnet, 1).await.expect("create");
    crate::cluster_claims::HeldElsewhere {
        node: "ins-other".into(),
        ip: theirs.secondary_ips[0],
        ipv6: None,
        subnet_id: subnet,
        zone: String::new(),
        eni_id: theirs.id,
        moving_here: false,
        created_ms: Some(1_000),
    }
}

/// The ENIs, anywhere in the VPC, carrying `ip`.
pub(super) async fn cloud_has(a: &TestAgent, ip: std::net::Ipv4Addr) -> Vec<String> {
    let listed = a.cloud.list_cluster_enis().await.expect("list");
    listed
        .into_iter()
        .filter(|e| e.secondary_ips.contains(&ip))
        .map(|e| e.id)
        .collect()
}

#[tokio::test]
async fn a_static_ip_taken_over_from_another_node_moves_here_with_its_pod() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    let held = held_on_another_node(&a).await;
    let ip = held.ip;
    *claims.answer.lock().expect("lock") = Some(Ok(Some(held.clone())));
    *claims.take.lock().expect("lock") = Some(Ok(crate::cluster_claims::TakeOver::Taken(
        crate::cluster_claims::HeldElsewhere {
            moving_here: true,
            ..held.clone()
        },
    )));
    let reply = match a.handle(static_add_req("s1", "web-0"), None).await {
        Ok(Response::Added(r)) => r,
        other => panic!("ADD of a pod whose claim moves here: {other:?}"),
    };
    assert_eq!(reply.ip, ip, "the same address, moved");
    assert_eq!(
        *claims.taken.lock().expect("lock"),
        ["default/web-0 by ins-test"]
    );
    let on = cloud_has(&a, ip).await;
    assert_eq!(
        on,
        std::slice::from_ref(&reply.eni_id),
        "on exactly one ENI, this node's"
    );
    let claim = a.pool().claim("default", "web-0").cloned().expect("claim");
    assert_eq!(
        (claim.eni_id.as_str(), claim.released_ms, claim.lost),
        (reply.eni_id.as_str(), None, None),
        "held here and bound"
    );
    assert!(
        claims.announced.lock().expect("lock").is_empty(),
        "not a first bind"
    );
    eventually("the bind published", || {
        let bound = |c: &crate::ipam::Claim| c.name == "web-0" && c.released_ms.is_none();
        claims
            .published
            .lock()
            .expect("lock")
            .iter()
            .any(|c| matches!(c, ClaimChange::Put(c) if bound(c)))
            || claims
                .synced
                .lock()
                .expect("lock")
                .iter()
                .any(|all| all.iter().any(bound))
    })
    .await;
    // The pod ends and comes back here: an ordinary reserved claim now.
    *claims.answer.lock().expect("lock") = Some(Ok(None));
    a.handle(del_req("s1"), None).await.expect("DEL");
    match a.handle(static_add_req("s2", "web-0"), None).await {
        Ok(Response::Added(r)) => assert_eq!(r.ip, ip),
        other => panic!("ADD again: {other:?}"),
    }
}

#[tokio::test]
async fn a_move_resumes_after_a_crash_and_an_address_already_here_is_not_moved_again() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    let held = held_on_another_node(&a).await;
    let ip = held.ip;
    // The take-over was written and the address moved, then the agent
    // crashed before its commit.
    add(&a, "plain").await;
    let ours = a.pool().enis()[0].id.clone();
    a.cloud
        .migrate_ip(&held.eni_id, &ours, ip)
        .await
        .expect("migrate");
    *claims.answer.lock().expect("lock") = Some(Ok(Some(crate::cluster_claims::HeldElsewhere {
        moving_here: true,
        ..held
    })));
    match a.handle(static_add_req("s1", "web-0"), None).await {
        Ok(Response::Added(r)) => assert_eq!((r.ip, r.eni_id.as_str()), (ip, ours.as_str())),
        other => panic!("ADD resuming a move: {other:?}"),
    }
    assert!(
        claims.taken.lock().expect("lock").is_empty(),
        "resumed, not taken over again"
    );
    assert_eq!(cloud_has(&a, ip).await, [ours]);
}

#[tokio::test]
async fn a_static_ip_whose_eni_went_with_its_node_is_taken_here_by_name() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    // This node has an ENI with room (a growth now could give the freed
    // address to the new ENI as its primary: then it is taken for good).
    add(&a, "plain").await;
    let held = held_on_another_node(&a).await;
    let ip = held.ip;
    // Its node is gone and the cluster component deleted the ENI as
    // leaked: the address is back in the subnet, the claim still names it.
    a.cloud.delete_eni(&held.eni_id).await.expect("delete");
    assert!(cloud_has(&a, ip).await.is_empty());
    *claims.answer.lock().expect("lock") = Some(Ok(Some(held.clone())));
    *claims.take.lock().expect("lock") = Some(Ok(crate::cluster_claims::TakeOver::Taken(
        crate::cluster_claims::HeldElsewhere {
            moving_here: true,
            ..held.clone()
        },
    )));
    let reply = match a.handle(static_add_req("s1", "web-0"), None).await {
        Ok(Response::Added(r)) => r,
        other => panic!("ADD of a pod whose claim's ENI is gone: {other:?}"),
    };
    assert_eq!(reply.ip, ip, "the same address");
    assert_eq!(
        cloud_has(&a, ip).await,
        std::slice::from_ref(&reply.eni_id),
        "on this node's ENI only"
    );
}

#[tokio::test]
async fn a_claim_that_cannot_move_here_leaves_the_pod_waiting_with_why() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    let held = held_on_another_node(&a).await;
    *claims.answer.lock().expect("lock") = Some(Ok(Some(held.clone())));
    *claims.take.lock().expect("lock") = Some(Ok(crate::cluster_claims::TakeOver::Refused(
        "its pod still runs on node ins-other, which is Ready".into(),
    )));
    let e = a
        .handle(static_add_req("s1", "web-0"), None)
        .await
        .expect_err("its pod runs there");
    assert_eq!(e.kind, ErrorKind::NotReady);
    assert!(
        e.message.contains("still runs on node ins-other")
            && e.message.contains(&held.ip.to_string()),
        "{}",
        e.message
    );
    assert_eq!(
        cloud_has(&a, held.ip).await,
        std::slice::from_ref(&held.eni_id),
        "not moved"
    );
    // Taken over, but in a subnet this node has no ENI in.
    let elsewhere = crate::cluster_claims::HeldElsewhere {
        subnet_id: "subnet-far".into(),
        moving_here: true,
        ..held.clone()
    };
    *claims.take.lock().expect("lock") =
        Some(Ok(crate::cluster_claims::TakeOver::Taken(elsewhere)));
    let e = a
        .handle(static_add_req("s1", "web-0"), None)
        .await
        .expect_err("no ENI in that subnet");
    assert_eq!(e.kind, ErrorKind::NotReady);
    assert!(e.message.contains("subnet-far"), "{}", e.message);
    // The cluster cannot be written: not ready, retried.
    *claims.take.lock().expect("lock") = Some(Err("conflict".into()));
    let e = a
        .handle(static_add_req("s1", "web-0"), None)
        .await
        .expect_err("the fence write failed");
    assert_eq!(e.kind, ErrorKind::NotReady);
    assert!(allocated(&a).is_empty(), "no IP handed out meanwhile");
    assert_eq!(cloud_has(&a, held.ip).await, [held.eni_id]);
}

#[tokio::test]
async fn a_node_forgets_a_reserved_claim_another_node_took_and_never_marks_it_lost() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    let ip = match a.handle(static_add_req("s1", "web-0"), None).await {
        Ok(Response::Added(r)) => r.ip,
        other => panic!("ADD: {other:?}"),
    };
    assert!(
        !a.leave("default", "web-0", "ins-other")
            .await
            .expect("leave"),
        "a claim a sandbox holds never leaves"
    );
    a.handle(del_req("s1"), None).await.expect("DEL");
    let ours = a
        .pool()
        .claim("default", "web-0")
        .expect("claim")
        .eni_id
        .clone();
    // Another node takes it over and moves the address (its pod runs there).
    let subnet = a.node().and_then(|n| n.subnet).expect("subnet").id;
    let theirs = a.cloud.create_eni(&subnet, 0).await.expect("create");
    a.cloud
        .migrate_ip(&ours, &theirs.id, ip)
        .await
        .expect("migrate");
    *claims.answer.lock().expect("lock") = Some(Ok(Some(crate::cluster_claims::HeldElsewhere {
        node: "ins-other".into(),
        ip,
        ipv6: None,
        subnet_id: subnet,
        zone: String::new(),
        eni_id: theirs.id.clone(),
        moving_here: false,
        created_ms: None,
    })));
    *claims.take.lock().expect("lock") = Some(Ok(crate::cluster_claims::TakeOver::Refused(
        "its pod still runs on node ins-other, which is Ready".into(),
    )));
    // The pod is scheduled back here meanwhile: the address is not lost,
    // it moved; the claim leaves this node and the pod waits for the other
    // to let go.
    let e = a
        .handle(static_add_req("s2", "web-0"), None)
        .await
        .expect_err("held on the other node");
    assert_eq!(e.kind, ErrorKind::NotReady, "{}", e.message);
    assert!(e.message.contains("ins-other"), "{}", e.message);
    let leaving = a.pool().claim("default", "web-0").cloned().expect("claim");
    assert_eq!(leaving.phase(), ClaimPhase::Leaving, "outgoing, not lost");
    assert_eq!(leaving.lost, None);
    a.drive_handovers().await.expect("drive");
    let pool = a.pool();
    assert!(
        pool.claim("default", "web-0").is_none(),
        "forgotten once the cloud shows the address gone"
    );
    assert!(
        pool.enis().iter().all(|e| !e.ips.contains(&ip)),
        "the address left this node's pool"
    );
    assert_eq!(
        cloud_has(&a, ip).await,
        [theirs.id],
        "and stays where it moved"
    );
    // The publisher's path: leaving a claim forgotten is harmless.
    assert!(
        !a.leave("default", "web-0", "ins-other")
            .await
            .expect("leave")
    );
}

#[tokio::test]
async fn a_claim_of_another_zone_is_not_taken_over_and_the_pod_is_told_the_zones() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    let held = crate::cluster_claims::HeldElsewhere {
        subnet_id: "subnet-b".into(),
        zone: "zone-b".into(),
        ..held_on_another_node(&a).await
    };
    *claims.answer.lock().expect("lock") = Some(Ok(Some(held.clone())));
    *claims.take.lock().expect("lock") = Some(Ok(crate::cluster_claims::TakeOver::Taken(
        crate::cluster_claims::HeldElsewhere {
            moving_here: true,
            ..held.clone()
        },
    )));
    let e = a
        .handle(static_add_req("s1", "web-0"), None)
        .await
        .expect_err("another zone");
    assert_eq!(e.kind, ErrorKind::NotReady);
    assert!(
        e.message.contains("zone zone-b")
            && e.message.contains("zone zone-a")
            && e.message.contains(&held.ip.to_string())
            && e.message.contains("subnet-b"),
        "{}",
        e.message
    );
    assert!(
        claims.taken.lock().expect("lock").is_empty(),
        "refused before any take-over: the claim stays where it is"
    );
    assert!(allocated(&a).is_empty(), "no IP handed out meanwhile");
    assert_eq!(cloud_has(&a, held.ip).await, [held.eni_id]);
}

/// A sandbox the runtime dropped without a DEL (its ADD and the DEL of its
/// cleanup both failed while the agent restarted) releases its IP once its
/// namespace is seen gone: the static claim turns reserved, so the node the
/// pod runs on now can take it over; a live sandbox is left alone.
#[tokio::test]
async fn a_sandbox_gone_without_a_del_releases_its_ip_and_its_claim_is_kept() {
    let h = harness().await;
    let a = &h.agent;
    let Ok(Response::Added(web)) = a.handle(static_add_req("s1", "web-0"), None).await else {
        panic!("static ADD")
    };
    add(a, "alive").await;
    assert_eq!(
        a.release_vanished().await,
        Ok(Some(0)),
        "nothing vanished yet"
    );
    {
        // An ADD in flight (one waiting for the maintenance loop to grow
        // the pool, say): the loop's sweep must not wait for it.
        let _in_flight = a.gc_lock.read().await;
        let swept = tokio::time::timeout(Duration::from_secs(1), a.release_vanished()).await;
        assert_eq!(swept, Ok(Ok(None)), "skipped, not waited for");
    }
    a.dataplane.vanish("s1", "eth0");
    assert_eq!(a.release_vanished().await, Ok(Some(1)));
    let claim = a
        .pool()
        .claim("default", "web-0")
        .cloned()
        .expect("claim kept");
    assert_eq!(claim.ip, web.ip);
    assert!(
        claim.released_ms.is_some(),
        "reserved for its pod: {claim:?}"
    );
    let held: Vec<String> = allocated(a).into_iter().map(|(c, _)| c).collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].contains("alive"), "{held:?}");
}
