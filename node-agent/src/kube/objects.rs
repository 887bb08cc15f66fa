//! The Kubernetes objects a node's pool should be seen as: a pure function
//! of the operator views (`pool`, `claims`) and the node's details, so what
//! is published is tested without a cluster.

use crate::phase::{ClaimPhase, EniState, IpPhase};
use std::collections::BTreeMap;

use proto::wire::{ClaimView, IpState, PoolView};

use super::crd::{
    Capacity, DeletePolicy, EniStatus, NodeCondition, NodeEniConfigStatus, Owner, VpcIPClaimSpec,
    VpcIPClaimStatus, VpcIPSpec,
};
use crate::cloud::NodeInfo;

/// A claim object as its node wants it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimObject {
    /// The spec.
    pub spec: VpcIPClaimSpec,
    /// The status.
    pub status: VpcIPClaimStatus,
}

impl ClaimObject {
    /// The owner that the object's ownerReferences name, if any.
    pub fn owner(&self) -> Option<&Owner> {
        self.status.owner.as_ref()
    }

    /// A sandbox holds the IP.
    pub fn bound(&self) -> bool {
        self.status.container_id.is_some()
    }
}

/// Everything one node publishes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// `VpcIPClaim`s by (namespace, name).
    pub claims: BTreeMap<(String, String), ClaimObject>,
    /// `VpcIP`s by name (the address).
    pub ips: BTreeMap<String, VpcIPSpec>,
    /// Addresses on their way here (incoming claims): their fences stay.
    pub arriving: std::collections::BTreeSet<String>,
    /// The node's `NodeEniConfig` status.
    pub node: NodeEniConfigStatus,
}

/// Milliseconds since the epoch as RFC 3339 (UTC, whole seconds).
pub fn rfc3339(ms: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_second((ms / 1000) as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// RFC 3339 back to milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    s.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .and_then(|t| u64::try_from(t.as_millisecond()).ok())
}

/// A duration in milliseconds as the shortest exact `h`/`m`/`s` form.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The static claim a claim object of node `node` describes, to rebuild a
/// pool that lost it (an empty or replaced store): only a `Never` claim
/// this node holds, with an address; reserved, or incoming when this node
/// took it over and had not moved it yet (`Moving`).
pub fn claim_from_object(o: &super::crd::VpcIPClaim, node: &str) -> Option<crate::ipam::Claim> {
    use kube::ResourceExt;
    let status = o.status.as_ref()?;
    if o.spec.delete_policy != DeletePolicy::Never || status.node != node {
        return None;
    }
    let ip = status.ip.parse().ok()?;
    let created = o
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| u64::try_from(t.0.as_millisecond()).ok())
        .unwrap_or_default();
    let bound = status.bound_since.as_deref().and_then(parse_rfc3339);
    let released = status.released_at.as_deref().and_then(parse_rfc3339);
    Some(crate::ipam::Claim {
        namespace: o.namespace().unwrap_or_default(),
        name: o.name_any(),
        ip,
        eni_id: status.eni_id.clone(),
        subnet_id: status.subnet_id.clone(),
        created_ms: created,
        last_bound_ms: bound.unwrap_or(created),
        released_ms: Some(released.or(bound).unwrap_or(created)),
        expire_after_ms: o
            .spec
            .expire_after
            .as_deref()
            .and_then(|d| proto::duration::parse(d).ok())
            .map(|d| d.as_millis() as u64),
        owner: status.owner.as_ref().map(|w| crate::ipam::OwnerRef {
            kind: w.kind.clone(),
            name: w.name.clone(),
            uid: w.uid.clone(),
        }),
        lost: None,
        requested: o.spec.ip.is_some(),
        // Taken over by this node, not moved yet: its status still names
        // the ENI it comes from.
        handover: (status.claim_phase() == Some(ClaimPhase::Moving)).then(|| {
            crate::ipam::Handover::Incoming {
                from: crate::ipam::Source::Node {
                    node: String::new(),
                    eni_id: status.eni_id.clone(),
                    ipv6: status.ipv6.as_deref().and_then(|v6| v6.parse().ok()),
                },
            }
        }),
    })
}

/// The claim object of one claim view.
pub fn claim_object(c: &ClaimView, node: &str, zone: &str) -> ClaimObject {
    let policy = if c.policy == "Never" {
        DeletePolicy::Never
    } else {
        DeletePolicy::Immediate
    };
    ClaimObject {
        spec: VpcIPClaimSpec {
            delete_policy: policy,
            expire_after: c.expire_after_ms.map(duration),
            // A requested address is the pod's own choice: the spec says it.
            subnet_id: c.requested.then(|| c.subnet_id.clone()),
            ip: c.requested.then(|| c.ip.to_string()),
        },
        status: VpcIPClaimStatus {
            phase: c.status.clone(),
            ip: c.ip.to_string(),
            ipv6: c.ipv6.map(|v6| v6.to_string()),
            vpc_ip: c.ip.to_string(),
            node: node.to_string(),
            eni_id: c.eni_id.clone(),
            subnet_id: c.subnet_id.clone(),
            zone: zone.to_string(),
            container_id: c.container_id.clone(),
            bound_since: Some(rfc3339(c.last_bound_ms)),
            released_at: c.released_ms.map(rfc3339),
            expires_at: c.expires_ms.map(rfc3339),
            owner: c.owner.as_ref().map(|o| Owner {
                kind: o.kind.clone(),
                name: o.name.clone(),
                uid: o.uid.clone(),
            }),
            message: c.message.clone(),
        },
    }
}

/// What `node` publishes for its pool and claims.
pub fn desired(
    node: &str,
    info: Option<&NodeInfo>,
    subnet_ids: &[String],
    pool: &PoolView,
    claims: &[ClaimView],
) -> Desired {
    let zone = info.map(|i| i.zone.as_str()).unwrap_or_default();
    // A claim leaving this node is its new holder's to write, and so is
    // its address's `VpcIP`; one on its way here is left as the take-over
    // wrote it (its `eniId` names the ENI it comes from) until it arrives.
    let phase = |c: &ClaimView| ClaimPhase::of(&c.status);
    let leaving: std::collections::BTreeSet<String> = claims
        .iter()
        .filter(|c| phase(c) == Some(ClaimPhase::Leaving))
        .map(|c| format!("{}/{}", c.namespace, c.name))
        .collect();
    let arriving = claims
        .iter()
        .filter(|c| phase(c) == Some(ClaimPhase::Moving))
        .map(|c| c.ip.to_string())
        .collect();
    let claims_out = claims
        .iter()
        .filter(|c| !matches!(phase(c), Some(ClaimPhase::Leaving | ClaimPhase::Moving)))
        .map(|c| {
            (
                (c.namespace.clone(), c.name.clone()),
                claim_object(c, node, zone),
            )
        })
        .collect();
    let mut ips = BTreeMap::new();
    let (mut allocated, mut free, mut cooling, mut reserved) = (0u32, 0u32, 0u32, 0u32);
    let mut enis = Vec::new();
    for eni in &pool.enis {
        let mut attaching_error = None;
        let mut attaching = false;
        let mut eni_allocated = 0;
        for ip in &eni.ips {
            let (phase, claim, error) = match &ip.state {
                IpState::Allocated { pod, .. } => {
                    allocated += 1;
                    eni_allocated += 1;
                    (
                        IpPhase::Bound,
                        pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)),
                        None,
                    )
                }
                IpState::Reserved { namespace, name } => {
                    reserved += 1;
                    let claim = format!("{namespace}/{name}");
                    if leaving.contains(&claim) {
                        continue;
                    }
                    (IpPhase::Reserved, Some(claim), None)
                }
                IpState::Attaching { error } => {
                    attaching = true;
                    attaching_error.clone_from(error);
                    // An address is shown `Attaching` once its ENI's attach
                    // failed; one that is simply on its way (a second or
                    // two) is not worth two writes.
                    if error.is_none() {
                        continue;
                    }
                    (IpPhase::Attaching, None, error.clone())
                }
                IpState::Cooling { .. } => {
                    cooling += 1;
                    continue;
                }
                IpState::Free => {
                    free += 1;
                    continue;
                }
            };
            ips.insert(
                ip.ip.to_string(),
                VpcIPSpec {
                    phase: phase.into(),
                    node: node.into(),
                    eni_id: eni.id.clone(),
                    subnet_id: eni.subnet_id.clone(),
                    claim,
                    ipv6: ip.ipv6.map(|v6| v6.to_string()),
                    error,
                },
            );
        }
        enis.push(EniStatus {
            id: eni.id.clone(),
            mac: eni.mac.clone(),
            subnet_id: eni.subnet_id.clone(),
            state: if attaching {
                EniState::Attaching
            } else {
                EniState::Attached
            }
            .into(),
            error: attaching_error,
            ips: eni.ips.len() as u32,
            allocated: eni_allocated,
        });
    }
    let conditions: Vec<NodeCondition> = pool
        .conditions
        .iter()
        .map(|c| NodeCondition {
            type_: c.kind.clone(),
            status: "True".into(),
            reason: c.kind.clone(),
            message: c.message.clone(),
            last_transition_time: rfc3339(c.since_ms),
        })
        .collect();
    // As TKE's: nothing to say while the node has no secondary ENI, unless
    // a condition says why it has none.
    let node_status = if enis.is_empty() && conditions.is_empty() {
        NodeEniConfigStatus::default()
    } else {
        NodeEniConfigStatus {
            // The cloud's id of the instance, not the node's name.
            instance_id: info.map(|i| i.instance_id.clone()).unwrap_or_default(),
            zone: zone.into(),
            subnet_ids: subnet_ids.to_vec(),
            capacity: info.map(|i| Capacity {
                max_enis: i.limits.max_enis,
                max_ips_per_eni: i.limits.max_ips_per_eni,
            }),
            eni_count: Some(enis.len() as u32),
            enis,
            allocated: Some(allocated),
            free: Some(free),
            cooling: Some(cooling),
            reserved: Some(reserved),
            conditions,
        }
    };
    Desired {
        claims: claims_out,
        ips,
        arriving,
        node: node_status,
    }
}

/// The API version of an owner's kind, for its ownerReference; `None` for
/// kinds this agent does not know (no reference is written then).
pub fn owner_api_version(kind: &str) -> Option<&'static str> {
    match kind {
        "StatefulSet" | "Deployment" | "ReplicaSet" | "DaemonSet" => Some("apps/v1"),
        "Job" | "CronJob" => Some("batch/v1"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proto::wire::{AttachmentKey, ConditionView, EniView, IpView, PodRef};

    use super::*;
    use crate::cloud::Limits;

    fn info() -> NodeInfo {
        NodeInfo {
            instance_id: "ins-1".into(),
            zone: "ap-guangzhou-3".into(),
            vpc_id: "vpc-1".into(),
            subnet: None,
            limits: Limits {
                max_enis: 4,
                max_ips_per_eni: 10,
            },
            mtu: 1500,
        }
    }

    fn ip(last: u8, state: IpState) -> IpView {
        IpView {
            ip: Ipv4Addr::new(10, 0, 1, last),
            ipv6: None,
            state,
        }
    }

    fn claim(name: &str, status: &str, policy: &str, container: Option<&str>) -> ClaimView {
        ClaimView {
            namespace: "default".into(),
            name: name.into(),
            ip: Ipv4Addr::new(10, 0, 1, 5),
            ipv6: None,
            status: status.into(),
            node: "ins-1".into(),
            subnet_id: "subnet-1".into(),
            eni_id: "eni-1".into(),
            container_id: container.map(Into::into),
            policy: policy.into(),
            owner: None,
            created_ms: 1_000,
            last_bound_ms: 2_000,
            released_ms: (status == "Reserved").then_some(3_000),
            expires_ms: (status == "Reserved").then_some(3_603_000),
            expire_after_ms: Some(3_600_000),
            message: None,
            requested: false,
        }
    }

    #[test]
    fn a_node_without_secondary_enis_publishes_an_empty_status() {
        let pool = PoolView {
            enis: vec![],
            conditions: vec![],
            maintenance: None,
        };
        let d = desired("ins-1", Some(&info()), &[], &pool, &[]);
        assert_eq!(d.node, NodeEniConfigStatus::default());
        assert!(d.ips.is_empty() && d.claims.is_empty());
    }

    #[test]
    fn a_node_at_its_limit_says_why_it_has_no_eni() {
        let pool = PoolView {
            enis: vec![],
            conditions: vec![ConditionView {
                kind: "ENILimit".into(),
                message: "quota reached".into(),
                since_ms: 1_700_000_000_000,
            }],
            maintenance: None,
        };
        let d = desired("ins-1", Some(&info()), &[], &pool, &[]);
        assert_eq!(d.node.conditions.len(), 1);
        assert_eq!(d.node.conditions[0].type_, "ENILimit");
        assert_eq!(
            d.node.conditions[0].last_transition_time,
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(d.node.eni_count, Some(0));
    }

    #[test]
    fn ips_in_use_become_vpc_ips_and_the_rest_are_counted() {
        let pod = PodRef {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: None,
        };
        let pool = PoolView {
            enis: vec![
                EniView {
                    id: "eni-1".into(),
                    mac: "02:00:00:00:00:01".into(),
                    subnet_id: "subnet-1".into(),
                    ips: vec![
                        ip(
                            5,
                            IpState::Allocated {
                                key: AttachmentKey {
                                    network: "n".into(),
                                    container_id: "c".into(),
                                    ifname: "eth0".into(),
                                },
                                pod: Some(pod),
                            },
                        ),
                        ip(
                            6,
                            IpState::Reserved {
                                namespace: "default".into(),
                                name: "web-1".into(),
                            },
                        ),
                        ip(7, IpState::Cooling { until_ms: 9 }),
                        ip(8, IpState::Free),
                    ],
                },
                EniView {
                    id: "eni-2".into(),
                    mac: "02:00:00:00:00:02".into(),
                    subnet_id: "subnet-1".into(),
                    ips: vec![ip(
                        20,
                        IpState::Attaching {
                            error: Some("attach failed".into()),
                        },
                    )],
                },
            ],
            conditions: vec![],
            maintenance: None,
        };
        let d = desired("ins-1", Some(&info()), &[], &pool, &[]);
        assert_eq!(
            d.ips.keys().collect::<Vec<_>>(),
            ["10.0.1.20", "10.0.1.5", "10.0.1.6"]
        );
        assert_eq!(d.ips["10.0.1.5"].phase, "Bound");
        assert_eq!(d.ips["10.0.1.5"].claim.as_deref(), Some("default/web-0"));
        assert_eq!(d.ips["10.0.1.6"].phase, "Reserved");
        assert_eq!(d.ips["10.0.1.20"].phase, "Attaching");
        assert_eq!(d.ips["10.0.1.20"].error.as_deref(), Some("attach failed"));
        let n = &d.node;
        assert_eq!(
            (n.allocated, n.free, n.cooling, n.reserved, n.eni_count),
            (Some(1), Some(1), Some(1), Some(1), Some(2))
        );
        assert_eq!(n.enis[1].state, "Attaching");
        assert_eq!(n.capacity.as_ref().map(|c| c.max_enis), Some(4));
    }

    #[test]
    fn claims_carry_policy_expiry_and_times() {
        let claims = [
            claim("web-0", "Reserved", "Never", None),
            claim("app", "Bound", "Immediate", Some("c1")),
        ];
        let pool = PoolView {
            enis: vec![],
            conditions: vec![],
            maintenance: None,
        };
        let d = desired("ins-1", Some(&info()), &[], &pool, &claims);
        let web = &d.claims[&("default".to_string(), "web-0".to_string())];
        assert_eq!(web.spec.delete_policy, DeletePolicy::Never);
        assert_eq!(web.spec.expire_after.as_deref(), Some("1h"));
        assert_eq!(web.status.phase, "Reserved");
        assert_eq!(web.status.zone, "ap-guangzhou-3");
        assert_eq!(
            web.status.expires_at.as_deref(),
            Some("1970-01-01T01:00:03Z")
        );
        assert!(!web.bound());
        let app = &d.claims[&("default".to_string(), "app".to_string())];
        assert_eq!(app.spec.delete_policy, DeletePolicy::Immediate);
        assert!(app.bound());
    }

    #[test]
    fn a_static_claims_object_is_its_backup_and_a_plain_ones_is_not() {
        use crate::kube::crd::{VpcIPClaim, VpcIPClaimSpec, VpcIPClaimStatus};
        let object = |policy: DeletePolicy, node: &str, phase: &str| {
            let mut o = VpcIPClaim::new(
                "web-0",
                VpcIPClaimSpec {
                    delete_policy: policy,
                    expire_after: Some("1h".into()),
                    ..Default::default()
                },
            );
            o.metadata.namespace = Some("default".into());
            o.status = Some(VpcIPClaimStatus {
                phase: phase.into(),
                ip: "10.0.1.9".into(),
                node: node.into(),
                eni_id: "eni-a".into(),
                subnet_id: "subnet-1".into(),
                released_at: Some("2026-12-02T10:00:00Z".into()),
                ..Default::default()
            });
            o
        };
        let c = claim_from_object(&object(DeletePolicy::Never, "n1", "Reserved"), "n1")
            .expect("a static claim of this node");
        assert_eq!(
            (c.namespace.as_str(), c.name.as_str()),
            ("default", "web-0")
        );
        assert_eq!(c.ip.to_string(), "10.0.1.9");
        assert_eq!(
            (c.expire_after_ms, c.handover.clone()),
            (Some(3_600_000), None)
        );
        assert_eq!(c.released_ms, parse_rfc3339("2026-12-02T10:00:00Z"));
        let moving = claim_from_object(&object(DeletePolicy::Never, "n1", "Moving"), "n1")
            .expect("taken over here");
        assert!(
            matches!(moving.handover, Some(crate::ipam::Handover::Incoming { from: crate::ipam::Source::Node { ref eni_id, .. } }) if eni_id == "eni-a"),
            "{moving:?}"
        );
        assert_eq!(
            claim_from_object(&object(DeletePolicy::Immediate, "n1", "Bound"), "n1"),
            None
        );
        assert_eq!(
            claim_from_object(&object(DeletePolicy::Never, "n2", "Reserved"), "n1"),
            None
        );
    }

    #[test]
    fn durations_and_times_round_trip() {
        assert_eq!(duration(3_600_000), "1h");
        assert_eq!(duration(300_000), "5m");
        assert_eq!(duration(301_000), "301s");
        assert_eq!(
            parse_rfc3339(&rfc3339(1_700_000_000_000)),
            Some(1_700_000_000_000)
        );
    }
}
