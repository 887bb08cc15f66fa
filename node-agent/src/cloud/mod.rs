//! The cloud operations the pool needs, behind one trait. The simulated
//! VPC of `vpc-sim` ([`SimCloud`]) implements it today; the Tencent Cloud
//! VPC API client will implement the same trait.

mod sim;

pub use sim::SimCloud;

use std::future::Future;
use std::net::Ipv4Addr;

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
    /// The subnet secondary ENIs are created in.
    pub subnet: Subnet,
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
    /// Whether it is the instance's primary ENI.
    pub primary: bool,
    /// The instance it is attached to, if any.
    pub attached_to: Option<String>,
}

/// Cloud failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// The VPC has used up its ENI quota.
    #[error("the VPC's ENI quota of {quota} is used up")]
    EniQuota {
        /// The quota.
        quota: u32,
    },
    /// The instance already has its maximum number of ENIs.
    #[error("instance {instance} already has its limit of {limit} ENIs")]
    EniLimit {
        /// Instance id.
        instance: String,
        /// The limit.
        limit: u32,
    },
    /// The ENI already holds its maximum number of IPs.
    #[error("ENI {eni} cannot take {requested} more IPs (limit {limit} per ENI)")]
    IpLimit {
        /// ENI id.
        eni: String,
        /// IPs asked for.
        requested: u32,
        /// The limit.
        limit: u32,
    },
    /// The subnet has no free address.
    #[error("subnet {0} has no free IP left")]
    SubnetExhausted(String),
    /// No such object.
    #[error("{0} not found")]
    NotFound(String),
    /// The object is in the wrong state, or the request is not allowed.
    #[error("{0}")]
    InvalidState(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// The VPC operations the pool uses.
pub trait Cloud: Send + Sync + 'static {
    /// This node's zone, subnet and limits.
    fn node(&self) -> impl Future<Output = Result<NodeInfo, CloudError>> + Send;
    /// Creates an ENI (with its primary IP) in `subnet_id`.
    fn create_eni(&self, subnet_id: &str) -> impl Future<Output = Result<Eni, CloudError>> + Send;
    /// Attaches an ENI to this node.
    fn attach_eni(&self, eni_id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Detaches an ENI from this node.
    fn detach_eni(&self, eni_id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Deletes a detached ENI.
    fn delete_eni(&self, eni_id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Assigns `count` new secondary IPs to an ENI; returns them.
    fn assign_ips(
        &self,
        eni_id: &str,
        count: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Addr>, CloudError>> + Send;
    /// Unassigns secondary IPs from an ENI.
    fn unassign_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// The ENIs attached to this node.
    fn list_enis(&self) -> impl Future<Output = Result<Vec<Eni>, CloudError>> + Send;
}
