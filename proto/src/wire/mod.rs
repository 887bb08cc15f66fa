//! The plugin↔agent protocol: one request frame and one reply frame per
//! connection. A frame is a 4-byte big-endian length followed by that many
//! bytes of JSON; frames above [`MAX_FRAME`] are refused before they are
//! read. Both envelopes carry a protocol version.
//!
//! Versions during a rollout (the plugin binary and the agent DaemonSet are
//! updated separately): the agent serves requests of its own version and
//! of the one before ([`OLDEST_SERVED`]) and answers each in the version it
//! was asked in; a client accepts replies of its own version and of the
//! next ([`NEWEST_ACCEPTED`]). A request outside the window, or a verb the
//! agent does not know, gets a typed error naming both versions, never a
//! decoding failure. Unknown fields are ignored both ways (from protocol
//! 2; protocol 1 refused them, so replies to it carry none).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::cni::codes;

/// The protocol version this build speaks. 2: as 1, and unknown fields
/// are ignored, so a version may gain optional fields without a bump.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest request version the agent serves.
pub const OLDEST_SERVED: u32 = PROTOCOL_VERSION - 1;
/// The newest reply version a client accepts.
pub const NEWEST_ACCEPTED: u32 = PROTOCOL_VERSION + 1;

/// The verbs (`op`) this side knows.
const VERBS: &[&str] = &[
    "add",
    "del",
    "check",
    "gc",
    "status",
    "pool",
    "claims",
    "delete_claim",
    "reclaim",
    "owner_deleted",
];
/// The largest frame either side accepts, in bytes.
pub const MAX_FRAME: usize = 2 * 1024 * 1024;

/// What can go wrong encoding, decoding or moving a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame is larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The frame is not valid JSON of the expected shape.
    #[error("malformed frame: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A request of a protocol version the agent does not serve.
    #[error(
        "plugin speaks protocol {got}, agent serves {OLDEST_SERVED}..{PROTOCOL_VERSION}: {}",
        if *got > PROTOCOL_VERSION { "upgrade the agent (or finish its rollout) before the plugin" } else { "upgrade the plugin" }
    )]
    RequestVersion {
        /// The version the plugin sent.
        got: u32,
    },
    /// A request for a verb the agent does not know.
    #[error(
        "plugin (protocol {version}) asked for {op:?}, which this agent (protocol {PROTOCOL_VERSION}) does not know: upgrade the agent"
    )]
    UnknownVerb {
        /// The verb.
        op: String,
        /// The version the plugin sent.
        version: u32,
    },
    /// A reply of a protocol version this client does not accept.
    #[error(
        "agent speaks protocol {got}, this client accepts {PROTOCOL_VERSION}..{NEWEST_ACCEPTED}: {}{}",
        if *got < PROTOCOL_VERSION { "upgrade the agent" } else { "upgrade the plugin" },
        said.as_ref().map(|m| format!(" (the agent said: {m})")).unwrap_or_default()
    )]
    ReplyVersion {
        /// The version the agent answered in.
        got: u32,
        /// The agent's error message, if its reply was one.
        said: Option<String>,
    },
    /// Reading or writing the socket failed.
    #[error("socket I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Identifies one attachment, as the CNI spec keys them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    /// The network name from the configuration.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl std::fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// The Kubernetes pod behind an attachment, when the runtime says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// ADD: allocate an IP and wire the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRequest {
    /// Which attachment.
    pub key: AttachmentKey,
    /// `CNI_NETNS`.
    pub netns: String,
    /// The pod, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// When the caller stops waiting (Unix ms): an ADD that cannot finish
    /// by then is undone rather than left behind for a caller that gave up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// The pod wants a static IP: kept for its namespace and name across
    /// sandboxes (needs `pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_ip: Option<StaticIpRequest>,
}

/// A pod's request for a static IP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticIpRequest {
    /// How long the IP stays reserved after the pod is gone, in ms
    /// (default: the agent's `--claim-expired-duration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after_ms: Option<u64>,
    /// The workload that owns the pod, when known: its deletion reclaims
    /// the claim (with the agent's `--enable-ownerref`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerRef>,
    /// The address of the subnet the pod asks for (its static IP); an
    /// agent that does not know this field would ignore it, so agents are
    /// rolled out before plugins (as for every protocol change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_ip: Option<Ipv4Addr>,
}

/// A pod's owner (a StatefulSet, say).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnerRef {
    /// Kind, such as `StatefulSet`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// DEL: unwire the pod and release its IP. Idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelRequest {
    /// Which attachment.
    pub key: AttachmentKey,
    /// `CNI_NETNS`, absent when the runtime no longer has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// CHECK: confirm the attachment is as ADD left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// Which attachment.
    pub key: AttachmentKey,
    /// `CNI_NETNS`.
    pub netns: String,
    /// Addresses `prevResult` reports for this interface (CIDR form).
    #[serde(default)]
    pub expected_addresses: Vec<String>,
}

/// GC: release every attachment of `network` that is not listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    /// The network name.
    pub network: String,
    /// The attachments that must stay.
    pub valid: Vec<GcAttachment>,
}

/// One valid attachment of a GC request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GcAttachment {
    /// The container id.
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// A request to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// CNI ADD.
    Add(AddRequest),
    /// CNI DEL.
    Del(DelRequest),
    /// CNI CHECK.
    Check(CheckRequest),
    /// CNI GC.
    Gc(GcRequest),
    /// CNI STATUS.
    Status,
    /// Operator: the pool, its ENIs, IPs and allocations.
    Pool,
    /// Operator: every pod's IP claim.
    Claims,
    /// Operator: end a static claim and free its IP.
    DeleteClaim {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// Also when a sandbox of the pod holds the IP (cuts its network).
        force: bool,
    },
    /// Operator: reclaim what is due (expired claims); with `dry_run`, only
    /// say what and why.
    Reclaim {
        /// Only report.
        dry_run: bool,
    },
    /// The workload owning pods was deleted: reclaim its pods' claims.
    OwnerDeleted(OwnerRef),
}

/// What ADD set up, from which the plugin builds the CNI result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddReply {
    /// The pod's address (a /32).
    pub ip: Ipv4Addr,
    /// The pod's default gateway (link-local, reached on-link).
    pub gateway: Ipv4Addr,
    /// The host end of the veth pair.
    pub host_ifname: String,
    /// The host end's MAC.
    pub host_mac: String,
    /// The pod end's MAC.
    pub pod_mac: String,
    /// The pod interface's MTU.
    pub mtu: u32,
    /// The ENI the address belongs to.
    pub eni_id: String,
    /// The pod's IPv6 address (a /128, on the same ENI), when the pod is
    /// dual-stack. Optional: a plugin that does not know it reports the
    /// IPv4 address alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// The pod's IPv6 default gateway (link-local, reached on-link), with
    /// [`ipv6`](Self::ipv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6: Option<Ipv6Addr>,
}

/// STATUS: whether ADD can be served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Ready to serve ADD.
    pub ready: bool,
    /// Why not, when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// State of one IP of the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IpState {
    /// Free to hand out.
    Free,
    /// Held by an attachment.
    Allocated {
        /// The attachment.
        key: AttachmentKey,
        /// The pod, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<PodRef>,
    },
    /// Released recently; not handed out before `until_ms` (Unix ms).
    Cooling {
        /// End of the cooldown, Unix milliseconds.
        until_ms: u64,
    },
    /// Reserved for a pod's static claim while no sandbox of it runs.
    Reserved {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// Assigned to an ENI that is still being attached to the node; not
    /// usable yet.
    Attaching {
        /// Why the attach failed, if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// One IP of the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpView {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its IPv6 partner on the ENI (a dual-stack agent), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Its state.
    #[serde(flatten)]
    pub state: IpState,
}

/// One secondary ENI of the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniView {
    /// ENI id.
    pub id: String,
    /// MAC address.
    pub mac: String,
    /// Subnet id.
    pub subnet_id: String,
    /// Its secondary IPs.
    pub ips: Vec<IpView>,
}

/// The whole pool, for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    /// Secondary ENIs in attach order.
    pub enis: Vec<EniView>,
    /// Conditions the agent is in, such as `ENILimit`.
    #[serde(default)]
    pub conditions: Vec<ConditionView>,
    /// The maintenance loop (growth, give-back, expiry, moves); `None`
    /// when it does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceView>,
}

/// Where the maintenance loop is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceView {
    /// Rounds finished since the agent started.
    pub rounds: u64,
    /// While it sleeps with nothing asked of it: when it wakes for its next
    /// round (Unix ms, the agent's clock); `None` while a round runs or
    /// one is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asleep_until_ms: Option<u64>,
}

/// A condition of the node's pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionView {
    /// The condition, such as `ENILimit` or `NoSubnetInZone`.
    pub kind: String,
    /// What happened.
    pub message: String,
    /// Since when (Unix ms).
    pub since_ms: u64,
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// ADD done.
    Added(AddReply),
    /// DEL done (also when there was nothing to delete).
    Deleted,
    /// CHECK passed.
    Checked,
    /// GC done.
    Collected {
        /// How many attachments were released.
        released: u32,
    },
    /// STATUS answer.
    Status(StatusReply),
    /// Pool view.
    Pool(PoolView),
    /// What was (or, in a dry run, would be) reclaimed.
    Reclaimed {
        /// One per claim.
        claims: Vec<ReclaimView>,
    },
    /// Claims view.
    Claims {
        /// One per pod with an IP, static or not, and per reserved static IP.
        claims: Vec<ClaimView>,
    },
}

/// A claim reclaimed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimView {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The IP going back to the pool.
    pub ip: Ipv4Addr,
    /// Why: `expired`, `deleted by hand`, `owner deleted`.
    pub reason: String,
}

/// A pod's claim on an IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimView {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The IP.
    pub ip: Ipv4Addr,
    /// Its IPv6 address (a dual-stack pod's, or a static IP's kept for its
    /// pod), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// `Bound` while a sandbox holds it, `Reserved` while a static IP waits
    /// for its pod.
    pub status: String,
    /// The node (instance id).
    pub node: String,
    /// The subnet of the IP.
    pub subnet_id: String,
    /// The ENI carrying the IP.
    pub eni_id: String,
    /// The sandbox holding it, while one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `Never` for a static IP, `Immediate` otherwise.
    pub policy: String,
    /// The pod's owner, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerRef>,
    /// When the claim was made (Unix ms).
    pub created_ms: u64,
    /// When a sandbox last took it (Unix ms).
    pub last_bound_ms: u64,
    /// When the last sandbox let go of it (Unix ms), while reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_ms: Option<u64>,
    /// When its reservation ends (Unix ms), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// How long it stays reserved once released, when the pod said (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after_ms: Option<u64>,
    /// Why a `Lost` claim's address cannot be had back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The pod asked for this address (a requested IP).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requested: bool,
}

/// Why the agent failed a request. Mapped to a CNI code by
/// [`ErrorKind::cni_code`], the one place that decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request frame was malformed or of another protocol version.
    Protocol,
    /// The request itself is invalid.
    InvalidRequest,
    /// The caller is not allowed to talk to the agent.
    PermissionDenied,
    /// No IP can be handed out.
    NoIpAvailable,
    /// CHECK: no such attachment.
    UnknownAttachment,
    /// CHECK: the attachment differs from what was expected.
    Mismatch,
    /// Kernel programming failed.
    Dataplane,
    /// The state store failed.
    Store,
    /// The cloud API failed.
    Cloud,
    /// The VPC's ENI quota is used up: no ENI can be added (`ENILimit`).
    EniLimit,
    /// A static claim's address is lost: the cloud no longer has it on
    /// this node and it could not be got back.
    ClaimLost,
    /// The agent is not ready yet.
    NotReady,
    /// Anything else.
    Internal,
    /// A kind this side does not know: sent by a newer peer.
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// This kind as a peer speaking `version` knows it: kinds added after
    /// it are sent as the nearest one it has (the message says the rest).
    pub fn in_protocol(self, version: u32) -> ErrorKind {
        match self {
            // Protocol 2 added ClaimLost.
            ErrorKind::ClaimLost if version < 2 => ErrorKind::Cloud,
            other => other,
        }
    }

    /// The CNI error code the plugin reports for this kind.
    pub fn cni_code(self) -> u32 {
        match self {
            ErrorKind::Protocol => codes::AGENT_PROTOCOL,
            ErrorKind::InvalidRequest => codes::INVALID_NETWORK_CONFIG,
            ErrorKind::PermissionDenied => codes::PERMISSION_DENIED,
            ErrorKind::NoIpAvailable => codes::NO_IP_AVAILABLE,
            ErrorKind::UnknownAttachment => codes::UNKNOWN_CONTAINER,
            ErrorKind::Mismatch => codes::CHECK_MISMATCH,
            ErrorKind::Dataplane => codes::DATAPLANE,
            ErrorKind::Store => codes::STORE,
            ErrorKind::Cloud => codes::CLOUD,
            ErrorKind::EniLimit => codes::ENI_LIMIT,
            ErrorKind::ClaimLost => codes::CLAIM_LOST,
            ErrorKind::Unknown => codes::AGENT_INTERNAL,
            ErrorKind::NotReady => codes::TRY_AGAIN_LATER,
            ErrorKind::Internal => codes::AGENT_INTERNAL,
        }
    }
}

/// A failed reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A message for the operator.
    pub message: String,
}

impl AgentError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> AgentError {
        AgentError {
            kind,
            message: message.into(),
        }
    }
}

/// The outcome of a request.
pub type Reply = Result<Response, AgentError>;

#[derive(Serialize, Deserialize)]
struct RequestEnvelope {
    version: u32,
    request: Request,
}

#[derive(Serialize, Deserialize)]
struct ReplyEnvelope {
    version: u32,
    #[serde(flatten)]
    outcome: Outcome,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Ok(Response),
    Error(AgentError),
}

/// What is read of an envelope before it is decoded as this version's.
#[derive(Deserialize)]
struct Probe {
    version: u32,
    #[serde(default)]
    request: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// A request and the protocol version it came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The plugin's protocol version (within the served window).
    pub version: u32,
    /// The request.
    pub request: Request,
}

/// Serialises a request into a frame payload.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, WireError> {
    checked(serde_json::to_vec(&RequestEnvelope {
        version: PROTOCOL_VERSION,
        request: request.clone(),
    }))
}

/// Parses a frame payload into a request. The version and the verb are
/// checked first, so a plugin outside the window or asking for a verb this
/// agent does not know gets a typed error rather than a parse error.
pub fn decode_request(payload: &[u8]) -> Result<Incoming, WireError> {
    let probe: Probe = serde_json::from_slice(payload).map_err(WireError::Malformed)?;
    if !(OLDEST_SERVED..=PROTOCOL_VERSION).contains(&probe.version) {
        return Err(WireError::RequestVersion { got: probe.version });
    }
    if let Some(op) = probe
        .request
        .as_ref()
        .and_then(|r| r.get("op"))
        .and_then(serde_json::Value::as_str)
        && !VERBS.contains(&op)
    {
        return Err(WireError::UnknownVerb {
            op: op.to_string(),
            version: probe.version,
        });
    }
    let env: RequestEnvelope = serde_json::from_slice(payload).map_err(WireError::Malformed)?;
    Ok(Incoming {
        version: probe.version,
        request: env.request,
    })
}

/// The version to answer a request frame in: the plugin's own when it is
/// served, else this agent's.
pub fn answer_version(request_payload: &[u8]) -> u32 {
    serde_json::from_slice::<Probe>(request_payload)
        .ok()
        .map(|p| p.version)
        .filter(|v| (OLDEST_SERVED..=PROTOCOL_VERSION).contains(v))
        .unwrap_or(PROTOCOL_VERSION)
}

/// Serialises a reply into a frame payload, in the protocol `version` the
/// request came in (see [`answer_version`]). Protocol 1 and 2 replies have
/// the same fields; a field added later must be left out for older ones
/// (`ClaimView::requested` and `ipv6`: a protocol-1 client refuses unknown
/// fields).
pub fn encode_reply(reply: &Reply, version: u32) -> Result<Vec<u8>, WireError> {
    let outcome = match reply {
        Ok(Response::Claims { claims }) if version < 2 => Outcome::Ok(Response::Claims {
            claims: claims
                .iter()
                .map(|c| ClaimView {
                    requested: false,
                    ipv6: None,
                    ..c.clone()
                })
                .collect(),
        }),
        Ok(r) => Outcome::Ok(r.clone()),
        Err(e) => Outcome::Error(AgentError {
            kind: e.kind.in_protocol(version),
            ..e.clone()
        }),
    };
    checked(serde_json::to_vec(&ReplyEnvelope { version, outcome }))
}

/// Parses a frame payload into a reply of this version or the next; an
/// agent of another version is named with what it said.
pub fn decode_reply(payload: &[u8]) -> Result<Reply, WireError> {
    let probe: Probe = serde_json::from_slice(payload).map_err(WireError::Malformed)?;
    if !(PROTOCOL_VERSION..=NEWEST_ACCEPTED).contains(&probe.version) {
        return Err(WireError::ReplyVersion {
            got: probe.version,
            said: probe
                .error
                .as_ref()
                .and_then(|e| e.get("message"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string),
        });
    }
    let env: ReplyEnvelope = serde_json::from_slice(payload).map_err(WireError::Malformed)?;
    Ok(match env.outcome {
        Outcome::Ok(r) => Ok(r),
        Outcome::Error(e) => Err(e),
    })
}

/// The frame header for a payload.
pub fn frame_header(payload_len: usize) -> Result<[u8; 4], WireError> {
    if payload_len > MAX_FRAME {
        return Err(WireError::TooLarge(payload_len));
    }
    Ok((payload_len as u32).to_be_bytes())
}

/// The payload length a header announces, refused if above [`MAX_FRAME`].
pub fn parse_header(header: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    Ok(len)
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> Result<(), WireError> {
    w.write_all(&frame(payload)?)?;
    w.flush()?;
    Ok(())
}

/// One frame, header and payload in one buffer: written in one call, so
/// the reader wakes once for all of it (a header written on its own wakes
/// a blocked reader that then sleeps again until the payload comes).
pub fn frame(payload: &[u8]) -> Result<Vec<u8>, WireError> {
    let header = frame_header(payload.len())?;
    let mut frame = Vec::with_capacity(header.len() + payload.len());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Reads one frame.
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, WireError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let len = parse_header(header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(payload)
}

fn checked(bytes: serde_json::Result<Vec<u8>>) -> Result<Vec<u8>, WireError> {
    let bytes = bytes.map_err(WireError::Malformed)?;
    if bytes.len() > MAX_FRAME {
        return Err(WireError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
