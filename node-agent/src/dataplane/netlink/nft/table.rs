//! Our table as data: what it holds for a node ([`TableSpec`]: the
//! connmark chain always, the masquerade chain and its set when
//! masquerading), the rules as expressions and as `nft` prints them, and
//! the comparison of a table read back with it, naming the first thing
//! wrong.

use super::*;
use crate::dataplane::egress::range_to_cidrs;

/// One rule: its expressions, and how `nft list` prints it (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// As `nft list table ip vpc-cni` prints it.
    pub text: String,
    /// What is written and read back.
    pub exprs: Vec<Expr>,
}

/// One base chain and its rules, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    /// Its name.
    pub name: &'static str,
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// `NF_INET_*`.
    pub hook: u32,
    /// Its priority.
    pub priority: i32,
    /// Its rules.
    pub rules: Vec<RuleSpec>,
}

impl ChainSpec {
    /// Whether a chain read back is hooked as this one.
    pub fn hooked_as(&self, found: &ChainInfo) -> bool {
        found.kind == self.kind
            && found.hook == Some(self.hook)
            && found.priority == Some(self.priority)
    }

    fn describe(&self) -> String {
        let hook = match self.hook {
            NF_INET_PRE_ROUTING => "prerouting".to_string(),
            NF_INET_POST_ROUTING => "postrouting".to_string(),
            h => format!("hook {h}"),
        };
        format!("type {} hook {hook} priority {}", self.kind, self.priority)
    }
}

/// Everything `table ip vpc-cni` holds on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// Its chains.
    pub chains: Vec<ChainSpec>,
    /// The non-masquerade ranges of the set, when there is one.
    pub set: Option<Vec<(u32, u32)>>,
}

impl TableSpec {
    /// The table of a node whose primary ENI is the link `primary`, our
    /// connmark bit `bit`, and, when masquerading, the non-masquerade
    /// ranges.
    pub fn new(primary: &str, bit: u32, masquerade: Option<Vec<(u32, u32)>>) -> TableSpec {
        let mut chains = vec![ChainSpec {
            name: CONNMARK_CHAIN,
            kind: "filter",
            hook: NF_INET_PRE_ROUTING,
            priority: CONNMARK_PRIORITY,
            rules: vec![mark_rule(primary, bit), restore_rule(bit)],
        }];
        if masquerade.is_some() {
            chains.push(ChainSpec {
                name: CHAIN,
                kind: "nat",
                hook: NF_INET_POST_ROUTING,
                priority: NAT_PRIORITY,
                rules: vec![masquerade_rule()],
            });
        }
        TableSpec {
            chains,
            set: masquerade,
        }
    }

    fn chain(&self, name: &str) -> Option<&ChainSpec> {
        self.chains.iter().find(|c| c.name == name)
    }
}

/// `iifname "<primary>" ct state new fib daddr type local ct mark set ct
/// mark | BIT`: a connection to one of the node's own addresses (NodePort,
/// hostPort, an instance-mode load balancer) arriving on the primary ENI
/// gets our bit in its conntrack mark; forwarded traffic (to a pod's own
/// address) does not, and neither do the other bits.
pub fn mark_rule(primary: &str, bit: u32) -> RuleSpec {
    let mut name = [0u8; IFNAMSIZ];
    let len = primary.len().min(IFNAMSIZ - 1);
    name[..len].copy_from_slice(&primary.as_bytes()[..len]);
    let mut exprs = vec![
        Expr::Meta {
            key: NFT_META_IIFNAME,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            data: name.to_vec(),
        },
        Expr::Ct {
            key: NFT_CT_STATE,
            dreg: NFT_REG_1,
        },
        and_xor(NF_CT_STATE_NEW, 0),
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_NEQ,
            data: 0u32.to_ne_bytes().to_vec(),
        },
        Expr::Fib {
            flags: NFTA_FIB_F_DADDR,
            result: NFT_FIB_RESULT_ADDRTYPE,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
        Expr::Ct {
            key: NFT_CT_MARK,
            dreg: NFT_REG_1,
        },
    ];
    exprs.extend(set_bit(
        bit,
        Expr::CtSet {
            key: NFT_CT_MARK,
            sreg: NFT_REG_1,
        },
    ));
    RuleSpec {
        text: format!(
            "iifname \"{primary}\" ct state new fib daddr type local ct mark set ct mark | {bit:#010x}"
        ),
        exprs,
    }
}

/// `iifgroup <pod veths> ct mark & BIT == BIT meta mark set meta mark |
/// BIT`: a packet from a pod of a marked connection (its reply) carries
/// our bit, which `fwmark BIT/BIT lookup main` routes out the primary ENI.
/// Only our bit is set; the others (kube-proxy's, Calico's) stay as they
/// are. Packets crossing from a pod's namespace arrive with mark 0, so
/// nothing ever needs to clear the bit on the other packets.
pub fn restore_rule(bit: u32) -> RuleSpec {
    let mut exprs = from_a_pod().to_vec();
    exprs.extend([
        Expr::Ct {
            key: NFT_CT_MARK,
            dreg: NFT_REG_1,
        },
        and_xor(bit, 0),
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            data: bit.to_ne_bytes().to_vec(),
        },
        Expr::Meta {
            key: NFT_META_MARK,
            dreg: NFT_REG_1,
        },
    ]);
    exprs.extend(set_bit(
        bit,
        Expr::MetaSet {
            key: NFT_META_MARK,
            sreg: NFT_REG_1,
        },
    ));
    RuleSpec {
        text: format!(
            "iifgroup {LINK_GROUP} ct mark & {bit:#010x} == {bit:#010x} meta mark set meta mark | {bit:#010x}"
        ),
        exprs,
    }
}

/// `meta iifgroup LINK_GROUP`: the packet comes from a pod's host veth.
fn from_a_pod() -> [Expr; 2] {
    [
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
    ]
}

/// `reg1 = (reg1 & mask) ^ xor` on a 32-bit mark or state.
fn and_xor(mask: u32, xor: u32) -> Expr {
    Expr::Bitwise {
        sreg: NFT_REG_1,
        dreg: NFT_REG_1,
        len: 4,
        mask: mask.to_ne_bytes().to_vec(),
        xor: xor.to_ne_bytes().to_vec(),
    }
}

/// `... set ... | bit`: the value loaded in register 1 with `bit` set
/// (`(v & !bit) ^ bit`, as `nft` writes an `|`), stored by `store`.
fn set_bit(bit: u32, store: Expr) -> [Expr; 2] {
    [and_xor(!bit, bit), store]
}

/// The one rule of the masquerade chain: from a pod's veth (our link
/// group), to a destination outside the set, masquerade (fully random
/// source ports, as AWS's `--random-fully`, so many pods' flows do not
/// clash on the node's address).
pub fn masquerade_rule() -> RuleSpec {
    let mut exprs = from_a_pod().to_vec();
    exprs.extend([
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
    ]);
    RuleSpec {
        text: format!("iifgroup {LINK_GROUP} ip daddr != @{SET} masquerade fully-random"),
        exprs,
    }
}

/// One of our chains as read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainState {
    /// How it is hooked; `None`: no such chain.
    pub info: Option<ChainInfo>,
    /// Its rules' expressions, in order.
    pub rules: Vec<Vec<Expr>>,
}

/// Our table as read back (it exists).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableState {
    /// Each chain name we ever write ([`CHAINS`]), as found.
    pub chains: Vec<(&'static str, ChainState)>,
    /// The set's elements; `None`: no such set.
    pub elements: Option<Vec<(u32, bool)>>,
}

/// Compares our table as read back (`None`: it does not exist) with what
/// `want` says it holds; the error names the first thing wrong.
pub fn compare(want: &TableSpec, found: Option<&TableState>) -> Result<(), String> {
    let Some(found) = found else {
        return Err(format!(
            "table ip {TABLE} does not exist (the agent programs it at start and again within a reconcile period)"
        ));
    };
    for name in CHAINS {
        let state = found
            .chains
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s);
        let info = state.and_then(|s| s.info.as_ref());
        match (want.chain(name), info) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(format!(
                    "chain {name} of table ip {TABLE} exists though egress masquerade is off"
                ));
            }
            (Some(_), None) => {
                return Err(format!("chain {name} of table ip {TABLE} is missing"));
            }
            (Some(chain), Some(info)) => {
                if !chain.hooked_as(info) {
                    return Err(format!(
                        "chain {name} is not {}: {info:?}",
                        chain.describe()
                    ));
                }
                compare_rules(chain, state.map(|s| &s.rules[..]).unwrap_or_default())?;
            }
        }
    }
    match (&want.set, found.elements.as_deref().map(element_ranges)) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(format!(
            "set {SET} of table ip {TABLE} exists though egress masquerade is off"
        )),
        (Some(_), None) => Err(format!("set {SET} is missing")),
        (Some(wanted), Some(Some(r))) if r == *wanted => Ok(()),
        (Some(wanted), Some(r)) => Err(format!(
            "set {SET} holds {}, expected {}",
            show(r.as_deref().unwrap_or_default()),
            show(wanted)
        )),
    }
}

fn compare_rules(chain: &ChainSpec, found: &[Vec<Expr>]) -> Result<(), String> {
    let name = chain.name;
    if found.len() == chain.rules.len()
        && found.iter().zip(&chain.rules).all(|(f, w)| *f == w.exprs)
    {
        return Ok(());
    }
    if let Some(missing) = chain.rules.iter().find(|w| !found.contains(&w.exprs)) {
        return Err(format!("chain {name} lacks the rule `{}`", missing.text));
    }
    if let Some(extra) = found
        .iter()
        .find(|f| !chain.rules.iter().any(|w| w.exprs == **f))
    {
        let text: Vec<String> = extra.iter().map(ToString::to_string).collect();
        return Err(format!(
            "chain {name} holds a rule the agent did not write: `{}`",
            text.join(" ")
        ));
    }
    Err(format!(
        "chain {name} holds {} rules, expected {} in this order: {}",
        found.len(),
        chain.rules.len(),
        chain
            .rules
            .iter()
            .map(|r| format!("`{}`", r.text))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Ranges as the fewest CIDR blocks, `{a, b}`.
pub fn show(ranges: &[(u32, u32)]) -> String {
    let list: Vec<String> = ranges
        .iter()
        .flat_map(|(a, b)| range_to_cidrs(*a, *b))
        .map(|c| c.to_string())
        .collect();
    format!("{{{}}}", list.join(", "))
}
