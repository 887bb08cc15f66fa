//! Reads that many nodes make alike, made once for all of them: an
//! instance type's limits asked once per type (not per node), the zone's
//! subnets and the VPC asked once in a short while, and looks at ENIs sent
//! together: by id (an attach's confirmation, the gateway's own look at an
//! ENI's owner), up to [`MAX_IDS`] ENIs of any nodes in one call, and by
//! one filter (a node's ENIs by its instance, or by its tag), up to
//! [`MAX_VALUES`] nodes' values in one filter, page by page. What reads to
//! share is decided by [`classify`], pure; [`Memo`] and [`Batches`] carry
//! it out.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{OnceCell, oneshot};

use super::Answer;
use super::policy::Caller;
use super::relay::{Relay, Unsent};
use crate::cloud::CloudError;
use crate::cloud::tencent::GATEWAY_QUEUE;

/// How long an instance type's limits are kept (they change with the
/// cloud's quotas, not with the nodes).
pub const LIMITS_FOR: Duration = Duration::from_secs(3600);
/// How long an answer of `DescribeSubnets` is shared: the free addresses
/// it counts are a few seconds old at worst.
pub const SUBNETS_FOR: Duration = Duration::from_secs(5);
/// How long an answer of `DescribeVpcs` is shared (a VPC's blocks change
/// by an operator's hand).
pub const VPCS_FOR: Duration = Duration::from_secs(60);
/// The most ENI ids one `DescribeNetworkInterfaces` may name, and the
/// most ENIs one page of it holds.
pub const MAX_IDS: usize = 100;
/// The most values of one filter sent together (one per node: each node
/// has a few ENIs, so a page of [`MAX_IDS`] holds most batches).
pub const MAX_VALUES: usize = 25;
/// What the API answers at most without a `Limit`.
const DEFAULT_LIMIT: u64 = 20;
/// Shared answers kept at most before the stale ones are dropped.
const MAX_KEPT: usize = 10_000;

/// How one read is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// Sent as it is.
    Relay,
    /// Answered once for everyone who asks the same (`key`) within `ttl`;
    /// one call in flight at a time.
    Shared {
        /// What makes two reads the same.
        key: String,
        /// How long the answer is good for.
        ttl: Duration,
    },
    /// A look at ENIs, sent with other nodes' looks of the same kind.
    Batched(Look),
}

/// What a batched look asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Look {
    /// Which looks go together.
    pub lane: Lane,
    /// The ENI ids, or the filter's values.
    pub values: Vec<String>,
    /// The most ENIs its answer may hold (its `Limit`).
    pub limit: usize,
}

/// Looks that can be sent in one call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// By `NetworkInterfaceIds`.
    Ids,
    /// By one filter of this name (`attachment.instance-id`, `tag:KEY`).
    Filter(String),
}

impl Lane {
    /// Whether `eni` (one of `NetworkInterfaceSet`) answers a look of
    /// this lane for `values`.
    fn matches(&self, eni: &Value, values: &[String]) -> bool {
        let any = |v: Option<&str>| v.is_some_and(|v| values.iter().any(|x| x == v));
        match self {
            Lane::Ids => any(eni["NetworkInterfaceId"].as_str()),
            Lane::Filter(name) if name == "attachment.instance-id" => {
                any(eni["Attachment"]["InstanceId"].as_str())
            }
            Lane::Filter(name) => {
                let Some(key) = name.strip_prefix("tag:") else {
                    return false;
                };
                eni["TagSet"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["Key"].as_str() == Some(key) && any(t["Value"].as_str()))
            }
        }
    }

    /// The request for `values`, page at `offset`.
    fn params(&self, values: &[&String], offset: usize) -> Value {
        match self {
            Lane::Ids => serde_json::json!({
                "NetworkInterfaceIds": values,
                "Limit": MAX_IDS,
            }),
            Lane::Filter(name) => serde_json::json!({
                "Filters": [{ "Name": name, "Values": values }],
                "Offset": offset,
                "Limit": MAX_IDS,
            }),
        }
    }

    /// The most values one call takes.
    fn max_values(&self) -> usize {
        match self {
            Lane::Ids => MAX_IDS,
            Lane::Filter(_) => MAX_VALUES,
        }
    }
}

/// How `caller`'s `action` with `params` is made.
pub fn classify(caller: &Caller, action: &str, params: &Value) -> Read {
    let Some(fields) = params.as_object() else {
        return Read::Relay;
    };
    match action {
        "DescribeNetworkInterfaceLimit" => {
            let instance = fields.get("InstanceId").and_then(Value::as_str);
            match instance {
                Some(id) if fields.len() == 1 => {
                    // The limits are the instance type's: one node's answer
                    // is every node's of that type. Another instance's, or
                    // a type not known, by instance.
                    let key = match &caller.instance_type {
                        Some(t) if id == caller.instance => format!("limits/type/{t}"),
                        _ => format!("limits/instance/{id}"),
                    };
                    Read::Shared {
                        key,
                        ttl: LIMITS_FOR,
                    }
                }
                _ => Read::Relay,
            }
        }
        "DescribeSubnets" => Read::Shared {
            key: format!("{action}/{}", canonical(params)),
            ttl: SUBNETS_FOR,
        },
        "DescribeVpcs" => Read::Shared {
            key: format!("{action}/{}", canonical(params)),
            ttl: VPCS_FOR,
        },
        "DescribeNetworkInterfaces" => look(fields).map_or(Read::Relay, Read::Batched),
        _ => Read::Relay,
    }
}

/// The look a `DescribeNetworkInterfaces` is, if it can go with others:
/// the first page of ENIs named by id (every id on it), or of one filter
/// with one value that the gateway can tell an ENI by.
fn look(fields: &serde_json::Map<String, Value>) -> Option<Look> {
    if !fields.keys().all(|k| {
        matches!(
            k.as_str(),
            "NetworkInterfaceIds" | "Filters" | "Offset" | "Limit"
        )
    }) {
        return None;
    }
    let limit = match fields.get("Limit") {
        Some(l) => l.as_u64()?,
        None => DEFAULT_LIMIT,
    }
    .min(MAX_IDS as u64) as usize;
    let first_page = fields.get("Offset").is_none_or(|o| o.as_u64() == Some(0));
    if !first_page || limit == 0 {
        return None;
    }
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    match (fields.get("NetworkInterfaceIds"), fields.get("Filters")) {
        (Some(ids), None) => {
            let ids = strings(ids)?;
            (!ids.is_empty() && ids.len() <= limit).then_some(Look {
                lane: Lane::Ids,
                values: ids,
                limit,
            })
        }
        (None, Some(filters)) => {
            let [filter] = filters.as_array()?.as_slice() else {
                return None;
            };
            let name = filter.get("Name")?.as_str()?;
            let values = strings(filter.get("Values")?)?;
            let known = name == "attachment.instance-id"
                || name.strip_prefix("tag:").is_some_and(|k| !k.is_empty());
            (known && values.len() == 1 && filter.as_object()?.len() == 2).then(|| Look {
                lane: Lane::Filter(name.to_string()),
                values,
                limit,
            })
        }
        _ => None,
    }
}

/// `value` with every object's keys in order: two requests that differ
/// only in the order of their fields are the same read.
fn canonical(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// The answer of `look` from the ENIs a batch of looks found (`set`):
/// only its ENIs, counted and paged as if it had been asked alone.
fn answer_for(set: &[Value], request_id: &Value, look: &Look) -> Answer {
    let mine: Vec<&Value> = set
        .iter()
        .filter(|e| look.lane.matches(e, &look.values))
        .collect();
    let body = serde_json::json!({ "Response": {
        "TotalCount": mine.len(),
        "NetworkInterfaceSet": mine.iter().take(look.limit).collect::<Vec<_>>(),
        "RequestId": request_id,
    }});
    (200, body.to_string())
}

/// Whether an answer carries no error: only such answers are shared.
fn succeeded(answer: &Answer) -> bool {
    answer.0 == 200
        && serde_json::from_str::<Value>(&answer.1)
            .is_ok_and(|v| v["Response"].is_object() && v["Response"].get("Error").is_none())
}

/// One shared answer, and when it came; empty while its call is in flight.
type Slot = Arc<OnceCell<(Answer, Instant)>>;

/// Shared answers, one call in flight per key.
#[derive(Debug, Default)]
pub struct Memo {
    entries: Mutex<HashMap<String, Slot>>,
}

impl Memo {
    /// The answer for `key` asked within `ttl`, else `fetch`'s, which is
    /// then everyone's; a failed fetch is its caller's alone (the next
    /// caller fetches again).
    pub async fn get<F>(&self, key: &str, ttl: Duration, fetch: F) -> Result<Answer, Unsent>
    where
        F: Future<Output = Result<Answer, Unsent>>,
    {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let fresh =
                |c: &OnceCell<(Answer, Instant)>| c.get().is_none_or(|(_, at)| at.elapsed() < ttl);
            match entries.get(key).filter(|c| fresh(c)) {
                Some(cell) => Arc::clone(cell),
                None => {
                    if entries.len() >= MAX_KEPT {
                        entries.retain(|_, c| c.get().is_none_or(|(_, at)| at.elapsed() < ttl));
                    }
                    let cell = Arc::new(OnceCell::new());
                    entries.insert(key.to_string(), Arc::clone(&cell));
                    cell
                }
            }
        };
        let mut own: Option<Result<Answer, Unsent>> = None;
        let shared = cell
            .get_or_try_init(|| async {
                match fetch.await {
                    Ok(answer) if succeeded(&answer) => Ok((answer, Instant::now())),
                    failed => {
                        own = Some(failed);
                        Err(())
                    }
                }
            })
            .await;
        match (shared, own) {
            (Ok((answer, _)), _) => Ok(answer.clone()),
            (Err(()), Some(failed)) => failed,
            (Err(()), None) => Err(Unsent::Failed(CloudError::Other(
                "shared read failed".into(),
            ))),
        }
    }
}

/// One node's look, waiting for a batch.
struct Waiting {
    look: Look,
    reply: oneshot::Sender<Result<Answer, Unsent>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    /// A round is taking turns and sending.
    running: bool,
}

/// Looks at ENIs, sent together by lane.
pub struct Batches {
    relay: Arc<Relay>,
    lanes: Mutex<HashMap<Lane, Queue>>,
    /// Calls sent and looks answered, for the figures.
    calls: AtomicU64,
    looks: AtomicU64,
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches").finish_non_exhaustive()
    }
}

/// The action batched.
const DESCRIBE: &str = "DescribeNetworkInterfaces";

impl Batches {
    /// Batches sent through `relay`.
    pub fn new(relay: Arc<Relay>) -> Batches {
        Batches {
            relay,
            lanes: Mutex::default(),
            calls: AtomicU64::new(0),
            looks: AtomicU64::new(0),
        }
    }

    /// (calls sent, looks answered) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.looks.load(Ordering::Relaxed),
        )
    }

    /// The answer of `look`, in the next batch of its lane.
    pub async fn describe(self: &Arc<Self>, look: Look) -> Result<Answer, Unsent> {
        let (reply, answer) = oneshot::channel();
        let lane = look.lane.clone();
        let start = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            let q = lanes.entry(lane.clone()).or_default();
            q.waiting.push_back(Waiting { look, reply });
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.rounds(lane).await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(Unsent::Failed(CloudError::Other(
                "the batch was dropped".into(),
            )))
        })
    }

    /// `lane`'s rounds until no look waits in it: a turn of the action,
    /// then everything waiting by then (up to what one call takes) in one
    /// call, page by page.
    async fn rounds(&self, lane: Lane) {
        loop {
            // Nothing waiting: the round ends without spending a turn. Only
            // this round takes from the lane, so what waits now still waits
            // once the turn comes.
            {
                let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
                let q = lanes.entry(lane.clone()).or_default();
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
            }
            let turn = self.relay.turn(DESCRIBE, GATEWAY_QUEUE).await;
            let batch = {
                let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
                let q = lanes.entry(lane.clone()).or_default();
                take_batch(&mut q.waiting, lane.max_values())
            };
            let outcome = match turn {
                Ok(()) => self.send(&lane, &batch).await,
                Err(busy) => Err(busy),
            };
            self.looks.fetch_add(batch.len() as u64, Ordering::Relaxed);
            for w in batch {
                let answer = match &outcome {
                    Ok(Found::Set(set, request_id)) => Ok(answer_for(set, request_id, &w.look)),
                    Ok(Found::Refused(answer)) => Ok(answer.clone()),
                    Err(Unsent::Busy(d)) => Err(Unsent::Busy(*d)),
                    Err(Unsent::Failed(e)) => Err(Unsent::Failed(e.clone())),
                };
                let _ = w.reply.send(answer);
            }
        }
    }

    /// Every ENI the looks of `batch` ask for, page after page (each page
    /// after the first in a turn of its own).
    async fn send(&self, lane: &Lane, batch: &[Waiting]) -> Result<Found, Unsent> {
        let mut values: Vec<&String> = batch.iter().flat_map(|w| &w.look.values).collect();
        values.sort();
        values.dedup();
        let mut set: Vec<Value> = Vec::new();
        loop {
            if !set.is_empty() {
                self.relay.turn(DESCRIBE, GATEWAY_QUEUE).await?;
            }
            self.calls.fetch_add(1, Ordering::Relaxed);
            let answer = self
                .relay
                .send_in_turn(DESCRIBE, &lane.params(&values, set.len()))
                .await?;
            if !succeeded(&answer) {
                return Ok(Found::Refused(answer));
            }
            let Ok(v) = serde_json::from_str::<Value>(&answer.1) else {
                return Ok(Found::Refused(answer));
            };
            let response = &v["Response"];
            let page = response["NetworkInterfaceSet"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = response["TotalCount"].as_u64().unwrap_or(0) as usize;
            let last = page.is_empty() || *lane == Lane::Ids;
            set.extend(page);
            if last || set.len() >= total {
                // ENIs made or gone between pages may show twice.
                let mut seen = std::collections::HashSet::new();
                set.retain(|e| seen.insert(e["NetworkInterfaceId"].to_string()));
                return Ok(Found::Set(set, response["RequestId"].clone()));
            }
        }
    }
}

/// What a batch found.
enum Found {
    /// The ENIs, and the request id of the (last) call.
    Set(Vec<Value>, Value),
    /// The cloud's error, everyone's.
    Refused(Answer),
}

/// The waiting looks, in order, whose values fit in one call (at least
/// one): at most `max` values.
fn take_batch(waiting: &mut VecDeque<Waiting>, max: usize) -> Vec<Waiting> {
    let mut batch: Vec<Waiting> = Vec::new();
    let mut values: std::collections::HashSet<String> = std::collections::HashSet::new();
    while let Some(next) = waiting.front() {
        let more = next
            .look
            .values
            .iter()
            .filter(|i| !values.contains(*i))
            .count();
        if !batch.is_empty() && values.len() + more > max {
            break;
        }
        let next = waiting.pop_front().expect("looked at");
        values.extend(next.look.values.iter().cloned());
        batch.push(next);
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caller(instance_type: Option<&str>) -> Caller {
        Caller {
            node: "node-a".into(),
            instance: "ins-a".into(),
            instance_type: instance_type.map(str::to_string),
        }
    }

    #[test]
    fn limits_are_shared_by_instance_type_and_only_for_the_callers_own_instance() {
        let own = json!({ "InstanceId": "ins-a" });
        let shared = |key: &str| Read::Shared {
            key: key.into(),
            ttl: LIMITS_FOR,
        };
        assert_eq!(
            classify(
                &caller(Some("S5.LARGE8")),
                "DescribeNetworkInterfaceLimit",
                &own
            ),
            shared("limits/type/S5.LARGE8")
        );
        assert_eq!(
            classify(&caller(None), "DescribeNetworkInterfaceLimit", &own),
            shared("limits/instance/ins-a")
        );
        assert_eq!(
            classify(
                &caller(Some("S5.LARGE8")),
                "DescribeNetworkInterfaceLimit",
                &json!({ "InstanceId": "ins-b" })
            ),
            shared("limits/instance/ins-b"),
            "another instance's type is not the caller's"
        );
        assert_eq!(
            classify(
                &caller(Some("S5.LARGE8")),
                "DescribeNetworkInterfaceLimit",
                &json!({ "InstanceId": "ins-a", "Other": 1 })
            ),
            Read::Relay
        );
    }

    #[test]
    fn subnets_in_any_field_order_are_one_read_and_other_filters_another() {
        let c = caller(None);
        let a = classify(
            &c,
            "DescribeSubnets",
            &json!({ "Filters": [{"Name": "zone", "Values": ["z1"]}], "Limit": 100 }),
        );
        let b = classify(
            &c,
            "DescribeSubnets",
            &serde_json::from_str(
                r#"{"Limit": 100, "Filters": [{"Values": ["z1"], "Name": "zone"}]}"#,
            )
            .expect("json"),
        );
        let other = classify(
            &c,
            "DescribeSubnets",
            &json!({ "Filters": [{"Name": "zone", "Values": ["z2"]}], "Limit": 100 }),
        );
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert!(matches!(a, Read::Shared { ttl, .. } if ttl == SUBNETS_FOR));
    }

    #[test]
    fn looks_by_id_or_by_one_known_filter_on_their_first_page_are_batched() {
        let c = caller(None);
        let d = |p: Value| classify(&c, "DescribeNetworkInterfaces", &p);
        let by = |lane: Lane, values: &[&str], limit: usize| {
            Read::Batched(Look {
                lane,
                values: values.iter().map(|v| v.to_string()).collect(),
                limit,
            })
        };
        assert_eq!(
            d(json!({ "NetworkInterfaceIds": ["eni-1"] })),
            by(Lane::Ids, &["eni-1"], 20)
        );
        assert_eq!(
            d(json!({ "NetworkInterfaceIds": ["eni-1", "eni-2"], "Offset": 0, "Limit": 100 })),
            by(Lane::Ids, &["eni-1", "eni-2"], 100)
        );
        let instance = json!({ "Name": "attachment.instance-id", "Values": ["ins-a"] });
        assert_eq!(
            d(json!({ "Filters": [instance], "Offset": 0, "Limit": 100 })),
            by(
                Lane::Filter("attachment.instance-id".into()),
                &["ins-a"],
                100
            )
        );
        assert_eq!(
            d(json!({ "Filters": [{ "Name": "tag:vpc-cni/node", "Values": ["ins-a"] }] })),
            by(Lane::Filter("tag:vpc-cni/node".into()), &["ins-a"], 20)
        );
        // Not batched: a later page, two filters, two values, a filter the
        // gateway cannot tell an ENI by, ids and a filter, too many ids.
        assert_eq!(
            d(json!({ "Filters": [instance], "Offset": 100, "Limit": 100 })),
            Read::Relay
        );
        assert_eq!(
            d(json!({ "Filters": [instance, { "Name": "vpc-id", "Values": ["v"] }] })),
            Read::Relay
        );
        assert_eq!(
            d(json!({ "Filters": [{ "Name": "attachment.instance-id", "Values": ["a", "b"] }] })),
            Read::Relay
        );
        assert_eq!(
            d(json!({ "Filters": [{ "Name": "subnet-id", "Values": ["s"] }] })),
            Read::Relay
        );
        assert_eq!(
            d(json!({ "NetworkInterfaceIds": ["eni-1"], "Filters": [instance] })),
            Read::Relay
        );
        let many: Vec<String> = (0..21).map(|i| format!("eni-{i}")).collect();
        assert_eq!(
            d(json!({ "NetworkInterfaceIds": many })),
            Read::Relay,
            "more than the API's default page"
        );
        assert_eq!(d(json!({ "NetworkInterfaceIds": [] })), Read::Relay);
        assert_eq!(
            classify(&c, "DescribeVpcTaskResult", &json!({ "TaskId": "1" })),
            Read::Relay
        );
    }

    #[test]
    fn a_batch_is_split_as_if_each_look_had_been_alone() {
        let eni = |id: &str, instance: &str, node_tag: &str| {
            json!({
                "NetworkInterfaceId": id,
                "Attachment": { "InstanceId": instance },
                "TagSet": [{ "Key": "vpc-cni/node", "Value": node_tag }],
            })
        };
        let set = vec![
            eni("eni-1", "ins-a", "ins-a"),
            eni("eni-2", "ins-b", "ins-b"),
            eni("eni-3", "ins-a", "ins-a"),
            eni("eni-4", "", "ins-b"),
        ];
        let id = json!("r-1");
        let look = |lane: Lane, values: &[&str], limit: usize| Look {
            lane,
            values: values.iter().map(|v| v.to_string()).collect(),
            limit,
        };
        let ids_of = |a: Answer| -> (u64, Vec<String>) {
            let v: Value = serde_json::from_str(&a.1).expect("json");
            assert_eq!(v["Response"]["RequestId"], "r-1");
            (
                v["Response"]["TotalCount"].as_u64().expect("count"),
                v["Response"]["NetworkInterfaceSet"]
                    .as_array()
                    .expect("set")
                    .iter()
                    .map(|e| e["NetworkInterfaceId"].as_str().expect("id").to_string())
                    .collect(),
            )
        };
        assert_eq!(
            ids_of(answer_for(&set, &id, &look(Lane::Ids, &["eni-2"], 20))),
            (1, vec!["eni-2".to_string()])
        );
        assert_eq!(
            ids_of(answer_for(&set, &id, &look(Lane::Ids, &["eni-9"], 20))),
            (0, vec![])
        );
        let attached = Lane::Filter("attachment.instance-id".into());
        assert_eq!(
            ids_of(answer_for(
                &set,
                &id,
                &look(attached.clone(), &["ins-a"], 100)
            )),
            (2, vec!["eni-1".to_string(), "eni-3".to_string()])
        );
        // Its own Limit: the first page, the whole count.
        assert_eq!(
            ids_of(answer_for(&set, &id, &look(attached, &["ins-a"], 1))),
            (2, vec!["eni-1".to_string()])
        );
        let tagged = Lane::Filter("tag:vpc-cni/node".into());
        assert_eq!(
            ids_of(answer_for(&set, &id, &look(tagged, &["ins-b"], 100))),
            (2, vec!["eni-2".to_string(), "eni-4".to_string()])
        );
    }

    #[test]
    fn a_batch_takes_waiting_looks_in_order_up_to_the_values_one_call_may_take() {
        let waiting_look = |values: Vec<String>| Waiting {
            look: Look {
                lane: Lane::Ids,
                values,
                limit: 100,
            },
            reply: oneshot::channel().0,
        };
        let ids = |from: usize, n: usize| (from..from + n).map(|i| format!("eni-{i}")).collect();
        let mut waiting: VecDeque<Waiting> = VecDeque::new();
        waiting.push_back(waiting_look(ids(0, 60)));
        waiting.push_back(waiting_look(ids(50, 30)));
        waiting.push_back(waiting_look(ids(100, 20)));
        waiting.push_back(waiting_look(ids(200, 1)));
        // 60, then 20 new (10 shared), then 20 more would be 100: taken;
        // the fourth would be 101.
        let batch = take_batch(&mut waiting, MAX_IDS);
        assert_eq!(batch.len(), 3);
        assert_eq!(waiting.len(), 1);
        assert_eq!(take_batch(&mut waiting, MAX_IDS).len(), 1);
        assert!(take_batch(&mut waiting, MAX_IDS).is_empty());
    }

    #[tokio::test]
    async fn a_shared_read_is_fetched_once_while_fresh_and_failures_are_not_kept() {
        use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
        let memo = Memo::default();
        let ok: Answer = (200, json!({ "Response": { "RequestId": "1" } }).to_string());
        let failed: Answer = (
            200,
            json!({ "Response": { "Error": { "Code": "InternalError" } } }).to_string(),
        );
        let runs = AtomicU32::new(0);
        let fetch = |answer: Answer| {
            let runs = &runs;
            async move {
                runs.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(answer)
            }
        };
        let ttl = Duration::from_secs(60);
        let got = |r: Result<Answer, Unsent>| r.expect("answered");
        assert_eq!(got(memo.get("k", ttl, fetch(failed.clone())).await), failed);
        // Two at once: one call, both answered by it.
        let (a, b) = tokio::join!(
            memo.get("k", ttl, fetch(ok.clone())),
            memo.get("k", ttl, fetch(failed.clone()))
        );
        assert_eq!((got(a), got(b)), (ok.clone(), ok.clone()));
        assert_eq!(got(memo.get("k", ttl, fetch(failed.clone())).await), ok);
        assert_eq!(runs.load(SeqCst), 2, "the failure, then one shared call");
        // Expired: fetched again.
        assert_eq!(
            got(memo.get("k", Duration::ZERO, fetch(failed.clone())).await),
            failed
        );
        assert_eq!(runs.load(SeqCst), 3);
    }
}
