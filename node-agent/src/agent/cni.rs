//! The CNI verbs: ADD, DEL, CHECK, GC and STATUS.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::wire::{
    AddReply, AddRequest, AgentError, CheckRequest, DelRequest, ErrorKind, GcRequest, Response,
    StatusReply,
};
use tracing::{debug, info, warn};

use super::conditions::CLOUD_UNREACHABLE;
use super::convert;
use super::errors::{claim_error, dataplane_error};
use super::recovery::missing_eni;
use super::{Agent, MIN_CLAIM_EXPIRY};
use crate::cloud::Cloud;
use crate::committer::Pending;
use crate::dataplane::{Dataplane, POD_GATEWAY, POD_GATEWAY_V6, PodNetns, PodSpec};
use crate::ipam::{AddPlan, Allocation, AttachmentKey, IpamError, StaticIp};
use crate::server::after_reply;
use crate::sizing;

/// How often one ADD waits for the pool to grow before it gives up (IPs
/// that arrive and are taken by other ADDs count too).
const MAX_GROW_ATTEMPTS: u32 = 20;

impl<C: Cloud, D: Dataplane> Agent<C, D> {
    pub(super) async fn add(
        &self,
        req: AddRequest,
        netns: Option<OwnedFd>,
    ) -> Result<Response, AgentError> {
        let started = Instant::now();
        let _no_gc = self.gc_lock.read().await;
        let mut req = req;
        self.apply_pod_facts(&mut req).await?;
        // The deadline is the plugin's system clock, so it is compared with
        // the system clock, not the agent's (which a test may run ahead).
        let past_deadline = || req.deadline_ms.is_some_and(|d| system_now_ms() > d);
        if past_deadline() {
            return Err(AgentError::new(
                ErrorKind::NotReady,
                "the caller's deadline passed before the ADD started",
            ));
        }
        if let Some(s) = &req.static_ip
            && let Some(ms) = s.expire_after_ms
            && ms < MIN_CLAIM_EXPIRY.as_millis() as u64
        {
            return Err(AgentError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "the pod's static IP expiry ({} s) is below the minimum of 5m: a pod restarting slowly would lose its IP",
                    ms / 1000
                ),
            ));
        }
        let key = convert::key(&req.key);
        self.prepare_claim(&req).await?;
        self.prepare_requested(&req).await?;
        crate::metrics::add_phase("queue", started.elapsed());
        let reserving = Instant::now();
        let mut in_cloud = Duration::ZERO;
        let mut attempts = 0;
        let (plan, pending) = loop {
            match self.reserve(&req, &key) {
                Err(e) if e.kind == ErrorKind::NoIpAvailable && attempts < MAX_GROW_ATTEMPTS => {
                    // Wait for the growth for everyone waiting, not just
                    // this pod; another ADD may take what it brought,
                    // hence the retries.
                    attempts += 1;
                    let growing = Instant::now();
                    let grown = self.wait_for_ips(time_left(&req)).await;
                    in_cloud += growing.elapsed();
                    grown?;
                }
                other => break other?,
            }
        };
        crate::metrics::add_phase("ip", reserving.elapsed());
        crate::metrics::add_phase("cloud", in_cloud);
        let wiring = Instant::now();
        let spec = with_netns(self.spec(&plan.allocation), netns);
        // The pod is wired while its allocation is being made durable; the
        // reply waits for both.
        let kernel = async {
            let at = Instant::now();
            let wired = self.dataplane.attach_pod(&spec).await;
            crate::metrics::add_phase("kernel", at.elapsed());
            wired
        };
        // The commit as a task of its own: the kernel work below blocks this
        // thread (`block_in_place`), whose runtime core, handed to another
        // thread, runs the commit meanwhile.
        let committing = tokio::spawn(pending.wait());
        let wired = kernel.await;
        let committed = self.txn.durable_outcome(
            committing
                .await
                .unwrap_or_else(|e| Err(format!("the commit task failed: {e}"))),
        );
        // The pool refills ahead of the next pods, after this reply.
        if self.short_of_targets() {
            self.pool_changed.notify_one();
        }
        match (wired, committed) {
            (Ok(_), Ok(())) if past_deadline() && !plan.existing => {
                // The caller gave up and will not DEL what it never heard of.
                warn!(ip = %spec.ip, "ADD finished after the caller's deadline; undoing it");
                self.dataplane
                    .detach_pod(&spec)
                    .await
                    .map_err(dataplane_error)?;
                self.release(&key).await?;
                Err(AgentError::new(
                    ErrorKind::NotReady,
                    "the ADD finished after the caller's deadline and was undone",
                ))
            }
            (Ok(links), Ok(())) => {
                if let Err(e) = self.announce_static(&req, plan.makes_claim).await {
                    if !plan.existing {
                        // Not known to the cluster, not promised: undone,
                        // and the runtime's retry tries again.
                        warn!(ip = %spec.ip, error = %e.message, "static IP not made known to the cluster; undoing the ADD");
                        self.dataplane
                            .detach_pod(&spec)
                            .await
                            .map_err(dataplane_error)?;
                        self.release(&key).await?;
                        if let Some(pod) = &req.pod {
                            self.forget_unannounced(&pod.namespace, &pod.name).await?;
                        }
                    }
                    return Err(e);
                }
                crate::metrics::add_phase("wire", wiring.elapsed());
                crate::metrics::add_phase("total", started.elapsed());
                let (span, ip, eni, host_veth) = (
                    tracing::Span::current(),
                    spec.ip,
                    spec.eni.id.clone(),
                    links.host_ifname.clone(),
                );
                let (repeated, took_us) = (plan.existing, started.elapsed().as_micros() as u64);
                after_reply(move || {
                    span.in_scope(|| info!(%ip, %eni, %host_veth, repeated, took_us, "pod added"));
                });
                Ok(Response::Added(AddReply {
                    ip: spec.ip,
                    gateway: POD_GATEWAY,
                    host_ifname: links.host_ifname,
                    host_mac: links.host_mac,
                    pod_mac: links.pod_mac,
                    mtu: spec.eni.mtu,
                    eni_id: spec.eni.id.clone(),
                    ipv6: spec.ipv6,
                    gateway_v6: spec.ipv6.map(|_| POD_GATEWAY_V6),
                }))
            }
            (wired, committed) => {
                warn!(ip = %spec.ip, wired = ?wired.as_ref().err(), committed = ?committed.as_ref().err(), repeated = plan.existing, "ADD failed");
                if !plan.existing {
                    // A repeated ADD of a pod that was working keeps its
                    // network whatever failed now; a new one is undone.
                    if let Err(cleanup) = self.dataplane.detach_pod(&spec).await {
                        warn!(error = %cleanup, "cleanup after failed ADD incomplete; GC will finish it");
                    }
                }
                committed?;
                if !plan.existing {
                    self.release(&key).await?;
                }
                Err(dataplane_error(wired.expect_err("one side failed")))
            }
        }
    }

    fn reserve(
        &self,
        req: &AddRequest,
        key: &AttachmentKey,
    ) -> Result<(AddPlan, Pending), AgentError> {
        let limits = self.limits();
        let cloud_down = self.conditions.get(CLOUD_UNREACHABLE);
        let pod = req.pod.as_ref().map(convert::pod);
        self.txn.change(|ipam, now| {
            let claim = req.static_ip.as_ref().map(|s| StaticIp {
                expire_after_ms: s.expire_after_ms,
                // Only claims made while cascade is on carry their owner.
                owner: s
                    .owner
                    .as_ref()
                    .map(convert::owner)
                    .filter(|_| self.config.enable_ownerref),
            });
            let plan = ipam
                .plan_add(key, &req.netns, pod.as_ref(), claim, now)
                .map_err(|e| match e {
                    IpamError::Exhausted { .. } => {
                        let why = match (limits, &cloud_down) {
                            (_, Some((message, _))) => {
                                format!("the VPC API is unreachable ({message})")
                            }
                            (None, None) => "the VPC API has not answered yet".to_string(),
                            (Some(l), None) if sizing::can_grow(ipam.enis(), l) => {
                                "the pool is growing".to_string()
                            }
                            (Some(l), None) => format!(
                                "the node is at its limits ({} ENIs, {} IPs each)",
                                l.max_enis, l.max_ips_per_eni
                            ),
                        };
                        AgentError::new(ErrorKind::NoIpAvailable, format!("{e}; {why}"))
                    }
                    // The pod's previous sandbox still holds it (its DEL is
                    // on its way), or its address is lost.
                    other => claim_error(other),
                })?;
            let changes = plan.changes.clone();
            Ok((changes, plan))
        })
    }

    pub(super) async fn del(&self, req: DelRequest) -> Result<Response, AgentError> {
        let started = Instant::now();
        let _no_gc = self.gc_lock.read().await;
        let key = convert::key(&req.key);
        let Some(allocation) = self.txn.read(|ipam, _| ipam.allocation(&key).cloned()) else {
            // Nothing to do, but only once an earlier release of this
            // attachment still in the queue is durable (and never while
            // poisoned: the pool may then be ahead of the store).
            self.txn.commit(|_, _| Ok((Vec::new(), ()))).await?;
            debug!("nothing allocated; DEL is a no-op");
            return Ok(Response::Deleted);
        };
        let spec = self.spec(&allocation);
        // Unwire first: if that fails the allocation stays, so the runtime's
        // retry still knows what to remove.
        self.dataplane
            .detach_pod(&spec)
            .await
            .map_err(dataplane_error)?;
        self.release(&key).await?;
        let (span, ip) = (tracing::Span::current(), allocation.ip);
        let took_us = started.elapsed().as_micros() as u64;
        after_reply(move || span.in_scope(|| info!(%ip, took_us, "pod deleted")));
        Ok(Response::Deleted)
    }

    pub(super) async fn check(
        &self,
        req: CheckRequest,
        netns: Option<OwnedFd>,
    ) -> Result<Response, AgentError> {
        let key = convert::key(&req.key);
        let allocation = self
            .txn
            .read(|ipam, _| ipam.allocation(&key).cloned())
            .ok_or_else(|| {
                AgentError::new(
                    ErrorKind::UnknownAttachment,
                    format!("no allocation for attachment {key}"),
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
        let spec = with_netns(self.spec(&allocation), netns);
        self.dataplane
            .check_pod(&spec)
            .await
            .map_err(dataplane_error)?;
        // The pod's way out of the VPC is the node's.
        self.dataplane
            .check_egress()
            .await
            .map_err(dataplane_error)?;
        Ok(Response::Checked)
    }

    pub(super) async fn gc(&self, req: GcRequest) -> Result<Response, AgentError> {
        // No ADD or DEL runs meanwhile: what GC reads as owned stays so.
        let _exclusive = self.gc_lock.write().await;
        let valid: HashSet<(&str, &str)> = req
            .valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let stale: Vec<Allocation> = self.txn.read(|ipam, _| {
            ipam.allocations()
                .filter(|a| a.key.network == req.network)
                .filter(|a| !valid.contains(&(a.key.container_id.as_str(), a.key.ifname.as_str())))
                .cloned()
                .collect()
        });
        let mut released = Vec::new();
        for a in stale {
            match self.dataplane.detach_pod(&self.spec(&a)).await {
                Ok(()) => released.push(a),
                Err(e) => {
                    warn!(attachment = %a.key, error = %e, "GC could not unwire; kept for the next GC")
                }
            }
        }
        let count = released.len() as u32;
        self.txn
            .commit(move |ipam, now| {
                let changes = released
                    .iter()
                    .filter_map(|a| ipam.plan_release(&a.key, now))
                    .flat_map(|r| r.1)
                    .collect();
                Ok((changes, ()))
            })
            .await?;
        let leftovers = self
            .dataplane
            .collect_garbage(&self.live_specs())
            .await
            .map_err(dataplane_error)?;
        if count > 0 || leftovers > 0 {
            info!(network = %req.network, released = count, leftovers, "GC done");
        }
        Ok(Response::Collected { released: count })
    }

    pub(super) fn status(&self) -> Response {
        let counts = self.txn.read(|ipam, now| ipam.counts(now));
        let can_grow = self
            .limits()
            .is_some_and(|l| self.txn.read(|ipam, _| sizing::can_grow(ipam.enis(), l)));
        let conditions = self.conditions.all();
        let reason = if let Some(e) = self.txn.poisoned() {
            Some(format!("state store failed ({e}); the agent is restarting"))
        } else if counts.free == 0
            && let Some((kind, (message, _))) = conditions.iter().next()
        {
            Some(format!("no IP can be served: {kind}: {message}"))
        } else if counts.free == 0 && !can_grow {
            Some(format!(
                "no IP can be served: {} allocated, {} cooling, {} reserved, node at its limits",
                counts.allocated, counts.cooling, counts.reserved
            ))
        } else {
            None
        };
        Response::Status(StatusReply {
            ready: reason.is_none(),
            reason,
        })
    }

    /// Releases the attachment's IP (into its cooldown, or its static
    /// claim), durably.
    pub(super) async fn release(&self, key: &AttachmentKey) -> Result<(), AgentError> {
        let key = key.clone();
        self.txn
            .commit(move |ipam, now| {
                Ok((
                    ipam.plan_release(&key, now)
                        .map(|r| r.1)
                        .unwrap_or_default(),
                    (),
                ))
            })
            .await
    }

    /// What the dataplane needs for an allocation. An allocation whose ENI
    /// the pool no longer has can still be unwired.
    pub(super) fn spec(&self, a: &Allocation) -> PodSpec {
        let eni = self
            .txn
            .read(|ipam, _| ipam.eni(&a.eni_id).cloned())
            .unwrap_or_else(|| missing_eni(&a.eni_id));
        PodSpec {
            key: a.key.clone(),
            netns: PodNetns::at(&a.netns),
            ip: a.ip,
            ipv6: a.ipv6,
            eni,
        }
    }
}

/// The spec with the namespace the caller passed, when it passed one.
fn with_netns(mut spec: PodSpec, netns: Option<OwnedFd>) -> PodSpec {
    if let Some(fd) = netns {
        spec.netns.fd = Some(Arc::new(fd));
    }
    spec
}

/// What remains of an ADD's caller's deadline (`None`: the caller set none).
pub(super) fn time_left(req: &AddRequest) -> Option<Duration> {
    req.deadline_ms
        .map(|d| Duration::from_millis(d.saturating_sub(system_now_ms())))
}

/// The system clock in Unix milliseconds.
fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
