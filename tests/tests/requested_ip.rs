//! A requested address through the real plugin and agent, with the
//! emulator over HTTP: a pod asking for an address of the subnet
//! (`VPC_IP_CLAIM_REQUESTED_IP`) gets it, assigned by address to an ENI of
//! its node; another pod asking for it is refused naming the holder; two
//! nodes racing for one address end with it on exactly one ENI.

use std::path::Path;
use std::process::Child;

use proto::wire::{ClaimView, Request, Response};
use serde_json::Value;
use vpc_cni_tests::{Agent, CniEnv, Emulator, Run, cni, pod_address, spawn_agent, wait_ready};

const WANTED: &str = "10.0.20.7";

fn env(verb: &str, sandbox: &str, pod: &str, netns: &str, requested: &str) -> CniEnv {
    let args = format!(
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};VPC_IP_CLAIM_REQUESTED_IP={requested}"
    );
    CniEnv::pod(verb, sandbox, netns).set("CNI_ARGS", &args)
}

fn conf(socket: &Path) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "vpc",
        "type": "vpc-cni",
        "agentSocket": socket,
        "timeoutSeconds": 10,
    }))
    .expect("json")
}

fn netns(dir: &Path, name: &str) -> String {
    let p = dir.join(format!("netns-{name}"));
    std::fs::write(&p, b"").expect("netns file");
    p.display().to_string()
}

fn request(dir: &Path, sandbox: &str, pod: &str, ip: &str) -> Run {
    cni(
        &env("ADD", sandbox, pod, &netns(dir, sandbox), ip),
        &conf(&dir.join("agent.sock")),
    )
}

fn claims(socket: &Path) -> Vec<ClaimView> {
    match proto::client::call(socket, &Request::Claims, std::time::Duration::from_secs(5)) {
        Ok(Ok(Response::Claims { claims })) => claims,
        other => panic!("claims: {other:?}"),
    }
}

/// The ENIs of the whole VPC carrying `ip`, as the cloud keeps them.
fn enis_carrying(emulator: &Emulator, ip: &str) -> Vec<String> {
    emulator.world()["vpc"]["enis"]
        .as_object()
        .expect("enis")
        .values()
        .filter(|e| {
            e["primary_ip"] == ip
                || e["secondary_ips"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == ip))
        })
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect()
}

fn message(run: &Run) -> String {
    run.json()["msg"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_pod_gets_the_address_it_asks_for_and_another_pod_is_told_who_holds_it() {
    let agent = Agent::start(&["--ip-cooldown", "0s"]);
    let dir = agent.dir.path();
    let run = request(dir, "web-0-a", "web-0", WANTED);
    assert!(run.ok, "ADD: {} {}", run.stdout, agent.log());
    assert_eq!(pod_address(&run.json()), format!("{WANTED}/32"));
    assert_eq!(enis_carrying(&agent.emulator, WANTED).len(), 1);
    let claim = claims(&agent.socket())
        .into_iter()
        .find(|c| c.name == "web-0")
        .expect("claim");
    assert!(claim.requested && claim.policy == "Never", "{claim:?}");

    let refused = request(dir, "web-1-a", "web-1", WANTED);
    assert_eq!(refused.code(), 101, "{}", refused.stdout);
    assert!(
        message(&refused).contains("held by pod default/web-0 on this node"),
        "{}",
        refused.stdout
    );

    // A malformed request never reaches the agent.
    let bad = request(dir, "web-2-a", "web-2", "10.0.20");
    assert_eq!(bad.code(), 4);
    assert!(
        message(&bad).contains("VPC_IP_CLAIM_REQUESTED_IP"),
        "{}",
        bad.stdout
    );
    // Outside the node's subnet (10.0.16.0/20): named as such.
    let outside = request(dir, "web-3-a", "web-3", "10.0.40.7");
    assert_eq!(outside.code(), 7, "{}", outside.stdout);
    assert!(
        message(&outside).contains("outside subnet"),
        "{}",
        outside.stdout
    );

    // The address sticks to its pod across sandboxes.
    let del = cni(
        &env("DEL", "web-0-a", "web-0", &netns(dir, "web-0-a"), WANTED),
        &conf(&agent.socket()),
    );
    assert!(del.ok, "DEL: {}", del.stdout);
    let again = request(dir, "web-0-b", "web-0", WANTED);
    assert!(again.ok, "ADD again: {}", again.stdout);
    assert_eq!(pod_address(&again.json()), format!("{WANTED}/32"));
    assert_eq!(enis_carrying(&agent.emulator, WANTED).len(), 1);
}

/// An agent of instance `n` of a shared emulator, killed on drop.
struct Node {
    dir: tempfile::TempDir,
    child: Child,
}

impl Node {
    fn start(emulator: &Emulator, n: usize) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = spawn_agent(dir.path(), emulator, n, &[]);
        wait_ready(
            &dir.path().join("agent.sock"),
            Some(&mut child),
            &dir.path().join("agent.log"),
        );
        Node { dir, child }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_nodes_racing_for_one_address_end_with_it_on_exactly_one_eni() {
    let emulator = Emulator::start(2, &[]);
    let nodes = [Node::start(&emulator, 1), Node::start(&emulator, 2)];
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let dir = node.dir.path();
                s.spawn(move || request(dir, &format!("race-{i}"), &format!("race-{i}"), WANTED))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let won: Vec<&Run> = runs.iter().filter(|r| r.ok).collect();
    assert_eq!(won.len(), 1, "exactly one wins: {runs:?}");
    assert_eq!(pod_address(&won[0].json()), format!("{WANTED}/32"));
    let lost = runs.iter().find(|r| !r.ok).expect("a loser");
    assert_eq!(lost.code(), 101, "{}", lost.stdout);
    assert!(
        message(lost).contains("in use in the VPC"),
        "{}",
        lost.stdout
    );
    assert_eq!(enis_carrying(&emulator, WANTED).len(), 1);
    // The loser holds no claim on it.
    let holders: Vec<Value> = nodes
        .iter()
        .flat_map(|n| claims(&n.dir.path().join("agent.sock")))
        .filter(|c| c.ip.to_string() == WANTED)
        .map(|c| Value::from(c.name))
        .collect();
    assert_eq!(holders.len(), 1, "{holders:?}");
}
