//! nftables over netlink, as pure functions: the messages of our egress
//! table (one batch that replaces it atomically, one that removes it, the
//! requests that read it back) and the decoding of the kernel's answers.
//! No libnftnl and no `nft`: the wire format is the kernel's
//! (`linux/netfilter/nf_tables.h`, `nfnetlink.h`), written here directly.
//!
//! ```text
//! table ip vpc-cni {
//!     set non-masquerade { type ipv4_addr; flags interval; elements = { 10.0.0.0/16 } }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         meta iifgroup 0x76706332 ip daddr != @non-masquerade masquerade fully-random
//!     }
//! }
//! ```

mod decode;
mod encode;

pub use decode::*;
pub use encode::*;

use super::messages::LINK_GROUP;

/// Our table (family `ip`).
pub const TABLE: &str = "vpc-cni";
/// Its NAT chain.
pub const CHAIN: &str = "postrouting";
/// The set of destinations that keep the pod's address.
pub const SET: &str = "non-masquerade";

/// `NFPROTO_IPV4`: the `ip` family.
pub const FAMILY_IP: u8 = 2;
const FAMILY_UNSPEC: u8 = 0;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;

/// `NLMSG_ERROR`: an acknowledgement or an error.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;

const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
/// nft's `ipv4_addr` data type (informational for the kernel; `nft list`
/// uses it to print the set).
const TYPE_IPADDR: u32 = 7;
const NF_INET_POST_ROUTING: u32 = 4;
/// `srcnat`.
pub const NAT_PRIORITY: i32 = 100;
const NF_ACCEPT: u32 = 1;
/// The set's id inside one batch (the rule refers to it by name and id).
const SET_ID: u32 = 1;

const NFT_REG_1: u32 = 1;
const NFT_META_IIFGROUP: u32 = 21;
const NFT_CMP_EQ: u32 = 0;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_LOOKUP_F_INV: u32 = 1;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 16;

/// One expression of a rule, as far as we write or compare them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `meta KEY` into a register.
    Meta {
        /// `NFT_META_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// Compare a register with a value.
    Cmp {
        /// Source register.
        sreg: u32,
        /// `NFT_CMP_*`.
        op: u32,
        /// The value.
        data: Vec<u8>,
    },
    /// Load header bytes into a register.
    Payload {
        /// Destination register.
        dreg: u32,
        /// `NFT_PAYLOAD_*_HEADER`.
        base: u32,
        /// Offset in the header.
        offset: u32,
        /// Bytes.
        len: u32,
    },
    /// Look a register up in a named set.
    Lookup {
        /// The set.
        set: String,
        /// Source register.
        sreg: u32,
        /// Matches when the key is *not* in the set.
        inverted: bool,
    },
    /// Masquerade.
    Masq {
        /// `NF_NAT_RANGE_*` flags.
        flags: u32,
    },
    /// An expression we do not write, by name.
    Other(String),
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Meta { key, .. } if *key == NFT_META_IIFGROUP => f.write_str("meta iifgroup"),
            Expr::Meta { key, .. } => write!(f, "meta key {key}"),
            Expr::Cmp { op, data, .. } => {
                let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
                write!(f, "cmp op {op} 0x{hex}")
            }
            Expr::Payload {
                base, offset, len, ..
            } => write!(f, "payload base {base} offset {offset} len {len}"),
            Expr::Lookup { set, inverted, .. } => {
                write!(f, "{}@{set}", if *inverted { "!= " } else { "" })
            }
            Expr::Masq { flags } => write!(f, "masquerade flags {flags}"),
            Expr::Other(name) => f.write_str(name),
        }
    }
}

/// The one rule of our chain: from a pod's veth (our link group), to a
/// destination outside the set, masquerade (fully random source ports, as
/// AWS's `--random-fully`, so many pods' flows do not clash on the
/// node's address).
pub fn masquerade_rule() -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: NFT_META_IIFGROUP,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            // Interface groups are compared in host byte order.
            data: LINK_GROUP.to_ne_bytes().to_vec(),
        },
        Expr::Payload {
            dreg: NFT_REG_1,
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: 16,
            len: 4,
        },
        Expr::Lookup {
            set: SET.into(),
            sreg: NFT_REG_1,
            inverted: true,
        },
        Expr::Masq {
            flags: NF_NAT_RANGE_PROTO_RANDOM_FULLY,
        },
    ]
}

/// The set's elements for inclusive ranges: a start key per range and an
/// interval-end key just past it (none for a range reaching the top).
pub fn interval_elements(ranges: &[(u32, u32)]) -> Vec<(u32, bool)> {
    let mut v = Vec::with_capacity(ranges.len() * 2);
    for (a, b) in ranges {
        v.push((*a, false));
        if let Some(end) = b.checked_add(1) {
            v.push((end, true));
        }
    }
    v
}

/// Inclusive ranges back from interval elements (in any order), `None`
/// when they do not pair up.
pub fn element_ranges(elements: &[(u32, bool)]) -> Option<Vec<(u32, u32)>> {
    let mut v = elements.to_vec();
    v.sort_unstable();
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let (start, end) = v[i];
        if end {
            // A leading "end" at 0.0.0.0 is what `nft` itself adds.
            if start == 0 && i == 0 {
                i += 1;
                continue;
            }
            return None;
        }
        match v.get(i + 1) {
            Some((stop, true)) => {
                out.push((start, stop - 1));
                i += 2;
            }
            None => {
                out.push((start, u32::MAX));
                i += 1;
            }
            Some(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
