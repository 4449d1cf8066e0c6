//! One Qdrant collection held by the embedded engine (Qdrant Edge): a shard in its own folder.
//!
//! Qdrant Edge 0.7 has no notion of collections: an [`EdgeShard`] is one collection's data
//! (WAL + segments) in one folder. This wrapper gives each shard a name for error messages,
//! checks on reopening that the folder holds the vectors the store expects, and turns the
//! engine's errors into [`Error::Engine`].

use std::path::Path;

use qdrant_edge::{
    CountRequest, Distance, EdgeConfig, EdgeShard, EdgeVectorParams, HnswIndexConfig, Payload,
    PayloadOps, PointId, PointInsertOperations, PointOperations, PointStruct, QueryRequest, Record,
    ScoredPoint, ScrollRequest, SetPayloadOp, UpdateOperation, WithPayloadInterface, WithVector,
};
use uuid::Uuid;

use crate::{Error, Result};

/// The file Qdrant Edge writes its shard configuration to; its presence marks a shard folder.
const EDGE_CONFIG_FILE: &str = "edge_config.json";

/// Points read per page when listing a collection.
const SCROLL_PAGE: usize = 256;

/// One named dense vector of a collection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VectorSpec {
    /// The vector's name.
    pub name: &'static str,
    /// Its length.
    pub size: usize,
    /// `true`: searched by cosine through an HNSW index. `false`: stored for exact re-ranking
    /// only (dot distance, memory-mapped, no HNSW graph).
    pub indexed: bool,
}

impl VectorSpec {
    fn params(&self) -> EdgeVectorParams {
        if self.indexed {
            EdgeVectorParams::builder(self.size, Distance::Cosine).build()
        } else {
            // m = 0 builds no graph: these vectors are read by id, never searched.
            let no_graph = HnswIndexConfig {
                m: 0,
                ..HnswIndexConfig::default()
            };
            EdgeVectorParams::builder(self.size, Distance::Dot)
                .on_disk(true)
                .hnsw_config(no_graph)
                .build()
        }
    }

    fn distance(&self) -> Distance {
        if self.indexed {
            Distance::Cosine
        } else {
            Distance::Dot
        }
    }
}

/// A named Qdrant Edge shard.
pub(crate) struct Collection {
    name: &'static str,
    shard: EdgeShard,
}

impl Collection {
    /// Opens the collection in `path`, creating it with `vectors` when the folder holds none.
    ///
    /// Errors: [`Error::Store`] when an existing collection lacks one of `vectors` or has it
    /// with another size or distance; [`Error::Engine`] when the engine cannot open it.
    pub fn open_or_create(path: &Path, name: &'static str, vectors: &[VectorSpec]) -> Result<Self> {
        let shard = if path.join(EDGE_CONFIG_FILE).is_file() {
            let shard = EdgeShard::load(path, None).map_err(|e| engine(name, "open", e))?;
            check_config(path, &shard.config(), vectors)?;
            shard
        } else {
            std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
            let config = vectors
                .iter()
                .fold(EdgeConfig::builder(), |b, v| b.vector(v.name, v.params()))
                .build();
            EdgeShard::new(path, config).map_err(|e| engine(name, "create", e))?
        };
        Ok(Collection { name, shard })
    }

    /// The collection's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Inserts or replaces points (same id: the old point is replaced whole).
    pub fn upsert(&self, points: Vec<PointStruct>) -> Result<()> {
        let points = points.into_iter().map(Into::into).collect();
        self.shard
            .update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
            .map_err(|e| engine(self.name, "upsert", e))
    }

    /// Sets (adds or overwrites) payload keys of one point, keeping the others.
    pub fn set_payload(
        &self,
        id: Uuid,
        payload: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        self.shard
            .update(UpdateOperation::PayloadOperation(PayloadOps::SetPayload(
                SetPayloadOp {
                    payload: Payload(payload.into_iter().collect()),
                    points: Some(vec![PointId::Uuid(id)]),
                    filter: None,
                    key: None,
                },
            )))
            .map_err(|e| engine(self.name, "set payload", e))
    }

    /// Deletes points; absent ids are ignored.
    pub fn delete(&self, ids: &[Uuid]) -> Result<()> {
        self.shard
            .update(UpdateOperation::PointOperation(
                PointOperations::DeletePoints {
                    ids: ids.iter().map(|&id| PointId::Uuid(id)).collect(),
                },
            ))
            .map_err(|e| engine(self.name, "delete", e))
    }

    /// The points with these ids that exist, with payload and (when `vectors`) every vector.
    pub fn retrieve(&self, ids: &[Uuid], vectors: bool) -> Result<Vec<Record>> {
        let ids: Vec<PointId> = ids.iter().map(|&id| PointId::Uuid(id)).collect();
        self.shard
            .retrieve(
                &ids,
                Some(WithPayloadInterface::Bool(true)),
                Some(WithVector::Bool(vectors)),
            )
            .map_err(|e| engine(self.name, "retrieve", e))
    }

    /// Every point, with payload and without vectors, in id order.
    pub fn scroll_all(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut offset = None;
        loop {
            let (page, next) = self
                .shard
                .scroll(ScrollRequest {
                    offset,
                    limit: Some(SCROLL_PAGE),
                    filter: None,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                })
                .map_err(|e| engine(self.name, "scroll", e))?;
            out.extend(page);
            match next {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// The exact number of points.
    pub fn count(&self) -> Result<usize> {
        self.shard
            .count(CountRequest {
                filter: None,
                exact: true,
            })
            .map_err(|e| engine(self.name, "count", e))
    }

    /// Runs a Query API request (prefetches, formula re-scoring, ...) on this collection.
    pub fn query(&self, request: QueryRequest) -> Result<Vec<ScoredPoint>> {
        self.shard
            .query(request)
            .map_err(|e| engine(self.name, "query", e))
    }

    /// Builds the HNSW indexes and merges segments (blocking). Qdrant Edge never does this by
    /// itself: until called, searches scan every vector.
    pub fn optimize(&self) -> Result<bool> {
        self.shard
            .optimize()
            .map_err(|e| engine(self.name, "optimize", e))
    }

    /// Writes the WAL and every segment to disk.
    pub fn flush(&self) {
        self.shard.flush();
    }
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
            Some(p) if p.size != v.size || p.distance != v.distance() => {
                return Err(Error::store(
                    path,
                    format!(
                        "vector `{}` is {}×{:?} in the collection but the store expects {}×{:?}",
                        v.name,
                        p.size,
                        p.distance,
                        v.size,
                        v.distance()
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
