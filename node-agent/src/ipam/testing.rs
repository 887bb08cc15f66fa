//! Records for tests of the pool and of what is built on it.

use std::net::Ipv4Addr;

use super::records::{Allocation, AttachmentKey, EniRecord};

/// `10.0.0.b`.
pub fn ip(b: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, b)
}

/// The attachment of container `c` on `eth0` of network `vpc`.
pub fn key(c: &str) -> AttachmentKey {
    AttachmentKey {
        network: "vpc".into(),
        container_id: c.into(),
        ifname: "eth0".into(),
    }
}

/// An ENI of `subnet-1` (10.0.0.0/24) in route table `table`, holding
/// `10.0.0.b` for each `b` of `ips`.
pub fn eni(id: &str, table: u32, ips: &[u8]) -> EniRecord {
    EniRecord {
        id: id.into(),
        mac: format!("02:00:00:00:00:{:02x}", table % 256),
        subnet_id: "subnet-1".into(),
        gateway: ip(1),
        primary_ip: ip(2),
        mtu: 1500,
        table,
        ips: ips.iter().map(|b| ip(*b)).collect(),
        ipv6: Vec::new(),
    }
}

/// Container `c`'s allocation of `10.0.0.b` on `eni`.
pub fn allocation(c: &str, b: u8, eni: &str) -> Allocation {
    Allocation {
        key: key(c),
        ip: ip(b),
        ipv6: None,
        eni_id: eni.into(),
        netns: "/n".into(),
        pod: None,
        created_ms: 7,
    }
}
