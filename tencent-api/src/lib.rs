//! Tencent Cloud API 3.0 pieces that the agent's client and `vpc-sim`'s
//! emulator must agree on byte for byte: request signing
//! (TC3-HMAC-SHA256) and the error codes the VPC API answers with.

pub mod errors;
pub mod sign;

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
