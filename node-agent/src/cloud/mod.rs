//! The cloud operations the pool needs, behind one trait, implemented by
//! the Tencent Cloud VPC API client ([`TencentCloud`]); `vpc-sim serve`
//! answers that same API for simulations and tests.

#[cfg(test)]
pub mod fake;
pub mod tencent;

pub use tencent::TencentCloud;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// Subnet id.
    pub id: String,
    /// Availability zone.
    pub zone: String,
    /// The gateway address (first host of the CIDR).
    pub gateway: Ipv4Addr,
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
}

/// Per-instance ENI limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// ENIs per instance, the primary ENI included.
    pub max_enis: u32,
    /// Private IPs per ENI, the ENI's primary IP included.
    pub max_ips_per_eni: u32,
}

/// What the agent needs to know about its own node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Instance id.
    pub instance_id: String,
    /// Availability zone.
    pub zone: String,
    /// VPC id.
    pub vpc_id: String,
    /// The subnet secondary ENIs are created in; `None` when the node's
    /// zone has none it may use.
    pub subnet: Option<Subnet>,
    /// The instance's limits.
    pub limits: Limits,
    /// MTU of the node's ENIs.
    pub mtu: u32,
}

/// An ENI as the cloud reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eni {
    /// ENI id.
    pub id: String,
    /// MAC address.
    pub mac: String,
    /// Subnet id.
    pub subnet_id: String,
    /// The ENI's primary IP.
    pub primary_ip: Ipv4Addr,
    /// Secondary IPs.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// IPv6 addresses (`Ipv6AddressSet`), from its subnet's /64.
    pub ipv6s: Vec<Ipv6Addr>,
    /// Whether it is the instance's primary ENI.
    pub primary: bool,
    /// The instance it is attached to, if any.
    pub attached_to: Option<String>,
    /// When it was created (Unix seconds), if the cloud says.
    pub created_unix: Option<u64>,
}

/// Cloud failures, typed where the pool acts on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// The VPC has used up its ENI quota.
    #[error("the VPC's ENI quota is used up ({0})")]
    EniQuota(String),
    /// The instance already has its maximum number of ENIs.
    #[error("the instance is at its ENI limit ({0})")]
    EniLimit(String),
    /// The ENI already holds its maximum number of IPs.
    #[error("the ENI is at its IP limit ({0})")]
    IpLimit(String),
    /// The subnet has no free address.
    #[error("the subnet has no free IP ({0})")]
    SubnetExhausted(String),
    /// No subnet of the node's zone may be used.
    #[error("no subnet in zone {0} to take ENIs from")]
    NoSubnetInZone(String),
    /// The ENI's subnet is not in the node's zone.
    #[error("zone mismatch: {0}")]
    ZoneMismatch(String),
    /// No such object.
    #[error("not found: {0}")]
    NotFound(String),
    /// The object is in the wrong state, or the request is not allowed.
    #[error("{0}")]
    InvalidState(String),
    /// Throttled even after retries.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The credentials were refused.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// `DescribeNetworkInterfaceLimit` gave no limit, or zero, for the
    /// named field.
    #[error(
        "DescribeNetworkInterfaceLimit gave no {0} for this instance: its ENI limits are unknown"
    )]
    LimitsMissing(&'static str),
    /// A named address is already in use (`ResourceInUse`).
    #[error("address in use: {0}")]
    AddressInUse(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// The VPC operations the pool uses.
pub trait Cloud: Send + Sync + 'static {
    /// This node's instance id, known without asking the VPC API.
    fn instance_id(&self) -> String;
    /// This node's zone, subnet and limits.
    fn node(&self) -> impl Future<Output = Result<NodeInfo, CloudError>> + Send;
    /// [`node`](Self::node), with ENIs allowed only from `subnets` (an
    /// operator's override of the configured list; empty: as configured).
    /// A cloud without configured subnets answers as `node` does.
    fn node_in(
        &self,
        subnets: &[String],
    ) -> impl Future<Output = Result<NodeInfo, CloudError>> + Send {
        let _ = subnets;
        self.node()
    }
    /// Looks again at the free addresses of the subnets
    /// [`node_in`](Self::node_in) chooses among (same `subnets`), for the
    /// metrics (`vpc_cni_subnet_free_ips`): the choice itself is kept. A
    /// cloud that cannot tell does nothing.
    fn refresh_subnets(
        &self,
        subnets: &[String],
    ) -> impl Future<Output = Result<(), CloudError>> + Send {
        let _ = subnets;
        async { Ok(()) }
    }
    /// Creates an ENI (with its primary IP) in `subnet_id` with `ips`
    /// secondary IPs.
    fn create_eni(
        &self,
        subnet_id: &str,
        ips: u32,
    ) -> impl Future<Output = Result<Eni, CloudError>> + Send;
    /// Attaches an ENI to this node. Safe to retry: an ENI already
    /// attached to this node (an earlier attempt that took effect) is
    /// success; attached to another node, an error.
    fn attach_eni(&self, eni_id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Detaches an ENI from this node.
    fn detach_eni(&self, eni_id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Deletes a detached ENI.
    fn delete_eni(&self, eni_id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Assigns `count` new secondary IPs to an ENI whose secondary IPs the
    /// caller knows to be `held`; returns the new ones. Safe to retry: when
    /// an attempt's outcome is unknown, the IPs the ENI has beyond `held`
    /// are taken as its result instead of assigning again.
    fn assign_ips(
        &self,
        eni_id: &str,
        count: u32,
        held: &[Ipv4Addr],
    ) -> impl Future<Output = Result<Vec<Ipv4Addr>, CloudError>> + Send;
    /// Assigns these addresses, by name, as secondary IPs of an ENI (a
    /// static claim whose IP vanished). Each must lie in the ENI's subnet
    /// ([`CloudError::InvalidState`] otherwise) and be free
    /// ([`CloudError::AddressInUse`] otherwise).
    fn assign_named_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Unassigns secondary IPs from an ENI.
    fn unassign_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Moves a secondary IP to another ENI of the same subnet, on this node
    /// or another (how a static IP follows its pod to another node).
    /// `AssignIpv6Addresses` by count: `count` more IPv6 addresses on the
    /// ENI from its subnet's /64 (at most as many as it may hold private
    /// IPv4 addresses); `held` are its IPv6 addresses before, to tell what
    /// an attempt whose answer was lost assigned. Returns the new ones.
    fn assign_ipv6s(
        &self,
        eni_id: &str,
        count: u32,
        held: &[Ipv6Addr],
    ) -> impl Future<Output = Result<Vec<Ipv6Addr>, CloudError>> + Send;
    /// `AssignIpv6Addresses` by name (a static pod's IPv6 address on the
    /// ENI of the node it moved to: the API has no migrate for IPv6);
    /// done when all are on the ENI.
    fn assign_named_ipv6s(
        &self,
        eni_id: &str,
        ips: &[Ipv6Addr],
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// `UnassignIpv6Addresses`: done when none of `ips` is on the ENI.
    fn unassign_ipv6s(
        &self,
        eni_id: &str,
        ips: &[Ipv6Addr],
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    fn migrate_ip(
        &self,
        from: &str,
        to: &str,
        ip: Ipv4Addr,
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// The ENIs this cluster's agents created (by tag), wherever they are.
    /// For the cluster component, which sweeps for nodes that are gone: an
    /// agent must not list the whole cluster (the answer grows with it).
    fn list_cluster_enis(&self) -> impl Future<Output = Result<Vec<Eni>, CloudError>> + Send;
    /// The ENIs created for this node (tag `vpc-cni/node`) that are
    /// attached nowhere: what this node's agent may have leaked.
    fn list_node_detached_enis(&self) -> impl Future<Output = Result<Vec<Eni>, CloudError>> + Send;
    /// The ENIs attached to this node.
    fn list_enis(&self) -> impl Future<Output = Result<Vec<Eni>, CloudError>> + Send;
    /// Whether pods are waiting for what the calls from now on bring: a
    /// cloud whose changes complete asynchronously then looks at them
    /// sooner, spending more calls for less waiting.
    fn set_urgent(&self, urgent: bool) {
        let _ = urgent;
    }
}
