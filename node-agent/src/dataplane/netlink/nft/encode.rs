//! Writing: attributes, messages, the batches that replace or remove our
//! table, and the requests that read it back.

use super::*;

/// Netlink attributes being written.
#[derive(Debug, Default)]
pub(super) struct Attrs(pub(super) Vec<u8>);

impl Attrs {
    pub(super) fn put(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    pub(super) fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    pub(super) fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(ty, &b)
    }

    pub(super) fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
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
pub(super) fn message(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &Attrs,
) -> Vec<u8> {
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

pub(super) fn nft(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// A transaction being written: batch begin, messages each asking for an
/// acknowledgement, batch end. The kernel applies all or nothing.
#[derive(Debug)]
pub struct Batch {
    bytes: Vec<u8>,
    seq: u32,
    /// `NFPROTO_*` of the table.
    family: u8,
    /// Sequence numbers of the messages that will be acknowledged.
    pub acked: Vec<u32>,
}

impl Batch {
    fn new(seq: u32, family: u8) -> Batch {
        let mut b = Batch {
            bytes: Vec::new(),
            seq,
            family,
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
            self.family,
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

/// One transaction that removes our table (if any) and creates it anew as
/// `spec` says (chains, set and elements, then the rules, since a rule
/// names its chain and set): a second start replaces, never duplicates,
/// and no packet sees a half-made table.
/// `family`: `FAMILY_IP`, or `FAMILY_IP6` for the IPv6 table (the
/// connmark chain alone).
pub fn replace_batch(seq: u32, spec: &TableSpec, family: u8) -> Batch {
    let mut b = Batch::new(seq, family);
    b.drop_table();
    let mut t = Attrs::default();
    t.str(NFTA_TABLE_NAME, TABLE);
    b.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, &t);

    for chain in &spec.chains {
        let mut c = Attrs::default();
        c.str(NFTA_CHAIN_TABLE, TABLE)
            .str(NFTA_CHAIN_NAME, chain.name)
            .nest(NFTA_CHAIN_HOOK, |h| {
                h.u32(NFTA_HOOK_HOOKNUM, chain.hook)
                    .u32(NFTA_HOOK_PRIORITY, chain.priority as u32);
            })
            .u32(NFTA_CHAIN_POLICY, NF_ACCEPT)
            .str(NFTA_CHAIN_TYPE, chain.kind);
        b.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, &c);
    }

    if let Some(ranges) = &spec.set {
        b.add_set(ranges);
    }

    for chain in &spec.chains {
        for rule in &chain.rules {
            let mut r = Attrs::default();
            r.str(NFTA_RULE_TABLE, TABLE)
                .str(NFTA_RULE_CHAIN, chain.name)
                .nest(NFTA_RULE_EXPRESSIONS, |list| {
                    for e in &rule.exprs {
                        list.nest(NFTA_LIST_ELEM, |el| expr::encode(el, e));
                    }
                });
            b.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, &r);
        }
    }
    b.finish()
}

impl Batch {
    /// `add set ip vpc-cni non-masquerade { type ipv4_addr; flags
    /// interval; }` and its elements for `ranges`.
    fn add_set(&mut self, ranges: &[(u32, u32)]) {
        let mut s = Attrs::default();
        s.str(NFTA_SET_TABLE, TABLE)
            .str(NFTA_SET_NAME, SET)
            .u32(NFTA_SET_FLAGS, NFT_SET_INTERVAL)
            .u32(NFTA_SET_KEY_TYPE, TYPE_IPADDR)
            .u32(NFTA_SET_KEY_LEN, 4)
            .u32(NFTA_SET_ID, SET_ID);
        self.push(NFT_MSG_NEWSET, NLM_F_CREATE, &s);

        let elements = interval_elements(ranges);
        if elements.is_empty() {
            return;
        }
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
        self.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, &e);
    }
}

/// One transaction that removes our table; nothing to remove is fine.
pub fn remove_batch(seq: u32, family: u8) -> Batch {
    let mut b = Batch::new(seq, family);
    b.drop_table();
    b.finish()
}

/// `GET` of our table (no dump): answered by the table or `ENOENT`.
pub fn get_table(seq: u32, family: u8) -> Vec<u8> {
    let mut a = Attrs::default();
    a.str(NFTA_TABLE_NAME, TABLE);
    message(
        nft(NFT_MSG_GETTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        0,
        &a,
    )
}

/// `GET` of our chain `chain` (no dump).
pub fn get_chain(seq: u32, chain: &str, family: u8) -> Vec<u8> {
    let mut a = Attrs::default();
    a.str(NFTA_CHAIN_TABLE, TABLE).str(NFTA_CHAIN_NAME, chain);
    message(
        nft(NFT_MSG_GETCHAIN),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        0,
        &a,
    )
}

/// Dump of the rules of our chain `chain`.
pub fn dump_rules(seq: u32, chain: &str, family: u8) -> Vec<u8> {
    let mut a = Attrs::default();
    a.str(NFTA_RULE_TABLE, TABLE).str(NFTA_RULE_CHAIN, chain);
    message(
        nft(NFT_MSG_GETRULE),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
        0,
        &a,
    )
}

/// Dump of the elements of our set.
pub fn dump_elements(seq: u32, family: u8) -> Vec<u8> {
    let mut a = Attrs::default();
    a.str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
        .str(NFTA_SET_ELEM_LIST_SET, SET);
    message(
        nft(NFT_MSG_GETSETELEM),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
        0,
        &a,
    )
}
