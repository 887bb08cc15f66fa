//! `vpc-cni-agent uninstall`: removes from the node what the agent
//! programs for the node as a whole and no pod's DEL takes away: its
//! nftables table (`table ip vpc-cni`: the connmark chain, and the egress
//! masquerade's chain and set) and its policy rules (the connmark's
//! `fwmark` rule and the egress rules). Run it after the agent is stopped
//! for good (a DaemonSet's pre-stop or clean-up job); a later start
//! programs them again.

use std::path::PathBuf;

use clap::Args;
use tracing::info;
use tracing::level_filters::LevelFilter;

use crate::logging::{self, LogFormat};

/// Flags of `uninstall`.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The network namespace programmed as the node (default: our own).
    #[arg(long)]
    node_netns: Option<PathBuf>,
}

/// Removes the table and rules; nothing to remove is success.
pub fn run(args: UninstallArgs) -> Result<(), String> {
    logging::init(LogFormat::Text, LevelFilter::INFO);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime
        .block_on(crate::dataplane::remove_egress(args.node_netns.as_deref()))
        .map_err(|e| e.to_string())?;
    info!("connmark and egress masquerade table and rules removed");
    Ok(())
}
