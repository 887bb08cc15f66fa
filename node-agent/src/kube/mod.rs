//! Kubernetes: the agent's objects (`VpcIPClaim`, `VpcIP`, `NodeEniConfig`),
//! the pods' annotations, events, and the cluster component.
//!
//! The node's store stays the authority on the node's pool; the objects
//! follow it through the outbox (`publish/`), except the first bind of
//! a static claim, which is made known before its ADD answers
//! (`claims.rs`). ADD and DEL otherwise never wait on the API server.

pub mod claims;

pub mod crd;
pub mod gateway;
pub mod objects;
pub mod pods;
pub mod publish;
pub mod webhook;
pub mod writes;
pub mod zone_affinity;

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures_util::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::warn;

/// The label naming the node that publishes an object.
pub const NODE_LABEL: &str = "vpc-cni.io/node";
/// The finalizer that keeps a `VpcIPClaim` until its IP is freed.
pub const FINALIZER: &str = "vpc-cni.io/release";
/// The field manager of the node agent's server-side applies.
pub const MANAGER: &str = "vpc-cni-agent";

/// A client from `kubeconfig`, else `KUBECONFIG`, else the in-cluster
/// service account (with `KUBERNETES_SERVICE_HOST`/`PORT`, which a
/// cluster without kube-proxy sets to the API server's own address).
pub async fn connect(kubeconfig: Option<&std::path::Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("Kubernetes client configuration: {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

/// An informer: a cache of the objects `config` selects, kept by a watch
/// (re-listing with backoff after errors), and a signal raised after each
/// change it sees.
pub fn cache<K>(api: Api<K>, config: watcher::Config, what: &'static str) -> (Store<K>, Arc<Notify>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let changed = Arc::new(Notify::new());
    let signal = Arc::clone(&changed);
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => signal.notify_one(),
                Err(e) => warn!(what, error = %e, "watch failed; retrying"),
            }
        }
    });
    (reader, changed)
}
pub mod cluster;
