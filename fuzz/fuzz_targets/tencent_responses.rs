//! What the VPC API answers, as the agent's client decodes it: the response
//! envelope (errors typed), every ENI of `DescribeNetworkInterfaces`, the
//! subnet chosen from `DescribeSubnets`, and the instance's limits from
//! `DescribeNetworkInterfaceLimit`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_agent::cloud::tencent::{
    decode_best_subnet, decode_eni, decode_instance_limits, decode_response,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(response) = decode_response("DescribeNetworkInterfaces", 200, text) else {
        return;
    };
    if let Some(set) = response
        .get("NetworkInterfaceSet")
        .and_then(serde_json::Value::as_array)
    {
        for eni in set {
            let _ = decode_eni(eni);
        }
    }
    let _ = decode_best_subnet(&response, "ap-guangzhou-3", &[]);
    let _ = decode_best_subnet(
        &response,
        "ap-guangzhou-3",
        &["subnet-12345678".to_string()],
    );
    let _ = decode_instance_limits(&response);
});
