//! Carrying out the hand-over machine (`ipam/handover.rs`): a claim
//! another node took over leaves ([`Agent::leave`]); a claim taken over
//! here is recorded incoming, then moved ([`Agent::move_here`]); every
//! claim between nodes is driven on from the maintenance loop
//! ([`Agent::drive_handovers`]), so a move survives a crash of either
//! node and never waits for its pod's next ADD.
//!
//! Every cloud call that brings an address here is made under the grow
//! lock, after its incoming record is durable, and every decision reads
//! the cluster's word before it lists the cloud: no call is in flight
//! while a step is decided, and a listing is never older than the word.
//! The word is asked before the lock is taken (an API server that is slow
//! to answer never holds up the pool's growth), and an ADD waits for the
//! lock no longer than its caller's deadline.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use proto::wire::{AddRequest, AgentError, ErrorKind};
use tracing::{info, warn};

use super::Agent;
use super::cni::time_left;
use super::convert;
use super::errors::{claim_error, cloud_error};
use crate::cloud::{Cloud, CloudError, Eni};
use crate::cluster_claims::HeldElsewhere;
use crate::dataplane::Dataplane;
use crate::ipam::{Claim, Handover, Ipam, Seen, Source, Step, Word, step};

/// How often a refused take-off of a static IPv6 address from its old ENI
/// is asked again, and how long apart.
const DENIED_RETRIES: usize = 3;
const DENIED_PAUSE: Duration = Duration::from_millis(500);

impl<C: Cloud, D: Dataplane> Agent<C, D> {
    /// The cluster names node `to` as the holder of pod `namespace/name`'s
    /// claim: the claim becomes outgoing here (still reserved) unless a
    /// sandbox here holds it. Whether it is outgoing now.
    pub(super) async fn leave(
        &self,
        namespace: &str,
        name: &str,
        to: &str,
    ) -> Result<bool, AgentError> {
        let (ns, n, next) = (namespace.to_string(), name.to_string(), to.to_string());
        let left = self
            .txn
            .commit(move |ipam, now| {
                let Some(claim) = ipam.claim(&ns, &n) else {
                    return Ok((Vec::new(), false));
                };
                match &claim.handover {
                    Some(Handover::Outgoing { .. }) => return Ok((Vec::new(), true)),
                    Some(Handover::Incoming { .. }) => return Ok((Vec::new(), false)),
                    None => {}
                }
                let was = claim.handover.clone();
                let changes = ipam
                    .plan_step(&ns, &n, &was, &Step::Leave { to: next.clone() }, now)
                    .map_err(claim_error)?;
                let left = !changes.is_empty();
                Ok((changes, left))
            })
            .await?;
        if left {
            info!(
                namespace,
                name,
                to,
                "static IP claim taken over by another node; outgoing here until its address leaves"
            );
            // The maintenance loop drives it from now on.
            self.pool_changed.notify_one();
        }
        Ok(left)
    }

    /// Moves a claim this node took over (`held`) to one of its ENIs in
    /// the claim's subnet: the incoming record is committed first, then
    /// the cloud asked. An address already on an ENI of this node is not
    /// moved again. Without room here the claim is given back.
    pub(super) async fn move_here(
        &self,
        req: &AddRequest,
        held: &HeldElsewhere,
    ) -> Result<(), AgentError> {
        let Some(pod) = &req.pod else { return Ok(()) };
        let _serialised = self.lock_growth_for_add(time_left(req)).await?;
        self.txn.ensure_healthy()?;
        let listed = self.cloud.list_enis().await.map_err(cloud_error)?;
        let now = self.txn.now();
        let created = held.created_ms.unwrap_or(now).min(now);
        let mut claim = Claim {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            ip: held.ip,
            eni_id: String::new(),
            subnet_id: held.subnet_id.clone(),
            created_ms: created,
            last_bound_ms: created,
            released_ms: Some(now),
            expire_after_ms: req.static_ip.as_ref().and_then(|s| s.expire_after_ms),
            owner: req
                .static_ip
                .as_ref()
                .and_then(|s| s.owner.as_ref())
                .map(convert::owner),
            lost: None,
            requested: req.static_ip.as_ref().and_then(|s| s.requested_ip) == Some(held.ip),
            handover: None,
        };
        let from = Source::Node {
            node: held.node.clone(),
            eni_id: held.eni_id.clone(),
            ipv6: held.ipv6.filter(|_| self.config.ipv6),
        };
        if let Seen::Here(eni) = Ipam::seen(held.ip, &listed) {
            // Moved already (a crash after the call): recorded as arrived.
            claim.eni_id = eni;
            if let Some(node) = self.node() {
                self.reconcile_with(&listed, &node).await?;
            }
            return self.arrive(&claim, &from, &listed).await;
        }
        let target = match self.target_in(&held.subnet_id, &listed) {
            Some(t) => Some(t),
            None if self.node_subnet().as_deref() == Some(held.subnet_id.as_str()) => {
                // The node's own subnet: an ENI grown there takes it.
                self.grow_locked(1).await?;
                self.target_in(&held.subnet_id, &[])
            }
            None => None,
        };
        let Some(target) = target else {
            let why = format!(
                "no ENI of node {} in subnet {} has room for it; an address moves only within \
                 its subnet",
                self.instance_id, held.subnet_id
            );
            return Err(self.give_back(&claim, held, &why).await);
        };
        claim.eni_id = target;
        let intent = claim.clone();
        self.txn
            .commit(move |ipam, _| {
                let changes = ipam.plan_incoming(&intent, from).map_err(claim_error)?;
                Ok((changes, ()))
            })
            .await?;
        let claim = self
            .txn
            .read(|ipam, _| ipam.claim(&claim.namespace, &claim.name).cloned())
            .ok_or_else(|| AgentError::new(ErrorKind::Internal, "the incoming claim vanished"))?;
        // The take-over was just written: the cluster names this node.
        self.bring_here_with(&claim, Some(Word::Here)).await
    }

    /// Gives a claim taken over here back to the node it came from, with
    /// an event-worthy reason, and answers the pod's ADD with it.
    async fn give_back(&self, claim: &Claim, held: &HeldElsewhere, why: &str) -> AgentError {
        let (ns, name) = (claim.namespace.as_str(), claim.name.as_str());
        let back = self.cluster_claims.give_back(ns, name, held, why).await;
        let outcome = match &back {
            Ok(()) => format!("it stays reserved on node {}", held.node),
            Err(e) => format!("giving it back to node {} failed too ({e})", held.node),
        };
        warn!(ip = %claim.ip, namespace = ns, name, from = %held.node, why, "static IP cannot move here; given back");
        AgentError::new(
            ErrorKind::NotReady,
            format!(
                "the static IP {} of {ns}/{name} (subnet {}) was taken over from node {} but \
                 cannot move here: {why}; {outcome}. Run the pod on a node with an ENI in that \
                 subnet, or delete the claim (kubectl delete vipc {name} -n {ns}) to give it a \
                 new IP",
                claim.ip, held.subnet_id, held.node
            ),
        )
    }

    /// An ENI of this node in `subnet` with room for one more address: in
    /// the cloud's `listed` (when given) and in the pool.
    fn target_in(&self, subnet: &str, listed: &[Eni]) -> Option<String> {
        let max_ips = self.limits().map_or(0, |l| l.max_ips_per_eni as usize);
        self.txn.read(|ipam, _| {
            ipam.enis()
                .iter()
                .filter(|e| listed.is_empty() || listed.iter().any(|l| l.id == e.id))
                .find(|e| e.subnet_id == subnet && e.ips.len() + 1 < max_ips)
                .map(|e| e.id.clone())
        })
    }

    fn node_subnet(&self) -> Option<String> {
        self.node().and_then(|n| n.subnet).map(|s| s.id)
    }

    /// Brings an incoming claim's address here for its pod's ADD, which
    /// waits for the grow lock at most `left`. The cluster is asked before
    /// the lock is taken: no remote call but the cloud's holds it.
    pub(super) async fn bring_here(
        &self,
        claim: &Claim,
        left: Option<Duration>,
    ) -> Result<(), AgentError> {
        let word = self
            .cluster_claims
            .word(&claim.namespace, &claim.name)
            .await
            .unwrap_or(Word::Unknown);
        let _serialised = self.lock_growth_for_add(left).await?;
        self.txn.ensure_healthy()?;
        let Some(now) = self
            .txn
            .read(|ipam, _| ipam.claim(&claim.namespace, &claim.name).cloned())
        else {
            return Ok(());
        };
        self.bring_here_with(&now, Some(word)).await
    }

    /// One step of an incoming claim, the grow lock held: the cluster's
    /// word, then the cloud's listing, then the machine's step; the cloud
    /// asked when the step says so. `Ok` once the claim is held here.
    pub(super) async fn bring_here_locked(&self, claim: &Claim) -> Result<(), AgentError> {
        self.bring_here_with(claim, None).await
    }

    /// [`bring_here_locked`](Self::bring_here_locked) with the cluster's
    /// word already known (`None`: asked now).
    async fn bring_here_with(&self, claim: &Claim, word: Option<Word>) -> Result<(), AgentError> {
        let Some(Handover::Incoming { from }) = &claim.handover else {
            return Ok(());
        };
        let (ns, name) = (claim.namespace.as_str(), claim.name.as_str());
        let word = match word {
            Some(w) => w,
            None => self
                .cluster_claims
                .word(ns, name)
                .await
                .unwrap_or(Word::Unknown),
        };
        let listed = self.cloud.list_enis().await.map_err(cloud_error)?;
        if let Some(node) = self.node() {
            self.reconcile_with(&listed, &node).await?;
        }
        let seen = Ipam::seen(claim.ip, &listed);
        let mut target = claim.eni_id.clone();
        match step(claim, false, &word, Some(&seen)) {
            Step::Finish { eni } => {
                target = eni;
            }
            Step::Abandon => {
                self.commit_step(claim, &Step::Abandon).await?;
                info!(ip = %claim.ip, namespace = ns, name, ?word, "static IP move abandoned: the claim is elsewhere and nothing arrived");
                return Err(AgentError::new(
                    ErrorKind::NotReady,
                    format!(
                        "the static IP {} of {ns}/{name} did not come here and the cluster names \
                         another holder now; the ADD is retried",
                        claim.ip
                    ),
                ));
            }
            Step::Call => {
                if !listed.iter().any(|e| e.id == target) {
                    // The chosen ENI left meanwhile: another with room.
                    let Some(other) = self.target_in(&claim.subnet_id, &listed) else {
                        return Err(AgentError::new(
                            ErrorKind::NotReady,
                            format!(
                                "the static IP {} of {ns}/{name} is on its way here, but ENI {} \
                                 left and no other ENI of this node in subnet {} has room; retried",
                                claim.ip, claim.eni_id, claim.subnet_id
                            ),
                        ));
                    };
                    target = other;
                    self.retarget(claim, &target).await?;
                }
                if let Err(e) = self.call_cloud(claim, from, &target).await {
                    return self.after_refusal(claim, from, e).await;
                }
            }
            other => {
                return Err(AgentError::new(
                    ErrorKind::NotReady,
                    format!(
                        "the static IP {} of {ns}/{name} is on its way here; the cluster cannot \
                         say who holds it now ({other:?}); retried",
                        claim.ip
                    ),
                ));
            }
        }
        let arrived = Claim {
            eni_id: target,
            ..claim.clone()
        };
        self.arrive(&arrived, from, &listed).await?;
        info!(ip = %claim.ip, eni = %arrived.eni_id, namespace = ns, name, ?from, "static IP arrived here");
        Ok(())
    }

    /// The IPv4 address of `claim` (coming `from` another node) is on its
    /// ENI: its IPv6 address follows (see [`follow_ipv6`](Self::follow_ipv6)),
    /// then the claim is committed as arrived, with the IPv6 address as its
    /// IPv4 address's partner. A dual-stack claim whose IPv6 address could
    /// not follow gets a new partner at once, so its pod has both. The grow
    /// lock is held.
    async fn arrive(&self, claim: &Claim, from: &Source, listed: &[Eni]) -> Result<(), AgentError> {
        let ipv6 = self.follow_ipv6(claim, from, listed).await?;
        if let Some(displaced) = self.commit_arrival(claim, ipv6).await? {
            // Paired meanwhile (a restart's first round) with another.
            self.give_back_ipv6(&claim.eni_id, &[displaced]).await;
        }
        let unpaired = self.config.ipv6
            && self.txn.read(|ipam, _| {
                ipam.eni(&claim.eni_id)
                    .is_some_and(|e| e.ipv6_of(claim.ip).is_none())
            });
        if unpaired && let Err(e) = self.pair_eni_ipv6(&claim.eni_id).await {
            warn!(ip = %claim.ip, eni = %claim.eni_id, error = %e.message, "no IPv6 partner for an arrived static IP yet; the next round pairs it");
        }
        Ok(())
    }

    /// Brings the IPv6 address of a claim that moved here from another
    /// node to the claim's ENI, once its IPv4 address arrived: the VPC API
    /// moves no IPv6 address, so it is taken off the source ENI (the
    /// gateway lets the claim's new holder do that) and assigned here by
    /// name. Not atomic: an address someone took meanwhile stays theirs and
    /// the claim gets a new one (`Ok(None)`, logged). An error worth
    /// retrying is returned; the claim stays incoming and the next step
    /// comes here again.
    async fn follow_ipv6(
        &self,
        claim: &Claim,
        from: &Source,
        listed: &[Eni],
    ) -> Result<Option<Ipv6Addr>, AgentError> {
        let Source::Node {
            eni_id: source,
            ipv6: Some(v6),
            ..
        } = from
        else {
            return Ok(None);
        };
        if !self.config.ipv6 {
            return Ok(None);
        }
        let (ns, name, v6) = (claim.namespace.as_str(), claim.name.as_str(), *v6);
        if listed
            .iter()
            .any(|e| e.id == claim.eni_id && e.ipv6s.contains(&v6))
        {
            return Ok(Some(v6));
        }
        let retried = |e: &CloudError| matches!(e, CloudError::Throttled(_) | CloudError::Other(_));
        let mut taken_off = self.cloud.unassign_ipv6s(source, &[v6]).await;
        // A gateway replica whose cache has not seen the take-over yet
        // refuses: asked again a moment later, a few times.
        for _ in 0..DENIED_RETRIES {
            if !matches!(taken_off, Err(CloudError::Auth(_))) {
                break;
            }
            tokio::time::sleep(DENIED_PAUSE).await;
            taken_off = self.cloud.unassign_ipv6s(source, &[v6]).await;
        }
        match taken_off {
            Ok(()) => {}
            Err(e) if retried(&e) => return Err(cloud_error(e)),
            // Gone with its ENI, given back by its node, or not ours to
            // take off: asked for by name all the same.
            Err(e) => {
                info!(ipv6 = %v6, eni = %source, namespace = ns, name, error = %e, "the static IPv6 address was not taken off its old ENI; asked for by name")
            }
        }
        match self.cloud.assign_named_ipv6s(&claim.eni_id, &[v6]).await {
            Ok(()) => {
                info!(ipv6 = %v6, eni = %claim.eni_id, namespace = ns, name, "static IPv6 address followed its IPv4 address here");
                Ok(Some(v6))
            }
            Err(e) if retried(&e) => Err(cloud_error(e)),
            Err(e) => {
                warn!(ipv6 = %v6, eni = %claim.eni_id, namespace = ns, name, error = %e, "the static IPv6 address cannot follow its IPv4 address (taken meanwhile, or refused); the claim gets a new one");
                Ok(None)
            }
        }
    }

    /// The cloud call that brings `claim`'s address to ENI `target`.
    async fn call_cloud(
        &self,
        claim: &Claim,
        from: &Source,
        target: &str,
    ) -> Result<(), CloudError> {
        match from {
            Source::Node { eni_id, .. } => {
                match self.cloud.migrate_ip(eni_id, target, claim.ip).await {
                    // The source ENI is gone (deleted as leaked after its
                    // node went): its addresses went back to the subnet;
                    // taken here by name, which the cloud refuses if anyone
                    // holds it.
                    Err(CloudError::NotFound(_)) => {
                        self.cloud.assign_named_ips(target, &[claim.ip]).await
                    }
                    r => r,
                }
            }
            Source::Subnet | Source::Request => {
                self.cloud.assign_named_ips(target, &[claim.ip]).await
            }
        }
    }

    /// The cloud refused to bring an incoming address here: an address
    /// someone else holds ends the hand-over (the pod's own claim is lost;
    /// an address it only asked for is dropped); anything else stays
    /// incoming and is retried.
    async fn after_refusal(
        &self,
        claim: &Claim,
        from: &Source,
        e: CloudError,
    ) -> Result<(), AgentError> {
        let CloudError::AddressInUse(detail) = &e else {
            warn!(ip = %claim.ip, namespace = %claim.namespace, name = %claim.name, error = %e, "cannot bring a static IP here yet; retried");
            return Err(cloud_error(e));
        };
        if *from == Source::Request {
            self.commit_step(claim, &Step::Abandon).await?;
            return Err(AgentError::new(
                ErrorKind::NoIpAvailable,
                format!(
                    "the address {} is in use in the VPC, though no pod of this cluster holds \
                     it: it is on an ENI outside the cluster, or unused in another node's pool, \
                     which only that node can give up (the VPC API says: {detail})",
                    claim.ip
                ),
            ));
        }
        let why = format!("the address was taken by someone else in the VPC ({detail})");
        let lost = Claim {
            handover: None,
            lost: Some(why.clone()),
            ..claim.clone()
        };
        let was = claim.handover.clone();
        let (ns, n) = (claim.namespace.clone(), claim.name.clone());
        self.txn
            .commit(move |ipam, _| {
                if ipam.claim(&ns, &n).map(|c| &c.handover) != Some(&was) {
                    return Ok((Vec::new(), ()));
                }
                Ok((vec![crate::ipam::Change::PutClaim(lost)], ()))
            })
            .await?;
        warn!(ip = %claim.ip, namespace = %claim.namespace, name = %claim.name, why, "static IP lost on its way here");
        Err(super::claims::lost_error(claim, &why))
    }

    /// Points an incoming claim at another ENI of this node, durably,
    /// before the cloud is asked to bring it there.
    async fn retarget(&self, claim: &Claim, target: &str) -> Result<(), AgentError> {
        let moved = Claim {
            eni_id: target.to_string(),
            ..claim.clone()
        };
        let was = claim.handover.clone();
        self.txn
            .commit(move |ipam, _| {
                if ipam
                    .claim(&moved.namespace, &moved.name)
                    .map(|c| &c.handover)
                    != Some(&was)
                {
                    return Err(claim_error(crate::ipam::IpamError::ClaimChanged {
                        namespace: moved.namespace.clone(),
                        name: moved.name.clone(),
                    }));
                }
                Ok((vec![crate::ipam::Change::PutClaim(moved)], ()))
            })
            .await
    }

    /// Commits `claim` as arrived on its ENI: held, reserved; `ipv6`, on
    /// the ENI too, is its address's partner (no other address's). Returns
    /// the partner it replaced, if any.
    async fn commit_arrival(
        &self,
        claim: &Claim,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<Option<Ipv6Addr>, AgentError> {
        let claim = claim.clone();
        self.txn
            .commit(move |ipam, _| {
                let Some(eni) = ipam.eni(&claim.eni_id).cloned() else {
                    return Err(AgentError::new(
                        ErrorKind::NotReady,
                        format!(
                            "the static IP {} of {}/{} is on ENI {}, which the pool does not know \
                             yet; retried",
                            claim.ip, claim.namespace, claim.name, claim.eni_id
                        ),
                    ));
                };
                if let Some(a) = ipam.holder_of(&claim.ip) {
                    return Err(claim_error(crate::ipam::IpamError::InUse {
                        ip: claim.ip,
                        holder: Box::new(a.key.clone()),
                    }));
                }
                let mut changes = ipam.plan_arrived(&claim, &eni);
                // Never a second pod's address (it cannot be: the address
                // was asked for by name; but the store decides).
                let ipv6 = ipv6.filter(|v6| !ipam.allocations().any(|a| a.ipv6 == Some(*v6)));
                let mut displaced = None;
                if let Some(v6) = ipv6 {
                    for change in &mut changes {
                        if let crate::ipam::Change::PutEni(record) = change
                            && record.id == claim.eni_id
                        {
                            displaced = record.partner(claim.ip, v6);
                        }
                    }
                }
                Ok((changes, displaced))
            })
            .await
    }

    async fn commit_step(&self, claim: &Claim, step: &Step) -> Result<(), AgentError> {
        let (ns, n, was, step) = (
            claim.namespace.clone(),
            claim.name.clone(),
            claim.handover.clone(),
            step.clone(),
        );
        self.txn
            .commit(move |ipam, now| {
                let changes = ipam
                    .plan_step(&ns, &n, &was, &step, now)
                    .map_err(claim_error)?;
                Ok((changes, ()))
            })
            .await
    }

    /// Rebuilds a static claim the cluster's object says this node holds
    /// and the pool lacks (its store emptied or replaced): reserved on the
    /// ENI of this node carrying its address; incoming by address (the
    /// maintenance loop asks the cloud) when no ENI here carries it; never
    /// over an address a sandbox or another claim here holds. Whether it
    /// was rebuilt.
    pub(super) async fn restore_claim(&self, claim: Claim) -> Result<bool, AgentError> {
        let (ns, name, ip) = (claim.namespace.clone(), claim.name.clone(), claim.ip);
        let restored = self
            .txn
            .commit(move |ipam, _| {
                if ipam.claim(&claim.namespace, &claim.name).is_some()
                    || ipam.holder_of(&claim.ip).is_some()
                    || ipam.claims().any(|c| c.ip == claim.ip)
                {
                    return Ok((Vec::new(), false));
                }
                if let Some(eni) = ipam.enis().iter().find(|e| e.ips.contains(&claim.ip)) {
                    let mut changes = ipam.plan_arrived(&claim, eni);
                    changes.push(crate::ipam::Change::RemoveCooling(claim.ip));
                    return Ok((changes, true));
                }
                let from = match &claim.handover {
                    Some(Handover::Incoming { from }) => from.clone(),
                    _ => Source::Subnet,
                };
                let Some(eni) = ipam.enis().iter().find(|e| e.subnet_id == claim.subnet_id) else {
                    let lost = Claim {
                        lost: Some(format!(
                            "rebuilt from the cluster, but no ENI of this node is in its subnet {}",
                            claim.subnet_id
                        )),
                        handover: None,
                        ..claim
                    };
                    return Ok((vec![crate::ipam::Change::PutClaim(lost)], true));
                };
                let incoming = Claim {
                    eni_id: eni.id.clone(),
                    ..claim
                };
                let changes = ipam.plan_incoming(&incoming, from).map_err(claim_error)?;
                Ok((changes, true))
            })
            .await?;
        if restored {
            warn!(namespace = %ns, name = %name, ip = %ip, "static IP claim missing from the store; rebuilt from its cluster object");
        }
        Ok(restored)
    }

    /// Drives every claim between nodes one step on, from the maintenance
    /// loop: the cluster's word on each first, then one listing of the
    /// cloud; an incoming claim's cloud call is retried. Returns how many
    /// claims are still between nodes.
    pub(super) async fn drive_handovers(&self) -> Result<usize, AgentError> {
        if self.txn.read(|ipam, _| ipam.handovers().is_empty()) {
            return Ok(0);
        }
        // The cluster's word on each first, without the lock (the API
        // server may be slow); claims that began to move meanwhile wait
        // for the next round.
        let asked = self.txn.read(|ipam, _| ipam.handovers());
        let mut words = HashMap::with_capacity(asked.len());
        for c in &asked {
            let word = self
                .cluster_claims
                .word(&c.namespace, &c.name)
                .await
                .unwrap_or(Word::Unknown);
            words.insert((c.namespace.clone(), c.name.clone()), word);
        }
        let _serialised = self.grow_lock.lock().await;
        self.txn.ensure_healthy()?;
        let (moving, words): (Vec<Claim>, Vec<Word>) = self
            .txn
            .read(|ipam, _| ipam.handovers())
            .into_iter()
            .filter_map(|c| {
                let word = words.remove(&(c.namespace.clone(), c.name.clone()))?;
                Some((c, word))
            })
            .unzip();
        let listed = self.cloud.list_enis().await.map_err(cloud_error)?;
        if let Some(node) = self.node() {
            self.reconcile_with(&listed, &node).await?;
        }
        for (claim, word) in moving.iter().zip(&words) {
            let seen = Ipam::seen(claim.ip, &listed);
            let bound = self.txn.read(|ipam, _| ipam.holder_of(&claim.ip).is_some());
            let next = step(claim, bound, word, Some(&seen));
            let result = match &next {
                Step::Stay => Ok(()),
                Step::Call => self.bring_here_with(claim, Some(word.clone())).await,
                Step::Finish { eni } => match &claim.handover {
                    Some(Handover::Incoming { from }) => {
                        let arrived = Claim {
                            eni_id: eni.clone(),
                            ..claim.clone()
                        };
                        self.arrive(&arrived, from, &listed).await
                    }
                    _ => Ok(()),
                },
                step => self.commit_step(claim, step).await,
            };
            match result {
                Ok(()) if next != Step::Stay => {
                    info!(ip = %claim.ip, namespace = %claim.namespace, name = %claim.name, step = ?next, "static IP hand-over moved on")
                }
                Ok(()) => {}
                Err(e) => {
                    warn!(ip = %claim.ip, namespace = %claim.namespace, name = %claim.name, step = ?next, error = %e.message, "static IP hand-over not moved on; next round")
                }
            }
        }
        Ok(self.txn.read(|ipam, _| ipam.handovers().len()))
    }
}
