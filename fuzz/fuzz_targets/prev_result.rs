//! A `prevResult` from an earlier plugin of the chain, as CHECK reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::cni::result::addresses_of;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = addresses_of(&value, "eth0", "/var/run/netns/fuzz");
    }
});
