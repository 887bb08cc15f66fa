//! Privileged: the real binaries on a `vpc-sim` simulation with real links.
//! Every namespace is uniquely named and removed on drop, even on failure.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use vpc_cni_tests::{CniEnv, PodNetns, Sim, bin, cni, pod_address, require_root};

fn bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_demo_two_nodes_ping_each_other() {
    demo(&[], "(across nodes)");
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_dual_stack_demo_pods_reach_each_other_and_the_nodes_by_ipv6() {
    // Every pod's IPv6 address from its ENI, pinged on its node, across
    // nodes both ways and from both nodes; no leftovers of either family.
    demo(&["--ip-family", "dual"], "==> ping IPv6");
}

/// `vpc-sim demo` with `flags` passes every check and prints `expect`.
fn demo(flags: &[&str], expect: &str) {
    require_root();
    let out = Command::new(bin("vpc-sim"))
        .arg("demo")
        .args(flags)
        .output()
        .expect("run vpc-sim demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(expect) && stdout.contains("PASS"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_add_check_gc_del_program_the_kernel() {
    require_root();
    let sim = Sim::up(1, &[]);
    let conf = sim.conf(1, "1.1.0");
    let (a, b) = (PodNetns::new(), PodNetns::new());
    let add = |pod: &PodNetns, id: &str| {
        let run = cni(&CniEnv::pod("ADD", id, &pod.path()), &bytes(&conf));
        assert!(run.ok, "ADD {id}: {} {}", run.stdout, run.stderr);
        run.json()
    };
    let ra = add(&a, "ctr-a");
    let rb = add(&b, "ctr-b");
    let ip_a = pod_address(&ra);
    let ip_b = pod_address(&rb);
    assert!(a.ip(&["addr", "show", "eth0"]).contains(&ip_a));
    assert!(
        a.ping(ip_b.trim_end_matches("/32")),
        "pod to pod on one node"
    );
    assert!(a.ping("10.0.16.1"), "pod to its subnet gateway");

    let mut with_prev = conf.clone();
    with_prev["prevResult"] = ra.clone();
    let check = cni(
        &CniEnv::pod("CHECK", "ctr-a", &a.path()),
        &bytes(&with_prev),
    );
    assert!(check.ok, "CHECK: {}", check.stdout);

    // The node's egress masquerade is part of every pod's CHECK: removed
    // by `vpc-cni-agent uninstall`, CHECK names it.
    let rules = sim.node_ip(1, &["rule"]);
    assert!(
        rules.contains("1025:\tfrom all lookup main proto 175"),
        "{rules}"
    );
    let uninstall = Command::new(bin("vpc-cni-agent"))
        .args(["uninstall", "--node-netns", sim.get("NODE1_NETNS")])
        .output()
        .expect("run uninstall");
    assert!(
        uninstall.status.success(),
        "{}",
        String::from_utf8_lossy(&uninstall.stderr)
    );
    assert!(!sim.node_ip(1, &["rule"]).contains("1025:"));
    let check = cni(
        &CniEnv::pod("CHECK", "ctr-a", &a.path()),
        &bytes(&with_prev),
    );
    assert_eq!(check.code(), 102, "CHECK: {}", check.stdout);
    let msg = check.json()["msg"].as_str().expect("msg").to_string();
    assert!(
        msg.contains("egress masquerade") && msg.contains("table ip vpc-cni does not exist"),
        "{msg}"
    );
    let host_veth = ra["interfaces"][0]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    sim.node_ip(1, &["link", "set", &host_veth, "down"]);
    let check = cni(
        &CniEnv::pod("CHECK", "ctr-a", &a.path()),
        &bytes(&with_prev),
    );
    assert_eq!(
        check.code(),
        102,
        "CHECK names what is wrong: {}",
        check.stdout
    );
    assert!(
        check.json()["msg"]
            .as_str()
            .expect("msg")
            .contains("host veth")
    );
    sim.node_ip(1, &["link", "set", &host_veth, "up"]);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-a", "ifname": "eth0"}]);
    assert!(cni(&CniEnv::bare("GC"), &bytes(&gc)).ok);
    let rules = sim.node_ip(1, &["rule"]);
    assert!(
        !rules.contains(ip_b.trim_end_matches("/32")),
        "GC removed b's rules: {rules}"
    );
    assert!(
        rules.contains(ip_a.trim_end_matches("/32")),
        "GC kept a's rules: {rules}"
    );

    let del = cni(&CniEnv::pod("DEL", "ctr-a", &a.path()), &bytes(&conf));
    assert!(del.ok, "DEL: {}", del.stdout);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.node_ip(1, &["-o", "link", "show"]).contains(&host_veth) {
        assert!(Instant::now() < deadline, "veth {host_veth} not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The pod's rules are gone; the node's egress rules (1024 to 1026) stay.
    assert!(
        !sim.node_ip(1, &["rule"])
            .lines()
            .any(|l| l.contains("proto 175") && (l.starts_with("512:") || l.starts_with("1536:")))
    );
    assert!(
        sim.node_ip(1, &["route", "show", "proto", "175"])
            .trim()
            .is_empty()
    );
    let del = cni(
        &CniEnv::pod("DEL", "ctr-a", &a.path()).unset("CNI_NETNS"),
        &bytes(&conf),
    );
    assert!(del.ok, "DEL again: {}", del.stdout);
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_pods_on_two_nodes_reach_each_other() {
    require_root();
    let sim = Sim::up(2, &[]);
    let (a, b) = (PodNetns::new(), PodNetns::new());
    let ra = cni(
        &CniEnv::pod("ADD", "x-a", &a.path()),
        &bytes(&sim.conf(1, "1.0.0")),
    );
    let rb = cni(
        &CniEnv::pod("ADD", "x-b", &b.path()),
        &bytes(&sim.conf(2, "1.0.0")),
    );
    assert!(ra.ok && rb.ok, "{} {}", ra.stdout, rb.stdout);
    let ip_b = pod_address(&rb.json());
    let ip_a = pod_address(&ra.json());
    assert!(
        a.ping(ip_b.trim_end_matches("/32")),
        "node1 pod to node2 pod"
    );
    assert!(
        b.ping(ip_a.trim_end_matches("/32")),
        "node2 pod to node1 pod"
    );
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_a_caller_in_another_mount_namespace_is_served() {
    // As when a runtime runs under `ip netns exec`: the pod namespace's
    // bind mount exists only in the caller's private mount namespace, and
    // the agent sees an empty file at that path.
    require_root();
    let sim = Sim::up(1, &[]);
    let node = sim
        .get("NODE1_NETNS")
        .rsplit('/')
        .next()
        .expect("name")
        .to_string();
    let inner = format!("vpct-{}-inner", std::process::id());
    let conf_file = sim.dir.path().join("conf.json");
    std::fs::write(&conf_file, bytes(&sim.conf(1, "1.0.0"))).expect("conf");
    let env = |verb: &str| {
        format!(
            "env -i CNI_COMMAND={verb} CNI_CONTAINERID=mnt-ns CNI_NETNS=/var/run/netns/{inner} CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin {} < {}",
            bin("vpc-cni").display(),
            conf_file.display()
        )
    };
    let script = format!(
        "ip netns add {inner} && {add} && ip -n {inner} -o addr show eth0; rc=$?; {del}; ip netns del {inner}; exit $rc",
        add = env("ADD"),
        del = env("DEL"),
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &node, "sh", "-c", &script])
        .output()
        .expect("run");
    let _ = std::fs::remove_file(format!("/var/run/netns/{inner}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("inet 10.0.16.") && stdout.contains("/32"),
        "{stdout}"
    );
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_the_router_keeps_delivering_every_ip_as_enis_join() {
    // Every address an attached ENI holds is a route to that ENI's own link
    // on the VPC's router, with a permanent neighbour for its MAC: ENIs
    // plugged later never take over or cut off earlier ones.
    require_root();
    let sim = Sim::up(2, &[]);
    for n in 1..=2 {
        let pod = PodNetns::new();
        let run = cni(
            &CniEnv::pod("ADD", &format!("nb{n}"), &pod.path()),
            &bytes(&sim.conf(n, "1.0.0")),
        );
        assert!(run.ok, "{}", run.stdout);
    }
    let node = sim
        .get("NODE1_NETNS")
        .rsplit('/')
        .next()
        .expect("name")
        .to_string();
    let router = node.trim_end_matches("-n1").to_string() + "-vpc";
    let world: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sim.dir.path().join("sim/vpc.json")).expect("world"))
            .expect("json");
    let neigh = vpc_cni_tests::ip(&["-n", &router, "neigh", "show"]);
    let routes = vpc_cni_tests::ip(&["-n", &router, "route", "show"]);
    let mut checked = 0;
    for eni in world["vpc"]["enis"].as_object().expect("enis").values() {
        if eni["attached_to"].is_null() {
            continue;
        }
        let mac = eni["mac"].as_str().expect("mac");
        let link = format!("e{}", eni["seq"]);
        let held = std::iter::once(&eni["primary_ip"])
            .chain(eni["secondary_ips"].as_array().expect("ips"));
        for ip in held {
            let ip = ip.as_str().expect("ip");
            let line = format!("{ip} dev {link} lladdr {mac} PERMANENT");
            assert!(neigh.contains(&line), "missing `{line}` in:\n{neigh}");
            let route = format!("{ip} dev {link} ");
            assert!(routes.contains(&route), "missing `{route}` in:\n{routes}");
            checked += 1;
        }
    }
    assert!(checked >= 2, "both nodes' ENIs were checked");
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_a_static_pod_keeps_its_ip_and_its_connectivity() {
    require_root();
    let sim = Sim::up(1, &[]);
    let conf = sim.conf(1, "1.0.0");
    let static_env = |verb: &str, sandbox: &str, netns: &PodNetns| {
        CniEnv::pod(verb, sandbox, &netns.path()).set(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=db-0;VPC_IP_CLAIM_DELETE_POLICY=Never",
        )
    };
    let first = PodNetns::new();
    let run = cni(&static_env("ADD", "db-0-a", &first), &bytes(&conf));
    assert!(run.ok, "{}", run.stdout);
    let ip = pod_address(&run.json());
    assert!(first.ping("10.0.16.1"));
    assert!(cni(&static_env("DEL", "db-0-a", &first), &bytes(&conf)).ok);
    drop(first);
    let second = PodNetns::new();
    let run = cni(&static_env("ADD", "db-0-b", &second), &bytes(&conf));
    assert!(run.ok, "{}", run.stdout);
    assert_eq!(
        pod_address(&run.json()),
        ip,
        "the pod's next sandbox has its IP"
    );
    assert!(second.ping("10.0.16.1"), "and its connectivity");

    // Across a crash of the agent too.
    assert!(cni(&static_env("DEL", "db-0-b", &second), &bytes(&conf)).ok);
    drop(second);
    sim.crash_agent(1);
    let third = PodNetns::new();
    let run = cni(&static_env("ADD", "db-0-c", &third), &bytes(&conf));
    assert!(run.ok, "{}", run.stdout);
    assert_eq!(
        pod_address(&run.json()),
        ip,
        "after the crash the pod still gets its IP"
    );
    assert!(third.ping("10.0.16.1"), "with connectivity");

    // A plain pod keeps nothing.
    let plain_env = |verb: &str, sandbox: &str, netns: &PodNetns| {
        CniEnv::pod(verb, sandbox, &netns.path())
            .set("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=job-0")
    };
    let a = PodNetns::new();
    let plain_ip = pod_address(&cni(&plain_env("ADD", "job-0-a", &a), &bytes(&conf)).json());
    assert!(cni(&plain_env("DEL", "job-0-a", &a), &bytes(&conf)).ok);
    let b = PodNetns::new();
    let run = cni(&plain_env("ADD", "job-0-b", &b), &bytes(&conf));
    assert_ne!(
        pod_address(&run.json()),
        plain_ip,
        "a plain pod's next sandbox gets another IP"
    );
    assert!(b.ping("10.0.16.1"));
}
