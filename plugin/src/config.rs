//! Where a store lives: an embedded data folder, or a Qdrant server (or cluster).
//!
//! [`StoreConfig`] is what configuration files embed (the daemon's and the CLI's), tagged by
//! `backend`:
//!
//! ```toml
//! [store]
//! backend = "embedded"
//! path = "/var/lib/task2vec/store"
//! ```
//!
//! ```toml
//! [store]
//! backend = "remote"
//! url = "https://qdrant.example.org:6334"   # gRPC port; https:// turns TLS on
//! api_key = "..."
//! collection_prefix = "task2vec_"
//! replication_factor = 2
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which backend holds a store, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum StoreConfig {
    /// Qdrant Edge, the Qdrant engine in this process, with its files under `path`.
    Embedded {
        /// The store's data folder (created when absent).
        path: PathBuf,
    },
    /// A Qdrant server or cluster, through its gRPC API.
    Remote(RemoteConfig),
}

impl StoreConfig {
    /// The store in words, for messages: `embedded store PATH` or
    /// `Qdrant server URL (collections PREFIX*)`.
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Embedded { path } => format!("embedded store {}", path.display()),
            StoreConfig::Remote(r) => {
                format!(
                    "Qdrant server {} (collections {}*)",
                    r.url, r.collection_prefix
                )
            }
        }
    }
}

/// How to reach a Qdrant server and how to create the store's collections there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteConfig {
    /// The server's gRPC URL, e.g. `http://127.0.0.1:6334`. An `https://` URL connects with
    /// TLS, verifying the server against the system's root certificates.
    pub url: String,
    /// Sent as the `api-key` header of every request; `None` sends none.
    pub api_key: Option<String>,
    /// Limit of one request, in seconds (default 10).
    pub timeout_secs: f64,
    /// Limit of establishing the connection, in seconds (default 5).
    pub connect_timeout_secs: f64,
    /// Prefix of the collection names: `{prefix}tasks`, `{prefix}experts`, `{prefix}meta`
    /// (default `task2vec_`). Two stores on one server need two prefixes.
    pub collection_prefix: String,
    /// Shards per collection when the store creates its collections; `None`: the server's
    /// default (1, or one per node in a cluster).
    pub shard_number: Option<u32>,
    /// Copies of each shard when the collections are created; `None`: the server's default (1).
    pub replication_factor: Option<u32>,
    /// Replicas that must acknowledge a write; `None`: the server's default (1).
    pub write_consistency_factor: Option<u32>,
    /// Keep full-precision vectors (the raw `hessian`/`scale` and the index vectors'
    /// originals) on disk, memory-mapped, with only the int8 quantized index vectors in RAM
    /// (default `true`). `false` keeps everything in RAM: faster, 3–4× the memory.
    pub on_disk: bool,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            url: "http://127.0.0.1:6334".into(),
            api_key: None,
            timeout_secs: 10.0,
            connect_timeout_secs: 5.0,
            collection_prefix: "task2vec_".into(),
            shard_number: None,
            replication_factor: None,
            write_consistency_factor: None,
            on_disk: true,
        }
    }
}

impl RemoteConfig {
    /// The configuration for the server at `url`, everything else default.
    pub fn new(url: impl Into<String>) -> Self {
        RemoteConfig {
            url: url.into(),
            ..RemoteConfig::default()
        }
    }

    /// The request timeout.
    pub(crate) fn timeout(&self) -> Result<Duration> {
        self.duration("timeout_secs", self.timeout_secs)
    }

    /// The connection timeout.
    pub(crate) fn connect_timeout(&self) -> Result<Duration> {
        self.duration("connect_timeout_secs", self.connect_timeout_secs)
    }

    fn duration(&self, what: &str, secs: f64) -> Result<Duration> {
        Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Error::store(
                    &self.url,
                    format!("{what} = {secs}: must be a positive number of seconds"),
                )
            })
    }

    /// Checks the settings that can be checked without the server (URL scheme, timeouts,
    /// shard and replication numbers), so a configuration loader can refuse them up front.
    ///
    /// Errors: [`Error::Store`] naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        self.timeout()?;
        self.connect_timeout()?;
        let scheme_ok = self.url.starts_with("http://") || self.url.starts_with("https://");
        if !scheme_ok {
            return Err(Error::store(
                &self.url,
                "the Qdrant URL must start with http:// or https:// (gRPC port, usually 6334)",
            ));
        }
        let prefix_ok = self
            .collection_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !prefix_ok {
            return Err(Error::store(
                &self.url,
                format!(
                    "collection_prefix `{}`: only ASCII letters, digits, `_` and `-`",
                    self.collection_prefix
                ),
            ));
        }
        for (what, v) in [
            ("shard_number", self.shard_number),
            ("replication_factor", self.replication_factor),
            ("write_consistency_factor", self.write_consistency_factor),
        ] {
            if v == Some(0) {
                return Err(Error::store(
                    &self.url,
                    format!("{what} must be at least 1"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_read_from_tagged_documents_with_defaults() {
        let embedded: StoreConfig =
            serde_json::from_str(r#"{"backend": "embedded", "path": "/srv/store"}"#)
                .expect("embedded config");
        assert_eq!(
            embedded,
            StoreConfig::Embedded {
                path: "/srv/store".into()
            }
        );
        let remote: StoreConfig = serde_json::from_str(
            r#"{"backend": "remote", "url": "https://q:6334", "replication_factor": 2}"#,
        )
        .expect("remote config");
        let StoreConfig::Remote(r) = remote else {
            panic!("remote expected");
        };
        assert_eq!(r.url, "https://q:6334");
        assert_eq!(r.replication_factor, Some(2));
        assert_eq!(r.timeout_secs, 10.0);
        assert_eq!(r.connect_timeout_secs, 5.0);
        assert_eq!(r.collection_prefix, "task2vec_");
        assert!(r.on_disk);
        assert!(r.validate().is_ok());
        assert!(
            serde_json::from_str::<StoreConfig>(r#"{"backend": "remote", "urll": "x"}"#).is_err()
        );
    }

    #[test]
    fn bad_remote_settings_are_refused() {
        let bad = [
            RemoteConfig {
                timeout_secs: 0.0,
                ..RemoteConfig::default()
            },
            RemoteConfig {
                connect_timeout_secs: f64::NAN,
                ..RemoteConfig::default()
            },
            RemoteConfig::new("127.0.0.1:6334"),
            RemoteConfig {
                collection_prefix: "a b".into(),
                ..RemoteConfig::default()
            },
            RemoteConfig {
                shard_number: Some(0),
                ..RemoteConfig::default()
            },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(Error::Store { .. })), "{c:?}");
        }
    }
}
