//! The plugin's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while storing or querying vectors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded store's folder is held open by another [`crate::Store`] (in this or another
    /// process, e.g. the daemon): its `store.lock` is taken.
    #[error(
        "store {path} is in use: another open store (this or another process, e.g. the daemon) \
         holds store.lock"
    )]
    Locked {
        /// The store's data folder.
        path: PathBuf,
    },
    /// The store cannot be used: a manifest that does not parse, a collection that does not
    /// match the manifest, a folder or server that holds no store.
    #[error("store {path}: {what}")]
    Store {
        /// The store's data folder, or the file inside it that is wrong (for a remote store,
        /// the server URL and collection).
        path: PathBuf,
        /// What is wrong, in words a user can act on.
        what: String,
    },
    /// The Qdrant engine refused or failed an operation.
    #[error("qdrant collection `{collection}`: {operation} failed: {message}")]
    Engine {
        /// The collection (`tasks`, `experts`).
        collection: String,
        /// What was attempted (`upsert`, `retrieve`, ...).
        operation: &'static str,
        /// The engine's message.
        message: String,
    },
    /// A Qdrant server could not be reached or refused a request.
    #[error("qdrant server {url}: {operation} failed: {message}")]
    Remote {
        /// The server's URL, as configured.
        url: String,
        /// What was attempted, with the collection (`upsert into task2vec_tasks`, ...).
        operation: String,
        /// The client's or server's message.
        message: String,
    },
    /// A point that a request names does not exist.
    #[error("no {what} with id {id} in the store")]
    NotFound {
        /// What was looked for (`task`, `expert`).
        what: &'static str,
        /// Its id.
        id: uuid::Uuid,
    },
    /// A dump folder that cannot be read back: a missing or malformed file, a line that does
    /// not parse.
    #[error("dump {path}: {what}")]
    Dump {
        /// The dump folder, or the file in it that is wrong.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Two things that must agree do not: a vector from another probe, estimator or layout
    /// than the store's, a vector of the wrong length, an invalid vector.
    #[error("mismatch: {0}")]
    Mismatch(String),
    /// A stored point that does not read back as this crate wrote it (missing vector, payload
    /// that does not parse).
    #[error("collection `{collection}`, point {id}: {what}")]
    Corrupt {
        /// The collection.
        collection: String,
        /// The point id.
        id: String,
        /// What is wrong with it.
        what: String,
    },
    /// An error from the core library.
    #[error(transparent)]
    Core(#[from] task2vec::Error),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A store folder that cannot be used.
    pub fn store(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Store {
            path: path.into(),
            what: what.into(),
        }
    }
}

/// The plugin's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
