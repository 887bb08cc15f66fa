//! The types both halves of vpc-cni share: the CNI specification's
//! configuration, arguments, results and errors (`cni`), and the
//! plugin↔agent wire protocol (`wire`, `client`).
//!
//! Everything here is a pure function over bytes and values, except
//! `client`, the one blocking round trip over the agent's Unix socket that
//! both the CNI plugin and the agent's operator CLI use.

pub mod client;
pub mod cni;
pub mod duration;
pub mod wire;
