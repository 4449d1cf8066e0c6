//! The daemon's Prometheus metrics (`GET /metrics`, text format 0.0.4).
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `t2v_daemon_queue_depth` | gauge | datasets queued or waiting for room in the queue |
//! | `t2v_daemon_jobs_running` | gauge | datasets being opened, embedded or stored |
//! | `t2v_daemon_datasets{state}` | gauge | datasets per state (`settling`, ..., `parked`) |
//! | `t2v_daemon_embeddings_done_total` | counter | embeddings computed and stored |
//! | `t2v_daemon_embeddings_failed_total` | counter | datasets that failed (parked) |
//! | `t2v_daemon_embedding_seconds` | histogram | wall time of one embedding |
//! | `t2v_daemon_images_total` | counter | images through the probe (features + Fisher) |
//! | `t2v_daemon_images_per_second` | gauge | images/s of the last embedding |
//! | `t2v_daemon_store_up` | gauge | 1 while the store is open (or not yet created), else 0 |
//! | `t2v_daemon_store_errors_total` | counter | failed store operations (each retried) |
//! | `t2v_daemon_rescans_total` | counter | full rescans of the roots |
//! | `t2v_daemon_watcher_errors_total` | counter | watcher errors and lost events |

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text::{
    encode, CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::state::DatasetState;

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = PROMETHEUS_CONTENT_TYPE;

/// Every metric of the daemon, cheap to clone (handles to shared atomics).
#[derive(Clone)]
pub(crate) struct Metrics {
    pub queue_depth: Gauge,
    pub jobs_running: Gauge,
    pub datasets: Family<Vec<(String, String)>, Gauge>,
    pub embeddings_done: Counter,
    pub embeddings_failed: Counter,
    pub embedding_seconds: Histogram,
    pub images: Counter,
    pub images_per_second: Gauge<f64, AtomicU64>,
    pub store_up: Gauge,
    pub store_errors: Counter,
    pub rescans: Counter,
    pub watcher_errors: Counter,
    registry: std::sync::Arc<Registry>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("t2v_daemon");
        let queue_depth = Gauge::default();
        let jobs_running = Gauge::default();
        let datasets = Family::<Vec<(String, String)>, Gauge>::default();
        let embeddings_done = Counter::default();
        let embeddings_failed = Counter::default();
        // 0.25 s .. about 2.3 h, doubling.
        let embedding_seconds = Histogram::new(exponential_buckets(0.25, 2.0, 16));
        let images = Counter::default();
        let images_per_second = Gauge::<f64, AtomicU64>::default();
        let store_up = Gauge::default();
        let store_errors = Counter::default();
        let rescans = Counter::default();
        let watcher_errors = Counter::default();
        registry.register(
            "queue_depth",
            "Datasets queued or waiting for room in the queue",
            queue_depth.clone(),
        );
        registry.register(
            "jobs_running",
            "Datasets being opened, embedded or stored",
            jobs_running.clone(),
        );
        registry.register("datasets", "Datasets per state", datasets.clone());
        registry.register(
            "embeddings_done",
            "Embeddings computed and stored",
            embeddings_done.clone(),
        );
        registry.register(
            "embeddings_failed",
            "Datasets that failed to open or embed (parked)",
            embeddings_failed.clone(),
        );
        registry.register(
            "embedding_seconds",
            "Wall time of one embedding, in seconds",
            embedding_seconds.clone(),
        );
        registry.register(
            "images",
            "Images through the probe (feature pass and Fisher pass)",
            images.clone(),
        );
        registry.register(
            "images_per_second",
            "Images per second of the last embedding",
            images_per_second.clone(),
        );
        registry.register(
            "store_up",
            "1 while the store is usable (open, or not created yet), else 0",
            store_up.clone(),
        );
        registry.register(
            "store_errors",
            "Failed store operations (each is retried)",
            store_errors.clone(),
        );
        registry.register("rescans", "Full rescans of the roots", rescans.clone());
        registry.register(
            "watcher_errors",
            "File watcher errors and lost events (each triggers a rescan)",
            watcher_errors.clone(),
        );
        store_up.set(1);
        for s in DatasetState::ALL {
            datasets.get_or_create(&state_label(s)).set(0);
        }
        Metrics {
            queue_depth,
            jobs_running,
            datasets,
            embeddings_done,
            embeddings_failed,
            embedding_seconds,
            images,
            images_per_second,
            store_up,
            store_errors,
            rescans,
            watcher_errors,
            registry: std::sync::Arc::new(registry),
        }
    }

    /// Sets the per-state dataset gauges.
    pub fn set_states(&self, counts: &[(DatasetState, i64)]) {
        for &(s, n) in counts {
            self.datasets.get_or_create(&state_label(s)).set(n);
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn state_label(s: DatasetState) -> Vec<(String, String)> {
    vec![("state".to_string(), s.name().to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.embeddings_done.inc();
        m.embedding_seconds.observe(1.5);
        m.queue_depth.set(3);
        let text = m.render();
        for needle in [
            "# TYPE t2v_daemon_queue_depth gauge",
            "t2v_daemon_queue_depth 3",
            "t2v_daemon_embeddings_done_total 1",
            "t2v_daemon_embedding_seconds_bucket{le=\"2\"} 1",
            "t2v_daemon_datasets{state=\"parked\"} 0",
            "t2v_daemon_images_per_second 0",
        ] {
            assert!(text.contains(needle), "`{needle}` not in:\n{text}");
        }
    }
}
