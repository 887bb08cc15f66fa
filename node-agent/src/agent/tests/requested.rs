//! A requested address through the agent, over the fake cloud: taken from
//! the pool or assigned by address, refused naming its holder, one winner
//! of a race.

use std::net::Ipv4Addr;

use proto::wire::{AgentError, StaticIpRequest};

use super::*;

fn requested_req(c: &str, pod: &str, ip: Ipv4Addr) -> Request {
    let Request::Add(mut req) = add_req(c) else {
        unreachable!()
    };
    req.pod.as_mut().expect("pod").name = pod.into();
    req.static_ip = Some(StaticIpRequest {
        requested_ip: Some(ip),
        ..StaticIpRequest::default()
    });
    Request::Add(req)
}

async fn request(a: &TestAgent, c: &str, pod: &str, ip: Ipv4Addr) -> Result<AddReply, AgentError> {
    match a.handle(requested_req(c, pod, ip), None).await {
        Ok(Response::Added(r)) => Ok(r),
        Ok(other) => panic!("ADD {c}: {other:?}"),
        Err(e) => Err(e),
    }
}

/// How many ENIs in the whole VPC carry `ip`.
async fn enis_with(a: &TestAgent, ip: Ipv4Addr) -> usize {
    a.cloud.enis_carrying(ip)
}

const WANTED: Ipv4Addr = Ipv4Addr::new(10, 0, 20, 7);

#[tokio::test]
async fn a_pod_gets_the_address_it_asks_for_and_keeps_it() {
    let h = harness().await;
    let r = request(&h.agent, "s1", "web-0", WANTED).await.expect("ADD");
    assert_eq!(r.ip, WANTED);
    assert_eq!(enis_with(&h.agent, WANTED).await, 1);
    let claim = h
        .agent
        .pool()
        .claim("default", "web-0")
        .cloned()
        .expect("claim");
    assert!(claim.requested && claim.released_ms.is_none(), "{claim:?}");
    // Static: its next sandbox gets it back.
    h.agent.handle(del_req("s1"), None).await.expect("DEL");
    let again = request(&h.agent, "s2", "web-0", WANTED)
        .await
        .expect("ADD again");
    assert_eq!(again.ip, WANTED);
    assert_eq!(enis_with(&h.agent, WANTED).await, 1);
}

#[tokio::test]
async fn a_free_address_of_the_pool_is_taken_without_the_cloud() {
    let h = harness().await;
    let first = add(&h.agent, "plain").await;
    h.agent.handle(del_req("plain"), None).await.expect("DEL");
    let (free, eni) = h
        .agent
        .pool()
        .enis()
        .iter()
        .flat_map(|e| e.ips.iter().map(|ip| (*ip, e.id.clone())))
        .find(|(ip, _)| *ip != first.ip)
        .expect("a free IP");
    let r = request(&h.agent, "s1", "web-0", free).await.expect("ADD");
    assert_eq!(
        (r.ip, r.eni_id.as_str()),
        (free, eni.as_str()),
        "where the pool had it"
    );
    assert_eq!(enis_with(&h.agent, free).await, 1);
    // The IP just released cools down: asked for, it waits (code 11).
    let cooling = request(&h.agent, "s2", "web-1", first.ip)
        .await
        .expect_err("cooling");
    assert_eq!(cooling.kind, ErrorKind::NotReady);
    assert!(
        cooling.message.contains("cools down"),
        "{}",
        cooling.message
    );
}

#[tokio::test]
async fn a_held_address_is_refused_naming_the_holder() {
    let h = harness().await;
    request(&h.agent, "s1", "web-0", WANTED).await.expect("ADD");
    let e = request(&h.agent, "s2", "web-1", WANTED)
        .await
        .expect_err("held");
    assert_eq!(e.kind, ErrorKind::NoIpAvailable);
    assert_eq!(
        e.message,
        "pod default/web-1: the requested address 10.0.20.7 is held by pod default/web-0 on this node (sandbox s1)"
    );
    // Reserved for web-0 once its sandbox is gone: still web-0's.
    h.agent.handle(del_req("s1"), None).await.expect("DEL");
    let e = request(&h.agent, "s3", "web-1", WANTED)
        .await
        .expect_err("reserved");
    assert!(
        e.message.contains("static IP claim of pod default/web-0"),
        "{}",
        e.message
    );
    assert_eq!(enis_with(&h.agent, WANTED).await, 1);
}

#[tokio::test]
async fn an_address_in_use_elsewhere_in_the_vpc_is_refused_as_the_cloud_says() {
    let h = harness().await;
    let other = h
        .agent
        .cloud
        .create_eni("subnet-test", 0)
        .await
        .expect("ENI");
    h.agent
        .cloud
        .assign_named_ips(&other.id, &[WANTED])
        .await
        .expect("assign");
    let e = request(&h.agent, "s1", "web-0", WANTED)
        .await
        .expect_err("in use");
    assert_eq!(e.kind, ErrorKind::NoIpAvailable);
    assert!(
        e.message.contains("in use in the VPC") && e.message.contains("10.0.20.7"),
        "{}",
        e.message
    );
    assert_eq!(
        enis_with(&h.agent, WANTED).await,
        1,
        "still only the other ENI"
    );
    assert!(h.agent.pool().claim("default", "web-0").is_none());
}

#[tokio::test]
async fn an_address_outside_the_subnet_or_reserved_is_an_invalid_request() {
    let h = harness().await;
    for (ip, says) in [
        (
            Ipv4Addr::new(10, 0, 40, 7),
            "outside subnet subnet-test (10.0.16.0/20",
        ),
        (
            Ipv4Addr::new(10, 0, 16, 1),
            "reserved in subnet subnet-test",
        ),
    ] {
        let e = request(&h.agent, "s1", "web-0", ip)
            .await
            .expect_err("refused");
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(e.message.contains(says), "{}", e.message);
    }
}

#[tokio::test]
async fn a_claim_of_another_address_is_not_changed_by_asking() {
    let h = harness().await;
    request(&h.agent, "s1", "web-0", WANTED).await.expect("ADD");
    h.agent.handle(del_req("s1"), None).await.expect("DEL");
    let e = request(&h.agent, "s2", "web-0", Ipv4Addr::new(10, 0, 20, 8))
        .await
        .expect_err("another address");
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert!(
        e.message.contains("its static IP claim holds 10.0.20.7")
            && e.message.contains("kubectl delete vipc web-0 -n default"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn of_two_pods_racing_for_one_address_exactly_one_wins() {
    let h = harness().await;
    let (a, b) = tokio::join!(
        request(&h.agent, "s1", "web-0", WANTED),
        request(&h.agent, "s2", "web-1", WANTED)
    );
    let (won, lost) = match (a, b) {
        (Ok(w), Err(l)) => (w, l),
        (Err(l), Ok(w)) => (w, l),
        other => panic!("exactly one must win: {other:?}"),
    };
    assert_eq!(won.ip, WANTED);
    assert_eq!(lost.kind, ErrorKind::NoIpAvailable);
    assert!(
        lost.message.contains("held by pod default/web-"),
        "{}",
        lost.message
    );
    assert_eq!(enis_with(&h.agent, WANTED).await, 1);
    assert_eq!(h.agent.pool().claims().count(), 1);
}

#[tokio::test]
async fn a_crash_between_the_assign_and_the_commit_leaks_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.redb");
    let shared = FakeCloud::new(DEFAULT_LIMITS);
    let start = || async {
        Agent::start(
            shared.clone(),
            FakeDataplane::default(),
            Box::new(RedbStore::open(&db).expect("store")),
            config(),
            system_clock(),
        )
        .await
        .expect("start")
    };
    {
        let a = start().await;
        add(&a, "plain").await;
        // What a crash right after `AssignPrivateIpAddresses` leaves: the
        // address on an ENI of the node, nothing in the store.
        let eni = a.pool().enis()[0].id.clone();
        a.cloud
            .assign_named_ips(&eni, &[WANTED])
            .await
            .expect("assign");
        assert!(a.pool().claim("default", "web-0").is_none());
    }
    let a = start().await;
    // Adopted at start as a free IP of the pool, so the retried ADD gets it
    // from there, on the one ENI that carries it.
    let r = request(&a, "s1", "web-0", WANTED)
        .await
        .expect("retried ADD");
    assert_eq!(r.ip, WANTED);
    assert_eq!(enis_with(&a, WANTED).await, 1);
    assert!(
        a.pool()
            .claim("default", "web-0")
            .is_some_and(|c| c.requested)
    );
}

/// Hole 7: a pod asking for an address waits for the grow lock (held by a
/// maintenance round stuck behind a throttling cloud here) no longer than
/// its caller's deadline, and nothing is reserved for it meanwhile.
#[tokio::test]
async fn hole_7_a_requested_address_waits_for_the_growth_lock_no_longer_than_the_deadline() {
    let h = harness().await;
    let round = h.agent.grow_lock.lock().await;
    let Request::Add(mut req) = requested_req("s1", "web-0", WANTED) else {
        unreachable!("an ADD")
    };
    req.deadline_ms = deadline_in(300);
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        h.agent.handle(Request::Add(req), None),
    )
    .await
    .expect("answered, not left waiting for the round")
    .expect_err("the round holds the lock past the deadline");
    assert_eq!(e.kind, ErrorKind::NotReady, "{e:?}");
    assert!(e.message.contains("deadline"), "{}", e.message);
    assert!(h.agent.pool().claim("default", "web-0").is_none());
    assert_eq!(enis_with(&h.agent, WANTED).await, 0);
    drop(round);
    let r = request(&h.agent, "s2", "web-0", WANTED)
        .await
        .expect("the retry");
    assert_eq!(r.ip, WANTED);
}
