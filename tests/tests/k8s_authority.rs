//! Privileged: what a compromised node can do to the VPC. It holds no key;
//! its instance's CAM role reads only; its agent's token, shown to the
//! cluster's cloud gateway, changes its own ENIs and nothing of another
//! node's. Everything is sent from inside node 1's network namespace, as
//! an attacker on that node would.

use std::time::Duration;

use serde_json::{Value, json};
use vpc_cni_tests::k8s::{Cluster, cloud_enis, pin, pod};
use vpc_cni_tests::require_root;

/// `curl` in node `n`'s namespace: POSTs `body` to `url` with `headers`;
/// the answer's body as JSON.
fn post_from_node(c: &Cluster, n: usize, url: &str, headers: &[String], body: &Value) -> Value {
    let netns = c
        .get(&format!("NODE{n}_NETNS"))
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut args: Vec<String> = [
        "netns", "exec", &netns, "curl", "-sS", "-m", "20", "-X", "POST",
    ]
    .map(String::from)
    .to_vec();
    for h in headers {
        args.extend(["-H".to_string(), h.clone()]);
    }
    args.extend([
        "--data-binary".to_string(),
        body.to_string(),
        url.to_string(),
    ]);
    let out = std::process::Command::new("ip")
        .args(&args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!(
            "curl {url}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn code(answer: &Value) -> &str {
    answer["Response"]["Error"]["Code"].as_str().unwrap_or("")
}

/// The ENI of this cluster's node `instance`, secondary, attached to it.
fn secondary_eni(c: &Cluster, instance: &str) -> Option<(String, Value)> {
    cloud_enis(c).into_iter().find(|(_, e)| {
        e["attached_to"].as_str() == Some(instance) && !e["primary"].as_bool().unwrap_or(true)
    })
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_a_compromised_node_cannot_change_another_nodes_enis() {
    require_root();
    let c = Cluster::up(2);
    let (a, b) = (
        c.get("NODE1_INSTANCE").to_string(),
        c.get("NODE2_INSTANCE").to_string(),
    );
    c.wait_until(
        "both nodes have a secondary ENI",
        Duration::from_secs(120),
        || secondary_eni(&c, &a).is_some() && secondary_eni(&c, &b).is_some(),
    );
    let (eni_a, _) = secondary_eni(&c, &a).expect("node 1's ENI");
    let (eni_b, before) = secondary_eni(&c, &b).expect("node 2's ENI");
    let ip_b = before["secondary_ips"][0]
        .as_str()
        .expect("node 2's ENI has an address")
        .to_string();
    let ns = c.get("VPC_CNI_NAMESPACE").to_string();

    // The agent's token, as root on node 1 reads it from its pod: bound
    // to node 1's agent pod, for the gateway's audience.
    let agent_pod = c.agent_pod(1);
    let token = |account: &str, namespace: &str, pod: &str, audience: &str| {
        c.kubectl(&[
            "-n",
            namespace,
            "create",
            "token",
            account,
            "--audience",
            audience,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            pod,
            "--duration",
            "10m",
        ])
        .trim()
        .to_string()
    };
    let stolen = token("vpc-cni-agent", &ns, &agent_pod, "vpc-cni-gateway");
    // A ready replica, as the agents dial it.
    let gateway = format!(
        "http://{}:9444/",
        c.kubectl(&[
            "-n",
            &ns,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=vpc-cni-cluster",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ])
        .trim()
    );
    let via_gateway = |token: &str, action: &str, body: Value| {
        post_from_node(
            &c,
            1,
            &gateway,
            &[
                format!("X-TC-Action: {action}"),
                "X-TC-Version: 2017-03-12".into(),
                "Content-Type: application/json".into(),
                format!("Authorization: Bearer {token}"),
            ],
            &body,
        )
    };

    // Reads pass, and the node's own ENI is its own.
    let listed = via_gateway(&stolen, "DescribeNetworkInterfaces", json!({}));
    assert_eq!(code(&listed), "", "{listed}");
    let own = via_gateway(
        &stolen,
        "AssignPrivateIpAddresses",
        json!({"NetworkInterfaceId": eni_a, "SecondaryPrivateIpAddressCount": 1}),
    );
    assert_eq!(code(&own), "", "its own ENI: {own}");

    // Another node's ENI and addresses: refused, every way.
    for (action, body) in [
        (
            "DetachNetworkInterface",
            json!({"NetworkInterfaceId": eni_b, "InstanceId": b}),
        ),
        (
            "AssignPrivateIpAddresses",
            json!({"NetworkInterfaceId": eni_b, "SecondaryPrivateIpAddressCount": 1}),
        ),
        (
            "UnassignPrivateIpAddresses",
            json!({"NetworkInterfaceId": eni_b, "PrivateIpAddresses": [{"PrivateIpAddress": ip_b}]}),
        ),
        (
            "DeleteNetworkInterface",
            json!({"NetworkInterfaceId": eni_b}),
        ),
        (
            "MigratePrivateIpAddress",
            json!({"SourceNetworkInterfaceId": eni_b, "DestinationNetworkInterfaceId": eni_a, "PrivateIpAddress": ip_b}),
        ),
        (
            "AttachNetworkInterface",
            json!({"NetworkInterfaceId": eni_a, "InstanceId": b}),
        ),
    ] {
        let answer = via_gateway(&stolen, action, body);
        assert_eq!(code(&answer), "UnauthorizedOperation", "{action}: {answer}");
    }
    // Tokens the gateway does not take: for the API server's audience, or
    // of another pod's service account on the node.
    c.apply(&pin(&pod("bystander", ""), &a));
    c.wait_ready("bystander", Duration::from_secs(60));
    for other in [
        token(
            "vpc-cni-agent",
            &ns,
            &agent_pod,
            "https://kubernetes.default.svc",
        ),
        token("default", "default", "bystander", "vpc-cni-gateway"),
    ] {
        let answer = via_gateway(&other, "DescribeNetworkInterfaces", json!({}));
        assert_eq!(code(&answer), "AuthFailure.TokenFailure", "{answer}");
    }

    // The instance's own CAM role, from the metadata service on node 1:
    // it reads, and writes nothing.
    let emulator = std::fs::read_to_string(c.state().join("emulator.address"))
        .expect("emulator address")
        .trim()
        .to_string();
    let netns = c
        .get("NODE1_NETNS")
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let metadata = |path: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &netns, "curl", "-sS", "-m", "10"])
            .arg(format!(
                "http://{emulator}/latest/meta-data/cam/security-credentials/{path}"
            ))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let role = metadata("");
    let creds: Value = serde_json::from_str(&metadata(&role)).expect("the role's credentials");
    let signed = |action: &str, body: &Value| {
        let payload = body.to_string();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let request = tencent_api::sign::Request {
            service: "vpc",
            host: &emulator,
            content_type: tencent_api::sign::JSON_CONTENT_TYPE,
            payload: payload.as_bytes(),
            timestamp,
        };
        let auth = request.authorization(
            creds["TmpSecretId"].as_str().expect("id"),
            creds["TmpSecretKey"].as_str().expect("key"),
        );
        post_from_node(
            &c,
            1,
            &format!("http://{emulator}/"),
            &[
                format!("X-TC-Action: {action}"),
                "X-TC-Version: 2017-03-12".into(),
                format!("X-TC-Timestamp: {timestamp}"),
                format!("X-TC-Token: {}", creds["Token"].as_str().expect("token")),
                format!("Content-Type: {}", tencent_api::sign::JSON_CONTENT_TYPE),
                format!("Authorization: {auth}"),
            ],
            body,
        )
    };
    let read = signed("DescribeNetworkInterfaces", &json!({}));
    assert_eq!(code(&read), "", "{read}");
    let detach = signed(
        "DetachNetworkInterface",
        &json!({"NetworkInterfaceId": eni_b, "InstanceId": b}),
    );
    assert_eq!(code(&detach), "UnauthorizedOperation", "{detach}");

    // Node 2's ENI is as it was.
    let after = cloud_enis(&c)[&eni_b].clone();
    assert_eq!(after["attached_to"], before["attached_to"]);
    assert!(
        after["secondary_ips"]
            .as_array()
            .is_some_and(|ips| ips.iter().any(|i| i == ip_b.as_str())),
        "{after}"
    );
}
