//! The cluster component's cloud gateway in a benchmark's process, in
//! front of the emulator: the real gateway (budget, shared reads, batches,
//! policy, HTTP) on a runtime of its own, so it can be killed as a replica
//! is, with callers known by a token file per node instead of a
//! `TokenReview` (`node:<instance id>`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use node_agent::cloud::tencent::{CredentialSource, Credentials, Transport};
use node_agent::gateway::budget::Budget;
use node_agent::gateway::policy::Caller;
use node_agent::gateway::{AuthError, Authenticate, Counts, Gateway};

/// The instance type every simulated node has.
pub const INSTANCE_TYPE: &str = "SIM.STANDARD";

/// Callers known by their token: `node:<instance id>`.
#[derive(Debug)]
pub struct NodeTokens;

impl Authenticate for NodeTokens {
    async fn caller(&self, token: &str) -> Result<Caller, AuthError> {
        let instance = token
            .strip_prefix("node:")
            .filter(|i| !i.is_empty())
            .ok_or_else(|| AuthError::Invalid("not a node's token".into()))?;
        Ok(Caller {
            node: instance.to_string(),
            instance: instance.to_string(),
            instance_type: Some(INSTANCE_TYPE.to_string()),
        })
    }
}

/// Writes the token of `instance` into `dir`; its path.
pub fn token_file(dir: &Path, instance: &str) -> PathBuf {
    let path = dir.join(format!("{instance}.token"));
    std::fs::write(&path, format!("node:{instance}\n")).expect("token file");
    path
}

/// One replica of the gateway, serving until it is killed.
pub struct Replica {
    /// Its URL.
    pub url: String,
    gateway: Arc<Gateway<NodeTokens>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("url", &self.url).finish()
    }
}

impl Replica {
    /// A replica calling the API at `endpoint` (region `region`) with
    /// `credentials`, using `share` of the documented rates, for the ENIs
    /// of `cluster`.
    pub fn start(
        endpoint: &str,
        region: &str,
        credentials: Credentials,
        share: f64,
        cluster: &str,
    ) -> Replica {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(1024)
            .enable_all()
            .build()
            .expect("gateway runtime");
        let transport = Arc::new(Transport::new(
            endpoint,
            region,
            CredentialSource::Fixed(credentials),
            0.0,
            Duration::from_secs(10),
        ));
        let gateway = Arc::new(Gateway::new(
            NodeTokens,
            transport,
            Budget::documented(share),
            cluster,
            Arc::new(|_: &str| None),
        ));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("gateway port");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        runtime.spawn(node_agent::gateway::serve::serve_on(
            listener,
            Arc::clone(&gateway),
        ));
        Replica {
            url,
            gateway,
            runtime: Some(runtime),
        }
    }

    /// What it did so far.
    pub fn counts(&self) -> Counts {
        self.gateway.counts()
    }

    /// Stops it as a replica dies: its port closed, its connections and
    /// the calls it held dropped.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
