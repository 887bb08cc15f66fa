//! Build script of the crates with privileged tests (`node-agent`, `tests`):
//! emits `cfg(privileged)` when those tests can run, so that otherwise they
//! are marked ignored (`#[cfg_attr(not(privileged), ignore = ...)]`) and a
//! test runner reports them skipped, never passed. They can run when the
//! build runs as root (effective uid 0, which is who runs the tests in
//! `scripts/test.sh`), or when `VPC_CNI_PRIVILEGED=1` says so;
//! `VPC_CNI_PRIVILEGED=0` ignores them even as root. A privileged test
//! that is compiled in and cannot run fails.

// A build script speaks to Cargo on stdout.
#![allow(clippy::print_stdout)]

fn main() {
    println!("cargo::rustc-check-cfg=cfg(privileged)");
    println!("cargo::rerun-if-env-changed=VPC_CNI_PRIVILEGED");
    println!("cargo::rerun-if-changed=../build/privileged.rs");
    let privileged = match std::env::var("VPC_CNI_PRIVILEGED").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => effective_uid() == Some(0),
    };
    if privileged {
        println!("cargo::rustc-cfg=privileged");
    }
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective ...`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}
