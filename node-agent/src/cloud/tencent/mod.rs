//! The Tencent Cloud VPC API (2017-03-12) as the pool's [`Cloud`]: node
//! identity from the instance metadata service (or flags), limits from
//! `DescribeNetworkInterfaceLimit`, the subnet of the node's zone with the
//! most free addresses from `DescribeSubnets` (whose free addresses are
//! also the metrics' subnet runway), and ENI and IP changes that
//! are safe to retry: a create carries a `ClientToken`, and an assign or
//! attach whose answer was lost looks at the ENI before it is sent again.

mod credentials;
mod decode;
mod once;
mod retry;
#[cfg(test)]
pub(crate) mod tests;
mod transport;

pub use credentials::{CredentialSource, Credentials, source as credential_source};
pub use decode::{
    best_subnet as decode_best_subnet, eni as decode_eni,
    instance_limits as decode_instance_limits, response as decode_response,
};

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Cloud, CloudError, Eni, NodeInfo};
pub use transport::Transport;

/// How long the cluster's cloud gateway may hold a node's call for its
/// action's turn before it answers `RequestLimitExceeded`; a node behind
/// the gateway waits this much longer than its own timeout for an answer.
/// Long enough for a cold start of 5,000 nodes (the attaches then queue
/// for about a minute): a call turned away comes back after a backoff and
/// leaves its turn unused meanwhile, a call that waits does not.
pub const GATEWAY_QUEUE: Duration = Duration::from_secs(120);
/// The MTU of Tencent Cloud ENIs.
pub const MTU: u32 = 1500;
/// Tag naming the cluster an ENI belongs to.
pub const TAG_CLUSTER: &str = "vpc-cni/cluster";
/// Tag naming the node (instance) an ENI was created for.
pub const TAG_NODE: &str = "vpc-cni/node";

/// Where the node is, as flags or the metadata service say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Instance id.
    pub instance_id: String,
    /// Availability zone.
    pub zone: String,
    /// VPC id.
    pub vpc_id: String,
    /// Region.
    pub region: String,
}

/// Settings of the client.
#[derive(Clone, Debug)]
pub struct Settings {
    /// API endpoint, such as `https://vpc.tencentcloudapi.com`.
    pub endpoint: String,
    /// Region, such as `ap-guangzhou`.
    pub region: String,
    /// Where the credentials come from.
    pub credentials: CredentialSource,
    /// Client-side rate limit, calls per second (0: none).
    pub qps: f64,
    /// Timeout of one HTTP exchange.
    pub timeout: Duration,
    /// The node.
    pub identity: Identity,
    /// Subnets ENIs may come from; empty: any of the node's zone.
    pub subnets: Vec<String>,
    /// Cluster name for the ENIs' tags.
    pub cluster: String,
}

/// The client.
#[derive(Clone, Debug)]
pub struct TencentCloud {
    transport: Arc<Transport>,
    settings: Arc<Settings>,
    /// The instance's limits, asked once: `DescribeNetworkInterfaceLimit`
    /// allows 20 calls a second for the whole account, and an instance's
    /// limits do not change while the agent runs. Filled by the blocking
    /// call itself, so an answer that arrives after its caller gave up
    /// (the agent's start waits 5 s) is kept, and a second caller waits for
    /// the first instead of asking again.
    limits: Arc<std::sync::Mutex<Option<super::Limits>>>,
    /// When the subnets were last read, and how often, at most, a reconcile
    /// reads them again for the metrics.
    subnets_read: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    subnet_refresh: Duration,
}

impl TencentCloud {
    /// A client with `settings`.
    pub fn new(settings: Settings) -> TencentCloud {
        let transport = Transport::new(
            &settings.endpoint,
            &settings.region,
            settings.credentials.clone(),
            settings.qps,
            settings.timeout,
        );
        TencentCloud {
            transport: Arc::new(transport),
            settings: Arc::new(settings),
            limits: Arc::default(),
            subnets_read: Arc::default(),
            subnet_refresh: DEFAULT_SUBNET_REFRESH,
        }
    }

    /// Reads the subnets' free addresses again (`refresh_subnets`) only
    /// when the last read is at least `every` old.
    pub fn with_subnet_refresh(mut self, every: Duration) -> TencentCloud {
        self.subnet_refresh = every;
        self
    }

    /// Sends the calls from now on to the first of `endpoints` reachable
    /// (the cloud gateway's ready replicas).
    pub fn set_endpoints(&self, endpoints: &[String]) {
        self.transport.set_endpoints(endpoints);
    }

    /// The transport, for the cloud gateway's relaying of nodes' calls.
    pub fn transport(&self) -> Arc<Transport> {
        Arc::clone(&self.transport)
    }

    async fn call(&self, action: &'static str, params: Value) -> Result<Value, CloudError> {
        self.blocking(action, move |t| t.call(action, &params))
            .await
    }

    /// Runs `work` with the transport on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        action: &'static str,
        work: impl FnOnce(&Transport) -> Result<T, CloudError> + Send + 'static,
    ) -> Result<T, CloudError> {
        let transport = Arc::clone(&self.transport);
        tokio::task::spawn_blocking(move || work(&transport))
            .await
            .map_err(|e| CloudError::Other(format!("{action}: {e}")))?
    }
}

/// An HTTP client for the metadata service.
fn metadata_http(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build(),
    )
}

/// One `GET /latest/meta-data/<path>` of the metadata service at `base`.
fn metadata_get(http: &ureq::Agent, base: &str, path: &str) -> Result<String, CloudError> {
    let url = format!("{}/latest/meta-data/{path}", base.trim_end_matches('/'));
    http.get(&url)
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .map(|s| s.trim().to_string())
        .map_err(|e| CloudError::Other(format!("metadata {url}: {e}")))
}

/// The MAC of the node's primary ENI (`mac` of the metadata service at
/// `base`), lower case.
pub fn primary_mac_from_metadata(base: &str, timeout: Duration) -> Result<String, CloudError> {
    metadata_get(&metadata_http(timeout), base, "mac").map(|m| m.to_ascii_lowercase())
}

/// Reads the node's identity from the metadata service at `base`
/// (`http://metadata.tencentyun.com`), each field unless already known.
pub fn identity_from_metadata(
    base: &str,
    known: Identity,
    timeout: Duration,
) -> Result<Identity, CloudError> {
    let http = metadata_http(timeout);
    let get = |path: &str| metadata_get(&http, base, path);
    let instance_id = if known.instance_id.is_empty() {
        get("instance-id")?
    } else {
        known.instance_id
    };
    let zone = if known.zone.is_empty() {
        get("placement/zone")?
    } else {
        known.zone
    };
    let vpc_id = if known.vpc_id.is_empty() {
        let mac = get("mac")?;
        get(&format!("network/interfaces/macs/{mac}/vpc-id"))?
    } else {
        known.vpc_id
    };
    let region = if known.region.is_empty() {
        get("placement/region")?
    } else {
        known.region
    };
    Ok(Identity {
        instance_id,
        zone,
        vpc_id,
        region,
    })
}

impl TencentCloud {
    /// The node's VPC's CIDR blocks, the primary and every secondary
    /// (`DescribeVpcs`: `CidrBlock` and `AssistantCidrSet`).
    pub async fn vpc_cidrs(&self) -> Result<Vec<String>, CloudError> {
        let answer = self
            .call(
                "DescribeVpcs",
                json!({ "VpcIds": [self.settings.identity.vpc_id] }),
            )
            .await?;
        decode::vpc_cidrs(&answer, &self.settings.identity.vpc_id)
    }
}

impl Cloud for TencentCloud {
    fn instance_id(&self) -> String {
        self.settings.identity.instance_id.clone()
    }

    fn set_urgent(&self, urgent: bool) {
        self.transport.set_urgent(urgent);
    }

    async fn node(&self) -> Result<NodeInfo, CloudError> {
        self.node_in(&[]).await
    }

    async fn node_in(&self, allowed: &[String]) -> Result<NodeInfo, CloudError> {
        let allowed = if allowed.is_empty() {
            &self.settings.subnets
        } else {
            allowed
        };
        let id = &self.settings.identity;
        let cache = Arc::clone(&self.limits);
        let instance = id.instance_id.clone();
        let limits = self
            .blocking("DescribeNetworkInterfaceLimit", move |t| {
                let mut cached = cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(limits) = *cached {
                    return Ok(limits);
                }
                let answer = t.call(
                    "DescribeNetworkInterfaceLimit",
                    &json!({ "InstanceId": instance }),
                )?;
                let limits = decode::instance_limits(&answer)?;
                *cached = Some(limits);
                Ok(limits)
            })
            .await?;
        let subnets = self.zone_subnets(allowed).await?;
        let subnet = decode::best_subnet(&subnets, &id.zone, allowed)?;
        Ok(NodeInfo {
            instance_id: id.instance_id.clone(),
            zone: id.zone.clone(),
            vpc_id: id.vpc_id.clone(),
            subnet,
            limits,
            mtu: MTU,
        })
    }

    async fn refresh_subnets(&self, allowed: &[String]) -> Result<(), CloudError> {
        let last = *self.subnets_read.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < self.subnet_refresh) {
            return Ok(());
        }
        let allowed = if allowed.is_empty() {
            &self.settings.subnets
        } else {
            allowed
        };
        self.zone_subnets(allowed).await.map(|_| ())
    }

    async fn create_eni(&self, subnet_id: &str, ips: u32) -> Result<Eni, CloudError> {
        let s = &self.settings;
        let out = self
            .call(
                "CreateNetworkInterface",
                json!({
                    "VpcId": s.identity.vpc_id,
                    "SubnetId": subnet_id,
                    "NetworkInterfaceName": format!("vpc-cni-{}", s.identity.instance_id),
                    "Tags": [
                        {"Key": TAG_CLUSTER, "Value": s.cluster},
                        {"Key": TAG_NODE, "Value": s.identity.instance_id},
                    ],
                    "SecondaryPrivateIpAddressCount": ips,
                    "ClientToken": client_token(),
                }),
            )
            .await?;
        decode::eni(out.get("NetworkInterface").unwrap_or(&Value::Null))
    }

    async fn attach_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        let instance = self.settings.identity.instance_id.clone();
        let eni = eni_id.to_string();
        self.blocking("AttachNetworkInterface", move |t| {
            once::attach(t, &eni, &instance)
        })
        .await
    }

    async fn detach_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        let instance = self.settings.identity.instance_id.clone();
        let eni = eni_id.to_string();
        self.blocking("DetachNetworkInterface", move |t| {
            once::detach(t, &eni, &instance)
        })
        .await
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        let eni = eni_id.to_string();
        self.blocking("DeleteNetworkInterface", move |t| once::delete(t, &eni))
            .await
    }

    async fn assign_ips(
        &self,
        eni_id: &str,
        count: u32,
        held: &[Ipv4Addr],
    ) -> Result<Vec<Ipv4Addr>, CloudError> {
        let eni = eni_id.to_string();
        let held = held.to_vec();
        self.blocking("AssignPrivateIpAddresses", move |t| {
            once::assign_count(t, &eni, count, &held)
        })
        .await
    }

    async fn assign_named_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), CloudError> {
        for batch in ips.chunks(MAX_NAMED_PER_CALL) {
            let eni = eni_id.to_string();
            let batch = batch.to_vec();
            self.blocking("AssignPrivateIpAddresses", move |t| {
                once::assign_named(t, &eni, &batch)
            })
            .await?;
        }
        Ok(())
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), CloudError> {
        for batch in ips.chunks(MAX_NAMED_PER_CALL) {
            let eni = eni_id.to_string();
            let batch = batch.to_vec();
            self.blocking("UnassignPrivateIpAddresses", move |t| {
                once::unassign(t, &eni, &batch)
            })
            .await?;
        }
        Ok(())
    }

    async fn list_enis(&self) -> Result<Vec<Eni>, CloudError> {
        let filter = json!({"Name": "attachment.instance-id", "Values": [self.settings.identity.instance_id]});
        self.describe_enis(filter).await
    }

    async fn assign_ipv6s(
        &self,
        eni_id: &str,
        count: u32,
        held: &[Ipv6Addr],
    ) -> Result<Vec<Ipv6Addr>, CloudError> {
        let eni = eni_id.to_string();
        let held = held.to_vec();
        self.blocking("AssignIpv6Addresses", move |t| {
            once::assign_ipv6_count(t, &eni, count, &held)
        })
        .await
    }

    async fn assign_named_ipv6s(&self, eni_id: &str, ips: &[Ipv6Addr]) -> Result<(), CloudError> {
        for batch in ips.chunks(MAX_NAMED_PER_CALL) {
            let eni = eni_id.to_string();
            let batch = batch.to_vec();
            self.blocking("AssignIpv6Addresses", move |t| {
                once::assign_ipv6_named(t, &eni, &batch)
            })
            .await?;
        }
        Ok(())
    }

    async fn unassign_ipv6s(&self, eni_id: &str, ips: &[Ipv6Addr]) -> Result<(), CloudError> {
        for batch in ips.chunks(MAX_NAMED_PER_CALL) {
            let eni = eni_id.to_string();
            let batch = batch.to_vec();
            self.blocking("UnassignIpv6Addresses", move |t| {
                once::unassign_ipv6(t, &eni, &batch)
            })
            .await?;
        }
        Ok(())
    }

    async fn migrate_ip(&self, from: &str, to: &str, ip: Ipv4Addr) -> Result<(), CloudError> {
        let params = json!({
            "SourceNetworkInterfaceId": from,
            "DestinationNetworkInterfaceId": to,
            "PrivateIpAddress": ip.to_string(),
        });
        self.call("MigratePrivateIpAddress", params)
            .await
            .map(|_| ())
    }

    async fn list_cluster_enis(&self) -> Result<Vec<Eni>, CloudError> {
        self.describe_enis(
            json!({"Name": format!("tag:{TAG_CLUSTER}"), "Values": [self.settings.cluster]}),
        )
        .await
    }

    async fn list_node_detached_enis(&self) -> Result<Vec<Eni>, CloudError> {
        let filter = json!({"Name": format!("tag:{TAG_NODE}"), "Values": [self.settings.identity.instance_id]});
        Ok(self
            .describe_enis(filter)
            .await?
            .into_iter()
            .filter(|e| !e.primary && e.attached_to.is_none())
            .collect())
    }
}

/// How many addresses one `AssignPrivateIpAddresses` or
/// `UnassignPrivateIpAddresses` may name (the API's limit for
/// `PrivateIpAddresses`, "单次最多指定10个").
const MAX_NAMED_PER_CALL: usize = 10;

/// How often, by default, the subnets' free addresses are read again for
/// the metrics: the runway they show moves over hours, and a read per
/// node and reconcile (5 min) would be most of a quiet cluster's calls.
const DEFAULT_SUBNET_REFRESH: Duration = Duration::from_secs(30 * 60);

impl TencentCloud {
    /// `DescribeSubnets` of the node's zone, the free addresses of those
    /// among `allowed` (any, when empty) recorded for the metrics.
    async fn zone_subnets(&self, allowed: &[String]) -> Result<Value, CloudError> {
        let id = &self.settings.identity;
        let answer = self
            .call(
                "DescribeSubnets",
                json!({ "Filters": [
                    {"Name": "vpc-id", "Values": [id.vpc_id]},
                    {"Name": "zone", "Values": [id.zone]},
                ]}),
            )
            .await?;
        for (subnet, free) in decode::subnets_free(&answer, &id.zone, allowed) {
            crate::metrics::subnet_free_ips(&subnet, &id.zone, free);
        }
        *self.subnets_read.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now());
        Ok(answer)
    }

    /// `DescribeNetworkInterfaces` with one filter, every page.
    async fn describe_enis(&self, filter: Value) -> Result<Vec<Eni>, CloudError> {
        let mut enis = Vec::new();
        loop {
            let page = self
                .call(
                    "DescribeNetworkInterfaces",
                    json!({ "Filters": [filter], "Offset": enis.len(), "Limit": 100 }),
                )
                .await?;
            let set = page
                .get("NetworkInterfaceSet")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = page.get("TotalCount").and_then(Value::as_u64).unwrap_or(0) as usize;
            let got = set.len();
            for e in &set {
                enis.push(decode::eni(e)?);
            }
            if got == 0 || enis.len() >= total {
                return Ok(enis);
            }
        }
    }
}

/// A fresh idempotency token for one create.
fn client_token() -> String {
    format!("vpc-cni-{:016x}", retry::jitter_seed())
}
