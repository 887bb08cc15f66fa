//! Growing the pool, "plan, then apply": [`plan_growth`] is a pure function
//! of the pool and the node's limits; the agent carries out its actions
//! against the cloud.

use crate::cloud::Limits;
use crate::ipam::EniRecord;

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
    use std::net::Ipv4Addr;

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

    #[test]
    fn nothing_to_do_when_enough_is_free() {
        assert!(plan_growth(&[eni("a", 101, 1)], LIMITS, 5, 5).is_empty());
    }
}
