//! ADD and DEL as plans: which IP an attachment gets, what its release
//! changes.

use super::records::{Allocation, AttachmentKey, Change, Claim, OwnerRef, PodRef, UnixMillis};
use super::{Ipam, IpamError};

/// How a pod asks for a static IP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticIp {
    /// How long its IP stays reserved once released (default: the agent's).
    pub expire_after_ms: Option<u64>,
    /// The pod's owner, to record.
    pub owner: Option<OwnerRef>,
}

/// What ADD will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddPlan {
    /// The allocation the attachment gets (new or the existing one).
    pub allocation: Allocation,
    /// Whether the attachment already held it (a repeated ADD).
    pub existing: bool,
    /// The changes to commit; empty when `existing`.
    pub changes: Vec<Change>,
    /// Whether the plan makes the pod's static claim (its first bind).
    pub makes_claim: bool,
}

impl Ipam {
    /// Plans ADD: the attachment's existing allocation; else the pod's
    /// static claim's IP; else the first free IP (lowest ENI first, then
    /// lowest address), claimed for the pod when `claim` says it is static.
    pub fn plan_add(
        &self,
        key: &AttachmentKey,
        netns: &str,
        pod: Option<&PodRef>,
        claim: Option<StaticIp>,
        now: UnixMillis,
    ) -> Result<AddPlan, IpamError> {
        if let Some(a) = self.allocations.get(key) {
            return Ok(AddPlan {
                allocation: a.clone(),
                existing: true,
                changes: Vec::new(),
                makes_claim: false,
            });
        }
        let held = pod.and_then(|p| self.claim(&p.namespace, &p.name));
        let (ip, eni_id) = match held {
            Some(c) => {
                if let Some(holder) = self.holder.get(&c.ip) {
                    return Err(IpamError::ClaimInUse {
                        namespace: c.namespace.clone(),
                        name: c.name.clone(),
                        ip: c.ip,
                        holder: Box::new(holder.clone()),
                    });
                }
                if let Some(h) = &c.handover {
                    return Err(IpamError::ClaimMoving {
                        namespace: c.namespace.clone(),
                        name: c.name.clone(),
                        ip: c.ip,
                        what: match h {
                            super::Handover::Incoming { .. } => "on its way to this node".into(),
                            super::Handover::Outgoing { to_node } => {
                                format!("taken over by node {to_node}")
                            }
                        },
                    });
                }
                if let Some(why) = self.claim_trouble(c) {
                    return Err(IpamError::ClaimLost {
                        namespace: c.namespace.clone(),
                        name: c.name.clone(),
                        ip: c.ip,
                        why,
                    });
                }
                (c.ip, c.eni_id.clone())
            }
            None => {
                let (ip, eni) = self.first_free(now).ok_or_else(|| {
                    let c = self.counts(now);
                    IpamError::Exhausted {
                        total: c.total,
                        allocated: c.allocated,
                        cooling: c.cooling,
                    }
                })?;
                (ip, eni.id.clone())
            }
        };
        let allocation = Allocation {
            key: key.clone(),
            ip,
            // A dual-stack pod's IPv6 address: its IPv4 address's partner.
            ipv6: self.eni(&eni_id).and_then(|e| e.ipv6_of(ip)),
            eni_id: eni_id.clone(),
            netns: netns.to_string(),
            pod: pod.cloned(),
            created_ms: now,
        };
        let mut changes = Vec::new();
        if self.cooling.contains_key(&ip) {
            changes.push(Change::RemoveCooling(ip));
        }
        changes.push(Change::PutAllocation(allocation.clone()));
        match (held, pod, claim) {
            // A workload re-created over an orphaned claim adopts it: the
            // pod's owner now is the claim's.
            (Some(c), _, s) => changes.push(Change::PutClaim(Claim {
                last_bound_ms: now,
                released_ms: None,
                owner: s.and_then(|s| s.owner).or_else(|| c.owner.clone()),
                ..c.clone()
            })),
            (None, Some(p), Some(s)) => changes.push(Change::PutClaim(Claim {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                ip,
                subnet_id: self
                    .eni(&eni_id)
                    .map(|e| e.subnet_id.clone())
                    .unwrap_or_default(),
                eni_id,
                created_ms: now,
                last_bound_ms: now,
                released_ms: None,
                expire_after_ms: s.expire_after_ms,
                owner: s.owner,
                lost: None,
                requested: false,
                handover: None,
            })),
            _ => {}
        }
        let makes_claim =
            held.is_none() && changes.iter().any(|c| matches!(c, Change::PutClaim(_)));
        Ok(AddPlan {
            allocation,
            existing: false,
            changes,
            makes_claim,
        })
    }

    /// Plans DEL: `None` when the attachment holds nothing (DEL is then a
    /// no-op); otherwise the allocation released and the changes: a static
    /// claim's IP stays reserved for its pod, any other cools down.
    pub fn plan_release(
        &self,
        key: &AttachmentKey,
        now: UnixMillis,
    ) -> Option<(Allocation, Vec<Change>)> {
        let a = self.allocations.get(key)?;
        let claim = a
            .pod
            .as_ref()
            .and_then(|p| self.claim(&p.namespace, &p.name))
            .filter(|c| c.ip == a.ip);
        let keep = match claim {
            Some(c) => Change::PutClaim(Claim {
                released_ms: Some(now),
                ..c.clone()
            }),
            None => Change::PutCooling(a.ip, now.saturating_add(self.cooldown_ms)),
        };
        Some((a.clone(), vec![Change::RemoveAllocation(key.clone()), keep]))
    }
}
