//! Where static IP claims live beyond this node.
//!
//! The node's store is the authority on its own claims: a claim is written
//! in the same commit as the IP it reserves, so a crash never separates
//! them. A [`ClaimStore`] is what the cluster sees of them: it is told every
//! claim this node holds at start ([`ClaimStore::sync`]) and every change
//! after ([`ClaimStore::publish`]), and it is asked, before a static pod
//! this node has no claim for gets a new IP, whether another node holds
//! that pod's claim ([`ClaimStore::locate`]). The local implementation,
//! [`LocalClaims`], is the node's store alone: nothing is elsewhere. The
//! cluster-wide implementation (Kubernetes `VpcIPClaim` objects) answers
//! `locate` with the holding node, and the ADD path then moves the IP here
//! (`MigratePrivateIpAddress`) instead of taking a new one.

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;

use crate::ipam::Claim;

/// A boxed future, so that the trait stays object safe.
pub type ClaimFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ClaimStoreError>> + Send + 'a>>;

/// The cluster's claim store could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("claim store: {0}")]
pub struct ClaimStoreError(pub String);

/// A pod's claim held by another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldElsewhere {
    /// The node holding it.
    pub node: String,
    /// The claimed address.
    pub ip: Ipv4Addr,
    /// Its subnet: only within one subnet can an IP move between nodes.
    pub subnet_id: String,
    /// The ENI carrying it there.
    pub eni_id: String,
}

/// One change of a claim this node holds, in the order it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimChange {
    /// Made, bound to a new sandbox, or released.
    Put(Claim),
    /// Ended (namespace, name): its IP is no longer reserved.
    Removed(String, String),
}

/// The cluster's view of static IP claims.
pub trait ClaimStore: Send + Sync + 'static {
    /// The claim of pod `namespace/name` if another node holds it.
    fn locate<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> ClaimFuture<'a, Option<HeldElsewhere>>;

    /// Every claim this node holds, once at start (after a crash too).
    fn sync(&self, node: &str, claims: &[Claim]);

    /// Claim changes, in the order they are made. They are queued for the
    /// node's store at the same time; should that write fail the agent
    /// stops changing anything and its restart calls [`sync`](Self::sync)
    /// again, so a backend converges on what the store holds.
    fn publish(&self, node: &str, changes: &[ClaimChange]);
}

/// The node's store alone: no claim is held anywhere else.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalClaims;

impl ClaimStore for LocalClaims {
    fn locate<'a>(&'a self, _: &'a str, _: &'a str) -> ClaimFuture<'a, Option<HeldElsewhere>> {
        Box::pin(async { Ok(None) })
    }

    fn sync(&self, _: &str, _: &[Claim]) {}

    fn publish(&self, _: &str, _: &[ClaimChange]) {}
}
