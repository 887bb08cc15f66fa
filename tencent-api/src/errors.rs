//! The error codes of the VPC API that the pool acts on, typed. The
//! emulator answers with [`Kind::code`]; the client classifies whatever it
//! receives with [`Kind::of`], so an unknown code is still an error with
//! its text intact.

/// What a `Response.Error.Code` means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The signature does not match (`AuthFailure.SignatureFailure`).
    SignatureFailure,
    /// The request's timestamp is too far from the server's clock.
    SignatureExpired,
    /// The SecretId is unknown.
    SecretIdNotFound,
    /// Temporary credentials whose token is missing, wrong or expired
    /// (`AuthFailure.TokenFailure`): new ones are to be fetched.
    TokenFailure,
    /// The caller may not do this (`UnauthorizedOperation`): a CAM
    /// policy that does not grant the action, or the cluster's cloud
    /// gateway refusing a node an ENI or address that is not its own.
    Unauthorized,
    /// Too many requests (`RequestLimitExceeded`): retry later.
    Throttled,
    /// The VPC's ENI quota is used up.
    EniQuotaExceeded,
    /// The instance already has its maximum number of ENIs.
    InstanceEniLimit,
    /// The ENI already has its maximum number of private IPs.
    EniIpLimit,
    /// The subnet has no free address.
    SubnetExhausted,
    /// The ENI's subnet is not in the instance's zone.
    ZoneMismatch,
    /// The object is in the wrong state for the operation.
    InvalidState,
    /// No such object.
    NotFound,
    /// A parameter is malformed.
    InvalidParameter,
    /// A named private address is already in use (`ResourceInUse`).
    AddressInUse,
    /// A value is outside its allowed range, such as a named address
    /// outside the ENI's subnet (`InvalidParameterValue.Range`).
    OutOfRange,
    /// A parameter names more values than one call may carry, such as more
    /// than 10 `PrivateIpAddresses` (`InvalidParameterValue.LimitExceeded`).
    TooManyValues,
    /// The VPC has its IPv6 block already (`LimitExceeded.CidrBlock`).
    Ipv6BlockAssigned,
    /// The subnet has its IPv6 block already
    /// (`LimitExceeded.SubnetCidrBlock`).
    SubnetIpv6BlockAssigned,
    /// The VPC or the ENI's subnet has no IPv6 block
    /// (`UnsupportedOperation.UnassignCidrBlock`, "未分配IPv6网段").
    NoIpv6Block,
    /// A subnet's IPv6 block is not one of the VPC's
    /// (`InvalidParameterValue.SubnetRange`).
    SubnetRange,
    /// A subnet's IPv6 block is another subnet's
    /// (`InvalidParameterValue.SubnetConflict`).
    SubnetConflict,
    /// The ENI has its quota of addresses (`LimitExceeded.Address`): the
    /// code of the IPv6 actions.
    AddressLimit,
    /// A named IPv6 address is in use (`ResourceInUse.Address`).
    AddressUsed,
    /// A named address is reserved (`InvalidParameterValue.Reserved`).
    Reserved,
    /// An address to take off is not on the ENI
    /// (`UnsupportedOperation.AttachmentNotFound`).
    AttachmentNotFound,
    /// The service failed: retry later.
    Internal,
    /// A code the client does not know.
    Other,
}

const TABLE: &[(Kind, &str)] = &[
    (Kind::SignatureFailure, "AuthFailure.SignatureFailure"),
    (Kind::SignatureExpired, "AuthFailure.SignatureExpire"),
    (Kind::SecretIdNotFound, "AuthFailure.SecretIdNotFound"),
    (Kind::TokenFailure, "AuthFailure.TokenFailure"),
    (Kind::Unauthorized, "UnauthorizedOperation"),
    (Kind::Throttled, "RequestLimitExceeded"),
    (
        Kind::EniQuotaExceeded,
        "LimitExceeded.NetworkInterfaceLimitExceeded",
    ),
    (
        Kind::InstanceEniLimit,
        "LimitExceeded.InstanceNetworkInterfaceLimit",
    ),
    (Kind::EniIpLimit, "LimitExceeded.PrivateIpAddressLimit"),
    (Kind::SubnetExhausted, "ResourceInsufficient.Subnet"),
    (Kind::ZoneMismatch, "UnsupportedOperation.ZoneMismatch"),
    (Kind::InvalidState, "UnsupportedOperation.InvalidState"),
    (Kind::NotFound, "ResourceNotFound"),
    (Kind::InvalidParameter, "InvalidParameterValue"),
    // `AssignPrivateIpAddresses` with `PrivateIpAddresses`: the address must
    // lie in the ENI's subnet and be unoccupied (API document 215/15813);
    // the codes it answers with otherwise are among those listed for the
    // action in the official SDKs (tencentcloud-sdk-go,
    // vpc/v20170312/client.go): `ResourceInUse` (resource occupied) and
    // `InvalidParameterValue.Range` (value not in the allowed range).
    (Kind::AddressInUse, "ResourceInUse"),
    (Kind::OutOfRange, "InvalidParameterValue.Range"),
    // "The number of parameter values exceeds the limit": the code the
    // official SDKs list for a parameter with too many values.
    (Kind::TooManyValues, "InvalidParameterValue.LimitExceeded"),
    // The IPv6 actions' codes (tencentcloud-sdk-go, vpc/v20170312/client.go:
    // AssignIpv6CidrBlock, AssignIpv6SubnetCidrBlock, AssignIpv6Addresses,
    // UnassignIpv6Addresses).
    (Kind::Ipv6BlockAssigned, "LimitExceeded.CidrBlock"),
    (
        Kind::SubnetIpv6BlockAssigned,
        "LimitExceeded.SubnetCidrBlock",
    ),
    (Kind::NoIpv6Block, "UnsupportedOperation.UnassignCidrBlock"),
    (Kind::SubnetRange, "InvalidParameterValue.SubnetRange"),
    (Kind::SubnetConflict, "InvalidParameterValue.SubnetConflict"),
    (Kind::AddressLimit, "LimitExceeded.Address"),
    (Kind::AddressUsed, "ResourceInUse.Address"),
    (Kind::Reserved, "InvalidParameterValue.Reserved"),
    (
        Kind::AttachmentNotFound,
        "UnsupportedOperation.AttachmentNotFound",
    ),
    (Kind::Internal, "InternalError"),
];

impl Kind {
    /// The code the API answers with.
    pub fn code(self) -> &'static str {
        TABLE
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("UnknownError", |(_, c)| c)
    }

    /// Classifies a code; subcodes of a known family fall back to it
    /// (`ResourceNotFound.Foo` is `NotFound`).
    pub fn of(code: &str) -> Kind {
        if let Some((kind, _)) = TABLE.iter().find(|(_, c)| *c == code) {
            return *kind;
        }
        match code.split('.').next().unwrap_or_default() {
            "RequestLimitExceeded" => Kind::Throttled,
            "ResourceNotFound" => Kind::NotFound,
            "InvalidParameter" | "InvalidParameterValue" | "MissingParameter" => {
                Kind::InvalidParameter
            }
            "InternalError" => Kind::Internal,
            "UnauthorizedOperation" => Kind::Unauthorized,
            "AuthFailure" => Kind::SignatureFailure,
            _ => Kind::Other,
        }
    }

    /// Whether the same request may simply be sent again later.
    pub fn retryable(self) -> bool {
        matches!(self, Kind::Throttled | Kind::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_code() {
        for (kind, code) in TABLE {
            assert_eq!(Kind::of(code), *kind, "{code}");
            assert_eq!(kind.code(), *code);
        }
    }

    #[test]
    fn families_and_unknown_codes() {
        assert_eq!(Kind::of("ResourceNotFound.Eni"), Kind::NotFound);
        assert_eq!(
            Kind::of("InvalidParameterValue.Malformed"),
            Kind::InvalidParameter
        );
        assert_eq!(Kind::of("FailedOperation.Whatever"), Kind::Other);
        assert!(Kind::Throttled.retryable() && Kind::Internal.retryable());
        assert!(!Kind::EniQuotaExceeded.retryable());
    }
}
