//! Privileged tests of the connmark: the chain and the `fwmark` rule
//! programmed whatever the egress, read back by CHECK, which names what
//! was deleted; and a NodePort-like connection to the node's primary
//! address, DNATed to a pod on a secondary ENI, whose reply leaves by the
//! primary ENI.

use std::net::{SocketAddr, UdpSocket};

use super::egress::node_rules;
use super::*;
use crate::dataplane::egress::Egress;
use crate::dataplane::{Connmark, ConnmarkBit, remove_egress};

/// `nft ARGS` inside `ns`.
fn nft(ns: &Netns, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", &ns.name, "nft"];
    full.extend_from_slice(args);
    sh(&full)
}

/// The handle `nft -a` gives the rule of `chain` whose text has `needle`.
fn rule_handle(ns: &Netns, chain: &str, needle: &str) -> String {
    let listing = nft(ns, &["-a", "list", "chain", "ip", "vpc-cni", chain]);
    listing
        .lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| panic!("no rule with {needle:?} in {listing}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
async fn privileged_the_connmark_is_programmed_without_masquerade_and_check_names_what_was_deleted()
{
    require_root();
    let bed = bed();
    let (_outside, connmark) = primary(&bed);
    let dp = NetlinkDataplane::new(Some(&bed.node.path()))
        .await
        .expect("dataplane")
        .with_connmark(connmark.clone());
    dp.program_egress().await.expect("program");
    dp.check_egress().await.expect("check");
    let listing = nft(&bed.node, &["list", "table", "ip", "vpc-cni"]);
    assert_eq!(
        listing.trim(),
        "table ip vpc-cni {
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle - 5; policy accept;
\t\tiifname \"eth0\" ct state new fib daddr type local ct mark set ct mark | 0x00000080
\t\tiifgroup 1987076914 ct mark & 0x00000080 == 0x00000080 meta mark set meta mark | 0x00000080
\t}
}",
        "nft prints the rules as the module documents them"
    );
    assert_eq!(
        node_rules(&bed.node),
        vec!["1000: from all fwmark 0x80/0x80 lookup main proto 175"]
    );
    assert_eq!(sysctl(&bed.node, "net/ipv4/conf/eth0/rp_filter"), "2");

    // The restore rule deleted by hand: CHECK names it; programming
    // brings it back.
    let handle = rule_handle(&bed.node, "prerouting", "meta mark set");
    nft(
        &bed.node,
        &[
            "delete",
            "rule",
            "ip",
            "vpc-cni",
            "prerouting",
            "handle",
            &handle,
        ],
    );
    let e = dp.check_egress().await.expect_err("restore rule deleted");
    assert!(
        e.to_string().contains(
            "chain prerouting lacks the rule `iifgroup 1987076914 ct mark & 0x00000080 == 0x00000080 meta mark set meta mark | 0x00000080`"
        ),
        "{e}"
    );
    dp.program_egress().await.expect("program again");
    dp.check_egress().await.expect("repaired");

    // The mark rule altered by hand (another interface).
    let handle = rule_handle(&bed.node, "prerouting", "ct mark set");
    nft(
        &bed.node,
        &[
            "replace",
            "rule",
            "ip",
            "vpc-cni",
            "prerouting",
            "handle",
            &handle,
            "iifname",
            "eth1",
            "ct",
            "state",
            "new",
            "fib",
            "daddr",
            "type",
            "local",
            "ct",
            "mark",
            "set",
            "ct",
            "mark",
            "or",
            "0x80",
        ],
    );
    let e = dp.check_egress().await.expect_err("mark rule altered");
    assert!(
        e.to_string()
            .contains("chain prerouting lacks the rule `iifname \"eth0\" ct state new"),
        "{e}"
    );
    dp.program_egress().await.expect("program again");

    // The policy rule deleted by hand.
    bed.node.ip(&["rule", "del", "priority", "1000"]);
    let e = dp.check_egress().await.expect_err("fwmark rule deleted");
    assert!(
        e.to_string()
            .contains("policy rule \"1000: fwmark 0x80/0x80 lookup main\" is missing"),
        "{e}"
    );
    dp.program_egress().await.expect("program again");
    dp.check_egress().await.expect("repaired");

    // The whole chain deleted.
    nft(
        &bed.node,
        &["delete", "chain", "ip", "vpc-cni", "prerouting"],
    );
    let e = dp.check_egress().await.expect_err("chain deleted");
    assert!(
        e.to_string()
            .contains("chain prerouting of table ip vpc-cni is missing"),
        "{e}"
    );

    // Another bit: its rule replaces the old one, never beside it.
    let other = NetlinkDataplane::new(Some(&bed.node.path()))
        .await
        .expect("dataplane")
        .with_connmark(Connmark {
            bit: ConnmarkBit::new(0x100).expect("bit"),
            ..connmark
        });
    other.program_egress().await.expect("program another bit");
    other.check_egress().await.expect("check another bit");
    assert_eq!(
        node_rules(&bed.node),
        vec!["1000: from all fwmark 0x100/0x100 lookup main proto 175"]
    );
    assert!(dp.check_egress().await.is_err(), "the old bit is gone");

    remove_egress(Some(&bed.node.path()))
        .await
        .expect("uninstall");
    assert!(node_rules(&bed.node).is_empty());
    let tables = nft(&bed.node, &["list", "tables"]);
    assert!(!tables.contains("vpc-cni"), "{tables}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
async fn privileged_a_dual_stack_node_has_the_connmark_in_ipv6_too_checked_and_removed() {
    require_root();
    let bed = bed();
    let (_outside, connmark) = primary(&bed);
    let dp = NetlinkDataplane::new(Some(&bed.node.path()))
        .await
        .expect("dataplane")
        .with_connmark(connmark)
        .with_ipv6(true);
    dp.program_egress().await.expect("program");
    dp.program_egress()
        .await
        .expect("program again: replaced, not doubled");
    dp.check_egress().await.expect("check");
    let listing = nft(&bed.node, &["list", "table", "ip6", "vpc-cni"]);
    assert_eq!(
        listing.trim(),
        "table ip6 vpc-cni {
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle - 5; policy accept;
\t\tiifname \"eth0\" ct state new fib daddr type local ct mark set ct mark | 0x00000080
\t\tiifgroup 1987076914 ct mark & 0x00000080 == 0x00000080 meta mark set meta mark | 0x00000080
\t}
}",
        "the IPv4 table's connmark chain, in IPv6"
    );
    let rules6 = || -> Vec<String> {
        bed.node
            .ip(&["-6", "rule", "show"])
            .lines()
            .filter(|l| l.starts_with("1000:"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(
        rules6(),
        vec!["1000: from all fwmark 0x80/0x80 lookup main proto 175"]
    );
    assert_eq!(
        node_rules(&bed.node),
        vec!["1000: from all fwmark 0x80/0x80 lookup main proto 175"],
        "the IPv4 rule beside it, untouched"
    );

    // Deleted by hand: CHECK names the family and what; programming
    // brings it back.
    bed.node.ip(&["-6", "rule", "del", "priority", "1000"]);
    let e = dp.check_egress().await.expect_err("IPv6 rule deleted");
    assert!(
        e.to_string()
            .contains("ip6: policy rule \"1000: fwmark 0x80/0x80 lookup main\" is missing"),
        "{e}"
    );
    dp.program_egress().await.expect("program again");
    nft(&bed.node, &["delete", "table", "ip6", "vpc-cni"]);
    let e = dp.check_egress().await.expect_err("IPv6 table deleted");
    assert!(e.to_string().contains("ip6:"), "{e}");
    dp.program_egress().await.expect("program again");
    dp.check_egress().await.expect("repaired");

    remove_egress(Some(&bed.node.path()))
        .await
        .expect("uninstall");
    assert!(rules6().is_empty());
    assert!(node_rules(&bed.node).is_empty());
    let tables = nft(&bed.node, &["list", "tables"]);
    assert!(!tables.contains("vpc-cni"), "{tables}");
}

/// A UDP echo server inside `ns` at `at`: answers every datagram for 5 s.
fn echo_udp(ns: &Netns, at: &str) -> std::thread::JoinHandle<usize> {
    let at: SocketAddr = at.parse().expect("addr");
    let sock = in_netns(ns.path(), move || UdpSocket::bind(at).expect("bind echo"));
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut answered = 0;
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
            answered += 1;
        }
        answered
    })
}

/// Sends to `to` from a fresh socket inside `ns` (a new connection) and
/// returns where the first answer came from, if one came within 2 s.
fn ask_udp(ns: &Netns, to: &str) -> Option<SocketAddr> {
    let to: SocketAddr = to.parse().expect("addr");
    in_netns(ns.path(), move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        (0..3).find_map(|_| {
            let _ = s.send_to(b"hello", to);
            s.recv_from(&mut buf).ok().map(|(_, from)| from)
        })
    })
}

/// The packets each counter of the probe table counted, by comment.
fn counted(ns: &Netns, comment: &str) -> u64 {
    let listing = nft(ns, &["list", "table", "ip", "probe"]);
    listing
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .and_then(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no counter {comment} in {listing}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
async fn privileged_a_nodeport_reply_from_a_pod_on_a_secondary_eni_leaves_by_the_primary() {
    require_root();
    // The node: primary eth0 198.51.100.2 towards a client (198.51.100.1),
    // secondary ENI eth1 (10.9.0.2, table 101) with the pod 10.9.0.10.
    let bed = bed();
    let (client, connmark) = primary(&bed);
    vpc_reaches(&bed, "10.9.0.10");
    // Masquerade off: the connmark does not depend on it.
    let dp = NetlinkDataplane::new(Some(&bed.node.path()))
        .await
        .expect("dataplane")
        .with_egress(Egress::Off)
        .with_connmark(connmark);
    dp.program_eni(&bed.eni).await.expect("program ENI");
    dp.program_egress().await.expect("program connmark");
    let pod = Netns::new("pod");
    let s = spec(&bed, &pod, "c-nodeport", bed.eni.ips[0]);
    dp.attach_pod(&s).await.expect("attach");

    // kube-proxy's part: DNAT of the "NodePort" 198.51.100.2:30080 to the
    // pod, at dstnat (-100) in a table of its own. And a probe: kube-proxy's
    // 0x4000 set on the pod's packets before our chain (which must keep
    // it), what the mark is after ours, and which link the replies leave by.
    let rules = "table ip kp {
        chain pre { type nat hook prerouting priority -100; ip daddr 198.51.100.2 udp dport 30080 dnat to 10.9.0.10:7777; }
    }
    table ip probe {
        chain early { type filter hook prerouting priority -160; iifgroup 1987076914 meta mark set meta mark | 0x4000; }
        chain late { type filter hook prerouting priority -140; iifgroup 1987076914 meta mark 0x4080 counter comment \"both bits\"; }
        chain out {
            type filter hook postrouting priority 300;
            oifname \"eth0\" udp sport 30080 counter comment \"replies by eth0\";
            oifname \"eth1\" udp sport 30080 counter comment \"replies by eth1\";
        }
    }";
    let path = std::env::temp_dir().join(format!("vpct-{}-nodeport.nft", std::process::id()));
    std::fs::write(&path, rules).expect("write rules");
    let loaded = nft(&bed.node, &["-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    assert!(loaded.trim().is_empty(), "{loaded}");

    let echo = echo_udp(&pod, "0.0.0.0:7777");
    let from = ask_udp(&client, "198.51.100.2:30080");
    assert_eq!(
        from.map(|f| f.to_string()).as_deref(),
        Some("198.51.100.2:30080"),
        "the client hears the pod's reply from the node's address"
    );
    assert!(counted(&bed.node, "replies by eth0") >= 1);
    assert_eq!(
        counted(&bed.node, "replies by eth1"),
        0,
        "no reply left by the secondary ENI with the primary's address"
    );
    assert!(
        counted(&bed.node, "both bits") >= 1,
        "our bit was added beside kube-proxy's, not over it"
    );

    // Without the fwmark rule the reply follows the pod's rule out the
    // secondary ENI, where a VPC drops it: what the connmark prevents.
    bed.node.ip(&["rule", "del", "priority", "1000"]);
    let from = ask_udp(&client, "198.51.100.2:30080");
    assert_eq!(from, None, "the reply went elsewhere");
    assert!(
        counted(&bed.node, "replies by eth1") >= 1,
        "it left by eth1"
    );
    assert!(echo.join().expect("echo") >= 2, "the pod answered both");
}
