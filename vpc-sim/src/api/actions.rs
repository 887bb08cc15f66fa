//! The VPC actions, each a function of the world and the request's JSON
//! parameters to the response's fields.

use std::net::Ipv4Addr;

use serde_json::{Value, json};
use tencent_api::errors::Kind;

use super::ApiError;
use crate::model::{Eni, ModelError};
use crate::world::{SharedWorld, SimError, World};

/// Runs one action.
pub fn run(
    world: &SharedWorld,
    action: &str,
    p: &Value,
    max_addresses: usize,
) -> Result<Value, ApiError> {
    if let Some(done) = super::actions6::run(world, action, p, max_addresses) {
        return done;
    }
    match action {
        "DescribeNetworkInterfaceLimit" => read(world, |w| {
            let id = text(p, "InstanceId")?;
            let ins = w
                .vpc
                .instances
                .get(id)
                .ok_or_else(|| not_found("instance", id))?;
            Ok(json!({
                "EniQuantity": ins.max_enis.saturating_sub(1),
                "EniPrivateIpAddressQuantity": ins.max_ips_per_eni,
                "ExtendEniQuantity": 0,
                "ExtendEniPrivateIpAddressQuantity": 0,
            }))
        }),
        "DescribeNetworkInterfaces" => read(world, |w| describe_enis(w, p)),
        "DescribeVpcs" => read(world, |w| {
            let ids = strings(p, "VpcIds");
            let vpcs: Vec<Value> = [&w.vpc]
                .into_iter()
                .filter(|v| ids.is_empty() || ids.contains(&v.id))
                .filter(|v| matches(&filters(p), "vpc-id", &v.id))
                .filter(|v| {
                    let block = v.ipv6_block.map(|b| b.to_string()).unwrap_or_default();
                    matches(&filters(p), "ipv6-cidr-block", &block)
                })
                .map(|v| {
                    let block = v.ipv6_block.map(|b| b.to_string()).unwrap_or_default();
                    let blocks: Vec<Value> = v
                        .ipv6_block
                        .iter()
                        .map(|b| json!({ "IPv6CidrBlock": b.to_string(), "ISPType": "BGP", "AddressType": "GUA" }))
                        .collect();
                    json!({
                        "VpcId": v.id, "VpcName": v.id, "CidrBlock": v.cidr.to_string(),
                        "IsDefault": false, "EnableMulticast": false, "AssistantCidrSet": [],
                        "Ipv6CidrBlock": block, "Ipv6CidrBlockSet": blocks,
                    })
                })
                .collect();
            Ok(json!({ "TotalCount": vpcs.len(), "VpcSet": vpcs }))
        }),
        "DescribeSubnets" => read(world, |w| {
            let filters = filters(p);
            let ids = strings(p, "SubnetIds");
            let subnets: Vec<Value> = w
                .vpc
                .subnets
                .values()
                .filter(|s| ids.is_empty() || ids.contains(&s.id))
                .filter(|s| matches(&filters, "subnet-id", &s.id))
                .filter(|s| matches(&filters, "zone", &s.zone))
                .filter(|_| matches(&filters, "vpc-id", &w.vpc.id))
                .filter(|s| matches(&filters, "ipv6-cidr-block", &ipv6_block(s)))
                .map(|s| {
                    json!({
                        "VpcId": w.vpc.id, "SubnetId": s.id, "SubnetName": s.id, "CidrBlock": s.cidr.to_string(),
                        "Zone": s.zone, "AvailableIpAddressCount": s.free_ips(),
                        "TotalIpAddressCount": s.cidr.size().saturating_sub(3), "IsDefault": false,
                        "Ipv6CidrBlock": ipv6_block(s),
                    })
                })
                .collect();
            Ok(json!({ "TotalCount": subnets.len(), "SubnetSet": subnets }))
        }),
        "CreateNetworkInterface" => write(world, |w| {
            let vpc = text(p, "VpcId")?;
            if vpc != w.vpc.id {
                return Err(not_found("VPC", vpc).into());
            }
            let eni = w.create_eni(text(p, "SubnetId")?)?;
            let count = number(p, "SecondaryPrivateIpAddressCount").unwrap_or(0);
            let assigned = if count > 0 {
                w.assign_ips(&eni.id, count)
                    .map(|_| ())
                    .map_err(ApiError::from)
            } else {
                Ok(())
            }
            .and_then(|()| super::actions6::on_create(w, &eni.id, p, max_addresses));
            if let Err(e) = assigned {
                // The call fails whole: the new ENI goes again.
                w.delete_eni(&eni.id)?;
                return Err(e);
            }
            let tags: Vec<(String, String)> = p
                .get("Tags")
                .and_then(Value::as_array)
                .map(|t| {
                    t.iter()
                        .filter_map(|kv| {
                            Some((
                                kv.get("Key")?.as_str()?.to_string(),
                                kv.get("Value")?.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let stored = w.vpc.enis.get_mut(&eni.id).expect("just created");
            stored.tags.extend(tags);
            let eni = stored.clone();
            Ok(json!({ "NetworkInterface": eni_json(w, &eni) }))
        }),
        "AttachNetworkInterface" => write(world, |w| {
            w.attach_eni(text(p, "NetworkInterfaceId")?, text(p, "InstanceId")?)?;
            Ok(json!({}))
        }),
        "DetachNetworkInterface" => write(world, |w| {
            let id = text(p, "NetworkInterfaceId")?;
            let on = w.vpc.enis.get(id).and_then(|e| e.attached_to.clone());
            if on.as_deref() != Some(text(p, "InstanceId")?) {
                return Err(ModelError::InvalidState(format!(
                    "{id} is not attached to that instance"
                ))
                .into());
            }
            w.detach_eni(id)?;
            Ok(json!({}))
        }),
        "DeleteNetworkInterface" => write(world, |w| {
            w.delete_eni(text(p, "NetworkInterfaceId")?)?;
            Ok(json!({}))
        }),
        // Named addresses (`PrivateIpAddresses`, at most 10), a count
        // (`SecondaryPrivateIpAddressCount`), or both, as the real API takes.
        "AssignPrivateIpAddresses" => write(world, |w| {
            let id = text(p, "NetworkInterfaceId")?;
            let named = match p.get("PrivateIpAddresses") {
                None => Vec::new(),
                Some(_) => addresses(p)?,
            };
            too_many(&named, max_addresses)?;
            let count = number(p, "SecondaryPrivateIpAddressCount");
            if named.is_empty() && count.is_none() {
                return Err(ApiError::new(
                    Kind::InvalidParameter,
                    "PrivateIpAddresses or SecondaryPrivateIpAddressCount is required",
                ));
            }
            w.assign_named_ips(id, &named)?;
            let mut ips = named;
            if let Some(count) = count.filter(|c| *c > 0) {
                match w.assign_ips(id, count) {
                    Ok(more) => ips.extend(more),
                    Err(e) => {
                        // The call fails whole: the named ones go back.
                        w.unassign_ips(id, &ips)?;
                        return Err(e.into());
                    }
                }
            }
            Ok(
                json!({ "PrivateIpAddressSet": ips.iter().map(|ip| ip_json(*ip, false)).collect::<Vec<_>>() }),
            )
        }),
        "UnassignPrivateIpAddresses" => write(world, |w| {
            let id = text(p, "NetworkInterfaceId")?;
            let ips = addresses(p)?;
            too_many(&ips, max_addresses)?;
            w.unassign_ips(id, &ips)?;
            Ok(json!({}))
        }),
        "MigratePrivateIpAddress" => write(world, |w| {
            let from = text(p, "SourceNetworkInterfaceId")?;
            let to = text(p, "DestinationNetworkInterfaceId")?;
            let ip: Ipv4Addr = text(p, "PrivateIpAddress")?.parse().map_err(|_| {
                ApiError::new(
                    Kind::InvalidParameter,
                    "PrivateIpAddress is not an IPv4 address",
                )
            })?;
            w.migrate_ip(from, to, ip)?;
            Ok(json!({}))
        }),
        other => Err(ApiError::new(
            Kind::InvalidParameter,
            format!("action {other} is not supported by the emulator"),
        )),
    }
}

/// `InvalidParameterValue.LimitExceeded` when a call names more addresses
/// than one call may.
pub(super) fn too_many<T>(ips: &[T], max: usize) -> Result<(), ApiError> {
    if ips.len() > max {
        return Err(ApiError::new(
            Kind::TooManyValues,
            format!(
                "the call names {} addresses; at most {max} may be given in one call",
                ips.len()
            ),
        ));
    }
    Ok(())
}

fn describe_enis(w: &World, p: &Value) -> Result<Value, ApiError> {
    let filters = filters(p);
    let ids = strings(p, "NetworkInterfaceIds");
    let all: Vec<&Eni> = w
        .vpc
        .enis
        .values()
        .filter(|e| ids.is_empty() || ids.contains(&e.id))
        .filter(|_| matches(&filters, "vpc-id", &w.vpc.id))
        .filter(|e| matches(&filters, "subnet-id", &e.subnet_id))
        .filter(|e| matches(&filters, "network-interface-id", &e.id))
        .filter(|e| {
            matches(
                &filters,
                "attachment.instance-id",
                e.attached_to.as_deref().unwrap_or(""),
            )
        })
        .filter(|e| {
            matches(
                &filters,
                "is-primary",
                if e.primary { "true" } else { "false" },
            )
        })
        .filter(|e| {
            // `address-ipv6`: any of the ENI's IPv6 addresses.
            filters
                .iter()
                .filter(|(n, _)| n == "address-ipv6")
                .all(|(_, values)| {
                    values.iter().any(|v| {
                        v.parse::<std::net::Ipv6Addr>()
                            .is_ok_and(|ip| e.ipv6_addresses.contains(&ip))
                    })
                })
        })
        .filter(|e| {
            filters
                .iter()
                .filter_map(|(name, values)| name.strip_prefix("tag:").map(|k| (k, values)))
                .all(|(key, values)| e.tags.get(key).is_some_and(|v| values.contains(v)))
        })
        .collect();
    let offset = number(p, "Offset").unwrap_or(0) as usize;
    let limit = number(p, "Limit").unwrap_or(20).clamp(1, 100) as usize;
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|e| eni_json(w, e))
        .collect();
    Ok(json!({ "TotalCount": all.len(), "NetworkInterfaceSet": page }))
}

/// A subnet's IPv6 block as the API shows it, `""` when it has none.
fn ipv6_block(s: &crate::model::Subnet) -> String {
    s.ipv6
        .as_ref()
        .map(|p| p.cidr.to_string())
        .unwrap_or_default()
}

fn eni_json(w: &World, e: &Eni) -> Value {
    let zone = w
        .vpc
        .subnets
        .get(&e.subnet_id)
        .map(|s| s.zone.clone())
        .unwrap_or_default();
    let mut ips = vec![ip_json(e.primary_ip, true)];
    ips.extend(e.secondary_ips.iter().map(|ip| ip_json(*ip, false)));
    json!({
        "NetworkInterfaceId": e.id,
        "NetworkInterfaceName": e.id,
        "NetworkInterfaceDescription": "",
        "VpcId": w.vpc.id,
        "SubnetId": e.subnet_id,
        "MacAddress": e.mac.to_ascii_uppercase(),
        "State": "AVAILABLE",
        "Primary": e.primary,
        "Zone": zone,
        "PrivateIpAddressSet": ips,
        "Ipv6AddressSet": e.ipv6_addresses.iter().map(|ip| super::actions6::address_json(*ip, "AVAILABLE")).collect::<Vec<_>>(),
        "Attachment": e.attached_to.as_ref().map(|i| json!({
            "InstanceId": i, "DeviceIndex": e.device_index.unwrap_or(0), "InstanceAccountId": "", "AttachTime": "",
        })),
        "TagSet": e.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
        "GroupSet": [],
        "CreatedTime": tencent_api::time::api_datetime(e.created_unix),
    })
}

fn ip_json(ip: Ipv4Addr, primary: bool) -> Value {
    json!({ "PrivateIpAddress": ip.to_string(), "Primary": primary, "State": "AVAILABLE", "IsWanIpBlocked": false })
}

fn read(
    world: &SharedWorld,
    f: impl FnOnce(&World) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    world.view(f).map_err(api_error)?
}

pub(super) fn write(
    world: &SharedWorld,
    f: impl FnOnce(&mut World) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let mut failure = None;
    // Each action's change is whole or nothing (a second step that fails
    // undoes the first), so the world needs no copy to roll back.
    let out = world.update_atomic(|w| {
        f(w).map_err(|e| {
            failure = Some(e);
            SimError::State {
                path: String::new(),
                detail: String::new(),
            }
        })
    });
    match (out, failure) {
        (_, Some(e)) => Err(e),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(api_error(e)),
    }
}

pub(super) fn text<'a>(p: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    p.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::new(Kind::InvalidParameter, format!("{key} is required")))
}

pub(super) fn number(p: &Value, key: &str) -> Option<u32> {
    p.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

fn strings(p: &Value, key: &str) -> Vec<String> {
    p.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn addresses(p: &Value) -> Result<Vec<Ipv4Addr>, ApiError> {
    p.get("PrivateIpAddresses")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::new(Kind::InvalidParameter, "PrivateIpAddresses is required"))?
        .iter()
        .map(|a| {
            a.get("PrivateIpAddress")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::new(Kind::InvalidParameter, "bad PrivateIpAddress"))
        })
        .collect()
}

fn filters(p: &Value) -> Vec<(String, Vec<String>)> {
    p.get("Filters")
        .and_then(Value::as_array)
        .map(|fs| {
            fs.iter()
                .filter_map(|f| Some((f.get("Name")?.as_str()?.to_string(), strings(f, "Values"))))
                .collect()
        })
        .unwrap_or_default()
}

fn matches(filters: &[(String, Vec<String>)], name: &str, value: &str) -> bool {
    filters
        .iter()
        .filter(|(n, _)| n == name)
        .all(|(_, values)| values.iter().any(|v| v == value))
}

fn not_found(kind: &'static str, id: &str) -> ModelError {
    ModelError::NotFound {
        kind,
        id: id.into(),
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> ApiError {
        let kind = match &e {
            ModelError::NotFound { .. } => Kind::NotFound,
            ModelError::EniQuotaExceeded { .. } => Kind::EniQuotaExceeded,
            ModelError::InstanceEniLimit { .. } => Kind::InstanceEniLimit,
            ModelError::EniIpLimit { .. } => Kind::EniIpLimit,
            ModelError::SubnetExhausted(_) => Kind::SubnetExhausted,
            ModelError::ZoneMismatch { .. } => Kind::ZoneMismatch,
            ModelError::InvalidState(_) => Kind::InvalidState,
            ModelError::InvalidParameter(_) => Kind::InvalidParameter,
            ModelError::AddressInUse(_) => Kind::AddressInUse,
            ModelError::AddressOutOfSubnet { .. } => Kind::OutOfRange,
            ModelError::Ipv6BlockAssigned(_) => Kind::Ipv6BlockAssigned,
            ModelError::SubnetIpv6BlockAssigned(_) => Kind::SubnetIpv6BlockAssigned,
            ModelError::NoIpv6Block(_) => Kind::NoIpv6Block,
            ModelError::Ipv6SubnetRange(_) => Kind::SubnetRange,
            ModelError::Ipv6SubnetConflict(_) => Kind::SubnetConflict,
            ModelError::Ipv6Limit { .. } => Kind::AddressLimit,
            ModelError::Ipv6InUse(_) => Kind::AddressUsed,
            ModelError::Ipv6OutOfSubnet { .. } => Kind::OutOfRange,
            ModelError::Ipv6Reserved(_) => Kind::Reserved,
            ModelError::Ipv6NotOnEni { .. } => Kind::AttachmentNotFound,
        };
        ApiError::new(kind, e.to_string())
    }
}

impl From<SimError> for ApiError {
    fn from(e: SimError) -> ApiError {
        api_error(e)
    }
}

fn api_error(e: SimError) -> ApiError {
    match e {
        SimError::Model(m) => m.into(),
        other => ApiError::new(Kind::Internal, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Cidr;
    use crate::world::{NodeLimits, SUBNET_ID};

    /// A call whose second step fails fails whole, in a world in memory
    /// (changed in place, no copy kept): nothing of its first step stays.
    #[test]
    fn a_call_that_fails_half_way_leaves_the_world_as_it_was() {
        let world = SharedWorld::in_memory(
            World::with_subnet(
                1,
                NodeLimits::default(),
                10,
                Cidr::parse("10.0.16.0/28").expect("cidr"),
            )
            .expect("world"),
        );
        let before = world.read().expect("read");
        let free = |w: &World| w.vpc.subnets[SUBNET_ID].free_ips();
        let too_many = free(&before);
        let failed = run(
            &world,
            "CreateNetworkInterface",
            &json!({
                "VpcId": before.vpc.id,
                "SubnetId": SUBNET_ID,
                "SecondaryPrivateIpAddressCount": too_many,
            }),
            10,
        );
        assert_eq!(failed.map_err(|e| e.kind), Err(Kind::SubnetExhausted));
        let after = world.read().expect("read");
        assert_eq!(after.vpc.enis.len(), before.vpc.enis.len(), "no ENI left");
        assert_eq!(free(&after), free(&before), "no address taken");

        // Named addresses, then a count that cannot be had: the named ones
        // are free again.
        let eni = run(
            &world,
            "CreateNetworkInterface",
            &json!({ "VpcId": before.vpc.id, "SubnetId": SUBNET_ID }),
            10,
        )
        .expect("create")["NetworkInterface"]["NetworkInterfaceId"]
            .as_str()
            .expect("id")
            .to_string();
        let held = free(&world.read().expect("read"));
        let named = "10.0.16.14";
        let failed = run(
            &world,
            "AssignPrivateIpAddresses",
            &json!({
                "NetworkInterfaceId": eni,
                "PrivateIpAddresses": [{ "PrivateIpAddress": named }],
                "SecondaryPrivateIpAddressCount": held,
            }),
            10,
        );
        assert_eq!(failed.map_err(|e| e.kind), Err(Kind::SubnetExhausted));
        let after = world.read().expect("read");
        assert_eq!(free(&after), held, "the named address is free again");
        assert!(after.vpc.enis[&eni].secondary_ips.is_empty());
    }
}
