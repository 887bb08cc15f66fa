//! `vpc-cni-agent run`: open the store, restore the pool, listen.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tracing::level_filters::LevelFilter;
use tracing::{error, info};

use crate::agent::{Agent, AgentConfig, StartError, system_clock};
use crate::cloud::{Cloud, SimCloud};
use crate::dataplane::{Dataplane, FakeDataplane, NetlinkDataplane};
use crate::logging::{self, LogFormat};
use crate::server::{self, ServerConfig};
use crate::store::RedbStore;
use vpc_sim::world::NodeLimits;

/// Which dataplane programs the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataplaneKind {
    /// Program veths, addresses, routes and rules over netlink.
    Netlink,
    /// Touch nothing; record what would be done (development and tests).
    Fake,
}

/// Flags of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Unix socket the CNI plugin talks to.
    #[arg(long, default_value = proto::cni::config::DEFAULT_AGENT_SOCKET)]
    socket: PathBuf,
    /// Directory of the crash-safe state store.
    #[arg(long, default_value = "/var/lib/vpc-cni")]
    state_dir: PathBuf,
    /// How long a released IP rests before another pod may get it.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    ip_cooldown: Duration,
    /// Free IPs the pool keeps ready for new pods.
    #[arg(long, default_value_t = 4)]
    warm_ip_target: usize,
    /// The dataplane.
    #[arg(long, value_enum, default_value = "netlink")]
    dataplane: DataplaneKind,
    /// The network namespace to program as "the node" (default: the agent's own).
    #[arg(long)]
    node_netns: Option<PathBuf>,
    /// The simulated VPC's shared state file (written by `vpc-sim up`);
    /// default: a single-node VPC of this agent's own in the state directory.
    #[arg(long)]
    sim_state: Option<PathBuf>,
    /// This node's instance id in the simulated VPC.
    #[arg(long)]
    instance_id: Option<String>,
    /// Own single-node VPC: ENIs per node, the primary included.
    #[arg(long, default_value_t = NodeLimits::default().max_enis)]
    sim_max_enis: u32,
    /// Own single-node VPC: IPs per ENI, its primary IP included.
    #[arg(long, default_value_t = NodeLimits::default().max_ips_per_eni)]
    sim_ips_per_eni: u32,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> Result<(), String> {
    logging::init(args.log_format, args.log_level);
    if args.sim_max_enis < 2 || args.sim_ips_per_eni < 2 {
        return Err("--sim-max-enis and --sim-ips-per-eni must be at least 2".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime
        .block_on(serve(args))
        .inspect_err(|e| error!(error = %e, "agent stopped"))
}

async fn serve(args: RunArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", args.state_dir.display()))?;
    let store = RedbStore::open(&args.state_dir.join("state.redb")).map_err(|e| e.to_string())?;
    let limits = NodeLimits {
        max_enis: args.sim_max_enis,
        max_ips_per_eni: args.sim_ips_per_eni,
    };
    let sim_state = args
        .sim_state
        .clone()
        .unwrap_or_else(|| args.state_dir.join("sim-vpc.json"));
    let cloud = SimCloud::open(&sim_state, args.instance_id.as_deref(), limits)
        .map_err(|e| e.to_string())?;
    let config = AgentConfig {
        ip_cooldown: args.ip_cooldown,
        warm_ip_target: args.warm_ip_target,
    };
    let store = Box::new(store);
    match args.dataplane {
        DataplaneKind::Netlink => {
            let dataplane =
                NetlinkDataplane::new(args.node_netns.as_deref()).map_err(|e| e.to_string())?;
            listen(
                args,
                Agent::start(cloud, dataplane, store, config, system_clock()).await,
            )
            .await
        }
        DataplaneKind::Fake => {
            let dataplane = FakeDataplane::default();
            listen(
                args,
                Agent::start(cloud, dataplane, store, config, system_clock()).await,
            )
            .await
        }
    }
}

async fn listen<C: Cloud, D: Dataplane>(
    args: RunArgs,
    agent: Result<Agent<C, D>, StartError>,
) -> Result<(), String> {
    let agent = Arc::new(agent.map_err(|e| e.to_string())?);
    let listener = server::bind(&args.socket).map_err(|e| e.to_string())?;
    info!(socket = %args.socket.display(), state_dir = %args.state_dir.display(), "agent ready");
    let warm = tokio::spawn(Arc::clone(&agent).maintain_pool(Duration::from_secs(30)));
    server::serve(listener, agent, ServerConfig::default(), shutdown_signal()).await;
    warm.abort();
    let _ = std::fs::remove_file(&args.socket);
    info!("agent stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
}
