//! A requested address: where the address a pod asks for stands in this
//! pool, and the claim that reserves it for the pod before its ADD binds
//! it like any reserved claim.

use std::net::Ipv4Addr;

use super::records::{Allocation, Change, Claim, EniRecord, IpUse, UnixMillis};
use super::{Ipam, IpamError, StaticIp};

/// Where a requested address stands in this node's pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestedSpot {
    /// On this ENI of the pool and free (or already the pod's claim).
    InPool {
        /// The ENI carrying it.
        eni_id: String,
    },
    /// On no ENI of the pool: the cloud is asked for it by address.
    NotInPool,
}

impl Ipam {
    /// Where `ip`, which pod `namespace/name` asks for, stands at `now`.
    /// Refused, naming the holder, when a pod of this node holds it,
    /// another pod's static claim reserves it or it is an ENI's own
    /// address; refused for now while it cools down after a release.
    pub fn requested_spot(
        &self,
        ip: Ipv4Addr,
        namespace: &str,
        name: &str,
        now: UnixMillis,
    ) -> Result<RequestedSpot, IpamError> {
        if let Some(eni) = self.enis.iter().find(|e| e.primary_ip == ip) {
            return Err(IpamError::RequestedHeld {
                ip,
                holder: format!("ENI {} of this node (its primary address)", eni.id),
            });
        }
        match self.ip_use(&ip, now) {
            IpUse::Allocated(a) => {
                return Err(IpamError::RequestedHeld {
                    ip,
                    holder: sandbox_holder(a),
                });
            }
            IpUse::Reserved(c) if (c.namespace.as_str(), c.name.as_str()) != (namespace, name) => {
                return Err(IpamError::RequestedHeld {
                    ip,
                    holder: format!(
                        "the static IP claim of pod {}/{} on this node ({})",
                        c.namespace,
                        c.name,
                        c.phase()
                    ),
                });
            }
            IpUse::Cooling(until_ms) => return Err(IpamError::RequestedCooling { ip, until_ms }),
            IpUse::Reserved(_) | IpUse::Free => {}
        }
        Ok(match self.enis.iter().find(|e| e.ips.contains(&ip)) {
            Some(eni) => RequestedSpot::InPool {
                eni_id: eni.id.clone(),
            },
            None => RequestedSpot::NotInPool,
        })
    }

    /// Plans the static claim of pod `namespace/name` on the address it
    /// asked for, reserved on ENI `eni_id` (which the cloud has just given
    /// it, or which held it free): the ENI's record gains the address and
    /// the claim is written in the same commit. Checked again here, under
    /// the pool's lock, so that no other ADD took the address meanwhile.
    pub fn plan_requested_claim(
        &self,
        ip: Ipv4Addr,
        eni_id: &str,
        namespace: &str,
        name: &str,
        wanted: StaticIp,
        now: UnixMillis,
    ) -> Result<Vec<Change>, IpamError> {
        let (claim, eni) = self.requested_claim(ip, eni_id, namespace, name, wanted, now)?;
        Ok(self.plan_claim_restored(&claim, &eni))
    }

    fn requested_claim(
        &self,
        ip: Ipv4Addr,
        eni_id: &str,
        namespace: &str,
        name: &str,
        wanted: StaticIp,
        now: UnixMillis,
    ) -> Result<(Claim, EniRecord), IpamError> {
        self.requested_spot(ip, namespace, name, now)?;
        let eni = self.eni(eni_id).ok_or_else(|| IpamError::RequestedHeld {
            ip,
            holder: format!("nobody, but its ENI {eni_id} left this node meanwhile"),
        })?;
        let claim = Claim {
            namespace: namespace.to_string(),
            name: name.to_string(),
            ip,
            eni_id: eni.id.clone(),
            subnet_id: eni.subnet_id.clone(),
            created_ms: now,
            last_bound_ms: now,
            released_ms: Some(now),
            expire_after_ms: wanted.expire_after_ms,
            owner: wanted.owner,
            lost: None,
            requested: true,
            handover: None,
        };
        Ok((claim, eni.clone()))
    }

    /// Plans the intent of a requested address not in the pool: the pod's
    /// claim, incoming (`handover.rs`) to ENI `eni_id`, written before the
    /// cloud is asked to assign it there by address.
    pub fn plan_requested_intent(
        &self,
        ip: Ipv4Addr,
        eni_id: &str,
        namespace: &str,
        name: &str,
        wanted: StaticIp,
        now: UnixMillis,
    ) -> Result<(Claim, Vec<Change>), IpamError> {
        let (mut claim, _) = self.requested_claim(ip, eni_id, namespace, name, wanted, now)?;
        claim.handover = Some(super::Handover::Incoming {
            from: super::Source::Request,
        });
        Ok((claim.clone(), vec![Change::PutClaim(claim)]))
    }
}

/// A sandbox holding an address, by its pod when the runtime named it.
fn sandbox_holder(a: &Allocation) -> String {
    match &a.pod {
        Some(p) => format!(
            "pod {}/{} on this node (sandbox {})",
            p.namespace, p.name, a.key.container_id
        ),
        None => format!("sandbox {} on this node", a.key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::testing::{allocation, eni, ip, key};
    use crate::ipam::{AttachmentKey, PodRef};

    fn pool() -> Ipam {
        let mut p = Ipam::new(30_000);
        p.apply(&[Change::PutEni(eni("eni-1", 101, &[10, 11, 12]))]);
        p
    }

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
            uid: None,
        }
    }

    #[test]
    fn a_free_address_of_the_pool_is_taken_from_its_eni_any_other_from_the_cloud() {
        let p = pool();
        assert_eq!(
            p.requested_spot(ip(11), "default", "web-0", 0),
            Ok(RequestedSpot::InPool {
                eni_id: "eni-1".into()
            })
        );
        assert_eq!(
            p.requested_spot(ip(40), "default", "web-0", 0),
            Ok(RequestedSpot::NotInPool)
        );
    }

    #[test]
    fn a_held_address_is_refused_naming_its_holder() {
        let mut p = pool();
        let mut a = allocation("c1", 10, "eni-1");
        a.pod = Some(pod("db-0"));
        p.apply(&[
            Change::PutAllocation(a),
            Change::PutAllocation(allocation("c2", 12, "eni-1")),
        ]);
        fn held(p: &Ipam, ip: Ipv4Addr, name: &str) -> String {
            p.requested_spot(ip, "default", name, 0)
                .expect_err("held")
                .to_string()
        }
        assert_eq!(
            held(&p, ip(10), "web-0"),
            "the requested address 10.0.0.10 is held by pod default/db-0 on this node (sandbox c1)"
        );
        assert!(held(&p, ip(12), "web-0").contains("sandbox vpc/c2/eth0"));
        assert!(
            held(&p, ip(2), "web-0").contains("ENI eni-1 of this node (its primary address)"),
            "an ENI's own address"
        );
        // A static claim reserves it for its own pod only.
        let plan = p
            .plan_requested_claim(ip(11), "eni-1", "default", "web-0", StaticIp::default(), 5)
            .expect("free");
        p.apply(&plan);
        assert!(
            held(&p, ip(11), "web-1")
                .contains("static IP claim of pod default/web-0 on this node (Reserved)")
        );
        assert_eq!(
            p.requested_spot(ip(11), "default", "web-0", 5),
            Ok(RequestedSpot::InPool {
                eni_id: "eni-1".into()
            })
        );
    }

    #[test]
    fn a_cooling_address_waits_for_its_cooldown() {
        let mut p = pool();
        p.apply(&[Change::PutCooling(ip(11), 30_000)]);
        assert_eq!(
            p.requested_spot(ip(11), "default", "web-0", 29_999),
            Err(IpamError::RequestedCooling {
                ip: ip(11),
                until_ms: 30_000
            })
        );
        assert!(p.requested_spot(ip(11), "default", "web-0", 30_000).is_ok());
    }

    #[test]
    fn the_claim_puts_the_address_on_its_eni_reserved_and_an_add_binds_it() {
        let mut p = pool();
        let plan = p
            .plan_requested_claim(ip(40), "eni-1", "default", "web-0", StaticIp::default(), 7)
            .expect("plan");
        p.apply(&plan);
        let c = p.claim("default", "web-0").expect("claim").clone();
        assert!(c.requested && c.released_ms == Some(7) && c.ip == ip(40));
        assert_eq!(c.eni_id, "eni-1");
        assert!(p.eni("eni-1").expect("eni").ips.contains(&ip(40)));
        // Nobody else's ADD takes it; the pod's own binds it.
        for n in 0..3 {
            let other: AttachmentKey = key(&format!("o{n}"));
            let a = p
                .plan_add(&other, "/n", Some(&pod(&format!("o{n}"))), None, 8)
                .expect("add");
            assert_ne!(a.allocation.ip, ip(40));
            p.apply(&a.changes);
        }
        let mine = p
            .plan_add(&key("s1"), "/n", Some(&pod("web-0")), None, 9)
            .expect("bind");
        assert_eq!(mine.allocation.ip, ip(40));
    }

    #[test]
    fn the_claim_is_checked_again_under_the_lock() {
        let mut p = pool();
        p.apply(&[Change::PutAllocation(allocation("c1", 11, "eni-1"))]);
        let e = p
            .plan_requested_claim(ip(11), "eni-1", "default", "web-0", StaticIp::default(), 1)
            .expect_err("taken meanwhile");
        assert!(matches!(e, IpamError::RequestedHeld { .. }));
        let gone = p
            .plan_requested_claim(ip(40), "eni-9", "default", "web-0", StaticIp::default(), 1)
            .expect_err("no such ENI");
        assert!(gone.to_string().contains("eni-9"), "{gone}");
    }
}
