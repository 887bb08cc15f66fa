//! Privileged: vpc-cni installed with its Helm chart on a real cluster
//! (`vpc-sim up --kubernetes --install helm`), upgraded with a changed
//! value while pods run, then removed with `deploy/uninstall/uninstall.sh`
//! and what is left counted on the nodes, in the cluster and in the cloud.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use vpc_cni_tests::k8s::{Cluster, STATIC, cloud_enis, pod, sts};
use vpc_cni_tests::{repo_root, require_root};
use vpc_sim::k8s::node_private_dir;

const WAIT: Duration = Duration::from_secs(120);

fn helm_bin(c: &Cluster) -> PathBuf {
    PathBuf::from(c.get("KUBECTL")).with_file_name("helm")
}

/// The cluster's kubeconfig, and helm's own state in the simulation's
/// directory.
fn with_helm_env<'a>(cmd: &'a mut Command, c: &Cluster) -> &'a mut Command {
    cmd.env("KUBECONFIG", c.get("KUBECONFIG"))
        .env("HELM_CACHE_HOME", c.state().join("helm-cache"))
        .env("HELM_CONFIG_HOME", c.state().join("helm-config"))
        .env("HELM_DATA_HOME", c.state().join("helm-data"))
}

fn helm(c: &Cluster, args: &[&str]) -> String {
    let out = with_helm_env(&mut Command::new(helm_bin(c)), c)
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pod_ip(c: &Cluster, name: &str) -> String {
    c.wait_ready(name, WAIT)["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The node's policy rules and nftables tables (in its namespace, a
/// path).
fn node_network(netns: &str) -> (String, String) {
    let run = |args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(args)
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "{args:?} in {netns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    (
        run(&["ip", "rule", "show"]),
        run(&["nft", "list", "tables"]),
    )
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_helm_install_upgrade_and_uninstall_leave_nothing_behind() {
    require_root();
    let c = Cluster::up_with(2, &["--install", "helm"]);
    let release = helm(&c, &["list", "-n", "vpc-cni-system", "-o", "json"]);
    assert!(release.contains("\"name\":\"vpc-cni\""), "{release}");
    assert!(release.contains("\"status\":\"deployed\""), "{release}");

    c.apply(&sts("web", 2, STATIC));
    c.apply(&pod("plain", ""));
    let web0 = pod_ip(&c, "web-0");
    let web1 = pod_ip(&c, "web-1");
    let plain = pod_ip(&c, "plain");

    // An upgrade with a changed value rolls the agents (the pods carry the
    // ConfigMap's checksum); the pods keep their addresses and new pods
    // get theirs.
    let generation = || {
        c.kubectl(&[
            "-n",
            "vpc-cni-system",
            "get",
            "daemonset",
            "vpc-cni-agent",
            "-o",
            "jsonpath={.metadata.generation}",
        ])
    };
    let before = generation();
    helm(
        &c,
        &[
            "upgrade",
            "vpc-cni",
            &repo_root().join("deploy/helm/vpc-cni").to_string_lossy(),
            "-n",
            "vpc-cni-system",
            "--reuse-values",
            "--set-string",
            "config.warm-ip-target=5",
        ],
    );
    let after = generation();
    assert_ne!(before, after, "the upgrade changed the agents' pods");
    c.kubectl(&[
        "-n",
        "vpc-cni-system",
        "rollout",
        "status",
        "daemonset/vpc-cni-agent",
        "--timeout=180s",
    ]);
    let config = c.kubectl(&[
        "-n",
        "vpc-cni-system",
        "get",
        "configmap",
        "vpc-cni-config",
        "-o",
        "jsonpath={.data.warm-ip-target}",
    ]);
    assert_eq!(config, "5");
    c.apply(&pod("after", ""));
    let after_ip = pod_ip(&c, "after");
    assert!(!after_ip.is_empty());
    for (name, ip) in [("web-0", &web0), ("web-1", &web1), ("plain", &plain)] {
        assert_eq!(&pod_ip(&c, name), ip, "{name} kept its address");
    }

    // The uninstall refuses while pods are on the network.
    let script = repo_root().join("deploy/uninstall/uninstall.sh");
    let uninstall_with = |extra: &[&str]| {
        with_helm_env(&mut Command::new("bash"), &c)
            .arg(&script)
            .args(["--timeout", "180"])
            .args(extra)
            .env("KUBECTL", c.get("KUBECTL"))
            .env("HELM", helm_bin(&c))
            .output()
            .expect("run uninstall.sh")
    };
    let uninstall = || uninstall_with(&[]);
    let refused = uninstall();
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("default/web-0") && why.contains("default/plain"),
        "{why}"
    );

    let clear_pod_network = || {
        c.kubectl(&["delete", "statefulset", "web", "--wait=false"]);
        c.kubectl(&[
            "delete",
            "pod",
            "plain",
            "after",
            "--wait=false",
            "--ignore-not-found",
        ]);
        c.kubectl(&[
            "-n",
            "kube-system",
            "scale",
            "deployment",
            "coredns",
            "--replicas=0",
        ]);
        c.wait_until("no pod on the pod network", WAIT, || {
            c.try_kubectl(
                &[
                    "get",
                    "pods",
                    "-A",
                    "-o",
                    "go-template={{range .items}}{{if not .spec.hostNetwork}}{{.metadata.name}} {{end}}{{end}}",
                ],
                None,
            )
            .is_ok_and(|s| s.trim().is_empty())
        });
    };
    clear_pod_network();

    // Removed keeping the static IPs: the claims, the CRDs and the ENIs
    // with their addresses stay; installed again, the static pods get their
    // addresses back (the agents' stores were emptied: they rebuild the
    // claims from the cluster's objects and the cloud).
    let kept = uninstall_with(&["--keep-ips"]);
    assert!(
        kept.status.success(),
        "uninstall.sh --keep-ips: {}{}",
        String::from_utf8_lossy(&kept.stdout),
        String::from_utf8_lossy(&kept.stderr)
    );
    assert!(
        c.try_kubectl(
            &[
                "-n",
                "vpc-cni-system",
                "get",
                "daemonset,deployment",
                "-o",
                "name"
            ],
            None
        )
        .is_ok_and(|s| s.trim().is_empty()),
        "the components are gone"
    );
    for (name, ip) in [("web-0", &web0), ("web-1", &web1)] {
        let claim = c.object("vipc", name).expect("the claim is kept");
        assert_eq!(claim["status"]["ip"], ip.as_str(), "{claim}");
        assert!(
            !vpc_cni_tests::k8s::enis_holding(&c, ip).is_empty(),
            "{ip} is still held in the cloud"
        );
    }
    assert!(
        !node_private_dir(&c.state(), 1, "/opt/cni/bin")
            .join("vpc-cni")
            .exists()
    );
    let values = vpc_sim::k8s::cluster_dir(&c.state()).join("helm/values.yaml");
    helm(
        &c,
        &[
            "install",
            "vpc-cni",
            &repo_root().join("deploy/helm/vpc-cni").to_string_lossy(),
            "-n",
            "vpc-cni-system",
            "--values",
            &values.to_string_lossy(),
        ],
    );
    c.kubectl(&[
        "-n",
        "kube-system",
        "scale",
        "deployment",
        "coredns",
        "--replicas=1",
    ]);
    c.apply(&sts("web", 2, STATIC));
    assert_eq!(pod_ip(&c, "web-0"), web0, "web-0's static IP came back");
    assert_eq!(pod_ip(&c, "web-1"), web1, "web-1's static IP came back");
    clear_pod_network();

    // What the uninstall is to remove is there (so its absence later means
    // something): the plugin, the conflist, the store, the node's table and
    // rules, a secondary ENI per node.
    let state = c.state();
    for n in 1..=2 {
        let private = |p: &str| node_private_dir(&state, n, p);
        assert!(private("/opt/cni/bin").join("vpc-cni").is_file(), "node{n}");
        assert!(
            private("/etc/cni/net.d")
                .join("10-vpc-cni.conflist")
                .is_file(),
            "node{n}"
        );
        assert!(
            private("/var/lib/vpc-cni")
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some())
        );
        let (rules, tables) = node_network(c.get(&format!("NODE{n}_NETNS")));
        assert!(tables.contains("vpc-cni"), "node{n}: {tables}");
        assert!(
            rules.lines().any(|l| l.starts_with("1000:")),
            "node{n}: {rules}"
        );
    }
    assert!(
        cloud_enis(&c).len() > 2,
        "secondary ENIs before the uninstall"
    );

    let out = uninstall();
    assert!(
        out.status.success(),
        "uninstall.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The cluster: no CRD, namespace, role, policy or webhook of vpc-cni.
    let left = c.kubectl(&[
        "get",
        "crd,namespace,clusterrole,clusterrolebinding,validatingadmissionpolicy,mutatingwebhookconfiguration",
        "-o",
        "name",
    ]);
    assert!(
        !left.contains("vpc-cni"),
        "left in the cluster:\n{}",
        left.lines()
            .filter(|l| l.contains("vpc-cni"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The nodes: no plugin, conflist, store, table or rule of vpc-cni.
    for n in 1..=2 {
        let private = |p: &str| node_private_dir(&state, n, p);
        assert!(
            !private("/opt/cni/bin").join("vpc-cni").exists(),
            "node{n}: plugin"
        );
        assert!(
            !private("/etc/cni/net.d")
                .join("10-vpc-cni.conflist")
                .exists(),
            "node{n}: conflist"
        );
        for dir in ["/var/lib/vpc-cni", "/run/vpc-cni"] {
            let entries: Vec<_> = std::fs::read_dir(private(dir))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(entries.is_empty(), "node{n}: {dir} holds {entries:?}");
        }
        let (rules, tables) = node_network(c.get(&format!("NODE{n}_NETNS")));
        assert!(!tables.contains("vpc-cni"), "node{n}: {tables}");
        for priority in ["512:", "1000:", "1024:", "1025:", "1026:", "1536:"] {
            assert!(
                !rules.lines().any(|l| l.starts_with(priority)),
                "node{n}: rule {priority}\n{rules}"
            );
        }
    }
    // The cloud: the instances' primary ENIs alone, with their primary
    // addresses alone.
    let enis = cloud_enis(&c);
    let extra: Vec<(&String, &Value)> = enis
        .iter()
        .filter(|(_, e)| {
            e["primary"] != true
                || e["secondary_ips"]
                    .as_array()
                    .is_some_and(|ips| !ips.is_empty())
        })
        .collect();
    assert!(extra.is_empty(), "left in the cloud: {extra:?}");
    assert_eq!(enis.len(), 2, "{enis:?}");
}
