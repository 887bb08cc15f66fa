//! Static IP claims as plans: expiry, deletion by hand, cascade from a
//! deleted owner, and a claim whose address the cloud lost. A claim in a
//! hand-over (`handover.rs`) is none of these: it is never ended here.

use std::net::Ipv4Addr;

use super::handover::Handover;
use super::records::{Allocation, Change, Claim, EniRecord, OwnerRef, UnixMillis};
use super::{Ipam, IpamError};

impl Ipam {
    /// The claim of pod `namespace/name`.
    pub fn claim(&self, namespace: &str, name: &str) -> Option<&Claim> {
        self.claims.get(&(namespace.to_string(), name.to_string()))
    }

    /// Every static claim, ordered by namespace and name.
    pub fn claims(&self) -> impl Iterator<Item = &Claim> {
        self.claims.values()
    }

    /// Why the claim's address cannot be handed to its pod as it is: marked
    /// lost, or no longer on its ENI in the pool (the cloud lost it).
    pub fn claim_trouble(&self, c: &Claim) -> Option<String> {
        match &c.handover {
            Some(Handover::Incoming { .. }) => {
                return Some(format!("it is on its way to ENI {} of this node", c.eni_id));
            }
            Some(Handover::Outgoing { to_node }) => {
                return Some(format!("node {to_node} took it over"));
            }
            None => {}
        }
        if let Some(why) = &c.lost {
            return Some(why.clone());
        }
        match self.eni(&c.eni_id) {
            Some(eni) if eni.ips.contains(&c.ip) => None,
            Some(eni) => Some(format!("{} is no longer assigned to ENI {}", c.ip, eni.id)),
            None => Some(format!("its ENI {} is no longer attached here", c.eni_id)),
        }
    }

    /// Plans the claim's address back on `eni` (the cloud assigned it
    /// again by name): the ENI gains the address, the claim points at it.
    pub fn plan_claim_restored(&self, claim: &Claim, eni: &EniRecord) -> Vec<Change> {
        let mut record = self.eni(&eni.id).cloned().unwrap_or_else(|| eni.clone());
        if !record.ips.contains(&claim.ip) {
            record.ips.push(claim.ip);
        }
        // The address may still be listed on the ENI it vanished from.
        let mut changes: Vec<Change> = self
            .enis
            .iter()
            .filter(|e| e.id != record.id && e.ips.contains(&claim.ip))
            .map(|e| {
                let mut old = e.clone();
                old.ips.retain(|ip| *ip != claim.ip);
                Change::PutEni(old)
            })
            .collect();
        changes.push(Change::PutEni(record.clone()));
        changes.push(Change::PutClaim(Claim {
            eni_id: record.id,
            subnet_id: record.subnet_id,
            lost: None,
            ..claim.clone()
        }));
        changes
    }

    /// Plans marking a claim lost, with what happened; the address leaves
    /// the ENI it no longer is on.
    pub fn plan_claim_lost(&self, claim: &Claim, why: &str) -> Vec<Change> {
        let mut changes: Vec<Change> = self
            .enis
            .iter()
            .filter(|e| e.ips.contains(&claim.ip) && !self.holder.contains_key(&claim.ip))
            .map(|e| {
                let mut old = e.clone();
                old.ips.retain(|ip| *ip != claim.ip);
                Change::PutEni(old)
            })
            .collect();
        changes.push(Change::PutClaim(Claim {
            lost: Some(why.to_string()),
            ..claim.clone()
        }));
        changes
    }

    /// Plans the end of released claims whose time is up at `now` (a
    /// claim's own expiry, else `default_ms`; never when neither is set):
    /// their IPs go back to the pool through the cooldown.
    pub fn plan_expire(&self, now: UnixMillis, default_ms: Option<u64>) -> Vec<Change> {
        self.expired(now, default_ms)
            .into_iter()
            .flat_map(|(c, _)| self.plan_end_claim(&c, now))
            .collect()
    }

    /// Plans ending a claim by hand: its IP cools down and returns to the
    /// pool. A claim a sandbox holds is refused unless `force`, which also
    /// ends that sandbox's allocation (returned, for unwiring).
    pub fn plan_delete_claim(
        &self,
        namespace: &str,
        name: &str,
        force: bool,
        now: UnixMillis,
    ) -> Result<(Claim, Option<Allocation>, Vec<Change>), IpamError> {
        let c = self
            .claim(namespace, name)
            .ok_or_else(|| IpamError::ClaimNotFound {
                namespace: namespace.into(),
                name: name.into(),
            })?;
        if let Some(h) = &c.handover {
            return Err(IpamError::ClaimMoving {
                namespace: namespace.into(),
                name: name.into(),
                ip: c.ip,
                what: match h {
                    Handover::Incoming { .. } => "on its way to this node".into(),
                    Handover::Outgoing { to_node } => format!("taken over by node {to_node}"),
                },
            });
        }
        let holder = self
            .holder
            .get(&c.ip)
            .and_then(|k| self.allocations.get(k))
            .cloned();
        let mut changes = Vec::new();
        if let Some(a) = &holder {
            if !force {
                return Err(IpamError::ClaimBound {
                    namespace: namespace.into(),
                    name: name.into(),
                    ip: c.ip,
                    holder: Box::new(a.key.clone()),
                });
            }
            changes.push(Change::RemoveAllocation(a.key.clone()));
        }
        changes.extend(self.plan_end_claim(c, now));
        Ok((c.clone(), holder, changes))
    }

    /// Plans reclaiming every claim of a deleted owner: a released one's IP
    /// cools down now; a bound one stops being static, so its sandbox's DEL
    /// releases the IP like any other.
    pub fn plan_owner_deleted(
        &self,
        owner: &OwnerRef,
        now: UnixMillis,
    ) -> (Vec<Claim>, Vec<Change>) {
        let mut ended = Vec::new();
        let mut changes = Vec::new();
        for c in self
            .claims
            .values()
            .filter(|c| c.owner.as_ref() == Some(owner) && c.handover.is_none())
        {
            if self.holder.contains_key(&c.ip) {
                changes.push(Change::RemoveClaim(c.namespace.clone(), c.name.clone()));
            } else {
                changes.extend(self.plan_end_claim(c, now));
            }
            ended.push(c.clone());
        }
        (ended, changes)
    }

    /// The released claims whose time is up at `now`, with when it was.
    pub fn expired(&self, now: UnixMillis, default_ms: Option<u64>) -> Vec<(Claim, UnixMillis)> {
        self.claims
            .values()
            .filter(|c| !self.holder.contains_key(&c.ip) && c.handover.is_none())
            .filter_map(|c| {
                c.expires_ms(default_ms)
                    .filter(|t| *t <= now)
                    .map(|t| (c.clone(), t))
            })
            .collect()
    }

    /// A claim ends: its IP cools down if the pool still has it.
    fn plan_end_claim(&self, c: &Claim, now: UnixMillis) -> Vec<Change> {
        let mut changes = vec![Change::RemoveClaim(c.namespace.clone(), c.name.clone())];
        if self.in_pool(&c.ip) {
            changes.push(Change::PutCooling(
                c.ip,
                now.saturating_add(self.cooldown_ms),
            ));
        }
        changes
    }

    fn in_pool(&self, ip: &Ipv4Addr) -> bool {
        self.enis.iter().any(|e| e.ips.contains(ip))
    }
}
