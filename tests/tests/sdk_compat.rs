//! Tencent Cloud's official Python SDK (`tencentcloud-sdk-python-vpc`)
//! against `vpc-sim serve`: a full ENI lifecycle, and a request signed with
//! the wrong key refused with `AuthFailure.SignatureFailure`. The SDK's
//! Python is named by `VPC_CNI_SDK_PYTHON` (`scripts/test.sh` installs it).

use std::process::Command;

use vpc_cni_tests::Emulator;

#[test]
fn the_official_sdk_runs_an_eni_lifecycle_against_the_emulator() {
    let Ok(python) = std::env::var("VPC_CNI_SDK_PYTHON") else {
        eprintln!(
            "skipped: VPC_CNI_SDK_PYTHON is not set (scripts/test.sh installs the SDK and sets it)"
        );
        return;
    };
    let emulator = Emulator::start(2, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/vpc_lifecycle.py");
    let out = Command::new(python)
        .args([
            script,
            &emulator.address,
            &emulator.secret_id,
            &emulator.secret_key,
        ])
        .output()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nemulator log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        emulator.log()
    );
    assert!(stdout.contains("sdk lifecycle: ok"), "{stdout}");
}
