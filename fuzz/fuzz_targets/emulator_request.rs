//! One request to the VPC API emulator: headers (one `name: value` per line
//! up to an empty line) and a body, as `POST /`. The world is created once;
//! without a valid signature no request reaches it, which is the point: the
//! envelope, the headers and the signature check see arbitrary input.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vpc_sim::api::{Credentials, Emulator, Faults, HttpRequest};
use vpc_sim::world::{NodeLimits, SharedWorld, World};

fn emulator() -> &'static Emulator {
    static EMULATOR: OnceLock<Emulator> = OnceLock::new();
    EMULATOR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vpc-cni-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let world = SharedWorld::at(&dir.join("vpc.json"));
        world
            .create_if_missing(|| World::new(1, NodeLimits::default(), 1000))
            .expect("world");
        Emulator::new(
            world,
            Credentials {
                secret_id: "AKIDfuzz".into(),
                secret_key: "fuzz-key".into(),
            },
            Faults::default(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let headers: HashMap<String, String> = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let response = emulator().handle(&HttpRequest {
        method: "POST".into(),
        path: "/".into(),
        headers,
        body: body.to_vec(),
        peer: None,
    });
    assert!(!response.body.is_empty());
});
