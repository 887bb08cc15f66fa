//! What the VPC router refuses to forward, as a real VPC does, and the
//! counters that show it: an nftables table `ip vpcsim` in the router's
//! namespace, and its twin `ip6 vpcsim` for IPv6, written with `nft`
//! (simulator tooling, like the `ip` calls of the fabric).
//!
//! ```text
//! table ip vpcsim {
//!     set eni-addresses { type ifname . ipv4_addr; }        # "e7" . 10.0.16.5, one per address an ENI holds
//!     set spoofed { type ifname . ipv4_addr; flags dynamic; counter; }
//!     counter unheld { }
//!     chain source-check {
//!         type filter hook prerouting priority raw; policy accept;
//!         iifname "e*" iifname . ip saddr != @eni-addresses update @spoofed { iifname . ip saddr } drop
//!     }
//!     chain unheld {
//!         type filter hook forward priority filter; policy accept;
//!         oifname "lo" counter name "unheld" drop
//!     }
//! }
//! ```
//!
//! - **Source/destination check.** A packet that leaves an ENI (arrives on
//!   the router's end of it, `e<seq>`) with a source address that ENI does
//!   not hold is dropped, and counted per (link, source) in `spoofed`. With
//!   the check off the rule only counts, so `vpc-sim source-check` shows
//!   what a real VPC would have dropped.
//! - **Unheld addresses.** The router answers ARP for every address of a
//!   subnet (a route for the subnet through `lo`, see the fabric), so a
//!   packet to an address no ENI holds is routed to `lo`: dropped here and
//!   counted, as a VPC delivers it nowhere.
//!
//! The IPv6 table is the same but for two things: a link-local source
//! (neighbour discovery with the router) or the unspecified one is never
//! spoofed, and an address of a subnet's block that no ENI holds meets the
//! block's `blackhole` route, which its `unheld` chain counts and drops
//! before routing (`fib daddr type blackhole`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

/// The router's table (family `ip`).
pub const TABLE: &str = "vpcsim";
/// The set of (router link, address) pairs the ENIs hold.
pub const ALLOWED: &str = "eni-addresses";
/// The dynamic set counting refused (link, source) pairs.
pub const SPOOFED: &str = "spoofed";

/// The source-check rule, dropping or only counting.
pub fn source_check_rule(enforce: bool) -> String {
    format!(
        "iifname \"e*\" iifname . ip saddr != @{ALLOWED} update @{SPOOFED} {{ iifname . ip saddr }}{}",
        if enforce { " drop" } else { "" }
    )
}

/// The IPv6 source-check rule: neighbour discovery's sources pass.
pub fn source_check_rule6(enforce: bool) -> String {
    format!(
        "iifname \"e*\" ip6 saddr != {{ ::, fe80::/10 }} iifname . ip6 saddr != @{ALLOWED} update @{SPOOFED} {{ iifname . ip6 saddr }}{}",
        if enforce { " drop" } else { "" }
    )
}

/// The IPv6 table, for `nft -f -` (replacing any earlier one).
pub fn ruleset6(enforce: bool) -> String {
    format!(
        "add table ip6 {TABLE}\ndelete table ip6 {TABLE}\n\
         table ip6 {TABLE} {{\n\
         \tset {ALLOWED} {{ type ifname . ipv6_addr; }}\n\
         \tset {SPOOFED} {{ type ifname . ipv6_addr; size 65535; flags dynamic; counter; }}\n\
         \tcounter unheld {{ }}\n\
         \tchain source-check {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\t{}\n\
         \t}}\n\
         \tchain unheld {{\n\
         \t\ttype filter hook prerouting priority filter; policy accept;\n\
         \t\tfib daddr type blackhole counter name \"unheld\" drop\n\
         \t}}\n\
         }}\n",
        source_check_rule6(enforce)
    )
}

/// The whole table, for `nft -f -` (replacing any earlier one).
pub fn ruleset(enforce: bool) -> String {
    format!(
        "add table ip {TABLE}\ndelete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tset {ALLOWED} {{ type ifname . ipv4_addr; }}\n\
         \tset {SPOOFED} {{ type ifname . ipv4_addr; size 65535; flags dynamic; counter; }}\n\
         \tcounter unheld {{ }}\n\
         \tchain source-check {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\t{}\n\
         \t}}\n\
         \tchain unheld {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\toifname \"lo\" counter name \"unheld\" drop\n\
         \t}}\n\
         }}\n",
        source_check_rule(enforce)
    )
}

/// Commands that switch the check on or off in place, both families.
pub fn switch(enforce: bool) -> String {
    format!(
        "flush chain ip {TABLE} source-check\nadd rule ip {TABLE} source-check {}\n\
         flush chain ip6 {TABLE} source-check\nadd rule ip6 {TABLE} source-check {}\n",
        source_check_rule(enforce),
        source_check_rule6(enforce)
    )
}

/// `add element` (or `delete element`) lines for addresses of one link.
pub fn elements(verb: &str, link: &str, addrs: &[Ipv4Addr]) -> String {
    if addrs.is_empty() {
        return String::new();
    }
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{link}\" . {a}")).collect();
    format!(
        "{verb} element ip {TABLE} {ALLOWED} {{ {} }}\n",
        list.join(", ")
    )
}

/// Lines that remove addresses of one link, present or not: `add` first
/// (a no-op for those there), so the `delete` of one transaction never
/// fails on an address that was not there.
pub fn forget(link: &str, addrs: &[Ipv4Addr]) -> String {
    elements("add", link, addrs) + &elements("delete", link, addrs)
}

/// [`elements`] of the IPv6 table.
pub fn elements6(verb: &str, link: &str, addrs: &[Ipv6Addr]) -> String {
    if addrs.is_empty() {
        return String::new();
    }
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{link}\" . {a}")).collect();
    format!(
        "{verb} element ip6 {TABLE} {ALLOWED} {{ {} }}\n",
        list.join(", ")
    )
}

/// [`forget`] of the IPv6 table.
pub fn forget6(link: &str, addrs: &[Ipv6Addr]) -> String {
    elements6("add", link, addrs) + &elements6("delete", link, addrs)
}

/// One refused (link, source) pair and how many packets it sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spoofed {
    /// The router's end of the ENI (`e<seq>`).
    pub link: String,
    /// The source address the ENI does not hold.
    pub source: IpAddr,
    /// Packets seen.
    pub packets: u64,
}

/// The `spoofed` set's elements from `nft -j list set ip vpcsim spoofed`.
pub fn parse_spoofed(json: &str) -> Result<Vec<Spoofed>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("nft -j: {e}"))?;
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for el in item["set"]["elem"].as_array().into_iter().flatten() {
            // {"elem": {"val": {"concat": ["e2", "10.0.1.99"]}, "counter": {"packets": 2, ...}}}
            let elem = &el["elem"];
            let concat = elem["val"]["concat"]
                .as_array()
                .ok_or_else(|| format!("unexpected element {el}"))?;
            let (Some(link), Some(addr)) = (
                concat.first().and_then(Value::as_str),
                concat.get(1).and_then(Value::as_str),
            ) else {
                return Err(format!("unexpected element {el}"));
            };
            out.push(Spoofed {
                link: link.to_string(),
                source: addr.parse().map_err(|e| format!("{addr}: {e}"))?,
                packets: elem["counter"]["packets"].as_u64().unwrap_or(0),
            });
        }
    }
    Ok(out)
}

/// The packets of the named counter `unheld` from
/// `nft -j list counter ip vpcsim unheld`.
pub fn parse_counter(json: &str) -> Result<u64, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("nft -j: {e}"))?;
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|item| item["counter"]["packets"].as_u64())
        .ok_or_else(|| "no counter in nft's answer".to_string())
}

/// Whether the source-check rule drops, from `nft -j list chain ...`.
pub fn parse_enforcing(json: &str) -> Result<bool, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("nft -j: {e}"))?;
    let rules: Vec<&Value> = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("rule"))
        .collect();
    if rules.is_empty() {
        return Err("the source-check chain has no rule".to_string());
    }
    // Any rule of the chain that drops (one added by hand to log, say, does not).
    Ok(rules.iter().any(|rule| {
        rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e.get("drop").is_some())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_drops_only_when_enforced() {
        assert!(source_check_rule(true).ends_with(" drop"));
        assert!(!source_check_rule(false).contains("drop"));
        assert!(ruleset(true).contains(&source_check_rule(true)));
        assert!(switch(false).starts_with("flush chain ip vpcsim source-check\n"));
    }

    #[test]
    fn the_ipv6_table_spares_neighbour_discovery_and_counts_unheld_addresses() {
        assert!(source_check_rule6(true).contains("ip6 saddr != { ::, fe80::/10 }"));
        assert!(source_check_rule6(true).ends_with(" drop"));
        assert!(!source_check_rule6(false).contains("drop"));
        assert!(ruleset6(true).contains("fib daddr type blackhole"));
        assert!(switch(true).contains(&source_check_rule6(true)));
        let a: Ipv6Addr = "2402:4e00::2".parse().expect("valid");
        assert_eq!(
            elements6("add", "e3", &[a]),
            "add element ip6 vpcsim eni-addresses { \"e3\" . 2402:4e00::2 }\n"
        );
        assert_eq!(forget6("e3", &[]), "");
    }

    #[test]
    fn elements_name_the_link_of_every_address() {
        let a: Ipv4Addr = "10.0.16.5".parse().expect("valid");
        let b: Ipv4Addr = "10.0.16.6".parse().expect("valid");
        assert_eq!(
            elements("add", "e3", &[a, b]),
            "add element ip vpcsim eni-addresses { \"e3\" . 10.0.16.5, \"e3\" . 10.0.16.6 }\n"
        );
        assert_eq!(elements("delete", "e3", &[]), "");
    }

    #[test]
    fn nft_json_is_read_back() {
        let set = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "ip",
            "name": "spoofed", "table": "vpcsim", "type": ["ifname", "ipv4_addr"], "handle": 2,
            "size": 65535, "flags": ["dynamic"], "elem": [{"elem": {"val": {"concat": ["e2",
            "10.9.1.99"]}, "counter": {"packets": 2, "bytes": 168}}}]}}]}"#;
        assert_eq!(
            parse_spoofed(set).expect("valid"),
            [Spoofed {
                link: "e2".into(),
                source: "10.9.1.99".parse::<IpAddr>().expect("valid"),
                packets: 2
            }]
        );
        let empty = r#"{"nftables": [{"set": {"name": "spoofed"}}]}"#;
        assert!(parse_spoofed(empty).expect("valid").is_empty());
        let counter = r#"{"nftables": [{"metainfo": {}}, {"counter": {"name": "unheld", "packets": 7, "bytes": 588}}]}"#;
        assert_eq!(parse_counter(counter).expect("valid"), 7);
        let chain = r#"{"nftables": [{"chain": {"name": "source-check"}}, {"rule": {"expr": [{"log": {}}]}}, {"rule": {"expr": [{"match": {}}, {"set": {}}, {"drop": null}]}}]}"#;
        assert!(parse_enforcing(chain).expect("valid"));
        let off = r#"{"nftables": [{"rule": {"expr": [{"match": {}}, {"set": {}}]}}]}"#;
        assert!(!parse_enforcing(off).expect("valid"));
    }
}
