//! The expressions of our rules, both ways: [`Expr`] as written into a
//! `NEWRULE` and as decoded from the kernel's dump, so a rule read back is
//! compared with the one we write. An expression we never write decodes as
//! [`Expr::Other`], by name.

use super::decode::{find, string, u32_be};
use super::encode::Attrs;
use super::*;

// `NFTA_EXPR_DATA` attributes, per expression (`nf_tables.h`).
const META_DREG: u16 = 1;
const META_KEY: u16 = 2;
const META_SREG: u16 = 3;
const CMP_SREG: u16 = 1;
const CMP_OP: u16 = 2;
const CMP_DATA: u16 = 3;
const PAYLOAD_DREG: u16 = 1;
const PAYLOAD_BASE: u16 = 2;
const PAYLOAD_OFFSET: u16 = 3;
const PAYLOAD_LEN: u16 = 4;
const LOOKUP_SET: u16 = 1;
const LOOKUP_SREG: u16 = 2;
const LOOKUP_SET_ID: u16 = 4;
const LOOKUP_FLAGS: u16 = 5;
const MASQ_FLAGS: u16 = 1;
const CT_DREG: u16 = 1;
const CT_KEY: u16 = 2;
const CT_SREG: u16 = 4;
const BITWISE_SREG: u16 = 1;
const BITWISE_DREG: u16 = 2;
const BITWISE_LEN: u16 = 3;
const BITWISE_MASK: u16 = 4;
const BITWISE_XOR: u16 = 5;
const FIB_DREG: u16 = 1;
const FIB_RESULT: u16 = 2;
const FIB_FLAGS: u16 = 3;

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
    /// `meta KEY set` from a register.
    MetaSet {
        /// `NFT_META_*`.
        key: u32,
        /// Source register.
        sreg: u32,
    },
    /// `ct KEY` (original direction) into a register.
    Ct {
        /// `NFT_CT_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `ct KEY set` from a register.
    CtSet {
        /// `NFT_CT_*`.
        key: u32,
        /// Source register.
        sreg: u32,
    },
    /// `dreg = (sreg & mask) ^ xor`, over `len` bytes.
    Bitwise {
        /// Source register.
        sreg: u32,
        /// Destination register.
        dreg: u32,
        /// Bytes.
        len: u32,
        /// The mask.
        mask: Vec<u8>,
        /// The xor.
        xor: Vec<u8>,
    },
    /// A routing lookup of the packet (`fib daddr type`).
    Fib {
        /// `NFTA_FIB_F_*`: which addresses and devices the lookup uses.
        flags: u32,
        /// `NFT_FIB_RESULT_*`: what it yields.
        result: u32,
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

fn meta_key(key: u32) -> String {
    match key {
        NFT_META_MARK => "mark".into(),
        NFT_META_IIFNAME => "iifname".into(),
        NFT_META_IIFGROUP => "iifgroup".into(),
        k => format!("key {k}"),
    }
}

fn ct_key(key: u32) -> String {
    match key {
        NFT_CT_STATE => "state".into(),
        NFT_CT_MARK => "mark".into(),
        k => format!("key {k}"),
    }
}

/// Register data as `nft --debug` shows it: 32-bit words in host order.
fn hex(data: &[u8]) -> String {
    if data.is_empty() || !data.len().is_multiple_of(4) {
        let bytes: String = data.iter().map(|b| format!("{b:02x}")).collect();
        return format!("0x{bytes}");
    }
    data.chunks(4)
        .map(|w| format!("{:#010x}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect::<Vec<_>>()
        .join(" ")
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Meta { key, .. } => write!(f, "meta {}", meta_key(*key)),
            Expr::MetaSet { key, .. } => write!(f, "meta {} set", meta_key(*key)),
            Expr::Ct { key, .. } => write!(f, "ct {}", ct_key(*key)),
            Expr::CtSet { key, .. } => write!(f, "ct {} set", ct_key(*key)),
            Expr::Bitwise { mask, xor, .. } => write!(f, "& {} ^ {}", hex(mask), hex(xor)),
            Expr::Fib { flags, result, .. } => write!(f, "fib flags {flags} result {result}"),
            Expr::Cmp { op, data, .. } => {
                let op = match *op {
                    NFT_CMP_EQ => "==".to_string(),
                    NFT_CMP_NEQ => "!=".to_string(),
                    o => format!("cmp op {o}"),
                };
                write!(f, "{op} {}", hex(data))
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

/// Writes `expr` as one element of a rule's expression list.
pub(super) fn encode(el: &mut Attrs, expr: &Expr) {
    let name = match expr {
        Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
        Expr::Ct { .. } | Expr::CtSet { .. } => "ct",
        Expr::Bitwise { .. } => "bitwise",
        Expr::Fib { .. } => "fib",
        Expr::Cmp { .. } => "cmp",
        Expr::Payload { .. } => "payload",
        Expr::Lookup { .. } => "lookup",
        Expr::Masq { .. } => "masq",
        Expr::Other(n) => n.as_str(),
    };
    el.str(NFTA_EXPR_NAME, name);
    el.nest(NFTA_EXPR_DATA, |d| match expr {
        Expr::Meta { key, dreg } => {
            d.u32(META_DREG, *dreg).u32(META_KEY, *key);
        }
        Expr::MetaSet { key, sreg } => {
            d.u32(META_KEY, *key).u32(META_SREG, *sreg);
        }
        Expr::Ct { key, dreg } => {
            d.u32(CT_DREG, *dreg).u32(CT_KEY, *key);
        }
        Expr::CtSet { key, sreg } => {
            d.u32(CT_KEY, *key).u32(CT_SREG, *sreg);
        }
        Expr::Bitwise {
            sreg,
            dreg,
            len,
            mask,
            xor,
        } => {
            d.u32(BITWISE_SREG, *sreg)
                .u32(BITWISE_DREG, *dreg)
                .u32(BITWISE_LEN, *len)
                .nest(BITWISE_MASK, |v| {
                    v.put(NFTA_DATA_VALUE, mask);
                })
                .nest(BITWISE_XOR, |v| {
                    v.put(NFTA_DATA_VALUE, xor);
                });
        }
        Expr::Fib {
            flags,
            result,
            dreg,
        } => {
            d.u32(FIB_DREG, *dreg)
                .u32(FIB_RESULT, *result)
                .u32(FIB_FLAGS, *flags);
        }
        Expr::Cmp { sreg, op, data } => {
            d.u32(CMP_SREG, *sreg).u32(CMP_OP, *op);
            d.nest(CMP_DATA, |v| {
                v.put(NFTA_DATA_VALUE, data);
            });
        }
        Expr::Payload {
            dreg,
            base,
            offset,
            len,
        } => {
            d.u32(PAYLOAD_DREG, *dreg)
                .u32(PAYLOAD_BASE, *base)
                .u32(PAYLOAD_OFFSET, *offset)
                .u32(PAYLOAD_LEN, *len);
        }
        Expr::Lookup {
            set,
            sreg,
            inverted,
        } => {
            d.str(LOOKUP_SET, set)
                .u32(LOOKUP_SREG, *sreg)
                .u32(LOOKUP_SET_ID, SET_ID);
            d.u32(LOOKUP_FLAGS, if *inverted { NFT_LOOKUP_F_INV } else { 0 });
        }
        Expr::Masq { flags } => {
            d.u32(MASQ_FLAGS, *flags);
        }
        Expr::Other(_) => {}
    });
}

/// Reads one element of a rule's expression list. Attributes the kernel
/// adds that we do not write (a bitwise's operation, say) are ignored.
pub(super) fn decode(el: &[u8]) -> Expr {
    let name = find(el, NFTA_EXPR_NAME).map(string).unwrap_or_default();
    let d = find(el, NFTA_EXPR_DATA).unwrap_or_default();
    let n = |ty: u16| find(d, ty).and_then(u32_be).unwrap_or_default();
    let has = |ty: u16| find(d, ty).is_some();
    let value = |ty: u16| {
        find(d, ty)
            .and_then(|v| find(v, NFTA_DATA_VALUE))
            .unwrap_or_default()
            .to_vec()
    };
    match name.as_str() {
        "meta" if has(META_SREG) => Expr::MetaSet {
            key: n(META_KEY),
            sreg: n(META_SREG),
        },
        "meta" => Expr::Meta {
            key: n(META_KEY),
            dreg: n(META_DREG),
        },
        "ct" if has(CT_SREG) => Expr::CtSet {
            key: n(CT_KEY),
            sreg: n(CT_SREG),
        },
        "ct" => Expr::Ct {
            key: n(CT_KEY),
            dreg: n(CT_DREG),
        },
        "bitwise" => Expr::Bitwise {
            sreg: n(BITWISE_SREG),
            dreg: n(BITWISE_DREG),
            len: n(BITWISE_LEN),
            mask: value(BITWISE_MASK),
            xor: value(BITWISE_XOR),
        },
        "fib" => Expr::Fib {
            flags: n(FIB_FLAGS),
            result: n(FIB_RESULT),
            dreg: n(FIB_DREG),
        },
        "cmp" => Expr::Cmp {
            sreg: n(CMP_SREG),
            op: n(CMP_OP),
            data: value(CMP_DATA),
        },
        "payload" => Expr::Payload {
            dreg: n(PAYLOAD_DREG),
            base: n(PAYLOAD_BASE),
            offset: n(PAYLOAD_OFFSET),
            len: n(PAYLOAD_LEN),
        },
        "lookup" => Expr::Lookup {
            set: find(d, LOOKUP_SET).map(string).unwrap_or_default(),
            sreg: n(LOOKUP_SREG),
            inverted: n(LOOKUP_FLAGS) & NFT_LOOKUP_F_INV != 0,
        },
        "masq" => Expr::Masq {
            flags: n(MASQ_FLAGS),
        },
        _ => Expr::Other(name),
    }
}
