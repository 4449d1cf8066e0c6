//! The embedded backend: Qdrant Edge, the Qdrant engine in this process.
//!
//! Qdrant Edge 0.7 has no notion of collections: an [`EdgeShard`] is one collection's data
//! (WAL + segments) in one folder. [`EdgeCollection`] gives each shard a name for error
//! messages, checks on reopening that the folder holds the vectors the store expects, and
//! turns the engine's errors into [`Error::Engine`]. [`Folder`] is the store's data folder:
//! its lock, manifest (`store.json`) and trivial embedding (`trivial.safetensors`).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    CountRequest, CreateIndex, Distance, EdgeConfig, EdgeOptimizersConfig, EdgeShard,
    EdgeVectorParams, Expression, FieldCondition, FieldIndexOperations, Formula, HnswIndexConfig,
    JsonPath, Match, NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId,
    PointInsertOperations, PointOperations, PointStruct, Prefetch, QuantizationConfig,
    QuantizationSearchParams, QueryEnum, QueryRequest, Range, ScalarQuantizationConfig, ScalarType,
    ScoredPoint, ScoringQuery, ScrollRequest, SearchParams, UpdateOperation, VectorInternal,
    VectorStructInternal, Vectors, WithPayloadInterface, WithVector,
};
use task2vec::embedding::Embedding;
use uuid::Uuid;

use super::{
    Collection, Condition, FieldKind, Filter, FormulaQuery, IndexedField, Nearest, Point, Scored,
    VectorKind, VectorSpec, WithVectors, COMPLEXITY, INDEX_NORM,
};
use crate::store::{check_manifest_version, Manifest};
use crate::{Error, Result, VectorSpace};

/// The file Qdrant Edge writes its shard configuration to; its presence marks a shard folder.
const EDGE_CONFIG_FILE: &str = "edge_config.json";
/// The shard's write-ahead log folder (Qdrant Edge's layout).
const WAL_DIR: &str = "wal";
/// The manifest of an embedded store.
pub(crate) const MANIFEST_FILE: &str = "store.json";
const LOCK_FILE: &str = "store.lock";
const TRIVIAL_FILE: &str = "trivial.safetensors";

/// The data folder of an embedded store, locked while open.
pub(crate) struct Folder {
    dir: PathBuf,
    // Held (advisory lock) while open, so two processes never write the same engine files.
    _lock: File,
}

impl Folder {
    /// Takes the folder's lock, creating the folder when `create`.
    ///
    /// Errors: [`Error::Store`] when `create` is false and the folder holds no store;
    /// [`Error::Locked`] when another open store holds it.
    pub fn open(dir: &Path, create: bool) -> Result<Folder> {
        if create {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        } else if !dir.join(MANIFEST_FILE).is_file() {
            return Err(Error::store(
                dir,
                format!("no {MANIFEST_FILE}: not a store"),
            ));
        }
        Ok(Folder {
            dir: dir.to_path_buf(),
            _lock: lock(dir)?,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest, `None` when the folder holds no store yet.
    pub fn read_manifest(&self) -> Result<Option<Manifest>> {
        let path = self.dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::store(&path, format!("manifest does not parse: {e}")))?;
        check_manifest_version(&m).map_err(|what| Error::store(&path, what))?;
        Ok(Some(m))
    }

    /// Writes the manifest atomically (temporary file, sync, rename).
    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let path = self.dir.join(MANIFEST_FILE);
        let tmp = self.dir.join(format!("{MANIFEST_FILE}.tmp"));
        let text = serde_json::to_string_pretty(m)
            .map_err(|e| Error::store(&path, format!("manifest does not serialise: {e}")))?;
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// The trivial embedding, when one was saved.
    pub fn read_trivial(&self, space: &VectorSpace) -> Result<Option<Embedding>> {
        let path = self.dir.join(TRIVIAL_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let t = Embedding::load(&path)?;
        space.check(&t)?;
        Ok(Some(t))
    }

    /// Saves the trivial embedding (the core library's embedding file, written atomically).
    pub fn write_trivial(&self, trivial: &Embedding) -> Result<()> {
        Ok(trivial.save(&self.dir.join(TRIVIAL_FILE))?)
    }

    /// Opens the shard in the sub-folder `name`, creating it when absent.
    pub fn open_collection(
        &self,
        name: &'static str,
        vectors: &[VectorSpec],
        indexes: &[IndexedField],
    ) -> Result<Box<dyn Collection>> {
        Ok(Box::new(EdgeCollection::open_or_create(
            &self.dir.join(name),
            name,
            vectors,
            indexes,
        )?))
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
        Err(TryLockError::WouldBlock) => Err(Error::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// Deletes the write-ahead log's closed segments but the newest, before the shard is loaded.
///
/// Qdrant Edge 0.7.2 appends every update to its WAL (`wal/closed-<first index>` and
/// `wal/open-<n>` files) but never reads it back (`EdgeShard::load` restores the segments
/// only; what was not flushed to them is lost, which is why the store flushes on close) and
/// never truncates it: left alone, the log grows by every vector ever written (≈ 170 kB per
/// task with the default probe). Deleting the oldest closed segments is what the log's own
/// prefix truncation does when Qdrant acknowledges an index, keeping the newest closed segment
/// so that operation numbers continue where they were (the segments skip operations numbered
/// below what they hold). Runs with the store's lock held, before the shard opens its log.
fn compact_wal(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut closed: Vec<(u64, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(start) = name
            .to_str()
            .and_then(|n| n.strip_prefix("closed-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        closed.push((start, entry.path()));
    }
    closed.sort_unstable();
    closed.pop(); // the newest closed segment stays
    for (_, path) in closed {
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// The largest segment `optimize()` builds by merging, in kB of vector data (raw vectors
/// included): 4 GiB, about 21,000 default-probe experts. Qdrant Edge's default (256 MB per
/// indexing thread) would leave a 100,000-expert store in ≈ 70 segments, each searched
/// separately; a merge needs free disk of about twice its output.
const MAX_SEGMENT_KB: usize = 4 << 20;

fn optimizers() -> EdgeOptimizersConfig {
    EdgeOptimizersConfig {
        max_segment_size: Some(MAX_SEGMENT_KB),
        ..EdgeOptimizersConfig::default()
    }
}

/// Engine parameters of a named vector.
fn vector_params(v: &VectorSpec) -> EdgeVectorParams {
    match v.kind {
        VectorKind::Index => EdgeVectorParams::builder(v.size, Distance::Cosine)
            .on_disk(false)
            .build(),
        VectorKind::QuantizedIndex => EdgeVectorParams::builder(v.size, Distance::Cosine)
            .on_disk(true)
            .quantization_config(int8_in_ram())
            .build(),
        // m = 0 builds no graph: these vectors are read by id, never searched.
        VectorKind::IndexCopy | VectorKind::Raw => EdgeVectorParams::builder(v.size, distance(v))
            .on_disk(true)
            .hnsw_config(HnswIndexConfig {
                m: 0,
                ..HnswIndexConfig::default()
            })
            .build(),
    }
}

/// Int8 scalar quantization (the 0.99 quantile clips outliers), kept in RAM.
fn int8_in_ram() -> QuantizationConfig {
    ScalarQuantizationConfig {
        r#type: ScalarType::Int8,
        quantile: Some(0.99),
        always_ram: Some(true),
    }
    .into()
}

/// Search on the quantized vectors, re-scoring the candidates with the originals.
fn rescored(limit: usize) -> SearchParams {
    SearchParams {
        hnsw_ef: Some(super::search_ef(limit)),
        quantization: Some(QuantizationSearchParams {
            ignore: false,
            rescore: Some(true),
            oversampling: None,
        }),
        ..SearchParams::default()
    }
}

fn distance(v: &VectorSpec) -> Distance {
    if v.kind.is_index() {
        Distance::Cosine
    } else {
        Distance::Dot
    }
}

/// A named Qdrant Edge shard.
pub(crate) struct EdgeCollection {
    name: &'static str,
    path: PathBuf,
    /// `None` only when reopening after a write-ahead log compaction failed (every operation
    /// then says so).
    shard: RwLock<Option<EdgeShard>>,
}

/// Read access to an open shard ([`EdgeCollection::shard`] checked that there is one, and the
/// lock held keeps it there).
struct OpenShard<'a>(RwLockReadGuard<'a, Option<EdgeShard>>);

impl std::ops::Deref for OpenShard<'_> {
    type Target = EdgeShard;

    fn deref(&self) -> &EdgeShard {
        self.0
            .as_ref()
            .expect("EdgeCollection::shard returns only open shards")
    }
}

impl EdgeCollection {
    /// Opens the collection in `path`, creating it with `vectors` when the folder holds none,
    /// and creates the payload indexes it lacks.
    ///
    /// Errors: [`Error::Store`] when an existing collection lacks one of `vectors` or has it
    /// with another size or distance; [`Error::Engine`] when the engine cannot open it.
    fn open_or_create(
        path: &Path,
        name: &'static str,
        vectors: &[VectorSpec],
        indexes: &[IndexedField],
    ) -> Result<Self> {
        let shard = if path.join(EDGE_CONFIG_FILE).is_file() {
            compact_wal(&path.join(WAL_DIR))?;
            let shard = EdgeShard::load(path, None).map_err(|e| engine(name, "open", e))?;
            check_config(path, &shard.config(), vectors)?;
            if shard.config().optimizers != optimizers() {
                // Stores made before the segment cap: apply it (persisted in edge_config.json).
                shard
                    .set_optimizers_config(optimizers())
                    .map_err(|e| engine(name, "set optimizer limits", e))?;
            }
            shard
        } else {
            std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
            let config = vectors
                .iter()
                .fold(EdgeConfig::builder(), |b, v| {
                    b.vector(v.name, vector_params(v))
                })
                .optimizers(optimizers())
                .build();
            EdgeShard::new(path, config).map_err(|e| engine(name, "create", e))?
        };
        let c = EdgeCollection {
            name,
            path: path.to_path_buf(),
            shard: RwLock::new(Some(shard)),
        };
        c.ensure_indexes(indexes)?;
        Ok(c)
    }

    /// The open shard.
    ///
    /// Errors: [`Error::Store`] when a reopen after compaction failed.
    fn shard(&self) -> Result<OpenShard<'_>> {
        let guard = self.shard.read().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            return Err(Error::store(
                self.path.display().to_string(),
                "this collection failed to reopen after compacting its write-ahead log; \
                 open the store again",
            ));
        }
        Ok(OpenShard(guard))
    }

    /// Closes the shard (flushing it), deletes its log's old segments and opens it again: the
    /// only way to reclaim the log's space while the store stays open (Qdrant Edge never
    /// truncates its log; [`compact_wal`]).
    fn compact(&self) -> Result<()> {
        let mut slot = self.shard.write().unwrap_or_else(PoisonError::into_inner);
        drop(slot.take()); // flushes
                           // Reopen even when the compaction failed: the log is only ever appended to.
        let compacted = compact_wal(&self.path.join(WAL_DIR));
        *slot =
            Some(EdgeShard::load(&self.path, None).map_err(|e| engine(self.name, "reopen", e))?);
        compacted
    }

    fn ensure_indexes(&self, indexes: &[IndexedField]) -> Result<()> {
        let existing = self.shard()?.info().payload_schema;
        for field in indexes {
            let path = json_path(self.name, field.key)?;
            if existing.contains_key(&path) {
                continue;
            }
            let schema = match field.kind {
                FieldKind::Keyword => PayloadSchemaType::Keyword,
                FieldKind::Integer => PayloadSchemaType::Integer,
            };
            self.shard()?
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name: path,
                        field_schema: Some(PayloadFieldSchema::FieldType(schema)),
                    }),
                ))
                .map_err(|e| engine(self.name, "create payload index", e))?;
        }
        Ok(())
    }

    fn to_point(
        &self,
        id: PointId,
        payload: Option<qdrant_edge::Payload>,
        vector: Option<VectorStructInternal>,
    ) -> Result<Point> {
        let id = match id {
            PointId::Uuid(u) => u,
            PointId::NumId(n) => {
                return Err(Error::Corrupt {
                    collection: self.name.to_string(),
                    id: n.to_string(),
                    what: "numeric id: not written by this crate".into(),
                })
            }
        };
        let mut vectors = BTreeMap::new();
        match vector {
            None => {}
            Some(VectorStructInternal::Named(map)) => {
                for (name, v) in map {
                    match v {
                        VectorInternal::Dense(d) => {
                            vectors.insert(name.to_string(), d);
                        }
                        _ => {
                            return Err(Error::Corrupt {
                                collection: self.name.to_string(),
                                id: id.to_string(),
                                what: format!("vector `{name}` is not dense"),
                            })
                        }
                    }
                }
            }
            Some(_) => {
                return Err(Error::Corrupt {
                    collection: self.name.to_string(),
                    id: id.to_string(),
                    what: "unnamed vector: not written by this crate".into(),
                })
            }
        }
        let payload = payload
            .map(|p| p.0.into_iter().collect())
            .unwrap_or_default();
        Ok(Point {
            id,
            vectors,
            payload,
        })
    }

    fn scored(&self, hits: Vec<ScoredPoint>) -> Result<Vec<Scored>> {
        hits.into_iter()
            .map(|h| {
                Ok(Scored {
                    score: h.score,
                    point: self.to_point(h.id, h.payload, h.vector)?,
                })
            })
            .collect()
    }
}

impl Collection for EdgeCollection {
    fn name(&self) -> &str {
        self.name
    }

    fn upsert(&self, points: Vec<Point>) -> Result<()> {
        let points = points
            .into_iter()
            .map(|p| {
                let named: HashMap<String, Vec<f32>> = p.vectors.into_iter().collect();
                PointStruct::new(
                    PointId::Uuid(p.id),
                    Vectors::from(named),
                    serde_json::Value::Object(p.payload),
                )
                .into()
            })
            .collect();
        self.shard()?
            .update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
            .map_err(|e| engine(self.name, "upsert", e))
    }

    fn delete(&self, ids: &[Uuid]) -> Result<()> {
        self.shard()?
            .update(UpdateOperation::PointOperation(
                PointOperations::DeletePoints {
                    ids: ids.iter().map(|&id| PointId::Uuid(id)).collect(),
                },
            ))
            .map_err(|e| engine(self.name, "delete", e))
    }

    fn retrieve(&self, ids: &[Uuid], vectors: WithVectors) -> Result<Vec<Point>> {
        let ids: Vec<PointId> = ids.iter().map(|&id| PointId::Uuid(id)).collect();
        self.shard()?
            .retrieve(
                &ids,
                Some(WithPayloadInterface::Bool(true)),
                Some(with_vector(vectors)),
            )
            .map_err(|e| engine(self.name, "retrieve", e))?
            .into_iter()
            .map(|r| self.to_point(r.id, r.payload, r.vector))
            .collect()
    }

    fn scroll(
        &self,
        filter: &Filter,
        vectors: WithVectors,
        offset: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<Point>, Option<Uuid>)> {
        let (page, next) = self
            .shard()?
            .scroll(ScrollRequest {
                offset: offset.map(PointId::Uuid),
                limit: Some(limit),
                filter: edge_filter(self.name, filter)?,
                with_payload: Some(WithPayloadInterface::Bool(true)),
                with_vector: with_vector(vectors),
                order_by: None,
            })
            .map_err(|e| engine(self.name, "scroll", e))?;
        let page = page
            .into_iter()
            .map(|r| self.to_point(r.id, r.payload, r.vector))
            .collect::<Result<Vec<_>>>()?;
        let next = match next {
            None => None,
            Some(PointId::Uuid(u)) => Some(u),
            Some(PointId::NumId(n)) => {
                return Err(Error::Corrupt {
                    collection: self.name.to_string(),
                    id: n.to_string(),
                    what: "numeric id: not written by this crate".into(),
                })
            }
        };
        Ok((page, next))
    }

    fn count(&self, filter: &Filter) -> Result<usize> {
        self.shard()?
            .count(CountRequest {
                filter: edge_filter(self.name, filter)?,
                exact: true,
            })
            .map_err(|e| engine(self.name, "count", e))
    }

    fn search(&self, query: &Nearest) -> Result<Vec<Scored>> {
        let hits = self
            .shard()?
            .query(QueryRequest {
                prefetches: Vec::new(),
                query: Some(nearest(query)),
                filter: edge_filter(self.name, &query.filter)?,
                score_threshold: None,
                limit: query.limit,
                offset: 0,
                params: Some(rescored(query.limit)),
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Bool(false),
            })
            .map_err(|e| engine(self.name, "query", e))?;
        self.scored(hits)
    }

    fn formula(&self, query: &FormulaQuery) -> Result<Vec<Scored>> {
        let [cross, square, constant, alpha] = query.terms();
        let var = |name: &str| Expression::Variable(name.into());
        let formula = Formula {
            formula: Expression::Sum(vec![
                Expression::Mult(vec![
                    Expression::Constant(cross),
                    var(INDEX_NORM),
                    var("$score"),
                ]),
                Expression::Mult(vec![
                    Expression::Constant(square),
                    var(INDEX_NORM),
                    var(INDEX_NORM),
                ]),
                Expression::Constant(constant),
                Expression::Mult(vec![Expression::Constant(alpha), var(COMPLEXITY)]),
            ]),
            defaults: HashMap::from([
                (INDEX_NORM.to_string(), serde_json::json!(0.0)),
                (COMPLEXITY.to_string(), serde_json::json!(0.0)),
            ]),
        };
        let formula = formula
            .try_into()
            .map_err(|e| engine(self.name, "parse formula", e))?;
        let p = &query.prefetch;
        let hits = self
            .shard()?
            .query(QueryRequest {
                prefetches: vec![Prefetch {
                    prefetches: Vec::new(),
                    query: Some(nearest(p)),
                    limit: p.limit,
                    params: Some(rescored(p.limit)),
                    filter: edge_filter(self.name, &p.filter)?,
                    score_threshold: None,
                }],
                query: Some(ScoringQuery::Formula(formula)),
                filter: None,
                score_threshold: None,
                limit: query.limit,
                offset: 0,
                params: None,
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Bool(false),
            })
            .map_err(|e| engine(self.name, "formula query", e))?;
        self.scored(hits)
    }

    fn optimize(&self) -> Result<()> {
        self.shard()?
            .optimize()
            .map_err(|e| engine(self.name, "optimize", e))?;
        self.compact()
    }

    fn flush(&self) {
        if let Some(shard) = self
            .shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            shard.flush();
        }
    }
}

fn nearest(q: &Nearest) -> ScoringQuery {
    ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery::new(
        VectorInternal::Dense(q.vector.clone()),
        q.using,
    )))
}

fn with_vector(v: WithVectors) -> WithVector {
    match v {
        WithVectors::No => WithVector::Bool(false),
        WithVectors::All => WithVector::Bool(true),
        WithVectors::Only(names) => {
            WithVector::Selector(names.iter().map(|n| n.to_string()).collect())
        }
    }
}

/// A payload key as the engine's path type.
fn json_path(collection: &str, key: &str) -> Result<JsonPath> {
    key.parse()
        .map_err(|_| engine(collection, "parse payload key", format!("`{key}`")))
}

fn edge_filter(collection: &str, f: &Filter) -> Result<Option<qdrant_edge::Filter>> {
    if f.is_empty() {
        return Ok(None);
    }
    let must = f
        .must
        .iter()
        .map(|c| {
            Ok(qdrant_edge::Condition::Field(match c {
                Condition::Equals { key, value } => FieldCondition::new_match(
                    json_path(collection, key)?,
                    Match::from(value.clone()),
                ),
                Condition::AtLeast { key, value } => FieldCondition::new_range(
                    json_path(collection, key)?,
                    Range {
                        gte: Some(OrderedFloat(*value)),
                        lt: None,
                        gt: None,
                        lte: None,
                    },
                ),
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    let must_not = (!f.exclude_ids.is_empty()).then(|| {
        vec![qdrant_edge::Condition::HasId(
            f.exclude_ids.iter().map(|&id| PointId::Uuid(id)).collect(),
        )]
    });
    Ok(Some(qdrant_edge::Filter {
        should: None,
        min_should: None,
        must: (!must.is_empty()).then_some(must),
        must_not,
    }))
}

/// Checks that a reopened shard has every expected vector with the expected size and distance.
fn check_config(path: &Path, config: &EdgeConfig, vectors: &[VectorSpec]) -> Result<()> {
    for v in vectors {
        match config.vectors.get(v.name) {
            None => {
                return Err(Error::store(
                    path,
                    format!("the collection has no vector named `{}`", v.name),
                ))
            }
            Some(p) if p.size != v.size || p.distance != distance(v) => {
                return Err(Error::store(
                    path,
                    format!(
                        "vector `{}` is {}×{:?} in the collection but the store expects {}×{:?}",
                        v.name,
                        p.size,
                        p.distance,
                        v.size,
                        distance(v)
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Wraps an engine error.
fn engine(collection: &str, operation: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Engine {
        collection: collection.to_string(),
        operation,
        message: e.to_string(),
    }
}
