//! Wiring a pod, in as few round trips as the kernel allows, as a
//! data-path job ([`super::workers`]: on the serving thread, or a worker
//! thread when it cannot block) with batched requests
//! ([`super::batch`]). ADD: one request creates the veth pair with the host
//! end up, their MACs, our link group and the pod end inside the pod's
//! namespace, and the kernel echoes the host end back (its index, and the
//! pod end's as its link; older kernels need one lookup instead); then the
//! node's route and two rules go out in one send, the pod's link up,
//! address, gateway neighbour and default route in another, and both
//! batches' answers are read together; each failure still names the
//! request it answers. DEL: the route and both rules in one send; the veth
//! goes later, off the reply path (the reaper).

use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::{Handle, LinkUnspec};

use super::batch::{Answer, NlSocket, Request};
use super::workers::Worker;
use super::{
    EEXIST, ENODEV, ENOENT, ESRCH, NetlinkDataplane, find_link, kernel, link_mac, messages,
};
use crate::dataplane::{DataplaneError, PodLinks, PodSpec, derived_mac, host_ifname};

/// What the node knows of a pod's veth pair once it exists.
#[derive(Debug, Clone)]
struct Veth {
    host_index: u32,
    host_mac: String,
    /// The pod end's index in the pod's namespace.
    pod_index: Option<u32>,
}

/// What one ADD programs, handed to a worker.
#[derive(Debug, Clone)]
struct Wiring {
    host: String,
    ifname: String,
    netns_path: String,
    mtu: u32,
    ip: std::net::Ipv4Addr,
    ipv6: Option<std::net::Ipv6Addr>,
    table: u32,
    host_mac: String,
    pod_mac: String,
    pod_ns: Arc<OwnedFd>,
}

/// What the worker's part of an ADD came to.
enum Attached {
    /// Created and wired.
    Wired(PodLinks),
    /// Created, not echoed (a kernel before 6.3): look it up, then wire.
    LookUp,
    /// A link of that name exists, on the node or in the pod.
    Exists,
}

/// How creating the pair went.
pub(super) enum Created {
    /// Made, and echoed back (`None`: a kernel before 6.3, look it up).
    New(Option<LinkMessage>),
    /// A link of that name exists, on the node or in the pod.
    Exists,
}

impl NetlinkDataplane {
    pub(super) async fn attach(&self, pod: &PodSpec) -> Result<PodLinks, DataplaneError> {
        self.reaper.touch();
        let host = host_ifname(&pod.key.container_id, &pod.key.ifname);
        let wiring = Wiring {
            host_mac: derived_mac(&[host.as_bytes(), b"host"]),
            pod_mac: derived_mac(&[host.as_bytes(), b"pod"]),
            host,
            ifname: pod.key.ifname.clone(),
            netns_path: pod.netns.path.clone(),
            mtu: pod.eni.mtu,
            ip: pod.ip,
            ipv6: pod.ipv6,
            table: pod.eni.table,
            pod_ns: Arc::new(pod.netns.open()?),
        };
        let mut flushed = false;
        let veth = loop {
            // Held until the pair exists: the reaper never deletes a veth an
            // ADD is taking over.
            let links = Arc::clone(&self.reaper.links).lock_owned().await;
            // A veth queued for deletion belongs to an earlier incarnation of
            // this attachment: start afresh rather than inherit its address.
            if self.reaper.cancel(&wiring.host) {
                super::delete_link_named(&self.node, &wiring.host).await?;
            }
            let w = wiring.clone();
            let attached = self
                .workers
                .run(move |worker| -> Result<Attached, DataplaneError> {
                    let created = create_veth(&mut worker.node, w.veth_pair());
                    drop(links);
                    Ok(match created? {
                        Created::New(Some(link)) => {
                            Attached::Wired(w.wire(worker, veth_of(&link))?)
                        }
                        Created::New(None) => Attached::LookUp,
                        Created::Exists => Attached::Exists,
                    })
                })
                .await??;
            match attached {
                Attached::Wired(links) => return Ok(links),
                Attached::LookUp => break existing(&self.node, &wiring.host).await?,
                Attached::Exists => {
                    // A repeated ADD finds the pair there already.
                    if find_link(&self.node, &wiring.host).await?.is_some() {
                        break existing(&self.node, &wiring.host).await?;
                    }
                    // The pod's namespace has a link by that name: an earlier
                    // sandbox's pod end whose pair waits for the reaper.
                    if !flushed && self.reaper.flush(&self.node).await > 0 {
                        flushed = true;
                        continue;
                    }
                    return Err(DataplaneError::Kernel {
                        op: "ip link add type veth",
                        detail: format!(
                            "an interface named {} already exists in {}",
                            wiring.ifname, wiring.netns_path
                        ),
                    });
                }
            }
        };
        let w = wiring.clone();
        self.workers.run(move |worker| w.wire(worker, veth)).await?
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

    /// `ip rule del to POD`, `ip rule del from POD`, `ip route del POD/32`
    /// (and their IPv6 twins), in one send; what is already gone is fine.
    /// The pod's IPv6 neighbour goes with its veth.
    pub(super) async fn remove_host_side(&self, pod: &PodSpec) -> Result<(), DataplaneError> {
        let requests: Vec<Request> = pod
            .addresses()
            .flat_map(|ip| {
                let mut route = messages::host_route(ip, 0);
                route
                    .attributes
                    .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
                [
                    Request::new(
                        RouteNetlinkMessage::DelRule(messages::rule_to_pod(ip)),
                        0,
                        "ip rule del",
                    )
                    .tolerating(&[ENOENT]),
                    Request::new(
                        RouteNetlinkMessage::DelRule(messages::rule_from_pod(ip, pod.eni.table)),
                        0,
                        "ip rule del",
                    )
                    .tolerating(&[ENOENT]),
                    Request::new(RouteNetlinkMessage::DelRoute(route), 0, "ip route del")
                        .tolerating(&[ESRCH, ENOENT]),
                ]
            })
            .collect();
        self.workers
            .run(move |worker| worker.node.run(requests).map(drop))
            .await?
    }
}

impl Wiring {
    /// `ip link add HOST ... type veth peer name IF netns POD`.
    fn veth_pair(&self) -> LinkMessage {
        messages::veth_pair(
            &self.host,
            &self.ifname,
            self.mtu,
            self.pod_ns.as_raw_fd(),
            &self.host_mac,
            &self.pod_mac,
        )
    }

    /// Everything after the pair exists: the node's route and rules and the
    /// pod's side, two batches in flight together.
    fn wire(&self, worker: &mut Worker, veth: Veth) -> Result<PodLinks, DataplaneError> {
        // The pod end's MAC is the derived one unless the pair is older
        // than them (then the pod side looks it up).
        let known_mac = veth.pod_index.map(|_| self.pod_mac.as_str());
        let node = worker
            .node
            .send(self.node_side(veth.host_index, known_mac))?;
        let pod = self.pod_side(worker, &veth);
        // Read the node's answers whatever the pod side did.
        worker.node.collect(node)?;
        let looked_up_mac = pod?;
        let pod_mac = looked_up_mac.unwrap_or_else(|| self.pod_mac.clone());
        if let (Some(ip), None) = (self.ipv6, known_mac) {
            worker
                .node
                .run(vec![pod_neighbour(ip, veth.host_index, &pod_mac)])?;
        }
        Ok(PodLinks {
            host_ifname: self.host.clone(),
            host_mac: veth.host_mac,
            pod_mac,
        })
    }

    /// The pod's addresses: IPv4, then IPv6 when it has one.
    fn addresses(&self) -> impl Iterator<Item = IpAddr> + use<> {
        std::iter::once(IpAddr::V4(self.ip)).chain(self.ipv6.map(IpAddr::V6))
    }

    /// `ip route replace POD/32 dev HOST`, `ip rule add to POD lookup
    /// main`, `ip rule add from POD lookup TABLE`; for an IPv6 address the
    /// same at /128, and `ip -6 neigh replace POD lladdr PODMAC dev HOST
    /// nud permanent`.
    fn node_side(&self, host_index: u32, pod_mac: Option<&str>) -> Vec<Request> {
        let mut requests: Vec<Request> = self
            .addresses()
            .flat_map(|ip| {
                [
                    Request::new(
                        RouteNetlinkMessage::NewRoute(messages::host_route(ip, host_index)),
                        NLM_F_CREATE | NLM_F_REPLACE,
                        "ip route replace (host)",
                    ),
                    Request::new(
                        RouteNetlinkMessage::NewRule(messages::rule_to_pod(ip)),
                        NLM_F_CREATE | NLM_F_EXCL,
                        "ip rule add",
                    )
                    .tolerating(&[EEXIST]),
                    Request::new(
                        RouteNetlinkMessage::NewRule(messages::rule_from_pod(ip, self.table)),
                        NLM_F_CREATE | NLM_F_EXCL,
                        "ip rule add",
                    )
                    .tolerating(&[EEXIST]),
                ]
            })
            .collect();
        if let (Some(ip), Some(mac)) = (self.ipv6, pod_mac) {
            requests.push(pod_neighbour(ip, host_index, mac));
        }
        requests
    }

    /// In the pod: `ip link set IF up`, `ip addr add POD/32 dev IF`, `ip
    /// neigh replace 169.254.1.1 lladdr HOSTMAC dev IF nud permanent`, `ip
    /// route replace default via 169.254.1.1 dev IF onlink`, and for an
    /// IPv6 address the same with `POD/128 nodad` and `fe80::1`, in one
    /// send (the kernel handles them in that order). Returns the pod end's
    /// MAC when it had to be looked up (a pair made by an older agent).
    fn pod_side(&self, worker: &mut Worker, veth: &Veth) -> Result<Option<String>, DataplaneError> {
        let mut inside = worker.socket_in(&*self.pod_ns)?;
        let (idx, looked_up_mac) = match veth.pod_index {
            Some(idx) => (idx, None),
            None => {
                let link = self.pod_link(&mut inside)?;
                (link.header.index, link_mac(&link))
            }
        };
        let mut requests = vec![Request::new(
            RouteNetlinkMessage::SetLink(messages::link_up(idx)),
            0,
            "ip link set up (pod)",
        )];
        for ip in self.addresses() {
            requests.extend([
                Request::new(
                    RouteNetlinkMessage::NewAddress(messages::pod_address(ip, idx)),
                    NLM_F_CREATE | NLM_F_EXCL,
                    "ip addr add (pod)",
                )
                .tolerating(&[EEXIST]),
                Request::new(
                    RouteNetlinkMessage::NewNeighbour(messages::gateway_neighbour(
                        idx,
                        &veth.host_mac,
                        ip,
                    )),
                    NLM_F_CREATE | NLM_F_REPLACE,
                    "ip neigh replace (pod gateway)",
                ),
                Request::new(
                    RouteNetlinkMessage::NewRoute(messages::pod_default_route(idx, ip)),
                    NLM_F_CREATE | NLM_F_REPLACE,
                    "ip route replace default (pod)",
                ),
            ]);
        }
        inside.run(requests)?;
        Ok(looked_up_mac)
    }

    /// `ip link show IF` in the pod.
    fn pod_link(&self, inside: &mut NlSocket) -> Result<LinkMessage, DataplaneError> {
        let missing = || DataplaneError::Kernel {
            op: "ip link show",
            detail: format!("{} missing in {}", self.ifname, self.netns_path),
        };
        let sent = inside.send(vec![Request::new(
            RouteNetlinkMessage::GetLink(messages::link_named(&self.ifname)),
            0,
            "ip link show (pod)",
        )])?;
        match inside.answers(&sent)?.pop() {
            Some(Answer::Done(Some(RouteNetlinkMessage::NewLink(link)))) => Ok(link),
            Some(Answer::Failed(ENODEV)) | Some(Answer::Done(_)) | None => Err(missing()),
            Some(Answer::Failed(errno)) => Err(DataplaneError::Kernel {
                op: "ip link show (pod)",
                detail: std::io::Error::from_raw_os_error(errno).to_string(),
            }),
        }
    }
}

/// `ip link add ...`, asking the kernel to echo what it created (its
/// index, and its peer's as its link).
pub(super) fn create_veth(
    node: &mut NlSocket,
    link: LinkMessage,
) -> Result<Created, DataplaneError> {
    let sent = node.send(vec![Request::new(
        RouteNetlinkMessage::NewLink(link),
        NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
        "ip link add type veth",
    )])?;
    match node.answers(&sent)?.pop() {
        Some(Answer::Done(Some(RouteNetlinkMessage::NewLink(l)))) => Ok(Created::New(Some(l))),
        Some(Answer::Done(_)) | None => Ok(Created::New(None)),
        Some(Answer::Failed(EEXIST)) => Ok(Created::Exists),
        Some(Answer::Failed(errno)) => Err(DataplaneError::Kernel {
            op: "ip link add type veth",
            detail: std::io::Error::from_raw_os_error(errno).to_string(),
        }),
    }
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

/// `ip -6 neigh replace POD lladdr PODMAC dev HOST nud permanent`.
fn pod_neighbour(ip: Ipv6Addr, host_index: u32, pod_mac: &str) -> Request {
    Request::new(
        RouteNetlinkMessage::NewNeighbour(messages::pod_neighbour(ip, host_index, pod_mac)),
        NLM_F_CREATE | NLM_F_REPLACE,
        "ip -6 neigh replace (pod)",
    )
}
