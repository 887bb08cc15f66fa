//! Egress out of the VPC on the node: the nftables table (over a
//! `NETLINK_NETFILTER` socket opened in the node's namespace, on a
//! short-lived thread there) and the policy rules (over rtnetlink).
//! Programming is idempotent: the table is replaced in one transaction and
//! the rules are brought in line with a plan.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use futures_util::TryStreamExt;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use rtnetlink::packet_route::AddressFamily as Family;
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage};
use rtnetlink::{Handle, IpVersion};
use tracing::{debug, info};

use super::messages::{MAIN_TABLE, ROUTE_PROTOCOL};
use super::nft::{self, Reply};
use super::{ENOENT, netns, tolerate};
use crate::dataplane::DataplaneError;
use crate::dataplane::egress::{
    self, Cidr, Egress, EgressRule, RULE_EGRESS_ANCHOR, RULE_EGRESS_MAIN_PRIORITY,
    RULE_EGRESS_SKIP_PRIORITY,
};

/// How long the kernel may take to answer one nftables request.
const NFT_TIMEOUT: Duration = Duration::from_secs(5);

/// Brings the node in line with `egress`: for masquerading, the table
/// (replaced atomically) then the rules; for off, the rules then the table
/// removed. Logs how many rules changed.
pub async fn program(
    node: &Handle,
    netns_fd: Option<OwnedFd>,
    egress: &Egress,
) -> Result<(), DataplaneError> {
    match egress {
        Egress::Off => remove(node, netns_fd).await,
        Egress::Masquerade { .. } => {
            let ranges = egress.ranges();
            nft_transaction(netns_fd, move |seq| nft::replace_batch(seq, &ranges))
                .await
                .map_err(|detail| DataplaneError::Kernel {
                    op: "nft replace table ip vpc-cni",
                    detail,
                })?;
            let changed = sync_rules(node, &egress::rules(egress)).await?;
            info!(%egress, rules_changed = changed, "egress programmed");
            Ok(())
        }
    }
}

/// Removes the rules and the table; what is already gone is fine.
pub async fn remove(node: &Handle, netns_fd: Option<OwnedFd>) -> Result<(), DataplaneError> {
    let removed = sync_rules(node, &[]).await?;
    nft_transaction(netns_fd, nft::remove_batch)
        .await
        .map_err(|detail| DataplaneError::Kernel {
            op: "nft delete table ip vpc-cni",
            detail,
        })?;
    debug!(rules_removed = removed, "egress removed");
    Ok(())
}

/// Verifies the node against `egress`, naming the first thing wrong.
pub async fn check(
    node: &Handle,
    netns_fd: Option<OwnedFd>,
    egress: &Egress,
) -> Result<(), String> {
    if matches!(egress, Egress::Off) {
        return Ok(());
    }
    let state = netns::run_in(netns_fd, read_table)
        .await
        .map_err(|e| format!("cannot read nftables: {e}"))??;
    let wanted = egress.ranges();
    match state {
        None => {
            return Err(format!(
                "table ip {} does not exist (the agent programs it at start and again within a reconcile period)",
                nft::TABLE
            ));
        }
        Some(t) => {
            let Some(chain) = t.chain else {
                return Err(format!(
                    "chain {} of table ip {} is missing",
                    nft::CHAIN,
                    nft::TABLE
                ));
            };
            if !chain.is_ours() {
                return Err(format!(
                    "chain {} is not nat at postrouting priority srcnat: {chain:?}",
                    nft::CHAIN
                ));
            }
            if t.rules.len() != 1 || t.rules[0] != nft::masquerade_rule() {
                let found: Vec<String> = t
                    .rules
                    .iter()
                    .map(|r| {
                        r.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect();
                return Err(format!(
                    "chain {} holds [{}], expected the one masquerade rule",
                    nft::CHAIN,
                    found.join("; ")
                ));
            }
            match t.elements.as_deref().map(nft::element_ranges) {
                None => return Err(format!("set {} is missing", nft::SET)),
                Some(Some(r)) if r == wanted => {}
                Some(r) => {
                    return Err(format!(
                        "set {} holds {}, expected {}",
                        nft::SET,
                        show(r.as_deref().unwrap_or_default()),
                        show(&wanted)
                    ));
                }
            }
        }
    }
    let present: Vec<EgressRule> = egress_rules(node)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let (extra, missing) = egress::plan_rules(&present, &egress::rules(egress));
    if let Some(r) = missing.first() {
        return Err(format!("policy rule \"{r}\" is missing"));
    }
    if let Some(r) = extra.first() {
        return Err(format!("stray policy rule \"{r}\""));
    }
    Ok(())
}

fn show(ranges: &[(u32, u32)]) -> String {
    let list: Vec<String> = ranges
        .iter()
        .flat_map(|(a, b)| egress::range_to_cidrs(*a, *b))
        .map(|c| c.to_string())
        .collect();
    format!("{{{}}}", list.join(", "))
}

/// Our table as read back.
#[derive(Debug)]
struct TableState {
    chain: Option<nft::ChainInfo>,
    rules: Vec<Vec<nft::Expr>>,
    /// `None`: no such set.
    elements: Option<Vec<(u32, bool)>>,
}

fn read_table() -> std::io::Result<Result<Option<TableState>, String>> {
    let sock = open()?;
    let fd = sock.as_raw_fd();
    let mut seq = 1;
    let mut next = || {
        seq += 1;
        seq
    };
    match request(fd, &nft::get_table(next()))? {
        Err(e) if e == ENOENT => return Ok(Ok(None)),
        Err(e) => return Ok(Err(format!("reading table: errno {e}"))),
        Ok(_) => {}
    }
    let chain = match request(fd, &nft::get_chain(next()))? {
        Err(e) if e == ENOENT => None,
        Err(e) => return Ok(Err(format!("reading chain: errno {e}"))),
        Ok(msgs) => msgs
            .iter()
            .find(|(k, _)| nft::is_chain(*k))
            .map(|(_, a)| nft::parse_chain(a)),
    };
    let rules = match request(fd, &nft::dump_rules(next()))? {
        Err(e) if e == ENOENT => Vec::new(),
        Err(e) => return Ok(Err(format!("reading rules: errno {e}"))),
        Ok(msgs) => msgs
            .iter()
            .filter(|(k, _)| nft::is_rule(*k))
            .map(|(_, a)| nft::parse_rule(a))
            .collect(),
    };
    let elements = match request(fd, &nft::dump_elements(next()))? {
        Err(e) if e == ENOENT => None,
        Err(e) => return Ok(Err(format!("reading set: errno {e}"))),
        Ok(msgs) => Some(
            msgs.iter()
                .filter(|(k, _)| nft::is_elements(*k))
                .flat_map(|(_, a)| nft::parse_elements(a))
                .collect(),
        ),
    };
    Ok(Ok(Some(TableState {
        chain,
        rules,
        elements,
    })))
}

/// A `NETLINK_NETFILTER` socket in the calling thread's namespace.
fn open() -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    let timeout = nix::sys::time::TimeVal::new(NFT_TIMEOUT.as_secs() as _, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
    Ok(fd)
}

/// Sends one request and reads its answer: the data messages (until the
/// acknowledgement or the end of the dump), or the kernel's errno.
#[allow(clippy::type_complexity)]
fn request(fd: i32, msg: &[u8]) -> std::io::Result<Result<Vec<(u16, Vec<u8>)>, i32>> {
    send(fd, msg, MsgFlags::empty())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd, &mut buf, MsgFlags::empty())?;
        let replies = nft::replies(&buf[..n]).map_err(std::io::Error::other)?;
        let mut finished = false;
        for r in replies {
            match r {
                Reply::Ack { errno: 0, .. } | Reply::Done => finished = true,
                Reply::Ack { errno, .. } => return Ok(Err(errno)),
                // A single answer is followed by its acknowledgement, a
                // dump by its end.
                Reply::Data { kind, attrs, .. } => out.push((kind, attrs.to_vec())),
            }
        }
        if finished {
            return Ok(Ok(out));
        }
    }
}

/// Sends the batch `build(seq)` in the node's namespace and waits for every
/// acknowledgement; the first error fails the whole (atomic) transaction.
async fn nft_transaction(
    netns_fd: Option<OwnedFd>,
    build: impl FnOnce(u32) -> nft::Batch + Send + 'static,
) -> Result<(), String> {
    netns::run_in(netns_fd, move || {
        let sock = open()?;
        let fd = sock.as_raw_fd();
        let batch = build(1);
        send(fd, batch.bytes(), MsgFlags::empty())?;
        let mut pending = batch.acked.clone();
        let mut buf = vec![0u8; 64 * 1024];
        while !pending.is_empty() {
            let n = recv(fd, &mut buf, MsgFlags::empty())?;
            for r in nft::replies(&buf[..n]).map_err(std::io::Error::other)? {
                if let Reply::Ack { seq, errno } = r {
                    if errno != 0 {
                        let at = batch.acked.iter().position(|s| *s == seq).unwrap_or(0);
                        return Ok(Err(format!(
                            "message {} of the transaction refused: {}",
                            at + 1,
                            std::io::Error::from_raw_os_error(errno)
                        )));
                    }
                    pending.retain(|s| *s != seq);
                }
            }
        }
        Ok(Ok(()))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Our egress rules in the node, each with its message (for deletion).
async fn egress_rules(node: &Handle) -> Result<Vec<(EgressRule, RuleMessage)>, DataplaneError> {
    let rules: Vec<RuleMessage> = node
        .rule()
        .get(IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .map_err(|e| super::kernel("ip rule show", e))?;
    Ok(rules
        .into_iter()
        .filter_map(|m| parse_rule(&m).map(|r| (r, m)))
        .collect())
}

/// Deletes and adds rules until ours are exactly `wanted`; returns how
/// many changed.
async fn sync_rules(node: &Handle, wanted: &[EgressRule]) -> Result<usize, DataplaneError> {
    let present = egress_rules(node).await?;
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
        *req.message_mut() = rule_message(rule);
        req.execute()
            .await
            .map_err(|e| super::kernel("ip rule add (egress)", e))?;
    }
    Ok(delete.len() + add.len())
}

/// `ip rule add [to CIDR goto 1026 | lookup main | nop] priority P protocol 175`.
pub fn rule_message(rule: &EgressRule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    let (action, table) = match rule {
        EgressRule::Skip(_) => (RuleAction::Goto, 0),
        EgressRule::Main => (RuleAction::ToTable, MAIN_TABLE as u8),
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
    if matches!(rule, EgressRule::Main) {
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
        for rule in egress::rules(&e) {
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
}
