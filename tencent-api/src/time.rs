//! The VPC API's times: `YYYY-MM-DD hh:mm:ss` without a zone, in Beijing
//! time (UTC+8), as in `DescribeNetworkInterfaces`' `CreatedTime`.
//!
//! What the documents say: the `NetworkInterface` data type (the VPC API's
//! "Data Types" document, and the official SDKs' models) gives `CreatedTime` as
//! "创建时间" (creation time) of type `Timestamp`, and the VPC API's
//! examples write such times as `"2019-05-08 10:48:26"` (DescribeFlowLog)
//! with no zone. No zone is stated for the field itself; where Tencent
//! Cloud API 3.0 means UTC it says so and writes ISO 8601 with `Z` (CVM's
//! `CreatedTime`, "按照ISO8601标准表示，并且使用UTC时间"), and its zone-less
//! times are China Standard Time, the console's zone. Hence UTC+8 here.
//! Both the emulator and the client use these two functions, so they
//! cannot disagree.

use crate::sign::{parse_utc_datetime, utc_datetime};

/// The offset of the API's times from UTC: China Standard Time, no DST.
pub const API_UTC_OFFSET_SECS: u64 = 8 * 3600;

/// A Unix timestamp as the API writes it (`2020-05-12 15:02:40`, UTC+8).
pub fn api_datetime(unix: u64) -> String {
    utc_datetime(unix + API_UTC_OFFSET_SECS)
}

/// The Unix timestamp of a time as the API writes it (UTC+8).
pub fn parse_api_datetime(s: &str) -> Option<u64> {
    parse_utc_datetime(s)?.checked_sub(API_UTC_OFFSET_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hole 10: `CreatedTime` was read as UTC, so every ENI looked eight
    /// hours younger than it was (and a leaked one was reaped 8 h late).
    #[test]
    fn hole_10_created_time_is_beijing_time() {
        // 2020-05-12 15:02:40 in Beijing is 07:02:40 UTC.
        assert_eq!(
            parse_api_datetime("2020-05-12 15:02:40"),
            Some(1_589_266_960)
        );
        assert_eq!(api_datetime(1_589_266_960), "2020-05-12 15:02:40");
        assert_eq!(parse_api_datetime("1970-01-01 07:59:59"), None);
        assert_eq!(parse_api_datetime("garbage"), None);
    }
}
