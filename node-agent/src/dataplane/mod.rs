//! All kernel work for pods and ENIs, behind one trait.
//! [`NetlinkDataplane`] programs the kernel; [`FakeDataplane`] records
//! calls for tests and for running the agent without touching the host
//! (`--dataplane fake`).

pub mod connmark;
pub mod egress;
mod fake;
mod netlink;

pub use connmark::{Connmark, ConnmarkBit};
pub use egress::Egress;
pub use fake::FakeDataplane;
#[cfg(test)]
pub use fake::Recorded;
pub use netlink::{NetlinkDataplane, remove_egress};

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::ipam::{AttachmentKey, EniRecord};

/// Prefix of the host end of every pod veth this agent creates.
pub const HOST_VETH_PREFIX: &str = "vpc";

/// The pod's default gateway: link-local, answered by the host veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The pod's IPv6 default gateway: link-local, answered by the host veth
/// (a permanent neighbour in the pod names its MAC).
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Every ENI's IPv6 gateway: the VPC's router, at a link-local address it
/// answers neighbour discovery for.
pub const ENI_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// How the data path reaches a pod's network namespace: the descriptor the
/// caller passed along, or else its path as the agent sees it.
#[derive(Clone, Debug)]
pub struct PodNetns {
    /// `CNI_NETNS` as the runtime gave it.
    pub path: String,
    /// The namespace the plugin opened and passed, if it did.
    pub fd: Option<Arc<OwnedFd>>,
}

impl PodNetns {
    /// A namespace known only by its path.
    pub fn at(path: &str) -> PodNetns {
        PodNetns {
            path: path.to_string(),
            fd: None,
        }
    }

    /// An open descriptor of the namespace, checked to be one.
    pub fn open(&self) -> Result<OwnedFd, DataplaneError> {
        let fail = |detail: String| DataplaneError::Kernel {
            op: "open pod netns",
            detail,
        };
        let fd = match &self.fd {
            Some(fd) => fd.try_clone(),
            None => std::fs::File::open(&self.path).map(OwnedFd::from),
        }
        .map_err(|e| fail(format!("{}: {e}", self.path)))?;
        let fs = nix::sys::statfs::fstatfs(&fd).map_err(|e| fail(format!("{}: {e}", self.path)))?;
        if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(fail(format!(
                "{} is not a namespace as the agent sees it (it is in another mount namespace and the caller did not pass it)",
                self.path
            )));
        }
        Ok(fd)
    }
}

/// Everything needed to wire (or check) one pod.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// The attachment.
    pub key: AttachmentKey,
    /// The pod's network namespace.
    pub netns: PodNetns,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, on the same ENI, when it has one.
    pub ipv6: Option<Ipv6Addr>,
    /// The ENI carrying it.
    pub eni: EniRecord,
}

impl PodSpec {
    /// The pod's addresses: IPv4, then IPv6 when it has one.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + use<> {
        std::iter::once(IpAddr::V4(self.ip)).chain(self.ipv6.map(IpAddr::V6))
    }
}

/// Names and addresses of what was created for a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLinks {
    /// Host end of the veth.
    pub host_ifname: String,
    /// Host end's MAC.
    pub host_mac: String,
    /// Pod end's MAC.
    pub pod_mac: String,
}

/// Kernel failures.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Something the pod needs is missing or wrong (CHECK).
    #[error("{what} of {pod} is missing or wrong: {detail}")]
    Mismatch {
        /// The attachment.
        pod: String,
        /// What is wrong (veth, address, route, rule).
        what: &'static str,
        /// Details.
        detail: String,
    },
    /// A kernel request failed.
    #[error("{op} failed: {detail}")]
    Kernel {
        /// The operation, named like its `ip` command.
        op: &'static str,
        /// The error.
        detail: String,
    },
}

/// The kernel operations of the agent.
pub trait Dataplane: Send + Sync + 'static {
    /// Brings an ENI up and gives it its route table and rules
    /// (`ip link set ethN up; ip route add default via GW dev ethN table T`);
    /// returns its link's MTU (`ip link show ethN`), which the VPC set and
    /// its pods' veths take.
    fn program_eni(
        &self,
        eni: &EniRecord,
    ) -> impl Future<Output = Result<u32, DataplaneError>> + Send;
    /// Creates the pod's veth, address, routes, neighbour and rules
    /// (`ip link add ... type veth peer ... netns NS`, `ip addr`, `ip route`,
    /// `ip rule`). Idempotent.
    fn attach_pod(
        &self,
        pod: &PodSpec,
    ) -> impl Future<Output = Result<PodLinks, DataplaneError>> + Send;
    /// Verifies what `attach_pod` made is still there.
    fn check_pod(&self, pod: &PodSpec) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// Removes what `attach_pod` made; anything already gone is fine.
    fn detach_pod(&self, pod: &PodSpec) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// Programs the node's own part of the data path as configured: the
    /// connmark that sends replies of connections arriving on the primary
    /// ENI out by it (always), and the egress out of the VPC (masquerade
    /// outside the non-masquerade CIDRs, or nothing of it when off);
    /// idempotent, done at every start (`nft -f`, `ip rule add`).
    fn program_egress(&self) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// Verifies the connmark and egress are as
    /// [`program_egress`](Self::program_egress) left them (part of every
    /// CHECK; `nft list table ip vpc-cni`, `ip rule show`).
    fn check_egress(&self) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// Those of `pods` whose host veth is gone: their sandbox's network
    /// namespace was removed (the veth's pod end lived in it), so the
    /// attachment is dead whether or not its DEL ever came.
    fn vanished(
        &self,
        pods: &[PodSpec],
    ) -> impl Future<Output = Result<Vec<PodSpec>, DataplaneError>> + Send;
    /// Removes every veth, route and rule of ours that belongs to none of
    /// `keep`; returns how many objects it removed.
    fn collect_garbage(
        &self,
        keep: &[PodSpec],
    ) -> impl Future<Output = Result<u32, DataplaneError>> + Send;
}

/// The host-side veth name of an attachment: the prefix and 11 hex digits
/// of a hash of container id and ifname, 14 characters in all, stable across
/// restarts so DEL and GC find what ADD made.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!(
        "{HOST_VETH_PREFIX}{:011x}",
        fnv1a(&[container_id.as_bytes(), b"/", ifname.as_bytes()]) >> 20
    )
}

/// A locally administered unicast MAC derived from `seed`.
pub fn derived_mac(seed: &[&[u8]]) -> String {
    let h = fnv1a(seed).to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        h[0], h[1], h[2], h[3], h[4]
    )
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_linux_and_are_stable() {
        let a = host_ifname(
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "eth0",
        );
        assert_eq!(a.len(), 14);
        assert!(a.starts_with(HOST_VETH_PREFIX));
        assert_eq!(
            a,
            host_ifname(
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "eth0"
            )
        );
        assert_ne!(
            a,
            host_ifname(
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "net1"
            )
        );
        assert_ne!(host_ifname("c1", "eth0"), host_ifname("c2", "eth0"));
    }

    #[test]
    fn derived_macs_are_local_unicast() {
        let mac = derived_mac(&[b"x"]);
        assert!(mac.starts_with("02:"));
        assert_eq!(mac.len(), 17);
    }
}
