//! `vpc-cni-agent run`: open the store, restore the pool, listen.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tracing::level_filters::LevelFilter;
use tracing::{error, info, warn};

use super::identity;
use crate::agent::{Agent, AgentConfig, MIN_CLAIM_EXPIRY, StartError};
use crate::clock::{self, Clock};
use crate::cloud::tencent::{self, CredentialSource, Identity, Settings};
use crate::cloud::{Cloud, TencentCloud};
use crate::dataplane::egress::Cidr;
use crate::dataplane::{Connmark, ConnmarkBit, Dataplane, Egress, FakeDataplane, NetlinkDataplane};
use crate::logging::{self, LogFormat};
use crate::server::{self, ServerConfig};
use crate::sizing::Targets;
use crate::store::{FaultyStore, RedbStore, Store};

/// Which dataplane programs the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataplaneKind {
    /// Program veths, addresses, routes and rules over netlink.
    Netlink,
    /// Touch nothing; record what would be done (development and tests).
    Fake,
}

/// Which address families pods get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4 only.
    Ipv4,
    /// IPv4 and IPv6: every secondary IP gets an IPv6 partner from its
    /// ENI's subnet's /64 (the VPC and subnet need their IPv6 blocks).
    Dual,
}

/// `--ip-family`: `ipv4`, `dual`, or an unset variable (`ipv4`).
fn parse_ip_family(flag: &str) -> Result<IpFamily, String> {
    match flag.trim() {
        "ipv4" => Ok(IpFamily::Ipv4),
        "dual" => Ok(IpFamily::Dual),
        f if f.starts_with("$(") => Ok(IpFamily::Ipv4),
        other => Err(format!("{other}: expected ipv4 or dual")),
    }
}

/// Flags of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The address families of pods: `ipv4`, or `dual` (each pod also
    /// gets an IPv6 address on the same ENI).
    /// An unset variable (`$(VPC_CNI_IP_FAMILY)`, a ConfigMap without the
    /// key) is `ipv4`.
    #[arg(long, default_value = "ipv4", value_parser = parse_ip_family)]
    ip_family: IpFamily,
    /// Unix socket the CNI plugin talks to.
    #[arg(long, default_value = proto::cni::config::DEFAULT_AGENT_SOCKET)]
    socket: PathBuf,
    /// Directory of the crash-safe state store.
    #[arg(long, default_value = "/var/lib/vpc-cni")]
    state_dir: PathBuf,
    /// How long a released IP rests before another pod may get it.
    #[arg(long, default_value = "30s", value_parser = proto::duration::parse)]
    ip_cooldown: Duration,
    /// Free IPs the pool keeps ready for new pods.
    #[arg(long, default_value_t = 4)]
    warm_ip_target: usize,
    /// Whole ENIs' worth of free IPs the pool keeps ready.
    #[arg(long, default_value_t = 0)]
    warm_eni_target: usize,
    /// IPs the pool holds at least, free or not; spare IPs are given back
    /// only down to this.
    #[arg(long, default_value_t = 0)]
    min_ip_target: usize,
    /// ENIs this node uses at most, the primary included (the instance's own
    /// limit applies too).
    #[arg(long)]
    max_eni: Option<u32>,
    /// How long a static IP stays reserved after its pod is gone (at least
    /// 5m; unset or `never`: until reclaimed by hand). A pod may say otherwise.
    #[arg(long, value_parser = claim_expiry)]
    claim_expired_duration: Option<Expiry>,
    /// Record the owners of static claims made from now on, so that deleting
    /// the owner reclaims them (`--enable-ownerref` or `=true`/`=false`).
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    enable_ownerref: bool,
    /// Unattached ENIs of this cluster older than this are deleted as leaked.
    #[arg(long, default_value = "10m", value_parser = proto::duration::parse)]
    leaked_eni_grace: Duration,
    /// The dataplane.
    #[arg(long, value_enum, default_value = "netlink")]
    dataplane: DataplaneKind,
    /// The network namespace to program as "the node" (default: the agent's own).
    #[arg(long)]
    node_netns: Option<PathBuf>,
    /// Masquerade pod traffic leaving the VPC to the node's primary address
    /// (`--egress-masquerade=false`: pods keep their address everywhere and
    /// the agent removes its masquerade table).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    egress_masquerade: bool,
    /// Destinations pod traffic to which keeps the pod's address,
    /// comma-separated CIDRs (default: the VPC's CIDR from the metadata
    /// service).
    #[arg(long, value_delimiter = ',')]
    non_masquerade_cidrs: Vec<Cidr>,
    /// The bit of the conntrack and packet marks that marks connections
    /// arriving on the primary ENI for the node's own addresses (NodePort,
    /// hostPort), so their replies leave by it whatever the egress setting:
    /// hex (`0x80`) or decimal, exactly one bit, none of kube-proxy's
    /// 0x4000 and 0x8000 or Calico's 0xffff0000.
    #[arg(long, default_value = "0x80")]
    connmark_bit: ConnmarkBit,
    /// The MAC of the node's primary ENI, whose link the connmark matches
    /// (default: from the metadata service).
    #[arg(long, value_parser = mac_address)]
    primary_eni_mac: Option<String>,
    /// VPC API endpoint (a simulation's emulator: `http://HOST:PORT`).
    #[arg(long, default_value = "https://vpc.tencentcloudapi.com")]
    cloud_endpoint: String,
    /// Region (default: from the metadata service).
    #[arg(long)]
    region: Option<String>,
    /// File with `SecretId=`, `SecretKey=` and optional `Token=` lines
    /// (default: TENCENTCLOUD_SECRET_ID, TENCENTCLOUD_SECRET_KEY and
    /// TENCENTCLOUD_SESSION_TOKEN from the environment).
    #[arg(long)]
    credentials_file: Option<PathBuf>,
    /// The cluster's cloud gateway (the cluster component's): every VPC
    /// call goes there instead of `--cloud-endpoint`, authorised by the
    /// service-account token in `--gateway-token-file`, and the node holds
    /// no cloud key at all. `http://HOST:PORT`, or `service`: the ready
    /// endpoint of the `vpc-cni-gateway` Service in `POD_NAMESPACE`,
    /// followed as it moves (needs `--kubernetes` support). Empty: the node
    /// calls the VPC API itself with its own credentials.
    #[arg(long, default_value = "")]
    cloud_gateway: String,
    /// The projected service-account token (audience `vpc-cni-gateway`)
    /// shown to the cloud gateway.
    #[arg(long, default_value = "/var/run/secrets/vpc-cni/token")]
    gateway_token_file: PathBuf,
    /// Instance metadata service base URL.
    #[arg(long, default_value = "http://metadata.tencentyun.com")]
    metadata_url: String,
    /// This node's instance id (default: from the metadata service).
    #[arg(long)]
    instance_id: Option<String>,
    /// This node's availability zone (default: from the metadata service).
    #[arg(long)]
    zone: Option<String>,
    /// This node's VPC id (default: from the metadata service).
    #[arg(long)]
    vpc_id: Option<String>,
    /// Subnets ENIs may come from, comma-separated (default: any subnet of
    /// the node's zone; the one with the most free IPs is used).
    #[arg(long, value_delimiter = ',')]
    subnet_ids: Vec<String>,
    /// How long one VPC API (or metadata) exchange may take before it counts
    /// as lost and is retried (after looking whether it took effect).
    #[arg(long, default_value = "10s", value_parser = proto::duration::parse)]
    cloud_timeout: Duration,
    /// Cloud API calls per second at most (0: no limit).
    #[arg(long, default_value_t = 10.0)]
    cloud_qps: f64,
    /// Cluster name written into the tags of the ENIs this agent creates.
    #[arg(long, default_value = "default")]
    cluster_name: String,
    /// How often the pool is compared with the cloud and this node's leaked
    /// ENIs are looked for (jittered by up to a fifth).
    #[arg(long, default_value = "5m", value_parser = proto::duration::parse)]
    reconcile_interval: Duration,
    /// How often, at most, a reconcile looks again at the free addresses of
    /// the node's subnets for the metrics (`vpc_cni_subnet_free_ips`; one
    /// `DescribeSubnets` each time).
    #[arg(long, default_value = "30m", value_parser = proto::duration::parse)]
    subnet_metrics_interval: Duration,
    /// Period of the maintenance tick (pool targets, claim expiry, the
    /// cloud coming back). Tests shorten it.
    #[arg(long, default_value = "30s", value_parser = proto::duration::parse, hide = true)]
    maintenance_interval: Duration,
    /// Test only: the agent's clock runs ahead of the system's by the
    /// milliseconds written in this file (claims expire without waiting).
    #[arg(long, hide = true)]
    test_clock_offset_file: Option<PathBuf>,
    /// Test only: while this file exists, every commit to the state store
    /// fails (the agent then stops acting and exits).
    #[arg(long, hide = true)]
    test_store_fail_file: Option<PathBuf>,
    /// Publish the pool as Kubernetes objects (`VpcIPClaim`, `VpcIP`,
    /// `NodeEniConfig`) and events, and read the pods' annotations.
    #[arg(long)]
    kubernetes: bool,
    /// This node's name in Kubernetes (default: `NODE_NAME` from the
    /// environment, else the instance id).
    #[arg(long)]
    node_name: Option<String>,
    /// Kubeconfig of the Kubernetes client (default: `KUBECONFIG`, else the
    /// in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (such as `127.0.0.1:9187`);
    /// off unless given.
    #[arg(long)]
    metrics_address: Option<std::net::SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> Result<(), String> {
    logging::init(args.log_format, args.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime
        .block_on(serve(args))
        .inspect_err(|e| error!(error = %e, "agent stopped"))
}

async fn serve(args: RunArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", args.state_dir.display()))?;
    // Opening creates and fsyncs the file: off the runtime's workers.
    let path = args.state_dir.join("state.redb");
    let store = tokio::task::spawn_blocking(move || RedbStore::open(&path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let cloud = cloud(&args).await?;
    let cluster = Cluster::connect(&args, &cloud.instance_id()).await?;
    let config = AgentConfig {
        ip_cooldown: args.ip_cooldown,
        pool: Targets {
            warm_ip: args.warm_ip_target,
            warm_eni: args.warm_eni_target,
            min_ip: args.min_ip_target,
            max_eni: args.max_eni,
            release_batch: RELEASE_BATCH,
        },
        leaked_eni_grace: args.leaked_eni_grace,
        claim_expiry: args.claim_expired_duration.and_then(|e| e.0),
        enable_ownerref: args.enable_ownerref,
        maintenance_interval: args.maintenance_interval,
        reconcile_interval: args.reconcile_interval,
        ipv6: args.ip_family == IpFamily::Dual,
    };
    let clock: Clock = match &args.test_clock_offset_file {
        Some(file) => clock::offset_clock(file.clone()),
        None => clock::system_clock(),
    };
    let store: Box<dyn Store> = match &args.test_store_fail_file {
        Some(trigger) => Box::new(FaultyStore {
            inner: store,
            trigger: trigger.clone(),
        }),
        None => Box::new(store),
    };
    match args.dataplane {
        DataplaneKind::Netlink => {
            let connmark = Connmark {
                bit: args.connmark_bit,
                primary_mac: primary_mac(&args).await?,
            };
            let dataplane = NetlinkDataplane::new(args.node_netns.as_deref())
                .await
                .map_err(|e| e.to_string())?
                .with_egress(egress(&args, &cloud).await?)
                .with_connmark(connmark)
                .with_ipv6(args.ip_family == IpFamily::Dual);
            let claims = cluster.cluster_claims();
            listen(
                args,
                Agent::start_with_claims(cloud, dataplane, store, config, clock, claims).await,
                cluster,
            )
            .await
        }
        DataplaneKind::Fake => {
            // The fake touches nothing: no metadata lookup for it.
            let dataplane = FakeDataplane::with_egress(
                if args.egress_masquerade && !args.non_masquerade_cidrs.is_empty() {
                    Egress::masquerade(args.non_masquerade_cidrs.clone())?
                } else {
                    Egress::Off
                },
            );
            let claims = cluster.cluster_claims();
            listen(
                args,
                Agent::start_with_claims(cloud, dataplane, store, config, clock, claims).await,
                cluster,
            )
            .await
        }
    }
}

/// The Tencent Cloud client, with the node's identity and region from flags
/// or the metadata service.
async fn cloud(args: &RunArgs) -> Result<TencentCloud, String> {
    let gateway = gateway_at(&args.cloud_gateway)?;
    let (endpoint, credentials) = if gateway == GatewayAt::Nowhere {
        let credentials =
            tencent::credential_source(args.credentials_file.as_deref(), &args.metadata_url)
                .map_err(|e| e.to_string())?;
        (args.cloud_endpoint.clone(), credentials)
    } else {
        if args.credentials_file.is_some() {
            return Err(
                "--cloud-gateway and --credentials-file: behind the gateway a node holds no key"
                    .into(),
            );
        }
        info!(?gateway, token = %args.gateway_token_file.display(), "VPC calls go through the cluster's cloud gateway");
        let token_file = args.gateway_token_file.clone();
        let url = match &gateway {
            GatewayAt::Url(url) => url.clone(),
            // Known once its endpoints are (`follow_gateway`).
            _ => String::new(),
        };
        (url, CredentialSource::Gateway { token_file })
    };
    let known = Identity {
        instance_id: args.instance_id.clone().unwrap_or_default(),
        zone: args.zone.clone().unwrap_or_default(),
        vpc_id: args.vpc_id.clone().unwrap_or_default(),
        region: args.region.clone().unwrap_or_default(),
    };
    let (url, timeout) = (args.metadata_url.clone(), args.cloud_timeout);
    let asked = known.clone();
    let looked_up =
        tokio::task::spawn_blocking(move || tencent::identity_from_metadata(&url, asked, timeout))
            .await
            .map_err(|e| e.to_string())?;
    let kept = identity::kept(&args.state_dir);
    let identity = match (looked_up, &kept) {
        (Ok(identity), _) => {
            let keep = identity::Known {
                instance_id: identity.instance_id.clone(),
                zone: identity.zone.clone(),
                vpc_id: identity.vpc_id.clone(),
                region: identity.region.clone(),
                primary_mac: kept.as_ref().and_then(|k| k.primary_mac.clone()),
            };
            if kept.as_ref() != Some(&keep)
                && let Err(e) = identity::keep(&args.state_dir, &keep)
            {
                warn!(error = %e, "cannot keep the node's identity in the state directory");
            }
            identity
        }
        // Known before: the agent starts from its store, as it does when
        // the VPC API does not answer.
        (Err(e), Some(kept)) => {
            warn!(error = %e, "the metadata service does not answer; using the node identity kept in the state directory");
            kept.fill(known)
        }
        (Err(e), None) => return Err(format!("node identity: {e}")),
    };
    info!(instance = %identity.instance_id, zone = %identity.zone, vpc = %identity.vpc_id, region = %identity.region, "node identity");
    let cloud = TencentCloud::new(Settings {
        endpoint,
        region: identity.region.clone(),
        credentials,
        qps: args.cloud_qps,
        timeout: args.cloud_timeout,
        identity,
        subnets: args.subnet_ids.clone(),
        cluster: args.cluster_name.clone(),
    })
    .with_subnet_refresh(args.subnet_metrics_interval);
    if gateway == GatewayAt::Service {
        follow_gateway(args, &cloud).await?;
    }
    Ok(cloud)
}

/// Where `--cloud-gateway` says the VPC calls go.
#[derive(Debug, PartialEq, Eq)]
enum GatewayAt {
    /// To the VPC API itself.
    Nowhere,
    /// To this URL.
    Url(String),
    /// To the cluster component's Ready replicas, followed.
    Service,
}

/// What `--cloud-gateway` says. A `$(VAR)` the kubelet left as it was (a
/// ConfigMap without the key, from before the gateway) is no gateway.
fn gateway_at(flag: &str) -> Result<GatewayAt, String> {
    match flag.trim() {
        "" => Ok(GatewayAt::Nowhere),
        f if f.starts_with("$(") => {
            warn!(
                flag = f,
                "--cloud-gateway names an unset variable: no gateway, the VPC API called directly"
            );
            Ok(GatewayAt::Nowhere)
        }
        "service" => Ok(GatewayAt::Service),
        url if url.starts_with("http://") || url.starts_with("https://") => {
            Ok(GatewayAt::Url(url.trim_end_matches('/').to_string()))
        }
        other => Err(format!(
            "--cloud-gateway {other}: expected http(s)://HOST:PORT, service, or empty"
        )),
    }
}

/// Keeps `cloud` sent to the cloud gateway's Ready replicas.
#[cfg_attr(not(feature = "kubernetes"), allow(clippy::unused_async))]
async fn follow_gateway(args: &RunArgs, cloud: &TencentCloud) -> Result<(), String> {
    #[cfg(feature = "kubernetes")]
    {
        let client = crate::kube::connect(args.kubeconfig.as_deref()).await?;
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "vpc-cni-system".into());
        let cloud = cloud.clone();
        crate::kube::gateway::follow(client, &namespace, move |urls| cloud.set_endpoints(urls));
        Ok(())
    }
    #[cfg(not(feature = "kubernetes"))]
    {
        let _ = (args, cloud);
        Err(
            "--cloud-gateway=service: this vpc-cni-agent was built without Kubernetes support"
                .into(),
        )
    }
}

/// The primary ENI's MAC: the flag's, or the metadata service's.
async fn primary_mac(args: &RunArgs) -> Result<String, String> {
    if let Some(mac) = &args.primary_eni_mac {
        return Ok(mac.clone());
    }
    let (url, timeout) = (args.metadata_url.clone(), args.cloud_timeout);
    let looked_up =
        tokio::task::spawn_blocking(move || tencent::primary_mac_from_metadata(&url, timeout))
            .await
            .map_err(|e| e.to_string())?;
    let kept = identity::kept(&args.state_dir);
    let mac = match looked_up {
        Ok(mac) => {
            if let Some(mut k) = kept.filter(|k| k.primary_mac.as_deref() != Some(mac.as_str())) {
                k.primary_mac = Some(mac.clone());
                if let Err(e) = identity::keep(&args.state_dir, &k) {
                    warn!(error = %e, "cannot keep the primary ENI's MAC in the state directory");
                }
            }
            mac
        }
        Err(e) => match kept.and_then(|k| k.primary_mac) {
            Some(mac) => {
                warn!(error = %e, "the metadata service does not answer; using the primary ENI's MAC kept in the state directory");
                mac
            }
            None => {
                return Err(format!(
                    "the primary ENI's MAC: {e} (give --primary-eni-mac)"
                ));
            }
        },
    };
    info!(%mac, "primary ENI");
    Ok(mac)
}

/// A MAC address flag (`aa:bb:cc:dd:ee:ff`), lower case.
fn mac_address(s: &str) -> Result<String, String> {
    let octets: Vec<&str> = s.trim().split(':').collect();
    if octets.len() != 6
        || octets
            .iter()
            .any(|o| o.len() != 2 || u8::from_str_radix(o, 16).is_err())
    {
        return Err(format!(
            "{s}: not a MAC address (such as 52:54:00:12:34:56)"
        ));
    }
    Ok(s.trim().to_ascii_lowercase())
}

/// The egress from the flags; unless the non-masquerade CIDRs are given,
/// the VPC's CIDR blocks from the VPC API (`DescribeVpcs`), or, when it does
/// not answer within 5 s, the RFC 1918 blocks, which hold every VPC's.
async fn egress(args: &RunArgs, cloud: &TencentCloud) -> Result<Egress, String> {
    if !args.egress_masquerade {
        return Ok(Egress::Off);
    }
    if !args.non_masquerade_cidrs.is_empty() {
        return Egress::masquerade(args.non_masquerade_cidrs.clone());
    }
    let cidrs: Vec<Cidr> = match tokio::time::timeout(VPC_CIDRS_WAIT, cloud.vpc_cidrs()).await {
        Ok(Ok(list)) => list
            .iter()
            .map(|c| c.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the VPC's CIDR blocks: {e}"))?,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {VPC_CIDRS_WAIT:?}"),
            };
            warn!(error = %why, "VPC CIDR blocks unknown: pods keep their address to all of 10.0.0.0/8, 172.16.0.0/12 and 192.168.0.0/16 (give --non-masquerade-cidrs to be exact)");
            RFC1918
                .iter()
                .map(|c| c.parse())
                .collect::<Result<_, _>>()?
        }
    };
    Egress::masquerade(cidrs)
}

/// How long start-up waits for the VPC's CIDR blocks.
const VPC_CIDRS_WAIT: Duration = Duration::from_secs(5);
/// The private blocks every VPC's CIDRs lie in.
const RFC1918: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

/// A claim expiry flag: a duration, or `never`.
#[derive(Clone, Copy, Debug)]
struct Expiry(Option<Duration>);

fn claim_expiry(s: &str) -> Result<Expiry, String> {
    if s.trim().eq_ignore_ascii_case("never") {
        return Ok(Expiry(None));
    }
    let d = proto::duration::parse(s)?;
    if d < MIN_CLAIM_EXPIRY {
        return Err(format!(
            "{s} is below the minimum of 5m: a pod restarting slowly would lose its static IP"
        ));
    }
    Ok(Expiry(Some(d)))
}

/// Spare IPs given back per maintenance round at most.
const RELEASE_BATCH: usize = 5;

async fn listen<C: Cloud, D: Dataplane>(
    args: RunArgs,
    agent: Result<Agent<C, D>, StartError>,
    cluster: Cluster,
) -> Result<(), String> {
    let agent = Arc::new(agent.map_err(|e| e.to_string())?);
    cluster.publish(Arc::clone(&agent) as Arc<dyn crate::agent::NodeFeed>, &args);
    let listener = server::bind(&args.socket).map_err(|e| e.to_string())?;
    info!(socket = %args.socket.display(), state_dir = %args.state_dir.display(), "agent ready");
    let warm = tokio::spawn(Arc::clone(&agent).maintain_pool());
    if let Some(address) = args.metrics_address {
        let metrics = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| format!("--metrics-address {address}: {e}"))?;
        info!(%address, "metrics");
        let agent = Arc::clone(&agent);
        tokio::spawn(crate::metrics::serve(metrics, move || agent.ip_states()));
    }
    let mut poisoned = agent.poisoned();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => None,
            why = poisoned.wait_for(Option::is_some) => why.ok().and_then(|w| w.clone()),
        }
    };
    // The server finishes what is in flight before it returns.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stop = async move {
        let _ = tx.send(stop.await);
    };
    // Accepting on a worker thread, not this one (which only blocks on the
    // runtime): a connection's task then starts on the thread that accepted
    // it, instead of waking another thread for every CNI call.
    tokio::spawn(server::serve(
        listener,
        agent,
        ServerConfig::default(),
        stop,
    ))
    .await
    .map_err(|e| format!("the socket server failed: {e}"))?;
    warm.abort();
    let _ = std::fs::remove_file(&args.socket);
    match rx.await.ok().flatten() {
        // Crash-only: the supervisor restarts the agent, which reloads the
        // store; the pool in memory may be ahead of it.
        Some(why) => Err(format!(
            "the state store failed ({why}); exiting so the agent restarts from the store"
        )),
        None => {
            info!("agent stopped");
            Ok(())
        }
    }
}

/// SIGTERM or SIGINT. A process that is its container's PID 1 must ask for
/// SIGTERM: the kernel does not deliver it to PID 1 with the default
/// action, and the kubelet then kills it only when the grace period ends.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
}

/// The Kubernetes side of the agent, when `--kubernetes` is on.
struct Cluster {
    #[cfg(feature = "kubernetes")]
    kube: Option<(::kube::Client, String, crate::kube::writes::Written)>,
    enable_ownerref: bool,
}

impl Cluster {
    #[cfg_attr(not(feature = "kubernetes"), allow(clippy::unused_async))]
    async fn connect(args: &RunArgs, instance_id: &str) -> Result<Cluster, String> {
        if !args.kubernetes {
            return Ok(Cluster {
                #[cfg(feature = "kubernetes")]
                kube: None,
                enable_ownerref: args.enable_ownerref,
            });
        }
        #[cfg(feature = "kubernetes")]
        {
            let client = crate::kube::connect(args.kubeconfig.as_deref()).await?;
            let node = args
                .node_name
                .clone()
                .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
                .unwrap_or_else(|| instance_id.to_string());
            info!(node = %node, "publishing to Kubernetes");
            Ok(Cluster {
                kube: Some((client, node, crate::kube::writes::Written::default())),
                enable_ownerref: args.enable_ownerref,
            })
        }
        #[cfg(not(feature = "kubernetes"))]
        {
            let _ = instance_id;
            Err("--kubernetes: this vpc-cni-agent was built without Kubernetes support".into())
        }
    }

    fn cluster_claims(&self) -> Arc<dyn crate::cluster_claims::ClusterClaims> {
        #[cfg(feature = "kubernetes")]
        if let Some((client, node, written)) = &self.kube {
            return Arc::new(crate::kube::claims::KubeClaims::new(
                client.clone(),
                node,
                self.enable_ownerref,
                written.clone(),
            ));
        }
        let _ = self.enable_ownerref;
        Arc::new(crate::cluster_claims::LocalClaims)
    }

    fn publish(&self, feed: Arc<dyn crate::agent::NodeFeed>, args: &RunArgs) {
        #[cfg(feature = "kubernetes")]
        if let Some((client, node, written)) = &self.kube {
            crate::kube::publish::spawn(
                client.clone(),
                feed,
                crate::kube::publish::Options {
                    node: node.clone(),
                    subnet_ids: args.subnet_ids.clone(),
                    written: written.clone(),
                },
            );
        }
        #[cfg(not(feature = "kubernetes"))]
        let _ = (feed, args);
    }
}

#[cfg(test)]
mod tests {
    use super::{GatewayAt, IpFamily, gateway_at, parse_ip_family};

    #[test]
    fn the_ip_family_is_ipv4_unless_dual_and_an_unset_configmap_key_is_ipv4() {
        assert_eq!(parse_ip_family("dual"), Ok(IpFamily::Dual));
        assert_eq!(parse_ip_family("ipv4"), Ok(IpFamily::Ipv4));
        assert_eq!(parse_ip_family("$(VPC_CNI_IP_FAMILY)"), Ok(IpFamily::Ipv4));
        assert!(parse_ip_family("ipv6").is_err());
    }

    #[test]
    fn the_gateway_is_a_url_the_service_or_none() {
        assert_eq!(gateway_at("service"), Ok(GatewayAt::Service));
        assert_eq!(gateway_at(""), Ok(GatewayAt::Nowhere));
        assert_eq!(
            gateway_at("$(VPC_CNI_CLOUD_GATEWAY)"),
            Ok(GatewayAt::Nowhere)
        );
        assert_eq!(
            gateway_at("http://gw:9444/"),
            Ok(GatewayAt::Url("http://gw:9444".into()))
        );
        assert!(gateway_at("gw:9444").is_err());
    }
}
