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
    // The maintenance loop keeps trying to reach its targets, so an ENI
    // it just created may exist for the moment its attach takes to fail;
    // none is ever kept: they never pile up, and the cloud soon holds none
    // (the leaked-ENI sweep's grace is far longer than this wait).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut most = 0;
    loop {
        let enis = agent.emulator.secondary_enis();
        most = most.max(enis.len());
        assert!(most <= 1, "failed ENIs pile up: {enis:?}");
        if enis.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the created ENI was deleted: {enis:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = agent.pool().enis.iter().flat_map(|e| &e.ips).any(|ip| {
            matches!(&ip.state, proto::wire::IpState::Attaching { error: Some(e) } if e.contains("AttachNetworkInterface"))
        });
        if shown {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failed attach is shown with its error"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pool's IPs, and the cloud's IPs on the node's secondary ENIs.
fn pool_and_cloud_ips(agent: &Agent) -> (Vec<String>, Vec<String>) {
    let mut pool: Vec<String> = agent
        .pool()
        .enis
        .iter()
        .flat_map(|e| e.ips.iter().map(|ip| ip.ip.to_string()))
        .collect();
    let world = agent.emulator.world();
    let mut cloud: Vec<String> = world["vpc"]["enis"]
        .as_object()
        .expect("enis")
        .values()
        .filter(|e| e["primary"] == false && e["attached_to"] == "ins-sim0001")
        .flat_map(|e| {
            e["secondary_ips"]
                .as_array()
                .expect("ips")
                .iter()
                .map(|ip| ip.as_str().expect("ip").to_string())
        })
        .collect();
    pool.sort();
    cloud.sort();
    (pool, cloud)
}

/// Waits (up to `within`) until the pool's IPs are exactly the cloud's on
/// the node's ENIs, each once, and no ENI in the VPC is unattached.
fn assert_nothing_leaks(agent: &Agent, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (pool, cloud) = pool_and_cloud_ips(agent);
        let unattached: Vec<Value> = agent.emulator.world()["vpc"]["enis"]
            .as_object()
            .expect("enis")
            .values()
            .filter(|e| e["attached_to"].is_null())
            .cloned()
            .collect();
        if pool == cloud && unattached.is_empty() {
            let mut unique = pool.clone();
            unique.dedup();
            assert_eq!(unique, pool, "an IP twice");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "leaked: pool {pool:?}, cloud {cloud:?}, unattached ENIs {unattached:?}\n{}",
            agent.emulator.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn under_throttling_and_errors_nothing_leaks() {
    let agent = Agent::start_with(
        &[
            "--throttle-rate",
            "0.2",
            "--error-rate",
            "0.1",
            "--max-enis",
            "3",
            "--ips-per-eni",
            "6",
        ],
        &["--warm-ip-target", "2", "--ip-cooldown", "0s"],
    );
    for round in 0..3 {
        for i in 0..6 {
            let run = add(&agent, &format!("r{round}p{i}"));
            assert!(
                run.ok || run.code() == 101 || run.code() == 105,
                "{}",
                run.stdout
            );
        }
        for i in 0..6 {
            let id = format!("r{round}p{i}");
            let run = cni(
                &CniEnv::pod("DEL", &id, &agent.netns(&id)),
                &bytes(&agent.conf("1.1.0")),
            );
            assert!(run.ok, "DEL {id}: {}", run.stdout);
        }
    }
    // The maintenance loop may be mid-change: judge once the two agree.
    assert_nothing_leaks(&agent, Duration::from_secs(10));
}

#[test]
fn a_restart_reconciles_the_pool_with_the_cloud() {
    let mut agent = Agent::start(&["--warm-ip-target", "3"]);
    assert!(add(&agent, "keep").ok);
    let held: Vec<String> = agent
        .pool()
        .enis
        .iter()
        .flat_map(|e| &e.ips)
        .filter(|ip| matches!(ip.state, proto::wire::IpState::Allocated { .. }))
        .map(|ip| ip.ip.to_string())
        .collect();
    agent.kill9();
    // While the agent is down, the cloud loses every IP nobody holds.
    let path = agent.emulator.dir.path().join("vpc.json");
    let mut world: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("world")).expect("json");
    for eni in world["vpc"]["enis"]
        .as_object_mut()
        .expect("enis")
        .values_mut()
    {
        if eni["primary"] == false {
            eni["secondary_ips"] = Value::from(
                eni["secondary_ips"]
                    .as_array()
                    .expect("ips")
                    .iter()
                    .filter(|ip| held.iter().any(|h| ip.as_str() == Some(h)))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
    }
    std::fs::write(&path, serde_json::to_vec(&world).expect("json")).expect("write");
    agent.spawn();
    let (pool, cloud) = pool_and_cloud_ips(&agent);
    assert!(
        pool.iter().all(|ip| cloud.contains(ip)),
        "no IP the cloud took back is still in the pool: {pool:?} vs {cloud:?}"
    );
    for ip in &held {
        assert!(pool.contains(ip), "the held IP stayed");
    }
}

#[test]
fn ips_of_an_eni_being_attached_show_as_attaching_then_join_the_pool() {
    let agent = Agent::start_with(&["--task-latency-ms", "1500"], &["--warm-ip-target", "3"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen_attaching = false;
    loop {
        let pool = agent.pool();
        let states: Vec<&proto::wire::IpState> = pool
            .enis
            .iter()
            .flat_map(|e| &e.ips)
            .map(|ip| &ip.state)
            .collect();
        seen_attaching |= states
            .iter()
            .any(|s| matches!(s, proto::wire::IpState::Attaching { error: None }));
        if states
            .iter()
            .filter(|s| matches!(s, proto::wire::IpState::Free))
            .count()
            >= 3
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the warm pool never filled: {pool:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        seen_attaching,
        "while the attach task ran, its IPs were shown as attaching"
    );
    assert!(add(&agent, "after").ok);
}

/// Hole 3: every other answer to attach and assign is lost after the call
/// took effect. The agent still serves every pod, and afterwards every ENI
/// in the VPC is attached to the node and in its pool, with exactly the
/// pool's IPs: nothing attached twice, assigned twice, or discarded while
/// attached.
#[test]
fn hole_3_lost_answers_to_attach_and_assign_leak_nothing() {
    let agent = Agent::start_with(
        &[
            "--drop-responses",
            "AttachNetworkInterface,AssignPrivateIpAddresses,CreateNetworkInterface",
            "--drop-every",
            "2",
            "--ips-per-eni",
            "4",
        ],
        &[
            "--warm-ip-target",
            "1",
            "--ip-cooldown",
            "0s",
            "--cloud-timeout",
            "1s",
        ],
    );
    for i in 0..8 {
        let run = add(&agent, &format!("lost{i}"));
        assert!(run.ok, "ADD lost{i}: {}\n{}", run.stdout, agent.log());
    }
    assert_nothing_leaks(&agent, Duration::from_secs(20));
}

/// `--metrics-address` serves the Prometheus text format: the cloud calls
/// by action and code, the pool's IPs by state and each ADD's phases.
#[test]
fn metrics_are_served_when_asked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let address = format!("127.0.0.1:{port}");
    let agent = Agent::start(&["--metrics-address", &address, "--warm-ip-target", "2"]);
    let run = add(&agent, "m1");
    assert!(run.ok, "{}", run.stdout);
    let text = {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&address).expect("metrics listener");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("answer");
        answer
    };
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    for expected in [
        "vpc_cni_pool_ips{state=\"allocated\"} 1",
        "vpc_cni_add_seconds_count{phase=\"total\"} 1",
        "vpc_cni_add_seconds_count{phase=\"ip\"} 1",
        "vpc_cni_add_seconds_count{phase=\"queue\"} 1",
        "vpc_cni_add_seconds_count{phase=\"cloud\"} 1",
        "vpc_cni_add_seconds_count{phase=\"kernel\"} 1",
        "vpc_cni_cloud_calls_total{action=\"DescribeNetworkInterfaceLimit\",code=\"OK\"} 1",
        "vpc_cni_cloud_task_seconds_count{action=\"AttachNetworkInterface\"}",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
}
