//! The pool's shape in the cloud: growing it (IPs on existing ENIs, new
//! ENIs), giving back what is beyond the targets, deleting this node's
//! leaked ENIs, and the maintenance tick that drives all of it. Every
//! cloud call is preceded by a poison check: a poisoned agent leaves the
//! cloud alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use proto::wire::{AgentError, ErrorKind};
use tracing::{info, warn};

use super::Agent;
use super::conditions::{ENI_LIMIT, NO_SUBNET_IN_ZONE};
use super::errors::{cloud_error, dataplane_error, internal};
use crate::cloud::{Cloud, CloudError, Eni, Subnet};
use crate::dataplane::Dataplane;
use crate::ipam::{Change, EniRecord};
use crate::sizing::{self, Action};

/// How long after an ADD left the pool short of its targets the
/// maintenance loop refills it (unless an ADD waits for an IP: then at
/// once).
pub const REFILL_DELAY: Duration = Duration::from_millis(200);
/// How soon the loop looks again while a static IP is between nodes (a
/// cluster read per such claim and one listing of the node's ENIs).
const HANDOVER_TICK: Duration = Duration::from_secs(2);

impl<C: Cloud, D: Dataplane> Agent<C, D> {
    /// The maintenance tick, until the agent is poisoned or the task is
    /// dropped: the cloud reconnected and compared with when due, the pool
    /// kept at its targets, released claims expired, claims between nodes
    /// driven on, leaked ENIs deleted.
    /// Runs a round `REFILL_DELAY` after an ADD that left the pool short of
    /// its targets, and at once when an ADD waits for an IP.
    pub async fn maintain_pool(self: Arc<Self>) {
        self.loop_grows.store(true, Ordering::SeqCst);
        let _stopped = StopGrowing(&self.loop_grows);
        // Sandboxes that vanished without a DEL are looked for once a tick.
        let mut last_sweep = None::<tokio::time::Instant>;
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
            self.cloud
                .set_urgent(self.waiting_for_ip.load(Ordering::SeqCst) > 0);
            let (grown, waiting) = match self.node() {
                Some(_) => self.grow_for_waiting().await,
                None => (
                    Err(AgentError::new(
                        ErrorKind::NoIpAvailable,
                        "no free IP; the VPC API has not answered yet",
                    )),
                    0,
                ),
            };
            if let Err(e) = &grown {
                warn!(error = %e.message, waiting, "could not grow the pool");
            }
            if self.node().is_some()
                && let Err(e) = self.pair_ipv6().await
            {
                warn!(error = %e.message, "could not give IPs their IPv6 partners");
            }
            self.growth_rounds.send_modify(|r| {
                r.count += 1;
                r.error = grown.err();
            });
            if self.node().is_some() {
                // Nothing is given back while ADDs wait, or soon after.
                if !self.recently_waited()
                    && let Err(e) = self.shrink().await
                {
                    warn!(error = %e.message, "could not give back spare IPs");
                }
                if due && let Err(e) = self.reap_leaked_enis().await {
                    warn!(error = %e.message, "could not look for leaked ENIs");
                }
            }
            if let Err(e) = self.expire_claims().await {
                warn!(error = %e.message, "could not expire static IP claims");
            }
            // Claims between nodes move on without waiting for their pods,
            // looked at again soon while any is between nodes.
            let mut moving = 0;
            if self.node().is_some() {
                match self.drive_handovers().await {
                    Ok(n) => moving = n,
                    Err(e) => {
                        moving = 1;
                        warn!(error = %e.message, "could not drive static IPs between nodes");
                    }
                }
            }
            if last_sweep.is_none_or(|at| at.elapsed() >= self.config.maintenance_interval) {
                match self.release_vanished().await {
                    // Skipped while calls were in flight: the next round
                    // tries again.
                    Ok(None) => {}
                    Ok(Some(_)) => last_sweep = Some(tokio::time::Instant::now()),
                    Err(e) => {
                        last_sweep = Some(tokio::time::Instant::now());
                        warn!(error = %e.message, "could not look for vanished sandboxes");
                    }
                }
            }
            if due {
                self.repair_egress().await;
            }
            // Jittered by up to a tenth, so nodes started together do not
            // call the API together every tick; sooner when freed memory
            // is still to be given back.
            let mut next =
                self.config.maintenance_interval + jitter(self.config.maintenance_interval / 10);
            if let Some(soon) = crate::memory::give_back() {
                next = next.min(soon);
            }
            if moving > 0 {
                next = next.min(HANDOVER_TICK);
            }
            self.rounds_done.fetch_add(1, Ordering::SeqCst);
            self.sleep_until_asked(next).await;
        }
    }

    /// Between two rounds: at once when an ADD waits for an IP, shortly
    /// when the pool changed, else after `next`. Shown as asleep (in the
    /// pool's view) only once no request was already pending, so whoever
    /// sees it asleep knows no round runs before `next` unless asked.
    async fn sleep_until_asked(&self, next: Duration) {
        let mut wanted = std::pin::pin!(self.ips_wanted.notified());
        let mut changed = std::pin::pin!(self.pool_changed.notified());
        if wanted.as_mut().enable() {
            return;
        }
        if changed.as_mut().enable() {
            return self.refill_pause().await;
        }
        let wakes = self.txn.now() + next.as_millis() as u64;
        self.asleep_until.store(wakes, Ordering::SeqCst);
        tokio::select! {
            _ = wanted => {}
            _ = changed => {
                self.asleep_until.store(0, Ordering::SeqCst);
                self.refill_pause().await;
            }
            _ = tokio::time::sleep(next) => {}
        }
        self.asleep_until.store(0, Ordering::SeqCst);
    }

    /// After the pool changed: off the reply path of the ADD that asked,
    /// and one round (one cloud call) for the pods of a burst; at once when
    /// an ADD starts waiting meanwhile.
    async fn refill_pause(&self) {
        tokio::select! {
            _ = self.ips_wanted.notified() => {}
            _ = tokio::time::sleep(REFILL_DELAY) => {}
        }
    }

    /// Where the maintenance loop is (`None`: it does not run).
    pub(super) fn maintenance_view(&self) -> Option<proto::wire::MaintenanceView> {
        self.loop_grows
            .load(Ordering::SeqCst)
            .then(|| proto::wire::MaintenanceView {
                rounds: self.rounds_done.load(Ordering::SeqCst),
                asleep_until_ms: Some(self.asleep_until.load(Ordering::SeqCst)).filter(|&t| t > 0),
            })
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

    /// Whether the pool holds fewer free IPs than its targets want and could
    /// grow: an ADD that leaves it so asks the maintenance loop for a round.
    /// Not known yet (the cloud has not answered) counts as short.
    pub(super) fn short_of_targets(&self) -> bool {
        let Some(limits) = self.limits() else {
            return true;
        };
        let targets = self.targets();
        self.txn.read(|ipam, now| {
            let counts = ipam.counts(now);
            counts.free < targets.want_free(limits, counts.total, counts.free)
                && sizing::can_grow(ipam.enis(), limits)
        })
    }

    /// Ahead of demand: the targets plus twice the ADDs waiting for an IP,
    /// counted once the growth lock is held (ADDs that arrived while an
    /// earlier growth ran are grown for in one go); with that count.
    async fn grow_for_waiting(&self) -> (Result<(), AgentError>, usize) {
        let _serialised = self.grow_lock.lock().await;
        let waiting = self.waiting_for_ip.load(Ordering::SeqCst);
        (self.grow_locked(waiting.saturating_mul(2)).await, waiting)
    }

    /// The growth lock for an ADD, waited for until `left` (what remains
    /// of the caller's deadline) runs out: behind a round that a throttling
    /// cloud keeps long, ADDs are answered `NotReady` (the runtime retries)
    /// instead of piling up on the serving threads. What holds the lock
    /// when the deadline passes carries on.
    pub(super) async fn lock_growth_for_add(
        &self,
        left: Option<Duration>,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, AgentError> {
        let locked = self.grow_lock.lock();
        match left {
            None => Ok(locked.await),
            Some(left) => tokio::time::timeout(left, locked).await.map_err(|_| {
                AgentError::new(
                    ErrorKind::NotReady,
                    "the caller's deadline passed while the ADD waited for the pool's cloud work \
                     (a growth round or a static IP's move); the ADD is retried",
                )
            }),
        }
    }

    /// For an ADD that found no free IP: waits until a growth step put new
    /// IPs in the pool or a growth round ended (its error, if it failed).
    /// The maintenance loop grows, for all the ADDs waiting at once and
    /// ahead of them, and each ENI's IPs are handed out as soon as they
    /// arrive, not when the whole round is done. Without the loop (an
    /// agent driven alone) the ADD grows the pool itself.
    /// `left`: how long the caller still waits for its answer; a wait
    /// for the maintenance loop's round ends then (a growth this ADD runs
    /// itself, with the cloud, is not cut off half-way).
    pub(super) async fn wait_for_ips(&self, left: Option<Duration>) -> Result<(), AgentError> {
        let _waiting = Waiting::new(&self.waiting_for_ip, &self.last_wait, self.txn.now());
        if !self.loop_grows.load(Ordering::SeqCst) {
            let _serialised = self.grow_lock.lock().await;
            if self.txn.read(|ipam, now| ipam.counts(now).free) > 0 {
                return Ok(());
            }
            let waiting = self.waiting_for_ip.load(Ordering::SeqCst);
            return self.grow_locked(waiting.saturating_mul(2)).await;
        }
        // Tasks in flight are looked at sooner while pods wait for them.
        self.cloud.set_urgent(true);
        let mut rounds = self.growth_rounds.subscribe();
        rounds.borrow_and_update();
        let added = self.ips_added.notified();
        tokio::pin!(added);
        added.as_mut().enable();
        if self.txn.read(|ipam, now| ipam.counts(now).free) > 0 {
            return Ok(());
        }
        self.ips_wanted.notify_one();
        // New IPs count before the round's end: a round whose other step
        // failed (an ENI the subnet had no room for) still brought them.
        let waited = async {
            tokio::select! {
                biased;
                _ = &mut added => None,
                changed = rounds.changed() => Some(changed),
            }
        };
        let ended = match left {
            Some(left) => tokio::time::timeout(left, waited).await.map_err(|_| {
                AgentError::new(
                    ErrorKind::NotReady,
                    "the caller's deadline passed while the ADD waited for the pool to grow",
                )
            })?,
            None => waited.await,
        };
        let Some(ended) = ended else {
            return Ok(());
        };
        match ended {
            Err(_) => Err(internal("the maintenance loop is gone")),
            Ok(()) if self.txn.read(|ipam, now| ipam.counts(now).free) > 0 => Ok(()),
            Ok(()) => rounds.borrow().error.clone().map_or(Ok(()), Err),
        }
    }

    /// Whether an ADD waits for an IP, or did within the last three
    /// maintenance ticks: a burst in waves keeps what it grew.
    fn recently_waited(&self) -> bool {
        let hold = (self.config.maintenance_interval * 3).as_millis() as u64;
        self.waiting_for_ip.load(Ordering::SeqCst) > 0
            || self
                .txn
                .now()
                .saturating_sub(self.last_wait.load(Ordering::SeqCst))
                < hold
    }

    /// Brings the pool to its targets plus `extra` free IPs, as far as the
    /// limits allow; the caller holds the growth lock.
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
        // The steps touch different ENIs: they run together, and each one's
        // IPs are handed out as soon as they are durable.
        let steps = sizing::plan_growth(&enis, limits, counts.free, want_free)
            .into_iter()
            .map(|action| self.grow_step(action));
        futures_util::future::join_all(steps)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, AgentError>>()
            .map(drop)
    }

    /// One step of a growth: IPs on an ENI, or a new ENI with IPs.
    async fn grow_step(&self, action: Action) -> Result<(), AgentError> {
        self.txn.ensure_healthy()?;
        match action {
            Action::AssignIps { eni_id, count } => {
                let known = self
                    .txn
                    .read(|ipam, _| ipam.eni(&eni_id).map(|e| e.ips.clone()))
                    .ok_or_else(|| internal(format!("planned ENI {eni_id} vanished")))?;
                let ips = self
                    .cloud
                    .assign_ips(&eni_id, count, &known)
                    .await
                    .map_err(cloud_error)?;
                let (id, added) = (eni_id.clone(), ips.clone());
                let committed = self
                    .txn
                    .commit(move |ipam, _| {
                        // The record as it is now (another step may have
                        // changed the pool meanwhile), with the new IPs.
                        let mut record = ipam
                            .eni(&id)
                            .cloned()
                            .ok_or_else(|| internal(format!("ENI {id} left the pool")))?;
                        record.ips.extend(&added);
                        Ok((vec![Change::PutEni(record)], ()))
                    })
                    .await;
                if let Err(e) = committed {
                    // The store does not know these IPs: give them back
                    // rather than leak them (unless poisoned: the restart
                    // adopts them from the cloud).
                    if self.txn.poisoned().is_none()
                        && let Err(undo) = self.cloud.unassign_ips(&eni_id, &ips).await
                    {
                        warn!(eni = %eni_id, error = %undo, "could not unassign IPs; adopted at next start");
                    }
                    return Err(e);
                }
                // Partners before the IPs are announced, so a waiting ADD
                // finds both families.
                if let Err(e) = self.pair_eni_ipv6(&eni_id).await {
                    warn!(eni = %eni_id, error = %e.message, "could not give the new IPs IPv6 partners; retried every round");
                }
                self.ips_added.notify_waiters();
                info!(eni = %eni_id, count, "assigned IPs");
            }
            Action::CreateEni { table, count } => {
                let record = self.create_eni(table, count).await?;
                let eni_id = record.id.clone();
                self.txn
                    .commit(move |_, _| Ok((vec![Change::PutEni(record)], ())))
                    .await?;
                if let Err(e) = self.pair_eni_ipv6(&eni_id).await {
                    warn!(eni = %eni_id, error = %e.message, "could not give the new ENI's IPs IPv6 partners; retried every round");
                }
                self.ips_added.notify_waiters();
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
                // The IPv6 partners of the IPs given back go with them.
                let mut partners: Vec<Vec<std::net::Ipv6Addr>> = Vec::new();
                for step in &plan {
                    let mut gone = Vec::new();
                    match step {
                        sizing::Release::Ips { eni_id, ips } => {
                            if let Some(mut record) = ipam.eni(eni_id).cloned() {
                                record.ips.retain(|ip| !ips.contains(ip));
                                record.ipv6.retain(|(v4, v6)| {
                                    let keep = !ips.contains(v4);
                                    if !keep {
                                        gone.push(*v6);
                                    }
                                    keep
                                });
                                changes.push(Change::PutEni(record));
                            }
                        }
                        sizing::Release::Eni { eni_id } => {
                            changes.push(Change::RemoveEni(eni_id.clone()))
                        }
                    }
                    partners.push(gone);
                }
                Ok((changes, plan.into_iter().zip(partners).collect::<Vec<_>>()))
            })
            .await?;
        for (step, partners) in plan {
            self.txn.ensure_healthy()?;
            match step {
                sizing::Release::Ips { eni_id, ips } => {
                    match self.cloud.unassign_ips(&eni_id, &ips).await {
                        Ok(()) => info!(eni = %eni_id, count = ips.len(), "gave back spare IPs"),
                        Err(e) => {
                            warn!(eni = %eni_id, error = %e, "could not unassign spare IPs; adopted again at next reconciliation")
                        }
                    }
                    self.give_back_ipv6(&eni_id, &partners).await;
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
                    crate::metrics::eni_limit();
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
        let mut record = pool_record(&eni, subnet, node.mtu, table);
        match self.dataplane.program_eni(&record).await {
            // Its pods take the MTU the VPC gave its link.
            Ok(mtu) => record.mtu = mtu,
            Err(e) => {
                self.attaching_state(&eni, Some(e.to_string()));
                self.discard_eni(&record.id).await;
                return Err(dataplane_error(e));
            }
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
        ipv6: Vec::new(),
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

/// Counts an ADD as waiting for an IP while it lives, and notes when it
/// started waiting.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a AtomicUsize, last_wait: &AtomicU64, now: u64) -> Waiting<'a> {
        waiting.fetch_add(1, Ordering::SeqCst);
        last_wait.store(now, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Clears the "the loop grows" flag when the maintenance loop ends.
struct StopGrowing<'a>(&'a AtomicBool);

impl Drop for StopGrowing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}
