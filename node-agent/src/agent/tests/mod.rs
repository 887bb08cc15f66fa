//! The agent's logic over the fake cloud, the fake dataplane and an
//! injected clock: `cni.rs` (the verbs), `store.rs` (failed commits),
//! `growth.rs` (growth, shrink, restarts, leaked ENIs), `claims.rs` (the
//! claim store and static pods), `handover.rs` (a claim between nodes), `requested.rs` (a requested address).

mod claims;
mod cni;
mod growth;
mod handover;
mod ipv6;
mod requested;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use proto::wire::{
    AddReply, AddRequest, AttachmentKey, CheckRequest, DelRequest, ErrorKind, GcAttachment,
    GcRequest, IpState, PodRef, StatusReply,
};

use super::*;
use crate::clock::{Clock, system_clock};
use crate::cloud::Limits;
use crate::cloud::fake::FakeCloud;
use crate::cluster_claims::ClaimChange;
use crate::dataplane::POD_GATEWAY;
use crate::dataplane::{FakeDataplane, Recorded};
use crate::store::Store;
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
        maintenance_interval: Duration::from_secs(30),
        reconcile_interval: Duration::from_secs(300),
        ipv6: false,
        pool: crate::sizing::Targets {
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
        .pool()
        .allocations()
        .map(|x| (x.key.container_id.clone(), x.ip))
        .collect();
    v.sort();
    v
}

/// A wall-clock deadline `ms` from now, as the plugin sets it.
fn deadline_in(ms: u64) -> Option<u64> {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    Some(wall + ms)
}
