//! The node's own part of the data path: our nftables table (the
//! connmark chain always, the masquerade chain and set while masquerading;
//! sent through [`super::nfnl`]) and our policy rules (over rtnetlink),
//! with loose reverse-path filtering on the primary ENI. Programming is
//! idempotent: the table is replaced in one transaction and the rules are
//! brought in line with a plan. A dual-stack node has the connmark in IPv6
//! too: `table ip6 vpc-cni` with the same `prerouting` chain and `ip -6
//! rule 1000 fwmark BIT/BIT lookup main` (IPv6 is never masqueraded).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::AddressFamily as Family;
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage};
use rtnetlink::{Handle, IpVersion};
use tracing::{debug, info};

use super::messages::{MAIN_TABLE, ROUTE_PROTOCOL};
use super::{ENOENT, find_mac, io_err, link_name, netns, nfnl, nft, open_path, tolerate};
use crate::dataplane::DataplaneError;
use crate::dataplane::connmark::{Connmark, ConnmarkBit, RULE_CONNMARK_PRIORITY};
use crate::dataplane::egress::{
    self, Cidr, Egress, EgressRule, RULE_EGRESS_ANCHOR, RULE_EGRESS_MAIN_PRIORITY,
    RULE_EGRESS_SKIP_PRIORITY,
};

/// Brings the node in line with `egress` and `connmark`: the table
/// (replaced atomically), loose `rp_filter` on the primary ENI (the
/// replies of marked connections leave by it while their pods' other
/// traffic leaves by their ENIs, and node-to-pod traffic is asymmetric
/// too), then the rules. Logs how many rules changed.
pub async fn program(
    node: &Handle,
    node_netns: Option<&Path>,
    egress: &Egress,
    connmark: &Connmark,
    ipv6: bool,
) -> Result<(), DataplaneError> {
    let primary = primary_link(node, connmark).await?;
    let spec = table(&primary, egress, connmark);
    nfnl::transaction(open_path(node_netns)?, move |seq| {
        nft::replace_batch(seq, &spec, nft::FAMILY_IP)
    })
    .await
    .map_err(|detail| DataplaneError::Kernel {
        op: "nft replace table ip vpc-cni",
        detail,
    })?;
    if ipv6 {
        let spec6 = table6(&primary, connmark);
        nfnl::transaction(open_path(node_netns)?, move |seq| {
            nft::replace_batch(seq, &spec6, nft::FAMILY_IP6)
        })
        .await
        .map_err(|detail| DataplaneError::Kernel {
            op: "nft replace table ip6 vpc-cni",
            detail,
        })?;
        sync_rules(node, IpVersion::V6, &rules6(connmark)).await?;
    }
    netns::write_sysctl(
        open_path(node_netns)?,
        &format!("net/ipv4/conf/{primary}/rp_filter"),
        "2",
    )
    .await
    .map_err(io_err("sysctl rp_filter (primary ENI)"))?;
    let changed = sync_rules(node, IpVersion::V4, &egress::rules(egress, connmark.bit)).await?;
    info!(%egress, connmark = %connmark.bit, %primary, rules_changed = changed, "egress and connmark programmed");
    Ok(())
}

/// Removes the rules and the table; what is already gone is fine.
/// (Both families: a node that ran dual-stack has the IPv6 connmark too.)
pub async fn remove(node: &Handle, node_netns: Option<&Path>) -> Result<(), DataplaneError> {
    let mut removed = sync_rules(node, IpVersion::V4, &[]).await?;
    removed += sync_rules(node, IpVersion::V6, &[]).await?;
    for (family, op) in [
        (nft::FAMILY_IP, "nft delete table ip vpc-cni"),
        (nft::FAMILY_IP6, "nft delete table ip6 vpc-cni"),
    ] {
        nfnl::transaction(open_path(node_netns)?, move |seq| {
            nft::remove_batch(seq, family)
        })
        .await
        .map_err(|detail| DataplaneError::Kernel { op, detail })?;
    }
    debug!(rules_removed = removed, "egress and connmark removed");
    Ok(())
}

/// Verifies the node against `egress` and `connmark`, naming the first
/// thing wrong.
pub async fn check(
    node: &Handle,
    node_netns: Option<&Path>,
    egress: &Egress,
    connmark: &Connmark,
    ipv6: bool,
) -> Result<(), String> {
    let primary = primary_link(node, connmark)
        .await
        .map_err(|e| e.to_string())?;
    let netns = || open_path(node_netns).map_err(|e| e.to_string());
    let state = nfnl::read_table(netns()?, nft::FAMILY_IP).await?;
    nft::compare(&table(&primary, egress, connmark), state.as_ref())?;
    check_rules(node, IpVersion::V4, &egress::rules(egress, connmark.bit)).await?;
    if ipv6 {
        let state = nfnl::read_table(netns()?, nft::FAMILY_IP6).await?;
        nft::compare(&table6(&primary, connmark), state.as_ref())
            .map_err(|e| format!("ip6: {e}"))?;
        check_rules(node, IpVersion::V6, &rules6(connmark))
            .await
            .map_err(|e| format!("ip6: {e}"))?;
    }
    Ok(())
}

/// Whether our rules of `version` are exactly `wanted`, naming the first
/// difference.
async fn check_rules(
    node: &Handle,
    version: IpVersion,
    wanted: &[EgressRule],
) -> Result<(), String> {
    let present: Vec<EgressRule> = egress_rules(node, version)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let (extra, missing) = egress::plan_rules(&present, wanted);
    if let Some(r) = missing.first() {
        return Err(format!("policy rule \"{r}\" is missing"));
    }
    if let Some(r) = extra.first() {
        return Err(format!("stray policy rule \"{r}\""));
    }
    Ok(())
}

/// The IPv6 table: the connmark chain alone.
fn table6(primary: &str, connmark: &Connmark) -> nft::TableSpec {
    nft::TableSpec::new(primary, connmark.bit.get(), None)
}

/// The IPv6 policy rules: the connmark's alone.
fn rules6(connmark: &Connmark) -> Vec<EgressRule> {
    vec![EgressRule::Connmark(connmark.bit)]
}

/// What our table holds on this node.
fn table(primary: &str, egress: &Egress, connmark: &Connmark) -> nft::TableSpec {
    let masquerade = matches!(egress, Egress::Masquerade { .. }).then(|| egress.ranges());
    nft::TableSpec::new(primary, connmark.bit.get(), masquerade)
}

/// The name of the primary ENI's link, found by its MAC.
async fn primary_link(node: &Handle, connmark: &Connmark) -> Result<String, DataplaneError> {
    find_mac(node, &connmark.primary_mac)
        .await?
        .and_then(|l| link_name(&l))
        .ok_or_else(|| DataplaneError::Kernel {
            op: "ip link show",
            detail: format!(
                "no link with MAC {}, the primary ENI's: the connmark of connections arriving on it cannot be programmed",
                connmark.primary_mac
            ),
        })
}

/// Our egress rules in the node, each with its message (for deletion).
async fn egress_rules(
    node: &Handle,
    version: IpVersion,
) -> Result<Vec<(EgressRule, RuleMessage)>, DataplaneError> {
    let v6 = version == IpVersion::V6;
    let rules: Vec<RuleMessage> = node
        .rule()
        .get(version)
        .execute()
        .try_collect()
        .await
        .map_err(|e| super::kernel("ip rule show", e))?;
    Ok(rules
        .into_iter()
        .filter(|m| (m.header.family == Family::Inet6) == v6)
        .filter_map(|m| parse_rule(&m).map(|r| (r, m)))
        .collect())
}

/// Deletes and adds rules until ours are exactly `wanted`; returns how
/// many changed.
async fn sync_rules(
    node: &Handle,
    version: IpVersion,
    wanted: &[EgressRule],
) -> Result<usize, DataplaneError> {
    let v6 = version == IpVersion::V6;
    let present = egress_rules(node, version).await?;
    let kinds: Vec<EgressRule> = present.iter().map(|(r, _)| r.clone()).collect();
    let (delete, add) = egress::plan_rules(&kinds, wanted);
    let mut left = delete.clone();
    for (rule, msg) in present {
        if let Some(i) = left.iter().position(|r| *r == rule) {
            left.remove(i);
            tolerate(node.rule().del(msg).execute().await, &[ENOENT])
                .map_err(|e| super::kernel("ip rule del (egress)", e))?;
        }
    }
    for rule in &add {
        let mut req = node.rule().add();
        let mut msg = rule_message(rule);
        if v6 {
            msg.header.family = Family::Inet6;
        }
        *req.message_mut() = msg;
        req.execute()
            .await
            .map_err(|e| super::kernel("ip rule add (egress)", e))?;
    }
    Ok(delete.len() + add.len())
}

/// `ip rule add [fwmark BIT/BIT lookup main | to CIDR goto 1026 | lookup
/// main | nop] priority P protocol 175`.
pub fn rule_message(rule: &EgressRule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    let (action, table) = match rule {
        EgressRule::Skip(_) => (RuleAction::Goto, 0),
        EgressRule::Connmark(_) | EgressRule::Main => (RuleAction::ToTable, MAIN_TABLE as u8),
        EgressRule::Anchor => (RuleAction::Nop, 0),
    };
    msg.header = RuleHeader {
        family: Family::Inet,
        dst_len: match rule {
            EgressRule::Skip(c) => c.prefix,
            _ => 0,
        },
        action,
        table,
        ..RuleHeader::default()
    };
    if let EgressRule::Skip(c) = rule {
        if c.prefix > 0 {
            msg.attributes
                .push(RuleAttribute::Destination(IpAddr::V4(c.network)));
        }
        msg.attributes.push(RuleAttribute::Goto(RULE_EGRESS_ANCHOR));
    }
    if let EgressRule::Connmark(bit) = rule {
        msg.attributes.push(RuleAttribute::FwMark(bit.get()));
        msg.attributes.push(RuleAttribute::FwMask(bit.get()));
    }
    if matches!(rule, EgressRule::Connmark(_) | EgressRule::Main) {
        msg.attributes.push(RuleAttribute::Table(MAIN_TABLE));
    }
    msg.attributes
        .push(RuleAttribute::Priority(rule.priority()));
    msg.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::Other(
            ROUTE_PROTOCOL,
        )));
    msg
}

/// The egress rule a kernel rule is, if it is one of ours.
pub fn parse_rule(m: &RuleMessage) -> Option<EgressRule> {
    let ours = m
        .attributes
        .contains(&RuleAttribute::Protocol(RouteProtocol::Other(
            ROUTE_PROTOCOL,
        )));
    let priority = m.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })?;
    if !ours {
        return None;
    }
    match (priority, m.header.action) {
        (RULE_EGRESS_SKIP_PRIORITY, RuleAction::Goto) => {
            let network = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RuleAttribute::Destination(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            Some(EgressRule::Skip(Cidr {
                network,
                prefix: m.header.dst_len,
            }))
        }
        (RULE_EGRESS_MAIN_PRIORITY, RuleAction::ToTable) => Some(EgressRule::Main),
        (RULE_CONNMARK_PRIORITY, RuleAction::ToTable) => {
            let attr = |want: fn(&RuleAttribute) -> Option<u32>| m.attributes.iter().find_map(want);
            let mark = attr(|a| match a {
                RuleAttribute::FwMark(v) => Some(*v),
                _ => None,
            });
            let mask = attr(|a| match a {
                RuleAttribute::FwMask(v) => Some(*v),
                _ => None,
            });
            // Ours whatever its bit (an earlier `--connmark-bit`), so a
            // changed bit replaces it; a rule of ours not of this shape is
            // none we write.
            match (mark, mask) {
                (Some(mark), Some(mask)) if mark == mask => {
                    ConnmarkBit::new(mark).ok().map(EgressRule::Connmark)
                }
                _ => None,
            }
        }
        (RULE_EGRESS_ANCHOR, RuleAction::Nop) => Some(EgressRule::Anchor),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_rules_round_trip_and_are_not_pod_rules() {
        let e = Egress::masquerade(vec!["10.0.0.0/16".parse().expect("cidr")]).expect("egress");
        for rule in egress::rules(&e, ConnmarkBit::default()) {
            let m = rule_message(&rule);
            assert_eq!(parse_rule(&m), Some(rule.clone()), "{rule}");
            assert_eq!(super::super::messages::rule_pod(&m), None, "{rule}");
        }
        let skip = rule_message(&EgressRule::Skip("10.0.0.0/16".parse().expect("cidr")));
        assert_eq!(skip.header.action, RuleAction::Goto);
        assert_eq!(skip.header.dst_len, 16);
        assert!(
            skip.attributes
                .contains(&RuleAttribute::Goto(RULE_EGRESS_ANCHOR))
        );
        assert_eq!(parse_rule(&RuleMessage::default()), None);
    }

    #[test]
    fn the_connmark_rule_is_fwmark_bit_over_bit_to_main_before_the_pods() {
        let bit = ConnmarkBit::new(0x100).expect("bit");
        let m = rule_message(&EgressRule::Connmark(bit));
        assert_eq!(m.header.action, RuleAction::ToTable);
        for a in [
            RuleAttribute::FwMark(0x100),
            RuleAttribute::FwMask(0x100),
            RuleAttribute::Table(MAIN_TABLE),
            RuleAttribute::Priority(1000),
            RuleAttribute::Protocol(RouteProtocol::Other(ROUTE_PROTOCOL)),
        ] {
            assert!(m.attributes.contains(&a), "{a:?} in {m:?}");
        }
        assert_eq!(parse_rule(&m), Some(EgressRule::Connmark(bit)));
        assert_eq!(super::super::messages::rule_pod(&m), None);
        // Somebody else's rule at 1000 (no protocol 175) is not ours.
        let mut theirs = m.clone();
        theirs
            .attributes
            .retain(|a| !matches!(a, RuleAttribute::Protocol(_)));
        assert_eq!(parse_rule(&theirs), None);
    }
}
