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

use tokio::time::Instant;

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

/// What this replica knows of the lease, by its own monotonic clock only:
/// another replica's lease has expired once its record (holder and
/// resourceVersion) has not changed for a whole lease duration *as observed
/// here* (never by comparing the holder's renew time, another host's clock,
/// with this one's); this replica leads only until its renew deadline after
/// the start of its last successful renewal, which is shorter than the
/// duration, so it stops acting before any other replica may take over.
#[derive(Clone, Debug)]
pub struct Elector {
    me: String,
    duration: Duration,
    renew_deadline: Duration,
    observed: Option<(String, String)>,
    observed_at: Option<Instant>,
    renewed_at: Option<Instant>,
}

impl Elector {
    /// Replica `me` for a lease of `duration`; its renew deadline is two
    /// thirds of it.
    pub fn new(me: &str, duration: Duration) -> Elector {
        Elector {
            me: me.to_string(),
            duration,
            renew_deadline: duration * 2 / 3,
            observed: None,
            observed_at: None,
            renewed_at: None,
        }
    }

    /// The lease as read at `now`: its holder and resourceVersion.
    pub fn observe(&mut self, holder: &str, version: &str, now: Instant) {
        let record = (holder.to_string(), version.to_string());
        if self.observed.as_ref() != Some(&record) {
            self.observed = Some(record);
            self.observed_at = Some(now);
        }
        if holder != self.me {
            self.renewed_at = None;
        }
    }

    /// Whether this replica may write the lease as its own at `now`: it is
    /// free, ours, or unchanged for a whole duration since observed here.
    pub fn may_take(&self, now: Instant) -> bool {
        match (&self.observed, self.observed_at) {
            (Some((holder, _)), _) if holder.is_empty() || *holder == self.me => true,
            (Some(_), Some(at)) => now.saturating_duration_since(at) >= self.duration,
            _ => true,
        }
    }

    /// A write of the lease as ours, sent at `sent`, succeeded.
    pub fn renewed(&mut self, sent: Instant) {
        self.renewed_at = Some(sent);
    }

    /// A renewal failed or was refused: not leading any more.
    pub fn lost(&mut self) {
        self.renewed_at = None;
    }

    /// Until when this replica may act as the leader.
    pub fn leading_until(&self) -> Option<Instant> {
        self.renewed_at.map(|at| at + self.renew_deadline)
    }

    /// Whether it leads at `now`.
    pub fn leading(&self, now: Instant) -> bool {
        self.leading_until().is_some_and(|until| now < until)
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
    let mut elector = Elector::new(&options.identity, options.lease_duration);
    let mut was_leading = false;
    let mut next_sweep = Instant::now();
    loop {
        if let Err(e) = hold_lease(&leases, &options, &mut elector).await {
            warn!(error = %e, "cannot read or renew the lease");
            elector.lost();
        }
        let leading = elector.leading(Instant::now());
        match (was_leading, leading) {
            (false, true) => info!(identity = %options.identity, lease = %options.lease, "leading"),
            (true, false) => warn!(identity = %options.identity, "lost the lease"),
            _ => {}
        }
        was_leading = leading;
        if let Some(until) = elector.leading_until().filter(|_| leading)
            && Instant::now() >= next_sweep
        {
            // Bounded by the renew deadline: past it another replica may
            // lead, so every step stops there.
            match tokio::time::timeout_at(until, sweep(&client, &cloud, &options, until)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "sweep incomplete; will retry"),
                Err(_) => {
                    warn!("sweep stopped at the lease's renew deadline; the next one goes on")
                }
            }
            next_sweep = Instant::now() + options.interval;
        }
        tokio::time::sleep(options.lease_duration / 3).await;
    }
}

/// Reads the lease and takes or renews it when the elector says this
/// replica may. Writes carry the lease's resourceVersion, so two replicas
/// never both win one round.
async fn hold_lease(
    leases: &Api<Lease>,
    options: &Options,
    elector: &mut Elector,
) -> Result<(), kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let spec = LeaseSpec {
        holder_identity: Some(options.identity.clone()),
        lease_duration_seconds: Some(options.lease_duration.as_secs() as i32),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    };
    let sent = Instant::now();
    let Some(mut lease) = leases.get_opt(&options.lease).await? else {
        let mut lease = Lease::default();
        lease.metadata.name = Some(options.lease.clone());
        lease.spec = Some(LeaseSpec {
            acquire_time: Some(MicroTime(now)),
            ..spec
        });
        match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => elector.renewed(sent),
            Err(kube::Error::Api(e)) if e.code == 409 => elector.lost(),
            Err(e) => return Err(e),
        }
        return Ok(());
    };
    let current = lease.spec.clone().unwrap_or_default();
    let holder = current.holder_identity.clone().unwrap_or_default();
    elector.observe(
        &holder,
        lease
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default(),
        sent,
    );
    if !elector.may_take(Instant::now()) {
        return Ok(());
    }
    let taken = holder != options.identity;
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
        Ok(written) => {
            elector.observe(
                &options.identity,
                written
                    .metadata
                    .resource_version
                    .as_deref()
                    .unwrap_or_default(),
                Instant::now(),
            );
            elector.renewed(sent);
        }
        Err(kube::Error::Api(e)) if e.code == 409 => elector.lost(),
        Err(e) => return Err(e),
    }
    Ok(())
}

async fn sweep<C: Cloud>(
    client: &Client,
    cloud: &C,
    options: &Options,
    until: Instant,
) -> Result<(), String> {
    // ENIs and claims are listed before the Nodes: a node that joins
    // meanwhile is then among the Nodes, never taken for gone. And each
    // release looks at the Nodes again right before it acts.
    let enis = cloud.list_cluster_enis().await.map_err(|e| e.to_string())?;
    let claims: Api<VpcIPClaim> = Api::all(client.clone());
    let listed_claims = claims
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items;
    let node_api: Api<Node> = Api::all(client.clone());
    let list_nodes = || async {
        node_api
            .list(&ListParams::default())
            .await
            .map(|l| node_ids(&l.items))
            .map_err(|e| e.to_string())
    };
    let nodes = list_nodes().await?;
    let in_time = || {
        if Instant::now() < until {
            Ok(())
        } else {
            Err("the lease's renew deadline passed; the rest waits for the next sweep".to_string())
        }
    };
    for action in leaked_enis(&enis, &nodes, now_ms() / 1000, options.leaked_eni_grace) {
        in_time()?;
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
    let ips: Api<VpcIP> = Api::all(client.clone());
    let now = now_ms();
    for claim in listed_claims {
        if release_reason(&claim, &nodes, now).is_none() {
            continue;
        }
        // Still true now? The node may have joined since the lists.
        in_time()?;
        let Some(why) = release_reason(&claim, &list_nodes().await?, now_ms()) else {
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
        super::writes::remove_finalizer(&api, &claim)
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

    /// Two replicas over one lease record, each acting only by its own
    /// clock: A renews; B, whose wall clock may be anything, takes it only
    /// once the record has not changed for a whole duration as B saw it,
    /// and by then A's renew deadline has passed. At no instant do both
    /// lead, even when A's sweep stalls its renewals.
    #[test]
    fn hole_3_two_replicas_never_lead_at_once_with_a_slow_sweep_and_any_clocks() {
        let d = Duration::from_secs(15);
        let t0 = Instant::now();
        let (mut a, mut b) = (Elector::new("a", d), Elector::new("b", d));
        let mut record = (String::new(), 0u32);
        let write = |e: &mut Elector, me: &str, at: Instant, record: &mut (String, u32)| {
            e.observe(&record.0, &record.1.to_string(), at);
            if e.may_take(at) {
                *record = (me.to_string(), record.1 + 1);
                e.observe(me, &record.1.to_string(), at);
                e.renewed(at);
            }
        };
        let mut first_b = None;
        for ms in (0..60_000u64).step_by(250) {
            let now = t0 + Duration::from_millis(ms);
            // A renews every 5 s until a sweep stalls it after 10 s; B
            // tries every 5 s, a second after A.
            if ms % 5_000 == 0 && ms <= 10_000 {
                write(&mut a, "a", now, &mut record);
            }
            if ms % 5_000 == 1_000 {
                write(&mut b, "b", now, &mut record);
            }
            if ms == 0 {
                assert!(a.leading(now));
            }
            if b.leading(now) && first_b.is_none() {
                first_b = Some(ms);
            }
            assert!(!(a.leading(now) && b.leading(now)), "both lead at {ms} ms");
        }
        let first_b = first_b.expect("B takes over once A stops renewing");
        assert!(
            first_b >= 25_000,
            "not before A's last renewal plus a duration: {first_b}"
        );
        assert!(
            !a.leading(t0 + Duration::from_secs(20)),
            "A stopped at its renew deadline"
        );
    }

    #[test]
    fn a_free_or_own_lease_is_taken_at_once() {
        let d = Duration::from_secs(15);
        let t0 = Instant::now();
        let mut e = Elector::new("a", d);
        assert!(e.may_take(t0), "never read");
        e.observe("", "1", t0);
        assert!(e.may_take(t0), "free");
        e.observe("a", "2", t0);
        assert!(e.may_take(t0), "ours");
        e.observe("b", "3", t0);
        assert!(!e.may_take(t0 + d - Duration::from_millis(1)));
        assert!(e.may_take(t0 + d));
        e.renewed(t0);
        e.observe("b", "4", t0);
        assert!(!e.leading(t0), "another holder's record: not leading");
    }

    fn eni(id: &str, attached: Option<&str>, created: u64) -> Eni {
        Eni {
            id: id.into(),
            mac: String::new(),
            subnet_id: "subnet-1".into(),
            primary_ip: Ipv4Addr::new(10, 0, 1, 1),
            secondary_ips: vec![],
            ipv6s: vec![],
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
