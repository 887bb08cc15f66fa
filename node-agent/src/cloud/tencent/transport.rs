//! One signed call of the VPC API, with the client's rate limit, retries
//! on throttling, server errors and timeouts, and polling of asynchronous
//! actions to completion. Blocking: the agent runs it off its runtime.
//!
//! A call whose outcome is unknown (no answer, a timeout, a server error,
//! a task that cannot be confirmed) may have taken effect. Reads and
//! idempotent calls are simply sent again ([`Transport::call`]); a call
//! that must not be applied twice looks first ([`Transport::call_once_only`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tencent_api::errors::Kind;
use tencent_api::sign;
use tracing::{debug, info, warn};

use super::credentials::{CredentialSource, Keyring};
use super::retry::{AdaptiveRate, RateLimiter, RetryPolicy, jitter_seed, task_poll_delay};
use crate::cloud::CloudError;

/// The API version spoken.
pub const VERSION: &str = "2017-03-12";
/// How long an asynchronous action may take.
pub const TASK_DEADLINE: Duration = Duration::from_secs(120);
/// How long a connection to the API (or a gateway replica) may take: one
/// that does not come is a replica gone, and the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a throttled call keeps being retried: the API's limits are the
/// account's, shared by every node, so a cold start of a large cluster is
/// throttled for minutes; giving up early only starts the wait again.
pub const THROTTLE_DEADLINE: Duration = Duration::from_secs(300);
/// The first look at an asynchronous task with `DescribeVpcTaskResult`,
/// then half as long again each time, up to [`TASK_POLL_CAP`].
pub const TASK_POLL_FIRST: Duration = Duration::from_millis(150);
/// The first look at the resource of a task confirmed by looking
/// ([`Confirm::Look`]): an attach takes about a second, and at 2,000 nodes
/// every look more per node costs 20 s of the account's
/// `DescribeNetworkInterfaces` budget.
pub const LOOK_FIRST: Duration = Duration::from_millis(500);
/// The first looks while pods wait for the task's result (see
/// [`Transport::set_urgent`]): a burst of pods on a cold node is served in
/// a few hundred milliseconds for a few more calls.
pub const TASK_POLL_FIRST_URGENT: Duration = Duration::from_millis(30);
/// [`LOOK_FIRST`] while pods wait.
pub const LOOK_FIRST_URGENT: Duration = Duration::from_millis(100);
/// The longest wait between two looks at a task.
pub const TASK_POLL_CAP: Duration = Duration::from_secs(5);

/// How a throttled call waits before it is sent again: capped exponential
/// backoff with full jitter, longer than for server errors.
const THROTTLE_BACKOFF: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base: Duration::from_millis(500),
    cap: Duration::from_secs(10),
};

/// How an asynchronous call is confirmed done.
pub enum Confirm<'a> {
    /// Poll `DescribeVpcTaskResult` with the call's `RequestId`.
    Task,
    /// Look at the resource instead (`DescribeNetworkInterfaces`, whose
    /// budget is five times `DescribeVpcTaskResult`'s): `Some(true)` done,
    /// `Some(false)` still running, `None` the change is not there (failed).
    Look(&'a dyn Fn(&Transport) -> Result<Option<bool>, CloudError>),
}

impl std::fmt::Debug for Confirm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Confirm::Task => "Task",
            Confirm::Look(_) => "Look",
        })
    }
}

/// The HTTP side of the client.
#[derive(Debug)]
pub struct Transport {
    http: ureq::Agent,
    /// Where requests go: one endpoint, or the cloud gateway's ready
    /// replicas ([`Transport::set_endpoints`]), the first used until it
    /// cannot be reached. None: not known yet (calls fail as retryable).
    endpoints: Mutex<Endpoints>,
    host: String,
    region: String,
    keyring: Keyring,
    limiter: Mutex<RateLimiter>,
    /// The adaptive rate of each action (AIMD on `RequestLimitExceeded`).
    rates: Mutex<HashMap<String, AdaptiveRate>>,
    qps: f64,
    policy: RetryPolicy,
    /// Pods wait for the tasks started now: look at them sooner.
    urgent: std::sync::atomic::AtomicBool,
}

/// The endpoints a transport may send to, and the one in use.
#[derive(Debug, Default)]
struct Endpoints {
    list: Vec<String>,
    at: usize,
}

impl Endpoints {
    fn current(&self) -> Option<&String> {
        self.list.get(self.at)
    }
}

/// `endpoint` with one trailing slash; empty stays empty.
fn normalised(endpoint: &str) -> String {
    if endpoint.is_empty() {
        return String::new();
    }
    endpoint.trim_end_matches('/').to_string() + "/"
}

impl Transport {
    /// Sends the calls from now on to `endpoint`.
    pub fn set_endpoint(&self, endpoint: &str) {
        self.set_endpoints(&[endpoint.to_string()]);
    }

    /// Sends the calls from now on to the first of `endpoints` (the cloud
    /// gateway's ready replicas, in the order every node sees them), or the
    /// next when one cannot be reached; the one in use is kept while it is
    /// listed.
    pub fn set_endpoints(&self, endpoints: &[String]) {
        let list: Vec<String> = endpoints
            .iter()
            .map(|e| normalised(e))
            .filter(|e| !e.is_empty())
            .collect();
        let mut held = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if held.list == list {
            return;
        }
        let kept = held
            .current()
            .and_then(|c| list.iter().position(|e| e == c));
        info!(from = ?held.list, to = ?list, "cloud endpoints changed");
        *held = Endpoints {
            at: kept.unwrap_or(0),
            list,
        };
    }

    /// `endpoint` could not be reached: the next one listed is tried next.
    fn unreachable(&self, endpoint: &str) {
        let mut held = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if held.list.len() > 1 && held.current().map(String::as_str) == Some(endpoint) {
            held.at = (held.at + 1) % held.list.len();
            warn!(unreachable = endpoint, next = ?held.current(), "cloud endpoint unreachable; trying the next");
        }
    }

    /// Whether pods wait for the tasks started from now on.
    pub fn set_urgent(&self, urgent: bool) {
        self.urgent
            .store(urgent, std::sync::atomic::Ordering::SeqCst);
    }

    /// A transport to `endpoint` (`https://vpc.tencentcloudapi.com`, or the
    /// emulator's `http://...`).
    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: CredentialSource,
        qps: f64,
        timeout: Duration,
    ) -> Transport {
        // Behind the gateway a call may wait its turn there first.
        let exchange = match &credentials {
            CredentialSource::Gateway { .. } => timeout + super::GATEWAY_QUEUE,
            _ => timeout,
        };
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(exchange))
            .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)))
            .http_status_as_error(false)
            .build();
        let host = endpoint
            .split("://")
            .nth(1)
            .unwrap_or(endpoint)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        Transport {
            http: ureq::Agent::new_with_config(config),
            endpoints: Mutex::new(Endpoints {
                list: Some(normalised(endpoint))
                    .filter(|e| !e.is_empty())
                    .into_iter()
                    .collect(),
                at: 0,
            }),
            host,
            region: region.to_string(),
            keyring: Keyring::new(credentials, timeout),
            limiter: Mutex::new(RateLimiter::new(qps, Instant::now())),
            rates: Mutex::default(),
            qps,
            policy: RetryPolicy::default(),
            urgent: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Calls `action`, retrying what may be retried, and for an
    /// asynchronous action waits until its task has finished.
    pub fn call(&self, action: &str, params: &Value) -> Result<Value, CloudError> {
        let response = self.call_with_retries(action, params)?;
        if tencent_api::is_async(action)
            && let Some(task) = response.get("RequestId").and_then(Value::as_str)
        {
            self.wait_for_task(action, task, &Confirm::Task)
                .map_err(|(_, e)| e)?;
        }
        Ok(response)
    }

    fn call_with_retries(&self, action: &str, params: &Value) -> Result<Value, CloudError> {
        let mut attempt = 0;
        let mut throttled = 0;
        let started = Instant::now();
        loop {
            attempt += 1;
            match self.call_once(action, params) {
                Err((Kind::Throttled, e)) if started.elapsed() < THROTTLE_DEADLINE => {
                    throttled += 1;
                    let wait = THROTTLE_BACKOFF.backoff(throttled, jitter_seed());
                    if throttled == 1 {
                        info!(action, error = %e, wait_ms = wait.as_millis() as u64, "throttled; retrying");
                    } else {
                        debug!(action, attempt, error = %e, wait_ms = wait.as_millis() as u64, "throttled; retrying");
                    }
                    std::thread::sleep(wait);
                }
                Err((kind, e)) if kind.retryable() && attempt < self.policy.max_attempts => {
                    let wait = self.policy.backoff(attempt, jitter_seed());
                    warn!(action, attempt, error = %e, wait_ms = wait.as_millis() as u64, "cloud call failed; retrying");
                    std::thread::sleep(wait);
                }
                Err((_, e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
    }

    /// Calls `action`, which must not take effect twice (assigning a count
    /// of IPs, attaching). Throttling is retried as usual; when the outcome
    /// of an attempt is unknown, `applied` is asked before the next one
    /// whether it took effect after all: `Some(result)` ends the call with
    /// that result, `None` sends the request again.
    pub fn call_once_only<T>(
        &self,
        action: &str,
        params: &Value,
        answered: impl Fn(Value) -> Result<T, CloudError>,
        applied: impl Fn(&Transport) -> Result<Option<T>, CloudError>,
    ) -> Result<T, CloudError> {
        self.call_once_only_confirmed(action, params, &Confirm::Task, answered, applied)
    }

    /// [`call_once_only`](Self::call_once_only), its task confirmed as
    /// `confirm` says.
    pub fn call_once_only_confirmed<T>(
        &self,
        action: &str,
        params: &Value,
        confirm: &Confirm<'_>,
        answered: impl Fn(Value) -> Result<T, CloudError>,
        applied: impl Fn(&Transport) -> Result<Option<T>, CloudError>,
    ) -> Result<T, CloudError> {
        let mut attempt = 0;
        let mut throttled = 0;
        let started = Instant::now();
        loop {
            attempt += 1;
            let outcome = self.call_once(action, params).and_then(|response| {
                if tencent_api::is_async(action)
                    && let Some(task) = response.get("RequestId").and_then(Value::as_str)
                {
                    self.wait_for_task(action, task, confirm)?;
                }
                Ok(response)
            });
            let error = match outcome {
                Ok(response) => return answered(response),
                Err((Kind::Throttled, e)) if started.elapsed() >= THROTTLE_DEADLINE => {
                    return Err(e);
                }
                Err((Kind::Throttled, e)) => {
                    throttled += 1;
                    if throttled == 1 {
                        info!(action, error = %e, "throttled; retrying");
                    } else {
                        debug!(action, attempt, error = %e, "throttled; retrying");
                    }
                    std::thread::sleep(THROTTLE_BACKOFF.backoff(throttled, jitter_seed()));
                    attempt -= 1;
                    continue;
                }
                Err((Kind::Internal, e)) => e,
                Err((_, e)) => return Err(e),
            };
            warn!(action, attempt, error = %error, "outcome unknown; looking before sending again");
            self.pause(attempt);
            if let Some(result) = applied(self)? {
                debug!(action, "the earlier attempt took effect");
                return Ok(result);
            }
            if attempt >= self.policy.max_attempts {
                return Err(error);
            }
        }
    }

    /// Waits `normal` before the next look at a task, or only `urgent`
    /// once pods wait for it (they may start waiting meanwhile).
    fn pause_before_look(&self, normal: Duration, urgent: Duration) {
        let started = Instant::now();
        loop {
            let wait = if self.urgent.load(std::sync::atomic::Ordering::SeqCst) {
                urgent
            } else {
                normal
            };
            let Some(left) = wait.checked_sub(started.elapsed()).filter(|d| !d.is_zero()) else {
                return;
            };
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
    }

    fn pause(&self, attempt: u32) {
        std::thread::sleep(self.policy.backoff(attempt, jitter_seed()));
    }

    /// Waits until the task is done, looking again after growing pauses
    /// ([`task_poll_delay`]). A task reported failed is a refusal; one that
    /// cannot be confirmed (polling failed, or it ran past the deadline)
    /// has an unknown outcome ([`Kind::Internal`]).
    fn wait_for_task(
        &self,
        action: &str,
        task: &str,
        confirm: &Confirm<'_>,
    ) -> Result<(), (Kind, CloudError)> {
        let started = Instant::now();
        let deadline = started + TASK_DEADLINE;
        let mut polls = 0;
        let (normal, urgent) = match confirm {
            Confirm::Task => (TASK_POLL_FIRST, TASK_POLL_FIRST_URGENT),
            Confirm::Look(_) => (LOOK_FIRST, LOOK_FIRST_URGENT),
        };
        loop {
            let seed = jitter_seed();
            self.pause_before_look(
                task_poll_delay(polls, normal, TASK_POLL_CAP, seed),
                task_poll_delay(polls, urgent, TASK_POLL_CAP, seed),
            );
            polls += 1;
            let done = match confirm {
                Confirm::Task => self.task_status(action, task)?,
                Confirm::Look(look) => match look(self).map_err(|e| (Kind::Internal, e))? {
                    Some(done) => done,
                    None => {
                        return Err((
                            Kind::Internal,
                            CloudError::Other(format!(
                                "{action} task {task}: its change is not there"
                            )),
                        ));
                    }
                },
            };
            if done {
                crate::metrics::task_confirmed(action, started.elapsed());
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err((
                    Kind::Internal,
                    CloudError::Other(format!(
                        "{action} task {task} not done within {TASK_DEADLINE:?}"
                    )),
                ));
            }
        }
    }

    /// One look with `DescribeVpcTaskResult`: whether the task is done.
    fn task_status(&self, action: &str, task: &str) -> Result<bool, (Kind, CloudError)> {
        let status = self
            .call_with_retries("DescribeVpcTaskResult", &json!({ "TaskId": task }))
            .map_err(|e| (Kind::Internal, e))?;
        match status.get("Status").and_then(Value::as_str) {
            Some("SUCCESS") => Ok(true),
            Some("FAILED") => {
                let output = status
                    .get("Output")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                Err((
                    Kind::Other,
                    CloudError::Other(format!("{action} task {task} failed: {output}")),
                ))
            }
            _ => Ok(false),
        }
    }

    fn call_once(&self, action: &str, params: &Value) -> Result<Value, (Kind, CloudError)> {
        let wait = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let wait = self.rate_of(action, |r| r.reserve(Instant::now()));
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let mut outcome = self.send(action, params);
        // Temporary credentials refused (expired, rotated away): sent once
        // more with new ones; the refused call had no effect.
        if matches!(outcome, Err((Kind::TokenFailure, _))) && self.keyring.refused() {
            outcome = self.send(action, params);
        }
        match &outcome {
            Err((Kind::Throttled, _)) => self.rate_of(action, |r| r.on_throttle(Instant::now())),
            _ => self.rate_of(action, AdaptiveRate::on_success),
        }
        outcome
    }

    /// Runs `f` on `action`'s adaptive rate.
    fn rate_of<T>(&self, action: &str, f: impl FnOnce(&mut AdaptiveRate) -> T) -> T {
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let rate = rates
            .entry(action.to_string())
            .or_insert_with(|| AdaptiveRate::new(self.qps, Instant::now()));
        f(rate)
    }

    /// One request, counted in the metrics by its answer's code, or as
    /// [`UNREACHABLE`](crate::metrics::UNREACHABLE) when none came.
    fn send(&self, action: &str, params: &Value) -> Result<Value, (Kind, CloudError)> {
        let (status, text) = self.send_raw(action, params).inspect_err(|_| {
            crate::metrics::cloud_call(action, Some(crate::metrics::UNREACHABLE));
        })?;
        let answer = super::decode::response(action, status, &text);
        crate::metrics::cloud_call(action, answer.as_ref().err().map(|(kind, _)| kind.code()));
        let answer = answer?;
        debug!(action, "cloud call done");
        Ok(answer)
    }

    /// One request as it is sent, answered with the HTTP status and body.
    fn send_raw(&self, action: &str, params: &Value) -> Result<(u16, String), (Kind, CloudError)> {
        let body = serde_json::to_vec(params).expect("JSON values serialise");
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signed = sign::Request {
            service: "vpc",
            host: &self.host,
            content_type: sign::JSON_CONTENT_TYPE,
            payload: &body,
            timestamp,
        };
        // The metadata service not answering is worth a retry.
        let auth = self
            .keyring
            .authorize(|c| signed.authorization(&c.secret_id, &c.secret_key))
            .map_err(|e| (Kind::Internal, e))?;
        let endpoint = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current()
            .cloned();
        let Some(endpoint) = endpoint else {
            return Err((
                Kind::Internal,
                CloudError::Other(format!(
                    "{action}: the cloud gateway has no ready replica yet"
                )),
            ));
        };
        let mut request = self
            .http
            .post(&endpoint)
            .header("Authorization", auth.header)
            .header("Content-Type", sign::JSON_CONTENT_TYPE)
            .header("X-TC-Action", action)
            .header("X-TC-Version", VERSION)
            .header("X-TC-Timestamp", timestamp.to_string())
            .header("X-TC-Region", &self.region);
        if let Some(token) = &auth.token {
            request = request.header("X-TC-Token", token);
        }
        let transient = |e: String| (Kind::Internal, CloudError::Other(e));
        let mut response = request.send(&body[..]).map_err(|e| {
            if matches!(
                e,
                ureq::Error::Io(_)
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::HostNotFound
                    | ureq::Error::Timeout(_)
            ) {
                self.unreachable(&endpoint);
            }
            transient(format!("{action}: {e}"))
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| transient(format!("{action}: {e}")))?;
        Ok((status, text))
    }

    /// Sends a node's request on (the cloud gateway), once: the answer as
    /// the API gave it, the HTTP status and body unchanged, so the node's
    /// own client retries, confirms and classifies as if it had called.
    /// Sent a second time only when the gateway's own temporary credentials
    /// were refused (that call had no effect). Throttling is the gateway's
    /// to wait out (its budget adapts to it). `Err` only when no answer
    /// came (the caller answers `InternalError`, an unknown outcome).
    pub fn relay(&self, action: &str, params: &Value) -> Result<(u16, String), CloudError> {
        let mut resent = false;
        loop {
            let outcome = self.send_raw(action, params).map_err(|(_, e)| e);
            let kind = match &outcome {
                Ok((status, text)) => super::decode::response(action, *status, text)
                    .err()
                    .map(|(kind, _)| kind),
                Err(_) => None,
            };
            let code = match &outcome {
                Ok(_) => kind.map(Kind::code),
                Err(_) => Some(crate::metrics::UNREACHABLE),
            };
            crate::metrics::cloud_call(action, code);
            match kind {
                Some(Kind::TokenFailure) if !resent && self.keyring.refused() => resent = true,
                _ => return outcome,
            }
        }
    }
}
