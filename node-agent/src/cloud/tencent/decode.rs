//! What the VPC API answers, decoded: the response envelope (with its
//! typed error) and an ENI of `DescribeNetworkInterfaces`. Pure functions
//! of the text, fuzzed from outside (`fuzz/fuzz_targets/tencent_responses.rs`).

use std::net::Ipv4Addr;

use serde_json::Value;
use tencent_api::errors::Kind;

use crate::cloud::{CloudError, Eni};

/// The `Response` object of an answer to `action` with HTTP `status`, or
/// the error it carries, typed; `Kind::Internal` when the outcome is
/// unknown (a server error).
pub fn response(action: &str, status: u16, text: &str) -> Result<Value, (Kind, CloudError)> {
    if status >= 500 {
        return Err((
            Kind::Internal,
            CloudError::Other(format!("{action}: HTTP {status}")),
        ));
    }
    let envelope: Value = serde_json::from_str(text).map_err(|e| {
        (
            Kind::Other,
            CloudError::Other(format!("{action}: response is not JSON: {e}")),
        )
    })?;
    let response = envelope.get("Response").cloned().unwrap_or(Value::Null);
    if let Some(error) = response.get("Error") {
        let code = error
            .get("Code")
            .and_then(Value::as_str)
            .unwrap_or("UnknownError");
        let message = error
            .get("Message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = Kind::of(code);
        return Err((kind, typed(kind, format!("{action}: {code}: {message}"))));
    }
    Ok(response)
}

/// One ENI of a `NetworkInterfaceSet`.
pub fn eni(v: &Value) -> Result<Eni, CloudError> {
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let id = text("NetworkInterfaceId");
    if id.is_empty() {
        return Err(CloudError::Other(format!(
            "an ENI without NetworkInterfaceId: {v}"
        )));
    }
    let ips = addresses(v.get("PrivateIpAddressSet"));
    let primary_ip = ips
        .iter()
        .find(|(_, primary)| *primary)
        .map(|(ip, _)| *ip)
        .ok_or_else(|| CloudError::Other(format!("ENI {id} has no primary IP")))?;
    Ok(Eni {
        mac: text("MacAddress").to_ascii_lowercase(),
        subnet_id: text("SubnetId"),
        primary_ip,
        secondary_ips: ips.iter().filter(|(_, p)| !p).map(|(ip, _)| *ip).collect(),
        primary: v.get("Primary").and_then(Value::as_bool).unwrap_or(false),
        attached_to: v
            .get("Attachment")
            .and_then(|a| a.get("InstanceId"))
            .and_then(Value::as_str)
            .map(str::to_string),
        created_unix: v
            .get("CreatedTime")
            .and_then(Value::as_str)
            .and_then(tencent_api::time::parse_api_datetime),
        id,
    })
}

pub(super) fn addresses(set: Option<&Value>) -> Vec<(Ipv4Addr, bool)> {
    set.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let ip = a.get("PrivateIpAddress")?.as_str()?.parse().ok()?;
            Some((
                ip,
                a.get("Primary").and_then(Value::as_bool).unwrap_or(false),
            ))
        })
        .collect()
}

/// The cloud error for an API error kind.
fn typed(kind: Kind, message: String) -> CloudError {
    match kind {
        Kind::EniQuotaExceeded => CloudError::EniQuota(message),
        Kind::InstanceEniLimit => CloudError::EniLimit(message),
        Kind::EniIpLimit => CloudError::IpLimit(message),
        Kind::SubnetExhausted => CloudError::SubnetExhausted(message),
        Kind::NotFound => CloudError::NotFound(message),
        Kind::ZoneMismatch => CloudError::ZoneMismatch(message),
        Kind::AddressInUse => CloudError::AddressInUse(message),
        Kind::InvalidState | Kind::InvalidParameter | Kind::OutOfRange => {
            CloudError::InvalidState(message)
        }
        Kind::Throttled => CloudError::Throttled(message),
        Kind::SignatureFailure | Kind::SignatureExpired | Kind::SecretIdNotFound => {
            CloudError::Auth(message)
        }
        Kind::Internal | Kind::Other => CloudError::Other(message),
    }
}
