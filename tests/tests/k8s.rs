//! Privileged: a real Kubernetes (`vpc-sim up --kubernetes`) whose kubelet
//! → containerd → `vpc-cni` → agent path wires pods. Each test has its own
//! cluster in its own state directory, brought down on drop.

use std::net::Ipv4Addr;
use std::time::Duration;

use vpc_cni_tests::k8s::Cluster;
use vpc_cni_tests::require_root;

fn in_vpc_subnet(ip: &str) -> bool {
    let Ok(addr) = ip.parse::<Ipv4Addr>() else {
        return false;
    };
    // The simulation's subnet, 10.0.16.0/20.
    u32::from(addr) & 0xffff_f000 == u32::from(Ipv4Addr::new(10, 0, 16, 0))
}

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: k8s-test-pod}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: localhost/busybox:1.35
    imagePullPolicy: Never
    command: [sh, -c, 'echo hello from $(hostname); trap "exit 0" TERM; while true; do sleep 1; done']
"#;

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_pod_gets_a_vpc_ip_through_the_kubelet_and_is_deleted_cleanly() {
    require_root();
    let c = Cluster::up(1);
    let nodes = c.kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.labels}"]);
    assert!(nodes.contains("topology.kubernetes.io/zone"), "{nodes}");

    c.apply(POD);
    let pod = c.wait_ready("k8s-test-pod", Duration::from_secs(120));
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(in_vpc_subnet(&ip), "pod IP {ip:?} not from the VPC subnet");
    let held = c.allocations(1);
    assert!(
        held.iter()
            .any(|(name, _, a)| name == "k8s-test-pod" && *a == ip),
        "the agent holds no allocation of {ip} for the pod: {held:?}"
    );
    // kubectl logs and exec reach the kubelet in the node's namespace; the
    // pod reaches the subnet's gateway through its node.
    let logs = c.kubectl(&["logs", "k8s-test-pod"]);
    assert!(logs.contains("hello from k8s-test-pod"), "{logs}");
    let ping = c.try_kubectl(
        &[
            "exec",
            "k8s-test-pod",
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "3",
            "10.0.16.1",
        ],
        None,
    );
    assert!(ping.is_ok(), "ping the gateway from the pod: {ping:?}");

    c.kubectl(&["delete", "pod", "k8s-test-pod", "--wait=true"]);
    c.wait_until(
        "the agent released the pod's IP",
        Duration::from_secs(30),
        || c.allocations(1).is_empty(),
    );
    let netns = c
        .get("NODE1_NETNS")
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    c.wait_until(
        "no pod veth left on the node",
        Duration::from_secs(10),
        || {
            let links = vpc_cni_tests::ip(&["-n", &netns, "-o", "link", "show"]);
            !links
                .lines()
                .any(|l| l.split(": ").nth(1).is_some_and(|n| n.starts_with("vpc")))
        },
    );
}

const STS: &str = r#"apiVersion: v1
kind: Service
metadata: {name: k8s-web}
spec: {clusterIP: None, selector: {app: k8s-web}, ports: [{port: 8080}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: k8s-web}
spec:
  serviceName: k8s-web
  replicas: 1
  selector: {matchLabels: {app: k8s-web}}
  template:
    metadata: {labels: {app: k8s-web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: localhost/busybox:1.35
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
"#;

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_statefulset_pod_recreated_reaches_the_agent_as_del_and_add() {
    require_root();
    let c = Cluster::up(1);
    c.apply(STS);
    // Ready means the kubelet's HTTP probe reached the pod's VPC IP.
    let first = c.wait_ready("k8s-web-0", Duration::from_secs(120));
    let first_uid = first["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let held = c.allocations(1);
    let (_, old_container, _) = held
        .iter()
        .find(|(name, _, _)| name == "k8s-web-0")
        .cloned()
        .unwrap_or_else(|| panic!("no allocation for k8s-web-0: {held:?}"));

    c.kubectl(&["delete", "pod", "k8s-web-0", "--wait=true"]);
    c.wait_until(
        "the StatefulSet made k8s-web-0 again",
        Duration::from_secs(60),
        || {
            c.pod("k8s-web-0")
                .is_some_and(|p| p["metadata"]["uid"].as_str() != Some(first_uid.as_str()))
        },
    );
    let second = c.wait_ready("k8s-web-0", Duration::from_secs(120));
    let ip = second["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(in_vpc_subnet(&ip), "pod IP {ip:?} not from the VPC subnet");

    // The old sandbox's DEL released its allocation; the new one's ADD made
    // one, for the same pod name.
    let held = c.allocations(1);
    assert!(
        !held
            .iter()
            .any(|(_, container, _)| *container == old_container),
        "the old sandbox {old_container} still holds an IP: {held:?}"
    );
    assert!(
        held.iter().any(|(name, container, a)| name == "k8s-web-0"
            && *container != old_container
            && *a == ip),
        "no allocation of {ip} for the new k8s-web-0: {held:?}"
    );
    let log = c.agent_log(1);
    assert!(
        log.lines()
            .any(|l| l.contains("pod deleted") && l.contains(&old_container)),
        "the agent logged no DEL of {old_container}"
    );
    assert!(
        log.lines().filter(|l| l.contains("pod added")).count() >= 2,
        "the agent logged fewer than two ADDs"
    );
}
