//! Egress out of the VPC, as pure data: what gets masqueraded and how pod
//! traffic is routed for it. The netlink data path turns this into an
//! nftables table and three kinds of policy rules (`netlink/egress.rs`),
//! beside the connmark's table chain and rule ([`super::connmark`]); the
//! fake records it.
//!
//! Pod traffic to a destination outside the non-masquerade CIDRs leaves by
//! the main table (the primary ENI) and is masqueraded to the node's
//! primary address; traffic to those CIDRs (the VPC by default) keeps the
//! pod's address and leaves by the pod's own ENI, as before.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::connmark::{ConnmarkBit, RULE_CONNMARK_PRIORITY};

/// An IPv4 CIDR block whose host bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The network address.
    pub network: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix: u8,
}

impl Cidr {
    /// The first address, as a number.
    pub fn first(&self) -> u32 {
        u32::from(self.network)
    }

    /// The last address, as a number.
    pub fn last(&self) -> u32 {
        self.first() | !mask(self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, len) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s}: not a CIDR (such as 10.0.0.0/16)"))?;
        let network: Ipv4Addr = ip.parse().map_err(|e| format!("{s}: bad address: {e}"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s}: the prefix length must be 0 to 32"))?;
        if u32::from(network) & !mask(prefix) != 0 {
            return Err(format!("{s}: host bits set (did you mean {}/{prefix}?)", {
                Ipv4Addr::from(u32::from(network) & mask(prefix))
            }));
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// What the node does with pod traffic leaving the VPC.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Egress {
    /// Nothing of ours: pod traffic leaves by its ENI with the pod's
    /// address (a NAT gateway of the VPC, say, takes it from there).
    /// Programming this removes what an earlier start installed.
    #[default]
    Off,
    /// Masquerade pod traffic to anywhere outside these CIDRs to the
    /// node's primary address, routed by the main table.
    Masquerade {
        /// The destinations that keep the pod's address (the VPC's CIDRs).
        non_masquerade: Vec<Cidr>,
    },
}

impl Egress {
    /// Masquerading outside `non_masquerade` (which must not be empty: an
    /// empty list would masquerade pod-to-pod traffic too).
    pub fn masquerade(non_masquerade: Vec<Cidr>) -> Result<Egress, String> {
        if non_masquerade.is_empty() {
            return Err(
                "no non-masquerade CIDR: pod-to-pod traffic would be masqueraded too; give the VPC's CIDR".into(),
            );
        }
        Ok(Egress::Masquerade { non_masquerade })
    }

    /// The non-masquerade CIDRs merged into disjoint, sorted ranges.
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        match self {
            Egress::Off => Vec::new(),
            Egress::Masquerade { non_masquerade } => merge(non_masquerade),
        }
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Egress::Off => f.write_str("off"),
            Egress::Masquerade { non_masquerade } => {
                let list: Vec<String> = non_masquerade.iter().map(Cidr::to_string).collect();
                write!(f, "masquerade except to {}", list.join(","))
            }
        }
    }
}

/// Inclusive ranges `(first, last)` covering `cidrs`, sorted, with
/// overlapping and adjacent blocks merged (an nftables interval set
/// refuses overlapping elements).
pub fn merge(cidrs: &[Cidr]) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = cidrs.iter().map(|c| (c.first(), c.last())).collect();
    v.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if u64::from(a) <= u64::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The CIDR blocks that exactly cover the inclusive range `first..=last`,
/// fewest first to last.
pub fn range_to_cidrs(first: u32, last: u32) -> Vec<Cidr> {
    let mut out = Vec::new();
    let mut at = u64::from(first);
    let end = u64::from(last);
    while at <= end {
        // The largest aligned block starting at `at` that fits.
        let mut prefix: u8 = if at == 0 {
            0
        } else {
            32 - (at.trailing_zeros().min(32) as u8)
        };
        while at + (1u64 << (32 - u32::from(prefix))) - 1 > end {
            prefix += 1;
        }
        out.push(Cidr {
            network: Ipv4Addr::from(at as u32),
            prefix,
        });
        at += 1u64 << (32 - u32::from(prefix));
    }
    out
}

/// Policy-rule priority of "to <non-masquerade CIDR> goto [`RULE_EGRESS_ANCHOR`]":
/// traffic to the VPC skips the main-table rule below and reaches the
/// pods' per-ENI rules (priority 1536) as before.
pub const RULE_EGRESS_SKIP_PRIORITY: u32 = 1024;
/// Priority of "lookup main": every other destination is routed by the
/// main table, so pod traffic leaving the VPC goes out the primary ENI,
/// whose address it is masqueraded to.
pub const RULE_EGRESS_MAIN_PRIORITY: u32 = 1025;
/// Priority of the `nop` rule the skips jump to.
pub const RULE_EGRESS_ANCHOR: u32 = 1026;

// A marked reply is routed by the main table before any egress rule (and
// so before the pods' rules at 1536) sees it.
const _: () = assert!(RULE_CONNMARK_PRIORITY < RULE_EGRESS_SKIP_PRIORITY);

/// One policy rule of the node's own: the egress routing and the
/// connmark's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EgressRule {
    /// `fwmark BIT/BIT lookup main` at priority 1000: replies of
    /// connections that arrived on the primary ENI leave by it.
    Connmark(ConnmarkBit),
    /// `to CIDR goto 1026` at priority 1024.
    Skip(Cidr),
    /// `lookup main` at priority 1025.
    Main,
    /// `nop` at priority 1026.
    Anchor,
}

impl EgressRule {
    /// Its priority.
    pub fn priority(&self) -> u32 {
        match self {
            EgressRule::Connmark(_) => RULE_CONNMARK_PRIORITY,
            EgressRule::Skip(_) => RULE_EGRESS_SKIP_PRIORITY,
            EgressRule::Main => RULE_EGRESS_MAIN_PRIORITY,
            EgressRule::Anchor => RULE_EGRESS_ANCHOR,
        }
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressRule::Connmark(bit) => {
                write!(f, "{}: fwmark {bit}/{bit} lookup main", self.priority())
            }
            EgressRule::Skip(c) => {
                write!(f, "{}: to {c} goto {RULE_EGRESS_ANCHOR}", self.priority())
            }
            EgressRule::Main => write!(f, "{}: lookup main", self.priority()),
            EgressRule::Anchor => write!(f, "{}: nop", self.priority()),
        }
    }
}

/// The policy rules the node needs, sorted: the connmark's whatever the
/// egress; none more when off; else the anchor first (a `goto` to a
/// missing priority would be skipped), the main-table rule, and one skip
/// per block of the merged non-masquerade ranges.
pub fn rules(egress: &Egress, connmark: ConnmarkBit) -> Vec<EgressRule> {
    let ranges = egress.ranges();
    let mut v = vec![EgressRule::Connmark(connmark)];
    if matches!(egress, Egress::Off) {
        return v;
    }
    v.extend([EgressRule::Anchor, EgressRule::Main]);
    v.extend(
        ranges
            .iter()
            .flat_map(|(a, b)| range_to_cidrs(*a, *b))
            .map(EgressRule::Skip),
    );
    v
}

/// What to delete and what to add so that `present` becomes `wanted`
/// (additions in `wanted`'s order, so the anchor comes before the skips).
pub fn plan_rules(
    present: &[EgressRule],
    wanted: &[EgressRule],
) -> (Vec<EgressRule>, Vec<EgressRule>) {
    let mut delete: Vec<EgressRule> = Vec::new();
    let mut seen: Vec<&EgressRule> = Vec::new();
    for r in present {
        // A duplicate of a wanted rule goes too.
        if !wanted.contains(r) || seen.contains(&r) {
            delete.push(r.clone());
        } else {
            seen.push(r);
        }
    }
    let add = wanted
        .iter()
        .filter(|r| !present.contains(r))
        .cloned()
        .collect();
    (delete, add)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(c("10.0.0.0/16").to_string(), "10.0.0.0/16");
        assert_eq!(c("0.0.0.0/0").last(), u32::MAX);
        assert!(
            "10.0.0.1/16"
                .parse::<Cidr>()
                .expect_err("host bits")
                .contains("10.0.0.0/16")
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("x/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn ranges_merge_overlaps_and_neighbours() {
        let r = merge(&[
            c("10.1.0.0/16"),
            c("10.0.0.0/16"),
            c("10.0.16.0/20"),
            c("192.168.0.0/24"),
        ]);
        assert_eq!(
            r,
            vec![
                (c("10.0.0.0/16").first(), c("10.1.0.0/16").last()),
                (c("192.168.0.0/24").first(), c("192.168.0.0/24").last()),
            ]
        );
        assert_eq!(
            merge(&[c("0.0.0.0/0"), c("10.0.0.0/8")]),
            vec![(0, u32::MAX)]
        );
        assert!(merge(&[]).is_empty());
    }

    #[test]
    fn a_range_is_covered_by_the_fewest_blocks() {
        assert_eq!(
            range_to_cidrs(c("10.0.0.0/16").first(), c("10.1.0.0/16").last()),
            vec![c("10.0.0.0/15")]
        );
        assert_eq!(
            range_to_cidrs(c("10.1.0.0/16").first(), c("10.2.0.0/16").last()),
            vec![c("10.1.0.0/16"), c("10.2.0.0/16")]
        );
        assert_eq!(range_to_cidrs(0, u32::MAX), vec![c("0.0.0.0/0")]);
        assert_eq!(
            range_to_cidrs(u32::MAX, u32::MAX),
            vec![c("255.255.255.255/32")]
        );
    }

    fn bit() -> ConnmarkBit {
        ConnmarkBit::default()
    }

    #[test]
    fn masquerading_needs_a_cidr_and_off_needs_only_the_connmark_rule() {
        assert!(Egress::masquerade(vec![]).is_err());
        assert_eq!(
            rules(&Egress::Off, bit()),
            vec![EgressRule::Connmark(bit())]
        );
        let e = Egress::masquerade(vec![c("10.0.0.0/16"), c("10.0.16.0/20")]).expect("egress");
        assert_eq!(
            rules(&e, bit()),
            vec![
                EgressRule::Connmark(bit()),
                EgressRule::Anchor,
                EgressRule::Main,
                EgressRule::Skip(c("10.0.0.0/16"))
            ]
        );
        assert_eq!(
            e.to_string(),
            "masquerade except to 10.0.0.0/16,10.0.16.0/20"
        );
    }

    #[test]
    fn rule_plans_remove_strays_and_duplicates_and_add_what_lacks() {
        let e = Egress::masquerade(vec![c("10.0.0.0/16")]).expect("egress");
        let wanted = rules(&e, bit());
        assert_eq!(plan_rules(&wanted, &wanted), (vec![], vec![]));
        let present = vec![
            EgressRule::Main,
            EgressRule::Main,
            EgressRule::Skip(c("172.16.0.0/12")),
        ];
        let (delete, add) = plan_rules(&present, &wanted);
        assert_eq!(
            delete,
            vec![EgressRule::Main, EgressRule::Skip(c("172.16.0.0/12"))]
        );
        assert_eq!(
            add,
            vec![
                EgressRule::Connmark(bit()),
                EgressRule::Anchor,
                EgressRule::Skip(c("10.0.0.0/16"))
            ]
        );
        // Off keeps the connmark's rule and drops the egress rules.
        let (delete, add) = plan_rules(&wanted, &rules(&Egress::Off, bit()));
        assert_eq!(delete, wanted[1..].to_vec());
        assert!(add.is_empty());
        // Uninstall: nothing wanted, everything of ours goes.
        let (delete, add) = plan_rules(&wanted, &[]);
        assert_eq!(delete, wanted);
        assert!(add.is_empty());
    }

    #[test]
    fn the_connmark_rule_follows_its_bit_and_comes_before_every_other() {
        let old = ConnmarkBit::new(0x80).expect("bit");
        let new = ConnmarkBit::new(0x100).expect("bit");
        let present = rules(&Egress::Off, old);
        let (delete, add) = plan_rules(&present, &rules(&Egress::Off, new));
        assert_eq!(delete, vec![EgressRule::Connmark(old)]);
        assert_eq!(add, vec![EgressRule::Connmark(new)]);
        assert_eq!(
            EgressRule::Connmark(new).to_string(),
            "1000: fwmark 0x100/0x100 lookup main"
        );
        let e = Egress::masquerade(vec![c("10.0.0.0/16")]).expect("egress");
        let all = rules(&e, new);
        assert!(
            all[1..]
                .iter()
                .all(|r| r.priority() > EgressRule::Connmark(new).priority()),
            "{all:?}"
        );
    }
}
