//! Jobs: the blocking work the coordinator hands out — scanning the roots, and taking one
//! dataset from "settled" to "in the store" (check its stamp, open it, compare with the store,
//! repoint or embed, write with retries).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use task2vec::embedding::Embedding;
use task2vec::fisher::Estimator;
use task2vec_qdrant::{Error as StoreError, Store, Tags, VectorSpace};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::OnRemove;
use crate::discover::{self, Stamp};
use crate::embedder::EmbedStats;
use crate::indexer::{is_missing, uri_of, Outcome, ScanResult, Shared, TAG_INDEXED_BY, TAG_ROOT};
use crate::state::DatasetState;
use crate::storage::is_transient;

/// A full scan (blocking): every dataset folder and its stamp, and the store's tasks.
pub(crate) fn scan(shared: &Shared, started: Instant) -> ScanResult {
    let marker = &shared.config.watch.marker;
    let mut found = Vec::new();
    let mut root_ok = Vec::new();
    for root in &shared.roots {
        match discover::list_datasets(root) {
            Ok(list) => {
                root_ok.push(true);
                for dir in list {
                    match discover::stamp(&dir, marker) {
                        Ok(s) => found.push((dir, s)),
                        Err(e) => tracing::debug!(dataset = %dir.display(), error = %e,
                            "vanished while scanning"),
                    }
                }
            }
            Err(e) => {
                root_ok.push(false);
                tracing::warn!(root = %root.display(), error = %e,
                    "cannot list the root; its datasets are left as they are");
            }
        }
    }
    let tasks = match shared.store.open_existing() {
        Ok(Some(store)) => Some(store.list_tasks().map_err(|e| e.to_string())),
        Ok(None) => Some(Ok(Vec::new())),
        Err(e) => Some(Err(e.to_string())),
    };
    ScanResult {
        started,
        found,
        root_ok,
        tasks,
    }
}

/// What a job's blocking part found.
enum Prepared {
    Done(Outcome),
    Embedded {
        embedding: Arc<Embedding>,
        /// The trivial embedding of the same images, computed when the store has none yet.
        trivial: Option<Arc<Embedding>>,
        fingerprint: String,
        stats: EmbedStats,
    },
    Repoint {
        from: String,
        id: Uuid,
        fingerprint: String,
    },
}

/// One dataset's job: check, open, compare, embed (in a permit), store (with backoff).
pub(crate) async fn run_job(
    shared: &Arc<Shared>,
    path: &Path,
    ready: &Stamp,
    mut stopping: watch::Receiver<bool>,
) -> Outcome {
    let prepared = {
        let Ok(_permit) = shared.permits.acquire().await else {
            return Outcome::Abandoned;
        };
        let (s, p, r) = (shared.clone(), path.to_path_buf(), ready.clone());
        match tokio::task::spawn_blocking(move || prepare(&s, &p, &r)).await {
            Ok(p) => p,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("internal error while embedding: {e}"),
                    fingerprint: None,
                }
            }
        }
    };
    let (write, fingerprint) = match prepared {
        Prepared::Done(outcome) => return outcome,
        Prepared::Embedded {
            embedding,
            trivial,
            fingerprint,
            stats,
        } => (
            Write::Upsert {
                embedding,
                trivial,
                stats,
            },
            fingerprint,
        ),
        Prepared::Repoint {
            from,
            id,
            fingerprint,
        } => (Write::Repoint { from, id }, fingerprint),
    };
    let config = &shared.config.daemon;
    let mut delay = config.retry_initial;
    loop {
        let (s, p, w) = (shared.clone(), path.to_path_buf(), write.clone());
        let result = tokio::task::spawn_blocking(move || write_to_store(&s, &p, &w)).await;
        let error = match result {
            Ok(Ok(Some(id))) => {
                return match write {
                    Write::Upsert { stats, .. } => Outcome::Indexed {
                        fingerprint,
                        id,
                        stats,
                    },
                    Write::Repoint { from, .. } => Outcome::Repointed {
                        fingerprint,
                        id,
                        from,
                    },
                };
            }
            // The vanished dataset's point is gone: embed instead.
            Ok(Ok(None)) => return Outcome::Changed,
            Ok(Err(e)) if is_transient(&e) => e.to_string(),
            Ok(Err(e)) => {
                return Outcome::Failed {
                    error: format!("the store refused it: {e}"),
                    fingerprint: Some(fingerprint),
                }
            }
            Err(e) => format!("internal error while storing: {e}"),
        };
        shared.metrics.store_errors.inc();
        {
            let mut table = shared.table();
            if let Some(entry) = table.entries.get_mut(path) {
                entry.status.last_error = Some(error.clone());
                entry.status.set(DatasetState::Storing);
            }
            table.dirty = true;
        }
        tracing::warn!(dataset = %path.display(), error, retry_in_secs = delay.as_secs_f64(),
            "store unavailable; retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stopping.wait_for(|s| *s) => return Outcome::Abandoned,
        }
        delay = (delay * 2).min(config.retry_max);
    }
}

/// What a job writes to the store.
#[derive(Clone)]
enum Write {
    /// A new embedding.
    Upsert {
        embedding: Arc<Embedding>,
        /// Set as the store's trivial embedding if it still has none.
        trivial: Option<Arc<Embedding>>,
        stats: EmbedStats,
    },
    /// Move the point `id` of the vanished dataset `from` here.
    Repoint { from: String, id: Uuid },
}

/// The blocking part of a job: is the dataset still as it was when it settled, is it already
/// stored, can a vanished dataset's point be moved here, else embed it.
fn prepare(shared: &Shared, path: &Path, ready: &Stamp) -> Prepared {
    let marker = &shared.config.watch.marker;
    match discover::stamp(path, marker) {
        Err(e) if is_missing(&e) => return Prepared::Done(Outcome::Vanished),
        Err(e) => {
            return Prepared::Done(Outcome::Failed {
                error: format!("{}: {e}", path.display()),
                fingerprint: None,
            })
        }
        Ok(s) if !s.same_content(ready) => return Prepared::Done(Outcome::Changed),
        Ok(_) => {}
    }
    let dataset = match discover::open_dataset(path) {
        Ok(d) => d,
        Err(_) if !path.is_dir() => return Prepared::Done(Outcome::Vanished),
        Err(e) => {
            return Prepared::Done(Outcome::Failed {
                error: e.to_string(),
                fingerprint: None,
            })
        }
    };
    let fingerprint = dataset.fingerprint();
    let uri = uri_of(path);
    // Stored points with this content elsewhere: in repoint mode, one whose folder is gone
    // (already known as an orphan, or not yet noticed: events of a rename may still be on
    // their way) moves here instead of embedding again.
    let candidates: Vec<(String, Uuid)> = {
        let table = shared.table();
        if let Some(r) = table
            .stored
            .get(&uri)
            .and_then(|refs| refs.iter().find(|r| r.fingerprint == fingerprint))
        {
            return Prepared::Done(Outcome::Unchanged {
                fingerprint,
                id: r.id,
            });
        }
        if shared.config.watch.on_remove != OnRemove::Repoint {
            Vec::new()
        } else {
            table
                .stored
                .iter()
                .filter(|(u, _)| **u != uri && shared.root_of(Path::new(u.as_str())).is_some())
                .filter_map(|(u, refs)| {
                    let r = refs.iter().find(|r| r.fingerprint == fingerprint)?;
                    Some((u.clone(), r.id))
                })
                .collect()
        }
    };
    let vanished: Vec<(String, Uuid)> = candidates
        .into_iter()
        .filter(|(u, _)| !Path::new(u).exists())
        .collect();
    let claimed = {
        let mut table = shared.table();
        let claimed = vanished.into_iter().next();
        if let Some((from, _)) = &claimed {
            table.orphans.remove(from);
        }
        claimed
    };
    if let Some((from, id)) = claimed {
        return Prepared::Repoint {
            from,
            id,
            fingerprint,
        };
    }
    tracing::info!(dataset = %uri, images = dataset.len(), classes = dataset.classes().len(),
        "embedding");
    let (embedding, stats) =
        match shared
            .embedder
            .embed(&dataset, &uri, shared.metrics.images.inner())
        {
            Ok(r) => r,
            Err(e) => {
                return Prepared::Done(Outcome::Failed {
                    error: e.to_string(),
                    fingerprint: Some(fingerprint),
                })
            }
        };
    // Files changed while they were read: drop the result, settle again.
    match discover::stamp(path, marker) {
        Err(e) if is_missing(&e) => return Prepared::Done(Outcome::Vanished),
        Ok(s) if s.same_content(ready) => {}
        _ => return Prepared::Done(Outcome::Changed),
    }
    // The first dataset of a store also gives it its trivial embedding (same images, random
    // labels): the complexity term of d_asym and the index relative to t0 need one.
    let trivial = if needs_trivial(shared, &embedding) {
        tracing::info!(dataset = %uri, "computing the store's trivial embedding");
        match shared.embedder.embed_trivial(&dataset, &uri) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::warn!(dataset = %uri, error = %e,
                    "cannot compute the trivial embedding; the next dataset will try again");
                None
            }
        }
    } else {
        None
    };
    Prepared::Embedded {
        embedding: Arc::new(embedding),
        trivial,
        fingerprint,
        stats,
    }
}

/// Whether the store (or the one this embedding will create) has no trivial embedding and
/// needs one: every estimator but the variational one, whose prior is its own t0.
fn needs_trivial(shared: &Shared, embedding: &Embedding) -> bool {
    if embedding.estimator() == Estimator::Variational {
        return false;
    }
    match shared.store.open_existing() {
        Ok(Some(store)) => store.trivial_mark().is_none(),
        Ok(None) => true,
        // Unreachable now: the write will say so; no extra embedding for it.
        Err(_) => false,
    }
}

/// The tags of every point the daemon writes.
fn daemon_tags(shared: &Shared, path: &Path) -> Tags {
    let mut tags = Tags::new();
    tags.insert(TAG_INDEXED_BY.into(), "t2v-daemon".into());
    if let Some(root) = shared.root_of(path) {
        tags.insert(TAG_ROOT.into(), root.to_string_lossy().into_owned());
    }
    tags
}

/// Writes a job's result (blocking). `Ok(None)`: the point to move is gone.
fn write_to_store(shared: &Shared, path: &Path, write: &Write) -> Result<Option<Uuid>, StoreError> {
    let uri = uri_of(path);
    let (store, id) = match write {
        Write::Upsert {
            embedding, trivial, ..
        } => {
            let store = shared.store.for_write(&VectorSpace::of(embedding))?;
            let id = store.upsert_task(embedding, &daemon_tags(shared, path))?;
            if let Some(t) = trivial {
                if store.trivial_mark().is_none() {
                    // The task is stored whatever happens here; the next dataset retries.
                    match store.set_trivial(t) {
                        Ok(()) => tracing::info!(from = %uri, "trivial embedding set"),
                        Err(e) => tracing::warn!(from = %uri, error = %e,
                            "cannot set the trivial embedding"),
                    }
                }
            }
            (store, id)
        }
        Write::Repoint { from, id: old } => {
            let Some(store) = shared.store.open_existing()? else {
                return Ok(None);
            };
            let Some(task) = store.get_task(*old)? else {
                return Ok(None);
            };
            let mut embedding = task.embedding;
            embedding.meta.dataset.path = uri.clone();
            let mut tags = task.tags;
            tags.extend(daemon_tags(shared, path));
            let id = store.upsert_task(&embedding, &tags)?;
            if id != *old {
                store.delete_task(*old)?;
            }
            tracing::debug!(from, to = %uri, "repointed");
            (store, id)
        }
    };
    remove_others(&store, shared, &uri, id)?;
    Ok(Some(id))
}

/// Deletes every other point stored for `uri` (one point per dataset).
fn remove_others(store: &Store, shared: &Shared, uri: &str, keep: Uuid) -> Result<(), StoreError> {
    let others: Vec<Uuid> = shared
        .table()
        .stored
        .get(uri)
        .map(|refs| refs.iter().map(|r| r.id).filter(|&id| id != keep).collect())
        .unwrap_or_default();
    for id in others {
        store.delete_task(id)?;
    }
    Ok(())
}
