//! The VPC model: one VPC with a CIDR, subnets each in one availability
//! zone, instances each in a zone with ENI-count and IPs-per-ENI limits,
//! ENIs and their private IPs, and the VPC-wide ENI quota. Pure data: no
//! I/O, every rule of the cloud checked here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::ipv6::{Cidr6, Pool6};

/// The VPC ENI quota unless configured otherwise.
pub const DEFAULT_ENI_QUOTA: u32 = 1000;

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, refusing host bits.
    pub fn parse(s: &str) -> Result<Cidr, ModelError> {
        let bad = || ModelError::InvalidParameter(format!("invalid CIDR {s:?}"));
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let network: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 30 || u32::from(network) & !mask(prefix) != 0 {
            return Err(bad());
        }
        Ok(Cidr { network, prefix })
    }

    /// Number of addresses.
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// The `n`th address of the network.
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// Whether `other` lies within this network.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix
            && u32::from(other.network) & mask(self.prefix) == u32::from(self.network)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// A subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// Subnet id.
    pub id: String,
    /// Availability zone.
    pub zone: String,
    /// Its network.
    pub cidr: Cidr,
    /// Next never-used host offset.
    next_host: u32,
    /// Addresses given back, handed out again first.
    released: Vec<Ipv4Addr>,
    /// Addresses at or beyond `next_host` already taken by name; skipped
    /// when the sequence reaches them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    named: BTreeSet<Ipv4Addr>,
    /// Its IPv6 block and addresses, once it has one (`ipv6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Pool6>,
}

impl Subnet {
    /// The gateway: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.cidr.host(1)
    }

    /// Addresses still free.
    pub fn free_ips(&self) -> u32 {
        // Network, gateway and broadcast are never handed out.
        (self.cidr.size().saturating_sub(self.next_host + 1) + self.released.len() as u32)
            .saturating_sub(self.named.len() as u32)
    }

    /// Whether `ip` lies within this subnet.
    pub fn contains_ip(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.cidr.prefix) == u32::from(self.cidr.network)
    }

    fn take_ip(&mut self) -> Option<Ipv4Addr> {
        if let Some(ip) = self.released.pop() {
            return Some(ip);
        }
        loop {
            if self.next_host + 1 >= self.cidr.size() {
                return None;
            }
            let ip = self.cidr.host(self.next_host);
            self.next_host += 1;
            if !self.named.remove(&ip) {
                return Some(ip);
            }
        }
    }

    /// Takes `ip` by name: refused when outside the subnet, reserved
    /// (network, gateway, broadcast) or already in use.
    fn take_named(&mut self, ip: Ipv4Addr) -> Result<(), ModelError> {
        if !self.contains_ip(ip) {
            return Err(ModelError::AddressOutOfSubnet {
                ip,
                subnet: self.id.clone(),
                cidr: self.cidr,
            });
        }
        let offset = u32::from(ip) - u32::from(self.cidr.network);
        if offset < 2 || offset + 1 >= self.cidr.size() {
            return Err(ModelError::InvalidParameter(format!(
                "{ip} is reserved in subnet {}",
                self.id
            )));
        }
        if let Some(at) = self.released.iter().position(|r| *r == ip) {
            self.released.swap_remove(at);
            return Ok(());
        }
        if offset >= self.next_host && self.named.insert(ip) {
            return Ok(());
        }
        Err(ModelError::AddressInUse(ip))
    }

    /// Gives addresses back.
    fn release(&mut self, ips: impl IntoIterator<Item = Ipv4Addr>) {
        for ip in ips {
            // One taken by name ahead of the sequence becomes part of it again.
            if !self.named.remove(&ip) {
                self.released.push(ip);
            }
        }
    }
}

/// An instance (a node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Instance id.
    pub id: String,
    /// Availability zone.
    pub zone: String,
    /// ENIs it may have, the primary included.
    pub max_enis: u32,
    /// Private IPs per ENI, the ENI's primary IP included.
    pub max_ips_per_eni: u32,
}

impl Instance {
    /// Its instance type's name, as its Node is labelled
    /// (`node.kubernetes.io/instance-type`): instances of one type have the
    /// same limits, and the simulation names a type by them.
    pub fn type_name(&self) -> String {
        format!("SIM.E{}I{}", self.max_enis, self.max_ips_per_eni)
    }
}

/// An elastic network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eni {
    /// ENI id.
    pub id: String,
    /// Creation sequence number (names its fabric link).
    pub seq: u32,
    /// MAC address.
    pub mac: String,
    /// Subnet id.
    pub subnet_id: String,
    /// Primary private IP.
    pub primary_ip: Ipv4Addr,
    /// Secondary private IPs.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Whether it is an instance's primary ENI.
    pub primary: bool,
    /// The instance it is attached to.
    pub attached_to: Option<String>,
    /// Its device index on that instance (`eth<N>`).
    pub device_index: Option<u32>,
    /// Tags, such as the cluster and node that own it.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// When it was created (Unix seconds; 0 if unknown).
    #[serde(default)]
    pub created_unix: u64,
    /// Its IPv6 addresses (all secondary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6_addresses: Vec<Ipv6Addr>,
}

/// What the cloud refuses, with the reason it gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// No such object.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Object kind.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The VPC has its quota of ENIs.
    #[error("the VPC already has its quota of {quota} ENIs")]
    EniQuotaExceeded {
        /// The quota.
        quota: u32,
    },
    /// The instance has its maximum of ENIs.
    #[error("instance {instance} already has its limit of {limit} ENIs")]
    InstanceEniLimit {
        /// Instance id.
        instance: String,
        /// Limit.
        limit: u32,
    },
    /// The ENI cannot take more IPs.
    #[error("ENI {eni} cannot take {requested} more IPs (limit {limit} per ENI)")]
    EniIpLimit {
        /// ENI id.
        eni: String,
        /// Asked for.
        requested: u32,
        /// Limit.
        limit: u32,
    },
    /// The subnet has no free address.
    #[error("subnet {0} has no free IP")]
    SubnetExhausted(String),
    /// ENI and instance are in different zones.
    #[error("subnet zone {subnet_zone} does not match instance zone {instance_zone}")]
    ZoneMismatch {
        /// The ENI's subnet's zone.
        subnet_zone: String,
        /// The instance's zone.
        instance_zone: String,
    },
    /// The object is in the wrong state for the operation.
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// A parameter is malformed.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// A named address is already in use in the VPC.
    #[error("{0} is already in use")]
    AddressInUse(Ipv4Addr),
    /// A named address is outside the ENI's subnet.
    #[error("{ip} is outside subnet {subnet} ({cidr})")]
    AddressOutOfSubnet {
        /// The address.
        ip: Ipv4Addr,
        /// The ENI's subnet.
        subnet: String,
        /// Its CIDR.
        cidr: Cidr,
    },
    /// The VPC has its IPv6 block already (one per VPC).
    #[error("{0}")]
    Ipv6BlockAssigned(String),
    /// The subnet has its IPv6 block already (one per subnet).
    #[error("{0}")]
    SubnetIpv6BlockAssigned(String),
    /// The VPC, or the ENI's subnet, has no IPv6 block.
    #[error("{0}")]
    NoIpv6Block(String),
    /// A subnet's IPv6 block is not a /64 of the VPC's.
    #[error("{0}")]
    Ipv6SubnetRange(String),
    /// A subnet's IPv6 block is another subnet's.
    #[error("{0}")]
    Ipv6SubnetConflict(String),
    /// The ENI cannot take more IPv6 addresses.
    #[error("ENI {eni} cannot take {requested} more IPv6 addresses (limit {limit} per ENI)")]
    Ipv6Limit {
        /// ENI id.
        eni: String,
        /// Asked for.
        requested: u32,
        /// Limit.
        limit: u32,
    },
    /// A named IPv6 address is in use.
    #[error("{0} is already in use")]
    Ipv6InUse(Ipv6Addr),
    /// A named IPv6 address is outside the ENI's subnet's block.
    #[error("{ip} is outside subnet {subnet}'s IPv6 block {cidr}")]
    Ipv6OutOfSubnet {
        /// The address.
        ip: Ipv6Addr,
        /// The ENI's subnet.
        subnet: String,
        /// Its IPv6 block.
        cidr: Cidr6,
    },
    /// A named IPv6 address is the subnet router's or the gateway's.
    #[error("{0} is reserved")]
    Ipv6Reserved(Ipv6Addr),
    /// An IPv6 address to take off is not on the ENI.
    #[error("{ip} is not an address of {eni}")]
    Ipv6NotOnEni {
        /// The address.
        ip: Ipv6Addr,
        /// The ENI.
        eni: String,
    },
}

/// The VPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vpc {
    /// VPC id.
    pub id: String,
    /// Its CIDR.
    pub cidr: Cidr,
    /// How many ENIs the VPC may hold.
    pub eni_quota: u32,
    /// Subnets by id.
    pub subnets: BTreeMap<String, Subnet>,
    /// Instances by id.
    pub instances: BTreeMap<String, Instance>,
    /// ENIs by id.
    pub enis: BTreeMap<String, Eni>,
    next_eni: u32,
    /// Its IPv6 block, once it has one (`ipv6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_block: Option<Cidr6>,
}

impl Vpc {
    /// An empty VPC.
    pub fn new(id: &str, cidr: Cidr, eni_quota: u32) -> Vpc {
        Vpc {
            id: id.into(),
            cidr,
            eni_quota,
            subnets: BTreeMap::new(),
            instances: BTreeMap::new(),
            enis: BTreeMap::new(),
            next_eni: 0,
            ipv6_block: None,
        }
    }

    /// Adds a subnet inside the VPC's CIDR.
    pub fn add_subnet(&mut self, id: &str, zone: &str, cidr: Cidr) -> Result<&Subnet, ModelError> {
        if !self.cidr.contains(&cidr) {
            return Err(ModelError::InvalidParameter(format!(
                "{cidr} is outside the VPC's {}",
                self.cidr
            )));
        }
        if self
            .subnets
            .values()
            .any(|s| s.cidr.contains(&cidr) || cidr.contains(&s.cidr))
        {
            return Err(ModelError::InvalidParameter(format!(
                "{cidr} overlaps another subnet"
            )));
        }
        let subnet = Subnet {
            id: id.into(),
            zone: zone.into(),
            cidr,
            next_host: 2,
            released: Vec::new(),
            named: BTreeSet::new(),
            ipv6: None,
        };
        Ok(self.subnets.entry(id.into()).or_insert(subnet))
    }

    /// Adds an instance with its primary ENI (device 0) in `subnet_id`.
    pub fn add_instance(
        &mut self,
        id: &str,
        zone: &str,
        max_enis: u32,
        max_ips_per_eni: u32,
        subnet_id: &str,
    ) -> Result<Eni, ModelError> {
        if max_enis < 1 || max_ips_per_eni < 1 {
            return Err(ModelError::InvalidParameter(
                "an instance needs at least one ENI and one IP".into(),
            ));
        }
        self.instances.insert(
            id.into(),
            Instance {
                id: id.into(),
                zone: zone.into(),
                max_enis,
                max_ips_per_eni,
            },
        );
        let eni = self.create_eni(subnet_id)?;
        self.enis.get_mut(&eni.id).expect("just created").primary = true;
        self.attach_eni(&eni.id, id)?;
        Ok(self.enis[&eni.id].clone())
    }

    /// Creates an ENI with a primary IP in `subnet_id`.
    pub fn create_eni(&mut self, subnet_id: &str) -> Result<Eni, ModelError> {
        if self.enis.len() as u32 >= self.eni_quota {
            return Err(ModelError::EniQuotaExceeded {
                quota: self.eni_quota,
            });
        }
        let subnet = self
            .subnets
            .get_mut(subnet_id)
            .ok_or_else(|| not_found("subnet", subnet_id))?;
        let primary_ip = subnet
            .take_ip()
            .ok_or_else(|| ModelError::SubnetExhausted(subnet_id.into()))?;
        self.next_eni += 1;
        let seq = self.next_eni;
        let eni = Eni {
            id: format!("eni-{seq:08x}"),
            seq,
            mac: format!(
                "02:56:50:{:02x}:{:02x}:{:02x}",
                (seq >> 16) & 0xff,
                (seq >> 8) & 0xff,
                seq & 0xff
            ),
            subnet_id: subnet_id.into(),
            primary_ip,
            secondary_ips: Vec::new(),
            primary: false,
            attached_to: None,
            device_index: None,
            tags: BTreeMap::new(),
            created_unix: 0,
            ipv6_addresses: Vec::new(),
        };
        self.enis.insert(eni.id.clone(), eni.clone());
        Ok(eni)
    }

    /// Attaches an ENI to an instance in the same zone; returns the device
    /// index (the lowest free one).
    pub fn attach_eni(&mut self, eni_id: &str, instance_id: &str) -> Result<u32, ModelError> {
        let instance = self
            .instances
            .get(instance_id)
            .ok_or_else(|| not_found("instance", instance_id))?
            .clone();
        let eni = self
            .enis
            .get(eni_id)
            .ok_or_else(|| not_found("ENI", eni_id))?;
        if let Some(other) = &eni.attached_to {
            return Err(ModelError::InvalidState(format!(
                "ENI {eni_id} is already attached to {other}"
            )));
        }
        let subnet_zone = self.subnets[&eni.subnet_id].zone.clone();
        if subnet_zone != instance.zone {
            return Err(ModelError::ZoneMismatch {
                subnet_zone,
                instance_zone: instance.zone,
            });
        }
        let used: Vec<u32> = self
            .enis_of(instance_id)
            .filter_map(|e| e.device_index)
            .collect();
        if used.len() as u32 >= instance.max_enis {
            return Err(ModelError::InstanceEniLimit {
                instance: instance_id.into(),
                limit: instance.max_enis,
            });
        }
        let index = (0..)
            .find(|i| !used.contains(i))
            .expect("a free index below the limit");
        let eni = self.enis.get_mut(eni_id).expect("checked above");
        eni.attached_to = Some(instance_id.into());
        eni.device_index = Some(index);
        Ok(index)
    }

    /// Detaches a secondary ENI.
    pub fn detach_eni(&mut self, eni_id: &str) -> Result<Eni, ModelError> {
        let eni = self
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| not_found("ENI", eni_id))?;
        if eni.primary {
            return Err(ModelError::InvalidState(format!(
                "{eni_id} is a primary ENI"
            )));
        }
        if eni.attached_to.is_none() {
            return Err(ModelError::InvalidState(format!(
                "{eni_id} is not attached"
            )));
        }
        let before = eni.clone();
        eni.attached_to = None;
        eni.device_index = None;
        Ok(before)
    }

    /// Deletes a detached ENI and returns its addresses to the subnet.
    pub fn delete_eni(&mut self, eni_id: &str) -> Result<(), ModelError> {
        let eni = self
            .enis
            .get(eni_id)
            .ok_or_else(|| not_found("ENI", eni_id))?;
        if eni.attached_to.is_some() {
            return Err(ModelError::InvalidState(format!(
                "{eni_id} is attached; detach it first"
            )));
        }
        let eni = self.enis.remove(eni_id).expect("checked above");
        let subnet = self
            .subnets
            .get_mut(&eni.subnet_id)
            .expect("ENI subnets exist");
        subnet.release(std::iter::once(eni.primary_ip).chain(eni.secondary_ips));
        if let Some(pool) = subnet.ipv6.as_mut() {
            pool.release(eni.ipv6_addresses);
        }
        Ok(())
    }

    /// Assigns `count` secondary IPs from the ENI's subnet.
    pub fn assign_ips(&mut self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, ModelError> {
        let eni = self
            .enis
            .get(eni_id)
            .ok_or_else(|| not_found("ENI", eni_id))?;
        if let Some(limit) = eni
            .attached_to
            .as_ref()
            .map(|i| self.instances[i].max_ips_per_eni)
        {
            let held = 1 + eni.secondary_ips.len() as u32;
            if held + count > limit {
                return Err(ModelError::EniIpLimit {
                    eni: eni_id.into(),
                    requested: count,
                    limit,
                });
            }
        }
        let subnet_id = eni.subnet_id.clone();
        let subnet = self.subnets.get_mut(&subnet_id).expect("ENI subnets exist");
        if subnet.free_ips() < count {
            return Err(ModelError::SubnetExhausted(subnet_id));
        }
        let ips: Vec<Ipv4Addr> = (0..count).filter_map(|_| subnet.take_ip()).collect();
        self.enis
            .get_mut(eni_id)
            .expect("checked above")
            .secondary_ips
            .extend(&ips);
        Ok(ips)
    }

    /// Assigns the named addresses as secondary IPs of the ENI, all or none:
    /// each must lie in the ENI's subnet and be free.
    pub fn assign_named_ips(&mut self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), ModelError> {
        let eni = self
            .enis
            .get(eni_id)
            .ok_or_else(|| not_found("ENI", eni_id))?;
        let requested = ips.len() as u32;
        if let Some(limit) = eni
            .attached_to
            .as_ref()
            .map(|i| self.instances[i].max_ips_per_eni)
            && 1 + eni.secondary_ips.len() as u32 + requested > limit
        {
            return Err(ModelError::EniIpLimit {
                eni: eni_id.into(),
                requested,
                limit,
            });
        }
        let mut subnet = self.subnets[&eni.subnet_id].clone();
        for ip in ips {
            subnet.take_named(*ip)?;
        }
        self.subnets.insert(subnet.id.clone(), subnet);
        self.enis
            .get_mut(eni_id)
            .expect("checked above")
            .secondary_ips
            .extend(ips);
        Ok(())
    }

    /// Unassigns secondary IPs; addresses the ENI does not hold are refused.
    pub fn unassign_ips(&mut self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), ModelError> {
        let eni = self
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| not_found("ENI", eni_id))?;
        if let Some(ip) = ips.iter().find(|ip| !eni.secondary_ips.contains(ip)) {
            return Err(ModelError::InvalidParameter(format!(
                "{ip} is not a secondary IP of {eni_id}"
            )));
        }
        eni.secondary_ips.retain(|ip| !ips.contains(ip));
        let subnet = self
            .subnets
            .get_mut(&eni.subnet_id)
            .expect("ENI subnets exist");
        subnet.release(ips.iter().copied());
        Ok(())
    }

    /// Moves a secondary IP to another ENI of the same subnet.
    pub fn migrate_ip(&mut self, from: &str, to: &str, ip: Ipv4Addr) -> Result<(), ModelError> {
        let source = self.enis.get(from).ok_or_else(|| not_found("ENI", from))?;
        if !source.secondary_ips.contains(&ip) {
            return Err(ModelError::InvalidParameter(format!(
                "{ip} is not a secondary IP of {from}"
            )));
        }
        let dest = self.enis.get(to).ok_or_else(|| not_found("ENI", to))?;
        if dest.subnet_id != source.subnet_id {
            return Err(ModelError::InvalidParameter(format!(
                "{from} and {to} are in different subnets"
            )));
        }
        if let Some(limit) = dest
            .attached_to
            .as_ref()
            .map(|i| self.instances[i].max_ips_per_eni)
            && 2 + dest.secondary_ips.len() as u32 > limit
        {
            return Err(ModelError::EniIpLimit {
                eni: to.into(),
                requested: 1,
                limit,
            });
        }
        self.enis
            .get_mut(from)
            .expect("checked")
            .secondary_ips
            .retain(|x| *x != ip);
        self.enis
            .get_mut(to)
            .expect("checked")
            .secondary_ips
            .push(ip);
        Ok(())
    }

    /// The ENIs attached to an instance.
    pub fn enis_of<'a>(&'a self, instance_id: &'a str) -> impl Iterator<Item = &'a Eni> + 'a {
        self.enis
            .values()
            .filter(move |e| e.attached_to.as_deref() == Some(instance_id))
    }

    /// The subnets of a zone, most free addresses first.
    pub fn subnets_in_zone(&self, zone: &str) -> Vec<&Subnet> {
        let mut v: Vec<&Subnet> = self.subnets.values().filter(|s| s.zone == zone).collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.free_ips()));
        v
    }
}

fn not_found(kind: &'static str, id: &str) -> ModelError {
    ModelError::NotFound {
        kind,
        id: id.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vpc() -> Vpc {
        let mut v = Vpc::new("vpc-1", Cidr::parse("10.0.0.0/16").expect("cidr"), 6);
        v.add_subnet(
            "subnet-a",
            "zone-a",
            Cidr::parse("10.0.16.0/28").expect("cidr"),
        )
        .expect("subnet");
        v.add_subnet(
            "subnet-b",
            "zone-b",
            Cidr::parse("10.0.32.0/24").expect("cidr"),
        )
        .expect("subnet");
        v
    }

    #[test]
    fn named_addresses_are_taken_once_and_only_in_their_subnet() {
        let mut v = vpc();
        let eni = v.create_eni("subnet-a").expect("eni").id;
        let ahead = Ipv4Addr::new(10, 0, 16, 9);
        v.assign_named_ips(&eni, &[ahead]).expect("a free address");
        assert_eq!(
            v.assign_named_ips(&eni, &[ahead]),
            Err(ModelError::AddressInUse(ahead))
        );
        let primary = v.enis[&eni].primary_ip;
        assert_eq!(
            v.assign_named_ips(&eni, &[primary]),
            Err(ModelError::AddressInUse(primary))
        );
        assert!(matches!(
            v.assign_named_ips(&eni, &[Ipv4Addr::new(10, 0, 32, 5)]),
            Err(ModelError::AddressOutOfSubnet { .. })
        ));
        assert!(matches!(
            v.assign_named_ips(&eni, &[Ipv4Addr::new(10, 0, 16, 1)]),
            Err(ModelError::InvalidParameter(_))
        ));
        // All or none: the free one of a refused pair stays free.
        let free = Ipv4Addr::new(10, 0, 16, 12);
        assert!(v.assign_named_ips(&eni, &[free, ahead]).is_err());
        // The sequence never hands out a named address.
        let before = v.subnets["subnet-a"].free_ips();
        let got = v.assign_ips(&eni, before).expect("the rest");
        assert!(!got.contains(&ahead) && got.contains(&free), "{got:?}");
        assert_eq!(v.subnets["subnet-a"].free_ips(), 0);
        // Given back, it is free again, once.
        v.unassign_ips(&eni, &[ahead]).expect("unassign");
        assert_eq!(v.subnets["subnet-a"].free_ips(), 1);
        v.assign_named_ips(&eni, &[ahead]).expect("free again");
        assert_eq!(v.subnets["subnet-a"].free_ips(), 0);
    }

    #[test]
    fn cidrs() {
        assert!(Cidr::parse("10.0.0.1/16").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        let c = Cidr::parse("10.0.16.0/20").expect("cidr");
        assert_eq!(c.host(1), Ipv4Addr::new(10, 0, 16, 1));
        assert!(Cidr::parse("10.0.0.0/16").expect("cidr").contains(&c));
        assert!(!c.contains(&Cidr::parse("10.0.0.0/16").expect("cidr")));
    }

    #[test]
    fn instances_get_a_primary_eni_at_device_zero() {
        let mut v = vpc();
        let eni = v
            .add_instance("ins-1", "zone-a", 3, 4, "subnet-a")
            .expect("instance");
        assert!(eni.primary);
        assert_eq!(eni.device_index, Some(0));
        assert_eq!(eni.primary_ip, Ipv4Addr::new(10, 0, 16, 2));
    }

    #[test]
    fn attach_checks_zone_and_instance_limit() {
        let mut v = vpc();
        v.add_instance("ins-1", "zone-a", 2, 4, "subnet-a")
            .expect("instance");
        let wrong = v.create_eni("subnet-b").expect("eni");
        assert!(matches!(
            v.attach_eni(&wrong.id, "ins-1"),
            Err(ModelError::ZoneMismatch { .. })
        ));
        let ok = v.create_eni("subnet-a").expect("eni");
        assert_eq!(v.attach_eni(&ok.id, "ins-1"), Ok(1));
        let third = v.create_eni("subnet-a").expect("eni");
        assert!(matches!(
            v.attach_eni(&third.id, "ins-1"),
            Err(ModelError::InstanceEniLimit { limit: 2, .. })
        ));
    }

    #[test]
    fn ip_limits_and_subnet_exhaustion() {
        let mut v = vpc();
        v.add_instance("ins-1", "zone-a", 3, 4, "subnet-a")
            .expect("instance");
        let eni = v.create_eni("subnet-a").expect("eni");
        v.attach_eni(&eni.id, "ins-1").expect("attach");
        assert_eq!(v.assign_ips(&eni.id, 3).expect("assign").len(), 3);
        assert!(matches!(
            v.assign_ips(&eni.id, 1),
            Err(ModelError::EniIpLimit { .. })
        ));
        // A /28 has 13 usable addresses beyond the gateway; 5 are used.
        let big = v.create_eni("subnet-a").expect("eni");
        assert!(matches!(
            v.assign_ips(&big.id, 20),
            Err(ModelError::SubnetExhausted(_))
        ));
    }

    #[test]
    fn the_quota_counts_every_eni_in_the_vpc() {
        let mut v = vpc();
        for _ in 0..6 {
            v.create_eni("subnet-b").expect("eni");
        }
        assert_eq!(
            v.create_eni("subnet-b"),
            Err(ModelError::EniQuotaExceeded { quota: 6 })
        );
    }

    #[test]
    fn deleted_enis_return_their_addresses() {
        let mut v = vpc();
        let eni = v.create_eni("subnet-b").expect("eni");
        let ips = v.assign_ips(&eni.id, 2).expect("assign");
        assert!(v.delete_eni(&eni.id).is_ok());
        let again = v.create_eni("subnet-b").expect("eni");
        let more = v.assign_ips(&again.id, 2).expect("assign");
        let reused: Vec<_> = more
            .iter()
            .chain([&again.primary_ip])
            .filter(|ip| ips.contains(ip) || **ip == eni.primary_ip)
            .collect();
        assert!(!reused.is_empty());
    }

    #[test]
    fn attached_enis_cannot_be_deleted_and_primaries_cannot_be_detached() {
        let mut v = vpc();
        let primary = v
            .add_instance("ins-1", "zone-a", 3, 4, "subnet-a")
            .expect("instance");
        assert!(matches!(
            v.detach_eni(&primary.id),
            Err(ModelError::InvalidState(_))
        ));
        let eni = v.create_eni("subnet-a").expect("eni");
        v.attach_eni(&eni.id, "ins-1").expect("attach");
        assert!(matches!(
            v.delete_eni(&eni.id),
            Err(ModelError::InvalidState(_))
        ));
        v.detach_eni(&eni.id).expect("detach");
        assert!(v.delete_eni(&eni.id).is_ok());
    }

    #[test]
    fn unassign_refuses_foreign_addresses() {
        let mut v = vpc();
        let eni = v.create_eni("subnet-b").expect("eni");
        let ips = v.assign_ips(&eni.id, 2).expect("assign");
        assert!(
            v.unassign_ips(&eni.id, &[Ipv4Addr::new(1, 2, 3, 4)])
                .is_err()
        );
        v.unassign_ips(&eni.id, &ips[..1]).expect("unassign");
        assert_eq!(v.enis[&eni.id].secondary_ips, ips[1..]);
    }
}
