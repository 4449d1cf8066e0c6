//! Helpers of the remote-backend tests: the server from `QDRANT_URL` (the tests print
#![allow(dead_code)]
//! "skipped: QDRANT_URL not set" and return without one), and a store configuration with a
//! unique collection prefix whose collections are dropped when the guard goes.

use std::time::{SystemTime, UNIX_EPOCH};

use qdrant_client::Qdrant;
use task2vec_qdrant::{RemoteConfig, StoreConfig};

/// The gRPC URL of the test server, or `None` (after printing that the test is skipped).
pub fn server_url() -> Option<String> {
    match std::env::var("QDRANT_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u.trim().to_string()),
        _ => {
            println!("skipped: QDRANT_URL not set");
            None
        }
    }
}

/// The REST URL of the same server: `QDRANT_REST_URL`, else `QDRANT_URL` with port 6334
/// replaced by 6333.
pub fn rest_url(grpc: &str) -> String {
    match std::env::var("QDRANT_REST_URL") {
        Ok(u) if !u.trim().is_empty() => u.trim().to_string(),
        _ => grpc.replace(":6334", ":6333"),
    }
}

/// A store on the test server under a prefix of its own; drops its collections on drop.
pub struct RemoteStore {
    /// The configuration.
    pub config: RemoteConfig,
}

impl RemoteStore {
    /// A fresh prefix for the test `name`.
    pub fn new(url: &str, name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        RemoteStore {
            config: RemoteConfig {
                collection_prefix: format!("t2vtest_{name}_{}_{nanos}_", std::process::id()),
                ..RemoteConfig::new(url)
            },
        }
    }

    /// As a store configuration.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig::Remote(self.config.clone())
    }

    /// The full name of one of the store's collections.
    pub fn collection(&self, name: &str) -> String {
        format!("{}{name}", self.config.collection_prefix)
    }
}

impl RemoteStore {
    /// The server's description of one of the store's collections.
    pub fn info(&self, name: &str) -> qdrant_client::qdrant::CollectionInfo {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = Qdrant::from_url(&self.config.url)
            .skip_compatibility_check()
            .build()
            .expect("client");
        runtime
            .block_on(client.collection_info(self.collection(name)))
            .expect("collection info")
            .result
            .expect("collection info result")
    }
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let client = Qdrant::from_url(&self.config.url)
            .skip_compatibility_check()
            .build();
        if let (Ok(runtime), Ok(client)) = (runtime, client) {
            for name in ["tasks", "experts", "tasks_raw", "experts_raw", "meta"] {
                let _ = runtime.block_on(client.delete_collection(self.collection(name)));
            }
        }
    }
}
