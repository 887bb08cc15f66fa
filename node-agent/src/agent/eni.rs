//! The pool's shape in the cloud: growing it (IPs on existing ENIs, new
//! ENIs), giving back what is beyond the targets, deleting this node's
//! leaked ENIs, and the maintenance tick that drives all of it. Every
//! cloud call is preceded by a poison check: a poisoned agent leaves the
//! cloud alone.

use std::sync::Arc;
use std::time::Duration;

use proto::wire::AgentError;
use tracing::{info, warn};

use super::Agent;
use super::conditions::{ENI_LIMIT, NO_SUBNET_IN_ZONE};
use super::errors::{cloud_error, dataplane_error, internal};
use crate::cloud::{Cloud, CloudError, Eni, Subnet};
use crate::dataplane::Dataplane;
use crate::ipam::{Change, EniRecord};
use crate::sizing::{self, Action};

impl<C: Cloud, D: Dataplane> Agent<C, D> {
    /// The maintenance tick, until the agent is poisoned or the task is
    /// dropped: the cloud reconnected and compared with when due, the pool
    /// kept at its targets, released claims expired, leaked ENIs deleted.
    /// Runs again at once after every ADD that changed the pool.
    pub async fn maintain_pool(self: Arc<Self>) {
        loop {
            if self.txn.poisoned().is_some() {
                return;
            }
            let due = self.reconcile_due();
            if (self.node().is_none() || due)
                && let Err(e) = self.connect_cloud().await
            {
                warn!(error = %e.message, "could not reach the VPC API");
            }
            if self.node().is_some() {
                if let Err(e) = self.grow(0).await {
                    warn!(error = %e.message, "could not warm the pool");
                }
                if let Err(e) = self.shrink().await {
                    warn!(error = %e.message, "could not give back spare IPs");
                }
                if due && let Err(e) = self.reap_leaked_enis().await {
                    warn!(error = %e.message, "could not look for leaked ENIs");
                }
            }
            if let Err(e) = self.expire_claims().await {
                warn!(error = %e.message, "could not expire static IP claims");
            }
            if due {
                self.repair_egress().await;
            }
            tokio::select! {
                _ = self.pool_changed.notified() => {}
                // Jittered by up to a tenth, so nodes started together do
                // not call the API together every tick.
                _ = tokio::time::sleep(self.config.maintenance_interval + jitter(self.config.maintenance_interval / 10)) => {}
            }
        }
    }

    /// Programs the egress masquerade again when it is missing or wrong
    /// (a flushed ruleset, say): checked every reconcile period.
    pub(super) async fn repair_egress(&self) {
        if let Err(wrong) = self.dataplane.check_egress().await {
            warn!(error = %wrong, "egress masquerade missing or wrong; programming it again");
            if let Err(e) = self.dataplane.program_egress().await {
                warn!(error = %e, "cannot program egress masquerade");
            }
        }
    }

    /// Whether the periodic comparison with the cloud is due (jittered, so
    /// nodes started together do not call together).
    fn reconcile_due(&self) -> bool {
        let last = *self
            .last_reconcile
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let period = self.config.reconcile_interval;
        let jittered = period + jitter(period / 5);
        self.txn.now().saturating_sub(last) >= jittered.as_millis() as u64
    }

    /// Brings the pool to its targets plus `extra` free IPs (one per ADD
    /// waiting for an IP), as far as the limits allow.
    pub(super) async fn grow(&self, extra: usize) -> Result<(), AgentError> {
        let _serialised = self.grow_lock.lock().await;
        self.grow_locked(extra).await
    }

    /// For ADDs that found no free IP, `waiting` of them now: once the
    /// growth in progress (if any) is done, grow only if there is still no
    /// free IP, and then ahead of demand, for twice the ADDs waiting, so a
    /// burst is served by few growth rounds and few cloud calls. ADDs that
    /// arrive during a growth wait for it, not for one round each.
    pub(super) async fn grow_for_waiting(&self, waiting: usize) -> Result<(), AgentError> {
        let _serialised = self.grow_lock.lock().await;
        if self.txn.read(|ipam, now| ipam.counts(now).free) > 0 {
            return Ok(());
        }
        self.grow_locked(waiting.saturating_mul(2)).await
    }

    pub(super) async fn grow_locked(&self, extra: usize) -> Result<(), AgentError> {
        self.txn.ensure_healthy()?;
        let Some(limits) = self.limits() else {
            // The cloud has not answered yet: ask it now.
            self.connect_cloud().await?;
            return Ok(());
        };
        let (enis, counts) = self
            .txn
            .read(|ipam, now| (ipam.enis().to_vec(), ipam.counts(now)));
        let want_free = self.targets().want_free(limits, counts.total, counts.free) + extra;
        for action in sizing::plan_growth(&enis, limits, counts.free, want_free) {
            self.txn.ensure_healthy()?;
            match action {
                Action::AssignIps { eni_id, count } => {
                    let mut record = self
                        .txn
                        .read(|ipam, _| ipam.eni(&eni_id).cloned())
                        .ok_or_else(|| internal(format!("planned ENI {eni_id} vanished")))?;
                    let ips = self
                        .cloud
                        .assign_ips(&eni_id, count, &record.ips)
                        .await
                        .map_err(cloud_error)?;
                    record.ips.extend(&ips);
                    if let Err(e) = self
                        .txn
                        .commit(move |_, _| Ok((vec![Change::PutEni(record)], ())))
                        .await
                    {
                        // The store does not know these IPs: give them back
                        // rather than leak them (unless poisoned: the
                        // restart adopts them from the cloud).
                        if self.txn.poisoned().is_none()
                            && let Err(undo) = self.cloud.unassign_ips(&eni_id, &ips).await
                        {
                            warn!(eni = %eni_id, error = %undo, "could not unassign IPs; adopted at next start");
                        }
                        return Err(e);
                    }
                    info!(eni = %eni_id, count, "assigned IPs");
                }
                Action::CreateEni { table, count } => {
                    let record = self.create_eni(table, count).await?;
                    self.txn
                        .commit(move |_, _| Ok((vec![Change::PutEni(record)], ())))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Gives back free IPs beyond the targets, a batch at a time, and the
    /// ENIs left with none. The pool drops them (durably) before the cloud
    /// is asked, so no pod can get an IP on its way out.
    pub(super) async fn shrink(&self) -> Result<(), AgentError> {
        let _serialised = self.grow_lock.lock().await;
        let Some(limits) = self.limits() else {
            return Ok(());
        };
        let targets = self.targets();
        let plan = self
            .txn
            .commit(move |ipam, now| {
                let c = ipam.counts(now);
                let plan = sizing::plan_release(
                    &ipam.usage(now),
                    targets,
                    targets.want_free(limits, c.total, c.free),
                );
                let mut changes = Vec::new();
                for step in &plan {
                    match step {
                        sizing::Release::Ips { eni_id, ips } => {
                            if let Some(mut record) = ipam.eni(eni_id).cloned() {
                                record.ips.retain(|ip| !ips.contains(ip));
                                changes.push(Change::PutEni(record));
                            }
                        }
                        sizing::Release::Eni { eni_id } => {
                            changes.push(Change::RemoveEni(eni_id.clone()))
                        }
                    }
                }
                Ok((changes, plan))
            })
            .await?;
        for step in plan {
            self.txn.ensure_healthy()?;
            match step {
                sizing::Release::Ips { eni_id, ips } => {
                    match self.cloud.unassign_ips(&eni_id, &ips).await {
                        Ok(()) => info!(eni = %eni_id, count = ips.len(), "gave back spare IPs"),
                        Err(e) => {
                            warn!(eni = %eni_id, error = %e, "could not unassign spare IPs; adopted again at next reconciliation")
                        }
                    }
                }
                sizing::Release::Eni { eni_id } => {
                    self.discard_eni(&eni_id).await;
                    info!(eni = %eni_id, "gave back an empty ENI");
                }
            }
        }
        Ok(())
    }

    /// Deletes ENIs created for this node that are attached nowhere and
    /// older than the grace period: left by an agent that died between
    /// creating and attaching. Younger ones may be on their way and are
    /// left alone. One call per period, filtered by this node's tag; ENIs
    /// of nodes that no longer exist are the cluster component's job.
    pub(super) async fn reap_leaked_enis(&self) -> Result<usize, AgentError> {
        self.txn.ensure_healthy()?;
        let now = self.txn.now() / 1000;
        let grace = self.config.leaked_eni_grace.as_secs();
        let leaked: Vec<Eni> = self
            .cloud
            .list_node_detached_enis()
            .await
            .map_err(cloud_error)?
            .into_iter()
            .filter(|e| !e.primary && e.attached_to.is_none())
            .filter(|e| {
                e.created_unix
                    .is_some_and(|c| c.saturating_add(grace) < now)
            })
            .collect();
        let mut deleted = 0;
        for eni in leaked {
            self.txn.ensure_healthy()?;
            match self.cloud.delete_eni(&eni.id).await {
                Ok(()) => {
                    info!(eni = %eni.id, "deleted a leaked ENI");
                    deleted += 1;
                }
                Err(e) => warn!(eni = %eni.id, error = %e, "could not delete a leaked ENI"),
            }
        }
        Ok(deleted)
    }

    /// Creates an ENI with `count` IPs in the node's subnet, attaches it and
    /// programs it; shown as attaching meanwhile.
    async fn create_eni(&self, table: u32, count: u32) -> Result<EniRecord, AgentError> {
        let node = self
            .node()
            .ok_or_else(|| internal("the node's details are not known yet"))?;
        let Some(subnet) = &node.subnet else {
            let e = CloudError::NoSubnetInZone(node.zone.clone());
            self.conditions
                .set(NO_SUBNET_IN_ZONE, &e.to_string(), self.txn.now());
            return Err(cloud_error(e));
        };
        // The last failed attempt stops being news once a new one starts.
        self.attaching().retain(|_, (_, error)| error.is_none());
        let eni = match self.cloud.create_eni(&subnet.id, count).await {
            Ok(eni) => eni,
            Err(e) => {
                if matches!(e, CloudError::EniQuota(_)) {
                    self.conditions
                        .set(ENI_LIMIT, &e.to_string(), self.txn.now());
                }
                return Err(cloud_error(e));
            }
        };
        self.conditions.clear(ENI_LIMIT);
        self.attaching_state(&eni, None);
        if let Err(e) = self.cloud.attach_eni(&eni.id).await {
            self.attaching_state(&eni, Some(e.to_string()));
            // An ENI that is not attached must not outlive this call; the
            // client already checked that the attach did not go through.
            self.discard_eni(&eni.id).await;
            return Err(cloud_error(e));
        }
        let record = pool_record(&eni, subnet, node.mtu, table);
        if let Err(e) = self.dataplane.program_eni(&record).await {
            self.attaching_state(&eni, Some(e.to_string()));
            self.discard_eni(&record.id).await;
            return Err(dataplane_error(e));
        }
        self.attaching().remove(&eni.id);
        info!(eni = %record.id, table, ips = record.ips.len(), "attached ENI");
        Ok(record)
    }

    /// Shows an ENI (and its IPs) as attaching, with the error if it failed.
    fn attaching_state(&self, eni: &Eni, error: Option<String>) {
        self.attaching()
            .insert(eni.id.clone(), (eni.clone(), error));
    }

    /// Detaches and deletes an ENI the pool does not record, so nothing is
    /// left that no one owns. Whether it is attached is asked of the cloud,
    /// never assumed: an attached ENI cannot be deleted.
    async fn discard_eni(&self, eni_id: &str) {
        if let Err(e) = self.cloud.detach_eni(eni_id).await
            && !matches!(e, CloudError::NotFound(_) | CloudError::InvalidState(_))
        {
            warn!(eni = %eni_id, error = %e, "could not detach an unused ENI; the leaked-ENI check retries");
            return;
        }
        if let Err(e) = self.cloud.delete_eni(eni_id).await {
            warn!(eni = %eni_id, error = %e, "could not delete an unused ENI; the leaked-ENI check retries");
        }
    }
}

/// An ENI of the cloud as the pool records it, in route table `table`.
pub(super) fn pool_record(eni: &Eni, subnet: &Subnet, mtu: u32, table: u32) -> EniRecord {
    EniRecord {
        id: eni.id.clone(),
        mac: eni.mac.clone(),
        subnet_id: eni.subnet_id.clone(),
        gateway: subnet.gateway,
        primary_ip: eni.primary_ip,
        mtu,
        table,
        ips: eni.secondary_ips.clone(),
    }
}

/// A random duration below `max`.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let ms = max.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(RandomState::new().hash_one(std::time::Instant::now()) % ms)
}
