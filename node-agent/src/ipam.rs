//! The IP pool as a pure data structure: secondary ENIs and their IPs,
//! allocations keyed by (network, container id, ifname), and the cooldown
//! of released IPs. No I/O and no clock: every operation takes `now`, and
//! every change is first *planned* as a list of [`Change`]s, which the
//! caller commits to the store and only then [`Ipam::apply`]s. The store's
//! contents replayed through `apply` rebuild the same pool.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use proto::wire::{AttachmentKey, EniView, IpState, IpView, OwnerRef, PodRef, PoolView};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch; the clock survives restarts.
pub type UnixMillis = u64;

/// A secondary ENI attached to this node, with the IPs assigned to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniRecord {
    /// ENI id.
    pub id: String,
    /// MAC address.
    pub mac: String,
    /// Subnet id.
    pub subnet_id: String,
    /// The subnet's gateway.
    pub gateway: Ipv4Addr,
    /// The ENI's own primary address (never given to a pod).
    pub primary_ip: Ipv4Addr,
    /// MTU of the ENI.
    pub mtu: u32,
    /// The route table that traffic from this ENI's pods uses.
    pub table: u32,
    /// Secondary IPs, each handed to at most one pod.
    pub ips: Vec<Ipv4Addr>,
}

/// One pod's hold on one IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The attachment.
    pub key: AttachmentKey,
    /// The address.
    pub ip: Ipv4Addr,
    /// The ENI that carries the address.
    pub eni_id: String,
    /// The pod's netns path at ADD.
    pub netns: String,
    /// The pod, if the runtime named it.
    pub pod: Option<PodRef>,
    /// When the allocation was made.
    pub created_ms: UnixMillis,
}

/// A static IP claim: a pod, named by namespace and name, keeps its IP
/// across sandboxes; while no sandbox holds it the IP is reserved for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The claimed address.
    pub ip: Ipv4Addr,
    /// The ENI carrying it.
    pub eni_id: String,
    /// When the claim was made.
    pub created_ms: UnixMillis,
    /// When a sandbox last took it.
    pub last_bound_ms: UnixMillis,
    /// When the last sandbox let go of it; `None` while one holds it.
    pub released_ms: Option<UnixMillis>,
    /// How long it stays reserved once released, if the pod said; else
    /// the agent's default applies.
    pub expire_after_ms: Option<u64>,
    /// The workload owning the pod, recorded with `--enable-ownerref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerRef>,
}

impl Claim {
    /// The key of a claim: namespace and name.
    pub fn id(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }

    /// When a released claim expires under `default_ms`; `None` while bound
    /// or when claims never expire.
    pub fn expires_ms(&self, default_ms: Option<u64>) -> Option<UnixMillis> {
        Some(
            self.released_ms?
                .saturating_add(self.expire_after_ms.or(default_ms)?),
        )
    }
}

/// One durable change to the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Add or replace an ENI.
    PutEni(EniRecord),
    /// Drop an ENI that holds no allocated IP.
    RemoveEni(String),
    /// Record an allocation.
    PutAllocation(Allocation),
    /// Drop an allocation.
    RemoveAllocation(AttachmentKey),
    /// Record a static IP claim.
    PutClaim(Claim),
    /// Drop a static IP claim (namespace, name).
    RemoveClaim(String, String),
    /// An IP cools down until the given time.
    PutCooling(Ipv4Addr, UnixMillis),
    /// An IP's cooldown record is no longer needed.
    RemoveCooling(Ipv4Addr),
}

/// The whole pool as the store holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// ENIs in the order they were added.
    pub enis: Vec<EniRecord>,
    /// Allocations.
    pub allocations: Vec<Allocation>,
    /// Cooling IPs and the end of their cooldown.
    pub cooling: Vec<(Ipv4Addr, UnixMillis)>,
    /// Static IP claims.
    pub claims: Vec<Claim>,
}

/// Why the pool refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Every IP is allocated or cooling.
    #[error("no free IP: {allocated} allocated and {cooling} cooling of {total}")]
    Exhausted {
        /// IPs in the pool.
        total: usize,
        /// IPs held by pods.
        allocated: usize,
        /// IPs in their cooldown.
        cooling: usize,
    },
    /// The pod's claimed IP is held by another of its sandboxes.
    #[error("{namespace}/{name} has its static IP {ip} in use by another sandbox ({holder})")]
    ClaimInUse {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// The IP.
        ip: Ipv4Addr,
        /// The attachment holding it.
        holder: Box<AttachmentKey>,
    },
    /// No static claim of that pod.
    #[error("{namespace}/{name} has no static IP claim")]
    ClaimNotFound {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// A sandbox of the pod holds the claimed IP.
    #[error(
        "{namespace}/{name} still runs with {ip} ({holder}); deleting its claim would cut its network (force to do it anyway)"
    )]
    ClaimBound {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// The IP.
        ip: Ipv4Addr,
        /// The attachment holding it.
        holder: Box<AttachmentKey>,
    },
    /// The store holds two allocations on one IP.
    #[error("store is inconsistent: {ip} is allocated to both {first} and {second}")]
    DoubleAllocation {
        /// The address.
        ip: Ipv4Addr,
        /// One holder.
        first: Box<AttachmentKey>,
        /// The other.
        second: Box<AttachmentKey>,
    },
}

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
}

/// One ENI's share of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniUsage {
    /// ENI id.
    pub id: String,
    /// Its free IPs (neither allocated nor cooling).
    pub free: Vec<Ipv4Addr>,
    /// All its secondary IPs.
    pub total: usize,
}

/// Pool counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Secondary IPs in the pool.
    pub total: usize,
    /// Held by pods.
    pub allocated: usize,
    /// In their cooldown.
    pub cooling: usize,
    /// Reserved for a released static claim.
    pub reserved: usize,
    /// Ready to hand out.
    pub free: usize,
}

/// The pool.
#[derive(Clone, Debug, Default)]
pub struct Ipam {
    cooldown_ms: u64,
    enis: Vec<EniRecord>,
    allocations: BTreeMap<AttachmentKey, Allocation>,
    holder: HashMap<Ipv4Addr, AttachmentKey>,
    cooling: HashMap<Ipv4Addr, UnixMillis>,
    claims: BTreeMap<(String, String), Claim>,
}

impl Ipam {
    /// An empty pool whose released IPs cool down for `cooldown_ms`.
    pub fn new(cooldown_ms: u64) -> Ipam {
        Ipam {
            cooldown_ms,
            ..Ipam::default()
        }
    }

    /// Rebuilds the pool from a snapshot, refusing one that allocates an IP
    /// twice.
    pub fn restore(cooldown_ms: u64, snapshot: Snapshot) -> Result<Ipam, IpamError> {
        let mut ipam = Ipam::new(cooldown_ms);
        let mut changes: Vec<Change> = snapshot.enis.into_iter().map(Change::PutEni).collect();
        changes.extend(
            snapshot
                .cooling
                .into_iter()
                .map(|(ip, until)| Change::PutCooling(ip, until)),
        );
        for a in snapshot.allocations {
            if let Some(first) = ipam.holder.get(&a.ip) {
                return Err(IpamError::DoubleAllocation {
                    ip: a.ip,
                    first: Box::new(first.clone()),
                    second: Box::new(a.key),
                });
            }
            ipam.holder.insert(a.ip, a.key.clone());
            changes.push(Change::PutAllocation(a));
        }
        changes.extend(snapshot.claims.into_iter().map(Change::PutClaim));
        ipam.apply(&changes);
        Ok(ipam)
    }

    /// Applies committed changes.
    pub fn apply(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::PutEni(eni) => {
                    let mut eni = eni.clone();
                    eni.ips.sort();
                    let idx = match self.enis.iter().position(|e| e.id == eni.id) {
                        Some(i) => i,
                        None => {
                            self.enis.push(eni.clone());
                            self.enis.len() - 1
                        }
                    };
                    self.enis[idx] = eni;
                }
                Change::RemoveEni(id) => self.enis.retain(|e| &e.id != id),
                Change::PutAllocation(a) => {
                    self.holder.insert(a.ip, a.key.clone());
                    self.allocations.insert(a.key.clone(), a.clone());
                }
                Change::PutClaim(c) => {
                    self.claims.insert(c.id(), c.clone());
                }
                Change::RemoveClaim(namespace, name) => {
                    self.claims.remove(&(namespace.clone(), name.clone()));
                }
                Change::RemoveAllocation(key) => {
                    if let Some(a) = self.allocations.remove(key) {
                        self.holder.remove(&a.ip);
                    }
                }
                Change::PutCooling(ip, until) => {
                    self.cooling.insert(*ip, *until);
                }
                Change::RemoveCooling(ip) => {
                    self.cooling.remove(ip);
                }
            }
        }
    }

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
            });
        }
        let held = pod.and_then(|p| self.claims.get(&(p.namespace.clone(), p.name.clone())));
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
            (Some(c), _, _) => changes.push(Change::PutClaim(Claim {
                last_bound_ms: now,
                released_ms: None,
                ..c.clone()
            })),
            (None, Some(p), Some(s)) => changes.push(Change::PutClaim(Claim {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                ip,
                eni_id,
                created_ms: now,
                last_bound_ms: now,
                released_ms: None,
                expire_after_ms: s.expire_after_ms,
                owner: s.owner,
            })),
            _ => {}
        }
        Ok(AddPlan {
            allocation,
            existing: false,
            changes,
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
            .and_then(|p| self.claims.get(&(p.namespace.clone(), p.name.clone())))
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

    /// Plans the end of released claims whose time is up at `now` (a
    /// claim's own expiry, else `default_ms`; never when neither is set):
    /// their IPs go back to the pool through the cooldown.
    pub fn plan_expire(&self, now: UnixMillis, default_ms: Option<u64>) -> Vec<Change> {
        self.claims
            .values()
            .filter(|c| c.expires_ms(default_ms).is_some_and(|t| t <= now))
            .filter(|c| !self.holder.contains_key(&c.ip))
            .flat_map(|c| {
                [
                    Change::RemoveClaim(c.namespace.clone(), c.name.clone()),
                    Change::PutCooling(c.ip, now.saturating_add(self.cooldown_ms)),
                ]
            })
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
            .claims
            .get(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| IpamError::ClaimNotFound {
                namespace: namespace.into(),
                name: name.into(),
            })?;
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
        changes.push(Change::RemoveClaim(namespace.into(), name.into()));
        changes.push(Change::PutCooling(
            c.ip,
            now.saturating_add(self.cooldown_ms),
        ));
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
            .filter(|c| c.owner.as_ref() == Some(owner))
        {
            changes.push(Change::RemoveClaim(c.namespace.clone(), c.name.clone()));
            if !self.holder.contains_key(&c.ip) {
                changes.push(Change::PutCooling(
                    c.ip,
                    now.saturating_add(self.cooldown_ms),
                ));
            }
            ended.push(c.clone());
        }
        (ended, changes)
    }

    /// The released claims whose time is up at `now`, with when it was.
    pub fn expired(&self, now: UnixMillis, default_ms: Option<u64>) -> Vec<(Claim, UnixMillis)> {
        self.claims
            .values()
            .filter(|c| !self.holder.contains_key(&c.ip))
            .filter_map(|c| {
                c.expires_ms(default_ms)
                    .filter(|t| *t <= now)
                    .map(|t| (c.clone(), t))
            })
            .collect()
    }

    /// Every static claim, ordered by namespace and name.
    pub fn claims(&self) -> impl Iterator<Item = &Claim> {
        self.claims.values()
    }

    /// The attachment's allocation.
    pub fn allocation(&self, key: &AttachmentKey) -> Option<&Allocation> {
        self.allocations.get(key)
    }

    /// Every allocation, ordered by key.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    /// An ENI by id.
    pub fn eni(&self, id: &str) -> Option<&EniRecord> {
        self.enis.iter().find(|e| e.id == id)
    }

    /// Every ENI in the order it joined the pool.
    pub fn enis(&self) -> &[EniRecord] {
        &self.enis
    }

    /// Counters at `now`.
    pub fn counts(&self, now: UnixMillis) -> Counts {
        let mut c = Counts::default();
        for ip in self.enis.iter().flat_map(|e| &e.ips) {
            c.total += 1;
            if self.holder.contains_key(ip) {
                c.allocated += 1;
            } else if self.is_reserved(ip) {
                c.reserved += 1;
            } else if self.is_cooling(ip, now) {
                c.cooling += 1;
            } else {
                c.free += 1;
            }
        }
        c
    }

    /// Per ENI, in attach order: its free IPs and how many it holds in all.
    pub fn usage(&self, now: UnixMillis) -> Vec<EniUsage> {
        self.enis
            .iter()
            .map(|e| EniUsage {
                id: e.id.clone(),
                free: e
                    .ips
                    .iter()
                    .filter(|ip| self.is_free(ip, now))
                    .copied()
                    .collect(),
                total: e.ips.len(),
            })
            .collect()
    }

    /// The pool as operators see it.
    pub fn view(&self, now: UnixMillis) -> PoolView {
        let enis = self
            .enis
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
                        state: self.state_of(ip, now),
                    })
                    .collect(),
            })
            .collect();
        PoolView {
            enis,
            conditions: Vec::new(),
        }
    }

    fn state_of(&self, ip: &Ipv4Addr, now: UnixMillis) -> IpState {
        if let Some(key) = self.holder.get(ip) {
            let pod = self.allocations.get(key).and_then(|a| a.pod.clone());
            return IpState::Allocated {
                key: key.clone(),
                pod,
            };
        }
        if let Some(c) = self.claims.values().find(|c| c.ip == *ip) {
            return IpState::Reserved {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
            };
        }
        match self.cooling.get(ip) {
            Some(until) if *until > now => IpState::Cooling { until_ms: *until },
            _ => IpState::Free,
        }
    }

    /// Whether the IP is reserved for a static claim no sandbox holds.
    fn is_reserved(&self, ip: &Ipv4Addr) -> bool {
        !self.holder.contains_key(ip) && self.claims.values().any(|c| c.ip == *ip)
    }

    fn is_free(&self, ip: &Ipv4Addr, now: UnixMillis) -> bool {
        !self.holder.contains_key(ip) && !self.is_cooling(ip, now) && !self.is_reserved(ip)
    }

    fn is_cooling(&self, ip: &Ipv4Addr, now: UnixMillis) -> bool {
        self.cooling.get(ip).is_some_and(|until| *until > now)
    }

    fn first_free(&self, now: UnixMillis) -> Option<(Ipv4Addr, &EniRecord)> {
        self.enis.iter().find_map(|eni| {
            eni.ips
                .iter()
                .find(|ip| self.is_free(ip, now))
                .map(|ip| (*ip, eni))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> AttachmentKey {
        AttachmentKey {
            network: "vpc".into(),
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    fn eni(id: &str, ips: &[u8]) -> EniRecord {
        EniRecord {
            id: id.into(),
            mac: "02:00:00:00:00:01".into(),
            subnet_id: "subnet-1".into(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            primary_ip: Ipv4Addr::new(10, 0, 0, 2),
            mtu: 1500,
            table: 101,
            ips: ips.iter().map(|b| Ipv4Addr::new(10, 0, 0, *b)).collect(),
        }
    }

    fn pool(ips: &[u8], cooldown: u64) -> Ipam {
        let mut p = Ipam::new(cooldown);
        p.apply(&[Change::PutEni(eni("eni-1", ips))]);
        p
    }

    fn add(p: &mut Ipam, c: &str, now: u64) -> Result<Ipv4Addr, IpamError> {
        let plan = p.plan_add(&key(c), "/n", None, None, now)?;
        p.apply(&plan.changes);
        Ok(plan.allocation.ip)
    }

    fn del(p: &mut Ipam, c: &str, now: u64) -> Option<Ipv4Addr> {
        let (a, changes) = p.plan_release(&key(c), now)?;
        p.apply(&changes);
        Some(a.ip)
    }

    #[test]
    fn add_is_idempotent_per_key() {
        let mut p = pool(&[10, 11], 0);
        let a = add(&mut p, "c1", 0).expect("ip");
        let plan = p.plan_add(&key("c1"), "/n", None, None, 1).expect("again");
        assert!(plan.existing);
        assert!(plan.changes.is_empty());
        assert_eq!(plan.allocation.ip, a);
        assert_ne!(add(&mut p, "c2", 0).expect("ip"), a);
    }

    #[test]
    fn the_same_container_on_another_ifname_is_another_attachment() {
        let mut p = pool(&[10, 11], 0);
        let a = add(&mut p, "c1", 0).expect("ip");
        let other = AttachmentKey {
            ifname: "net1".into(),
            ..key("c1")
        };
        let plan = p.plan_add(&other, "/n", None, None, 0).expect("ip");
        assert_ne!(plan.allocation.ip, a);
    }

    #[test]
    fn released_ips_cool_down_before_reuse() {
        let mut p = pool(&[10], 30_000);
        let a = add(&mut p, "c1", 1_000).expect("ip");
        assert_eq!(del(&mut p, "c1", 2_000), Some(a));
        let err = add(&mut p, "c2", 2_001).expect_err("cooling");
        assert_eq!(
            err,
            IpamError::Exhausted {
                total: 1,
                allocated: 0,
                cooling: 1
            }
        );
        assert_eq!(add(&mut p, "c2", 32_000).expect("cooled"), a);
    }

    #[test]
    fn reusing_a_cooled_ip_clears_its_record() {
        let mut p = pool(&[10], 10);
        add(&mut p, "c1", 0).expect("ip");
        del(&mut p, "c1", 0);
        let plan = p.plan_add(&key("c2"), "/n", None, None, 100).expect("ip");
        assert_eq!(
            plan.changes[0],
            Change::RemoveCooling(Ipv4Addr::new(10, 0, 0, 10))
        );
    }

    #[test]
    fn fresh_ips_are_preferred_over_cooled_ones() {
        let mut p = pool(&[10, 11], 30_000);
        add(&mut p, "c1", 0).expect("ip");
        del(&mut p, "c1", 0);
        assert_eq!(
            add(&mut p, "c2", 1).expect("ip"),
            Ipv4Addr::new(10, 0, 0, 11)
        );
    }

    #[test]
    fn releasing_an_unknown_attachment_is_a_no_op() {
        let p = pool(&[10], 0);
        assert!(p.plan_release(&key("nobody"), 0).is_none());
    }

    #[test]
    fn counts_and_view_agree() {
        let mut p = pool(&[10, 11, 12], 100);
        add(&mut p, "c1", 0).expect("ip");
        add(&mut p, "c2", 0).expect("ip");
        del(&mut p, "c2", 0);
        assert_eq!(
            p.counts(50),
            Counts {
                total: 3,
                allocated: 1,
                cooling: 1,
                reserved: 0,
                free: 1
            }
        );
        assert_eq!(
            p.counts(200),
            Counts {
                total: 3,
                allocated: 1,
                cooling: 0,
                reserved: 0,
                free: 2
            }
        );
        let view = p.view(50);
        let states: Vec<_> = view.enis[0].ips.iter().map(|i| &i.state).collect();
        assert!(matches!(states[0], IpState::Allocated { .. }));
        assert!(matches!(states[1], IpState::Cooling { until_ms: 100 }));
        assert!(matches!(states[2], IpState::Free));
    }

    #[test]
    fn restore_rebuilds_the_same_pool() {
        let mut p = pool(&[10, 11, 12], 100);
        add(&mut p, "c1", 0).expect("ip");
        add(&mut p, "c2", 0).expect("ip");
        del(&mut p, "c1", 5);
        let snap = Snapshot {
            enis: p.enis().to_vec(),
            allocations: p.allocations().cloned().collect(),
            cooling: vec![(Ipv4Addr::new(10, 0, 0, 10), 105)],
            claims: vec![],
        };
        let q = Ipam::restore(100, snap).expect("restore");
        assert_eq!(q.view(6), p.view(6));
        assert_eq!(q.counts(6), p.counts(6));
    }

    #[test]
    fn restore_refuses_double_allocation() {
        let a = Allocation {
            key: key("c1"),
            ip: Ipv4Addr::new(10, 0, 0, 10),
            eni_id: "eni-1".into(),
            netns: "/n".into(),
            pod: None,
            created_ms: 0,
        };
        let b = Allocation {
            key: key("c2"),
            ..a.clone()
        };
        let snap = Snapshot {
            enis: vec![eni("eni-1", &[10])],
            allocations: vec![a, b],
            cooling: vec![],
            claims: vec![],
        };
        assert!(matches!(
            Ipam::restore(0, snap),
            Err(IpamError::DoubleAllocation { .. })
        ));
    }

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
            uid: None,
        }
    }

    fn add_pod(
        p: &mut Ipam,
        c: &str,
        name: &str,
        claim: Option<StaticIp>,
        now: u64,
    ) -> Result<Ipv4Addr, IpamError> {
        let plan = p.plan_add(&key(c), "/n", Some(&pod(name)), claim, now)?;
        p.apply(&plan.changes);
        Ok(plan.allocation.ip)
    }

    const STATIC: Option<StaticIp> = Some(StaticIp {
        expire_after_ms: None,
        owner: None,
    });

    #[test]
    fn a_static_ip_stays_reserved_for_its_pod_and_comes_back_to_it() {
        let mut p = pool(&[10, 11, 12], 0);
        let ip = add_pod(&mut p, "sandbox-1", "web-0", STATIC, 0).expect("ip");
        assert_eq!(del(&mut p, "sandbox-1", 10), Some(ip));
        assert_eq!(p.counts(20).reserved, 1);
        assert!(matches!(
            p.view(20).enis[0].ips[0].state,
            IpState::Reserved { .. }
        ));
        for (i, other) in ["a", "b"].iter().enumerate() {
            let got = add_pod(&mut p, &format!("other-{i}"), other, None, 20).expect("ip");
            assert_ne!(got, ip, "nobody else gets a reserved IP");
        }
        assert!(
            add_pod(&mut p, "other-2", "c", None, 20).is_err(),
            "the reserved IP is not free"
        );
        let again = add_pod(&mut p, "sandbox-2", "web-0", STATIC, 30).expect("its own IP");
        assert_eq!(again, ip);
        let claim = p.claims().next().expect("claim");
        assert_eq!(
            (claim.released_ms, claim.last_bound_ms, claim.created_ms),
            (None, 30, 0)
        );
    }

    #[test]
    fn a_plain_pod_keeps_nothing() {
        let mut p = pool(&[10, 11], 30_000);
        let ip = add_pod(&mut p, "s1", "job-0", None, 0).expect("ip");
        del(&mut p, "s1", 0);
        assert_ne!(add_pod(&mut p, "s2", "job-0", None, 1).expect("ip"), ip);
        assert_eq!(p.claims().count(), 0);
    }

    #[test]
    fn a_claim_held_by_another_sandbox_is_refused_until_that_one_goes() {
        let mut p = pool(&[10, 11], 0);
        add_pod(&mut p, "old", "web-0", STATIC, 0).expect("ip");
        assert!(matches!(
            add_pod(&mut p, "new", "web-0", STATIC, 1),
            Err(IpamError::ClaimInUse { .. })
        ));
        del(&mut p, "old", 2);
        assert!(add_pod(&mut p, "new", "web-0", STATIC, 3).is_ok());
    }

    #[test]
    fn released_claims_expire_by_their_own_time_or_the_default() {
        let mut p = pool(&[10, 11], 1_000);
        let own = Some(StaticIp {
            expire_after_ms: Some(100),
            owner: None,
        });
        let a = add_pod(&mut p, "s1", "short", own, 0).expect("ip");
        add_pod(&mut p, "s2", "long", STATIC, 0).expect("ip");
        del(&mut p, "s1", 10);
        del(&mut p, "s2", 10);
        assert!(p.plan_expire(100, None).is_empty(), "not yet");
        let changes = p.plan_expire(110, None);
        assert_eq!(
            changes,
            vec![
                Change::RemoveClaim("default".into(), "short".into()),
                Change::PutCooling(a, 1_110)
            ]
        );
        p.apply(&changes);
        assert!(
            p.plan_expire(1_000_000, None).is_empty(),
            "no default: the other never expires"
        );
        assert_eq!(
            p.plan_expire(1_010, Some(1_000)).len(),
            2,
            "with a default it does"
        );
    }

    #[test]
    fn claims_are_deleted_by_hand_or_with_their_owner() {
        let mut p = pool(&[10, 11, 12], 100);
        let ip = add_pod(&mut p, "s1", "web-0", STATIC, 0).expect("ip");
        assert!(matches!(
            p.plan_delete_claim("default", "web-0", false, 1),
            Err(IpamError::ClaimBound { .. })
        ));
        let (_, holder, changes) = p
            .plan_delete_claim("default", "web-0", true, 1)
            .expect("forced");
        assert_eq!(holder.expect("the running sandbox").ip, ip);
        p.apply(&changes);
        assert_eq!(p.claims().count(), 0);
        assert_eq!(p.counts(2).cooling, 1, "its IP cools down");
        assert!(matches!(
            p.plan_delete_claim("default", "web-0", false, 1),
            Err(IpamError::ClaimNotFound { .. })
        ));

        let owner = OwnerRef {
            kind: "StatefulSet".into(),
            name: "db".into(),
            uid: "u".into(),
        };
        let owned = Some(StaticIp {
            expire_after_ms: None,
            owner: Some(owner.clone()),
        });
        add_pod(&mut p, "s2", "db-0", owned.clone(), 10).expect("ip");
        add_pod(&mut p, "s3", "db-1", owned, 10).expect("ip");
        del(&mut p, "s2", 20);
        let (ended, changes) = p.plan_owner_deleted(&owner, 30);
        assert_eq!(ended.len(), 2);
        p.apply(&changes);
        assert_eq!(p.claims().count(), 0);
        assert_eq!(p.counts(31).allocated, 1, "db-1's sandbox keeps running");
        del(&mut p, "s3", 40);
        assert_eq!(
            p.counts(41).reserved,
            0,
            "and at its DEL its IP is not kept"
        );
    }

    #[test]
    fn claims_survive_restore() {
        let mut p = pool(&[10, 11], 0);
        let ip = add_pod(&mut p, "s1", "web-0", STATIC, 0).expect("ip");
        del(&mut p, "s1", 5);
        let snap = Snapshot {
            enis: p.enis().to_vec(),
            allocations: p.allocations().cloned().collect(),
            cooling: vec![],
            claims: p.claims().cloned().collect(),
        };
        let mut q = Ipam::restore(0, snap).expect("restore");
        assert_eq!(add_pod(&mut q, "s2", "web-0", STATIC, 9).expect("ip"), ip);
    }

    #[test]
    fn ips_spread_over_enis_in_attach_order() {
        let mut p = Ipam::new(0);
        p.apply(&[
            Change::PutEni(eni("eni-b", &[20])),
            Change::PutEni(eni("eni-a", &[10])),
        ]);
        let plan = p.plan_add(&key("c1"), "/n", None, None, 0).expect("ip");
        assert_eq!(plan.allocation.eni_id, "eni-b");
    }
}
