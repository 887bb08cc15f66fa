//! The cluster's claim store on Kubernetes: `VpcIPClaim` objects say which
//! node holds a pod's claim; the pods' annotations say what they want;
//! a static claim's first bind is written before its ADD answers. The rest
//! of the objects follow the outbox (`publish.rs`), so `sync` and
//! `publish` have nothing to add here.

use std::time::Duration;

use kube::{Api, Client};

use super::crd::VpcIPClaim;
use super::objects;
use super::pods::Pods;
use super::publish::{apply_claim, apply_ip};
use crate::claim_store::{
    ClaimChange, ClaimFuture, ClaimStore, ClaimStoreError, HeldElsewhere, PodFacts, PodFactsError,
};
use crate::ipam::Claim;

/// How long one question to the API server may take on the pod path.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Claims kept as `VpcIPClaim` objects.
#[derive(Clone)]
pub struct KubeClaims {
    client: Client,
    node: String,
    pods: Pods,
}

impl std::fmt::Debug for KubeClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClaims")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl KubeClaims {
    /// The claim store of node `node`, reading its pods' annotations (and
    /// their owners when `resolve_owners`).
    pub fn new(client: Client, node: &str, resolve_owners: bool) -> KubeClaims {
        KubeClaims {
            pods: Pods::watch(client.clone(), node, resolve_owners),
            client,
            node: node.to_string(),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> ClaimStoreError {
    ClaimStoreError(format!("Kubernetes: {e}"))
}

async fn within<T>(f: impl Future<Output = Result<T, kube::Error>>) -> Result<T, ClaimStoreError> {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .map_err(|_| unavailable("the API server did not answer within 3 s"))?
        .map_err(unavailable)
}

impl ClaimStore for KubeClaims {
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
            let Some(status) = claim.status else {
                return Ok(None);
            };
            if status.node.is_empty() || status.node == self.node || status.ip.is_empty() {
                return Ok(None);
            }
            Ok(Some(HeldElsewhere {
                node: status.node,
                ip: status
                    .ip
                    .parse()
                    .map_err(|e| unavailable(format!("claim {namespace}/{name}: {e}")))?,
                subnet_id: status.subnet_id,
                eni_id: status.eni_id,
            }))
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

    fn announce<'a>(&'a self, _: &'a str, claim: &'a Claim) -> ClaimFuture<'a, ()> {
        Box::pin(async move {
            let view = proto::wire::ClaimView {
                namespace: claim.namespace.clone(),
                name: claim.name.clone(),
                ip: claim.ip,
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
            };
            let obj = objects::claim_object(&view, &self.node, "");
            let key = (claim.namespace.clone(), claim.name.clone());
            within(apply_claim(&self.client, &self.node, &key, &obj)).await?;
            let ip = super::crd::VpcIPSpec {
                phase: "Bound".into(),
                node: self.node.clone(),
                eni_id: claim.eni_id.clone(),
                subnet_id: claim.subnet_id.clone(),
                claim: Some(format!("{}/{}", claim.namespace, claim.name)),
                error: None,
            };
            within(apply_ip(&self.client, &claim.ip.to_string(), &ip)).await?;
            Ok(())
        })
    }
}
