//! `vpc-sim demo`: two nodes, pods created as a runtime creates them and
//! wired by the real `vpc-cni` binary as kubelet runs it, then real ICMP
//! between pods on one node, across nodes, to the subnet gateway and to the
//! outside host beyond the VPC; UDP showing which source address arrives
//! (the node's outside the VPC, the pod's inside it); then every pod
//! deleted and the nodes checked for leftovers.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use proto::wire::{IpState, PoolView, Request, Response};
use serde_json::Value;
use vpc_sim::fabric::{self, Fabric, OUTSIDE_HOST};
use vpc_sim::probe;
use vpc_sim::world::{NodeLimits, SUBNET_ID, SharedWorld};

use super::sibling_binary;
use super::up::{Node, UpArgs, up, world_file};

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Pods per node (at least 2: one same-node pair per node).
    #[arg(long, default_value_t = 4)]
    pub pods_per_node: usize,
    /// The plugin binary (default: next to vpc-sim, else on PATH).
    #[arg(long)]
    pub cni_bin: Option<PathBuf>,
    /// The agent binary (default: next to vpc-sim, else on PATH).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Run Kubernetes on the nodes and drive the pods through kubectl
    /// (a Deployment and a StatefulSet) instead of calling the plugin.
    #[arg(long)]
    pub kubernetes: bool,
    /// With --kubernetes: where etcd, kube-* and kubectl are.
    #[arg(long)]
    pub k8s_bin_dir: Option<PathBuf>,
    /// With --kubernetes: install vpc-cni from `deploy/` (`manifests`) or
    /// with its Helm chart (`helm`).
    #[arg(long, value_enum, default_value = "manifests")]
    pub install: super::up::Installer,
    /// `dual`: a dual-stack VPC and agents (`up --ip-family dual`); every
    /// pod gets an IPv6 address too, and IPv6 is pinged as IPv4 is.
    #[arg(long, value_enum, default_value = "ipv4")]
    pub ip_family: super::up::IpFamily,
}

struct Pod {
    name: String,
    node: usize,
    netns: String,
    ip: String,
    /// Its IPv6 address (dual stack), else empty.
    ip6: String,
    result: Value,
}

pub(super) struct Checks {
    pub(super) results: Vec<(String, Result<(), String>)>,
}

impl Checks {
    pub(super) fn record(&mut self, what: String, outcome: Result<(), String>) {
        let mut out = std::io::stdout().lock();
        let _ = match &outcome {
            Ok(()) => writeln!(out, "  ok    {what}"),
            Err(e) => writeln!(out, "  FAIL  {what}: {e}"),
        };
        self.results.push((what, outcome));
    }

    pub(super) fn failed(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(w, _)| w.as_str())
            .collect()
    }
}

/// Runs the demo; fails if any check failed.
pub fn run(args: DemoArgs) -> Result<(), String> {
    if args.kubernetes {
        if args.ip_family == super::up::IpFamily::Dual {
            return Err("--ip-family dual runs without --kubernetes only (a dual-stack Kubernetes on the simulation is not built yet)".into());
        }
        return super::kube_demo::run(&args);
    }
    if args.pods_per_node < 2 {
        return Err("--pods-per-node must be at least 2".into());
    }
    if Command::new("ping").arg("-V").output().is_err() {
        return Err("`ping` is missing (apt-get install iputils-ping)".into());
    }
    let dir = std::env::temp_dir().join(format!("vpc-sim-demo-{}", std::process::id()));
    let up_args = UpArgs {
        nodes: 2,
        zones: 1,
        state: dir.clone(),
        max_enis: NodeLimits::default().max_enis,
        ips_per_eni: 10,
        eni_quota: vpc_sim::model::DEFAULT_ENI_QUOTA,
        agent_bin: args.agent_bin.clone(),
        agent_flags: Vec::new(),
        kubernetes: false,
        k8s_bin_dir: None,
        image: None,
        extra_images: Vec::new(),
        api_limits: "documented".into(),
        source_check: super::source_check::Switch::On,
        proxy_mode: Default::default(),
        e2e_images: false,
        eni_mtu: 1500,
        ip_family: args.ip_family,
        install: super::up::Installer::Manifests,
    };
    say(&format!(
        "==> vpc-sim up: 2 nodes, agents with the netlink data path, {} ({})",
        match args.ip_family {
            super::up::IpFamily::Ipv4 => "IPv4",
            super::up::IpFamily::Dual => "dual stack",
        },
        dir.display()
    ));
    let sim = up(&up_args)?;
    let cni = args
        .cni_bin
        .clone()
        .unwrap_or_else(|| sibling_binary("vpc-cni"));
    let mut pods = Vec::new();
    let outcome = exercise(&args, &sim.nodes, &sim.tag, &cni, &dir, &mut pods);
    for pod in &pods {
        let _ = fabric::ip(&["netns", "del", &pod.netns]);
    }
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
    args: &DemoArgs,
    nodes: &[Node],
    tag: &str,
    cni: &Path,
    dir: &Path,
    pods: &mut Vec<Pod>,
) -> Result<Checks, String> {
    let mut checks = Checks {
        results: Vec::new(),
    };
    let dual = args.ip_family == super::up::IpFamily::Dual;
    say(&format!(
        "==> ADD {} pods per node through {}",
        args.pods_per_node,
        cni.display()
    ));
    for (n, node) in nodes.iter().enumerate() {
        let conf = node_conf(node)?;
        for k in 1..=args.pods_per_node {
            let name = format!("pod-{}-{k}", n + 1);
            let netns = format!("vpcsim-{tag}-p{}-{k}", n + 1);
            fabric::ip(&["netns", "add", &netns]).map_err(|e| e.to_string())?;
            // Recorded before ADD so its namespace is removed whatever ADD does.
            pods.push(Pod {
                name: name.clone(),
                node: n,
                netns: netns.clone(),
                ip: String::new(),
                ip6: String::new(),
                result: Value::Null,
            });
            let added = plugin(cni, "ADD", &name, &netns, &conf).and_then(|out| {
                let [ip, ip6] = [false, true].map(|v6| result_address(&out, v6));
                if ip.is_empty() {
                    Err(format!("no address in {out}"))
                } else if dual && ip6.is_empty() {
                    Err(format!("no IPv6 address in {out}"))
                } else {
                    Ok((ip, ip6, out))
                }
            });
            let pod = pods.last_mut().expect("just pushed");
            checks.record(
                format!("ADD {name} on node{}", n + 1),
                added.map(|(ip, ip6, out)| {
                    pod.ip = ip;
                    pod.ip6 = ip6;
                    pod.result = out;
                }),
            );
        }
    }

    let enis = eni_of_pods(nodes)?;
    say("==> pods");
    let mut table = vec![["POD".to_string(), "NODE".into(), "IP".into(), "ENI".into()]];
    for p in pods.iter() {
        let eni = enis.get(&p.name).cloned().unwrap_or_else(|| "?".into());
        let ip = if p.ip6.is_empty() {
            p.ip.clone()
        } else {
            format!("{} {}", p.ip, p.ip6)
        };
        table.push([p.name.clone(), format!("node{}", p.node + 1), ip, eni]);
    }
    say(&render(&table));

    say("==> CHECK every pod with its ADD result as prevResult");
    for p in pods.iter() {
        let mut conf = node_conf(&nodes[p.node])?;
        conf["prevResult"] = p.result.clone();
        checks.record(
            format!("CHECK {}", p.name),
            plugin(cni, "CHECK", &p.name, &p.netns, &conf).map(|_| ()),
        );
    }

    say("==> ping");
    let gateway = SharedWorld::at(&world_file(dir))
        .read()
        .map_err(|e| e.to_string())?
        .vpc
        .subnets[SUBNET_ID]
        .gateway()
        .to_string();
    let by_node = |n: usize| pods.iter().filter(move |p| p.node == n && !p.ip.is_empty());
    for n in 0..nodes.len() {
        let local: Vec<&Pod> = by_node(n).collect();
        if let [a, b, ..] = local.as_slice() {
            checks.record(
                format!("{} -> {} (same node)", a.name, b.name),
                ping(&a.netns, &b.ip),
            );
        }
    }
    for (a, b) in by_node(0).zip(by_node(1)) {
        checks.record(
            format!("{} -> {} (across nodes)", a.name, b.name),
            ping(&a.netns, &b.ip),
        );
        checks.record(
            format!("{} -> {} (across nodes)", b.name, a.name),
            ping(&b.netns, &a.ip),
        );
    }
    for p in pods.iter().filter(|p| !p.ip.is_empty()) {
        checks.record(
            format!("{} -> gateway {gateway}", p.name),
            ping(&p.netns, &gateway),
        );
    }

    if dual {
        ping6(nodes, pods, &mut checks);
    }

    say(&format!(
        "==> egress: to the outside host {OUTSIDE_HOST} as the node, inside the VPC as the pod"
    ));
    egress(dir, nodes, pods, &mut checks)?;
    checks.record(
        "the VPC's source/destination check dropped nothing".into(),
        nothing_spoofed(dir),
    );

    say("==> DEL every pod, then look for leftovers");
    for p in pods.iter() {
        let conf = node_conf(&nodes[p.node])?;
        checks.record(
            format!("DEL {}", p.name),
            plugin(cni, "DEL", &p.name, &p.netns, &conf).map(|_| ()),
        );
    }
    for (n, node) in nodes.iter().enumerate() {
        checks.record(
            format!("node{} has no pod veths, routes or rules left", n + 1),
            no_leftovers(&node.netns, &[]),
        );
        checks.record(
            format!("node{} has no allocation left", n + 1),
            no_allocations(node, &[]),
        );
    }
    Ok(checks)
}

/// IPv6 as IPv4 is pinged: pods on one node, across nodes both ways, and
/// each node to each pod (its own through the host route, the other's
/// through the VPC).
fn ping6(nodes: &[Node], pods: &[Pod], checks: &mut Checks) {
    say("==> ping IPv6");
    let by_node = |n: usize| {
        pods.iter()
            .filter(move |p| p.node == n && !p.ip6.is_empty())
    };
    for n in 0..nodes.len() {
        let local: Vec<&Pod> = by_node(n).collect();
        if let [a, b, ..] = local.as_slice() {
            checks.record(
                format!("{} -> {} {} (same node)", a.name, b.name, b.ip6),
                ping(&a.netns, &b.ip6),
            );
        }
    }
    for (a, b) in by_node(0).zip(by_node(1)) {
        checks.record(
            format!("{} -> {} {} (across nodes)", a.name, b.name, b.ip6),
            ping(&a.netns, &b.ip6),
        );
        checks.record(
            format!("{} -> {} {} (across nodes)", b.name, a.name, a.ip6),
            ping(&b.netns, &a.ip6),
        );
    }
    for (n, node) in nodes.iter().enumerate() {
        for p in pods.iter().filter(|p| !p.ip6.is_empty()) {
            checks.record(
                format!("node{} -> {} {}", n + 1, p.name, p.ip6),
                ping(&node.netns, &p.ip6),
            );
        }
    }
}

/// The address of one family in a CNI result, without its prefix length
/// (empty when the result has none).
fn result_address(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| a.contains(':') == v6)
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_string()
}

/// Per node, its first pod pings the outside host and the outside host
/// sees the node's primary address; a pod on node 1 reaches a pod on node
/// 2 with its own address.
fn egress(dir: &Path, nodes: &[Node], pods: &[Pod], checks: &mut Checks) -> Result<(), String> {
    let world = SharedWorld::at(&world_file(dir))
        .read()
        .map_err(|e| e.to_string())?;
    let outside = world
        .fabric
        .as_ref()
        .and_then(|f| f.outside.clone())
        .ok_or("the fabric has no outside namespace")?;
    let outside = Fabric::netns_path(&outside);
    let first = |n: usize| pods.iter().find(|p| p.node == n && !p.ip.is_empty());
    for (n, node) in nodes.iter().enumerate() {
        let Some(p) = first(n) else { continue };
        let primary = world
            .vpc
            .enis_of(&node.instance)
            .find(|e| e.primary)
            .map(|e| e.primary_ip)
            .ok_or_else(|| format!("no primary ENI for {}", node.instance))?;
        checks.record(
            format!("{} -> outside host {OUTSIDE_HOST}", p.name),
            ping(&p.netns, &OUTSIDE_HOST.to_string()),
        );
        let seen = probe::source_seen(
            &Fabric::netns_path(&p.netns),
            &outside,
            SocketAddrV4::new(OUTSIDE_HOST, 7001 + n as u16),
        );
        checks.record(
            format!(
                "the outside host sees {} as node{}'s address {primary}",
                p.name,
                n + 1
            ),
            expect_source(seen, primary),
        );
    }
    if let (Some(a), Some(b)) = (first(0), first(1)) {
        let (a_ip, b_ip): (Ipv4Addr, Ipv4Addr) = (
            a.ip.parse().map_err(|e| format!("{}: {e}", a.ip))?,
            b.ip.parse().map_err(|e| format!("{}: {e}", b.ip))?,
        );
        let seen = probe::source_seen(
            &Fabric::netns_path(&a.netns),
            &Fabric::netns_path(&b.netns),
            SocketAddrV4::new(b_ip, 7000),
        );
        checks.record(
            format!(
                "{} sees {} with its own address {a_ip} (inside the VPC, across nodes)",
                b.name, a.name
            ),
            expect_source(seen, a_ip),
        );
    }
    Ok(())
}

fn expect_source(seen: Result<Ipv4Addr, String>, want: Ipv4Addr) -> Result<(), String> {
    match seen? {
        got if got == want => Ok(()),
        got => Err(format!("the datagram came from {got}, not {want}")),
    }
}

fn node_conf(node: &Node) -> Result<Value, String> {
    let list: Value =
        serde_json::from_slice(&std::fs::read(&node.conflist).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    Ok(conf)
}

/// Runs the plugin the way kubelet does: a clean environment, the config
/// on stdin, the result on stdout.
fn plugin(cni: &Path, verb: &str, pod: &str, netns: &str, conf: &Value) -> Result<Value, String> {
    let mut child = Command::new(cni)
        .env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", format!("ctr-{pod}"))
        .env("CNI_NETNS", Fabric::netns_path(netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni.parent().unwrap_or(Path::new("/opt/cni/bin")))
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=ctr-{pod}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cni.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{verb} failed: {}", stdout.trim()));
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| format!("{verb} printed no JSON ({e}): {stdout}"))
}

/// One echo answered in at most three tries (a packet lost while the
/// neighbours along the way resolve on a loaded machine is no failure).
fn ping(netns: &str, ip: &str) -> Result<(), String> {
    for _ in 0..3 {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "ping", "-c", "1", "-W", "2", ip])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(());
        }
    }
    Err(format!("no reply from {ip} in three tries"))
}

fn pool(node: &Node) -> Result<PoolView, String> {
    match proto::client::call(&node.socket, &Request::Pool, Duration::from_secs(10)) {
        Ok(Ok(Response::Pool(view))) => Ok(view),
        other => Err(format!("pool of {}: {other:?}", node.instance)),
    }
}

pub(super) fn eni_of_pods(nodes: &[Node]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for node in nodes {
        for eni in pool(node)?.enis {
            for ip in eni.ips {
                if let IpState::Allocated { pod: Some(pod), .. } = ip.state {
                    out.insert(pod.name, eni.id.clone());
                }
            }
        }
    }
    Ok(out)
}

/// No allocation on the node but those of the pods at `keep`.
pub(super) fn no_allocations(node: &Node, keep: &[String]) -> Result<(), String> {
    let held: Vec<String> = pool(node)?
        .enis
        .iter()
        .flat_map(|e| &e.ips)
        .filter(|ip| matches!(ip.state, IpState::Allocated { .. }))
        .map(|ip| ip.ip.to_string())
        .filter(|ip| !keep.contains(ip))
        .collect();
    if held.is_empty() {
        Ok(())
    } else {
        Err(format!("still allocated: {}", held.join(", ")))
    }
}

/// Nothing left an ENI from an address that ENI does not hold.
pub(super) fn nothing_spoofed(dir: &std::path::Path) -> Result<(), String> {
    let world = SharedWorld::at(&world_file(dir))
        .read()
        .map_err(|e| e.to_string())?;
    let fabric = world.fabric.as_ref().ok_or("no fabric")?;
    let spoofed = fabric.spoofed().map_err(|e| e.to_string())?;
    if spoofed.is_empty() {
        Ok(())
    } else {
        Err(spoofed
            .iter()
            .map(|s| format!("{} sent {} packets from {}", s.link, s.packets, s.source))
            .collect::<Vec<_>>()
            .join(", "))
    }
}

/// Veths are deleted in the background after DEL answers: wait for them.
/// The pods at `keep` (still running: the cluster's DNS, say) keep theirs.
pub(super) fn no_leftovers(netns: &str, keep: &[String]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let kept = |line: &str| {
        keep.iter()
            .any(|ip| line.split_whitespace().any(|w| w == ip.as_str()))
    };
    loop {
        let mut all_routes = ip_output(&["-n", netns, "route", "show", "proto", "175"])?;
        all_routes.push_str(&ip_output(&[
            "-n", netns, "-6", "route", "show", "proto", "175",
        ])?);
        let (kept_routes, routes): (Vec<&str>, Vec<&str>) =
            all_routes.lines().partition(|l| kept(l));
        let kept_veths: Vec<&str> = kept_routes
            .iter()
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "dev").nth(1))
            .collect();
        let links = ip_output(&["-n", netns, "-o", "link", "show"])?;
        let veths: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
            .filter(|n| n.starts_with("vpc") && !kept_veths.contains(n))
            .collect();
        // Pods' rules; the node's egress rules (1000 to 1026) stay.
        let mut all_rules = ip_output(&["-n", netns, "rule", "show"])?;
        all_rules.push_str(&ip_output(&["-n", netns, "-6", "rule", "show"])?);
        let rules: Vec<String> = all_rules
            .lines()
            .filter(|l| {
                l.contains("proto 175")
                    && (l.starts_with("512:") || l.starts_with("1536:"))
                    && !kept(&l.replace(['\t', ':'], " "))
            })
            .map(str::to_string)
            .collect();
        let routes = routes.join("\n");
        if veths.is_empty() && rules.is_empty() && routes.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "veths {veths:?}, rules {rules:?}, routes {:?}",
                routes.trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ip_output(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(super) fn render(rows: &[[String; 4]]) -> String {
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("   ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
