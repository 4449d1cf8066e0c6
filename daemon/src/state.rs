//! Per-dataset status, shown by `/status` and persisted in `<state_dir>/daemon-state.json`.
//!
//! The file is a checkpoint, written atomically (temporary file in the same folder, `fsync`,
//! rename, `fsync` of the folder) after state changes, so a `kill -9` at any moment leaves
//! either the previous or the next version, never a torn one. Correctness does not rest on it:
//! point ids are deterministic (same dataset path, probe and estimator → same point), and on
//! start the daemon rescans every root and reconciles with what the store holds. What the file
//! adds: datasets that were queued or being embedded when the daemon died are taken again at
//! once (no quiet period), unchanged datasets are recognised by their stamp without opening
//! them, and parked datasets keep their error instead of failing again.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::discover::Stamp;
use crate::{Error, Result};

/// Name of the state file in the state folder.
pub const STATE_FILE: &str = "daemon-state.json";
/// Version of the state file's format; other versions are ignored (and set aside).
pub const STATE_VERSION: u32 = 1;

/// Where a dataset is in the daemon's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetState {
    /// Seen changing; waiting for it to be quiet (or for its completion marker).
    Settling,
    /// Complete, waiting for room in the queue.
    Waiting,
    /// In the queue.
    Queued,
    /// Being opened and embedded.
    Embedding,
    /// Embedded; writing to the store (retried with backoff while the store is unavailable).
    Storing,
    /// Its current content is in the store.
    Indexed,
    /// Failed (unreadable or unusable data); retried when its files change.
    Parked,
}

impl DatasetState {
    /// Every state, for metrics.
    pub const ALL: [DatasetState; 7] = [
        DatasetState::Settling,
        DatasetState::Waiting,
        DatasetState::Queued,
        DatasetState::Embedding,
        DatasetState::Storing,
        DatasetState::Indexed,
        DatasetState::Parked,
    ];

    /// The state's name as written in JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            DatasetState::Settling => "settling",
            DatasetState::Waiting => "waiting",
            DatasetState::Queued => "queued",
            DatasetState::Embedding => "embedding",
            DatasetState::Storing => "storing",
            DatasetState::Indexed => "indexed",
            DatasetState::Parked => "parked",
        }
    }

    /// Work on it was under way (queued or further) and not finished.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            DatasetState::Waiting
                | DatasetState::Queued
                | DatasetState::Embedding
                | DatasetState::Storing
        )
    }
}

/// One dataset as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStatus {
    /// Its URI: the absolute path of its folder under the canonical root.
    pub path: String,
    /// The watched root it is in.
    pub root: String,
    /// Where it is now.
    pub state: DatasetState,
    /// The stamp its last decision was taken on (queued, indexed or parked).
    pub stamp: Option<Stamp>,
    /// Its fingerprint when last opened.
    pub fingerprint: Option<String>,
    /// Its point id in the store, once indexed.
    pub task_id: Option<Uuid>,
    /// The last error (data error when parked; store error while storing).
    pub last_error: Option<String>,
    /// Embeddings this daemon computed for it, over its lifetime (restarts included).
    pub embeddings: u64,
    /// Seconds of its last embedding.
    pub last_embedding_secs: Option<f64>,
    /// When its state last changed (RFC 3339, UTC).
    pub updated: String,
}

impl DatasetStatus {
    /// A dataset just seen.
    pub fn new(path: String, root: String) -> Self {
        DatasetStatus {
            path,
            root,
            state: DatasetState::Settling,
            stamp: None,
            fingerprint: None,
            task_id: None,
            last_error: None,
            embeddings: 0,
            last_embedding_secs: None,
            updated: now_rfc3339(),
        }
    }

    /// Moves to `state`, updating the time.
    pub fn set(&mut self, state: DatasetState) {
        if self.state != state {
            self.state = state;
            self.updated = now_rfc3339();
        }
    }
}

/// The state file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Every dataset known, by path.
    pub datasets: Vec<DatasetStatus>,
}

/// Now, RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Reads the state file in `dir`. A missing file is an empty state; one that does not parse
/// or has another version is renamed to `daemon-state.json.unreadable` and ignored (with a
/// warning): the rescan rebuilds everything it held.
pub fn load(dir: &Path) -> Vec<DatasetStatus> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "state file unreadable; starting afresh");
            return Vec::new();
        }
    };
    match serde_json::from_str::<StateFile>(&text) {
        Ok(f) if f.version == STATE_VERSION => f.datasets,
        Ok(f) => {
            set_aside(
                &path,
                &format!("version {} is not {STATE_VERSION}", f.version),
            );
            Vec::new()
        }
        Err(e) => {
            set_aside(&path, &e.to_string());
            Vec::new()
        }
    }
}

fn set_aside(path: &Path, why: &str) {
    let aside = path.with_extension("json.unreadable");
    tracing::warn!(path = %path.display(), why, aside = %aside.display(),
        "state file ignored; the rescan rebuilds it");
    if let Err(e) = std::fs::rename(path, &aside) {
        tracing::warn!(path = %path.display(), error = %e, "could not set the state file aside");
    }
}

/// Writes `datasets` to the state file in `dir`, atomically and durably.
///
/// Errors: [`Error::State`] when the file cannot be written.
pub fn save(dir: &Path, datasets: Vec<DatasetStatus>) -> Result<()> {
    let path = dir.join(STATE_FILE);
    let file = StateFile {
        version: STATE_VERSION,
        datasets,
    };
    let fail = |what: String| Error::State {
        path: path.clone(),
        message: what,
    };
    let text = serde_json::to_vec_pretty(&file).map_err(|e| fail(e.to_string()))?;
    write_atomic(dir, &path, &text).map_err(|e| fail(e.to_string()))
}

/// Writes `bytes` to `path` through a temporary file in `dir`: write, sync, rename, sync the
/// folder, so the file is either the old or the new version after a crash.
pub fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".daemon-state.")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The state file's path in `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unreadable_file_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_empty());
        let mut s = DatasetStatus::new("/r/a".into(), "/r".into());
        s.set(DatasetState::Parked);
        s.last_error = Some("bad".into());
        s.stamp = Some(Stamp {
            files: 1,
            bytes: 2,
            newest_ns: 3,
            marker_ns: None,
        });
        save(dir.path(), vec![s.clone()]).unwrap();
        assert_eq!(load(dir.path()), [s]);
        std::fs::write(path_in(dir.path()), b"{ torn").unwrap();
        assert!(load(dir.path()).is_empty());
        assert!(dir.path().join("daemon-state.json.unreadable").is_file());
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
