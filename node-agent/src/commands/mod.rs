//! One file per subcommand.

pub mod pool;
pub mod run;
