//! The HTTP endpoint: health, metrics, status and the query API (see [`crate::api`]).
//!
//! Handlers never block the runtime: store calls and on-the-fly embeddings run in
//! `spawn_blocking`, the latter holding one of the daemon's embedding permits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use task2vec::embedding::Embedding;
use task2vec::fisher::Estimator;
use task2vec_qdrant::{
    Error as StoreError, SelectOptions, SimilarOptions, Store, TaskFilter, VectorSpace,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use uuid::Uuid;

use crate::api::{
    AddExpert, ErrorBody, ExpertAdded, ExpertInfo, ExpertRemoved, Health, Resolved, SelectResponse,
    SimilarResponse, StatusReport, StoreStatus, TaskInfo,
};
use crate::discover;
use crate::indexer::{uri_of, Shared};
use crate::storage::is_transient;

/// Serves until `stop` turns true, then finishes the requests in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/api/tasks", get(tasks))
        .route("/api/similar", get(similar))
        .route("/api/select", get(select))
        .route("/api/experts", get(experts).post(add_expert))
        .route("/api/experts/{key}", delete(remove_expert))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

/// An error answer: a status and `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn from_store(e: StoreError) -> ApiError {
    let status = match &e {
        StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
        StoreError::Mismatch(_) => StatusCode::BAD_REQUEST,
        e if is_transient(e) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError(status, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        store: shared.store.state(),
    })
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        shared.metrics.render(),
    )
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<StatusReport> {
    let table = shared.table();
    let tasks = table.stored.values().map(Vec::len).sum();
    Json(StatusReport {
        version: env!("CARGO_PKG_VERSION").into(),
        started: shared.started.clone(),
        roots: shared.roots.iter().map(|r| uri_of(r)).collect(),
        store: StoreStatus {
            location: shared.store.describe(),
            state: shared.store.state(),
            tasks,
        },
        queue_depth: table.queue.len() + table.waiting.len(),
        running: table.running,
        embeddings_done: table.embeddings_done,
        embeddings_failed: table.embeddings_failed,
        scans_done: table.scans_done,
        datasets: table.entries.values().map(|e| e.status.clone()).collect(),
    })
}

/// The open store, `None` when there is none yet; 503 while it is unavailable.
async fn store_of(shared: &Arc<Shared>) -> Result<Option<Arc<Store>>, ApiError> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || s.store.open_existing())
        .await
        .map_err(internal)?
        .map_err(from_store)
}

/// `list` of the open store (off the runtime), or nothing when there is no store yet.
async fn listing<T: Send + 'static>(
    shared: &Arc<Shared>,
    list: impl FnOnce(&Store) -> Result<Vec<T>, StoreError> + Send + 'static,
) -> Result<Vec<T>, ApiError> {
    let Some(store) = store_of(shared).await? else {
        return Ok(Vec::new());
    };
    tokio::task::spawn_blocking(move || list(&store))
        .await
        .map_err(internal)?
        .map_err(from_store)
}

async fn tasks(State(shared): State<Arc<Shared>>) -> Result<Json<Vec<TaskInfo>>, ApiError> {
    Ok(Json(listing(&shared, Store::list_tasks).await?))
}

/// The query string's pairs, refusing unknown names.
fn pairs(query: Option<String>, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| bad_request(format!("query string: {e}")))?;
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(bad_request(format!(
            "unknown parameter `{k}`; known: {}",
            known.join(", ")
        )));
    }
    Ok(pairs)
}

fn one<'a>(pairs: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    let first = values.next();
    if values.next().is_some() {
        return Err(bad_request(format!("`{name}` given twice")));
    }
    Ok(first.map(String::as_str))
}

fn number<T: std::str::FromStr>(
    pairs: &[(String, String)],
    name: &str,
) -> Result<Option<T>, ApiError>
where
    T::Err: std::fmt::Display,
{
    one(pairs, name)?
        .map(|v| {
            v.parse::<T>()
                .map_err(|e| bad_request(format!("`{name}` = `{v}`: {e}")))
        })
        .transpose()
}

/// A query's subject: a stored task, or an embedding made for the query.
enum Subject {
    Stored(Uuid),
    Embedded(Box<Embedding>),
}

/// Resolves `task_id=` or `dataset=` (exactly one).
async fn resolve(
    shared: &Arc<Shared>,
    pairs: &[(String, String)],
) -> Result<(Resolved, Subject, Option<Arc<Store>>), ApiError> {
    let store = store_of(shared).await?;
    match (one(pairs, "task_id")?, one(pairs, "dataset")?) {
        (Some(id), None) => {
            let id: Uuid = id
                .parse()
                .map_err(|e| bad_request(format!("`task_id` = `{id}`: {e}")))?;
            let Some(store) = store else {
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    format!("no task with id {id}: the store is empty"),
                ));
            };
            let s = store.clone();
            let task = tokio::task::spawn_blocking(move || s.get_task(id))
                .await
                .map_err(internal)?
                .map_err(from_store)?
                .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no task with id {id}")))?;
            let resolved = Resolved {
                source: "stored".into(),
                task_id: Some(id),
                dataset: task.embedding.meta.dataset.path,
                embedding_secs: 0.0,
            };
            Ok((resolved, Subject::Stored(id), Some(store)))
        }
        (None, Some(path)) => {
            let uri = dataset_uri(Path::new(path)).await?;
            if let Some(store) = &store {
                let (s, u) = (store.clone(), uri.clone());
                let found = tokio::task::spawn_blocking(move || s.find_task_by_uri(&u))
                    .await
                    .map_err(internal)?
                    .map_err(from_store)?;
                if let Some(t) = found {
                    let resolved = Resolved {
                        source: "stored".into(),
                        task_id: Some(t.id),
                        dataset: uri,
                        embedding_secs: 0.0,
                    };
                    return Ok((resolved, Subject::Stored(t.id), Some(store.clone())));
                }
            }
            let (embedding, secs) = embed_now(shared, &uri).await?;
            let resolved = Resolved {
                source: "embedded".into(),
                task_id: None,
                dataset: uri,
                embedding_secs: secs,
            };
            Ok((resolved, Subject::Embedded(Box::new(embedding)), store))
        }
        (Some(_), Some(_)) => Err(bad_request("give `task_id` or `dataset`, not both")),
        (None, None) => Err(bad_request("give `task_id=ID` or `dataset=PATH`")),
    }
}

/// The URI the daemon would give the dataset at `path`: its parent folder canonicalised, its
/// own name kept (as for folders found under a root).
async fn dataset_uri(path: &Path) -> Result<String, ApiError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<String, ApiError> {
        let not_found = |e: std::io::Error| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("dataset {}: {e}", path.display()),
            )
        };
        std::fs::metadata(&path).map_err(not_found)?;
        let canonical = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
                parent.canonicalize().map_err(not_found)?.join(name)
            }
            _ => path.canonicalize().map_err(not_found)?,
        };
        Ok(uri_of(&canonical))
    })
    .await
    .map_err(internal)?
}

/// Embeds the dataset at `uri` for a query, in one of the daemon's embedding permits.
async fn embed_now(shared: &Arc<Shared>, uri: &str) -> Result<(Embedding, f64), ApiError> {
    let started = Instant::now();
    let (embedding, _) = with_dataset(shared, uri, |s, dataset, u| {
        s.embedder.embed(dataset, u, s.metrics.images.inner())
    })
    .await?
    .map_err(|e| bad_request(format!("cannot embed {uri}: {e}")))?;
    Ok((embedding, started.elapsed().as_secs_f64()))
}

/// Opens the dataset at `uri` and runs `work` on it off the runtime, in one of the daemon's
/// embedding permits. The outer error is the API's (shutting down, a panicked task); the inner
/// one `work`'s or the dataset's.
async fn with_dataset<T: Send + 'static>(
    shared: &Arc<Shared>,
    uri: &str,
    work: impl FnOnce(&Shared, &task2vec::dataset::Dataset, &str) -> task2vec::Result<T>
        + Send
        + 'static,
) -> Result<task2vec::Result<T>, ApiError> {
    let _permit = shared.permits.acquire().await.map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down".into(),
        )
    })?;
    let (s, u) = (shared.clone(), uri.to_string());
    tokio::task::spawn_blocking(move || {
        let dataset = discover::open_dataset(&PathBuf::from(&u))?;
        work(&s, &dataset, &u)
    })
    .await
    .map_err(internal)
}

async fn similar(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Result<Json<SimilarResponse>, ApiError> {
    let pairs = pairs(
        query,
        &[
            "task_id",
            "dataset",
            "limit",
            "prefetch",
            "min_samples",
            "min_classes",
            "tag",
        ],
    )?;
    let mut options = SimilarOptions::default();
    if let Some(n) = number(&pairs, "limit")? {
        options.limit = n;
    }
    if let Some(n) = number(&pairs, "prefetch")? {
        options.prefetch = n;
    }
    let mut tags = BTreeMap::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "tag") {
        let (k, v) = v
            .split_once(':')
            .ok_or_else(|| bad_request(format!("`tag` = `{v}`: expected key:value")))?;
        tags.insert(k.to_string(), v.to_string());
    }
    options.filter = TaskFilter {
        min_samples: number(&pairs, "min_samples")?,
        min_classes: number(&pairs, "min_classes")?,
        tags,
    };
    let (target, subject, store) = resolve(&shared, &pairs).await?;
    let Some(store) = store else {
        return Ok(Json(SimilarResponse {
            target,
            results: Vec::new(),
        }));
    };
    let found = tokio::task::spawn_blocking(move || match subject {
        Subject::Stored(id) => store.similar_to_task(id, &options),
        Subject::Embedded(e) => store.similar_tasks(&e, &options),
    })
    .await
    .map_err(internal)?
    .map_err(from_store)?;
    Ok(Json(SimilarResponse {
        target,
        results: found,
    }))
}

async fn select(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Result<Json<SelectResponse>, ApiError> {
    let pairs = pairs(query, &["task_id", "dataset", "alpha", "limit", "prefetch"])?;
    let mut options = SelectOptions::default();
    if let Some(a) = number::<f64>(&pairs, "alpha")? {
        if !a.is_finite() {
            return Err(bad_request("`alpha` must be a finite number"));
        }
        options.alpha = a;
    }
    if let Some(n) = number(&pairs, "limit")? {
        options.limit = n;
    }
    if let Some(n) = number(&pairs, "prefetch")? {
        options.prefetch = n;
    }
    let (target, subject, store) = resolve(&shared, &pairs).await?;
    let Some(store) = store else {
        return Ok(Json(SelectResponse {
            target,
            results: Vec::new(),
        }));
    };
    let ranked = tokio::task::spawn_blocking(move || match subject {
        Subject::Stored(id) => store.select_experts_for_task(id, &options),
        Subject::Embedded(e) => store.select_experts(&e, &options),
    })
    .await
    .map_err(internal)?
    .map_err(from_store)?;
    Ok(Json(SelectResponse {
        target,
        results: ranked,
    }))
}

async fn experts(State(shared): State<Arc<Shared>>) -> Result<Json<Vec<ExpertInfo>>, ApiError> {
    let list = listing(&shared, Store::list_experts).await?;
    Ok(Json(
        list.into_iter()
            .map(|(point_id, expert)| ExpertInfo { point_id, expert })
            .collect(),
    ))
}

/// Stores an expert; the first expert of a store without a trivial embedding also computes
/// it (the same dataset with random labels), as `t2v zoo add` does.
async fn add_expert(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<AddExpert>,
) -> Result<Json<ExpertAdded>, ApiError> {
    let pairs: Vec<(String, String)> = match (&body.task_id, &body.dataset) {
        (Some(id), None) => vec![("task_id".into(), id.to_string())],
        (None, Some(p)) => vec![("dataset".into(), p.to_string_lossy().into_owned())],
        _ => return Err(bad_request("give `task_id` or `dataset` (exactly one)")),
    };
    let (resolved, subject, store) = resolve(&shared, &pairs).await?;
    let embedding = match subject {
        Subject::Embedded(e) => *e,
        Subject::Stored(id) => {
            let s = store
                .clone()
                .ok_or_else(|| internal("a stored task without a store"))?;
            tokio::task::spawn_blocking(move || s.get_task(id))
                .await
                .map_err(internal)?
                .map_err(from_store)?
                .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no task with id {id}")))?
                .embedding
        }
    };
    let store = match store {
        Some(s) => s,
        None => {
            let (s, space) = (shared.clone(), VectorSpace::of(&embedding));
            tokio::task::spawn_blocking(move || s.store.for_write(&space))
                .await
                .map_err(internal)?
                .map_err(from_store)?
        }
    };
    let needs_trivial = store.trivial_mark().is_none()
        && embedding.meta.settings.fisher.estimator != Estimator::Variational;
    let trivial = if needs_trivial {
        let uri = resolved.dataset.clone();
        Some(embed_trivial_now(&shared, &uri).await?)
    } else {
        None
    };
    let expert = body.expert;
    let trivial_added = trivial.is_some();
    let id = tokio::task::spawn_blocking(move || {
        if let Some(t) = trivial {
            store.set_trivial(&t)?;
        }
        let id = store.upsert_expert(&expert, &embedding)?;
        store.flush();
        Ok::<_, StoreError>(id)
    })
    .await
    .map_err(internal)?
    .map_err(from_store)?;
    tracing::info!(%id, dataset = %resolved.dataset, "expert stored through the API");
    Ok(Json(ExpertAdded {
        id,
        trained_on: resolved,
        trivial_added,
    }))
}

/// The trivial embedding of the dataset at `uri` (random labels), in an embedding permit.
async fn embed_trivial_now(shared: &Arc<Shared>, uri: &str) -> Result<Embedding, ApiError> {
    with_dataset(shared, uri, |s, dataset, u| {
        s.embedder.embed_trivial(dataset, u)
    })
    .await?
    .map_err(|e| {
        bad_request(format!(
            "cannot compute the trivial embedding from {uri}: {e}"
        ))
    })
}

async fn remove_expert(
    State(shared): State<Arc<Shared>>,
    UrlPath(key): UrlPath<String>,
) -> Result<Json<ExpertRemoved>, ApiError> {
    let Some(store) = store_of(&shared).await? else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no expert with id {key}: the store is empty"),
        ));
    };
    let k = key.clone();
    let (removed, point_id) = tokio::task::spawn_blocking(move || {
        let id = store.expert_id(&k);
        let removed = store.delete_expert(id)?;
        store.flush();
        Ok::<_, StoreError>((removed, id))
    })
    .await
    .map_err(internal)?
    .map_err(from_store)?;
    if !removed {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no expert with id {key}"),
        ));
    }
    Ok(Json(ExpertRemoved { key, point_id }))
}
