//! The real `vpc-cni` binary driven as kubelet and libcni drive it, against
//! a real agent process: every verb, the three cniVersions, every error path.

use serde_json::{Value, json};
use vpc_cni_tests::{Agent, CniEnv, cni, cni_as, pod_address, require_root};

const VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn with_prev(mut conf: Value, prev: &Value) -> Value {
    conf["prevResult"] = prev.clone();
    conf
}

#[test]
fn version_is_answered_without_an_agent_or_stdin() {
    let run = cni(&CniEnv::default().set("CNI_COMMAND", "VERSION"), b"");
    assert!(run.ok, "{}", run.stderr);
    let v = run.json();
    for required in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(
            v["supportedVersions"]
                .as_array()
                .expect("list")
                .iter()
                .any(|x| x == required)
        );
    }
}

#[test]
fn add_check_del_in_every_cni_version() {
    let agent = Agent::start(&[]);
    for (n, version) in VERSIONS.into_iter().enumerate() {
        let container = format!("ctr{n}");
        let netns = agent.netns(&container);
        let conf = agent.conf(version);
        let add = cni(&CniEnv::pod("ADD", &container, &netns), &bytes(&conf));
        assert!(add.ok, "ADD {version}: {} {}", add.stdout, add.stderr);
        assert_eq!(
            add.stdout.lines().count(),
            1,
            "stdout carries only the result"
        );
        let result = add.json();
        assert_eq!(result["cniVersion"], version);
        let ifaces = result["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifaces.len(), 2);
        assert!(ifaces[0]["name"].as_str().expect("host").starts_with("vpc"));
        assert!(ifaces[0].get("sandbox").is_none());
        assert_eq!(ifaces[1]["name"], "eth0");
        assert_eq!(ifaces[1]["sandbox"], netns.as_str());
        assert_eq!(ifaces[1].get("mtu").is_some(), version == "1.1.0");
        let ip = &result["ips"][0];
        assert!(ip["address"].as_str().expect("address").ends_with("/32"));
        assert_eq!(ip["gateway"], "169.254.1.1");
        assert_eq!(ip["interface"], 1);
        assert_eq!(ip.get("version").is_some(), version == "0.4.0");
        assert_eq!(
            result["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
        );

        let check = cni(
            &CniEnv::pod("CHECK", &container, &netns),
            &bytes(&with_prev(conf.clone(), &result)),
        );
        assert!(check.ok, "CHECK {version}: {}", check.stdout);
        assert!(check.stdout.is_empty());

        let del = cni(
            &CniEnv::pod("DEL", &container, &netns),
            &bytes(&with_prev(conf.clone(), &result)),
        );
        assert!(del.ok, "DEL {version}: {}", del.stdout);
        assert!(del.stdout.is_empty());
        let again = cni(
            &CniEnv::pod("DEL", &container, &netns).unset("CNI_NETNS"),
            &bytes(&conf),
        );
        assert!(
            again.ok,
            "DEL is idempotent and needs neither netns nor prevResult: {}",
            again.stdout
        );

        let check = cni(
            &CniEnv::pod("CHECK", &container, &netns),
            &bytes(&with_prev(conf, &result)),
        );
        assert_eq!(check.code(), 3, "CHECK after DEL: unknown container");
    }
}

#[test]
fn repeated_add_returns_the_same_ip_and_check_catches_a_wrong_prev_result() {
    let agent = Agent::start(&[]);
    let netns = agent.netns("p");
    let conf = agent.conf("1.0.0");
    let first = cni(&CniEnv::pod("ADD", "same", &netns), &bytes(&conf)).json();
    let second = cni(&CniEnv::pod("ADD", "same", &netns), &bytes(&conf)).json();
    assert_eq!(pod_address(&first), pod_address(&second));

    let mut wrong = first.clone();
    wrong["ips"][0]["address"] = json!("10.255.255.254/32");
    let check = cni(
        &CniEnv::pod("CHECK", "same", &netns),
        &bytes(&with_prev(conf, &wrong)),
    );
    assert_eq!(check.code(), 102);
}

#[test]
fn chained_add_keeps_the_previous_result() {
    let agent = Agent::start(&[]);
    let netns = agent.netns("p");
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "sandbox": netns}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
        "dns": {"nameservers": ["10.96.0.10"]},
    });
    let run = cni(
        &CniEnv::pod("ADD", "chained", &netns),
        &bytes(&with_prev(agent.conf("1.0.0"), &prev)),
    );
    let result = run.json();
    assert_eq!(
        result["interfaces"].as_array().expect("interfaces").len(),
        3
    );
    assert_eq!(result["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(result["ips"][1]["interface"], 2);
    assert_eq!(result["dns"]["nameservers"][0], "10.96.0.10");
}

#[test]
fn gc_releases_every_attachment_not_listed_and_accepts_both_keys() {
    let agent = Agent::start(&[]);
    let conf = agent.conf("1.1.0");
    for c in ["keep", "stale1", "stale2"] {
        assert!(cni(&CniEnv::pod("ADD", c, &agent.netns(c)), &bytes(&conf)).ok);
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}, {"containerID": "stale2", "ifname": "eth0"}]);
    let run = cni(&CniEnv::bare("GC"), &bytes(&gc));
    assert!(run.ok, "{}", run.stdout);
    assert!(run.stdout.is_empty());
    let mut gc = conf.clone();
    gc["cni.dev/attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    assert!(cni(&CniEnv::bare("GC"), &bytes(&gc)).ok);

    let held: Vec<String> = agent
        .pool()
        .enis
        .iter()
        .flat_map(|e| &e.ips)
        .filter_map(|ip| match &ip.state {
            proto::wire::IpState::Allocated { key, .. } => Some(key.container_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(held, ["keep"]);
}

#[test]
fn status_is_ready_with_an_agent_and_50_without() {
    let agent = Agent::start(&[]);
    let run = cni(&CniEnv::bare("STATUS"), &bytes(&agent.conf("1.1.0")));
    assert!(run.ok, "{}", run.stdout);
    assert!(run.stdout.is_empty());
    let mut down = agent.conf("1.1.0");
    down["agentSocket"] = json!(agent.dir.path().join("nobody.sock"));
    assert_eq!(cni(&CniEnv::bare("STATUS"), &bytes(&down)).code(), 50);
}

#[test]
fn status_is_not_ready_when_no_ip_can_be_served() {
    let agent = Agent::start_with(&["--max-enis", "2", "--ips-per-eni", "2"], &[]);
    let conf = agent.conf("1.1.0");
    assert!(
        cni(
            &CniEnv::pod("ADD", "only", &agent.netns("only")),
            &bytes(&conf)
        )
        .ok
    );
    let run = cni(&CniEnv::bare("STATUS"), &bytes(&conf));
    assert_eq!(run.code(), 50);
    let add = cni(
        &CniEnv::pod("ADD", "one-too-many", &agent.netns("x")),
        &bytes(&conf),
    );
    assert_eq!(add.code(), 101);
    assert!(add.json()["msg"].as_str().expect("msg").contains("limits"));
}

#[test]
fn agent_down_is_try_again_later_for_every_attachment_verb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let netns = dir.path().join("ns");
    std::fs::write(&netns, b"").expect("netns");
    let netns = netns.display().to_string();
    let conf = json!({"cniVersion": "1.1.0", "name": "vpc", "agentSocket": dir.path().join("agent.sock"), "timeoutSeconds": 2,
                      "cni.dev/valid-attachments": []});
    for verb in ["ADD", "DEL", "CHECK"] {
        assert_eq!(
            cni(&CniEnv::pod(verb, "c", &netns), &bytes(&conf)).code(),
            11,
            "{verb}"
        );
    }
    assert_eq!(cni(&CniEnv::bare("GC"), &bytes(&conf)).code(), 11);
}

#[test]
fn environment_errors_are_code_4() {
    let conf = json!({"cniVersion": "1.0.0", "name": "vpc", "agentSocket": "/nonexistent.sock"});
    let full = CniEnv::pod("ADD", "c", "/proc/1/ns/net");
    let cases = [
        ("no command", CniEnv::default()),
        ("unknown command", full.clone().set("CNI_COMMAND", "FROB")),
        ("no container id", full.clone().unset("CNI_CONTAINERID")),
        ("no netns", full.clone().unset("CNI_NETNS")),
        ("no ifname", full.clone().unset("CNI_IFNAME")),
        ("no path", full.clone().unset("CNI_PATH")),
        (
            "bad container id",
            full.clone().set("CNI_CONTAINERID", "a/b"),
        ),
        (
            "long ifname",
            full.clone().set("CNI_IFNAME", "a-very-long-ifname"),
        ),
        ("unknown arg", full.clone().set("CNI_ARGS", "FOO=bar")),
        (
            "netns missing",
            full.clone().set("CNI_NETNS", "/nonexistent/netns"),
        ),
    ];
    for (what, env) in cases {
        let run = cni(&env, &bytes(&conf));
        assert_eq!(run.code(), 4, "{what}: {}", run.stdout);
    }
}

#[test]
fn stdin_and_config_errors() {
    let env = CniEnv::pod("DEL", "c", "/proc/1/ns/net");
    assert_eq!(cni(&env, b"this is not json").code(), 6);
    assert_eq!(cni(&env, b"").code(), 6);
    let huge = format!(
        r#"{{"cniVersion":"1.0.0","name":"vpc","pad":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    assert_eq!(cni(&env, huge.as_bytes()).code(), 6);
    assert_eq!(
        cni(&env, br#"{"cniVersion":"9.9.9","name":"vpc"}"#).code(),
        1
    );
    assert_eq!(cni(&env, br#"{"name":"vpc"}"#).code(), 1);
    assert_eq!(
        cni(&env, br#"{"cniVersion":"1.0.0","name":"bad name"}"#).code(),
        7
    );
    assert_eq!(
        cni(
            &env,
            br#"{"cniVersion":"1.0.0","name":"vpc","timeoutSeconds":-1}"#
        )
        .code(),
        7
    );
    assert_eq!(
        cni(
            &CniEnv::bare("GC"),
            br#"{"cniVersion":"1.0.0","name":"vpc"}"#
        )
        .code(),
        1
    );
    assert_eq!(
        cni(
            &CniEnv::bare("STATUS"),
            br#"{"cniVersion":"0.4.0","name":"vpc"}"#
        )
        .code(),
        1
    );
    let run = cni(&env, br#"{"cniVersion":"0.4.0","name":"bad name"}"#);
    assert_eq!(
        run.json()["cniVersion"],
        "0.4.0",
        "errors come in the caller's version"
    );
}

#[test]
fn concurrent_adds_get_distinct_ips() {
    let agent = Agent::start(&["--warm-ip-target", "1"]);
    let conf = bytes(&agent.conf("1.0.0"));
    let envs: Vec<CniEnv> = (0..24)
        .map(|i| CniEnv::pod("ADD", &format!("par{i}"), &agent.netns(&format!("par{i}"))))
        .collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = envs.iter().map(|env| s.spawn(|| cni(env, &conf))).collect();
        handles
            .into_iter()
            .map(|h| pod_address(&h.join().expect("thread").json()))
            .collect()
    });
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ips.len(), "{ips:?}");
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn privileged_callers_that_are_not_root_are_refused() {
    // Running the plugin as another uid needs root.
    require_root();
    let agent = Agent::start(&[]);
    let run = cni_as(
        &CniEnv::bare("STATUS"),
        &bytes(&agent.conf("1.1.0")),
        Some(65534),
    );
    assert_eq!(run.code(), 106, "{}", run.stdout);
}

#[test]
fn the_agent_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let agent = Agent::start(&[]);
    let mode = std::fs::metadata(agent.socket())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}
