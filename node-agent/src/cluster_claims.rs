//! Where static IP claims live beyond this node.
//!
//! The node's store is the authority on its own claims: a claim is written
//! in the same commit as the IP it reserves, so a crash never separates
//! them. [`ClusterClaims`] is what the cluster sees of them. It follows the
//! outbox ([`follow`]): it is told every claim this node holds from each
//! snapshot ([`ClusterClaims::sync`]) and every durable change after
//! ([`ClusterClaims::publish`]), in commit order; and it is asked, before a static pod
//! this node has no claim for gets a new IP, whether another node holds
//! that pod's claim ([`ClusterClaims::locate`]). The local implementation,
//! [`LocalClaims`], is the node's store alone: nothing is elsewhere. The
//! cluster-wide implementation (Kubernetes `VpcIPClaim` objects) answers
//! `locate` with the holding node, and the ADD path then moves the IP here
//! (`MigratePrivateIpAddress`) instead of taking a new one.

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::ipam::{Change, Claim, Word};
use crate::outbox::{Delivery, Subscription};

/// A boxed future, so that the trait stays object safe.
pub type ClaimFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, ClusterClaimsError>> + Send + 'a>>;

/// The cluster's claims could not be asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the cluster's claims: {0}")]
pub struct ClusterClaimsError(pub String);

/// A pod's claim held by another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldElsewhere {
    /// The node holding it.
    pub node: String,
    /// The claimed address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, if the claim has one (dual stack): it follows.
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// Its subnet: only within one subnet can an IP move between nodes.
    pub subnet_id: String,
    /// The zone of that subnet, if the cluster says (empty while it moves).
    pub zone: String,
    /// The ENI carrying it there (after a take-over: the ENI to move it
    /// from).
    pub eni_id: String,
    /// This node took the claim over (phase `Moving`) but has not bound it
    /// yet: the move resumes here (a crash between the take-over and the
    /// local commit).
    pub moving_here: bool,
    /// When the claim was made, if the cluster says.
    pub created_ms: Option<u64>,
}

/// The answer to a take-over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakeOver {
    /// The cluster now names this node as the claim's holder (phase
    /// `Moving`): the address may be moved here.
    Taken(HeldElsewhere),
    /// The holder keeps it (its pod still runs there, or this store cannot
    /// move claims between nodes); why.
    Refused(String),
}

/// What the cluster says of a pod about its IP (its annotations, its
/// workload), read before its ADD; it overrides what the runtime passed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// `Some(true)`: the pod keeps its IP (`Never`); `Some(false)`: it
    /// does not (`Immediate`); `None`: the pod does not say.
    pub keep_ip: Option<bool>,
    /// How long its IP stays reserved once released, if the pod says.
    pub expire_after_ms: Option<u64>,
    /// The workload controlling the pod (a ReplicaSet resolved to its
    /// Deployment).
    pub owner: Option<proto::wire::OwnerRef>,
    /// The address the pod asks for (implies a static IP).
    pub requested_ip: Option<Ipv4Addr>,
}

/// The cluster's answer when a node asks to take an address a pod
/// requested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressFence {
    /// No other node holds or is taking it: this node may.
    Ours,
    /// Held, or being taken, elsewhere: who, for the pod's error.
    Held(String),
}

/// The cluster could not say what a pod wants.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodFactsError {
    /// The pod asks for something invalid (a malformed annotation).
    #[error("{0}")]
    Invalid(String),
    /// The cluster could not be asked.
    #[error("{0}")]
    Unavailable(String),
}

/// One change of a claim this node holds, in the order it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimChange {
    /// Made, bound to a new sandbox, or released.
    Put(Box<Claim>),
    /// Ended (namespace, name): its IP is no longer reserved.
    Removed(String, String),
}

/// The cluster's view of static IP claims.
pub trait ClusterClaims: Send + Sync + 'static {
    /// The claim of pod `namespace/name` if another node holds it.
    fn locate<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> ClaimFuture<'a, Option<HeldElsewhere>>;

    /// Makes node `node` the holder of pod `namespace/name`'s claim, which
    /// `held` says another node holds, if the cluster allows it: only one
    /// writer wins (the cluster's object is the fence), and only when the
    /// holder's pod ended (the claim is reserved) or the holder is down.
    fn take_over<'a>(
        &'a self,
        _node: &'a str,
        _namespace: &'a str,
        _name: &'a str,
        _held: &'a HeldElsewhere,
    ) -> ClaimFuture<'a, TakeOver> {
        Box::pin(async {
            Ok(TakeOver::Refused(
                "this claim store cannot move claims between nodes".into(),
            ))
        })
    }

    /// Every claim this node holds: at start, and whenever the stream had
    /// to start over (the backend fell behind or failed).
    fn sync<'a>(&'a self, node: &'a str, claims: &'a [Claim]) -> ClaimFuture<'a, ()>;

    /// Claim changes, durable already, in the order they were made.
    fn publish<'a>(&'a self, node: &'a str, changes: &'a [ClaimChange]) -> ClaimFuture<'a, ()>;

    /// What the cluster says of pod `namespace/name`; `None` when there is
    /// no cluster to ask (the runtime's arguments decide alone).
    fn pod_facts<'a>(
        &'a self,
        _namespace: &'a str,
        _name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<PodFacts>, PodFactsError>> + Send + 'a>> {
        Box::pin(async { Ok(None) })
    }

    /// Fences the address `ip` that pod `namespace/name` requested for this
    /// node, cluster-wide, before the cloud is asked for it: of two nodes
    /// asking at once, one is told [`AddressFence::Held`] with the holder.
    /// Without a cluster there is nobody else to fence off.
    fn reserve_address<'a>(
        &'a self,
        _ip: Ipv4Addr,
        _namespace: &'a str,
        _name: &'a str,
        _subnet_id: &'a str,
    ) -> ClaimFuture<'a, AddressFence> {
        Box::pin(async { Ok(AddressFence::Ours) })
    }

    /// Lifts this node's fence on `ip` after the address could not be had.
    fn release_address<'a>(&'a self, _ip: Ipv4Addr) -> ClaimFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    /// What the cluster's object says of pod `namespace/name`'s claim: that
    /// this node holds it, another does, or there is none; read afresh
    /// (never from a cache), as the hand-over decides on it.
    fn word<'a>(&'a self, _namespace: &'a str, _name: &'a str) -> ClaimFuture<'a, Word> {
        Box::pin(async { Ok(Word::Unknown) })
    }

    /// Gives pod `namespace/name`'s claim, which this node took over from
    /// `held` and could not bring here, back to that node (reserved there,
    /// with `why`): written only over the take-over, so a newer holder is
    /// never overwritten.
    fn give_back<'a>(
        &'a self,
        _namespace: &'a str,
        _name: &'a str,
        _held: &'a HeldElsewhere,
        _why: &'a str,
    ) -> ClaimFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Makes a static claim this node just bound known to the cluster
    /// before the ADD answers: a static IP the cluster does not know of
    /// is a promise nobody could keep after this node is gone.
    fn announce<'a>(&'a self, _node: &'a str, _claim: &'a Claim) -> ClaimFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// The claim changes of a batch of pool changes.
pub fn claim_changes(changes: &[Change]) -> Vec<ClaimChange> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::PutClaim(claim) => Some(ClaimChange::Put(Box::new(claim.clone()))),
            Change::RemoveClaim(ns, name) => Some(ClaimChange::Removed(ns.clone(), name.clone())),
            _ => None,
        })
        .collect()
}

/// Feeds `store` from an outbox subscription until the agent stops: a snapshot syncs
/// it, each batch's claim changes are published. A failure is retried
/// with backoff from a fresh snapshot, so the store converges on what the
/// node's store holds.
pub async fn follow(mut stream: Subscription, store: Arc<dyn ClusterClaims>, node: String) {
    let mut backoff = Duration::from_millis(200);
    while let Some(delivery) = stream.next().await {
        let result = match delivery {
            Delivery::Snapshot { seq, pool } => {
                debug!(
                    after = seq,
                    claims = pool.claims.len(),
                    "cluster claims syncing"
                );
                store.sync(&node, &pool.claims).await
            }
            Delivery::Batch(batch) => {
                let changes = claim_changes(&batch.changes);
                if changes.is_empty() {
                    continue;
                }
                store.publish(&node, &changes).await
            }
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cluster claims behind; will re-sync");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                if !stream.restart() {
                    return;
                }
            }
        }
    }
}

/// The node's store alone: no claim is held anywhere else.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalClaims;

impl ClusterClaims for LocalClaims {
    fn locate<'a>(&'a self, _: &'a str, _: &'a str) -> ClaimFuture<'a, Option<HeldElsewhere>> {
        Box::pin(async { Ok(None) })
    }

    fn sync<'a>(&'a self, _: &'a str, _: &'a [Claim]) -> ClaimFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn publish<'a>(&'a self, _: &'a str, _: &'a [ClaimChange]) -> ClaimFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}
