//! The custom resources of vpc-cni, group `vpc-cni.io`, version `v1alpha1`.
//! The CRD manifests in `deploy/05-crds.yaml` are generated from these types
//! (`vpc-cni-agent crds`), and a test keeps the two equal.
//!
//! - [`VpcIPClaim`] (`vipc`, namespaced): a pod's claim on an IP, named like
//!   the pod. The spec is what the pod asked for; the status is where the
//!   claim is, written by the node holding it in the same write as the spec
//!   (no status subresource, [`claim_crd`]).
//! - [`VpcIP`] (`vip`, cluster-scoped): one IP in use, named after the
//!   address; written by the node whose ENI carries it.
//! - [`NodeEniConfig`] (`nec`, cluster-scoped): a node's ENIs and pool,
//!   named after the node; the spec lets an operator tune the node.

// Each `printcolumn(...)` repeats `type_ =`; clippy reads that as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every vpc-cni resource.
pub const GROUP: &str = "vpc-cni.io";
/// API version of every vpc-cni resource.
pub const VERSION: &str = "v1alpha1";

/// What happens to a claim when its pod ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletePolicy {
    /// The claim and its IP end with the pod (an ordinary pod).
    #[default]
    Immediate,
    /// The IP stays reserved for the next pod of the same namespace and name
    /// (a static IP), until it expires or is reclaimed.
    Never,
}

impl DeletePolicy {
    /// The policy's name as written in annotations and objects.
    pub fn as_str(self) -> &'static str {
        match self {
            DeletePolicy::Immediate => "Immediate",
            DeletePolicy::Never => "Never",
        }
    }
}

/// A pod's claim on a VPC IP.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "vpc-cni.io",
    version = "v1alpha1",
    kind = "VpcIPClaim",
    namespaced,
    shortname = "vipc",
    status = "VpcIPClaimStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A pod's claim on a VPC IP, named like the pod.",
    printcolumn(name = "IP", type_ = "string", json_path = ".status.ip"),
    printcolumn(name = "IPv6", type_ = "string", json_path = ".status.ipv6"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(name = "ENI", type_ = "string", json_path = ".status.eniId"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.deletePolicy"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt")
)]
#[serde(rename_all = "camelCase")]
pub struct VpcIPClaimSpec {
    /// `Never` keeps the IP for the pod's next sandbox (a static IP);
    /// `Immediate` frees it when the pod ends.
    #[serde(default)]
    pub delete_policy: DeletePolicy,
    /// How long a released static IP stays reserved, such as `1h` (at
    /// least `5m`); unset: the agent's `--claim-expired-duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<String>,
    /// The subnet of the requested address (set by the agent with `ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// The address the pod asked for (its annotation
    /// `tke.cloud.tencent.com/vpc-ip-claim-requested-ip`), once it got it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// Where a claim is and in what state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpcIPClaimStatus {
    /// `Bound` while a sandbox of the pod holds the IP, `Reserved` while a
    /// static IP waits for its pod, `Lost` when the cloud lost the address
    /// and it could not be had back, `Moving` while the node named here
    /// takes the claim over from another and moves the address to itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// The address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    /// Its IPv6 address (a dual-stack pod's), which a static IP keeps with
    /// it, on restarts and moves to another node alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// The `VpcIP` object of the address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vpc_ip: String,
    /// The node holding the claim.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The ENI carrying the address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub eni_id: String,
    /// The subnet of the address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subnet_id: String,
    /// The availability zone of the node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// The sandbox holding the IP, while one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// When a sandbox last took the IP (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_since: Option<String>,
    /// When the last sandbox let go of it (RFC 3339), while reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
    /// When the reservation ends (RFC 3339), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The pod's controlling workload, recorded with `--enable-ownerref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Why the claim is `Lost`, or what is wrong with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A workload owning a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// Kind, such as `StatefulSet`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// One VPC IP in use in the cluster, named after the address.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "vpc-cni.io",
    version = "v1alpha1",
    kind = "VpcIP",
    shortname = "vip",
    doc = "A VPC IP in use in the cluster, named after the address.",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Phase", type_ = "string", json_path = ".spec.phase"),
    printcolumn(name = "IPv6", type_ = "string", json_path = ".spec.ipv6"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "ENI", type_ = "string", json_path = ".spec.eniId"),
    printcolumn(name = "Subnet", type_ = "string", json_path = ".spec.subnetId"),
    printcolumn(name = "Claim", type_ = "string", json_path = ".spec.claim"),
    printcolumn(
        name = "Error",
        type_ = "string",
        json_path = ".spec.error",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VpcIPSpec {
    /// `Attaching` while the ENI carrying it is not attached yet (with the
    /// error if the attach failed), `Bound` while a pod holds it,
    /// `Reserved` while a static IP waits for its pod, `Requested` while
    /// the node that created it takes the address a pod asked for (the
    /// fence: another node's create finds it).
    pub phase: String,
    /// The node whose ENI carries it.
    pub node: String,
    /// The ENI carrying it.
    pub eni_id: String,
    /// Its subnet.
    pub subnet_id: String,
    /// The claim it belongs to, `namespace/name`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Its IPv6 partner on the ENI (a dual-stack node), held with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// Why its ENI is not attached yet, if the attach failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A node's ENIs and pool, named after the node.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "vpc-cni.io",
    version = "v1alpha1",
    kind = "NodeEniConfig",
    shortname = "nec",
    doc = "A node's ENIs and IP pool, named after the node.",
    status = "NodeEniConfigStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Zone", type_ = "string", json_path = ".status.zone"),
    printcolumn(name = "ENIs", type_ = "integer", json_path = ".status.eniCount"),
    printcolumn(name = "Allocated", type_ = "integer", json_path = ".status.allocated"),
    printcolumn(name = "Free", type_ = "integer", json_path = ".status.free"),
    printcolumn(name = "Reserved", type_ = "integer", json_path = ".status.reserved"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeEniConfigSpec {
    /// Free IPs the node keeps ready (overrides `--warm-ip-target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_ip_target: Option<u32>,
    /// IPs the node holds at least (overrides `--min-ip-target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ip_target: Option<u32>,
    /// ENIs the node uses at most, the primary included (overrides `--max-eni`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_eni: Option<u32>,
    /// Subnets new ENIs may come from (overrides `--subnet-ids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_ids: Vec<String>,
}

/// What the node's agent reports; empty while the node has no secondary
/// ENI and no condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeEniConfigStatus {
    /// The node's instance.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance_id: String,
    /// Its availability zone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// Subnets its ENIs may come from (empty: any of its zone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_ids: Vec<String>,
    /// ENIs at most, the primary included, and IPs per ENI at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Secondary ENIs (attached or attaching).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enis: Vec<EniStatus>,
    /// How many secondary ENIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eni_count: Option<u32>,
    /// IPs held by pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<u32>,
    /// IPs ready to hand out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<u32>,
    /// IPs resting after release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooling: Option<u32>,
    /// IPs reserved for static claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u32>,
    /// Why the pool cannot grow, if it cannot (`ENILimit`,
    /// `NoSubnetInZone`, `CloudUnreachable`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<NodeCondition>,
}

impl NodeEniConfigStatus {
    /// The status without what changes with every pod or every batch of
    /// addresses (the IP counts, of the node and of each ENI): its ENIs,
    /// their states and errors, limits and conditions.
    pub fn without_counts(&self) -> NodeEniConfigStatus {
        NodeEniConfigStatus {
            allocated: None,
            free: None,
            cooling: None,
            reserved: None,
            enis: self
                .enis
                .iter()
                .map(|e| EniStatus {
                    allocated: 0,
                    ips: 0,
                    ..e.clone()
                })
                .collect(),
            ..self.clone()
        }
    }
}

/// A node's limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// ENIs at most, the primary included.
    pub max_enis: u32,
    /// IPs per ENI at most, its own primary included.
    pub max_ips_per_eni: u32,
}

/// One secondary ENI of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EniStatus {
    /// ENI id.
    pub id: String,
    /// MAC address.
    pub mac: String,
    /// Subnet.
    pub subnet_id: String,
    /// `Attached`, or `Attaching` until the attach is done.
    pub state: String,
    /// Why the attach failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Secondary IPs.
    pub ips: u32,
    /// Of which held by pods.
    pub allocated: u32,
}

/// A condition of a node's pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCondition {
    /// `ENILimit`, `NoSubnetInZone` or `CloudUnreachable`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Always `True` while listed.
    pub status: String,
    /// The same as the type.
    pub reason: String,
    /// What happened.
    pub message: String,
    /// Since when (RFC 3339).
    pub last_transition_time: String,
}

/// The CRD of [`VpcIPClaim`]: its status is no subresource, so that one
/// write (a create, or an apply) carries a claim's spec and status at once;
/// only node agents write it, each its own node's claims (the node-scope
/// policy, `deploy/03-node-scope.yaml`).
pub fn claim_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = VpcIPClaim::crd();
    for version in &mut crd.spec.versions {
        version.subresources = None;
    }
    crd
}

/// Every CRD as one multi-document YAML, as `deploy/05-crds.yaml` holds it.
pub fn crds_yaml() -> Result<String, String> {
    use kube::CustomResourceExt;
    let crds = [claim_crd(), VpcIP::crd(), NodeEniConfig::crd()];
    let mut out = String::from(
        "# Generated by `vpc-cni-agent crds` from node-agent/src/kube/crd.rs; do not edit.\n",
    );
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

impl VpcIPClaimStatus {
    /// The phase, typed; `None` when empty or unknown to this agent.
    pub fn claim_phase(&self) -> Option<crate::phase::ClaimPhase> {
        crate::phase::ClaimPhase::of(&self.phase)
    }
}

impl VpcIPSpec {
    /// The phase, typed; `None` when unknown to this agent.
    pub fn ip_phase(&self) -> Option<crate::phase::IpPhase> {
        crate::phase::IpPhase::of(&self.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_crds_match_the_types() {
        let generated = crds_yaml().expect("yaml");
        for file in ["deploy/05-crds.yaml", "deploy/helm/vpc-cni/files/crds.yaml"] {
            let path = format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"));
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == generated,
                "{file} is not what the types generate: run \
                 `cargo run -p node-agent -- crds > {file}`"
            );
        }
    }

    /// The node's status is written at once when its ENIs, limits or
    /// conditions change, and only now and then when a pod came or went.
    #[test]
    fn a_pod_changes_only_the_counts_of_the_node_status() {
        let eni = EniStatus {
            id: "eni-1".into(),
            ips: 9,
            allocated: 3,
            ..EniStatus::default()
        };
        let before = NodeEniConfigStatus {
            enis: vec![eni.clone()],
            allocated: Some(3),
            free: Some(6),
            ..NodeEniConfigStatus::default()
        };
        let a_pod_more = NodeEniConfigStatus {
            enis: vec![EniStatus {
                allocated: 4,
                ..eni.clone()
            }],
            allocated: Some(4),
            free: Some(5),
            ..before.clone()
        };
        assert_eq!(before.without_counts(), a_pod_more.without_counts());
        let more_ips = NodeEniConfigStatus {
            enis: vec![EniStatus {
                ips: 18,
                ..eni.clone()
            }],
            ..before.clone()
        };
        assert_eq!(before.without_counts(), more_ips.without_counts());
        let grown = NodeEniConfigStatus {
            enis: vec![
                eni.clone(),
                EniStatus {
                    id: "eni-2".into(),
                    ..eni.clone()
                },
            ],
            ..before.clone()
        };
        assert_ne!(before.without_counts(), grown.without_counts());
        let failing = NodeEniConfigStatus {
            enis: vec![EniStatus {
                error: Some("attach failed".into()),
                ..eni
            }],
            ..before.clone()
        };
        assert_ne!(before.without_counts(), failing.without_counts());
        let limited = NodeEniConfigStatus {
            conditions: vec![NodeCondition {
                type_: "ENILimit".into(),
                ..NodeCondition::default()
            }],
            ..before.clone()
        };
        assert_ne!(before.without_counts(), limited.without_counts());
    }

    #[test]
    fn objects_serialise_with_camel_case_and_the_policy_names() {
        let spec = VpcIPClaimSpec {
            delete_policy: DeletePolicy::Never,
            expire_after: Some("1h".into()),
            ..Default::default()
        };
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["deletePolicy"], "Never");
        assert_eq!(json["expireAfter"], "1h");
        assert!(json.get("ip").is_none());
    }
}
