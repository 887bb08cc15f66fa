//! `vpc-cni-agent uninstall`: removes from the node what the agent
//! programs for the node as a whole and no pod's DEL takes away: its
//! nftables table (`table ip vpc-cni`: the connmark chain, and the egress
//! masquerade's chain and set) and its policy rules (the connmark's
//! `fwmark` rule and the egress rules); with the directory flags, also the
//! files `install-cni` and the agent left on the node: the plugin, the
//! conflist, the store and the socket. Run it after the agent is stopped
//! for good (`deploy/uninstall/node-cleanup.yaml` runs it on every node); a
//! later start programs everything again.
//!
//! The reference `portmap` plugin `install-cni` copied beside the plugin
//! stays: another network's conflist may chain it too.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use clap::Args;
use tracing::info;
use tracing::level_filters::LevelFilter;

use crate::logging::{self, LogFormat};

/// The plugin's file name in the CNI bin directory.
const PLUGIN: &str = "vpc-cni";

/// Flags of `uninstall`.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The network namespace programmed as the node (default: our own).
    #[arg(long)]
    node_netns: Option<PathBuf>,
    /// The node's CNI bin directory: its `vpc-cni` plugin is removed.
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
    /// The node's CNI configuration directory: the conflist `install-cni`
    /// wrote there is removed (its file name: that of `--conflist`).
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// The conflist `install-cni` installed, by its file name.
    #[arg(long, default_value = super::install::DEFAULT_CONFLIST)]
    conflist: PathBuf,
    /// The agent's state directory: everything in it is removed (the
    /// directory itself stays, it may be a mount point).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The agent's socket directory: emptied like `--state-dir`.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Once done, write `--done-file` and stay running until stopped: with
    /// `--is-done` as its readiness probe, a DaemonSet's pods are Ready
    /// exactly on the nodes that are clean.
    #[arg(long)]
    wait: bool,
    /// Written once everything is removed (with `--wait`).
    #[arg(long, default_value = "/tmp/vpc-cni-node-clean")]
    done_file: PathBuf,
    /// Only tell whether `--done-file` exists (exit status 0) or not (1).
    #[arg(long)]
    is_done: bool,
}

/// Removes the table and rules, then the files named; nothing to remove is
/// success.
pub fn run(args: UninstallArgs) -> Result<(), String> {
    if args.is_done {
        return if args.done_file.exists() {
            Ok(())
        } else {
            Err(format!("{} does not exist yet", args.done_file.display()))
        };
    }
    logging::init(LogFormat::Text, LevelFilter::INFO);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime
        .block_on(crate::dataplane::remove_egress(args.node_netns.as_deref()))
        .map_err(|e| e.to_string())?;
    info!("connmark and egress masquerade table and rules removed");
    remove_files(&args)?;
    if args.wait {
        fs::write(&args.done_file, b"clean\n")
            .map_err(|e| format!("cannot write {}: {e}", args.done_file.display()))?;
        info!("this node is clean; waiting to be stopped");
        loop {
            std::thread::park();
        }
    }
    Ok(())
}

/// The files of `args`' directories; a missing one is already removed.
fn remove_files(args: &UninstallArgs) -> Result<(), String> {
    if let Some(dir) = &args.cni_bin_dir {
        remove_file(&dir.join(PLUGIN))?;
    }
    if let Some(dir) = &args.cni_conf_dir {
        let name = args
            .conflist
            .file_name()
            .ok_or_else(|| format!("{} has no file name", args.conflist.display()))?;
        remove_file(&dir.join(name))?;
    }
    for dir in [&args.state_dir, &args.run_dir].into_iter().flatten() {
        empty_dir(dir)?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), String> {
    match fs::remove_file(path) {
        Ok(()) => {
            info!(path = %path.display(), "removed");
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

fn empty_dir(dir: &Path) -> Result<(), String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .path();
        let removed = if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => info!(path = %path.display(), "removed"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(root: &Path) -> UninstallArgs {
        UninstallArgs {
            node_netns: None,
            cni_bin_dir: Some(root.join("bin")),
            cni_conf_dir: Some(root.join("net.d")),
            conflist: PathBuf::from(super::super::install::DEFAULT_CONFLIST),
            state_dir: Some(root.join("state")),
            run_dir: Some(root.join("run")),
            wait: false,
            done_file: root.join("done"),
            is_done: false,
        }
    }

    #[test]
    fn the_plugin_conflist_store_and_socket_go_and_nothing_else() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        for dir in ["bin", "net.d", "state/sub", "run"] {
            fs::create_dir_all(r.join(dir)).expect("mkdir");
        }
        for file in [
            "bin/vpc-cni",
            "bin/portmap",
            "bin/bridge",
            "net.d/10-vpc-cni.conflist",
            "net.d/05-other.conflist",
            "state/state.redb",
            "state/sub/x",
            "run/agent.sock",
        ] {
            fs::write(r.join(file), b"x").expect("write");
        }
        remove_files(&args(r)).expect("removed");
        let left = |p: &str| r.join(p).exists();
        assert!(!left("bin/vpc-cni") && !left("net.d/10-vpc-cni.conflist"));
        assert!(left("bin/portmap") && left("bin/bridge") && left("net.d/05-other.conflist"));
        assert!(left("state") && left("run"), "the directories stay");
        assert_eq!(fs::read_dir(r.join("state")).expect("dir").count(), 0);
        assert_eq!(fs::read_dir(r.join("run")).expect("dir").count(), 0);
        // Again: nothing left to remove is success.
        remove_files(&args(r)).expect("idempotent");
        fs::remove_dir_all(r.join("state")).expect("rm");
        remove_files(&args(r)).expect("a missing directory is clean");
    }
}
