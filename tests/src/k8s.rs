//! A `vpc-sim up --kubernetes` cluster for the `k8s_` tests: real etcd,
//! kube-apiserver, controller manager, scheduler, and per node containerd
//! and kubelet, with vpc-cni installed from the repository's `deploy/` (a
//! DaemonSet, ready on every node before `up` returns), brought down on
//! drop (even when the test failed).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::wire::{IpState, PoolView, Request, Response};
use serde_json::Value;

use crate::bin;

/// A simulation with Kubernetes on it.
#[derive(Debug)]
pub struct Cluster {
    /// Holds the state directory's parent.
    pub dir: tempfile::TempDir,
    /// `DIR/env` as key/value pairs.
    pub env: std::collections::BTreeMap<String, String>,
}

impl Cluster {
    /// Brings up `nodes` nodes with Kubernetes (the binaries built by
    /// `scripts/k8s-bins.sh` when missing).
    pub fn up(nodes: usize) -> Cluster {
        Cluster::up_with(nodes, &[])
    }

    /// [`up`](Self::up) with more flags of `vpc-sim up`, such as
    /// `--eni-quota`.
    pub fn up_with(nodes: usize, flags: &[&str]) -> Cluster {
        Cluster::up_with_env(nodes, flags, &[])
    }

    /// [`up_with`](Self::up_with) with `vpc-sim`'s environment added to,
    /// such as `VPC_CNI_DEPLOY_DIR` (another release's manifests).
    pub fn up_with_env(nodes: usize, flags: &[&str], env: &[(&str, &std::path::Path)]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("sim");
        let out = Command::new(bin("vpc-sim"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args([
                "up",
                "--kubernetes",
                "--nodes",
                &nodes.to_string(),
                "--state",
            ])
            .arg(&state)
            .args(flags)
            .stdin(Stdio::null())
            .output()
            .expect("run vpc-sim up");
        let cluster = Cluster {
            env: std::fs::read_to_string(state.join("env"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect(),
            dir,
        };
        assert!(
            out.status.success(),
            "vpc-sim up --kubernetes failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    /// A value from `DIR/env`.
    pub fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{key} not in env"))
    }

    /// The state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("sim")
    }

    /// Runs kubectl; panics with its stderr when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args, None)
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    /// Runs kubectl with optional stdin; its stdout or stderr.
    pub fn try_kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        use std::io::Write;
        let mut child = Command::new(self.get("KUBECTL"))
            .env("KUBECONFIG", self.get("KUBECONFIG"))
            .args(["--request-timeout", "20s"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stdin = child.stdin.take().expect("piped");
        if let Some(text) = input {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        drop(stdin);
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `kubectl apply -f -`.
    pub fn apply(&self, manifest: &str) {
        self.try_kubectl(&["apply", "-f", "-"], Some(manifest))
            .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
    }

    /// Any object as JSON, if it exists (`kind` such as `vipc`, `vip`,
    /// `nec`; `name` with `-n NS` before it when namespaced).
    pub fn object(&self, kind: &str, name: &str) -> Option<Value> {
        let text = self
            .try_kubectl(&["get", kind, name, "-o", "json"], None)
            .ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The events (all namespaces) as `REASON MESSAGE` lines.
    pub fn events(&self) -> String {
        self.try_kubectl(
            &[
                "get",
                "events",
                "-A",
                "-o",
                "jsonpath={range .items[*]}{.reason} {.message}{\"\\n\"}{end}",
            ],
            None,
        )
        .unwrap_or_default()
    }

    /// A pod as JSON, if it exists.
    pub fn pod(&self, name: &str) -> Option<Value> {
        let text = self
            .try_kubectl(&["get", "pod", name, "-o", "json"], None)
            .ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Sets `key` in the ConfigMap `vpc-cni-config` and restarts the
    /// agents so they read it, as an operator would.
    pub fn set_config(&self, key: &str, value: &str) {
        let ns = self.get("VPC_CNI_NAMESPACE").to_string();
        let patch = serde_json::json!({ "data": { key: value } }).to_string();
        self.kubectl(&[
            "-n",
            &ns,
            "patch",
            "configmap",
            "vpc-cni-config",
            "--type",
            "merge",
            "-p",
            &patch,
        ]);
        self.kubectl(&["-n", &ns, "rollout", "restart", "daemonset/vpc-cni-agent"]);
        self.rollout_agents("120s");
    }

    /// The IP of pod `name` once it is Ready (within `limit`).
    pub fn pod_ip(&self, name: &str, limit: Duration) -> String {
        let p = self.wait_ready(name, limit);
        field(&p, &["status", "podIP"]).to_string()
    }

    /// Waits for the pod to be Running and Ready; returns it.
    pub fn wait_ready(&self, name: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(p) = self.pod(name)
                && ready(&p)
            {
                return p;
            }
            if Instant::now() > deadline {
                panic!(
                    "pod {name} not Ready in {} s:\n{}\n{}",
                    limit.as_secs(),
                    self.try_kubectl(&["get", "pods", "-o", "wide"], None)
                        .unwrap_or_default(),
                    self.try_kubectl(&["describe", "pod", name], None)
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits until `ok` holds, up to `limit`; panics with `what`.
    pub fn wait_until(&self, what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !ok() {
            if Instant::now() >= deadline {
                panic!("{what}: not within {limit:?}\n{}", self.report());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// What a failed wait shows: the pods, the claim and IP objects, and
    /// the tail of every node's agent log. Never panics.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for args in [
            &["get", "pods,vipc,vip", "-A", "-o", "wide"][..],
            &["get", "vipc", "-A", "-o", "yaml"][..],
        ] {
            out.push_str(&format!("--- kubectl {}\n", args.join(" ")));
            out.push_str(&self.try_kubectl(args, None).unwrap_or_else(|e| e));
            out.push('\n');
        }
        // Nodes are numbered from 1, as `vpc-sim up` writes them.
        for n in (1..).take_while(|n| self.env.contains_key(&format!("NODE{n}_INSTANCE"))) {
            let log = self.agent_log(n);
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!("--- agent log of node {n} (last 80 lines)\n"));
            out.push_str(&lines[lines.len().saturating_sub(80)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Runs kubectl until it succeeds (the API server may be restarting),
    /// up to `limit`; its stdout.
    pub fn kubectl_retry(&self, args: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self.try_kubectl(args, None) {
                Ok(out) => return out,
                Err(e) if Instant::now() > deadline => {
                    panic!("kubectl {}: {e} (for {limit:?})", args.join(" "))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    /// `kubectl rollout status` of the agents' DaemonSet within `timeout`
    /// (a kubectl duration: `120s`).
    pub fn try_rollout_agents(&self, timeout: &str) -> Result<String, String> {
        let ns = self.get("VPC_CNI_NAMESPACE").to_string();
        self.try_kubectl(
            &[
                "-n",
                &ns,
                "rollout",
                "status",
                "daemonset/vpc-cni-agent",
                &format!("--timeout={timeout}"),
            ],
            None,
        )
    }

    /// Waits for the agents' DaemonSet to be rolled out (within `timeout`);
    /// panics with kubectl's error.
    pub fn rollout_agents(&self, timeout: &str) {
        if let Err(e) = self.try_rollout_agents(timeout) {
            panic!("the agents' DaemonSet not rolled out in {timeout}: {e}");
        }
    }

    /// Deletes the pods of the project's namespace matching `selector` as a
    /// crash would (no grace, not waited for); a refusal (the API server
    /// down, a moment of a churn too) is not checked.
    pub fn crash_delete(&self, selector: &str) {
        let ns = self.get("VPC_CNI_NAMESPACE").to_string();
        let _ = self.try_kubectl(
            &[
                "-n",
                &ns,
                "delete",
                "pods",
                "-l",
                selector,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ],
            None,
        );
    }

    /// Waits for the agents' DaemonSet to be rolled out after API server
    /// kills. The DaemonSet controller can stall after such a kill (a pod
    /// it created as the server died counts as expected for 5 minutes),
    /// and kube-scheduler was seen to exit ("Scheduler cache is
    /// corrupted"), which nothing in the simulation restarts: after 90 s
    /// both are started again, as a node's supervisor would, and said so.
    pub fn wait_agents_rolled_out(&self) {
        if self.try_rollout_agents("90s").is_ok() {
            return;
        }
        for component in ["kube-controller-manager", "kube-scheduler"] {
            eprintln!(
                "agents not rolled out in 90 s; {}",
                self.restart(component, Duration::ZERO).trim()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        while let Err(e) = self.try_rollout_agents("60s") {
            assert!(Instant::now() < deadline, "agents not rolled out: {e}");
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// `vpc-sim restart`: SIGKILLs the control-plane process `component`
    /// (`kube-apiserver`, ...), waits `down_for` and starts it again, ready;
    /// what `vpc-sim` said.
    pub fn restart(&self, component: &str, down_for: Duration) -> String {
        self.vpc_sim(&[
            "restart",
            "--down-for",
            &format!("{}ms", down_for.as_millis()),
            component,
        ])
    }

    /// `vpc-sim power-off`: node `n`'s kubelet, containerd and pods killed.
    pub fn power_off(&self, n: usize) -> String {
        self.vpc_sim(&["power-off", &n.to_string()])
    }

    fn vpc_sim(&self, args: &[&str]) -> String {
        let out = Command::new(bin("vpc-sim"))
            .args(&args[..1])
            .arg("--state")
            .arg(self.state())
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .expect("run vpc-sim");
        assert!(
            out.status.success(),
            "vpc-sim {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Node `n`'s agent's pool, if the cluster has such a node and its
    /// agent answers.
    pub fn try_pool(&self, n: usize) -> Option<PoolView> {
        let socket = PathBuf::from(self.env.get(&format!("NODE{n}_SOCKET"))?);
        match proto::client::call(&socket, &Request::Pool, Duration::from_secs(10)) {
            Ok(Ok(Response::Pool(view))) => Some(view),
            _ => None,
        }
    }

    /// Node `n`'s agent's pool.
    pub fn pool(&self, n: usize) -> PoolView {
        let socket = PathBuf::from(self.get(&format!("NODE{n}_SOCKET")));
        match proto::client::call(&socket, &Request::Pool, Duration::from_secs(10)) {
            Ok(Ok(Response::Pool(view))) => view,
            other => panic!("pool: {other:?}"),
        }
    }

    /// Waits until node `n`'s maintenance loop has finished `more` rounds
    /// from now: what "a few ticks later" means, without guessing a sleep.
    pub fn wait_for_rounds(&self, n: usize, more: u64, limit: Duration) {
        let rounds = || {
            self.try_pool(n)
                .and_then(|p| p.maintenance)
                .map(|m| m.rounds)
        };
        let start = rounds().unwrap_or(0);
        self.wait_until(
            &format!("{more} maintenance rounds on node {n}"),
            limit,
            || rounds().is_some_and(|r| r >= start + more),
        );
    }

    /// The allocations of node `n`'s agent: (pod name, container id, IP).
    pub fn allocations(&self, n: usize) -> Vec<(String, String, String)> {
        self.pool(n)
            .enis
            .iter()
            .flat_map(|e| &e.ips)
            .filter_map(|ip| match &ip.state {
                IpState::Allocated { key, pod } => Some((
                    pod.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
                    key.container_id.clone(),
                    ip.ip.to_string(),
                )),
                _ => None,
            })
            .collect()
    }

    /// The name of the DaemonSet's agent pod on node `n`.
    pub fn agent_pod(&self, n: usize) -> String {
        self.try_agent_pod(n)
            .unwrap_or_else(|e| panic!("node {n}'s agent pod: {e}"))
    }

    /// Node `n`'s agent pod, or why there is none.
    pub fn try_agent_pod(&self, n: usize) -> Result<String, String> {
        let node = self.get(&format!("NODE{n}_INSTANCE")).to_string();
        self.try_kubectl(
            &[
                "-n",
                self.get("VPC_CNI_NAMESPACE"),
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=vpc-cni-agent",
                "--field-selector",
                &format!("spec.nodeName={node}"),
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ],
            None,
        )
        .and_then(|name| {
            if name.trim().is_empty() {
                Err("none".into())
            } else {
                Ok(name.trim().to_string())
            }
        })
    }

    /// Node `n`'s agent log (`kubectl logs` of its DaemonSet pod), or why
    /// there is none: for reports, so it never panics (the pod may be
    /// between a crash-delete and its replacement; it is waited for 30 s).
    pub fn agent_log(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let pod = loop {
            match self.try_agent_pod(n) {
                Ok(pod) => break pod,
                Err(e) if Instant::now() > deadline => {
                    return format!("(no agent pod on node {n}: {e})");
                }
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        };
        self.try_kubectl(
            &[
                "-n",
                self.get("VPC_CNI_NAMESPACE"),
                "logs",
                &pod,
                "-c",
                "agent",
            ],
            None,
        )
        .unwrap_or_else(|e| format!("(kubectl logs {pod}: {e})"))
    }
}

/// Whether a pod is Running with its Ready condition true.
pub fn ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The string at `path` in `v` ("" when absent).
pub fn field<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

/// A StatefulSet of `replicas` busybox pods (1 s grace) whose pod
/// template carries `annotations` (YAML flow mapping entries).
pub fn sts(name: &str, replicas: u32, annotations: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  serviceName: {name}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations: {{{annotations}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: localhost/busybox:1.35
        imagePullPolicy: Never
        command: [sh, -c, 'trap "exit 0" TERM; while true; do sleep 1; done']
"#
    )
}

/// For a churn: one static StatefulSet of two pods per node (`PREFIX1`
/// on node 1, ...), pinned there, its pods started all at once, and
/// waited for (each within `limit`). The sets with their nodes, and the
/// pods.
pub fn pinned_sets(
    c: &Cluster,
    prefix: &str,
    nodes: usize,
    limit: Duration,
) -> (Vec<(String, String)>, Vec<String>) {
    let sets: Vec<(String, String)> = (1..=nodes)
        .map(|n| {
            (
                format!("{prefix}{n}"),
                c.get(&format!("NODE{n}_INSTANCE")).to_string(),
            )
        })
        .collect();
    for (name, node) in &sets {
        let parallel = sts(name, 2, STATIC).replace(
            &format!("  serviceName: {name}\n"),
            &format!("  serviceName: {name}\n  podManagementPolicy: Parallel\n"),
        );
        c.apply(&pin(&parallel, node));
    }
    let pods: Vec<String> = sets
        .iter()
        .flat_map(|(name, _)| (0..2).map(move |i| format!("{name}-{i}")))
        .collect();
    for p in &pods {
        c.wait_ready(p, limit);
    }
    (sets, pods)
}

/// `manifest`, a StatefulSet of [`sts`] or a [`pod`], with its pods placed
/// on `node` (bypassing the scheduler).
pub fn pin(manifest: &str, node: &str) -> String {
    manifest
        .replace(
            "    spec:\n      terminationGracePeriodSeconds",
            &format!("    spec:\n      nodeName: {node}\n      terminationGracePeriodSeconds"),
        )
        .replace(
            "\nspec:\n  terminationGracePeriodSeconds",
            &format!("\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds"),
        )
}

/// The annotation that makes a pod's IP static.
pub const STATIC: &str = "tke.cloud.tencent.com/vpc-ip-claim-delete-policy: Never";

/// Every object of `kind` (all namespaces), as JSON.
pub fn items(c: &Cluster, kind: &str) -> Vec<Value> {
    c.try_kubectl(&["get", kind, "-A", "-o", "json"], None)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
}

/// A bare busybox pod (1 s grace) with `annotations`.
pub fn pod(name: &str, annotations: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, annotations: {{{annotations}}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: localhost/busybox:1.35
    imagePullPolicy: Never
    command: [sh, -c, 'trap "exit 0" TERM; while true; do sleep 1; done']
"#
    )
}

/// What the cluster's objects say that the cloud or the pods contradict;
/// empty when they agree.
pub fn disagreements(c: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    let world: Value = std::fs::read_to_string(c.state().join("vpc.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let enis = &world["vpc"]["enis"];
    let vips = items(c, "vip");
    let claims = items(c, "vipc");
    let pods = items(c, "pods");
    for vip in &vips {
        let ip = field(vip, &["metadata", "name"]);
        let eni = &enis[field(vip, &["spec", "eniId"])];
        let on_eni = eni["secondary_ips"]
            .as_array()
            .is_some_and(|ips| ips.iter().any(|i| i == ip));
        if !on_eni || eni["attached_to"].as_str() != Some(field(vip, &["spec", "node"])) {
            out.push(format!(
                "VpcIP {ip} is not on {} of its node in the cloud",
                field(vip, &["spec", "eniId"])
            ));
        }
        let holders = enis
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, e)| {
                e["secondary_ips"]
                    .as_array()
                    .is_some_and(|ips| ips.iter().any(|i| i == ip))
            })
            .count();
        if holders != 1 {
            out.push(format!("{ip} is on {holders} ENIs"));
        }
    }
    for claim in &claims {
        let ip = field(claim, &["status", "ip"]);
        if !ip.is_empty() && !vips.iter().any(|v| field(v, &["metadata", "name"]) == ip) {
            out.push(format!(
                "claim {} points at {ip}, which has no VpcIP",
                field(claim, &["metadata", "name"])
            ));
        }
    }
    // Every address in a node's pool is on that ENI of that node in the
    // cloud, and no address is in two nodes' pools.
    let mut pooled: std::collections::BTreeMap<String, String> = Default::default();
    for n in 1.. {
        let Some(instance) = c.env.get(&format!("NODE{n}_INSTANCE")) else {
            break;
        };
        let Some(pool) = c.try_pool(n) else {
            out.push(format!("node {instance}'s agent does not answer"));
            continue;
        };
        for eni in &pool.enis {
            let cloud = &enis[eni.id.as_str()];
            for ip in &eni.ips {
                if matches!(ip.state, IpState::Attaching { .. }) {
                    continue;
                }
                let addr = ip.ip.to_string();
                let there = cloud["secondary_ips"]
                    .as_array()
                    .is_some_and(|ips| ips.iter().any(|i| i == addr.as_str()));
                if !there || cloud["attached_to"].as_str() != Some(instance.as_str()) {
                    out.push(format!(
                        "{addr} is in node {instance}'s pool on {} but not there in the cloud",
                        eni.id
                    ));
                }
                if let Some(other) = pooled.insert(addr.clone(), instance.clone()) {
                    out.push(format!("{addr} is in the pools of {other} and {instance}"));
                }
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for pod in &pods {
        let ip = field(pod, &["status", "podIP"]);
        if ip.is_empty()
            || field(pod, &["spec", "hostNetwork"]) == "true"
            || pod["spec"]["hostNetwork"] == true
        {
            continue;
        }
        if !seen.insert(ip.to_string()) {
            out.push(format!("{ip} is held by two pods"));
        }
        let name = field(pod, &["metadata", "name"]);
        if pod["status"]["phase"] == "Running"
            && !claims.iter().any(|cl| {
                field(cl, &["metadata", "name"]) == name && field(cl, &["status", "ip"]) == ip
            })
        {
            out.push(format!(
                "running pod {name} ({ip}) has no claim with its IP"
            ));
        }
    }
    out
}

/// Sends `method path` with `body` to the simulation's emulator; its
/// status line and body.
pub fn emulator_request(c: &Cluster, method: &str, path: &str, body: &str) -> (String, String) {
    use std::io::{Read, Write};
    let address = std::fs::read_to_string(c.state().join("emulator.address")).expect("address");
    let mut stream = std::net::TcpStream::connect(address.trim()).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: emulator\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// POSTs `body` to the simulation's emulator at `path`; panics unless it
/// answers 200; the answer's body.
pub fn emulator_post(c: &Cluster, path: &str, body: &str) -> String {
    let (status, answer) = emulator_request(c, "POST", path, body);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}\n{answer}");
    answer
}

/// The ENIs of the cloud (`vpc.json`), by id.
pub fn cloud_enis(c: &Cluster) -> serde_json::Map<String, Value> {
    std::fs::read_to_string(c.state().join("vpc.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|w| w["vpc"]["enis"].as_object().cloned())
        .unwrap_or_default()
}

/// The ENIs whose secondary addresses include `ip`.
pub fn enis_holding(c: &Cluster, ip: &str) -> Vec<String> {
    enis_listing(c, "secondary_ips", ip)
}

/// The ENIs whose IPv6 addresses include `ip`.
pub fn enis_holding_v6(c: &Cluster, ip: &str) -> Vec<String> {
    enis_listing(c, "ipv6_addresses", ip)
}

/// The ENIs whose list `field` (in the VPC's state) includes `ip`.
fn enis_listing(c: &Cluster, field: &str, ip: &str) -> Vec<String> {
    cloud_enis(c)
        .into_iter()
        .filter(|(_, e)| {
            e[field]
                .as_array()
                .is_some_and(|ips| ips.iter().any(|i| i == ip))
        })
        .map(|(id, _)| id)
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(bin("vpc-sim"))
            .arg("down")
            .arg("--state")
            .arg(self.state())
            .output();
    }
}

/// Reproducible randomness for the churn: xorshift64 from a seed printed
/// at the start (`VPC_CNI_CHURN_SEED` replays one).
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `VPC_CNI_CHURN_SEED`, else the clock; prints the seed.
    pub fn seeded() -> Rng {
        let seed = std::env::var("VPC_CNI_CHURN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("churn seed {seed} (VPC_CNI_CHURN_SEED={seed} replays it)");
        Rng(seed | 1)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
