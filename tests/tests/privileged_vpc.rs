//! Privileged: the simulated VPC is as strict as a real one. Its switch
//! answers ARP for every address of the subnet itself, delivers by routing
//! to the ENI that holds an address, and drops (and counts) what leaves an
//! ENI from an address that ENI does not hold.

use std::process::Command;

use vpc_cni_tests::{Sim, bin, require_root};

/// `ip netns exec NS ARGS`: whether it succeeded.
fn exec_ok(netns: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .expect("ip netns exec")
        .status
        .success()
}

fn netns(sim: &Sim, n: usize) -> String {
    sim.get(&format!("NODE{n}_NETNS"))
        .rsplit('/')
        .next()
        .expect("name")
        .to_string()
}

/// The first IPv4 address of `dev` in node `n`.
fn address(sim: &Sim, n: usize, dev: &str) -> String {
    let out = sim.node_ip(n, &["-4", "-o", "addr", "show", "dev", dev]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address on {dev}: {out}"))
        .to_string()
}

/// The MAC node `n` has for `addr` on `dev`.
fn neighbour(sim: &Sim, n: usize, addr: &str, dev: &str) -> String {
    let out = sim.node_ip(n, &["neigh", "show", addr, "dev", dev]);
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_else(|| panic!("no neighbour {addr} on {dev}: {out:?}"))
        .to_string()
}

fn source_check(sim: &Sim, switch: Option<&str>) -> String {
    let out = Command::new(bin("vpc-sim"))
        .arg("source-check")
        .arg("--state")
        .arg(sim.dir.path().join("sim"))
        .args(switch)
        .output()
        .expect("vpc-sim source-check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number before `what` in the source-check summary line.
fn count_before(report: &str, what: &str) -> u64 {
    let at = report
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {report}"));
    report[..at]
        .split_whitespace()
        .last()
        .and_then(|w| w.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {report}"))
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_the_vpc_answers_arp_for_every_subnet_address_with_the_gateways_mac() {
    require_root();
    let sim = Sim::up(2, &[]);
    let (a, b) = (netns(&sim, 1), netns(&sim, 2));
    let b_primary = address(&sim, 2, "eth0");
    let gateway = "10.0.16.1";
    assert!(exec_ok(&a, &["ping", "-c", "1", "-W", "2", gateway]));
    assert!(
        exec_ok(&a, &["ping", "-c", "1", "-W", "2", &b_primary]),
        "node1 -> node2's primary address"
    );
    let gateway_mac = neighbour(&sim, 1, gateway, "eth0");
    let b_mac = sim.node_ip(2, &["-o", "link", "show", "eth0"]);
    assert_eq!(
        neighbour(&sim, 1, &b_primary, "eth0"),
        gateway_mac,
        "node2's address must be answered by the VPC, not by node2 ({b_mac})"
    );
    // An address nobody holds: ARP is answered all the same, the packet
    // is delivered nowhere, and the router counts it.
    let before = count_before(
        &source_check(&sim, None),
        "packets to addresses no ENI holds",
    );
    let unheld = "10.0.31.250";
    assert!(!exec_ok(&a, &["ping", "-c", "1", "-W", "1", unheld]));
    assert_eq!(neighbour(&sim, 1, unheld, "eth0"), gateway_mac);
    let after = count_before(
        &source_check(&sim, None),
        "packets to addresses no ENI holds",
    );
    assert!(after > before, "unheld: {before} -> {after}");
    // Node 2 answered ARP for nothing: it never saw a request.
    let b_neigh = sim.node_ip(2, &["neigh", "show", "dev", "eth0"]);
    assert!(
        b_neigh
            .lines()
            .all(|l| l.contains(&gateway_mac) || l.contains("FAILED")),
        "node2 learnt a MAC other than the VPC's: {b_neigh}"
    );
    drop(b);
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_the_source_check_drops_what_an_eni_sends_from_an_address_it_does_not_hold() {
    require_root();
    let sim = Sim::up(2, &[]);
    let (a, b) = (netns(&sim, 1), netns(&sim, 2));
    let b_primary = address(&sim, 2, "eth0");
    let spoofed = "10.0.31.249";
    sim.node_ip(1, &["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"]);
    // What arrives at node 2 from the spoofed source, counted there.
    let nft = |ns: &str, script: &str| {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        assert!(child.wait().expect("nft").success(), "{script}");
    };
    nft(
        &b,
        &format!(
            "table ip seen {{\n counter spoofed {{ }}\n chain input {{\n type filter hook input priority 0;\n ip saddr {spoofed} counter name \"spoofed\"\n }}\n}}\n"
        ),
    );
    let arrived = || {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &b, "nft", "list", "counter", "ip", "seen", "spoofed",
            ])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("counter: {text}"))
    };
    let ping_from_spoofed = || {
        exec_ok(
            &a,
            &[
                "ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", spoofed, &b_primary,
            ],
        )
    };

    assert!(source_check(&sim, None).contains("on (dropping)"));
    assert!(!ping_from_spoofed());
    assert_eq!(arrived(), 0, "a spoofed packet got through the check");
    let report = source_check(&sim, None);
    assert!(
        report.contains(&format!("eth0) sent 2 packets from {spoofed}")),
        "{report}"
    );
    // The node's own address still goes through.
    assert!(exec_ok(&a, &["ping", "-c", "1", "-W", "2", &b_primary]));

    // Off, the check only counts: the packets arrive (their replies go to
    // an address no ENI holds and are lost there).
    assert!(source_check(&sim, Some("off")).contains("off (counting only)"));
    assert!(!ping_from_spoofed());
    assert_eq!(arrived(), 2, "with the check off the packets arrive");
    let report = source_check(&sim, None);
    assert!(
        report.contains(&format!("eth0) sent 4 packets from {spoofed}")),
        "{report}"
    );
    assert!(source_check(&sim, Some("on")).contains("on (dropping)"));
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_ipv6_is_delivered_to_the_eni_holding_it_and_source_checked() {
    use vpc_sim::world::{SUBNET_ID, SharedWorld, instance_id};
    require_root();
    let sim = Sim::up(2, &[]);
    let (a, b) = (netns(&sim, 1), netns(&sim, 2));
    // The VPC and its subnet get their IPv6 blocks, each node's primary
    // ENI an address, as the API's actions do (on the same world file the
    // emulator serves).
    let world = SharedWorld::at(&sim.dir.path().join("sim").join("vpc.json"));
    let addresses = world
        .update(|w| {
            w.vpc.assign_ipv6_block()?;
            w.assign_subnet_ipv6_blocks(&[(
                SUBNET_ID.to_string(),
                "2402:4e00:1c00:9a01::/64".to_string(),
            )])?;
            let mut got = Vec::new();
            for n in 1..=2 {
                let primary = w
                    .vpc
                    .enis
                    .values()
                    .find(|e| e.primary && e.attached_to.as_deref() == Some(&instance_id(n)))
                    .map(|e| e.id.clone())
                    .expect("primary ENI");
                got.push(w.assign_ipv6(&primary, &[], 1)?[0]);
            }
            Ok(got)
        })
        .expect("IPv6 assigned");
    // The node's side, as an agent configures it: the address alone, and
    // the VPC's gateway at fe80::1.
    for (n, addr) in addresses.iter().enumerate() {
        sim.node_ip(
            n + 1,
            &[
                "-6",
                "addr",
                "add",
                &format!("{addr}/128"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        sim.node_ip(
            n + 1,
            &[
                "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            ],
        );
    }
    let to_b = addresses[1].to_string();
    assert!(
        exec_ok(&a, &["ping", "-6", "-c", "1", "-W", "2", &to_b]),
        "node1 -> node2 over IPv6"
    );
    assert!(exec_ok(&a, &["ping", "-c", "1", "-W", "2", "10.0.16.1"]));
    let gateway_mac = neighbour(&sim, 1, "10.0.16.1", "eth0");
    assert_eq!(
        neighbour(&sim, 1, "fe80::1", "eth0"),
        gateway_mac,
        "the IPv6 gateway is the VPC's, with the subnet gateway's MAC"
    );
    // An address of the block nobody holds: delivered nowhere, counted.
    let before = count_before(
        &source_check(&sim, None),
        "packets to addresses no ENI holds",
    );
    assert!(!exec_ok(
        &a,
        &[
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "1",
            "2402:4e00:1c00:9a01::7777"
        ]
    ));
    let after = count_before(
        &source_check(&sim, None),
        "packets to addresses no ENI holds",
    );
    assert!(after > before, "unheld: {before} -> {after}");
    // From an address the ENI was not given: dropped and counted.
    let spoofed = "2402:4e00:1c00:9a01::6666";
    sim.node_ip(
        1,
        &[
            "-6",
            "addr",
            "add",
            &format!("{spoofed}/128"),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    assert!(!exec_ok(
        &a,
        &[
            "ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", "-I", spoofed, &to_b
        ]
    ));
    let report = source_check(&sim, None);
    assert!(
        report.contains(&format!("eth0) sent 2 packets from {spoofed}")),
        "{report}"
    );
    // Taken off the ENI, the address is delivered nowhere.
    world
        .update(|w| {
            let eni = w
                .vpc
                .enis
                .values()
                .find(|e| e.ipv6_addresses.contains(&addresses[1]))
                .map(|e| e.id.clone())
                .expect("holder");
            w.unassign_ipv6(&eni, &[addresses[1]])
        })
        .expect("unassigned");
    assert!(!exec_ok(&a, &["ping", "-6", "-c", "1", "-W", "1", &to_b]));
    drop(b);
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_a_dual_stack_vpc_gives_its_nodes_ipv6_and_carries_it_between_them() {
    require_root();
    let sim = Sim::up(2, &["--ip-family", "dual"]);
    let a = netns(&sim, 1);
    let (v6_a, v6_b) = (sim.get("NODE1_IPV6"), sim.get("NODE2_IPV6"));
    assert_ne!(v6_a, v6_b);
    let shown = sim.node_ip(1, &["-6", "-o", "addr", "show", "dev", "eth0"]);
    assert!(shown.contains(&format!("{v6_a}/128")), "{shown}");
    assert!(
        exec_ok(&a, &["ping", "-6", "-c", "1", "-W", "2", v6_b]),
        "node1 -> node2 over IPv6"
    );
    let report = source_check(&sim, None);
    assert!(
        report.contains("0 packets from ENIs with a source they do not hold"),
        "{report}"
    );
}
