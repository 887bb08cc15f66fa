//! The client against `vpc-sim serve`, the emulator of the same API, over
//! HTTP: every action the client speaks, task polling, typed errors.
//! Needs the workspace binaries built (`scripts/test.sh` does).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

struct Emulator {
    _dir: tempfile::TempDir,
    address: String,
    child: Child,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn emulator(flags: &[&str]) -> Emulator {
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

fn client(e: &Emulator, instance: &str, secret_key: &str) -> TencentCloud {
    let identity = identity_from_metadata(
        &format!("http://{}/{instance}", e.address),
        Identity::default(),
        Duration::from_secs(5),
    )
    .expect("metadata");
    TencentCloud::new(Settings {
        endpoint: format!("http://{}", e.address),
        region: identity.region.clone(),
        credentials: Credentials {
            secret_id: "AKIDclient".into(),
            secret_key: secret_key.into(),
            token: None,
        },
        qps: 0.0,
        timeout: Duration::from_secs(5),
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
    let more = one.assign_ips(&a.id, 2, &[]).await.expect("assign");
    assert_eq!(more.len(), 2);
    let listed = one.list_enis().await.expect("list");
    assert!(
        listed.iter().any(|x| x.primary)
            && listed
                .iter()
                .any(|x| x.id == a.id && x.secondary_ips.len() == 4)
    );
    assert!(listed.iter().all(|x| x.created_unix.is_some()));

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
    let detached = one.list_node_detached_enis().await.expect("detached");
    assert!(
        detached
            .iter()
            .all(|x| x.attached_to.is_none() && x.id != a.id),
        "{detached:?}"
    );
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
