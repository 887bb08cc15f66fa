//! A requested address: a pod asks for a specific IP of the subnet (the
//! annotation `tke.cloud.tencent.com/vpc-ip-claim-requested-ip`, or
//! `VPC_IP_CLAIM_REQUESTED_IP` in `CNI_ARGS`). Before its ADD the address
//! becomes the pod's static claim, reserved: from this node's pool when it
//! is free there, else assigned by address to an ENI of this node in its
//! subnet, recorded as an incoming claim (`ipam/handover.rs`) before the
//! cloud is asked. The ADD then binds it as any reserved claim.
//!
//! Who wins when two pods ask for one address: on one node, the grow lock
//! and the claim committed under the pool's lock; across nodes, the
//! address's `VpcIP` object, created as a fence before the cloud is asked
//! (the loser's create finds it), and last the cloud itself, which assigns
//! an address to one ENI only.

use std::net::Ipv4Addr;

use proto::wire::{AddRequest, AgentError, ErrorKind};
use tracing::{info, warn};

use super::Agent;
use super::cni::time_left;
use super::convert;
use super::errors::claim_error;
use crate::cloud::{Cloud, Subnet};
use crate::cluster_claims::AddressFence;
use crate::dataplane::Dataplane;
use crate::ipam::{RequestedSpot, StaticIp};

impl<C: Cloud, D: Dataplane> Agent<C, D> {
    /// Before the ADD of a pod that asks for an address it does not hold
    /// yet: makes it the pod's claim, reserved, or fails naming who holds
    /// it. The address's fence is made in the cluster before the grow lock
    /// is taken (the lock is held across cloud calls only), and where the
    /// address stands is looked at again under the lock.
    pub(super) async fn prepare_requested(&self, req: &AddRequest) -> Result<(), AgentError> {
        let (Some(pod), Some(ip)) = (
            &req.pod,
            req.static_ip.as_ref().and_then(|s| s.requested_ip),
        ) else {
            return Ok(());
        };
        let (ns, name) = (pod.namespace.as_str(), pod.name.as_str());
        let Some((spot, subnet_id)) = self.requested_spot(ip, ns, name)? else {
            return Ok(());
        };
        match self
            .cluster_claims
            .reserve_address(ip, ns, name, &subnet_id)
            .await
        {
            Ok(AddressFence::Ours) => {}
            Ok(AddressFence::Held(holder)) => {
                return Err(AgentError::new(
                    ErrorKind::NoIpAvailable,
                    format!("pod {ns}/{name} asks for the address {ip}, which is held by {holder}"),
                ));
            }
            Err(e) => {
                return Err(AgentError::new(
                    ErrorKind::NotReady,
                    format!(
                        "pod {ns}/{name} asks for the address {ip}, but the cluster cannot say \
                         whether another node holds it ({e}); the ADD is retried"
                    ),
                ));
            }
        }
        let committed = match self.lock_growth_for_add(time_left(req)).await {
            Ok(serialised) => {
                let done = self.reserve_requested(req, ip, spot, &subnet_id).await;
                drop(serialised);
                done
            }
            Err(e) => Err(e),
        };
        match committed {
            Ok(()) => {
                info!(ip = %ip, namespace = ns, name, "requested address reserved for its pod");
                Ok(())
            }
            Err(e) => {
                // Still on its way here (the cloud did not answer), or
                // reserved by an ADD of the same pod meanwhile: the fence
                // stays, and an incoming claim is driven on by the
                // maintenance loop.
                let claimed = self
                    .txn
                    .read(|ipam, _| ipam.claim(ns, name).is_some_and(|c| c.ip == ip));
                if !claimed && let Err(lift) = self.cluster_claims.release_address(ip).await {
                    warn!(ip = %ip, error = %lift, "cannot lift the fence on a requested address; the publisher removes it");
                }
                Err(for_pod(e, ns, name))
            }
        }
    }

    /// Where the address `ip` pod `ns/name` asks for stands in this pool,
    /// with its subnet; `None` when the pod's claim holds it already.
    fn requested_spot(
        &self,
        ip: Ipv4Addr,
        ns: &str,
        name: &str,
    ) -> Result<Option<(RequestedSpot, String)>, AgentError> {
        if let Some(claim) = self.txn.read(|ipam, _| ipam.claim(ns, name).cloned()) {
            if claim.ip == ip {
                return Ok(None);
            }
            return Err(AgentError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "pod {ns}/{name} asks for the address {ip} but its static IP claim holds {}; \
                     delete the claim (`kubectl delete vipc {name} -n {ns}`, or \
                     `vpc-cni-agent claims delete {ns}/{name}`) to change its address",
                    claim.ip
                ),
            ));
        }
        let spot = self
            .txn
            .read(|ipam, now| ipam.requested_spot(ip, ns, name, now))
            .map_err(|e| for_pod(claim_error(e), ns, name))?;
        let subnet_id = match &spot {
            RequestedSpot::InPool { eni_id } => self
                .txn
                .read(|ipam, _| ipam.eni(eni_id).map(|e| e.subnet_id.clone()))
                .unwrap_or_default(),
            RequestedSpot::NotInPool => {
                let node = self.node().ok_or_else(|| {
                    AgentError::new(
                        ErrorKind::NotReady,
                        format!(
                            "pod {ns}/{name} asks for the address {ip}, but the VPC API has not \
                             answered yet, so this node's subnet is unknown; the ADD is retried"
                        ),
                    )
                })?;
                let subnet = node.subnet.ok_or_else(|| {
                    AgentError::new(
                        ErrorKind::NoIpAvailable,
                        format!(
                            "pod {ns}/{name} asks for the address {ip}, but this node has no \
                             subnet it may use in zone {}",
                            node.zone
                        ),
                    )
                })?;
                admits(&subnet, ip).map_err(|why| {
                    AgentError::new(
                        ErrorKind::InvalidRequest,
                        format!("pod {ns}/{name} asks for the address {ip}: {why}"),
                    )
                })?;
                subnet.id
            }
        };
        Ok(Some((spot, subnet_id)))
    }

    /// Makes the address the pod's claim, the grow lock held: from the
    /// pool, or by address from the cloud (recorded incoming first). Where
    /// it stands is checked again first: the fence was made without the
    /// lock.
    async fn reserve_requested(
        &self,
        req: &AddRequest,
        ip: Ipv4Addr,
        spot: RequestedSpot,
        subnet_id: &str,
    ) -> Result<(), AgentError> {
        let Some(pod) = &req.pod else { return Ok(()) };
        let (ns, name) = (pod.namespace.as_str(), pod.name.as_str());
        self.txn.ensure_healthy()?;
        match self.requested_spot(ip, ns, name)? {
            None => return Ok(()),
            Some((now, subnet)) if now == spot && subnet == subnet_id => {}
            Some(_) => {
                return Err(AgentError::new(
                    ErrorKind::NotReady,
                    format!(
                        "the address {ip} changed its place in this node's pool while it was \
                         fenced in the cluster; the ADD is retried"
                    ),
                ));
            }
        }
        let wanted = self.wanted(req);
        let (ns2, name2) = (ns.to_string(), name.to_string());
        match spot {
            RequestedSpot::InPool { eni_id } => {
                self.txn
                    .commit(move |ipam, now| {
                        let changes = ipam
                            .plan_requested_claim(ip, &eni_id, &ns2, &name2, wanted, now)
                            .map_err(claim_error)?;
                        Ok((changes, ()))
                    })
                    .await
            }
            RequestedSpot::NotInPool => match self.room_for_requested(ip, subnet_id).await {
                // Recorded incoming before the cloud is asked: a crash
                // after the call leaves the address this pod's, not free.
                Ok(target) => match self
                    .txn
                    .commit(move |ipam, now| {
                        let (claim, changes) = ipam
                            .plan_requested_intent(ip, &target, &ns2, &name2, wanted, now)
                            .map_err(claim_error)?;
                        Ok((changes, claim))
                    })
                    .await
                {
                    Ok(claim) => self.bring_here_locked(&claim).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        }
    }

    /// An ENI of this node in `subnet_id` with room for the address `ip`
    /// (growing one in the node's subnet if none has room).
    async fn room_for_requested(
        &self,
        ip: Ipv4Addr,
        subnet_id: &str,
    ) -> Result<String, AgentError> {
        let room = || {
            let max_ips = self.limits().map_or(0, |l| l.max_ips_per_eni as usize);
            self.txn.read(|ipam, _| {
                ipam.enis()
                    .iter()
                    .find(|e| e.subnet_id == subnet_id && e.ips.len() + 1 < max_ips)
                    .map(|e| e.id.clone())
            })
        };
        let target = match room() {
            Some(t) => Some(t),
            None => {
                self.grow_locked(1).await?;
                room()
            }
        };
        target.ok_or_else(|| {
            AgentError::new(
                ErrorKind::NoIpAvailable,
                format!(
                    "no ENI of this node in subnet {subnet_id} has room for the address {ip}, \
                     and none can be added"
                ),
            )
        })
    }

    /// What the pod asked of its static IP, as the pool records it.
    fn wanted(&self, req: &AddRequest) -> StaticIp {
        StaticIp {
            expire_after_ms: req.static_ip.as_ref().and_then(|s| s.expire_after_ms),
            owner: req
                .static_ip
                .as_ref()
                .and_then(|s| s.owner.as_ref())
                .map(convert::owner)
                .filter(|_| self.config.enable_ownerref),
        }
    }
}

/// Whether `subnet` can give `ip` to a pod: inside its CIDR and none of
/// the addresses the VPC keeps (network, gateway, broadcast).
pub fn admits(subnet: &Subnet, ip: Ipv4Addr) -> Result<(), String> {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(subnet.prefix_len))
        .unwrap_or(0);
    let network = u32::from(subnet.network) & mask;
    let cidr = format!("{}/{}", subnet.network, subnet.prefix_len);
    if u32::from(ip) & mask != network {
        return Err(format!(
            "it is outside subnet {} ({cidr}, zone {}), the subnet this node's ENIs come from; \
             a pod can ask only for an address of it",
            subnet.id, subnet.zone
        ));
    }
    let broadcast = network | !mask;
    if u32::from(ip) == network || ip == subnet.gateway || u32::from(ip) == broadcast {
        return Err(format!(
            "it is reserved in subnet {} ({cidr}): the network, gateway and broadcast addresses \
             are the VPC's",
            subnet.id
        ));
    }
    Ok(())
}

/// An error about the pod's requested address, with the pod named once.
fn for_pod(e: AgentError, ns: &str, name: &str) -> AgentError {
    let who = format!("pod {ns}/{name}");
    if e.message.contains(&who) {
        return e;
    }
    AgentError::new(e.kind, format!("{who}: {}", e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet() -> Subnet {
        Subnet {
            id: "subnet-1".into(),
            zone: "zone-a".into(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            network: Ipv4Addr::new(10, 0, 1, 0),
            prefix_len: 24,
        }
    }

    #[test]
    fn a_subnet_admits_its_hosts_only() {
        assert_eq!(admits(&subnet(), Ipv4Addr::new(10, 0, 1, 20)), Ok(()));
        let outside = admits(&subnet(), Ipv4Addr::new(10, 0, 2, 20)).expect_err("outside");
        assert!(
            outside.contains("outside subnet subnet-1 (10.0.1.0/24, zone zone-a)"),
            "{outside}"
        );
        for reserved in [0, 1, 255] {
            let e = admits(&subnet(), Ipv4Addr::new(10, 0, 1, reserved)).expect_err("reserved");
            assert!(e.contains("reserved in subnet subnet-1"), "{e}");
        }
    }

    #[test]
    fn the_pod_is_named_once() {
        let e = for_pod(
            AgentError::new(ErrorKind::NoIpAvailable, "held by pod default/a"),
            "default",
            "b",
        );
        assert_eq!(e.message, "pod default/b: held by pod default/a");
        let again = for_pod(e.clone(), "default", "b");
        assert_eq!(again, e);
    }
}
