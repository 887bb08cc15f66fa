//! Sizing the pool, "plan, then apply": [`plan_growth`] and
//! [`plan_release`] are pure functions of the pool, the node's limits and
//! the targets; the agent carries out their actions against the cloud.

use std::net::Ipv4Addr;

use crate::cloud::Limits;
use crate::ipam::{EniRecord, EniUsage};

/// How large the pool should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets {
    /// Free IPs to keep ready.
    pub warm_ip: usize,
    /// Whole ENIs' worth of free IPs to keep ready.
    pub warm_eni: usize,
    /// IPs the pool holds at least, free or not.
    pub min_ip: usize,
    /// ENIs the node may have at most, the primary included (the
    /// instance's own limit applies too).
    pub max_eni: Option<u32>,
    /// IPs given back per maintenance round at most.
    pub release_batch: usize,
}

/// An operator's overrides of one node's targets (its `NodeEniConfig`
/// spec); unset fields keep the flags' values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Free IPs to keep ready.
    pub warm_ip: Option<usize>,
    /// IPs to hold at least.
    pub min_ip: Option<usize>,
    /// ENIs at most, the primary included.
    pub max_eni: Option<u32>,
    /// Subnets new ENIs may come from; empty: as configured.
    pub subnets: Vec<String>,
}

impl Overrides {
    /// `targets` with these overrides.
    pub fn apply(&self, targets: Targets) -> Targets {
        Targets {
            warm_ip: self.warm_ip.unwrap_or(targets.warm_ip),
            min_ip: self.min_ip.unwrap_or(targets.min_ip),
            max_eni: self.max_eni.or(targets.max_eni),
            ..targets
        }
    }
}

impl Targets {
    /// The node's limits narrowed by `max_eni`.
    pub fn limits(&self, node: Limits) -> Limits {
        Limits {
            max_enis: self.max_eni.map_or(node.max_enis, |m| m.min(node.max_enis)),
            ..node
        }
    }

    /// Free IPs wanted, for a pool of `total` IPs with `free` of them free.
    pub fn want_free(&self, limits: Limits, total: usize, free: usize) -> usize {
        let per_eni = limits.max_ips_per_eni.saturating_sub(1) as usize;
        let warm = self.warm_ip.max(self.warm_eni * per_eni);
        match self.min_ip.saturating_sub(total) {
            0 => warm,
            short => warm.max(free + short),
        }
    }
}

/// One step of giving IPs back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// Unassign these free IPs of an ENI.
    Ips {
        /// ENI id.
        eni_id: String,
        /// The IPs.
        ips: Vec<Ipv4Addr>,
    },
    /// Detach and delete an ENI left with no IP.
    Eni {
        /// ENI id.
        eni_id: String,
    },
}

/// What to give back when more than `want_free` IPs are free: at most
/// `targets.release_batch` IPs, never leaving fewer than `targets.min_ip`
/// in the pool, newest ENIs first; an ENI left with no IP at all goes too.
pub fn plan_release(usage: &[EniUsage], targets: Targets, want_free: usize) -> Vec<Release> {
    let free: usize = usage.iter().map(|u| u.free.len()).sum();
    let total: usize = usage.iter().map(|u| u.total).sum();
    let mut budget = free
        .saturating_sub(want_free)
        .min(total.saturating_sub(targets.min_ip))
        .min(targets.release_batch);
    let mut plan = Vec::new();
    for u in usage.iter().rev() {
        if budget == 0 {
            break;
        }
        let take: Vec<Ipv4Addr> = u.free.iter().rev().take(budget).copied().collect();
        if take.is_empty() {
            continue;
        }
        budget -= take.len();
        let emptied = take.len() == u.total;
        plan.push(Release::Ips {
            eni_id: u.id.clone(),
            ips: take,
        });
        if emptied {
            plan.push(Release::Eni {
                eni_id: u.id.clone(),
            });
        }
    }
    plan
}

/// The first route table number given to a secondary ENI.
pub const FIRST_ENI_TABLE: u32 = 101;

/// One step towards the wanted number of free IPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Assign more secondary IPs to an attached ENI.
    AssignIps {
        /// ENI id.
        eni_id: String,
        /// How many.
        count: u32,
    },
    /// Create and attach a new ENI, then assign it `count` IPs.
    CreateEni {
        /// Route table for the new ENI.
        table: u32,
        /// How many IPs to assign.
        count: u32,
    },
}

/// The actions that bring the free IPs from `free` to `want_free`, within
/// the instance's limits: fill existing ENIs first, then add ENIs. Empty
/// when nothing is needed or nothing more is allowed.
pub fn plan_growth(
    enis: &[EniRecord],
    limits: Limits,
    free: usize,
    want_free: usize,
) -> Vec<Action> {
    let per_eni = limits.max_ips_per_eni.saturating_sub(1);
    let mut need = want_free.saturating_sub(free) as u32;
    let mut actions = Vec::new();
    for eni in enis {
        if need == 0 {
            break;
        }
        let room = per_eni.saturating_sub(eni.ips.len() as u32);
        let count = room.min(need);
        if count > 0 {
            actions.push(Action::AssignIps {
                eni_id: eni.id.clone(),
                count,
            });
            need -= count;
        }
    }
    let mut secondary = enis.len() as u32;
    let mut table = enis
        .iter()
        .map(|e| e.table + 1)
        .max()
        .unwrap_or(FIRST_ENI_TABLE)
        .max(FIRST_ENI_TABLE);
    while need > 0 && per_eni > 0 && secondary + 1 < limits.max_enis {
        let count = per_eni.min(need);
        actions.push(Action::CreateEni { table, count });
        need -= count;
        secondary += 1;
        table += 1;
    }
    actions
}

/// Whether the pool can take one more IP.
pub fn can_grow(enis: &[EniRecord], limits: Limits) -> bool {
    !plan_growth(enis, limits, 0, 1).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(id: &str, table: u32, n: usize) -> EniRecord {
        EniRecord {
            id: id.into(),
            mac: String::new(),
            subnet_id: "s".into(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            primary_ip: Ipv4Addr::new(10, 0, 0, 2),
            mtu: 1500,
            table,
            ips: (0..n).map(|i| Ipv4Addr::new(10, 0, 1, i as u8)).collect(),
            ipv6: Vec::new(),
        }
    }

    const LIMITS: Limits = Limits {
        max_enis: 3,
        max_ips_per_eni: 5,
    };

    #[test]
    fn empty_pool_creates_an_eni() {
        assert_eq!(
            plan_growth(&[], LIMITS, 0, 3),
            vec![Action::CreateEni {
                table: 101,
                count: 3
            }]
        );
    }

    #[test]
    fn fills_existing_enis_before_creating() {
        let enis = [eni("a", 101, 2)];
        assert_eq!(
            plan_growth(&enis, LIMITS, 0, 5),
            vec![
                Action::AssignIps {
                    eni_id: "a".into(),
                    count: 2
                },
                Action::CreateEni {
                    table: 102,
                    count: 3
                }
            ]
        );
    }

    #[test]
    fn stops_at_the_instance_limits() {
        let enis = [eni("a", 101, 4), eni("b", 102, 4)];
        assert!(plan_growth(&enis, LIMITS, 0, 1).is_empty());
        assert!(!can_grow(&enis, LIMITS));
        assert!(can_grow(&enis[..1], LIMITS));
    }

    fn usage(id: &str, free: &[u8], total: usize) -> EniUsage {
        EniUsage {
            id: id.into(),
            free: free.iter().map(|b| Ipv4Addr::new(10, 0, 1, *b)).collect(),
            total,
        }
    }

    const T: Targets = Targets {
        warm_ip: 2,
        warm_eni: 0,
        min_ip: 3,
        max_eni: None,
        release_batch: 10,
    };

    #[test]
    fn releases_the_excess_newest_eni_first_and_drops_emptied_enis() {
        let u = [usage("a", &[1, 2], 4), usage("b", &[5, 6], 2)];
        assert_eq!(
            plan_release(&u, T, 2),
            vec![
                Release::Ips {
                    eni_id: "b".into(),
                    ips: vec![Ipv4Addr::new(10, 0, 1, 6), Ipv4Addr::new(10, 0, 1, 5)]
                },
                Release::Eni { eni_id: "b".into() },
            ]
        );
    }

    #[test]
    fn never_below_the_minimum_and_at_most_a_batch() {
        let u = [usage("a", &[1, 2, 3, 4], 4)];
        assert_eq!(
            plan_release(&u, T, 0),
            vec![Release::Ips {
                eni_id: "a".into(),
                ips: vec![Ipv4Addr::new(10, 0, 1, 4)]
            }]
        );
        let small_batch = Targets {
            min_ip: 0,
            release_batch: 2,
            ..T
        };
        assert_eq!(plan_release(&u, small_batch, 0).len(), 1);
        if let Release::Ips { ips, .. } = &plan_release(&u, small_batch, 0)[0] {
            assert_eq!(ips.len(), 2);
        }
        assert!(
            plan_release(&u, T, 4).is_empty(),
            "nothing above what is wanted"
        );
    }

    #[test]
    fn targets_combine() {
        let l = Limits {
            max_enis: 4,
            max_ips_per_eni: 11,
        };
        let t = Targets {
            warm_ip: 3,
            warm_eni: 1,
            min_ip: 0,
            max_eni: Some(2),
            release_batch: 5,
        };
        assert_eq!(t.want_free(l, 0, 0), 10, "one ENI's worth beats three IPs");
        assert_eq!(t.limits(l).max_enis, 2);
        let t = Targets { min_ip: 20, ..t };
        assert_eq!(
            t.want_free(l, 5, 2),
            17,
            "grow until the pool holds the minimum"
        );
        assert_eq!(
            t.want_free(l, 30, 25),
            10,
            "above the minimum only the warm target counts"
        );
    }

    #[test]
    fn nothing_to_do_when_enough_is_free() {
        assert!(plan_growth(&[eni("a", 101, 1)], LIMITS, 5, 5).is_empty());
    }
}
