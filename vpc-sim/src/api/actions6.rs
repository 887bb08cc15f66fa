//! The VPC API's IPv6 actions (as the official SDKs define them, version
//! 2017-03-12): a block for the VPC (`AssignIpv6CidrBlock`, a /56), a /64
//! of it for subnets (`AssignIpv6SubnetCidrBlock`), and addresses for an
//! ENI (`AssignIpv6Addresses`: at most 10 named, or a count, or both;
//! `UnassignIpv6Addresses`: at most 10; both asynchronous, their
//! `RequestId` a task), and the IPv6 parameters of `CreateNetworkInterface`
//! (`Ipv6Addresses`, `Ipv6AddressCount` 1 to 10). There is no migrate for
//! IPv6: `MigratePrivateIpAddress` takes IPv4 only.

use std::net::Ipv6Addr;

use serde_json::{Value, json};
use tencent_api::errors::Kind;

use super::ApiError;
use super::actions::{number, text, too_many, write};
use crate::world::{SharedWorld, World};

/// Runs `action` if it is one of the IPv6 actions.
pub(super) fn run(
    world: &SharedWorld,
    action: &str,
    p: &Value,
    max_addresses: usize,
) -> Option<Result<Value, ApiError>> {
    Some(match action {
        "AssignIpv6CidrBlock" => write(world, |w| {
            same_vpc(w, p)?;
            let block = w.vpc.assign_ipv6_block()?;
            Ok(json!({ "Ipv6CidrBlock": block.to_string(), "AddressType": "GUA" }))
        }),
        "AssignIpv6SubnetCidrBlock" => write(world, |w| {
            same_vpc(w, p)?;
            let pairs = subnet_blocks(p)?;
            let done = w.assign_subnet_ipv6_blocks(&pairs)?;
            Ok(json!({ "Ipv6SubnetCidrBlockSet": done
                .iter()
                .map(|(s, c)| json!({ "SubnetId": s, "Ipv6CidrBlock": c.to_string() }))
                .collect::<Vec<_>>() }))
        }),
        "AssignIpv6Addresses" => write(world, |w| {
            let id = text(p, "NetworkInterfaceId")?;
            let named = match p.get("Ipv6Addresses") {
                None => Vec::new(),
                Some(_) => addresses(p)?,
            };
            too_many(&named, max_addresses)?;
            let count = number(p, "Ipv6AddressCount");
            if named.is_empty() && count.is_none() {
                return Err(ApiError::new(
                    Kind::InvalidParameter,
                    "Ipv6Addresses or Ipv6AddressCount is required",
                ));
            }
            let ips = w.assign_ipv6(id, &named, count.unwrap_or(0))?;
            Ok(
                json!({ "Ipv6AddressSet": ips.iter().map(|ip| address_json(*ip, "PENDING")).collect::<Vec<_>>() }),
            )
        }),
        "UnassignIpv6Addresses" => write(world, |w| {
            let id = text(p, "NetworkInterfaceId")?;
            let ips = addresses(p)?;
            if ips.is_empty() {
                return Err(ApiError::new(
                    Kind::InvalidParameter,
                    "Ipv6Addresses is required",
                ));
            }
            too_many(&ips, max_addresses)?;
            w.unassign_ipv6(id, &ips)?;
            Ok(json!({}))
        }),
        _ => return None,
    })
}

/// The IPv6 addresses `CreateNetworkInterface` asks for the new ENI
/// `eni` (`Ipv6Addresses`, `Ipv6AddressCount` 1 to 10), assigned; nothing
/// when it asks for none.
pub(super) fn on_create(
    w: &mut World,
    eni: &str,
    p: &Value,
    max_addresses: usize,
) -> Result<(), ApiError> {
    let named = match p.get("Ipv6Addresses") {
        None => Vec::new(),
        Some(_) => addresses(p)?,
    };
    too_many(&named, max_addresses)?;
    let count = number(p, "Ipv6AddressCount");
    if let Some(n) = count
        && !(1..=10).contains(&n)
    {
        return Err(ApiError::new(
            Kind::OutOfRange,
            format!("Ipv6AddressCount {n} is not in [1, 10]"),
        ));
    }
    if named.is_empty() && count.is_none() {
        return Ok(());
    }
    w.assign_ipv6(eni, &named, count.unwrap_or(0))?;
    Ok(())
}

/// One `Ipv6Address` as the API shows it.
pub(super) fn address_json(ip: Ipv6Addr, state: &str) -> Value {
    json!({
        "Address": ip.to_string(), "Primary": false, "AddressId": "",
        "Description": "", "IsWanIpBlocked": false, "State": state,
    })
}

fn same_vpc(w: &World, p: &Value) -> Result<(), ApiError> {
    let vpc = text(p, "VpcId")?;
    if vpc != w.vpc.id {
        return Err(ApiError::new(
            Kind::NotFound,
            format!("VPC {vpc} not found"),
        ));
    }
    Ok(())
}

/// `Ipv6SubnetCidrBlocks`: (subnet, block) pairs, both required.
fn subnet_blocks(p: &Value) -> Result<Vec<(String, String)>, ApiError> {
    let missing = || {
        ApiError::new(
            Kind::InvalidParameter,
            "Ipv6SubnetCidrBlocks needs SubnetId and Ipv6CidrBlock",
        )
    };
    let pairs: Vec<(String, String)> = p
        .get("Ipv6SubnetCidrBlocks")
        .and_then(Value::as_array)
        .ok_or_else(missing)?
        .iter()
        .map(|b| {
            Some((
                b.get("SubnetId")?.as_str()?.to_string(),
                b.get("Ipv6CidrBlock")?.as_str()?.to_string(),
            ))
        })
        .collect::<Option<_>>()
        .ok_or_else(missing)?;
    if pairs.is_empty() {
        return Err(missing());
    }
    Ok(pairs)
}

/// `Ipv6Addresses`: `Address` of each (never `Primary`: IPv6 addresses are
/// secondary only).
fn addresses(p: &Value) -> Result<Vec<Ipv6Addr>, ApiError> {
    p.get("Ipv6Addresses")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::new(Kind::InvalidParameter, "Ipv6Addresses is required"))?
        .iter()
        .map(|a| {
            if a.get("Primary").and_then(Value::as_bool) == Some(true) {
                return Err(ApiError::new(
                    Kind::InvalidParameter,
                    "an IPv6 address cannot be primary",
                ));
            }
            a.get("Address")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::new(Kind::InvalidParameter, "bad Ipv6Address.Address"))
        })
        .collect()
}
