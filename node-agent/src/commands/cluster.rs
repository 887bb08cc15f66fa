//! `vpc-cni-agent cluster`: the cluster component (one leader-elected
//! replica), and `vpc-cni-agent crds`: the CRD manifests.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tracing::info;
use tracing::level_filters::LevelFilter;

use crate::cloud::TencentCloud;
use crate::cloud::tencent::{self, Identity, Settings};
use crate::gateway;
use crate::kube::cluster::{self, Options};
use crate::kube::webhook;
use crate::logging::{self, LogFormat};

/// Flags of `cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// This replica's identity in the lease (default: `POD_NAME`, else the
    /// host name).
    #[arg(long)]
    identity: Option<String>,
    /// Namespace of the lease (default: `POD_NAMESPACE`, else `kube-system`).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Name of the lease.
    #[arg(long, default_value = "vpc-cni-cluster")]
    lease_name: String,
    /// How long the lease lasts without renewal (renewed every third of it).
    #[arg(long, default_value = "15s", value_parser = proto::duration::parse)]
    lease_duration: Duration,
    /// How often the leader sweeps for leaked ENIs and claims of gone nodes.
    #[arg(long, default_value = "1m", value_parser = proto::duration::parse)]
    interval: Duration,
    /// ENIs of gone nodes younger than this are left alone.
    #[arg(long, default_value = "10m", value_parser = proto::duration::parse)]
    leaked_eni_grace: Duration,
    /// VPC API endpoint.
    #[arg(long, default_value = "https://vpc.tencentcloudapi.com")]
    cloud_endpoint: String,
    /// Region (default: from the metadata service).
    #[arg(long)]
    region: Option<String>,
    /// VPC id (default: from the metadata service).
    #[arg(long)]
    vpc_id: Option<String>,
    /// Credentials file (`SecretId=`, `SecretKey=`; default: the environment).
    #[arg(long)]
    credentials_file: Option<PathBuf>,
    /// Instance metadata service base URL.
    #[arg(long, default_value = "http://metadata.tencentyun.com")]
    metadata_url: String,
    /// Cluster name in the ENIs' tags (as the agents' `--cluster-name`).
    #[arg(long, default_value = "default")]
    cluster_name: String,
    /// Cloud API calls per second at most.
    #[arg(long, default_value_t = 5.0)]
    cloud_qps: f64,
    /// Timeout of one VPC API exchange.
    #[arg(long, default_value = "10s", value_parser = proto::duration::parse)]
    cloud_timeout: Duration,
    /// Port of the zone webhook (HTTPS, all addresses); 0: not served.
    #[arg(long, default_value_t = 9443)]
    webhook_port: u16,
    /// The Service the API server calls the zone webhook by (in the
    /// lease's namespace).
    #[arg(long, default_value = "vpc-cni-webhook")]
    webhook_service: String,
    /// The Secret keeping the webhook's CA and serving certificate (made
    /// when missing).
    #[arg(long, default_value = "vpc-cni-webhook-tls")]
    webhook_secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` is kept.
    #[arg(long, default_value = "vpc-cni-zone")]
    webhook_configuration: String,
    /// The webhook's name in that configuration.
    #[arg(long, default_value = "zone.vpc-cni.io")]
    webhook_name: String,
    /// Port of the cloud gateway (HTTP, all addresses), through which the
    /// agents make their VPC calls with no key of their own; 0: not served.
    #[arg(long, default_value_t = 0)]
    gateway_port: u16,
    /// The agents' service account (`NAMESPACE:NAME`), the only one whose
    /// tokens the gateway takes.
    #[arg(long, default_value = "vpc-cni-system:vpc-cni-agent")]
    agent_service_account: String,
    /// The share of the account's documented VPC API rates the gateway
    /// uses for the nodes' calls (the rest: this component's sweeps, the
    /// console, other tools of the account).
    #[arg(long, default_value_t = crate::gateway::budget::DEFAULT_SHARE)]
    gateway_rate_share: f64,
    /// Serve Prometheus metrics on this address (the cloud calls of the
    /// sweeps and of the gateway, as the agents' `--metrics-address`
    /// shows theirs); off unless given.
    #[arg(long)]
    metrics_address: Option<std::net::SocketAddr>,
    /// Kubeconfig (default: `KUBECONFIG`, else the in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Runs the cluster component until it is stopped.
pub fn run(args: ClusterArgs) -> Result<(), String> {
    logging::init(args.log_format, args.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        if let Some(address) = args.metrics_address {
            let metrics = crate::listen::bind_when_free(address, "metrics")
                .await
                .map_err(|e| format!("--metrics-address {address}: {e}"))?;
            info!(%address, "metrics");
            // No pool here: the counters are the process's cloud calls.
            tokio::spawn(crate::metrics::serve(metrics, std::collections::BTreeMap::new));
        }
        let client = crate::kube::connect(args.kubeconfig.as_deref()).await?;
        let credentials =
            tencent::credential_source(args.credentials_file.as_deref(), &args.metadata_url)
                .map_err(|e| e.to_string())?;
        let known = Identity {
            instance_id: "cluster".into(),
            zone: "-".into(),
            vpc_id: args.vpc_id.clone().unwrap_or_default(),
            region: args.region.clone().unwrap_or_default(),
        };
        let (url, timeout) = (args.metadata_url.clone(), args.cloud_timeout);
        let identity = tokio::task::spawn_blocking(move || {
            tencent::identity_from_metadata(&url, known, timeout)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("region and VPC: {e}"))?;
        let cloud = TencentCloud::new(Settings {
            endpoint: args.cloud_endpoint.clone(),
            region: identity.region.clone(),
            credentials,
            qps: args.cloud_qps,
            timeout: args.cloud_timeout,
            identity,
            subnets: Vec::new(),
            cluster: args.cluster_name.clone(),
        });
        let options = Options {
            identity: args
                .identity
                .or_else(|| env("POD_NAME"))
                .or_else(|| env("HOSTNAME"))
                .unwrap_or_else(|| "vpc-cni-cluster".into()),
            namespace: args
                .lease_namespace
                .or_else(|| env("POD_NAMESPACE"))
                .unwrap_or_else(|| "kube-system".into()),
            lease: args.lease_name,
            lease_duration: args.lease_duration,
            interval: args.interval,
            leaked_eni_grace: args.leaked_eni_grace,
        };
        let webhook = webhook::Options {
            port: args.webhook_port,
            namespace: options.namespace.clone(),
            service: args.webhook_service,
            secret: args.webhook_secret,
            configuration: args.webhook_configuration,
            webhook: args.webhook_name,
        };
        let gateway = gateway::serve::Options {
            port: args.gateway_port,
            cluster: args.cluster_name.clone(),
            agent_account: args.agent_service_account.clone(),
            rate_share: args.gateway_rate_share,
        };
        let relaying = {
            let (client, transport) = (client.clone(), cloud.transport());
            async move {
                if gateway.port == 0 {
                    return std::future::pending().await;
                }
                gateway::serve::serve(client, transport, gateway).await
            }
        };
        info!(identity = %options.identity, namespace = %options.namespace, "cluster component starting");
        let serving = {
            let client = client.clone();
            async move {
                if webhook.port == 0 {
                    return std::future::pending().await;
                }
                webhook::serve(client, webhook).await
            }
        };
        tokio::select! {
            () = cluster::run(client, cloud, options) => Ok(()),
            served = serving => served.map_err(|e| format!("zone webhook: {e}")),
            relayed = relaying => relayed.map_err(|e| format!("cloud gateway: {e}")),
            () = super::run::shutdown_signal() => Ok(()),
        }
    })
}

/// Prints the CRD manifests.
pub fn crds() -> Result<(), String> {
    use std::io::Write;
    let yaml = crate::kube::crd::crds_yaml()?;
    std::io::stdout()
        .write_all(yaml.as_bytes())
        .map_err(|e| e.to_string())
}
