//! `vpc-cni-agent pool`: the pool as the agent sees it, as a table or JSON.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use proto::wire::{IpState, MaintenanceView, PoolView, Request, Response};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The agent's JSON.
    Json,
}

/// Flags of `pool`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// The agent's socket.
    #[arg(long, default_value = proto::cni::config::DEFAULT_AGENT_SOCKET)]
    socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

/// Prints the pool.
pub fn run(args: PoolArgs) -> Result<(), String> {
    let reply = proto::client::call(&args.socket, &Request::Pool, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let view = match reply {
        Ok(Response::Pool(view)) => view,
        Ok(other) => return Err(format!("unexpected reply {other:?}")),
        Err(e) => return Err(e.message),
    };
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&view).map_err(|e| e.to_string())?,
        Output::Table => {
            let mut text = table(&view);
            for c in &view.conditions {
                text.push_str(&format!("\ncondition {}: {}", c.kind, c.message));
            }
            if let Some(m) = view.maintenance {
                text.push_str(&maintenance_line(m));
            }
            text
        }
    };
    writeln!(std::io::stdout().lock(), "{text}").map_err(|e| e.to_string())
}

/// The maintenance loop's line under the table.
fn maintenance_line(m: MaintenanceView) -> String {
    match m.asleep_until_ms {
        Some(at) => format!(
            "\nmaintenance: {} rounds, asleep until {}",
            m.rounds,
            tencent_api::sign::utc_datetime(at / 1000).replace(' ', "T") + "Z"
        ),
        None => format!("\nmaintenance: {} rounds, a round runs", m.rounds),
    }
}

/// The pool as a table; an `IPV6` column after `IP` when any address has
/// an IPv6 partner (a dual-stack node).
fn table(view: &PoolView) -> String {
    let dual = view
        .enis
        .iter()
        .any(|e| e.ips.iter().any(|ip| ip.ipv6.is_some()));
    let mut header = vec!["ENI".to_string(), "IP".into()];
    if dual {
        header.push("IPV6".into());
    }
    header.extend(["STATE".into(), "POD".into(), "ATTACHMENT".into()]);
    let mut rows = vec![header];
    for eni in &view.enis {
        for ip in &eni.ips {
            let (state, pod, attachment) = match &ip.state {
                IpState::Free => ("free", String::new(), String::new()),
                IpState::Cooling { .. } => ("cooling", String::new(), String::new()),
                IpState::Reserved { namespace, name } => {
                    ("reserved", format!("{namespace}/{name}"), String::new())
                }
                IpState::Attaching { error } => (
                    "attaching",
                    String::new(),
                    error
                        .as_ref()
                        .map(|e| format!("attach failed: {e}"))
                        .unwrap_or_default(),
                ),
                IpState::Allocated { key, pod } => (
                    "allocated",
                    pod.as_ref()
                        .map(|p| format!("{}/{}", p.namespace, p.name))
                        .unwrap_or_default(),
                    key.to_string(),
                ),
            };
            let mut row = vec![eni.id.clone(), ip.ip.to_string()];
            if dual {
                row.push(ip.ipv6.map_or_else(String::new, |v6| v6.to_string()));
            }
            row.extend([state.into(), pod, attachment]);
            rows.push(row);
        }
    }
    super::table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::wire::{AttachmentKey, EniView, IpView, PodRef};
    use std::net::Ipv4Addr;

    #[test]
    fn the_maintenance_line_says_when_the_loop_wakes_or_that_it_runs() {
        let asleep = MaintenanceView {
            rounds: 12,
            asleep_until_ms: Some(1_796_311_267_000),
        };
        assert_eq!(
            maintenance_line(asleep),
            "\nmaintenance: 12 rounds, asleep until 2026-12-03T15:21:07Z"
        );
        let running = MaintenanceView {
            rounds: 3,
            asleep_until_ms: None,
        };
        assert_eq!(
            maintenance_line(running),
            "\nmaintenance: 3 rounds, a round runs"
        );
    }

    #[test]
    fn table_lists_every_ip_with_its_holder() {
        let view = PoolView {
            enis: vec![EniView {
                id: "eni-1".into(),
                mac: "m".into(),
                subnet_id: "s".into(),
                ips: vec![
                    IpView {
                        ip: Ipv4Addr::new(10, 0, 0, 5),
                        ipv6: None,
                        state: IpState::Allocated {
                            key: AttachmentKey {
                                network: "vpc".into(),
                                container_id: "c1".into(),
                                ifname: "eth0".into(),
                            },
                            pod: Some(PodRef {
                                namespace: "default".into(),
                                name: "web-0".into(),
                                uid: None,
                            }),
                        },
                    },
                    IpView {
                        ip: Ipv4Addr::new(10, 0, 0, 6),
                        ipv6: None,
                        state: IpState::Free,
                    },
                ],
            }],
            conditions: Vec::new(),
            maintenance: None,
        };
        let t = table(&view);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].contains("10.0.0.5")
                && lines[1].contains("default/web-0")
                && lines[1].contains("vpc/c1/eth0")
        );
        assert!(lines[2].contains("free"));
        assert!(!lines[0].contains("IPV6"), "an IPv4-only table as before");
        let mut dual = view;
        dual.enis[0].ips[0].ipv6 = Some("fd00::5".parse().expect("v6"));
        let t = table(&dual);
        let lines: Vec<&str> = t.lines().collect();
        let columns: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(columns[..4], ["ENI", "IP", "IPV6", "STATE"], "{}", lines[0]);
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells[..4], ["eni-1", "10.0.0.5", "fd00::5", "allocated"]);
    }
}
