//! Where the cluster's cloud gateway is, for the agents: the ready
//! endpoints of its Service (`vpc-cni-gateway`), watched, so an agent
//! follows the gateway when it moves to another node. The agent dials the
//! endpoint itself rather than the Service's cluster IP: its VPC calls then
//! do not depend on kube-proxy, and a host-network client's address is the
//! node's own on every path.

use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::{info, warn};

/// The gateway's Service.
pub const SERVICE: &str = "vpc-cni-gateway";
/// The name of its port.
pub const PORT_NAME: &str = "gateway";

/// The URLs of the gateway's ready replicas among `slices`, lowest
/// address first (every agent uses the same one while it answers).
pub fn urls_of(slices: &[Arc<EndpointSlice>]) -> Vec<String> {
    let mut found: Vec<(String, i32)> = slices
        .iter()
        .filter_map(|slice| {
            let port = slice
                .ports
                .as_ref()?
                .iter()
                .find(|p| p.name.as_deref() == Some(PORT_NAME))?
                .port?;
            Some(slice.endpoints.iter().filter_map(move |e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                let address = e.addresses.first()?;
                ready.then(|| (address.clone(), port))
            }))
        })
        .flatten()
        .collect();
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

/// Watches the gateway's endpoints in `namespace`, calling `moved` with
/// the ready replicas' URLs at first and whenever they change (not when
/// none is ready: the last ones are kept). Runs until the process ends.
pub fn follow(client: Client, namespace: &str, moved: impl Fn(&[String]) + Send + 'static) {
    let (slices, changed) = super::cache(
        Api::<EndpointSlice>::namespaced(client, namespace),
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={SERVICE}")),
        "cloud gateway endpoints",
    );
    let namespace = namespace.to_string();
    tokio::spawn(async move {
        let mut current: Vec<String> = Vec::new();
        loop {
            let urls = urls_of(&slices.state());
            if urls.is_empty() && !current.is_empty() {
                warn!(%namespace, service = SERVICE, "the cloud gateway has no ready endpoint; the last ones are kept");
            } else if urls != current {
                info!(?urls, "cloud gateway endpoints");
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
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn slice(endpoints: &[(&str, Option<bool>)], port: &str) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: endpoints
                .iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some(port.into()),
                port: Some(9444),
                ..Default::default()
            }]),
            ..Default::default()
        })
    }

    #[test]
    fn the_gateways_are_the_ready_endpoints_of_its_port_lowest_first() {
        assert!(urls_of(&[]).is_empty());
        let one = slice(
            &[
                ("10.0.0.9", Some(true)),
                ("10.0.0.5", Some(false)),
                ("10.0.0.7", Some(true)),
            ],
            "gateway",
        );
        assert_eq!(
            urls_of(&[one]),
            ["http://10.0.0.7:9444", "http://10.0.0.9:9444"]
        );
        let two = slice(&[("10.0.0.8", None), ("10.0.0.7", Some(false))], "gateway");
        assert_eq!(urls_of(&[two]), ["http://10.0.0.8:9444"]);
        assert!(urls_of(&[slice(&[("10.0.0.7", Some(true))], "other")]).is_empty());
        let v6 = slice(&[("fd00::7", Some(true))], "gateway");
        assert_eq!(urls_of(&[v6]), ["http://[fd00::7]:9444"]);
    }
}
