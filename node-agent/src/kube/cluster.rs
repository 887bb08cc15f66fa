//! The cluster component (`vpc-cni-agent cluster`): what no single node can
//! do, by one leader-elected replica (a `Lease`). Nodes keep doing their
//! own work; this one sweeps up after nodes that are gone:
//!
//! - ENIs created by this cluster's agents, older than the grace period and
//!   attached nowhere (their instance was released): deleted; those on an
//!   instance that is no Kubernetes node any more are reported;
//! - claims whose node is gone: once expired, being deleted (by hand, with
//!   their namespace or with their owner) or not static, their IP is
//!   unassigned, their `VpcIP` deleted and their finalizer removed.
//!
//! The decisions are pure functions of what was listed, tested without a
//! cluster; the loop only lists and acts.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use super::crd::{DeletePolicy, VpcIP, VpcIPClaim};
use super::objects::parse_rfc3339;
use crate::cloud::{Cloud, Eni};

/// Settings of the cluster component.
#[derive(Clone, Debug)]
pub struct Options {
    /// This replica's identity in the lease (its pod name).
    pub identity: String,
    /// Namespace of the lease.
    pub namespace: String,
    /// Name of the lease.
    pub lease: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
    /// How often the leader sweeps.
    pub interval: Duration,
    /// How old an ENI must be before it counts as leaked.
    pub leaked_eni_grace: Duration,
}

/// What to do with the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Take it (free, expired, or ours already): write it as ours.
    Hold,
    /// Another replica holds it until the given time (Unix ms).
    Wait(u64),
}

/// Whether `me` may hold a lease whose holder and last renewal are these.
pub fn lease_decision(
    holder: Option<&str>,
    renewed_ms: Option<u64>,
    duration: Duration,
    me: &str,
    now_ms: u64,
) -> LeaseDecision {
    match (holder, renewed_ms) {
        (Some(h), _) if h == me => LeaseDecision::Hold,
        (Some(h), Some(at)) if !h.is_empty() => {
            let until = at + duration.as_millis() as u64;
            if until > now_ms {
                LeaseDecision::Wait(until)
            } else {
                LeaseDecision::Hold
            }
        }
        _ => LeaseDecision::Hold,
    }
}

/// One step of the ENI sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EniAction {
    /// Detached (its instance was released, or its agent crashed between
    /// create and attach): delete it.
    Delete(String),
    /// Attached to an instance that is no node of the cluster (its node
    /// object was deleted while the instance lives): reported, left alone,
    /// since the instance may join again and its agent then adopts it.
    Report(String, String),
}

/// The ENIs to sweep: this cluster's (as listed by tag), not primary,
/// older than `grace`, and attached nowhere or to an instance that is not
/// one of `nodes` (instance ids).
pub fn leaked_enis(
    enis: &[Eni],
    nodes: &BTreeSet<String>,
    now_unix: u64,
    grace: Duration,
) -> Vec<EniAction> {
    enis.iter()
        .filter(|e| !e.primary)
        .filter(|e| {
            e.created_unix
                .is_some_and(|c| now_unix.saturating_sub(c) >= grace.as_secs())
        })
        .filter_map(|e| match &e.attached_to {
            None => Some(EniAction::Delete(e.id.clone())),
            Some(instance) if !nodes.contains(instance) => {
                Some(EniAction::Report(e.id.clone(), instance.clone()))
            }
            Some(_) => None,
        })
        .collect()
}

/// Why a claim of a gone node is released, if it is.
pub fn release_reason(claim: &VpcIPClaim, nodes: &BTreeSet<String>, now_ms: u64) -> Option<String> {
    let status = claim.status.as_ref()?;
    if status.node.is_empty() || nodes.contains(&status.node) {
        return None;
    }
    if claim.metadata.deletion_timestamp.is_some() {
        return Some(format!("deleted while its node {} is gone", status.node));
    }
    if claim.spec.delete_policy == DeletePolicy::Immediate {
        return Some(format!("its pod ended with its node {}", status.node));
    }
    let expires = status.expires_at.as_deref().and_then(parse_rfc3339)?;
    (expires <= now_ms).then(|| {
        format!(
            "expired at {} while its node {} is gone",
            status.expires_at.as_deref().unwrap_or_default(),
            status.node
        )
    })
}

/// The names of the cluster's nodes and the instance ids they stand for
/// (the name itself, and the last part of `spec.providerID`).
pub fn node_ids(nodes: &[Node]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for n in nodes {
        out.insert(n.name_any());
        if let Some(id) = n.spec.as_ref().and_then(|s| s.provider_id.as_ref())
            && let Some(last) = id.rsplit('/').next()
            && !last.is_empty()
        {
            out.insert(last.to_string());
        }
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the cluster component until the process is stopped.
pub async fn run<C: Cloud>(client: Client, cloud: C, options: Options) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &options.namespace);
    let mut leading = false;
    let mut next_sweep = tokio::time::Instant::now();
    loop {
        match hold_lease(&leases, &options).await {
            Ok(true) => {
                if !leading {
                    info!(identity = %options.identity, lease = %options.lease, "leading");
                }
                leading = true;
            }
            Ok(false) => {
                if leading {
                    warn!(identity = %options.identity, "lost the lease");
                }
                leading = false;
            }
            Err(e) => {
                warn!(error = %e, "cannot read or renew the lease");
                leading = false;
            }
        }
        if leading && tokio::time::Instant::now() >= next_sweep {
            if let Err(e) = sweep(&client, &cloud, &options).await {
                warn!(error = %e, "sweep incomplete; will retry");
            }
            next_sweep = tokio::time::Instant::now() + options.interval;
        }
        tokio::time::sleep(options.lease_duration / 3).await;
    }
}

/// Takes or renews the lease; `true` while this replica holds it. Writes
/// carry the lease's resourceVersion, so two replicas never both win.
async fn hold_lease(leases: &Api<Lease>, options: &Options) -> Result<bool, kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let spec = LeaseSpec {
        holder_identity: Some(options.identity.clone()),
        lease_duration_seconds: Some(options.lease_duration.as_secs() as i32),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    };
    let Some(mut lease) = leases.get_opt(&options.lease).await? else {
        let mut lease = Lease::default();
        lease.metadata.name = Some(options.lease.clone());
        lease.spec = Some(LeaseSpec {
            acquire_time: Some(MicroTime(now)),
            ..spec
        });
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let current = lease.spec.clone().unwrap_or_default();
    let renewed = current
        .renew_time
        .as_ref()
        .and_then(|t| u64::try_from(t.0.as_millisecond()).ok());
    let duration = current
        .lease_duration_seconds
        .map_or(options.lease_duration, |s| {
            Duration::from_secs(s.max(0) as u64)
        });
    match lease_decision(
        current.holder_identity.as_deref(),
        renewed,
        duration,
        &options.identity,
        now_ms(),
    ) {
        LeaseDecision::Wait(_) => Ok(false),
        LeaseDecision::Hold => {
            let taken = current.holder_identity.as_deref() != Some(options.identity.as_str());
            lease.spec = Some(LeaseSpec {
                acquire_time: if taken {
                    Some(MicroTime(now))
                } else {
                    current.acquire_time
                },
                lease_transitions: Some(current.lease_transitions.unwrap_or(0) + i32::from(taken)),
                ..spec
            });
            match leases
                .replace(&options.lease, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

async fn sweep<C: Cloud>(client: &Client, cloud: &C, options: &Options) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = node_ids(
        &nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items,
    );
    let enis = cloud.list_cluster_enis().await.map_err(|e| e.to_string())?;
    for action in leaked_enis(&enis, &nodes, now_ms() / 1000, options.leaked_eni_grace) {
        match &action {
            EniAction::Delete(id) => match cloud.delete_eni(id).await {
                Ok(()) => info!(eni = %id, "leaked ENI deleted"),
                Err(e) => warn!(eni = %id, error = %e, "cannot delete a leaked ENI"),
            },
            EniAction::Report(id, instance) => {
                warn!(eni = %id, %instance, "ENI of this cluster on an instance that is no node")
            }
        }
    }
    let claims: Api<VpcIPClaim> = Api::all(client.clone());
    let ips: Api<VpcIP> = Api::all(client.clone());
    let now = now_ms();
    for claim in claims
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items
    {
        let Some(why) = release_reason(&claim, &nodes, now) else {
            continue;
        };
        let status = claim.status.clone().unwrap_or_default();
        let ip: Option<Ipv4Addr> = status.ip.parse().ok();
        // The IP leaves the cloud first: a crash after this repeats the
        // harmless rest.
        if let Some(ip) = ip
            && let Some(eni) = enis
                .iter()
                .find(|e| e.id == status.eni_id && e.secondary_ips.contains(&ip))
            && let Err(e) = cloud.unassign_ips(&eni.id, &[ip]).await
        {
            warn!(%ip, eni = %eni.id, error = %e, "cannot unassign a gone node's claimed IP");
            continue;
        }
        if !status.vpc_ip.is_empty() {
            match ips
                .delete(&status.vpc_ip, &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let ns = claim.namespace().unwrap_or_default();
        let api: Api<VpcIPClaim> = Api::namespaced(client.clone(), &ns);
        if claim.metadata.deletion_timestamp.is_none() {
            match api
                .delete(&claim.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        super::publish::remove_finalizer(&api, &claim)
            .await
            .map_err(|e| e.to_string())?;
        info!(namespace = %ns, name = %claim.name_any(), ip = %status.ip, why, "claim of a gone node released");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{VpcIPClaimSpec, VpcIPClaimStatus};

    #[test]
    fn a_lease_is_held_by_one_replica_until_it_expires() {
        let d = Duration::from_secs(15);
        assert_eq!(lease_decision(None, None, d, "a", 0), LeaseDecision::Hold);
        assert_eq!(
            lease_decision(Some("b"), Some(1_000), d, "a", 10_000),
            LeaseDecision::Wait(16_000)
        );
        assert_eq!(
            lease_decision(Some("b"), Some(1_000), d, "a", 16_000),
            LeaseDecision::Hold
        );
        assert_eq!(
            lease_decision(Some("a"), Some(1_000), d, "a", 2_000),
            LeaseDecision::Hold
        );
    }

    fn eni(id: &str, attached: Option<&str>, created: u64) -> Eni {
        Eni {
            id: id.into(),
            mac: String::new(),
            subnet_id: "subnet-1".into(),
            primary_ip: Ipv4Addr::new(10, 0, 1, 1),
            secondary_ips: vec![],
            primary: false,
            attached_to: attached.map(Into::into),
            created_unix: Some(created),
        }
    }

    #[test]
    fn only_old_enis_of_gone_nodes_are_swept() {
        let nodes = BTreeSet::from(["ins-live".to_string()]);
        let enis = [
            eni("eni-detached", None, 0),
            eni("eni-gone", Some("ins-gone"), 0),
            eni("eni-live", Some("ins-live"), 0),
            eni("eni-young", None, 1_000),
        ];
        assert_eq!(
            leaked_enis(&enis, &nodes, 1_100, Duration::from_secs(600)),
            [
                EniAction::Delete("eni-detached".into()),
                EniAction::Report("eni-gone".into(), "ins-gone".into()),
            ]
        );
    }

    fn claim(node: &str, policy: DeletePolicy, expires: Option<&str>) -> VpcIPClaim {
        let mut c = VpcIPClaim::new(
            "web-0",
            VpcIPClaimSpec {
                delete_policy: policy,
                ..Default::default()
            },
        );
        c.status = Some(VpcIPClaimStatus {
            node: node.into(),
            ip: "10.0.1.5".into(),
            expires_at: expires.map(Into::into),
            ..Default::default()
        });
        c
    }

    #[test]
    fn claims_of_gone_nodes_are_released_when_due_only() {
        let nodes = BTreeSet::from(["ins-live".to_string()]);
        let now = parse_rfc3339("2026-01-01T00:00:00Z").expect("time");
        let live = claim(
            "ins-live",
            DeletePolicy::Never,
            Some("2025-01-01T00:00:00Z"),
        );
        assert_eq!(release_reason(&live, &nodes, now), None);
        let kept = claim("ins-gone", DeletePolicy::Never, None);
        assert_eq!(release_reason(&kept, &nodes, now), None);
        let later = claim(
            "ins-gone",
            DeletePolicy::Never,
            Some("2027-01-01T00:00:00Z"),
        );
        assert_eq!(release_reason(&later, &nodes, now), None);
        let expired = claim(
            "ins-gone",
            DeletePolicy::Never,
            Some("2025-01-01T00:00:00Z"),
        );
        assert!(release_reason(&expired, &nodes, now).is_some_and(|w| w.contains("expired")));
        let plain = claim("ins-gone", DeletePolicy::Immediate, None);
        assert!(release_reason(&plain, &nodes, now).is_some());
    }
}
