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

fn request(agent: &Agent, request: Request) -> Result<Response, proto::wire::AgentError> {
    proto::client::call(&agent.socket(), &request, std::time::Duration::from_secs(5)).expect("call")
}

fn cli(agent: &Agent, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(vpc_cni_tests::bin("vpc-cni-agent"))
        .arg("claims")
        .args(args)
        .arg("--socket")
        .arg(agent.socket())
        .output()
        .expect("run the CLI");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_claim_is_deleted_by_hand_but_not_under_a_running_pod_unless_forced() {
    let agent = Agent::start(&[]);
    let ip = add(&agent, "web-1-a", "web-1", Some("Never"));
    let (ok, text) = cli(&agent, &["delete", "default/web-1"]);
    assert!(!ok && text.contains("cut its network"), "{text}");
    del(&agent, "web-1-a", "web-1");
    let (ok, text) = cli(&agent, &["delete", "default/web-1"]);
    assert!(ok && text.contains(ip.trim_end_matches("/32")), "{text}");
    assert!(claims(&agent).is_empty());
    let (ok, text) = cli(&agent, &["delete", "default/web-1"]);
    assert!(!ok && text.contains("no static IP claim"), "{text}");

    add(&agent, "web-2-a", "web-2", Some("Never"));
    let (ok, text) = cli(&agent, &["delete", "--force", "default/web-2"]);
    assert!(ok, "{text}");
    assert!(
        claims(&agent).is_empty(),
        "the forced delete ended the sandbox's allocation too"
    );
}

#[test]
fn hole_14_expired_claims_are_previewed_then_reclaimed_on_a_moved_clock() {
    // No maintenance tick during the test: only the commands reclaim.
    let agent = Agent::start(&["--maintenance-interval", "1h"]);
    let args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=tmp-0;VPC_IP_CLAIM_DELETE_POLICY=Never;VPC_IP_CLAIM_EXPIRED_DURATION=5m";
    let netns = agent.netns("tmp-a");
    let run = cni(
        &CniEnv::pod("ADD", "tmp-a", &netns).set("CNI_ARGS", args),
        &bytes(&agent.conf("1.0.0")),
    );
    let ip = pod_address(&run.json());
    assert!(
        cni(
            &CniEnv::pod("DEL", "tmp-a", &netns).set("CNI_ARGS", args),
            &bytes(&agent.conf("1.0.0"))
        )
        .ok
    );
    let (ok, text) = cli(&agent, &["reclaim", "--dry-run"]);
    assert!(ok && !text.contains("tmp-0"), "not expired yet: {text}");
    // The ADD woke the maintenance loop (it grows the pool after every
    // ADD); it must be asleep for its hour, with nothing asked of it,
    // before the clock moves, so that only the commands below act on it.
    agent.wait_for_idle_maintenance(std::time::Duration::from_secs(30 * 60));
    agent.advance_clock(std::time::Duration::from_secs(301));
    let (ok, text) = cli(&agent, &["reclaim", "--dry-run"]);
    assert!(
        ok && text.contains("would reclaim default/tmp-0") && text.contains("expired"),
        "{text}"
    );
    assert_eq!(claims(&agent).len(), 1, "a dry run changes nothing");
    let (ok, text) = cli(&agent, &["reclaim"]);
    assert!(
        ok && text.contains("reclaimed default/tmp-0"),
        "{text}: {ip}"
    );
    assert!(claims(&agent).is_empty());
}

#[test]
fn deleting_the_owner_reclaims_its_pods_claims_made_with_ownerref() {
    let agent = Agent::start(&["--enable-ownerref"]);
    let owned = |pod: &str| {
        format!(
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};VPC_IP_CLAIM_DELETE_POLICY=Never;\
             K8S_POD_OWNER_KIND=StatefulSet;K8S_POD_OWNER_NAME=db;K8S_POD_OWNER_UID=u-1"
        )
    };
    for pod in ["db-0", "db-1"] {
        let netns = agent.netns(pod);
        let env = CniEnv::pod("ADD", pod, &netns).set("CNI_ARGS", &owned(pod));
        assert!(cni(&env, &bytes(&agent.conf("1.0.0"))).ok);
    }
    del(&agent, "db-0", "db-0");
    let owner = proto::wire::OwnerRef {
        kind: "StatefulSet".into(),
        name: "db".into(),
        uid: "u-1".into(),
    };
    match request(&agent, Request::OwnerDeleted(owner.clone())) {
        Ok(Response::Reclaimed { claims }) => assert_eq!(claims.len(), 2, "{claims:?}"),
        other => panic!("{other:?}"),
    }
    assert!(
        claims(&agent).iter().all(|c| c.policy == "Immediate"),
        "db-1 runs on, no longer static"
    );

    let plain = Agent::start(&[]);
    let netns = plain.netns("db-0");
    assert!(
        cni(
            &CniEnv::pod("ADD", "db-0", &netns).set("CNI_ARGS", &owned("db-0")),
            &bytes(&plain.conf("1.0.0"))
        )
        .ok
    );
    match request(&plain, Request::OwnerDeleted(owner)) {
        Ok(Response::Reclaimed { claims }) => assert!(
            claims.is_empty(),
            "made without --enable-ownerref: untouched"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expiry_below_five_minutes_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(vpc_cni_tests::bin("vpc-cni-agent"))
        .args([
            "run",
            "--dataplane",
            "fake",
            "--claim-expired-duration",
            "1m",
            "--socket",
        ])
        .arg(dir.path().join("a.sock"))
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .expect("run the agent");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("minimum of 5m"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hole_8_a_pods_own_expiry_below_five_minutes_is_refused_too() {
    let agent = Agent::start(&[]);
    let args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=tmp-1;VPC_IP_CLAIM_DELETE_POLICY=Never;VPC_IP_CLAIM_EXPIRED_DURATION=1s";
    let run = cni(
        &CniEnv::pod("ADD", "tmp-1-a", &agent.netns("tmp-1-a")).set("CNI_ARGS", args),
        &bytes(&agent.conf("1.0.0")),
    );
    assert!(!run.ok, "{}", run.stdout);
    assert!(run.stdout.contains("minimum of 5m"), "{}", run.stdout);
    assert!(claims(&agent).is_empty(), "no claim, no IP taken");
}

/// ADD with arbitrary `CNI_ARGS` beyond the pod's namespace and name.
fn add_with(agent: &Agent, sandbox: &str, pod: &str, extra: &str) -> String {
    let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}{extra}");
    let run = cni(
        &CniEnv::pod("ADD", sandbox, &agent.netns(sandbox)).set("CNI_ARGS", &args),
        &bytes(&agent.conf("1.0.0")),
    );
    assert!(run.ok, "ADD {sandbox}: {} {}", run.stdout, run.stderr);
    pod_address(&run.json())
}

/// StatefulSet-like churn of static and plain pods with agent crashes in
/// the middle, then the three reclaim paths; at the end every IP on the
/// node's ENIs is bound to a running pod, reserved for a live claim, or
/// free (or cooling) in the pool, counted through the agent and through
/// the cloud API alike.
#[test]
fn churn_with_crashes_and_every_reclaim_path_leaves_every_ip_accounted_for() {
    use std::collections::{BTreeMap, BTreeSet};
    let mut agent = Agent::start(&["--enable-ownerref"]);
    let owned = ";VPC_IP_CLAIM_DELETE_POLICY=Never;K8S_POD_OWNER_KIND=StatefulSet;\
                 K8S_POD_OWNER_NAME=web;K8S_POD_OWNER_UID=u-web";
    let expiring = ";VPC_IP_CLAIM_DELETE_POLICY=Never;VPC_IP_CLAIM_EXPIRED_DURATION=5m";
    let never = ";VPC_IP_CLAIM_DELETE_POLICY=Never";
    let mut pods: Vec<(String, &str)> = Vec::new();
    for i in 0..4 {
        pods.push((format!("web-{i}"), owned));
        pods.push((format!("job-{i}"), ""));
    }
    pods.push(("tmp-0".into(), expiring));
    pods.push(("keep-0".into(), never));
    let is_static = |extra: &str| !extra.is_empty();

    let mut first: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..3 {
        let mut bound = BTreeSet::new();
        for (pod, extra) in &pods {
            let ip = add_with(&agent, &format!("{pod}-{round}"), pod, extra);
            assert!(bound.insert(ip.clone()), "{ip} handed out twice");
            if is_static(extra) {
                let was = first.entry(pod.clone()).or_insert_with(|| ip.clone());
                assert_eq!(*was, ip, "{pod} kept its static IP in round {round}");
            } else {
                assert!(
                    !first.values().any(|s| *s == ip),
                    "plain pod {pod} got a static IP {ip}"
                );
            }
        }
        if round == 1 {
            // A crash with every pod running: their DELs reach the new agent.
            agent.kill9();
            agent.spawn();
        }
        for (pod, _) in &pods {
            del(&agent, &format!("{pod}-{round}"), pod);
        }
        if round == 0 {
            // A crash with every static IP reserved and nothing running.
            agent.kill9();
            agent.spawn();
        }
    }
    let reserved = claims(&agent);
    assert_eq!(reserved.len(), 6, "{reserved:?}");
    assert!(reserved.iter().all(|c| c.status == "Reserved"));

    // Pods that run on through the reclaims.
    let db = add_with(&agent, "db-0-a", "db-0", never);
    let run = add_with(&agent, "run-0-a", "run-0", "");

    // Manual, expiry and cascade.
    let (ok, text) = cli(&agent, &["delete", "default/web-3"]);
    assert!(ok, "{text}");
    // The expiry survives a crash: the agent is down when the claim's time
    // comes, and the restarted agent's maintenance reclaims it by itself.
    agent.kill9();
    agent.advance_clock(std::time::Duration::from_secs(301));
    agent.spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while claims(&agent).iter().any(|c| c.name == "tmp-0") {
        assert!(std::time::Instant::now() < deadline, "tmp-0 never expired");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let owner = proto::wire::OwnerRef {
        kind: "StatefulSet".into(),
        name: "web".into(),
        uid: "u-web".into(),
    };
    match request(&agent, Request::OwnerDeleted(owner)) {
        Ok(Response::Reclaimed { claims }) => assert_eq!(claims.len(), 3, "{claims:?}"),
        other => panic!("{other:?}"),
    }

    let left: BTreeMap<String, (String, String)> = claims(&agent)
        .into_iter()
        .map(|c| (c.name, (c.ip.to_string(), c.status)))
        .collect();
    let keep = first["keep-0"].trim_end_matches("/32").to_string();
    let want: BTreeMap<String, (String, String)> = [
        ("db-0", (db.trim_end_matches("/32"), "Bound")),
        ("keep-0", (keep.as_str(), "Reserved")),
        ("run-0", (run.trim_end_matches("/32"), "Bound")),
    ]
    .into_iter()
    .map(|(n, (ip, s))| (n.to_string(), (ip.to_string(), s.to_string())))
    .collect();
    assert_eq!(left, want);

    let claimed: BTreeMap<String, &str> = want
        .values()
        .map(|(ip, s)| (ip.clone(), s.as_str()))
        .collect();
    // The pool may be shrinking in the background: compare once it is
    // the same before and after reading the cloud's view.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let before = ips_through_agent(&agent, &claimed);
        let cloud = ips_through_cloud(&agent);
        if before == ips_through_agent(&agent, &claimed) && before == cloud {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent and cloud disagree: {before:?} vs {cloud:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// (ENI, IP) pairs in the agent's pool, checking that each IP is in one
/// state and that the bound and reserved ones are exactly `claimed`'s.
fn ips_through_agent(
    agent: &Agent,
    claimed: &std::collections::BTreeMap<String, &str>,
) -> std::collections::BTreeSet<(String, String)> {
    use proto::wire::IpState;
    let mut held = std::collections::BTreeMap::new();
    let mut all = std::collections::BTreeSet::new();
    for eni in agent.pool().enis {
        for ip in eni.ips {
            assert!(all.insert((eni.id.clone(), ip.ip.to_string())));
            match ip.state {
                IpState::Allocated { .. } => {
                    held.insert(ip.ip.to_string(), "Bound");
                }
                IpState::Reserved { .. } => {
                    held.insert(ip.ip.to_string(), "Reserved");
                }
                IpState::Free | IpState::Cooling { .. } => {}
                other => panic!("{} is {other:?}", ip.ip),
            }
        }
    }
    assert_eq!(&held, claimed);
    all
}

/// (ENI, IP) pairs of the secondary IPs on attached secondary ENIs, as the
/// cloud keeps them.
fn ips_through_cloud(agent: &Agent) -> std::collections::BTreeSet<(String, String)> {
    agent.emulator.world()["vpc"]["enis"]
        .as_object()
        .expect("enis")
        .values()
        .filter(|e| e["primary"] == false && !e["attached_to"].is_null())
        .flat_map(|e| {
            let id = e["id"].as_str().expect("id").to_string();
            e["secondary_ips"]
                .as_array()
                .expect("ips")
                .iter()
                .map(move |ip| (id.clone(), ip.as_str().expect("ip").to_string()))
        })
        .collect()
}
