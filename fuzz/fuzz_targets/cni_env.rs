//! The plugin's environment (`CNI_*` variables, `CNI_ARGS` among them),
//! one `NAME=value` per line.
#![no_main]

use std::collections::HashMap;

use cni_plugin::env;
use libfuzzer_sys::fuzz_target;
use proto::cni::args::{ClaimDeletePolicy, CniArgs};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |name: &str| vars.get(name).map(|v| v.to_string());
    if let Ok(command) = env::command(&get) {
        let _ = env::invocation(command, &get);
    }
    let _ = CniArgs::parse(text);
    let _ = ClaimDeletePolicy::parse(text);
});
