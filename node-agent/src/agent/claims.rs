//! Static IP claims: checked before a static pod's ADD (held elsewhere?
//! address still in the cloud? got back by name, or marked lost), ended by
//! hand, by expiry or with their owner.

use proto::wire::{
    AddRequest, AgentError, ErrorKind, OwnerRef, ReclaimView, Response, StaticIpRequest,
};
use tracing::{info, warn};

use super::Agent;
use super::cni::time_left;
use super::convert;
use super::errors::{claim_error, dataplane_error};
use crate::cloud::Cloud;
use crate::cluster_claims::{HeldElsewhere, PodFactsError, TakeOver};
use crate::dataplane::Dataplane;
use crate::ipam::{Change, Claim, EniRecord};
use crate::ipam::{Handover, Source};

impl<C: Cloud, D: Dataplane> Agent<C, D> {
    /// Before a static pod's ADD: a claim this node holds must still have
    /// its address in the cloud (else it is got back by name, or marked
    /// lost); a pod this node holds no claim for must not hold one on
    /// another node.
    pub(super) async fn prepare_claim(&self, req: &AddRequest) -> Result<(), AgentError> {
        let Some(pod) = &req.pod else { return Ok(()) };
        let here = self.txn.read(|ipam, _| {
            ipam.claim(&pod.namespace, &pod.name)
                .filter(|c| ipam.holder_of(&c.ip).is_none())
                .cloned()
        });
        match here {
            // On its way here: brought here first (or the pod waits).
            Some(claim) if matches!(claim.handover, Some(Handover::Incoming { .. })) => {
                self.bring_here(&claim, time_left(req)).await
            }
            // Another node took it over: it is taken back from there.
            Some(claim) if claim.handover.is_some() => self.not_claimed_elsewhere(req).await,
            Some(claim) => self.verify_claim(claim, req).await,
            None if req.static_ip.is_some() => self.not_claimed_elsewhere(req).await,
            None => Ok(()),
        }
    }

    /// Lets the cluster's word on the pod (its annotations, its workload)
    /// override what the runtime passed: keep the IP or not, for how long,
    /// for which owner.
    pub(super) async fn apply_pod_facts(&self, req: &mut AddRequest) -> Result<(), AgentError> {
        let Some(pod) = &req.pod else { return Ok(()) };
        let facts = match self
            .cluster_claims
            .pod_facts(&pod.namespace, &pod.name)
            .await
        {
            Ok(Some(facts)) => facts,
            Ok(None) => return Ok(()),
            Err(PodFactsError::Invalid(why)) => {
                return Err(AgentError::new(ErrorKind::InvalidRequest, why));
            }
            Err(PodFactsError::Unavailable(why)) => {
                return Err(AgentError::new(
                    ErrorKind::NotReady,
                    format!(
                        "cannot read pod {}/{} from the cluster: {why}",
                        pod.namespace, pod.name
                    ),
                ));
            }
        };
        let requested_ip = facts
            .requested_ip
            .or(req.static_ip.as_ref().and_then(|s| s.requested_ip));
        // A requested address is the pod's own: it implies a static IP.
        let keep = facts
            .keep_ip
            .unwrap_or(req.static_ip.is_some() || requested_ip.is_some());
        if !keep && let Some(ip) = requested_ip {
            return Err(AgentError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "pod {}/{} asks for the address {ip} (VPC_IP_CLAIM_REQUESTED_IP) but its \
                     delete policy annotation is \"Immediate\": a requested address is a static IP",
                    pod.namespace, pod.name
                ),
            ));
        }
        let before = req.static_ip.take().unwrap_or_default();
        req.static_ip = keep.then(|| StaticIpRequest {
            expire_after_ms: facts.expire_after_ms.or(before.expire_after_ms),
            owner: facts.owner.or(before.owner),
            requested_ip,
        });
        Ok(())
    }

    /// After a static pod's ADD: a claim it just made (`made`: its first
    /// bind) is made known to the cluster before the ADD answers. Later
    /// binds of the claim follow the outbox like everything else.
    pub(super) async fn announce_static(
        &self,
        req: &AddRequest,
        made: bool,
    ) -> Result<(), AgentError> {
        let Some(pod) = req.pod.as_ref().filter(|_| made) else {
            return Ok(());
        };
        let Some(claim) = self
            .txn
            .read(|ipam, _| ipam.claim(&pod.namespace, &pod.name).cloned())
        else {
            return Ok(());
        };
        self.cluster_claims
            .announce(&self.instance_id, &claim)
            .await
            .map_err(|e| {
                AgentError::new(
                    ErrorKind::NotReady,
                    format!(
                        "the static IP {} of {}/{} could not be recorded in the cluster ({e}); the ADD is retried",
                        claim.ip, claim.namespace, claim.name
                    ),
                )
            })
    }

    /// After a first bind the cluster could not be told of was undone (its
    /// IP released into the claim): the claim goes too, so the runtime's
    /// retry makes it anew and tells the cluster then.
    pub(super) async fn forget_unannounced(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(), AgentError> {
        let (ns, n) = (namespace.to_string(), name.to_string());
        self.txn
            .commit(move |ipam, now| {
                let changes = match ipam.plan_delete_claim(&ns, &n, false, now) {
                    Ok((_, _, changes)) => changes,
                    Err(_) => Vec::new(),
                };
                Ok((changes, ()))
            })
            .await
    }

    /// A reserved claim is about to be bound again: make sure its address
    /// is where the pool says, or get it back.
    async fn verify_claim(&self, claim: Claim, req: &AddRequest) -> Result<(), AgentError> {
        // A lost claim is tried again too: the operator may have freed
        // the address since.
        let serialised = self.lock_growth_for_add(time_left(req)).await?;
        self.txn.ensure_healthy()?;
        let listed = match self.cloud.list_enis().await {
            Ok(listed) => listed,
            Err(e) => {
                // The cloud cannot say: trust the pool, unless it already
                // knows the address is gone.
                warn!(error = %e, ip = %claim.ip, "cannot verify a static IP with the VPC API");
                return match self.txn.read(|ipam, _| ipam.claim_trouble(&claim)) {
                    None => Ok(()),
                    Some(why) => Err(AgentError::new(
                        ErrorKind::NotReady,
                        format!(
                            "the static IP {} of {}/{} must be got back ({why}) but the VPC API does not answer: {e}",
                            claim.ip, claim.namespace, claim.name
                        ),
                    )),
                };
            }
        };
        // What the cloud says holds for the rest of the pool too: ENIs and
        // addresses that vanished leave it before one is picked below.
        if let Some(node) = self.node() {
            self.reconcile_with(&listed, &node).await?;
        }
        let on_ours = listed
            .iter()
            .find(|e| !e.primary && e.secondary_ips.contains(&claim.ip));
        if let Some(eni) = on_ours
            && eni.id == claim.eni_id
            && self
                .txn
                .read(|ipam, _| ipam.claim_trouble(&claim))
                .is_none()
        {
            return Ok(());
        }
        // The address is on another ENI of this node (or back on its own):
        // follow it there.
        if let Some(eni) = on_ours
            && let Some(record) = self.txn.read(|ipam, _| ipam.eni(&eni.id).cloned())
        {
            info!(ip = %claim.ip, eni = %record.id, "static IP found on another ENI of this node");
            return self.commit_restored(&claim, &record).await;
        }
        // Another node may have taken the claim over (the pod ran there
        // meanwhile): the address moved, it is not lost. This node forgets
        // it and takes it over in turn if it may.
        // (`locate` names another node, or this one moving it here: the
        // node's name in the cluster is not its instance id.)
        if let Ok(Some(held)) = self
            .cluster_claims
            .locate(&claim.namespace, &claim.name)
            .await
            && !held.moving_here
        {
            drop(serialised);
            info!(ip = %claim.ip, node = %held.node, namespace = %claim.namespace, name = %claim.name, "static IP held by another node now");
            self.leave(&claim.namespace, &claim.name, &held.node)
                .await?;
            return self.not_claimed_elsewhere(req).await;
        }
        warn!(ip = %claim.ip, eni = %claim.eni_id, namespace = %claim.namespace, name = %claim.name, "static IP vanished from the cloud; asking for it back by address");
        let subnet = if claim.subnet_id.is_empty() {
            self.node()
                .and_then(|n| n.subnet)
                .map(|s| s.id)
                .unwrap_or_default()
        } else {
            claim.subnet_id.clone()
        };
        let max_ips = self.limits().map_or(0, |l| l.max_ips_per_eni as usize);
        let target = self.txn.read(|ipam, _| {
            ipam.enis()
                .iter()
                .find(|e| e.subnet_id == subnet && e.ips.len() + 1 < max_ips)
                .cloned()
        });
        let Some(target) = target else {
            let why = format!(
                "no ENI of this node in subnet {subnet} has room for it (the subnet may not be reachable from this node's zone)"
            );
            return self.mark_lost(&claim, &why).await;
        };
        // Recorded incoming before the cloud is asked, so that a crash
        // after the call never leaves the address free here.
        let intent = Claim {
            eni_id: target.id.clone(),
            ..claim.clone()
        };
        self.txn
            .commit(move |ipam, _| {
                let changes = ipam
                    .plan_incoming(&intent, Source::Subnet)
                    .map_err(claim_error)?;
                Ok((changes, ()))
            })
            .await?;
        let incoming = self
            .txn
            .read(|ipam, _| ipam.claim(&claim.namespace, &claim.name).cloned())
            .ok_or_else(|| AgentError::new(ErrorKind::Internal, "the incoming claim vanished"))?;
        self.bring_here_locked(&incoming).await
    }

    async fn commit_restored(&self, claim: &Claim, eni: &EniRecord) -> Result<(), AgentError> {
        let (claim, eni) = (claim.clone(), eni.clone());
        self.txn
            .commit(move |ipam, _| Ok((ipam.plan_claim_restored(&claim, &eni), ())))
            .await
    }

    /// Marks the claim lost (durably, visible in `claims list`) and fails
    /// the ADD with what happened and what to do.
    async fn mark_lost(&self, claim: &Claim, why: &str) -> Result<(), AgentError> {
        let (c, w) = (claim.clone(), why.to_string());
        self.txn
            .commit(move |ipam, _| Ok((ipam.plan_claim_lost(&c, &w), ())))
            .await?;
        warn!(ip = %claim.ip, namespace = %claim.namespace, name = %claim.name, why, "static IP lost");
        Err(lost_error(claim, why))
    }

    /// A static pod this node holds no claim for may hold one on another
    /// node: the claim is taken over (the cluster's object is the fence)
    /// and its address moved here with `MigratePrivateIpAddress`, or the
    /// pod waits; it never gets a new IP meanwhile.
    async fn not_claimed_elsewhere(&self, req: &AddRequest) -> Result<(), AgentError> {
        let Some(pod) = &req.pod else { return Ok(()) };
        let held = match self.cluster_claims.locate(&pod.namespace, &pod.name).await {
            Ok(None) => return Ok(()),
            Ok(Some(held)) => held,
            Err(e) => {
                return Err(AgentError::new(
                    ErrorKind::NotReady,
                    format!("{e}; a static pod waits rather than take a new IP"),
                ));
            }
        };
        let held = if held.moving_here {
            info!(ip = %held.ip, namespace = %pod.namespace, name = %pod.name, "resuming the move of a static IP to this node");
            held
        } else if let Some(why) = self.cannot_host(&held) {
            // Refused before the take-over: the claim stays where it is,
            // for a pod of the right zone.
            warn!(ip = %held.ip, namespace = %pod.namespace, name = %pod.name, subnet = %held.subnet_id, zone = %held.zone, why, "static IP cannot move to this node");
            return Err(AgentError::new(
                ErrorKind::NotReady,
                format!(
                    "the static IP {} of {}/{} (subnet {}, held by node {}) cannot move to \
                     this node: {why}; an address moves only within its subnet. Run the pod on \
                     a node of that zone (vpc-cni's zone webhook requires it of a static pod \
                     created while vpc-cni-cluster serves), or delete the claim (kubectl \
                     delete vipc {}) to give it a new IP",
                    held.ip, pod.namespace, pod.name, held.subnet_id, held.node, pod.name
                ),
            ));
        } else {
            match self
                .cluster_claims
                .take_over(&self.instance_id, &pod.namespace, &pod.name, &held)
                .await
            {
                Ok(TakeOver::Taken(taken)) => taken,
                Ok(TakeOver::Refused(why)) => {
                    return Err(AgentError::new(
                        ErrorKind::NotReady,
                        format!(
                            "the static IP {} of {}/{} is held by node {} (ENI {}, subnet {}) and \
                             cannot move here: {why}",
                            held.ip,
                            pod.namespace,
                            pod.name,
                            held.node,
                            held.eni_id,
                            held.subnet_id
                        ),
                    ));
                }
                Err(e) => {
                    return Err(AgentError::new(
                        ErrorKind::NotReady,
                        format!(
                            "the static IP {} of {}/{} held by node {} could not be taken over \
                             ({e}); the ADD is retried",
                            held.ip, pod.namespace, pod.name, held.node
                        ),
                    ));
                }
            }
        };
        self.move_here(req, &held).await
    }

    /// Why a claim held elsewhere could never move to this node, if it
    /// could not: this node has no ENI in the claim's subnet and does not
    /// grow ENIs there (the subnet of another zone, or one not configured
    /// here). Unknown (no node details yet): the move decides.
    fn cannot_host(&self, held: &HeldElsewhere) -> Option<String> {
        let node = self.node()?;
        let grows_there =
            node.subnet.as_ref().map(|s| s.id.as_str()) == Some(held.subnet_id.as_str());
        let has_eni = self
            .txn
            .read(|ipam, _| ipam.enis().iter().any(|e| e.subnet_id == held.subnet_id));
        if grows_there || has_eni {
            return None;
        }
        Some(if !held.zone.is_empty() && held.zone != node.zone {
            format!(
                "its subnet is in zone {}, this node in zone {}",
                held.zone, node.zone
            )
        } else {
            format!(
                "this node (zone {}) has no ENI in subnet {} and takes none from it",
                node.zone, held.subnet_id
            )
        })
    }

    /// Ends a static claim by hand (`claims delete`).
    pub(super) async fn delete_claim(
        &self,
        namespace: &str,
        name: &str,
        force: bool,
    ) -> Result<Response, AgentError> {
        let planned = self
            .txn
            .read(|ipam, now| ipam.plan_delete_claim(namespace, name, force, now));
        let (claim, holder, _) = planned.map_err(claim_error)?;
        if let Some(a) = &holder {
            // Forced: the running sandbox loses its network first.
            self.dataplane
                .detach_pod(&self.spec(a))
                .await
                .map_err(dataplane_error)?;
        }
        let (ns, n) = (namespace.to_string(), name.to_string());
        self.txn
            .commit(move |ipam, now| {
                let (_, _, changes) = ipam
                    .plan_delete_claim(&ns, &n, force, now)
                    .map_err(claim_error)?;
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
    pub(super) async fn reclaim(&self, dry_run: bool) -> Result<Response, AgentError> {
        let default = self.config.claim_expiry.map(|d| d.as_millis() as u64);
        let (due, now) = self.txn.read(|ipam, now| (ipam.expired(now, default), now));
        if !dry_run {
            self.expire_claims().await?;
        }
        let claims = due
            .into_iter()
            .map(|(c, at)| ReclaimView {
                namespace: c.namespace,
                name: c.name,
                ip: c.ip,
                reason: format!("expired {} s ago", now.saturating_sub(at) / 1000),
            })
            .collect();
        Ok(Response::Reclaimed { claims })
    }

    /// Cascade: the owner is gone, so are its pods' claims.
    pub(super) async fn owner_deleted(&self, owner: OwnerRef) -> Result<Response, AgentError> {
        let o = convert::owner(&owner);
        let ended = self
            .txn
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
    pub(super) async fn expire_claims(&self) -> Result<(), AgentError> {
        let default = self.config.claim_expiry.map(|d| d.as_millis() as u64);
        let ended = self
            .txn
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
}

pub(super) fn lost_error(claim: &Claim, why: &str) -> AgentError {
    AgentError::new(
        ErrorKind::ClaimLost,
        format!(
            "the static IP {} of {}/{} is lost: {why}. The pod cannot start with it; delete its claim \
             (`vpc-cni-agent claims delete {}/{}`) to give it a new IP, or free the address in the VPC \
             and start the pod again",
            claim.ip, claim.namespace, claim.name, claim.namespace, claim.name
        ),
    )
}
