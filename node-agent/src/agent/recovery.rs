//! Start-up and reconciliation. The agent starts from its store alone: the
//! VPC API is asked for the node's details and ENIs when it answers, at
//! start or later, and the pool is then brought in line with what the cloud
//! reports ([`reconcile`], a pure plan). Meanwhile the agent serves DEL,
//! CHECK, GC, STATUS, and ADD from the IPs it holds.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::conditions::{CLOUD_UNREACHABLE, Conditions};
use super::eni::pool_record;
use super::errors::cloud_error;
use super::txn::Txn;
use super::{Agent, AgentConfig, GrowthRound};
use crate::clock::Clock;
use crate::cloud::{Cloud, CloudError, Eni, NodeInfo};
use crate::cluster_claims::{self, ClusterClaims, LocalClaims};
use crate::committer::Committer;
use crate::dataplane::{Dataplane, PodNetns, PodSpec};
use crate::ipam::{Change, EniRecord, Handover, Ipam, IpamError, Source};
use crate::outbox::Outbox;
use crate::sizing;
use crate::store::{Store, StoreError};

/// How long start-up waits for the VPC API before serving without it.
const CLOUD_AT_START: Duration = Duration::from_secs(5);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored pool is inconsistent.
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

impl<C: Cloud, D: Dataplane> Agent<C, D> {
    /// Restores the pool from `store`, and serves from it at once; the
    /// cloud is asked for the node's details and ENIs (adopting what the
    /// store lacks, dropping what vanished) when it answers.
    pub async fn start(
        cloud: C,
        dataplane: D,
        store: Box<dyn Store>,
        config: AgentConfig,
        clock: Clock,
    ) -> Result<Self, StartError> {
        Self::start_with_claims(
            cloud,
            dataplane,
            store,
            config,
            clock,
            Arc::new(LocalClaims),
        )
        .await
    }

    /// [`start`](Self::start) with the cluster's claims, which follow
    /// the outbox from a snapshot of every claim the node holds.
    pub async fn start_with_claims(
        cloud: C,
        dataplane: D,
        store: Box<dyn Store>,
        config: AgentConfig,
        clock: Clock,
        cluster_claims: Arc<dyn ClusterClaims>,
    ) -> Result<Self, StartError> {
        // Reading the store may touch the disk: off the runtime's workers.
        let (store, snapshot) = tokio::task::spawn_blocking(move || {
            let snapshot = store.load();
            (store, snapshot)
        })
        .await
        .map_err(|e| StoreError::Io(e.to_string().into()))?;
        let ipam = Ipam::restore(config.ip_cooldown.as_millis() as u64, snapshot?)?;
        let outbox = Outbox::new(ipam.clone());
        let committer = Committer::start(store, Arc::clone(&outbox));
        let agent = Agent {
            instance_id: cloud.instance_id(),
            cloud,
            dataplane,
            node: RwLock::new(None),
            config,
            txn: Txn::new(ipam, committer, clock),
            cluster_claims: Arc::clone(&cluster_claims),
            outbox: Arc::clone(&outbox),
            overrides: RwLock::default(),
            grow_lock: tokio::sync::Mutex::new(()),
            pool_changed: Notify::new(),
            ips_wanted: Notify::new(),
            waiting_for_ip: AtomicUsize::new(0),
            ips_added: Notify::new(),
            growth_rounds: tokio::sync::watch::channel(GrowthRound::default()).0,
            loop_grows: AtomicBool::new(false),
            rounds_done: AtomicU64::new(0),
            asleep_until: AtomicU64::new(0),
            last_wait: std::sync::atomic::AtomicU64::new(0),
            gc_lock: tokio::sync::RwLock::new(()),
            conditions: Conditions::default(),
            attaching: Mutex::default(),
            last_reconcile: Mutex::new(0),
            stray_ipv6: Mutex::new(Vec::new()),
        };
        match tokio::time::timeout(CLOUD_AT_START, agent.connect_cloud()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e.message, "serving from the store until the VPC API answers")
            }
            Err(_) => {
                agent.cloud_unreachable("no answer within 5 s at start");
                warn!("the VPC API did not answer at start; serving from the store meanwhile");
            }
        }
        let enis: Vec<EniRecord> = agent.txn.read(|ipam, _| ipam.enis().to_vec());
        agent
            .program_enis(
                &enis,
                "cannot program ENI; pods on it will not be reachable",
            )
            .await;
        // Egress out of the VPC; a failure is logged (and every CHECK then
        // names it), never a reason not to serve pods inside the VPC.
        if let Err(e) = agent.dataplane.program_egress().await {
            warn!(error = %e, "cannot program egress masquerade; pods may not reach outside the VPC");
        }
        // Whatever the kernel holds that no allocation owns is a leftover of
        // a crash or of a DEL whose veth was still queued: remove it. A
        // failure here is logged, never a reason not to start.
        match agent.dataplane.collect_garbage(&agent.live_specs()).await {
            Ok(0) => {}
            Ok(leftovers) => info!(leftovers, "removed kernel objects no allocation owns"),
            Err(e) => warn!(error = %e, "start-up garbage collection incomplete"),
        }
        let counts = agent.txn.read(|ipam, now| ipam.counts(now));
        info!(
            enis = enis.len(),
            ips = counts.total,
            allocated = counts.allocated,
            cooling = counts.cooling,
            reserved = counts.reserved,
            "pool restored"
        );
        // Subscribed here, not in the task: a commit made before the task
        // first runs is still delivered as itself.
        tokio::spawn(cluster_claims::follow(
            outbox.subscribe(),
            cluster_claims,
            agent.instance_id.clone(),
        ));
        Ok(agent)
    }

    /// Asks the VPC API for the node's details (once; later only its
    /// subnets' free addresses, for the metrics) and its ENIs, and brings
    /// the pool in line. Programs ENIs it adopts. Sets or clears the
    /// `CloudUnreachable` condition.
    pub(super) async fn connect_cloud(&self) -> Result<(), proto::wire::AgentError> {
        self.txn.ensure_healthy()?;
        let node = match self.node() {
            Some(node) => {
                // The subnet runway of the metrics stays as fresh as the
                // reconcile (one read per node and interval; shared by the
                // gateway). Not worth failing the reconcile for.
                if let Err(e) = self.cloud.refresh_subnets(&self.overrides().subnets).await {
                    debug!(error = %e, "could not look at the subnets' free addresses");
                }
                node
            }
            None => {
                let subnets = self.overrides().subnets;
                let node = self
                    .cloud
                    .node_in(&subnets)
                    .await
                    .map_err(|e| self.cloud_failed(e))?;
                info!(zone = %node.zone, subnet = ?node.subnet.as_ref().map(|s| &s.id), "node details from the VPC API");
                *self.node.write().unwrap_or_else(|p| p.into_inner()) = Some(node.clone());
                node
            }
        };
        let listed = self
            .cloud
            .list_enis()
            .await
            .map_err(|e| self.cloud_failed(e))?;
        self.conditions.clear(CLOUD_UNREACHABLE);
        *self
            .last_reconcile
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = self.txn.now();
        self.reconcile_with(&listed, &node).await
    }

    /// Brings the pool in line with `listed`, the cloud's ENIs of this
    /// node, and programs the ENIs it adopts.
    pub(super) async fn reconcile_with(
        &self,
        listed: &[Eni],
        node: &NodeInfo,
    ) -> Result<(), proto::wire::AgentError> {
        let adopted = self
            .txn
            .commit(|ipam, _| {
                let changes = reconcile(ipam, listed, node, self.config.ipv6);
                // Programmed: ENIs adopted, and ENIs that got their own
                // IPv6 address (found on the ENI after a crash).
                let adopted: Vec<EniRecord> = changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::PutEni(e)
                            if ipam.eni(&e.id).is_none_or(|known| {
                                known.own_ipv6().is_none() && e.own_ipv6().is_some()
                            }) =>
                        {
                            Some(e.clone())
                        }
                        _ => None,
                    })
                    .collect();
                if !changes.is_empty() {
                    info!(changes = changes.len(), "pool reconciled with the cloud");
                }
                Ok((changes, adopted))
            })
            .await?;
        self.program_enis(&adopted, "cannot program an adopted ENI")
            .await;
        if self.config.ipv6 {
            let strays = self.txn.read(|ipam, _| stray_ipv6(ipam, listed));
            *self.stray_ipv6.lock().unwrap_or_else(|p| p.into_inner()) = strays;
        }
        Ok(())
    }

    /// Programs each of `enis` (one that fails is logged with `failed` and
    /// skipped: one ENI gone missing must not keep the node from serving)
    /// and records the MTU of each one's link where the pool says
    /// otherwise, so its pods get the VPC's MTU.
    async fn program_enis(&self, enis: &[EniRecord], failed: &str) {
        let mut mtus = Vec::new();
        for eni in enis {
            match self.dataplane.program_eni(eni).await {
                Ok(mtu) => mtus.push((eni.id.clone(), mtu)),
                Err(e) => warn!(eni = %eni.id, error = %e, "{failed}"),
            }
        }
        let stale = self.txn.read(|ipam, _| {
            mtus.iter()
                .any(|(id, mtu)| ipam.eni(id).is_some_and(|e| e.mtu != *mtu))
        });
        if !stale {
            return;
        }
        let recorded = self
            .txn
            .commit(|ipam, _| Ok((mtu_changes(ipam, &mtus), ())))
            .await;
        if let Err(e) = recorded {
            warn!(error = %e.message, "cannot record the ENIs' MTUs");
        }
    }

    /// Records that the cloud failed; unreachable-like failures set the
    /// condition.
    fn cloud_failed(&self, e: CloudError) -> proto::wire::AgentError {
        if matches!(e, CloudError::Other(_) | CloudError::Auth(_)) {
            self.cloud_unreachable(&e.to_string());
        }
        cloud_error(e)
    }

    pub(super) fn cloud_unreachable(&self, why: &str) {
        self.conditions.set(CLOUD_UNREACHABLE, why, self.txn.now());
    }

    /// Every live allocation as the dataplane needs it.
    /// Releases the IPs of sandboxes whose network namespace is gone
    /// though no DEL came: a runtime whose ADD failed (the agent was
    /// restarting, say) cleans up with a DEL that fails too and then drops
    /// the sandbox for good, and nothing would ever release its IP. A
    /// static pod's claim then turns `Reserved`, so the node the pod runs
    /// on now can take it over. Returns how many it released, or `None`
    /// when it did not look (an ADD or DEL was in flight).
    pub(super) async fn release_vanished(&self) -> Result<Option<usize>, proto::wire::AgentError> {
        // No ADD meanwhile: one between its commit and its veth would look
        // vanished. Never waited for: an ADD waiting for IPs holds the lock
        // while the maintenance loop (this caller) grows the pool, so the
        // sweep is skipped while any ADD or DEL is in flight.
        let Ok(_exclusive) = self.gc_lock.try_write() else {
            return Ok(None);
        };
        let gone = self
            .dataplane
            .vanished(&self.live_specs())
            .await
            .map_err(super::errors::dataplane_error)?;
        let mut released = 0;
        for spec in &gone {
            if let Err(e) = self.dataplane.detach_pod(spec).await {
                warn!(attachment = %spec.key, error = %e, "could not unwire a vanished sandbox; next round");
                continue;
            }
            self.release(&spec.key).await?;
            released += 1;
            warn!(
                attachment = %spec.key,
                ip = %spec.ip,
                "released the IP of a sandbox whose network namespace is gone; its DEL never came"
            );
        }
        Ok(Some(released))
    }

    pub(super) fn live_specs(&self) -> Vec<PodSpec> {
        self.txn.read(|ipam, _| {
            ipam.allocations()
                .map(|a| PodSpec {
                    key: a.key.clone(),
                    netns: PodNetns::at(&a.netns),
                    ip: a.ip,
                    ipv6: a.ipv6,
                    eni: ipam
                        .eni(&a.eni_id)
                        .cloned()
                        .unwrap_or_else(|| missing_eni(&a.eni_id)),
                })
                .collect()
        })
    }
}

/// The records of the ENIs among `mtus` (ENI id, its link's MTU) whose
/// MTU the pool has otherwise, with the link's.
fn mtu_changes(ipam: &Ipam, mtus: &[(String, u32)]) -> Vec<Change> {
    mtus.iter()
        .filter_map(|(id, mtu)| {
            let known = ipam.eni(id).filter(|e| e.mtu != *mtu)?;
            info!(eni = %id, was = known.mtu, mtu, "ENI MTU taken from its link");
            Some(Change::PutEni(EniRecord {
                mtu: *mtu,
                ..known.clone()
            }))
        })
        .collect()
}

/// A stand-in for an ENI the pool no longer has, so that a pod on it can
/// still be unwired: table 0 matches the pod's rule in any table.
pub(super) fn missing_eni(id: &str) -> EniRecord {
    EniRecord {
        id: id.to_string(),
        mac: String::new(),
        subnet_id: String::new(),
        gateway: Ipv4Addr::UNSPECIFIED,
        primary_ip: Ipv4Addr::UNSPECIFIED,
        mtu: 1500,
        table: 0,
        ips: Vec::new(),
        ipv6: Vec::new(),
    }
}

/// Changes that bring the pool in line with the ENIs the cloud reports
/// attached to this node: ENIs and IPs the pool lacks are adopted (an agent
/// that died between the cloud call and the commit); ENIs and IPs that
/// vanished are dropped, except addresses a pod holds, which are kept (and
/// logged) until the pod goes, so DEL still finds them. A vanished ENI
/// keeps only those. A static claim is never dropped here: its address is
/// got back, or the claim marked lost, when its pod next starts.
/// `ipv6` (a dual-stack agent): IPv6 addresses on a pooled ENI that no
/// IP has as its partner (an agent that died between the cloud call and
/// the commit) become the partners of the IPs that lack one.
pub fn reconcile(ipam: &Ipam, cloud_enis: &[Eni], node: &NodeInfo, ipv6_mode: bool) -> Vec<Change> {
    let held: HashSet<Ipv4Addr> = ipam.allocations().map(|a| a.ip).collect();
    let wanted = incoming_ipv6(ipam);
    let mut next_table = ipam
        .enis()
        .iter()
        .map(|e| e.table + 1)
        .max()
        .unwrap_or(sizing::FIRST_ENI_TABLE);
    let mut changes = Vec::new();
    let secondary: Vec<&Eni> = cloud_enis.iter().filter(|e| !e.primary).collect();
    for known in ipam.enis() {
        if secondary.iter().any(|e| e.id == known.id) {
            continue;
        }
        let kept: Vec<Ipv4Addr> = known
            .ips
            .iter()
            .filter(|ip| held.contains(ip))
            .copied()
            .collect();
        if kept.is_empty() {
            warn!(eni = %known.id, "ENI vanished from the cloud; dropped from the pool");
            changes.push(Change::RemoveEni(known.id.clone()));
        } else if kept != known.ips {
            warn!(eni = %known.id, pods = kept.len(), "ENI vanished from the cloud while pods hold its IPs; kept for them until they go");
            changes.push(Change::PutEni(EniRecord {
                ips: kept,
                ..known.clone()
            }));
        }
    }
    for eni in secondary {
        match ipam.eni(&eni.id) {
            Some(known) => {
                let mut ips: Vec<_> = known
                    .ips
                    .iter()
                    .filter(|ip| {
                        let there = eni.secondary_ips.contains(ip);
                        if !there && held.contains(ip) {
                            warn!(eni = %eni.id, ip = %ip, "IP vanished from the cloud while a pod holds it; kept");
                        } else if !there {
                            warn!(eni = %eni.id, ip = %ip, "IP vanished from the cloud; dropped");
                        }
                        there || held.contains(ip)
                    })
                    .copied()
                    .collect();
                ips.extend(
                    eni.secondary_ips
                        .iter()
                        .filter(|ip| !known.ips.contains(ip)),
                );
                ips.sort();
                let mut before = known.ips.clone();
                before.sort();
                // An IPv6 partner stays while the cloud shows it on the
                // ENI, or while a pod holds its IPv4 address.
                let ipv6: Vec<_> = known
                    .ipv6
                    .iter()
                    .filter(|(v4, v6)| {
                        (ips.contains(v4) || *v4 == known.primary_ip)
                            && (eni.ipv6s.contains(v6) || held.contains(v4))
                    })
                    .copied()
                    .collect();
                // What the cloud shows beyond the partners becomes a
                // partner only if it never was one (an answer lost in a
                // crash): the partner of an address that left (a static
                // IP moved to another node, whose new holder takes it) or
                // an address on its way to an incoming claim is no
                // address for another pod here.
                let adoptable: Vec<Ipv6Addr> = eni
                    .ipv6s
                    .iter()
                    .filter(|v6| !known.ipv6.iter().any(|(_, p)| p == *v6) && !wanted.contains(v6))
                    .copied()
                    .collect();
                let mut record = EniRecord {
                    ips,
                    ipv6,
                    ..known.clone()
                };
                if ipv6_mode {
                    record.pair_ipv6(&adoptable);
                }
                record.ipv6.sort();
                let mut known_ipv6 = known.ipv6.clone();
                known_ipv6.sort();
                if record.ips != before || record.ipv6 != known_ipv6 {
                    changes.push(Change::PutEni(record));
                }
            }
            None => {
                // Its gateway is known only for the node's own subnet.
                let Some(subnet) = node.subnet.as_ref().filter(|s| s.id == eni.subnet_id) else {
                    warn!(eni = %eni.id, subnet = %eni.subnet_id, "not adopting an ENI of another subnet");
                    continue;
                };
                let mut record = pool_record(eni, subnet, node.mtu, next_table);
                if ipv6_mode {
                    let adoptable: Vec<Ipv6Addr> = eni
                        .ipv6s
                        .iter()
                        .filter(|v6| !wanted.contains(v6))
                        .copied()
                        .collect();
                    record.pair_ipv6(&adoptable);
                }
                changes.push(Change::PutEni(record));
                next_table += 1;
            }
        }
    }
    changes
}

/// The IPv6 addresses following incoming static claims (moved from
/// another node): neither partners of other addresses nor strays.
fn incoming_ipv6(ipam: &Ipam) -> HashSet<Ipv6Addr> {
    ipam.claims()
        .filter_map(|c| match &c.handover {
            Some(Handover::Incoming {
                from: Source::Node { ipv6, .. },
            }) => *ipv6,
            _ => None,
        })
        .collect()
}

/// The IPv6 addresses the cloud shows on the pool's ENIs that no IP of
/// the pool has as its partner: more than its IPs needed (a dual-stack
/// agent gives them back).
pub fn stray_ipv6(ipam: &Ipam, cloud_enis: &[Eni]) -> Vec<(String, Ipv6Addr)> {
    let wanted = incoming_ipv6(ipam);
    cloud_enis
        .iter()
        .filter_map(|eni| ipam.eni(&eni.id).map(|known| (eni, known)))
        .flat_map(|(eni, known)| {
            eni.ipv6s
                .iter()
                .filter(|v6| !known.ipv6.iter().any(|(_, p)| p == *v6) && !wanted.contains(v6))
                .map(|v6| (eni.id.clone(), *v6))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Limits, Subnet};
    use crate::ipam::Claim;

    fn node() -> NodeInfo {
        NodeInfo {
            instance_id: "ins-1".into(),
            zone: "z1".into(),
            vpc_id: "vpc-1".into(),
            subnet: Some(Subnet {
                id: "subnet-1".into(),
                zone: "z1".into(),
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                network: Ipv4Addr::new(10, 0, 0, 0),
                prefix_len: 24,
            }),
            limits: Limits {
                max_enis: 4,
                max_ips_per_eni: 10,
            },
            mtu: 1500,
        }
    }

    use crate::ipam::testing::{allocation, eni as record, ip};

    fn cloud(id: &str, ips: &[u8]) -> Eni {
        Eni {
            id: id.into(),
            mac: "02:00:00:00:00:99".into(),
            subnet_id: "subnet-1".into(),
            primary_ip: ip(99),
            secondary_ips: ips.iter().map(|b| ip(*b)).collect(),
            ipv6s: Vec::new(),
            primary: false,
            attached_to: Some("ins-1".into()),
            created_unix: None,
        }
    }

    fn pool(enis: &[EniRecord], held: &[u8]) -> Ipam {
        let mut ipam = Ipam::new(0);
        ipam.apply(&enis.iter().cloned().map(Change::PutEni).collect::<Vec<_>>());
        for b in held {
            ipam.apply(&[Change::PutAllocation(allocation(
                &format!("c{b}"),
                *b,
                &enis[0].id,
            ))]);
        }
        ipam
    }

    #[test]
    fn an_unknown_eni_of_the_nodes_subnet_is_adopted() {
        let ipam = pool(&[record("eni-a", 101, &[10])], &[]);
        let changes = reconcile(
            &ipam,
            &[cloud("eni-a", &[10]), cloud("eni-b", &[20, 21])],
            &node(),
            false,
        );
        assert_eq!(changes.len(), 1);
        match &changes[0] {
            Change::PutEni(e) => {
                assert_eq!((e.id.as_str(), e.table, e.ips.len()), ("eni-b", 102, 2))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_vanished_eni_keeps_only_what_pods_hold() {
        let ipam = pool(&[record("eni-a", 101, &[10, 11, 12])], &[11]);
        let changes = reconcile(&ipam, &[], &node(), false);
        assert_eq!(
            changes,
            vec![Change::PutEni(record("eni-a", 101, &[11]))],
            "free IPs of a vanished ENI must never be handed out"
        );
        let empty = pool(&[record("eni-a", 101, &[10])], &[]);
        assert_eq!(
            reconcile(&empty, &[], &node(), false),
            vec![Change::RemoveEni("eni-a".into())]
        );
    }

    #[test]
    fn vanished_ips_are_dropped_unless_held_and_new_ones_adopted() {
        let ipam = pool(&[record("eni-a", 101, &[10, 11, 12])], &[10]);
        let changes = reconcile(&ipam, &[cloud("eni-a", &[12, 13])], &node(), false);
        assert_eq!(
            changes,
            vec![Change::PutEni(record("eni-a", 101, &[10, 12, 13]))]
        );
    }

    #[test]
    fn an_ipv6_partner_stays_while_the_cloud_shows_it_or_a_pod_holds_its_ip() {
        let v6 = |n: u16| std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n);
        let mut eni = record("eni-a", 101, &[10, 11, 12]);
        // fd00::1 is the ENI's own.
        eni.pair_ipv6(&[v6(1), v6(2), v6(3), v6(4)]);
        let ipam = pool(&[eni.clone()], &[10]);
        // The cloud lost fd00::2 (held: kept) and fd00::3 (free: dropped).
        let mut there = cloud("eni-a", &[10, 11, 12]);
        there.ipv6s = vec![v6(1), v6(4)];
        let mut want = eni.clone();
        want.ipv6.retain(|(_, p)| *p != v6(3));
        assert_eq!(
            reconcile(&ipam, &[there.clone()], &node(), false),
            vec![Change::PutEni(want)]
        );
        there.ipv6s = vec![v6(1), v6(2), v6(3), v6(4)];
        assert!(reconcile(&ipam, &[there], &node(), false).is_empty());
    }

    #[test]
    fn ipv6_addresses_assigned_before_a_crash_become_partners_and_the_rest_strays() {
        let v6 = |n: u16| std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n);
        let mut eni = record("eni-a", 101, &[10, 11, 12]);
        eni.pair_ipv6(&[v6(1), v6(2)]);
        let ipam = pool(&[eni.clone()], &[]);
        // The agent died after AssignIpv6Addresses answered fd00::3 and
        // fd00::4 for 11 and 12; fd00::5 is more than any IP needs.
        let mut there = cloud("eni-a", &[10, 11, 12]);
        there.ipv6s = vec![v6(1), v6(2), v6(3), v6(4), v6(5)];
        assert!(
            reconcile(&ipam, std::slice::from_ref(&there), &node(), false).is_empty(),
            "an IPv4-only agent leaves the ENI's IPv6 addresses alone"
        );
        let mut after = ipam.clone();
        after.apply(&reconcile(
            &ipam,
            std::slice::from_ref(&there),
            &node(),
            true,
        ));
        let got = after.eni("eni-a").expect("still pooled");
        assert_eq!(got.ipv6_of(ip(11)), Some(v6(3)));
        assert_eq!(got.ipv6_of(ip(12)), Some(v6(4)));
        assert_eq!(got.ipv6_of(ip(10)), Some(v6(2)));
        assert_eq!(
            stray_ipv6(&after, &[there]),
            vec![("eni-a".to_string(), v6(5))]
        );
    }

    #[test]
    fn the_partner_of_an_address_that_left_is_given_back_never_paired_again() {
        let v6 = |n: u16| std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n);
        // 11's partner fd00::3; 11 moved to another node (a static IP taken
        // over there), whose new holder takes fd00::3 off this ENI. 12
        // arrived meanwhile, without a partner yet.
        let mut eni = record("eni-a", 101, &[10, 11]);
        eni.pair_ipv6(&[v6(1), v6(2), v6(3)]);
        let ipam = pool(&[eni], &[]);
        let mut there = cloud("eni-a", &[10, 12]);
        there.ipv6s = vec![v6(1), v6(2), v6(3)];
        let mut after = ipam.clone();
        after.apply(&reconcile(
            &ipam,
            std::slice::from_ref(&there),
            &node(),
            true,
        ));
        let got = after.eni("eni-a").expect("pooled");
        assert_eq!(got.ipv6_of(ip(11)), None);
        assert_eq!(
            got.ipv6_of(ip(12)),
            None,
            "another pod here would hold an address the claim's new node takes"
        );
        assert_eq!(
            stray_ipv6(&after, &[there]),
            vec![("eni-a".to_string(), v6(3))]
        );
    }

    #[test]
    fn an_incoming_claims_ipv6_address_is_neither_another_ips_partner_nor_a_stray() {
        let v6 = |n: u16| std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n);
        let mut eni = record("eni-a", 101, &[10]);
        eni.pair_ipv6(&[v6(1), v6(2)]);
        let mut ipam = pool(&[eni], &[]);
        // web-0's IPv4 address 11 arrived and its IPv6 address fd00::9 was
        // assigned here by name, then the agent died before the commit.
        ipam.apply(&[Change::PutClaim(Claim {
            namespace: "ns".into(),
            name: "web-0".into(),
            ip: ip(11),
            eni_id: "eni-a".into(),
            subnet_id: "subnet-1".into(),
            created_ms: 0,
            last_bound_ms: 0,
            released_ms: Some(1),
            expire_after_ms: None,
            owner: None,
            lost: None,
            requested: false,
            handover: Some(Handover::Incoming {
                from: Source::Node {
                    node: "ins-2".into(),
                    eni_id: "eni-z".into(),
                    ipv6: Some(v6(9)),
                },
            }),
        })]);
        let mut there = cloud("eni-a", &[10, 11, 12]);
        there.ipv6s = vec![v6(1), v6(2), v6(9)];
        let mut after = ipam.clone();
        after.apply(&reconcile(
            &ipam,
            std::slice::from_ref(&there),
            &node(),
            true,
        ));
        let got = after.eni("eni-a").expect("pooled");
        assert!(
            got.ipv6.iter().all(|(_, p)| *p != v6(9)),
            "the claim's own, for its arrival: {got:?}"
        );
        assert!(stray_ipv6(&after, &[there]).is_empty());
    }

    #[test]
    fn an_adopted_enis_ipv6_addresses_are_its_ips_partners() {
        let ipam = pool(&[], &[]);
        let v6 = |n: u16| std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n);
        let mut there = cloud("eni-b", &[20, 21]);
        there.ipv6s = vec![v6(7), v6(8)];
        let changes = reconcile(&ipam, &[there], &node(), true);
        match &changes[..] {
            [Change::PutEni(e)] => {
                assert_eq!(e.own_ipv6(), Some(v6(7)), "the ENI's own first");
                assert_eq!(e.ipv6_of(ip(20)), Some(v6(8)));
                assert_eq!(e.ipv6.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reserved_claim_survives_its_eni_vanishing() {
        let mut ipam = pool(&[record("eni-a", 101, &[10, 11])], &[]);
        ipam.apply(&[Change::PutClaim(Claim {
            namespace: "ns".into(),
            name: "web-0".into(),
            ip: ip(11),
            eni_id: "eni-a".into(),
            subnet_id: "subnet-1".into(),
            created_ms: 0,
            last_bound_ms: 0,
            released_ms: Some(1),
            expire_after_ms: None,
            owner: None,
            lost: None,
            requested: false,
            handover: None,
        })]);
        let changes = reconcile(&ipam, &[], &node(), false);
        ipam.apply(&changes);
        let claim = ipam.claim("ns", "web-0").expect("the claim stays");
        assert!(
            ipam.claim_trouble(claim).is_some(),
            "its pod's next ADD must get the address back first"
        );
    }
}
