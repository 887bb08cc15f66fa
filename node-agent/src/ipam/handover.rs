//! The hand-over of a static IP between nodes, and the arrival of an
//! address asked of the cloud by name, as one durable state machine.
//!
//! A claim is *held* (bound or reserved), *outgoing* (another node took it
//! over; the address is still reserved here) or *incoming* (the address is
//! on its way to an ENI of this node; recorded before the cloud is asked).
//! Neither an outgoing nor an incoming claim's address is ever free,
//! expired or reclaimed: it leaves an outgoing claim only when the cloud
//! shows it gone from this node, and an incoming record only ends when
//! the address is here (the claim is held) or the cluster says the claim
//! went elsewhere and nothing arrived.
//!
//! ```text
//!              object names another node        cloud: not on this node
//!   Held ───────────────────────────────▶ Outgoing ─────────────────────▶ (forgotten)
//!    ▲  ▲       (no sandbox here)           │  │
//!    │  └───────────────────────────────────┘  │ object gone (its new holder
//!    │     object names this node again        ▼ let go): ended, cools down
//!    │
//!    │  cloud: on ENI e of this node
//!    └──────────────────────────── Incoming ──▶ object names another node /
//!          (Finish, eni = e)        │  ▲        gone, nothing here: Abandon
//!                                   └──┘
//!                       object names this node: ask the cloud (again)
//! ```
//!
//! [`step`] is the machine: given what the cluster and then the cloud say
//! (read in that order, so a "gone" read first cannot be contradicted by a
//! stale listing), it names the one transition to make. The `plan_*`
//! functions turn a transition into the pool's changes.

use std::net::Ipv4Addr;

use super::records::{Change, Claim, EniRecord};
use super::{Ipam, IpamError};

/// Where a claim is between nodes; `None` on a claim is *held*.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handover {
    /// Node `to_node` took the claim over: the address stays reserved here
    /// until the cloud shows it gone from this node.
    Outgoing {
        /// The node the cluster names as the claim's holder now.
        to_node: String,
    },
    /// The address is on its way to the claim's ENI (`Claim::eni_id`) of
    /// this node; recorded before the cloud is asked.
    Incoming {
        /// Where it comes from.
        from: Source,
    },
}

/// Where an incoming address comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Moved from ENI `eni_id` of node `node` (`MigratePrivateIpAddress`).
    Node {
        /// The node that held the claim.
        node: String,
        /// Its ENI carrying the address.
        eni_id: String,
        /// The claim's IPv6 address there (dual stack): it follows the
        /// IPv4 address once that arrived, taken off the source ENI and
        /// assigned here by name (the API moves no IPv6 address).
        ipv6: Option<std::net::Ipv6Addr>,
    },
    /// Assigned by address from the subnet: the claim's own address,
    /// which the cloud lost from this node. Refused, the claim is lost.
    Subnet,
    /// Assigned by address from the subnet: an address the pod asked for
    /// and never had. Refused, the claim is dropped.
    Request,
}

/// What the cluster's claim object says of the claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Word {
    /// It names this node as the holder (any phase).
    Here,
    /// It names another node.
    Other(String),
    /// There is no such object.
    Absent,
    /// The cluster could not be asked, or keeps no objects.
    Unknown,
}

/// What the cloud says of the claim's address, listed after the word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// On this node's secondary ENI with this id.
    Here(String),
    /// On no ENI of this node.
    NotHere,
}

/// The one transition to make now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do now.
    Stay,
    /// Held, reserved: node `to` took it over.
    Leave {
        /// The new holder.
        to: String,
    },
    /// Outgoing: the move was given back; held here again.
    Keep,
    /// Outgoing: the address left this node; the claim is forgotten here.
    Forget,
    /// Outgoing: the claim was deleted in the cluster and its new holder
    /// let go of it; it ends here, its address cools down.
    End,
    /// Incoming: the address arrived on ENI `eni`; held, reserved.
    Finish {
        /// Where it arrived.
        eni: String,
    },
    /// Incoming: ask the cloud (again) to bring the address here.
    Call,
    /// Incoming: nothing arrived and the claim is elsewhere; drop it.
    Abandon,
}

/// The machine: the transition for `claim` (`bound`: a sandbox here holds
/// its address), given the cluster's `word`, then the cloud's `seen`
/// (`None`: not listed).
pub fn step(claim: &Claim, bound: bool, word: &Word, seen: Option<&Seen>) -> Step {
    match &claim.handover {
        None => match word {
            Word::Other(to) if !bound => Step::Leave { to: to.clone() },
            _ => Step::Stay,
        },
        Some(Handover::Outgoing { .. }) => match (seen, word) {
            (Some(Seen::NotHere), _) => Step::Forget,
            (_, Word::Here) => Step::Keep,
            (Some(Seen::Here(_)), Word::Absent) => Step::End,
            _ => Step::Stay,
        },
        Some(Handover::Incoming { from }) => match (seen, word, from) {
            (Some(Seen::Here(eni)), _, _) => Step::Finish { eni: eni.clone() },
            (None, _, _) | (_, Word::Unknown, Source::Node { .. }) => Step::Stay,
            (Some(Seen::NotHere), Word::Other(_) | Word::Absent, Source::Node { .. }) => {
                Step::Abandon
            }
            (Some(Seen::NotHere), Word::Here, _)
            | (Some(Seen::NotHere), _, Source::Subnet | Source::Request) => Step::Call,
        },
    }
}

impl Ipam {
    /// Plans `step` for the claim of pod `namespace/name`; nothing when
    /// there is no such claim or the step changes nothing in the pool.
    /// Refused when the claim changed since the step was decided (another
    /// state than `was`).
    pub fn plan_step(
        &self,
        namespace: &str,
        name: &str,
        was: &Option<Handover>,
        step: &Step,
        now: super::UnixMillis,
    ) -> Result<Vec<Change>, IpamError> {
        let Some(claim) = self.claim(namespace, name) else {
            return Ok(Vec::new());
        };
        if &claim.handover != was {
            return Err(IpamError::ClaimChanged {
                namespace: namespace.into(),
                name: name.into(),
            });
        }
        let bound = self.holder_of(&claim.ip).is_some();
        Ok(match step {
            Step::Stay | Step::Call => Vec::new(),
            Step::Leave { to } if !bound => vec![Change::PutClaim(Claim {
                handover: Some(Handover::Outgoing {
                    to_node: to.clone(),
                }),
                ..claim.clone()
            })],
            Step::Leave { .. } => Vec::new(),
            Step::Keep => vec![Change::PutClaim(Claim {
                handover: None,
                ..claim.clone()
            })],
            Step::Forget | Step::Abandon => self.plan_drop(claim),
            Step::End => {
                let mut changes = vec![Change::RemoveClaim(
                    claim.namespace.clone(),
                    claim.name.clone(),
                )];
                if self.enis.iter().any(|e| e.ips.contains(&claim.ip)) {
                    changes.push(Change::PutCooling(
                        claim.ip,
                        now.saturating_add(self.cooldown_ms),
                    ));
                }
                changes
            }
            Step::Finish { eni } => match self.eni(eni) {
                Some(record) => self.plan_arrived(claim, record),
                None => Vec::new(),
            },
        })
    }

    /// Plans an incoming claim: pod `claim`'s address is coming to ENI
    /// `claim.eni_id` from `from`. Written before the cloud is asked, so a
    /// crash after the call leaves a record that the address is this
    /// claim's. Replaces an outgoing claim of the same pod (the claim comes
    /// back); refused when the address is another claim's or a sandbox's
    /// here.
    pub fn plan_incoming(&self, claim: &Claim, from: Source) -> Result<Vec<Change>, IpamError> {
        if let Some(a) = self.holder_of(&claim.ip) {
            return Err(IpamError::InUse {
                ip: claim.ip,
                holder: Box::new(a.key.clone()),
            });
        }
        if let Some(other) = self.claimed.get(&claim.ip)
            && other != &claim.id()
        {
            return Err(IpamError::Claimed {
                ip: claim.ip,
                namespace: other.0.clone(),
                name: other.1.clone(),
            });
        }
        Ok(vec![Change::PutClaim(Claim {
            handover: Some(Handover::Incoming { from }),
            lost: None,
            ..claim.clone()
        })])
    }

    /// The address of `claim` arrived on `eni`: the ENI holds it, no other
    /// ENI record here does, and the claim is held, reserved.
    pub fn plan_arrived(&self, claim: &Claim, eni: &EniRecord) -> Vec<Change> {
        let mut changes = self.plan_claim_restored(claim, eni);
        if let Some(Change::PutClaim(c)) = changes.last_mut() {
            c.handover = None;
            c.released_ms = c.released_ms.or(Some(c.last_bound_ms));
        }
        changes
    }

    /// Forgets a claim whose address is not (or no longer) this node's:
    /// the claim goes and so does its address from every ENI record here,
    /// without a cooldown and without a word to the cloud. Nothing while a
    /// sandbox here holds the address.
    fn plan_drop(&self, claim: &Claim) -> Vec<Change> {
        if self.holder_of(&claim.ip).is_some() {
            return Vec::new();
        }
        let mut changes: Vec<Change> = self
            .enis
            .iter()
            .filter(|e| e.ips.contains(&claim.ip))
            .map(|e| {
                let mut old = e.clone();
                old.ips.retain(|ip| *ip != claim.ip);
                Change::PutEni(old)
            })
            .collect();
        if self.cooling.contains_key(&claim.ip) {
            changes.push(Change::RemoveCooling(claim.ip));
        }
        changes.push(Change::RemoveClaim(
            claim.namespace.clone(),
            claim.name.clone(),
        ));
        changes
    }

    /// Every claim in a hand-over, for the loop that drives them.
    pub fn handovers(&self) -> Vec<Claim> {
        self.claims
            .values()
            .filter(|c| c.handover.is_some())
            .cloned()
            .collect()
    }

    /// Where the cloud's listing `enis` (this node's) puts `ip`.
    pub fn seen(ip: Ipv4Addr, enis: &[crate::cloud::Eni]) -> Seen {
        enis.iter()
            .find(|e| !e.primary && e.secondary_ips.contains(&ip))
            .map_or(Seen::NotHere, |e| Seen::Here(e.id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::testing::{allocation, eni, ip};

    fn claim(handover: Option<Handover>) -> Claim {
        Claim {
            namespace: "default".into(),
            name: "web-0".into(),
            ip: ip(10),
            eni_id: "eni-a".into(),
            subnet_id: "subnet-1".into(),
            created_ms: 1,
            last_bound_ms: 1,
            released_ms: Some(2),
            expire_after_ms: None,
            owner: None,
            lost: None,
            requested: false,
            handover,
        }
    }

    fn outgoing() -> Option<Handover> {
        Some(Handover::Outgoing {
            to_node: "b".into(),
        })
    }

    fn incoming() -> Option<Handover> {
        Some(Handover::Incoming {
            from: Source::Node {
                node: "a".into(),
                eni_id: "eni-x".into(),
                ipv6: None,
            },
        })
    }

    fn here(e: &str) -> Option<Seen> {
        Some(Seen::Here(e.into()))
    }

    #[test]
    fn a_held_claim_leaves_only_when_no_sandbox_here_holds_it() {
        let c = claim(None);
        let other = Word::Other("b".into());
        assert_eq!(
            step(&c, false, &other, None),
            Step::Leave { to: "b".into() }
        );
        assert_eq!(step(&c, true, &other, None), Step::Stay, "bound here");
        for word in [Word::Here, Word::Absent, Word::Unknown] {
            assert_eq!(step(&c, false, &word, here("eni-a").as_ref()), Step::Stay);
        }
    }

    #[test]
    fn an_outgoing_claim_goes_only_once_the_cloud_shows_the_address_gone() {
        let c = claim(outgoing());
        let not_here = Some(Seen::NotHere);
        for word in [
            Word::Here,
            Word::Other("b".into()),
            Word::Absent,
            Word::Unknown,
        ] {
            assert_eq!(step(&c, false, &word, not_here.as_ref()), Step::Forget);
        }
        let still = here("eni-a");
        assert_eq!(
            step(&c, false, &Word::Other("b".into()), still.as_ref()),
            Step::Stay,
            "still on this node: reserved, never free"
        );
        assert_eq!(step(&c, false, &Word::Unknown, still.as_ref()), Step::Stay);
        assert_eq!(step(&c, false, &Word::Unknown, None), Step::Stay);
        assert_eq!(step(&c, false, &Word::Here, still.as_ref()), Step::Keep);
        assert_eq!(step(&c, false, &Word::Here, None), Step::Keep);
        assert_eq!(step(&c, false, &Word::Absent, still.as_ref()), Step::End);
        assert_eq!(
            step(&c, false, &Word::Absent, None),
            Step::Stay,
            "gone, but the cloud not asked since: it may have moved"
        );
    }

    #[test]
    fn an_incoming_claim_finishes_where_the_address_is_and_is_abandoned_only_when_elsewhere() {
        let c = claim(incoming());
        for word in [
            Word::Here,
            Word::Other("a".into()),
            Word::Absent,
            Word::Unknown,
        ] {
            assert_eq!(
                step(&c, false, &word, here("eni-b").as_ref()),
                Step::Finish {
                    eni: "eni-b".into()
                }
            );
            assert_eq!(step(&c, false, &word, None), Step::Stay, "not listed");
        }
        let not_here = Some(Seen::NotHere);
        assert_eq!(step(&c, false, &Word::Here, not_here.as_ref()), Step::Call);
        assert_eq!(
            step(&c, false, &Word::Unknown, not_here.as_ref()),
            Step::Stay
        );
        for word in [Word::Other("a".into()), Word::Absent] {
            assert_eq!(step(&c, false, &word, not_here.as_ref()), Step::Abandon);
        }
        for from in [Source::Subnet, Source::Request] {
            let by_name = claim(Some(Handover::Incoming { from }));
            for word in [
                Word::Here,
                Word::Other("a".into()),
                Word::Absent,
                Word::Unknown,
            ] {
                assert_eq!(
                    step(&by_name, false, &word, not_here.as_ref()),
                    Step::Call,
                    "an address asked of the subnet is the cloud's to refuse"
                );
            }
        }
    }

    fn pool_with(c: &Claim, ips: &[u8]) -> Ipam {
        let mut ipam = Ipam::new(30_000);
        ipam.apply(&[
            Change::PutEni(eni("eni-a", 101, ips)),
            Change::PutClaim(c.clone()),
        ]);
        ipam
    }

    #[test]
    fn an_outgoing_address_is_never_free_and_leaves_with_its_claim() {
        let c = claim(outgoing());
        let mut ipam = pool_with(&c, &[10, 11]);
        assert!(matches!(
            ipam.ip_use(&ip(10), 5),
            crate::ipam::IpUse::Reserved(_)
        ));
        assert_eq!(ipam.expired(u64::MAX, Some(0)), Vec::new(), "never expires");
        assert!(ipam.plan_delete_claim("default", "web-0", true, 5).is_err());
        assert!(
            ipam.plan_owner_deleted(
                &crate::ipam::OwnerRef {
                    kind: "StatefulSet".into(),
                    name: "web".into(),
                    uid: "u".into(),
                },
                5
            )
            .1
            .is_empty()
        );
        let changes = ipam
            .plan_step("default", "web-0", &outgoing(), &Step::Forget, 5)
            .expect("plan");
        ipam.apply(&changes);
        assert!(ipam.claim("default", "web-0").is_none());
        assert_eq!(
            ipam.enis()[0].ips,
            vec![ip(11)],
            "the address left the pool"
        );
    }

    #[test]
    fn a_step_decided_on_a_claim_that_changed_since_is_refused() {
        let ipam = pool_with(&claim(None), &[10]);
        assert!(matches!(
            ipam.plan_step("default", "web-0", &outgoing(), &Step::Forget, 5),
            Err(IpamError::ClaimChanged { .. })
        ));
    }

    #[test]
    fn an_incoming_record_reserves_the_address_before_it_arrives_and_finishes_reserved() {
        let mut ipam = pool_with(&claim(None), &[11]);
        ipam.apply(&[Change::RemoveClaim("default".into(), "web-0".into())]);
        let c = Claim {
            eni_id: "eni-a".into(),
            ..claim(None)
        };
        let changes = ipam
            .plan_incoming(
                &c,
                Source::Node {
                    node: "a".into(),
                    eni_id: "eni-x".into(),
                    ipv6: None,
                },
            )
            .expect("plan");
        ipam.apply(&changes);
        // A crash now; the reconcile adopts the address that arrived.
        let mut record = ipam.eni("eni-a").cloned().expect("eni");
        record.ips.push(ip(10));
        ipam.apply(&[Change::PutEni(record)]);
        assert!(
            matches!(ipam.ip_use(&ip(10), 5), crate::ipam::IpUse::Reserved(_)),
            "the claim's, not free"
        );
        let changes = ipam
            .plan_step(
                "default",
                "web-0",
                &incoming(),
                &Step::Finish {
                    eni: "eni-a".into(),
                },
                5,
            )
            .expect("plan");
        ipam.apply(&changes);
        let held = ipam.claim("default", "web-0").expect("held");
        assert_eq!((held.handover.clone(), held.lost.clone()), (None, None));
        assert!(
            held.released_ms.is_some(),
            "reserved until its pod binds it"
        );
        assert_eq!(ipam.claim_trouble(held), None);
    }

    #[test]
    fn an_incoming_record_is_refused_over_an_address_in_use_here() {
        let mut ipam = pool_with(&claim(None), &[10]);
        ipam.apply(&[
            Change::RemoveClaim("default".into(), "web-0".into()),
            Change::PutAllocation(allocation("c1", 10, "eni-a")),
        ]);
        assert!(ipam.plan_incoming(&claim(None), Source::Subnet).is_err());
    }
}
