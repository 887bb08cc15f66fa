//! Test only (`--test-store-fail-file`): a store whose commits fail while a
//! file exists, so integration tests drive the real agent into a failed
//! commit and watch it stop and exit.

use std::path::PathBuf;

use super::{Store, StoreError};
use crate::ipam::{Change, Snapshot};

/// A store that fails its commits while `trigger` exists.
#[derive(Debug)]
pub struct FaultyStore<S> {
    /// The real store.
    pub inner: S,
    /// The file whose presence makes commits fail.
    pub trigger: PathBuf,
}

impl<S: Store> Store for FaultyStore<S> {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if !changes.is_empty() && self.trigger.exists() {
            return Err(StoreError::Io(
                format!(
                    "injected commit failure ({} exists)",
                    self.trigger.display()
                )
                .into(),
            ));
        }
        self.inner.commit(changes)
    }
}
