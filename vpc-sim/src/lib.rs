//! The simulated VPC: a model of the cloud's VPC (`model`), the Linux
//! fabric that makes its ENIs real links in node network namespaces
//! (`fabric`), and the shared, locked state both live in (`world`).

pub mod fabric;
pub mod model;
pub mod world;
