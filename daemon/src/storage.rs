//! The store as the daemon holds it: opened when it exists, created by the first embedding
//! (whose vectors fix the store's space), reopened with backoff after failures.
//!
//! Every method here blocks (the embedded engine does file I/O); call them from
//! `spawn_blocking`.

use std::sync::{Arc, Mutex, PoisonError};

use task2vec_qdrant::{Error as StoreError, Store, VectorSpace};

use task2vec_qdrant::StoreConfig;

/// The store's state, for `/status` and `/healthz`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum StoreState {
    /// No store yet: the first embedding creates it.
    Absent,
    /// Open.
    Open,
    /// Opening failed; retried with backoff.
    Unavailable {
        /// The last error.
        error: String,
    },
}

enum Slot {
    Absent,
    Open(Arc<Store>),
    Unavailable(String),
}

/// The daemon's handle on the store.
pub(crate) struct StoreHandle {
    config: StoreConfig,
    slot: Mutex<Slot>,
    /// Held while opening, so two threads never race for the store's lock (the loser would
    /// see "in use" and mark the store unavailable).
    opening: Mutex<()>,
}

impl StoreHandle {
    /// A handle that has not tried to open anything yet.
    pub fn new(config: StoreConfig) -> Self {
        StoreHandle {
            config,
            slot: Mutex::new(Slot::Absent),
            opening: Mutex::new(()),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open store, if any.
    pub fn current(&self) -> Option<Arc<Store>> {
        match &*self.slot() {
            Slot::Open(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// Where the store stands.
    pub fn state(&self) -> StoreState {
        match &*self.slot() {
            Slot::Absent => StoreState::Absent,
            Slot::Open(_) => StoreState::Open,
            Slot::Unavailable(e) => StoreState::Unavailable { error: e.clone() },
        }
    }

    /// Opens the store if it exists and is not open yet. `Ok(None)`: there is no store yet.
    ///
    /// Errors: opening failed (locked by another process, unreadable); the handle is then
    /// unavailable until a later call succeeds.
    pub fn open_existing(&self) -> Result<Option<Arc<Store>>, StoreError> {
        if let Some(s) = self.current() {
            return Ok(Some(s));
        }
        let _opening = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
        self.open_existing_locked()
    }

    fn open_existing_locked(&self) -> Result<Option<Arc<Store>>, StoreError> {
        if let Some(s) = self.current() {
            return Ok(Some(s));
        }
        match Store::exists_config(&self.config) {
            Ok(false) => {
                *self.slot() = Slot::Absent;
                return Ok(None);
            }
            Ok(true) => {}
            Err(e) => {
                *self.slot() = Slot::Unavailable(e.to_string());
                return Err(e);
            }
        }
        self.settle(Store::open_existing_config(&self.config))
            .map(Some)
    }

    /// The store to write embeddings of `space` into, created for that space if there is none.
    ///
    /// Errors: as [`StoreHandle::open_existing`]; a store of another space is refused
    /// ([`StoreError::Mismatch`]) by the upsert that follows, not here.
    pub fn for_write(&self, space: &VectorSpace) -> Result<Arc<Store>, StoreError> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _opening = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = self.open_existing_locked()? {
            return Ok(s);
        }
        let opened = Store::open_config(&self.config, space);
        if opened.is_ok() {
            tracing::info!(store = %self.describe(), "store created");
        }
        self.settle(opened)
    }

    fn settle(&self, opened: Result<Store, StoreError>) -> Result<Arc<Store>, StoreError> {
        let mut slot = self.slot();
        // Another thread may have opened it meanwhile; keep that one.
        if let Slot::Open(s) = &*slot {
            return Ok(s.clone());
        }
        match opened {
            Ok(store) => {
                let store = Arc::new(store);
                *slot = Slot::Open(store.clone());
                tracing::info!(store = %self.describe(), "store open");
                Ok(store)
            }
            Err(e) => {
                *slot = Slot::Unavailable(e.to_string());
                Err(e)
            }
        }
    }

    /// Flushes the open store to disk.
    pub fn flush(&self) {
        if let Some(s) = self.current() {
            s.flush();
        }
    }

    /// Forgets the open store (dropping it, once no job holds it, releases its lock).
    pub fn close(&self) {
        *self.slot() = Slot::Absent;
    }

    /// The store's location, for logs.
    pub fn describe(&self) -> String {
        self.config.describe()
    }
}

/// Whether a store error may go away by itself (retry with backoff) rather than being about
/// the data (park the dataset).
pub(crate) fn is_transient(e: &StoreError) -> bool {
    match e {
        StoreError::Io { .. }
        | StoreError::Locked { .. }
        | StoreError::Store { .. }
        | StoreError::Engine { .. }
        | StoreError::Remote { .. } => true,
        StoreError::Mismatch(_)
        | StoreError::Corrupt { .. }
        | StoreError::NotFound { .. }
        | StoreError::Dump { .. }
        | StoreError::Core(_) => false,
    }
}
