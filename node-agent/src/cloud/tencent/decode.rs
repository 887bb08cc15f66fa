//! What the VPC API answers, decoded: the response envelope (with its
//! typed error) and an ENI of `DescribeNetworkInterfaces`. Pure functions
//! of the text, fuzzed from outside (`fuzz/fuzz_targets/tencent_responses.rs`).

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::Value;
use tencent_api::errors::Kind;

use crate::cloud::{CloudError, Eni, Limits, Subnet};

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

/// The subnet of `zone` (among `wanted`, when not empty) with the most
/// free addresses, of a `DescribeSubnets` answer; `None` when there is none.
pub fn best_subnet(
    answer: &Value,
    zone: &str,
    wanted: &[String],
) -> Result<Option<Subnet>, CloudError> {
    let best = candidates(answer, zone, wanted).max_by_key(|s| free_ips(s));
    let Some(best) = best else {
        return Ok(None);
    };
    let cidr = best
        .get("CidrBlock")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let bad = || CloudError::Other(format!("bad CidrBlock {cidr:?}"));
    let (network, prefix_len) = parse_cidr(cidr).ok_or_else(bad)?;
    // The gateway is the first host: a network that has none is not a subnet.
    let gateway = u32::from(network)
        .checked_add(1)
        .filter(|_| (1..=30).contains(&prefix_len))
        .ok_or_else(bad)?;
    Ok(Some(Subnet {
        id: best
            .get("SubnetId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        zone: zone.to_string(),
        gateway: Ipv4Addr::from(gateway),
        network,
        prefix_len,
    }))
}

/// The subnets of `zone` (among `wanted`, when not empty) of a
/// `DescribeSubnets` answer, each with its free addresses
/// (`AvailableIpAddressCount`): those [`best_subnet`] chooses among.
pub fn subnets_free(answer: &Value, zone: &str, wanted: &[String]) -> Vec<(String, u64)> {
    candidates(answer, zone, wanted)
        .filter_map(|s| {
            let id = s.get("SubnetId").and_then(Value::as_str)?;
            Some((id.to_string(), free_ips(s)))
        })
        .collect()
}

/// The subnets of a `DescribeSubnets` answer a node of `zone` may take
/// ENIs from (only `wanted`, when not empty).
fn candidates<'a>(
    answer: &'a Value,
    zone: &'a str,
    wanted: &'a [String],
) -> impl Iterator<Item = &'a Value> {
    answer
        .get("SubnetSet")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |s| s.get("Zone").and_then(Value::as_str) == Some(zone))
        .filter(move |s| {
            wanted.is_empty()
                || s.get("SubnetId")
                    .and_then(Value::as_str)
                    .is_some_and(|i| wanted.iter().any(|w| w == i))
        })
}

/// A subnet's `AvailableIpAddressCount` (0 when missing).
fn free_ips(subnet: &Value) -> u64 {
    subnet
        .get("AvailableIpAddressCount")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// The instance's limits from `DescribeNetworkInterfaceLimit`. A missing
/// or zero limit is an error naming the field: a node that believes it may
/// have no ENI or no IP would sit with an empty pool and say nothing.
pub fn instance_limits(answer: &Value) -> Result<Limits, CloudError> {
    let field = |k: &'static str| match answer.get(k).and_then(Value::as_u64) {
        Some(n) if n > 0 => u32::try_from(n).map_err(|_| CloudError::LimitsMissing(k)),
        _ => Err(CloudError::LimitsMissing(k)),
    };
    Ok(Limits {
        // `EniQuantity` counts the secondary ENIs; the primary comes on top.
        max_enis: field("EniQuantity")?.saturating_add(1),
        max_ips_per_eni: field("EniPrivateIpAddressQuantity")?,
    })
}

/// The CIDR blocks of VPC `vpc_id` in a `DescribeVpcs` answer: its
/// `CidrBlock`, then every `AssistantCidrSet[].CidrBlock`.
pub fn vpc_cidrs(answer: &Value, vpc_id: &str) -> Result<Vec<String>, CloudError> {
    let vpc = answer
        .get("VpcSet")
        .and_then(Value::as_array)
        .and_then(|set| {
            set.iter()
                .find(|v| v.get("VpcId").and_then(Value::as_str) == Some(vpc_id))
        })
        .ok_or_else(|| CloudError::Other(format!("DescribeVpcs does not list {vpc_id}")))?;
    let primary = vpc
        .get("CidrBlock")
        .and_then(Value::as_str)
        .filter(|c| parse_cidr(c).is_some())
        .ok_or_else(|| CloudError::Other(format!("{vpc_id} has no CidrBlock: {vpc}")))?;
    let mut cidrs = vec![primary.to_string()];
    cidrs.extend(
        vpc.get("AssistantCidrSet")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.get("CidrBlock").and_then(Value::as_str))
            .filter(|c| parse_cidr(c).is_some())
            .map(str::to_string),
    );
    Ok(cidrs)
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    Some((ip.parse().ok()?, len.parse().ok()?))
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
        ipv6s: ipv6_addresses(v.get("Ipv6AddressSet")),
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

/// The `Address` of each entry of an `Ipv6AddressSet`.
pub(super) fn ipv6_addresses(set: Option<&Value>) -> Vec<Ipv6Addr> {
    set.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("Address")?.as_str()?.parse().ok())
        .collect()
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
        Kind::EniIpLimit | Kind::AddressLimit => CloudError::IpLimit(message),
        Kind::SubnetExhausted => CloudError::SubnetExhausted(message),
        Kind::NotFound => CloudError::NotFound(message),
        Kind::ZoneMismatch => CloudError::ZoneMismatch(message),
        Kind::AddressInUse | Kind::AddressUsed => CloudError::AddressInUse(message),
        Kind::InvalidState
        | Kind::InvalidParameter
        | Kind::OutOfRange
        | Kind::TooManyValues
        | Kind::Ipv6BlockAssigned
        | Kind::SubnetIpv6BlockAssigned
        | Kind::NoIpv6Block
        | Kind::SubnetRange
        | Kind::SubnetConflict
        | Kind::Reserved
        | Kind::AttachmentNotFound => CloudError::InvalidState(message),
        Kind::Throttled => CloudError::Throttled(message),
        Kind::SignatureFailure
        | Kind::SignatureExpired
        | Kind::SecretIdNotFound
        | Kind::TokenFailure
        | Kind::Unauthorized => CloudError::Auth(message),
        Kind::Internal | Kind::Other => CloudError::Other(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnets(cidr: &str) -> Value {
        serde_json::json!({"SubnetSet": [
            {"SubnetId": "subnet-1", "Zone": "z1", "CidrBlock": cidr, "AvailableIpAddressCount": 5}
        ]})
    }

    #[test]
    fn a_vpcs_cidrs_are_its_block_and_its_secondary_blocks() {
        let answer = serde_json::json!({"VpcSet": [
            {"VpcId": "vpc-other", "CidrBlock": "172.16.0.0/16"},
            {"VpcId": "vpc-1", "CidrBlock": "10.0.0.0/16", "AssistantCidrSet": [
                {"CidrBlock": "10.1.0.0/16", "AssistantType": 0},
                {"CidrBlock": "garbage"}
            ]}
        ]});
        assert_eq!(
            vpc_cidrs(&answer, "vpc-1"),
            Ok(vec!["10.0.0.0/16".to_string(), "10.1.0.0/16".to_string()])
        );
        assert!(vpc_cidrs(&answer, "vpc-2").is_err());
        let broken = serde_json::json!({"VpcSet": [{"VpcId": "vpc-1"}]});
        assert!(vpc_cidrs(&broken, "vpc-1").is_err());
    }

    #[test]
    fn the_subnet_gateway_is_its_first_host() {
        let s = best_subnet(&subnets("10.0.16.0/20"), "z1", &[])
            .expect("ok")
            .expect("a subnet");
        assert_eq!(s.gateway, Ipv4Addr::new(10, 0, 16, 1));
        assert_eq!(best_subnet(&subnets("10.0.16.0/20"), "z2", &[]), Ok(None));
    }

    #[test]
    fn the_free_addresses_are_those_of_the_subnets_the_node_may_use() {
        let answer = serde_json::json!({"SubnetSet": [
            {"SubnetId": "subnet-1", "Zone": "z1", "CidrBlock": "10.0.0.0/24", "AvailableIpAddressCount": 5},
            {"SubnetId": "subnet-2", "Zone": "z1", "CidrBlock": "10.0.1.0/24", "AvailableIpAddressCount": 200},
            {"SubnetId": "subnet-3", "Zone": "z2", "CidrBlock": "10.0.2.0/24", "AvailableIpAddressCount": 9},
            {"SubnetId": "subnet-4", "Zone": "z1", "CidrBlock": "10.0.3.0/24"}
        ]});
        assert_eq!(
            subnets_free(&answer, "z1", &[]),
            vec![
                ("subnet-1".to_string(), 5),
                ("subnet-2".to_string(), 200),
                ("subnet-4".to_string(), 0)
            ]
        );
        assert_eq!(
            subnets_free(&answer, "z1", &["subnet-1".to_string()]),
            vec![("subnet-1".to_string(), 5)]
        );
        let best = best_subnet(&answer, "z1", &[]).expect("ok").expect("one");
        assert_eq!(best.id, "subnet-2");
    }

    #[test]
    fn a_cidr_without_a_first_host_is_an_error_not_an_overflow() {
        for cidr in [
            "255.255.255.255/32",
            "10.0.0.0/31",
            "10.0.0.0/0",
            "10.0.0.0/x",
            "",
        ] {
            assert!(
                best_subnet(&subnets(cidr), "z1", &[]).is_err(),
                "{cidr} was accepted"
            );
        }
    }
}
