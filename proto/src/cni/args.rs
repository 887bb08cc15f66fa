//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, as the CNI conventions
//! define them, with the keys Kubernetes runtimes send.

use super::{CniError, codes};

/// The pod a CNI call is for, as the runtime names it in `CNI_ARGS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodArgs {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub name: Option<String>,
    /// `K8S_POD_UID`.
    pub uid: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub infra_container_id: Option<String>,
}

/// Parsed `CNI_ARGS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// The Kubernetes pod keys.
    pub pod: PodArgs,
    /// `VPC_IP_CLAIM_DELETE_POLICY`: `Never` keeps the pod's IP across its
    /// sandboxes (a static IP), `Immediate` releases it at DEL.
    pub claim_delete_policy: Option<ClaimDeletePolicy>,
    /// `VPC_IP_CLAIM_EXPIRED_DURATION`: how long a static IP stays reserved
    /// once the pod is gone.
    pub claim_expired_duration: Option<std::time::Duration>,
    /// `VPC_IP_CLAIM_REQUESTED_IP`: the address of the subnet the pod asks
    /// for; it implies a static IP (needs the pod's namespace and name).
    pub requested_ip: Option<std::net::Ipv4Addr>,
    /// `K8S_POD_OWNER_KIND`, `K8S_POD_OWNER_NAME`, `K8S_POD_OWNER_UID`: the
    /// workload owning the pod, all three or none.
    pub owner: Option<(String, String, String)>,
    /// Whether `IgnoreUnknown` was set to a true value.
    pub ignore_unknown: bool,
}

impl CniArgs {
    /// Parses `CNI_ARGS`. An unknown key is an error unless `IgnoreUnknown`
    /// is true; a pair without `=` is always an error.
    pub fn parse(raw: &str) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        let (mut owner_kind, mut owner_name, mut owner_uid) = (None, None, None);
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(bad(format!(
                    "CNI_ARGS: invalid pair {pair:?}, expected KEY=VALUE"
                )));
            };
            let value = value.to_string();
            match key {
                "K8S_POD_NAMESPACE" => args.pod.namespace = Some(value),
                "K8S_POD_NAME" => args.pod.name = Some(value),
                "K8S_POD_UID" => args.pod.uid = Some(value),
                "K8S_POD_INFRA_CONTAINER_ID" => args.pod.infra_container_id = Some(value),
                "IgnoreUnknown" => args.ignore_unknown = parse_bool(&value)?,
                "K8S_POD_OWNER_KIND" => owner_kind = Some(value),
                "K8S_POD_OWNER_NAME" => owner_name = Some(value),
                "K8S_POD_OWNER_UID" => owner_uid = Some(value),
                "VPC_IP_CLAIM_DELETE_POLICY" => {
                    args.claim_delete_policy = Some(ClaimDeletePolicy::parse(&value).map_err(bad)?)
                }
                "VPC_IP_CLAIM_EXPIRED_DURATION" => {
                    args.claim_expired_duration =
                        Some(crate::duration::parse(&value).map_err(|e| {
                            bad(format!("CNI_ARGS: VPC_IP_CLAIM_EXPIRED_DURATION: {e}"))
                        })?)
                }
                "VPC_IP_CLAIM_REQUESTED_IP" => {
                    args.requested_ip = Some(value.trim().parse().map_err(|_| {
                        bad(format!(
                            "CNI_ARGS: VPC_IP_CLAIM_REQUESTED_IP={value:?} is not an IPv4 address"
                        ))
                    })?)
                }
                _ => unknown.push(key.to_string()),
            }
        }
        match (owner_kind, owner_name, owner_uid) {
            (Some(k), Some(n), Some(u)) => args.owner = Some((k, n, u)),
            (None, None, None) => {}
            _ => {
                return Err(bad(
                    "CNI_ARGS: K8S_POD_OWNER_KIND, K8S_POD_OWNER_NAME and K8S_POD_OWNER_UID go together".into(),
                ));
            }
        }
        if args.requested_ip.is_some() {
            if args.claim_delete_policy == Some(ClaimDeletePolicy::Immediate) {
                return Err(bad(
                    "CNI_ARGS: VPC_IP_CLAIM_REQUESTED_IP asks for a static IP, but VPC_IP_CLAIM_DELETE_POLICY is Immediate".into(),
                ));
            }
            if args.pod.namespace.is_none() || args.pod.name.is_none() {
                return Err(bad(
                    "CNI_ARGS: VPC_IP_CLAIM_REQUESTED_IP needs K8S_POD_NAMESPACE and K8S_POD_NAME (the address is claimed for the pod)".into(),
                ));
            }
        }
        if !unknown.is_empty() && !args.ignore_unknown {
            return Err(bad(format!(
                "CNI_ARGS: unknown keys [{}] (set IgnoreUnknown=1 to accept them)",
                unknown.join(", ")
            )));
        }
        Ok(args)
    }
}

/// When a pod's IP claim ends (TKE's `vpc-ip-claim-delete-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimDeletePolicy {
    /// At DEL: the IP goes back to the pool.
    Immediate,
    /// Never at DEL: the IP stays the pod's (a static IP).
    Never,
}

impl ClaimDeletePolicy {
    /// Parses `Immediate` or `Never`.
    pub fn parse(s: &str) -> Result<ClaimDeletePolicy, String> {
        match s {
            "Immediate" => Ok(ClaimDeletePolicy::Immediate),
            "Never" => Ok(ClaimDeletePolicy::Never),
            other => Err(format!(
                "claim delete policy {other:?} is neither Immediate nor Never"
            )),
        }
    }
}

fn parse_bool(value: &str) -> Result<bool, CniError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(bad(format!(
            "CNI_ARGS: IgnoreUnknown={value:?} is not a boolean"
        ))),
    }
}

fn bad(msg: String) -> CniError {
    CniError::new(codes::INVALID_ENVIRONMENT, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1",
        )
        .expect("parse");
        assert_eq!(a.pod.namespace.as_deref(), Some("default"));
        assert_eq!(a.pod.name.as_deref(), Some("web-0"));
        assert_eq!(a.pod.uid.as_deref(), Some("u-1"));
        assert_eq!(a.pod.infra_container_id.as_deref(), Some("abc"));
        assert!(a.ignore_unknown);
    }

    #[test]
    fn static_ip_keys() {
        let a = CniArgs::parse("VPC_IP_CLAIM_DELETE_POLICY=Never;VPC_IP_CLAIM_EXPIRED_DURATION=2h")
            .expect("parse");
        assert_eq!(a.claim_delete_policy, Some(ClaimDeletePolicy::Never));
        assert_eq!(
            a.claim_expired_duration,
            Some(std::time::Duration::from_secs(7200))
        );
        assert!(CniArgs::parse("VPC_IP_CLAIM_DELETE_POLICY=Sometimes").is_err());
        assert!(CniArgs::parse("VPC_IP_CLAIM_EXPIRED_DURATION=soon").is_err());
    }

    #[test]
    fn a_requested_ip_is_an_address_for_a_named_static_pod() {
        let a = CniArgs::parse(
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;VPC_IP_CLAIM_REQUESTED_IP=10.0.1.20",
        )
        .expect("parse");
        assert_eq!(a.requested_ip, Some(std::net::Ipv4Addr::new(10, 0, 1, 20)));
        for (raw, names) in [
            (
                "K8S_POD_NAMESPACE=d;K8S_POD_NAME=p;VPC_IP_CLAIM_REQUESTED_IP=10.0.1",
                "is not an IPv4 address",
            ),
            (
                "K8S_POD_NAMESPACE=d;K8S_POD_NAME=p;VPC_IP_CLAIM_REQUESTED_IP=10.0.1.20;VPC_IP_CLAIM_DELETE_POLICY=Immediate",
                "Immediate",
            ),
            ("VPC_IP_CLAIM_REQUESTED_IP=10.0.1.20", "K8S_POD_NAME"),
        ] {
            let e = CniArgs::parse(raw).expect_err(raw);
            assert_eq!(e.code, codes::INVALID_ENVIRONMENT);
            assert!(
                e.msg.contains("VPC_IP_CLAIM_REQUESTED_IP") && e.msg.contains(names),
                "{}",
                e.msg
            );
        }
    }

    #[test]
    fn empty_is_fine() {
        assert_eq!(CniArgs::parse("").expect("parse"), CniArgs::default());
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        let e = CniArgs::parse("FOO=bar").expect_err("unknown");
        assert_eq!(e.code, codes::INVALID_ENVIRONMENT);
        assert!(e.msg.contains("FOO"));
        assert!(CniArgs::parse("FOO=bar;IgnoreUnknown=true").is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=0;FOO=bar").is_err());
    }

    #[test]
    fn malformed_pairs_and_bools_are_errors() {
        assert!(CniArgs::parse("K8S_POD_NAME").is_err());
        assert!(CniArgs::parse("IgnoreUnknown=maybe").is_err());
    }

    #[test]
    fn value_may_contain_equals() {
        let a = CniArgs::parse("K8S_POD_NAME=a=b").expect("parse");
        assert_eq!(a.pod.name.as_deref(), Some("a=b"));
    }
}
