//! Reading: the kernel's answers split into messages, and our table's
//! chains, rules and set elements decoded from them.

use super::*;

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

pub(super) fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

pub(super) fn u32_be(b: &[u8]) -> Option<u32> {
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

pub(super) fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf)
        .into_iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, v)| v)
}

pub(super) fn string(b: &[u8]) -> String {
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
        .map(|(_, el)| expr::decode(el))
        .collect()
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
