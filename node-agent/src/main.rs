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
