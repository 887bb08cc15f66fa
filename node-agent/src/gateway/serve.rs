//! The gateway on the network: HTTP/1.1 on the cluster component's
//! `--gateway-port`, behind the `vpc-cni-gateway` Service; callers known by
//! `TokenReview` (the agents' service account only, its token bound to a
//! pod, whose node the review names), addresses' holders by a watch of the
//! `VpcIPClaim`s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Node;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::{debug, info, warn};

use super::budget::Budget;
use super::policy::Caller;
use super::{AuthError, Authenticate, ClaimIndex, Gateway};
use crate::cloud::tencent::Transport;
use crate::kube::crd::VpcIPClaim;

/// The audience of the agents' projected tokens: a token for the gateway
/// is no token for the API server, and the reverse.
pub const AUDIENCE: &str = "vpc-cni-gateway";
/// The review's extra field naming the node of the token's pod.
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// The Node label naming its instance type (set by the kubelet or the
/// cloud controller): nodes of one type share their ENI limits.
const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// How long a reviewed token is trusted before it is reviewed again.
const REVIEWED_FOR: Duration = Duration::from_secs(60);
/// Tokens kept reviewed at most (one or two per node).
const MAX_REVIEWED: usize = 50_000;
/// The largest request body read (a VPC request is a few hundred bytes).
const MAX_BODY: usize = 64 << 10;
/// How long a client may take to send its headers, then its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (each agent keeps one alive; a cluster has
/// up to 5,000 nodes).
const MAX_CONNECTIONS: usize = 16_384;

/// Settings of the gateway.
#[derive(Clone, Debug)]
pub struct Options {
    /// The port (0: no gateway).
    pub port: u16,
    /// The cluster name the nodes' ENIs are tagged with.
    pub cluster: String,
    /// The agents' service account, `NAMESPACE:NAME`.
    pub agent_account: String,
    /// The share of the account's documented rates the gateway uses.
    pub rate_share: f64,
}

/// Callers known by `TokenReview`.
pub struct Reviews {
    client: Client,
    nodes: Store<Node>,
    /// `system:serviceaccount:NAMESPACE:NAME` of the agents.
    username: String,
    reviewed: Mutex<HashMap<String, (Caller, Instant)>>,
}

impl std::fmt::Debug for Reviews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviews")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Reviews {
    /// Reviews by `client`, for tokens of `agent_account`
    /// (`NAMESPACE:NAME`), nodes' instances from `nodes`.
    pub fn new(client: Client, nodes: Store<Node>, agent_account: &str) -> Reviews {
        Reviews {
            client,
            nodes,
            username: format!("system:serviceaccount:{agent_account}"),
            reviewed: Mutex::default(),
        }
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Invalid(format!(
                "the token is not valid for audience {AUDIENCE}: {}",
                status.error.unwrap_or_default()
            )));
        }
        let user = status.user.unwrap_or_default();
        if user.username.as_deref() != Some(self.username.as_str()) {
            return Err(AuthError::Invalid(format!(
                "{} is not the agents' service account",
                user.username.unwrap_or_default()
            )));
        }
        let node = user
            .extra
            .as_ref()
            .and_then(|e| e.get(NODE_NAME))
            .and_then(|v| v.first())
            .cloned()
            .ok_or_else(|| {
                AuthError::Invalid("the token is bound to no pod on a node".to_string())
            })?;
        let known = self.nodes.get(&ObjectRef::new(&node));
        let instance = known
            .as_ref()
            .and_then(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.provider_id.as_ref())
                    .and_then(|p| p.rsplit('/').next())
                    .filter(|id| !id.is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| node.clone());
        let instance_type = known.as_ref().and_then(|n| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(INSTANCE_TYPE))
                .filter(|t| !t.is_empty())
                .cloned()
        });
        Ok(Caller {
            node,
            instance,
            instance_type,
        })
    }
}

impl Authenticate for Reviews {
    async fn caller(&self, token: &str) -> Result<Caller, AuthError> {
        let now = Instant::now();
        if let Some((caller, at)) = self
            .reviewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            && now.duration_since(*at) < REVIEWED_FOR
        {
            return Ok(caller.clone());
        }
        let caller = self.review(token).await?;
        let mut reviewed = self.reviewed.lock().unwrap_or_else(|p| p.into_inner());
        if reviewed.len() >= MAX_REVIEWED {
            reviewed.retain(|_, (_, at)| now.duration_since(*at) < REVIEWED_FOR);
        }
        if reviewed.len() < MAX_REVIEWED {
            reviewed.insert(token.to_string(), (caller.clone(), now));
        }
        Ok(caller)
    }
}

/// The holder of each claimed address (or a claim's IPv6 address), from a
/// cache of the claims.
pub fn claim_index(claims: Store<VpcIPClaim>) -> ClaimIndex {
    Arc::new(move |ip: &str| {
        claims.state().iter().find_map(|c| {
            c.status
                .as_ref()
                .filter(|s| (s.ip == ip || s.ipv6.as_deref() == Some(ip)) && !s.node.is_empty())
                .map(|s| s.node.clone())
        })
    })
}

/// Serves the gateway until the process is stopped.
pub async fn serve(
    client: Client,
    transport: Arc<Transport>,
    options: Options,
) -> Result<(), String> {
    let (claims, _) = crate::kube::cache(
        Api::<VpcIPClaim>::all(client.clone()),
        watcher::Config::default(),
        "gateway claims",
    );
    let (nodes, _) = crate::kube::cache(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        "gateway nodes",
    );
    // Not listening before the caches are: an empty claims cache would
    // refuse a static IP's move, an empty nodes cache name instances wrong.
    claims
        .wait_until_ready()
        .await
        .map_err(|e| format!("claims cache: {e}"))?;
    nodes
        .wait_until_ready()
        .await
        .map_err(|e| format!("nodes cache: {e}"))?;
    let gateway = Arc::new(Gateway::new(
        Reviews::new(client, nodes, &options.agent_account),
        transport,
        Budget::documented(options.rate_share),
        &options.cluster,
        claim_index(claims),
    ));
    let listener = crate::listen::bind_when_free(("0.0.0.0", options.port), "cloud gateway")
        .await
        .map_err(|e| format!("gateway port {}: {e}", options.port))?;
    info!(port = options.port, cluster = %options.cluster, share = options.rate_share, "cloud gateway serving");
    serve_on(listener, gateway).await
}

/// Serves `gateway` on `listener` until the process is stopped.
pub async fn serve_on<A: Authenticate>(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway<A>>,
) -> Result<(), String> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "gateway accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(%peer, max = MAX_CONNECTIONS, "gateway connections at their cap; closed");
            continue;
        };
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |r| handle(Arc::clone(&gateway), r));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "gateway connection ended");
            }
        });
    }
}

async fn handle<A: Authenticate>(
    gateway: Arc<Gateway<A>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => Ok(reply(StatusCode::OK, b"ok".to_vec())),
        (&Method::POST, "/") => {
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let action = header("x-tc-action").unwrap_or_default();
            let bearer =
                header("authorization").and_then(|a| a.strip_prefix("Bearer ").map(str::to_string));
            let body = Limited::new(request.into_body(), MAX_BODY).collect();
            let body = match tokio::time::timeout(READ_TIMEOUT, body).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) => {
                    return Ok(reply(StatusCode::BAD_REQUEST, e.to_string().into_bytes()));
                }
                Err(_) => return Ok(reply(StatusCode::REQUEST_TIMEOUT, Vec::new())),
            };
            let (status, text) = gateway.handle(&action, bearer.as_deref(), &body).await;
            let mut response = reply(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                text.into_bytes(),
            );
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            Ok(response)
        }
        _ => Ok(reply(StatusCode::NOT_FOUND, Vec::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::tencent::tests::{client, emulator};
    use crate::cloud::tencent::{CredentialSource, Identity, Settings, identity_from_metadata};
    use crate::cloud::{Cloud, CloudError, TencentCloud};
    use std::net::Ipv4Addr;

    /// Tokens `tok-1` and `tok-2` stand for the emulator's two instances.
    struct Tokens;

    impl Authenticate for Tokens {
        async fn caller(&self, token: &str) -> Result<Caller, AuthError> {
            let node = match token {
                "tok-1" => "ins-sim0001",
                "tok-2" => "ins-sim0002",
                _ => return Err(AuthError::Invalid("unknown token".into())),
            };
            Ok(Caller {
                node: node.into(),
                instance: node.into(),
                instance_type: None,
            })
        }
    }

    /// A node's client, as its agent makes it behind the gateway at `gw`.
    fn node(
        emulator: &str,
        gw: &str,
        instance: &str,
        token: &str,
        dir: &std::path::Path,
    ) -> TencentCloud {
        let token_file = dir.join(format!("{instance}-{token}.token"));
        std::fs::write(&token_file, format!("{token}\n")).expect("token");
        let identity = identity_from_metadata(
            &format!("http://{emulator}/{instance}"),
            Identity::default(),
            Duration::from_secs(5),
        )
        .expect("metadata");
        TencentCloud::new(Settings {
            endpoint: format!("http://{gw}"),
            region: identity.region.clone(),
            credentials: CredentialSource::Gateway { token_file },
            qps: 0.0,
            timeout: Duration::from_secs(5),
            identity,
            subnets: Vec::new(),
            cluster: "test".into(),
        })
    }

    fn refused(outcome: Result<impl std::fmt::Debug, CloudError>, code: &str) {
        match outcome {
            Err(CloudError::Auth(why)) => assert!(why.contains(code), "{why}"),
            other => panic!("not refused with {code}: {other:?}"),
        }
    }

    /// The agents' own client through the gateway over HTTP: a node does
    /// everything it needs with its own ENIs, nothing with another's, and
    /// takes another node's address only when the claim names it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_work_through_the_gateway_on_their_own_enis_only() {
        let e = emulator(&["--role-policy", "read-only"]);
        let claimed: Arc<Mutex<Option<(String, String)>>> = Arc::default();
        let index = Arc::clone(&claimed);
        let gateway = Arc::new(Gateway::new(
            Tokens,
            client(&e, "ins-sim0001", "client-secret").transport(),
            Budget::documented(1.0),
            "test",
            Arc::new(move |ip: &str| {
                let held = index.lock().unwrap_or_else(|p| p.into_inner());
                held.as_ref()
                    .filter(|(i, _)| i == ip)
                    .map(|(_, n)| n.clone())
            }),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gw = listener.local_addr().expect("address").to_string();
        tokio::spawn(serve_on(listener, gateway));
        let dir = tempfile::tempdir().expect("tempdir");
        let one = node(&e.address, &gw, "ins-sim0001", "tok-1", dir.path());
        let two = node(&e.address, &gw, "ins-sim0002", "tok-2", dir.path());

        let subnet = one.node().await.expect("reads").subnet.expect("subnet");
        let eni = one.create_eni(&subnet.id, 2).await.expect("create");
        one.attach_eni(&eni.id).await.expect("attach");
        let more = one
            .assign_ips(&eni.id, 1, &eni.secondary_ips)
            .await
            .expect("assign");
        assert_eq!(more.len(), 1);
        let ip: Ipv4Addr = eni.secondary_ips[0];

        // Node 2 against node 1's ENI: refused, whatever it tries.
        refused(
            two.assign_ips(&eni.id, 1, &[]).await,
            "UnauthorizedOperation",
        );
        refused(
            two.unassign_ips(&eni.id, &[ip]).await,
            "UnauthorizedOperation",
        );
        refused(two.detach_eni(&eni.id).await, "UnauthorizedOperation");
        refused(two.delete_eni(&eni.id).await, "UnauthorizedOperation");
        let own = two.create_eni(&subnet.id, 1).await.expect("its own ENI");
        two.attach_eni(&own.id).await.expect("attach its own");
        refused(
            two.migrate_ip(&eni.id, &own.id, ip).await,
            "UnauthorizedOperation",
        );
        // The claim names node 2: the static IP may follow its pod there.
        *claimed.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((ip.to_string(), "ins-sim0002".into()));
        two.migrate_ip(&eni.id, &own.id, ip)
            .await
            .expect("the claimed move");
        let listed = two.list_enis().await.expect("list");
        assert!(
            listed
                .iter()
                .any(|x| x.id == own.id && x.secondary_ips.contains(&ip))
        );

        // A token the gateway does not know is refused, not retried for long.
        let stranger = node(&e.address, &gw, "ins-sim0001", "forged", dir.path());
        let started = Instant::now();
        refused(stranger.list_enis().await, "TokenFailure");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// Many nodes' looks at once go to the cloud together: one call for
    /// many looks, each answered with its own node's ENIs only; limits and
    /// subnets are asked once for all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn looks_of_many_nodes_at_once_are_batched_and_answered_apart() {
        let e = emulator(&[]);
        let gateway = Arc::new(Gateway::new(
            Tokens,
            client(&e, "ins-sim0001", "client-secret").transport(),
            Budget::documented(1.0),
            "test",
            Arc::new(|_: &str| None),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gw = listener.local_addr().expect("address").to_string();
        tokio::spawn(serve_on(listener, Arc::clone(&gateway)));
        let dir = tempfile::tempdir().expect("tempdir");
        let one = node(&e.address, &gw, "ins-sim0001", "tok-1", dir.path());
        let two = node(&e.address, &gw, "ins-sim0002", "tok-2", dir.path());
        let before = gateway.counts();
        let mut looks = tokio::task::JoinSet::new();
        for i in 0..40 {
            let cloud = if i % 2 == 0 { one.clone() } else { two.clone() };
            looks.spawn(async move { (i % 2, cloud.list_enis().await.expect("listed")) });
        }
        while let Some(done) = looks.join_next().await {
            let (who, enis) = done.expect("task");
            let instance = if who == 0 {
                "ins-sim0001"
            } else {
                "ins-sim0002"
            };
            assert!(!enis.is_empty());
            assert!(
                enis.iter()
                    .all(|e| e.attached_to.as_deref() == Some(instance)),
                "{instance} got another node's ENIs: {enis:?}"
            );
        }
        let after = gateway.counts();
        let (calls, answered) = (
            after.batch_calls - before.batch_calls,
            after.batched_looks - before.batched_looks,
        );
        assert_eq!(answered, 40);
        assert!(calls < answered, "{calls} calls for {answered} looks");
        // Limits and subnets: asked once whoever asks.
        for cloud in [&one, &two, &one] {
            cloud.node().await.expect("node");
        }
        let sent = gateway.counts().relay.sent - after.relay.sent;
        assert!(
            sent <= 3,
            "{sent} calls for three nodes' limits and subnets"
        );
    }
}
