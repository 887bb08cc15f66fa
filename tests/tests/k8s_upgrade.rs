//! Privileged: the previous release of vpc-cni (`scripts/prev-release.sh`:
//! its image and its `deploy/`) installed on a simulated cluster, upgraded
//! to this one by applying this release's `deploy/` (the DaemonSet's
//! rolling update), then rolled back by applying the previous release's
//! again, while a pod on each node pings and streams TCP to a pod on the
//! other node. Nothing is lost and no pod is wired again: the data path
//! does not go through the agent, each agent reads the store the other
//! release wrote, and a plugin of either release is served by an agent of
//! the other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vpc_cni_tests::k8s::{Cluster, pod};
use vpc_cni_tests::{bin, repo_root, require_root};

const WAIT: Duration = Duration::from_secs(120);
const NS: &str = "vpc-cni-system";

/// The previous release's directory (built by the suite before the tests).
fn prev_release() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/prev-release.sh"))
        .arg("--print")
        .output()
        .expect("scripts/prev-release.sh --print");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        dir.join("vpc-cni-image.tar").is_file() && dir.join("deploy").is_dir(),
        "{} is not built: run `bash scripts/prev-release.sh`",
        dir.display()
    );
    dir
}

/// This release's image under the tag `localhost/vpc-cni:next`.
fn next_image(dir: &Path) -> PathBuf {
    let out = dir.join("vpc-cni-next.tar");
    let bin_dir = bin("vpc-cni-agent")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let status = Command::new("bash")
        .arg(repo_root().join("scripts/vpc-cni-image.sh"))
        .arg(&bin_dir)
        .arg(&out)
        .env("VPC_CNI_IMAGE", "localhost/vpc-cni:next")
        .stdout(Stdio::null())
        .status()
        .expect("vpc-cni-image.sh");
    assert!(status.success(), "vpc-cni-image.sh");
    out
}

/// `kubectl apply` of a release's `deploy/` (its ConfigMap aside: the
/// cluster's settings stay), with `image` for vpc-cni's; the seconds until
/// the DaemonSet's rollout is complete.
fn roll_to(c: &Cluster, deploy: &Path, image: &str) -> f64 {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy)
        .expect("deploy")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| !p.ends_with("02-config.yaml"))
        .collect();
    files.sort();
    let started = Instant::now();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("manifest");
        let text = text.replace("image: localhost/vpc-cni:dev", &format!("image: {image}"));
        c.try_kubectl(&["apply", "-f", "-"], Some(&text))
            .unwrap_or_else(|e| panic!("kubectl apply {}: {e}", file.display()));
    }
    c.kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "daemonset/vpc-cni-agent",
        "--timeout=300s",
    ]);
    let secs = started.elapsed().as_secs_f64();
    c.kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/vpc-cni-cluster",
        "--timeout=300s",
    ]);
    // Every agent pod runs `image` and answers.
    let images = c.kubectl(&[
        "-n",
        NS,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=vpc-cni-agent",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert!(
        images.split_whitespace().all(|i| i == image) && !images.is_empty(),
        "{images}"
    );
    secs
}

/// The plugin at `plugin` asked STATUS by the agent on `socket`.
fn status_by(plugin: &Path, socket: &str) -> Result<(), String> {
    use std::io::Write;
    let conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "vpc-cni", "type": "vpc-cni",
        "agentSocket": socket, "timeoutSeconds": 10,
    });
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", "STATUS")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}{}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The host side of the pods' veths in a node: name → ifindex.
fn veths(netns: &str) -> BTreeMap<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(": ");
            let index = parts.next()?.to_string();
            let name = parts.next()?.split('@').next()?.to_string();
            name.starts_with("vpc").then_some((name, index))
        })
        .collect()
}

fn traffic_pod(name: &str, node: &str, command: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: localhost/busybox:1.35
    command: [sh, -c, '{command}']
"#
    )
}

struct Pods {
    ips: BTreeMap<String, String>,
}

impl Pods {
    /// Every pod still running, never restarted, with the address it had.
    fn unchanged(&self, c: &Cluster, when: &str) {
        for (name, ip) in &self.ips {
            let p = c
                .pod(name)
                .unwrap_or_else(|| panic!("{when}: {name} is gone"));
            assert_eq!(p["status"]["phase"], "Running", "{when}: {name}: {p}");
            assert_eq!(p["status"]["podIP"], ip.as_str(), "{when}: {name}");
            assert_eq!(
                p["status"]["containerStatuses"][0]["restartCount"], 0,
                "{when}: {name}"
            );
        }
    }
}

/// The agent on `socket` holds every address of `ips` for a pod.
fn pool_holds(socket: &str, ips: &[&String]) -> Result<(), String> {
    let out = Command::new(bin("vpc-cni-agent"))
        .args(["pool", "--socket", socket, "-o", "json"])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    match ips.iter().find(|ip| !text.contains(&format!("\"{ip}\""))) {
        None => Ok(()),
        Some(ip) => Err(format!("{ip} not in the pool: {text}")),
    }
}

/// Lost pings of a `ping` log: replies missing among the sequence numbers
/// sent, the last few (possibly in flight) aside; and how many were sent.
fn lost_pings(log: &str) -> (u64, u64) {
    let seqs: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("seq=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    let Some(&last) = seqs.iter().max() else {
        return (0, 0);
    };
    let upto = last.saturating_sub(5);
    let got = seqs.iter().filter(|s| **s <= upto).count() as u64;
    ((upto + 1).saturating_sub(got), upto + 1)
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_upgrade_and_rollback_under_traffic_lose_nothing() {
    require_root();
    let prev = prev_release();
    let work = tempfile::tempdir().expect("tempdir");
    let next = next_image(work.path());
    let prev_image = prev.join("vpc-cni-image.tar");
    let prev_deploy = prev.join("deploy");
    let c = Cluster::up_with_env(
        2,
        &[
            "--image",
            &prev_image.to_string_lossy(),
            "--extra-image",
            &next.to_string_lossy(),
        ],
        &[("VPC_CNI_DEPLOY_DIR", prev_deploy.as_path())],
    );
    let nodes = [c.get("NODE1_INSTANCE"), c.get("NODE2_INSTANCE")];
    let sockets = [c.get("NODE1_SOCKET"), c.get("NODE2_SOCKET")];
    let netns = [c.get("NODE1_NETNS"), c.get("NODE2_NETNS")];

    // A server on each node; a client on each node pinging and streaming
    // to the server of the other.
    let mut pods = Pods {
        ips: BTreeMap::new(),
    };
    for (i, node) in nodes.iter().enumerate() {
        let name = format!("srv-{}", i + 1);
        // nc ends at its stdin's end: a pipe that never ends keeps it
        // listening and then streaming.
        c.apply(&traffic_pod(&name, node, "sleep 1000000 | nc -l -p 9000"));
        let ip = c.wait_ready(&name, WAIT)["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        pods.ips.insert(name, ip);
    }
    for (i, node) in nodes.iter().enumerate() {
        let other = &pods.ips[&format!("srv-{}", 2 - i)];
        let name = format!("cli-{}", i + 1);
        let command = format!(
            "ping -i 0.2 {other} & i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done | nc {other} 9000"
        );
        c.apply(&traffic_pod(&name, node, &command));
        let ip = c.wait_ready(&name, WAIT)["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        pods.ips.insert(name, ip);
    }
    std::thread::sleep(Duration::from_secs(3));
    let wired = [veths(netns[0]), veths(netns[1])];
    assert!(wired.iter().all(|w| w.len() >= 2), "{wired:?}");
    // The pods' addresses by node (srv-N and cli-N are on node N).
    let on_node = |n: usize| -> Vec<&String> {
        pods.ips
            .iter()
            .filter(|(name, _)| name.ends_with(&format!("-{n}")))
            .map(|(_, ip)| ip)
            .collect()
    };

    // This release's plugin is served by the previous release's agent.
    status_by(&bin("vpc-cni"), sockets[0]).expect("new plugin, previous agent");

    // Upgrade.
    let up = roll_to(&c, &repo_root().join("deploy"), "localhost/vpc-cni:next");
    pods.unchanged(&c, "after the upgrade");
    assert_eq!(
        [veths(netns[0]), veths(netns[1])],
        wired,
        "no pod wired again"
    );
    for (n, socket) in sockets.iter().enumerate() {
        pool_holds(socket, &on_node(n + 1)).expect("the upgraded agent read the previous store");
    }
    status_by(&prev.join("bin/vpc-cni"), sockets[1]).expect("previous plugin, new agent");
    c.apply(&pod("after-upgrade", ""));
    assert!(c.wait_ready("after-upgrade", WAIT)["status"]["podIP"].is_string());
    c.kubectl(&["delete", "pod", "after-upgrade", "--wait=true"]);

    // Rollback.
    let down = roll_to(&c, &prev_deploy, "localhost/vpc-cni:dev");
    pods.unchanged(&c, "after the rollback");
    assert_eq!(
        [veths(netns[0]), veths(netns[1])],
        wired,
        "no pod wired again"
    );
    for (n, socket) in sockets.iter().enumerate() {
        pool_holds(socket, &on_node(n + 1)).expect("the previous agent read the new store");
    }
    c.apply(&pod("after-rollback", ""));
    assert!(c.wait_ready("after-rollback", WAIT)["status"]["podIP"].is_string());

    // The traffic: every ping answered, each stream never broken (its
    // client, whose `nc` ends with the connection, would have ended) and
    // its numbers in order.
    std::thread::sleep(Duration::from_secs(2));
    pods.unchanged(&c, "at the end");
    for i in 1..=2 {
        let log = c.kubectl(&["logs", &format!("cli-{i}")]);
        let (lost, sent) = lost_pings(&log);
        eprintln!("cli-{i}: {sent} pings, {lost} lost");
        assert!(sent > 50, "cli-{i} pinged: {log}");
        assert_eq!(lost, 0, "cli-{i} lost pings:\n{log}");
        let streamed = c.kubectl(&["logs", &format!("srv-{i}")]);
        let numbers: Vec<u64> = streamed.lines().filter_map(|l| l.parse().ok()).collect();
        assert!(numbers.len() > 50, "srv-{i}: {streamed}");
        assert!(
            numbers.iter().enumerate().all(|(k, n)| *n == k as u64),
            "srv-{i}'s stream has a gap"
        );
    }
    eprintln!(
        "rollout of 2 nodes (maxUnavailable 10%: one at a time): upgrade {up:.1} s, rollback {down:.1} s"
    );
}

#[test]
fn lost_pings_count_the_gaps_not_the_tail() {
    let log = "64 bytes from 10.0.0.1: seq=0 ttl=64\n64 bytes: seq=1\n64 bytes: seq=3\n\
               x: seq=4\nx: seq=5\nx: seq=6\nx: seq=7\nx: seq=8\nx: seq=9\n";
    assert_eq!(lost_pings(log), (1, 5));
    assert_eq!(lost_pings(""), (0, 0));
}
