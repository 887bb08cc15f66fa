//! One plugin invocation: read the environment and stdin, ask the agent,
//! and decide what goes to stdout and the exit status. Pure apart from the
//! agent call and the netns existence check, so it is driven by tests with
//! a fake environment.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::client::{self, CallError};
use proto::cni::args::ClaimDeletePolicy;
use proto::cni::result::addresses_of;
use proto::cni::{CniError, CniResult, CniVersion, Interface, IpConfig, NetConf, Route, codes};
use proto::wire::{
    AddReply, AddRequest, AttachmentKey, CheckRequest, DelRequest, GcAttachment, GcRequest,
    OwnerRef, PodRef, Request, Response, StaticIpRequest, WireError,
};

use crate::env::{self, Command, Invocation};

/// The largest network configuration read from stdin.
pub const MAX_STDIN: usize = 1024 * 1024;

/// What the process prints and how it exits.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The line for stdout: a CNI result or a CNI error.
    pub stdout: Option<String>,
    /// A diagnostic for stderr.
    pub stderr: Option<String>,
    /// Exit non-zero.
    pub failed: bool,
}

/// Runs one invocation. Never unwinds: a panic (a bug) becomes a CNI error
/// with code 999 in the caller's `cniVersion`, so the runtime always reads
/// CNI JSON and a non-zero exit; the panic's own message goes to stderr.
pub fn run(get: &dyn Fn(&str) -> Option<String>, stdin: impl Read) -> Outcome {
    let mut version = CniVersion::LATEST;
    let executed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        execute(get, stdin, &mut version)
    }));
    match executed.unwrap_or_else(|panic| Err(panicked(panic.as_ref()))) {
        Ok(stdout) => Outcome {
            stdout,
            stderr: None,
            failed: false,
        },
        Err(e) => Outcome {
            stdout: Some(e.to_json(version)),
            stderr: Some(e.to_string()),
            failed: true,
        },
    }
}

/// The error for a panic with this payload.
fn panicked(payload: &(dyn std::any::Any + Send)) -> CniError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into());
    CniError::new(codes::PLUGIN_INTERNAL, "vpc-cni failed unexpectedly").with_details(what)
}

fn execute(
    get: &dyn Fn(&str) -> Option<String>,
    stdin: impl Read,
    version: &mut CniVersion,
) -> Result<Option<String>, CniError> {
    let command = env::command(get)?;
    if command == Command::Version {
        return Ok(Some(CniVersion::version_info_json()));
    }
    let stdin = read_capped(stdin)?;
    if let Some(v) = NetConf::peek_version(&stdin) {
        *version = v;
    }
    let inv = env::invocation(command, get)?;
    let conf = NetConf::parse(&stdin)?;
    match command {
        Command::Add => add(&inv, &conf),
        Command::Del => del(&inv, &conf),
        Command::Check => check(&inv, &conf),
        Command::Gc => gc(&conf),
        Command::Status => status(&conf),
        Command::Version => unreachable!("answered above"),
    }
}

fn add(inv: &Invocation, conf: &NetConf) -> Result<Option<String>, CniError> {
    let netns = inv.netns.clone().unwrap_or_default();
    let ns = open_netns(&netns)?;
    let pod = match (&inv.args.pod.namespace, &inv.args.pod.name) {
        (Some(namespace), Some(name)) => Some(PodRef {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: inv.args.pod.uid.clone(),
        }),
        _ => None,
    };
    let deadline = SystemTime::now() + conf.timeout;
    let request = Request::Add(AddRequest {
        key: key(inv, conf),
        netns: netns.clone(),
        pod,
        static_ip: static_ip(inv, conf),
        deadline_ms: deadline
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64),
    });
    match call(conf, &request, codes::TRY_AGAIN_LATER, Some(&ns))? {
        Response::Added(reply) => {
            let result = add_result(&reply, inv, &netns, conf);
            Ok(Some(
                result
                    .to_json(conf.cni_version, conf.prev_result.as_ref())
                    .to_string(),
            ))
        }
        other => Err(unexpected(&other)),
    }
}

/// A static IP for pods that ask (`CNI_ARGS`), or by the configuration's
/// default; only a named pod can keep an IP. A requested address implies
/// one.
fn static_ip(inv: &Invocation, conf: &NetConf) -> Option<StaticIpRequest> {
    let policy = inv
        .args
        .claim_delete_policy
        .unwrap_or(conf.claim_delete_policy);
    let named = inv.args.pod.namespace.is_some() && inv.args.pod.name.is_some();
    let wants = policy == ClaimDeletePolicy::Never || inv.args.requested_ip.is_some();
    (wants && named).then(|| StaticIpRequest {
        expire_after_ms: inv
            .args
            .claim_expired_duration
            .map(|d| d.as_millis() as u64),
        owner: inv
            .args
            .owner
            .clone()
            .map(|(kind, name, uid)| OwnerRef { kind, name, uid }),
        requested_ip: inv.args.requested_ip,
    })
}

fn add_result(reply: &AddReply, inv: &Invocation, netns: &str, conf: &NetConf) -> CniResult {
    let gateway = reply.gateway.to_string();
    // A dual-stack pod's IPv6 address and gateway, when the agent gave one.
    let v6 = reply
        .ipv6
        .zip(reply.gateway_v6)
        .map(|(ip, gw)| (ip, gw.to_string()));
    CniResult {
        interfaces: vec![
            Interface {
                name: reply.host_ifname.clone(),
                mac: Some(reply.host_mac.clone()),
                mtu: Some(reply.mtu),
                sandbox: None,
            },
            Interface {
                name: inv.ifname.clone(),
                mac: Some(reply.pod_mac.clone()),
                mtu: Some(reply.mtu),
                sandbox: Some(netns.to_string()),
            },
        ],
        ips: std::iter::once(IpConfig {
            address: format!("{}/32", reply.ip),
            gateway: Some(gateway.clone()),
            interface: Some(1),
        })
        .chain(v6.as_ref().map(|(ip, gw)| IpConfig {
            address: format!("{ip}/128"),
            gateway: Some(gw.clone()),
            interface: Some(1),
        }))
        .collect(),
        routes: std::iter::once(Route {
            dst: Ipv4Addr::UNSPECIFIED.to_string() + "/0",
            gw: Some(gateway),
        })
        .chain(v6.map(|(_, gw)| Route {
            dst: Ipv6Addr::UNSPECIFIED.to_string() + "/0",
            gw: Some(gw),
        }))
        .collect(),
        dns: conf.dns.clone().unwrap_or_default(),
    }
}

fn del(inv: &Invocation, conf: &NetConf) -> Result<Option<String>, CniError> {
    let request = Request::Del(DelRequest {
        key: key(inv, conf),
        netns: inv.netns.clone(),
    });
    // DEL must work when the namespace is already gone.
    let ns = inv.netns.as_deref().and_then(|p| File::open(p).ok());
    match call(conf, &request, codes::TRY_AGAIN_LATER, ns.as_ref())? {
        Response::Deleted => Ok(None),
        other => Err(unexpected(&other)),
    }
}

fn check(inv: &Invocation, conf: &NetConf) -> Result<Option<String>, CniError> {
    if !conf.cni_version.allows_check() {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            "config version does not allow CHECK",
        ));
    }
    let netns = inv.netns.clone().unwrap_or_default();
    let expected_addresses = conf
        .prev_result
        .as_ref()
        .map(|prev| addresses_of(prev, &inv.ifname, &netns))
        .unwrap_or_default();
    let ns = open_netns(&netns)?;
    let request = Request::Check(CheckRequest {
        key: key(inv, conf),
        netns,
        expected_addresses,
    });
    match call(conf, &request, codes::TRY_AGAIN_LATER, Some(&ns))? {
        Response::Checked => Ok(None),
        other => Err(unexpected(&other)),
    }
}

/// GC and STATUS exist from cniVersion 1.1.0 on.
fn needs_gc_and_status(conf: &NetConf, verb: &str) -> Result<(), CniError> {
    if conf.cni_version.allows_gc_and_status() {
        return Ok(());
    }
    Err(CniError::new(
        codes::INCOMPATIBLE_VERSION,
        format!("config version does not allow {verb}"),
    ))
}

fn gc(conf: &NetConf) -> Result<Option<String>, CniError> {
    needs_gc_and_status(conf, "GC")?;
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            "GC needs cni.dev/valid-attachments (or cni.dev/attachments) in the configuration",
        ));
    };
    let valid = valid
        .iter()
        .map(|a| GcAttachment {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        })
        .collect();
    let request = Request::Gc(GcRequest {
        network: conf.name.clone(),
        valid,
    });
    match call(conf, &request, codes::TRY_AGAIN_LATER, None)? {
        Response::Collected { .. } => Ok(None),
        other => Err(unexpected(&other)),
    }
}

fn status(conf: &NetConf) -> Result<Option<String>, CniError> {
    needs_gc_and_status(conf, "STATUS")?;
    match call(conf, &Request::Status, codes::NOT_AVAILABLE, None)? {
        Response::Status(s) if s.ready => Ok(None),
        Response::Status(s) => Err(CniError::new(
            codes::NOT_AVAILABLE,
            "vpc-cni agent is not ready",
        )
        .with_details(s.reason.unwrap_or_default())),
        other => Err(unexpected(&other)),
    }
}

/// One round trip, passing the pod's namespace along when there is one; a
/// transport failure becomes `unreachable_code` (11 for the attachment
/// verbs, 50 for STATUS), an agent error its own code.
fn call(
    conf: &NetConf,
    request: &Request,
    unreachable_code: u32,
    netns: Option<&File>,
) -> Result<Response, CniError> {
    let fd = netns.map(AsFd::as_fd);
    let reply =
        client::call_with_netns(&conf.agent_socket, request, conf.timeout, fd).map_err(|e| {
            let code = match &e {
                CallError::Unreachable { .. }
                | CallError::Timeout(_)
                | CallError::Wire(WireError::Io(_)) => unreachable_code,
                CallError::PermissionDenied { .. } => codes::PERMISSION_DENIED,
                CallError::Wire(_) => codes::AGENT_PROTOCOL,
            };
            let msg = if matches!(e, CallError::Wire(WireError::ReplyVersion { .. })) {
                "vpc-cni plugin and agent speak incompatible protocol versions"
            } else if code == codes::AGENT_PROTOCOL {
                "bad reply from vpc-cni agent"
            } else {
                "vpc-cni agent unavailable"
            };
            CniError::new(code, msg).with_details(e.to_string())
        })?;
    reply.map_err(|e| {
        let code = if unreachable_code == codes::NOT_AVAILABLE
            && e.kind == proto::wire::ErrorKind::NotReady
        {
            codes::NOT_AVAILABLE
        } else {
            e.kind.cni_code()
        };
        CniError::new(code, e.message)
    })
}

/// Opens `CNI_NETNS` as this process sees it; the agent gets the open
/// descriptor, not the path.
fn open_netns(path: &str) -> Result<File, CniError> {
    File::open(path).map_err(|e| {
        CniError::new(
            codes::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {path:?} cannot be opened: {e}"),
        )
    })
}

fn key(inv: &Invocation, conf: &NetConf) -> AttachmentKey {
    AttachmentKey {
        network: conf.name.clone(),
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
    }
}

fn unexpected(r: &Response) -> CniError {
    CniError::new(
        codes::AGENT_PROTOCOL,
        "vpc-cni agent answered with the wrong reply",
    )
    .with_details(format!("{r:?}"))
}

fn read_capped(stdin: impl Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    stdin
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::new(codes::IO_FAILURE, format!("reading stdin: {e}")))?;
    if buf.len() > MAX_STDIN {
        return Err(CniError::new(
            codes::DECODING_FAILURE,
            format!("network configuration on stdin exceeds {MAX_STDIN} bytes"),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run_with(pairs: &[(&str, &str)], stdin: &str) -> Outcome {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run(&move |k| map.get(k).cloned(), stdin.as_bytes())
    }

    fn code(o: &Outcome) -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(o.stdout.as_deref().expect("stdout")).expect("json");
        v["code"].as_u64().expect("code")
    }

    const DOWN: &str =
        r#"{"cniVersion":"1.1.0","name":"vpc","agentSocket":"/nonexistent/agent.sock"}"#;

    /// Hole 11: a panic left stdout empty (the runtime then reports an
    /// unparsable result) and exited 101.
    #[test]
    fn hole_11_a_panic_is_a_cni_error_in_the_callers_version() {
        let env = |k: &str| match k {
            "CNI_COMMAND" => Some("ADD".to_string()),
            "CNI_CONTAINERID" => panic!("forced while reading {k}"),
            _ => None,
        };
        let stdin = r#"{"cniVersion":"0.4.0","name":"vpc","type":"vpc-cni"}"#;
        let o = run(&env, stdin.as_bytes());
        assert!(o.failed);
        let v: serde_json::Value =
            serde_json::from_str(o.stdout.as_deref().expect("stdout")).expect("CNI JSON");
        assert_eq!(v["code"], 999);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert!(
            v["details"].as_str().is_some_and(|d| d.contains("forced")),
            "{v}"
        );
    }

    #[test]
    fn hole_11_a_panic_before_the_version_is_known_is_a_cni_error_too() {
        struct Exploding;
        impl Read for Exploding {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                panic!("stdin exploded")
            }
        }
        let env = |k: &str| (k == "CNI_COMMAND").then(|| "DEL".to_string());
        let o = run(&env, Exploding);
        assert!(o.failed);
        assert_eq!(code(&o), 999);
    }

    #[test]
    fn a_dual_stack_reply_reports_both_families_and_their_default_routes() {
        let inv = Invocation {
            command: crate::env::Command::Add,
            container_id: "c1".into(),
            netns: Some("/var/run/netns/p".into()),
            ifname: "eth0".into(),
            args: proto::cni::args::CniArgs::default(),
        };
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"vpc","type":"vpc-cni"}"#)
            .expect("conf");
        let mut reply = AddReply {
            ip: "10.0.1.5".parse().expect("an address"),
            gateway: "169.254.1.1".parse().expect("an address"),
            host_ifname: "vpc0123456789a".into(),
            host_mac: "02:00:00:00:00:01".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            mtu: 1500,
            eni_id: "eni-1".into(),
            ipv6: None,
            gateway_v6: None,
        };
        let v4 = add_result(&reply, &inv, "/var/run/netns/p", &conf);
        assert_eq!(v4.ips.len(), 1);
        assert_eq!(v4.routes.len(), 1);
        reply.ipv6 = Some("fd00::5".parse().expect("an address"));
        reply.gateway_v6 = Some("fe80::1".parse().expect("an address"));
        let dual = add_result(&reply, &inv, "/var/run/netns/p", &conf);
        let json = dual.to_json(conf.cni_version, None);
        assert_eq!(json["ips"][0]["address"], "10.0.1.5/32");
        assert_eq!(json["ips"][1]["address"], "fd00::5/128");
        assert_eq!(json["ips"][1]["gateway"], "fe80::1");
        assert_eq!(json["ips"][1]["interface"], 1);
        assert_eq!(json["routes"][1]["dst"], "::/0");
        assert_eq!(json["routes"][1]["gw"], "fe80::1");
    }

    #[test]
    fn version_needs_no_stdin_and_no_agent() {
        let o = run_with(&[("CNI_COMMAND", "VERSION")], "");
        assert!(!o.failed);
        assert!(o.stdout.expect("stdout").contains("supportedVersions"));
    }

    #[test]
    fn garbage_stdin_is_a_decoding_failure() {
        let o = run_with(&[("CNI_COMMAND", "STATUS")], "{{{");
        assert!(o.failed);
        assert_eq!(code(&o), 6);
    }

    #[test]
    fn oversized_stdin_is_refused() {
        let big = format!(
            r#"{{"cniVersion":"1.1.0","name":"vpc","pad":"{}"}}"#,
            "x".repeat(MAX_STDIN)
        );
        let o = run_with(&[("CNI_COMMAND", "STATUS")], &big);
        assert_eq!(code(&o), 6);
    }

    #[test]
    fn agent_down_is_try_again_later_for_del_and_not_available_for_status() {
        let o = run_with(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/x"),
            ],
            DOWN,
        );
        assert_eq!(code(&o), 11);
        let o = run_with(&[("CNI_COMMAND", "STATUS")], DOWN);
        assert_eq!(code(&o), 50);
    }

    #[test]
    fn errors_are_printed_in_the_callers_version() {
        let o = run_with(
            &[("CNI_COMMAND", "ADD")],
            r#"{"cniVersion":"0.4.0","name":"vpc"}"#,
        );
        let v: serde_json::Value =
            serde_json::from_str(o.stdout.as_deref().expect("stdout")).expect("json");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], 4);
    }

    #[test]
    fn gc_and_status_need_1_1_and_check_needs_0_4() {
        let o = run_with(
            &[("CNI_COMMAND", "GC")],
            r#"{"cniVersion":"1.0.0","name":"vpc"}"#,
        );
        assert_eq!(code(&o), 1);
        let o = run_with(
            &[("CNI_COMMAND", "STATUS")],
            r#"{"cniVersion":"0.4.0","name":"vpc"}"#,
        );
        assert_eq!(code(&o), 1);
        let o = run_with(
            &[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/x"),
                ("CNI_NETNS", "/n"),
            ],
            r#"{"cniVersion":"0.3.1","name":"vpc"}"#,
        );
        assert_eq!(code(&o), 1);
    }

    #[test]
    fn gc_without_attachments_is_invalid_config() {
        let o = run_with(
            &[("CNI_COMMAND", "GC")],
            r#"{"cniVersion":"1.1.0","name":"vpc"}"#,
        );
        assert_eq!(code(&o), 7);
    }

    #[test]
    fn add_into_missing_netns_is_bad_environment() {
        let o = run_with(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/x"),
                ("CNI_NETNS", "/nonexistent/ns"),
            ],
            DOWN,
        );
        assert_eq!(code(&o), 4);
    }
}
