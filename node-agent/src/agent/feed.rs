//! What the cluster side (Kubernetes objects, events) reads of the agent:
//! the ordered stream of durable changes, the views built from a durable
//! copy of the pool plus what the agent knows beside it, and the one
//! action it may ask for (reclaiming a claim whose object was deleted).
//! A trait, so that publishers are tested without an agent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use proto::wire::{AgentError, ClaimView, PoolView};

use super::{Agent, views};
use crate::cloud::{Cloud, NodeInfo};
use crate::dataplane::Dataplane;
use crate::ipam::{Claim, Ipam, UnixMillis};
use crate::outbox::Subscription;
use crate::sizing::Overrides;

/// What became of a request to reclaim a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reclaimed {
    /// Ended: its IP is free.
    Done,
    /// Not now: a sandbox of the pod holds the IP (the reason says so).
    Deferred(String),
    /// This node holds no such claim.
    NotHeld,
}

/// A boxed future of the feed.
pub type FeedFuture = Pin<Box<dyn Future<Output = Result<Reclaimed, AgentError>> + Send>>;

/// The agent as the cluster side sees it.
pub trait NodeFeed: Send + Sync + 'static {
    /// This node's name (its instance id).
    fn node_name(&self) -> String;
    /// The stream of durable changes, from a snapshot.
    fn subscribe(&self) -> Subscription;
    /// The node's details, once the VPC API answered.
    fn node_info(&self) -> Option<NodeInfo>;
    /// The pool as operators see it, from `durable` (a copy of the pool as
    /// the store holds it) and the agent's live ENIs attaching and
    /// conditions; and every pod's claim.
    fn views(&self, durable: &Ipam) -> (PoolView, Vec<ClaimView>);
    /// Now, by the agent's clock.
    fn now(&self) -> UnixMillis;
    /// Ends the claim of pod `namespace/name` unless a sandbox holds it.
    fn reclaim(self: Arc<Self>, namespace: String, name: String) -> FeedFuture;
    /// The operator's overrides of this node's targets, from now on.
    fn set_overrides(&self, overrides: Overrides);
    /// The cluster names node `to` as the holder of pod `namespace/name`'s
    /// claim: it becomes outgoing here (reserved until its address leaves)
    /// unless a sandbox here holds it; whether it is outgoing.
    fn leave(
        self: Arc<Self>,
        namespace: String,
        name: String,
        to: String,
    ) -> Pin<Box<dyn Future<Output = Result<bool, AgentError>> + Send>>;

    /// The owner `uid` of pod `namespace/name`'s claim let go of it (the
    /// garbage collector orphaned the object): the claim forgets it.
    fn disown(
        self: Arc<Self>,
        namespace: String,
        name: String,
        uid: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), AgentError>> + Send>>;

    /// The cluster's object of a static claim this node should hold but
    /// its pool lacks (an empty or replaced store): the claim is rebuilt
    /// from it, reserved; whether it was.
    fn restore(
        self: Arc<Self>,
        claim: Claim,
    ) -> Pin<Box<dyn Future<Output = Result<bool, AgentError>> + Send>>;
}

impl<C: Cloud + 'static, D: Dataplane + 'static> NodeFeed for Agent<C, D> {
    fn disown(
        self: Arc<Self>,
        namespace: String,
        name: String,
        uid: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), AgentError>> + Send>> {
        Box::pin(async move {
            self.txn
                .commit(move |ipam, _| {
                    let changes = match ipam.claim(&namespace, &name) {
                        Some(c) if c.owner.as_ref().is_some_and(|o| o.uid == uid) => {
                            vec![crate::ipam::Change::PutClaim(Claim {
                                owner: None,
                                ..c.clone()
                            })]
                        }
                        _ => Vec::new(),
                    };
                    Ok((changes, ()))
                })
                .await
        })
    }

    fn restore(
        self: Arc<Self>,
        claim: Claim,
    ) -> Pin<Box<dyn Future<Output = Result<bool, AgentError>> + Send>> {
        Box::pin(async move { Agent::restore_claim(&self, claim).await })
    }

    fn node_name(&self) -> String {
        self.instance_id.clone()
    }

    fn subscribe(&self) -> Subscription {
        self.outbox.subscribe()
    }

    fn node_info(&self) -> Option<NodeInfo> {
        self.node()
    }

    fn views(&self, durable: &Ipam) -> (PoolView, Vec<ClaimView>) {
        let attaching = self.attaching().clone();
        let now = self.txn.now();
        let default = self.config.claim_expiry.map(|d| d.as_millis() as u64);
        (
            views::pool(durable, now, &attaching, self.conditions.all()),
            views::claims(durable, &self.instance_id, default),
        )
    }

    fn now(&self) -> UnixMillis {
        self.txn.now()
    }

    fn set_overrides(&self, overrides: Overrides) {
        let mut current = self.overrides.write().unwrap_or_else(|p| p.into_inner());
        if *current != overrides {
            tracing::info!(
                ?overrides,
                "pool targets overridden by the node's NodeEniConfig"
            );
            *current = overrides;
            drop(current);
            // The maintenance loop brings the pool to the new targets.
            self.pool_changed.notify_one();
        }
    }

    fn leave(
        self: Arc<Self>,
        namespace: String,
        name: String,
        to: String,
    ) -> Pin<Box<dyn Future<Output = Result<bool, AgentError>> + Send>> {
        Box::pin(async move { Agent::leave(&self, &namespace, &name, &to).await })
    }

    fn reclaim(self: Arc<Self>, namespace: String, name: String) -> FeedFuture {
        Box::pin(async move {
            let held = self.txn.read(|ipam, _| {
                ipam.claim(&namespace, &name).map(|c| {
                    (
                        ipam.holder_of(&c.ip).map(|a| a.key.container_id.clone()),
                        c.handover.clone(),
                    )
                })
            });
            match held {
                None => Ok(Reclaimed::NotHeld),
                Some((_, Some(crate::ipam::Handover::Outgoing { .. }))) => Ok(Reclaimed::NotHeld),
                Some((_, Some(crate::ipam::Handover::Incoming { .. }))) => Ok(Reclaimed::Deferred(
                    "the static IP is on its way to this node; it is reclaimed once it is here"
                        .into(),
                )),
                Some((held, None)) => match held {
                    Some(container) => Ok(Reclaimed::Deferred(format!(
                        "sandbox {container} of the pod still uses the IP; it is reclaimed when the pod ends"
                    ))),
                    None => {
                        self.delete_claim(&namespace, &name, false).await?;
                        Ok(Reclaimed::Done)
                    }
                },
            }
        })
    }
}
