//! IPv6 in the VPC model, as Tencent's VPC API has it: the VPC is given
//! one /56 (`AssignIpv6CidrBlock`), a subnet one /64 of it
//! (`AssignIpv6SubnetCidrBlock`), and an ENI secondary addresses of its
//! subnet's /64 (`AssignIpv6Addresses`, named or a count; never primary),
//! at most as many as it may hold private IPv4 addresses. Nothing moves an
//! IPv6 address between ENIs: the API has no migrate for it, only an
//! unassign from one and an assign to the other. Pure data, like `model`.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

use crate::model::{ModelError, Vpc};

/// The block the VPC is given (the cloud chooses it; a real one is a /56 of
/// Tencent's `2402:4e00::/32`).
pub const VPC_BLOCK: &str = "2402:4e00:1c00:9a00::/56";

/// An IPv6 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr6 {
    /// Network address.
    pub network: Ipv6Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr6 {
    /// Parses `x:y::/n`, refusing host bits.
    pub fn parse(s: &str) -> Result<Cidr6, ModelError> {
        let bad = || ModelError::InvalidParameter(format!("invalid IPv6 CIDR {s:?}"));
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let network: Ipv6Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 128 || u128::from(network) & !mask(prefix) != 0 {
            return Err(bad());
        }
        Ok(Cidr6 { network, prefix })
    }

    /// Whether `ip` lies within this network.
    pub fn contains_ip(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask(self.prefix) == u128::from(self.network)
    }

    /// Whether `other` lies within this network.
    pub fn contains(&self, other: &Cidr6) -> bool {
        other.prefix >= self.prefix && self.contains_ip(other.network)
    }

    /// The `n`th address of the network.
    pub fn host(&self, n: u128) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network) + n)
    }
}

impl std::fmt::Display for Cidr6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

/// The addresses of a subnet's /64: handed out in order from `::2` (`::`
/// and `::1`, the subnet router and the gateway, are never). A given-back
/// address is free to be taken by name but never handed out by count
/// again: a /64 does not run out, and a cloud picking addresses in one does
/// not hand the address just given back to the next caller (a static
/// pod's IPv6 address, given back by one node for another to take by name,
/// relies on no more than that).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool6 {
    /// The subnet's block.
    pub cidr: Cidr6,
    next_host: u64,
    released: Vec<Ipv6Addr>,
    /// Addresses at or beyond `next_host` already taken by name.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    named: BTreeSet<Ipv6Addr>,
}

/// The first host handed out: `::` and `::1` are the router's.
const FIRST_HOST: u64 = 2;

impl Pool6 {
    /// The pool of `cidr`, nothing taken.
    pub fn new(cidr: Cidr6) -> Pool6 {
        Pool6 {
            cidr,
            next_host: FIRST_HOST,
            released: Vec::new(),
            named: BTreeSet::new(),
        }
    }

    fn offset(&self, ip: Ipv6Addr) -> u128 {
        u128::from(ip) - u128::from(self.cidr.network)
    }

    /// The next address never handed out.
    fn take(&mut self) -> Ipv6Addr {
        loop {
            let ip = self.cidr.host(u128::from(self.next_host));
            self.next_host += 1;
            if !self.named.remove(&ip) {
                return ip;
            }
        }
    }

    /// Whether `ip` is free to be taken by name; the reason when not.
    fn check_named(&self, ip: Ipv6Addr, subnet: &str) -> Result<(), ModelError> {
        if !self.cidr.contains_ip(ip) {
            return Err(ModelError::Ipv6OutOfSubnet {
                ip,
                subnet: subnet.into(),
                cidr: self.cidr,
            });
        }
        let offset = self.offset(ip);
        if offset < u128::from(FIRST_HOST) {
            return Err(ModelError::Ipv6Reserved(ip));
        }
        if self.released.contains(&ip)
            || (offset >= u128::from(self.next_host) && !self.named.contains(&ip))
        {
            return Ok(());
        }
        Err(ModelError::Ipv6InUse(ip))
    }

    /// Takes `ip` by name (checked first).
    fn take_named(&mut self, ip: Ipv6Addr) {
        if let Some(at) = self.released.iter().position(|r| *r == ip) {
            self.released.swap_remove(at);
        } else {
            self.named.insert(ip);
        }
    }

    /// Gives addresses back.
    pub fn release(&mut self, ips: impl IntoIterator<Item = Ipv6Addr>) {
        for ip in ips {
            if !self.named.remove(&ip) {
                self.released.push(ip);
            }
        }
    }
}

impl Vpc {
    /// Gives the VPC its IPv6 block (one per VPC).
    pub fn assign_ipv6_block(&mut self) -> Result<Cidr6, ModelError> {
        if let Some(block) = self.ipv6_block {
            return Err(ModelError::Ipv6BlockAssigned(format!(
                "VPC {} already has the IPv6 block {block}",
                self.id
            )));
        }
        let block = Cidr6::parse(VPC_BLOCK)?;
        self.ipv6_block = Some(block);
        Ok(block)
    }

    /// Gives each subnet of `blocks` its /64, all or none: each a /64 of
    /// the VPC's block, used by no other subnet, for a subnet with none.
    pub fn assign_subnet_ipv6_blocks(
        &mut self,
        blocks: &[(String, String)],
    ) -> Result<Vec<(String, Cidr6)>, ModelError> {
        let vpc_block = self
            .ipv6_block
            .ok_or_else(|| ModelError::NoIpv6Block(format!("VPC {} has no IPv6 block", self.id)))?;
        let mut chosen: Vec<(String, Cidr6)> = Vec::new();
        for (subnet_id, cidr) in blocks {
            let cidr = Cidr6::parse(cidr)?;
            let subnet = self
                .subnets
                .get(subnet_id)
                .ok_or_else(|| ModelError::NotFound {
                    kind: "subnet",
                    id: subnet_id.clone(),
                })?;
            if subnet.ipv6.is_some() || chosen.iter().any(|(s, _)| s == subnet_id) {
                return Err(ModelError::SubnetIpv6BlockAssigned(format!(
                    "subnet {subnet_id} already has an IPv6 block"
                )));
            }
            if cidr.prefix != 64 || !vpc_block.contains(&cidr) {
                return Err(ModelError::Ipv6SubnetRange(format!(
                    "{cidr} is not a /64 of the VPC's {vpc_block}"
                )));
            }
            let taken = self
                .subnets
                .values()
                .filter_map(|s| s.ipv6.as_ref().map(|p| p.cidr))
                .chain(chosen.iter().map(|(_, c)| *c));
            if let Some(other) = taken.into_iter().find(|c| *c == cidr) {
                return Err(ModelError::Ipv6SubnetConflict(format!(
                    "{cidr} is another subnet's ({other})"
                )));
            }
            chosen.push((subnet_id.clone(), cidr));
        }
        for (subnet_id, cidr) in &chosen {
            self.subnets.get_mut(subnet_id).expect("checked above").ipv6 = Some(Pool6::new(*cidr));
        }
        Ok(chosen)
    }

    /// Assigns the `named` IPv6 addresses and `count` more from the ENI's
    /// subnet's /64, all or none.
    pub fn assign_ipv6(
        &mut self,
        eni_id: &str,
        named: &[Ipv6Addr],
        count: u32,
    ) -> Result<Vec<Ipv6Addr>, ModelError> {
        let eni = self.enis.get(eni_id).ok_or_else(|| ModelError::NotFound {
            kind: "ENI",
            id: eni_id.into(),
        })?;
        let requested = named.len() as u32 + count;
        if let Some(limit) = eni
            .attached_to
            .as_ref()
            .map(|i| self.instances[i].max_ips_per_eni)
            && eni.ipv6_addresses.len() as u32 + requested > limit
        {
            return Err(ModelError::Ipv6Limit {
                eni: eni_id.into(),
                requested,
                limit,
            });
        }
        let subnet_id = eni.subnet_id.clone();
        let subnet = self.subnets.get_mut(&subnet_id).expect("ENI subnets exist");
        let pool = subnet.ipv6.as_mut().ok_or_else(|| {
            ModelError::NoIpv6Block(format!("subnet {subnet_id} has no IPv6 block"))
        })?;
        let unique: BTreeSet<&Ipv6Addr> = named.iter().collect();
        if unique.len() != named.len() {
            return Err(ModelError::InvalidParameter(
                "an IPv6 address is named twice".into(),
            ));
        }
        for ip in named {
            pool.check_named(*ip, &subnet_id)?;
        }
        for ip in named {
            pool.take_named(*ip);
        }
        let mut ips = named.to_vec();
        ips.extend((0..count).map(|_| pool.take()));
        self.enis
            .get_mut(eni_id)
            .expect("checked above")
            .ipv6_addresses
            .extend(&ips);
        Ok(ips)
    }

    /// Takes IPv6 addresses off the ENI, all or none: each must be on it.
    pub fn unassign_ipv6(&mut self, eni_id: &str, ips: &[Ipv6Addr]) -> Result<(), ModelError> {
        let eni = self.enis.get(eni_id).ok_or_else(|| ModelError::NotFound {
            kind: "ENI",
            id: eni_id.into(),
        })?;
        if let Some(ip) = ips.iter().find(|ip| !eni.ipv6_addresses.contains(ip)) {
            return Err(ModelError::Ipv6NotOnEni {
                ip: *ip,
                eni: eni_id.into(),
            });
        }
        let subnet_id = eni.subnet_id.clone();
        let eni = self.enis.get_mut(eni_id).expect("checked above");
        eni.ipv6_addresses.retain(|ip| !ips.contains(ip));
        if let Some(pool) = self
            .subnets
            .get_mut(&subnet_id)
            .and_then(|s| s.ipv6.as_mut())
        {
            pool.release(ips.iter().copied());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cidr, Vpc};

    fn vpc() -> Vpc {
        let mut v = Vpc::new("vpc-1", Cidr::parse("10.0.0.0/16").expect("cidr"), 10);
        v.add_subnet("subnet-1", "z1", Cidr::parse("10.0.16.0/24").expect("cidr"))
            .expect("subnet");
        v.add_subnet("subnet-2", "z1", Cidr::parse("10.0.17.0/24").expect("cidr"))
            .expect("subnet");
        v
    }

    fn blocks(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(s, c)| (s.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let b = Cidr6::parse("2402:4e00:1c00:9a00::/56").expect("cidr");
        assert!(b.contains(&Cidr6::parse("2402:4e00:1c00:9a01::/64").expect("cidr")));
        assert!(!b.contains(&Cidr6::parse("2402:4e00:1c00:9b00::/64").expect("cidr")));
        assert!(
            Cidr6::parse("2402:4e00:1c00:9a00::1/56").is_err(),
            "host bits"
        );
        assert!(Cidr6::parse("10.0.0.0/8").is_err());
        assert_eq!(b.to_string(), "2402:4e00:1c00:9a00::/56");
    }

    #[test]
    fn a_vpc_gets_one_block_and_a_subnet_one_64_of_it() {
        let mut v = vpc();
        assert!(matches!(
            v.assign_subnet_ipv6_blocks(&blocks(&[("subnet-1", "2402:4e00:1c00:9a00::/64")])),
            Err(ModelError::NoIpv6Block(_))
        ));
        let block = v.assign_ipv6_block().expect("block");
        assert_eq!(block.prefix, 56);
        assert!(matches!(
            v.assign_ipv6_block(),
            Err(ModelError::Ipv6BlockAssigned(_))
        ));
        for (bad, why) in [
            ("2402:4e00:1c00:9a00::/60", "not a /64"),
            ("2402:4e00:1c00:9b00::/64", "outside the VPC's block"),
        ] {
            assert!(
                matches!(
                    v.assign_subnet_ipv6_blocks(&blocks(&[("subnet-1", bad)])),
                    Err(ModelError::Ipv6SubnetRange(_))
                ),
                "{why}"
            );
        }
        // Both subnets, one refused: neither gets one.
        assert!(matches!(
            v.assign_subnet_ipv6_blocks(&blocks(&[
                ("subnet-1", "2402:4e00:1c00:9a01::/64"),
                ("subnet-2", "2402:4e00:1c00:9a01::/64"),
            ])),
            Err(ModelError::Ipv6SubnetConflict(_))
        ));
        assert!(v.subnets["subnet-1"].ipv6.is_none(), "all or none");
        v.assign_subnet_ipv6_blocks(&blocks(&[("subnet-1", "2402:4e00:1c00:9a01::/64")]))
            .expect("assigned");
        assert!(matches!(
            v.assign_subnet_ipv6_blocks(&blocks(&[("subnet-1", "2402:4e00:1c00:9a02::/64")])),
            Err(ModelError::SubnetIpv6BlockAssigned(_))
        ));
    }

    #[test]
    fn addresses_come_from_the_enis_subnet_named_or_counted_and_go_back() {
        let mut v = vpc();
        v.assign_ipv6_block().expect("block");
        let eni = v.create_eni("subnet-1").expect("eni").id;
        assert!(matches!(
            v.assign_ipv6(&eni, &[], 1),
            Err(ModelError::NoIpv6Block(_))
        ));
        v.assign_subnet_ipv6_blocks(&blocks(&[("subnet-1", "2402:4e00:1c00:9a01::/64")]))
            .expect("assigned");
        let ip = |s: &str| s.parse::<Ipv6Addr>().expect("ip");
        let got = v.assign_ipv6(&eni, &[], 2).expect("two");
        assert_eq!(
            got,
            [ip("2402:4e00:1c00:9a01::2"), ip("2402:4e00:1c00:9a01::3")]
        );
        // By name: in the subnet, not reserved, not in use.
        for (bad, want) in [
            ("2402:4e00:1c00:9a02::5", "out"),
            ("2402:4e00:1c00:9a01::1", "reserved"),
            ("2402:4e00:1c00:9a01::3", "in use"),
        ] {
            let e = v.assign_ipv6(&eni, &[ip(bad)], 0).expect_err(bad);
            let ok = match want {
                "out" => matches!(e, ModelError::Ipv6OutOfSubnet { .. }),
                "reserved" => matches!(e, ModelError::Ipv6Reserved(_)),
                _ => matches!(e, ModelError::Ipv6InUse(_)),
            };
            assert!(ok, "{bad}: {e}");
        }
        // A named one ahead of the sequence is skipped by it.
        v.assign_ipv6(&eni, &[ip("2402:4e00:1c00:9a01::4")], 1)
            .expect("named and one more");
        assert_eq!(
            v.enis[&eni].ipv6_addresses.last(),
            Some(&ip("2402:4e00:1c00:9a01::5"))
        );
        // Unassign: all on the ENI or nothing.
        assert!(matches!(
            v.unassign_ipv6(
                &eni,
                &[ip("2402:4e00:1c00:9a01::2"), ip("2402:4e00:1c00:9a01::9")]
            ),
            Err(ModelError::Ipv6NotOnEni { .. })
        ));
        assert_eq!(v.enis[&eni].ipv6_addresses.len(), 4);
        v.unassign_ipv6(&eni, &[ip("2402:4e00:1c00:9a01::2")])
            .expect("unassigned");
        let other = v.create_eni("subnet-1").expect("eni").id;
        assert_eq!(
            v.assign_ipv6(&other, &[], 1).expect("a new one"),
            [ip("2402:4e00:1c00:9a01::6")],
            "a given-back address is not the next one handed out"
        );
        v.assign_ipv6(&other, &[ip("2402:4e00:1c00:9a01::2")], 0)
            .expect("a given-back address can be had by name");
        // Deleting an ENI gives its addresses back.
        v.delete_eni(&eni).expect("deleted");
        v.assign_ipv6(&other, &[ip("2402:4e00:1c00:9a01::3")], 0)
            .expect("free again");
    }
}
