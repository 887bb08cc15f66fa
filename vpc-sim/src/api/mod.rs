//! The emulator: the Tencent Cloud VPC API (version 2017-03-12) over HTTP,
//! with the same envelope (`Response{..., RequestId}`,
//! `Response.Error{Code, Message}`), TC3-HMAC-SHA256 signatures and clock
//! skew checked, backed by the simulated world, plus the instance metadata
//! paths of every node. [`Emulator::handle`] is a plain function from a
//! request to a response, so it is tested without sockets; `vpc-sim serve`
//! puts it behind a listener.

mod actions;
mod actions6;
pub mod cam;
pub mod http;
pub mod limits;
mod metadata;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tencent_api::errors::Kind;
use tencent_api::sign;

use crate::world::SharedWorld;
use limits::RateLimiter;
pub use limits::{ActionStats, ApiLimits};
pub use metadata::REGION;

/// The API version served.
pub const VERSION: &str = "2017-03-12";
/// The service name in signatures.
pub const SERVICE: &str = "vpc";
/// The largest accepted difference between a request's timestamp and now.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// An HTTP request as the emulator needs it.
#[derive(Clone, Debug, Default)]
pub struct HttpRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The path.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
    /// The caller's address (the metadata service answers by it).
    pub peer: Option<std::net::IpAddr>,
}

/// An HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
    /// The action was applied but its answer must be lost: the server
    /// sends nothing back (`--drop-responses`).
    pub dropped: bool,
}

/// The key pair the emulator accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// SecretId.
    pub secret_id: String,
    /// SecretKey.
    pub secret_key: String,
}

/// Injected failures, changeable while running.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", default)]
pub struct Faults {
    /// Share of API calls answered `RequestLimitExceeded` (0.0–1.0).
    pub throttle_rate: f64,
    /// Share of API calls answered `InternalError` (0.0–1.0).
    pub error_rate: f64,
    /// Latency added to every API call, in milliseconds.
    pub latency_ms: u64,
    /// How long an asynchronous task runs before `DescribeVpcTaskResult`
    /// reports it done, in milliseconds; an ENI being attached shows
    /// `ATTACHING` (being detached, `DETACHING`) meanwhile.
    pub task_latency_ms: u64,
}

/// An API error answered in the envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The error's kind (its code).
    pub kind: Kind,
    /// The message.
    pub message: String,
}

impl ApiError {
    fn new(kind: Kind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

/// The emulator.
#[derive(Debug)]
pub struct Emulator {
    world: SharedWorld,
    credentials: Credentials,
    faults: Mutex<Faults>,
    requests: AtomicU64,
    /// `ClientToken` → the response first given for it.
    tokens: Mutex<HashMap<String, Value>>,
    /// Asynchronous tasks by id, with when they finish (Unix ms).
    tasks: Mutex<HashMap<String, u64>>,
    /// ENIs in transition: their shown state and until when (Unix ms).
    transitions: Mutex<HashMap<String, (&'static str, u64)>>,
    /// Actions that always fail (to test a client's cleanup).
    failing: Mutex<Vec<String>>,
    /// Actions whose answer is lost after they were applied, and how
    /// often: the first of every `n` calls of each.
    dropping: Vec<String>,
    drop_every: u64,
    /// Calls so far of each dropped action.
    drop_counts: Mutex<HashMap<String, u64>>,
    /// Callers' addresses the metadata service knows besides the
    /// instances' own primary IPs (a node's management address), with the
    /// instance each one is.
    metadata_clients: HashMap<std::net::IpAddr, String>,
    /// The API's documented limits (rates per action, addresses per call).
    limits: ApiLimits,
    limiter: RateLimiter,
    /// The instances' CAM role and its temporary credentials.
    cam: cam::Cam,
    clock: fn() -> u64,
}

impl Emulator {
    /// An emulator over `world` accepting `credentials`.
    pub fn new(world: SharedWorld, credentials: Credentials, faults: Faults) -> Emulator {
        Emulator {
            world,
            credentials,
            faults: Mutex::new(faults),
            requests: AtomicU64::new(0),
            tokens: Mutex::default(),
            tasks: Mutex::default(),
            transitions: Mutex::default(),
            failing: Mutex::new(Vec::new()),
            dropping: Vec::new(),
            drop_every: 1,
            drop_counts: Mutex::default(),
            metadata_clients: HashMap::new(),
            limits: ApiLimits::unlimited(),
            limiter: RateLimiter::default(),
            cam: cam::Cam::new(cam::DEFAULT_LIFETIME_SECS),
            clock: unix_now,
        }
    }

    /// The same emulator, its temporary credentials (the instances' CAM
    /// role, from the metadata service) valid for `secs`.
    pub fn credential_lifetime(mut self, secs: u64) -> Emulator {
        let policy = self.cam.policy;
        self.cam = cam::Cam::new(secs);
        self.cam.policy = policy;
        self
    }

    /// The same emulator, the instances' role granted what `policy` says.
    pub fn role_policy(mut self, policy: cam::RolePolicy) -> Emulator {
        self.cam.policy = policy;
        self
    }

    /// The same emulator, enforcing `limits`: each action's request rate
    /// for all callers together (`RequestLimitExceeded` beyond it) and the
    /// addresses one call may name. [`Emulator::new`] limits no rate.
    pub fn limited(mut self, limits: ApiLimits) -> Emulator {
        self.limits = limits;
        self
    }

    /// Calls and throttled calls so far, by action.
    pub fn stats(&self) -> std::collections::BTreeMap<String, ActionStats> {
        self.limiter.stats()
    }

    /// The same emulator, failing every call of `actions` with
    /// `UnsupportedOperation.InvalidState`.
    pub fn failing(self, actions: Vec<String>) -> Emulator {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = actions;
        self
    }

    /// The same emulator, applying the first of every `every` calls of each
    /// of `actions` and then losing its answer, as when a response is lost
    /// in the network: the client cannot tell whether the call took effect.
    pub fn dropping(mut self, actions: Vec<String>, every: u64) -> Emulator {
        self.dropping = actions;
        self.drop_every = every.max(1);
        self
    }

    /// The same emulator, answering `GET /latest/meta-data/...` from each
    /// of `clients` (caller address → instance id) as that instance.
    pub fn metadata_clients(mut self, clients: HashMap<std::net::IpAddr, String>) -> Emulator {
        self.metadata_clients = clients;
        self
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers one HTTP request.
    pub fn handle(&self, req: &HttpRequest) -> HttpResponse {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/") => self.api(req),
            ("GET", "/_sim/faults") => json_response(200, &json!(self.faults())),
            ("GET", "/_sim/stats") => json_response(200, &json!(self.stats())),
            // The actions that fail (`--fail-actions`), replaced at run time:
            // a JSON list of action names.
            ("POST", "/_sim/fail-actions") => {
                match serde_json::from_slice::<Vec<String>>(&req.body) {
                    Ok(actions) => {
                        let answer = json!(actions);
                        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = actions;
                        json_response(200, &answer)
                    }
                    Err(e) => text_response(400, &format!("bad action list: {e}")),
                }
            }
            // The instance (a JSON string, its id) is released, as far as
            // its ENIs go: its secondary ENIs are detached and kept, with
            // their addresses, as the cloud leaves them when an instance is
            // terminated. Answers the ids detached.
            ("POST", "/_sim/release-instance") => {
                match serde_json::from_slice::<String>(&req.body) {
                    Ok(instance) => match self.world.update(|w| {
                        let ids: Vec<String> = w
                            .vpc
                            .enis_of(&instance)
                            .filter(|e| !e.primary)
                            .map(|e| e.id.clone())
                            .collect();
                        for id in &ids {
                            w.detach_eni(id)?;
                        }
                        Ok(ids)
                    }) {
                        Ok(ids) => json_response(200, &json!(ids)),
                        Err(e) => text_response(500, &e.to_string()),
                    },
                    Err(e) => text_response(400, &format!("bad instance id: {e}")),
                }
            }
            ("POST", "/_sim/faults") => match serde_json::from_slice::<Faults>(&req.body) {
                Ok(f) => {
                    *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = f;
                    json_response(200, &json!(f))
                }
                Err(e) => text_response(400, &format!("bad faults: {e}")),
            },
            ("GET", path) => {
                let role = metadata::caller(&self.world, path, req.peer, &self.metadata_clients)
                    .and_then(|(instance, key)| {
                        let rest = key.strip_prefix("cam/security-credentials")?;
                        let rest = rest.strip_prefix('/').unwrap_or(rest);
                        Some(self.cam.metadata(rest, &instance, (self.clock)()))
                    });
                if let Some(answer) = role {
                    return match answer {
                        Some(text) => text_response(200, &text),
                        None => text_response(404, "not found"),
                    };
                }
                match metadata::answer(&self.world, path, req.peer, &self.metadata_clients) {
                    Some(text) => text_response(200, &text),
                    None => text_response(404, "not found"),
                }
            }
            _ => text_response(404, "not found"),
        }
    }

    fn api(&self, req: &HttpRequest) -> HttpResponse {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let request_id = format!(
            "{:08x}-sim0-4000-8000-{:012x}",
            (self.clock)() & 0xffff_ffff,
            n
        );
        let mut drop = false;
        let outcome = self.authenticate(req).and_then(|(action, role)| {
            if role && !self.cam.policy.grants(&action) {
                return Err(ApiError::new(
                    Kind::Unauthorized,
                    format!("the instance's role is not granted {action}"),
                ));
            }
            if !self.limiter.admit(&self.limits, &action, now_ms()) {
                return Err(ApiError::new(
                    Kind::Throttled,
                    "The number of requests exceeds the frequency limit.",
                ));
            }
            let faults = self.faults();
            if faults.latency_ms > 0 {
                std::thread::sleep(std::time::Duration::from_millis(faults.latency_ms));
            }
            if chance(n, 1, faults.throttle_rate) {
                return Err(ApiError::new(
                    Kind::Throttled,
                    "request rate limit exceeded (injected)",
                ));
            }
            if chance(n, 2, faults.error_rate) {
                return Err(ApiError::new(Kind::Internal, "internal error (injected)"));
            }
            let params: Value = if req.body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&req.body).map_err(|e| {
                    ApiError::new(Kind::InvalidParameter, format!("body is not JSON: {e}"))
                })?
            };
            let out = self.action(&action, &params, &request_id, self.limits.max_addresses);
            drop = out.is_ok() && self.drops(&action);
            out
        });
        let body = match outcome {
            Ok(Value::Object(mut fields)) => {
                fields.insert("RequestId".into(), json!(request_id));
                json!({ "Response": fields })
            }
            Ok(other) => json!({ "Response": { "Result": other, "RequestId": request_id } }),
            Err(e) => json!({ "Response": {
                "Error": { "Code": e.kind.code(), "Message": e.message },
                "RequestId": request_id,
            }}),
        };
        HttpResponse {
            dropped: drop,
            ..json_response(200, &body)
        }
    }

    /// Whether this call's answer is to be lost (`--drop-responses`).
    fn drops(&self, action: &str) -> bool {
        if !self.dropping.iter().any(|a| a == action) {
            return false;
        }
        let mut counts = self.drop_counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(action.to_string()).or_insert(0);
        *n += 1;
        (*n - 1).is_multiple_of(self.drop_every)
    }

    /// Checks headers, clock skew and signature; returns the action and
    /// whether the caller signed with the role's temporary credentials.
    fn authenticate(&self, req: &HttpRequest) -> Result<(String, bool), ApiError> {
        let header = |name: &str| req.headers.get(name).map(String::as_str);
        let action = header("x-tc-action")
            .ok_or_else(|| ApiError::new(Kind::InvalidParameter, "missing X-TC-Action"))?;
        if let Some(version) = header("x-tc-version")
            && version != VERSION
        {
            return Err(ApiError::new(
                Kind::InvalidParameter,
                format!("version {version} is not {VERSION}"),
            ));
        }
        let timestamp: u64 = header("x-tc-timestamp")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                ApiError::new(Kind::InvalidParameter, "missing or bad X-TC-Timestamp")
            })?;
        if (self.clock)().abs_diff(timestamp) > MAX_CLOCK_SKEW_SECS {
            return Err(ApiError::new(
                Kind::SignatureExpired,
                "the request's timestamp is too far from the server's clock",
            ));
        }
        let auth = sign::Authorization::parse(header("authorization").unwrap_or_default())
            .map_err(|e| ApiError::new(Kind::SignatureFailure, e.to_string()))?;
        // The long-term key, or temporary credentials of the instances'
        // role (with their token, before their expiry).
        let (secret_key, role) =
            match self
                .cam
                .verify(&auth.secret_id, header("x-tc-token"), (self.clock)())
            {
                Some(temporary) => (temporary?, true),
                None if auth.secret_id == self.credentials.secret_id => {
                    (self.credentials.secret_key.clone(), false)
                }
                None => {
                    return Err(ApiError::new(
                        Kind::SecretIdNotFound,
                        "the SecretId is not found",
                    ));
                }
            };
        let signed = sign::Request {
            service: &auth.service,
            host: header("host").unwrap_or_default(),
            content_type: header("content-type").unwrap_or_default(),
            payload: &req.body,
            timestamp,
        };
        if auth.signed_headers != sign::SIGNED_HEADERS
            || auth.date != signed.date()
            || signed.signature(&secret_key) != auth.signature
        {
            return Err(ApiError::new(
                Kind::SignatureFailure,
                "the provided credentials could not be validated",
            ));
        }
        Ok((action.to_string(), role))
    }

    fn action(
        &self,
        action: &str,
        params: &Value,
        request_id: &str,
        max_addresses: usize,
    ) -> Result<Value, ApiError> {
        if self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|a| a == action)
        {
            return Err(ApiError::new(
                Kind::InvalidState,
                format!("{action} fails in this simulation (--fail-actions)"),
            ));
        }
        let token = params
            .get("ClientToken")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(t) = &token
            && let Some(previous) = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(t)
        {
            return Ok(previous.clone());
        }
        let out = match action {
            "DescribeVpcTaskResult" => {
                let id = params
                    .get("TaskId")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let status = self
                    .task(id)
                    .ok_or_else(|| ApiError::new(Kind::NotFound, format!("task {id} not found")))?;
                json!({ "Status": status, "Output": "" })
            }
            "DescribeNetworkInterfaces" => {
                let mut out = actions::run(&self.world, action, params, max_addresses)?;
                self.show_transitions(&mut out);
                out
            }
            _ => actions::run(&self.world, action, params, max_addresses)?,
        };
        if tencent_api::is_async(action) {
            let done = now_ms() + self.faults().task_latency_ms;
            self.tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(request_id.to_string(), done);
            let shown = match action {
                "AttachNetworkInterface" => Some("ATTACHING"),
                "DetachNetworkInterface" => Some("DETACHING"),
                _ => None,
            };
            if let (Some(state), Some(eni)) = (
                shown,
                params.get("NetworkInterfaceId").and_then(Value::as_str),
            ) {
                self.transitions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(eni.to_string(), (state, done));
            }
        }
        if let Some(t) = token {
            self.tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(t, out.clone());
        }
        Ok(out)
    }

    /// The status of an asynchronous task, for `DescribeVpcTaskResult`.
    pub fn task(&self, id: &str) -> Option<&'static str> {
        let done = *self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)?;
        Some(if now_ms() < done {
            "RUNNING"
        } else {
            "SUCCESS"
        })
    }

    /// Shows ENIs still in an attach or detach task as `ATTACHING` or
    /// `DETACHING`.
    fn show_transitions(&self, out: &mut Value) {
        let now = now_ms();
        let transitions = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        for eni in out
            .get_mut("NetworkInterfaceSet")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let id = eni
                .get("NetworkInterfaceId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Some((state, until)) = transitions.get(&id)
                && now < *until
            {
                eni["State"] = json!(state);
            }
        }
    }
}

/// Deterministic pseudo-random draw for fault injection.
fn chance(n: u64, salt: u64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 29;
    (x as f64 / u64::MAX as f64) < rate
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json_response(status: u16, v: &Value) -> HttpResponse {
    HttpResponse {
        status,
        content_type: "application/json",
        body: v.to_string().into_bytes(),
        dropped: false,
    }
}

fn text_response(status: u16, s: &str) -> HttpResponse {
    HttpResponse {
        status,
        content_type: "text/plain",
        body: s.as_bytes().to_vec(),
        dropped: false,
    }
}
