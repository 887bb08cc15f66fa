//! `vpc-cni-agent`: the per-node daemon (`run`) and the operator CLI.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use node_agent::commands;

#[derive(Debug, Parser)]
#[command(
    name = "vpc-cni-agent",
    version,
    about = "vpc-cni node agent: IPAM, ENIs and pod networking"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent.
    Run(Box<commands::run::RunArgs>),
    /// Show the IP pool: ENIs, IPs and who holds them.
    Pool(commands::pool::PoolArgs),
    /// The pods' IP claims (static IPs among them).
    Claims(commands::claims::ClaimsArgs),
    /// Run the cluster component (one leader-elected replica).
    #[cfg(feature = "kubernetes")]
    Cluster(Box<commands::cluster::ClusterArgs>),
    /// Print the CustomResourceDefinitions (deploy/05-crds.yaml).
    #[cfg(feature = "kubernetes")]
    Crds,
    /// Install the CNI plugin and conflist on the node, atomically (the
    /// DaemonSet's init container).
    InstallCni(commands::install::InstallArgs),
    /// Remove what the agent programs for the whole node (the egress
    /// masquerade table and rules), after the agent stopped for good.
    Uninstall(commands::uninstall::UninstallArgs),
}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => commands::run::run(*args),
        Command::Pool(args) => commands::pool::run(args),
        Command::Claims(args) => commands::claims::run(args),
        #[cfg(feature = "kubernetes")]
        Command::Cluster(args) => commands::cluster::run(*args),
        #[cfg(feature = "kubernetes")]
        Command::Crds => commands::cluster::crds(),
        Command::InstallCni(args) => commands::install::run(args),
        Command::Uninstall(args) => commands::uninstall::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpc-cni-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own arena (up to eight per
/// core), and each keeps what it once held: on a node with 250 pods the
/// agent's own memory was 8.6 MiB, 5.9 MiB with one arena. The agent's
/// threads allocate little and rarely at the same moment, so one arena
/// costs no measurable time (bench/cni-latency). Set before any thread
/// starts; `MALLOC_ARENA_MAX` in the environment still wins.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a malloc tunable; called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
