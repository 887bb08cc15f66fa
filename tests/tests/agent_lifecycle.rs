//! The agent's life beyond single requests: a failed store write makes it
//! stop and exit so its supervisor restarts it from the store; with the VPC
//! API down it still starts and serves from what it holds, and picks the
//! cloud up again by itself.

use std::time::Duration;

use proto::wire::{Request, Response};
use serde_json::Value;
use vpc_cni_tests::{Agent, CniEnv, cni, pod_address};

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn run(agent: &Agent, verb: &str, sandbox: &str) -> vpc_cni_tests::Run {
    let env = CniEnv::pod(verb, sandbox, &agent.netns(sandbox)).set(
        "CNI_ARGS",
        &format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={sandbox}"),
    );
    cni(&env, &bytes(&agent.conf("1.0.0")))
}

fn add(agent: &Agent, sandbox: &str) -> String {
    let r = run(agent, "ADD", sandbox);
    assert!(r.ok, "ADD {sandbox}: {} {}", r.stdout, r.stderr);
    pod_address(&r.json())
}

fn allocated(agent: &Agent) -> Vec<String> {
    let mut v: Vec<String> = agent
        .pool()
        .enis
        .iter()
        .flat_map(|e| &e.ips)
        .filter_map(|i| match &i.state {
            proto::wire::IpState::Allocated { key, .. } => Some(key.container_id.clone()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn hole_2_a_poisoned_agent_exits_non_zero_and_restarts_from_its_store() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let trigger = scratch.path().join("fail-commits");
    let trigger_flag = trigger.display().to_string();
    let mut agent = Agent::start(&["--test-store-fail-file", &trigger_flag]);
    add(&agent, "kept");
    std::fs::write(&trigger, b"").expect("trigger");
    let failed = run(&agent, "ADD", "lost");
    assert!(!failed.ok);
    // 104 when this ADD's commit failed; 11 when a background commit failed
    // first and the agent was already on its way out.
    assert!([104, 11].contains(&failed.code()), "{}", failed.stdout);
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the poisoned agent did not exit:\n{}", agent.log()));
    assert!(!status.success(), "exit status {status}");
    assert!(
        agent
            .log()
            .contains("exiting so the agent restarts from the store"),
        "{}",
        agent.log()
    );
    std::fs::remove_file(&trigger).expect("untrigger");
    agent.spawn();
    assert_eq!(
        allocated(&agent),
        ["kept"],
        "what was durable is back; what failed is not"
    );
}

#[test]
fn hole_6_the_agent_starts_without_the_cloud_serves_what_it_holds_and_resumes() {
    let mut agent = Agent::start(&["--warm-ip-target", "3"]);
    let ips: Vec<String> = (0..3).map(|i| add(&agent, &format!("p{i}"))).collect();
    // The pool grows back to its warm target in the background (an assign
    // and its task, confirmed after a pause): the premise is free IPs held.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while free_ips(&agent) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never got its warm IPs back:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.kill9();
    // The VPC API fails every call (metadata still answers), as during an
    // outage; the agent must start anyway.
    agent.emulator.restart(&["--error-rate", "1"]);
    agent.spawn();
    let pool = agent.pool();
    assert!(
        pool.conditions.iter().any(|c| c.kind == "CloudUnreachable"),
        "{:?}",
        pool.conditions
    );
    match proto::client::call(&agent.socket(), &Request::Status, Duration::from_secs(5)) {
        Ok(Ok(Response::Status(s))) => assert!(s.ready, "free IPs are held: {s:?}"),
        other => panic!("status: {other:?}"),
    }
    let extra = add(&agent, "while-down");
    assert!(!ips.contains(&extra));
    // (The fake dataplane forgets its pods across restarts: CHECK the one
    // wired since.)
    let check = run(&agent, "CHECK", "while-down");
    assert!(check.ok, "CHECK while the API is down: {}", check.stdout);
    for sandbox in ["p0", "p1", "p2", "while-down"] {
        let r = run(&agent, "DEL", sandbox);
        assert!(r.ok, "DEL {sandbox} while the API is down: {}", r.stdout);
    }
    assert!(allocated(&agent).is_empty());
    agent.emulator.restart(&[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while agent
        .pool()
        .conditions
        .iter()
        .any(|c| c.kind == "CloudUnreachable")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never noticed the API is back:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_ips(agent: &Agent) -> usize {
    agent
        .pool()
        .enis
        .iter()
        .flat_map(|e| &e.ips)
        .filter(|ip| matches!(ip.state, proto::wire::IpState::Free))
        .count()
}

#[test]
fn hole_8_the_agent_starts_with_neither_the_vpc_api_nor_the_metadata_service() {
    let mut agent = Agent::start(&["--warm-ip-target", "2"]);
    let ips: Vec<String> = (0..2).map(|i| add(&agent, &format!("p{i}"))).collect();
    agent.kill9();
    // The emulator serves both the VPC API and the metadata service: both
    // stop answering.
    agent.emulator.stop();
    agent.spawn();
    match proto::client::call(&agent.socket(), &Request::Status, Duration::from_secs(5)) {
        Ok(Ok(Response::Status(_))) => {}
        other => panic!(
            "status without the metadata service: {other:?}\n{}",
            agent.log()
        ),
    }
    assert!(
        agent
            .log()
            .contains("using the node identity kept in the state directory"),
        "{}",
        agent.log()
    );
    assert_eq!(allocated(&agent).len(), ips.len(), "served from its store");
    for sandbox in ["p0", "p1"] {
        let r = run(&agent, "DEL", sandbox);
        assert!(r.ok, "DEL {sandbox} without the cloud: {}", r.stdout);
    }
    assert!(allocated(&agent).is_empty());
    agent.emulator.restart(&[]);
}
