//! What the pool is made of: ENIs, allocations, static claims, and the
//! changes between two states of the pool. These are the pool's own types:
//! the wire protocol and the store's records are converted to and from
//! them at the edges.

use crate::phase::ClaimPhase;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Milliseconds since the Unix epoch; the clock survives restarts.
pub type UnixMillis = u64;

/// One attachment of a container to a network, as CNI names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttachmentKey {
    /// The network name from the configuration.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl std::fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// The pod an attachment belongs to, when the runtime named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: Option<String>,
}

/// The workload owning a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerRef {
    /// Kind, such as `StatefulSet`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// A secondary ENI attached to this node, with the IPs assigned to it.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The IPv6 partner of each secondary IP that has one (dual stack):
    /// the pod holding the IPv4 address holds its partner too, so cooling,
    /// claims and hand-overs of the IPv4 address decide both. The partner
    /// of `primary_ip` is the ENI's own IPv6 address, on its link: what
    /// the node sends out of the ENI (masqueraded, say) has a source the
    /// ENI holds.
    pub ipv6: Vec<(Ipv4Addr, Ipv6Addr)>,
}

impl EniRecord {
    /// The IPv6 partner of `ip`, if it has one.
    pub fn ipv6_of(&self, ip: Ipv4Addr) -> Option<Ipv6Addr> {
        self.ipv6
            .iter()
            .find(|(v4, _)| *v4 == ip)
            .map(|(_, v6)| *v6)
    }

    /// The ENI's own IPv6 address (the partner of its primary address).
    pub fn own_ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6_of(self.primary_ip)
    }

    /// The addresses without an IPv6 partner: the ENI's primary address
    /// first, then the secondary IPs, lowest first.
    pub fn unpaired(&self) -> Vec<Ipv4Addr> {
        let mut ips: Vec<Ipv4Addr> = self
            .ips
            .iter()
            .filter(|ip| self.ipv6_of(**ip).is_none())
            .copied()
            .collect();
        ips.sort();
        if self.own_ipv6().is_none() {
            ips.insert(0, self.primary_ip);
        }
        ips
    }

    /// Whether `v4` may have a partner: the primary address or a
    /// secondary IP of the ENI.
    pub fn pairs_with(&self, v4: Ipv4Addr) -> bool {
        v4 == self.primary_ip || self.ips.contains(&v4)
    }

    /// Makes `v6` the partner of `v4`, and of no other address: a static
    /// IP's IPv6 address that followed it here. Returns the partner `v4`
    /// had before, if another (to give back).
    pub fn partner(&mut self, v4: Ipv4Addr, v6: Ipv6Addr) -> Option<Ipv6Addr> {
        let before = self.ipv6_of(v4).filter(|old| *old != v6);
        self.ipv6.retain(|(a, b)| *a != v4 && *b != v6);
        self.ipv6.push((v4, v6));
        self.ipv6.sort();
        before
    }

    /// Pairs the unpaired secondary IPs, lowest first, with `new` (IPv6
    /// addresses just assigned to the ENI), in order; drops pairs whose
    /// IPv4 address the ENI no longer has. Returns the IPv6 addresses left
    /// without a partner (to give back).
    pub fn pair_ipv6(&mut self, new: &[Ipv6Addr]) -> Vec<Ipv6Addr> {
        let kept: Vec<_> = self
            .ipv6
            .iter()
            .filter(|(v4, _)| self.pairs_with(*v4))
            .copied()
            .collect();
        self.ipv6 = kept;
        let unpaired = self.unpaired();
        let fresh: Vec<Ipv6Addr> = new
            .iter()
            .filter(|v6| !self.ipv6.iter().any(|(_, p)| p == *v6))
            .copied()
            .collect();
        let paired = unpaired.len().min(fresh.len());
        self.ipv6
            .extend(unpaired.into_iter().zip(fresh.iter().copied()));
        self.ipv6.sort();
        fresh[paired..].to_vec()
    }
}

/// One pod's hold on one IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The attachment.
    pub key: AttachmentKey,
    /// The address.
    pub ip: Ipv4Addr,
    /// Its IPv6 partner on the ENI, for a dual-stack pod.
    pub ipv6: Option<Ipv6Addr>,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The claimed address.
    pub ip: Ipv4Addr,
    /// The ENI carrying it.
    pub eni_id: String,
    /// The subnet of the address (empty in claims made before it was kept).
    pub subnet_id: String,
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
    pub owner: Option<OwnerRef>,
    /// Why the address cannot be had back, once the cloud lost it and
    /// this node could not get it again; `None` while it is good.
    pub lost: Option<String>,
    /// The pod asked for this address (a requested IP), rather than
    /// taking the pool's first free one.
    pub requested: bool,
    /// Between nodes (`handover.rs`); `None` while held here.
    pub handover: Option<super::handover::Handover>,
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

    /// The phase operators see: `Bound`, `Reserved`, `Lost`, `Moving`
    /// (coming here) or `Leaving` (taken over by another node).
    pub fn phase(&self) -> ClaimPhase {
        use super::handover::Handover;
        if let Some(h) = &self.handover {
            return match h {
                Handover::Incoming { .. } => ClaimPhase::Moving,
                Handover::Outgoing { .. } => ClaimPhase::Leaving,
            };
        }
        if self.lost.is_some() {
            ClaimPhase::Lost
        } else if self.released_ms.is_some() {
            ClaimPhase::Reserved
        } else {
            ClaimPhase::Bound
        }
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

/// What one IP of the pool is doing at some instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpUse<'a> {
    /// Held by a pod.
    Allocated(&'a Allocation),
    /// Reserved for a static claim no sandbox holds.
    Reserved(&'a Claim),
    /// Resting after release until the given time.
    Cooling(UnixMillis),
    /// Ready to hand out.
    Free,
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
