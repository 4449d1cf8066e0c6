//! The store: task and expert vectors in Qdrant, embedded (Qdrant Edge, one data folder) or on
//! a server (`qdrant-client`), behind one synchronous API.
//!
//! Layout of an embedded store's data folder:
//!
//! - `store.json`: the manifest (format version, [`VectorSpace`], [`IndexTransform`]), written
//!   once at creation;
//! - `store.lock`: held (advisory lock) while a [`Store`] is open, so two processes never
//!   write the same engine files;
//! - `tasks/`, `experts/`: one Qdrant Edge shard each (WAL + segments): index vectors and
//!   payload, what searches read;
//! - `tasks_raw/`, `experts_raw/`: the raw vectors of the same points, read by id only
//!   ([`RawVectors::Companion`]; stores made before version 2 keep them in `tasks/` and
//!   `experts/`, [`RawVectors::Inline`]);
//! - `trivial.safetensors`: the trivial embedding t0 of the asymmetric distance, once set
//!   ([`Store::set_trivial`]; not needed for variational embeddings, whose own prior is t0).
//!
//! On a server the same data is in the collections `{prefix}tasks`, `{prefix}experts`,
//! `{prefix}tasks_raw`, `{prefix}experts_raw` and `{prefix}meta` (manifest and trivial
//! embedding); see [`crate::config::RemoteConfig`].
//!
//! Every point carries the index vector `task2vec` (cosine, see [`IndexTransform`]; experts
//! also `model2vec`) and a JSON payload (see [`crate::record`] and docs/schema.md); its raw
//! Fisher vector `hessian` for the exact re-rank, and the raw `scale` when it is not all ones,
//! are in the point of the same id in the companion collection. Keeping 168 kB of raw vector
//! per point out of the searched collection keeps that collection in one segment up to about
//! 100,000 points (each segment is searched in turn) and makes re-deriving index vectors a
//! small write. Writes go to the companion first and deletes to it last, so a searched point
//! always has its raw vectors; a failure between the two leaves at most an unreferenced raw
//! point, replaced by the next write of that id.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use task2vec::distance::{d_sym, d_sym_fast};
use task2vec::embedding::{Embedding, EmbeddingMeta};
use task2vec::fisher::Estimator;
use uuid::Uuid;

use crate::backend::{
    scroll_all, Collection, Condition, FieldKind, Filter, IndexedField, Location, Nearest, Payload,
    Point, Scored, VectorKind, VectorSpec, WithVectors, COMPLEXITY, INDEX_NORM,
};
use crate::phase_timings::PhaseClock;
use crate::record::{
    tag_pairs, Expert, ExpertPayload, StoredExpert, StoredTask, Tags, TaskPayload, TaskSummary,
    PAYLOAD_SCHEMA,
};
use crate::{
    expert_point_id, task_point_id, Error, IndexCentre, IndexTransform, Result, StoreConfig,
    VectorSpace,
};

/// Name of the tasks collection (on a server: `{prefix}tasks`).
pub const TASKS: &str = "tasks";
/// Name of the experts collection (on a server: `{prefix}experts`).
pub const EXPERTS: &str = "experts";
/// Name of the tasks' raw-vector collection (on a server: `{prefix}tasks_raw`).
pub const TASKS_RAW: &str = "tasks_raw";
/// Name of the experts' raw-vector collection (on a server: `{prefix}experts_raw`).
pub const EXPERTS_RAW: &str = "experts_raw";
/// Index vector of every point (cosine).
pub const TASK2VEC: &str = "task2vec";
/// Index vector of experts (cosine): the training task's embedding until Model2Vec biases are
/// learned.
pub const MODEL2VEC: &str = "model2vec";
/// Raw Fisher vector, for the exact re-rank.
pub const HESSIAN: &str = "hessian";
/// Raw scale vector, present only when not all ones.
pub const SCALE: &str = "scale";
/// The raw vectors, which live in the companion collections.
pub(crate) const RAW_NAMES: [&str; 2] = [HESSIAN, SCALE];

/// Payload indexes of the tasks collection.
const TASK_INDEXES: &[IndexedField] = &[
    IndexedField {
        key: "dataset_uri",
        kind: FieldKind::Keyword,
    },
    IndexedField {
        key: "samples",
        kind: FieldKind::Integer,
    },
    IndexedField {
        key: "n_classes",
        kind: FieldKind::Integer,
    },
    IndexedField {
        key: "tag_pairs",
        kind: FieldKind::Keyword,
    },
    IndexedField {
        key: T0,
        kind: FieldKind::Keyword,
    },
];
/// Payload indexes of the experts collection.
const EXPERT_INDEXES: &[IndexedField] = &[
    IndexedField {
        key: "key",
        kind: FieldKind::Keyword,
    },
    IndexedField {
        key: "tag_pairs",
        kind: FieldKind::Keyword,
    },
    IndexedField {
        key: T0,
        kind: FieldKind::Keyword,
    },
];
/// Payload key: the mark of the trivial embedding a point's derived values were computed with.
const T0: &str = "t0";

/// The trivial embedding t0 as the store uses it.
struct Trivial {
    hessian: Vec<f32>,
    /// What the index vectors are taken relative to (transforms that use one).
    centre: Option<IndexCentre>,
    /// [`Store::trivial_mark`].
    mark: String,
}

impl Trivial {
    fn new(hessian: Vec<f32>, transform: &IndexTransform) -> Trivial {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        for v in &hessian {
            digest.update(v.to_le_bytes());
        }
        let mark = digest.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Trivial {
            centre: transform.centre(&hessian),
            hessian,
            mark,
        }
    }
}

/// What a point's stored values derived from its Fisher vector and the trivial embedding are.
pub(crate) struct Derived {
    pub index: Vec<f32>,
    pub index_norm: f64,
    pub complexity: Option<f64>,
    /// [`Store::derivation_mark`].
    pub t0: String,
}

impl Derived {
    /// Sets the derived payload keys (`complexity`, `index_norm`, `t0`).
    pub(crate) fn write_payload(&self, payload: &mut Payload) {
        payload.insert(COMPLEXITY.into(), serde_json::json!(self.complexity));
        payload.insert(INDEX_NORM.into(), serde_json::json!(self.index_norm));
        payload.insert(T0.into(), serde_json::json!(self.t0));
    }
}

fn mark_of(trivial: Option<&Trivial>) -> String {
    trivial.map_or_else(|| "none".to_string(), |t| t.mark.clone())
}

/// What [`Store::rederive`] did.
#[derive(Debug, Default)]
pub struct Rederived {
    /// Points re-derived and rewritten.
    pub points: usize,
    /// Points left as they were, each with what is wrong ([`Error::Corrupt`]).
    pub skipped: Vec<Error>,
}

/// The store's two collections.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Tasks = 0,
    Experts = 1,
}

/// Points written to a collection after which the write that reaches the count optimises it
/// ([`Store::optimize`]): ≈ 0.9 GB of vectors with the default probe.
pub const AUTO_OPTIMIZE_WRITES: usize = 5_000;
/// Points re-read and rewritten at once when derived values are recomputed ([`Store::rederive`]).
const RECOMPUTE_BATCH: usize = 64;
/// Threads that read a shortlist's raw vectors by default ([`Store::set_shortlist_readers`]).
pub const SHORTLIST_READERS: usize = 16;
const MANIFEST_FORMAT: &str = "task2vec-qdrant-store";
/// Version of the manifest and layout this library writes. It reads it and version 1 (raw
/// vectors inline, no `raw_vectors` key), and refuses others.
pub const STORE_VERSION: u32 = 2;

/// Where a store keeps the raw vectors (`hessian`, `scale`) of its points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawVectors {
    /// In the companion collections `tasks_raw` and `experts_raw`, under the same point ids,
    /// without payload; the searched collections hold index vectors and payload only. The
    /// default since store version 2.
    Companion,
    /// In the same points as the index vectors (every store of version 1). Still read and
    /// written; a dump and an import move such a store to the companion layout.
    Inline,
}

impl RawVectors {
    /// What a manifest without the key (version 1) means.
    fn version_1() -> RawVectors {
        RawVectors::Inline
    }
}

/// How the engine keeps the searched index vectors (`task2vec` of tasks, `model2vec` of
/// experts) for its cosine search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexPrecision {
    /// The f32 vectors, in RAM: what layered-sketch stores made before int8 became the
    /// default keep.
    F32,
    /// An int8 scalar-quantized copy in RAM (a quarter of the f32 size), the f32 originals on
    /// disk, read to re-score the search's candidates. The default for new stores, and what
    /// every store with a full-length index transform has always kept.
    Int8,
}

impl IndexPrecision {
    /// What a manifest without the key (stores made before the key existed) means.
    fn before_the_key(transform: &IndexTransform) -> IndexPrecision {
        if transform.is_full_length() {
            IndexPrecision::Int8
        } else {
            IndexPrecision::F32
        }
    }
}

/// How a new store is laid out (an existing store keeps its own, from its manifest).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    /// The transform from a Fisher vector to the index vector.
    pub transform: IndexTransform,
    /// Where the raw vectors go.
    pub raw_vectors: RawVectors,
    /// How the searched index vectors are kept.
    pub index_precision: IndexPrecision,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            transform: IndexTransform::default(),
            raw_vectors: RawVectors::Companion,
            index_precision: IndexPrecision::Int8,
        }
    }
}

impl From<IndexTransform> for Layout {
    fn from(transform: IndexTransform) -> Layout {
        Layout {
            transform,
            ..Layout::default()
        }
    }
}

/// The store's manifest (`store.json`, or the manifest point of `{prefix}meta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: String,
    pub version: u32,
    pub space: VectorSpace,
    pub transform: IndexTransform,
    #[serde(default = "RawVectors::version_1")]
    pub raw_vectors: RawVectors,
    /// `None` in manifests written before the key existed: see [`Manifest::index_precision`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_precision: Option<IndexPrecision>,
    pub created: String,
}

impl Manifest {
    fn new(space: &VectorSpace, layout: Layout) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: STORE_VERSION,
            space: space.clone(),
            transform: layout.transform,
            raw_vectors: layout.raw_vectors,
            index_precision: Some(layout.index_precision),
            created: now(),
        }
    }

    /// How the store keeps its searched index vectors.
    pub fn index_precision(&self) -> IndexPrecision {
        self.index_precision
            .unwrap_or_else(|| IndexPrecision::before_the_key(&self.transform))
    }
}

/// Refuses a manifest of another format or version, saying which.
pub(crate) fn check_manifest_version(m: &Manifest) -> std::result::Result<(), String> {
    let readable = match m.version {
        1 => m.raw_vectors == RawVectors::Inline,
        STORE_VERSION => true,
        _ => false,
    };
    if m.format != MANIFEST_FORMAT || !readable {
        return Err(format!(
            "manifest is `{}` version {}, this library reads `{MANIFEST_FORMAT}` versions 1 \
             to {STORE_VERSION}",
            m.format, m.version
        ));
    }
    Ok(())
}

/// Task and expert vectors in Qdrant, embedded or on a server.
///
/// Embedded, writes go to the engine's write-ahead log at once; [`Store::flush`] (also run by
/// [`Store::close`] and on drop) writes the segments too. On a server every write returns once
/// the server has applied it. Reopening finds everything that was written.
///
/// The API is synchronous. With a remote store each call blocks on the store's own tokio
/// runtime, so call it from plain threads or inside `tokio::task::spawn_blocking`, never from
/// an async task.
pub struct Store {
    manifest: Manifest,
    tasks: Box<dyn Collection>,
    experts: Box<dyn Collection>,
    /// The companion collections of the raw vectors, indexed by [`Kind`] (`None`:
    /// [`RawVectors::Inline`]).
    raw: [Option<Box<dyn Collection>>; 2],
    /// The trivial embedding t0, once known.
    trivial: RwLock<Option<Arc<Trivial>>>,
    /// Points written to tasks / experts since each was last optimised
    /// ([`AUTO_OPTIMIZE_WRITES`]), indexed by [`Kind`].
    unindexed: [AtomicUsize; 2],
    /// Optimise a collection after this many written points (0: never by itself).
    auto_optimize: AtomicUsize,
    /// Threads reading a shortlist's raw vectors ([`Store::set_shortlist_readers`]; 0: the
    /// caller's pool), and their pool once started by the first shortlist.
    readers: RwLock<(usize, Option<Arc<rayon::ThreadPool>>)>,
    // Dropped last (fields drop in order): the engine files are flushed and closed before the
    // folder's lock goes.
    location: Location,
}

impl Store {
    /// Opens the embedded store in `dir` for vectors of `space`, creating it (with the default
    /// [`IndexTransform`]) when the folder holds none.
    ///
    /// Errors: [`Error::Mismatch`] when the folder holds a store of another space;
    /// [`Error::Locked`] when another open store holds it; [`Error::Store`] when its manifest
    /// is unreadable; [`Error::Io`] / [`Error::Engine`] when files cannot be created or opened.
    pub fn open(dir: &Path, space: &VectorSpace) -> Result<Store> {
        Store::open_with(dir, space, Layout::default())
    }

    /// [`Store::open`] with the layout used if the store is created (an existing store keeps
    /// its own and is not refused for another).
    pub fn open_with(dir: &Path, space: &VectorSpace, layout: impl Into<Layout>) -> Result<Store> {
        Store::open_config_with(
            &StoreConfig::Embedded {
                path: dir.to_path_buf(),
            },
            space,
            layout,
        )
    }

    /// Opens an existing embedded store, whatever its space.
    ///
    /// Errors: [`Error::Store`] when `dir` holds no store; [`Error::Locked`] when another open
    /// store holds it.
    pub fn open_existing(dir: &Path) -> Result<Store> {
        Store::open_existing_config(&StoreConfig::Embedded {
            path: dir.to_path_buf(),
        })
    }

    /// Opens the store `config` describes for vectors of `space`, creating it (with the default
    /// [`Layout`]) when absent: the folder and its files, or on a server the collections
    /// `{prefix}meta`, `{prefix}tasks`, `{prefix}experts` and their `_raw` companions.
    ///
    /// Errors: as [`Store::open`]; for a server, [`Error::Remote`] naming the URL and the
    /// request when it cannot be reached or refuses a request (within the configured
    /// timeouts), [`Error::Mismatch`] when the store there holds another space.
    pub fn open_config(config: &StoreConfig, space: &VectorSpace) -> Result<Store> {
        Store::open_config_with(config, space, Layout::default())
    }

    /// [`Store::open_config`] with the layout used if the store is created.
    pub fn open_config_with(
        config: &StoreConfig,
        space: &VectorSpace,
        layout: impl Into<Layout>,
    ) -> Result<Store> {
        let layout = layout.into();
        let location = Location::connect(config, true)?;
        let manifest = match location.read_manifest()? {
            Some(m) => {
                let diffs = m.space.differences(space);
                if !diffs.is_empty() {
                    return Err(Error::Mismatch(format!(
                        "{} holds vectors of another space: different {} (store vs requested)",
                        config.describe(),
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
                layout.transform.validate()?;
                let m = Manifest::new(space, layout);
                location.create(&m)?;
                m
            }
        };
        Store::assemble(location, manifest)
    }

    /// Opens the existing store `config` describes, whatever its space.
    ///
    /// Errors: [`Error::Store`] when there is no store there; [`Error::Locked`] for an
    /// embedded store open elsewhere; [`Error::Remote`] for a server that cannot be reached.
    pub fn open_existing_config(config: &StoreConfig) -> Result<Store> {
        let location = Location::connect(config, false)?;
        let manifest = location.read_manifest()?.ok_or_else(|| {
            Error::store(
                config.describe(),
                "no store there (no manifest): create one by storing a first embedding",
            )
        })?;
        Store::assemble(location, manifest)
    }

    /// Whether `config` describes an existing store (an embedded folder with a manifest, or a
    /// server with the manifest point under the prefix). Opens nothing and takes no lock.
    ///
    /// Errors: [`Error::Remote`] when the server cannot be reached.
    pub fn exists_config(config: &StoreConfig) -> Result<bool> {
        match config {
            StoreConfig::Embedded { path } => {
                Ok(path.join(crate::backend::embedded::MANIFEST_FILE).is_file())
            }
            StoreConfig::Remote(_) => {
                Ok(Location::connect(config, false)?.read_manifest()?.is_some())
            }
        }
    }

    fn assemble(location: Location, manifest: Manifest) -> Result<Store> {
        let n = manifest.space.dimension;
        let raw = |name| VectorSpec {
            name,
            size: n,
            kind: VectorKind::Raw,
        };
        let index = |name| VectorSpec {
            name,
            size: manifest.transform.len(&manifest.space),
            kind: match manifest.index_precision() {
                IndexPrecision::Int8 => VectorKind::QuantizedIndex,
                IndexPrecision::F32 => VectorKind::Index,
            },
        };
        // Qdrant allocates every named vector for every point of a segment, so `scale` exists
        // only where it is used (variational stores): elsewhere it would double the disk.
        let raws: Vec<VectorSpec> = raw_vectors(&manifest.space)
            .iter()
            .map(|&name| raw(name))
            .collect();
        let companion = manifest.raw_vectors == RawVectors::Companion;
        // Inline, the raw vectors are part of the searched collections.
        let inline: &[VectorSpec] = if companion { &[] } else { &raws };
        let tasks = location.open_collection(
            TASKS,
            &[&[index(TASK2VEC)][..], inline].concat(),
            TASK_INDEXES,
        )?;
        // Experts are searched on `model2vec`. Version-1 stores also kept a `task2vec` copy
        // (the same vector until Model2Vec biases exist) for readers, off the RAM and the
        // graph; version 2 leaves it out, so the collection stays one segment longer.
        let copy = VectorSpec {
            kind: VectorKind::IndexCopy,
            ..index(TASK2VEC)
        };
        let expert_vectors = if companion {
            vec![index(MODEL2VEC)]
        } else {
            [&[copy, index(MODEL2VEC)][..], inline].concat()
        };
        let experts = location.open_collection(EXPERTS, &expert_vectors, EXPERT_INDEXES)?;
        let raw = if companion {
            [
                Some(location.open_collection(TASKS_RAW, &raws, &[])?),
                Some(location.open_collection(EXPERTS_RAW, &raws, &[])?),
            ]
        } else {
            [None, None]
        };
        let trivial = location
            .read_trivial(&manifest.space)?
            .map(|t| Arc::new(Trivial::new(t.hessian, &manifest.transform)));
        let store = Store {
            manifest,
            tasks,
            experts,
            raw,
            trivial: RwLock::new(trivial),
            unindexed: [AtomicUsize::new(0), AtomicUsize::new(0)],
            auto_optimize: AtomicUsize::new(AUTO_OPTIMIZE_WRITES),
            readers: RwLock::new((SHORTLIST_READERS, None)),
            location,
        };
        // Finishes a `set_trivial` that was interrupted (one filtered count per collection
        // when nothing is left to do).
        store.rederive()?;
        Ok(store)
    }

    /// The data folder of an embedded store; `None` for a store on a server.
    pub fn dir(&self) -> Option<&Path> {
        self.location.dir()
    }

    /// The space every stored vector belongs to.
    pub fn space(&self) -> &VectorSpace {
        &self.manifest.space
    }

    /// The transform from a Fisher vector to the index vector.
    pub fn transform(&self) -> IndexTransform {
        self.manifest.transform
    }

    /// How the engine keeps the searched index vectors.
    pub fn index_precision(&self) -> IndexPrecision {
        self.manifest.index_precision()
    }

    /// The index vector of a Fisher vector of this store's space (relative to the trivial
    /// embedding when the transform says so and the store has one).
    pub fn index_vector(&self, hessian: &[f32]) -> Result<Vec<f32>> {
        let trivial = self.current_trivial();
        self.index_with(hessian, trivial.as_deref())
    }

    fn index_with(&self, hessian: &[f32], trivial: Option<&Trivial>) -> Result<Vec<f32>> {
        let centre = trivial.and_then(|t| t.centre.as_ref());
        self.manifest
            .transform
            .apply(hessian, &self.manifest.space, centre)
    }

    fn current_trivial(&self) -> Option<Arc<Trivial>> {
        self.trivial
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Everything a point stores that derives from its Fisher vector (and `scale`, `None`
    /// meaning all ones) and the trivial embedding, computed with one and the same trivial
    /// embedding.
    pub(crate) fn derive(&self, hessian: &[f32], scale: Option<&[f32]>) -> Result<Derived> {
        let trivial = self.current_trivial();
        let index = self.index_with(hessian, trivial.as_deref())?;
        Ok(Derived {
            index_norm: crate::index_vector::norm(&index),
            index,
            complexity: self.complexity_with(hessian, scale, trivial.as_deref())?,
            t0: mark_of(trivial.as_deref()),
        })
    }

    /// What every point's payload `t0` says once it is up to date: the store's
    /// [`Store::trivial_mark`], or `none`.
    pub fn derivation_mark(&self) -> String {
        mark_of(self.current_trivial().as_deref())
    }

    /// A short mark of the trivial embedding (the first 16 hex digits of the SHA-256 of its
    /// hessian as little-endian f32): every point records, as payload `t0`, the mark of the
    /// trivial embedding its `complexity` and index vector were derived with. `None` while the
    /// store has no trivial embedding.
    pub fn trivial_mark(&self) -> Option<String> {
        self.current_trivial().map(|t| t.mark.clone())
    }

    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// When the store was created, RFC 3339 UTC.
    pub fn created(&self) -> &str {
        &self.manifest.created
    }

    /// Stores a task's embedding (replacing the one of the same dataset location, probe and
    /// estimator: [`task_point_id`]) and returns its point id.
    ///
    /// Errors: [`Error::Mismatch`] for an embedding of another space ([`VectorSpace::check`]),
    /// a random-label embedding (a trivial embedding, not a task), an invalid vector or a tag
    /// key containing `=`.
    pub fn upsert_task(&self, embedding: &Embedding, tags: &Tags) -> Result<Uuid> {
        self.check_task_embedding(embedding)?;
        let meta = &embedding.meta;
        let id = task_point_id(
            &meta.dataset.path,
            &meta.probe.weights_sha256,
            embedding.estimator(),
        );
        let has_scale = has_scale(embedding);
        let derived = self.derive(&embedding.hessian, Some(&embedding.scale))?;
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
            tag_pairs: tag_pairs(tags)?,
            has_scale,
            complexity: derived.complexity,
            t0: derived.t0,
            index_norm: derived.index_norm,
            meta: without_layout(meta),
        };
        let mut vectors = BTreeMap::from([
            (TASK2VEC.to_string(), derived.index),
            (HESSIAN.to_string(), embedding.hessian.clone()),
        ]);
        if has_scale {
            vectors.insert(SCALE.to_string(), embedding.scale.clone());
        }
        self.write_points(
            Kind::Tasks,
            vec![Point {
                id,
                vectors,
                payload: to_payload(&payload)?,
            }],
        )?;
        self.wrote(Kind::Tasks, 1)?;
        Ok(id)
    }

    /// The stored task with this id, or `None`.
    ///
    /// Errors: [`Error::Corrupt`] when the point does not read back as this crate wrote it.
    pub fn get_task(&self, id: Uuid) -> Result<Option<StoredTask>> {
        let Some(point) = self
            .read_points(Kind::Tasks, &[id], WithVectors::All)?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let payload: TaskPayload = self.payload(self.tasks(), &point)?;
        let embedding = self.embedding(Kind::Tasks, &point, &payload.meta, payload.has_scale)?;
        Ok(Some(StoredTask {
            id,
            embedding,
            tags: payload.tags,
            stored_at: payload.stored_at,
        }))
    }

    /// Deletes a task; returns whether it existed.
    pub fn delete_task(&self, id: Uuid) -> Result<bool> {
        self.delete_point(Kind::Tasks, id)
    }

    /// Every stored task, in point-id order.
    pub fn list_tasks(&self) -> Result<Vec<TaskSummary>> {
        scroll_all(self.tasks(), &Filter::default())?
            .iter()
            .map(|p| {
                let payload: TaskPayload = self.payload(self.tasks(), p)?;
                Ok(TaskSummary::from((p.id, &payload)))
            })
            .collect()
    }

    /// Number of stored tasks.
    pub fn count_tasks(&self) -> Result<usize> {
        self.tasks.count(&Filter::default())
    }

    /// Stores an expert with the embedding of the task it was trained on (replacing the expert
    /// of the same key) and returns its point id.
    ///
    /// Errors: [`Error::Mismatch`] for an empty key, a metric that is not a finite number, a
    /// tag key containing `=`, or an embedding the store refuses (as [`Store::upsert_task`]).
    pub fn upsert_expert(&self, expert: &Expert, trained_on: &Embedding) -> Result<Uuid> {
        if expert.key.trim().is_empty() {
            return Err(Error::Mismatch("an expert needs a non-empty key".into()));
        }
        if let Some((k, v)) = expert.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Mismatch(format!(
                "expert `{}`: metric `{k}` = {v} is not a finite number",
                expert.key
            )));
        }
        self.check_task_embedding(trained_on)?;
        let meta = &trained_on.meta;
        let estimator = trained_on.estimator();
        let id = expert_point_id(&expert.key, &meta.probe.weights_sha256, estimator);
        let has_scale = has_scale(trained_on);
        let derived = self.derive(&trained_on.hessian, Some(&trained_on.scale))?;
        let payload = ExpertPayload {
            schema: PAYLOAD_SCHEMA,
            key: expert.key.clone(),
            name: expert.name.clone(),
            weights_uri: expert.weights_uri.clone(),
            tags: expert.tags.clone(),
            tag_pairs: tag_pairs(&expert.tags)?,
            metrics: expert.metrics.clone(),
            trained_on_task: task_point_id(
                &meta.dataset.path,
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
            complexity: derived.complexity,
            t0: derived.t0,
            index_norm: derived.index_norm,
            meta: without_layout(meta),
        };
        let mut vectors = BTreeMap::from([(HESSIAN.to_string(), trained_on.hessian.clone())]);
        for &name in self.index_names(Kind::Experts) {
            vectors.insert(name.to_string(), derived.index.clone());
        }
        if has_scale {
            vectors.insert(SCALE.to_string(), trained_on.scale.clone());
        }
        self.write_points(
            Kind::Experts,
            vec![Point {
                id,
                vectors,
                payload: to_payload(&payload)?,
            }],
        )?;
        self.wrote(Kind::Experts, 1)?;
        Ok(id)
    }

    /// The stored expert with this id, or `None`.
    pub fn get_expert(&self, id: Uuid) -> Result<Option<StoredExpert>> {
        let Some(point) = self
            .read_points(Kind::Experts, &[id], WithVectors::All)?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let p: ExpertPayload = self.payload(self.experts(), &point)?;
        let trained_on = self.embedding(Kind::Experts, &point, &p.meta, p.has_scale)?;
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
        self.delete_point(Kind::Experts, id)
    }

    /// Every stored expert as `(id, expert)`, in point-id order.
    pub fn list_experts(&self) -> Result<Vec<(Uuid, Expert)>> {
        scroll_all(self.experts(), &Filter::default())?
            .iter()
            .map(|point| {
                let p: ExpertPayload = self.payload(self.experts(), point)?;
                Ok((
                    point.id,
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
        self.experts.count(&Filter::default())
    }

    /// Sets the trivial embedding t0 of the asymmetric distance (for the Monte-Carlo and
    /// per-example estimators, the embedding of a task's images with random labels; see the
    /// core library's `docs/trivial-embedding.md`), saves it in the store and recomputes, for
    /// every stored task and expert, the `complexity` payload (`d_sym(point, t0)`) and, when
    /// the transform is relative to t0, the index vectors ([`Store::rederive`]: minutes for
    /// 100k points). Interrupted, it is finished by the next open of the store.
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
        let mut stored = trivial.clone();
        stored.meta.layout = self.space().layout.clone();
        self.location.write_trivial(&stored)?;
        *self.trivial.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(
            Trivial::new(trivial.hessian.clone(), &self.manifest.transform),
        ));
        self.rederive()?;
        Ok(())
    }

    /// The hessian of the trivial embedding, when the store has one.
    pub fn trivial(&self) -> Option<Vec<f32>> {
        self.current_trivial().map(|t| t.hessian.clone())
    }

    /// The whole trivial embedding as stored, when the store has one.
    pub fn trivial_embedding(&self) -> Result<Option<Embedding>> {
        self.location.read_trivial(self.space())
    }

    /// `d_sym(hessian, t0)`: with the trivial embedding `trivial`, or for variational
    /// embeddings with their own prior (`scale`, `None` meaning all ones); `None` when
    /// neither is known.
    fn complexity_with(
        &self,
        hessian: &[f32],
        scale: Option<&[f32]>,
        trivial: Option<&Trivial>,
    ) -> Result<Option<f64>> {
        if self.space().estimator == Estimator::Variational {
            return Ok(Some(match scale {
                Some(s) => d_sym(hessian, s)?,
                None => d_sym(hessian, &vec![1.0; hessian.len()])?,
            }));
        }
        Ok(match trivial {
            Some(t) => Some(d_sym(hessian, &t.hessian)?),
            None => None,
        })
    }

    /// Brings every point derived with another trivial embedding than the store's (payload
    /// `t0` other than [`Store::derivation_mark`]) up to date: its index vectors,
    /// `index_norm` and `complexity`. Run by [`Store::set_trivial`] and when a store is
    /// opened (finishing an interrupted `set_trivial`, or upgrading points written before
    /// these fields: one filtered count per collection when nothing is stale). Points are
    /// rewritten one batch at a time (index vectors and payload; raw vectors stay where they
    /// are, except in an inline store, where the point is rewritten whole). A point that
    /// cannot be derived (no raw vector, a vector of the wrong length) is left as it is and
    /// reported, not fatal: it says what is wrong whenever it is read, and the rest of the
    /// store stays usable.
    ///
    /// Errors: [`Error::Engine`] (and the remote errors) when the engine fails; nothing is
    /// lost then, and the next call or open takes up where it stopped.
    pub fn rederive(&self) -> Result<Rederived> {
        let mark = self.derivation_mark();
        let current = Filter {
            must: vec![Condition::Equals {
                key: T0,
                value: mark.clone(),
            }],
            exclude_ids: Vec::new(),
        };
        let mut done = Rederived::default();
        for kind in [Kind::Tasks, Kind::Experts] {
            let c = self.collection(kind);
            if c.count(&current)? == c.count(&Filter::default())? {
                continue;
            }
            let stale: Vec<Uuid> = scroll_all(c, &Filter::default())?
                .into_iter()
                .filter(|p| p.payload.get(T0).and_then(Value::as_str) != Some(mark.as_str()))
                .map(|p| p.id)
                .collect();
            for chunk in stale.chunks(RECOMPUTE_BATCH) {
                let mut points = Vec::with_capacity(chunk.len());
                for mut point in self.read_points(kind, chunk, WithVectors::All)? {
                    match self.rederive_point(kind, &mut point) {
                        Ok(()) => points.push(point),
                        Err(e) => done.skipped.push(e),
                    }
                }
                done.points += points.len();
                if !points.is_empty() {
                    if self.raw[kind as usize].is_some() {
                        // Unchanged: only the searched points are rewritten.
                        for p in &mut points {
                            p.vectors
                                .retain(|name, _| !RAW_NAMES.contains(&name.as_str()));
                        }
                    }
                    self.write_points(kind, points)?;
                }
            }
        }
        Ok(done)
    }

    fn rederive_point(&self, kind: Kind, point: &mut Point) -> Result<()> {
        let hessian = self.dense(kind, point, HESSIAN)?;
        let scale = self.dense(kind, point, SCALE).ok();
        let derived = self.derive(hessian, scale).map_err(|e| {
            corrupt(
                self.collection(kind),
                point.id,
                format!("cannot derive its index vector: {e}"),
            )
        })?;
        for name in [TASK2VEC, MODEL2VEC] {
            if let Some(v) = point.vectors.get_mut(name) {
                v.clone_from(&derived.index);
            }
        }
        derived.write_payload(&mut point.payload);
        Ok(())
    }

    /// Builds the HNSW indexes of both collections of an embedded store (blocking; Qdrant Edge
    /// never does it by itself, and until then every search scans all vectors), then reclaims
    /// the write-ahead log's space (Qdrant Edge never truncates it; it is also compacted when
    /// the store is opened). A server optimises by itself: nothing to do.
    pub fn optimize(&self) -> Result<()> {
        for kind in [Kind::Tasks, Kind::Experts] {
            self.optimize_kind(kind)?;
            self.unindexed[kind as usize].store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Optimises the collection of `kind` and its companion.
    fn optimize_kind(&self, kind: Kind) -> Result<()> {
        self.collection(kind).optimize()?;
        if let Some(raw) = &self.raw[kind as usize] {
            raw.optimize()?;
        }
        Ok(())
    }

    /// Optimise a collection by itself after every `points` written to it
    /// ([`AUTO_OPTIMIZE_WRITES`] by default); `0` leaves it to [`Store::optimize`] calls (a
    /// bulk loader that optimises once at the end, with the disk space that needs).
    pub fn set_auto_optimize(&self, points: usize) {
        self.auto_optimize.store(points, Ordering::Relaxed);
    }

    /// Reads each shortlist's raw vectors (the exact re-rank of `select` and `similar`) on
    /// `threads` threads of the store's own ([`SHORTLIST_READERS`] by default). More threads
    /// than cores pay off when the raw vectors do not all fit the page cache (or are on a
    /// server): a reader whose vector is on disk waits for it while the others go on, and the
    /// disk serves several reads at once. `0` reads on the caller's rayon pool, one chunk per
    /// core. Takes effect from the next query.
    pub fn set_shortlist_readers(&self, threads: usize) {
        *self.readers.write().unwrap_or_else(PoisonError::into_inner) = (threads, None);
    }

    /// The pool that reads shortlists: `None` to use the caller's (0 threads asked, or the
    /// threads could not be started, which only costs the overlap and is not tried again).
    fn shortlist_pool(&self) -> Option<Arc<rayon::ThreadPool>> {
        match &*self.readers.read().unwrap_or_else(PoisonError::into_inner) {
            (_, Some(pool)) => return Some(pool.clone()),
            (0, None) => return None,
            _ => {}
        }
        let mut readers = self.readers.write().unwrap_or_else(PoisonError::into_inner);
        if let (threads @ 1.., None) = *readers {
            match rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("t2v-shortlist-{i}"))
                .build()
            {
                Ok(pool) => readers.1 = Some(Arc::new(pool)),
                Err(_) => readers.0 = 0,
            }
        }
        readers.1.clone()
    }

    /// Counts points written to a collection; every [`AUTO_OPTIMIZE_WRITES`] points, optimises it
    /// (blocking this write for the time it takes: seconds). Qdrant Edge leaves new points in
    /// one growing segment, searched without a graph, until someone optimises, and optimising
    /// a segment needs free disk of about twice its size: indexing as the store grows keeps
    /// searches fast and segments small whoever writes (the daemon, `t2v zoo add`, a program).
    pub(crate) fn wrote(&self, kind: Kind, points: usize) -> Result<()> {
        let unindexed = &self.unindexed[kind as usize];
        let every = self.auto_optimize.load(Ordering::Relaxed);
        if every > 0 && unindexed.fetch_add(points, Ordering::Relaxed) + points >= every {
            unindexed.store(0, Ordering::Relaxed);
            // The write itself is done; say so when the indexing after it fails (e.g. a full
            // disk), so a caller that retries knows the retry only re-indexes.
            self.optimize_kind(kind).map_err(|e| match e {
                Error::Engine {
                    collection,
                    message,
                    ..
                } => Error::Engine {
                    collection,
                    operation: "optimize (automatic, after a write that succeeded)",
                    message,
                },
                other => other,
            })?;
        }
        Ok(())
    }

    /// Writes both collections' logs and segments to disk (embedded; a server has every
    /// acknowledged write already).
    pub fn flush(&self) {
        self.tasks.flush();
        self.experts.flush();
        for raw in self.raw.iter().flatten() {
            raw.flush();
        }
    }

    /// Flushes and closes the store, releasing its lock.
    pub fn close(self) {
        self.flush();
    }

    /// The collection of `kind`.
    pub(crate) fn collection(&self, kind: Kind) -> &dyn Collection {
        match kind {
            Kind::Tasks => self.tasks(),
            Kind::Experts => self.experts(),
        }
    }

    /// The tasks collection.
    pub(crate) fn tasks(&self) -> &dyn Collection {
        self.tasks.as_ref()
    }

    /// The experts collection.
    pub(crate) fn experts(&self) -> &dyn Collection {
        self.experts.as_ref()
    }

    /// The index vectors the points of `kind` carry (all equal to the derived index vector):
    /// `task2vec` for tasks; `model2vec` for experts, and the `task2vec` copy in version-1
    /// (inline) stores.
    pub(crate) fn index_names(&self, kind: Kind) -> &'static [&'static str] {
        match (kind, self.raw[kind as usize].is_some()) {
            (Kind::Tasks, _) => &[TASK2VEC],
            (Kind::Experts, true) => &[MODEL2VEC],
            (Kind::Experts, false) => &[TASK2VEC, MODEL2VEC],
        }
    }

    /// The collection holding the raw vectors of `kind`: its companion, or (inline) itself.
    pub(crate) fn raw_collection(&self, kind: Kind) -> &dyn Collection {
        match &self.raw[kind as usize] {
            Some(raw) => raw.as_ref(),
            None => self.collection(kind),
        }
    }

    /// Writes points whole into the collection of `kind`: with companion collections, a
    /// point's raw vectors go to the companion first (a point without raw vectors leaves its
    /// companion point as it is), so that a searched point never lacks them.
    pub(crate) fn write_points(&self, kind: Kind, mut points: Vec<Point>) -> Result<()> {
        if let Some(raw) = &self.raw[kind as usize] {
            let raws: Vec<Point> = points
                .iter_mut()
                .filter_map(|p| {
                    let vectors: BTreeMap<String, Vec<f32>> = RAW_NAMES
                        .iter()
                        .filter_map(|&name| p.vectors.remove_entry(name))
                        .collect();
                    (!vectors.is_empty()).then(|| Point {
                        id: p.id,
                        vectors,
                        payload: Payload::new(),
                    })
                })
                .collect();
            if !raws.is_empty() {
                raw.upsert(raws)?;
            }
        }
        self.collection(kind).upsert(points)
    }

    /// The points of `kind` with these ids that exist, with payload and the vectors asked for
    /// (raw ones read from the companion collection).
    pub(crate) fn read_points(
        &self,
        kind: Kind,
        ids: &[Uuid],
        vectors: WithVectors,
    ) -> Result<Vec<Point>> {
        let c = self.collection(kind);
        if self.raw[kind as usize].is_none() {
            return c.retrieve(ids, vectors);
        }
        let (index, raw) = match vectors {
            WithVectors::No => (WithVectors::No, WithVectors::No),
            WithVectors::All => (WithVectors::All, WithVectors::All),
            WithVectors::Only(names) if names.iter().all(|n| RAW_NAMES.contains(n)) => {
                (WithVectors::No, vectors)
            }
            WithVectors::Only(names) if names.iter().all(|n| !RAW_NAMES.contains(n)) => {
                (vectors, WithVectors::No)
            }
            WithVectors::Only(_) => (WithVectors::All, WithVectors::All),
        };
        let mut points = c.retrieve(ids, index)?;
        self.add_raw(kind, &mut points, raw)?;
        if let WithVectors::Only(names) = vectors {
            for p in &mut points {
                p.vectors.retain(|name, _| names.contains(&name.as_str()));
            }
        }
        Ok(points)
    }

    /// Adds to points of `kind` read from its searched collection the raw vectors asked for,
    /// from the companion collection (nothing to do inline).
    pub(crate) fn add_raw(
        &self,
        kind: Kind,
        points: &mut [Point],
        vectors: WithVectors,
    ) -> Result<()> {
        let Some(raw) = &self.raw[kind as usize] else {
            return Ok(());
        };
        if vectors == WithVectors::No || points.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = points.iter().map(|p| p.id).collect();
        let mut found: HashMap<Uuid, BTreeMap<String, Vec<f32>>> = raw
            .retrieve(&ids, vectors)?
            .into_iter()
            .map(|p| (p.id, p.vectors))
            .collect();
        for p in points {
            if let Some(v) = found.remove(&p.id) {
                p.vectors.extend(v);
            }
        }
        Ok(())
    }

    /// Deletes a point of `kind` (the searched point first, then its raw vectors); returns
    /// whether the searched point existed.
    fn delete_point(&self, kind: Kind, id: Uuid) -> Result<bool> {
        let c = self.collection(kind);
        let existed = !c.retrieve(&[id], WithVectors::No)?.is_empty();
        if existed {
            c.delete(&[id])?;
        }
        if let Some(raw) = &self.raw[kind as usize] {
            // Also clears a raw point left by an upsert that failed half-way.
            raw.delete(&[id])?;
        }
        Ok(existed)
    }

    pub(crate) fn check_task_embedding(&self, embedding: &Embedding) -> Result<()> {
        self.space().check(embedding)?;
        if has_scale(embedding) && self.space().estimator != Estimator::Variational {
            return Err(Error::Mismatch(format!(
                "the {} embedding of `{}` has a scale that is not all ones: only variational \
                 embeddings have one",
                self.space().estimator_name(),
                embedding.meta.dataset.path
            )));
        }
        if embedding.meta.settings.random_labels {
            return Err(Error::Mismatch(format!(
                "the embedding of `{}` was made with random labels: it is a trivial embedding, \
                 not a task",
                embedding.meta.dataset.path
            )));
        }
        Ok(())
    }

    /// The payload of a point read back, parsed.
    pub(crate) fn payload<T: for<'de> Deserialize<'de>>(
        &self,
        c: &dyn Collection,
        p: &Point,
    ) -> Result<T> {
        T::deserialize(&p.payload)
            .map_err(|e| corrupt(c, p.id, format!("payload does not parse: {e}")))
    }

    /// Rebuilds the embedding of a point read with its vectors.
    pub(crate) fn embedding(
        &self,
        kind: Kind,
        p: &Point,
        meta: &EmbeddingMeta,
        has_scale: bool,
    ) -> Result<Embedding> {
        let hessian = self.dense(kind, p, HESSIAN)?.to_vec();
        let scale = if has_scale {
            self.dense(kind, p, SCALE)?.to_vec()
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

    /// The cosine shortlist of `query` in the collection of `kind`, each hit with its exact
    /// `d_sym` to `target` computed on the raw `hessian` vectors: the prefetch + exact re-rank
    /// that `select` and `similar` share. The search returns ids and scores; each hit's
    /// payload and raw vector are then read, and compared, in chunks on the store's shortlist
    /// readers ([`Store::set_shortlist_readers`]), so reading them (the engine copies 168 kB
    /// per point out of its storage, from disk when the page cache lacks it) overlaps. The
    /// hits come back with their payload (the raw vector dropped once used), in the search's
    /// order; a hit deleted between the search and the read is left out.
    pub(crate) fn shortlist_with_d_sym(
        &self,
        kind: Kind,
        query: &Nearest,
        target: &Embedding,
    ) -> Result<Vec<(Scored, f64)>> {
        let mut clock = PhaseClock::start();
        let hits = self.collection(kind).search(query)?;
        clock.searched();
        let rank: HashMap<Uuid, (usize, f32)> = hits
            .iter()
            .enumerate()
            .map(|(i, h)| (h.point.id, (i, h.score)))
            .collect();
        let ids: Vec<Uuid> = hits.iter().map(|h| h.point.id).collect();
        // One chunk per thread of the pool it runs on.
        let read = || {
            ids.par_chunks(ids.len().div_ceil(rayon::current_num_threads()).max(1))
                .map(|ids| {
                    let mut out = Vec::with_capacity(ids.len());
                    let points = clock
                        .reading(|| self.read_points(kind, ids, WithVectors::Only(&[HESSIAN])))?;
                    for mut point in points {
                        let raw = self.dense(kind, &point, HESSIAN)?;
                        let d = clock.comparing(|| d_sym_fast(raw, &target.hessian))?;
                        point.vectors.clear();
                        if let Some(&(i, score)) = rank.get(&point.id) {
                            out.push((i, Scored { point, score }, d));
                        }
                    }
                    Ok(out)
                })
                .collect::<Result<Vec<_>>>()
        };
        let mut found: Vec<(usize, Scored, f64)> = match self.shortlist_pool() {
            Some(pool) => pool.install(read)?,
            None => read()?,
        }
        .into_iter()
        .flatten()
        .collect();
        found.sort_by_key(|(i, _, _)| *i);
        clock.done();
        Ok(found.into_iter().map(|(_, hit, d)| (hit, d)).collect())
    }

    /// The dense vector `name` of a point of `kind` read with its vectors (a missing raw vector
    /// is reported against the collection that should hold it).
    pub(crate) fn dense<'p>(&self, kind: Kind, p: &'p Point, name: &str) -> Result<&'p [f32]> {
        let c = if RAW_NAMES.contains(&name) {
            self.raw_collection(kind)
        } else {
            self.collection(kind)
        };
        match p.vectors.get(name) {
            Some(v) if v.len() == self.space().dimension => Ok(v),
            Some(v) => Err(corrupt(
                c,
                p.id,
                format!(
                    "vector `{name}` has {} values, the store's vectors have {}",
                    v.len(),
                    self.space().dimension
                ),
            )),
            None => Err(corrupt(c, p.id, format!("no vector `{name}`"))),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The engine's shards flush on drop too; flushing here first keeps the order explicit.
        self.flush();
    }
}

/// The raw vectors the collections of `space` hold: `hessian`, and `scale` for variational
/// stores.
pub(crate) fn raw_vectors(space: &VectorSpace) -> &'static [&'static str] {
    if space.estimator == Estimator::Variational {
        &[HESSIAN, SCALE]
    } else {
        &[HESSIAN]
    }
}

/// Whether the scale differs from all ones (variational embeddings), so must be stored.
pub(crate) fn has_scale(e: &Embedding) -> bool {
    e.scale.iter().any(|&s| s != 1.0)
}

fn without_layout(meta: &EmbeddingMeta) -> EmbeddingMeta {
    EmbeddingMeta {
        layout: Vec::new(),
        ..meta.clone()
    }
}

/// A payload struct as a JSON object.
fn to_payload<T: Serialize>(payload: &T) -> Result<Payload> {
    match serde_json::to_value(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Error::Mismatch(format!(
            "payload serialised to a non-object: {other}"
        ))),
        Err(e) => Err(Error::Mismatch(format!("payload does not serialise: {e}"))),
    }
}

pub(crate) fn corrupt(c: &dyn Collection, id: Uuid, what: String) -> Error {
    Error::Corrupt {
        collection: c.name().to_string(),
        id: id.to_string(),
        what,
    }
}

/// Now, RFC 3339 UTC to the second.
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
