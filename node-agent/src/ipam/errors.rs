//! Why the pool refused.

use std::net::Ipv4Addr;

use super::records::AttachmentKey;

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
    /// The pod's claimed IP is no longer on any ENI of this node.
    #[error("{namespace}/{name}: the static IP {ip} is lost: {why}")]
    ClaimLost {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// The IP.
        ip: Ipv4Addr,
        /// What happened.
        why: String,
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
    /// The address a pod asked for is held on this node.
    #[error("the requested address {ip} is held by {holder}")]
    RequestedHeld {
        /// The address.
        ip: Ipv4Addr,
        /// Who holds it, for the operator.
        holder: String,
    },
    /// The address a pod asked for was released recently and cools down.
    #[error(
        "the requested address {ip} was released recently and cools down until {until_ms} (Unix ms), so that traffic still on its way to its last pod does not reach this one; the ADD is retried"
    )]
    RequestedCooling {
        /// The address.
        ip: Ipv4Addr,
        /// End of its cooldown (Unix ms).
        until_ms: u64,
    },
    /// The claim changed since a step of its hand-over was decided.
    #[error("the static IP claim of {namespace}/{name} changed meanwhile; looked at again")]
    ClaimChanged {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// The claim is between nodes: it is neither ended nor reclaimed here.
    #[error(
        "the static IP {ip} of {namespace}/{name} is {what}; it cannot be ended here meanwhile"
    )]
    ClaimMoving {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// The IP.
        ip: Ipv4Addr,
        /// Where it is going, for the operator.
        what: String,
    },
    /// An address is already a sandbox's here.
    #[error("{ip} is in use here by sandbox {holder}")]
    InUse {
        /// The address.
        ip: Ipv4Addr,
        /// The attachment holding it.
        holder: Box<AttachmentKey>,
    },
    /// An address is already another pod's claim here.
    #[error("{ip} is the static IP of {namespace}/{name} here")]
    Claimed {
        /// The address.
        ip: Ipv4Addr,
        /// That claim's pod namespace.
        namespace: String,
        /// That claim's pod name.
        name: String,
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
