//! Static IPs through the real plugin and agent: a pod asking for one
//! (`VPC_IP_CLAIM_DELETE_POLICY=Never`) gets the same IP back in its next
//! sandbox, across an agent crash too, and nobody else gets it meanwhile.

use proto::wire::{ClaimView, Request, Response};
use serde_json::Value;
use vpc_cni_tests::{Agent, CniEnv, cni, pod_address};

fn env(verb: &str, sandbox: &str, pod: &str, netns: &str, policy: Option<&str>) -> CniEnv {
    let mut args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
    if let Some(p) = policy {
        args.push_str(&format!(";VPC_IP_CLAIM_DELETE_POLICY={p}"));
    }
    CniEnv::pod(verb, sandbox, netns).set("CNI_ARGS", &args)
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn add(agent: &Agent, sandbox: &str, pod: &str, policy: Option<&str>) -> String {
    let run = cni(
        &env("ADD", sandbox, pod, &agent.netns(sandbox), policy),
        &bytes(&agent.conf("1.0.0")),
    );
    assert!(run.ok, "ADD {sandbox}: {} {}", run.stdout, run.stderr);
    pod_address(&run.json())
}

fn del(agent: &Agent, sandbox: &str, pod: &str) {
    let run = cni(
        &env("DEL", sandbox, pod, &agent.netns(sandbox), None),
        &bytes(&agent.conf("1.0.0")),
    );
    assert!(run.ok, "DEL {sandbox}: {}", run.stdout);
}

fn claims(agent: &Agent) -> Vec<ClaimView> {
    match proto::client::call(
        &agent.socket(),
        &Request::Claims,
        std::time::Duration::from_secs(5),
    ) {
        Ok(Ok(Response::Claims { claims })) => claims,
        other => panic!("claims: {other:?}"),
    }
}

#[test]
fn a_static_pod_gets_its_ip_back_and_nobody_else_does() {
    let agent = Agent::start(&["--ip-cooldown", "0s"]);
    let ip = add(&agent, "web-0-a", "web-0", Some("Never"));
    del(&agent, "web-0-a", "web-0");
    let reserved = claims(&agent);
    assert_eq!(reserved.len(), 1);
    assert_eq!(
        (reserved[0].status.as_str(), reserved[0].policy.as_str()),
        ("Reserved", "Never")
    );
    for i in 0..5 {
        assert_ne!(
            add(&agent, &format!("other-{i}"), &format!("other-{i}"), None),
            ip,
            "cooldown 0s, yet not handed out"
        );
    }
    assert_eq!(
        add(&agent, "web-0-b", "web-0", Some("Never")),
        ip,
        "the next sandbox of the pod gets it back"
    );
    assert!(
        claims(&agent)
            .iter()
            .any(|c| c.name == "web-0" && c.status == "Bound")
    );
}

#[test]
fn a_plain_pod_does_not_keep_its_ip() {
    let agent = Agent::start(&[]);
    let ip = add(&agent, "job-a", "job", None);
    del(&agent, "job-a", "job");
    assert_ne!(add(&agent, "job-b", "job", None), ip);
    assert!(claims(&agent).iter().all(|c| c.policy == "Immediate"));
}

#[test]
fn a_static_ip_survives_a_crash_of_the_agent() {
    let mut agent = Agent::start(&[]);
    let ip = add(&agent, "db-0-a", "db-0", Some("Never"));
    del(&agent, "db-0-a", "db-0");
    agent.kill9();
    agent.spawn();
    assert_eq!(add(&agent, "db-0-b", "db-0", Some("Never")), ip);
}

#[test]
fn the_configuration_can_make_every_pod_static() {
    let agent = Agent::start(&[]);
    let mut conf = agent.conf("1.0.0");
    conf["claimDeletePolicy"] = Value::from("Never");
    let netns = agent.netns("s-a");
    let run = cni(&env("ADD", "s-a", "s", &netns, None), &bytes(&conf));
    let ip = pod_address(&run.json());
    assert!(cni(&env("DEL", "s-a", "s", &netns, None), &bytes(&conf)).ok);
    let run = cni(
        &env("ADD", "s-b", "s", &agent.netns("s-b"), None),
        &bytes(&conf),
    );
    assert_eq!(pod_address(&run.json()), ip);
    let bad = cni(
        &env("ADD", "x", "x", &agent.netns("x"), Some("Sometimes")),
        &bytes(&conf),
    );
    assert_eq!(bad.code(), 4);
}
