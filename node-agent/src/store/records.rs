//! The store's records: their own serde types, independent of the pool's
//! and of the wire protocol's, so either can change without making a store
//! unreadable. Decoding tolerates fields it does not know (a store written
//! by a newer agent and rolled back) and fills fields an older agent did not
//! write with their defaults.
//!
//! Format history:
//! - 1: tables `meta`, `enis`, `allocations`, `cooling`, and (added later
//!   without a bump) `claims`.
//! - 2: claims carry `subnet_id` and `lost`; the `claims` table always
//!   exists. A format-1 store is migrated in place when opened.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::ipam::{
    Allocation, AttachmentKey, Claim, EniRecord, Handover, OwnerRef, PodRef, Source, UnixMillis,
};

/// The format this agent writes.
pub const FORMAT_VERSION: u64 = 2;

/// The oldest format this agent opens (and migrates).
pub const OLDEST_FORMAT: u64 = 1;

/// An ENI as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniRow {
    id: String,
    mac: String,
    subnet_id: String,
    gateway: Ipv4Addr,
    primary_ip: Ipv4Addr,
    mtu: u32,
    table: u32,
    #[serde(default)]
    ips: Vec<Ipv4Addr>,
    /// Format 2, later: dual stack's IPv6 partners; left out when none,
    /// so an IPv4-only pool's records stay as they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ipv6: Vec<(Ipv4Addr, Ipv6Addr)>,
}

/// An attachment key as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRow {
    network: String,
    container_id: String,
    ifname: String,
}

/// A pod reference as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRow {
    namespace: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<String>,
}

/// An owner reference as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRow {
    kind: String,
    name: String,
    #[serde(default)]
    uid: String,
}

/// An allocation as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRow {
    key: KeyRow,
    ip: Ipv4Addr,
    /// Format 2, later: a dual-stack pod's IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ipv6: Option<Ipv6Addr>,
    eni_id: String,
    #[serde(default)]
    netns: String,
    #[serde(default)]
    pod: Option<PodRow>,
    #[serde(default)]
    created_ms: UnixMillis,
}

/// A static claim as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRow {
    namespace: String,
    name: String,
    ip: Ipv4Addr,
    eni_id: String,
    /// Format 2.
    #[serde(default)]
    subnet_id: String,
    #[serde(default)]
    created_ms: UnixMillis,
    #[serde(default)]
    last_bound_ms: UnixMillis,
    #[serde(default)]
    released_ms: Option<UnixMillis>,
    #[serde(default)]
    expire_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<OwnerRow>,
    /// Format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lost: Option<String>,
    /// Format 2, later: absent (false) in records written before requested
    /// IPs, and left out when false so such records stay as they were.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    requested: bool,
    /// Format 2, later: a claim between nodes; absent while held. An older
    /// agent ignores it and sees the claim reserved here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    handover: Option<HandoverRow>,
}

/// A claim's hand-over, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum HandoverRow {
    /// Taken over by `to_node`.
    Outgoing { to_node: String },
    /// Coming here: from ENI `from_eni` of `from_node`, or from the subnet
    /// when both are absent (`requested`: an address the pod asked for).
    Incoming {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_node: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_eni: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        requested: bool,
        /// The claim's IPv6 address, which follows it (dual stack).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_ipv6: Option<Ipv6Addr>,
    },
}

impl From<&Handover> for HandoverRow {
    fn from(h: &Handover) -> HandoverRow {
        match h {
            Handover::Outgoing { to_node } => HandoverRow::Outgoing {
                to_node: to_node.clone(),
            },
            Handover::Incoming {
                from: Source::Node { node, eni_id, ipv6 },
            } => HandoverRow::Incoming {
                from_node: Some(node.clone()),
                from_eni: Some(eni_id.clone()),
                requested: false,
                from_ipv6: *ipv6,
            },
            Handover::Incoming { from } => HandoverRow::Incoming {
                from_node: None,
                from_eni: None,
                requested: *from == Source::Request,
                from_ipv6: None,
            },
        }
    }
}

impl From<HandoverRow> for Handover {
    fn from(h: HandoverRow) -> Handover {
        match h {
            HandoverRow::Outgoing { to_node } => Handover::Outgoing { to_node },
            HandoverRow::Incoming {
                from_node: Some(node),
                from_eni: Some(eni_id),
                from_ipv6,
                ..
            } => Handover::Incoming {
                from: Source::Node {
                    node,
                    eni_id,
                    ipv6: from_ipv6,
                },
            },
            HandoverRow::Incoming { requested, .. } => Handover::Incoming {
                from: if requested {
                    Source::Request
                } else {
                    Source::Subnet
                },
            },
        }
    }
}

impl From<&EniRecord> for EniRow {
    fn from(e: &EniRecord) -> EniRow {
        EniRow {
            id: e.id.clone(),
            mac: e.mac.clone(),
            subnet_id: e.subnet_id.clone(),
            gateway: e.gateway,
            primary_ip: e.primary_ip,
            mtu: e.mtu,
            table: e.table,
            ips: e.ips.clone(),
            ipv6: e.ipv6.clone(),
        }
    }
}

impl From<EniRow> for EniRecord {
    fn from(e: EniRow) -> EniRecord {
        EniRecord {
            id: e.id,
            mac: e.mac,
            subnet_id: e.subnet_id,
            gateway: e.gateway,
            primary_ip: e.primary_ip,
            mtu: e.mtu,
            table: e.table,
            ips: e.ips,
            ipv6: e.ipv6,
        }
    }
}

impl From<&AttachmentKey> for KeyRow {
    fn from(k: &AttachmentKey) -> KeyRow {
        KeyRow {
            network: k.network.clone(),
            container_id: k.container_id.clone(),
            ifname: k.ifname.clone(),
        }
    }
}

impl From<KeyRow> for AttachmentKey {
    fn from(k: KeyRow) -> AttachmentKey {
        AttachmentKey {
            network: k.network,
            container_id: k.container_id,
            ifname: k.ifname,
        }
    }
}

impl From<&Allocation> for AllocationRow {
    fn from(a: &Allocation) -> AllocationRow {
        AllocationRow {
            key: (&a.key).into(),
            ip: a.ip,
            ipv6: a.ipv6,
            eni_id: a.eni_id.clone(),
            netns: a.netns.clone(),
            pod: a.pod.as_ref().map(|p| PodRow {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone(),
            }),
            created_ms: a.created_ms,
        }
    }
}

impl From<AllocationRow> for Allocation {
    fn from(a: AllocationRow) -> Allocation {
        Allocation {
            key: a.key.into(),
            ip: a.ip,
            ipv6: a.ipv6,
            eni_id: a.eni_id,
            netns: a.netns,
            pod: a.pod.map(|p| PodRef {
                namespace: p.namespace,
                name: p.name,
                uid: p.uid,
            }),
            created_ms: a.created_ms,
        }
    }
}

impl From<&Claim> for ClaimRow {
    fn from(c: &Claim) -> ClaimRow {
        ClaimRow {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            ip: c.ip,
            eni_id: c.eni_id.clone(),
            subnet_id: c.subnet_id.clone(),
            created_ms: c.created_ms,
            last_bound_ms: c.last_bound_ms,
            released_ms: c.released_ms,
            expire_after_ms: c.expire_after_ms,
            owner: c.owner.as_ref().map(|o| OwnerRow {
                kind: o.kind.clone(),
                name: o.name.clone(),
                uid: o.uid.clone(),
            }),
            lost: c.lost.clone(),
            requested: c.requested,
            handover: c.handover.as_ref().map(HandoverRow::from),
        }
    }
}

impl From<ClaimRow> for Claim {
    fn from(c: ClaimRow) -> Claim {
        Claim {
            namespace: c.namespace,
            name: c.name,
            ip: c.ip,
            eni_id: c.eni_id,
            subnet_id: c.subnet_id,
            created_ms: c.created_ms,
            last_bound_ms: c.last_bound_ms,
            released_ms: c.released_ms,
            expire_after_ms: c.expire_after_ms,
            owner: c.owner.map(|o| OwnerRef {
                kind: o.kind,
                name: o.name,
                uid: o.uid,
            }),
            lost: c.lost,
            requested: c.requested,
            handover: c.handover.map(Handover::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_partners_are_kept_and_left_out_when_there_are_none() {
        let mut eni = crate::ipam::testing::eni("eni-1", 101, &[10, 11]);
        let v4_only = serde_json::to_string(&EniRow::from(&eni)).expect("encode");
        assert!(!v4_only.contains("ipv6"), "{v4_only}");
        let older: EniRow = serde_json::from_str(&v4_only).expect("decode");
        assert!(EniRecord::from(older).ipv6.is_empty());
        eni.pair_ipv6(&["fd00::2".parse().expect("an address")]);
        let json = serde_json::to_string(&EniRow::from(&eni)).expect("encode");
        let back = EniRecord::from(serde_json::from_str::<EniRow>(&json).expect("decode"));
        assert_eq!(back, eni);
        let mut a = crate::ipam::testing::allocation("c1", 10, "eni-1");
        let v4_only = serde_json::to_string(&AllocationRow::from(&a)).expect("encode");
        assert!(!v4_only.contains("ipv6"), "{v4_only}");
        a.ipv6 = Some("fd00::2".parse().expect("an address"));
        let json = serde_json::to_string(&AllocationRow::from(&a)).expect("encode");
        let back = Allocation::from(serde_json::from_str::<AllocationRow>(&json).expect("decode"));
        assert_eq!(back, a);
    }

    #[test]
    fn records_tolerate_fields_they_do_not_know() {
        let row: ClaimRow = serde_json::from_str(
            r#"{"namespace":"a","name":"b","ip":"10.0.0.9","eni_id":"eni-1",
                "created_ms":1,"last_bound_ms":2,"released_ms":null,
                "expire_after_ms":null,"some_future_field":{"x":1}}"#,
        )
        .expect("a newer record decodes");
        let claim = Claim::from(row);
        assert_eq!((claim.name.as_str(), claim.subnet_id.as_str()), ("b", ""));
        assert_eq!(claim.lost, None);
        assert!(!claim.requested, "a record of before requested IPs");
    }

    #[test]
    fn claims_round_trip_through_their_rows() {
        let claim = Claim {
            namespace: "ns".into(),
            name: "web-0".into(),
            ip: Ipv4Addr::new(10, 0, 1, 5),
            eni_id: "eni-1".into(),
            subnet_id: "subnet-1".into(),
            created_ms: 1,
            last_bound_ms: 2,
            released_ms: Some(3),
            expire_after_ms: Some(4),
            owner: Some(OwnerRef {
                kind: "StatefulSet".into(),
                name: "web".into(),
                uid: "u".into(),
            }),
            lost: Some("gone".into()),
            requested: true,
            handover: None,
        };
        let json = serde_json::to_string(&ClaimRow::from(&claim)).expect("encode");
        assert!(
            !json.contains("handover"),
            "a held claim's record is as before"
        );
        let back: ClaimRow = serde_json::from_str(&json).expect("decode");
        assert_eq!(Claim::from(back), claim);
        for handover in [
            Handover::Outgoing {
                to_node: "ins-b".into(),
            },
            Handover::Incoming {
                from: Source::Node {
                    node: "ins-a".into(),
                    eni_id: "eni-a".into(),
                    ipv6: None,
                },
            },
            Handover::Incoming {
                from: Source::Node {
                    node: "ins-a".into(),
                    eni_id: "eni-a".into(),
                    ipv6: Some("fd00::7".parse().expect("v6")),
                },
            },
            Handover::Incoming {
                from: Source::Subnet,
            },
            Handover::Incoming {
                from: Source::Request,
            },
        ] {
            let moving = Claim {
                handover: Some(handover),
                ..claim.clone()
            };
            let json = serde_json::to_string(&ClaimRow::from(&moving)).expect("encode");
            let back: ClaimRow = serde_json::from_str(&json).expect("decode");
            assert_eq!(Claim::from(back), moving, "{json}");
        }
    }
}
