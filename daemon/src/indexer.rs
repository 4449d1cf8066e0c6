//! The indexer: one coordinating task that owns every decision, and jobs that do the blocking
//! work (walking, opening, embedding, storing) in `spawn_blocking`.
//!
//! A dataset's life (see [`DatasetState`]):
//!
//! ```text
//!  event/scan ─► settling ──quiet or marker──► queued ─► embedding ─► storing ─► indexed
//!                    ▲             (waiting if the queue is full)      │  (store down:
//!                    └──── changed again / files changed under a job ──┘   retried, backoff)
//!                                                       └─ unusable data ─► parked
//! ```
//!
//! - **Quiet period**: a dataset is taken when no event touched it for `watch.quiet`, or at
//!   once when its completion marker is newer than all its files. A dataset found by a scan
//!   (events may have been missed) must also show the same [`Stamp`] twice, a quiet period
//!   apart. A job checks the stamp again before and after embedding, so files that changed
//!   under it send the dataset back to settling and the half-read result is dropped.
//! - **No needless work**: a job opens the dataset and compares its fingerprint with the
//!   stored task's; equal means nothing to do (e.g. after a restart).
//! - **Reconcile**: each scan lists the store's tasks. Under a watched (readable) root, a task
//!   whose folder is gone is deleted or, with `on_remove = "repoint"`, kept for a while for a
//!   new folder with the same fingerprint to take over; extra points for one path are deleted;
//!   an indexed dataset missing from the store is taken again.
//! - **Bounded**: at most `daemon.queue_capacity` datasets queue (more wait), at most
//!   `daemon.concurrency` jobs run; on-the-fly embeddings of the query API take the same
//!   permits, so memory is bounded by the concurrency, not by the number of datasets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use task2vec_qdrant::TaskSummary;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::config::{DaemonConfig, OnRemove};
use crate::discover::{self, Stamp};
use crate::embedder::{EmbedStats, Embedder};
use crate::job;
use crate::metrics::Metrics;
use crate::state::{self, DatasetState, DatasetStatus};
use crate::storage::StoreHandle;
use crate::watcher::{self, WatchMsg};

/// How often the coordinator looks at quiet periods, retries and the state file.
const TICK: Duration = Duration::from_millis(200);
/// Tag every point the daemon writes carries, with the daemon's name.
pub const TAG_INDEXED_BY: &str = "indexed_by";
/// Tag with the watched root a dataset was found in.
pub const TAG_ROOT: &str = "root";

/// What the coordinator and the HTTP handlers share.
pub(crate) struct Shared {
    pub config: DaemonConfig,
    /// Canonical roots, in configuration order.
    pub roots: Vec<PathBuf>,
    pub store: StoreHandle,
    pub embedder: Embedder,
    pub metrics: Metrics,
    /// Embedding slots (jobs and on-the-fly query embeddings).
    pub permits: Semaphore,
    pub table: Mutex<Table>,
    /// Start time, RFC 3339.
    pub started: String,
}

impl Shared {
    pub fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn root_of(&self, path: &Path) -> Option<&PathBuf> {
        let parent = path.parent()?;
        self.roots.iter().find(|r| r.as_path() == parent)
    }
}

/// A point of the store, as the daemon remembers it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredRef {
    pub id: Uuid,
    pub fingerprint: String,
    pub stored_at: String,
}

/// Everything the daemon knows about datasets and the store's tasks.
#[derive(Default)]
pub(crate) struct Table {
    pub entries: BTreeMap<PathBuf, Entry>,
    /// The store's tasks by dataset URI (all of them, not only the watched roots').
    pub stored: HashMap<String, Vec<StoredRef>>,
    pub queue: VecDeque<PathBuf>,
    pub waiting: VecDeque<PathBuf>,
    pub running: usize,
    /// `on_remove = "repoint"`: URIs of stored tasks whose folder vanished, and since when.
    pub orphans: BTreeMap<String, Instant>,
    /// Whether the state file is behind.
    pub dirty: bool,
    /// Whether each root could be listed at the last scan.
    pub root_ok: Vec<bool>,
    pub embeddings_done: u64,
    pub embeddings_failed: u64,
    /// Full scans applied since start.
    pub scans_done: u64,
}

/// One dataset: its public status and the coordinator's bookkeeping.
pub(crate) struct Entry {
    pub status: DatasetStatus,
    /// Last event (or scan difference) seen.
    last_activity: Instant,
    /// A scan's stamp that the next look must match (events may have been missed).
    confirm: Option<Stamp>,
    /// Look at once (its marker changed).
    check_now: bool,
    /// A marker time found older than the data: not worth another walk until it changes.
    stale_marker: Option<i64>,
    /// Touched while a job ran on it.
    changed_while_running: bool,
    /// The state before settling, restored if its content turns out unchanged.
    prior: Option<DatasetState>,
}

impl Entry {
    fn new(status: DatasetStatus) -> Self {
        Entry {
            status,
            last_activity: Instant::now(),
            confirm: None,
            check_now: false,
            stale_marker: None,
            changed_while_running: false,
            prior: None,
        }
    }
}

/// Result of a job, applied by the coordinator.
pub(crate) enum Outcome {
    /// The stored task already has this content.
    Unchanged { fingerprint: String, id: Uuid },
    /// Embedded and stored.
    Indexed {
        fingerprint: String,
        id: Uuid,
        stats: EmbedStats,
    },
    /// A vanished dataset's point moved here without embedding.
    Repointed {
        fingerprint: String,
        id: Uuid,
        from: String,
    },
    /// Files changed under the job: settle again.
    Changed,
    /// The folder is gone.
    Vanished,
    /// The data is unusable (or the store refuses it for good): park.
    Failed {
        error: String,
        fingerprint: Option<String>,
    },
    /// Shutdown came while waiting for the store: the dataset is redone at the next start.
    Abandoned,
}

/// Asynchronous work whose result comes back to the coordinator.
enum Work {
    Job {
        path: PathBuf,
        ready: Stamp,
        outcome: Outcome,
    },
    Scan(ScanResult),
    Deleted {
        uri: String,
        ids: Vec<Uuid>,
        result: Result<(), String>,
    },
    Persisted,
    Checked(Vec<(PathBuf, std::io::Result<Stamp>)>),
}

/// A full scan: every dataset folder with its stamp, which roots were readable, and the
/// store's tasks (when the store is open).
pub(crate) struct ScanResult {
    pub started: Instant,
    pub found: Vec<(PathBuf, Stamp)>,
    pub root_ok: Vec<bool>,
    pub tasks: Option<Result<Vec<TaskSummary>, String>>,
}

/// The coordinator's own state.
struct Coordinator {
    shared: Arc<Shared>,
    jobs: JoinSet<Work>,
    stopping: watch::Sender<bool>,
    scan_running: bool,
    rescan_wanted: bool,
    recreate_watchers: bool,
    check_running: bool,
    persist_running: bool,
    last_persist: Instant,
    next_rescan: Instant,
    /// The store's tasks have been listed since the store opened (or there is no store), so
    /// jobs can tell what is stored.
    store_synced: bool,
    store_retry_at: Option<Instant>,
    store_backoff: Duration,
    /// URIs whose points are being deleted.
    deleting: std::collections::HashSet<String>,
    overflow: Arc<AtomicBool>,
    watch_tx: mpsc::Sender<WatchMsg>,
    watchers: Option<watcher::Watchers>,
}

/// Runs the coordinator until `shutdown` resolves, then stops taking work, lets running jobs
/// finish for `daemon.shutdown_grace` (abandoning them after that: they are redone at the next
/// start), writes the state file and flushes the store.
pub(crate) async fn coordinate(
    shared: Arc<Shared>,
    loaded: Vec<DatasetStatus>,
    shutdown: impl std::future::Future<Output = ()>,
    stopping: watch::Sender<bool>,
) {
    let (watch_tx, mut watch_rx) = mpsc::channel(watcher::EVENT_BUFFER);
    let now = Instant::now();
    let mut c = Coordinator {
        shared: shared.clone(),
        jobs: JoinSet::new(),
        stopping,
        scan_running: false,
        rescan_wanted: true,
        recreate_watchers: false,
        check_running: false,
        persist_running: false,
        last_persist: now,
        next_rescan: now + shared.config.watch.rescan,
        store_synced: false,
        store_retry_at: None,
        store_backoff: shared.config.daemon.retry_initial,
        deleting: Default::default(),
        overflow: Arc::new(AtomicBool::new(false)),
        watch_tx,
        watchers: None,
    };
    c.load(loaded);
    // Watch first, then scan: a change during the scan is seen either way.
    c.start_watchers();
    c.start_scan();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(msg) = watch_rx.recv() => {
                let mut marker = c.on_watch(msg);
                while let Ok(msg) = watch_rx.try_recv() {
                    marker |= c.on_watch(msg);
                }
                if marker {
                    c.check_settling(true);
                }
            }
            Some(done) = c.jobs.join_next(), if !c.jobs.is_empty() => {
                match done {
                    Ok(work) => c.apply(work),
                    Err(e) => tracing::error!(error = %e, "a daemon task failed"),
                }
            }
            _ = tick.tick() => c.on_tick(),
        }
        c.dispatch();
    }
    c.shut_down().await;
}

/// An instant `d` in the past (or now, if the clock cannot go back that far).
fn long_ago(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_sub(d + Duration::from_secs(1)).unwrap_or(now)
}

/// The URI of a dataset folder.
pub(crate) fn uri_of(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

pub(crate) fn is_missing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

impl Coordinator {
    fn cfg(&self) -> &DaemonConfig {
        &self.shared.config
    }

    /// Takes the entries of the state file; the first scan compares their stamps.
    fn load(&mut self, loaded: Vec<DatasetStatus>) {
        let quiet = self.cfg().watch.quiet;
        let mut table = self.shared.table();
        for status in loaded {
            let path = PathBuf::from(&status.path);
            if self.shared.root_of(&path).is_none() {
                continue; // no longer under a watched root
            }
            let mut entry = Entry::new(status);
            let state = entry.status.state;
            if state.in_flight() {
                // Work was under way when the daemon stopped: taken again as soon as the first
                // scan shows the same stamp, without another quiet period.
                entry.confirm = entry.status.stamp.clone();
                entry.last_activity = long_ago(quiet);
                entry.status.set(DatasetState::Settling);
            } else if state == DatasetState::Settling {
                entry.confirm = entry.status.stamp.clone();
            }
            table.entries.insert(path, entry);
        }
    }

    fn start_watchers(&mut self) {
        self.watchers = None;
        match watcher::start(
            &self.shared.roots,
            &self.cfg().watch.marker,
            self.cfg().watch.poll,
            self.watch_tx.clone(),
            self.overflow.clone(),
        ) {
            Ok(w) => {
                self.watchers = Some(w);
                tracing::info!(roots = ?self.shared.roots, poll = ?self.cfg().watch.poll, "watching");
            }
            Err(e) => {
                self.shared.metrics.watcher_errors.inc();
                tracing::error!(error = %e,
                    "cannot watch the roots; relying on rescans until the watcher can be made");
                self.recreate_watchers = true;
            }
        }
    }

    /// An event. Returns whether to look at once (a marker changed, a folder came or went).
    fn on_watch(&mut self, msg: WatchMsg) -> bool {
        match msg {
            WatchMsg::Rescan { reason, recreate } => {
                tracing::warn!(reason, "events may have been lost: rescanning");
                self.shared.metrics.watcher_errors.inc();
                self.rescan_wanted = true;
                self.recreate_watchers |= recreate;
                false
            }
            WatchMsg::Touched { dataset, urgent } => {
                let Some(root) = self.shared.root_of(&dataset).cloned() else {
                    return false;
                };
                let mut guard = self.shared.table();
                let table = &mut *guard;
                let entry = table.entries.entry(dataset.clone()).or_insert_with(|| {
                    Entry::new(DatasetStatus::new(
                        uri_of(&dataset),
                        root.to_string_lossy().into_owned(),
                    ))
                });
                entry.last_activity = Instant::now();
                entry.check_now |= urgent;
                let was = entry.status.state;
                match was {
                    DatasetState::Embedding | DatasetState::Storing => {
                        entry.changed_while_running = true;
                    }
                    DatasetState::Settling => entry.confirm = None,
                    DatasetState::Indexed | DatasetState::Parked => {
                        entry.prior = Some(was);
                        entry.confirm = None;
                        entry.status.set(DatasetState::Settling);
                    }
                    DatasetState::Queued | DatasetState::Waiting => {
                        entry.prior = None;
                        entry.confirm = None;
                        entry.status.set(DatasetState::Settling);
                        table.queue.retain(|p| p != &dataset);
                        table.waiting.retain(|p| p != &dataset);
                    }
                }
                table.dirty = true;
                urgent
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if self.overflow.swap(false, Ordering::Relaxed) {
            tracing::warn!("file events overflowed the buffer: rescanning");
            self.shared.metrics.watcher_errors.inc();
            self.rescan_wanted = true;
        }
        if now >= self.next_rescan {
            self.rescan_wanted = true;
        }
        if self.store_retry_at.is_some_and(|at| now >= at) {
            self.store_retry_at = None;
            self.rescan_wanted = true; // the scan reopens the store and lists its tasks
        }
        if self.rescan_wanted && !self.scan_running {
            if self.recreate_watchers {
                self.recreate_watchers = false;
                self.start_watchers();
            }
            self.start_scan();
        }
        self.check_settling(false);
        self.expire_orphans(now);
        self.update_metrics();
        self.persist_if_dirty();
    }

    /// Starts a full scan (folders, stamps, and the store's tasks).
    fn start_scan(&mut self) {
        self.scan_running = true;
        self.rescan_wanted = false;
        self.next_rescan = Instant::now() + self.cfg().watch.rescan;
        self.shared.metrics.rescans.inc();
        let shared = self.shared.clone();
        self.jobs.spawn(async move {
            let started = Instant::now();
            let result = tokio::task::spawn_blocking(move || job::scan(&shared, started)).await;
            Work::Scan(result.unwrap_or_else(|e| ScanResult {
                started,
                found: Vec::new(),
                root_ok: Vec::new(),
                tasks: Some(Err(format!("scan failed: {e}"))),
            }))
        });
    }

    /// Looks at settling datasets whose quiet period is over (or, with `only_now`, those whose
    /// marker just changed).
    fn check_settling(&mut self, only_now: bool) {
        if self.check_running {
            return;
        }
        let quiet = self.cfg().watch.quiet;
        let now = Instant::now();
        // Due: quiet period over, or marker event. Probed: the others, for a marker whose
        // event was lost (a folder renamed into a root and marked before its watch existed).
        let mut due = Vec::new();
        let mut probed = Vec::new();
        {
            let mut table = self.shared.table();
            for (p, e) in table.entries.iter_mut() {
                if e.status.state != DatasetState::Settling {
                    continue;
                }
                if e.check_now || (!only_now && now - e.last_activity >= quiet) {
                    e.check_now = false;
                    due.push(p.clone());
                } else if !only_now {
                    probed.push((p.clone(), e.stale_marker));
                }
            }
        }
        if due.is_empty() && probed.is_empty() {
            return;
        }
        self.check_running = true;
        let marker = self.cfg().watch.marker.clone();
        self.jobs.spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                let mut out: Vec<(PathBuf, std::io::Result<Stamp>)> = due
                    .into_iter()
                    .map(|p| {
                        let s = discover::stamp(&p, &marker);
                        (p, s)
                    })
                    .collect();
                for (p, stale) in probed {
                    match discover::marker_time(&p, &marker) {
                        Some(m) if Some(m) != stale => {
                            let s = discover::stamp(&p, &marker);
                            out.push((p, s));
                        }
                        _ => {}
                    }
                }
                out
            })
            .await;
            Work::Checked(result.unwrap_or_default())
        });
    }

    /// Applies finished asynchronous work.
    fn apply(&mut self, work: Work) {
        match work {
            Work::Job {
                path,
                ready,
                outcome,
            } => self.finish_job(path, ready, outcome),
            Work::Scan(result) => self.apply_scan(result),
            Work::Checked(results) => {
                self.check_running = false;
                self.apply_checks(results);
            }
            Work::Deleted { uri, ids, result } => {
                self.deleting.remove(&uri);
                match result {
                    Ok(()) => {
                        let mut table = self.shared.table();
                        if let Some(refs) = table.stored.get_mut(&uri) {
                            refs.retain(|r| !ids.contains(&r.id));
                            if refs.is_empty() {
                                table.stored.remove(&uri);
                            }
                        }
                        tracing::info!(dataset = %uri, points = ids.len(), "deleted from the store");
                    }
                    Err(e) => {
                        self.shared.metrics.store_errors.inc();
                        tracing::warn!(dataset = %uri, error = %e,
                            "could not delete from the store; retried at the next rescan");
                    }
                }
            }
            Work::Persisted => self.persist_running = false,
        }
    }

    fn apply_checks(&mut self, results: Vec<(PathBuf, std::io::Result<Stamp>)>) {
        let quiet = self.cfg().watch.quiet;
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut ready = Vec::new();
        {
            let mut table = self.shared.table();
            for (path, result) in results {
                let Some(entry) = table.entries.get_mut(&path) else {
                    continue;
                };
                if entry.status.state != DatasetState::Settling {
                    continue;
                }
                match result {
                    Err(e) if is_missing(&e) => gone.push(path),
                    Err(e) => {
                        tracing::warn!(dataset = %path.display(), error = %e,
                            "cannot read the dataset folder; trying again");
                        entry.last_activity = now;
                    }
                    Ok(s) => {
                        if s.marker_is_fresh() {
                            tracing::debug!(dataset = %path.display(), "completion marker seen");
                            ready.push((path, s));
                            continue;
                        }
                        entry.stale_marker = s.marker_ns;
                        if now - entry.last_activity < quiet {
                            // Looked at for a marker that is older than the data: wait.
                        } else if entry.confirm.as_ref().is_some_and(|c| !c.same_content(&s)) {
                            entry.confirm = Some(s);
                            entry.last_activity = now;
                        } else {
                            ready.push((path, s));
                        }
                    }
                }
            }
        }
        for path in gone {
            self.gone(&path);
        }
        for (path, s) in ready {
            self.ready(&path, s);
        }
    }

    /// A settled dataset: back to its prior state if its files did not change, else queued.
    fn ready(&mut self, path: &Path, s: Stamp) {
        let cap = self.cfg().daemon.queue_capacity;
        let mut guard = self.shared.table();
        let table = &mut *guard;
        let Some(entry) = table.entries.get_mut(path) else {
            return;
        };
        entry.confirm = None;
        entry.check_now = false;
        table.dirty = true;
        if let Some(prior) = entry.prior.take() {
            if entry
                .status
                .stamp
                .as_ref()
                .is_some_and(|old| old.same_content(&s))
            {
                entry.status.stamp = Some(s);
                entry.status.set(prior);
                return;
            }
        }
        entry.status.stamp = Some(s);
        if table.queue.len() < cap {
            entry.status.set(DatasetState::Queued);
            table.queue.push_back(path.to_path_buf());
        } else {
            entry.status.set(DatasetState::Waiting);
            table.waiting.push_back(path.to_path_buf());
        }
        tracing::debug!(dataset = %path.display(), state = entry.status.state.name(), "ready");
    }

    /// Starts jobs while there are slots, queued datasets and a synced store.
    fn dispatch(&mut self) {
        if *self.stopping.borrow() || !self.store_synced {
            return;
        }
        let cap = self.cfg().daemon.queue_capacity;
        let concurrency = self.cfg().daemon.concurrency;
        loop {
            let (path, ready) = {
                let mut guard = self.shared.table();
                let table = &mut *guard;
                while table.queue.len() < cap {
                    let Some(p) = table.waiting.pop_front() else {
                        break;
                    };
                    if let Some(e) = table.entries.get_mut(&p) {
                        e.status.set(DatasetState::Queued);
                        table.queue.push_back(p);
                    }
                }
                if table.running >= concurrency {
                    return;
                }
                let Some(path) = table.queue.pop_front() else {
                    return;
                };
                let Some(entry) = table.entries.get_mut(&path) else {
                    continue;
                };
                let Some(ready) = entry.status.stamp.clone() else {
                    continue;
                };
                if entry.status.state != DatasetState::Queued {
                    continue;
                }
                entry.status.set(DatasetState::Embedding);
                entry.changed_while_running = false;
                table.running += 1;
                table.dirty = true;
                (path, ready)
            };
            let shared = self.shared.clone();
            let stopping = self.stopping.subscribe();
            self.jobs.spawn(async move {
                let outcome = job::run_job(&shared, &path, &ready, stopping).await;
                Work::Job {
                    path,
                    ready,
                    outcome,
                }
            });
        }
    }

    fn finish_job(&mut self, path: PathBuf, ready: Stamp, outcome: Outcome) {
        let uri = uri_of(&path);
        let metrics = self.shared.metrics.clone();
        let mut forget = None;
        let mut vanished = false;
        {
            let mut guard = self.shared.table();
            let table = &mut *guard;
            table.running = table.running.saturating_sub(1);
            table.dirty = true;
            // Record what the store now holds, whatever became of the entry.
            match &outcome {
                Outcome::Indexed {
                    fingerprint, id, ..
                }
                | Outcome::Repointed {
                    fingerprint, id, ..
                } => {
                    table.stored.insert(
                        uri.clone(),
                        vec![StoredRef {
                            id: *id,
                            fingerprint: fingerprint.clone(),
                            stored_at: state::now_rfc3339(),
                        }],
                    );
                    if let Outcome::Repointed { from, .. } = &outcome {
                        table.stored.remove(from);
                    }
                }
                _ => {}
            }
            let Some(entry) = table.entries.get_mut(&path) else {
                // Removed while the job ran: what it stored must go too.
                if matches!(outcome, Outcome::Indexed { .. } | Outcome::Repointed { .. }) {
                    forget = Some(uri.clone());
                }
                drop(guard);
                if let Some(uri) = forget {
                    self.forget_stored(uri);
                }
                return;
            };
            let status = &mut entry.status;
            match outcome {
                Outcome::Unchanged { fingerprint, id } => {
                    status.fingerprint = Some(fingerprint);
                    status.task_id = Some(id);
                    status.last_error = None;
                    status.stamp = Some(ready);
                    status.set(DatasetState::Indexed);
                    tracing::info!(dataset = %uri, "unchanged: already in the store");
                }
                Outcome::Indexed {
                    fingerprint,
                    id,
                    stats,
                } => {
                    status.fingerprint = Some(fingerprint);
                    status.task_id = Some(id);
                    status.last_error = None;
                    status.stamp = Some(ready);
                    status.embeddings += 1;
                    status.last_embedding_secs = Some(stats.secs);
                    status.set(DatasetState::Indexed);
                    table.embeddings_done += 1;
                    metrics.embeddings_done.inc();
                    metrics.embedding_seconds.observe(stats.secs);
                    if stats.secs > 0.0 {
                        metrics
                            .images_per_second
                            .set(stats.images as f64 / stats.secs);
                    }
                    tracing::info!(dataset = %uri, %id, secs = stats.secs, images = stats.images,
                        "embedded and stored");
                }
                Outcome::Repointed {
                    fingerprint,
                    id,
                    from,
                } => {
                    status.fingerprint = Some(fingerprint);
                    status.task_id = Some(id);
                    status.last_error = None;
                    status.stamp = Some(ready);
                    status.set(DatasetState::Indexed);
                    tracing::info!(dataset = %uri, %from, %id,
                        "moved the stored task of a vanished folder here (same fingerprint)");
                }
                Outcome::Changed => {
                    entry.prior = None;
                    entry.confirm = None;
                    entry.last_activity = Instant::now();
                    status.set(DatasetState::Settling);
                    tracing::info!(dataset = %uri, "files changed while being read: settling again");
                }
                Outcome::Vanished => vanished = true,
                Outcome::Failed { error, fingerprint } => {
                    status.last_error = Some(error.clone());
                    if fingerprint.is_some() {
                        status.fingerprint = fingerprint;
                    }
                    status.stamp = Some(ready);
                    status.set(DatasetState::Parked);
                    table.embeddings_failed += 1;
                    metrics.embeddings_failed.inc();
                    tracing::warn!(dataset = %uri, error,
                        "dataset parked: retried when its files change");
                }
                Outcome::Abandoned => {}
            }
            if entry.changed_while_running && !vanished {
                entry.changed_while_running = false;
                let state = entry.status.state;
                if matches!(state, DatasetState::Indexed | DatasetState::Parked) {
                    entry.prior = Some(state);
                }
                entry.confirm = None;
                entry.last_activity = Instant::now();
                entry.status.set(DatasetState::Settling);
            }
        }
        if vanished {
            self.gone(&path);
        }
    }

    /// A dataset folder that is gone: forget it, and its stored task per `on_remove`.
    fn gone(&mut self, path: &Path) {
        let uri = uri_of(path);
        let (stored, was_seen) = {
            let mut table = self.shared.table();
            let Some(entry) = table.entries.remove(path) else {
                return;
            };
            table.queue.retain(|p| p != path);
            table.waiting.retain(|p| p != path);
            table.dirty = true;
            (
                table.stored.contains_key(&uri),
                entry.status.stamp.is_some(),
            )
        };
        if was_seen || stored {
            tracing::info!(dataset = %uri, "dataset folder removed");
        } else {
            // A file directly in a root, or a folder that came and went: never a dataset.
            tracing::debug!(path = %uri, "not a dataset folder (any more)");
        }
        if stored {
            self.forget_stored(uri);
        }
    }

    /// The stored task of a vanished folder: deleted now, or kept a while for a repoint.
    fn forget_stored(&mut self, uri: String) {
        match self.cfg().watch.on_remove {
            OnRemove::Delete => {
                let ids: Vec<Uuid> = {
                    let table = self.shared.table();
                    table
                        .stored
                        .get(&uri)
                        .map(|refs| refs.iter().map(|r| r.id).collect())
                        .unwrap_or_default()
                };
                self.delete_points(uri, ids);
            }
            OnRemove::Repoint => {
                let mut table = self.shared.table();
                table.orphans.entry(uri).or_insert_with(Instant::now);
            }
        }
    }

    /// Deletes points of `uri` from the store (in the background).
    fn delete_points(&mut self, uri: String, ids: Vec<Uuid>) {
        if ids.is_empty() || !self.deleting.insert(uri.clone()) {
            return;
        }
        let shared = self.shared.clone();
        self.jobs.spawn(async move {
            let ids2 = ids.clone();
            let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
                let store = shared
                    .store
                    .open_existing()
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "no store".to_string())?;
                for id in ids2 {
                    store.delete_task(id).map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            Work::Deleted { uri, ids, result }
        });
    }

    /// `on_remove = "repoint"`: deletes the points of vanished folders that no new folder
    /// claimed, once nothing that could claim them is still settling or queued (or, at the
    /// latest, after ten quiet periods and a minute).
    fn expire_orphans(&mut self, now: Instant) {
        let quiet = self.cfg().watch.quiet;
        let expired: Vec<String> = {
            let mut table = self.shared.table();
            if table.orphans.is_empty() {
                return;
            }
            let busy = table.entries.values().any(|e| {
                matches!(
                    e.status.state,
                    DatasetState::Settling
                        | DatasetState::Waiting
                        | DatasetState::Queued
                        | DatasetState::Embedding
                        | DatasetState::Storing
                )
            });
            let soft = 2 * quiet.max(Duration::from_secs(1));
            let hard = 10 * quiet + Duration::from_secs(60);
            let expired: Vec<String> = table
                .orphans
                .iter()
                .filter(|(_, &since)| {
                    let age = now - since;
                    (!busy && age >= soft) || age >= hard
                })
                .map(|(u, _)| u.clone())
                .collect();
            for u in &expired {
                table.orphans.remove(u);
            }
            expired
        };
        for uri in expired {
            tracing::info!(dataset = %uri, "no folder took over the vanished dataset's task");
            let ids = {
                let table = self.shared.table();
                table
                    .stored
                    .get(&uri)
                    .map(|refs| refs.iter().map(|r| r.id).collect())
                    .unwrap_or_default()
            };
            self.delete_points(uri, ids);
        }
    }

    fn apply_scan(&mut self, r: ScanResult) {
        self.scan_running = false;
        let now = Instant::now();
        let mut gone = Vec::new();
        {
            let mut guard = self.shared.table();
            let table = &mut *guard;
            table.root_ok = r.root_ok.clone();
            let mut seen = std::collections::HashSet::new();
            for (path, s) in r.found {
                seen.insert(path.clone());
                let Some(root) = self.shared.root_of(&path) else {
                    continue;
                };
                let fresh = s.marker_is_fresh();
                let entry = table.entries.entry(path.clone()).or_insert_with(|| {
                    let mut e = Entry::new(DatasetStatus::new(
                        uri_of(&path),
                        root.to_string_lossy().into_owned(),
                    ));
                    e.confirm = Some(s.clone());
                    e
                });
                match entry.status.state {
                    DatasetState::Indexed | DatasetState::Parked => {
                        let same = entry
                            .status
                            .stamp
                            .as_ref()
                            .is_some_and(|old| old.same_content(&s));
                        if !same {
                            entry.prior = Some(entry.status.state);
                            entry.confirm = Some(s);
                            entry.last_activity = now;
                            entry.status.set(DatasetState::Settling);
                            table.dirty = true;
                        }
                    }
                    DatasetState::Settling => {
                        if let Some(c) = &entry.confirm {
                            if !c.same_content(&s) {
                                entry.confirm = Some(s);
                                entry.last_activity = now;
                            }
                        }
                        entry.check_now |= fresh;
                    }
                    _ => {}
                }
            }
            for (path, entry) in &table.entries {
                let root_ok = self
                    .shared
                    .roots
                    .iter()
                    .position(|root| Some(root.as_path()) == path.parent())
                    .and_then(|i| table.root_ok.get(i).copied())
                    .unwrap_or(false);
                let busy = matches!(
                    entry.status.state,
                    DatasetState::Embedding | DatasetState::Storing
                );
                if root_ok && !busy && !seen.contains(path) && entry.last_activity < r.started {
                    gone.push(path.clone());
                }
            }
        }
        for path in gone {
            self.gone(&path);
        }
        self.shared.table().scans_done += 1;
        match r.tasks {
            Some(Ok(tasks)) => {
                self.store_synced = true;
                self.store_backoff = self.cfg().daemon.retry_initial;
                self.reconcile(tasks);
            }
            Some(Err(e)) => {
                self.shared.metrics.store_errors.inc();
                let delay = self.store_backoff;
                self.store_backoff = (delay * 2).min(self.cfg().daemon.retry_max);
                self.store_retry_at = Some(now + delay);
                tracing::warn!(store = %self.shared.store.describe(), error = %e,
                    retry_in_secs = delay.as_secs_f64(), "store unavailable");
            }
            None => {}
        }
        self.check_settling(true);
    }

    /// Brings the store in line with the folders (see the module docs).
    fn reconcile(&mut self, tasks: Vec<TaskSummary>) {
        let mut stored: HashMap<String, Vec<StoredRef>> = HashMap::new();
        for t in tasks {
            stored
                .entry(t.dataset_uri.clone())
                .or_default()
                .push(StoredRef {
                    id: t.id,
                    fingerprint: t.fingerprint,
                    stored_at: t.stored_at,
                });
        }
        let mut forget = Vec::new();
        let mut extra: Vec<(String, Vec<Uuid>)> = Vec::new();
        {
            let mut guard = self.shared.table();
            let table = &mut *guard;
            table.stored = stored;
            for (uri, refs) in &table.stored {
                let path = PathBuf::from(uri);
                let Some(i) = self
                    .shared
                    .roots
                    .iter()
                    .position(|r| Some(r.as_path()) == path.parent())
                else {
                    continue; // not under a watched root: not the daemon's business
                };
                if !table.root_ok.get(i).copied().unwrap_or(false) {
                    continue; // an unreadable root must not look like deleted datasets
                }
                match table.entries.get(&path) {
                    None => {
                        if !table.orphans.contains_key(uri) {
                            forget.push(uri.clone());
                        }
                    }
                    Some(entry) if refs.len() > 1 => {
                        let keep = refs
                            .iter()
                            .find(|r| entry.status.fingerprint.as_deref() == Some(&r.fingerprint))
                            .or_else(|| refs.iter().max_by(|a, b| a.stored_at.cmp(&b.stored_at)))
                            .map(|r| r.id);
                        let ids = refs
                            .iter()
                            .filter(|r| Some(r.id) != keep)
                            .map(|r| r.id)
                            .collect();
                        extra.push((uri.clone(), ids));
                    }
                    Some(_) => {}
                }
            }
            // Indexed datasets whose content the store does not hold: take them again.
            let quiet = self.cfg().watch.quiet;
            for (path, entry) in table.entries.iter_mut() {
                if entry.status.state != DatasetState::Indexed {
                    continue;
                }
                let held = table.stored.get(&uri_of(path)).is_some_and(|refs| {
                    refs.iter()
                        .any(|r| entry.status.fingerprint.as_deref() == Some(&r.fingerprint))
                });
                if !held {
                    tracing::info!(dataset = %path.display(),
                        "indexed dataset missing from the store: taking it again");
                    entry.prior = None;
                    entry.confirm = None;
                    entry.last_activity = long_ago(quiet);
                    entry.status.set(DatasetState::Settling);
                    table.dirty = true;
                }
            }
        }
        for uri in forget {
            tracing::info!(dataset = %uri, "stored task's folder no longer exists");
            self.forget_stored(uri);
        }
        for (uri, ids) in extra {
            tracing::warn!(dataset = %uri, extra = ids.len(), "several points for one dataset");
            self.delete_points(uri, ids);
        }
    }

    fn update_metrics(&self) {
        let m = &self.shared.metrics;
        let table = self.shared.table();
        let mut counts: BTreeMap<DatasetState, i64> =
            DatasetState::ALL.iter().map(|&s| (s, 0)).collect();
        for e in table.entries.values() {
            *counts.entry(e.status.state).or_default() += 1;
        }
        m.set_states(&counts.into_iter().collect::<Vec<_>>());
        m.queue_depth
            .set((table.queue.len() + table.waiting.len()) as i64);
        m.jobs_running.set(table.running as i64);
        let up = !matches!(
            self.shared.store.state(),
            crate::storage::StoreState::Unavailable { .. }
        );
        m.store_up.set(i64::from(up));
    }

    fn snapshot(&self) -> Vec<DatasetStatus> {
        let mut table = self.shared.table();
        table.dirty = false;
        table.entries.values().map(|e| e.status.clone()).collect()
    }

    fn persist_if_dirty(&mut self) {
        if self.persist_running || !self.shared.table().dirty || self.last_persist.elapsed() < TICK
        {
            return;
        }
        self.persist_running = true;
        self.last_persist = Instant::now();
        let snapshot = self.snapshot();
        let dir = self.cfg().daemon.state_dir.clone();
        self.jobs.spawn(async move {
            let result = tokio::task::spawn_blocking(move || state::save(&dir, snapshot)).await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not write the state file"),
                Err(e) => tracing::warn!(error = %e, "could not write the state file"),
            }
            Work::Persisted
        });
    }

    async fn shut_down(mut self) {
        let running = self.shared.table().running;
        tracing::info!(running, "shutting down: taking no more work");
        let _ = self.stopping.send(true);
        self.watchers = None;
        let deadline = tokio::time::Instant::now() + self.cfg().daemon.shutdown_grace;
        while !self.jobs.is_empty() {
            match tokio::time::timeout_at(deadline, self.jobs.join_next()).await {
                Ok(Some(Ok(work))) => self.apply(work),
                Ok(Some(Err(e))) => tracing::error!(error = %e, "a daemon task failed"),
                Ok(None) => break,
                Err(_) => {
                    let left = self.shared.table().running;
                    tracing::warn!(
                        jobs = left,
                        "shutdown grace over: abandoning running embeddings (redone at the \
                         next start)"
                    );
                    self.jobs.abort_all();
                    while self.jobs.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let snapshot = self.snapshot();
        let dir = self.cfg().daemon.state_dir.clone();
        let shared = self.shared.clone();
        let done = tokio::task::spawn_blocking(move || {
            let saved = state::save(&dir, snapshot);
            shared.store.flush();
            saved
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not write the state file"),
            Err(e) => tracing::warn!(error = %e, "could not write the state file"),
        }
        tracing::info!("state written, store flushed");
    }
}
