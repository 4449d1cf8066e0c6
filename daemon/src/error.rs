//! The daemon's one error type.

use std::path::PathBuf;

/// Everything that can stop the daemon from starting, or fail a request to it.
///
/// While it runs, the daemon itself never stops on a dataset's or the store's error: those
/// are recorded per dataset (see `/status`) and retried. Only start-up problems (a bad
/// configuration, probe weights that cannot be loaded, an HTTP address that cannot be bound)
/// make [`crate::run`] return an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable: a file that does not parse, a key of the wrong type,
    /// an unknown key or a value out of range. Names the key and where its value came from.
    #[error("configuration: {message}{}", context(.key, .origin))]
    Config {
        /// The dotted key concerned (`watch.quiet_secs`), when there is one.
        key: Option<String>,
        /// Where the value came from: a file path, `the environment`, or the built-in
        /// `config/default.toml`.
        origin: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// An operating-system I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The probe network could not be loaded (weights missing or unreadable).
    #[error("probe: {0}")]
    Probe(#[source] task2vec::Error),
    /// The HTTP endpoint could not be bound.
    #[error("HTTP endpoint {addr}: {source}")]
    Http {
        /// The address asked for.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A request to a running daemon failed (unreachable, or it answered with an error).
    #[error("daemon at {url}: {}{message}", status_part(.status))]
    Client {
        /// The URL requested.
        url: String,
        /// HTTP status, when the daemon answered.
        status: Option<u16>,
        /// What went wrong (the daemon's own error message when it answered).
        message: String,
    },
    /// The daemon's state file could not be written.
    #[error("state file {path}: {message}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// `HTTP 404: ` when the daemon answered with an error status.
fn status_part(status: &Option<u16>) -> String {
    status.map(|s| format!("HTTP {s}: ")).unwrap_or_default()
}

/// ` (key `k` in ORIGIN)`, or the part of it that is known.
fn context(key: &Option<String>, origin: &Option<String>) -> String {
    match (key, origin) {
        (Some(k), Some(o)) => format!(" (key `{k}` in {o})"),
        (Some(k), None) => format!(" (key `{k}`)"),
        (None, Some(o)) => format!(" (in {o})"),
        (None, None) => String::new(),
    }
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A configuration error about `key`, whose value came from `origin`.
    pub fn config(
        key: impl Into<String>,
        origin: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            key: Some(key.into()),
            origin,
            message: message.into(),
        }
    }
}

/// The daemon's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
