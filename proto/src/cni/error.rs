//! CNI error results: the codes of the specification, ours from 100 up,
//! libcni's generic 999 for a plugin's own bug, and the JSON a plugin
//! prints on failure.

use serde::Serialize;

use super::CniVersion;

/// Error codes. 1–99 are the specification's; 100 and up are ours and each
/// is documented in the README.
pub mod codes {
    /// The configuration's `cniVersion` is not one we speak, or the verb does
    /// not exist in it.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// The container (attachment) is unknown.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A required environment variable is missing or invalid.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Reading stdin or writing stdout failed.
    pub const IO_FAILURE: u32 = 5;
    /// stdin could not be decoded (not JSON, or too large).
    pub const DECODING_FAILURE: u32 = 6;
    /// The network configuration is invalid.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Transient: the agent is unreachable or timed out; try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD right now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The agent answered in a protocol this plugin does not understand.
    pub const AGENT_PROTOCOL: u32 = 100;
    /// No IP can be handed out: the pool is empty and cannot grow.
    pub const NO_IP_AVAILABLE: u32 = 101;
    /// CHECK: the attachment does not match what was set up or reported.
    pub const CHECK_MISMATCH: u32 = 102;
    /// Programming the kernel failed.
    pub const DATAPLANE: u32 = 103;
    /// The agent's state store failed.
    pub const STORE: u32 = 104;
    /// A cloud (VPC API) operation failed.
    pub const CLOUD: u32 = 105;
    /// The agent refused the caller: it is not root, or the socket is not
    /// accessible to it.
    pub const PERMISSION_DENIED: u32 = 106;
    /// Any other failure inside the agent.
    pub const AGENT_INTERNAL: u32 = 107;
    /// `ENILimit`: the VPC's ENI quota is used up and the node has no free IP.
    pub const ENI_LIMIT: u32 = 108;
    /// A static claim's address is lost (taken, or out of this node's reach).
    pub const CLAIM_LOST: u32 = 109;
    /// The plugin itself failed unexpectedly (a bug: it panicked). The
    /// generic internal error of the CNI libraries (libcni's
    /// `types.ErrInternal`).
    pub const PLUGIN_INTERNAL: u32 = 999;
}

/// A CNI error result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    /// The error code (see [`codes`]).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Longer details; may be empty.
    pub details: String,
}

impl CniError {
    /// An error with a code and message and no details.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error JSON for the given `cniVersion`.
    pub fn to_json(&self, version: CniVersion) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Out {
            cni_version: version.as_str(),
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!(r#"{{"cniVersion":"{version}","code":{}}}"#, self.code))
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(codes::TRY_AGAIN_LATER, "agent down").with_details("connect: ENOENT");
        let v: serde_json::Value =
            serde_json::from_str(&e.to_json(CniVersion::V1_0_0)).expect("json");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 11);
        assert_eq!(v["msg"], "agent down");
        assert_eq!(v["details"], "connect: ENOENT");
    }

    #[test]
    fn empty_details_are_omitted() {
        let json = CniError::new(7, "bad").to_json(CniVersion::V1_1_0);
        assert!(!json.contains("details"), "{json}");
    }
}
