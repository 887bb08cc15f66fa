//! nftables over netlink, as pure functions: what our table holds
//! ([`table`]), the messages that write it (one batch that replaces it
//! atomically, one that removes it, the requests that read it back), its
//! rules' expressions both ways ([`expr`]) and the decoding of the
//! kernel's answers. No libnftnl and no `nft`: the wire format is the
//! kernel's (`linux/netfilter/nf_tables.h`, `nfnetlink.h`), written here
//! directly. `nft list table ip vpc-cni` prints it so (the `postrouting`
//! chain and the set only while masquerading; `mangle - 5` is -155):
//!
//! ```text
//! table ip vpc-cni {
//!     set non-masquerade {
//!         type ipv4_addr
//!         flags interval
//!         elements = { 10.0.0.0/16 }
//!     }
//!
//!     chain prerouting {
//!         type filter hook prerouting priority mangle - 5; policy accept;
//!         iifname "eth0" ct state new fib daddr type local ct mark set ct mark | 0x00000080
//!         iifgroup 1987076914 ct mark & 0x00000080 == 0x00000080 meta mark set meta mark | 0x00000080
//!     }
//!
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         iifgroup 1987076914 ip daddr != @non-masquerade masquerade fully-random
//!     }
//! }
//! ```

mod decode;
mod encode;
mod expr;
mod table;

pub use decode::*;
pub use encode::*;
pub use expr::Expr;
pub use table::*;

use super::messages::LINK_GROUP;

/// Our table (family `ip`).
pub const TABLE: &str = "vpc-cni";
/// Its NAT chain (while masquerading).
pub const CHAIN: &str = "postrouting";
/// Its connmark chain (always).
pub const CONNMARK_CHAIN: &str = "prerouting";
/// Every chain we ever write, in the order they are checked.
pub const CHAINS: [&str; 2] = [CONNMARK_CHAIN, CHAIN];
/// The set of destinations that keep the pod's address.
pub const SET: &str = "non-masquerade";

/// `NFPROTO_IPV4`: the `ip` family.
pub const FAMILY_IP: u8 = 2;
/// `NFPROTO_IPV6`: the `ip6` family (a dual-stack node's connmark).
pub const FAMILY_IP6: u8 = 10;
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
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_POST_ROUTING: u32 = 4;
/// `srcnat`.
pub const NAT_PRIORITY: i32 = 100;
/// Priority of the connmark chain. After conntrack (-200), so the
/// connection's state and mark are known; before the DNAT of kube-proxy and
/// portmap (iptables' and kube-proxy nftables' `dstnat` at -100), so `fib
/// daddr type local` still sees the node's own address and not the pod's;
/// and strictly before iptables' `mangle` (-150) and kube-proxy nftables'
/// filter chains (-110), so it shares a priority with nobody's chain
/// (chains of one priority run in an order nobody promises) and whatever
/// runs later sees the mark. The routing decision comes after every
/// prerouting chain, so the restored packet mark always reaches it.
pub const CONNMARK_PRIORITY: i32 = -155;
const NF_ACCEPT: u32 = 1;
/// The set's id inside one batch (the rule refers to it by name and id).
const SET_ID: u32 = 1;

const NFT_REG_1: u32 = 1;
const NFT_META_MARK: u32 = 3;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_IIFGROUP: u32 = 21;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_MARK: u32 = 3;
/// `ct state new`: `NF_CT_STATE_BIT(IP_CT_NEW)`.
const NF_CT_STATE_NEW: u32 = 1 << 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;
/// Interface names are compared over all of `IFNAMSIZ`, zero-padded.
const IFNAMSIZ: usize = 16;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_LOOKUP_F_INV: u32 = 1;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 16;

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
