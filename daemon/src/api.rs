//! The HTTP API's JSON documents, shared by the server ([`crate::run`]) and the client
//! ([`crate::DaemonClient`]).
//!
//! | endpoint | answer |
//! | --- | --- |
//! | `GET /healthz` | [`Health`] (200 while the daemon runs, whatever the store's state) |
//! | `GET /metrics` | Prometheus text (see [`crate::metrics`]) |
//! | `GET /status` | [`StatusReport`] |
//! | `GET /api/tasks` | `[`[`TaskInfo`]`]`: every stored task |
//! | `GET /api/similar?task_id=ID\|dataset=PATH&limit=&prefetch=&min_samples=&min_classes=&tag=k:v` | [`SimilarResponse`] |
//! | `GET /api/select?task_id=ID\|dataset=PATH&alpha=&limit=&prefetch=` | [`SelectResponse`] |
//! | `GET /api/experts` | `[`[`ExpertInfo`]`]`: the zoo |
//! | `POST /api/experts` with an [`AddExpert`] body | [`ExpertAdded`] |
//! | `DELETE /api/experts/{key}` | [`ExpertRemoved`] (404 when there is no such expert) |
//!
//! The expert endpoints are how `t2v zoo` writes while the daemon holds the embedded store.
//! For `dataset=PATH`, the daemon uses the stored task of that path when there is one, else
//! embeds the dataset on the fly with its own settings (the answer says which). Errors are
//! `{"error": "..."}` with status 400 (bad parameters), 404 (unknown task or path), 503
//! (store unavailable) or 500.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use task2vec_qdrant::{Expert, RankedExpert, SimilarTask};
use uuid::Uuid;

use crate::state::DatasetStatus;
use crate::storage::StoreState;

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"` when the daemon answers.
    pub status: String,
    /// The store's state.
    pub store: StoreState,
}

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's version.
    pub version: String,
    /// When it started (RFC 3339 UTC).
    pub started: String,
    /// Watched roots (canonical).
    pub roots: Vec<String>,
    /// The store's state and location.
    pub store: StoreStatus,
    /// Datasets queued or waiting for room in the queue.
    pub queue_depth: usize,
    /// Datasets being opened, embedded or stored.
    pub running: usize,
    /// Embeddings computed since start.
    pub embeddings_done: u64,
    /// Datasets failed since start.
    pub embeddings_failed: u64,
    /// Full scans of the roots completed since start (the first one, at start, compares
    /// every dataset with the store).
    pub scans_done: u64,
    /// Every dataset known, by path.
    pub datasets: Vec<DatasetStatus>,
}

/// The store in [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// Where it is (`embedded /data/store`).
    pub location: String,
    /// Its state.
    #[serde(flatten)]
    pub state: StoreState,
    /// Stored tasks (all, including those outside the watched roots), as last listed.
    pub tasks: usize,
}

/// A stored task as listed (`GET /api/tasks`): the store's own listing record.
pub use task2vec_qdrant::TaskSummary as TaskInfo;

/// What a query is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A stored task.
    TaskId(Uuid),
    /// A dataset folder (or manifest): its stored task if there is one, else embedded on the
    /// fly.
    Dataset(PathBuf),
}

/// How the daemon resolved a [`Target`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    /// `"stored"` (a stored task) or `"embedded"` (embedded on the fly for this query).
    pub source: String,
    /// The stored task's id, when stored.
    pub task_id: Option<Uuid>,
    /// The dataset's path or URI.
    pub dataset: String,
    /// Seconds spent embedding on the fly (0 for a stored task).
    pub embedding_secs: f64,
}

/// Parameters of `similar` besides the target (`None`: the daemon's defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimilarParams {
    /// Tasks returned (default 10).
    pub limit: Option<usize>,
    /// Tasks fetched by cosine before the exact re-rank (default 100).
    pub prefetch: Option<usize>,
    /// Only tasks with at least this many samples.
    pub min_samples: Option<usize>,
    /// Only tasks with at least this many classes.
    pub min_classes: Option<usize>,
    /// Only tasks with every one of these tags.
    pub tags: BTreeMap<String, String>,
}

/// `GET /api/similar`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimilarResponse {
    /// How the target was resolved.
    pub target: Resolved,
    /// Nearest first.
    pub results: Vec<SimilarTask>,
}

/// Parameters of `select` besides the target (`None`: the daemon's defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SelectParams {
    /// Weight of the complexity term of `d_asym` (default 0.15).
    pub alpha: Option<f64>,
    /// Experts returned (default 10).
    pub limit: Option<usize>,
    /// Experts fetched by cosine before the exact re-rank (default 100).
    pub prefetch: Option<usize>,
}

/// `GET /api/select`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectResponse {
    /// How the target was resolved.
    pub target: Resolved,
    /// Best first.
    pub results: Vec<RankedExpert>,
}

/// `POST /api/experts`: an expert and the task it was trained on, a stored task or a dataset
/// (its stored task when the store has it, else embedded now with the daemon's settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddExpert {
    /// The expert.
    pub expert: Expert,
    /// The stored task it was trained on...
    #[serde(default)]
    pub task_id: Option<Uuid>,
    /// ...or the dataset (absolute path).
    #[serde(default)]
    pub dataset: Option<PathBuf>,
}

/// The answer to `POST /api/experts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertAdded {
    /// The expert's point id.
    pub id: Uuid,
    /// How the training task was resolved.
    pub trained_on: Resolved,
    /// Whether the store's trivial embedding was computed for this (first) expert, from the
    /// same dataset with random labels.
    pub trivial_added: bool,
}

/// An expert as listed (`GET /api/experts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertInfo {
    /// Its point id.
    pub point_id: Uuid,
    /// The expert.
    pub expert: Expert,
}

/// The answer to `DELETE /api/experts/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertRemoved {
    /// The key removed.
    pub key: String,
    /// Its point id.
    pub point_id: Uuid,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// The query string of a target plus extra pairs.
pub(crate) fn target_pairs(target: &Target) -> (String, String) {
    match target {
        Target::TaskId(id) => ("task_id".into(), id.to_string()),
        Target::Dataset(p) => ("dataset".into(), p.to_string_lossy().into_owned()),
    }
}
