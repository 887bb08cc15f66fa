//! Tencent Cloud API 3.0 pieces that the agent's client and `vpc-sim`'s
//! emulator must agree on byte for byte: request signing
//! (TC3-HMAC-SHA256) and the error codes the VPC API answers with.

pub mod errors;
pub mod sign;
