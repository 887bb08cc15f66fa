//! Privileged tests of the egress masquerade: programmed, programmed
//! again, read back, changed, removed; and real traffic from a pod to an
//! "outside" namespace, seen there from the node's address, while traffic
//! to the VPC keeps the pod's.

use std::net::{SocketAddr, UdpSocket};

use super::*;
use crate::dataplane::egress::{Cidr, Egress};
use crate::dataplane::remove_egress;

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|c| c.parse().expect("cidr")).collect()
}

fn masquerade(list: &[&str]) -> Egress {
    Egress::masquerade(cidrs(list)).expect("egress")
}

/// Our node-wide policy rules (the connmark's and the egress priorities),
/// as `ip rule` prints them.
pub(super) fn node_rules(ns: &Netns) -> Vec<String> {
    ns.ip(&["rule", "show"])
        .lines()
        .filter(|l| {
            ["1000:", "1024:", "1025:", "1026:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// A node namespace with a primary ENI `eth0` (one end of a veth pair,
/// found by its MAC).
fn node_with_primary(role: &str) -> (Netns, crate::dataplane::Connmark) {
    let node = Netns::new(role);
    node.ip(&[
        "link",
        "add",
        "eth0",
        "address",
        "02:aa:00:00:00:e0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0p",
    ]);
    let connmark = crate::dataplane::Connmark {
        bit: crate::dataplane::ConnmarkBit::default(),
        primary_mac: "02:aa:00:00:00:e0".into(),
    };
    (node, connmark)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
async fn privileged_egress_is_programmed_once_read_back_changed_and_removed() {
    require_root();
    let (node, connmark) = node_with_primary("egress");
    let vpc = masquerade(&["10.0.0.0/16", "10.0.16.0/20", "192.168.0.0/24"]);
    let dataplane = |egress: Egress| {
        let path = node.path();
        let connmark = connmark.clone();
        async move {
            NetlinkDataplane::new(Some(&path))
                .await
                .expect("dataplane")
                .with_egress(egress)
                .with_connmark(connmark)
        }
    };
    let dp = dataplane(vpc.clone()).await;

    let e = dp.check_egress().await.expect_err("nothing programmed yet");
    assert!(
        e.to_string().contains("table ip vpc-cni does not exist"),
        "{e}"
    );

    dp.program_egress().await.expect("program");
    dp.check_egress().await.expect("check after program");
    let rules = node_rules(&node);
    dp.program_egress().await.expect("program again");
    dp.check_egress()
        .await
        .expect("check after a second program");
    assert_eq!(node_rules(&node), rules, "a second start adds nothing");
    assert_eq!(
        rules,
        vec![
            "1000: from all fwmark 0x80/0x80 lookup main proto 175",
            "1024: from all to 10.0.0.0/16 goto 1026 proto 175",
            "1024: from all to 192.168.0.0/24 goto 1026 proto 175",
            "1025: from all lookup main proto 175",
            "1026: from all nop proto 175",
        ],
        "{rules:?}"
    );
    assert_eq!(sysctl(&node, "net/ipv4/conf/eth0/rp_filter"), "2");
    let listing = sh(&[
        "ip", "netns", "exec", &node.name, "nft", "list", "table", "ip", "vpc-cni",
    ]);
    assert_eq!(
        listing.trim(),
        "table ip vpc-cni {
\tset non-masquerade {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.0.0.0/16, 192.168.0.0/24 }
\t}

\tchain prerouting {
\t\ttype filter hook prerouting priority mangle - 5; policy accept;
\t\tiifname \"eth0\" ct state new fib daddr type local ct mark set ct mark | 0x00000080
\t\tiifgroup 1987076914 ct mark & 0x00000080 == 0x00000080 meta mark set meta mark | 0x00000080
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tiifgroup 1987076914 ip daddr != @non-masquerade masquerade fully-random
\t}
}",
        "nft prints the table as the nft module documents it"
    );

    // GC of pods leaves the node's rules alone.
    dp.collect_garbage(&[]).await.expect("gc");
    dp.check_egress().await.expect("check after GC");

    // Another list: the set is replaced, the stray skip rule goes.
    let other = dataplane(masquerade(&["10.0.0.0/16"])).await;
    let e = other.check_egress().await.expect_err("the set differs");
    assert!(
        e.to_string()
            .contains("set non-masquerade holds {10.0.0.0/16, 192.168.0.0/24}"),
        "{e}"
    );
    other.program_egress().await.expect("program another list");
    other.check_egress().await.expect("check the new list");
    let e = dp.check_egress().await.expect_err("the old list is gone");
    assert!(
        e.to_string()
            .contains("expected {10.0.0.0/16, 192.168.0.0/24}"),
        "{e}"
    );
    assert_eq!(node_rules(&node).len(), 4);

    // Uninstall: rules and table gone, and again is fine.
    remove_egress(Some(&node.path())).await.expect("remove");
    remove_egress(Some(&node.path()))
        .await
        .expect("remove again");
    assert!(node_rules(&node).is_empty());
    let e = other.check_egress().await.expect_err("removed");
    assert!(e.to_string().contains("does not exist"), "{e}");

    // Off removes the masquerade an earlier start programmed, and keeps
    // the connmark: its chain and rule, nothing else.
    other.program_egress().await.expect("program");
    let off = dataplane(Egress::Off).await;
    let e = off
        .check_egress()
        .await
        .expect_err("masquerade still there");
    assert!(
        e.to_string().contains(
            "chain postrouting of table ip vpc-cni exists though egress masquerade is off"
        ),
        "{e}"
    );
    off.program_egress().await.expect("off");
    off.check_egress().await.expect("off checks the connmark");
    assert_eq!(
        node_rules(&node),
        vec!["1000: from all fwmark 0x80/0x80 lookup main proto 175"]
    );
    let table = sh(&[
        "ip", "netns", "exec", &node.name, "nft", "list", "table", "ip", "vpc-cni",
    ]);
    assert!(table.contains("chain prerouting"), "{table}");
    assert!(
        !table.contains("postrouting") && !table.contains("non-masquerade"),
        "{table}"
    );
    assert!(other.check_egress().await.is_err());
    remove_egress(Some(&node.path())).await.expect("remove");
    assert!(
        node_rules(&node).is_empty(),
        "uninstall takes the connmark rule"
    );
}

/// A UDP listener inside a namespace: returns the address it saw the
/// first datagram from.
pub(super) fn listen_udp(ns: &Netns, at: &str) -> std::thread::JoinHandle<Option<SocketAddr>> {
    let path = ns.path();
    let at: SocketAddr = at.parse().expect("addr");
    let sock = in_netns(path, move || UdpSocket::bind(at).expect("bind listener"));
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        sock.recv_from(&mut buf).ok().map(|(_, from)| from)
    })
}

pub(super) fn send_udp(ns: &Netns, to: &str) {
    let to: SocketAddr = to.parse().expect("addr");
    in_netns(ns.path(), move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..3 {
            let _ = s.send_to(b"hello", to);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
async fn privileged_pod_traffic_leaving_the_vpc_is_masqueraded_and_inside_it_is_not() {
    require_root();
    // The bed: the node's ENI eth1 (10.9.0.2, gateway 10.9.0.1 in "wire"),
    // and a primary eth0 (198.51.100.2) to an "outside" namespace
    // (198.51.100.1), the main table's default route.
    let bed = bed();
    let (outside, connmark) = primary(&bed);
    vpc_reaches(&bed, "10.9.0.10");

    let dp = NetlinkDataplane::new(Some(&bed.node.path()))
        .await
        .expect("dataplane")
        .with_egress(masquerade(&["10.9.0.0/16"]))
        .with_connmark(connmark);
    dp.program_eni(&bed.eni).await.expect("program ENI");
    dp.program_egress().await.expect("program egress");
    let pod = Netns::new("pod");
    let s = spec(&bed, &pod, "c-egress", bed.eni.ips[0]);
    dp.attach_pod(&s).await.expect("attach");
    dp.check_pod(&s).await.expect("check");

    // Outside the VPC: the outside host sees the node's primary address.
    let seen = listen_udp(&outside, "198.51.100.1:7777");
    send_udp(&pod, "198.51.100.1:7777");
    let from = seen
        .join()
        .expect("listener")
        .expect("a datagram reached the outside host");
    assert_eq!(
        from.ip().to_string(),
        "198.51.100.2",
        "masqueraded to the node"
    );

    // Inside the VPC: the pod's own address.
    let seen = listen_udp(&bed._wire, "10.9.0.1:7777");
    send_udp(&pod, "10.9.0.1:7777");
    let from = seen
        .join()
        .expect("listener")
        .expect("a datagram reached the VPC host");
    assert_eq!(
        from.ip().to_string(),
        "10.9.0.10",
        "the pod keeps its address"
    );

    // Without the egress, nothing of the pod's reaches the outside.
    remove_egress(Some(&bed.node.path())).await.expect("remove");
    let seen = listen_udp(&outside, "198.51.100.1:7778");
    send_udp(&pod, "198.51.100.1:7778");
    assert_eq!(
        seen.join().expect("listener"),
        None,
        "left by the ENI, unmasqueraded"
    );
}
