//! Scheduling a static pod into its claim's zone: an IP belongs to a subnet,
//! a subnet to one availability zone, and an address moves only within its
//! subnet; a pod whose claim holds an address in zone Z can only get it on a
//! node of zone Z. The admission webhook (`webhook.rs`) asks this module for
//! a JSON patch (RFC 6902) that makes the scheduler place the pod there:
//! a required node affinity term `topology.kubernetes.io/zone In [Z]`,
//! ANDed into every term the pod already has (terms are ORed), and an
//! annotation saying why. Pure functions, tested without a cluster.

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, Pod};
use serde_json::{Value, json};

use super::crd::{DeletePolicy, VpcIPClaim};

/// The well-known node label of a node's availability zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The annotation the webhook writes on a pod it pinned to a zone.
pub const ZONE_ANNOTATION: &str = "vpc-cni.io/zone";

/// Where a claim pins its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// The availability zone.
    pub zone: String,
    /// Why, as written in the pod's annotation.
    pub reason: String,
}

/// The zone a claim pins its pod to: a static claim (`deletePolicy:
/// Never`) holding an address (`Bound`, `Reserved`, `Moving`). The zone is
/// the status's; while a claim moves its status names no zone, and
/// `node_zone` gives the zone of the node it moves to (the same zone: an
/// address moves only within its subnet).
pub fn claim_zone(
    claim: &VpcIPClaim,
    node_zone: impl Fn(&str) -> Option<String>,
) -> Option<Pinned> {
    if claim.spec.delete_policy != DeletePolicy::Never {
        return None;
    }
    let status = claim.status.as_ref()?;
    if status.ip.is_empty() || !status.claim_phase().is_some_and(|p| p.holds_address()) {
        return None;
    }
    let zone = if status.zone.is_empty() {
        node_zone(&status.node)?
    } else {
        status.zone.clone()
    };
    if zone.is_empty() {
        return None;
    }
    let subnet = if status.subnet_id.is_empty() {
        String::new()
    } else {
        format!(" in subnet {}", status.subnet_id)
    };
    let reason = format!(
        "{zone} (the static IP {}{subnet} of VpcIPClaim {}/{})",
        status.ip,
        claim.metadata.namespace.as_deref().unwrap_or_default(),
        claim.metadata.name.as_deref().unwrap_or_default(),
    );
    Some(Pinned { zone, reason })
}

/// A JSON pointer's escaping of one path segment (RFC 6901: `~` then `/`).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

fn requires_zone(expressions: Option<&Vec<NodeSelectorRequirement>>, zone: &str) -> bool {
    expressions.into_iter().flatten().any(|e| {
        e.key == ZONE_LABEL
            && e.operator == "In"
            && e.values.as_deref() == Some(&[zone.to_string()][..])
    })
}

/// The patch that requires `pinned.zone` of `pod`'s nodes and annotates
/// why; empty when every node selector term of the pod requires it already.
pub fn zone_patch(pod: &Pod, pinned: &Pinned) -> Vec<Value> {
    const NODE_AFFINITY: &str = "/spec/affinity/nodeAffinity";
    const REQUIRED: &str =
        "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution";
    let expression = json!({"key": ZONE_LABEL, "operator": "In", "values": [pinned.zone]});
    let terms = json!([{"matchExpressions": [expression]}]);
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let node_affinity = affinity.and_then(|a| a.node_affinity.as_ref());
    let required = node_affinity.and_then(|n| {
        n.required_during_scheduling_ignored_during_execution
            .as_ref()
    });
    let mut ops = match (affinity, node_affinity, required) {
        (None, _, _) => vec![add(
            "/spec/affinity",
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}),
        )],
        (Some(_), None, _) => vec![add(
            NODE_AFFINITY,
            json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}),
        )],
        (Some(_), Some(_), None) => vec![add(REQUIRED, json!({"nodeSelectorTerms": terms}))],
        (Some(_), Some(_), Some(r)) if r.node_selector_terms.is_empty() => {
            vec![add(&format!("{REQUIRED}/nodeSelectorTerms"), terms)]
        }
        (Some(_), Some(_), Some(r)) => r
            .node_selector_terms
            .iter()
            .enumerate()
            .filter(|(_, t)| !requires_zone(t.match_expressions.as_ref(), &pinned.zone))
            .map(|(i, t)| {
                let at = format!("{REQUIRED}/nodeSelectorTerms/{i}/matchExpressions");
                match &t.match_expressions {
                    Some(_) => add(&format!("{at}/-"), expression.clone()),
                    None => add(&at, json!([expression])),
                }
            })
            .collect(),
    };
    if ops.is_empty() {
        return ops;
    }
    ops.push(match &pod.metadata.annotations {
        None => add(
            "/metadata/annotations",
            json!({ZONE_ANNOTATION: pinned.reason}),
        ),
        Some(_) => add(
            &format!("/metadata/annotations/{}", escape(ZONE_ANNOTATION)),
            json!(pinned.reason),
        ),
    });
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{VpcIPClaimSpec, VpcIPClaimStatus};

    fn claim(policy: DeletePolicy, phase: &str, zone: &str) -> VpcIPClaim {
        let mut c = VpcIPClaim::new(
            "web-0",
            VpcIPClaimSpec {
                delete_policy: policy,
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("default".into());
        c.status = Some(VpcIPClaimStatus {
            phase: phase.into(),
            ip: "10.0.16.7".into(),
            node: "ins-1".into(),
            subnet_id: "subnet-a".into(),
            zone: zone.into(),
            ..Default::default()
        });
        c
    }

    fn no_node(_: &str) -> Option<String> {
        None
    }

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).expect("pod yaml")
    }

    fn pinned() -> Pinned {
        Pinned {
            zone: "zone-a".into(),
            reason: "why".into(),
        }
    }

    #[test]
    fn only_a_static_claim_holding_an_address_pins_its_pod() {
        let bound = claim(DeletePolicy::Never, "Bound", "zone-a");
        assert_eq!(
            claim_zone(&bound, no_node),
            Some(Pinned {
                zone: "zone-a".into(),
                reason: "zone-a (the static IP 10.0.16.7 in subnet subnet-a of VpcIPClaim default/web-0)"
                    .into()
            })
        );
        let reserved = claim(DeletePolicy::Never, "Reserved", "zone-a");
        assert!(claim_zone(&reserved, no_node).is_some());
        let ordinary = claim(DeletePolicy::Immediate, "Bound", "zone-a");
        assert_eq!(claim_zone(&ordinary, no_node), None);
        let lost = claim(DeletePolicy::Never, "Lost", "zone-a");
        assert_eq!(claim_zone(&lost, no_node), None);
        let mut fresh = claim(DeletePolicy::Never, "", "");
        fresh.status = None;
        assert_eq!(claim_zone(&fresh, no_node), None);
    }

    #[test]
    fn a_moving_claim_pins_to_the_zone_of_the_node_it_moves_to() {
        let moving = claim(DeletePolicy::Never, "Moving", "");
        assert_eq!(claim_zone(&moving, no_node), None);
        let zone_of = |node: &str| (node == "ins-1").then(|| "zone-b".to_string());
        assert_eq!(
            claim_zone(&moving, zone_of).map(|p| p.zone),
            Some("zone-b".into())
        );
    }

    #[test]
    fn a_pod_without_affinity_gets_one_term_and_the_annotation() {
        let p = pod("metadata: {name: web-0}\nspec: {containers: []}\n");
        assert_eq!(
            zone_patch(&p, &pinned()),
            vec![
                json!({"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": ZONE_LABEL, "operator": "In", "values": ["zone-a"]}]}
                ]}}}}),
                json!({"op": "add", "path": "/metadata/annotations", "value": {"vpc-cni.io/zone": "why"}}),
            ]
        );
    }

    #[test]
    fn the_annotation_key_is_escaped_when_annotations_exist() {
        assert_eq!(escape("vpc-cni.io/zone"), "vpc-cni.io~1zone");
        assert_eq!(escape("a~b/c"), "a~0b~1c");
        let p = pod("metadata: {name: web-0, annotations: {a: b}}\nspec: {containers: []}\n");
        let ops = zone_patch(&p, &pinned());
        assert_eq!(
            ops.last(),
            Some(
                &json!({"op": "add", "path": "/metadata/annotations/vpc-cni.io~1zone", "value": "why"})
            )
        );
    }

    #[test]
    fn other_affinities_are_kept_and_the_node_affinity_added() {
        let p = pod("spec:\n  containers: []\n  affinity:\n    podAntiAffinity: {}\n");
        assert_eq!(
            zone_patch(&p, &pinned())[0]["path"],
            "/spec/affinity/nodeAffinity"
        );
        let p = pod(
            "spec:\n  containers: []\n  affinity:\n    nodeAffinity:\n      preferredDuringSchedulingIgnoredDuringExecution: []\n",
        );
        assert_eq!(
            zone_patch(&p, &pinned())[0],
            json!({"op": "add",
                "path": "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                "value": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": ZONE_LABEL, "operator": "In", "values": ["zone-a"]}]}]}})
        );
    }

    #[test]
    fn the_zone_is_anded_into_every_existing_term() {
        let p = pod(r#"
spec:
  containers: []
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions: [{key: disk, operator: In, values: [ssd]}]
        - matchFields: [{key: metadata.name, operator: In, values: [ins-3]}]
        - matchExpressions: [{key: topology.kubernetes.io/zone, operator: In, values: [zone-a]}]
"#);
        let required = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution";
        let expr = json!({"key": ZONE_LABEL, "operator": "In", "values": ["zone-a"]});
        assert_eq!(
            zone_patch(&p, &pinned()),
            vec![
                json!({"op": "add", "path": format!("{required}/nodeSelectorTerms/0/matchExpressions/-"), "value": expr}),
                json!({"op": "add", "path": format!("{required}/nodeSelectorTerms/1/matchExpressions"), "value": [expr]}),
                json!({"op": "add", "path": "/metadata/annotations", "value": {"vpc-cni.io/zone": "why"}}),
            ]
        );
    }

    #[test]
    fn a_pod_already_required_in_the_zone_is_left_alone() {
        let p = pod(r#"
spec:
  containers: []
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions: [{key: topology.kubernetes.io/zone, operator: In, values: [zone-a]}]
"#);
        assert!(zone_patch(&p, &pinned()).is_empty());
    }
}
