//! Tencent Cloud API 3.0 pieces that the agent's client and `vpc-sim`'s
//! emulator must agree on byte for byte: request signing
//! (TC3-HMAC-SHA256), the error codes the VPC API answers with, and the
//! zone and format of its times.

pub mod errors;
pub mod sign;
pub mod time;

/// The VPC API's documented per-second request rates of the actions vpc-cni
/// calls, for one account (all its callers together): what `vpc-sim`'s
/// emulator enforces and the cluster's cloud gateway keeps below. Sources:
/// each action's API page, "默认接口请求频率限制" (`vpc-sim/src/api/limits.rs`
/// lists them); `DeleteNetworkInterface` and `MigratePrivateIpAddress` were
/// not checked and get 100.
pub const DOCUMENTED_RATES: &[(&str, u32)] = &[
    ("CreateNetworkInterface", 100),
    ("AttachNetworkInterface", 50),
    ("DetachNetworkInterface", 50),
    ("DeleteNetworkInterface", 100),
    ("AssignPrivateIpAddresses", 100),
    ("UnassignPrivateIpAddresses", 100),
    ("MigratePrivateIpAddress", 100),
    ("DescribeNetworkInterfaces", 100),
    ("DescribeSubnets", 100),
    ("DescribeVpcTaskResult", 20),
    ("DescribeNetworkInterfaceLimit", 20),
    ("AssignIpv6CidrBlock", 20),
    ("AssignIpv6SubnetCidrBlock", 20),
    ("AssignIpv6Addresses", 20),
    ("UnassignIpv6Addresses", 20),
];

/// Whether a VPC action completes asynchronously: its `RequestId` is then a
/// task id to poll with `DescribeVpcTaskResult`.
pub fn is_async(action: &str) -> bool {
    matches!(
        action,
        "AttachNetworkInterface"
            | "DetachNetworkInterface"
            | "DeleteNetworkInterface"
            | "AssignPrivateIpAddresses"
            | "UnassignPrivateIpAddresses"
            | "MigratePrivateIpAddress"
            | "AssignIpv6Addresses"
            | "UnassignIpv6Addresses"
    )
}
