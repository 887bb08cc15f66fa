//! The TC3-HMAC-SHA256 `Authorization` header as the emulator parses it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tencent_api::sign::Authorization;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Authorization::parse(text);
    }
});
