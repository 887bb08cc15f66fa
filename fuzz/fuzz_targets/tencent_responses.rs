//! What the VPC API answers, as the agent's client decodes it: the response
//! envelope (errors typed) and every ENI of a `DescribeNetworkInterfaces`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_agent::cloud::tencent::{decode_eni, decode_response};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(response) = decode_response("DescribeNetworkInterfaces", 200, text)
        && let Some(set) = response
            .get("NetworkInterfaceSet")
            .and_then(serde_json::Value::as_array)
    {
        for eni in set {
            let _ = decode_eni(eni);
        }
    }
});
