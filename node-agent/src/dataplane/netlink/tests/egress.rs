//! Privileged tests of the egress masquerade: programmed, programmed
//! again, read back, changed, removed; and real traffic from a pod to an
//! "outside" namespace, seen there from the node's address, while traffic
//! to the VPC keeps the pod's.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;

use nix::sched::{CloneFlags, setns};

use super::*;
use crate::dataplane::egress::{Cidr, Egress};
use crate::dataplane::remove_egress;

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|c| c.parse().expect("cidr")).collect()
}

fn masquerade(list: &[&str]) -> Egress {
    Egress::masquerade(cidrs(list)).expect("egress")
}

/// Our policy rules at the egress priorities, as `ip rule` prints them.
fn egress_rules(ns: &Netns) -> Vec<String> {
    ns.ip(&["rule", "show"])
        .lines()
        .filter(|l| l.starts_with("1024:") || l.starts_with("1025:") || l.starts_with("1026:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
async fn privileged_egress_is_programmed_once_read_back_changed_and_removed() {
    require_root();
    let node = Netns::new("egress");
    let vpc = masquerade(&["10.0.0.0/16", "10.0.16.0/20", "192.168.0.0/24"]);
    let dp = NetlinkDataplane::new(Some(&node.path()))
        .await
        .expect("dataplane")
        .with_egress(vpc.clone());

    let e = dp.check_egress().await.expect_err("nothing programmed yet");
    assert!(
        e.to_string().contains("table ip vpc-cni does not exist"),
        "{e}"
    );

    dp.program_egress().await.expect("program");
    dp.check_egress().await.expect("check after program");
    let rules = egress_rules(&node);
    dp.program_egress().await.expect("program again");
    dp.check_egress()
        .await
        .expect("check after a second program");
    assert_eq!(egress_rules(&node), rules, "a second start adds nothing");
    assert_eq!(
        rules,
        vec![
            "1024: from all to 10.0.0.0/16 goto 1026 proto 175",
            "1024: from all to 192.168.0.0/24 goto 1026 proto 175",
            "1025: from all lookup main proto 175",
            "1026: from all nop proto 175",
        ],
        "{rules:?}"
    );

    // GC of pods leaves the egress rules alone.
    dp.collect_garbage(&[]).await.expect("gc");
    dp.check_egress().await.expect("check after GC");

    // Another list: the set is replaced, the stray skip rule goes.
    let other = NetlinkDataplane::new(Some(&node.path()))
        .await
        .expect("dataplane")
        .with_egress(masquerade(&["10.0.0.0/16"]));
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
    assert_eq!(egress_rules(&node).len(), 3);

    // Uninstall: rules and table gone, and again is fine.
    remove_egress(Some(&node.path())).await.expect("remove");
    remove_egress(Some(&node.path()))
        .await
        .expect("remove again");
    assert!(egress_rules(&node).is_empty());
    let e = other.check_egress().await.expect_err("removed");
    assert!(e.to_string().contains("does not exist"), "{e}");

    // Off removes what an earlier start programmed.
    other.program_egress().await.expect("program");
    let off = NetlinkDataplane::new(Some(&node.path()))
        .await
        .expect("dataplane");
    off.program_egress().await.expect("off");
    off.check_egress().await.expect("off checks nothing");
    assert!(egress_rules(&node).is_empty());
    assert!(other.check_egress().await.is_err());
}

/// Runs `f` on a thread inside the namespace at `path`.
fn in_netns<T: Send + 'static>(path: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = OwnedFd::from(std::fs::File::open(&path).expect("open netns"));
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A UDP listener inside a namespace: returns the address it saw the
/// first datagram from.
fn listen_udp(ns: &Netns, at: &str) -> std::thread::JoinHandle<Option<SocketAddr>> {
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

fn send_udp(ns: &Netns, to: &str) {
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
    let outside = Netns::new("outside");
    outside.ip(&[
        "link",
        "add",
        "o0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &bed.node.name,
    ]);
    outside.ip(&["addr", "add", "198.51.100.1/24", "dev", "o0"]);
    outside.ip(&["link", "set", "o0", "up"]);
    bed.node
        .ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    bed.node.ip(&["link", "set", "eth0", "up"]);
    bed.node.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.51.100.1",
        "dev",
        "eth0",
    ]);
    // The VPC side: the gateway answers for the subnet and reaches the pod.
    bed._wire.ip(&["addr", "add", "10.9.0.1/24", "dev", "f1"]);

    let dp = NetlinkDataplane::new(Some(&bed.node.path()))
        .await
        .expect("dataplane")
        .with_egress(masquerade(&["10.9.0.0/16"]));
    dp.program_eni(&bed.eni).await.expect("program ENI");
    dp.program_egress().await.expect("program egress");
    let pod = Netns::new("pod");
    let s = spec(&bed, &pod, "c-egress", bed.eni.ips[0]);
    dp.attach_pod(&s).await.expect("attach");
    dp.check_pod(&s).await.expect("check");
    let eth1_mac = bed.node.ip(&["-o", "link", "show", "eth1"]);
    let mac = eth1_mac
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("eth1 MAC")
        .to_string();
    bed._wire.ip(&[
        "neigh",
        "replace",
        "10.9.0.10",
        "lladdr",
        &mac,
        "dev",
        "f1",
        "nud",
        "permanent",
    ]);

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
