//! An in-memory cloud for the agent's unit tests: the `vpc-sim` model
//! without files, fabric or HTTP, seen as its first instance.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use vpc_sim::model::{Cidr, ModelError, Vpc};

use super::tencent::TAG_NODE;
use super::{Cloud, CloudError, Eni, Limits, NodeInfo, Subnet};

const INSTANCE: &str = "ins-test";
const SUBNET: &str = "subnet-test";

/// The fake; clones share one VPC, as agents restarting on one node do.
#[derive(Clone, Debug)]
pub struct FakeCloud {
    vpc: Arc<Mutex<Vpc>>,
    /// Calls that grew a pool (ENIs created, IPs assigned by count).
    pub growth_calls: Arc<std::sync::atomic::AtomicUsize>,
    /// The next migrate or assign by address takes effect but its reply
    /// is lost (the caller sees a timeout).
    pub lose_next_reply: Arc<std::sync::atomic::AtomicBool>,
    /// The next migrate or assign by address fails without effect.
    pub fail_next_move: Arc<std::sync::atomic::AtomicBool>,
    /// The next `AssignIpv6Addresses` by name takes effect but its reply
    /// is lost.
    pub lose_next_ipv6_reply: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeCloud {
    /// One instance with these limits in a /20.
    pub fn new(limits: Limits) -> FakeCloud {
        let mut vpc = Vpc::new("vpc-test", Cidr::parse("10.0.0.0/16").expect("cidr"), 1000);
        vpc.add_subnet(SUBNET, "zone-a", Cidr::parse("10.0.16.0/20").expect("cidr"))
            .expect("subnet");
        vpc.add_instance(
            INSTANCE,
            "zone-a",
            limits.max_enis,
            limits.max_ips_per_eni,
            SUBNET,
        )
        .expect("instance");
        FakeCloud {
            vpc: Arc::new(Mutex::new(vpc)),
            growth_calls: Arc::default(),
            lose_next_reply: Arc::default(),
            fail_next_move: Arc::default(),
            lose_next_ipv6_reply: Arc::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Vpc) -> Result<T, ModelError>) -> Result<T, CloudError> {
        f(&mut self.vpc.lock().unwrap_or_else(|p| p.into_inner())).map_err(|e| match e {
            ModelError::EniQuotaExceeded { .. } => CloudError::EniQuota(e.to_string()),
            ModelError::InstanceEniLimit { .. } => CloudError::EniLimit(e.to_string()),
            ModelError::EniIpLimit { .. } => CloudError::IpLimit(e.to_string()),
            ModelError::SubnetExhausted(_) => CloudError::SubnetExhausted(e.to_string()),
            ModelError::NotFound { .. } => CloudError::NotFound(e.to_string()),
            ModelError::ZoneMismatch { .. } => CloudError::ZoneMismatch(e.to_string()),
            ModelError::AddressInUse(_) => CloudError::AddressInUse(e.to_string()),
            other => CloudError::InvalidState(other.to_string()),
        })
    }
}

impl FakeCloud {
    /// The reply of a call that took effect: lost when so set.
    fn reply(&self) -> Result<(), CloudError> {
        Self::reply_unless(&self.lose_next_reply)
    }

    /// The reply of a call that took effect: lost when `lose` is set
    /// (which it clears).
    fn reply_unless(lose: &std::sync::atomic::AtomicBool) -> Result<(), CloudError> {
        if lose.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(CloudError::Other(
                "the VPC API did not answer in time (the call took effect)".into(),
            ));
        }
        Ok(())
    }

    /// A call refused before it took effect, when so set.
    fn refused(&self) -> Result<(), CloudError> {
        if self
            .fail_next_move
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(CloudError::Other("the VPC API is unavailable".into()));
        }
        Ok(())
    }

    /// Gives the VPC its IPv6 block and the subnet a /64 of it, as an
    /// operator does for dual stack.
    pub fn give_ipv6_blocks(&self) {
        let mut v = self.vpc.lock().unwrap_or_else(|p| p.into_inner());
        let block = v.assign_ipv6_block().expect("the VPC's block");
        v.assign_subnet_ipv6_blocks(&[(SUBNET.into(), format!("{}/64", block.network))])
            .expect("the subnet's /64");
    }

    /// The IPv6 addresses of ENI `id` as the cloud has them.
    pub fn ipv6_of(&self, id: &str) -> Vec<std::net::Ipv6Addr> {
        let v = self.vpc.lock().unwrap_or_else(|p| p.into_inner());
        v.enis
            .get(id)
            .map(|e| e.ipv6_addresses.clone())
            .unwrap_or_default()
    }

    /// Sets the VPC's ENI quota: every ENI created beyond it is refused.
    pub fn set_eni_quota(&self, quota: u32) {
        self.vpc.lock().unwrap_or_else(|p| p.into_inner()).eni_quota = quota;
    }

    /// How many ENIs of the whole VPC carry `ip`, attached or not.
    pub fn enis_carrying(&self, ip: Ipv4Addr) -> usize {
        let v = self.vpc.lock().unwrap_or_else(|p| p.into_inner());
        v.enis
            .values()
            .filter(|e| e.primary_ip == ip || e.secondary_ips.contains(&ip))
            .count()
    }

    /// Makes an ENI `secs` older.
    pub fn age_eni(&self, id: &str, secs: u64) {
        let mut v = self.vpc.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = v.enis.get_mut(id) {
            e.created_unix = e.created_unix.saturating_sub(secs);
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn to_eni(e: &vpc_sim::model::Eni) -> Eni {
    Eni {
        id: e.id.clone(),
        mac: e.mac.clone(),
        subnet_id: e.subnet_id.clone(),
        primary_ip: e.primary_ip,
        secondary_ips: e.secondary_ips.clone(),
        ipv6s: e.ipv6_addresses.clone(),
        primary: e.primary,
        attached_to: e.attached_to.clone(),
        created_unix: Some(e.created_unix),
    }
}

impl Cloud for FakeCloud {
    fn instance_id(&self) -> String {
        INSTANCE.into()
    }

    async fn node(&self) -> Result<NodeInfo, CloudError> {
        self.with(|v| {
            let ins = &v.instances[INSTANCE];
            let s = &v.subnets[SUBNET];
            Ok(NodeInfo {
                instance_id: INSTANCE.into(),
                zone: ins.zone.clone(),
                vpc_id: v.id.clone(),
                subnet: Some(Subnet {
                    id: s.id.clone(),
                    zone: s.zone.clone(),
                    gateway: s.gateway(),
                    network: s.cidr.network,
                    prefix_len: s.cidr.prefix,
                }),
                limits: Limits {
                    max_enis: ins.max_enis,
                    max_ips_per_eni: ins.max_ips_per_eni,
                },
                mtu: 1500,
            })
        })
    }

    async fn create_eni(&self, subnet_id: &str, ips: u32) -> Result<Eni, CloudError> {
        self.growth_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.with(|v| {
            let id = v.create_eni(subnet_id)?.id;
            if ips > 0 {
                v.assign_ips(&id, ips)?;
            }
            let eni = v.enis.get_mut(&id).expect("just created");
            eni.created_unix = unix_now();
            eni.tags.insert(TAG_NODE.into(), INSTANCE.into());
            Ok(to_eni(eni))
        })
    }

    async fn attach_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        self.with(|v| v.attach_eni(eni_id, INSTANCE).map(|_| ()))
    }

    async fn detach_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        self.with(|v| v.detach_eni(eni_id).map(|_| ()))
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        self.with(|v| v.delete_eni(eni_id))
    }

    async fn assign_ips(
        &self,
        eni_id: &str,
        count: u32,
        _held: &[Ipv4Addr],
    ) -> Result<Vec<Ipv4Addr>, CloudError> {
        // No answer is ever lost here, so `held` is never needed.
        self.growth_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.with(|v| v.assign_ips(eni_id, count))
    }

    async fn assign_named_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), CloudError> {
        self.refused()?;
        self.with(|v| v.assign_named_ips(eni_id, ips))?;
        self.reply()
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), CloudError> {
        self.with(|v| v.unassign_ips(eni_id, ips))
    }

    async fn assign_ipv6s(
        &self,
        eni_id: &str,
        count: u32,
        _held: &[Ipv6Addr],
    ) -> Result<Vec<Ipv6Addr>, CloudError> {
        self.with(|v| v.assign_ipv6(eni_id, &[], count))
    }

    async fn assign_named_ipv6s(&self, eni_id: &str, ips: &[Ipv6Addr]) -> Result<(), CloudError> {
        self.with(|v| v.assign_ipv6(eni_id, ips, 0).map(drop))?;
        Self::reply_unless(&self.lose_next_ipv6_reply)
    }

    async fn unassign_ipv6s(&self, eni_id: &str, ips: &[Ipv6Addr]) -> Result<(), CloudError> {
        self.with(|v| v.unassign_ipv6(eni_id, ips))
    }

    async fn migrate_ip(&self, from: &str, to: &str, ip: Ipv4Addr) -> Result<(), CloudError> {
        self.refused()?;
        self.with(|v| v.migrate_ip(from, to, ip))?;
        self.reply()
    }

    async fn list_cluster_enis(&self) -> Result<Vec<Eni>, CloudError> {
        self.with(|v| Ok(v.enis.values().filter(|e| !e.primary).map(to_eni).collect()))
    }

    async fn list_node_detached_enis(&self) -> Result<Vec<Eni>, CloudError> {
        self.with(|v| {
            Ok(v.enis
                .values()
                .filter(|e| e.attached_to.is_none() && !e.primary)
                .filter(|e| e.tags.get(TAG_NODE).map(String::as_str) == Some(INSTANCE))
                .map(to_eni)
                .collect())
        })
    }

    async fn list_enis(&self) -> Result<Vec<Eni>, CloudError> {
        self.with(|v| Ok(v.enis_of(INSTANCE).map(to_eni).collect()))
    }
}
