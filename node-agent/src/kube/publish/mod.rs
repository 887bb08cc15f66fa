//! The node's pool as Kubernetes objects: follows the outbox (a durable
//! copy of the pool, batch by batch, in commit order), computes the objects
//! the node should be seen as (`objects.rs`), and brings the cluster in
//! line with server-side applies. It also carries out `kubectl delete
//! vipc` (a finalizer holds the object until the IP is freed; while the
//! pod runs the deletion waits) and raises the node's and the claims'
//! events. It never blocks the pod path: a failure is retried with
//! backoff, and each pass converges on the current pool.
//!
//! `claims.rs` writes the claim objects (hand-over, orphaning, deletion),
//! `ips.rs` the `VpcIP`s, `node.rs` the `NodeEniConfig`'s status.

mod claims;
mod ips;
mod node;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::crd::{NodeEniConfig, VpcIP, VpcIPClaim, VpcIPSpec};
use super::objects::{self, ClaimObject};
use super::{MANAGER, NODE_LABEL};
use crate::agent::NodeFeed;
use crate::ipam::Ipam;
use crate::outbox::Delivery;
use crate::sizing::Overrides;

/// How often the publisher looks again without being told (the node's
/// conditions and ENIs attaching live beside the pool).
const TICK: Duration = Duration::from_secs(2);
/// How long an object just written may take to show in the cache before
/// it is written again.
const SETTLE: Duration = Duration::from_secs(10);
/// How often the node's status is written when only its counts changed
/// (pods came and went): the last counts are written at most this long (and
/// a tick) after the change; a change of its ENIs, limits or conditions is
/// written at once.
const COUNTS_PERIOD: Duration = Duration::from_secs(10);
/// How long a look-up of a claim's owner may take.
const OWNER_LOOKUP: Duration = Duration::from_secs(3);

/// Settings of the publisher.
#[derive(Clone, Debug)]
pub struct Options {
    /// The node's name (its objects are labelled and named after it).
    pub node: String,
    /// Subnets the node may take ENIs from, as configured.
    pub subnet_ids: Vec<String>,
    /// The objects this agent created lately (shared with its claims').
    pub written: super::writes::Written,
}

/// Starts publishing `feed`'s pool; runs until the agent's outbox ends.
pub fn spawn(client: Client, feed: Arc<dyn NodeFeed>, options: Options) {
    tokio::spawn(async move {
        let publisher = Publisher::new(client, feed, options);
        publisher.run().await;
    });
}

struct Publisher {
    client: Client,
    feed: Arc<dyn NodeFeed>,
    options: Options,
    claims: Store<VpcIPClaim>,
    claims_changed: Arc<Notify>,
    ips: Store<VpcIP>,
    ips_changed: Arc<Notify>,
    config: Store<NodeEniConfig>,
    config_changed: Arc<Notify>,
    recorder: Recorder,
    node_uid: Option<String>,
    sent_claims: HashMap<(String, String), (ClaimObject, Instant)>,
    sent_ips: HashMap<String, (VpcIPSpec, Instant)>,
    written: super::writes::Written,
    /// The uid of each `VpcIP` this publisher created, until it deletes
    /// it (its cache may not show it yet).
    ip_uids: HashMap<String, String>,
    deleted: HashMap<String, Instant>,
    sent_node: Option<super::crd::NodeEniConfigStatus>,
    /// When the node's status was last written.
    node_written: Option<std::time::Instant>,
    conditions: BTreeMap<String, String>,
    deferred: HashSet<String>,
    last: BTreeMap<(String, String), ClaimObject>,
    /// When this node first saw each of its `VpcIP`s, by its own clock.
    ips_seen: HashMap<String, Instant>,
}

impl Publisher {
    fn new(client: Client, feed: Arc<dyn NodeFeed>, options: Options) -> Publisher {
        let selector = format!("{NODE_LABEL}={}", options.node);
        let (claims, claims_changed) = super::cache(
            Api::<VpcIPClaim>::all(client.clone()),
            watcher::Config::default().labels(&selector),
            "vpcipclaims",
        );
        let (ips, ips_changed) = super::cache(
            Api::<VpcIP>::all(client.clone()),
            watcher::Config::default().labels(&selector),
            "vpcips",
        );
        let (config, config_changed) = super::cache(
            Api::<NodeEniConfig>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={}", options.node)),
            "nodeeniconfigs",
        );
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(options.node.clone()),
            },
        );
        let written = options.written.clone();
        Publisher {
            client,
            feed,
            options,
            claims,
            claims_changed,
            ips,
            ips_changed,
            config,
            config_changed,
            recorder,
            node_uid: None,
            sent_claims: HashMap::new(),
            sent_ips: HashMap::new(),
            written,
            ip_uids: HashMap::new(),
            deleted: HashMap::new(),
            sent_node: None,
            node_written: None,
            conditions: BTreeMap::new(),
            deferred: HashSet::new(),
            last: BTreeMap::new(),
            ips_seen: HashMap::new(),
        }
    }

    async fn run(mut self) {
        let mut stream = self.feed.subscribe();
        let mut mirror: Option<Ipam> = None;
        let mut tick = tokio::time::interval(TICK);
        let mut backoff = Duration::from_millis(200);
        let _ = tokio::join!(self.claims.wait_until_ready(), self.ips.wait_until_ready());
        info!(node = %self.options.node, "publishing the pool to Kubernetes");
        loop {
            tokio::select! {
                delivery = stream.next() => match delivery {
                    None => return,
                    Some(Delivery::Snapshot { pool, .. }) => match Ipam::restore(0, (*pool).clone()) {
                        Ok(ipam) => mirror = Some(ipam),
                        Err(e) => warn!(error = %e, "cannot read the pool's snapshot"),
                    },
                    Some(Delivery::Batch(batch)) => {
                        if let Some(m) = mirror.as_mut() {
                            m.apply(&batch.changes);
                        }
                    }
                },
                _ = self.claims_changed.notified() => {}
                _ = self.ips_changed.notified() => {}
                _ = self.config_changed.notified() => self.read_overrides(),
                _ = tick.tick() => {}
            }
            let Some(pool) = &mirror else { continue };
            match self.pass(pool).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot publish the pool to Kubernetes");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// The uid of this node's `VpcIP` of `ip`, if it has one.
    fn ip_uid(&self, ip: &str) -> Option<String> {
        self.ip_uids.get(ip).cloned().or_else(|| {
            self.ips
                .get(&ObjectRef::new(ip))
                .filter(|l| super::writes::has_node_label(&**l, &self.options.node))
                .and_then(|l| l.metadata.uid.clone())
        })
    }

    /// The operator's targets for this node, from its `NodeEniConfig` spec.
    fn read_overrides(&self) {
        let spec = self
            .config
            .get(&ObjectRef::new(&self.options.node))
            .map(|c| c.spec.clone())
            .unwrap_or_default();
        self.feed.set_overrides(Overrides {
            warm_ip: spec.warm_ip_target.map(|n| n as usize),
            min_ip: spec.min_ip_target.map(|n| n as usize),
            max_eni: spec.max_eni,
            subnets: spec.subnet_ids,
        });
    }

    /// One pass: the cluster brought in line with `pool`.
    async fn pass(&mut self, pool: &Ipam) -> Result<(), kube::Error> {
        let (view, claim_views) = self.feed.views(pool);
        let info = self.feed.node_info();
        let want = objects::desired(
            &self.options.node,
            info.as_ref(),
            &self.options.subnet_ids,
            &view,
            &claim_views,
        );
        self.deleted.retain(|_, at| at.elapsed() < SETTLE);
        // The addresses first: a plain claim is written with its `VpcIP`
        // as its owner, and is left to go with it.
        self.publish_ips(&want).await?;
        self.publish_claims(&want).await?;
        self.publish_node(&want).await?;
        self.last = want.claims;
        Ok(())
    }

    async fn event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            warn!(reason, error = %e, "cannot record an event");
        }
    }
}
