//! One file per subcommand.

pub mod claims;
pub mod pool;
pub mod run;
