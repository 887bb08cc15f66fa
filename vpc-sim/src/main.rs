//! `vpc-sim`: a simulated multi-node VPC on one Linux machine.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vpc-sim",
    version,
    about = "A simulated VPC with real links: nodes, ENIs and vpc-cni agents on one machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the fabric and N nodes, each with its vpc-cni agent; returns once all are ready.
    Up(commands::up::UpArgs),
    /// Stop the agents and remove everything `up` made.
    Down(commands::down::DownArgs),
    /// Up with 2 nodes, pods through the real vpc-cni, ping checks, teardown.
    Demo(commands::demo::DemoArgs),
    /// Serve the Tencent Cloud VPC API and instance metadata for a world.
    Serve(commands::serve::ServeArgs),
    /// Print the table of a Kubernetes e2e run (Ginkgo's JSON report); fails unless all passed.
    E2eReport(commands::e2e_report::E2eReportArgs),
    /// Print what the VPC's source/destination check caught; `on`/`off` switches it.
    SourceCheck(commands::source_check::SourceCheckArgs),
    /// Kubernetes mode: SIGKILL a control-plane process and start it again with the same arguments.
    Restart(commands::faults::RestartArgs),
    /// Kubernetes mode: switch a node off (its kubelet, containerd and every pod killed at once).
    PowerOff(commands::faults::PowerOffArgs),
    /// Kubernetes mode: start kube-controller-manager and kube-scheduler again when they exit (run by `up`).
    #[command(hide = true)]
    Supervise(commands::faults::SuperviseArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Up(args) => commands::up::run(args),
        Command::Down(args) => commands::down::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::E2eReport(args) => commands::e2e_report::run(args),
        Command::SourceCheck(args) => commands::source_check::run(args),
        Command::Restart(args) => commands::faults::restart(args),
        Command::PowerOff(args) => commands::faults::power_off(args),
        Command::Supervise(args) => commands::faults::supervise(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpc-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
