//! `vpc-cni-agent claims`: the pods' IP claims, like `kubectl get`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use proto::wire::{ClaimView, Request, Response};

use super::pool::Output;

/// Flags of `claims`.
#[derive(Debug, Args)]
pub struct ClaimsArgs {
    /// The agent's socket.
    #[arg(long, default_value = proto::cni::config::DEFAULT_AGENT_SOCKET, global = true)]
    socket: PathBuf,
    #[command(subcommand)]
    command: ClaimsCommand,
}

/// What to do with claims.
#[derive(Debug, Subcommand)]
enum ClaimsCommand {
    /// List every claim: NAMESPACE, NAME, IP, (IPV6,) STATUS, NODE, ENI, POLICY, AGE, EXPIRES.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// End a pod's static claim and free its IP (refused while the pod runs).
    Delete {
        /// `NAMESPACE/NAME` of the pod.
        pod: String,
        /// Also while a sandbox of the pod runs: it loses its network.
        #[arg(long)]
        force: bool,
    },
    /// Reclaim what is due now (expired claims), saying what and why.
    Reclaim {
        /// Only say what would be reclaimed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Report a workload deleted: claims it owns are reclaimed (`--enable-ownerref`).
    OwnerDeleted {
        /// Kind, such as `StatefulSet`.
        kind: String,
        /// Name.
        name: String,
        /// UID.
        uid: String,
    },
}

/// Runs `claims`.
pub fn run(args: ClaimsArgs) -> Result<(), String> {
    let reclaim = |request: Request, verb: &str| -> Result<(), String> {
        match call(&args.socket, &request)? {
            Response::Reclaimed { claims } if claims.is_empty() => say(&format!("nothing {verb}")),
            Response::Reclaimed { claims } => {
                let lines: Vec<String> = claims
                    .iter()
                    .map(|c| format!("{verb} {}/{} {}: {}", c.namespace, c.name, c.ip, c.reason))
                    .collect();
                say(&lines.join("\n"))
            }
            other => Err(format!("unexpected reply {other:?}")),
        }
    };
    match args.command {
        ClaimsCommand::Delete { pod, force } => {
            let (namespace, name) = pod
                .split_once('/')
                .ok_or_else(|| format!("{pod:?} is not NAMESPACE/NAME"))?;
            let request = Request::DeleteClaim {
                namespace: namespace.into(),
                name: name.into(),
                force,
            };
            reclaim(request, "deleted")
        }
        ClaimsCommand::Reclaim { dry_run } => reclaim(
            Request::Reclaim { dry_run },
            if dry_run {
                "would reclaim"
            } else {
                "reclaimed"
            },
        ),
        ClaimsCommand::OwnerDeleted { kind, name, uid } => reclaim(
            Request::OwnerDeleted(proto::wire::OwnerRef { kind, name, uid }),
            "reclaimed",
        ),
        ClaimsCommand::List { output } => {
            let reply =
                proto::client::call(&args.socket, &Request::Claims, Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
            let claims = match reply {
                Ok(Response::Claims { claims }) => claims,
                Ok(other) => return Err(format!("unexpected reply {other:?}")),
                Err(e) => return Err(e.message),
            };
            let text = match output {
                Output::Json => serde_json::to_string_pretty(&claims).map_err(|e| e.to_string())?,
                Output::Table => table(&claims, now_ms()),
            };
            writeln!(std::io::stdout().lock(), "{text}").map_err(|e| e.to_string())
        }
    }
}

fn call(socket: &std::path::Path, request: &Request) -> Result<Response, String> {
    match proto::client::call(socket, request, Duration::from_secs(30))
        .map_err(|e| e.to_string())?
    {
        Ok(r) => Ok(r),
        Err(e) => Err(e.message),
    }
}

fn say(text: &str) -> Result<(), String> {
    writeln!(std::io::stdout().lock(), "{text}").map_err(|e| e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `kubectl`-style ages: `45s`, `12m`, `3h`, `2d`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The claims as a table; an `IPV6` column after `IP` when any claim has
/// an IPv6 address (a dual-stack node).
fn table(claims: &[ClaimView], now: u64) -> String {
    let dual = claims.iter().any(|c| c.ipv6.is_some());
    let mut header = vec!["NAMESPACE", "NAME", "IP"];
    if dual {
        header.push("IPV6");
    }
    header.extend(["STATUS", "NODE", "ENI", "POLICY", "AGE", "EXPIRES"]);
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for c in claims {
        let mut row = vec![c.namespace.clone(), c.name.clone(), c.ip.to_string()];
        if dual {
            row.push(c.ipv6.map_or_else(|| "<none>".into(), |v6| v6.to_string()));
        }
        row.extend([
            c.status.clone(),
            c.node.clone(),
            c.eni_id.clone(),
            c.policy.clone(),
            age(now.saturating_sub(c.created_ms)),
            match c.expires_ms {
                Some(t) if t > now => format!("in {}", age(t - now)),
                Some(_) => "now".into(),
                None => "<never>".into(),
            },
        ]);
        rows.push(row);
    }
    super::table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn the_table_reads_like_kubectl() {
        let c = ClaimView {
            namespace: "default".into(),
            name: "web-0".into(),
            ip: Ipv4Addr::new(10, 0, 16, 5),
            ipv6: None,
            status: "Reserved".into(),
            node: "ins-1".into(),
            subnet_id: "subnet-1".into(),
            eni_id: "eni-1".into(),
            container_id: None,
            policy: "Never".into(),
            owner: None,
            created_ms: 0,
            last_bound_ms: 0,
            released_ms: Some(0),
            expires_ms: Some(7_200_000),
            expire_after_ms: None,
            message: None,
            requested: false,
        };
        let t = table(std::slice::from_ref(&c), 3_600_000);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE"));
        for word in [
            "default",
            "web-0",
            "10.0.16.5",
            "Reserved",
            "Never",
            "1h",
            "in 1h",
        ] {
            assert!(lines[1].contains(word), "{word} in {}", lines[1]);
        }
        assert!(!lines[0].contains("IPV6"), "an IPv4-only table as before");
        let dual = ClaimView {
            ipv6: Some("fd00::5".parse().expect("v6")),
            ..c
        };
        let t = table(&[dual], 3_600_000);
        let lines: Vec<&str> = t.lines().collect();
        let columns: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(columns[2..4], ["IP", "IPV6"], "{}", lines[0]);
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells[2..5],
            ["10.0.16.5", "fd00::5", "Reserved"],
            "{}",
            lines[1]
        );
    }
}
