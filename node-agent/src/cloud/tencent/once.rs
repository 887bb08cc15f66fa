//! The mutating calls that must not take effect twice, each with the look
//! at the ENI that tells whether an earlier attempt already did: when an
//! attempt's outcome is unknown ([`Transport::call_once_only`]), and for
//! most of them when the API refuses a resent request as already done.
//! Blocking, like the transport.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Value, json};

use super::decode::{addresses, eni as to_eni, ipv6_addresses};
use super::transport::{Confirm, Transport};
use crate::cloud::{CloudError, Eni};

/// `AssignPrivateIpAddresses` by count: the IPs the ENI has beyond `held`
/// are what a lost attempt assigned.
pub fn assign_count(
    t: &Transport,
    eni_id: &str,
    count: u32,
    held: &[Ipv4Addr],
) -> Result<Vec<Ipv4Addr>, CloudError> {
    let params = json!({ "NetworkInterfaceId": eni_id, "SecondaryPrivateIpAddressCount": count });
    t.call_once_only(
        "AssignPrivateIpAddresses",
        &params,
        |out| {
            Ok(addresses(out.get("PrivateIpAddressSet"))
                .into_iter()
                .map(|(ip, _)| ip)
                .collect())
        },
        |t| {
            let new: Vec<Ipv4Addr> = secondary_ips(t, eni_id)?
                .into_iter()
                .filter(|ip| !held.contains(ip))
                .collect();
            Ok((!new.is_empty()).then_some(new))
        },
    )
}

/// `AssignPrivateIpAddresses` by name (at most 10): done when all are on
/// the ENI, also when refused as in use.
pub fn assign_named(t: &Transport, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), CloudError> {
    let list: Vec<Value> = ips
        .iter()
        .map(|ip| json!({ "PrivateIpAddress": ip.to_string() }))
        .collect();
    let params = json!({ "NetworkInterfaceId": eni_id, "PrivateIpAddresses": list });
    let all_there = |t: &Transport| {
        let on = secondary_ips(t, eni_id)?;
        Ok(ips.iter().all(|ip| on.contains(ip)).then_some(()))
    };
    done_unless_refused(t, "AssignPrivateIpAddresses", &params, all_there, true)
}

/// `UnassignPrivateIpAddresses`: done when none is on the ENI any more,
/// also when refused (as not held).
pub fn unassign(t: &Transport, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), CloudError> {
    let list: Vec<Value> = ips
        .iter()
        .map(|ip| json!({ "PrivateIpAddress": ip.to_string() }))
        .collect();
    let params = json!({ "NetworkInterfaceId": eni_id, "PrivateIpAddresses": list });
    let none_there = |t: &Transport| {
        let on = secondary_ips(t, eni_id)?;
        Ok(ips.iter().all(|ip| !on.contains(ip)).then_some(()))
    };
    done_unless_refused(t, "UnassignPrivateIpAddresses", &params, none_there, true)
}

/// `AssignIpv6Addresses` by count: the IPv6 addresses the ENI has beyond
/// `held` are what a lost attempt assigned.
pub fn assign_ipv6_count(
    t: &Transport,
    eni_id: &str,
    count: u32,
    held: &[Ipv6Addr],
) -> Result<Vec<Ipv6Addr>, CloudError> {
    let params = json!({ "NetworkInterfaceId": eni_id, "Ipv6AddressCount": count });
    t.call_once_only(
        "AssignIpv6Addresses",
        &params,
        |out| Ok(ipv6_addresses(out.get("Ipv6AddressSet"))),
        |t| {
            let new: Vec<Ipv6Addr> = ipv6s(t, eni_id)?
                .into_iter()
                .filter(|ip| !held.contains(ip))
                .collect();
            Ok((!new.is_empty()).then_some(new))
        },
    )
}

/// `AssignIpv6Addresses` by name (at most 10): done when all are on the
/// ENI, also when refused as in use.
pub fn assign_ipv6_named(t: &Transport, eni_id: &str, ips: &[Ipv6Addr]) -> Result<(), CloudError> {
    let params = json!({ "NetworkInterfaceId": eni_id, "Ipv6Addresses": ipv6_list(ips) });
    let all_there = |t: &Transport| {
        let on = ipv6s(t, eni_id)?;
        Ok(ips.iter().all(|ip| on.contains(ip)).then_some(()))
    };
    done_unless_refused(t, "AssignIpv6Addresses", &params, all_there, true)
}

/// `UnassignIpv6Addresses` (at most 10): done when none is on the ENI any
/// more, also when refused (as not on it).
pub fn unassign_ipv6(t: &Transport, eni_id: &str, ips: &[Ipv6Addr]) -> Result<(), CloudError> {
    let params = json!({ "NetworkInterfaceId": eni_id, "Ipv6Addresses": ipv6_list(ips) });
    let none_there = |t: &Transport| {
        let on = ipv6s(t, eni_id)?;
        Ok(ips.iter().all(|ip| !on.contains(ip)).then_some(()))
    };
    done_unless_refused(t, "UnassignIpv6Addresses", &params, none_there, true)
}

fn ipv6_list(ips: &[Ipv6Addr]) -> Vec<Value> {
    ips.iter()
        .map(|ip| json!({ "Address": ip.to_string() }))
        .collect()
}

fn ipv6s(t: &Transport, eni_id: &str) -> Result<Vec<Ipv6Addr>, CloudError> {
    Ok(describe_eni(t, eni_id)?
        .map(|e| e.ipv6s)
        .unwrap_or_default())
}

/// `AttachNetworkInterface`: done when the ENI is on `instance`, also when
/// refused (as attached); attached elsewhere, the refusal stands. The
/// attach is confirmed by looking at the ENI (`DescribeNetworkInterfaces`:
/// `ATTACHING` until it is done), not with `DescribeVpcTaskResult`, whose
/// budget (20 a second for the whole account) is the scarcest of all.
pub fn attach(t: &Transport, eni_id: &str, instance: &str) -> Result<(), CloudError> {
    let params = json!({ "NetworkInterfaceId": eni_id, "InstanceId": instance });
    let ours = |t: &Transport| {
        Ok(describe_eni(t, eni_id)?
            .and_then(|e| e.attached_to)
            .filter(|on| on == instance)
            .map(|_| ()))
    };
    let settled = |t: &Transport| -> Result<Option<bool>, CloudError> {
        let Some(raw) = describe_raw(t, eni_id)? else {
            return Ok(None);
        };
        let state = raw.get("State").and_then(Value::as_str).unwrap_or_default();
        let on = raw
            .pointer("/Attachment/InstanceId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok(match state {
            "ATTACHING" | "PENDING" => Some(false),
            _ if on == instance => Some(true),
            _ => None,
        })
    };
    let confirm = Confirm::Look(&settled);
    match t.call_once_only_confirmed(
        "AttachNetworkInterface",
        &params,
        &confirm,
        |_| Ok(()),
        ours,
    ) {
        Err(refusal) => match ours(t) {
            Ok(Some(())) => Ok(()),
            _ => Err(refusal),
        },
        outcome => outcome,
    }
}

/// `DetachNetworkInterface`: done when the ENI is attached nowhere, also
/// when refused (as not attached here); attached elsewhere, the refusal
/// stands.
pub fn detach(t: &Transport, eni_id: &str, instance: &str) -> Result<(), CloudError> {
    let params = json!({ "NetworkInterfaceId": eni_id, "InstanceId": instance });
    let detached = |t: &Transport| {
        Ok(describe_eni(t, eni_id)?
            .is_some_and(|e| e.attached_to.is_none())
            .then_some(()))
    };
    done_unless_refused(t, "DetachNetworkInterface", &params, detached, true)
}

/// `DeleteNetworkInterface`: done when the ENI is gone after an attempt of
/// unknown outcome. A refusal stands: deleting what never existed is the
/// caller's mistake.
pub fn delete(t: &Transport, eni_id: &str) -> Result<(), CloudError> {
    let params = json!({ "NetworkInterfaceId": eni_id });
    let gone = |t: &Transport| Ok(describe_eni(t, eni_id)?.is_none().then_some(()));
    done_unless_refused(t, "DeleteNetworkInterface", &params, gone, false)
}

/// Calls `action` once only; with `recheck`, a refusal is looked at too
/// (a resent request the API refuses because the first one took effect).
fn done_unless_refused(
    t: &Transport,
    action: &str,
    params: &Value,
    done: impl Fn(&Transport) -> Result<Option<()>, CloudError>,
    recheck: bool,
) -> Result<(), CloudError> {
    match t.call_once_only(action, params, |_| Ok(()), &done) {
        Err(refusal) if recheck => match done(t) {
            Ok(Some(())) => Ok(()),
            _ => Err(refusal),
        },
        outcome => outcome,
    }
}

fn secondary_ips(t: &Transport, eni_id: &str) -> Result<Vec<Ipv4Addr>, CloudError> {
    Ok(describe_eni(t, eni_id)?
        .map(|e| e.secondary_ips)
        .unwrap_or_default())
}

/// One ENI by id as the API answers it, `None` if the cloud does not know
/// it.
fn describe_raw(t: &Transport, eni_id: &str) -> Result<Option<Value>, CloudError> {
    let answer = match t.call(
        "DescribeNetworkInterfaces",
        &json!({ "NetworkInterfaceIds": [eni_id] }),
    ) {
        Err(CloudError::NotFound(_)) => return Ok(None),
        other => other?,
    };
    Ok(answer
        .get("NetworkInterfaceSet")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|e| e.get("NetworkInterfaceId").and_then(Value::as_str) == Some(eni_id))
        .cloned())
}

/// One ENI by id, `None` if the cloud does not know it.
pub fn describe_eni(t: &Transport, eni_id: &str) -> Result<Option<Eni>, CloudError> {
    let answer = match t.call(
        "DescribeNetworkInterfaces",
        &json!({ "NetworkInterfaceIds": [eni_id] }),
    ) {
        Err(CloudError::NotFound(_)) => return Ok(None),
        other => other?,
    };
    answer
        .get("NetworkInterfaceSet")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(to_eni)
        .find(|e| e.as_ref().map_or(true, |e| e.id == eni_id))
        .transpose()
}
