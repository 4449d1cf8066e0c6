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
    /// The store's folder cannot be used: locked by another process, a manifest that does not
    /// parse, a collection folder that does not match the manifest.
    #[error("store {path}: {what}")]
    Store {
        /// The store's data folder (or the file inside it that is wrong).
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
