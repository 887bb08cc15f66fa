//! The agent against `vpc-sim serve` over HTTP, as against the real VPC
//! API: the ENI quota (ENILimit), a zone without a usable subnet, an
//! exhausted subnet, throttling, and a failed attach, each ending with a
//! clear CNI error and nothing left behind in the cloud.

use std::time::{Duration, Instant};

use serde_json::Value;
use vpc_cni_tests::{Agent, CniEnv, cni};

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn add(agent: &Agent, id: &str) -> vpc_cni_tests::Run {
    cni(
        &CniEnv::pod("ADD", id, &agent.netns(id)),
        &bytes(&agent.conf("1.1.0")),
    )
}

#[test]
fn the_eni_quota_ends_in_enilimit_fast_and_clear() {
    // Quota 1: the node's primary ENI uses it up.
    let agent = Agent::start_with(&["--eni-quota", "1"], &[]);
    let started = Instant::now();
    let run = add(&agent, "q1");
    assert_eq!(run.code(), 108, "{}", run.stdout);
    assert!(
        run.json()["msg"]
            .as_str()
            .expect("msg")
            .contains("ENILimit"),
        "{}",
        run.stdout
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no hang: {:?}",
        started.elapsed()
    );
    let pool = agent.pool();
    assert!(
        pool.conditions.iter().any(|c| c.kind == "ENILimit"),
        "{:?}",
        pool.conditions
    );
    let status = cni(&CniEnv::bare("STATUS"), &bytes(&agent.conf("1.1.0")));
    assert_eq!(status.code(), 50);
    assert!(
        status.json()["details"]
            .as_str()
            .unwrap_or_default()
            .contains("ENILimit"),
        "{}",
        status.stdout
    );
    assert!(agent.emulator.secondary_enis().is_empty());
}

#[test]
fn no_usable_subnet_in_the_zone_means_no_eni_and_a_condition() {
    let agent = Agent::start(&["--subnet-ids", "subnet-of-another-zone"]);
    let run = add(&agent, "z1");
    assert_eq!(run.code(), 105, "{}", run.stdout);
    assert!(
        run.json()["msg"]
            .as_str()
            .expect("msg")
            .contains("no subnet in zone sim-zone-1"),
        "{}",
        run.stdout
    );
    assert!(
        agent
            .pool()
            .conditions
            .iter()
            .any(|c| c.kind == "NoSubnetInZone")
    );
    assert!(agent.emulator.secondary_enis().is_empty());
}

#[test]
fn an_exhausted_subnet_is_a_clear_error() {
    // A /29: hosts .2 to .6; the primary ENI takes one, a new ENI another.
    let agent = Agent::start_with(
        &["--subnet-cidr", "10.0.16.0/29"],
        &["--warm-ip-target", "1"],
    );
    let mut codes = Vec::new();
    for i in 0..5 {
        let run = add(&agent, &format!("s{i}"));
        codes.push(if run.ok { 0 } else { run.code() });
        if !run.ok {
            assert!(
                run.json()["msg"]
                    .as_str()
                    .expect("msg")
                    .contains("no free IP"),
                "{}",
                run.stdout
            );
            break;
        }
    }
    assert_eq!(codes.last(), Some(&105), "{codes:?}");
    assert!(codes.iter().filter(|c| **c == 0).count() >= 2, "{codes:?}");
}

#[test]
fn throttling_is_survived_by_retries() {
    let agent = Agent::start_with(&["--throttle-rate", "0.3"], &["--warm-ip-target", "1"]);
    for i in 0..8 {
        let run = add(&agent, &format!("t{i}"));
        assert!(run.ok, "ADD t{i}: {}\n{}", run.stdout, agent.log());
    }
    assert!(
        agent.log().contains("retrying"),
        "some calls were throttled and retried"
    );
}

#[test]
fn a_failed_attach_leaves_no_eni_behind() {
    let agent = Agent::start_with(&["--fail-actions", "AttachNetworkInterface"], &[]);
    let run = add(&agent, "a1");
    assert_eq!(run.code(), 105, "{}", run.stdout);
    assert!(
        agent.emulator.secondary_enis().is_empty(),
        "the created ENI was deleted"
    );
}
