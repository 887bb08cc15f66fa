//! The shipped configuration is accepted by the plugin, as libcni hands it
//! over: each plugin entry with the list's `cniVersion` and `name` added.

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
