//! The node agent as a library: the daemon's parts (`agent`, `ipam`,
//! `store`, `cloud`, `dataplane`, ...) and the operator CLI's commands, so
//! that benchmarks and simulations can drive them in-process. The
//! `vpc-cni-agent` binary is a thin `main` over `commands`.

pub mod agent;
pub mod clock;
pub mod cloud;
pub mod cluster_claims;
pub mod commands;
pub mod committer;
pub mod dataplane;
pub mod gateway;
pub mod ipam;
#[cfg(feature = "kubernetes")]
pub mod kube;
pub mod listen;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod phase;
pub mod server;
pub mod sizing;
pub mod store;
