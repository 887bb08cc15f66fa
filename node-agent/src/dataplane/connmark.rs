//! Replies of connections that arrived on the primary ENI leave by it, as
//! pure data: which bit of the conntrack and packet marks is ours, and the
//! policy rule that routes marked replies by the main table.
//!
//! A NodePort, hostPort or instance-mode load balancer connection arrives
//! on the primary ENI for one of the node's own addresses and is DNATed to
//! a pod whose address lives on a secondary ENI. Without more, the pod's
//! reply follows the pod's rule (`from <pod> lookup <ENI table>`, 1536) out
//! the secondary ENI, and the reverse NAT gives it the primary address
//! there: a VPC's source/destination check drops it. So the connection is
//! marked when it arrives (conntrack mark), the mark is copied to the
//! packets of its replies that come from a pod, and
//! `fwmark BIT/BIT lookup main` (priority [`RULE_CONNMARK_PRIORITY`])
//! routes those by the main table, out the primary ENI, as AWS's VPC CNI
//! does with its `0x80` mark.

use std::fmt;
use std::str::FromStr;

/// The bit used unless `--connmark-bit` says otherwise (AWS's VPC CNI's).
pub const DEFAULT_CONNMARK_BIT: u32 = 0x80;

/// Policy-rule priority of `fwmark BIT/BIT lookup main`: before the egress
/// rules (1024..1026) and the pods' rules (1536), so a marked reply never
/// reaches its pod's ENI table.
pub const RULE_CONNMARK_PRIORITY: u32 = 1000;

/// Mark bits other components of a node own; ours must not be among them.
const TAKEN: [(u32, &str); 4] = [
    (0x2000, "the portmap plugin's masquerade mark 0x2000"),
    (0x4000, "kube-proxy's masquerade mark 0x4000"),
    (0x8000, "kube-proxy's drop mark 0x8000"),
    (0xffff_0000, "Calico's marks 0xffff0000"),
];

/// The one bit of the conntrack and packet marks that is ours. Only this
/// bit is ever set, and never cleared or overwritten with the others:
/// kube-proxy and Calico keep theirs in the same marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnmarkBit(u32);

impl ConnmarkBit {
    /// `bit`, refused unless exactly one bit is set and no other
    /// component's mark holds it.
    pub fn new(bit: u32) -> Result<ConnmarkBit, String> {
        if bit.count_ones() != 1 {
            return Err(format!(
                "connmark bit {bit:#x} must have exactly one bit set (such as 0x80)"
            ));
        }
        if let Some((_, owner)) = TAKEN.iter().find(|(mask, _)| mask & bit != 0) {
            return Err(format!(
                "connmark bit {bit:#x} collides with {owner}; choose another bit (the default is {DEFAULT_CONNMARK_BIT:#x})"
            ));
        }
        Ok(ConnmarkBit(bit))
    }

    /// The bit as a mask.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for ConnmarkBit {
    fn default() -> ConnmarkBit {
        ConnmarkBit(DEFAULT_CONNMARK_BIT)
    }
}

impl FromStr for ConnmarkBit {
    type Err = String;

    /// Hexadecimal with `0x`, or decimal.
    fn from_str(s: &str) -> Result<ConnmarkBit, String> {
        let t = s.trim();
        let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => t.parse(),
        };
        let bit = parsed
            .map_err(|e| format!("connmark bit {s:?}: {e} (give a number such as 0x80 or 128)"))?;
        ConnmarkBit::new(bit)
    }
}

impl fmt::Display for ConnmarkBit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// What the connmark needs on a node: our bit, and the primary ENI by its
/// MAC (its link is looked up by MAC whenever it is programmed or checked,
/// so a renamed link is still found).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connmark {
    /// Our bit.
    pub bit: ConnmarkBit,
    /// The primary ENI's MAC, lower case.
    pub primary_mac: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connmark_bit_is_one_bit_in_hex_or_decimal() {
        assert_eq!(
            "0x80".parse::<ConnmarkBit>().map(ConnmarkBit::get),
            Ok(0x80)
        );
        assert_eq!("128".parse::<ConnmarkBit>().map(ConnmarkBit::get), Ok(0x80));
        assert_eq!(
            " 0X100 ".parse::<ConnmarkBit>().map(ConnmarkBit::get),
            Ok(0x100)
        );
        assert_eq!(ConnmarkBit::default().to_string(), "0x80");
        for none_or_many in ["0", "0x0", "0x81", "3", "0xff"] {
            let e = none_or_many.parse::<ConnmarkBit>().expect_err(none_or_many);
            assert!(e.contains("exactly one bit"), "{none_or_many}: {e}");
        }
        for junk in ["", "0x", "eighty", "0x1g", "-128", "0x100000000"] {
            let e = junk.parse::<ConnmarkBit>().expect_err(junk);
            assert!(e.contains("0x80 or 128"), "{junk}: {e}");
        }
    }

    #[test]
    fn a_connmark_bit_of_portmap_kube_proxy_or_calico_is_refused_by_name() {
        let e = ConnmarkBit::new(0x2000).expect_err("portmap's masquerade");
        assert!(e.contains("portmap plugin's masquerade mark 0x2000"), "{e}");
        let e = ConnmarkBit::new(0x4000).expect_err("kube-proxy masquerade");
        assert!(e.contains("kube-proxy's masquerade mark 0x4000"), "{e}");
        let e = ConnmarkBit::new(0x8000).expect_err("kube-proxy drop");
        assert!(e.contains("kube-proxy's drop mark 0x8000"), "{e}");
        for calico in [0x1_0000, 0x100_0000, 0x8000_0000] {
            let e = ConnmarkBit::new(calico).expect_err("calico");
            assert!(e.contains("Calico's marks 0xffff0000"), "{calico:#x}: {e}");
        }
        for free in [0x1, 0x80, 0x100, 0x1000] {
            assert_eq!(ConnmarkBit::new(free).map(ConnmarkBit::get), Ok(free));
        }
    }
}
