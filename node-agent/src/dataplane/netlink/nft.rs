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

/// Netlink attributes being written.
#[derive(Debug, Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(ty, &b)
    }

    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::default();
        f(&mut inner);
        self.put(ty | NLA_F_NESTED, &inner.0)
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
}

/// A netlink message of the nftables subsystem: header, `nfgenmsg`,
/// attributes.
fn message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &Attrs) -> Vec<u8> {
    let len = 16 + 4 + attrs.0.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(family);
    m.push(0); // NFNETLINK_V0
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(&attrs.0);
    m
}

fn nft(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// A transaction being written: batch begin, messages each asking for an
/// acknowledgement, batch end. The kernel applies all or nothing.
#[derive(Debug)]
pub struct Batch {
    bytes: Vec<u8>,
    seq: u32,
    /// Sequence numbers of the messages that will be acknowledged.
    pub acked: Vec<u32>,
}

impl Batch {
    fn new(seq: u32) -> Batch {
        let mut b = Batch {
            bytes: Vec::new(),
            seq,
            acked: Vec::new(),
        };
        let begin = message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            b.next_seq(),
            FAMILY_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            &Attrs::default(),
        );
        b.bytes.extend_from_slice(&begin);
        b
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }

    fn push(&mut self, msg: u16, flags: u16, attrs: &Attrs) {
        let seq = self.next_seq();
        self.acked.push(seq);
        let m = message(
            nft(msg),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            FAMILY_IP,
            0,
            attrs,
        );
        self.bytes.extend_from_slice(&m);
    }

    fn finish(mut self) -> Batch {
        let end = message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.next_seq(),
            FAMILY_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            &Attrs::default(),
        );
        self.bytes.extend_from_slice(&end);
        self
    }

    /// The bytes to send in one `send`.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `add table ip vpc-cni; delete table ip vpc-cni`: removing the table
    /// also when it does not exist.
    fn drop_table(&mut self) {
        let mut t = Attrs::default();
        t.str(NFTA_TABLE_NAME, TABLE);
        self.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, &t);
        self.push(NFT_MSG_DELTABLE, 0, &t);
    }
}

/// One transaction that removes our table (if any) and creates it anew
/// with the set holding `ranges` and the masquerade rule: a second start
/// replaces, never duplicates, and no packet sees a half-made table.
pub fn replace_batch(seq: u32, ranges: &[(u32, u32)]) -> Batch {
    let mut b = Batch::new(seq);
    b.drop_table();
    let mut t = Attrs::default();
    t.str(NFTA_TABLE_NAME, TABLE);
    b.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, &t);

    let mut c = Attrs::default();
    c.str(NFTA_CHAIN_TABLE, TABLE)
        .str(NFTA_CHAIN_NAME, CHAIN)
        .nest(NFTA_CHAIN_HOOK, |h| {
            h.u32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING)
                .u32(NFTA_HOOK_PRIORITY, NAT_PRIORITY as u32);
        })
        .u32(NFTA_CHAIN_POLICY, NF_ACCEPT)
        .str(NFTA_CHAIN_TYPE, "nat");
    b.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, &c);

    let mut s = Attrs::default();
    s.str(NFTA_SET_TABLE, TABLE)
        .str(NFTA_SET_NAME, SET)
        .u32(NFTA_SET_FLAGS, NFT_SET_INTERVAL)
        .u32(NFTA_SET_KEY_TYPE, TYPE_IPADDR)
        .u32(NFTA_SET_KEY_LEN, 4)
        .u32(NFTA_SET_ID, SET_ID);
    b.push(NFT_MSG_NEWSET, NLM_F_CREATE, &s);

    let elements = interval_elements(ranges);
    if !elements.is_empty() {
        let mut e = Attrs::default();
        e.str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
            .str(NFTA_SET_ELEM_LIST_SET, SET)
            .u32(NFTA_SET_ELEM_LIST_SET_ID, SET_ID)
            .nest(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                for (key, end) in &elements {
                    list.nest(NFTA_LIST_ELEM, |el| {
                        el.nest(NFTA_SET_ELEM_KEY, |k| {
                            k.put(NFTA_DATA_VALUE, &key.to_be_bytes());
                        });
                        if *end {
                            el.u32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                        }
                    });
                }
            });
        b.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, &e);
    }

    let mut r = Attrs::default();
    r.str(NFTA_RULE_TABLE, TABLE)
        .str(NFTA_RULE_CHAIN, CHAIN)
        .nest(NFTA_RULE_EXPRESSIONS, |list| {
            for expr in masquerade_rule() {
                list.nest(NFTA_LIST_ELEM, |el| encode_expr(el, &expr));
            }
        });
    b.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, &r);
    b.finish()
}

/// One transaction that removes our table; nothing to remove is fine.
pub fn remove_batch(seq: u32) -> Batch {
    let mut b = Batch::new(seq);
    b.drop_table();
    b.finish()
}

fn encode_expr(el: &mut Attrs, expr: &Expr) {
    let name = match expr {
        Expr::Meta { .. } => "meta",
        Expr::Cmp { .. } => "cmp",
        Expr::Payload { .. } => "payload",
        Expr::Lookup { .. } => "lookup",
        Expr::Masq { .. } => "masq",
        Expr::Other(n) => n.as_str(),
    };
    el.str(NFTA_EXPR_NAME, name);
    el.nest(NFTA_EXPR_DATA, |d| match expr {
        Expr::Meta { key, dreg } => {
            d.u32(1, *dreg).u32(2, *key); // NFTA_META_DREG, NFTA_META_KEY
        }
        Expr::Cmp { sreg, op, data } => {
            d.u32(1, *sreg).u32(2, *op); // NFTA_CMP_SREG, NFTA_CMP_OP
            d.nest(3, |v| {
                v.put(NFTA_DATA_VALUE, data);
            }); // NFTA_CMP_DATA
        }
        Expr::Payload {
            dreg,
            base,
            offset,
            len,
        } => {
            // NFTA_PAYLOAD_DREG, _BASE, _OFFSET, _LEN
            d.u32(1, *dreg).u32(2, *base).u32(3, *offset).u32(4, *len);
        }
        Expr::Lookup {
            set,
            sreg,
            inverted,
        } => {
            // NFTA_LOOKUP_SET, _SREG, _SET_ID, _FLAGS
            d.str(1, set).u32(2, *sreg).u32(4, SET_ID);
            d.u32(5, if *inverted { NFT_LOOKUP_F_INV } else { 0 });
        }
        Expr::Masq { flags } => {
            d.u32(1, *flags); // NFTA_MASQ_FLAGS
        }
        Expr::Other(_) => {}
    });
}

/// `GET` of our table (no dump): answered by the table or `ENOENT`.
pub fn get_table(seq: u32) -> Vec<u8> {
    let mut a = Attrs::default();
    a.str(NFTA_TABLE_NAME, TABLE);
    message(
        nft(NFT_MSG_GETTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        FAMILY_IP,
        0,
        &a,
    )
}

/// `GET` of our chain (no dump).
pub fn get_chain(seq: u32) -> Vec<u8> {
    let mut a = Attrs::default();
    a.str(NFTA_CHAIN_TABLE, TABLE).str(NFTA_CHAIN_NAME, CHAIN);
    message(
        nft(NFT_MSG_GETCHAIN),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        FAMILY_IP,
        0,
        &a,
    )
}

/// Dump of the rules of our chain.
pub fn dump_rules(seq: u32) -> Vec<u8> {
    let mut a = Attrs::default();
    a.str(NFTA_RULE_TABLE, TABLE).str(NFTA_RULE_CHAIN, CHAIN);
    message(
        nft(NFT_MSG_GETRULE),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        FAMILY_IP,
        0,
        &a,
    )
}

/// Dump of the elements of our set.
pub fn dump_elements(seq: u32) -> Vec<u8> {
    let mut a = Attrs::default();
    a.str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
        .str(NFTA_SET_ELEM_LIST_SET, SET);
    message(
        nft(NFT_MSG_GETSETELEM),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        FAMILY_IP,
        0,
        &a,
    )
}

/// One message the kernel sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// An acknowledgement (`errno` 0) or an error, for request `seq`.
    Ack {
        /// Sequence number of the request.
        seq: u32,
        /// 0 or a positive errno.
        errno: i32,
    },
    /// The end of a dump.
    Done,
    /// A data message: its nftables type and the attributes after `nfgenmsg`.
    Data {
        /// `NFT_MSG_*`.
        kind: u16,
        /// Whether more of a dump follows.
        multi: bool,
        /// The attributes.
        attrs: &'a [u8],
    },
}

/// Splits a buffer received from the socket into messages.
pub fn replies(mut buf: &[u8]) -> Result<Vec<Reply<'_>>, String> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32_ne(&buf[0..4]) as usize;
        if len < 16 || len > buf.len() {
            return Err(format!(
                "netlink message of length {len} in {} bytes",
                buf.len()
            ));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        let seq = u32_ne(&buf[8..12]);
        let body = &buf[16..len];
        match kind {
            NLMSG_ERROR => {
                if body.len() < 4 {
                    return Err("short netlink error".into());
                }
                let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                out.push(Reply::Ack { seq, errno: -code });
            }
            NLMSG_DONE => out.push(Reply::Done),
            _ if body.len() >= 4 => out.push(Reply::Data {
                kind: kind & 0xff,
                multi: flags & NLM_F_MULTI != 0,
                attrs: &body[4..],
            }),
            _ => return Err(format!("netlink message of type {kind} without nfgenmsg")),
        }
        let step = (len + 3) & !3;
        buf = &buf[step.min(buf.len())..];
    }
    Ok(out)
}

fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn u32_be(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(0..4)?.try_into().ok()?))
}

/// Attributes of a buffer, as (type without flags, payload).
pub fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        let step = (len + 3) & !3;
        buf = &buf[step.min(buf.len())..];
    }
    out
}

fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf)
        .into_iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, v)| v)
}

fn string(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

/// What a chain is hooked as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainInfo {
    /// `nat`, `filter`, `route`.
    pub kind: String,
    /// `NF_INET_*`.
    pub hook: Option<u32>,
    /// Its priority.
    pub priority: Option<i32>,
}

impl ChainInfo {
    /// Whether it is our NAT chain at postrouting, priority srcnat.
    pub fn is_ours(&self) -> bool {
        self.kind == "nat"
            && self.hook == Some(NF_INET_POST_ROUTING)
            && self.priority == Some(NAT_PRIORITY)
    }
}

/// The chain of a `NEWCHAIN` answer.
pub fn parse_chain(a: &[u8]) -> ChainInfo {
    let hook = find(a, NFTA_CHAIN_HOOK);
    ChainInfo {
        kind: find(a, NFTA_CHAIN_TYPE).map(string).unwrap_or_default(),
        hook: hook
            .and_then(|h| find(h, NFTA_HOOK_HOOKNUM))
            .and_then(u32_be),
        priority: hook
            .and_then(|h| find(h, NFTA_HOOK_PRIORITY))
            .and_then(u32_be)
            .map(|p| p as i32),
    }
}

/// The expressions of a `NEWRULE` answer.
pub fn parse_rule(a: &[u8]) -> Vec<Expr> {
    let Some(list) = find(a, NFTA_RULE_EXPRESSIONS) else {
        return Vec::new();
    };
    attrs(list)
        .into_iter()
        .filter(|(t, _)| *t == NFTA_LIST_ELEM)
        .map(|(_, el)| decode_expr(el))
        .collect()
}

fn decode_expr(el: &[u8]) -> Expr {
    let name = find(el, NFTA_EXPR_NAME).map(string).unwrap_or_default();
    let d = find(el, NFTA_EXPR_DATA).unwrap_or_default();
    let n = |ty: u16| find(d, ty).and_then(u32_be).unwrap_or_default();
    match name.as_str() {
        "meta" => Expr::Meta {
            key: n(2),
            dreg: n(1),
        },
        "cmp" => Expr::Cmp {
            sreg: n(1),
            op: n(2),
            data: find(d, 3)
                .and_then(|v| find(v, NFTA_DATA_VALUE))
                .unwrap_or_default()
                .to_vec(),
        },
        "payload" => Expr::Payload {
            dreg: n(1),
            base: n(2),
            offset: n(3),
            len: n(4),
        },
        "lookup" => Expr::Lookup {
            set: find(d, 1).map(string).unwrap_or_default(),
            sreg: n(2),
            inverted: n(5) & NFT_LOOKUP_F_INV != 0,
        },
        "masq" => Expr::Masq { flags: n(1) },
        _ => Expr::Other(name),
    }
}

/// The elements of a `NEWSETELEM` answer: (key, is an interval end).
pub fn parse_elements(a: &[u8]) -> Vec<(u32, bool)> {
    let Some(list) = find(a, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Vec::new();
    };
    attrs(list)
        .into_iter()
        .filter(|(t, _)| *t == NFTA_LIST_ELEM)
        .filter_map(|(_, el)| {
            let key = find(el, NFTA_SET_ELEM_KEY)
                .and_then(|k| find(k, NFTA_DATA_VALUE))
                .and_then(u32_be)?;
            let flags = find(el, NFTA_SET_ELEM_FLAGS)
                .and_then(u32_be)
                .unwrap_or_default();
            Some((key, flags & NFT_SET_ELEM_INTERVAL_END != 0))
        })
        .collect()
}

/// Whether a data message is a rule, a chain, a table or set elements.
pub fn is_rule(kind: u16) -> bool {
    kind == NFT_MSG_NEWRULE
}

/// See [`is_rule`].
pub fn is_elements(kind: u16) -> bool {
    kind == NFT_MSG_NEWSETELEM
}

/// See [`is_rule`].
pub fn is_chain(kind: u16) -> bool {
    kind == NFT_MSG_NEWCHAIN
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message payloads (attributes) of a batch, with their types.
    fn messages(b: &Batch) -> Vec<(u16, u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = b.bytes();
        while buf.len() >= 16 {
            let len = u32_ne(&buf[0..4]) as usize;
            let kind = u16::from_ne_bytes([buf[4], buf[5]]);
            let flags = u16::from_ne_bytes([buf[6], buf[7]]);
            out.push((kind, flags, buf[20..len].to_vec()));
            buf = &buf[len..];
        }
        assert!(buf.is_empty(), "messages fill the batch exactly");
        out
    }

    #[test]
    fn a_replacement_is_one_transaction_that_drops_then_builds_the_table() {
        let b = replace_batch(100, &[(0x0a00_0000, 0x0a00_ffff)]);
        let m = messages(&b);
        let kinds: Vec<u16> = m.iter().map(|(k, _, _)| *k).collect();
        assert_eq!(
            kinds,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_DELTABLE),
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_NEWCHAIN),
                nft(NFT_MSG_NEWSET),
                nft(NFT_MSG_NEWSETELEM),
                nft(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END,
            ]
        );
        assert_eq!(
            b.acked,
            (101..108).collect::<Vec<u32>>(),
            "every message is acknowledged"
        );
        assert!(m[1..8].iter().all(|(_, f, _)| f & NLM_F_ACK != 0));
        // The chain: nat at postrouting, priority srcnat.
        assert!(parse_chain(&m[4].2).is_ours());
        // The elements: 10.0.0.0 and the end 10.1.0.0.
        assert_eq!(
            parse_elements(&m[6].2),
            vec![(0x0a00_0000, false), (0x0a01_0000, true)]
        );
        // The rule reads back as it was written.
        assert_eq!(parse_rule(&m[7].2), masquerade_rule());
        assert_eq!(
            find(&m[1].2, NFTA_TABLE_NAME).map(string).as_deref(),
            Some(TABLE)
        );
    }

    #[test]
    fn removal_tolerates_a_missing_table() {
        let m = messages(&remove_batch(1));
        let kinds: Vec<u16> = m.iter().map(|(k, _, _)| *k).collect();
        assert_eq!(
            kinds,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_DELTABLE),
                NFNL_MSG_BATCH_END
            ]
        );
    }

    #[test]
    fn intervals_round_trip_through_elements() {
        let ranges = vec![(0x0a00_0000, 0x0a00_ffff), (0xc0a8_0000, u32::MAX)];
        let el = interval_elements(&ranges);
        assert_eq!(el.len(), 3, "no end past the top of the space");
        let mut shuffled = el.clone();
        shuffled.reverse();
        assert_eq!(element_ranges(&shuffled), Some(ranges));
        // nft's own leading end at 0.0.0.0 is accepted.
        assert_eq!(
            element_ranges(&[(0, true), (5, false), (10, true)]),
            Some(vec![(5, 9)])
        );
        assert_eq!(element_ranges(&[(5, false), (6, false)]), None);
        assert_eq!(element_ranges(&[(7, true)]), None);
    }

    #[test]
    fn kernel_answers_are_split_and_decoded() {
        let mut buf = Vec::new();
        // An error for seq 7 (ENOENT) and a done.
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&7u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&(-2i32).to_ne_bytes());
        buf.extend_from_slice(&[0u8; 16]);
        let done = message(NLMSG_DONE, NLM_F_MULTI, 8, 0, 0, &Attrs::default());
        buf.extend_from_slice(&done);
        let r = replies(&buf).expect("replies");
        assert_eq!(r[0], Reply::Ack { seq: 7, errno: 2 });
        assert_eq!(r[1], Reply::Done);
        assert!(replies(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn expressions_describe_themselves() {
        let text: Vec<String> = masquerade_rule().iter().map(Expr::to_string).collect();
        assert_eq!(text[0], "meta iifgroup");
        assert_eq!(text[3], "!= @non-masquerade");
    }
}
