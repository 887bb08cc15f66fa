//! One file per subcommand, and what they share.

pub mod demo;
pub mod down;
pub mod e2e_report;
pub mod faults;
pub mod kube;
pub mod kube_demo;
pub mod serve;
pub mod source_check;
pub mod up;

use std::path::PathBuf;

/// A binary of this workspace: next to `vpc-sim` itself, else on `PATH`.
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}
