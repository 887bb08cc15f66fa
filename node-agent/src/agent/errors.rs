//! Failures of the layers below, turned into the agent's errors (and so
//! into CNI codes, which `proto::wire::ErrorKind::cni_code` decides).

use proto::wire::{AgentError, ErrorKind};

use super::conditions::ENI_LIMIT;
use crate::cloud::CloudError;
use crate::dataplane::DataplaneError;
use crate::ipam::IpamError;

/// A kernel failure.
pub fn dataplane_error(e: DataplaneError) -> AgentError {
    let kind = match e {
        DataplaneError::Mismatch { .. } => ErrorKind::Mismatch,
        DataplaneError::Kernel { .. } => ErrorKind::Dataplane,
    };
    AgentError::new(kind, e.to_string())
}

/// A cloud failure. Throttling that outlasted the client's retries is not
/// the pod's fault and not final: "try again later" (code 11), so the
/// runtime retries the sandbox.
pub fn cloud_error(e: CloudError) -> AgentError {
    match e {
        CloudError::Throttled(_) => AgentError::new(ErrorKind::NotReady, e.to_string()),
        CloudError::EniQuota(_) => {
            AgentError::new(ErrorKind::EniLimit, format!("{ENI_LIMIT}: {e}"))
        }
        _ => AgentError::new(ErrorKind::Cloud, e.to_string()),
    }
}

/// A refusal of the pool, for requests about claims.
pub fn claim_error(e: IpamError) -> AgentError {
    let kind = match e {
        IpamError::ClaimNotFound { .. } => ErrorKind::UnknownAttachment,
        IpamError::ClaimLost { .. } => ErrorKind::ClaimLost,
        IpamError::ClaimInUse { .. }
        | IpamError::RequestedCooling { .. }
        | IpamError::ClaimChanged { .. }
        | IpamError::ClaimMoving { .. } => ErrorKind::NotReady,
        IpamError::RequestedHeld { .. } | IpamError::InUse { .. } | IpamError::Claimed { .. } => {
            ErrorKind::NoIpAvailable
        }
        _ => ErrorKind::InvalidRequest,
    };
    AgentError::new(kind, e.to_string())
}

/// An internal inconsistency.
pub fn internal(message: impl Into<String>) -> AgentError {
    AgentError::new(ErrorKind::Internal, message)
}
