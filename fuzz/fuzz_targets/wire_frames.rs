//! The agent's wire frames, both ways: a frame header, a request payload
//! as the agent decodes it, a reply payload as the plugin decodes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::wire;

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.get(..4) {
        let _ = wire::parse_header(header.try_into().expect("four bytes"));
    }
    let _ = wire::answer_version(data);
    let _ = wire::decode_request(data);
    let _ = wire::decode_reply(data);
});
