//! The two places a store can live, behind one small internal interface.
//!
//! A [`Collection`] is one Qdrant collection seen through backend-neutral types: a [`Point`]
//! is a UUID, named dense vectors and a JSON payload; a query is a cosine nearest-neighbour
//! search on one named vector ([`Nearest`]) with an optional payload [`Filter`], optionally
//! wrapped as a prefetch re-scored by the formula `$score + alpha * variable`. Two
//! implementations:
//!
//! - [`embedded`]: Qdrant Edge (the engine in this process), one shard folder per collection,
//!   plus the folder-level files of an embedded store (lock, manifest, trivial embedding);
//! - [`remote`]: a Qdrant server through `qdrant-client` (gRPC), with the manifest and the
//!   trivial embedding in a third collection, `{prefix}meta`.
//!
//! [`Location`] is the store-level half: where the manifest and the trivial embedding are
//! kept, and how collections are opened.

pub(crate) mod embedded;
pub(crate) mod remote;

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use task2vec::embedding::Embedding;
use uuid::Uuid;

use crate::config::StoreConfig;
use crate::store::Manifest;
use crate::{Result, VectorSpace};

/// A point's JSON payload (a JSON object).
pub(crate) type Payload = Map<String, Value>;

/// One point: id, named dense vectors, payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Point {
    /// Its id.
    pub id: Uuid,
    /// Named dense vectors (only those asked for when read back).
    pub vectors: BTreeMap<String, Vec<f32>>,
    /// Its payload (empty when not asked for).
    pub payload: Payload,
}

/// A point found by a query, with its score (higher is better).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scored {
    /// The point (payload and vectors as the query asked).
    pub point: Point,
    /// Qdrant's score: cosine similarity, or the formula's value.
    pub score: f32,
}

/// The HNSW beam width (`ef`) of a search for the `limit` nearest points: a little wider than
/// the result so that the graph walk does not cut the prefetch short (measured in
/// BENCHMARKS.md, "Expert selection").
pub(crate) fn search_ef(limit: usize) -> usize {
    (limit + limit / 4).max(128)
}

/// One named dense vector of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VectorSpec {
    /// The vector's name.
    pub name: &'static str,
    /// Its length.
    pub size: usize,
    /// What it is for, which decides how the engine stores it.
    pub kind: VectorKind,
}

/// The roles of a named vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VectorKind {
    /// An index vector searched by cosine ([`IndexPrecision::F32`](crate::IndexPrecision)):
    /// HNSW graph, the f32 vectors in RAM.
    Index,
    /// An index vector searched by cosine ([`IndexPrecision::Int8`](crate::IndexPrecision)):
    /// HNSW graph, an int8 scalar quantized copy in RAM, the f32 originals on disk for
    /// rescoring.
    QuantizedIndex,
    /// An index vector kept for readers but never searched by the store (the experts'
    /// `task2vec`, equal to their `model2vec`): cosine, on disk, no graph, so it costs neither
    /// RAM nor indexing time.
    IndexCopy,
    /// A raw vector, read by id only for the exact re-rank: dot distance, on disk, no graph.
    Raw,
}

impl VectorKind {
    /// Whether it is an index vector, with cosine distance (else a raw vector, read by id).
    pub fn is_index(self) -> bool {
        self != VectorKind::Raw
    }
}

/// The type of a payload index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    /// Exact string match (`dataset_uri`, `tag_pairs`).
    Keyword,
    /// Integer ranges (`samples`, `n_classes`).
    Integer,
}

/// A payload field the store filters on, indexed where the backend supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexedField {
    /// The payload key.
    pub key: &'static str,
    /// The index type.
    pub kind: FieldKind,
}

/// One condition on the payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    /// The keyword field `key` equals `value` (for an array field: one of its values does).
    Equals {
        /// The payload key.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// The numeric field `key` is at least `value`.
    AtLeast {
        /// The payload key.
        key: &'static str,
        /// The lower bound.
        value: f64,
    },
}

/// A payload filter: every condition must hold, and the point must not be one of
/// `exclude_ids`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Filter {
    /// Conditions that must all hold.
    pub must: Vec<Condition>,
    /// Points left out.
    pub exclude_ids: Vec<Uuid>,
}

impl Filter {
    /// Whether the filter lets every point through.
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.exclude_ids.is_empty()
    }
}

/// Which vectors a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WithVectors {
    /// None.
    No,
    /// Every named vector the point has.
    All,
    /// Only these.
    Only(&'static [&'static str]),
}

/// A cosine nearest-neighbour search on one named vector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Nearest {
    /// The named vector searched.
    pub using: &'static str,
    /// The query vector (the engine normalises it).
    pub vector: Vec<f32>,
    /// Only points passing this filter.
    pub filter: Filter,
    /// Number of points returned.
    pub limit: usize,
}

/// `prefetch` re-scored by the formula that approximates `−d_asym` from the cosine `$score`
/// and the payload keys `index_norm` (`|u|`) and `complexity` (`c`), best first:
///
/// ```text
/// 2 s |v| · |u| · $score  −  s · |u|²  −  s |v|²  +  alpha · c   =  −(s |u − v|² − alpha · c)
/// ```
///
/// (`v` the query's index vector; both payload keys 0 where absent).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FormulaQuery {
    /// The cosine prefetch.
    pub prefetch: Nearest,
    /// `s`: `d_sym` per squared Euclidean distance of index vectors.
    pub slope: f64,
    /// `|v|`: the norm of the query's index vector.
    pub query_norm: f64,
    /// The weight of the complexity term.
    pub alpha: f64,
    /// Number of points returned.
    pub limit: usize,
}

/// Payload key: the Euclidean norm of a point's index vector.
pub(crate) const INDEX_NORM: &str = "index_norm";
/// Payload key: `d_sym(point, t0)`.
pub(crate) const COMPLEXITY: &str = "complexity";

impl FormulaQuery {
    /// The constant factors `(2 s |v|, −s, −s |v|², alpha)` of the four terms, as f32 (what
    /// Qdrant's formula constants are).
    pub fn terms(&self) -> [f32; 4] {
        let (s, v) = (self.slope, self.query_norm);
        [
            (2.0 * s * v) as f32,
            (-s) as f32,
            (-s * v * v) as f32,
            self.alpha as f32,
        ]
    }
}

/// One Qdrant collection, whichever backend holds it.
///
/// Writes are durable when they return (embedded: in the write-ahead log; remote: acknowledged
/// with `wait = true`).
pub(crate) trait Collection: Send + Sync {
    /// The collection's name, for messages (`tasks`, or `task2vec_tasks` on a server).
    fn name(&self) -> &str;
    /// Inserts or replaces points (same id: the old point is replaced whole).
    fn upsert(&self, points: Vec<Point>) -> Result<()>;
    /// Deletes points; absent ids are ignored.
    fn delete(&self, ids: &[Uuid]) -> Result<()>;
    /// The points with these ids that exist, with payload and the vectors asked for.
    fn retrieve(&self, ids: &[Uuid], vectors: WithVectors) -> Result<Vec<Point>>;
    /// One page of the points passing `filter`, in id order, from `offset` on; with the next
    /// page's offset, `None` after the last page.
    fn scroll(
        &self,
        filter: &Filter,
        vectors: WithVectors,
        offset: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<Point>, Option<Uuid>)>;
    /// The exact number of points passing `filter`.
    fn count(&self, filter: &Filter) -> Result<usize>;
    /// Cosine nearest neighbours, best first: ids and scores only (no payload, no vectors;
    /// `retrieve` reads what the caller needs).
    fn search(&self, query: &Nearest) -> Result<Vec<Scored>>;
    /// A formula query, best first, points without payload or vectors.
    fn formula(&self, query: &FormulaQuery) -> Result<Vec<Scored>>;
    /// Builds indexes and merges segments where the backend leaves it to the caller
    /// (embedded; a server optimises by itself).
    fn optimize(&self) -> Result<()>;
    /// Writes everything to disk (embedded; a server persists by itself).
    fn flush(&self);
}

/// Points read per page when a whole collection is listed.
pub(crate) const SCROLL_PAGE: usize = 256;

/// Every point passing `filter`, payload only.
pub(crate) fn scroll_all(c: &dyn Collection, filter: &Filter) -> Result<Vec<Point>> {
    let mut out = Vec::new();
    let mut offset = None;
    loop {
        let (page, next) = c.scroll(filter, WithVectors::No, offset, SCROLL_PAGE)?;
        out.extend(page);
        match next {
            Some(next) => offset = Some(next),
            None => return Ok(out),
        }
    }
}

/// Where a store's manifest, trivial embedding and collections are.
pub(crate) enum Location {
    /// A folder, locked while open.
    Embedded(embedded::Folder),
    /// Collections on a Qdrant server.
    Remote(remote::Server),
}

impl Location {
    /// Opens the folder (taking its lock; creating it when `create`) or connects to the server
    /// (checking that it answers).
    pub fn connect(config: &StoreConfig, create: bool) -> Result<Location> {
        Ok(match config {
            StoreConfig::Embedded { path } => {
                Location::Embedded(embedded::Folder::open(path, create)?)
            }
            StoreConfig::Remote(r) => Location::Remote(remote::Server::connect(r)?),
        })
    }

    /// The manifest, `None` when no store is there yet.
    pub fn read_manifest(&self) -> Result<Option<Manifest>> {
        match self {
            Location::Embedded(f) => f.read_manifest(),
            Location::Remote(s) => s.read_manifest(),
        }
    }

    /// Creates the store: writes the manifest (and on a server the meta collection).
    pub fn create(&self, manifest: &Manifest) -> Result<()> {
        match self {
            Location::Embedded(f) => f.write_manifest(manifest),
            Location::Remote(s) => s.create(manifest),
        }
    }

    /// The stored trivial embedding, with the space's layout; `None` when not set.
    pub fn read_trivial(&self, space: &VectorSpace) -> Result<Option<Embedding>> {
        match self {
            Location::Embedded(f) => f.read_trivial(space),
            Location::Remote(s) => s.read_trivial(space),
        }
    }

    /// Saves the trivial embedding, replacing any.
    pub fn write_trivial(&self, trivial: &Embedding) -> Result<()> {
        match self {
            Location::Embedded(f) => f.write_trivial(trivial),
            Location::Remote(s) => s.write_trivial(trivial),
        }
    }

    /// Opens the collection `name`, creating it with `vectors` and `indexes` when absent, and
    /// checking an existing one has `vectors`.
    pub fn open_collection(
        &self,
        name: &'static str,
        vectors: &[VectorSpec],
        indexes: &[IndexedField],
    ) -> Result<Box<dyn Collection>> {
        match self {
            Location::Embedded(f) => f.open_collection(name, vectors, indexes),
            Location::Remote(s) => s.open_collection(name, vectors, indexes),
        }
    }

    /// The data folder of an embedded store.
    pub fn dir(&self) -> Option<&std::path::Path> {
        match self {
            Location::Embedded(f) => Some(f.dir()),
            Location::Remote(_) => None,
        }
    }
}
