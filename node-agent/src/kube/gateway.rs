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

/// The URL of the gateway among `slices`: its ready endpoint of lowest
/// address (every agent picks the same one), `None` when none is ready.
pub fn url_of(slices: &[Arc<EndpointSlice>]) -> Option<String> {
    slices
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
        .min()
        .map(|(address, port)| {
            if address.contains(':') {
                format!("http://[{address}]:{port}")
            } else {
                format!("http://{address}:{port}")
            }
        })
}

/// Watches the gateway's endpoints in `namespace`, calling `moved` with
/// its URL at first and whenever it changes. Runs until the process ends.
pub fn follow(client: Client, namespace: &str, moved: impl Fn(&str) + Send + 'static) {
    let (slices, changed) = super::cache(
        Api::<EndpointSlice>::namespaced(client, namespace),
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={SERVICE}")),
        "cloud gateway endpoints",
    );
    let namespace = namespace.to_string();
    tokio::spawn(async move {
        let mut current: Option<String> = None;
        loop {
            let url = url_of(&slices.state());
            match &url {
                Some(u) if current.as_ref() != Some(u) => {
                    info!(url = %u, "cloud gateway found");
                    moved(u);
                    current = url;
                }
                None if current.is_some() => {
                    warn!(%namespace, service = SERVICE, "the cloud gateway has no ready endpoint; the last one is kept");
                }
                _ => {}
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
    fn the_gateway_is_the_lowest_ready_endpoint_of_its_port() {
        assert_eq!(url_of(&[]), None);
        let one = slice(
            &[("10.0.0.9", Some(false)), ("10.0.0.7", Some(true))],
            "gateway",
        );
        assert_eq!(url_of(&[one]), Some("http://10.0.0.7:9444".into()));
        let two = slice(&[("10.0.0.8", None), ("10.0.0.7", Some(false))], "gateway");
        assert_eq!(url_of(&[two]), Some("http://10.0.0.8:9444".into()));
        assert_eq!(url_of(&[slice(&[("10.0.0.7", Some(true))], "other")]), None);
        let v6 = slice(&[("fd00::7", Some(true))], "gateway");
        assert_eq!(url_of(&[v6]), Some("http://[fd00::7]:9444".into()));
    }
}
