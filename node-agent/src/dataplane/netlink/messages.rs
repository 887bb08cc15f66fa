//! Pure builders of the netlink messages the data path sends; each names
//! its `ip` equivalent. Kept apart from sending so they are tested without
//! root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage};
use rtnetlink::{AddressMessageBuilder, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::dataplane::{ENI_GATEWAY_V6, POD_GATEWAY, POD_GATEWAY_V6};

/// Route protocol number tagging every route this agent adds, so GC can
/// tell ours from anyone else's (`ip route show proto 175`).
pub const ROUTE_PROTOCOL: u8 = 175;
/// Priority of "to <pod> lookup main": traffic to a local pod stays local.
pub const RULE_TO_POD_PRIORITY: u32 = 512;
/// Priority of "from <pod> lookup <ENI table>": pod traffic leaves by its ENI.
pub const RULE_FROM_POD_PRIORITY: u32 = 1536;
/// The main routing table.
pub const MAIN_TABLE: u32 = 254;
/// Link group of every host veth this agent creates (`ip link show group
/// 1987076914`, "vpc2" in ASCII): the mark that makes a link provably
/// ours, so GC never deletes a link that only looks like one of ours.
pub const LINK_GROUP: u32 = 0x7670_6332;

/// `ip link add HOST address HOSTMAC mtu MTU group LINK_GROUP numtxqueues 1
/// numrxqueues 1 up type veth peer name PEER address PODMAC mtu MTU
/// numtxqueues 1 numrxqueues 1 netns FD`: one request makes the whole pair,
/// the pod end directly inside the pod's namespace, the host end up and
/// carrying our link group. (The pod end cannot be created up: the kernel
/// opens it before the pair is joined and refuses with ENOTCONN.)
///
/// One queue each way per end is what the kernel uses for a veth anyway:
/// left unsaid, it creates one per possible CPU (each a sysfs directory)
/// and then cuts the real count to one, which waits for an RCU grace
/// period under the RTNL lock. Saying it saves 15% of the ADD's kernel
/// work on two CPUs, more on larger nodes.
pub fn veth_pair(
    host: &str,
    peer: &str,
    mtu: u32,
    peer_netns: RawFd,
    host_mac: &str,
    peer_mac: &str,
) -> LinkMessage {
    let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer)
        .mtu(mtu)
        .address(mac_bytes(peer_mac))
        .setns_by_fd(peer_netns)
        .build();
    peer_msg.attributes.extend(one_queue());
    let mut pair = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host)
        .mtu(mtu)
        .address(mac_bytes(host_mac))
        .link_group(LINK_GROUP)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    pair.attributes.extend(one_queue());
    pair
}

/// `numtxqueues 1 numrxqueues 1`.
fn one_queue() -> [LinkAttribute; 2] {
    [LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)]
}

/// `aa:bb:...` as bytes.
pub fn mac_bytes(mac: &str) -> Vec<u8> {
    mac.split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect()
}

/// Whether a link carries our group: created by this agent as a pod's
/// host veth.
pub fn is_ours(link: &LinkMessage) -> bool {
    link.attributes.contains(&LinkAttribute::Group(LINK_GROUP))
}

/// `ip link set INDEX up`.
pub fn link_up(ifindex: u32) -> LinkMessage {
    LinkUnspec::new_with_index(ifindex).up().build()
}

/// `ip link show NAME`.
pub fn link_named(name: &str) -> LinkMessage {
    LinkMessageBuilder::<LinkUnspec>::new().name(name).build()
}

/// The prefix length of one host: 32 or 128.
pub fn host_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The pod's gateway of `ip`'s family: `169.254.1.1` or `fe80::1`.
pub fn pod_gateway(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() {
        IpAddr::V4(POD_GATEWAY)
    } else {
        IpAddr::V6(POD_GATEWAY_V6)
    }
}

/// `ip addr add IP/32 dev INDEX`, or `ip -6 addr add IP/128 dev INDEX
/// nodad` (in the pod): usable at once, with no duplicate address
/// detection (the VPC gave the address to this pod alone).
pub fn pod_address(ip: IpAddr, ifindex: u32) -> AddressMessage {
    match ip {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(ifindex)
            .address(ip, 32)
            .build(),
        IpAddr::V6(ip) => {
            let mut msg = AddressMessageBuilder::<Ipv6Addr>::new()
                .index(ifindex)
                .address(ip, 128)
                .build();
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            msg
        }
    }
}

/// `ip neigh replace ADDRESS lladdr MAC dev INDEX nud permanent`.
fn permanent_neighbour(ifindex: u32, address: IpAddr, mac: &str) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(address);
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::Permanent;
    let destination = match address {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    };
    msg.attributes = vec![
        NeighbourAttribute::Destination(destination),
        NeighbourAttribute::LinkLayerAddress(mac_bytes(mac)),
    ];
    msg
}

/// `ip neigh replace GW lladdr HOSTMAC dev INDEX nud permanent` (in the
/// pod), `GW` the pod's gateway of `family`'s family: the gateway answers
/// without ARP or neighbour discovery.
pub fn gateway_neighbour(ifindex: u32, host_mac: &str, family: IpAddr) -> NeighbourMessage {
    permanent_neighbour(ifindex, pod_gateway(family), host_mac)
}

/// `ip -6 neigh replace POD lladdr PODMAC dev HOSTVETH nud permanent` (on
/// the node): replies reach an IPv6 pod without neighbour discovery, which
/// would wait for the host end's link-local address.
pub fn pod_neighbour(pod: Ipv6Addr, ifindex: u32, pod_mac: &str) -> NeighbourMessage {
    permanent_neighbour(ifindex, IpAddr::V6(pod), pod_mac)
}

/// `ip route replace default via GW dev IF onlink` (in the pod), `GW` the
/// pod's gateway of `family`'s family.
pub fn pod_default_route(ifindex: u32, family: IpAddr) -> RouteMessage {
    let gateway = pod_gateway(family);
    let mut route = RouteMessageBuilder::<IpAddr>::new();
    route.get_mut().header.address_family = self::family(gateway);
    route
        .gateway(gateway)
        .expect("the gateway is of the route's family")
        .output_interface(ifindex)
        .onlink()
        .build()
}

/// `ip route replace POD/32 dev HOSTVETH scope link proto 175` (`/128`
/// for IPv6).
pub fn host_route(pod: IpAddr, ifindex: u32) -> RouteMessage {
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(pod, host_len(pod))
        .expect("a host prefix")
        .output_interface(ifindex)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .table_id(MAIN_TABLE)
        .build()
}

/// `ip route replace GW/32 dev ENI scope link table T proto 175`.
pub fn eni_gateway_route(gateway: Ipv4Addr, ifindex: u32, table: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(gateway, 32)
        .output_interface(ifindex)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .table_id(table)
        .build()
}

/// `ip route replace default via GW dev ENI onlink table T proto 175`.
pub fn eni_default_route(gateway: Ipv4Addr, ifindex: u32, table: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(ifindex)
        .onlink()
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .table_id(table)
        .build()
}

/// `ip -6 route replace default via fe80::1 dev ENI table T proto 175`:
/// the VPC's router is every ENI's IPv6 gateway at a link-local address.
pub fn eni_default_route_v6(ifindex: u32, table: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv6Addr>::new()
        .gateway(ENI_GATEWAY_V6)
        .output_interface(ifindex)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .table_id(table)
        .build()
}

/// `ip rule add to POD/32 lookup main priority 512 protocol 175` (`ip -6`
/// and `/128` for IPv6).
pub fn rule_to_pod(pod: IpAddr) -> RuleMessage {
    rule(pod, Selects::Destination, MAIN_TABLE, RULE_TO_POD_PRIORITY)
}

/// `ip rule add from POD/32 lookup T priority 1536 protocol 175` (`ip -6`
/// and `/128` for IPv6).
pub fn rule_from_pod(pod: IpAddr, table: u32) -> RuleMessage {
    rule(pod, Selects::Source, table, RULE_FROM_POD_PRIORITY)
}

/// What a pod rule selects on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Selects {
    Source,
    Destination,
}

fn rule(ip: IpAddr, selects: Selects, table: u32, priority: u32) -> RuleMessage {
    let (selector, src_len, dst_len) = match selects {
        Selects::Source => (RuleAttribute::Source(ip), host_len(ip), 0),
        Selects::Destination => (RuleAttribute::Destination(ip), 0, host_len(ip)),
    };
    let mut msg = RuleMessage::default();
    msg.header = RuleHeader {
        family: family(ip),
        dst_len,
        src_len,
        // Without an explicit action the kernel takes the rule as
        // "unspecified" and never looks the table up.
        action: RuleAction::ToTable,
        table: if table < 256 { table as u8 } else { 0 },
        ..RuleHeader::default()
    };
    msg.attributes = vec![
        selector,
        RuleAttribute::Table(table),
        RuleAttribute::Priority(priority),
        RuleAttribute::Protocol(RouteProtocol::Other(ROUTE_PROTOCOL)),
    ];
    msg
}

/// The pod address a rule of ours selects, if it is one of ours (our
/// protocol and a pod rule's priority: the egress rules are ours too).
pub fn rule_pod(rule: &RuleMessage) -> Option<IpAddr> {
    let ours = rule
        .attributes
        .contains(&RuleAttribute::Protocol(RouteProtocol::Other(
            ROUTE_PROTOCOL,
        )));
    let pod_priority = rule.attributes.iter().any(|a| {
        matches!(a, RuleAttribute::Priority(p) if *p == RULE_TO_POD_PRIORITY || *p == RULE_FROM_POD_PRIORITY)
    });
    if !ours || !pod_priority {
        return None;
    }
    rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::Destination(ip) | RuleAttribute::Source(ip) => Some(*ip),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::{LinkFlags, LinkInfo};
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags};

    #[test]
    fn the_peer_is_created_inside_the_pod_namespace() {
        let msg = veth_pair(
            "vpc0123",
            "eth0",
            1500,
            7,
            "02:00:00:00:00:01",
            "02:00:00:00:00:02",
        );
        assert!(
            msg.attributes
                .contains(&LinkAttribute::IfName("vpc0123".into()))
        );
        let info = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i),
                _ => None,
            })
            .expect("link info");
        let peer = info
            .iter()
            .find_map(|i| match i {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p),
                _ => None,
            })
            .expect("peer");
        assert!(
            peer.attributes
                .contains(&LinkAttribute::IfName("eth0".into()))
        );
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(7)));
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1500)));
        assert!(is_ours(&msg), "the host end carries our group");
        assert!(msg.header.flags.contains(LinkFlags::Up), "created up");
        assert!(
            peer.attributes
                .contains(&LinkAttribute::Address(vec![2, 0, 0, 0, 0, 2]))
        );
        assert!(!peer.attributes.contains(&LinkAttribute::Group(LINK_GROUP)));
        for end in [&msg.attributes, &peer.attributes] {
            assert!(end.contains(&LinkAttribute::NumTxQueues(1)));
            assert!(end.contains(&LinkAttribute::NumRxQueues(1)));
        }
    }

    #[test]
    fn rules_carry_an_action_a_table_and_our_protocol() {
        let pod = IpAddr::V4(Ipv4Addr::new(10, 0, 16, 5));
        let r = rule_from_pod(pod, 101);
        assert_eq!(r.header.action, RuleAction::ToTable);
        assert_eq!(r.header.src_len, 32);
        assert!(r.attributes.contains(&RuleAttribute::Table(101)));
        assert!(
            r.attributes
                .contains(&RuleAttribute::Priority(RULE_FROM_POD_PRIORITY))
        );
        assert_eq!(rule_pod(&r), Some(pod));
        let t = rule_to_pod(pod);
        assert_eq!(t.header.dst_len, 32);
        assert!(t.attributes.contains(&RuleAttribute::Table(MAIN_TABLE)));
        assert_eq!(rule_pod(&RuleMessage::default()), None);
    }

    #[test]
    fn routes_are_tagged_and_pod_default_is_onlink() {
        let r = host_route(IpAddr::V4(Ipv4Addr::new(10, 0, 16, 5)), 9);
        assert_eq!(r.header.protocol, RouteProtocol::Other(ROUTE_PROTOCOL));
        assert_eq!(r.header.scope, RouteScope::Link);
        assert_eq!(r.header.destination_prefix_length, 32);
        let d = pod_default_route(3, IpAddr::V4(Ipv4Addr::new(10, 0, 16, 5)));
        assert!(d.header.flags.contains(RouteFlags::Onlink));
        assert!(
            d.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet(POD_GATEWAY)))
        );
        let e = eni_default_route(Ipv4Addr::new(10, 0, 16, 1), 4, 101);
        assert_eq!(e.header.table, 101);
    }

    #[test]
    fn ipv6_messages_are_of_their_family_at_host_length() {
        let pod: IpAddr = "fd00::5".parse().expect("an address");
        let r = rule_from_pod(pod, 101);
        assert_eq!(r.header.family, AddressFamily::Inet6);
        assert_eq!((r.header.src_len, r.header.dst_len), (128, 0));
        assert_eq!(rule_pod(&r), Some(pod));
        let t = rule_to_pod(pod);
        assert_eq!((t.header.src_len, t.header.dst_len), (0, 128));
        let h = host_route(pod, 9);
        assert_eq!(h.header.address_family, AddressFamily::Inet6);
        assert_eq!(h.header.destination_prefix_length, 128);
        assert_eq!(h.header.protocol, RouteProtocol::Other(ROUTE_PROTOCOL));
        let d = pod_default_route(3, pod);
        assert_eq!(d.header.address_family, AddressFamily::Inet6);
        assert!(
            d.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet6(
                    POD_GATEWAY_V6
                )))
        );
        let a = pod_address(pod, 3);
        assert_eq!(a.header.prefix_len, 128);
        assert!(a.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(
            a.attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );
        let v4 = pod_address("10.0.0.5".parse().expect("an address"), 3);
        assert_eq!(v4.header.prefix_len, 32);
        assert!(!v4.header.flags.contains(AddressHeaderFlags::Nodad));
        let n = gateway_neighbour(3, "02:00:00:00:00:01", pod);
        assert_eq!(n.header.family, AddressFamily::Inet6);
        assert!(
            n.attributes
                .contains(&NeighbourAttribute::Destination(NeighbourAddress::Inet6(
                    POD_GATEWAY_V6
                )))
        );
        let e = eni_default_route_v6(4, 101);
        assert!(
            e.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet6(
                    ENI_GATEWAY_V6
                )))
        );
        assert_eq!(e.header.table, 101);
    }
}
