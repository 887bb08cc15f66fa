//! A real Kubernetes on the simulated VPC: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler on the host, and per
//! simulated node a containerd and a kubelet running inside that node's
//! network namespace, so the pods they make are wired by that node's
//! `vpc-cni-agent` through the real `vpc-cni` binary.
//!
//! The host reaches the nodes over a management network of the cluster's
//! own: a bridge in the host namespace (`vpcsim-<tag>-k`, a /24 out of
//! 100.64.0.0/10 no other cluster on the host uses) with one veth into each
//! node (`mgmt0`). The control plane listens on the bridge's address, each
//! kubelet is reached at its node's address on it, so two clusters never
//! share a port or an address and the VPC's own addresses (10.0.0.0/16 in
//! every simulation) need no route on the host.
//!
//! Everything the cluster runs lives in one cgroup tree
//! (`<own memory cgroup>/vpcsim-<tag>`, the kubelets' `cgroupRoot`s
//! inside), recorded in `DIR/k8s/cluster.json` before anything starts, so
//! `down` kills whatever is left by cgroup and removes the tree, the
//! mounts under `DIR`, the pods' namespaces and the bridge, whichever
//! component died first.

pub mod control_plane;
pub mod dns;
pub mod faults;
pub mod host;
pub mod pki;
mod proxy;
pub mod supervise;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::fabric::{Fabric, ip};
use pki::Pki;
pub use proxy::ProxyMode;

/// The Kubernetes release the binaries are built from.
pub const K8S_VERSION: &str = "v1.34.4";
/// The sandbox image every node's containerd uses.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// The busybox image pods run.
pub const BUSYBOX_IMAGE: &str = "localhost/busybox:1.35";
/// The cluster's service range (outside the VPC's 10.0.0.0/16).
pub const SERVICE_CIDR: &str = "172.20.0.0/16";
/// A dual-stack cluster's IPv6 service range (unique local, outside the
/// VPC's block).
pub const SERVICE_CIDR6: &str = "fd00:172:20::/112";
/// The apiserver's port on the management bridge.
pub const APISERVER_PORT: u16 = 6443;

/// The binaries the cluster runs, built by `scripts/k8s-bins.sh`.
pub const BINARIES: [&str; 7] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kubectl",
    "kube-proxy",
];

/// A simulated node that gets a kubelet.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// The node's name in Kubernetes (the instance id).
    pub name: String,
    /// The node's network namespace.
    pub netns: String,
    /// The node's zone.
    pub zone: String,
    /// Its instance type (`Instance::type_name`).
    pub instance_type: String,
    /// Its primary ENI's IPv6 address, in a dual-stack VPC: the Node's
    /// IPv6 InternalIP in a dual-stack cluster.
    pub ipv6: Option<String>,
}

/// The service range, both families' in a dual-stack cluster.
pub fn service_cidrs(opts: &Options) -> String {
    match opts.cluster_cidr6 {
        Some(_) => format!("{SERVICE_CIDR},{SERVICE_CIDR6}"),
        None => SERVICE_CIDR.to_string(),
    }
}

/// The audit log of writes of vpc-cni's objects, in the cluster's
/// directory (`DIR/k8s`): one JSON line per write, with its user.
pub const AUDIT_LOG: &str = "audit.log";

/// What the API server audits: writes of `vpc-cni.io` objects, at the
/// Metadata level (who, what, the answer); nothing else.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
  resources:
  - group: vpc-cni.io
- level: None
";

/// Where the cluster's programs and images are.
#[derive(Clone, Debug)]
pub struct Options {
    /// etcd, kube-* and kubectl.
    pub bin_dir: PathBuf,
    /// `pause.tar` and `busybox.tar`.
    pub images_dir: PathBuf,
    /// More image archives every node's containerd imports (vpc-cni's).
    pub extra_images: Vec<PathBuf>,
    /// The reference `loopback` plugin, which the runtime needs in every
    /// node's `/opt/cni/bin` (a node's OS ships it; the `vpc-cni` plugin
    /// beside it is installed by the DaemonSet).
    pub loopback_bin: PathBuf,
    /// kube-proxy's mode on every node.
    pub proxy_mode: ProxyMode,
    /// The block pods' addresses come from (the VPC's), for kube-proxy.
    pub cluster_cidr: String,
    /// The VPC's IPv6 block: the cluster is dual-stack (a second service
    /// range, the nodes' IPv6 addresses, kube-proxy in both families).
    pub cluster_cidr6: Option<String>,
    /// The VPC router's namespace, which the control plane is linked to.
    pub router_netns: String,
    /// Manifests of API types (CRDs) applied once the API server answers
    /// and before kube-controller-manager starts. Its garbage collector
    /// watches the resources it finds at start and looks for new ones only
    /// every 30 s: a workload deleted with `--cascade=orphan` in the first
    /// 30 s after its dependents' CRD appeared has them deleted, not
    /// orphaned. A cluster whose CRDs predate its controllers has no such
    /// window, and tests of orphaning must not depend on the clock.
    pub api_types: Vec<PathBuf>,
}

/// The directories each node has for itself (bind-mounted over these paths
/// in the node's mount namespace, from `DIR/k8s/node<i>/root/...`): what a
/// CNI DaemonSet's hostPath volumes reach on a real node.
pub const NODE_PRIVATE_DIRS: [&str; 4] = [
    "/opt/cni/bin",
    "/etc/cni/net.d",
    "/run/vpc-cni",
    "/var/lib/vpc-cni",
];

/// Where the node `n` (1-based) of the simulation in `state` keeps what it
/// sees at `path` (one of [`NODE_PRIVATE_DIRS`]).
pub fn node_private_dir(state: &Path, n: usize, path: &str) -> PathBuf {
    cluster_dir(state)
        .join(format!("node{n}"))
        .join("root")
        .join(path.trim_start_matches('/'))
}

/// A process of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proc {
    /// What it is, for messages ("kubelet of node1").
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// The program.
    pub program: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// Its arguments (what `restart` starts it with again).
    #[serde(default)]
    pub args: Vec<String>,
    /// The cgroup it was put in.
    #[serde(default)]
    pub cgroup: String,
    /// The command line it was started through (entering namespaces).
    #[serde(default)]
    pub wrapper: Vec<String>,
}

/// A node of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterNode {
    /// The node's name.
    pub name: String,
    /// Its address on the management network.
    pub ip: String,
    /// Its containerd's socket.
    pub containerd: PathBuf,
    /// Its kubelet's root directory.
    pub kubelet_dir: PathBuf,
}

/// What `down` needs, in `DIR/k8s/cluster.json`, written before anything
/// starts and after every change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Cluster {
    /// The simulation's tag.
    pub tag: String,
    /// The cgroup tree of every process of the cluster.
    pub cgroup: String,
    /// Cgroup directories above the tree that the cluster created.
    pub made_cgroups: Vec<PathBuf>,
    /// The management bridge.
    pub bridge: Option<String>,
    /// The control plane's address on it (the host has `.254`).
    pub host_ip: Option<String>,
    /// The control plane's network namespace (see [`control_plane`]).
    #[serde(default)]
    pub control_plane_netns: Option<String>,
    /// Every process started.
    pub procs: Vec<Proc>,
    /// The nodes.
    pub nodes: Vec<ClusterNode>,
}

/// The cluster's directory in a simulation's state directory.
pub fn cluster_dir(state: &Path) -> PathBuf {
    state.join("k8s")
}

/// The admin kubeconfig of a simulation's cluster.
pub fn kubeconfig(state: &Path) -> PathBuf {
    state.join("kubeconfig")
}

fn cluster_file(state: &Path) -> PathBuf {
    cluster_dir(state).join("cluster.json")
}

impl Cluster {
    fn save(&self, state: &Path) -> Result<(), String> {
        let path = cluster_file(state);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self).expect("json"))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads the record of a simulation's cluster, if it has one.
    pub fn load(state: &Path) -> Option<Cluster> {
        serde_json::from_slice(&fs::read(cluster_file(state)).ok()?).ok()
    }

    /// The first process of the cluster that is no longer running, as an
    /// error naming it and its log; not one the supervisor starts again
    /// while it runs ([`supervise`]).
    pub fn check_running(&self) -> Result<(), String> {
        let supervised = self
            .procs
            .iter()
            .any(|p| p.name == supervise::SUPERVISOR && alive(p.pid));
        for p in &self.procs {
            if supervised && supervise::SUPERVISED.contains(&p.name.as_str()) {
                continue;
            }
            if !alive(p.pid) {
                return Err(failure(p, "exited"));
            }
        }
        Ok(())
    }
}

fn failure(p: &Proc, what: &str) -> String {
    format!(
        "{} {what}; its log is {}; last lines:\n{}",
        p.name,
        p.log.display(),
        host::tail(&p.log, 12)
    )
}

/// Checks that the binaries and images are in place and the host tools
/// the cluster needs are installed; the message names what is missing.
pub fn check_prerequisites(opts: &Options) -> Result<(), String> {
    for b in BINARIES {
        if !opts.bin_dir.join(b).is_file() {
            return Err(format!(
                "{b} is missing from {} (build it with scripts/k8s-bins.sh)",
                opts.bin_dir.display()
            ));
        }
    }
    for i in ["pause.tar", "busybox.tar"] {
        if !opts.images_dir.join(i).is_file() {
            return Err(format!(
                "image {i} is missing from {} (made by scripts/k8s-bins.sh)",
                opts.images_dir.display()
            ));
        }
    }
    for (tool, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("mount", "mount"),
        ("openssl", "openssl"),
    ] {
        if which(tool).is_none() {
            return Err(format!(
                "{tool} is not installed (apt-get install {package})"
            ));
        }
    }
    for tool in opts.proxy_mode.tools() {
        if which(tool).is_none() {
            return Err(format!(
                "{tool} is not installed, which kube-proxy's {} mode runs (apt-get install {})",
                opts.proxy_mode,
                if *tool == "nft" {
                    "nftables"
                } else {
                    "iptables"
                }
            ));
        }
    }
    if !opts.loopback_bin.is_file() {
        return Err(format!(
            "CNI plugin {} is missing (apt-get install containernetworking-plugins)",
            opts.loopback_bin.display()
        ));
    }
    for image in &opts.extra_images {
        if !image.is_file() {
            return Err(format!("image archive {} is missing", image.display()));
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Brings the cluster up on a simulation whose nodes are `nodes`; `say`
/// hears each step. On failure the caller runs `down`, which removes
/// whatever was made.
pub fn up(
    state: &Path,
    tag: &str,
    nodes: &[NodeSpec],
    opts: &Options,
    say: &dyn Fn(&str),
) -> Result<Cluster, String> {
    check_prerequisites(opts)?;
    let dir = cluster_dir(state);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cluster = Cluster {
        tag: tag.to_string(),
        cgroup: host::cgroup_base(tag),
        ..Cluster::default()
    };
    cluster.save(state)?;

    // Cgroups first: every process joins the tree as it starts.
    cluster.made_cgroups = host::create_cgroup(&cluster.cgroup)?;
    cluster.save(state)?;
    host::create_cgroup(&format!("{}/control", cluster.cgroup))?;

    let started = Instant::now();
    let prefix = management_prefix(tag)?;
    let host_ip = format!("{prefix}.1");
    let bridge = format!("vpcsim-{tag}-k");
    cluster.bridge = Some(bridge.clone());
    cluster.host_ip = Some(host_ip.clone());
    cluster.save(state)?;
    say(&format!(
        "==> management network {prefix}.0/24 on bridge {bridge}"
    ));
    fabric_err(ip(&["link", "add", &bridge, "type", "bridge"]))?;
    fabric_err(ip(&[
        "addr",
        "add",
        &format!("{}/24", control_plane::host_address(&prefix)),
        "dev",
        &bridge,
    ]))?;
    fabric_err(ip(&["link", "set", &bridge, "up"]))?;
    let cp_netns = control_plane::netns_name(tag);
    cluster.control_plane_netns = Some(cp_netns.clone());
    cluster.save(state)?;
    control_plane::create(
        tag,
        &bridge,
        &host_ip,
        &opts.router_netns,
        &opts.cluster_cidr,
    )?;
    let cp = control_plane::wrapper(&cp_netns);
    for (i, node) in nodes.iter().enumerate() {
        let node_ip = format!("{prefix}.{}", 11 + i);
        let outside = format!("vk{tag}m{}", i + 1);
        fabric_err(ip(&[
            "link",
            "add",
            &outside,
            "type",
            "veth",
            "peer",
            "name",
            "mgmt0",
            "netns",
            &node.netns,
        ]))?;
        fabric_err(ip(&["link", "set", &outside, "master", &bridge, "up"]))?;
        fabric_err(ip(&[
            "-n",
            &node.netns,
            "addr",
            "add",
            &format!("{node_ip}/24"),
            "dev",
            "mgmt0",
        ]))?;
        fabric_err(ip(&["-n", &node.netns, "link", "set", "mgmt0", "up"]))?;
        let node_dir = dir.join(format!("node{}", i + 1));
        cluster.nodes.push(ClusterNode {
            name: node.name.clone(),
            ip: node_ip,
            containerd: node_dir.join("containerd.sock"),
            kubelet_dir: node_dir.join("kubelet"),
        });
    }
    cluster.save(state)?;

    say("==> certificates (openssl)");
    let pki = Pki::create(&dir.join("pki"), tag)?;
    pki.issue(
        "apiserver",
        "/CN=kube-apiserver",
        Some(&format!(
            "IP:{host_ip},IP:127.0.0.1,IP:172.20.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
        )),
    )?;
    pki.issue("admin", "/O=system:masters/CN=vpc-sim-admin", None)?;
    pki.issue(
        "apiserver-kubelet-client",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        None,
    )?;
    pki.issue(
        "kube-controller-manager",
        "/CN=system:kube-controller-manager",
        None,
    )?;
    pki.issue("kube-scheduler", "/CN=system:kube-scheduler", None)?;
    let server = format!("https://{host_ip}:{APISERVER_PORT}");
    pki.kubeconfig(&kubeconfig(state), &server, "admin")?;
    let kcm_kc = dir.join("kube-controller-manager.kubeconfig");
    pki.kubeconfig(&kcm_kc, &server, "kube-controller-manager")?;
    let sched_kc = dir.join("kube-scheduler.kubeconfig");
    pki.kubeconfig(&sched_kc, &server, "kube-scheduler")?;

    let bin = |name: &str| opts.bin_dir.join(name);
    let control = format!("{}/control", cluster.cgroup);
    say("==> etcd");
    let etcd_url = format!("http://{host_ip}:2379");
    start(
        state,
        &mut cluster,
        "etcd",
        &control,
        &cp,
        &bin("etcd"),
        &[
            "--name=vpc-sim".into(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls=http://{host_ip}:2380"),
            format!("--initial-advertise-peer-urls=http://{host_ip}:2380"),
            format!("--initial-cluster=vpc-sim=http://{host_ip}:2380"),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
    )?;
    wait(&cluster, "etcd", Duration::from_secs(60), || {
        std::net::TcpStream::connect_timeout(
            &format!("{host_ip}:2379")
                .parse::<SocketAddr>()
                .expect("addr"),
            Duration::from_millis(200),
        )
        .is_ok()
    })?;

    // An audit log of the writes of vpc-cni's objects, by whom: what the
    // agents write and what the garbage collector writes for them
    // (`bench/api-writes`).
    let audit_policy = dir.join("audit-policy.yaml");
    fs::write(&audit_policy, AUDIT_POLICY).map_err(|e| e.to_string())?;
    say("==> kube-apiserver");
    start(
        state,
        &mut cluster,
        "kube-apiserver",
        &control,
        &cp,
        &bin("kube-apiserver"),
        &[
            format!("--etcd-servers={etcd_url}"),
            format!("--bind-address={host_ip}"),
            format!("--advertise-address={host_ip}"),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--tls-cert-file={}", pki.path("apiserver.crt")),
            format!("--tls-private-key-file={}", pki.path("apiserver.key")),
            format!("--client-ca-file={}", pki.path("ca.crt")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", pki.path("sa.pub")),
            format!("--service-account-signing-key-file={}", pki.path("sa.key")),
            format!("--service-cluster-ip-range={}", service_cidrs(opts)),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            format!(
                "--kubelet-client-certificate={}",
                pki.path("apiserver-kubelet-client.crt")
            ),
            format!(
                "--kubelet-client-key={}",
                pki.path("apiserver-kubelet-client.key")
            ),
            "--kubelet-preferred-address-types=InternalIP".into(),
            // Webhooks named by Service are dialled at the Service's ready
            // endpoints, not its ClusterIP: there is no kube-proxy here.
            "--enable-aggregator-routing=true".into(),
            "--profiling=false".into(),
            format!("--audit-policy-file={}", audit_policy.display()),
            format!("--audit-log-path={}", dir.join(AUDIT_LOG).display()),
            "--audit-log-maxsize=100".into(),
        ],
    )?;
    let kubectl = Kubectl {
        bin: bin("kubectl"),
        kubeconfig: kubeconfig(state),
    };
    wait(&cluster, "kube-apiserver", Duration::from_secs(180), || {
        kubectl.run(&["get", "--raw", "/readyz"]).is_ok()
    })?;
    say(&format!(
        "    apiserver ready at {server} after {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    for manifest in &opts.api_types {
        say(&format!(
            "==> API types before the controllers: {}",
            manifest.display()
        ));
        kubectl.run(&["apply", "-f", &manifest.to_string_lossy()])?;
    }
    say("==> kube-controller-manager, kube-scheduler");
    start(
        state,
        &mut cluster,
        "kube-controller-manager",
        &control,
        &cp,
        &bin("kube-controller-manager"),
        &[
            format!("--kubeconfig={}", kcm_kc.display()),
            format!("--authentication-kubeconfig={}", kcm_kc.display()),
            format!("--authorization-kubeconfig={}", kcm_kc.display()),
            format!("--bind-address={host_ip}"),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=true".into(),
            format!("--service-account-private-key-file={}", pki.path("sa.key")),
            format!("--root-ca-file={}", pki.path("ca.crt")),
            format!("--cluster-signing-cert-file={}", pki.path("ca.crt")),
            format!("--cluster-signing-key-file={}", pki.path("ca.key")),
            format!("--service-cluster-ip-range={}", service_cidrs(opts)),
            "--controllers=*".into(),
            "--profiling=false".into(),
        ],
    )?;
    start(
        state,
        &mut cluster,
        "kube-scheduler",
        &control,
        &cp,
        &bin("kube-scheduler"),
        &[
            format!("--kubeconfig={}", sched_kc.display()),
            format!("--authentication-kubeconfig={}", sched_kc.display()),
            format!("--authorization-kubeconfig={}", sched_kc.display()),
            format!("--bind-address={host_ip}"),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
        ],
    )?;

    // The mount points of the nodes' own directories, empty on the host.
    for path in NODE_PRIVATE_DIRS {
        fs::create_dir_all(path).map_err(|e| format!("cannot create {path} on the host: {e}"))?;
    }

    for (i, node) in nodes.iter().enumerate() {
        let cn = cluster.nodes[i].clone();
        say(&format!(
            "==> node{} ({}): containerd and kubelet in {} and a mount namespace of its own",
            i + 1,
            node.name,
            node.netns
        ));
        start_node(state, &mut cluster, i, node, &cn, &pki, &server, opts)?;
        proxy::start_proxy(state, &mut cluster, i, node, &cn, &pki, &server, opts)?;
    }

    // Not Ready yet: no CNI configuration until the CNI's DaemonSet puts
    // one there (see `wait_nodes_ready`).
    say("==> waiting for the nodes to register");
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    wait(&cluster, "the kubelets", Duration::from_secs(180), || {
        kubectl
            .json(&["get", "nodes"])
            .map(|v| names.iter().all(|n| node_registered(&v, n)))
            .unwrap_or(false)
    })
    .map_err(|e| {
        let kubelet = cluster
            .procs
            .iter()
            .filter(|p| p.name.starts_with("kubelet"))
            .map(|p| failure(p, "did not register its node in 180 s"))
            .collect::<Vec<_>>()
            .join("\n");
        format!("{e}\n{kubelet}")
    })?;
    wait(
        &cluster,
        "the service-account controller",
        Duration::from_secs(60),
        || kubectl.run(&["get", "serviceaccount", "default"]).is_ok(),
    )?;
    // Last: nothing but the supervisor writes the record from now on.
    supervise::spawn(state, &mut cluster, &control)?;
    say(&format!(
        "==> cluster up in {:.1} s: {} nodes (no CNI yet), kubeconfig {}",
        started.elapsed().as_secs_f64(),
        nodes.len(),
        kubeconfig(state).display()
    ));
    Ok(cluster)
}

#[allow(clippy::too_many_arguments)]
fn start_node(
    state: &Path,
    cluster: &mut Cluster,
    i: usize,
    node: &NodeSpec,
    cn: &ClusterNode,
    pki: &Pki,
    server: &str,
    opts: &Options,
) -> Result<(), String> {
    let n = i + 1;
    let node_dir = cn.kubelet_dir.parent().expect("node dir").to_path_buf();
    // The node's own /opt/cni/bin (with the runtime's `loopback`, as a
    // node's OS ships it), /etc/cni/net.d (empty until the DaemonSet
    // installs vpc-cni), /run/vpc-cni and /var/lib/vpc-cni.
    let mut binds = Vec::new();
    for path in NODE_PRIVATE_DIRS {
        let own = node_private_dir(state, n, path);
        fs::create_dir_all(&own).map_err(|e| format!("{}: {e}", own.display()))?;
        binds.push((own, path));
    }
    let own_bin = node_private_dir(state, n, "/opt/cni/bin");
    fs::copy(&opts.loopback_bin, own_bin.join("loopback"))
        .map_err(|e| format!("{}: {e}", opts.loopback_bin.display()))?;
    let ctrd = node_dir.join("containerd");
    let config = node_dir.join("containerd.toml");
    fs::write(
        &config,
        containerd_config(
            &ctrd,
            &cn.containerd,
            Path::new("/opt/cni/bin"),
            Path::new("/etc/cni/net.d"),
        ),
    )
    .map_err(|e| e.to_string())?;
    let runtime_cg = format!("{}/node{n}-runtime", cluster.cgroup);
    host::create_cgroup(&runtime_cg)?;
    let netns = Fabric::netns_path(&node.netns);
    // containerd makes the node's mount namespace (a slave of the host's:
    // the host's mounts reach it, its own never reach the host) and binds
    // the node's directories in it before it execs; the kubelet joins that
    // namespace, so runc sees the kubelet's volume mounts. It makes the
    // node's UTS namespace too, named as the node: a hostNetwork pod's
    // hostname is its node's, as on a real node (upstream specs ask
    // hostNetwork endpoints their hostname and expect the nodes' names).
    let mut script = format!("set -e\nhostname {}\n", shell_quote(&node.name));
    for (own, path) in &binds {
        script.push_str(&format!(
            "mount --bind {} {}\n",
            shell_quote(&own.to_string_lossy()),
            shell_quote(path)
        ));
    }
    script.push_str("exec \"$0\" \"$@\"\n");
    let wrapper = vec![
        "unshare".to_string(),
        "--mount".into(),
        "--uts".into(),
        "--propagation".into(),
        "slave".into(),
        "--".into(),
        "nsenter".into(),
        format!("--net={}", netns.display()),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script,
    ];
    start(
        state,
        cluster,
        &format!("containerd of node{n}"),
        &runtime_cg,
        &wrapper,
        Path::new("containerd"),
        &[format!("--config={}", config.display())],
    )?;
    let holder = cluster.procs.last().expect("containerd recorded").pid;
    let sock = cn.containerd.clone();
    wait(
        cluster,
        &format!("containerd of node{n}"),
        Duration::from_secs(60),
        || ctr(&sock, &["version"]).is_ok(),
    )?;
    let images = ["pause.tar", "busybox.tar"]
        .iter()
        .map(|i| opts.images_dir.join(i))
        .chain(opts.extra_images.iter().cloned());
    for archive in images {
        ctr(&sock, &["images", "import", &archive.to_string_lossy()]).map_err(|e| {
            format!(
                "importing {} into containerd of node{n}: {e}",
                archive.display()
            )
        })?;
    }

    let name = &node.name;
    pki.issue(
        &format!("kubelet-node{n}"),
        &format!("/O=system:nodes/CN=system:node:{name}"),
        None,
    )?;
    let kc = node_dir.join("kubelet.kubeconfig");
    pki.kubeconfig(&kc, server, &format!("kubelet-node{n}"))?;
    let kubelet_cg = format!("{}/node{n}", cluster.cgroup);
    host::create_cgroup(&kubelet_cg)?;
    let config = node_dir.join("kubelet.yaml");
    let kubelet_config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "containerRuntimeEndpoint": format!("unix://{}", cn.containerd.display()),
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": true,
        "cgroupRoot": kubelet_cg,
        "failSwapOn": false,
        "oomScoreAdj": 0,
        "podLogsDir": node_dir.join("pod-logs"),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": pki.path("ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "serializeImagePulls": false,
        "maxPods": 60,
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "resolvConf": "/etc/resolv.conf",
        "clusterDNS": [dns::DNS_SERVICE_IP],
        "clusterDomain": dns::CLUSTER_DOMAIN,
    });
    fs::write(
        &config,
        serde_json::to_vec_pretty(&kubelet_config).expect("json"),
    )
    .map_err(|e| e.to_string())?;
    let wrapper = vec![
        "nsenter".to_string(),
        format!("--mount=/proc/{holder}/ns/mnt"),
        format!("--uts=/proc/{holder}/ns/uts"),
        format!("--net={}", netns.display()),
        "--".into(),
    ];
    start(
        state,
        cluster,
        &format!("kubelet of node{n}"),
        &runtime_cg,
        &wrapper,
        &opts.bin_dir.join("kubelet"),
        &[
            format!("--config={}", config.display()),
            format!("--kubeconfig={}", kc.display()),
            format!("--hostname-override={name}"),
            match &node.ipv6 {
                Some(v6) if opts.cluster_cidr6.is_some() => format!("--node-ip={},{v6}", cn.ip),
                _ => format!("--node-ip={}", cn.ip),
            },
            format!("--root-dir={}", cn.kubelet_dir.display()),
            format!("--cert-dir={}", node_dir.join("kubelet-pki").display()),
            format!(
                "--node-labels=topology.kubernetes.io/zone={},node.kubernetes.io/instance-type={}",
                node.zone, node.instance_type
            ),
            "--v=1".into(),
        ],
    )
}

fn containerd_config(root: &Path, sock: &Path, cni_bin: &Path, netd: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{netd}"
    max_conf_num = 1
"#,
        root = root.display(),
        sock = sock.display(),
        cni_bin = cni_bin.display(),
        netd = netd.display(),
    )
}

/// Runs `ctr` against one node's containerd, in the `k8s.io` namespace.
fn ctr(sock: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(sock)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ctr: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Starts a process of the cluster in its own process group, inside the
/// cgroup `cgroup`, through `wrapper` (a command line that enters the
/// node's namespaces and execs the program: the pid stays the program's),
/// and records it.
fn start(
    state: &Path,
    cluster: &mut Cluster,
    name: &str,
    cgroup: &str,
    wrapper: &[String],
    program: &Path,
    args: &[String],
) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let log_name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let log = cluster_dir(state).join(format!("{log_name}.log"));
    let file = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {name} ({}): {e}", program.display()))?;
    let proc = Proc {
        name: name.to_string(),
        pid: child.id(),
        program: program.to_path_buf(),
        log,
        args: args.to_vec(),
        cgroup: cgroup.to_string(),
        wrapper: wrapper.to_vec(),
    };
    cluster.procs.push(proc);
    cluster.save(state)?;
    host::join_cgroup(cgroup, child.id())
}

/// Polls `ready` until it holds; fails naming `what` when time runs out or
/// a process of the cluster died meanwhile.
fn wait(
    cluster: &Cluster,
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return Ok(());
        }
        cluster.check_running()?;
        if Instant::now() > deadline {
            let log = cluster
                .procs
                .iter()
                .find(|p| p.name == what)
                .map(|p| failure(p, "is not ready"))
                .unwrap_or_default();
            return Err(format!(
                "{what} not ready within {} s\n{log}",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether a process runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    alive_at(Path::new(&format!("/proc/{pid}/stat")))
}

/// Whether the process or thread whose `stat` file is `stat` runs.
pub(crate) fn alive_at(stat: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(stat) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

fn node_registered(nodes: &Value, name: &str) -> bool {
    nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| n["metadata"]["name"] == name)
}

/// Waits until every node of `names` is Ready (its runtime found a CNI
/// configuration); fails naming the nodes that are not, or a process of
/// the cluster that died.
pub fn wait_nodes_ready(
    state: &Path,
    kubectl: &Kubectl,
    names: &[String],
    limit: Duration,
) -> Result<(), String> {
    wait_for(state, "the nodes' network (node Ready)", limit, || {
        kubectl
            .json(&["get", "nodes"])
            .map(|v| names.iter().all(|n| node_ready(&v, n)))
            .unwrap_or(false)
    })
    .map_err(|e| {
        format!(
            "{e}\n{}",
            kubectl
                .run(&["get", "nodes", "-o", "wide"])
                .unwrap_or_default()
        )
    })
}

/// Polls `ready` until it holds, as `up` waits for its components: fails
/// when `limit` is over or a process of the cluster in `state` died.
pub fn wait_for(
    state: &Path,
    what: &str,
    limit: Duration,
    ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let cluster = Cluster::load(state).ok_or_else(|| "no cluster recorded".to_string())?;
    wait(&cluster, what, limit, ready)
}

/// Whether the node `name` is Ready in `kubectl get nodes -o json`.
pub fn node_ready(nodes: &Value, name: &str) -> bool {
    nodes["items"].as_array().into_iter().flatten().any(|n| {
        n["metadata"]["name"] == name
            && n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// A /24 of 100.64.0.0/10 that no address or route of the host touches,
/// picked from the tag so that two clusters differ.
fn management_prefix(tag: &str) -> Result<String, String> {
    let seed = u32::from_str_radix(tag, 16).unwrap_or(0) as usize;
    let addrs = command_output("ip", &["-4", "-o", "addr", "show"])?;
    let routes = command_output("ip", &["-4", "route", "show", "table", "all"])?;
    for k in 0..256 {
        let n = (seed + k * 97) % 16384;
        let prefix = format!("100.{}.{}", 64 + n / 256, n % 256);
        let probe = format!("{prefix}.");
        if !addrs.contains(&probe) && !routes.contains(&probe) {
            return Ok(prefix);
        }
    }
    Err("no free /24 in 100.64.0.0/10 for the management network".into())
}

fn command_output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `s` in single quotes for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn fabric_err(r: Result<(), crate::fabric::FabricError>) -> Result<(), String> {
    r.map_err(|e| e.to_string())
}

/// `kubectl` against one cluster.
#[derive(Clone, Debug)]
pub struct Kubectl {
    /// The binary.
    pub bin: PathBuf,
    /// The kubeconfig.
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    /// `kubectl` for the cluster of the simulation in `state`, with the
    /// binaries in `bin_dir`.
    pub fn new(bin_dir: &Path, state: &Path) -> Kubectl {
        Kubectl {
            bin: bin_dir.join("kubectl"),
            kubeconfig: kubeconfig(state),
        }
    }

    /// Runs kubectl; its stdout, or its stderr as the error.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        self.run_with_input(args, None)
    }

    /// Runs kubectl with `input` on stdin (for `apply -f -`).
    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        use std::io::Write;
        let mut child = Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--request-timeout", "20s"])
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if let Some(text) = input {
            let mut stdin = child.stdin.take().expect("piped");
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Runs kubectl with `-o json` and parses what it prints.
    pub fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.run(&all)?;
        serde_json::from_str(&text).map_err(|e| format!("kubectl {}: {e}", args.join(" ")))
    }
}

/// Tears the cluster of the simulation in `state` down, as far as it got;
/// returns what could not be removed. Nothing to do without a record.
pub fn down(state: &Path) -> Vec<String> {
    // Mount points are absolute.
    let state = &fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    let dir = cluster_dir(state);
    let Some(cluster) = Cluster::load(state) else {
        if dir.exists() {
            let _ = fs::remove_dir_all(&dir);
        }
        let _ = fs::remove_file(kubeconfig(state));
        return Vec::new();
    };
    let mut problems = Vec::new();
    // The pods' namespaces are known by the processes in them: note them
    // before those go.
    let inodes = host::netns_inodes(&cluster.cgroup);
    // The supervisor first, while no start of its is under way: nothing
    // is started again behind the stops below.
    let held = supervise::lock(state);
    let cluster = Cluster::load(state).unwrap_or(cluster);
    for p in cluster
        .procs
        .iter()
        .filter(|p| p.name == supervise::SUPERVISOR && runs(p))
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    drop(held);
    // A process that never made it into the tree is stopped by pid (if the
    // pid is still that program).
    for p in &cluster.procs {
        if runs(p) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    problems.extend(host::destroy_cgroups(
        &cluster.cgroup,
        &cluster.made_cgroups,
    ));
    for p in &cluster.procs {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(p.pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    problems.extend(host::remove_pod_netns(&inodes));
    problems.extend(host::unmount_under(state));
    if let Some(ns) = &cluster.control_plane_netns
        && let Err(e) = ip(&["netns", "del", ns])
        && !e.to_string().contains("No such file")
    {
        problems.push(e.to_string());
    }
    if let Some(bridge) = &cluster.bridge
        && let Err(e) = ip(&["link", "del", bridge])
        && !e.to_string().contains("Cannot find device")
    {
        problems.push(e.to_string());
    }
    if let Err(e) = fs::remove_dir_all(&dir) {
        problems.push(format!("{} left in place: {e}", dir.display()));
    }
    let _ = fs::remove_file(kubeconfig(state));
    problems
}

fn runs(p: &Proc) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{}/cmdline", p.pid)) else {
        return false;
    };
    let name = p
        .program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    alive(p.pid) && String::from_utf8_lossy(&cmdline).contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_nodes_mount_script() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("/it's"), "'/it'\\''s'");
        let out = Command::new("sh")
            .args([
                "-c",
                &format!("printf %s {}", shell_quote("/x y/it's $HOME")),
            ])
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/x y/it's $HOME");
    }

    #[test]
    fn a_nodes_own_directories_are_under_its_cluster_directory() {
        let state = Path::new("/s");
        assert_eq!(
            node_private_dir(state, 2, "/run/vpc-cni"),
            Path::new("/s/k8s/node2/root/run/vpc-cni")
        );
    }
}
