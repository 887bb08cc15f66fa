//! The plugin as a library: `env` (the CNI environment, validated) and
//! `run` (one invocation, from environment and stdin to stdout and exit
//! status), so the binary's `main` stays thin and fuzzing reaches the
//! parsers directly.

pub mod arena;
pub mod env;
pub mod run;
