//! Where the cluster's cloud gateway is, for the agents: the ready pods of
//! the cluster component (`app.kubernetes.io/name=vpc-cni-cluster` in the
//! agents' namespace), watched, so an agent follows the gateway when it
//! moves to another node. The agent dials the replica itself rather than
//! the Service's cluster IP: its VPC calls then depend on no kube-proxy,
//! and a host-network client's address is the node's own on every path.
//! It reads the pods, not the Service's EndpointSlices: a pod's readiness
//! is written by its kubelet, while the EndpointSlices wait on
//! kube-controller-manager, whose caches were seen minutes behind after an
//! API server restart with both replicas ready and serving.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::{info, warn};

/// The cluster component's pods.
pub const SELECTOR: &str = "app.kubernetes.io/name=vpc-cni-cluster";
/// The name of the gateway's container port.
pub const PORT_NAME: &str = "gateway";

/// The gateway URL of one pod: its address and the port named
/// [`PORT_NAME`] (the host port when one is set), when it is Ready and not
/// being deleted.
fn url_of(pod: &Pod) -> Option<(String, i32)> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let address = status.pod_ip.as_ref().filter(|a| !a.is_empty())?;
    let port = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        .map(|p| p.host_port.unwrap_or(p.container_port))?;
    ready.then(|| (address.clone(), port))
}

/// The URLs of the gateway's ready replicas among `pods`, lowest address
/// first (every agent uses the same one while it answers).
pub fn urls_of(pods: &[Arc<Pod>]) -> Vec<String> {
    let mut found: Vec<(String, i32)> = pods.iter().filter_map(|p| url_of(p)).collect();
    found.sort();
    found.dedup();
    found
        .into_iter()
        .map(|(address, port)| {
            if address.contains(':') {
                format!("http://[{address}]:{port}")
            } else {
                format!("http://{address}:{port}")
            }
        })
        .collect()
}

/// Watches the cluster component's pods in `namespace`, calling `moved`
/// with the ready replicas' URLs at first and whenever they change (not
/// when none is ready: the last ones are kept). Runs until the process
/// ends.
pub fn follow(client: Client, namespace: &str, moved: impl Fn(&[String]) + Send + 'static) {
    let (pods, changed) = super::cache(
        Api::<Pod>::namespaced(client, namespace),
        watcher::Config::default().labels(SELECTOR),
        "cloud gateway pods",
    );
    let namespace = namespace.to_string();
    tokio::spawn(async move {
        let mut current: Vec<String> = Vec::new();
        loop {
            let urls = urls_of(&pods.state());
            if urls.is_empty() && !current.is_empty() {
                warn!(%namespace, selector = SELECTOR, "the cloud gateway has no ready replica; the last ones are kept");
            } else if urls != current {
                info!(?urls, "cloud gateway replicas");
                moved(&urls);
                current = urls;
            }
            changed.notified().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(ip: &str, ready: &str, port: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "cluster".into(),
                    ports: Some(vec![
                        ContainerPort {
                            name: Some("webhook".into()),
                            container_port: 9443,
                            ..Default::default()
                        },
                        ContainerPort {
                            name: Some(port.into()),
                            container_port: 9444,
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn urls(pods: Vec<Pod>) -> Vec<String> {
        urls_of(&pods.into_iter().map(Arc::new).collect::<Vec<_>>())
    }

    #[test]
    fn the_gateways_are_the_ready_pods_gateway_ports_lowest_first() {
        assert!(urls(vec![]).is_empty());
        assert_eq!(
            urls(vec![
                pod("10.0.0.9", "True", "gateway"),
                pod("10.0.0.5", "False", "gateway"),
                pod("10.0.0.7", "True", "gateway"),
                pod("10.0.0.7", "True", "gateway"),
            ]),
            ["http://10.0.0.7:9444", "http://10.0.0.9:9444"]
        );
        assert!(urls(vec![pod("10.0.0.7", "True", "other")]).is_empty());
        assert_eq!(
            urls(vec![pod("fd00::7", "True", "gateway")]),
            ["http://[fd00::7]:9444"]
        );
    }

    #[test]
    fn a_pod_being_deleted_unready_or_without_an_address_is_no_gateway() {
        let mut deleting = pod("10.0.0.7", "True", "gateway");
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        let mut no_ip = pod("10.0.0.8", "True", "gateway");
        no_ip.status.as_mut().expect("set").pod_ip = None;
        let mut no_status = pod("10.0.0.9", "True", "gateway");
        no_status.status = None;
        let mut no_conditions = pod("10.0.0.10", "True", "gateway");
        no_conditions.status.as_mut().expect("set").conditions = None;
        assert!(urls(vec![deleting, no_ip, no_status, no_conditions]).is_empty());
        assert!(urls(vec![pod("10.0.0.7", "Unknown", "gateway")]).is_empty());
    }

    #[test]
    fn a_host_port_is_the_port_dialled() {
        let mut p = pod("10.0.0.7", "True", "gateway");
        p.spec.as_mut().expect("set").containers[0]
            .ports
            .as_mut()
            .expect("set")[1]
            .host_port = Some(19444);
        assert_eq!(urls(vec![p]), ["http://10.0.0.7:19444"]);
    }
}
