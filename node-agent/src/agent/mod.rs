//! The agent: CNI verbs on top of the pool, the store, the cloud and the
//! dataplane. This file only wires the parts and dispatches requests; each
//! job lives in its own file:
//!
//! - `txn.rs`: the pool lock, commits, poisoning (the only owner of the pool)
//! - `recovery.rs`: start-up, reconciliation with the cloud, the cloud coming back
//! - `cni.rs`: ADD, DEL, CHECK, GC, STATUS
//! - `eni.rs`: growing and shrinking the pool, leaked ENIs, the maintenance tick
//! - `claims.rs`: static claims: by hand, expiry, cascade, lost addresses
//! - `handover.rs`: a claim between nodes, moved and driven to its end
//! - `requested.rs`: an address a pod asks for, made its static claim
//! - `conditions.rs`, `views.rs`, `convert.rs`, `errors.rs`

mod claims;
mod cni;
mod conditions;
mod convert;
mod eni;
mod errors;
mod feed;
mod handover;
mod ipv6;
mod recovery;
pub(crate) mod requested;
mod txn;
mod views;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use proto::wire::{Reply, Request, Response};
use tokio::sync::Notify;
use tracing::{Instrument, info_span, warn};

use crate::cloud::{Cloud, Eni, Limits, NodeInfo};
use crate::cluster_claims::ClusterClaims;
use crate::dataplane::Dataplane;
use crate::server::Handler;
use crate::sizing;

pub use feed::{FeedFuture, NodeFeed, Reclaimed};
pub use recovery::StartError;
use txn::Txn;

/// Tunables of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// How long a released IP rests before it is handed out again.
    pub ip_cooldown: Duration,
    /// How large the pool should be.
    pub pool: sizing::Targets,
    /// How old an unattached ENI of this node must be before it counts
    /// as leaked and is deleted.
    pub leaked_eni_grace: Duration,
    /// How long a released static IP stays reserved for its pod; `None`:
    /// until reclaimed by hand.
    pub claim_expiry: Option<Duration>,
    /// Record static claims' owners, so deleting the owner reclaims them.
    pub enable_ownerref: bool,
    /// Period of the maintenance tick (pool targets, expiry, the cloud).
    pub maintenance_interval: Duration,
    /// How often the pool is compared with the cloud's list of this node's
    /// ENIs, and leaked ENIs are looked for (each jittered by up to a fifth).
    pub reconcile_interval: Duration,
    /// Dual stack: every secondary IP gets an IPv6 partner, and a pod on
    /// it gets both.
    pub ipv6: bool,
}

/// The shortest time a released static claim may be kept for, by flag or
/// by a pod's own setting: a pod restarting slowly must not lose its IP.
pub const MIN_CLAIM_EXPIRY: Duration = Duration::from_secs(300);

/// A growth round of the maintenance loop: how many so far, and the last
/// one's error.
#[derive(Clone, Debug, Default)]
pub(crate) struct GrowthRound {
    count: u64,
    error: Option<proto::wire::AgentError>,
}

/// The agent.
pub struct Agent<C, D> {
    cloud: C,
    dataplane: D,
    /// This node's instance id, known without asking the VPC API.
    instance_id: String,
    /// Zone, subnet and limits from the VPC API; `None` until it answered.
    node: RwLock<Option<NodeInfo>>,
    config: AgentConfig,
    txn: Txn,
    /// The cluster's view of this node's static claims.
    cluster_claims: Arc<dyn ClusterClaims>,
    /// Durable changes, in commit order, for whoever follows them.
    outbox: Arc<crate::outbox::Outbox>,
    /// The operator's overrides of the targets (the node's `NodeEniConfig`).
    overrides: RwLock<sizing::Overrides>,
    /// Serialises every change of the pool's shape in the cloud (grow,
    /// shrink, a claim's address assigned again).
    grow_lock: tokio::sync::Mutex<()>,
    /// The pool fell short of its targets, or the targets changed: the
    /// maintenance loop runs a round soon (`eni::REFILL_DELAY` later).
    pool_changed: Notify,
    /// An ADD waits for an IP: the maintenance loop grows at once.
    ips_wanted: Notify,
    /// ADDs waiting for an IP: the maintenance loop grows for them.
    waiting_for_ip: AtomicUsize,
    /// Woken each time a growth step put new IPs in the pool.
    ips_added: Notify,
    /// Each growth round of the maintenance loop, and how it ended.
    growth_rounds: tokio::sync::watch::Sender<GrowthRound>,
    /// Set while the maintenance loop runs: it grows the pool for waiting
    /// ADDs; without it (tests driving the agent alone) an ADD grows it.
    loop_grows: AtomicBool,
    /// Maintenance rounds finished, and when the sleeping loop wakes next
    /// (the agent's clock, Unix ms; 0 while a round runs or is due).
    rounds_done: AtomicU64,
    asleep_until: AtomicU64,
    /// When an ADD last waited for an IP (Unix ms): nothing is given back
    /// soon after.
    last_wait: std::sync::atomic::AtomicU64,
    /// Held shared by ADD and DEL, exclusively by GC.
    gc_lock: tokio::sync::RwLock<()>,
    conditions: conditions::Conditions,
    /// ENIs on their way to the node (or whose attach just failed, with the
    /// error), shown by `pool` until they join it.
    attaching: Mutex<BTreeMap<String, (Eni, Option<String>)>>,
    /// When the pool was last compared with the cloud (Unix ms).
    last_reconcile: Mutex<u64>,
    /// IPv6 addresses the last reconciliation found on the pool's ENIs
    /// that no IP has as its partner; given back by the next pairing.
    stray_ipv6: Mutex<Vec<(String, std::net::Ipv6Addr)>>,
}

impl<C, D> std::fmt::Debug for Agent<C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("instance_id", &self.instance_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C: Cloud, D: Dataplane> Agent<C, D> {
    /// The node's details from the VPC API, once it answered.
    fn node(&self) -> Option<NodeInfo> {
        self.node.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The pool's targets: the flags', with the operator's overrides.
    fn targets(&self) -> sizing::Targets {
        self.overrides().apply(self.config.pool)
    }

    fn overrides(&self) -> sizing::Overrides {
        self.overrides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The node's limits narrowed by the targets; `None` until the VPC API
    /// answered.
    fn limits(&self) -> Option<Limits> {
        self.node().map(|n| self.targets().limits(n.limits))
    }

    /// Resolves with the reason once a failed commit poisoned the agent:
    /// the caller stops serving and exits, to restart from the store.
    pub fn poisoned(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.txn.on_poison()
    }

    /// The pool as it is now.
    #[cfg(test)]
    fn pool(&self) -> crate::ipam::Ipam {
        self.txn.read(|ipam, _| ipam.clone())
    }

    fn attaching(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Eni, Option<String>)>> {
        self.attaching.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<C: Cloud, D: Dataplane> Handler for Agent<C, D> {
    async fn handle(&self, request: Request, netns: Option<OwnedFd>) -> Reply {
        let span = match &request {
            Request::Add(r) => {
                info_span!("add", network = %r.key.network, container = %r.key.container_id, ifname = %r.key.ifname)
            }
            Request::Del(r) => {
                info_span!("del", network = %r.key.network, container = %r.key.container_id, ifname = %r.key.ifname)
            }
            Request::Check(r) => {
                info_span!("check", network = %r.key.network, container = %r.key.container_id, ifname = %r.key.ifname)
            }
            Request::Gc(r) => info_span!("gc", network = %r.network),
            Request::Status => info_span!("status"),
            Request::Pool => info_span!("pool"),
            Request::Claims => info_span!("claims"),
            Request::DeleteClaim {
                namespace, name, ..
            } => info_span!("delete-claim", %namespace, %name),
            Request::Reclaim { dry_run } => info_span!("reclaim", dry_run),
            Request::OwnerDeleted(o) => {
                info_span!("owner-deleted", kind = %o.kind, name = %o.name, uid = %o.uid)
            }
        };
        async {
            let reply = match request {
                Request::Add(r) => self.add(r, netns).await,
                Request::Del(r) => self.del(r).await,
                Request::Check(r) => self.check(r, netns).await,
                Request::Gc(r) => self.gc(r).await,
                Request::Status => Ok(self.status()),
                Request::Claims => Ok(Response::Claims {
                    claims: self.claim_views(),
                }),
                Request::DeleteClaim {
                    namespace,
                    name,
                    force,
                } => self.delete_claim(&namespace, &name, force).await,
                Request::Reclaim { dry_run } => self.reclaim(dry_run).await,
                Request::OwnerDeleted(owner) => self.owner_deleted(owner).await,
                Request::Pool => Ok(Response::Pool(self.pool_view())),
            };
            if let Err(e) = &reply {
                warn!(kind = ?e.kind, error = %e.message, "request failed");
            }
            reply
        }
        .instrument(span)
        .await
    }
}

impl<C: Cloud, D: Dataplane> Agent<C, D> {
    fn pool_view(&self) -> proto::wire::PoolView {
        let attaching = self.attaching().clone();
        let conditions = self.conditions.all();
        let mut view = self
            .txn
            .read(|ipam, now| views::pool(ipam, now, &attaching, conditions));
        view.maintenance = self.maintenance_view();
        view
    }

    /// The pool's IPs by state (`free`, `allocated`, `cooling`, `reserved`,
    /// `attaching`), for the metrics.
    pub fn ip_states(&self) -> BTreeMap<&'static str, usize> {
        use proto::wire::IpState;
        let mut states = BTreeMap::new();
        for ip in self.pool_view().enis.iter().flat_map(|e| &e.ips) {
            let state = match ip.state {
                IpState::Free => "free",
                IpState::Allocated { .. } => "allocated",
                IpState::Cooling { .. } => "cooling",
                IpState::Reserved { .. } => "reserved",
                IpState::Attaching { .. } => "attaching",
            };
            *states.entry(state).or_default() += 1;
        }
        states
    }

    fn claim_views(&self) -> Vec<proto::wire::ClaimView> {
        let default = self.config.claim_expiry.map(|d| d.as_millis() as u64);
        self.txn
            .read(|ipam, _| views::claims(ipam, &self.instance_id, default))
    }
}
