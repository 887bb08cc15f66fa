//! The plugin's stdin: the network configuration (with `prevResult` and the
//! runtime's keys) as the runtime sends it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::cni::config::NetConf;

fuzz_target!(|data: &[u8]| {
    let _ = NetConf::peek_version(data);
    let _ = NetConf::parse(data);
});
