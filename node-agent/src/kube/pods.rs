//! What a pod says about its IP: TKE's annotations, read from this node's
//! pods (an informer), and the workload that controls it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource};

use crate::agent::MIN_CLAIM_EXPIRY;
use crate::cluster_claims::{PodFacts, PodFactsError};

/// `Never` keeps the pod's IP across its sandboxes (a static IP);
/// `Immediate` frees it when the pod ends. TKE's name.
pub const DELETE_POLICY: &str = "tke.cloud.tencent.com/vpc-ip-claim-delete-policy";
/// How long a static pod's IP stays reserved once the pod is gone, such as
/// `1h` (at least `5m`); overrides `--claim-expired-duration` for the pod.
pub const EXPIRED_DURATION: &str = "tke.cloud.tencent.com/vpc-ip-claim-expired-duration";

/// The address of the subnet the pod asks for, such as `10.0.1.20`: it
/// implies a static IP (our name, following TKE's prefix).
pub const REQUESTED_IP: &str = "tke.cloud.tencent.com/vpc-ip-claim-requested-ip";

/// How long an ADD waits for the informer to learn of a pod just scheduled
/// before asking the API server directly.
const CACHE_WAIT: Duration = Duration::from_secs(1);
/// How long the direct question may take.
const GET_TIMEOUT: Duration = Duration::from_secs(3);

/// The pod's own choice, from its annotations. A value that cannot be
/// understood is an error naming the annotation, never ignored.
pub fn facts_from_annotations(a: &BTreeMap<String, String>) -> Result<PodFacts, String> {
    let keep_ip = match a.get(DELETE_POLICY).map(|v| v.trim()) {
        None => None,
        Some("Never") => Some(true),
        Some("Immediate") => Some(false),
        Some(other) => {
            return Err(format!(
                "annotation {DELETE_POLICY}: {other:?} is neither \"Never\" nor \"Immediate\""
            ));
        }
    };
    let expire_after_ms = match a.get(EXPIRED_DURATION) {
        None => None,
        Some(v) => {
            let d = proto::duration::parse(v.trim())
                .map_err(|e| format!("annotation {EXPIRED_DURATION}: {v:?}: {e}"))?;
            if d < MIN_CLAIM_EXPIRY {
                return Err(format!(
                    "annotation {EXPIRED_DURATION}: {v:?} is below the minimum of 5m (a pod restarting slowly would lose its IP)"
                ));
            }
            Some(d.as_millis() as u64)
        }
    };
    let requested_ip = match a.get(REQUESTED_IP) {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<std::net::Ipv4Addr>()
                .map_err(|_| format!("annotation {REQUESTED_IP}: {v:?} is not an IPv4 address"))?,
        ),
    };
    if keep_ip == Some(false) && requested_ip.is_some() {
        return Err(format!(
            "annotation {REQUESTED_IP} asks for a static IP but {DELETE_POLICY} is \"Immediate\""
        ));
    }
    if keep_ip == Some(false) && expire_after_ms.is_some() {
        return Err(format!(
            "annotation {EXPIRED_DURATION} is set but {DELETE_POLICY} is \"Immediate\": only a static IP can expire"
        ));
    }
    Ok(PodFacts {
        keep_ip,
        expire_after_ms,
        owner: None,
        requested_ip,
    })
}

/// The ownerReference of `obj` that is its controller.
fn controller_of<K: Resource>(obj: &K) -> Option<OwnerReference> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .cloned()
}

/// The pods of this node, and how to resolve their owners.
#[derive(Clone)]
pub struct Pods {
    client: Client,
    cache: Store<Pod>,
    resolve_owners: bool,
}

impl std::fmt::Debug for Pods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pods").finish_non_exhaustive()
    }
}

impl Pods {
    /// Follows the pods scheduled to `node`.
    pub fn watch(client: Client, node: &str, resolve_owners: bool) -> Pods {
        let api: Api<Pod> = Api::all(client.clone());
        let config =
            kube::runtime::watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let (cache, _) = super::cache(api, config, "pods");
        Pods {
            client,
            cache,
            resolve_owners,
        }
    }

    /// What pod `namespace/name` says of its IP.
    pub async fn facts(&self, namespace: &str, name: &str) -> Result<PodFacts, PodFactsError> {
        let Some(pod) = self.get(namespace, name).await? else {
            // Gone already: nothing said; the runtime's arguments decide.
            return Ok(PodFacts::default());
        };
        let mut facts = facts_from_annotations(
            pod.metadata
                .annotations
                .as_ref()
                .unwrap_or(&BTreeMap::new()),
        )
        .map_err(PodFactsError::Invalid)?;
        if self.resolve_owners {
            facts.owner = self.owner(&pod).await?;
        }
        Ok(facts)
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Pod>, PodFactsError> {
        let key = ObjectRef::new(name).within(namespace);
        let deadline = tokio::time::Instant::now() + CACHE_WAIT;
        loop {
            if let Some(pod) = self.cache.get(&key) {
                return Ok(Some((*pod).clone()));
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(GET_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(pod)) => Ok(pod),
            Ok(Err(e)) => Err(PodFactsError::Unavailable(e.to_string())),
            Err(_) => Err(PodFactsError::Unavailable(format!(
                "the API server did not answer within {} s",
                GET_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The workload controlling `pod`: its controller, a ReplicaSet
    /// followed to the Deployment controlling it.
    async fn owner(&self, pod: &Pod) -> Result<Option<proto::wire::OwnerRef>, PodFactsError> {
        let Some(controller) = controller_of(pod) else {
            return Ok(None);
        };
        let mut owner = proto::wire::OwnerRef {
            kind: controller.kind.clone(),
            name: controller.name.clone(),
            uid: controller.uid.clone(),
        };
        if owner.kind == "ReplicaSet" {
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
            let rs = tokio::time::timeout(GET_TIMEOUT, api.get_opt(&owner.name))
                .await
                .map_err(|_| PodFactsError::Unavailable("the API server did not answer".into()))?
                .map_err(|e| PodFactsError::Unavailable(e.to_string()))?;
            if let Some(up) = rs.as_ref().and_then(controller_of) {
                owner = proto::wire::OwnerRef {
                    kind: up.kind,
                    name: up.name,
                    uid: up.uid,
                };
            }
        }
        Ok(Some(owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tke_annotations_choose_a_static_ip_and_its_expiry() {
        let f = facts_from_annotations(&annotations(&[
            (DELETE_POLICY, "Never"),
            (EXPIRED_DURATION, "1h"),
        ]))
        .expect("valid");
        assert_eq!(f.keep_ip, Some(true));
        assert_eq!(f.expire_after_ms, Some(3_600_000));
        let f =
            facts_from_annotations(&annotations(&[(DELETE_POLICY, "Immediate")])).expect("valid");
        assert_eq!(f.keep_ip, Some(false));
        let f = facts_from_annotations(&BTreeMap::new()).expect("valid");
        assert_eq!(f, PodFacts::default());
    }

    #[test]
    fn a_requested_ip_is_an_address() {
        let f =
            facts_from_annotations(&annotations(&[(REQUESTED_IP, " 10.0.1.20 ")])).expect("valid");
        assert_eq!(f.requested_ip, Some(std::net::Ipv4Addr::new(10, 0, 1, 20)));
        assert_eq!(
            f.keep_ip, None,
            "static follows from the request, not from here"
        );
    }

    #[test]
    fn a_malformed_annotation_is_an_error_naming_it() {
        for (pairs, names) in [
            (vec![(DELETE_POLICY, "never")], DELETE_POLICY),
            (
                vec![(DELETE_POLICY, "Never"), (EXPIRED_DURATION, "soon")],
                EXPIRED_DURATION,
            ),
            (
                vec![(DELETE_POLICY, "Never"), (EXPIRED_DURATION, "1m")],
                EXPIRED_DURATION,
            ),
            (
                vec![(DELETE_POLICY, "Immediate"), (EXPIRED_DURATION, "1h")],
                EXPIRED_DURATION,
            ),
            (vec![(REQUESTED_IP, "10.0.1")], REQUESTED_IP),
            (vec![(REQUESTED_IP, "fd00::1")], REQUESTED_IP),
            (
                vec![(DELETE_POLICY, "Immediate"), (REQUESTED_IP, "10.0.1.20")],
                REQUESTED_IP,
            ),
        ] {
            let e = facts_from_annotations(&annotations(&pairs)).expect_err("invalid");
            assert!(e.contains(names), "{e}");
        }
    }
}
