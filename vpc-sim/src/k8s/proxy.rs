//! kube-proxy on every node, as a user's cluster has it: one process per
//! node in the node's network namespace (a host service, as on nodes that
//! run kube-proxy outside a DaemonSet), with a client certificate for
//! `system:kube-proxy` (bound to `system:node-proxier` by the API server's
//! bootstrap policy) and a configuration file written by [`config`].

use std::fmt;
use std::fs;
use std::path::Path;
use std::str::FromStr;

use serde_json::{Value, json};

use super::pki::Pki;
use super::{Cluster, ClusterNode, NodeSpec, Options, start};
use crate::fabric::Fabric;

/// kube-proxy's mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// nftables (`table ip kube-proxy`): needs the `nft` binary.
    #[default]
    Nftables,
    /// iptables: needs `iptables`, `iptables-save` and `iptables-restore`.
    Iptables,
}

impl ProxyMode {
    /// kube-proxy's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Iptables => "iptables",
        }
    }

    /// The tools the mode runs, which must be on the host's `PATH`.
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            ProxyMode::Nftables => &["nft"],
            ProxyMode::Iptables => &["iptables", "iptables-save", "iptables-restore"],
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<ProxyMode, String> {
        match s {
            "nftables" => Ok(ProxyMode::Nftables),
            "iptables" => Ok(ProxyMode::Iptables),
            other => Err(format!(
                "unknown kube-proxy mode {other:?} (nftables or iptables)"
            )),
        }
    }
}

/// The KubeProxyConfiguration of one node.
///
/// - `nodePortAddresses` every local address: NodePorts answer on the
///   node's primary ENI address (its address in the VPC) and on its
///   management address (the Node's InternalIP here), where nftables mode
///   would otherwise take only the Node's IPs.
/// - `clusterCIDR` the VPC's block (its IPv6 one too, dual stack): pods
///   have VPC addresses, so traffic to a Service from outside it is
///   masqueraded and from pods it is not.
/// - conntrack limits and timeouts left as the kernel has them: they are
///   global settings a node process in a namespace may not write.
pub fn config(
    node: &str,
    mode: ProxyMode,
    cluster_cidr: &str,
    kubeconfig: &Path,
    healthz: &str,
) -> Value {
    json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "hostnameOverride": node,
        "mode": mode.as_str(),
        "clusterCIDR": cluster_cidr,
        "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": if cluster_cidr.contains(':') {
            json!(["0.0.0.0/0", "::/0"])
        } else {
            json!(["0.0.0.0/0"])
        },
        "healthzBindAddress": format!("{healthz}:10256"),
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    })
}

/// Starts node `i`'s kube-proxy in the node's network namespace.
#[allow(clippy::too_many_arguments)]
pub(super) fn start_proxy(
    state: &Path,
    cluster: &mut Cluster,
    i: usize,
    node: &NodeSpec,
    cn: &ClusterNode,
    pki: &Pki,
    server: &str,
    opts: &Options,
) -> Result<(), String> {
    let n = i + 1;
    let node_dir = cn.kubelet_dir.parent().expect("node dir").to_path_buf();
    let name = format!("kube-proxy-node{n}");
    pki.issue(&name, "/CN=system:kube-proxy", None)?;
    let kc = node_dir.join("kube-proxy.kubeconfig");
    pki.kubeconfig(&kc, server, &name)?;
    let config_path = node_dir.join("kube-proxy.yaml");
    let cidrs = match &opts.cluster_cidr6 {
        Some(v6) => format!("{},{v6}", opts.cluster_cidr),
        None => opts.cluster_cidr.clone(),
    };
    let text = config(&node.name, opts.proxy_mode, &cidrs, &kc, &cn.ip);
    fs::write(
        &config_path,
        serde_json::to_vec_pretty(&text).expect("json"),
    )
    .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let wrapper = vec![
        "nsenter".to_string(),
        format!("--net={}", Fabric::netns_path(&node.netns).display()),
        "--".into(),
    ];
    let cgroup = format!("{}/node{n}-runtime", cluster.cgroup);
    start(
        state,
        cluster,
        &format!("kube-proxy of node{n}"),
        &cgroup,
        &wrapper,
        &opts.bin_dir.join("kube-proxy"),
        &[
            format!("--config={}", config_path.display()),
            "--v=1".into(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_name_their_tools() {
        assert_eq!("nftables".parse::<ProxyMode>(), Ok(ProxyMode::Nftables));
        assert_eq!("iptables".parse::<ProxyMode>(), Ok(ProxyMode::Iptables));
        assert!(
            "ipvs"
                .parse::<ProxyMode>()
                .expect_err("an error")
                .contains("nftables or iptables")
        );
        assert_eq!(ProxyMode::Nftables.tools(), ["nft"]);
    }

    #[test]
    fn the_config_serves_nodeports_on_every_address_and_writes_no_global_sysctl() {
        let c = config(
            "ins-sim0001",
            ProxyMode::Iptables,
            "10.0.0.0/16",
            Path::new("/k/kc"),
            "100.64.3.11",
        );
        assert_eq!(c["mode"], "iptables");
        assert_eq!(c["hostnameOverride"], "ins-sim0001");
        assert_eq!(c["nodePortAddresses"], json!(["0.0.0.0/0"]));
        assert_eq!(c["conntrack"]["maxPerCore"], 0);
        assert_eq!(c["healthzBindAddress"], "100.64.3.11:10256");
        assert_eq!(c["clientConnection"]["kubeconfig"], "/k/kc");
    }
}
