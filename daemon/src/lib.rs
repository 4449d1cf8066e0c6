//! # task2vec-daemon — keeps the Task2Vec store in sync with folders of datasets
//!
//! The daemon watches one or more folders ("roots"); every direct sub-folder of a root is a
//! dataset (an image folder, a CSV/JSON Lines manifest, or IDX files). When a dataset appears
//! or changes, and once it is complete (quiet for a while, or marked complete with a marker
//! file), the daemon embeds it with the probe and stores the vector in the Qdrant store
//! (embedded Qdrant Edge or a server); when a dataset disappears, its vector goes (or follows
//! it to its new name). It serves health, metrics, status and a small query API over HTTP so
//! `t2v similar` and `t2v select` work while it holds the embedded store.
//!
//! Use it as a program (`t2v-daemon [--config FILE]`, or `t2v daemon`), from a blocking
//! `main` with [`run_until_signal`], or from async Rust:
//!
//! ```no_run
//! # async fn example() -> Result<(), task2vec_daemon::Error> {
//! let config = task2vec_daemon::load_config(None)?;
//! task2vec_daemon::run(config, task2vec_daemon::shutdown_signal()).await
//! # }
//! ```
//!
//! Layout (one file per concept):
//!
//! - [`config`]: the layered configuration (built-in `config/default.toml`, a user file,
//!   `T2V__SECTION__KEY` variables) and its validated form [`DaemonConfig`];
//! - [`discover`]: what a dataset is under a root, its cheap [`discover::Stamp`], opening it;
//! - `watcher`: `notify` events, forwarded raw;
//! - `indexer`: the coordinator (quiet periods, queue, reconcile with the store) and the jobs;
//! - `embedder`: the probe and the embedding settings; `storage`: the store, opened lazily;
//! - [`state`]: per-dataset status and the atomically written `daemon-state.json`;
//! - [`metrics`]: Prometheus metrics; `http`: the endpoint; [`api`]: its JSON documents;
//! - [`client`]: [`DaemonClient`], a blocking client for the CLI.
//!
//! Invariants: the core library stays synchronous (every blocking call here runs in
//! `spawn_blocking`); point ids are deterministic (dataset path, probe weights, estimator), so
//! redoing any step after a crash replaces rather than duplicates; the state file is a
//! checkpoint, never the source of truth (a rescan plus the store's task list are).

pub mod api;
pub mod client;
pub mod config;
pub mod discover;
mod embedder;
pub mod error;
mod http;
mod indexer;
mod job;
pub mod locations;
pub mod metrics;
pub mod state;
mod storage;
mod watcher;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

pub use api::{SelectParams, SimilarParams, Target};
pub use client::DaemonClient;
pub use config::{load_config, load_config_with_env, DaemonConfig};
pub use error::{Error, Result};
pub use indexer::{TAG_INDEXED_BY, TAG_ROOT};
pub use storage::StoreState;

/// Runs the daemon with `config` until `shutdown` resolves (e.g. on SIGINT/SIGTERM), then
/// shuts down gracefully: takes no more work, lets running embeddings finish for
/// `daemon.shutdown_grace_secs` (after that they are abandoned and redone at the next start),
/// writes the state file, flushes the store and returns `Ok(())`.
///
/// Start-up, before anything is watched: creates the roots and the state folder when missing,
/// loads the probe (CPU; call [`task2vec::threads::configure_threads`] first, before the
/// runtime starts, to choose the thread count) and binds the HTTP address (its actual address,
/// useful with port 0, is written to `<state_dir>/daemon.addr`).
///
/// Errors: only at start-up — [`Error::Io`] (folders), [`Error::Probe`] /
/// [`Error::Config`] (probe and settings), [`Error::Http`] (address). Once running, dataset
/// and store errors are reported per dataset (`/status`) and retried, never returned.
pub async fn run(config: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let state_dir = config.daemon.state_dir.clone();
    std::fs::create_dir_all(&state_dir).map_err(|e| Error::io(&state_dir, e))?;
    let mut roots = Vec::new();
    for root in &config.watch.roots {
        if !root.exists() {
            std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
            tracing::info!(root = %root.display(), "created the watched folder");
        }
        roots.push(root.canonicalize().map_err(|e| Error::io(root, e))?);
    }

    let cfg = config.clone();
    let embedder = tokio::task::spawn_blocking(move || embedder::Embedder::load(&cfg))
        .await
        .map_err(|e| Error::Probe(task2vec::Error::Mismatch(format!("loading failed: {e}"))))??;

    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .map_err(|source| Error::Http {
            addr: config.http.addr.to_string(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Http {
        addr: config.http.addr.to_string(),
        source,
    })?;
    let addr_file = state_dir.join(client::ADDR_FILE);
    state::write_atomic(&state_dir, &addr_file, format!("{addr}\n").as_bytes())
        .map_err(|e| Error::io(&addr_file, e))?;

    let dir = state_dir.clone();
    let loaded = tokio::task::spawn_blocking(move || state::load(&dir))
        .await
        .unwrap_or_default();

    let shared = Arc::new(indexer::Shared {
        permits: Semaphore::new(config.daemon.concurrency),
        store: storage::StoreHandle::new(config.store.clone()),
        metrics: metrics::Metrics::new(),
        table: Mutex::new(indexer::Table::default()),
        started: state::now_rfc3339(),
        roots,
        embedder,
        config,
    });
    tracing::info!(
        %addr,
        store = %shared.store.describe(),
        concurrency = shared.config.daemon.concurrency,
        quiet_secs = shared.config.watch.quiet.as_secs_f64(),
        marker = %shared.config.watch.marker,
        "daemon started"
    );

    let (server_stop, server_stop_rx) = watch::channel(false);
    let server = tokio::spawn(http::serve(listener, shared.clone(), server_stop_rx));
    let (stopping, _) = watch::channel(false);
    indexer::coordinate(shared.clone(), loaded, shutdown, stopping).await;

    let _ = server_stop.send(true);
    let grace = shared.config.daemon.shutdown_grace;
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP endpoint stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP endpoint failed"),
        Err(_) => tracing::warn!("HTTP requests still running after the grace period: dropped"),
    }
    if let Err(e) = std::fs::remove_file(&addr_file) {
        tracing::debug!(error = %e, "could not remove the address file");
    }
    shared.store.close();
    tracing::info!("daemon stopped");
    Ok(())
}

/// Runs the daemon in the calling thread until SIGINT or SIGTERM, as `t2v-daemon` and
/// `t2v daemon` do: sets the compute threads (`probe.threads`), starts a multi-threaded tokio
/// runtime, [`run`]s with [`shutdown_signal`], and does not wait for embeddings abandoned
/// after the shutdown grace. Logging is the caller's to set up.
///
/// Errors: as [`run`]; [`Error::Io`] when the runtime cannot start.
pub fn run_until_signal(config: DaemonConfig) -> Result<()> {
    let threads = task2vec::threads::configure_threads(config.probe.threads);
    tracing::info!(threads, "compute threads");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let result = runtime.block_on(run(config, shutdown_signal()));
    // Abandoned embeddings (past the shutdown grace) must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Resolves on the first SIGINT or SIGTERM (logged). If a signal cannot be listened for, that
/// is logged and only the other one counts.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// Installs the process's `tracing` subscriber: stderr, `filter`, text (coloured on a
/// terminal) or one JSON object per line as `format` says. For `t2v-daemon` and `t2v daemon`.
pub fn init_logging(format: config::LogFormat, filter: tracing_subscriber::EnvFilter) {
    use std::io::IsTerminal;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => subscriber.init(),
        config::LogFormat::Json => subscriber.json().init(),
    }
}
