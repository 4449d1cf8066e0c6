//! Nearest stored tasks: a cosine prefetch on `task2vec` with payload filters, re-ranked by the
//! exact symmetric distance `d_sym` on the raw vectors; and finding a task by its location.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use task2vec::embedding::Embedding;
use uuid::Uuid;

use crate::backend::{Condition, Filter, Nearest, WithVectors};
use crate::record::{tag_pair, Tags, TaskHitFields, TaskPayload, TaskSummary};
use crate::store::{Kind, TASK2VEC};
use crate::{task_point_id, Error, Result, Store};

/// Which stored tasks a query considers (every condition must hold; the default lets all
/// through). Missing fields of a JSON document take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskFilter {
    /// Only tasks whose features were computed on at least this many images.
    pub min_samples: Option<usize>,
    /// Only tasks with at least this many classes.
    pub min_classes: Option<usize>,
    /// Only tasks carrying every one of these tags with exactly this value.
    pub tags: Tags,
}

impl TaskFilter {
    fn to_filter(&self, exclude: Option<Uuid>) -> Filter {
        let mut must = Vec::new();
        if let Some(n) = self.min_samples {
            must.push(Condition::AtLeast {
                key: "samples",
                value: n as f64,
            });
        }
        if let Some(n) = self.min_classes {
            must.push(Condition::AtLeast {
                key: "n_classes",
                value: n as f64,
            });
        }
        for (k, v) in &self.tags {
            must.push(Condition::Equals {
                key: "tag_pairs",
                value: tag_pair(k, v),
            });
        }
        Filter {
            must,
            exclude_ids: exclude.into_iter().collect(),
        }
    }
}

/// Settings of [`Store::similar_tasks`] (missing fields of a JSON document take the defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimilarOptions {
    /// Tasks returned (default 10).
    pub limit: usize,
    /// Tasks fetched by cosine before the exact `d_sym` re-rank (default 100).
    pub prefetch: usize,
    /// Which tasks are considered.
    pub filter: TaskFilter,
}

impl Default for SimilarOptions {
    fn default() -> Self {
        SimilarOptions {
            limit: 10,
            prefetch: 100,
            filter: TaskFilter::default(),
        }
    }
}

/// A stored task near a target, with its distance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimilarTask {
    /// Its point id.
    pub id: Uuid,
    /// The dataset's path or URI.
    pub dataset_uri: String,
    /// The dataset's fingerprint when it was embedded.
    pub fingerprint: String,
    /// `d_sym(task, target)`: the rank key, lower is nearer.
    pub d_sym: f64,
    /// Cosine similarity of the index vectors (what the prefetch ranked by).
    pub cosine: f32,
    /// Distinct images whose features were computed.
    pub samples: usize,
    /// Number of classes.
    pub n_classes: usize,
    /// Its tags.
    pub tags: Tags,
    /// When it was written, RFC 3339 UTC.
    pub stored_at: String,
}

impl Store {
    /// The stored tasks nearest `target` by exact `d_sym`, nearest first, among those passing
    /// `options.filter`: the `prefetch` nearest by cosine of the index vectors, re-ranked. The
    /// target's own dataset (the point its URI, probe and estimator would have) is never among
    /// them, whether stored, stale or not stored yet.
    ///
    /// Errors: [`Error::Mismatch`] for a target of another space.
    pub fn similar_tasks(
        &self,
        target: &Embedding,
        options: &SimilarOptions,
    ) -> Result<Vec<SimilarTask>> {
        self.space().check(target)?;
        self.similar(target, options)
    }

    /// [`Store::similar_tasks`] for a stored task, by its id (the task itself left out).
    ///
    /// Errors: [`Error::NotFound`] when no task has this id.
    pub fn similar_to_task(&self, id: Uuid, options: &SimilarOptions) -> Result<Vec<SimilarTask>> {
        let task = self
            .get_task(id)?
            .ok_or(Error::NotFound { what: "task", id })?;
        // Its own point id is `id`: the stored embedding carries the URI the id was made from.
        self.similar(&task.embedding, options)
    }

    fn similar(&self, target: &Embedding, options: &SimilarOptions) -> Result<Vec<SimilarTask>> {
        let meta = &target.meta;
        let own = task_point_id(
            &meta.dataset.path,
            &meta.probe.weights_sha256,
            target.estimator(),
        );
        let index = self.index_vector(&target.hessian)?;
        let c = self.tasks();
        let hits = self.shortlist_with_d_sym(
            Kind::Tasks,
            &Nearest {
                using: TASK2VEC,
                vector: index,
                filter: options.filter.to_filter(Some(own)),
                limit: options.prefetch.max(options.limit),
            },
            target,
        )?;
        let mut out = Vec::with_capacity(hits.len());
        for (hit, d) in hits {
            let p: TaskHitFields = self.payload(c, &hit.point)?;
            out.push(SimilarTask {
                id: hit.point.id,
                dataset_uri: p.dataset_uri,
                fingerprint: p.fingerprint,
                d_sym: d,
                cosine: hit.score,
                samples: p.samples,
                n_classes: p.n_classes,
                tags: p.tags,
                stored_at: p.stored_at,
            });
        }
        out.sort_by(|a, b| {
            a.d_sym
                .partial_cmp(&b.d_sym)
                .unwrap_or(Ordering::Equal)
                .then(a.id.cmp(&b.id))
        });
        out.truncate(options.limit);
        Ok(out)
    }

    /// The stored task of the dataset at `uri` (matched byte for byte against the payload's
    /// `dataset_uri`, so canonicalise it as the writer did), or `None`.
    pub fn find_task_by_uri(&self, uri: &str) -> Result<Option<TaskSummary>> {
        let c = self.tasks();
        let filter = Filter {
            must: vec![Condition::Equals {
                key: "dataset_uri",
                value: uri.to_string(),
            }],
            exclude_ids: Vec::new(),
        };
        let (page, _) = c.scroll(&filter, WithVectors::No, None, 1)?;
        page.first()
            .map(|p| {
                let payload: TaskPayload = self.payload(c, p)?;
                Ok(TaskSummary::from((p.id, &payload)))
            })
            .transpose()
    }
}
