//! The cluster's claims on Kubernetes: `VpcIPClaim` objects say which
//! node holds a pod's claim; the pods' annotations say what they want;
//! a static claim's first bind is written before its ADD answers. The rest
//! of the objects follow the outbox (`publish/`), so `sync` and
//! `publish` have nothing to add here.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::NODE_LABEL;
use super::crd::{VpcIP, VpcIPClaim, VpcIPClaimStatus, VpcIPSpec};
use super::objects;
use super::pods::Pods;
use super::writes::{Created, Written, apply_claim, apply_ip, claim_resource, create_ip};
use crate::cluster_claims::{
    AddressFence, ClaimChange, ClaimFuture, ClusterClaims, ClusterClaimsError, HeldElsewhere,
    PodFacts, PodFactsError, TakeOver,
};
use crate::ipam::{Claim, Word};
use crate::phase::{ClaimPhase, IpPhase};

/// How long one question to the API server may take on the pod path.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Claims kept as `VpcIPClaim` objects.
#[derive(Clone)]
pub struct KubeClaims {
    client: Client,
    node: String,
    pods: Pods,
    written: Written,
}

impl std::fmt::Debug for KubeClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClaims")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl KubeClaims {
    /// The cluster's claims as node `node` sees them, reading its pods' annotations (and
    /// their owners when `resolve_owners`).
    pub fn new(client: Client, node: &str, resolve_owners: bool, written: Written) -> KubeClaims {
        KubeClaims {
            pods: Pods::watch(client.clone(), node, resolve_owners),
            client,
            node: node.to_string(),
            written,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> ClusterClaimsError {
    ClusterClaimsError(format!("Kubernetes: {e}"))
}

async fn within<T>(
    f: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ClusterClaimsError> {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .map_err(|_| unavailable("the API server did not answer within 3 s"))?
        .map_err(unavailable)
}

/// The claim object's word on who holds it, if it names a node and an
/// address.
fn held(
    claim: &VpcIPClaim,
    me: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<HeldElsewhere>, ClusterClaimsError> {
    let Some(status) = &claim.status else {
        return Ok(None);
    };
    if status.node.is_empty() || status.ip.is_empty() {
        return Ok(None);
    }
    let moving_here = status.node == me && status.claim_phase() == Some(ClaimPhase::Moving);
    if status.node == me && !moving_here {
        return Ok(None);
    }
    Ok(Some(HeldElsewhere {
        node: status.node.clone(),
        ip: status
            .ip
            .parse()
            .map_err(|e| unavailable(format!("claim {namespace}/{name}: {e}")))?,
        // An address that does not parse is not followed.
        ipv6: status.ipv6.as_deref().and_then(|v6| v6.parse().ok()),
        subnet_id: status.subnet_id.clone(),
        zone: status.zone.clone(),
        eni_id: status.eni_id.clone(),
        moving_here,
        created_ms: claim
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| u64::try_from(t.0.as_millisecond()).ok()),
    }))
}

/// What a claim object (`None`: there is none) says of the claim, seen
/// from node `me`.
fn word_of(claim: Option<&VpcIPClaim>, me: &str) -> Word {
    let Some(claim) = claim else {
        return Word::Absent;
    };
    match claim.status.as_ref().map(|s| s.node.as_str()) {
        Some(node) if node == me => Word::Here,
        Some(node) if !node.is_empty() => Word::Other(node.to_string()),
        // Created, its status not written yet: the creator's.
        _ => Word::Unknown,
    }
}

/// What an address's `VpcIP` object, found when `me` tried to create it as
/// a fence, says: this node's own (its pool, checked first, decides), or
/// held elsewhere, named for the pod's error.
fn fence_of(object: &str, spec: &VpcIPSpec, me: &str) -> AddressFence {
    if spec.node == me {
        return AddressFence::Ours;
    }
    let what = match spec.ip_phase() {
        Some(IpPhase::Requested) => "being taken for".to_string(),
        _ => format!("{} for", spec.phase),
    };
    let claim = spec
        .claim
        .as_deref()
        .map(|c| format!(" {what} pod {c}"))
        .unwrap_or_else(|| format!(" ({})", spec.phase));
    let eni = if spec.eni_id.is_empty() {
        String::new()
    } else {
        format!(" on ENI {}", spec.eni_id)
    };
    AddressFence::Held(format!("node {}{claim}{eni} (VpcIP {object})", spec.node))
}

/// Whether Kubernetes says node `name` is up: it exists and its `Ready`
/// condition is `True`.
async fn node_ready(client: &Client, name: &str) -> Result<bool, ClusterClaimsError> {
    let api: Api<Node> = Api::all(client.clone());
    let Some(node) = within(api.get_opt(name)).await? else {
        return Ok(false);
    };
    Ok(node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether a take-over of a claim in `phase` depends on its holder being
/// up.
fn holder_checked(phase: Option<ClaimPhase>) -> bool {
    matches!(phase, Some(ClaimPhase::Bound | ClaimPhase::Moving))
}

/// Why another node may not take over a claim in `status` (its holder
/// `holder_ready` or not): only a reserved claim (its pod ended), or one
/// whose holder is no Ready Node (down, deleted), is taken over.
fn refusal(status: &VpcIPClaimStatus, holder_ready: bool) -> Option<String> {
    match status.claim_phase() {
        Some(ClaimPhase::Reserved) => None,
        Some(ClaimPhase::Bound | ClaimPhase::Moving) if !holder_ready => None,
        Some(ClaimPhase::Bound) => Some(format!(
            "its pod still runs on node {}, which is Ready; it moves once that pod has ended",
            status.node
        )),
        Some(ClaimPhase::Moving) => Some(format!(
            "node {} is moving it to itself, and is Ready",
            status.node
        )),
        _ => Some(format!(
            "the claim is {} on node {}{}",
            status.phase,
            status.node,
            status
                .message
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        )),
    }
}

impl ClusterClaims for KubeClaims {
    fn locate<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> ClaimFuture<'a, Option<HeldElsewhere>> {
        Box::pin(async move {
            let api: Api<VpcIPClaim> = Api::namespaced(self.client.clone(), namespace);
            let Some(claim) = within(api.get_opt(name)).await? else {
                return Ok(None);
            };
            held(&claim, &self.node, namespace, name)
        })
    }

    fn take_over<'a>(
        &'a self,
        _: &'a str,
        namespace: &'a str,
        name: &'a str,
        was: &'a HeldElsewhere,
    ) -> ClaimFuture<'a, TakeOver> {
        Box::pin(async move {
            let api: Api<VpcIPClaim> = Api::namespaced(self.client.clone(), namespace);
            let Some(mut claim) = within(api.get_opt(name)).await? else {
                return Err(unavailable(format!("the claim {namespace}/{name} is gone")));
            };
            let Some(now) = held(&claim, &self.node, namespace, name)? else {
                return Err(unavailable(format!(
                    "the claim {namespace}/{name} names no other node now"
                )));
            };
            if now.moving_here {
                return Ok(TakeOver::Taken(now));
            }
            if now.node != was.node || now.ip != was.ip {
                return Err(unavailable(format!(
                    "the claim {namespace}/{name} changed meanwhile"
                )));
            }
            // This node as Kubernetes names it (`--node-name`).
            let node = self.node.as_str();
            let mut status = claim.status.clone().unwrap_or_default();
            let holder_ready = if holder_checked(status.claim_phase()) {
                node_ready(&self.client, &status.node).await?
            } else {
                false
            };
            if let Some(why) = refusal(&status, holder_ready) {
                return Ok(TakeOver::Refused(why));
            }
            // The fence: a write of the object as it was read (its
            // resourceVersion); of two nodes taking it over, one wins.
            status.node = node.to_string();
            status.phase = ClaimPhase::Moving.into();
            status.container_id = None;
            status.zone = String::new();
            status.message = Some(format!("moving from node {} to node {node}", was.node));
            claim.status = Some(status);
            claim.metadata.managed_fields = None;
            // The status alone first, the label as it was: the node the
            // claim leaves watches its own node's claims by that label,
            // and sees the take-over only while the object carries it.
            let written =
                tokio::time::timeout(TIMEOUT, api.replace(name, &PostParams::default(), &claim))
                    .await
                    .map_err(|_| unavailable("the API server did not answer within 3 s"))?;
            match written {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Err(unavailable(format!(
                        "another writer changed the claim {namespace}/{name} first"
                    )));
                }
                Err(e) => return Err(unavailable(e)),
            }
            // The node label follows, so that the new holder's publisher
            // sees the object; its next apply would set it too.
            relabel(&api, namespace, name, node).await;
            tracing::info!(namespace, name, from = %was.node, to = node, ip = %was.ip, "claim taken over");
            Ok(TakeOver::Taken(HeldElsewhere {
                moving_here: true,
                ..was.clone()
            }))
        })
    }

    fn word<'a>(&'a self, namespace: &'a str, name: &'a str) -> ClaimFuture<'a, Word> {
        Box::pin(async move {
            let api: Api<VpcIPClaim> = Api::namespaced(self.client.clone(), namespace);
            let claim = within(api.get_opt(name)).await?;
            Ok(word_of(claim.as_ref(), &self.node))
        })
    }

    fn give_back<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        held: &'a HeldElsewhere,
        why: &'a str,
    ) -> ClaimFuture<'a, ()> {
        Box::pin(async move {
            let api: Api<VpcIPClaim> = Api::namespaced(self.client.clone(), namespace);
            let Some(mut claim) = within(api.get_opt(name)).await? else {
                return Ok(());
            };
            let Some(status) = claim.status.as_mut() else {
                return Ok(());
            };
            if status.node != self.node || status.claim_phase() != Some(ClaimPhase::Moving) {
                // Not this node's take-over any more: nothing to give.
                return Ok(());
            }
            status.node = held.node.clone();
            status.phase = ClaimPhase::Reserved.into();
            status.eni_id = held.eni_id.clone();
            status.subnet_id = held.subnet_id.clone();
            status.zone = held.zone.clone();
            status.container_id = None;
            status.message = Some(format!(
                "the move to node {} failed: {why}; reserved on node {} again",
                self.node, held.node
            ));
            claim.metadata.managed_fields = None;
            // Over the version read: a newer holder is never overwritten.
            let written =
                tokio::time::timeout(TIMEOUT, api.replace(name, &PostParams::default(), &claim))
                    .await
                    .map_err(|_| unavailable("the API server did not answer within 3 s"))?;
            match written {
                Ok(_) => {}
                // Changed since it was read: someone else's now.
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
                Err(e) => return Err(unavailable(e)),
            }
            relabel(&api, namespace, name, &held.node).await;
            tracing::warn!(namespace, name, to = %held.node, why, "claim given back to the node it came from");
            Ok(())
        })
    }

    fn sync<'a>(&'a self, _: &'a str, _: &'a [Claim]) -> ClaimFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn publish<'a>(&'a self, _: &'a str, _: &'a [ClaimChange]) -> ClaimFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn pod_facts<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Option<PodFacts>, PodFactsError>> + Send + 'a>>
    {
        Box::pin(async move { self.pods.facts(namespace, name).await.map(Some) })
    }

    fn reserve_address<'a>(
        &'a self,
        ip: std::net::Ipv4Addr,
        namespace: &'a str,
        name: &'a str,
        subnet_id: &'a str,
    ) -> ClaimFuture<'a, AddressFence> {
        Box::pin(async move {
            let api: Api<VpcIP> = Api::all(self.client.clone());
            let object = ip.to_string();
            let mut fence = VpcIP::new(
                &object,
                VpcIPSpec {
                    phase: IpPhase::Requested.into(),
                    node: self.node.clone(),
                    eni_id: String::new(),
                    subnet_id: subnet_id.to_string(),
                    claim: Some(format!("{namespace}/{name}")),
                    ipv6: None,
                    error: None,
                },
            );
            fence.metadata.labels = Some(
                [(NODE_LABEL.to_string(), self.node.clone())]
                    .into_iter()
                    .collect(),
            );
            let created = tokio::time::timeout(TIMEOUT, api.create(&PostParams::default(), &fence))
                .await
                .map_err(|_| unavailable("the API server did not answer within 3 s"))?;
            match created {
                Ok(_) => Ok(AddressFence::Ours),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let Some(live) = within(api.get_opt(&object)).await? else {
                        return Err(unavailable(format!(
                            "the VpcIP {object} went away while it was looked at"
                        )));
                    };
                    Ok(fence_of(&object, &live.spec, &self.node))
                }
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    fn release_address<'a>(&'a self, ip: std::net::Ipv4Addr) -> ClaimFuture<'a, ()> {
        Box::pin(async move {
            let api: Api<VpcIP> = Api::all(self.client.clone());
            let object = ip.to_string();
            let Some(live) = within(api.get_opt(&object)).await? else {
                return Ok(());
            };
            if live.spec.ip_phase() != Some(IpPhase::Requested) || live.spec.node != self.node {
                return Ok(());
            }
            let mut params = kube::api::DeleteParams::background();
            params.preconditions = Some(kube::api::Preconditions {
                resource_version: live.metadata.resource_version.clone(),
                uid: None,
            });
            let deleted = tokio::time::timeout(TIMEOUT, api.delete(&object, &params))
                .await
                .map_err(|_| unavailable("the API server did not answer within 3 s"))?;
            match deleted {
                // Gone, or changed since (another writer's now): not ours.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
                Err(e) => Err(unavailable(e)),
                Ok(_) => Ok(()),
            }
        })
    }

    fn announce<'a>(&'a self, _: &'a str, claim: &'a Claim) -> ClaimFuture<'a, ()> {
        Box::pin(async move {
            let view = proto::wire::ClaimView {
                namespace: claim.namespace.clone(),
                name: claim.name.clone(),
                ip: claim.ip,
                // The publisher writes it with the pool's next pass.
                ipv6: None,
                status: claim.phase().into(),
                node: self.node.clone(),
                subnet_id: claim.subnet_id.clone(),
                eni_id: claim.eni_id.clone(),
                container_id: None,
                policy: "Never".into(),
                owner: claim.owner.as_ref().map(|o| proto::wire::OwnerRef {
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    uid: o.uid.clone(),
                }),
                created_ms: claim.created_ms,
                last_bound_ms: claim.last_bound_ms,
                released_ms: claim.released_ms,
                expires_ms: None,
                expire_after_ms: claim.expire_after_ms,
                message: claim.lost.clone(),
                requested: claim.requested,
            };
            let obj = objects::claim_object(&view, &self.node, "");
            let key = (claim.namespace.clone(), claim.name.clone());
            // A create: the fence against a claim object another node
            // holds (it took the pod's claim meanwhile).
            let api: Api<VpcIPClaim> = Api::namespaced(self.client.clone(), &key.0);
            let params = PostParams {
                field_manager: Some(super::MANAGER.into()),
                ..PostParams::default()
            };
            // A static claim: owned by its workload, if by anything.
            let resource = claim_resource(&self.node, &key, &obj, None);
            match tokio::time::timeout(TIMEOUT, api.create(&params, &resource))
                .await
                .map_err(|_| unavailable("the API server did not answer within 3 s"))?
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let live = within(api.get_opt(&key.1)).await?;
                    if let Word::Other(holder) = word_of(live.as_ref(), &self.node) {
                        return Err(unavailable(format!(
                            "the claim {}/{} is held by node {holder}",
                            key.0, key.1
                        )));
                    }
                    within(apply_claim(
                        &self.client,
                        &self.node,
                        &key,
                        &obj,
                        None,
                        None,
                    ))
                    .await?;
                }
                Err(e) => return Err(unavailable(e)),
            }
            let spec = super::crd::VpcIPSpec {
                phase: IpPhase::Bound.into(),
                node: self.node.clone(),
                eni_id: claim.eni_id.clone(),
                subnet_id: claim.subnet_id.clone(),
                claim: Some(format!("{}/{}", claim.namespace, claim.name)),
                ipv6: None,
                error: None,
            };
            let name = claim.ip.to_string();
            let mut ip = VpcIP::new(&name, spec.clone());
            ip.metadata.labels = Some(
                [(NODE_LABEL.to_string(), self.node.clone())]
                    .into_iter()
                    .collect(),
            );
            let ips: Api<VpcIP> = Api::all(self.client.clone());
            match within(create_ip(&ips, &ip, &self.written)).await? {
                Created::Done(_) | Created::Same => {}
                Created::Ours => within(apply_ip(&self.client, &name, &spec)).await?,
                Created::Theirs(holder) => {
                    return Err(unavailable(format!("the VpcIP {name} names node {holder}")));
                }
            }
            Ok(())
        })
    }
}

/// Labels a claim object with the node its status names now, after a
/// take-over or a give-back (each a write of its status alone first).
async fn relabel(api: &Api<VpcIPClaim>, namespace: &str, name: &str, node: &str) {
    let label = serde_json::json!({ "metadata": { "labels": { NODE_LABEL: node } } });
    if let Err(e) = within(api.patch(name, &PatchParams::default(), &Patch::Merge(&label))).await {
        tracing::warn!(namespace, name, node, error = %e, "cannot relabel a claim that changed hands");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::VpcIPClaimSpec;

    // The phases as the objects carry them.
    const BOUND: &str = ClaimPhase::Bound.as_str();
    const RESERVED: &str = ClaimPhase::Reserved.as_str();
    const MOVING: &str = ClaimPhase::Moving.as_str();
    const REQUESTED: &str = IpPhase::Requested.as_str();

    fn object(node: &str, phase: &str) -> VpcIPClaim {
        let mut o = VpcIPClaim::new("web-0", VpcIPClaimSpec::default());
        o.status = Some(VpcIPClaimStatus {
            phase: phase.into(),
            ip: "10.0.16.9".into(),
            node: node.into(),
            eni_id: "eni-a".into(),
            subnet_id: "subnet-1".into(),
            ..Default::default()
        });
        o
    }

    #[test]
    fn the_object_says_who_holds_a_claim_and_whether_a_move_here_is_under_way() {
        let held =
            |node, phase| held(&object(node, phase), "b", "default", "web-0").expect("parse");
        assert_eq!(held("b", BOUND), None, "this node's own");
        let elsewhere = held("a", RESERVED).expect("held by a");
        assert_eq!(
            (
                elsewhere.node.as_str(),
                elsewhere.moving_here,
                elsewhere.eni_id.as_str()
            ),
            ("a", false, "eni-a")
        );
        let resumed = held("b", MOVING).expect("moving here");
        assert!(resumed.moving_here, "a take-over by this node to resume");
        assert!(!held("a", MOVING).expect("moving to a").moving_here);
    }

    #[test]
    fn the_object_gives_its_word_on_the_holder() {
        assert_eq!(word_of(None, "b"), Word::Absent);
        assert_eq!(word_of(Some(&object("b", MOVING)), "b"), Word::Here);
        assert_eq!(
            word_of(Some(&object("a", RESERVED)), "b"),
            Word::Other("a".into())
        );
        let fresh = VpcIPClaim::new("web-0", VpcIPClaimSpec::default());
        assert_eq!(word_of(Some(&fresh), "b"), Word::Unknown);
    }

    #[test]
    fn an_address_fence_names_its_holder_unless_it_is_this_nodes() {
        let spec = |node: &str, phase: &str, eni: &str| VpcIPSpec {
            phase: phase.into(),
            node: node.into(),
            eni_id: eni.into(),
            subnet_id: "subnet-1".into(),
            ipv6: None,
            claim: Some("default/web-0".into()),
            error: None,
        };
        assert_eq!(
            fence_of("10.0.1.20", &spec("b", BOUND, "eni-b"), "b"),
            AddressFence::Ours
        );
        assert_eq!(
            fence_of("10.0.1.20", &spec("a", BOUND, "eni-a"), "b"),
            AddressFence::Held(
                "node a Bound for pod default/web-0 on ENI eni-a (VpcIP 10.0.1.20)".into()
            )
        );
        assert_eq!(
            fence_of("10.0.1.20", &spec("a", REQUESTED, ""), "b"),
            AddressFence::Held("node a being taken for pod default/web-0 (VpcIP 10.0.1.20)".into())
        );
    }

    #[test]
    fn a_claim_is_taken_over_only_reserved_or_from_a_node_that_is_down() {
        let status = |phase: &str| object("a", phase).status.expect("status");
        assert_eq!(refusal(&status(RESERVED), true), None, "its pod has ended");
        assert!(!holder_checked(Some(ClaimPhase::Reserved)));
        assert!(!holder_checked(None), "a phase this agent does not know");
        assert!(
            holder_checked(Some(ClaimPhase::Bound)) && holder_checked(Some(ClaimPhase::Moving))
        );
        let why = refusal(&status(BOUND), true).expect("its pod runs on a");
        assert!(
            why.contains("node a") && why.contains("still runs"),
            "{why}"
        );
        assert_eq!(refusal(&status(BOUND), false), None, "a is down");
        assert!(refusal(&status(MOVING), true).is_some());
        assert_eq!(refusal(&status(MOVING), false), None);
        let lost = refusal(&status("Lost"), false).expect("lost");
        assert!(lost.contains("Lost"), "{lost}");
    }
}
