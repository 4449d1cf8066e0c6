//! The remote backend: a Qdrant server or cluster through `qdrant-client` (gRPC).
//!
//! The store's API is synchronous, the client's is async: [`Server`] owns a small tokio
//! runtime (one worker thread) and blocks on it for every request. That is allowed on any
//! thread that is not itself driving an async runtime, including a
//! `tokio::task::spawn_blocking` closure (how the daemon calls the store); it panics (tokio's
//! rule) on an async worker thread. Every request is bounded by the configured connection and
//! request timeouts, so an unreachable server gives [`Error::Remote`] and never hangs.
//!
//! Collections are `{prefix}tasks`, `{prefix}experts` and `{prefix}meta`; the last holds two
//! points: the manifest (payload `manifest`, the same JSON document as an embedded store's
//! `store.json`, as text) and, once set, the trivial embedding (vectors `hessian` and `scale`,
//! payload `meta`, its metadata as JSON text).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qdrant_client::qdrant::{
    point_id::PointIdOptions, vectors_config, vectors_output::VectorsOptions, Condition,
    CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, Expression, FieldType, FormulaBuilder, GetPointsBuilder,
    HnswConfigDiffBuilder, PointId, PointStruct, PointsIdsList, PrefetchQueryBuilder,
    QuantizationSearchParamsBuilder, QuantizationType, Query, QueryPointsBuilder, Range,
    ScalarQuantizationBuilder, ScrollPointsBuilder, SearchParamsBuilder, UpsertPointsBuilder,
    Value, VectorParamsBuilder, VectorsConfig, VectorsConfigBuilder, VectorsOutput,
    VectorsSelector,
};
use qdrant_client::{Payload as QdrantPayload, Qdrant, QdrantError};
use task2vec::embedding::{Embedding, EmbeddingMeta};
use uuid::Uuid;

use super::{
    Collection, FieldKind, Filter, FormulaQuery, IndexedField, Nearest, Payload, Point, Scored,
    VectorKind, VectorSpec, WithVectors, COMPLEXITY, INDEX_NORM,
};
use crate::config::RemoteConfig;
use crate::point_id::NAMESPACE;
use crate::store::{check_manifest_version, Manifest, HESSIAN, SCALE};
use crate::{Error, Result, VectorSpace};

/// Suffix of the collection holding the manifest and the trivial embedding.
pub(crate) const META: &str = "meta";
/// Floats sent in one upsert request at most (16 MB; Qdrant refuses requests over 32 MB).
const MAX_FLOATS_PER_REQUEST: usize = 4 << 20;

/// The id of the manifest point in `{prefix}meta`: UUID v5 of `task2vec-meta\nmanifest`.
pub(crate) fn manifest_point_id() -> Uuid {
    Uuid::new_v5(&NAMESPACE, b"task2vec-meta\nmanifest")
}

/// The id of the trivial-embedding point in `{prefix}meta`: UUID v5 of
/// `task2vec-meta\ntrivial`.
pub(crate) fn trivial_point_id() -> Uuid {
    Uuid::new_v5(&NAMESPACE, b"task2vec-meta\ntrivial")
}

/// The client and the runtime it runs on.
struct Client {
    config: RemoteConfig,
    qdrant: Qdrant,
    /// Taken on drop and shut down in the background, so dropping a store never blocks
    /// (nor panics inside an async context).
    runtime: Option<tokio::runtime::Runtime>,
    /// Bound of one call: connection plus request timeout, plus a margin.
    deadline: Duration,
}

impl Client {
    /// Runs one request to completion on the client's runtime.
    fn call<T>(
        &self,
        operation: impl FnOnce() -> String,
        request: impl Future<Output = Result<T, QdrantError>>,
    ) -> Result<T> {
        let Some(runtime) = self.runtime.as_ref() else {
            return Err(self.error(operation(), "the client is shut down".into()));
        };
        // The timer is made inside the runtime: it needs the runtime's time driver.
        let deadline = self.deadline;
        match runtime.block_on(async move { tokio::time::timeout(deadline, request).await }) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(operation(), describe(&e))),
            Err(_) => Err(self.error(
                operation(),
                format!("no answer within {:.1} s", self.deadline.as_secs_f64()),
            )),
        }
    }

    fn error(&self, operation: String, message: String) -> Error {
        Error::Remote {
            url: self.config.url.clone(),
            operation,
            message,
        }
    }

    fn collection_name(&self, name: &str) -> String {
        format!("{}{name}", self.config.collection_prefix)
    }

    fn exists(&self, collection: &str) -> Result<bool> {
        self.call(
            || format!("check whether collection `{collection}` exists"),
            self.qdrant.collection_exists(collection),
        )
    }

    /// Creates `collection` with `vectors` (sharding and replication from the configuration);
    /// a collection created meanwhile by another client is accepted.
    fn create(&self, collection: &str, vectors: &[VectorSpec]) -> Result<()> {
        let mut config = VectorsConfigBuilder::default();
        for v in vectors {
            config.add_named_vector_params(v.name, self.vector_params(v));
        }
        let mut request = CreateCollectionBuilder::new(collection)
            .vectors_config(config)
            .on_disk_payload(true);
        if let Some(n) = self.config.shard_number {
            request = request.shard_number(n);
        }
        if let Some(n) = self.config.replication_factor {
            request = request.replication_factor(n);
        }
        if let Some(n) = self.config.write_consistency_factor {
            request = request.write_consistency_factor(n);
        }
        match self.call(
            || format!("create collection `{collection}`"),
            self.qdrant.create_collection(request),
        ) {
            Ok(_) => Ok(()),
            // Two clients creating the same store at once: the other one won.
            Err(_) if self.exists(collection).unwrap_or(false) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn vector_params(&self, v: &VectorSpec) -> VectorParamsBuilder {
        match v.kind {
            VectorKind::Index => {
                VectorParamsBuilder::new(v.size as u64, Distance::Cosine).on_disk(false)
            }
            VectorKind::QuantizedIndex => VectorParamsBuilder::new(v.size as u64, Distance::Cosine)
                .on_disk(self.config.on_disk)
                .quantization_config(
                    ScalarQuantizationBuilder::default()
                        .r#type(QuantizationType::Int8.into())
                        .quantile(0.99)
                        .always_ram(true),
                ),
            // m = 0 builds no graph: these vectors are read by id, never searched.
            VectorKind::IndexCopy => VectorParamsBuilder::new(v.size as u64, Distance::Cosine)
                .on_disk(self.config.on_disk)
                .hnsw_config(HnswConfigDiffBuilder::default().m(0)),
            VectorKind::Raw => VectorParamsBuilder::new(v.size as u64, Distance::Dot)
                .on_disk(self.config.on_disk)
                .hnsw_config(HnswConfigDiffBuilder::default().m(0)),
        }
    }

    /// Checks that an existing collection has `vectors` and creates the missing payload
    /// indexes.
    fn check_and_index(
        &self,
        collection: &str,
        vectors: &[VectorSpec],
        indexes: &[IndexedField],
    ) -> Result<()> {
        let info = self
            .call(
                || format!("read the configuration of collection `{collection}`"),
                self.qdrant.collection_info(collection),
            )?
            .result
            .ok_or_else(|| {
                self.error(
                    format!("read the configuration of collection `{collection}`"),
                    "the server sent no collection info".into(),
                )
            })?;
        let params = info
            .config
            .as_ref()
            .and_then(|c| c.params.as_ref())
            .and_then(|p| p.vectors_config.as_ref())
            .and_then(|v: &VectorsConfig| v.config.as_ref());
        let named = match params {
            Some(vectors_config::Config::ParamsMap(m)) => &m.map,
            _ => {
                return Err(Error::store(
                    format!("{} {collection}", self.config.url),
                    "the collection has no named vectors: not made by this library",
                ))
            }
        };
        for v in vectors {
            let expected = if v.kind.is_index() {
                Distance::Cosine
            } else {
                Distance::Dot
            };
            match named.get(v.name) {
                None => {
                    return Err(Error::store(
                        format!("{} {collection}", self.config.url),
                        format!("the collection has no vector named `{}`", v.name),
                    ))
                }
                Some(p) if p.size != v.size as u64 || p.distance != expected as i32 => {
                    return Err(Error::store(
                        format!("{} {collection}", self.config.url),
                        format!(
                            "vector `{}` is {}×{:?} in the collection but the store expects \
                             {}×{:?}",
                            v.name,
                            p.size,
                            Distance::try_from(p.distance).unwrap_or(Distance::UnknownDistance),
                            v.size,
                            expected
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        for field in indexes {
            if info.payload_schema.contains_key(field.key) {
                continue;
            }
            let kind = match field.kind {
                FieldKind::Keyword => FieldType::Keyword,
                FieldKind::Integer => FieldType::Integer,
            };
            self.call(
                || format!("create payload index `{}` on `{collection}`", field.key),
                self.qdrant.create_field_index(
                    CreateFieldIndexCollectionBuilder::new(collection, field.key, kind).wait(true),
                ),
            )?;
        }
        Ok(())
    }

    fn get(&self, collection: &str, ids: &[Uuid], vectors: WithVectors) -> Result<Vec<Point>> {
        let ids: Vec<PointId> = ids.iter().map(|id| id.to_string().into()).collect();
        let request = GetPointsBuilder::new(collection, ids)
            .with_payload(true)
            .with_vectors(selector(vectors));
        let points = self
            .call(
                || format!("retrieve points from `{collection}`"),
                self.qdrant.get_points(request),
            )?
            .result;
        points
            .into_iter()
            .map(|p| to_point(collection, p.id, p.payload, p.vectors))
            .collect()
    }

    fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<()> {
        let mut batch = Vec::new();
        let mut floats = 0;
        for p in points {
            let n: usize = p.vectors.values().map(Vec::len).sum();
            if !batch.is_empty() && floats + n > MAX_FLOATS_PER_REQUEST {
                self.upsert_batch(collection, std::mem::take(&mut batch))?;
                floats = 0;
            }
            floats += n;
            let vectors: HashMap<String, Vec<f32>> = p.vectors.into_iter().collect();
            batch.push(PointStruct::new(
                p.id.to_string(),
                vectors,
                QdrantPayload::from(p.payload),
            ));
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.upsert_batch(collection, batch)
    }

    fn upsert_batch(&self, collection: &str, batch: Vec<PointStruct>) -> Result<()> {
        let n = batch.len();
        self.call(
            || format!("upsert {n} points into `{collection}`"),
            self.qdrant
                .upsert_points(UpsertPointsBuilder::new(collection, batch).wait(true)),
        )
        .map(|_| ())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A Qdrant server holding (or about to hold) a store.
pub(crate) struct Server {
    client: Arc<Client>,
}

impl Server {
    /// Makes a client for the server in `config` and checks that the server answers.
    ///
    /// Errors: [`Error::Store`] for settings that cannot work (timeouts, URL scheme, prefix);
    /// [`Error::Remote`] when the server does not answer its health check.
    pub fn connect(config: &RemoteConfig) -> Result<Server> {
        config.validate()?;
        let timeout = config.timeout()?;
        let connect_timeout = config.connect_timeout()?;
        let remote = |operation: &str, message: String| Error::Remote {
            url: config.url.clone(),
            operation: operation.into(),
            message,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("task2vec-qdrant-client")
            .enable_all()
            .build()
            .map_err(|e| remote("start the client's runtime", e.to_string()))?;
        let mut builder = Qdrant::from_url(&config.url)
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .skip_compatibility_check();
        if let Some(key) = &config.api_key {
            builder = builder.api_key(key.clone());
        }
        let qdrant = {
            // The client's channel pool is made inside the runtime it will run on.
            let _entered = runtime.enter();
            builder
                .build()
                .map_err(|e| remote("create the client", describe(&e)))?
        };
        let client = Client {
            config: config.clone(),
            qdrant,
            runtime: Some(runtime),
            deadline: connect_timeout + timeout + Duration::from_secs(1),
        };
        client.call(|| "health check".into(), client.qdrant.health_check())?;
        Ok(Server {
            client: Arc::new(client),
        })
    }

    fn meta(&self) -> String {
        self.client.collection_name(META)
    }

    /// The manifest, `None` when the server holds no store under this prefix.
    pub fn read_manifest(&self) -> Result<Option<Manifest>> {
        let meta = self.meta();
        if !self.client.exists(&meta)? {
            return Ok(None);
        }
        let Some(point) = self
            .client
            .get(&meta, &[manifest_point_id()], WithVectors::No)?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let where_ = || format!("{} {meta}", self.client.config.url);
        let text = point
            .payload
            .get("manifest")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| Error::store(where_(), "the manifest point has no `manifest` text"))?;
        let m: Manifest = serde_json::from_str(text)
            .map_err(|e| Error::store(where_(), format!("manifest does not parse: {e}")))?;
        check_manifest_version(&m).map_err(|what| Error::store(where_(), what))?;
        Ok(Some(m))
    }

    /// Creates `{prefix}meta` and writes the manifest into it.
    pub fn create(&self, manifest: &Manifest) -> Result<()> {
        let meta = self.meta();
        if !self.client.exists(&meta)? {
            self.client
                .create(&meta, &meta_vectors(manifest.space.dimension))?;
        }
        let text = serde_json::to_string(manifest).map_err(|e| {
            Error::store(
                &self.client.config.url,
                format!("manifest does not serialise: {e}"),
            )
        })?;
        let mut payload = Payload::new();
        payload.insert("kind".into(), "manifest".into());
        payload.insert("manifest".into(), text.into());
        self.client.upsert(
            &meta,
            vec![Point {
                id: manifest_point_id(),
                vectors: BTreeMap::new(),
                payload,
            }],
        )
    }

    /// The trivial embedding, when one was saved.
    pub fn read_trivial(&self, space: &VectorSpace) -> Result<Option<Embedding>> {
        let meta = self.meta();
        let Some(point) = self
            .client
            .get(&meta, &[trivial_point_id()], WithVectors::All)?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let corrupt = |what: &str| Error::Corrupt {
            collection: meta.clone(),
            id: trivial_point_id().to_string(),
            what: what.into(),
        };
        let text = point
            .payload
            .get("meta")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| corrupt("no `meta` text"))?;
        let mut m: EmbeddingMeta = serde_json::from_str(text)
            .map_err(|e| corrupt(&format!("`meta` does not parse: {e}")))?;
        m.layout = space.layout.clone();
        let mut vectors = point.vectors;
        let hessian = vectors
            .remove(HESSIAN)
            .ok_or_else(|| corrupt("no `hessian` vector"))?;
        let scale = vectors
            .remove(SCALE)
            .unwrap_or_else(|| vec![1.0; hessian.len()]);
        let t = Embedding {
            hessian,
            scale,
            meta: m,
        };
        space.check(&t)?;
        Ok(Some(t))
    }

    /// Saves the trivial embedding (replacing any).
    pub fn write_trivial(&self, trivial: &Embedding) -> Result<()> {
        let meta = self.meta();
        let mut m = trivial.meta.clone();
        m.layout = Vec::new();
        let text = serde_json::to_string(&m).map_err(|e| {
            Error::store(
                &self.client.config.url,
                format!("metadata does not serialise: {e}"),
            )
        })?;
        let mut payload = Payload::new();
        payload.insert("kind".into(), "trivial".into());
        payload.insert("meta".into(), text.into());
        let mut vectors = BTreeMap::from([(HESSIAN.to_string(), trivial.hessian.clone())]);
        if trivial.scale.iter().any(|&s| s != 1.0) {
            vectors.insert(SCALE.to_string(), trivial.scale.clone());
        }
        self.client.upsert(
            &meta,
            vec![Point {
                id: trivial_point_id(),
                vectors,
                payload,
            }],
        )
    }

    /// Opens `{prefix}{name}`, creating it when absent.
    pub fn open_collection(
        &self,
        name: &'static str,
        vectors: &[VectorSpec],
        indexes: &[IndexedField],
    ) -> Result<Box<dyn Collection>> {
        let full = self.client.collection_name(name);
        if !self.client.exists(&full)? {
            self.client.create(&full, vectors)?;
        }
        self.client.check_and_index(&full, vectors, indexes)?;
        Ok(Box::new(RemoteCollection {
            client: Arc::clone(&self.client),
            name: full,
        }))
    }
}

/// The vectors of `{prefix}meta`: the trivial embedding's raw vectors.
fn meta_vectors(dimension: usize) -> [VectorSpec; 2] {
    [HESSIAN, SCALE].map(|name| VectorSpec {
        name,
        size: dimension,
        kind: VectorKind::Raw,
    })
}

/// One collection on the server.
struct RemoteCollection {
    client: Arc<Client>,
    name: String,
}

impl RemoteCollection {
    fn scored(&self, hits: Vec<qdrant_client::qdrant::ScoredPoint>) -> Result<Vec<Scored>> {
        hits.into_iter()
            .map(|h| {
                Ok(Scored {
                    score: h.score,
                    point: to_point(&self.name, h.id, h.payload, h.vectors)?,
                })
            })
            .collect()
    }
}

impl Collection for RemoteCollection {
    fn name(&self) -> &str {
        &self.name
    }

    fn upsert(&self, points: Vec<Point>) -> Result<()> {
        self.client.upsert(&self.name, points)
    }

    fn delete(&self, ids: &[Uuid]) -> Result<()> {
        let request = DeletePointsBuilder::new(&self.name)
            .points(PointsIdsList {
                ids: ids.iter().map(|id| id.to_string().into()).collect(),
            })
            .wait(true);
        self.client
            .call(
                || format!("delete {} points from `{}`", ids.len(), self.name),
                self.client.qdrant.delete_points(request),
            )
            .map(|_| ())
    }

    fn retrieve(&self, ids: &[Uuid], vectors: WithVectors) -> Result<Vec<Point>> {
        self.client.get(&self.name, ids, vectors)
    }

    fn scroll(
        &self,
        filter: &Filter,
        vectors: WithVectors,
        offset: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<Point>, Option<Uuid>)> {
        let mut request = ScrollPointsBuilder::new(&self.name)
            .limit(u32::try_from(limit).unwrap_or(u32::MAX))
            .with_payload(true)
            .with_vectors(selector(vectors));
        if let Some(f) = remote_filter(filter) {
            request = request.filter(f);
        }
        if let Some(o) = offset {
            request = request.offset(PointId::from(o.to_string()));
        }
        let response = self.client.call(
            || format!("scroll `{}`", self.name),
            self.client.qdrant.scroll(request),
        )?;
        let page = response
            .result
            .into_iter()
            .map(|p| to_point(&self.name, p.id, p.payload, p.vectors))
            .collect::<Result<Vec<_>>>()?;
        let next = response
            .next_page_offset
            .map(|id| point_uuid(&self.name, Some(id)))
            .transpose()?;
        Ok((page, next))
    }

    fn count(&self, filter: &Filter) -> Result<usize> {
        let mut request = CountPointsBuilder::new(&self.name).exact(true);
        if let Some(f) = remote_filter(filter) {
            request = request.filter(f);
        }
        let n = self
            .client
            .call(
                || format!("count the points of `{}`", self.name),
                self.client.qdrant.count(request),
            )?
            .result
            .map(|r| r.count)
            .unwrap_or(0);
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn search(&self, query: &Nearest) -> Result<Vec<Scored>> {
        let mut request = QueryPointsBuilder::new(&self.name)
            .query(Query::new_nearest(query.vector.clone()))
            .using(query.using)
            .limit(query.limit as u64)
            .params(rescored(query.limit))
            .with_payload(false)
            .with_vectors(false);
        if let Some(f) = remote_filter(&query.filter) {
            request = request.filter(f);
        }
        let hits = self
            .client
            .call(
                || format!("query `{}`", self.name),
                self.client.qdrant.query(request),
            )?
            .result;
        self.scored(hits)
    }

    fn formula(&self, query: &FormulaQuery) -> Result<Vec<Scored>> {
        let p = &query.prefetch;
        let mut prefetch = PrefetchQueryBuilder::default()
            .query(Query::new_nearest(p.vector.clone()))
            .using(p.using)
            .limit(p.limit as u64)
            .params(rescored(p.limit));
        if let Some(f) = remote_filter(&p.filter) {
            prefetch = prefetch.filter(f);
        }
        let [cross, square, constant, alpha] = query.terms();
        let formula = FormulaBuilder::new(Expression::sum_with([
            Expression::mult_with([
                Expression::constant(cross),
                Expression::variable(INDEX_NORM),
                Expression::score(),
            ]),
            Expression::mult_with([
                Expression::constant(square),
                Expression::variable(INDEX_NORM),
                Expression::variable(INDEX_NORM),
            ]),
            Expression::constant(constant),
            Expression::mult_with([
                Expression::constant(alpha),
                Expression::variable(COMPLEXITY),
            ]),
        ]))
        .add_default(INDEX_NORM, 0.0_f64)
        .add_default(COMPLEXITY, 0.0_f64);
        let request = QueryPointsBuilder::new(&self.name)
            .add_prefetch(prefetch)
            .query(Query::new_formula(formula))
            .limit(query.limit as u64)
            .with_payload(false)
            .with_vectors(false);
        let hits = self
            .client
            .call(
                || format!("formula query on `{}`", self.name),
                self.client.qdrant.query(request),
            )?
            .result;
        self.scored(hits)
    }

    fn optimize(&self) -> Result<()> {
        // The server builds indexes and merges segments by itself.
        Ok(())
    }

    fn flush(&self) {
        // Writes were acknowledged with wait = true: the server has them.
    }
}

fn rescored(limit: usize) -> SearchParamsBuilder {
    SearchParamsBuilder::default()
        .hnsw_ef(super::search_ef(limit) as u64)
        .quantization(
            QuantizationSearchParamsBuilder::default()
                .ignore(false)
                .rescore(true),
        )
}

fn selector(v: WithVectors) -> qdrant_client::qdrant::with_vectors_selector::SelectorOptions {
    match v {
        WithVectors::No => false.into(),
        WithVectors::All => true.into(),
        WithVectors::Only(names) => {
            VectorsSelector::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).into()
        }
    }
}

fn remote_filter(f: &Filter) -> Option<qdrant_client::qdrant::Filter> {
    if f.is_empty() {
        return None;
    }
    let must: Vec<Condition> = f
        .must
        .iter()
        .map(|c| match c {
            super::Condition::Equals { key, value } => Condition::matches(*key, value.clone()),
            super::Condition::AtLeast { key, value } => Condition::range(
                *key,
                Range {
                    gte: Some(*value),
                    ..Range::default()
                },
            ),
        })
        .collect();
    let must_not = if f.exclude_ids.is_empty() {
        Vec::new()
    } else {
        vec![Condition::has_id(
            f.exclude_ids.iter().map(|id| PointId::from(id.to_string())),
        )]
    };
    Some(qdrant_client::qdrant::Filter {
        must,
        must_not,
        ..Default::default()
    })
}

fn point_uuid(collection: &str, id: Option<PointId>) -> Result<Uuid> {
    let corrupt = |id: String, what: &str| Error::Corrupt {
        collection: collection.to_string(),
        id,
        what: what.into(),
    };
    match id.and_then(|p| p.point_id_options) {
        Some(PointIdOptions::Uuid(s)) => s
            .parse()
            .map_err(|_| corrupt(s.clone(), "the server sent an id that is not a UUID")),
        Some(PointIdOptions::Num(n)) => Err(corrupt(
            n.to_string(),
            "numeric id: not written by this crate",
        )),
        None => Err(corrupt("?".into(), "the server sent a point without id")),
    }
}

fn to_point(
    collection: &str,
    id: Option<PointId>,
    payload: HashMap<String, Value>,
    vectors: Option<VectorsOutput>,
) -> Result<Point> {
    let id = point_uuid(collection, id)?;
    let corrupt = |what: String| Error::Corrupt {
        collection: collection.to_string(),
        id: id.to_string(),
        what,
    };
    let mut out = BTreeMap::new();
    match vectors.and_then(|v| v.vectors_options) {
        None => {}
        Some(VectorsOptions::Vectors(named)) => {
            for (name, v) in named.vectors {
                match v.into_vector() {
                    qdrant_client::qdrant::vector_output::Vector::Dense(d) => {
                        out.insert(name, d.data);
                    }
                    _ => return Err(corrupt(format!("vector `{name}` is not dense"))),
                }
            }
        }
        Some(VectorsOptions::Vector(_)) => {
            return Err(corrupt("unnamed vector: not written by this crate".into()))
        }
    }
    let payload = payload
        .into_iter()
        .map(|(k, v)| (k, v.into_json()))
        .collect();
    Ok(Point {
        id,
        vectors: out,
        payload,
    })
}

/// The client's error in one line, with its cause (a gRPC status's code and message).
fn describe(e: &QdrantError) -> String {
    match e {
        QdrantError::ResponseError { status } => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => other.to_string(),
    }
}
