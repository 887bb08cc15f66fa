//! Privileged: the shipped conflist (vpc-cni, then the reference `portmap`)
//! run as a runtime runs it on a `vpc-sim` node, so a pod's `hostPort`
//! reaches the pod, and DEL takes the mapping away again.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use vpc_cni_tests::{CniEnv, ConfList, PodNetns, Sim, bin, pod_address, require_root};
use vpc_sim::probe::in_netns;

const HOST_PORT: u16 = 18080;
const CONTAINER_PORT: u16 = 80;

/// Where Debian's `containernetworking-plugins` keeps `portmap`.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The shipped conflist, pointed at node `n`'s agent, run in that node's
/// namespace with our plugin and Debian's reference plugins in `CNI_PATH`.
fn shipped_conflist(sim: &Sim, n: usize) -> ConfList {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/10-vpc-cni.conflist");
    let mut list: Value =
        serde_json::from_slice(&std::fs::read(path).expect("conflist")).expect("json");
    list["plugins"][0]["agentSocket"] = json!(sim.get(&format!("NODE{n}_SOCKET")));
    let ours = bin("vpc-cni").parent().expect("bin dir").to_path_buf();
    ConfList {
        list,
        cni_path: vec![ours, PathBuf::from(REFERENCE_PLUGINS)],
        netns: PathBuf::from(sim.get(&format!("NODE{n}_NETNS"))),
    }
}

/// What kubelet hands the runtime for a container with
/// `ports: [{containerPort: 80, hostPort: 18080}]`.
fn port_mappings() -> Value {
    json!({"portMappings": [
        {"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp"}
    ]})
}

/// Node `n`'s address (its primary ENI's, on `eth0`).
fn node_address(sim: &Sim, n: usize) -> Ipv4Addr {
    let out = sim.node_ip(n, &["-4", "-o", "addr", "show", "dev", "eth0"]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address on eth0: {out}"))
}

/// A TCP server in the pod on the container port: it answers every
/// connection with the peer address it saw, and keeps serving until the
/// test process ends.
fn serve_in_pod(pod: &PodNetns) {
    let listener = in_netns(Path::new(&pod.path()), || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, CONTAINER_PORT))
    })
    .expect("listen in the pod");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let _ = stream.write_all(format!("pod saw {peer}").as_bytes());
        }
    });
}

/// Connects to `to` from inside `netns`; what the server there answered,
/// or why nothing did.
fn ask(netns: &str, to: SocketAddrV4) -> std::io::Result<String> {
    in_netns(Path::new(netns), move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    })
}

/// `iptables -t nat -S` in node `n`'s namespace.
fn nat_rules(sim: &Sim, n: usize) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", sim.get(&format!("NODE{n}_NETNS"))))
        .args(["--", "iptables", "-t", "nat", "-S"])
        .output()
        .expect("run iptables");
    assert!(
        out.status.success(),
        "iptables: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pod_ip(result: &Value) -> Ipv4Addr {
    pod_address(result)
        .trim_end_matches("/32")
        .parse()
        .expect("pod IPv4")
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_the_shipped_conflist_maps_a_host_port_into_the_pod() {
    require_root();
    let sim = Sim::up(1, &[]);
    let chain = shipped_conflist(&sim, 1);
    let pod = PodNetns::new();
    let env = CniEnv::pod("ADD", "hostport-a", &pod.path());
    let result = chain.add(&env, &port_mappings()).expect("ADD");
    // portmap passes vpc-cni's result through: the pod's address is in it.
    let ip = pod_ip(&result);
    assert_eq!(result["cniVersion"], "1.0.0");
    let rules = nat_rules(&sim, 1);
    let dnat = format!("--to-destination {ip}:{CONTAINER_PORT}");
    assert!(rules.contains(&dnat), "no `{dnat}` in:\n{rules}");

    // CHECK: vpc-cni's passes, then portmap's. Before v1.3.0 (Debian 12
    // ships 1.1.1) portmap checks ip6tables for an IPv4-only pod too and
    // fails there, after its IPv4 check passed; that failure and no other.
    if let Err(e) = chain.check(&env, &port_mappings(), &result) {
        assert!(
            e.starts_with("portmap CHECK failed") && e.contains("could not check ipv6 dnat"),
            "{e}"
        );
    }

    serve_in_pod(&pod);
    let node_netns = sim.get("NODE1_NETNS").to_string();
    let node = node_address(&sim, 1);
    // From the node to its own address (the DNAT in OUTPUT): the pod sees
    // the node's address, and its answer comes back.
    let answer = ask(&node_netns, SocketAddrV4::new(node, HOST_PORT))
        .unwrap_or_else(|e| panic!("{node}:{HOST_PORT} from the node: {e}\n{rules}"));
    assert!(answer.starts_with(&format!("pod saw {node}:")), "{answer}");
    // From the node to 127.0.0.1: portmap's `snat` masquerades it (a
    // loopback source cannot leave for the pod), so it arrives too.
    let answer = ask(
        &node_netns,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, HOST_PORT),
    )
    .unwrap_or_else(|e| panic!("127.0.0.1:{HOST_PORT} from the node: {e}\n{rules}"));
    assert!(answer.starts_with("pod saw "), "{answer}");
    assert!(!answer.contains("127.0.0.1"), "{answer}");

    chain
        .del(&env, &port_mappings(), Some(&result))
        .expect("DEL");
    let rules = nat_rules(&sim, 1);
    assert!(!rules.contains(&ip.to_string()), "DEL left:\n{rules}");
    assert!(
        !rules.contains("CNI-DN-"),
        "DEL left the pod's chain:\n{rules}"
    );
    assert!(
        ask(&node_netns, SocketAddrV4::new(node, HOST_PORT)).is_err(),
        "the host port still leads somewhere after DEL"
    );
    // A repeated DEL (the runtime retries) succeeds with nothing to remove.
    chain
        .del(&env, &port_mappings(), Some(&result))
        .expect("second DEL");
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_a_host_port_is_reached_from_another_node_of_the_subnet() {
    require_root();
    let sim = Sim::up(2, &[]);
    let chain = shipped_conflist(&sim, 1);
    let pod = PodNetns::new();
    let env = CniEnv::pod("ADD", "hostport-b", &pod.path());
    let result = chain.add(&env, &port_mappings()).expect("ADD");
    serve_in_pod(&pod);
    let (node1, node2) = (node_address(&sim, 1), node_address(&sim, 2));
    // Through the DNAT in node 1's PREROUTING; the pod sees the client's
    // own address (nothing masquerades it). Its answer leaves node 1 from
    // node 1's address, the one the client connected to, so it must leave
    // by the primary ENI that holds it: from the pod's own ENI the VPC's
    // source check drops it.
    let answer =
        ask(sim.get("NODE2_NETNS"), SocketAddrV4::new(node1, HOST_PORT)).unwrap_or_else(|e| {
            panic!(
                "{node1}:{HOST_PORT} from node 2 ({node2}), pod {}: {e} (did the answer leave by the pod's ENI?)",
                pod_ip(&result)
            )
        });
    assert!(answer.starts_with(&format!("pod saw {node2}:")), "{answer}");
    chain
        .del(&env, &port_mappings(), Some(&result))
        .expect("DEL");
    assert!(
        !nat_rules(&sim, 1).contains(&pod_ip(&result).to_string()),
        "DEL left portmap's rules"
    );
}
