//! The library's one error type. Every variant that concerns a file names it.

use std::path::PathBuf;

/// Everything that can go wrong in the core library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder that could not be read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what it should be (corrupt image, bad IDX header,
    /// malformed manifest line, ...). `what` says what is wrong, in words a user can act on.
    #[error("{path}: {what}")]
    Invalid {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A dataset as a whole cannot be used (fewer than two classes, no images, unknown layout).
    #[error("dataset {root}: {what}")]
    Dataset {
        /// The dataset's root folder or manifest.
        root: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// Probe weights cannot be read, or do not fit the architecture.
    #[error("weights {path}: {what}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// Two things that must agree do not (shapes, probes, estimators, settings).
    #[error("mismatch: {0}")]
    Mismatch(String),
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A file whose content is wrong.
    pub fn invalid(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.into(),
            what: what.into(),
        }
    }

    /// A dataset that cannot be used as a whole.
    pub fn dataset(root: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Dataset {
            root: root.into(),
            what: what.into(),
        }
    }

    /// Weights that cannot be read or do not fit.
    pub fn weights(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            what: what.into(),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
