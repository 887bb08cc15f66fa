//! The client against `vpc-sim serve`, the emulator of the same API, over
//! HTTP: every action the client speaks, task polling, typed errors.
//! Needs the workspace binaries built (`scripts/test.sh` does).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use crate::cloud::Limits;

pub(crate) struct Emulator {
    _dir: tempfile::TempDir,
    pub(crate) address: String,
    child: Child,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn emulator(flags: &[&str]) -> Emulator {
    let exe = std::env::current_exe().expect("exe");
    let bin: PathBuf = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("vpc-sim");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --workspace --bins`",
        bin.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("credentials"),
        "SecretId=AKIDclient\nSecretKey=client-secret\n",
    )
    .expect("write");
    let child = Command::new(bin)
        .arg("serve")
        .arg("--world")
        .arg(dir.path().join("vpc.json"))
        .arg("--credentials")
        .arg(dir.path().join("credentials"))
        .arg("--address-file")
        .arg(dir.path().join("address"))
        .args(["--nodes", "2"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vpc-sim serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    let address = loop {
        if let Ok(a) = std::fs::read_to_string(dir.path().join("address"))
            && !a.is_empty()
        {
            break a;
        }
        assert!(Instant::now() < deadline, "emulator did not start");
        std::thread::sleep(Duration::from_millis(10));
    };
    Emulator {
        _dir: dir,
        address,
        child,
    }
}

pub(crate) fn client(e: &Emulator, instance: &str, secret_key: &str) -> TencentCloud {
    client_with_timeout(e, instance, secret_key, Duration::from_secs(5))
}

fn client_with_timeout(
    e: &Emulator,
    instance: &str,
    secret_key: &str,
    timeout: Duration,
) -> TencentCloud {
    let identity = identity_from_metadata(
        &format!("http://{}/{instance}", e.address),
        Identity::default(),
        Duration::from_secs(5),
    )
    .expect("metadata");
    TencentCloud::new(Settings {
        endpoint: format!("http://{}", e.address),
        region: identity.region.clone(),
        credentials: CredentialSource::Fixed(Credentials {
            secret_id: "AKIDclient".into(),
            secret_key: secret_key.into(),
            token: None,
        }),
        qps: 0.0,
        timeout,
        identity,
        subnets: Vec::new(),
        cluster: "test".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_round_trips_through_the_emulator() {
    let e = emulator(&["--task-latency-ms", "300"]);
    let one = client(&e, "ins-sim0001", "client-secret");
    let two = client(&e, "ins-sim0002", "client-secret");
    let node = one.node().await.expect("node");
    assert_eq!(node.instance_id, "ins-sim0001");
    assert_eq!(node.zone, "sim-zone-1");
    let subnet = node.subnet.expect("a subnet in the zone");
    assert_eq!(node.limits.max_enis, 4);

    let a = one.create_eni(&subnet.id, 2).await.expect("create");
    assert_eq!(a.secondary_ips.len(), 2);
    let started = Instant::now();
    one.attach_eni(&a.id).await.expect("attach");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the attach task was waited for"
    );
    let more = one
        .assign_ips(&a.id, 2, &a.secondary_ips)
        .await
        .expect("assign");
    assert_eq!(more.len(), 2);
    let listed = one.list_enis().await.expect("list");
    assert!(
        listed.iter().any(|x| x.primary)
            && listed
                .iter()
                .any(|x| x.id == a.id && x.secondary_ips.len() == 4)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        listed
            .iter()
            .filter(|x| x.id == a.id)
            .all(|x| x.created_unix.is_some_and(|c| c.abs_diff(now) < 60)),
        "CreatedTime is read in the zone the API writes it in: {listed:?}"
    );

    let b = two.create_eni(&subnet.id, 0).await.expect("create");
    two.attach_eni(&b.id).await.expect("attach");
    one.migrate_ip(&a.id, &b.id, more[0])
        .await
        .expect("migrate");
    let on_two = two.list_enis().await.expect("list");
    assert!(
        on_two
            .iter()
            .any(|x| x.id == b.id && x.secondary_ips == vec![more[0]])
    );

    one.unassign_ips(&a.id, &more[1..]).await.expect("unassign");
    assert!(
        matches!(
            one.delete_eni(&a.id).await,
            Err(CloudError::InvalidState(_))
        ),
        "attached ENIs are not deleted"
    );
    one.detach_eni(&a.id).await.expect("detach");
    one.delete_eni(&a.id).await.expect("delete");
    assert!(matches!(
        one.delete_eni(&a.id).await,
        Err(CloudError::NotFound(_))
    ));
    let cluster = one.list_cluster_enis().await.expect("cluster");
    assert_eq!(
        cluster.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        vec![b.id.as_str()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_addresses_are_assigned_listed_and_unassigned_through_the_emulator() {
    let e = emulator(&[]);
    let one = client(&e, "ins-sim0001", "client-secret");
    let node = one.node().await.expect("node");
    let subnet = node.subnet.expect("a subnet in the zone");
    let a = one.create_eni(&subnet.id, 2).await.expect("create");
    one.attach_eni(&a.id).await.expect("attach");
    assert!(a.ipv6s.is_empty());
    // Without an IPv6 block the API refuses, typed, nothing assigned.
    assert!(one.assign_ipv6s(&a.id, 2, &[]).await.is_err());
    // The operator's part: the VPC's /56 and the subnet's /64.
    let block = one
        .call(
            "AssignIpv6CidrBlock",
            serde_json::json!({ "VpcId": node.vpc_id }),
        )
        .await
        .expect("VPC block");
    let block = block["Ipv6CidrBlock"].as_str().expect("block").to_string();
    let slash64 = block.replace("::/56", "::/64");
    one.call(
        "AssignIpv6SubnetCidrBlock",
        serde_json::json!({ "VpcId": node.vpc_id,
            "Ipv6SubnetCidrBlocks": [{ "SubnetId": subnet.id, "Ipv6CidrBlock": slash64 }] }),
    )
    .await
    .expect("subnet block");

    let got = one.assign_ipv6s(&a.id, 2, &[]).await.expect("assign");
    assert_eq!(got.len(), 2);
    let listed = eni_now(&one, &a.id).await;
    assert_eq!(listed.ipv6s, got, "Ipv6AddressSet is read");
    // A static pod's address coming back by name, and a name in use is
    // refused (or found there already when it is this ENI's).
    one.unassign_ipv6s(&a.id, &got[..1])
        .await
        .expect("unassign");
    assert_eq!(eni_now(&one, &a.id).await.ipv6s, got[1..]);
    one.assign_named_ipv6s(&a.id, &got[..1])
        .await
        .expect("assign by name");
    let mut now = eni_now(&one, &a.id).await.ipv6s;
    now.sort();
    let mut want = got.clone();
    want.sort();
    assert_eq!(now, want);
    one.assign_named_ipv6s(&a.id, &got[..1])
        .await
        .expect("already there is done");
    one.unassign_ipv6s(&a.id, &got)
        .await
        .expect("unassign both");
    one.unassign_ipv6s(&a.id, &got)
        .await
        .expect("already gone is done");
    assert!(eni_now(&one, &a.id).await.ipv6s.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_enis_mac_comes_from_the_metadata_service() {
    let e = emulator(&[]);
    let mac = primary_mac_from_metadata(
        &format!("http://{}/ins-sim0002", e.address),
        Duration::from_secs(5),
    )
    .expect("metadata");
    let primary = client(&e, "ins-sim0002", "client-secret")
        .list_enis()
        .await
        .expect("list")
        .into_iter()
        .find(|eni| eni.primary)
        .expect("a primary ENI");
    assert_eq!(mac, primary.mac);
    assert_eq!(mac, mac.to_ascii_lowercase());
}

/// Without a key the client uses the instance's CAM role: temporary
/// credentials from the metadata service, replaced before they expire
/// (here after 3 s), so calls go on working past the first ones' expiry,
/// which the API then refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_instances_role_is_used_and_its_credentials_renewed() {
    let e = emulator(&["--credential-lifetime", "3"]);
    let metadata = format!("http://{}/ins-sim0001", e.address);
    let identity = identity_from_metadata(&metadata, Identity::default(), Duration::from_secs(5))
        .expect("metadata");
    let role = TencentCloud::new(Settings {
        endpoint: format!("http://{}", e.address),
        region: identity.region.clone(),
        credentials: CredentialSource::Role {
            metadata: metadata.clone(),
        },
        qps: 0.0,
        timeout: Duration::from_secs(5),
        identity,
        subnets: Vec::new(),
        cluster: "test".into(),
    });
    let first = fetch_role_credentials(&metadata);
    assert_eq!(role.node().await.expect("node").instance_id, "ins-sim0001");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(4500) {
        role.list_enis()
            .await
            .expect("every call signed with live credentials");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The first ones expired meanwhile: refused by name.
    let stale = TencentCloud::new(Settings {
        credentials: CredentialSource::Fixed(first),
        ..role.settings.as_ref().clone()
    });
    match stale.list_enis().await {
        Err(CloudError::Auth(why)) => assert!(why.contains("expired"), "{why}"),
        other => panic!("expired credentials accepted: {other:?}"),
    }
}

/// A read-only role (a cluster whose cloud gateway holds the only write
/// key): the node's own credentials read, and change nothing, refused as
/// CAM refuses an action its policy does not grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_role_reads_and_is_refused_every_write() {
    let e = emulator(&["--role-policy", "read-only"]);
    let metadata = format!("http://{}/ins-sim0001", e.address);
    let identity = identity_from_metadata(&metadata, Identity::default(), Duration::from_secs(5))
        .expect("metadata");
    let role = TencentCloud::new(Settings {
        endpoint: format!("http://{}", e.address),
        region: identity.region.clone(),
        credentials: CredentialSource::Role { metadata },
        qps: 0.0,
        timeout: Duration::from_secs(5),
        identity,
        subnets: Vec::new(),
        cluster: "test".into(),
    });
    let node = role.node().await.expect("reads are granted");
    let subnet = node.subnet.expect("a subnet");
    match role.create_eni(&subnet.id, 1).await {
        Err(CloudError::Auth(why)) => assert!(why.contains("UnauthorizedOperation"), "{why}"),
        other => panic!("a write with read-only credentials: {other:?}"),
    }
    let primary = role.list_enis().await.expect("list").remove(0);
    assert!(matches!(
        role.assign_ips(&primary.id, 1, &primary.secondary_ips)
            .await,
        Err(CloudError::Auth(_))
    ));
}

/// The role's credentials as the metadata service at `base` gives them.
fn fetch_role_credentials(base: &str) -> Credentials {
    let get = |path: &str| {
        ureq::get(&format!(
            "{base}/latest/meta-data/cam/security-credentials/{path}"
        ))
        .call()
        .expect("metadata")
        .body_mut()
        .read_to_string()
        .expect("body")
    };
    let role = get("");
    let v: serde_json::Value = serde_json::from_str(&get(role.trim())).expect("JSON");
    Credentials {
        secret_id: v["TmpSecretId"].as_str().expect("id").into(),
        secret_key: v["TmpSecretKey"].as_str().expect("key").into(),
        token: v["Token"].as_str().map(str::to_string),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_an_auth_error_not_retried() {
    let e = emulator(&[]);
    let bad = client(&e, "ins-sim0001", "wrong");
    let started = Instant::now();
    assert!(matches!(bad.node().await, Err(CloudError::Auth(_))));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "auth failures are not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_is_typed_and_an_eni_attaches_to_one_node_at_a_time() {
    let e = emulator(&["--eni-quota", "3", "--max-enis", "2"]);
    let one = client(&e, "ins-sim0001", "client-secret");
    let subnet = one.node().await.expect("node").subnet.expect("subnet").id;
    let a = one
        .create_eni(&subnet, 0)
        .await
        .expect("third ENI of the VPC");
    assert!(matches!(
        one.create_eni(&subnet, 0).await,
        Err(CloudError::EniQuota(_))
    ));
    one.attach_eni(&a.id).await.expect("second ENI of the node");
    one.detach_eni(&a.id).await.expect("detach");
    one.attach_eni(&a.id).await.expect("again");
    let two = client(&e, "ins-sim0002", "client-secret");
    assert!(
        matches!(
            two.attach_eni(&a.id).await,
            Err(CloudError::InvalidState(_))
        ),
        "attached elsewhere"
    );
}

/// Hole 9: an answer without limits (or with zero) became a node that may
/// have one ENI with no IP, silently.
#[test]
fn hole_9_missing_instance_limits_are_a_typed_error() {
    assert_eq!(
        decode::instance_limits(
            &serde_json::json!({"EniQuantity": 3, "EniPrivateIpAddressQuantity": 10})
        ),
        Ok(Limits {
            max_enis: 4,
            max_ips_per_eni: 10
        })
    );
    assert_eq!(
        decode::instance_limits(&serde_json::json!({"EniPrivateIpAddressQuantity": 10})),
        Err(CloudError::LimitsMissing("EniQuantity"))
    );
    assert_eq!(
        decode::instance_limits(
            &serde_json::json!({"EniQuantity": 3, "EniPrivateIpAddressQuantity": 0})
        ),
        Err(CloudError::LimitsMissing("EniPrivateIpAddressQuantity"))
    );
    let message = CloudError::LimitsMissing("EniQuantity").to_string();
    assert!(message.contains("EniQuantity"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_9_an_instance_without_secondary_enis_fails_node_naming_the_limit() {
    let e = emulator(&["--max-enis", "1"]);
    let one = client(&e, "ins-sim0001", "client-secret");
    assert_eq!(
        one.node().await,
        Err(CloudError::LimitsMissing("EniQuantity"))
    );
}

/// The ENI as the cloud has it now.
async fn eni_now(c: &TencentCloud, id: &str) -> Eni {
    c.list_enis()
        .await
        .expect("list")
        .into_iter()
        .find(|e| e.id == id)
        .expect("attached ENI")
}

/// Hole 3: an assign whose answer was lost was sent again, and the ENI got
/// `count` IPs twice (one batch unknown to the agent, leaked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_3_assign_with_a_lost_answer_assigns_count_once() {
    let e = emulator(&["--drop-responses", "AssignPrivateIpAddresses"]);
    let one = client_with_timeout(&e, "ins-sim0001", "client-secret", Duration::from_secs(1));
    let subnet = one.node().await.expect("node").subnet.expect("subnet").id;
    let a = one.create_eni(&subnet, 2).await.expect("create");
    one.attach_eni(&a.id).await.expect("attach");

    let got = one
        .assign_ips(&a.id, 3, &a.secondary_ips)
        .await
        .expect("the lost answer is recovered");
    assert_eq!(got.len(), 3, "{got:?}");
    let now = eni_now(&one, &a.id).await;
    assert_eq!(now.secondary_ips.len(), 5, "assigned once: {now:?}");
    assert!(
        got.iter()
            .all(|ip| now.secondary_ips.contains(ip) && !a.secondary_ips.contains(ip))
    );

    // The next call is answered: three more, no more.
    let more = one
        .assign_ips(&a.id, 3, &now.secondary_ips)
        .await
        .expect("answered");
    assert_eq!(more.len(), 3);
    assert_eq!(eni_now(&one, &a.id).await.secondary_ips.len(), 8);
}

/// Hole 3: an attach whose answer was lost was sent again and refused as
/// "already attached", so the agent deleted an ENI it had attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_3_attach_with_a_lost_answer_is_attached_once() {
    let e = emulator(&["--drop-responses", "AttachNetworkInterface"]);
    let one = client_with_timeout(&e, "ins-sim0001", "client-secret", Duration::from_secs(1));
    let subnet = one.node().await.expect("node").subnet.expect("subnet").id;
    let a = one.create_eni(&subnet, 0).await.expect("create");
    one.attach_eni(&a.id)
        .await
        .expect("the lost answer is recovered");
    let on_one: Vec<Eni> = one
        .list_enis()
        .await
        .expect("list")
        .into_iter()
        .filter(|x| x.id == a.id)
        .collect();
    assert_eq!(on_one.len(), 1);
    assert_eq!(on_one[0].attached_to.as_deref(), Some("ins-sim0001"));
    // Sent again (its answer comes this time): attached here, so success.
    one.attach_eni(&a.id).await.expect("already attached here");
    // From another node it stays an error.
    let two = client(&e, "ins-sim0002", "client-secret");
    assert!(matches!(
        two.attach_eni(&a.id).await,
        Err(CloudError::InvalidState(_))
    ));
}

/// Hole 7: every agent listed every ENI of the cluster to find leaks, and
/// deleted other nodes' ENIs on their way to their node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_7_leaked_enis_are_listed_per_node() {
    let e = emulator(&[]);
    let one = client(&e, "ins-sim0001", "client-secret");
    let two = client(&e, "ins-sim0002", "client-secret");
    let subnet = one.node().await.expect("node").subnet.expect("subnet").id;
    let mine = one.create_eni(&subnet, 0).await.expect("create");
    let attached = one.create_eni(&subnet, 0).await.expect("create");
    one.attach_eni(&attached.id).await.expect("attach");
    let theirs = two.create_eni(&subnet, 0).await.expect("create");
    let ids = |v: Vec<Eni>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(one.list_node_detached_enis().await.expect("list")),
        vec![mine.id]
    );
    assert_eq!(
        ids(two.list_node_detached_enis().await.expect("list")),
        vec![theirs.id]
    );
}

/// Named addresses (a static claim whose IP vanished): assigned when free,
/// refused with the API's codes when in use or outside the ENI's subnet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_addresses_are_assigned_or_refused_with_the_apis_codes() {
    let e = emulator(&[]);
    let one = client(&e, "ins-sim0001", "client-secret");
    let subnet = one.node().await.expect("node").subnet.expect("subnet");
    let a = one.create_eni(&subnet.id, 0).await.expect("create");
    one.attach_eni(&a.id).await.expect("attach");
    let b = one.create_eni(&subnet.id, 0).await.expect("create");
    let wanted = Ipv4Addr::from(u32::from(subnet.network) + 200);
    one.assign_named_ips(&a.id, &[wanted])
        .await
        .expect("a free address");
    assert_eq!(eni_now(&one, &a.id).await.secondary_ips, vec![wanted]);
    match one.assign_named_ips(&b.id, &[wanted]).await {
        Err(CloudError::AddressInUse(m)) => assert!(m.contains("ResourceInUse"), "{m}"),
        other => panic!("expected AddressInUse, got {other:?}"),
    }
    match one
        .assign_named_ips(&b.id, &[Ipv4Addr::new(10, 0, 99, 9)])
        .await
    {
        Err(CloudError::InvalidState(m)) => {
            assert!(m.contains("InvalidParameterValue.Range"), "{m}")
        }
        other => panic!("expected a range error, got {other:?}"),
    }
    // Counted IPs never collide with a named one.
    let counted = one.assign_ips(&a.id, 5, &[wanted]).await.expect("assign");
    assert!(!counted.contains(&wanted));
}

/// Every answer of every mutating call lost: each call still succeeds,
/// once, from a look at the ENI (the ENI's whole life, hole 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_3_every_answer_lost_every_call_done_once() {
    let e = emulator(&[
        "--drop-responses",
        "AttachNetworkInterface,AssignPrivateIpAddresses,UnassignPrivateIpAddresses,DetachNetworkInterface,DeleteNetworkInterface",
        "--drop-every",
        "1",
    ]);
    let one = client_with_timeout(&e, "ins-sim0001", "client-secret", Duration::from_secs(1));
    let subnet = one.node().await.expect("node").subnet.expect("subnet");
    let a = one.create_eni(&subnet.id, 0).await.expect("create");
    one.attach_eni(&a.id).await.expect("attach");
    let got = one.assign_ips(&a.id, 2, &[]).await.expect("assign");
    assert_eq!(got.len(), 2);
    let named = Ipv4Addr::from(u32::from(subnet.network) + 300);
    one.assign_named_ips(&a.id, &[named]).await.expect("named");
    let mut held = got.clone();
    held.push(named);
    assert_eq!(eni_now(&one, &a.id).await.secondary_ips.len(), 3);
    one.unassign_ips(&a.id, &held).await.expect("unassign");
    assert!(eni_now(&one, &a.id).await.secondary_ips.is_empty());
    one.detach_eni(&a.id).await.expect("detach");
    assert!(
        one.list_node_detached_enis()
            .await
            .expect("list")
            .iter()
            .any(|x| x.id == a.id)
    );
    one.delete_eni(&a.id).await.expect("delete");
    assert!(matches!(
        one.delete_eni(&a.id).await,
        Err(CloudError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_subnets_override_the_configured_ones() {
    let e = emulator(&[]);
    let one = client(&e, "ins-sim0001", "client-secret");
    let configured = one.node().await.expect("node").subnet.expect("a subnet");
    let chosen = one
        .node_in(std::slice::from_ref(&configured.id))
        .await
        .expect("node");
    assert_eq!(chosen.subnet.map(|s| s.id), Some(configured.id));
    let none = one
        .node_in(&["subnet-elsewhere".to_string()])
        .await
        .expect("node");
    assert_eq!(none.subnet, None, "no allowed subnet in the node's zone");
}

/// The emulator's documented limits are the account's: calls over an
/// action's rate are answered `RequestLimitExceeded`, and the client waits
/// them out instead of failing; the instance's limits are asked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_rate_limit_is_waited_out_not_failed() {
    let e = emulator(&["--api-limits", "off,DescribeNetworkInterfaceLimit=1"]);
    let clients: Vec<TencentCloud> = (0..4)
        .map(|i| client(&e, &format!("ins-sim000{}", 1 + i % 2), "client-secret"))
        .collect();
    let started = Instant::now();
    let nodes = futures_util::future::join_all(clients.iter().map(|c| c.node())).await;
    for node in nodes {
        assert_eq!(node.expect("node despite throttling").limits.max_enis, 4);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "four calls at one a second take a few seconds: {:?}",
        started.elapsed()
    );
    let stats = || -> serde_json::Value {
        let body = ureq::get(&format!("http://{}/_sim/stats", e.address))
            .call()
            .expect("stats")
            .body_mut()
            .read_to_string()
            .expect("body");
        serde_json::from_str(&body).expect("json")
    };
    let limit = stats()["DescribeNetworkInterfaceLimit"].clone();
    assert!(limit["throttled"].as_u64() >= Some(1), "{limit}");
    assert_eq!(
        limit["calls"].as_u64(),
        Some(4 + limit["throttled"].as_u64().unwrap_or(0)),
        "{limit}"
    );
    clients[0].node().await.expect("node again");
    assert_eq!(
        stats()["DescribeNetworkInterfaceLimit"]["calls"],
        limit["calls"],
        "the instance's limits are not asked again"
    );
}

/// More than 10 addresses are given back in calls of at most 10, the most
/// one call may name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_unassigned_ten_at_a_time() {
    let e = emulator(&["--ips-per-eni", "30"]);
    let one = client(&e, "ins-sim0001", "client-secret");
    let node = one.node().await.expect("node");
    let subnet = node.subnet.expect("subnet");
    let eni = one.create_eni(&subnet.id, 23).await.expect("create");
    assert_eq!(eni.secondary_ips.len(), 23);
    one.unassign_ips(&eni.id, &eni.secondary_ips)
        .await
        .expect("unassign 23 addresses");
    let listed = one.list_cluster_enis().await.expect("list");
    let after = listed.iter().find(|x| x.id == eni.id).expect("the ENI");
    assert!(after.secondary_ips.is_empty(), "{after:?}");
    // One call naming 11 is refused with the API's code.
    let eleven: Vec<serde_json::Value> = eni
        .secondary_ips
        .iter()
        .take(11)
        .map(|ip| json!({ "PrivateIpAddress": ip.to_string() }))
        .collect();
    let transport = Arc::clone(&one.transport);
    let id = eni.id.clone();
    let refused = tokio::task::spawn_blocking(move || {
        transport.call(
            "AssignPrivateIpAddresses",
            &json!({ "NetworkInterfaceId": id, "PrivateIpAddresses": eleven }),
        )
    })
    .await
    .expect("join");
    match refused {
        Err(CloudError::InvalidState(m)) => {
            assert!(m.contains("InvalidParameterValue.LimitExceeded"), "{m}")
        }
        other => panic!("11 addresses in one call: {other:?}"),
    }
}

/// Two gateway replicas, the first gone: the call goes on to the next
/// and stays with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_left_for_the_next() {
    let e = emulator(&[]);
    let cloud = client(&e, "ins-sim0001", "client-secret");
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = format!("http://{}", dead.local_addr().expect("address"));
    drop(dead);
    cloud.set_endpoints(&[gone, format!("http://{}", e.address)]);
    let started = Instant::now();
    cloud.list_enis().await.expect("served by the second");
    cloud.list_enis().await.expect("and again");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// The value of the metrics' sample `series` (`name{labels}`), 0 if absent.
fn metric(series: &str) -> f64 {
    crate::metrics::render(&std::collections::BTreeMap::new())
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A call that gets no answer (nothing listens) is counted `Unreachable`,
/// each attempt, by the client and by the gateway's relay alike: what the
/// cloud-unreachable alert looks at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_an_answer_is_counted_unreachable() {
    let e = emulator(&[]);
    let cloud = client(&e, "ins-sim0001", "client-secret");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = format!("http://{}", dead.local_addr().expect("address"));
    drop(dead);
    cloud.set_endpoints(&[gone]);
    let series =
        r#"vpc_cni_cloud_calls_total{action="DescribeNetworkInterfaces",code="Unreachable"}"#;
    // Process-wide counters: other tests may add to them meanwhile.
    let before = metric(series);
    assert!(cloud.list_enis().await.is_err());
    assert!(metric(series) >= before + 1.0, "{before}");

    let relayed =
        r#"vpc_cni_cloud_calls_total{action="DescribeRelayMetricsTest",code="Unreachable"}"#;
    let answer = cloud
        .transport()
        .relay("DescribeRelayMetricsTest", &serde_json::json!({}));
    assert!(answer.is_err(), "{answer:?}");
    assert_eq!(metric(relayed), 1.0);
    assert_eq!(
        metric(r#"vpc_cni_cloud_calls_total{action="DescribeRelayMetricsTest",code="OK"}"#),
        0.0,
        "no answer is not an answer without error"
    );
}
