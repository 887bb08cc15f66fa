//! A static IP between nodes (`ipam/handover.rs`, `agent/handover.rs`):
//! the source keeps the address reserved until it is gone; the target
//! records it incoming before the cloud is asked; a lost reply or a crash
//! at any point leaves the address on at most one ENI and in at most one
//! pod, and never free.

use std::sync::atomic::Ordering as AtomicOrdering;

use super::claims::{
    RecordingClaims, cloud_has, eventually, held_on_another_node, static_add_req, with_claims,
    with_claims_on,
};
use super::*;
use crate::cluster_claims::{HeldElsewhere, TakeOver};
use crate::ipam::{IpUse, Word};
use crate::phase::ClaimPhase;

fn taken(held: &HeldElsewhere) -> Option<Result<TakeOver, String>> {
    Some(Ok(TakeOver::Taken(HeldElsewhere {
        moving_here: true,
        ..held.clone()
    })))
}

/// An agent whose pod web-0 ran once and stopped: its claim reserved
/// here. With the claim's address.
async fn reserved_web_0(claims: &Arc<RecordingClaims>) -> (TestAgent, std::net::Ipv4Addr) {
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(claims)).await;
    let ip = match a.handle(static_add_req("s1", "web-0"), None).await {
        Ok(Response::Added(r)) => r.ip,
        other => panic!("ADD: {other:?}"),
    };
    a.handle(del_req("s1"), None).await.expect("DEL");
    (a, ip)
}

/// Every allocation's address, and whether `ip` is among them.
fn handed_out(a: &TestAgent, ip: std::net::Ipv4Addr) -> bool {
    a.pool().allocations().any(|x| x.ip == ip)
}

#[tokio::test]
async fn hole_handover_an_outgoing_address_is_never_handed_out_before_it_leaves() {
    let claims = Arc::new(RecordingClaims::default());
    let (a, ip) = reserved_web_0(&claims).await;
    // Another node takes the claim over; its move has not happened yet.
    assert!(
        a.leave("default", "web-0", "ins-other")
            .await
            .expect("leave")
    );
    *claims.word.lock().expect("lock") = Some(Word::Other("ins-other".into()));
    // Reconciled with the cloud, which still shows the address here, and
    // driven: the claim stays outgoing and its address reserved.
    a.connect_cloud().await.expect("reconcile");
    a.drive_handovers().await.expect("drive");
    assert!(matches!(
        a.pool().ip_use(&ip, u64::MAX),
        IpUse::Reserved(c) if c.phase() == ClaimPhase::Leaving
    ));
    // A burst of other pods takes every other address of the node.
    for i in 0..30 {
        let _ = a.handle(add_req(&format!("p{i}")), None).await;
        assert!(!handed_out(&a, ip), "the outgoing address went to pod p{i}");
    }
    // Nor can it be ended here meanwhile.
    let e = a
        .handle(
            Request::DeleteClaim {
                namespace: "default".into(),
                name: "web-0".into(),
                force: true,
            },
            None,
        )
        .await
        .expect_err("a claim taken over is not this node's to end");
    assert_eq!(e.kind, ErrorKind::NotReady, "{}", e.message);
    // The other node moves it: only now does this node forget it.
    let ours = a
        .pool()
        .claim("default", "web-0")
        .expect("claim")
        .eni_id
        .clone();
    let subnet = a.node().and_then(|n| n.subnet).expect("subnet").id;
    let theirs = a.cloud.create_eni(&subnet, 0).await.expect("create");
    a.cloud
        .migrate_ip(&ours, &theirs.id, ip)
        .await
        .expect("migrate");
    a.drive_handovers().await.expect("drive");
    let pool = a.pool();
    assert!(pool.claim("default", "web-0").is_none(), "forgotten");
    assert!(pool.enis().iter().all(|e| !e.ips.contains(&ip)));
    assert_eq!(cloud_has(&a, ip).await, [theirs.id]);
}

#[tokio::test]
async fn an_outgoing_claim_given_back_is_held_here_again() {
    let claims = Arc::new(RecordingClaims::default());
    let (a, ip) = reserved_web_0(&claims).await;
    a.leave("default", "web-0", "ins-other")
        .await
        .expect("leave");
    // The other node could not take it and gave it back.
    *claims.word.lock().expect("lock") = Some(Word::Here);
    a.drive_handovers().await.expect("drive");
    let claim = a.pool().claim("default", "web-0").cloned().expect("claim");
    assert_eq!(claim.phase(), ClaimPhase::Reserved);
    match a.handle(static_add_req("s2", "web-0"), None).await {
        Ok(Response::Added(r)) => assert_eq!(r.ip, ip),
        other => panic!("ADD with the claim back: {other:?}"),
    }
}

#[tokio::test]
async fn an_outgoing_claim_deleted_in_the_cluster_ends_here_once_its_new_holder_let_go() {
    let claims = Arc::new(RecordingClaims::default());
    let (a, ip) = reserved_web_0(&claims).await;
    a.leave("default", "web-0", "ins-other")
        .await
        .expect("leave");
    *claims.word.lock().expect("lock") = Some(Word::Absent);
    a.drive_handovers().await.expect("drive");
    assert!(a.pool().claim("default", "web-0").is_none(), "ended");
    assert!(
        matches!(a.pool().ip_use(&ip, 0), IpUse::Cooling(_)),
        "its address cools down like any released one"
    );
}

#[tokio::test]
async fn hole_handover_a_move_whose_reply_was_lost_finishes_and_the_address_is_never_free() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    add(&a, "plain").await;
    let held = held_on_another_node(&a).await;
    let ip = held.ip;
    *claims.answer.lock().expect("lock") = Some(Ok(Some(held.clone())));
    *claims.take.lock().expect("lock") = taken(&held);
    a.cloud.lose_next_reply.store(true, AtomicOrdering::SeqCst);
    let e = a
        .handle(static_add_req("s1", "web-0"), None)
        .await
        .expect_err("the cloud's reply was lost");
    assert!(e.message.contains("did not answer"), "{}", e.message);
    let on = cloud_has(&a, ip).await;
    assert_eq!(on.len(), 1, "moved, once");
    assert_eq!(
        a.pool().claim("default", "web-0").expect("claim").phase(),
        ClaimPhase::Moving
    );
    // The reconcile adopts the address that arrived: it is the claim's.
    a.connect_cloud().await.expect("reconcile");
    assert!(matches!(a.pool().ip_use(&ip, u64::MAX), IpUse::Reserved(_)));
    for i in 0..30 {
        let _ = a.handle(add_req(&format!("p{i}")), None).await;
        assert!(!handed_out(&a, ip), "the arriving address went to pod p{i}");
    }
    // The retried ADD finds it here and binds it.
    *claims.answer.lock().expect("lock") = Some(Ok(Some(HeldElsewhere {
        moving_here: true,
        ..held.clone()
    })));
    *claims.word.lock().expect("lock") = Some(Word::Here);
    match a.handle(static_add_req("s1", "web-0"), None).await {
        Ok(Response::Added(r)) => assert_eq!((r.ip, vec![r.eni_id]), (ip, on)),
        other => panic!("ADD retried: {other:?}"),
    }
}

#[tokio::test]
async fn hole_handover_an_incoming_move_survives_a_crash_and_finishes_without_its_pod() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let claims = Arc::new(RecordingClaims::default());
    let cloud = FakeCloud::new(DEFAULT_LIMITS);
    let a = with_claims_on(
        cloud.clone(),
        Box::new(RedbStore::open(&path).expect("store")),
        Arc::clone(&claims),
    )
    .await;
    add(&a, "plain").await;
    let held = held_on_another_node(&a).await;
    let ip = held.ip;
    *claims.answer.lock().expect("lock") = Some(Ok(Some(held.clone())));
    *claims.take.lock().expect("lock") = taken(&held);
    cloud.lose_next_reply.store(true, AtomicOrdering::SeqCst);
    a.handle(static_add_req("s1", "web-0"), None)
        .await
        .expect_err("the reply was lost, then the agent crashed");
    drop(a);
    // Restarted from its store; the pod went elsewhere, no ADD comes.
    let again = Arc::new(RecordingClaims::default());
    *again.word.lock().expect("lock") = Some(Word::Here);
    let b = with_claims_on(
        cloud.clone(),
        Box::new(RedbStore::open(&path).expect("store")),
        Arc::clone(&again),
    )
    .await;
    assert!(
        matches!(b.pool().ip_use(&ip, u64::MAX), IpUse::Reserved(_)),
        "after the restart the address is the claim's, not free"
    );
    b.drive_handovers().await.expect("drive");
    let claim = b.pool().claim("default", "web-0").cloned().expect("claim");
    assert_eq!(
        claim.phase(),
        ClaimPhase::Reserved,
        "finished by the maintenance loop"
    );
    assert_eq!(cloud_has(&b, ip).await, [claim.eni_id]);
}

/// Pod web-0's claim, held on another node, taken over here; its move
/// failed once (the API did not answer), so it is incoming. Its holder.
async fn stuck_incoming(a: &TestAgent, claims: &RecordingClaims) -> HeldElsewhere {
    add(a, "plain").await;
    let held = held_on_another_node(a).await;
    *claims.answer.lock().expect("lock") = Some(Ok(Some(held.clone())));
    *claims.take.lock().expect("lock") = taken(&held);
    a.cloud.fail_next_move.store(true, AtomicOrdering::SeqCst);
    a.handle(static_add_req("s1", "web-0"), None)
        .await
        .expect_err("not moved yet");
    assert_eq!(
        a.pool().claim("default", "web-0").expect("claim").phase(),
        ClaimPhase::Moving
    );
    held
}

#[tokio::test]
async fn an_incoming_move_whose_claim_went_elsewhere_is_abandoned_when_nothing_arrived() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    // The move fails for now (the API did not answer): it stays
    // incoming, and the cluster meanwhile names a third node.
    let held = stuck_incoming(&a, &claims).await;
    *claims.word.lock().expect("lock") = Some(Word::Other("ins-third".into()));
    a.drive_handovers().await.expect("drive");
    assert!(a.pool().claim("default", "web-0").is_none(), "abandoned");
    assert_eq!(cloud_has(&a, held.ip).await, [held.eni_id], "never moved");
}

#[tokio::test]
async fn a_claim_taken_over_without_room_here_is_given_back() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    let held = held_on_another_node(&a).await;
    // Taken over already (a resumed ADD), in a subnet this node has no
    // ENI in.
    let far = HeldElsewhere {
        subnet_id: "subnet-far".into(),
        moving_here: true,
        ..held.clone()
    };
    *claims.answer.lock().expect("lock") = Some(Ok(Some(far.clone())));
    *claims.take.lock().expect("lock") = taken(&far);
    let e = a
        .handle(static_add_req("s1", "web-0"), None)
        .await
        .expect_err("no ENI in that subnet");
    assert!(
        e.message.contains("subnet-far") && e.message.contains("reserved on node ins-other"),
        "{}",
        e.message
    );
    assert_eq!(
        *claims.given_back.lock().expect("lock"),
        ["default/web-0 to ins-other"]
    );
    assert!(
        a.pool().claim("default", "web-0").is_none(),
        "no record here"
    );
}

#[tokio::test]
async fn hole_handover_a_requested_address_whose_reply_was_lost_is_the_pods_not_free() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    add(&a, "plain").await;
    let subnet = a.node().and_then(|n| n.subnet).expect("subnet");
    let wanted = std::net::Ipv4Addr::new(10, 0, 16, 200);
    assert!(crate::agent::requested::admits(&subnet, wanted).is_ok());
    let req = |c: &str| {
        let Request::Add(mut r) = static_add_req(c, "db-0") else {
            unreachable!()
        };
        r.static_ip.as_mut().expect("static").requested_ip = Some(wanted);
        Request::Add(r)
    };
    a.cloud.lose_next_reply.store(true, AtomicOrdering::SeqCst);
    a.handle(req("s1"), None).await.expect_err("reply lost");
    assert_eq!(cloud_has(&a, wanted).await.len(), 1, "assigned, once");
    a.connect_cloud().await.expect("reconcile");
    assert!(matches!(
        a.pool().ip_use(&wanted, u64::MAX),
        IpUse::Reserved(_)
    ));
    match a.handle(req("s1"), None).await {
        Ok(Response::Added(r)) => assert_eq!(r.ip, wanted),
        other => panic!("ADD retried: {other:?}"),
    }
}

#[tokio::test]
async fn hole_2_an_emptied_store_rebuilds_its_static_claims_from_the_cluster() {
    let claims = Arc::new(RecordingClaims::default());
    let cloud = FakeCloud::new(DEFAULT_LIMITS);
    let a = with_claims_on(
        cloud.clone(),
        Box::new(MemoryStore::default()),
        Arc::clone(&claims),
    )
    .await;
    let ip = match a.handle(static_add_req("s1", "web-0"), None).await {
        Ok(Response::Added(r)) => r.ip,
        other => panic!("ADD: {other:?}"),
    };
    a.handle(del_req("s1"), None).await.expect("DEL");
    let claim = a.pool().claim("default", "web-0").cloned().expect("claim");
    drop(a);
    // The operator removed the store; the agent starts empty on the same
    // node and adopts the node's ENIs and addresses from the cloud.
    let b = with_claims_on(
        cloud,
        Box::new(MemoryStore::default()),
        Arc::new(RecordingClaims::default()),
    )
    .await;
    assert!(b.pool().claim("default", "web-0").is_none());
    // The publisher finds the claim's object and hands it back.
    assert!(b.restore_claim(claim.clone()).await.expect("restore"));
    assert!(!b.restore_claim(claim).await.expect("again"), "once");
    let rebuilt = b
        .pool()
        .claim("default", "web-0")
        .cloned()
        .expect("rebuilt");
    assert_eq!((rebuilt.ip, rebuilt.phase()), (ip, ClaimPhase::Reserved));
    for i in 0..30 {
        let _ = b.handle(add_req(&format!("p{i}")), None).await;
        assert!(
            !handed_out(&b, ip),
            "the rebuilt claim's address went to pod p{i}"
        );
    }
    match b.handle(static_add_req("s2", "web-0"), None).await {
        Ok(Response::Added(r)) => assert_eq!(r.ip, ip),
        other => panic!("ADD with the rebuilt claim: {other:?}"),
    }
}

/// Hole 7: a static pod's ADD, which checks its address with the cloud
/// under the grow lock, waits for that lock no longer than its caller's
/// deadline. A maintenance round stuck behind a throttling cloud holds the
/// lock here; before, every such ADD held a serving thread until the round
/// ended.
#[tokio::test]
async fn hole_7_a_static_add_waits_for_the_growth_lock_no_longer_than_its_deadline() {
    let claims = Arc::new(RecordingClaims::default());
    let (a, ip) = reserved_web_0(&claims).await;
    let round = a.grow_lock.lock().await;
    let Request::Add(mut req) = static_add_req("s2", "web-0") else {
        unreachable!("an ADD")
    };
    req.deadline_ms = deadline_in(300);
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(10), a.handle(Request::Add(req), None))
        .await
        .expect("answered, not left waiting for the round")
        .expect_err("the round holds the lock past the deadline");
    assert_eq!(e.kind, ErrorKind::NotReady, "{e:?}");
    assert!(e.message.contains("deadline"), "{}", e.message);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(a.pool().ip_use(&ip, u64::MAX), IpUse::Reserved(_)),
        "the claim stays reserved for the retry"
    );
    drop(round);
    match a.handle(static_add_req("s3", "web-0"), None).await {
        Ok(Response::Added(r)) => assert_eq!(r.ip, ip, "the retry binds the same address"),
        other => panic!("ADD retried: {other:?}"),
    }
}

/// Hole 7: the maintenance loop asks the cluster about the claims between
/// nodes before it takes the grow lock, so an API server slow to answer
/// never holds up the pool's growth (nor the ADDs waiting on it).
#[tokio::test]
async fn hole_7_the_cluster_is_asked_about_moves_without_the_growth_lock() {
    let claims = Arc::new(RecordingClaims::default());
    let a = with_claims(Box::new(MemoryStore::default()), Arc::clone(&claims)).await;
    let held = stuck_incoming(&a, &claims).await;
    *claims.word.lock().expect("lock") = Some(Word::Here);
    let gate = Arc::new(tokio::sync::Notify::new());
    *claims.word_gate.lock().expect("lock") = Some(Arc::clone(&gate));
    let asked = claims.words_asked.load(AtomicOrdering::SeqCst);
    let observer = async {
        eventually("the loop asks the cluster", || {
            claims.words_asked.load(AtomicOrdering::SeqCst) > asked
        })
        .await;
        let free = a.grow_lock.try_lock().is_ok();
        gate.notify_one();
        free
    };
    let (driven, free) = tokio::join!(a.drive_handovers(), observer);
    assert!(
        free,
        "the grow lock was held while the API server was asked"
    );
    driven.expect("drive");
    let claim = a.pool().claim("default", "web-0").cloned().expect("claim");
    assert_eq!(claim.phase(), ClaimPhase::Reserved, "moved here after all");
    assert_eq!(cloud_has(&a, held.ip).await, [claim.eni_id]);
}
