//! The node's pool as Kubernetes objects: follows the outbox (a durable
//! copy of the pool, batch by batch, in commit order), computes the objects
//! the node should be seen as (`objects.rs`), and brings the cluster in
//! line with server-side applies. It also carries out `kubectl delete
//! vipc` (a finalizer holds the object until the IP is freed; while the
//! pod runs the deletion waits) and raises the node's and the claims'
//! events. It never blocks the pod path: a failure is retried with
//! backoff, and each pass converges on the current pool.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::crd::{DeletePolicy, NodeEniConfig, NodeEniConfigSpec, VpcIP, VpcIPClaim, VpcIPSpec};
use super::objects::{self, ClaimObject, Desired};
use super::writes::{
    Created, apply_claim, apply_params, create_ip, has_node_label, ignore_missing, node_labels,
    other_holder, owner_gone, remove_finalizer, same_claim, unreferenced_owner, was_written_with,
};
use super::{MANAGER, NODE_LABEL};
use crate::agent::{NodeFeed, Reclaimed};
use crate::ipam::Ipam;
use crate::outbox::Delivery;
use crate::sizing::Overrides;

/// How often the publisher looks again without being told (the node's
/// conditions and ENIs attaching live beside the pool).
const TICK: Duration = Duration::from_secs(2);
/// How long an object just written may take to show in the cache before
/// it is written again.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a look-up of a claim's owner may take.
const OWNER_LOOKUP: Duration = Duration::from_secs(3);

/// Settings of the publisher.
#[derive(Clone, Debug)]
pub struct Options {
    /// The node's name (its objects are labelled and named after it).
    pub node: String,
    /// Subnets the node may take ENIs from, as configured.
    pub subnet_ids: Vec<String>,
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
    deleted: HashMap<String, Instant>,
    sent_node: Option<super::crd::NodeEniConfigStatus>,
    conditions: BTreeMap<String, String>,
    deferred: HashSet<String>,
    last: BTreeMap<(String, String), ClaimObject>,
    /// When this node first saw each `Requested` fence, by its own clock.
    fences_seen: HashMap<String, Instant>,
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
            deleted: HashMap::new(),
            sent_node: None,
            conditions: BTreeMap::new(),
            deferred: HashSet::new(),
            last: BTreeMap::new(),
            fences_seen: HashMap::new(),
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
        self.publish_claims(&want).await?;
        self.publish_ips(&want).await?;
        self.publish_node(&want).await?;
        self.last = want.claims;
        Ok(())
    }

    /// Whether a claim object that lost its reference to `wanted` was
    /// orphaned by it (see [`was_written_with`]), or adopted by a new
    /// workload; `None` when the owner could not be looked up.
    async fn orphaned_by(
        &self,
        namespace: &str,
        live: &VpcIPClaim,
        wanted: &OwnerReference,
    ) -> Option<bool> {
        if was_written_with(live, wanted) {
            return Some(true);
        }
        match tokio::time::timeout(OWNER_LOOKUP, owner_gone(&self.client, namespace, wanted)).await
        {
            Ok(Ok(gone)) => Some(gone),
            Ok(Err(e)) => {
                warn!(namespace, owner = %wanted.name, error = %e, "cannot look up a claim's owner; the claim is not written this pass");
                None
            }
            Err(_) => None,
        }
    }

    /// The claim forgets the owner it was orphaned by; the next workload
    /// whose pod binds it adopts it.
    async fn disown(&self, key: &(String, String), uid: &str) {
        match Arc::clone(&self.feed)
            .disown(key.0.clone(), key.1.clone(), uid.to_string())
            .await
        {
            Ok(()) => {
                info!(namespace = %key.0, name = %key.1, owner = %uid, "claim orphaned by its owner; kept without it")
            }
            Err(e) => {
                warn!(namespace = %key.0, name = %key.1, error = %e.message, "cannot orphan a claim; will retry")
            }
        }
    }

    async fn publish_claims(&mut self, want: &Desired) -> Result<(), kube::Error> {
        for (key, obj) in &want.claims {
            let live = self.claims.get(&ObjectRef::new(&key.1).within(&key.0));
            // The object is the fence: one that names another node as the
            // holder (it took the claim over) is never written back, nor
            // its deletion carried out here; the claim leaves this node
            // instead. Looked at before anything else.
            if let Some(holder) = live
                .as_ref()
                .and_then(|l| other_holder(l, &self.options.node))
            {
                self.leave(key, &holder).await;
                continue;
            }
            if let Some(live) = &live
                && live.metadata.deletion_timestamp.is_some()
            {
                self.deletion(live, Some(obj)).await?;
                continue;
            }
            if live
                .as_ref()
                .is_some_and(|l| same_claim(l, obj, &self.options.node))
                || self
                    .sent_claims
                    .get(key)
                    .is_some_and(|(o, at)| o == obj && at.elapsed() < SETTLE)
            {
                continue;
            }
            // The garbage collector took the owner's reference off (its
            // workload was deleted with --cascade=orphan): written back, it
            // would make the collector delete the claim once that owner is
            // gone. The claim forgets its owner instead; the next workload
            // whose pod binds it adopts it.
            if let Some(live) = &live
                && let Some(wanted) = unreferenced_owner(live, obj)
            {
                match self.orphaned_by(&key.0, live, &wanted).await {
                    // A new workload adopted the claim: written below.
                    Some(false) => {}
                    // Not known yet: nothing written this pass.
                    None => continue,
                    Some(true) => {
                        self.disown(key, &wanted.uid).await;
                        continue;
                    }
                }
            }
            let current = match live {
                Some(l) => Some((*l).clone()),
                None => {
                    let api: Api<VpcIPClaim> = Api::namespaced(self.client.clone(), &key.0);
                    api.get_opt(&key.1).await?
                }
            };
            if let Some(holder) = current
                .as_ref()
                .and_then(|c| other_holder(c, &self.options.node))
            {
                self.leave(key, &holder).await;
                continue;
            }
            let version = current.as_ref().and_then(|c| c.resource_version());
            match apply_claim(&self.client, &self.options.node, key, obj, version).await {
                // Changed since it was read (another node may be taking
                // it over): looked at again next pass.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    debug!(namespace = %key.0, name = %key.1, "claim changed meanwhile; not published");
                    continue;
                }
                r => r?,
            }
            debug!(namespace = %key.0, name = %key.1, phase = %obj.status.phase, "claim published");
            self.sent_claims
                .insert(key.clone(), (obj.clone(), Instant::now()));
        }
        for live in self.claims.state() {
            let key = (live.namespace().unwrap_or_default(), live.name_any());
            if want.claims.contains_key(&key) {
                continue;
            }
            self.sent_claims.remove(&key);
            if live.metadata.deletion_timestamp.is_some() {
                self.deletion(&live, None).await?;
                continue;
            }
            let id = format!("vipc/{}/{}", key.0, key.1);
            if self.deleted.contains_key(&id) || other_holder(&live, &self.options.node).is_some() {
                continue;
            }
            // A static claim the pool never held while this publisher ran
            // (an emptied or replaced store, a new instance under this
            // node's name): the object is the backup; the claim is rebuilt
            // from it, never deleted for it.
            let incoming_here = live
                .status
                .as_ref()
                .is_some_and(|st| want.arriving.contains(&st.ip));
            if !self.last.contains_key(&key)
                && !incoming_here
                && let Some(claim) = objects::claim_from_object(&live, &self.options.node)
            {
                match Arc::clone(&self.feed).restore(claim).await {
                    Ok(true) => {
                        info!(namespace = %key.0, name = %key.1, "static IP claim rebuilt from its object")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(namespace = %key.0, name = %key.1, error = %e.message, "cannot rebuild a static IP claim from its object; will retry")
                    }
                }
                continue;
            }
            // A claim this node took over and is moving here: the ADD
            // moving it finishes it (or resumes after a crash).
            if live
                .status
                .as_ref()
                .is_some_and(|s| s.claim_phase() == Some(crate::phase::ClaimPhase::Moving))
            {
                continue;
            }
            if let Some(was) = self.last.get(&key)
                && was.spec.delete_policy == DeletePolicy::Never
            {
                let why = match &was.status.expires_at {
                    Some(at)
                        if objects::parse_rfc3339(at).is_some_and(|t| t <= self.feed.now()) =>
                    {
                        format!(
                            "the static IP {} expired at {at} and was freed",
                            was.status.ip
                        )
                    }
                    _ => format!(
                        "the static IP {} was reclaimed on node {} and freed",
                        was.status.ip, self.options.node
                    ),
                };
                self.event(
                    &live.object_ref(&()),
                    EventType::Normal,
                    "Released",
                    "Release",
                    why,
                )
                .await;
            }
            let api: Api<VpcIPClaim> = Api::namespaced(self.client.clone(), &key.0);
            // Only the version this node saw: a cache behind a take-over
            // must not delete the new holder's object.
            let mut params = DeleteParams::background();
            params.preconditions = Some(Preconditions {
                resource_version: live.resource_version(),
                uid: None,
            });
            match api.delete(&key.1, &params).await {
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                r => ignore_missing(r)?,
            }
            remove_finalizer(&api, &live).await?;
            self.deleted.insert(id, Instant::now());
        }
        Ok(())
    }

    /// The claim of `key` is held by node `holder` now: it leaves this
    /// node (outgoing, reserved until its address is gone from here).
    async fn leave(&mut self, key: &(String, String), holder: &str) {
        self.sent_claims.remove(key);
        match Arc::clone(&self.feed)
            .leave(key.0.clone(), key.1.clone(), holder.to_string())
            .await
        {
            Ok(true) => {
                debug!(namespace = %key.0, name = %key.1, node = %holder, "claim taken over by another node; outgoing here")
            }
            Ok(false) => {
                warn!(namespace = %key.0, name = %key.1, node = %holder, "claim object names another node while a sandbox here holds the pod's IP; not written back")
            }
            Err(e) => {
                warn!(namespace = %key.0, name = %key.1, error = %e.message, "cannot mark a claim taken over; will retry")
            }
        }
    }

    /// A claim object being deleted (`kubectl delete vipc`, its namespace
    /// or its owner going): its IP is freed first, which waits while the
    /// pod runs; then the finalizer goes and so does the object.
    async fn deletion(
        &mut self,
        live: &VpcIPClaim,
        want: Option<&ClaimObject>,
    ) -> Result<(), kube::Error> {
        let (ns, name) = (live.namespace().unwrap_or_default(), live.name_any());
        let api: Api<VpcIPClaim> = Api::namespaced(self.client.clone(), &ns);
        let uid = live.uid().unwrap_or_default();
        let reference = live.object_ref(&());
        match want {
            None => remove_finalizer(&api, live).await,
            Some(obj) if obj.bound() => {
                if self.deferred.insert(uid) {
                    let note = format!(
                        "pod {ns}/{name} still runs on node {} with {}; the IP is freed and the claim deleted when the pod ends",
                        self.options.node, obj.status.ip
                    );
                    info!(namespace = %ns, name = %name, "claim deletion deferred while its pod runs");
                    self.event(
                        &reference,
                        EventType::Normal,
                        "DeletionDeferred",
                        "Reclaim",
                        note,
                    )
                    .await;
                }
                Ok(())
            }
            Some(obj) => {
                match Arc::clone(&self.feed)
                    .reclaim(ns.clone(), name.clone())
                    .await
                {
                    Ok(Reclaimed::Done) => {
                        let note = format!(
                            "the claim was deleted; the static IP {} is freed",
                            obj.status.ip
                        );
                        self.event(&reference, EventType::Normal, "Reclaimed", "Reclaim", note)
                            .await;
                    }
                    Ok(Reclaimed::Deferred(why)) => {
                        if self.deferred.insert(uid) {
                            self.event(
                                &reference,
                                EventType::Normal,
                                "DeletionDeferred",
                                "Reclaim",
                                why,
                            )
                            .await;
                        }
                    }
                    Ok(Reclaimed::NotHeld) => remove_finalizer(&api, live).await?,
                    Err(e) => {
                        warn!(namespace = %ns, name = %name, error = %e.message, "cannot reclaim a deleted claim; will retry")
                    }
                }
                Ok(())
            }
        }
    }

    async fn publish_ips(&mut self, want: &Desired) -> Result<(), kube::Error> {
        let api: Api<VpcIP> = Api::all(self.client.clone());
        for (name, spec) in &want.ips {
            let live = self.ips.get(&ObjectRef::new(name));
            if live
                .as_ref()
                .is_some_and(|l| &l.spec == spec && has_node_label(&**l, &self.options.node))
                || self
                    .sent_ips
                    .get(name)
                    .is_some_and(|(s, at)| s == spec && at.elapsed() < SETTLE)
            {
                continue;
            }
            let mut obj = VpcIP::new(name, spec.clone());
            obj.metadata.labels = Some(node_labels(&self.options.node));
            if live.is_none() {
                // Not this node's yet: a create, which fails if the
                // address's object exists; one naming another node (the
                // address moved, and that node writes it) is never written
                // over.
                match create_ip(&api, &obj).await? {
                    Created::Done => {
                        self.sent_ips
                            .insert(name.clone(), (spec.clone(), Instant::now()));
                        continue;
                    }
                    Created::Theirs(other) => {
                        debug!(ip = %name, node = %other, "VpcIP held by another node; not written");
                        continue;
                    }
                    Created::Ours => {}
                }
            }
            api.patch(name, &apply_params(), &Patch::Apply(&obj))
                .await?;
            self.sent_ips
                .insert(name.clone(), (spec.clone(), Instant::now()));
        }
        let live_names: HashSet<String> = self.ips.state().iter().map(|l| l.name_any()).collect();
        self.fences_seen.retain(|name, _| live_names.contains(name));
        for live in self.ips.state() {
            let name = live.name_any();
            let id = format!("vip/{name}");
            // An address on its way here (an incoming claim) is still the
            // claim's: its fence stays.
            if want.ips.contains_key(&name)
                || self.deleted.contains_key(&id)
                || want.arriving.contains(&name)
            {
                continue;
            }
            // A fence's age by this node's own clock, from when it was
            // first seen: the API server's clock is another host's.
            if live.spec.ip_phase() == Some(crate::phase::IpPhase::Requested) {
                let seen = *self
                    .fences_seen
                    .entry(name.clone())
                    .or_insert_with(Instant::now);
                if fence_in_flight(seen.elapsed()) {
                    continue;
                }
            }
            self.sent_ips.remove(&name);
            // Only the version this node saw (the address may have moved
            // to another node, which writes it now).
            let mut params = DeleteParams::background();
            params.preconditions = Some(Preconditions {
                resource_version: live.resource_version(),
                uid: None,
            });
            match api.delete(&name, &params).await {
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                r => ignore_missing(r)?,
            }
            self.deleted.insert(id, Instant::now());
        }
        Ok(())
    }

    async fn publish_node(&mut self, want: &Desired) -> Result<(), kube::Error> {
        let node = self.options.node.clone();
        if self.node_uid.is_none() {
            let nodes: Api<Node> = Api::all(self.client.clone());
            self.node_uid = nodes.get_opt(&node).await?.and_then(|n| n.metadata.uid);
        }
        if self.sent_node.as_ref() != Some(&want.node) {
            let api: Api<NodeEniConfig> = Api::all(self.client.clone());
            if self.sent_node.is_none() {
                let obj = NodeEniConfig::new(&node, NodeEniConfigSpec::default());
                api.patch(&node, &apply_params(), &Patch::Apply(&obj))
                    .await?;
            }
            let status = serde_json::json!({
                "apiVersion": NodeEniConfig::api_version(&()),
                "kind": NodeEniConfig::kind(&()),
                "status": want.node,
            });
            api.patch_status(&node, &apply_params(), &Patch::Apply(&status))
                .await?;
            self.sent_node = Some(want.node.clone());
        }
        let now: BTreeMap<String, String> = want
            .node
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.message.clone()))
            .collect();
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            uid: self.node_uid.clone(),
            ..Default::default()
        };
        for (kind, message) in &now {
            if !self.conditions.contains_key(kind) {
                self.event(
                    &reference,
                    EventType::Warning,
                    kind,
                    "AllocateEni",
                    message.clone(),
                )
                .await;
            }
        }
        let cleared: BTreeSet<String> = self
            .conditions
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for kind in cleared {
            let note = format!("{kind} no longer holds on node {node}");
            self.event(
                &reference,
                EventType::Normal,
                &format!("{kind}Cleared"),
                "AllocateEni",
                note,
            )
            .await;
        }
        self.conditions = now;
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

/// How long a `Requested` fence (`kube/claims.rs`) is left alone while
/// the pool does not hold its address yet: the ADD that made it is asking
/// the cloud (an incoming claim of the pool keeps asking). Older, it is a
/// crashed attempt's and is deleted.
const FENCE_GRACE: Duration = Duration::from_secs(60);

/// Whether a `Requested` fence this node first saw `seen_for` ago may
/// still have its request under way.
fn fence_in_flight(seen_for: Duration) -> bool {
    seen_for < FENCE_GRACE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::writes::owner_references;

    #[test]
    fn hole_4_a_claim_whose_owner_reference_was_taken_off_is_orphaned_not_written_back() {
        use crate::kube::crd::{Owner, VpcIPClaimStatus};
        let want = ClaimObject {
            spec: Default::default(),
            status: VpcIPClaimStatus {
                owner: Some(Owner {
                    kind: "StatefulSet".into(),
                    name: "web".into(),
                    uid: "u-old".into(),
                }),
                ..Default::default()
            },
        };
        let mut live = VpcIPClaim::new("web-0", Default::default());
        let lost = unreferenced_owner(&live, &want).expect("no reference carried");
        assert_eq!(lost.uid, "u-old");
        assert!(
            !was_written_with(&live, &lost),
            "never written with it: only a look-up of the owner tells"
        );
        live.status = Some(want.status.clone());
        assert!(was_written_with(&live, &lost), "written with it, now lost");
        // The re-created workload adopted the claim: its owner is not the
        // one the object was written with, so it is looked up (and found).
        let adopted = ClaimObject {
            status: VpcIPClaimStatus {
                owner: Some(Owner {
                    kind: "StatefulSet".into(),
                    name: "web".into(),
                    uid: "u-new".into(),
                }),
                ..Default::default()
            },
            ..want.clone()
        };
        let new = unreferenced_owner(&live, &adopted).expect("not written yet");
        assert!(!was_written_with(&live, &new), "adopted by a new owner");
        live.metadata.owner_references = owner_references(&want);
        assert_eq!(unreferenced_owner(&live, &want), None, "still owned");
        let unowned = ClaimObject {
            status: VpcIPClaimStatus::default(),
            ..want
        };
        live.metadata.owner_references = None;
        assert_eq!(unreferenced_owner(&live, &unowned), None, "never owned");
    }

    #[test]
    fn a_requested_fence_is_left_alone_only_while_its_request_may_run() {
        assert!(fence_in_flight(FENCE_GRACE - Duration::from_millis(1)));
        assert!(!fence_in_flight(FENCE_GRACE));
    }
}
