//! The store: task and expert vectors in the embedded Qdrant engine, under one data folder.
//!
//! Layout of the data folder:
//!
//! - `store.json`: the manifest (format version, [`VectorSpace`], [`IndexTransform`]), written
//!   once at creation;
//! - `store.lock`: held (advisory lock) while a [`Store`] is open, so two processes never
//!   write the same engine files;
//! - `tasks/`, `experts/`: one Qdrant Edge shard each (WAL + segments);
//! - `trivial.safetensors`: the trivial embedding t0 of the asymmetric distance, once set
//!   ([`Store::set_trivial`]; not needed for variational embeddings, whose own prior is t0).
//!
//! Every point carries the index vector `task2vec` (cosine, see [`IndexTransform`]; experts
//! also `model2vec`), the raw Fisher vector `hessian` for the exact re-rank, the raw `scale`
//! when it is not all ones, and a JSON payload (see [`crate::record`]).

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use qdrant_edge::{PointId, PointStruct, Record, VectorInternal, VectorStructInternal, Vectors};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use task2vec::distance::d_sym;
use task2vec::embedding::{Embedding, EmbeddingMeta};
use task2vec::fisher::Estimator;
use uuid::Uuid;

use crate::collection::{Collection, VectorSpec};
use crate::record::{
    Expert, ExpertPayload, StoredExpert, StoredTask, Tags, TaskPayload, TaskSummary, PAYLOAD_SCHEMA,
};
use crate::{expert_point_id, task_point_id, Error, IndexTransform, Result, VectorSpace};

/// Name of the tasks collection.
pub const TASKS: &str = "tasks";
/// Name of the experts collection.
pub const EXPERTS: &str = "experts";
/// Index vector of every point (cosine).
pub const TASK2VEC: &str = "task2vec";
/// Index vector of experts (cosine): the training task's embedding until Model2Vec biases are
/// learned.
pub const MODEL2VEC: &str = "model2vec";
/// Raw Fisher vector, for the exact re-rank.
pub const HESSIAN: &str = "hessian";
/// Raw scale vector, present only when not all ones.
pub const SCALE: &str = "scale";

const MANIFEST_FILE: &str = "store.json";
const LOCK_FILE: &str = "store.lock";
const TRIVIAL_FILE: &str = "trivial.safetensors";
/// Points re-read at once when complexities are recomputed.
const RECOMPUTE_BATCH: usize = 64;
const MANIFEST_FORMAT: &str = "task2vec-qdrant-store";
/// Version of the manifest and folder layout; readers refuse others.
pub const STORE_VERSION: u32 = 1;

/// The store's manifest (`store.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    space: VectorSpace,
    transform: IndexTransform,
    created: String,
}

/// Task and expert vectors in the embedded Qdrant engine.
///
/// Writes go to the engine's write-ahead log at once; [`Store::flush`] (also run by
/// [`Store::close`] and on drop) writes the segments too. Reopening a folder finds everything
/// that was written.
pub struct Store {
    dir: PathBuf,
    manifest: Manifest,
    tasks: Collection,
    experts: Collection,
    /// The hessian of the trivial embedding t0, once known.
    trivial: RwLock<Option<Vec<f32>>>,
    // Dropped last (fields drop in order): the engine files are flushed before the lock goes.
    _lock: File,
}

impl Store {
    /// Opens the store in `dir` for vectors of `space`, creating it (with the default
    /// [`IndexTransform`]) when the folder holds none.
    ///
    /// Errors: [`Error::Mismatch`] when the folder holds a store of another space;
    /// [`Error::Store`] when it is locked by another open store or its manifest is unreadable;
    /// [`Error::Io`] / [`Error::Engine`] when files cannot be created or opened.
    pub fn open(dir: &Path, space: &VectorSpace) -> Result<Store> {
        Store::open_with(dir, space, IndexTransform::default())
    }

    /// [`Store::open`] with the transform used if the store is created (an existing store keeps
    /// its own and is not refused for another).
    pub fn open_with(dir: &Path, space: &VectorSpace, transform: IndexTransform) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = lock(dir)?;
        let manifest = match read_manifest(dir)? {
            Some(m) => {
                let diffs = m.space.differences(space);
                if !diffs.is_empty() {
                    return Err(Error::Mismatch(format!(
                        "store {} holds vectors of another space: different {} (store vs \
                         requested)",
                        dir.display(),
                        diffs.join(", ")
                    )));
                }
                m
            }
            None => {
                if space.dimension == 0 {
                    return Err(Error::Mismatch(
                        "cannot create a store for vectors of dimension 0".into(),
                    ));
                }
                let m = Manifest {
                    format: MANIFEST_FORMAT.into(),
                    version: STORE_VERSION,
                    space: space.clone(),
                    transform,
                    created: now(),
                };
                write_manifest(dir, &m)?;
                m
            }
        };
        Store::open_collections(dir, manifest, lock)
    }

    /// Opens an existing store, whatever its space.
    ///
    /// Errors: [`Error::Store`] when `dir` holds no store (or a locked or unreadable one).
    pub fn open_existing(dir: &Path) -> Result<Store> {
        if !dir.join(MANIFEST_FILE).is_file() {
            return Err(Error::store(
                dir,
                format!("no {MANIFEST_FILE}: not a store"),
            ));
        }
        let lock = lock(dir)?;
        let manifest = read_manifest(dir)?
            .ok_or_else(|| Error::store(dir, format!("no {MANIFEST_FILE}: not a store")))?;
        Store::open_collections(dir, manifest, lock)
    }

    fn open_collections(dir: &Path, manifest: Manifest, lock: File) -> Result<Store> {
        let n = manifest.space.dimension;
        let raw = |name| VectorSpec {
            name,
            size: n,
            indexed: false,
        };
        let index = |name| VectorSpec {
            name,
            size: n,
            indexed: true,
        };
        let tasks = Collection::open_or_create(
            &dir.join(TASKS),
            TASKS,
            &[index(TASK2VEC), raw(HESSIAN), raw(SCALE)],
        )?;
        let experts = Collection::open_or_create(
            &dir.join(EXPERTS),
            EXPERTS,
            &[index(TASK2VEC), index(MODEL2VEC), raw(HESSIAN), raw(SCALE)],
        )?;
        let trivial_path = dir.join(TRIVIAL_FILE);
        let trivial = if trivial_path.is_file() {
            let t = Embedding::load(&trivial_path)?;
            manifest.space.check(&t)?;
            Some(t.hessian)
        } else {
            None
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            manifest,
            tasks,
            experts,
            trivial: RwLock::new(trivial),
            _lock: lock,
        })
    }

    /// The store's data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The space every stored vector belongs to.
    pub fn space(&self) -> &VectorSpace {
        &self.manifest.space
    }

    /// The transform from a Fisher vector to the index vector.
    pub fn transform(&self) -> IndexTransform {
        self.manifest.transform
    }

    /// Stores a task's embedding (replacing the one of the same dataset, probe and estimator)
    /// and returns its point id.
    ///
    /// Errors: [`Error::Mismatch`] for an embedding of another space ([`VectorSpace::check`]),
    /// a random-label embedding (a trivial embedding, not a task) or an invalid vector.
    pub fn upsert_task(&self, embedding: &Embedding, tags: &Tags) -> Result<Uuid> {
        self.check_task_embedding(embedding)?;
        let meta = &embedding.meta;
        let id = task_point_id(
            &meta.dataset.fingerprint,
            &meta.probe.weights_sha256,
            embedding.estimator(),
        );
        let has_scale = has_scale(embedding);
        let payload = TaskPayload {
            schema: PAYLOAD_SCHEMA,
            dataset_uri: meta.dataset.path.clone(),
            fingerprint: meta.dataset.fingerprint.clone(),
            classes: meta.dataset.classes.clone(),
            n_classes: meta.dataset.classes.len(),
            samples: meta.samples.features,
            probe: meta.probe.arch.clone(),
            weights_sha256: meta.probe.weights_sha256.clone(),
            estimator: self.space().estimator_name().into(),
            norm: meta.norm,
            created: meta.created.clone(),
            stored_at: now(),
            tags: tags.clone(),
            has_scale,
            complexity: self.complexity(&embedding.hessian, &embedding.scale)?,
            meta: without_layout(meta),
        };
        let index = self.manifest.transform.apply(&embedding.hessian)?;
        let mut vectors = vec![(TASK2VEC, index), (HESSIAN, embedding.hessian.clone())];
        if has_scale {
            vectors.push((SCALE, embedding.scale.clone()));
        }
        self.tasks
            .upsert(vec![point(id, vectors, to_json(&payload)?)])?;
        Ok(id)
    }

    /// The stored task with this id, or `None`.
    ///
    /// Errors: [`Error::Corrupt`] when the point does not read back as this crate wrote it.
    pub fn get_task(&self, id: Uuid) -> Result<Option<StoredTask>> {
        let Some(record) = self.tasks.retrieve(&[id], true)?.into_iter().next() else {
            return Ok(None);
        };
        let payload: TaskPayload = self.payload(&self.tasks, &record)?;
        let embedding = self.embedding(&self.tasks, &record, &payload.meta, payload.has_scale)?;
        Ok(Some(StoredTask {
            id,
            embedding,
            tags: payload.tags,
            stored_at: payload.stored_at,
        }))
    }

    /// Deletes a task; returns whether it existed.
    pub fn delete_task(&self, id: Uuid) -> Result<bool> {
        delete(&self.tasks, id)
    }

    /// Every stored task, in point-id order.
    pub fn list_tasks(&self) -> Result<Vec<TaskSummary>> {
        self.tasks
            .scroll_all()?
            .iter()
            .map(|r| {
                let p: TaskPayload = self.payload(&self.tasks, r)?;
                Ok(TaskSummary::from((point_uuid(&self.tasks, r)?, &p)))
            })
            .collect()
    }

    /// Number of stored tasks.
    pub fn count_tasks(&self) -> Result<usize> {
        self.tasks.count()
    }

    /// Stores an expert with the embedding of the task it was trained on (replacing the expert
    /// of the same key) and returns its point id.
    ///
    /// Errors: [`Error::Mismatch`] for an empty key or an embedding the store refuses (as
    /// [`Store::upsert_task`]).
    pub fn upsert_expert(&self, expert: &Expert, trained_on: &Embedding) -> Result<Uuid> {
        if expert.key.trim().is_empty() {
            return Err(Error::Mismatch("an expert needs a non-empty key".into()));
        }
        self.check_task_embedding(trained_on)?;
        let meta = &trained_on.meta;
        let estimator = trained_on.estimator();
        let id = expert_point_id(&expert.key, &meta.probe.weights_sha256, estimator);
        let has_scale = has_scale(trained_on);
        let payload = ExpertPayload {
            schema: PAYLOAD_SCHEMA,
            key: expert.key.clone(),
            name: expert.name.clone(),
            weights_uri: expert.weights_uri.clone(),
            tags: expert.tags.clone(),
            metrics: expert.metrics.clone(),
            trained_on_task: task_point_id(
                &meta.dataset.fingerprint,
                &meta.probe.weights_sha256,
                estimator,
            ),
            trained_on_uri: meta.dataset.path.clone(),
            trained_on_fingerprint: meta.dataset.fingerprint.clone(),
            probe: meta.probe.arch.clone(),
            weights_sha256: meta.probe.weights_sha256.clone(),
            estimator: self.space().estimator_name().into(),
            norm: meta.norm,
            stored_at: now(),
            has_scale,
            complexity: self.complexity(&trained_on.hessian, &trained_on.scale)?,
            meta: without_layout(meta),
        };
        let index = self.manifest.transform.apply(&trained_on.hessian)?;
        let mut vectors = vec![
            (TASK2VEC, index.clone()),
            (MODEL2VEC, index),
            (HESSIAN, trained_on.hessian.clone()),
        ];
        if has_scale {
            vectors.push((SCALE, trained_on.scale.clone()));
        }
        self.experts
            .upsert(vec![point(id, vectors, to_json(&payload)?)])?;
        Ok(id)
    }

    /// The stored expert with this id, or `None`.
    pub fn get_expert(&self, id: Uuid) -> Result<Option<StoredExpert>> {
        let Some(record) = self.experts.retrieve(&[id], true)?.into_iter().next() else {
            return Ok(None);
        };
        let p: ExpertPayload = self.payload(&self.experts, &record)?;
        let trained_on = self.embedding(&self.experts, &record, &p.meta, p.has_scale)?;
        Ok(Some(StoredExpert {
            id,
            expert: Expert {
                key: p.key,
                name: p.name,
                weights_uri: p.weights_uri,
                tags: p.tags,
                metrics: p.metrics,
            },
            trained_on,
            trained_on_task: p.trained_on_task,
            stored_at: p.stored_at,
        }))
    }

    /// The point id an expert key has in this store.
    pub fn expert_id(&self, key: &str) -> Uuid {
        expert_point_id(key, &self.space().weights_sha256, self.space().estimator)
    }

    /// Deletes an expert; returns whether it existed.
    pub fn delete_expert(&self, id: Uuid) -> Result<bool> {
        delete(&self.experts, id)
    }

    /// Every stored expert as `(id, expert)`, in point-id order.
    pub fn list_experts(&self) -> Result<Vec<(Uuid, Expert)>> {
        self.experts
            .scroll_all()?
            .iter()
            .map(|r| {
                let p: ExpertPayload = self.payload(&self.experts, r)?;
                Ok((
                    point_uuid(&self.experts, r)?,
                    Expert {
                        key: p.key,
                        name: p.name,
                        weights_uri: p.weights_uri,
                        tags: p.tags,
                        metrics: p.metrics,
                    },
                ))
            })
            .collect()
    }

    /// Number of stored experts.
    pub fn count_experts(&self) -> Result<usize> {
        self.experts.count()
    }

    /// Sets the trivial embedding t0 of the asymmetric distance (for the Monte-Carlo and
    /// per-example estimators, the embedding of a task's images with random labels; see the
    /// core library's `docs/trivial-embedding.md`), saves it in the store and recomputes the
    /// `complexity` payload (`d_sym(point, t0)`) of every stored task and expert.
    ///
    /// Errors: [`Error::Mismatch`] for an embedding of another space, or in a variational
    /// store, where every embedding's own prior is its trivial embedding.
    pub fn set_trivial(&self, trivial: &Embedding) -> Result<()> {
        self.space().check(trivial)?;
        if self.space().estimator == Estimator::Variational {
            return Err(Error::Mismatch(
                "a variational store needs no trivial embedding: each embedding's prior \
                 (hessian = scale) is its own"
                    .into(),
            ));
        }
        let path = self.dir.join(TRIVIAL_FILE);
        let mut stored = trivial.clone();
        stored.meta.layout = self.space().layout.clone();
        stored.save(&path)?;
        *self.trivial.write().unwrap_or_else(PoisonError::into_inner) =
            Some(trivial.hessian.clone());
        self.recompute_complexity(&self.tasks)?;
        self.recompute_complexity(&self.experts)
    }

    /// The hessian of the trivial embedding, when the store has one.
    pub fn trivial(&self) -> Option<Vec<f32>> {
        self.trivial
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `d_sym(hessian, t0)`: with the store's trivial embedding, or for variational
    /// embeddings with their own prior (`scale`); `None` when neither is known.
    pub(crate) fn complexity(&self, hessian: &[f32], scale: &[f32]) -> Result<Option<f64>> {
        if self.space().estimator == Estimator::Variational {
            return Ok(Some(d_sym(hessian, scale)?));
        }
        let trivial = self.trivial.read().unwrap_or_else(PoisonError::into_inner);
        Ok(match trivial.as_ref() {
            Some(t) => Some(d_sym(hessian, t)?),
            None => None,
        })
    }

    fn recompute_complexity(&self, c: &Collection) -> Result<()> {
        let ids = c
            .scroll_all()?
            .iter()
            .map(|r| point_uuid(c, r))
            .collect::<Result<Vec<_>>>()?;
        for chunk in ids.chunks(RECOMPUTE_BATCH) {
            for r in c.retrieve(chunk, true)? {
                let hessian = self.dense(c, &r, HESSIAN)?;
                let scale = match self.dense(c, &r, SCALE) {
                    Ok(s) => s,
                    Err(_) => vec![1.0; hessian.len()],
                };
                let complexity = self.complexity(&hessian, &scale)?;
                let mut payload = serde_json::Map::new();
                payload.insert("complexity".into(), serde_json::json!(complexity));
                c.set_payload(point_uuid(c, &r)?, payload)?;
            }
        }
        Ok(())
    }

    /// Builds the HNSW indexes of both collections (blocking; Qdrant Edge never does it by
    /// itself, and until then every search scans all vectors).
    pub fn optimize(&self) -> Result<()> {
        self.tasks.optimize()?;
        self.experts.optimize()?;
        Ok(())
    }

    /// Writes both collections' logs and segments to disk.
    pub fn flush(&self) {
        self.tasks.flush();
        self.experts.flush();
    }

    /// Flushes and closes the store, releasing its lock.
    pub fn close(self) {
        self.flush();
    }

    /// The experts collection.
    pub(crate) fn experts(&self) -> &Collection {
        &self.experts
    }

    pub(crate) fn check_task_embedding(&self, embedding: &Embedding) -> Result<()> {
        self.space().check(embedding)?;
        if embedding.meta.settings.random_labels {
            return Err(Error::Mismatch(format!(
                "the embedding of `{}` was made with random labels: it is a trivial embedding, \
                 not a task",
                embedding.meta.dataset.path
            )));
        }
        Ok(())
    }

    pub(crate) fn payload<T: for<'de> Deserialize<'de>>(
        &self,
        c: &Collection,
        r: &Record,
    ) -> Result<T> {
        let map = r
            .payload
            .as_ref()
            .map(|p| p.0.clone())
            .ok_or_else(|| corrupt(c, r, "no payload".into()))?;
        serde_json::from_value(Value::Object(map))
            .map_err(|e| corrupt(c, r, format!("payload does not parse: {e}")))
    }

    /// Rebuilds the embedding of a record read with its vectors.
    fn embedding(
        &self,
        c: &Collection,
        r: &Record,
        meta: &EmbeddingMeta,
        has_scale: bool,
    ) -> Result<Embedding> {
        let hessian = self.dense(c, r, HESSIAN)?;
        let scale = if has_scale {
            self.dense(c, r, SCALE)?
        } else {
            vec![1.0; hessian.len()]
        };
        let mut meta = meta.clone();
        meta.layout = self.space().layout.clone();
        Ok(Embedding {
            hessian,
            scale,
            meta,
        })
    }
}

impl Store {
    /// The dense vector `name` of a record read with its vectors.
    pub(crate) fn dense(&self, c: &Collection, r: &Record, name: &str) -> Result<Vec<f32>> {
        let vectors = match &r.vector {
            Some(VectorStructInternal::Named(map)) => map,
            _ => return Err(corrupt(c, r, "no named vectors".into())),
        };
        match vectors.get(name) {
            Some(VectorInternal::Dense(v)) if v.len() == self.space().dimension => Ok(v.clone()),
            Some(_) => Err(corrupt(
                c,
                r,
                format!("vector `{name}` is not dense of the store's dimension"),
            )),
            None => Err(corrupt(c, r, format!("no vector `{name}`"))),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The engine's shards flush on drop too; flushing here first keeps the order explicit.
        self.flush();
    }
}

fn delete(c: &Collection, id: Uuid) -> Result<bool> {
    let existed = !c.retrieve(&[id], false)?.is_empty();
    if existed {
        c.delete(&[id])?;
    }
    Ok(existed)
}

/// Whether the scale differs from all ones (variational embeddings), so must be stored.
fn has_scale(e: &Embedding) -> bool {
    e.scale.iter().any(|&s| s != 1.0)
}

fn without_layout(meta: &EmbeddingMeta) -> EmbeddingMeta {
    EmbeddingMeta {
        layout: Vec::new(),
        ..meta.clone()
    }
}

fn point(id: Uuid, vectors: Vec<(&str, Vec<f32>)>, payload: Value) -> PointStruct {
    let named: HashMap<String, Vec<f32>> = vectors
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    PointStruct::new(PointId::Uuid(id), Vectors::from(named), payload)
}

fn to_json<T: Serialize>(payload: &T) -> Result<Value> {
    match serde_json::to_value(payload) {
        // PointStruct::new panics on anything but an object; payload structs are objects.
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err(Error::Mismatch(format!(
            "payload serialised to a non-object: {other}"
        ))),
        Err(e) => Err(Error::Mismatch(format!("payload does not serialise: {e}"))),
    }
}

pub(crate) fn point_uuid(c: &Collection, r: &Record) -> Result<Uuid> {
    match r.id {
        PointId::Uuid(u) => Ok(u),
        PointId::NumId(_) => Err(corrupt(
            c,
            r,
            "numeric id: not written by this crate".into(),
        )),
    }
}

fn corrupt(c: &Collection, r: &Record, what: String) -> Error {
    Error::Corrupt {
        collection: c.name().to_string(),
        id: format!("{:?}", r.id),
        what,
    }
}

/// Takes the store's advisory lock, refusing a store already open elsewhere.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::store(
            dir,
            "in use: another open store (this or another process) holds store.lock",
        )),
        Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::store(&path, format!("manifest does not parse: {e}")))?;
    if m.format != MANIFEST_FORMAT || m.version != STORE_VERSION {
        return Err(Error::store(
            &path,
            format!(
                "manifest is `{}` version {}, this library reads `{MANIFEST_FORMAT}` version \
                 {STORE_VERSION}",
                m.format, m.version
            ),
        ));
    }
    Ok(Some(m))
}

/// Writes the manifest atomically (temporary file, sync, rename).
fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let text = serde_json::to_string_pretty(m)
        .map_err(|e| Error::store(&path, format!("manifest does not serialise: {e}")))?;
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// Now, RFC 3339 UTC to the second.
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
