//! CNI specification 1.1.0 types: versions, `CNI_ARGS`, network
//! configuration, results and error codes.

pub mod args;
pub mod config;
pub mod error;
pub mod result;
pub mod version;

pub use args::{CniArgs, PodArgs};
pub use config::NetConf;
pub use error::{CniError, codes};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::CniVersion;
