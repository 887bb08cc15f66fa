//! The simulated VPC: a model of the cloud's VPC (`model`), the Linux
//! fabric that makes its ENIs real links in node network namespaces
//! (`fabric`), the shared, locked state both live in (`world`), and the
//! Tencent Cloud VPC API emulator in front of them (`api`); `probe` sends
//! and receives UDP inside namespaces to show which address arrives.

pub mod api;
pub mod fabric;
pub mod ipv6;
pub mod k8s;
pub mod model;
pub mod probe;
pub mod world;
