//! The links the node-wide tests (egress, connmark) add to a bed: a
//! primary ENI towards a namespace of its own, the VPC side of the ENI,
//! and reading MACs and sysctls back.

use std::path::PathBuf;

use super::{Bed, Netns, sh};

/// A sysctl (its path under `/proc/sys`) as seen in `ns`.
pub(super) fn sysctl(ns: &Netns, key: &str) -> String {
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "cat",
        &format!("/proc/sys/{key}"),
    ])
    .trim()
    .to_string()
}

/// Runs `f` on a thread inside the namespace at `path`.
pub(super) fn in_netns<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let ns = std::os::fd::OwnedFd::from(std::fs::File::open(&path).expect("open netns"));
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// The MAC of `link` in `ns`.
pub(super) fn mac_of(ns: &Netns, link: &str) -> String {
    ns.ip(&["-o", "link", "show", link])
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("a MAC")
        .to_string()
}

/// Gives the bed's node a primary ENI `eth0` (198.51.100.2/24, the main
/// table's default route via 198.51.100.1) whose far end is `o0` in a
/// namespace of its own ("outside", or a client of a NodePort), and
/// returns that namespace and the connmark that names `eth0` by its MAC.
pub(super) fn primary(bed: &Bed) -> (Netns, crate::dataplane::Connmark) {
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
    let connmark = crate::dataplane::Connmark {
        bit: crate::dataplane::ConnmarkBit::default(),
        primary_mac: mac_of(&bed.node, "eth0"),
    };
    (outside, connmark)
}

/// Makes the bed's VPC side answer for the pod at `ip`: the gateway
/// 10.9.0.1 on the wire, which sends to it by the ENI's MAC.
pub(super) fn vpc_reaches(bed: &Bed, ip: &str) {
    bed._wire.ip(&["addr", "add", "10.9.0.1/24", "dev", "f1"]);
    let mac = mac_of(&bed.node, "eth1");
    bed._wire.ip(&[
        "neigh",
        "replace",
        ip,
        "lladdr",
        &mac,
        "dev",
        "f1",
        "nud",
        "permanent",
    ]);
}
