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
    // No key on the node: the DaemonSet names no Secret, and the agent's
    // VPC calls go through the cluster component's gateway.
    let ns = c.get("VPC_CNI_NAMESPACE").to_string();
    let agents = c.kubectl(&["-n", &ns, "get", "daemonset", "vpc-cni-agent", "-o", "json"]);
    assert!(!agents.contains("secretKeyRef"), "{agents}");
    let log = c.agent_log(1);
    assert!(
        log.contains("VPC calls go through the cluster's cloud gateway"),
        "{log}"
    );
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

    // The cluster's own pods (CoreDNS) keep theirs: only this pod's go.
    let netns = c
        .get("NODE1_NETNS")
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let route = vpc_cni_tests::ip(&["-n", &netns, "route", "show", &format!("{ip}/32")]);
    let veth = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_else(|| panic!("no host route to the pod: {route:?}"))
        .to_string();
    c.kubectl(&["delete", "pod", "k8s-test-pod", "--wait=true"]);
    c.wait_until(
        "the agent released the pod's IP",
        Duration::from_secs(30),
        || !c.allocations(1).iter().any(|(_, _, a)| *a == ip),
    );
    c.wait_until(
        "the pod's veth gone from the node",
        Duration::from_secs(10),
        || {
            let links = vpc_cni_tests::ip(&["-n", &netns, "-o", "link", "show"]);
            !links.lines().any(|l| {
                l.split(": ")
                    .nth(1)
                    .is_some_and(|n| n.split('@').next() == Some(veth.as_str()))
            })
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

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_vpc_cni_runs_from_deploy_as_a_daemonset_and_survives_its_pod_restarting() {
    require_root();
    let c = Cluster::up(1);
    let ns = c.get("VPC_CNI_NAMESPACE").to_string();

    // Installed as a user installs it: the DaemonSet from deploy/, its
    // image, the init container's atomic install into the node's own dirs.
    let ready = c.kubectl(&[
        "-n",
        &ns,
        "get",
        "daemonset",
        "vpc-cni-agent",
        "-o",
        "jsonpath={.status.numberReady}/{.status.desiredNumberScheduled}",
    ]);
    assert_eq!(ready, "1/1");
    let agent = c.agent_pod(1);
    let image = c.kubectl(&[
        "-n",
        &ns,
        "get",
        "pod",
        &agent,
        "-o",
        "jsonpath={.spec.containers[0].image}",
    ]);
    assert_eq!(image, "localhost/vpc-cni:dev");
    let install = c.kubectl(&["-n", &ns, "logs", &agent, "-c", "install-cni"]);
    assert!(install.contains("vpc-cni:"), "{install}");
    assert!(install.contains("portmap:"), "{install}");
    assert!(install.contains("10-vpc-cni.conflist:"), "{install}");
    let root = c.state().join("k8s/node1/root");
    assert!(root.join("opt/cni/bin/vpc-cni").is_file());
    assert!(
        root.join("opt/cni/bin/portmap").is_file(),
        "the conflist chains portmap: the init container installs it"
    );
    assert!(root.join("etc/cni/net.d/10-vpc-cni.conflist").is_file());
    // The node's bind mounts live in its own mount namespace only.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let state = c.state().to_string_lossy().into_owned();
    assert!(
        !mounts.contains(&state),
        "a mount of the node leaked to the host:\n{mounts}"
    );

    // Least privilege: what the agent's service account may and may not do
    // (asked with SubjectAccessReviews, which need no CRD installed).
    let sa = format!("system:serviceaccount:{ns}:vpc-cni-agent");
    let can = |verb: &str, group: &str, resource: &str, sub: &str, namespace: &str| {
        let review = format!(
            "{{\"apiVersion\": \"authorization.k8s.io/v1\", \"kind\": \"SubjectAccessReview\", \"spec\": {{\"user\": \"{sa}\", \"groups\": [\"system:serviceaccounts\"], \"resourceAttributes\": {{\"verb\": \"{verb}\", \"group\": \"{group}\", \"resource\": \"{resource}\", \"subresource\": \"{sub}\", \"namespace\": \"{namespace}\"}}}}}}"
        );
        c.try_kubectl(
            &["create", "-o", "jsonpath={.status.allowed}", "-f", "-"],
            Some(&review),
        )
        .unwrap_or_else(|e| panic!("SubjectAccessReview: {e}"))
            == "true"
    };
    assert!(can("watch", "", "pods", "", ""));
    assert!(can("get", "", "nodes", "", ""));
    assert!(can("create", "", "events", "", "default"));
    assert!(can("patch", "events.k8s.io", "events", "", "default"));
    assert!(can("create", "vpc-cni.io", "vpcipclaims", "", "default"));
    assert!(can("patch", "vpc-cni.io", "nodeeniconfigs", "status", ""));
    // A claim's status is no subresource: written with the claim.
    assert!(!can(
        "patch",
        "vpc-cni.io",
        "vpcipclaims",
        "status",
        "default"
    ));
    assert!(can("delete", "vpc-cni.io", "nodeeniconfigs", "", ""));
    assert!(can("get", "apps", "statefulsets", "", "default"));
    assert!(!can("list", "", "nodes", "", ""));
    assert!(!can("get", "", "secrets", "", &ns));
    assert!(!can("delete", "", "pods", "", "default"));
    assert!(!can("create", "coordination.k8s.io", "leases", "", &ns));

    // A pod wired by the DaemonSet's agent keeps its IP when the agent's
    // pod is deleted: the new pod restores the pool from the node's store.
    c.apply(&vpc_cni_tests::k8s::pod("k8s-ds-pod", ""));
    let pod = c.wait_ready("k8s-ds-pod", Duration::from_secs(120));
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(in_vpc_subnet(&ip), "pod IP {ip:?} not from the VPC subnet");
    c.kubectl(&["-n", &ns, "delete", "pod", &agent, "--wait=true"]);
    c.wait_until(
        "the DaemonSet's new agent pod is Ready",
        Duration::from_secs(90),
        || {
            c.try_kubectl(
                &[
                    "-n",
                    &ns,
                    "get",
                    "pods",
                    "-l",
                    "app.kubernetes.io/name=vpc-cni-agent",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[0].ready} {end}",
                ],
                None,
            )
            .is_ok_and(|s| {
                let pods: Vec<&str> = s.split_whitespace().collect();
                pods.len() == 1 && !pods[0].starts_with(&format!("{agent}=")) && pods[0].ends_with("=true")
            })
        },
    );
    let held = c.allocations(1);
    assert!(
        held.iter()
            .any(|(name, _, a)| name == "k8s-ds-pod" && *a == ip),
        "the restarted agent lost the pod's allocation of {ip}: {held:?}"
    );
    let ping = c.try_kubectl(
        &[
            "exec",
            "k8s-ds-pod",
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
    assert!(
        ping.is_ok(),
        "ping the gateway after the agent restarted: {ping:?}"
    );
    c.kubectl(&["delete", "pod", "k8s-ds-pod", "--wait=true"]);
    c.wait_until(
        "the new agent released the pod's IP",
        Duration::from_secs(30),
        || !c.allocations(1).iter().any(|(_, _, a)| *a == ip),
    );
}
