//! The crash-safe store of the pool: every ADD and DEL is committed here
//! before the agent answers, and the agent rebuilds its pool from it on
//! start. [`RedbStore`] is the real one; [`MemoryStore`] serves tests and
//! simulations of many nodes in one process (`bench/scale`).

mod faulty;
mod memory;
mod records;
mod redb;

pub use faulty::FaultyStore;
pub use memory::MemoryStore;
pub use redb::RedbStore;

use crate::ipam::{Change, Snapshot};

pub use records::{FORMAT_VERSION, OLDEST_FORMAT};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (held by another agent, unreadable).
    #[error("cannot open state store {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store was written by an incompatible version.
    #[error(
        "state store format {found} is not supported (this agent reads formats {OLDEST_FORMAT} to {FORMAT_VERSION}; a newer agent wrote it)"
    )]
    Format {
        /// The version found.
        found: u64,
    },
    /// A record could not be decoded.
    #[error("corrupt record {key:?} in table {table}: {source}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The record's key.
        key: String,
        /// The decode error.
        #[source]
        source: serde_json::Error,
    },
    /// A read or a commit failed.
    #[error("state store I/O: {0}")]
    Io(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Durable storage for the pool.
pub trait Store: Send + 'static {
    /// Everything stored.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Applies `changes` atomically and durably: all or none survive a
    /// crash, and once this returns they survive.
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError>;
}
