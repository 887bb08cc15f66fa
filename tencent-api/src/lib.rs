//! Tencent Cloud API 3.0 pieces that the agent's client and `vpc-sim`'s
//! emulator must agree on byte for byte: request signing
//! (TC3-HMAC-SHA256), the error codes the VPC API answers with, and the
//! zone and format of its times.

pub mod errors;
pub mod sign;
pub mod time;

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
    )
}
