//! `restart` and `power-off`: faults injected into a running
//! `up --kubernetes` cluster (see `vpc_sim::k8s::faults`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use vpc_sim::k8s::faults;

use super::demo::say;

/// Flags of `restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The directory given to `up`.
    #[arg(long)]
    pub state: PathBuf,
    /// How long the process stays dead before it is started again.
    #[arg(long, default_value = "0s", value_parser = proto::duration::parse)]
    pub down_for: Duration,
    /// The control-plane process: etcd, kube-apiserver,
    /// kube-controller-manager or kube-scheduler.
    pub component: String,
}

/// Runs `restart`.
pub fn restart(args: RestartArgs) -> Result<(), String> {
    let done = faults::restart(&args.state, &args.component, args.down_for)?;
    say(&format!(
        "{} killed{} and started again as pid {}; ready {:.2} s after the kill",
        args.component,
        done.killed
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_else(|| " (it was not running)".into()),
        done.pid,
        done.outage.as_secs_f64()
    ));
    Ok(())
}

/// Flags of `power-off`.
#[derive(Debug, Args)]
pub struct PowerOffArgs {
    /// The directory given to `up`.
    #[arg(long)]
    pub state: PathBuf,
    /// The node (1-based, as in `NODE<n>_...` of `DIR/env`).
    pub node: usize,
}

/// Runs `power-off`.
pub fn power_off(args: PowerOffArgs) -> Result<(), String> {
    let killed = faults::power_off(&args.state, args.node)?;
    say(&format!(
        "node{} switched off: {killed} processes killed",
        args.node
    ));
    Ok(())
}

/// Flags of `supervise`.
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// The directory given to `up`.
    #[arg(long)]
    pub state: PathBuf,
}

/// Runs `supervise` (started by `up --kubernetes`; stopped by `down`).
pub fn supervise(args: SuperviseArgs) -> Result<(), String> {
    vpc_sim::k8s::supervise::run(&args.state, &say)
}
