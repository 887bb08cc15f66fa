//! The data path over rtnetlink. ADD and DEL run through the data-path
//! [`workers`] (on the serving thread when it can block, else on a worker
//! thread), with a blocking netlink socket in the node's namespace and a
//! short-lived one inside a pod's namespace, sending their requests in
//! [`batch`]es; everything else (ENIs, CHECK, GC, egress and connmark)
//! uses one long-lived async socket in the node's namespace.
//!
//! ADD sends 8 requests in three sends: the veth pair (with the host end up
//! and the pod end created in the pod namespace, echoed back); the host
//! route and two rules; pod end up, pod address, neighbour entry for the
//! gateway and pod default route. DEL removes the two rules and the host
//! route in one send before it answers and leaves the veth to the
//! [`reaper`].

mod batch;
mod egress;
mod eni;
mod messages;
mod netns;
mod nfnl;
mod nft;
mod pod;
mod reaper;
mod workers;

pub use messages::{RULE_FROM_POD_PRIORITY, RULE_TO_POD_PRIORITY};

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::packet_route::rule::RuleMessage;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use tracing::warn;

use super::connmark::Connmark;
use super::{Dataplane, DataplaneError, Egress, HOST_VETH_PREFIX, PodLinks, PodSpec, host_ifname};
use crate::ipam::EniRecord;

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

/// The netlink data path.
#[derive(Debug)]
pub struct NetlinkDataplane {
    node: Handle,
    node_netns: Option<PathBuf>,
    reaper: Arc<reaper::Reaper>,
    workers: workers::Workers,
    egress: Egress,
    connmark: Option<Connmark>,
    /// Pods may have IPv6 addresses: ENIs get their IPv6 part.
    ipv6: bool,
}

impl NetlinkDataplane {
    /// Opens the data path for the node namespace at `node_netns` (the
    /// agent's own when `None`) and enables IPv4 forwarding there.
    pub async fn new(node_netns: Option<&Path>) -> Result<NetlinkDataplane, DataplaneError> {
        let node = netns::connect(open_path(node_netns)?)
            .await
            .map_err(io_err("open netlink socket in the node namespace"))?;
        netns::write_sysctl(open_path(node_netns)?, "net/ipv4/ip_forward", "1")
            .await
            .map_err(io_err("sysctl net.ipv4.ip_forward=1"))?;
        let home = match open_path(node_netns)? {
            Some(fd) => fd,
            None => std::fs::File::open("/proc/thread-self/ns/net")
                .map(OwnedFd::from)
                .map_err(io_err("open the agent's netns"))?,
        };
        let workers = workers::Workers::start(home)
            .await
            .map_err(io_err("start the data-path workers"))?;
        Ok(NetlinkDataplane {
            reaper: reaper::Reaper::start(node.clone()),
            workers,
            node,
            node_netns: node_netns.map(Path::to_path_buf),
            egress: Egress::Off,
            connmark: None,
            ipv6: false,
        })
    }

    /// The egress [`Dataplane::program_egress`] programs and CHECK verifies.
    pub fn with_egress(mut self, egress: Egress) -> NetlinkDataplane {
        self.egress = egress;
        self
    }

    /// The connmark [`Dataplane::program_egress`] programs, whatever the
    /// egress, and CHECK verifies; without it, both fail.
    pub fn with_connmark(mut self, connmark: Connmark) -> NetlinkDataplane {
        self.connmark = Some(connmark);
        self
    }

    /// Dual stack: every ENI programmed gets its IPv6 part (forwarding, a
    /// default route to the VPC's router in its table), so its pods' IPv6
    /// addresses route as their IPv4 ones do.
    pub fn with_ipv6(mut self, ipv6: bool) -> NetlinkDataplane {
        self.ipv6 = ipv6;
        self
    }

    fn connmark(&self) -> Result<&Connmark, DataplaneError> {
        self.connmark
            .as_ref()
            .ok_or_else(|| DataplaneError::Kernel {
                op: "program the connmark",
                detail: "the primary ENI's MAC is not known".into(),
            })
    }
}

/// Removes our table (connmark and egress) and our node-wide policy rules
/// from the node namespace at `node_netns` (the caller's own when `None`):
/// `vpc-cni-agent uninstall`.
pub async fn remove_egress(node_netns: Option<&Path>) -> Result<(), DataplaneError> {
    let node = netns::connect(open_path(node_netns)?)
        .await
        .map_err(io_err("open netlink socket in the node namespace"))?;
    egress::remove(&node, node_netns).await
}

impl Dataplane for NetlinkDataplane {
    async fn program_eni(&self, eni: &EniRecord) -> Result<u32, DataplaneError> {
        self.program(eni).await
    }

    async fn attach_pod(&self, pod: &PodSpec) -> Result<PodLinks, DataplaneError> {
        self.attach(pod).await
    }

    async fn check_pod(&self, pod: &PodSpec) -> Result<(), DataplaneError> {
        self.reaper.touch();
        let who = pod.key.to_string();
        let missing = |what: &'static str, detail: String| DataplaneError::Mismatch {
            pod: who.clone(),
            what,
            detail,
        };
        let host = host_ifname(&pod.key.container_id, &pod.key.ifname);
        let host_link = find_link(&self.node, &host)
            .await?
            .ok_or_else(|| missing("host veth", format!("{host} does not exist")))?;
        if !link_is_up(&host_link) {
            return Err(missing("host veth", format!("{host} is down")));
        }
        for ip in pod.addresses() {
            let len = messages::host_len(ip);
            let routes = main_routes(&self.node, version(ip)).await?;
            let has_route = routes.iter().any(|r| {
                r.header.destination_prefix_length == len
                    && r.attributes
                        .contains(&RouteAttribute::Destination(ip.into()))
                    && r.attributes
                        .contains(&RouteAttribute::Oif(host_link.header.index))
            });
            if !has_route {
                return Err(missing(
                    "host route",
                    format!("no route {ip}/{len} dev {host}"),
                ));
            }
            let rules = our_rules(&self.node, version(ip)).await?;
            for (priority, what) in [
                (RULE_TO_POD_PRIORITY, "rule to pod"),
                (RULE_FROM_POD_PRIORITY, "rule from pod"),
            ] {
                let found = rules.iter().any(|r| {
                    messages::rule_pod(r) == Some(ip)
                        && r.attributes.contains(
                            &rtnetlink::packet_route::rule::RuleAttribute::Priority(priority),
                        )
                });
                if !found {
                    return Err(missing(
                        what,
                        format!("no rule for {ip} at priority {priority}"),
                    ));
                }
            }
        }
        let inside = netns::connect(Some(pod.netns.open()?))
            .await
            .map_err(io_err("netlink socket in pod netns"))?;
        let pod_link = find_link(&inside, &pod.key.ifname).await?.ok_or_else(|| {
            missing(
                "pod interface",
                format!("{} missing in {}", pod.key.ifname, pod.netns.path),
            )
        })?;
        let addrs: Vec<_> = inside
            .address()
            .get()
            .set_link_index_filter(pod_link.header.index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel("ip addr show (pod)", e))?;
        for ip in pod.addresses() {
            let len = messages::host_len(ip);
            let has_addr = addrs.iter().any(|a| {
                a.header.prefix_len == len
                    && a.attributes.iter().any(|x| {
                        matches!(x, rtnetlink::packet_route::address::AddressAttribute::Address(a) if *a == ip)
                    })
            });
            if !has_addr {
                return Err(missing(
                    "pod address",
                    format!("{ip}/{len} not on {}", pod.key.ifname),
                ));
            }
            let gateway = messages::pod_gateway(ip);
            let pod_routes = main_routes(&inside, version(ip)).await?;
            let has_default = pod_routes.iter().any(|r| {
                r.header.destination_prefix_length == 0
                    && r.attributes
                        .contains(&RouteAttribute::Gateway(gateway.into()))
                    && r.attributes
                        .contains(&RouteAttribute::Oif(pod_link.header.index))
            });
            if !has_default {
                return Err(missing(
                    "pod default route",
                    format!("no default via {gateway} dev {}", pod.key.ifname),
                ));
            }
        }
        Ok(())
    }

    async fn detach_pod(&self, pod: &PodSpec) -> Result<(), DataplaneError> {
        self.detach(pod).await
    }

    async fn program_egress(&self) -> Result<(), DataplaneError> {
        egress::program(
            &self.node,
            self.node_netns.as_deref(),
            &self.egress,
            self.connmark()?,
            self.ipv6,
        )
        .await
    }

    async fn check_egress(&self) -> Result<(), DataplaneError> {
        let connmark = self.connmark()?;
        egress::check(
            &self.node,
            self.node_netns.as_deref(),
            &self.egress,
            connmark,
            self.ipv6,
        )
        .await
        .map_err(|detail| DataplaneError::Mismatch {
            pod: "the node".into(),
            what: "egress masquerade and connmark",
            detail,
        })
    }

    async fn vanished(&self, pods: &[PodSpec]) -> Result<Vec<PodSpec>, DataplaneError> {
        if pods.is_empty() {
            return Ok(Vec::new());
        }
        let present: HashSet<String> = self
            .node
            .link()
            .get()
            .execute()
            .try_collect::<Vec<LinkMessage>>()
            .await
            .map_err(|e| kernel("ip link show", e))?
            .iter()
            .filter_map(link_name)
            .collect();
        Ok(pods
            .iter()
            .filter(|p| !present.contains(&host_ifname(&p.key.container_id, &p.key.ifname)))
            .cloned()
            .collect())
    }

    async fn collect_garbage(&self, keep: &[PodSpec]) -> Result<u32, DataplaneError> {
        let names: HashSet<String> = keep
            .iter()
            .map(|p| host_ifname(&p.key.container_id, &p.key.ifname))
            .collect();
        let ips: HashSet<IpAddr> = keep.iter().flat_map(PodSpec::addresses).collect();
        let mut removed = 0;
        // One object that cannot be removed is logged and skipped: GC (and
        // so start-up) never stops on it.
        let skip = |what: &str, name: String, e: rtnetlink::Error| {
            warn!(object = what, name, error = %e, "GC could not remove a leftover; skipped");
        };
        let links: Vec<LinkMessage> = self
            .node
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel("ip link show", e))?;
        for link in links {
            let Some(name) = link_name(&link) else {
                continue;
            };
            // Provably ours: our name pattern and our link group.
            if !(name.starts_with(HOST_VETH_PREFIX) && name.len() == 14 && messages::is_ours(&link))
                || names.contains(&name)
            {
                continue;
            }
            match tolerate(
                self.node.link().del(link.header.index).execute().await,
                &[ENODEV],
            ) {
                Ok(()) => removed += 1,
                Err(e) => skip("link", name, e),
            }
        }
        // IPv6 only when the node has it: a node without IPv6 has nothing
        // of ours there.
        let mut rules = our_rules(&self.node, IpVersion::V4).await?;
        rules.extend(
            our_rules(&self.node, IpVersion::V6)
                .await
                .unwrap_or_default(),
        );
        for rule in rules {
            if let Some(ip) = messages::rule_pod(&rule).filter(|ip| !ips.contains(ip)) {
                match tolerate(self.node.rule().del(rule).execute().await, &[ENOENT]) {
                    Ok(()) => removed += 1,
                    Err(e) => skip("rule", ip.to_string(), e),
                }
            }
        }
        let mut routes = main_routes(&self.node, IpVersion::V4).await?;
        routes.extend(
            main_routes(&self.node, IpVersion::V6)
                .await
                .unwrap_or_default(),
        );
        for route in routes {
            let dst = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                _ => None,
            });
            let ours = route.header.protocol == RouteProtocol::Other(messages::ROUTE_PROTOCOL)
                && dst.is_some_and(|ip| {
                    route.header.destination_prefix_length == messages::host_len(ip)
                });
            if let Some(ip) = dst.filter(|ip| ours && !ips.contains(ip)) {
                match tolerate(
                    self.node.route().del(route).execute().await,
                    &[ESRCH, ENOENT],
                ) {
                    Ok(()) => removed += 1,
                    Err(e) => skip("route", ip.to_string(), e),
                }
            }
        }
        Ok(removed)
    }
}

/// `ip link del NAME`; a link already gone is fine.
async fn delete_link_named(handle: &Handle, name: &str) -> Result<(), DataplaneError> {
    let Some(link) = find_link(handle, name).await? else {
        return Ok(());
    };
    tolerate(
        handle.link().del(link.header.index).execute().await,
        &[ENODEV],
    )
    .map_err(|e| kernel("ip link del", e))
}

/// The `ip` version of `ip`'s family.
fn version(ip: IpAddr) -> IpVersion {
    if ip.is_ipv4() {
        IpVersion::V4
    } else {
        IpVersion::V6
    }
}

/// `ip route show table main` (`ip -6` for [`IpVersion::V6`]).
async fn main_routes(
    handle: &Handle,
    version: IpVersion,
) -> Result<Vec<RouteMessage>, DataplaneError> {
    let mut query = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(messages::MAIN_TABLE)
        .build();
    if version == IpVersion::V6 {
        query.header.address_family = rtnetlink::packet_route::AddressFamily::Inet6;
    }
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(|e| kernel("ip route show", e))?;
    // The kernel dumps every table whatever the query names (without
    // strict checking): keep the main table's, so GC never touches an
    // ENI's table.
    Ok(routes
        .into_iter()
        .filter(|r| route_table(r) == messages::MAIN_TABLE)
        .collect())
}

/// A route's table: its attribute when it has one (tables above 255),
/// else its header's.
fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

async fn our_rules(
    handle: &Handle,
    version: IpVersion,
) -> Result<Vec<RuleMessage>, DataplaneError> {
    let rules: Vec<RuleMessage> = handle
        .rule()
        .get(version)
        .execute()
        .try_collect()
        .await
        .map_err(|e| kernel("ip rule show", e))?;
    Ok(rules
        .into_iter()
        .filter(|r| messages::rule_pod(r).is_some())
        .collect())
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, DataplaneError> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(kernel("ip link show", e)),
    }
}

/// The link whose MAC is `mac`, if any.
async fn find_mac(handle: &Handle, mac: &str) -> Result<Option<LinkMessage>, DataplaneError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| kernel("ip link show", e))?;
    Ok(links
        .into_iter()
        .find(|l| link_mac(l).is_some_and(|m| m.eq_ignore_ascii_case(mac))))
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn link_mac(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => Some(
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
        ),
        _ => None,
    })
}

fn link_is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Success, or one of the errors that mean "already so".
fn tolerate(r: Result<(), rtnetlink::Error>, benign: &[i32]) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e)
            if errno(&e).is_some_and(|n| {
                benign.contains(&n) || n == EADDRNOTAVAIL && benign.contains(&ENOENT)
            }) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn kernel(op: &'static str, e: rtnetlink::Error) -> DataplaneError {
    DataplaneError::Kernel {
        op,
        detail: e.to_string(),
    }
}

/// The node namespace's descriptor, or `None` for the agent's own.
fn open_path(path: Option<&Path>) -> Result<Option<OwnedFd>, DataplaneError> {
    path.map(|p| {
        std::fs::File::open(p)
            .map(OwnedFd::from)
            .map_err(io_err("open node netns"))
    })
    .transpose()
}

fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> DataplaneError {
    move |e| DataplaneError::Kernel {
        op,
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
