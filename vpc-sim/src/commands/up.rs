//! `vpc-sim up`: the fabric, the nodes and one agent per node; with
//! `--kubernetes`, a cluster on the nodes with vpc-cni installed from
//! `deploy/` as a DaemonSet instead of the host-process agents.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use proto::wire::{Request, Response};
use serde::{Deserialize, Serialize};
use vpc_sim::fabric::{Fabric, FabricOptions};
use vpc_sim::model::DEFAULT_ENI_QUOTA;
use vpc_sim::world::{NodeLimits, SharedWorld, World};

use super::sibling_binary;

/// Flags of `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Availability zones (`sim-zone-1`…), one subnet each
    /// (`10.0.16.0/20`, `10.0.32.0/20`, …); node `i` is in zone
    /// `(i - 1) % zones + 1`.
    #[arg(long, default_value_t = 1)]
    pub zones: usize,
    /// Directory for the simulation's state, sockets, logs and `env`; must be empty or absent.
    #[arg(long)]
    pub state: PathBuf,
    /// ENIs per node, the primary included.
    #[arg(long, default_value_t = NodeLimits::default().max_enis)]
    pub max_enis: u32,
    /// IPs per ENI, its primary IP included.
    #[arg(long, default_value_t = NodeLimits::default().max_ips_per_eni)]
    pub ips_per_eni: u32,
    /// ENIs the VPC may hold in all.
    #[arg(long, default_value_t = DEFAULT_ENI_QUOTA)]
    pub eni_quota: u32,
    /// The agent binary (default: next to vpc-sim, else on PATH).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Extra flags for every agent, such as `--ip-cooldown=1s`.
    #[arg(long = "agent-flag", allow_hyphen_values = true)]
    pub agent_flags: Vec<String>,
    /// Also run Kubernetes: a control plane on this machine, a containerd
    /// and a kubelet in every node; kubeconfig at `STATE/kubeconfig`.
    #[arg(long)]
    pub kubernetes: bool,
    /// With `--kubernetes`: kube-proxy's mode on every node (`nftables` or `iptables`).
    #[arg(long, default_value = "nftables")]
    pub proxy_mode: vpc_sim::k8s::ProxyMode,
    /// With `--kubernetes`: also import the images Kubernetes' e2e network
    /// specs run (agnhost and the others, made by scripts/k8s-bins.sh).
    #[arg(long)]
    pub e2e_images: bool,
    /// Where etcd, kube-* and kubectl are (default: the cache of
    /// scripts/k8s-bins.sh, built first when anything is missing).
    #[arg(long)]
    pub k8s_bin_dir: Option<PathBuf>,
    /// With `--kubernetes`: the vpc-cni image archive every node imports
    /// (default: made by scripts/vpc-cni-image.sh from the binaries next
    /// to the agent).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// With `--kubernetes`: more image archives every node imports (such
    /// as another release of vpc-cni under another tag, for an upgrade).
    #[arg(long = "extra-image")]
    pub extra_images: Vec<PathBuf>,
    /// The VPC API's limits the emulator enforces (see `serve --api-limits`).
    #[arg(long, default_value = "documented")]
    pub api_limits: String,
    /// The VPC's source/destination check: `on` drops what leaves an ENI
    /// from an address it does not hold, `off` only counts it (see
    /// `vpc-sim source-check`).
    #[arg(long, default_value = "on")]
    pub source_check: super::source_check::Switch,
    /// The MTU the VPC gives every ENI's link.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1280..=9000))]
    pub eni_mtu: u32,
    /// `dual`: the VPC gets an IPv6 block, every subnet a /64 of it, and
    /// every node's primary ENI an IPv6 address besides its IPv4 one
    /// (configured in the node as a booted instance has it: the address
    /// alone, routed to the VPC's gateway `fe80::1`); the agents run with
    /// `--ip-family dual`, so pods get both families.
    #[arg(long, value_enum, default_value = "ipv4")]
    pub ip_family: IpFamily,
    /// With `--kubernetes`: how vpc-cni is installed, from the plain
    /// manifests of `deploy/` (`kubectl apply`) or with its Helm chart
    /// (`deploy/helm/vpc-cni`, helm built by scripts/k8s-bins.sh).
    #[arg(long, value_enum, default_value = "manifests")]
    pub install: Installer,
}

/// How `up --kubernetes` installs vpc-cni.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Installer {
    /// `kubectl apply -f deploy/` with the ConfigMap's values edited.
    Manifests,
    /// `helm install` of `deploy/helm/vpc-cni` with a values file.
    Helm,
}

/// The address families of a simulated VPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IpFamily {
    /// IPv4 only.
    Ipv4,
    /// IPv4 and IPv6.
    Dual,
}

/// One simulated node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    /// Instance id.
    pub instance: String,
    /// Network namespace name.
    pub netns: String,
    /// The agent's socket.
    pub socket: PathBuf,
    /// A conflist for this node.
    pub conflist: PathBuf,
    /// The agent's pid.
    pub agent_pid: Option<u32>,
    /// The IPv6 address of its primary ENI, in a dual-stack VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

/// What `down` needs: written before any agent starts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sim {
    /// Tag in every namespace name.
    pub tag: String,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The emulator's pid.
    #[serde(default)]
    pub emulator_pid: Option<u32>,
}

/// The file that records a running simulation.
pub fn sim_file(dir: &Path) -> PathBuf {
    dir.join("sim.json")
}

/// The shared VPC state file.
pub fn world_file(dir: &Path) -> PathBuf {
    dir.join("vpc.json")
}

/// Runs `up` and prints where everything is.
pub fn run(args: UpArgs) -> Result<(), String> {
    let sim = up(&args)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "vpc-sim up: {} nodes in {}",
        sim.nodes.len(),
        args.state.display()
    );
    let _ = write!(
        out,
        "{}",
        fs::read_to_string(args.state.join("env")).unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "stop with: vpc-sim down --state {}",
        args.state.display()
    );
    Ok(())
}

/// Brings a simulation up; on failure removes whatever it made.
pub fn up(args: &UpArgs) -> Result<Sim, String> {
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if args.state.exists()
        && fs::read_dir(&args.state)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(format!(
            "{} is not empty (is a simulation already up there?)",
            args.state.display()
        ));
    }
    fs::create_dir_all(&args.state).map_err(|e| format!("{}: {e}", args.state.display()))?;
    let result = build(args);
    if result.is_err() {
        let _ = super::down::down(&args.state);
    }
    result
}

fn build(args: &UpArgs) -> Result<Sim, String> {
    let dir = fs::canonicalize(&args.state).map_err(|e| e.to_string())?;
    let limits = NodeLimits {
        max_enis: args.max_enis,
        max_ips_per_eni: args.ips_per_eni,
    };
    let mut world =
        World::zoned(args.nodes, args.zones, limits, args.eni_quota).map_err(|e| e.to_string())?;
    let blocks6 = if args.ip_family == IpFamily::Dual {
        dual_stack(&mut world).map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let tag = tag();
    let options = FabricOptions {
        source_check: args.source_check == super::source_check::Switch::On,
        mtu: args.eni_mtu,
    };
    let fabric = Fabric::create(&tag, &world.vpc, options).map_err(|e| e.to_string())?;
    fabric.add_blocks6(&blocks6).map_err(|e| e.to_string())?;
    let mut sim = Sim {
        tag,
        emulator_pid: None,
        nodes: world
            .vpc
            .instances
            .keys()
            .enumerate()
            .map(|(i, id)| {
                let node_dir = dir.join(format!("node{}", i + 1));
                Node {
                    instance: id.clone(),
                    netns: fabric.nodes[id].clone(),
                    socket: node_dir.join("agent.sock"),
                    conflist: node_dir.join("10-vpc-cni.conflist"),
                    agent_pid: None,
                    ipv6: world
                        .vpc
                        .enis
                        .values()
                        .find(|e| e.primary && e.attached_to.as_ref() == Some(id))
                        .and_then(|e| e.ipv6_addresses.first())
                        .map(|ip| ip.to_string()),
                }
            })
            .collect(),
    };
    world.fabric = Some(fabric.clone());
    save_sim(&dir, &sim)?;
    // Recorded before anything is plugged, so `down` can undo a half-built one.
    let primaries: Vec<_> = world
        .vpc
        .enis
        .values()
        .filter(|e| e.primary)
        .cloned()
        .collect();
    let vpc = world.vpc.clone();
    SharedWorld::at(&world_file(&dir))
        .create_if_missing(|| Ok(world))
        .map_err(|e| e.to_string())?;
    for eni in &primaries {
        fabric.plug(&vpc, eni).map_err(|e| e.to_string())?;
    }

    if args.kubernetes {
        if !args.agent_flags.is_empty() {
            return Err(
                "--agent-flag has no effect with --kubernetes: the agents run from deploy/ (set their flags in deploy/02-config.yaml)".into(),
            );
        }
        return super::kube::start(&dir, &mut sim, args).map(|()| sim);
    }
    let address = start_emulator(
        &dir,
        &mut sim,
        "127.0.0.1:0",
        &[],
        &args.api_limits,
        "full",
        &[],
    )?;
    let agent = args
        .agent_bin
        .clone()
        .unwrap_or_else(|| sibling_binary("vpc-cni-agent"));
    for i in 0..sim.nodes.len() {
        let node = sim.nodes[i].clone();
        let node_dir = node.socket.parent().expect("node dir").to_path_buf();
        fs::create_dir_all(&node_dir).map_err(|e| e.to_string())?;
        let log = fs::File::create(node_dir.join("agent.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&agent)
            .arg("run")
            .arg("--socket")
            .arg(&node.socket)
            .arg("--state-dir")
            .arg(node_dir.join("state"))
            .arg("--node-netns")
            .arg(Fabric::netns_path(&node.netns))
            .args(["--cloud-endpoint", &format!("http://{address}")])
            .args([
                "--metadata-url",
                &format!("http://{address}/{}", node.instance),
            ])
            .arg("--credentials-file")
            .arg(credentials_file(&dir))
            .args(["--log-format", "json"])
            .args(match args.ip_family {
                IpFamily::Ipv4 => ["--ip-family", "ipv4"],
                IpFamily::Dual => ["--ip-family", "dual"],
            })
            .args(&args.agent_flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", agent.display()))?;
        sim.nodes[i].agent_pid = Some(child.id());
        save_sim(&dir, &sim)?;
        write_conflist(&node)?;
    }
    for node in &sim.nodes {
        wait_ready(node)?;
    }
    write_env(&dir, &sim)?;
    Ok(sim)
}

/// The credentials every agent and the emulator share.
pub fn credentials_file(dir: &Path) -> PathBuf {
    dir.join("credentials")
}

/// Starts `vpc-sim serve` for the world in `dir`, detached, listening on
/// `listen`, with `clients` (address, instance) known to its metadata
/// service, the API's `api_limits` enforced (see `serve --api-limits`) and
/// the instances' role granted `role_policy` (see `serve --role-policy`);
/// returns its address once it listens. `wrapper` (a command line that
/// enters a namespace and execs) puts it beside the control plane.
pub fn start_emulator(
    dir: &Path,
    sim: &mut Sim,
    listen: &str,
    clients: &[(String, String)],
    api_limits: &str,
    role_policy: &str,
    wrapper: &[String],
) -> Result<String, String> {
    let credentials = credentials_file(dir);
    let key = format!("{:016x}{:08x}", nanos(), std::process::id());
    fs::write(
        &credentials,
        format!("SecretId=AKIDvpcsim{}\nSecretKey={key}\n", sim.tag),
    )
    .map_err(|e| e.to_string())?;
    fs::set_permissions(
        &credentials,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(|e| e.to_string())?;
    let address_file = dir.join("emulator.address");
    let log = fs::File::create(dir.join("emulator.log")).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let child = cmd
        .arg("serve")
        .arg("--world")
        .arg(world_file(dir))
        .arg("--credentials")
        .arg(&credentials)
        .arg("--address-file")
        .arg(&address_file)
        .args(["--listen", listen])
        .args(clients.iter().flat_map(|(ip, instance)| {
            ["--metadata-client".to_string(), format!("{ip}={instance}")]
        }))
        .arg("--api-limits")
        .arg(api_limits)
        .args(["--role-policy", role_policy])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the emulator: {e}"))?;
    sim.emulator_pid = Some(child.id());
    save_sim(dir, sim)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fs::read_to_string(&address_file) {
            Ok(a) if !a.is_empty() => return Ok(a),
            _ if Instant::now() > deadline => {
                return Err("the emulator did not start within 10 s".into());
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn wait_ready(node: &Node) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match proto::client::call(&node.socket, &Request::Status, Duration::from_secs(2)) {
            Ok(Ok(Response::Status(s))) if s.ready => return Ok(()),
            _ if Instant::now() > deadline => {
                let log = node.socket.with_file_name("agent.log");
                let tail = fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                return Err(format!(
                    "agent of {} not ready within 30 s; last log lines ({}):\n{}",
                    node.instance,
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

pub fn write_conflist(node: &Node) -> Result<(), String> {
    // 1.0.0: what libcni before 1.2 (containerd 1.7, podman 4) and the
    // reference plugins of Debian 12 understand.
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "vpc-cni",
        "plugins": [{"type": "vpc-cni", "agentSocket": node.socket, "timeoutSeconds": 30}],
    });
    fs::write(
        &node.conflist,
        serde_json::to_vec_pretty(&conf).expect("json"),
    )
    .map_err(|e| e.to_string())
}

pub fn write_env(dir: &Path, sim: &Sim) -> Result<(), String> {
    let mut env = String::new();
    env.push_str(&format!("VPCSIM_NODES={}\n", sim.nodes.len()));
    for (i, node) in sim.nodes.iter().enumerate() {
        let n = i + 1;
        env.push_str(&format!("NODE{n}_INSTANCE={}\n", node.instance));
        env.push_str(&format!(
            "NODE{n}_NETNS={}\n",
            Fabric::netns_path(&node.netns).display()
        ));
        env.push_str(&format!("NODE{n}_SOCKET={}\n", node.socket.display()));
        env.push_str(&format!("NODE{n}_CONFLIST={}\n", node.conflist.display()));
        if let Some(v6) = &node.ipv6 {
            env.push_str(&format!("NODE{n}_IPV6={v6}\n"));
        }
    }
    // The host beyond the VPC router (see `fabric`).
    env.push_str(&format!(
        "OUTSIDE_NETNS={}\nOUTSIDE_HOST={}\n",
        Fabric::netns_path(&format!("vpcsim-{}-out", sim.tag)).display(),
        vpc_sim::fabric::OUTSIDE_HOST
    ));
    fs::write(dir.join("env"), env).map_err(|e| e.to_string())
}

/// A dual-stack VPC: its IPv6 block, a /64 of it for each subnet (the
/// `i`th subnet `…:9a<i>::/64`), an IPv6 address for each primary ENI; the
/// subnets' blocks, for the fabric.
fn dual_stack(world: &mut World) -> Result<Vec<vpc_sim::ipv6::Cidr6>, vpc_sim::model::ModelError> {
    let block = world.vpc.assign_ipv6_block()?;
    let base = u128::from(block.network);
    let pairs: Vec<(String, String)> = world
        .vpc
        .subnets
        .keys()
        .enumerate()
        .map(|(i, id)| {
            let network = std::net::Ipv6Addr::from(base + ((i as u128 + 1) << 64));
            (id.clone(), format!("{network}/64"))
        })
        .collect();
    let done = world.vpc.assign_subnet_ipv6_blocks(&pairs)?;
    let primaries: Vec<String> = world
        .vpc
        .enis
        .values()
        .filter(|e| e.primary)
        .map(|e| e.id.clone())
        .collect();
    for eni in primaries {
        world.vpc.assign_ipv6(&eni, &[], 1)?;
    }
    Ok(done.into_iter().map(|(_, c)| c).collect())
}

pub fn save_sim(dir: &Path, sim: &Sim) -> Result<(), String> {
    fs::write(sim_file(dir), serde_json::to_vec_pretty(sim).expect("json"))
        .map_err(|e| e.to_string())
}

fn tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:06x}",
        (nanos ^ std::process::id().rotate_left(12)) & 0xff_ffff
    )
}
