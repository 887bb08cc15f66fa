//! Wiring a pod, in as few round trips as the kernel allows. ADD: one
//! request creates the veth pair with both ends up, their MACs, our link
//! group and the pod end inside the pod's namespace, and the kernel echoes
//! the host end back (its index, and the pod end's as its link; older
//! kernels need one lookup instead); then the node's
//! route and two rules and the pod's address, gateway neighbour and default
//! route are sent together, without waiting for one acknowledgement before
//! sending the next; each failure still names the request it answers. DEL:
//! the route and both rules together; the veth goes later, off the reply
//! path (the reaper).

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures_util::StreamExt;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::{Handle, LinkUnspec};

use super::{
    EEXIST, ENOENT, ESRCH, NetlinkDataplane, errno, find_link, io_err, kernel, link_mac, messages,
    netns, tolerate,
};
use crate::dataplane::{DataplaneError, POD_GATEWAY, PodLinks, PodSpec, derived_mac, host_ifname};

/// What the node knows of a pod's veth pair once it exists.
struct Veth {
    host_index: u32,
    host_mac: String,
    /// The pod end's index in the pod's namespace.
    pod_index: Option<u32>,
}

impl NetlinkDataplane {
    pub(super) async fn attach(&self, pod: &PodSpec) -> Result<PodLinks, DataplaneError> {
        self.reaper.touch();
        let host = host_ifname(&pod.key.container_id, &pod.key.ifname);
        let (host_mac, pod_mac) = (
            derived_mac(&[host.as_bytes(), b"host"]),
            derived_mac(&[host.as_bytes(), b"pod"]),
        );
        let pod_ns = pod.netns.open()?;
        let veth = {
            let _links = self.reaper.links.lock().await;
            // A veth queued for deletion belongs to an earlier incarnation of
            // this attachment: start afresh rather than inherit its address.
            if self.reaper.cancel(&host) {
                super::delete_link_named(&self.node, &host).await?;
            }
            let msg = messages::veth_pair(
                &host,
                &pod.key.ifname,
                pod.eni.mtu,
                pod_ns.as_raw_fd(),
                &host_mac,
                &pod_mac,
            );
            match create_echoed(&self.node, msg).await {
                Ok(Some(link)) => veth_of(&link),
                // A kernel before 6.3 does not echo: look it up.
                Ok(None) => existing(&self.node, &host).await?,
                // A repeated ADD finds the pair there already.
                Err(e) if errno(&e) == Some(EEXIST) => existing(&self.node, &host).await?,
                Err(e) => return Err(kernel("ip link add type veth", e)),
            }
        };
        let (node_side, pod_side) = tokio::join!(
            self.wire_node_side(pod, veth.host_index),
            wire_pod_side(pod, pod_ns, veth.pod_index, &veth.host_mac)
        );
        node_side?;
        let pod_mac = pod_side?.unwrap_or(pod_mac);
        Ok(PodLinks {
            host_ifname: host,
            host_mac: veth.host_mac,
            pod_mac,
        })
    }

    /// `ip route replace POD/32 dev HOST`, `ip rule add to POD lookup main`,
    /// `ip rule add from POD lookup TABLE`, sent together.
    async fn wire_node_side(&self, pod: &PodSpec, host_index: u32) -> Result<(), DataplaneError> {
        let route = async {
            self.node
                .route()
                .add(messages::host_route(pod.ip, host_index))
                .replace()
                .execute()
                .await
                .map_err(|e| kernel("ip route replace (host)", e))
        };
        let rule = |message| {
            let mut req = self.node.rule().add();
            *req.message_mut() = message;
            async move { tolerate(req.execute().await, &[EEXIST]).map_err(|e| kernel("ip rule add", e)) }
        };
        let (r, to, from) = tokio::join!(
            route,
            rule(messages::rule_to_pod(pod.ip)),
            rule(messages::rule_from_pod(pod.ip, pod.eni.table))
        );
        r.and(to).and(from)
    }

    pub(super) async fn detach(&self, pod: &PodSpec) -> Result<(), DataplaneError> {
        self.reaper.touch();
        self.remove_host_side(pod).await?;
        // The reaper tolerates a veth that is already gone (the runtime
        // deleted the namespace first).
        self.reaper
            .schedule(host_ifname(&pod.key.container_id, &pod.key.ifname));
        Ok(())
    }

    /// `ip rule del to POD`, `ip rule del from POD`, `ip route del POD/32`,
    /// sent together; what is already gone is fine.
    pub(super) async fn remove_host_side(&self, pod: &PodSpec) -> Result<(), DataplaneError> {
        let rule = |message| {
            let req = self.node.rule().del(message);
            async move { tolerate(req.execute().await, &[ENOENT]).map_err(|e| kernel("ip rule del", e)) }
        };
        let mut route = messages::host_route(pod.ip, 0);
        route
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        let route = async {
            tolerate(
                self.node.route().del(route).execute().await,
                &[ESRCH, ENOENT],
            )
            .map_err(|e| kernel("ip route del", e))
        };
        let (to, from, r) = tokio::join!(
            rule(messages::rule_to_pod(pod.ip)),
            rule(messages::rule_from_pod(pod.ip, pod.eni.table)),
            route
        );
        to.and(from).and(r)
    }
}

/// In the pod: `ip link set IF up`, `ip addr add POD/32 dev IF`, `ip neigh
/// replace 169.254.1.1 lladdr HOSTMAC dev IF nud permanent`, `ip route
/// replace default via 169.254.1.1 dev IF onlink`, sent together (and
/// handled by the kernel in that order). Returns the pod end's MAC when
/// it had to be looked up (a pair made by an older agent).
async fn wire_pod_side(
    pod: &PodSpec,
    pod_ns: std::os::fd::OwnedFd,
    pod_index: Option<u32>,
    host_mac: &str,
) -> Result<Option<String>, DataplaneError> {
    let inside = netns::connect(Some(pod_ns))
        .await
        .map_err(io_err("netlink socket in pod netns"))?;
    let (idx, looked_up_mac) = match pod_index {
        Some(idx) => (idx, None),
        None => {
            let link = find_link(&inside, &pod.key.ifname).await?.ok_or_else(|| {
                DataplaneError::Kernel {
                    op: "ip link show",
                    detail: format!("{} missing in {}", pod.key.ifname, pod.netns.path),
                }
            })?;
            (link.header.index, link_mac(&link))
        }
    };
    let up = async {
        inside
            .link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(|e| kernel("ip link set up (pod)", e))
    };
    let addr = async {
        tolerate(
            inside
                .address()
                .add(idx, IpAddr::V4(pod.ip), 32)
                .execute()
                .await,
            &[EEXIST],
        )
        .map_err(|e| kernel("ip addr add (pod)", e))
    };
    let neigh = async {
        inside
            .neighbours()
            .add(idx, IpAddr::V4(POD_GATEWAY))
            .link_layer_address(&messages::mac_bytes(host_mac))
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| kernel("ip neigh replace (pod gateway)", e))
    };
    let route = async {
        inside
            .route()
            .add(messages::pod_default_route(idx))
            .replace()
            .execute()
            .await
            .map_err(|e| kernel("ip route replace default (pod)", e))
    };
    let (u, a, n, r) = tokio::join!(up, addr, neigh, route);
    u.and(a).and(n).and(r)?;
    Ok(looked_up_mac)
}

/// `ip link add ...`, asking the kernel to echo what it created (its
/// index, and its peer's as its link). `Ok(None)`: created, but the kernel
/// does not echo (before 6.3).
pub(super) async fn create_echoed(
    handle: &Handle,
    link: LinkMessage,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO;
    let mut response = handle.clone().request(req)?;
    let mut echoed = None;
    while let Some(message) = response.next().await {
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => echoed = Some(l),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
            _ => {}
        }
    }
    Ok(echoed)
}

/// The pair as it already is (`ip link show HOST`).
async fn existing(handle: &Handle, host: &str) -> Result<Veth, DataplaneError> {
    let link = find_link(handle, host)
        .await?
        .ok_or_else(|| DataplaneError::Kernel {
            op: "ip link show",
            detail: format!("{host} vanished after creation"),
        })?;
    let mut veth = veth_of(&link);
    if !link
        .header
        .flags
        .contains(rtnetlink::packet_route::link::LinkFlags::Up)
    {
        handle
            .link()
            .set(LinkUnspec::new_with_index(veth.host_index).up().build())
            .execute()
            .await
            .map_err(|e| kernel("ip link set up (host veth)", e))?;
    }
    // Its pod end was looked up by name when the pair is older than the
    // derived MACs; by index otherwise.
    if !super::messages::is_ours(&link) {
        veth.pod_index = None;
    }
    Ok(veth)
}

fn veth_of(link: &LinkMessage) -> Veth {
    Veth {
        host_index: link.header.index,
        host_mac: link_mac(link).unwrap_or_default(),
        pod_index: link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Link(i) => Some(*i),
            _ => None,
        }),
    }
}
