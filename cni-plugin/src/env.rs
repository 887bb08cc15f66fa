//! The environment a runtime sets for a plugin: parsed and validated as the
//! CNI specification and its conventions require.

use proto::cni::config::is_valid_identifier;
use proto::cni::{CniArgs, CniError, codes};

/// The verb in `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// ADD.
    Add,
    /// DEL.
    Del,
    /// CHECK.
    Check,
    /// GC.
    Gc,
    /// STATUS.
    Status,
    /// VERSION.
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// Whether the verb acts on one attachment (and so needs its id,
    /// interface and `CNI_PATH`).
    fn per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// A validated invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// The verb.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for GC and STATUS).
    pub container_id: String,
    /// `CNI_NETNS`, if set.
    pub netns: Option<String>,
    /// `CNI_IFNAME` (empty for GC and STATUS).
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
}

/// Reads `CNI_COMMAND` alone, so VERSION can be answered before anything
/// else is validated.
pub fn command(get: &dyn Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    let raw = non_empty(get, "CNI_COMMAND").ok_or_else(|| {
        CniError::new(
            codes::INVALID_ENVIRONMENT,
            "required env variables [CNI_COMMAND] missing",
        )
    })?;
    Command::parse(&raw).ok_or_else(|| {
        CniError::new(
            codes::INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND: {raw}"),
        )
    })
}

/// Reads and validates the rest of the environment for `command`.
pub fn invocation(
    command: Command,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Invocation, CniError> {
    let container_id = non_empty(get, "CNI_CONTAINERID");
    let netns = non_empty(get, "CNI_NETNS");
    let ifname = non_empty(get, "CNI_IFNAME");
    let path = non_empty(get, "CNI_PATH");

    let mut missing = Vec::new();
    if command.per_attachment() {
        if container_id.is_none() {
            missing.push("CNI_CONTAINERID");
        }
        if netns.is_none() && command != Command::Del {
            missing.push("CNI_NETNS");
        }
        if ifname.is_none() {
            missing.push("CNI_IFNAME");
        }
        if path.is_none() {
            missing.push("CNI_PATH");
        }
    }
    if !missing.is_empty() {
        return Err(CniError::new(
            codes::INVALID_ENVIRONMENT,
            format!("required env variables [{}] missing", missing.join(",")),
        ));
    }
    let container_id = container_id.unwrap_or_default();
    let ifname = ifname.unwrap_or_default();
    if command.per_attachment() {
        if !is_valid_identifier(&container_id) {
            return Err(CniError::new(
                codes::INVALID_ENVIRONMENT,
                format!("invalid characters in CNI_CONTAINERID {container_id:?}"),
            ));
        }
        validate_ifname(&ifname)?;
    }
    let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
    Ok(Invocation {
        command,
        container_id,
        netns,
        ifname,
        args,
    })
}

/// Interface names as Linux accepts them: 1–15 bytes, not `.` or `..`, no
/// `/`, `:` or whitespace.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.len() > 15 {
        Some("is longer than 15 characters")
    } else if name == "." || name == ".." {
        Some("is not a valid name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match problem {
        Some(p) => Err(CniError::new(
            codes::INVALID_ENVIRONMENT,
            format!("CNI_IFNAME {name:?} {p}"),
        )),
        None => Ok(()),
    }
}

fn non_empty(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const FULL: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
    ];

    #[test]
    fn full_add_environment_parses() {
        let get = env(FULL);
        let cmd = command(&get).expect("command");
        let inv = invocation(cmd, &get).expect("invocation");
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.container_id, "abc123");
        assert_eq!(inv.args.pod.name.as_deref(), Some("web-0"));
    }

    #[test]
    fn missing_command_and_unknown_command() {
        assert_eq!(
            command(&env(&[])).expect_err("missing").code,
            codes::INVALID_ENVIRONMENT
        );
        assert_eq!(
            command(&env(&[("CNI_COMMAND", "FROB")]))
                .expect_err("unknown")
                .code,
            4
        );
    }

    #[test]
    fn missing_variables_are_listed() {
        let get = env(&[("CNI_COMMAND", "ADD")]);
        let e = invocation(Command::Add, &get).expect_err("missing");
        assert_eq!(e.code, codes::INVALID_ENVIRONMENT);
        assert!(
            e.msg
                .contains("CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn del_needs_no_netns_and_gc_needs_nothing() {
        let get = env(&[
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ]);
        assert!(invocation(Command::Del, &get).is_ok());
        assert!(invocation(Command::Gc, &env(&[])).is_ok());
        assert!(invocation(Command::Status, &env(&[])).is_ok());
    }

    #[test]
    fn bad_container_id_and_ifname_are_refused() {
        let mut pairs = FULL.to_vec();
        pairs[1] = ("CNI_CONTAINERID", "bad/id");
        assert_eq!(
            invocation(Command::Add, &env(&pairs)).expect_err("id").code,
            4
        );
        for bad in [
            "a-very-long-interface-name",
            ".",
            "..",
            "eth 0",
            "eth:0",
            "e/0",
        ] {
            let mut pairs = FULL.to_vec();
            pairs[3] = ("CNI_IFNAME", bad);
            assert_eq!(
                invocation(Command::Add, &env(&pairs)).expect_err(bad).code,
                4,
                "{bad}"
            );
        }
    }

    #[test]
    fn upper_case_container_ids_are_fine() {
        let mut pairs = FULL.to_vec();
        pairs[1] = ("CNI_CONTAINERID", "ABCdef-1.2_3");
        assert!(invocation(Command::Add, &env(&pairs)).is_ok());
    }

    #[test]
    fn bad_cni_args_are_refused() {
        let mut pairs = FULL.to_vec();
        pairs[5] = ("CNI_ARGS", "WHAT=1");
        assert_eq!(
            invocation(Command::Add, &env(&pairs))
                .expect_err("args")
                .code,
            4
        );
    }
}
