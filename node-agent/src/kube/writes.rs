//! Every write of `VpcIPClaim` and `VpcIP` objects by a node agent, and
//! what it takes to decide one: who a live object names, whether it is
//! this node's, the object this node would write. The publisher
//! (`publish/`) and the cluster's claims (`claims.rs`) both write through
//! here; neither imports the other. A write two parties can race on is
//! conditional: a create (the fence for a first bind and for a new
//! `VpcIP`), a write over the resourceVersion read (take-over, give-back,
//! a claim's status), or a JSON patch whose `test`s name what the write
//! rests on (the finalizer's removal).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};

use super::crd::{DeletePolicy, VpcIP, VpcIPClaim, VpcIPSpec};
use super::objects::{self, ClaimObject};
use super::{FINALIZER, MANAGER, NODE_LABEL};

/// Server-side apply as the node agent, taking over fields it owned.
pub(super) fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

pub(super) fn node_labels(node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(NODE_LABEL.to_string(), node.to_string())])
}

pub(super) fn has_node_label<K: Resource>(obj: &K, node: &str) -> bool {
    obj.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(NODE_LABEL))
        .is_some_and(|n| n == node)
}

/// The reference to a static claim's workload (recorded with
/// `--enable-ownerref`): deleting the workload reclaims the claim.
pub(super) fn owner_references(obj: &ClaimObject) -> Option<Vec<OwnerReference>> {
    let owner = obj.owner()?;
    let api_version = objects::owner_api_version(&owner.kind)?;
    Some(vec![OwnerReference {
        api_version: api_version.into(),
        kind: owner.kind.clone(),
        name: owner.name.clone(),
        uid: owner.uid.clone(),
        ..Default::default()
    }])
}

/// The owners a claim object is written with: a static claim's workload
/// ([`owner_references`]); a plain claim's `VpcIP` of uid `ip_uid`, so
/// that deleting the address's object when the pod's sandbox ends takes
/// the claim with it (the garbage collector's write, not this node's).
pub(super) fn claim_owners(obj: &ClaimObject, ip_uid: Option<&str>) -> Option<Vec<OwnerReference>> {
    if obj.spec.delete_policy == DeletePolicy::Never {
        return owner_references(obj);
    }
    ip_uid.map(|uid| vec![ip_owner(&obj.status.ip, uid)])
}

/// The reference to the `VpcIP` `name` of uid `uid`.
fn ip_owner(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: VpcIP::api_version(&()).into(),
        kind: VpcIP::kind(&()).into(),
        name: name.into(),
        uid: uid.into(),
        ..Default::default()
    }
}

/// The `VpcIP` that owns a claim object, as (name, uid): a plain claim,
/// which goes when its address's object goes.
pub(super) fn owning_ip(live: &VpcIPClaim) -> Option<(String, String)> {
    let kind = VpcIP::kind(&());
    live.metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.kind == kind)
        .map(|o| (o.name.clone(), o.uid.clone()))
}

/// Whether a claim object is written with the finalizer: a static claim's
/// IP is freed before its object goes (`kubectl delete vipc`); a plain
/// claim's ends with its sandbox whatever becomes of the object.
fn finalized(obj: &ClaimObject) -> bool {
    obj.spec.delete_policy == DeletePolicy::Never
}

pub(super) fn same_claim(
    live: &VpcIPClaim,
    want: &ClaimObject,
    node: &str,
    ip_uid: Option<&str>,
) -> bool {
    live.spec == want.spec
        && live.status.as_ref() == Some(&want.status)
        && has_node_label(live, node)
        && live.finalizers().iter().any(|f| f == FINALIZER) == finalized(want)
        && live.metadata.owner_references.clone().unwrap_or_default()
            == claim_owners(want, ip_uid).unwrap_or_default()
}

/// The owner reference `want` names when the live object carries none:
/// either the garbage collector took it off (the owner was deleted with
/// `--cascade=orphan`) or the claim was adopted by a new workload and has
/// not been written with it yet.
pub(super) fn unreferenced_owner(live: &VpcIPClaim, want: &ClaimObject) -> Option<OwnerReference> {
    let carried = live
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default();
    if !carried.is_empty() {
        return None;
    }
    owner_references(want)?.into_iter().next()
}

/// Whether the live object was written with `wanted` as its owner (its
/// status records it): losing the reference then is the garbage
/// collector's orphaning, or an operator's edit, never an adoption.
pub(super) fn was_written_with(live: &VpcIPClaim, wanted: &OwnerReference) -> bool {
    live.status
        .as_ref()
        .and_then(|s| s.owner.as_ref())
        .is_some_and(|o| o.uid == wanted.uid)
}

/// Whether the workload `owner` names is gone from `namespace`: absent,
/// another object under its name (another uid), or being deleted. A
/// reference to such an owner must never be written: the garbage
/// collector would delete the claim, and its static IP with it.
pub(super) async fn owner_gone(
    client: &Client,
    namespace: &str,
    owner: &OwnerReference,
) -> Result<bool, kube::Error> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let (group, version) = owner
        .api_version
        .split_once('/')
        .unwrap_or(("", owner.api_version.as_str()));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &owner.kind));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let live = api.get_opt(&owner.name).await?;
    Ok(live.is_none_or(|o| {
        o.metadata.uid.as_deref() != Some(owner.uid.as_str())
            || o.metadata.deletion_timestamp.is_some()
    }))
}

/// The node another than `node` that a claim object names as its holder.
pub(super) fn other_holder(live: &VpcIPClaim, node: &str) -> Option<String> {
    live.status
        .as_ref()
        .map(|s| s.node.clone())
        .filter(|n| !n.is_empty() && n != node)
}

/// Writes a claim object as `node` holds it, in one write: labels,
/// finalizer, owners, spec and status; only over `version` of the object
/// when given (a conflict, 409, if it changed since).
pub(super) async fn apply_claim(
    client: &Client,
    node: &str,
    key: &(String, String),
    obj: &ClaimObject,
    ip_uid: Option<&str>,
    version: Option<String>,
) -> Result<(), kube::Error> {
    let api: Api<VpcIPClaim> = Api::namespaced(client.clone(), &key.0);
    let mut o = claim_resource(node, key, obj, ip_uid);
    o.metadata.resource_version = version;
    api.patch(&key.1, &apply_params(), &Patch::Apply(&o))
        .await?;
    Ok(())
}

/// The claim object `node` writes for `obj`, whole: labels, finalizer (a
/// static claim's), owners ([`claim_owners`]), spec and status.
pub(super) fn claim_resource(
    node: &str,
    key: &(String, String),
    obj: &ClaimObject,
    ip_uid: Option<&str>,
) -> VpcIPClaim {
    let mut o = VpcIPClaim::new(&key.1, obj.spec.clone());
    o.metadata.namespace = Some(key.0.clone());
    o.metadata.labels = Some(node_labels(node));
    o.metadata.finalizers = finalized(obj).then(|| vec![FINALIZER.into()]);
    o.metadata.owner_references = claim_owners(obj, ip_uid);
    o.status = Some(obj.status.clone());
    o
}

/// The `VpcIP`s this agent created lately, as it created them: the
/// publisher's cache shows an object a moment after its create, and the
/// first bind of a static claim creates one outside the publisher; looked
/// up before a create that would only find the object there.
#[derive(Clone, Debug, Default)]
pub struct Written {
    ips: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, CreatedIp>>>,
}

/// One `VpcIP` created: its spec, its uid, when.
type CreatedIp = (VpcIPSpec, String, std::time::Instant);

/// How long a created object is remembered: longer than a cache takes to
/// show it.
const REMEMBERED: std::time::Duration = std::time::Duration::from_secs(30);

impl Written {
    fn created(&self, name: &str, spec: &VpcIPSpec, uid: &str) {
        let mut ips = self.ips.lock().unwrap_or_else(|p| p.into_inner());
        ips.retain(|_, (_, _, at)| at.elapsed() < REMEMBERED);
        ips.insert(
            name.to_string(),
            (spec.clone(), uid.to_string(), std::time::Instant::now()),
        );
    }

    /// The uid of the `VpcIP` `name` if this agent created it lately as
    /// `spec`.
    pub(super) fn ip(&self, name: &str, spec: &VpcIPSpec) -> Option<String> {
        let ips = self.ips.lock().unwrap_or_else(|p| p.into_inner());
        ips.get(name)
            .filter(|(s, _, at)| s == spec && at.elapsed() < REMEMBERED)
            .map(|(_, uid, _)| uid.clone())
    }
}

/// What a create of a `VpcIP` found.
pub(super) enum Created {
    /// Created, with this uid.
    Done(String),
    /// It exists and is this node's, as wanted: nothing to write.
    Same,
    /// It exists and is this node's: write it over.
    Ours,
    /// It exists and names another node.
    Theirs(String),
}

/// Creates `obj` unless its address's object exists; says whose it is.
pub(super) async fn create_ip(
    api: &Api<VpcIP>,
    obj: &VpcIP,
    written: &Written,
) -> Result<Created, kube::Error> {
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, obj).await {
        Ok(made) => {
            let uid = made.uid().unwrap_or_default();
            written.created(&obj.name_any(), &obj.spec, &uid);
            Ok(Created::Done(uid))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let node = obj.spec.node.as_str();
            match api.get_opt(&obj.name_any()).await? {
                Some(live) if !has_node_label(&live, node) || live.spec.node != node => {
                    Ok(Created::Theirs(live.spec.node.clone()))
                }
                Some(live) if live.spec == obj.spec => Ok(Created::Same),
                _ => Ok(Created::Ours),
            }
        }
        Err(e) => Err(e),
    }
}

/// Writes the `VpcIP` of a claim's address.
pub(super) async fn apply_ip(
    client: &Client,
    name: &str,
    spec: &VpcIPSpec,
) -> Result<(), kube::Error> {
    let api: Api<VpcIP> = Api::all(client.clone());
    let mut obj = VpcIP::new(name, spec.clone());
    obj.metadata.labels = Some(node_labels(&spec.node));
    api.patch(name, &apply_params(), &Patch::Apply(&obj))
        .await?;
    Ok(())
}

/// Drops this agent's finalizer from a claim object, on condition only of
/// what the decision rested on: the finalizer still at its place and the
/// object still naming the holder `live` names (a JSON patch's `test`
/// operations), not the whole object's resourceVersion. A copy of `live`
/// from an informer a little behind (its labels, status times) does not
/// make it fail; another node's take-over in the meantime does.
pub(crate) async fn remove_finalizer(
    api: &Api<VpcIPClaim>,
    live: &VpcIPClaim,
) -> Result<(), kube::Error> {
    let Some(patch) = finalizer_removal(live) else {
        return Ok(());
    };
    let patch = Patch::<()>::Json(serde_json::from_value(patch).map_err(kube::Error::SerdeError)?);
    match api
        .patch(&live.name_any(), &PatchParams::default(), &patch)
        .await
    {
        Ok(_) => Ok(()),
        // Gone, or a `test` failed (moved, its finalizers changed): the
        // next pass looks again.
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The JSON patch that drops this agent's finalizer from `live`; `None`
/// when it carries none.
pub(super) fn finalizer_removal(live: &VpcIPClaim) -> Option<serde_json::Value> {
    let index = live.finalizers().iter().position(|f| f == FINALIZER)?;
    let path = format!("/metadata/finalizers/{index}");
    let mut ops = vec![serde_json::json!({ "op": "test", "path": path, "value": FINALIZER })];
    let node = live.status.as_ref().map(|s| s.node.as_str()).unwrap_or("");
    if !node.is_empty() {
        ops.push(serde_json::json!({ "op": "test", "path": "/status/node", "value": node }));
    }
    ops.push(serde_json::json!({ "op": "remove", "path": path }));
    Some(serde_json::Value::Array(ops))
}

pub(super) fn ignore_missing<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::VpcIPClaimStatus;

    #[test]
    fn the_finalizer_is_removed_on_its_place_and_the_holder_not_on_the_version() {
        let mut live = VpcIPClaim::new("web-0", Default::default());
        assert_eq!(finalizer_removal(&live), None, "none to remove");
        live.metadata.finalizers = Some(vec!["other.io/keep".into(), FINALIZER.into()]);
        live.metadata.resource_version = Some("41".into());
        live.status = Some(VpcIPClaimStatus {
            node: "node-a".into(),
            ..Default::default()
        });
        let ops = finalizer_removal(&live).expect("ours is there");
        assert_eq!(
            ops,
            serde_json::json!([
                { "op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER },
                { "op": "test", "path": "/status/node", "value": "node-a" },
                { "op": "remove", "path": "/metadata/finalizers/1" },
            ])
        );
        assert!(
            !ops.to_string().contains("41"),
            "no resourceVersion: a cache a little behind does not refuse it"
        );
        // The patch does what it says on the object it was made from, and
        // is refused once another node holds the claim.
        let mut doc = serde_json::to_value(&live).expect("json");
        let patch: json_patch::Patch = serde_json::from_value(ops.clone()).expect("patch");
        json_patch::patch(&mut doc, &patch).expect("applies");
        assert_eq!(
            doc["metadata"]["finalizers"],
            serde_json::json!(["other.io/keep"])
        );
        let mut moved = serde_json::to_value(&live).expect("json");
        moved["status"]["node"] = "node-b".into();
        assert!(
            json_patch::patch(&mut moved, &patch).is_err(),
            "taken over meanwhile"
        );
    }
}
