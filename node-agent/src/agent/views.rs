//! What operators see (`pool`, `claims`): the pool rendered as the wire's
//! views. Pure functions of the pool and what the agent knows beside it.

use crate::phase::ClaimPhase;
use std::collections::BTreeMap;

use proto::wire::{ClaimView, ConditionView, EniView, IpState, IpView, PoolView};

use super::convert::{wire_key, wire_owner, wire_pod};
use crate::cloud::Eni;
use crate::ipam::{Claim, Handover, IpUse, Ipam, Source, UnixMillis};
use std::net::Ipv6Addr;

/// The pool, with the ENIs still attaching (and the error if their attach
/// failed) and the node's conditions.
pub fn pool(
    ipam: &Ipam,
    now: UnixMillis,
    attaching: &BTreeMap<String, (Eni, Option<String>)>,
    conditions: BTreeMap<&'static str, (String, UnixMillis)>,
) -> PoolView {
    let mut enis: Vec<EniView> = ipam
        .enis()
        .iter()
        .map(|e| EniView {
            id: e.id.clone(),
            mac: e.mac.clone(),
            subnet_id: e.subnet_id.clone(),
            ips: e
                .ips
                .iter()
                .map(|ip| IpView {
                    ip: *ip,
                    ipv6: e.ipv6_of(*ip),
                    state: ip_state(ipam.ip_use(ip, now)),
                })
                .collect(),
        })
        .collect();
    for (eni, error) in attaching.values() {
        enis.push(EniView {
            id: eni.id.clone(),
            mac: eni.mac.clone(),
            subnet_id: eni.subnet_id.clone(),
            ips: eni
                .secondary_ips
                .iter()
                .map(|ip| IpView {
                    ip: *ip,
                    ipv6: None,
                    state: IpState::Attaching {
                        error: error.clone(),
                    },
                })
                .collect(),
        });
    }
    PoolView {
        enis,
        conditions: conditions
            .into_iter()
            .map(|(kind, (message, since_ms))| ConditionView {
                kind: kind.to_string(),
                message,
                since_ms,
            })
            .collect(),
        maintenance: None,
    }
}

/// A static claim's IPv6 address: its pod's while one holds it, else the
/// partner of its address on its ENI; on its way here, the one that
/// follows it from the node it left.
fn claim_ipv6(ipam: &Ipam, c: &Claim) -> Option<Ipv6Addr> {
    if let Some(Handover::Incoming {
        from: Source::Node { ipv6, .. },
    }) = &c.handover
    {
        return *ipv6;
    }
    ipam.holder_of(&c.ip)
        .and_then(|a| a.ipv6)
        .or_else(|| ipam.eni(&c.eni_id).and_then(|e| e.ipv6_of(c.ip)))
}

fn ip_state(u: IpUse<'_>) -> IpState {
    match u {
        IpUse::Allocated(a) => IpState::Allocated {
            key: wire_key(&a.key),
            pod: a.pod.as_ref().map(wire_pod),
        },
        IpUse::Reserved(c) => IpState::Reserved {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
        },
        IpUse::Cooling(until_ms) => IpState::Cooling { until_ms },
        IpUse::Free => IpState::Free,
    }
}

/// Every pod's claim: static claims (bound, reserved or lost) and the
/// plain allocations of named pods, ordered by namespace and name.
pub fn claims(ipam: &Ipam, node: &str, default_expiry_ms: Option<u64>) -> Vec<ClaimView> {
    let subnet_of = |eni: &str| {
        ipam.eni(eni)
            .map(|e| e.subnet_id.clone())
            .unwrap_or_default()
    };
    let mut out: Vec<ClaimView> = ipam
        .claims()
        .map(|c| ClaimView {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            ip: c.ip,
            ipv6: claim_ipv6(ipam, c),
            status: c.phase().into(),
            node: node.to_string(),
            subnet_id: if c.subnet_id.is_empty() {
                subnet_of(&c.eni_id)
            } else {
                c.subnet_id.clone()
            },
            eni_id: c.eni_id.clone(),
            container_id: ipam.holder_of(&c.ip).map(|a| a.key.container_id.clone()),
            policy: "Never".into(),
            owner: c.owner.as_ref().map(wire_owner),
            created_ms: c.created_ms,
            last_bound_ms: c.last_bound_ms,
            released_ms: c.released_ms,
            expires_ms: c.expires_ms(default_expiry_ms),
            expire_after_ms: c.expire_after_ms,
            message: c.lost.clone(),
            requested: c.requested,
        })
        .collect();
    for a in ipam.allocations() {
        let Some(pod) = &a.pod else { continue };
        if out
            .iter()
            .any(|c| c.namespace == pod.namespace && c.name == pod.name && c.ip == a.ip)
        {
            continue;
        }
        out.push(ClaimView {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            ip: a.ip,
            ipv6: a.ipv6,
            status: ClaimPhase::Bound.into(),
            node: node.to_string(),
            subnet_id: subnet_of(&a.eni_id),
            eni_id: a.eni_id.clone(),
            container_id: Some(a.key.container_id.clone()),
            policy: "Immediate".into(),
            owner: None,
            created_ms: a.created_ms,
            last_bound_ms: a.created_ms,
            released_ms: None,
            expires_ms: None,
            expire_after_ms: None,
            message: None,
            requested: false,
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}
