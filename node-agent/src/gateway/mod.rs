//! The cluster's cloud gateway, in the cluster component: the one holder
//! of a VPC write key. Nodes send it the same VPC API requests they would
//! send the cloud, with their service-account token instead of a
//! signature; it finds out which node asks (a `TokenReview`: the token's
//! pod and node), lets through only what is that node's to do
//! ([`policy`]), spaces the calls under the account's documented rates
//! ([`budget`], [`relay`]), makes the reads many nodes make alike once for
//! all of them ([`reads`]), signs the calls with its own credentials and
//! hands the cloud's answer back unchanged. A compromised node thus holds
//! no key, and its token changes nothing of another node's.

pub mod budget;
pub mod policy;
pub mod reads;
pub mod relay;
#[cfg(feature = "kubernetes")]
pub mod serve;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tencent_api::errors::Kind;
use tracing::{debug, info, warn};

use crate::cloud::CloudError;
use crate::cloud::tencent::TAG_NODE;
use crate::cloud::tencent::Transport;
use budget::Budget;
use policy::{Caller, Facts, Refusal};
use reads::{Batches, Memo, Read};
use relay::{Relay, Unsent};

/// Why a token does not say who calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// Not a valid token of the agents' service account, bound to a pod on
    /// a node (`AuthFailure.TokenFailure`: the agent reads its file again).
    Invalid(String),
    /// The cluster could not be asked (`InternalError`: retried).
    Unavailable(String),
}

/// Who a bearer token stands for.
pub trait Authenticate: Send + Sync + 'static {
    /// The caller `token` stands for.
    fn caller(&self, token: &str) -> impl Future<Output = Result<Caller, AuthError>> + Send;
}

/// The node whose `VpcIPClaim` holds an address, as the cluster says.
pub type ClaimIndex = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The gateway.
pub struct Gateway<A> {
    auth: A,
    relay: Arc<Relay>,
    memo: Memo,
    batches: Arc<Batches>,
    cluster: String,
    claims: ClaimIndex,
    /// ENI id → the instance it is tagged for (tags never change).
    eni_tags: Mutex<HashMap<String, String>>,
    requests: AtomicU64,
}

impl<A> std::fmt::Debug for Gateway<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("cluster", &self.cluster)
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

/// One answer: the HTTP status and the body.
pub type Answer = (u16, String);

/// What a gateway did, for the figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// The calls to the cloud.
    pub relay: relay::Counts,
    /// Of them, batched looks at ENIs by id.
    pub batch_calls: u64,
    /// The nodes' looks those answered.
    pub batched_looks: u64,
}

impl<A: Authenticate> Gateway<A> {
    /// A gateway signing with `transport`'s credentials, for the ENIs of
    /// `cluster`, within `budget`.
    pub fn new(
        auth: A,
        transport: Arc<Transport>,
        budget: Budget,
        cluster: &str,
        claims: ClaimIndex,
    ) -> Gateway<A> {
        let relay = Arc::new(Relay::new(transport, budget));
        Gateway {
            auth,
            batches: Arc::new(Batches::new(Arc::clone(&relay))),
            relay,
            memo: Memo::default(),
            cluster: cluster.to_string(),
            claims,
            eni_tags: Mutex::default(),
            requests: AtomicU64::new(0),
        }
    }

    /// Answers one request: `action` (`X-TC-Action`), the bearer token of
    /// `Authorization`, and the JSON body.
    pub async fn handle(&self, action: &str, bearer: Option<&str>, body: &[u8]) -> Answer {
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            return self.error(
                Kind::SignatureFailure,
                "no bearer token: the gateway takes a service-account token, not a signature",
            );
        };
        let caller = match self.auth.caller(token).await {
            Ok(c) => c,
            Err(AuthError::Invalid(why)) => return self.error(Kind::TokenFailure, &why),
            Err(AuthError::Unavailable(why)) => {
                return self.error(Kind::Internal, &format!("cannot check the token: {why}"));
            }
        };
        let params: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return self.error(Kind::InvalidParameter, &format!("body is not JSON: {e}"));
                }
            }
        };
        let need = match policy::needs(&caller, &self.cluster, action, &params) {
            Ok(n) => n,
            Err(why) => return self.refuse(&caller, action, &why),
        };
        match policy::judge(&caller, &need, self).await {
            Ok(()) => {}
            Err(Refusal::Denied(why)) => return self.refuse(&caller, action, &why),
            Err(Refusal::Unknown(e)) => {
                return self.error(Kind::Internal, &format!("cannot check the call: {e}"));
            }
        }
        let answer = match self.send(&caller, action, &params).await {
            Ok(a) => a,
            Err(Unsent::Busy(queue)) => {
                return self.error(
                    Kind::Throttled,
                    &format!("{action}: more calls wait than the account's rate serves in {queue:?}; try again later"),
                );
            }
            Err(Unsent::Failed(e)) => return self.error(Kind::Internal, &format!("{action}: {e}")),
        };
        self.learn(&caller, action, &params, &answer);
        if action.starts_with("Describe") {
            debug!(node = %caller.node, action, "relayed");
        } else {
            let eni = params["NetworkInterfaceId"].as_str().unwrap_or_default();
            info!(node = %caller.node, action, eni, "relayed");
        }
        answer
    }

    /// Sends the call in its action's turn, with the gateway's signature,
    /// or answers it with what another node's same read was answered, or
    /// in a batch with other nodes' looks at ENIs.
    async fn send(&self, caller: &Caller, action: &str, params: &Value) -> Result<Answer, Unsent> {
        match reads::classify(caller, action, params) {
            Read::Relay => self.relay.send(action, params).await,
            Read::Shared { key, ttl } => {
                self.memo
                    .get(&key, ttl, self.relay.send(action, params))
                    .await
            }
            Read::Batched(look) => self.batches.describe(look).await,
        }
    }

    /// What the relay and the batches did so far.
    pub fn counts(&self) -> Counts {
        let (batch_calls, batched_looks) = self.batches.counts();
        Counts {
            relay: self.relay.counts(),
            batch_calls,
            batched_looks,
        }
    }

    /// Keeps the tag of an ENI the caller just created; forgets a deleted
    /// one.
    fn learn(&self, caller: &Caller, action: &str, params: &Value, answer: &Answer) {
        let ok = |v: &Value| v["Response"].get("Error").is_none();
        let Ok(v) = serde_json::from_str::<Value>(&answer.1) else {
            return;
        };
        let mut tags = self.eni_tags.lock().unwrap_or_else(|p| p.into_inner());
        match action {
            "CreateNetworkInterface" if ok(&v) => {
                if let Some(id) = v["Response"]["NetworkInterface"]["NetworkInterfaceId"].as_str() {
                    tags.insert(id.to_string(), caller.instance.clone());
                }
            }
            "DeleteNetworkInterface" if ok(&v) => {
                if let Some(id) = params.get("NetworkInterfaceId").and_then(Value::as_str) {
                    tags.remove(id);
                }
            }
            _ => {}
        }
    }

    fn refuse(&self, caller: &Caller, action: &str, why: &str) -> Answer {
        warn!(node = %caller.node, instance = %caller.instance, action, reason = why, "call refused");
        self.error(Kind::Unauthorized, why)
    }

    /// An answer in the API's own shape (HTTP 200, `Response.Error`).
    fn error(&self, kind: Kind, message: &str) -> Answer {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let body = json!({ "Response": {
            "Error": { "Code": kind.code(), "Message": format!("vpc-cni gateway: {message}") },
            "RequestId": format!("vpc-cni-gateway-{n}"),
        }});
        (200, body.to_string())
    }
}

impl<A: Authenticate> Facts for Gateway<A> {
    async fn eni_node(&self, id: &str) -> Result<Option<String>, CloudError> {
        if let Some(node) = self
            .eni_tags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(Some(node.clone()));
        }
        let (status, text) = self
            .batches
            .describe(reads::Look {
                lane: reads::Lane::Ids,
                values: vec![id.to_string()],
                limit: 1,
            })
            .await
            .map_err(|e| match e {
                Unsent::Busy(_) => CloudError::Throttled(format!("looking at ENI {id}")),
                Unsent::Failed(e) => e,
            })?;
        let answer =
            crate::cloud::tencent::decode_response("DescribeNetworkInterfaces", status, &text)
                .map_err(|(_, e)| e)?;
        let tag = answer["NetworkInterfaceSet"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["NetworkInterfaceId"].as_str() == Some(id))
            .flat_map(|e| e["TagSet"].as_array().cloned().unwrap_or_default())
            .find(|t| t["Key"].as_str() == Some(TAG_NODE))
            .and_then(|t| t["Value"].as_str().map(str::to_string));
        if let Some(node) = &tag {
            self.eni_tags
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_string(), node.clone());
        }
        Ok(tag)
    }

    fn claim_holder(&self, ip: &str) -> Option<String> {
        (self.claims)(ip)
    }
}
