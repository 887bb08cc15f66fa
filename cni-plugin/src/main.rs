//! `vpc-cni`: the CNI plugin kubelet runs. It answers VERSION itself and
//! forwards every other verb to the node agent over its Unix socket; stdout
//! carries only the CNI result or error.

use std::io::Write;
use std::process::ExitCode;

use cni_plugin::arena::Arena;
use cni_plugin::run;

#[global_allocator]
static ALLOCATOR: Arena = Arena::new();

fn main() -> ExitCode {
    let outcome = run::run(&|name| std::env::var(name).ok(), std::io::stdin().lock());
    let mut stdout = std::io::stdout().lock();
    if let Some(text) = &outcome.stdout {
        // If stdout is gone there is no one left to tell.
        let _ = writeln!(stdout, "{text}");
    }
    if let Some(diag) = &outcome.stderr {
        eprintln!("vpc-cni: {diag}");
    }
    if outcome.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
