//! What ships and what operators run by hand: the conflist is accepted by the
//! plugin as libcni hands it over, and `vpc-sim down` keeps to what `up` made.

use proto::cni::NetConf;
use serde_json::Value;

#[test]
fn shipped_conflist_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/10-vpc-cni.conflist");
    let list: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read conflist")).expect("json");
    let plugins = list["plugins"].as_array().expect("plugins");
    assert_eq!(
        plugins[0]["type"], "vpc-cni",
        "vpc-cni comes first: it creates the interface"
    );
    let mut conf = plugins[0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    let parsed = NetConf::parse(&serde_json::to_vec(&conf).expect("bytes")).expect("valid");
    assert_eq!(
        parsed.agent_socket.to_str(),
        Some(proto::cni::config::DEFAULT_AGENT_SOCKET)
    );
}

#[test]
fn vpc_sim_down_refuses_a_directory_it_did_not_make() {
    let dir = tempfile::tempdir().expect("tempdir");
    let precious = dir.path().join("precious");
    std::fs::write(&precious, b"keep me").expect("write");
    let out = std::process::Command::new(vpc_cni_tests::bin("vpc-sim"))
        .arg("down")
        .arg("--state")
        .arg(dir.path())
        .output()
        .expect("run vpc-sim down");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing is up"));
    assert!(
        precious.exists(),
        "down must not remove what up did not make"
    );
}
