//! A short fault storm (see `vpc_cni_tests::storm`; `bench/fault-storm`
//! runs a long one): five nodes, pods churning while the VPC API throttles
//! 30% of calls, fails 5%, adds latency and loses answers after applying
//! them, and agents are killed at random. Afterwards every running pod has
//! its IP, nothing is on two ENIs or attached nowhere, each agent's pool is
//! exactly its ENIs' IPs in the cloud, and static pods kept their IPs.

use std::time::Duration;

use vpc_cni_tests::storm::{self, Options};

#[test]
fn a_short_fault_storm_leaves_every_ip_accounted_for() {
    let report = storm::run(&Options {
        nodes: 5,
        duration: Duration::from_secs(20),
        latency: Duration::from_millis(100),
        throttle_rate: 0.3,
        error_rate: 0.05,
        drop_every: 4,
        kill_every: Duration::from_secs(4),
        seed: 0x5eed,
        settle_within: Duration::from_secs(120),
    });
    let table = report.table();
    eprintln!("{table}");
    assert!(report.violations.is_empty(), "{table}");
    assert!(report.adds >= 20, "the storm hardly ran:\n{table}");
    assert!(report.kills >= 2, "no agent was killed:\n{table}");
}
