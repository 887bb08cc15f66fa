//! The agent's request handling: CNI verbs on top of the pool, the store,
//! the cloud and the dataplane. Pool and store changes are made under one
//! lock on a blocking thread (the store fsyncs); cloud and kernel work
//! happens outside it.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::committer::{Committer, Pending};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::wire::{
    AddReply, AddRequest, AgentError, AttachmentKey, CheckRequest, ClaimView, ConditionView,
    DelRequest, EniView, ErrorKind, GcRequest, IpState, IpView, ReclaimView, Reply, Request,
    Response, StatusReply,
};
use tokio::sync::Notify;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::claims::{ClaimChange, ClaimStore, LocalClaims};
use crate::cloud::{Cloud, CloudError, NodeInfo};
use crate::dataplane::{Dataplane, DataplaneError, POD_GATEWAY, PodNetns, PodSpec};
use crate::ipam::{Allocation, Change, EniRecord, Ipam, IpamError, StaticIp, UnixMillis};
use crate::pool::{self, Action};
use crate::server::Handler;
use crate::store::{Store, StoreError};

/// Tunables of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// How long a released IP rests before it is handed out again.
    pub ip_cooldown: Duration,
    /// How large the pool should be.
    pub pool: pool::Targets,
    /// How old an unattached ENI of this cluster must be before it counts
    /// as leaked and is deleted.
    pub leaked_eni_grace: Duration,
    /// How long a released static IP stays reserved for its pod; `None`:
    /// until reclaimed by hand.
    pub claim_expiry: Option<Duration>,
    /// Record static claims' owners, so deleting the owner reclaims them.
    pub enable_ownerref: bool,
}

/// The wall clock in Unix milliseconds; injectable so tests control time.
pub type Clock = Arc<dyn Fn() -> UnixMillis + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored pool is inconsistent.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The cloud could not be asked.
    #[error("cloud: {0}")]
    Cloud(#[from] CloudError),
    /// An ENI could not be programmed.
    #[error("dataplane: {0}")]
    Dataplane(#[from] DataplaneError),
}

struct State {
    ipam: Ipam,
    /// Set once a commit fails: the pool may then be ahead of the store, so
    /// nothing more is changed until the agent restarts from the store.
    poisoned: Option<String>,
}

/// The agent.
pub struct Agent<C, D> {
    cloud: C,
    dataplane: D,
    node: NodeInfo,
    config: AgentConfig,
    clock: Clock,
    state: Mutex<State>,
    committer: Committer,
    /// The cluster's view of this node's static claims.
    claim_store: Arc<dyn ClaimStore>,
    grow_lock: tokio::sync::Mutex<()>,
    pool_changed: Notify,
    waiting_for_ip: AtomicUsize,
    /// Held shared by ADD and DEL, exclusively by GC.
    gc_lock: tokio::sync::RwLock<()>,
    /// Conditions by kind: message and since when.
    conditions: Mutex<BTreeMap<&'static str, (String, UnixMillis)>>,
    /// ENIs on their way to the node (or whose attach just failed, with the
    /// error), shown by `pool` until they join it.
    attaching: Mutex<BTreeMap<String, (crate::cloud::Eni, Option<String>)>>,
}

/// Condition: the VPC's ENI quota is used up.
pub const ENI_LIMIT: &str = "ENILimit";
/// Condition: no subnet of the node's zone may be used.
pub const NO_SUBNET_IN_ZONE: &str = "NoSubnetInZone";

/// How often one ADD grows the pool before it gives up.
const MAX_GROW_ATTEMPTS: u32 = 5;

impl<C, D> std::fmt::Debug for Agent<C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.node)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C: Cloud, D: Dataplane> Agent<C, D> {
    /// Restores the pool from `store`, adopts secondary ENIs the cloud
    /// reports that the store does not know (an agent that died between
    /// attaching and committing), and programs every ENI.
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

    /// [`start`](Self::start) with the cluster's claim store, which is told
    /// every claim the node holds before any request is served.
    pub async fn start_with_claims(
        cloud: C,
        dataplane: D,
        mut store: Box<dyn Store>,
        config: AgentConfig,
        clock: Clock,
        claim_store: Arc<dyn ClaimStore>,
    ) -> Result<Self, StartError> {
        let snapshot = store.load()?;
        let mut ipam = Ipam::restore(config.ip_cooldown.as_millis() as u64, snapshot)?;
        let node = cloud.node().await?;
        let reconciled = reconcile(&ipam, &cloud.list_enis().await?, &node);
        if !reconciled.is_empty() {
            info!(changes = reconciled.len(), "pool reconciled with the cloud");
            store.commit(&reconciled)?;
            ipam.apply(&reconciled);
        }
        for eni in ipam.enis() {
            // One ENI gone missing must not keep the whole node from serving.
            if let Err(e) = dataplane.program_eni(eni).await {
                warn!(eni = %eni.id, error = %e, "cannot program ENI; pods on it will not be reachable");
            }
        }
        // Whatever the kernel holds that no allocation owns is a leftover of
        // a crash or of a DEL whose veth was still queued: remove it.
        let keep: Vec<PodSpec> = ipam
            .allocations()
            .filter_map(|a| {
                ipam.eni(&a.eni_id).map(|eni| PodSpec {
                    key: a.key.clone(),
                    netns: PodNetns::at(&a.netns),
                    ip: a.ip,
                    eni: eni.clone(),
                })
            })
            .collect();
        let leftovers = dataplane.collect_garbage(&keep).await?;
        if leftovers > 0 {
            info!(leftovers, "removed kernel objects no allocation owns");
        }
        let counts = ipam.counts(clock());
        info!(
            enis = ipam.enis().len(),
            ips = counts.total,
            allocated = counts.allocated,
            cooling = counts.cooling,
            "pool restored"
        );
        let claims: Vec<_> = ipam.claims().cloned().collect();
        claim_store.sync(&node.instance_id, &claims);
        Ok(Agent {
            cloud,
            dataplane,
            node,
            config,
            clock,
            state: Mutex::new(State {
                ipam,
                poisoned: None,
            }),
            committer: Committer::start(store),
            claim_store,
            grow_lock: tokio::sync::Mutex::new(()),
            pool_changed: Notify::new(),
            waiting_for_ip: AtomicUsize::new(0),
            gc_lock: tokio::sync::RwLock::new(()),
            conditions: Mutex::default(),
            attaching: Mutex::default(),
        })
    }

    /// Keeps the pool at its targets: grows it after every ADD and every
    /// `interval`, and gives back what is beyond them a batch at a time.
    /// Runs until the task is dropped.
    pub async fn maintain_pool(self: Arc<Self>, interval: Duration) {
        loop {
            if let Err(e) = self.grow(0).await {
                warn!(error = %e.message, "could not warm the pool");
            }
            if let Err(e) = self.shrink().await {
                warn!(error = %e.message, "could not give back spare IPs");
            }
            if let Err(e) = self.expire_claims().await {
                warn!(error = %e.message, "could not expire static IP claims");
            }
            if let Err(e) = self.reap_leaked_enis().await {
                warn!(error = %e.message, "could not look for leaked ENIs");
            }
            tokio::select! {
                _ = self.pool_changed.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    async fn add(&self, req: AddRequest, netns: Option<OwnedFd>) -> Result<Response, AgentError> {
        let started = Instant::now();
        let _no_gc = self.gc_lock.read().await;
        let past_deadline = || req.deadline_ms.is_some_and(|d| (self.clock)() > d);
        if past_deadline() {
            return Err(AgentError::new(
                ErrorKind::NotReady,
                "the caller's deadline passed before the ADD started",
            ));
        }
        self.not_claimed_elsewhere(&req).await?;
        let mut attempts = 0;
        let (plan, pending) = loop {
            match self.reserve(&req) {
                Err(e) if e.kind == ErrorKind::NoIpAvailable && attempts < MAX_GROW_ATTEMPTS => {
                    // Grow for everyone waiting, not just this pod; another
                    // ADD may take what this one grew, hence the retries.
                    attempts += 1;
                    let waiting = self.waiting_for_ip.fetch_add(1, Ordering::SeqCst) + 1;
                    let grown = self.grow(waiting).await;
                    self.waiting_for_ip.fetch_sub(1, Ordering::SeqCst);
                    grown?;
                }
                other => break other?,
            }
        };
        self.pool_changed.notify_one();
        let spec = with_netns(self.spec(&plan.allocation)?, netns);
        // The pod is wired while its allocation is being made durable; the
        // reply waits for both.
        let (wired, committed) =
            tokio::join!(self.dataplane.attach_pod(&spec), self.durable(pending));
        match (wired, committed) {
            (Ok(_), Ok(())) if past_deadline() && !plan.existing => {
                // The caller gave up and will not DEL what it never heard of.
                warn!(ip = %spec.ip, "ADD finished after the caller's deadline; undoing it");
                self.dataplane
                    .detach_pod(&spec)
                    .await
                    .map_err(dataplane_error)?;
                self.release(&req.key).await?;
                Err(AgentError::new(
                    ErrorKind::NotReady,
                    "the ADD finished after the caller's deadline and was undone",
                ))
            }
            (Ok(links), Ok(())) => {
                info!(
                    ip = %spec.ip,
                    eni = %spec.eni.id,
                    host_veth = %links.host_ifname,
                    repeated = plan.existing,
                    took_us = started.elapsed().as_micros() as u64,
                    "pod added"
                );
                Ok(Response::Added(AddReply {
                    ip: spec.ip,
                    gateway: POD_GATEWAY,
                    host_ifname: links.host_ifname,
                    host_mac: links.host_mac,
                    pod_mac: links.pod_mac,
                    mtu: spec.eni.mtu,
                    eni_id: spec.eni.id.clone(),
                }))
            }
            (wired, committed) => {
                warn!(ip = %spec.ip, wired = ?wired.as_ref().err(), committed = ?committed.as_ref().err(), "ADD failed; rolling back");
                if let Err(cleanup) = self.dataplane.detach_pod(&spec).await {
                    warn!(error = %cleanup, "cleanup after failed ADD incomplete; GC will finish it");
                }
                committed?;
                if !plan.existing {
                    self.release(&req.key).await?;
                }
                Err(dataplane_error(wired.expect_err("one side failed")))
            }
        }
    }

    /// A static pod this node holds no claim for may hold one on another
    /// node: it must not get a new IP here meanwhile.
    async fn not_claimed_elsewhere(&self, req: &AddRequest) -> Result<(), AgentError> {
        let (Some(_), Some(pod)) = (&req.static_ip, &req.pod) else {
            return Ok(());
        };
        let held_here = self
            .lock()
            .ipam
            .claims()
            .any(|c| c.namespace == pod.namespace && c.name == pod.name);
        if held_here {
            return Ok(());
        }
        match self.claim_store.locate(&pod.namespace, &pod.name).await {
            Ok(None) => Ok(()),
            Ok(Some(held)) if held.node == self.node.instance_id => Ok(()),
            Ok(Some(held)) => Err(AgentError::new(
                ErrorKind::NotReady,
                format!(
                    "the static IP {} of {}/{} is held by node {} (ENI {}, subnet {}); this \
                     agent cannot move it here yet: delete the pod's claim on that node to give \
                     the pod a new IP",
                    held.ip, pod.namespace, pod.name, held.node, held.eni_id, held.subnet_id
                ),
            )),
            Err(e) => Err(AgentError::new(
                ErrorKind::NotReady,
                format!("{e}; a static pod waits rather than take a new IP"),
            )),
        }
    }

    fn reserve(&self, req: &AddRequest) -> Result<(crate::ipam::AddPlan, Pending), AgentError> {
        let limits = self.limits();
        self.change(|ipam, now| {
            let claim = req.static_ip.as_ref().map(|s| StaticIp {
                expire_after_ms: s.expire_after_ms,
                // Only claims made while cascade is on carry their owner.
                owner: s.owner.clone().filter(|_| self.config.enable_ownerref),
            });
            let plan = ipam
                .plan_add(&req.key, &req.netns, req.pod.as_ref(), claim, now)
                .map_err(|e| {
                    if let IpamError::ClaimInUse { .. } = e {
                        // The pod's previous sandbox still holds it; its DEL
                        // is on its way.
                        return AgentError::new(ErrorKind::NotReady, e.to_string());
                    }
                    let why = if pool::can_grow(ipam.enis(), limits) {
                        "the pool is growing".to_string()
                    } else {
                        format!(
                            "the node is at its limits ({} ENIs, {} IPs each)",
                            limits.max_enis, limits.max_ips_per_eni
                        )
                    };
                    AgentError::new(ErrorKind::NoIpAvailable, format!("{e}; {why}"))
                })?;
            let changes = plan.changes.clone();
            Ok((changes, plan))
        })
    }

    async fn del(&self, req: DelRequest) -> Result<Response, AgentError> {
        let _no_gc = self.gc_lock.read().await;
        let Some(allocation) = self.lock().ipam.allocation(&req.key).cloned() else {
            // Nothing to do, but only once an earlier release of this
            // attachment still in the queue is durable (and never while
            // poisoned: the pool may then be ahead of the store).
            self.commit(|_, _| Ok((Vec::new(), ()))).await?;
            debug!("nothing allocated; DEL is a no-op");
            return Ok(Response::Deleted);
        };
        let spec = self.spec(&allocation)?;
        // Unwire first: if that fails the allocation stays, so the runtime's
        // retry still knows what to remove.
        self.dataplane
            .detach_pod(&spec)
            .await
            .map_err(dataplane_error)?;
        self.release(&req.key).await?;
        info!(ip = %allocation.ip, "pod deleted");
        Ok(Response::Deleted)
    }

    async fn check(
        &self,
        req: CheckRequest,
        netns: Option<OwnedFd>,
    ) -> Result<Response, AgentError> {
        let allocation = self
            .lock()
            .ipam
            .allocation(&req.key)
            .cloned()
            .ok_or_else(|| {
                AgentError::new(
                    ErrorKind::UnknownAttachment,
                    format!("no allocation for attachment {}", req.key),
                )
            })?;
        let ours = format!("{}/32", allocation.ip);
        if !req.expected_addresses.is_empty() && !req.expected_addresses.contains(&ours) {
            return Err(AgentError::new(
                ErrorKind::Mismatch,
                format!(
                    "prevResult reports [{}] for this interface but the agent allocated {ours}",
                    req.expected_addresses.join(", ")
                ),
            ));
        }
        let spec = with_netns(self.spec(&allocation)?, netns);
        self.dataplane
            .check_pod(&spec)
            .await
            .map_err(dataplane_error)?;
        Ok(Response::Checked)
    }

    async fn gc(&self, req: GcRequest) -> Result<Response, AgentError> {
        // No ADD or DEL runs meanwhile: what GC reads as owned stays so.
        let _exclusive = self.gc_lock.write().await;
        let valid: HashSet<(&str, &str)> = req
            .valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let stale: Vec<Allocation> = self
            .lock()
            .ipam
            .allocations()
            .filter(|a| a.key.network == req.network)
            .filter(|a| !valid.contains(&(a.key.container_id.as_str(), a.key.ifname.as_str())))
            .cloned()
            .collect();
        let mut released = Vec::new();
        for a in stale {
            let spec = self.spec(&a)?;
            match self.dataplane.detach_pod(&spec).await {
                Ok(()) => released.push(a),
                Err(e) => {
                    warn!(attachment = %a.key, error = %e, "GC could not unwire; kept for the next GC")
                }
            }
        }
        let count = released.len() as u32;
        self.commit(move |ipam, now| {
            let changes = released
                .iter()
                .filter_map(|a| ipam.plan_release(&a.key, now))
                .flat_map(|r| r.1)
                .collect();
            Ok((changes, ()))
        })
        .await?;
        let live: Vec<Allocation> = self.lock().ipam.allocations().cloned().collect();
        let keep = live
            .iter()
            .map(|a| self.spec(a))
            .collect::<Result<Vec<_>, _>>()?;
        let leftovers = self
            .dataplane
            .collect_garbage(&keep)
            .await
            .map_err(dataplane_error)?;
        if count > 0 || leftovers > 0 {
            info!(network = %req.network, released = count, leftovers, "GC done");
        }
        Ok(Response::Collected { released: count })
    }

    fn status(&self) -> Response {
        let st = self.lock();
        let counts = st.ipam.counts((self.clock)());
        let reason = if let Some(e) = &st.poisoned {
            Some(format!("state store failed ({e}); restart the agent"))
        } else if counts.free == 0 && !pool::can_grow(st.ipam.enis(), self.limits()) {
            Some(format!(
                "no IP can be served: {} allocated, {} cooling, node at its limits",
                counts.allocated, counts.cooling
            ))
        } else if counts.free == 0
            && let Some((kind, (message, _))) = self.conditions().into_iter().next()
        {
            Some(format!("no IP can be served: {kind}: {message}"))
        } else {
            None
        };
        Response::Status(StatusReply {
            ready: reason.is_none(),
            reason,
        })
    }

    /// The node's limits narrowed by the targets.
    fn limits(&self) -> crate::cloud::Limits {
        self.config.pool.limits(self.node.limits)
    }

    /// Brings the pool to its targets plus `extra` free IPs (one per ADD
    /// waiting for an IP), as far as the limits allow.
    async fn grow(&self, extra: usize) -> Result<(), AgentError> {
        let _serialised = self.grow_lock.lock().await;
        let (enis, counts) = {
            let st = self.lock();
            (st.ipam.enis().to_vec(), st.ipam.counts((self.clock)()))
        };
        let limits = self.limits();
        let want_free = self
            .config
            .pool
            .want_free(limits, counts.total, counts.free)
            + extra;
        for action in pool::plan_growth(&enis, limits, counts.free, want_free) {
            match action {
                Action::AssignIps { eni_id, count } => {
                    let mut record =
                        enis.iter()
                            .find(|e| e.id == eni_id)
                            .cloned()
                            .ok_or_else(|| {
                                AgentError::new(
                                    ErrorKind::Internal,
                                    format!("planned ENI {eni_id} vanished"),
                                )
                            })?;
                    let ips = self
                        .cloud
                        .assign_ips(&eni_id, count, &record.ips)
                        .await
                        .map_err(cloud_error)?;
                    record.ips.extend(&ips);
                    if let Err(e) = self
                        .commit(move |_, _| Ok((vec![Change::PutEni(record)], ())))
                        .await
                    {
                        // The store does not know these IPs: give them back
                        // rather than leak them.
                        if let Err(undo) = self.cloud.unassign_ips(&eni_id, &ips).await {
                            warn!(eni = %eni_id, error = %undo, "could not unassign IPs; adopted at next start");
                        }
                        return Err(e);
                    }
                    info!(eni = %eni_id, count, "assigned IPs");
                }
                Action::CreateEni { table, count } => {
                    let record = self.create_eni(table, count).await?;
                    self.commit(move |_, _| Ok((vec![Change::PutEni(record)], ())))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Ends a static claim by hand (`claims delete`).
    async fn delete_claim(
        &self,
        namespace: &str,
        name: &str,
        force: bool,
    ) -> Result<Response, AgentError> {
        let planned = self
            .lock()
            .ipam
            .plan_delete_claim(namespace, name, force, (self.clock)());
        let (claim, holder, _) = planned.map_err(|e| {
            let kind = match e {
                IpamError::ClaimNotFound { .. } => ErrorKind::UnknownAttachment,
                _ => ErrorKind::InvalidRequest,
            };
            AgentError::new(kind, e.to_string())
        })?;
        if let Some(a) = &holder {
            // Forced: the running sandbox loses its network first.
            let spec = self.spec(a)?;
            self.dataplane
                .detach_pod(&spec)
                .await
                .map_err(dataplane_error)?;
        }
        let (ns, n) = (namespace.to_string(), name.to_string());
        self.commit(move |ipam, now| {
            let (_, _, changes) = ipam
                .plan_delete_claim(&ns, &n, force, now)
                .map_err(|e| AgentError::new(ErrorKind::InvalidRequest, e.to_string()))?;
            Ok((changes, ()))
        })
        .await?;
        info!(namespace, name, ip = %claim.ip, forced = holder.is_some(), "static IP claim deleted by hand");
        Ok(Response::Reclaimed {
            claims: vec![ReclaimView {
                namespace: claim.namespace,
                name: claim.name,
                ip: claim.ip,
                reason: "deleted by hand".into(),
            }],
        })
    }

    /// Reclaims the claims that are due now (expired); a dry run only says.
    async fn reclaim(&self, dry_run: bool) -> Result<Response, AgentError> {
        let default = self.config.claim_expiry.map(|d| d.as_millis() as u64);
        let due = self.lock().ipam.expired((self.clock)(), default);
        if !dry_run {
            self.expire_claims().await?;
        }
        let claims = due
            .into_iter()
            .map(|(c, at)| ReclaimView {
                namespace: c.namespace,
                name: c.name,
                ip: c.ip,
                reason: format!("expired {} s ago", (self.clock)().saturating_sub(at) / 1000),
            })
            .collect();
        Ok(Response::Reclaimed { claims })
    }

    /// Cascade: the owner is gone, so are its pods' claims.
    async fn owner_deleted(&self, owner: proto::wire::OwnerRef) -> Result<Response, AgentError> {
        let o = owner.clone();
        let ended = self
            .commit(move |ipam, now| {
                let (ended, changes) = ipam.plan_owner_deleted(&o, now);
                Ok((changes, ended))
            })
            .await?;
        if !ended.is_empty() {
            info!(kind = %owner.kind, name = %owner.name, claims = ended.len(), "owner deleted; its claims reclaimed");
        }
        let claims = ended
            .into_iter()
            .map(|c| ReclaimView {
                namespace: c.namespace,
                name: c.name,
                ip: c.ip,
                reason: format!("owner {} {} deleted", owner.kind, owner.name),
            })
            .collect();
        Ok(Response::Reclaimed { claims })
    }

    /// Ends released static claims whose time is up; their IPs cool down
    /// and return to the pool.
    async fn expire_claims(&self) -> Result<(), AgentError> {
        let default = self.config.claim_expiry.map(|d| d.as_millis() as u64);
        let ended = self
            .commit(move |ipam, now| {
                let changes = ipam.plan_expire(now, default);
                let n = changes
                    .iter()
                    .filter(|c| matches!(c, Change::RemoveClaim(..)))
                    .count();
                Ok((changes, n))
            })
            .await?;
        if ended > 0 {
            info!(claims = ended, "static IP claims expired");
        }
        Ok(())
    }

    /// Releases the attachment's IP into its cooldown, durably.
    async fn release(&self, key: &AttachmentKey) -> Result<(), AgentError> {
        let key = key.clone();
        self.commit(move |ipam, now| {
            Ok((
                ipam.plan_release(&key, now)
                    .map(|r| r.1)
                    .unwrap_or_default(),
                (),
            ))
        })
        .await
    }

    /// Gives back free IPs beyond the targets, a batch at a time, and the
    /// ENIs left with none. The pool drops them (durably) before the cloud
    /// is asked, so no pod can get an IP on its way out.
    async fn shrink(&self) -> Result<(), AgentError> {
        let _serialised = self.grow_lock.lock().await;
        let targets = self.config.pool;
        let limits = self.limits();
        let plan = self
            .commit(move |ipam, now| {
                let c = ipam.counts(now);
                let plan = pool::plan_release(
                    &ipam.usage(now),
                    targets,
                    targets.want_free(limits, c.total, c.free),
                );
                let mut changes = Vec::new();
                for step in &plan {
                    match step {
                        pool::Release::Ips { eni_id, ips } => {
                            if let Some(mut record) = ipam.eni(eni_id).cloned() {
                                record.ips.retain(|ip| !ips.contains(ip));
                                changes.push(Change::PutEni(record));
                            }
                        }
                        pool::Release::Eni { eni_id } => {
                            changes.push(Change::RemoveEni(eni_id.clone()))
                        }
                    }
                }
                Ok((changes, plan))
            })
            .await?;
        for step in plan {
            match step {
                pool::Release::Ips { eni_id, ips } => {
                    match self.cloud.unassign_ips(&eni_id, &ips).await {
                        Ok(()) => info!(eni = %eni_id, count = ips.len(), "gave back spare IPs"),
                        Err(e) => {
                            warn!(eni = %eni_id, error = %e, "could not unassign spare IPs; adopted again at next start")
                        }
                    }
                }
                pool::Release::Eni { eni_id } => {
                    self.discard_eni(&eni_id, true).await;
                    info!(eni = %eni_id, "gave back an empty ENI");
                }
            }
        }
        Ok(())
    }

    /// Deletes ENIs created for this node that are attached nowhere and
    /// older than the grace period: left by an agent that died between
    /// creating and attaching. Younger ones may be on their way to the node
    /// and are left alone. (ENIs of nodes that are gone are the cluster
    /// component's to sweep.)
    async fn reap_leaked_enis(&self) -> Result<usize, AgentError> {
        let now = (self.clock)() / 1000;
        let grace = self.config.leaked_eni_grace.as_secs();
        let leaked: Vec<_> = self
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

    async fn create_eni(&self, table: u32, count: u32) -> Result<EniRecord, AgentError> {
        let Some(subnet) = &self.node.subnet else {
            let e = CloudError::NoSubnetInZone(self.node.zone.clone());
            self.set_condition(NO_SUBNET_IN_ZONE, &e.to_string());
            return Err(cloud_error(e));
        };
        // The last failed attempt stops being news once a new one starts.
        self.attaching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, error)| error.is_none());
        let eni = match self.cloud.create_eni(&subnet.id, count).await {
            Ok(eni) => eni,
            Err(e) => {
                if matches!(e, CloudError::EniQuota(_)) {
                    self.set_condition(ENI_LIMIT, &e.to_string());
                }
                return Err(cloud_error(e));
            }
        };
        self.clear_condition(ENI_LIMIT);
        self.attaching_state(&eni, None);
        if let Err(e) = self.cloud.attach_eni(&eni.id).await {
            self.attaching_state(&eni, Some(e.to_string()));
            // An ENI that is not attached must not outlive this call.
            self.discard_eni(&eni.id, false).await;
            return Err(cloud_error(e));
        }
        let record = EniRecord {
            id: eni.id.clone(),
            mac: eni.mac.clone(),
            subnet_id: eni.subnet_id.clone(),
            gateway: subnet.gateway,
            primary_ip: eni.primary_ip,
            mtu: self.node.mtu,
            table,
            ips: eni.secondary_ips.clone(),
        };
        if let Err(e) = self.dataplane.program_eni(&record).await {
            self.attaching_state(&eni, Some(e.to_string()));
            self.discard_eni(&record.id, true).await;
            return Err(dataplane_error(e));
        }
        self.attaching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&eni.id);
        info!(eni = %record.id, table, ips = record.ips.len(), "attached ENI");
        Ok(record)
    }

    /// Shows an ENI (and its IPs) as attaching, with the error if it failed.
    fn attaching_state(&self, eni: &crate::cloud::Eni, error: Option<String>) {
        self.attaching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(eni.id.clone(), (eni.clone(), error));
    }

    /// Detaches (if attached) and deletes an ENI the pool never recorded,
    /// so nothing is left that no one owns.
    async fn discard_eni(&self, eni_id: &str, attached: bool) {
        if attached && let Err(e) = self.cloud.detach_eni(eni_id).await {
            warn!(eni = %eni_id, error = %e, "could not detach unused ENI; adopted at next start");
            return;
        }
        if let Err(e) = self.cloud.delete_eni(eni_id).await {
            warn!(eni = %eni_id, error = %e, "could not delete unused ENI");
        }
    }

    /// Plans changes under the pool lock, applies them and queues them for
    /// the store in that same order. The caller answers only once the
    /// returned [`Pending`] is [`durable`](Self::durable).
    fn change<T>(
        &self,
        plan: impl FnOnce(&Ipam, UnixMillis) -> Result<(Vec<Change>, T), AgentError>,
    ) -> Result<(T, Pending), AgentError> {
        let mut st = self.lock();
        if let Some(why) = &st.poisoned {
            return Err(AgentError::new(
                ErrorKind::Store,
                format!("the state store failed earlier ({why}); restart the agent to reload it"),
            ));
        }
        let (changes, out) = plan(&st.ipam, (self.clock)())?;
        st.ipam.apply(&changes);
        let claims: Vec<ClaimChange> = changes
            .iter()
            .filter_map(|c| match c {
                Change::PutClaim(claim) => Some(ClaimChange::Put(claim.clone())),
                Change::RemoveClaim(ns, name) => {
                    Some(ClaimChange::Removed(ns.clone(), name.clone()))
                }
                _ => None,
            })
            .collect();
        if !claims.is_empty() {
            // Under the pool lock, so the cluster sees them in order.
            self.claim_store.publish(&self.node.instance_id, &claims);
        }
        Ok((out, self.committer.submit(changes)))
    }

    /// Waits until queued changes are durable; a failure poisons the agent.
    async fn durable(&self, pending: Pending) -> Result<(), AgentError> {
        pending.wait().await.map_err(|e| {
            self.lock().poisoned.get_or_insert_with(|| e.clone());
            AgentError::new(ErrorKind::Store, e)
        })
    }

    /// [`change`](Self::change), then [`durable`](Self::durable).
    async fn commit<T>(
        &self,
        plan: impl FnOnce(&Ipam, UnixMillis) -> Result<(Vec<Change>, T), AgentError>,
    ) -> Result<T, AgentError> {
        let (out, pending) = self.change(plan)?;
        self.durable(pending).await?;
        Ok(out)
    }

    fn spec(&self, a: &Allocation) -> Result<PodSpec, AgentError> {
        let eni = self.lock().ipam.eni(&a.eni_id).cloned().ok_or_else(|| {
            AgentError::new(
                ErrorKind::Internal,
                format!("ENI {} of {} is not in the pool", a.eni_id, a.key),
            )
        })?;
        Ok(PodSpec {
            key: a.key.clone(),
            netns: PodNetns::at(&a.netns),
            ip: a.ip,
            eni,
        })
    }

    /// Every pod's claim: static claims (bound or reserved) and the plain
    /// allocations of named pods.
    fn claims(&self) -> Vec<ClaimView> {
        let default = self.config.claim_expiry.map(|d| d.as_millis() as u64);
        let st = self.lock();
        let node = self.node.instance_id.clone();
        let subnet_of = |eni: &str| {
            st.ipam
                .eni(eni)
                .map(|e| e.subnet_id.clone())
                .unwrap_or_default()
        };
        let sandbox_of = |ip: std::net::Ipv4Addr| {
            st.ipam
                .allocations()
                .find(|a| a.ip == ip)
                .map(|a| a.key.container_id.clone())
        };
        let mut out: Vec<ClaimView> = st
            .ipam
            .claims()
            .map(|c| ClaimView {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                ip: c.ip,
                status: if c.released_ms.is_some() {
                    "Reserved"
                } else {
                    "Bound"
                }
                .into(),
                node: node.clone(),
                subnet_id: subnet_of(&c.eni_id),
                eni_id: c.eni_id.clone(),
                container_id: sandbox_of(c.ip),
                policy: "Never".into(),
                owner: c.owner.clone(),
                created_ms: c.created_ms,
                last_bound_ms: c.last_bound_ms,
                released_ms: c.released_ms,
                expires_ms: c.expires_ms(default),
            })
            .collect();
        for a in st.ipam.allocations() {
            let Some(pod) = &a.pod else { continue };
            if out
                .iter()
                .any(|c| c.namespace == pod.namespace && c.name == pod.name && c.ip == a.ip)
            {
                continue;
            }
            out.push(ClaimView {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                ip: a.ip,
                status: "Bound".into(),
                node: node.clone(),
                subnet_id: subnet_of(&a.eni_id),
                eni_id: a.eni_id.clone(),
                container_id: Some(a.key.container_id.clone()),
                policy: "Immediate".into(),
                owner: None,
                created_ms: a.created_ms,
                last_bound_ms: a.created_ms,
                released_ms: None,
                expires_ms: None,
            });
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// Records a condition (kept with its first time until cleared).
    fn set_condition(&self, kind: &'static str, message: &str) {
        let now = (self.clock)();
        let mut c = self.conditions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = c.entry(kind).or_insert_with(|| (String::new(), now));
        if entry.0 != message {
            warn!(condition = kind, message, "condition");
            entry.0 = message.to_string();
        }
    }

    fn clear_condition(&self, kind: &'static str) {
        if self
            .conditions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(kind)
            .is_some()
        {
            info!(condition = kind, "condition cleared");
        }
    }

    fn conditions(&self) -> BTreeMap<&'static str, (String, UnixMillis)> {
        self.conditions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<C: Cloud, D: Dataplane> Handler for Agent<C, D> {
    async fn handle(&self, request: Request, netns: Option<OwnedFd>) -> Reply {
        let span = match &request {
            Request::Add(r) => {
                info_span!("add", network = %r.key.network, container = %r.key.container_id, ifname = %r.key.ifname)
            }
            Request::Del(r) => {
                info_span!("del", network = %r.key.network, container = %r.key.container_id, ifname = %r.key.ifname)
            }
            Request::Check(r) => {
                info_span!("check", network = %r.key.network, container = %r.key.container_id, ifname = %r.key.ifname)
            }
            Request::Gc(r) => info_span!("gc", network = %r.network),
            Request::Status => info_span!("status"),
            Request::Pool => info_span!("pool"),
            Request::Claims => info_span!("claims"),
            Request::DeleteClaim {
                namespace, name, ..
            } => info_span!("delete-claim", %namespace, %name),
            Request::Reclaim { dry_run } => info_span!("reclaim", dry_run),
            Request::OwnerDeleted(o) => {
                info_span!("owner-deleted", kind = %o.kind, name = %o.name, uid = %o.uid)
            }
        };
        async {
            let reply = match request {
                Request::Add(r) => self.add(r, netns).await,
                Request::Del(r) => self.del(r).await,
                Request::Check(r) => self.check(r, netns).await,
                Request::Gc(r) => self.gc(r).await,
                Request::Status => Ok(self.status()),
                Request::Claims => Ok(Response::Claims {
                    claims: self.claims(),
                }),
                Request::DeleteClaim {
                    namespace,
                    name,
                    force,
                } => self.delete_claim(&namespace, &name, force).await,
                Request::Reclaim { dry_run } => self.reclaim(dry_run).await,
                Request::OwnerDeleted(owner) => self.owner_deleted(owner).await,
                Request::Pool => {
                    let mut view = self.lock().ipam.view((self.clock)());
                    for (eni, error) in self
                        .attaching
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                    {
                        view.enis.push(EniView {
                            id: eni.id.clone(),
                            mac: eni.mac.clone(),
                            subnet_id: eni.subnet_id.clone(),
                            ips: eni
                                .secondary_ips
                                .iter()
                                .map(|ip| IpView {
                                    ip: *ip,
                                    state: IpState::Attaching {
                                        error: error.clone(),
                                    },
                                })
                                .collect(),
                        });
                    }
                    view.conditions = self
                        .conditions()
                        .into_iter()
                        .map(|(kind, (message, since_ms))| ConditionView {
                            kind: kind.to_string(),
                            message,
                            since_ms,
                        })
                        .collect();
                    Ok(Response::Pool(view))
                }
            };
            if let Err(e) = &reply {
                warn!(kind = ?e.kind, error = %e.message, "request failed");
            }
            reply
        }
        .instrument(span)
        .await
    }
}

/// Changes that bring the pool in line with the ENIs the cloud reports
/// attached to this node: ENIs and IPs the pool lacks are adopted (an agent
/// that died between the cloud call and the commit); ENIs and IPs that
/// vanished are dropped, unless a pod holds them, which is kept and logged.
fn reconcile(ipam: &Ipam, cloud_enis: &[crate::cloud::Eni], node: &NodeInfo) -> Vec<Change> {
    let held: HashSet<std::net::Ipv4Addr> = ipam.allocations().map(|a| a.ip).collect();
    let mut next_table = ipam
        .enis()
        .iter()
        .map(|e| e.table + 1)
        .max()
        .unwrap_or(pool::FIRST_ENI_TABLE);
    let mut changes = Vec::new();
    let secondary: Vec<&crate::cloud::Eni> = cloud_enis.iter().filter(|e| !e.primary).collect();
    for known in ipam.enis() {
        if secondary.iter().any(|e| e.id == known.id) {
            continue;
        }
        if known.ips.iter().any(|ip| held.contains(ip)) {
            warn!(eni = %known.id, "ENI vanished from the cloud while pods hold its IPs; kept until they go");
        } else {
            warn!(eni = %known.id, "ENI vanished from the cloud; dropped from the pool");
            changes.push(Change::RemoveEni(known.id.clone()));
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
                if ips != before {
                    changes.push(Change::PutEni(EniRecord {
                        ips,
                        ..known.clone()
                    }));
                }
            }
            None => {
                // Its gateway is known only for the node's own subnet.
                let Some(subnet) = node.subnet.as_ref().filter(|s| s.id == eni.subnet_id) else {
                    warn!(eni = %eni.id, subnet = %eni.subnet_id, "not adopting an ENI of another subnet");
                    continue;
                };
                changes.push(Change::PutEni(EniRecord {
                    id: eni.id.clone(),
                    mac: eni.mac.clone(),
                    subnet_id: eni.subnet_id.clone(),
                    gateway: subnet.gateway,
                    primary_ip: eni.primary_ip,
                    mtu: node.mtu,
                    table: next_table,
                    ips: eni.secondary_ips.clone(),
                }));
                next_table += 1;
            }
        }
    }
    changes
}

/// The spec with the namespace the caller passed, when it passed one.
fn with_netns(mut spec: PodSpec, netns: Option<OwnedFd>) -> PodSpec {
    if let Some(fd) = netns {
        spec.netns.fd = Some(Arc::new(fd));
    }
    spec
}

fn dataplane_error(e: DataplaneError) -> AgentError {
    let kind = match e {
        DataplaneError::Mismatch { .. } => ErrorKind::Mismatch,
        DataplaneError::Kernel { .. } => ErrorKind::Dataplane,
    };
    AgentError::new(kind, e.to_string())
}

fn cloud_error(e: CloudError) -> AgentError {
    match e {
        CloudError::EniQuota(_) => {
            AgentError::new(ErrorKind::EniLimit, format!("{ENI_LIMIT}: {e}"))
        }
        _ => AgentError::new(ErrorKind::Cloud, e.to_string()),
    }
}

#[cfg(test)]
mod tests;
