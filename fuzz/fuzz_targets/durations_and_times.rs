//! Durations from flags and `CNI_ARGS`, and the times the VPC API sends
//! (`CreatedTime`) and the signature carries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = proto::duration::parse(text);
    let _ = tencent_api::time::parse_api_datetime(text);
    let _ = tencent_api::sign::parse_utc_datetime(text);
    let _ = text.parse::<std::net::Ipv4Addr>();
});
