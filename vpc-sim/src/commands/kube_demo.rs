//! `vpc-sim demo --kubernetes`: two nodes with a real control plane,
//! containerd and kubelets, vpc-cni installed from `deploy/` (its
//! DaemonSet ready on both nodes); a Deployment and a StatefulSet with an HTTP
//! readiness probe applied with kubectl; every pod Running and Ready with
//! a VPC address; pings between pods through `kubectl exec`; HTTP across
//! nodes; then everything deleted and the nodes checked for leftovers.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use vpc_sim::k8s::Kubectl;
use vpc_sim::world::{NodeLimits, SUBNET_CIDR};

use super::demo::{Checks, DemoArgs, eni_of_pods, no_allocations, no_leftovers, render, say};
use super::kube::{AGENT_LABEL, DAEMONSET, NAMESPACE};
use super::up::{UpArgs, up};

/// The demo's workloads.
pub const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: demo-sleep, labels: {app: demo-sleep}}
spec:
  replicas: 4
  selector: {matchLabels: {app: demo-sleep}}
  template:
    metadata: {labels: {app: demo-sleep}}
    spec:
      terminationGracePeriodSeconds: 2
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: demo-sleep}}}
      containers:
      - name: main
        image: localhost/busybox:1.35
        imagePullPolicy: Never
        command: [sh, -c, 'echo "demo pod $(hostname) up"; trap "exit 0" TERM; while true; do sleep 1; done']
---
apiVersion: v1
kind: Service
metadata: {name: demo-web}
spec: {clusterIP: None, selector: {app: demo-web}, ports: [{port: 8080}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: demo-web}
spec:
  serviceName: demo-web
  replicas: 2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: demo-web}}
  template:
    metadata:
      labels: {app: demo-web}
      annotations: {tke.cloud.tencent.com/vpc-ip-claim-delete-policy: Never}
    spec:
      terminationGracePeriodSeconds: 2
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: demo-web}}}
      containers:
      - name: web
        image: localhost/busybox:1.35
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -v -p 8080 -h /www']
        ports: [{containerPort: 8080, hostPort: 18080}]
        readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: demo-web-svc}
spec: {selector: {app: demo-web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: demo-web-np}
spec: {type: NodePort, selector: {app: demo-web}, ports: [{port: 8080, nodePort: 30080}]}
"#;

/// The hostPort of the StatefulSet's pods.
const HOST_PORT: u16 = 18080;
/// The NodePort of `demo-web-np`.
const NODE_PORT: u16 = 30080;

/// A pod as the API reports it.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// Name.
    pub name: String,
    /// Node name.
    pub node: String,
    /// Pod IP.
    pub ip: String,
    /// Phase is Running and the Ready condition holds.
    pub ready: bool,
}

/// The pods of the default namespace.
pub fn pods(kubectl: &Kubectl) -> Result<Vec<PodInfo>, String> {
    let v = kubectl.json(&["get", "pods"])?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| PodInfo {
            name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
            node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
            ip: p["status"]["podIP"].as_str().unwrap_or_default().into(),
            ready: p["status"]["phase"] == "Running"
                && p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        })
        .collect())
}

fn in_subnet(ip: &str) -> Result<(), String> {
    let (net, prefix) = SUBNET_CIDR.split_once('/').expect("cidr");
    let net: Ipv4Addr = net.parse().expect("cidr");
    let prefix: u32 = prefix.parse().expect("cidr");
    let addr: Ipv4Addr = ip.parse().map_err(|_| format!("no pod IP ({ip:?})"))?;
    let mask = u32::MAX << (32 - prefix);
    if u32::from(addr) & mask == u32::from(net) & mask {
        Ok(())
    } else {
        Err(format!("{ip} is outside {SUBNET_CIDR}"))
    }
}

/// `check` until it passes or `limit` is over (the kubelet may tear a
/// sandbox down just after the API forgot its pod).
fn eventually(limit: Duration, check: impl Fn() -> Result<(), String>) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// `kubectl exec POD -- ping` in at most three tries.
fn exec_ping(kubectl: &Kubectl, pod: &str, ip: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..3 {
        match kubectl.run(&["exec", pod, "--", "ping", "-c", "1", "-W", "2", ip]) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Runs the Kubernetes demo.
pub fn run(args: &DemoArgs) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("vpc-sim-k8s-demo-{}", std::process::id()));
    let up_args = UpArgs {
        nodes: 2,
        zones: 1,
        state: dir.clone(),
        max_enis: NodeLimits::default().max_enis,
        ips_per_eni: 10,
        eni_quota: vpc_sim::model::DEFAULT_ENI_QUOTA,
        agent_bin: args.agent_bin.clone(),
        agent_flags: Vec::new(),
        kubernetes: true,
        k8s_bin_dir: args.k8s_bin_dir.clone(),
        image: None,
        extra_images: Vec::new(),
        api_limits: "documented".into(),
        source_check: super::source_check::Switch::On,
        proxy_mode: Default::default(),
        e2e_images: false,
        eni_mtu: 1500,
        ip_family: super::up::IpFamily::Ipv4,
        install: args.install,
    };
    say(&format!(
        "==> vpc-sim up --kubernetes: 2 nodes ({})",
        dir.display()
    ));
    let started = Instant::now();
    let sim = up(&up_args)?;
    say(&format!(
        "==> up in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let (bin_dir, _) = super::kube::binaries(args.k8s_bin_dir.as_deref())?;
    let kubectl = Kubectl::new(&bin_dir, &dir);
    let outcome = exercise(&dir, &kubectl, &sim.nodes);
    say("==> vpc-sim down");
    let down = super::down::down(&dir);
    let checks = outcome?;
    down?;
    let failed = checks.failed();
    if failed.is_empty() {
        say(&format!("PASS: all {} checks passed", checks.results.len()));
        Ok(())
    } else {
        Err(format!(
            "{} of {} checks failed: {}",
            failed.len(),
            checks.results.len(),
            failed.join("; ")
        ))
    }
}

fn exercise(
    dir: &std::path::Path,
    kubectl: &Kubectl,
    nodes: &[super::up::Node],
) -> Result<Checks, String> {
    let mut checks = Checks {
        results: Vec::new(),
    };
    say("==> kubectl get nodes");
    say(kubectl
        .run(&["get", "nodes", "-L", "topology.kubernetes.io/zone"])?
        .trim_end());
    say(&format!(
        "==> kubectl -n {NAMESPACE} get daemonset,pods (vpc-cni from deploy/)"
    ));
    say(kubectl
        .run(&["-n", NAMESPACE, "get", "daemonset,pods", "-o", "wide"])?
        .trim_end());
    let agents = kubectl
        .json(&["-n", NAMESPACE, "get", "pods", "-l", AGENT_LABEL])
        .map(|v| {
            v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| {
                    p["status"]["containerStatuses"][0]["ready"] == true
                        && p["spec"]["containers"][0]["image"] == "localhost/vpc-cni:dev"
                })
                .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        });
    checks.record(
        format!("a ready {DAEMONSET} pod on every node"),
        agents.and_then(|on| {
            let missing: Vec<&str> = nodes
                .iter()
                .map(|n| n.instance.as_str())
                .filter(|n| !on.iter().any(|o| o == n))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("none ready on {}", missing.join(", ")))
            }
        }),
    );
    say(
        "==> kubectl apply: Deployment demo-sleep (4), StatefulSet demo-web (2, HTTP readiness probe)",
    );
    kubectl.run_with_input(&["apply", "-f", "-"], Some(MANIFEST))?;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(180);
    let mut current = Vec::new();
    let all_ready = loop {
        current = pods(kubectl).unwrap_or(current);
        if current.len() == 6 && current.iter().all(|p| p.ready) {
            break Ok(());
        }
        if Instant::now() > deadline {
            let describe = kubectl
                .run(&["get", "pods", "-o", "wide"])
                .unwrap_or_default();
            break Err(format!("not all 6 pods Ready in 180 s:\n{describe}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    checks.record("6 pods Running and Ready".into(), all_ready);
    say(&format!("    after {:.1} s", t.elapsed().as_secs_f64()));
    let enis = eni_of_pods(nodes).unwrap_or_default();
    let mut table = vec![["POD".to_string(), "NODE".into(), "IP".into(), "ENI".into()]];
    for p in &current {
        table.push([
            p.name.clone(),
            p.node.clone(),
            p.ip.clone(),
            enis.get(&p.name).cloned().unwrap_or_else(|| "?".into()),
        ]);
    }
    say(&render(&table));
    for p in &current {
        checks.record(format!("{} has a VPC IP", p.name), in_subnet(&p.ip));
    }
    for p in &current {
        checks.record(
            format!("{} wired by its node's agent", p.name),
            if enis.contains_key(&p.name) {
                Ok(())
            } else {
                Err("no allocation for it in any agent's pool".into())
            },
        );
    }

    say("==> kubectl get vipc,vip (the agents' objects)");
    let claims = eventually(Duration::from_secs(30), || {
        let out = kubectl.run(&["get", "vipc", "-o", "wide"])?;
        match current.iter().find(|p| !out.contains(&p.ip)) {
            None => Ok(out),
            Some(p) => Err(format!(
                "no VpcIPClaim with {} ({}) yet:\n{out}",
                p.ip, p.name
            )),
        }
        .map(|_| ())
    });
    if let Ok(out) = kubectl.run(&["get", "vipc"]) {
        say(&out);
    }
    checks.record("a VpcIPClaim per pod with its IP".into(), claims);
    checks.record(
        "a VpcIP per pod's address".into(),
        eventually(Duration::from_secs(30), || {
            let out = kubectl.run(&["get", "vip"])?;
            match current.iter().find(|p| !out.contains(&p.ip)) {
                None => Ok(()),
                Some(p) => Err(format!("no VpcIP {} yet:\n{out}", p.ip)),
            }
        }),
    );

    let sleepers: Vec<&PodInfo> = current
        .iter()
        .filter(|p| p.name.starts_with("demo-sleep"))
        .collect();
    if let Some(p) = sleepers.first() {
        checks.record(
            format!("kubectl logs {}", p.name),
            kubectl.run(&["logs", &p.name]).and_then(|l| {
                if l.contains("up") {
                    Ok(())
                } else {
                    Err(format!("unexpected log {l:?}"))
                }
            }),
        );
    }
    say("==> ping through kubectl exec");
    let node_names: Vec<String> = nodes.iter().map(|n| n.instance.clone()).collect();
    let on = |node: &str| -> Vec<&PodInfo> {
        current
            .iter()
            .filter(|p| p.node == node && !p.ip.is_empty())
            .collect()
    };
    for node in &node_names {
        let local = on(node);
        if let [a, b, ..] = local.as_slice() {
            checks.record(
                format!("{} -> {} (same node)", a.name, b.name),
                exec_ping(kubectl, &a.name, &b.ip),
            );
        }
    }
    if let [n1, n2, ..] = node_names.as_slice() {
        for (a, b) in on(n1).iter().zip(on(n2).iter()) {
            checks.record(
                format!("{} -> {} (across nodes)", a.name, b.name),
                exec_ping(kubectl, &a.name, &b.ip),
            );
            checks.record(
                format!("{} -> {} (across nodes)", b.name, a.name),
                exec_ping(kubectl, &b.name, &a.ip),
            );
        }
    }
    say("==> HTTP to the StatefulSet's pods (the kubelet's readiness probe passed)");
    let webs: Vec<&PodInfo> = current
        .iter()
        .filter(|p| p.name.starts_with("demo-web"))
        .collect();
    for w in &webs {
        if let Some(client) = sleepers.iter().find(|s| s.node != w.node) {
            let url = format!("http://{}:8080/index.html", w.ip);
            checks.record(
                format!("{} -> {url} (across nodes)", client.name),
                kubectl
                    .run(&[
                        "exec",
                        &client.name,
                        "--",
                        // busybox 1.35's static wget crashes with -T.
                        "timeout",
                        "5",
                        "wget",
                        "-q",
                        "-O",
                        "-",
                        &url,
                    ])
                    .and_then(|body| {
                        if body.trim() == w.name {
                            Ok(())
                        } else {
                            Err(format!("body {body:?}"))
                        }
                    }),
            );
        }
    }

    services(kubectl, nodes, &current, &sleepers, &webs, &mut checks);
    checks.record(
        "the VPC's source/destination check dropped nothing".into(),
        super::demo::nothing_spoofed(dir),
    );

    if let Some(w) = webs.first() {
        say(&format!(
            "==> static IP: kubectl delete pod {} (the StatefulSet makes it again)",
            w.name
        ));
        let kept = kubectl
            .run(&["delete", "pod", &w.name, "--wait=true"])
            .and_then(|_| {
                eventually(Duration::from_secs(120), || {
                    let pod = pods(kubectl)?
                        .into_iter()
                        .find(|p| p.name == w.name && p.ready)
                        .ok_or_else(|| format!("{} not Ready again", w.name))?;
                    if pod.ip == w.ip {
                        Ok(())
                    } else {
                        Err(format!(
                            "{} came back with {}, not {}",
                            w.name, pod.ip, w.ip
                        ))
                    }
                })
            });
        checks.record(format!("{} back with its IP {}", w.name, w.ip), kept);
    }

    say("==> kubectl delete everything, then look for leftovers");
    let deleted = kubectl
        .run_with_input(&["delete", "--wait=true", "-f", "-"], Some(MANIFEST))
        .map(drop);
    checks.record("kubectl delete".into(), deleted);
    let deadline = Instant::now() + Duration::from_secs(120);
    let gone = loop {
        match pods(kubectl) {
            Ok(p) if p.is_empty() => break Ok(()),
            _ if Instant::now() > deadline => {
                break Err(format!(
                    "pods left after 120 s: {}",
                    kubectl.run(&["get", "pods"]).unwrap_or_default()
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    checks.record("every pod gone".into(), gone);
    // The cluster's own pods (CoreDNS) keep their addresses.
    let system = system_pod_ips(kubectl);
    for (n, node) in nodes.iter().enumerate() {
        checks.record(
            format!("node{} has no pod veths, routes or rules left", n + 1),
            no_leftovers(&node.netns, &system),
        );
        checks.record(
            format!("node{} has no allocation left", n + 1),
            eventually(Duration::from_secs(20), || no_allocations(node, &system)),
        );
    }
    Ok(checks)
}

/// `wget -q -O - URL` through `kubectl exec POD`, the body.
fn exec_wget(kubectl: &Kubectl, pod: &str, url: &str) -> Result<String, String> {
    // busybox 1.35's static wget crashes with -T.
    kubectl.run(&[
        "exec", pod, "--", "timeout", "5", "wget", "-q", "-O", "-", url,
    ])
}

/// `wget -q -O - URL` from a node's own network (the host's busybox).
fn node_wget(netns: &str, url: &str) -> Result<String, String> {
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", netns, "timeout", "5", "busybox", "wget", "-q", "-O", "-", url,
        ])
        .output()
        .map_err(|e| format!("ip netns exec: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "wget {url} in {netns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A node's address in the VPC (its primary ENI's).
fn vpc_address(netns: &str) -> Result<String, String> {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .ok_or_else(|| format!("no address on eth0 of {netns}"))
}

/// Whether `body` is the name of one of `webs`.
fn served_by(body: &str, webs: &[&PodInfo]) -> Result<(), String> {
    if webs.iter().any(|w| w.name == body.trim()) {
        Ok(())
    } else {
        Err(format!("body {body:?}"))
    }
}

/// Services through kube-proxy, cluster DNS, a NodePort reached from the
/// other node and a hostPort.
fn services(
    kubectl: &Kubectl,
    nodes: &[super::up::Node],
    current: &[PodInfo],
    sleepers: &[&PodInfo],
    webs: &[&PodInfo],
    checks: &mut Checks,
) {
    say("==> Services (kube-proxy), cluster DNS (CoreDNS), NodePort and hostPort");
    let cluster_ip = kubectl.json(&["get", "service", "demo-web-svc"]).map(|s| {
        s["spec"]["clusterIP"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    if let (Some(client), Ok(ip)) = (sleepers.first(), &cluster_ip) {
        checks.record(
            format!("{} -> ClusterIP {ip}:80 of demo-web-svc", client.name),
            eventually(Duration::from_secs(30), || {
                served_by(
                    &exec_wget(kubectl, &client.name, &format!("http://{ip}/index.html"))?,
                    webs,
                )
            }),
        );
        checks.record(
            format!(
                "{} resolves demo-web-svc.default.svc.cluster.local to {ip}",
                client.name
            ),
            kubectl
                .run(&[
                    "exec",
                    &client.name,
                    "--",
                    "nslookup",
                    "demo-web-svc.default.svc.cluster.local",
                ])
                .and_then(|out| {
                    if out.contains(ip.as_str()) {
                        Ok(())
                    } else {
                        Err(out)
                    }
                }),
        );
        checks.record(
            format!("{} -> http://demo-web-svc/ (by name)", client.name),
            exec_wget(kubectl, &client.name, "http://demo-web-svc/index.html")
                .and_then(|b| served_by(&b, webs)),
        );
    }
    let (Some(n1), Some(n2)) = (nodes.first(), nodes.get(1)) else {
        return;
    };
    let Ok(n1_ip) = vpc_address(&n1.netns) else {
        checks.record("node1's VPC address".into(), Err("none".into()));
        return;
    };
    checks.record(
        format!("node2 -> NodePort {n1_ip}:{NODE_PORT} (node1's VPC address)"),
        eventually(Duration::from_secs(30), || {
            served_by(
                &node_wget(&n2.netns, &format!("http://{n1_ip}:{NODE_PORT}/index.html"))?,
                webs,
            )
        }),
    );
    if let Some(w) = current
        .iter()
        .find(|p| p.name.starts_with("demo-web") && p.node == n1.instance)
    {
        checks.record(
            format!(
                "node2 -> hostPort {n1_ip}:{HOST_PORT} ({} on node1)",
                w.name
            ),
            node_wget(&n2.netns, &format!("http://{n1_ip}:{HOST_PORT}/index.html")).and_then(|b| {
                if b.trim() == w.name {
                    Ok(())
                } else {
                    Err(format!("body {b:?}"))
                }
            }),
        );
    }
}

/// The pod IPs of `kube-system` (not those on the host's network).
fn system_pod_ips(kubectl: &Kubectl) -> Vec<String> {
    kubectl
        .json(&["-n", "kube-system", "get", "pods"])
        .map(|v| {
            v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["spec"]["hostNetwork"] != true)
                .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
