//! The network configuration a runtime writes to the plugin's stdin, with
//! the keys of our own (`agentSocket`, `timeoutSeconds`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{CniError, CniVersion, Dns, codes};

/// Where the agent listens unless the configuration says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/vpc-cni/agent.sock";
/// How long the plugin waits for the agent unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `timeoutSeconds` accepted.
pub const MAX_TIMEOUT_SECONDS: u64 = 600;

/// One attachment named in `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    /// The container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// A validated network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: CniVersion,
    /// `name`, the network name.
    pub name: String,
    /// `agentSocket`.
    pub agent_socket: PathBuf,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// `prevResult`, kept verbatim so nothing of it is lost in a chain.
    pub prev_result: Option<Value>,
    /// `dns`, copied into ADD results.
    pub dns: Option<Dns>,
    /// `cni.dev/valid-attachments`, or libcni's `cni.dev/attachments`.
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// `claimDeletePolicy`: the default for pods that do not say.
    pub claim_delete_policy: super::args::ClaimDeletePolicy,
}

#[derive(Deserialize)]
struct Raw {
    name: Option<String>,
    #[serde(rename = "agentSocket")]
    agent_socket: Option<String>,
    #[serde(rename = "timeoutSeconds")]
    timeout_seconds: Option<u64>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    dns: Option<Dns>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<ValidAttachment>>,
    #[serde(rename = "claimDeletePolicy")]
    claim_delete_policy: Option<String>,
}

impl NetConf {
    /// Parses and validates stdin. Not JSON → 6; a `cniVersion` we do not
    /// speak → 1; anything else wrong → 7.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                codes::DECODING_FAILURE,
                "network configuration is not valid JSON",
            )
            .with_details(e.to_string())
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                codes::DECODING_FAILURE,
                "network configuration must be a JSON object",
            ));
        }
        let cni_version = match value.get("cniVersion") {
            Some(Value::String(s)) => CniVersion::parse(s).ok_or_else(|| {
                CniError::new(
                    codes::INCOMPATIBLE_VERSION,
                    format!("incompatible CNI version {s:?}"),
                )
                .with_details(supported())
            })?,
            Some(_) => return Err(invalid("cniVersion must be a string")),
            None => {
                return Err(
                    CniError::new(codes::INCOMPATIBLE_VERSION, "missing cniVersion")
                        .with_details(supported()),
                );
            }
        };
        let raw: Raw = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;

        let name = raw.name.ok_or_else(|| invalid("missing network name"))?;
        if !is_valid_identifier(&name) {
            return Err(invalid(format!(
                "invalid network name {name:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
            )));
        }
        let agent_socket = match raw.agent_socket {
            None => PathBuf::from(DEFAULT_AGENT_SOCKET),
            Some(p) if p.starts_with('/') => PathBuf::from(p),
            Some(p) => {
                return Err(invalid(format!(
                    "agentSocket {p:?} must be an absolute path"
                )));
            }
        };
        let timeout = match raw.timeout_seconds {
            None => DEFAULT_TIMEOUT,
            Some(s) if (1..=MAX_TIMEOUT_SECONDS).contains(&s) => Duration::from_secs(s),
            Some(s) => {
                return Err(invalid(format!(
                    "timeoutSeconds {s} out of range 1..={MAX_TIMEOUT_SECONDS}"
                )));
            }
        };
        if let Some(prev) = &raw.prev_result
            && !prev.is_object()
        {
            return Err(invalid("prevResult must be an object"));
        }
        Ok(NetConf {
            cni_version,
            name,
            agent_socket,
            timeout,
            prev_result: raw.prev_result,
            dns: raw.dns,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
            claim_delete_policy: match raw.claim_delete_policy {
                None => super::args::ClaimDeletePolicy::Immediate,
                Some(p) => super::args::ClaimDeletePolicy::parse(&p).map_err(invalid)?,
            },
        })
    }

    /// The `cniVersion` of a configuration if it can be read at all: used to
    /// print errors in the caller's version even when parsing failed later.
    pub fn peek_version(bytes: &[u8]) -> Option<CniVersion> {
        #[derive(Deserialize)]
        struct Peek {
            #[serde(rename = "cniVersion")]
            cni_version: String,
        }
        let peek: Peek = serde_json::from_slice(bytes).ok()?;
        CniVersion::parse(&peek.cni_version)
    }
}

/// Whether `s` is a valid network name or container id per the CNI
/// conventions: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn is_valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn supported() -> String {
    let list: Vec<&str> = CniVersion::ALL.iter().map(|v| v.as_str()).collect();
    format!("supported versions: {}", list.join(", "))
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(codes::INVALID_NETWORK_CONFIG, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"vpc","type":"vpc-cni"}"#).expect("ok");
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert!(c.prev_result.is_none());
    }

    #[test]
    fn own_keys_are_read() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"vpc","agentSocket":"/tmp/a.sock","timeoutSeconds":3,
                "cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .expect("ok");
        assert_eq!(c.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(
            c.valid_attachments.expect("attachments")[0].container_id,
            "c1"
        );
    }

    #[test]
    fn valid_attachments_win_over_attachments() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"vpc",
                "cni.dev/attachments":[{"containerID":"old","ifname":"eth0"}],
                "cni.dev/valid-attachments":[{"containerID":"new","ifname":"eth0"}]}"#,
        )
        .expect("ok");
        assert_eq!(
            c.valid_attachments.expect("attachments")[0].container_id,
            "new"
        );
    }

    #[test]
    fn error_codes_follow_the_spec() {
        let code = |s: &str| parse(s).expect_err(s).code;
        assert_eq!(code("not json"), codes::DECODING_FAILURE);
        assert_eq!(code("[1,2]"), codes::DECODING_FAILURE);
        assert_eq!(code(r#"{"name":"vpc"}"#), codes::INCOMPATIBLE_VERSION);
        assert_eq!(
            code(r#"{"cniVersion":"0.2.0","name":"vpc"}"#),
            codes::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0"}"#),
            codes::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"a/b"}"#),
            codes::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"v","agentSocket":"rel.sock"}"#),
            codes::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"v","timeoutSeconds":0}"#),
            codes::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"v","timeoutSeconds":"5"}"#),
            codes::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"v","prevResult":3}"#),
            codes::INVALID_NETWORK_CONFIG
        );
    }

    #[test]
    fn peek_version_survives_other_errors() {
        assert_eq!(
            NetConf::peek_version(br#"{"cniVersion":"0.4.0","name":"bad/name"}"#),
            Some(CniVersion::V0_4_0)
        );
        assert_eq!(NetConf::peek_version(b"garbage"), None);
    }

    #[test]
    fn identifiers() {
        for ok in ["a", "abc-1.2_3", "0abc", "ABCdef0123456789"] {
            assert!(is_valid_identifier(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "a:b"] {
            assert!(!is_valid_identifier(bad), "{bad}");
        }
    }
}
