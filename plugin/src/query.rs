//! Picking experts: a cosine prefetch in Qdrant, then the exact asymmetric re-rank; and the same
//! ranking approximated by Qdrant alone with a formula query.
//!
//! `d_asym(expert → target) = d_sym(expert, target) − alpha · d_sym(expert, t0)`. The prefetch
//! takes the `prefetch` experts whose `model2vec` index vector is nearest the target's by
//! cosine; [`Store::select_experts`] then computes `d_sym` exactly on the raw vectors and
//! subtracts `alpha` times the stored `complexity`. [`Store::rank_experts_by_formula`] asks
//! Qdrant for the same order with nothing but its Query API, as any client language can:
//!
//! ```text
//! prefetch: nearest(model2vec = index(target)), limit P
//! query:    formula  $score + alpha * complexity      (defaults: complexity = 0)
//! ```
//!
//! where the cosine similarity `$score` stands in for `1 − d_sym` (higher is better, so the
//! sign of the complexity term flips).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use task2vec::embedding::Embedding;
use uuid::Uuid;

use crate::backend::{Filter, FormulaQuery, Nearest};
use crate::record::ExpertPayload;
use crate::store::MODEL2VEC;
use crate::{Error, Result, Store};

/// Settings of [`Store::select_experts`] (missing fields of a JSON document take the
/// defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectOptions {
    /// Weight of the complexity term (the paper tunes it; 0.15 is the value recalled for
    /// ResNet-34, unverified). 0 ranks by `d_sym` alone and needs no trivial embedding.
    pub alpha: f64,
    /// Experts fetched by cosine before the exact re-rank (default 100).
    pub prefetch: usize,
    /// Experts returned (default 10).
    pub limit: usize,
}

impl Default for SelectOptions {
    fn default() -> Self {
        SelectOptions {
            alpha: 0.15,
            prefetch: 100,
            limit: 10,
        }
    }
}

/// One expert ranked for a target task, with the parts of its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedExpert {
    /// Its point id.
    pub id: Uuid,
    /// Its key.
    pub key: String,
    /// Its display name.
    pub name: String,
    /// `d_asym(expert → target)`: the rank key, lower is better.
    pub d_asym: f64,
    /// `d_sym(expert, target)`: how close its training task is to the target.
    pub d_sym: f64,
    /// `d_sym(expert, t0)`: how complex its training task is (weighted by `alpha`).
    pub complexity: f64,
    /// Cosine similarity of the index vectors (what the prefetch ranked by).
    pub cosine: f32,
}

/// A point and the score Qdrant gave it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The point id.
    pub id: Uuid,
    /// The score (higher is better).
    pub score: f32,
}

impl Store {
    /// The experts best suited to `target`, best first: cosine prefetch, then exact `d_asym`.
    ///
    /// Errors: [`Error::Mismatch`] for a target of another space, or `alpha ≠ 0` while an
    /// expert has no complexity (no trivial embedding set: see [`Store::set_trivial`]).
    pub fn select_experts(
        &self,
        target: &Embedding,
        options: &SelectOptions,
    ) -> Result<Vec<RankedExpert>> {
        self.space().check(target)?;
        if !options.alpha.is_finite() {
            return Err(Error::Mismatch(format!(
                "alpha = {}: must be a finite number",
                options.alpha
            )));
        }
        let index = self.index_vector(&target.hessian)?;
        let c = self.experts();
        let hits = self.shortlist_with_d_sym(
            c,
            &Nearest {
                using: MODEL2VEC,
                vector: index,
                filter: Filter::default(),
                limit: options.prefetch.max(options.limit),
            },
            target,
        )?;
        let mut ranked = Vec::with_capacity(hits.len());
        for (hit, d) in hits {
            let payload: ExpertPayload = self.payload(c, &hit.point)?;
            let complexity = match (payload.complexity, options.alpha == 0.0) {
                (Some(x), _) => x,
                (None, true) => 0.0,
                (None, false) => {
                    return Err(Error::Mismatch(format!(
                        "expert `{}` has no complexity term: set the store's trivial embedding \
                         first, or select with alpha = 0",
                        payload.key
                    )))
                }
            };
            ranked.push(RankedExpert {
                id: hit.point.id,
                key: payload.key,
                name: payload.name,
                d_asym: d - options.alpha * complexity,
                d_sym: d,
                complexity,
                cosine: hit.score,
            });
        }
        ranked.sort_by(|a, b| {
            a.d_asym
                .partial_cmp(&b.d_asym)
                .unwrap_or(Ordering::Equal)
                .then(a.id.cmp(&b.id))
        });
        ranked.truncate(options.limit);
        Ok(ranked)
    }

    /// [`Store::select_experts`] for a stored task, by its id.
    ///
    /// Errors: [`Error::NotFound`] when no task has this id; otherwise as
    /// [`Store::select_experts`].
    pub fn select_experts_for_task(
        &self,
        id: Uuid,
        options: &SelectOptions,
    ) -> Result<Vec<RankedExpert>> {
        let task = self
            .get_task(id)?
            .ok_or(Error::NotFound { what: "task", id })?;
        self.select_experts(&task.embedding, options)
    }

    /// The experts ranked by Qdrant alone: cosine prefetch of `prefetch` on `model2vec`,
    /// re-scored by the formula `$score + alpha · complexity`, best first.
    ///
    /// `alpha` weighs the complexity against a cosine similarity, not against `d_sym`: to
    /// approximate [`Store::select_experts`] with its `alpha`, pass about 0.27 times it
    /// (docs/schema.md, "Ranking in any language", has the measured slope and agreement).
    pub fn rank_experts_by_formula(
        &self,
        target: &Embedding,
        prefetch: usize,
        alpha: f32,
        limit: usize,
    ) -> Result<Vec<Hit>> {
        self.space().check(target)?;
        let index = self.index_vector(&target.hessian)?;
        let hits = self.experts().formula(&FormulaQuery {
            prefetch: Nearest {
                using: MODEL2VEC,
                vector: index,
                filter: Filter::default(),
                limit: prefetch,
            },
            alpha,
            variable: "complexity",
            limit,
        })?;
        Ok(hits
            .into_iter()
            .map(|h| Hit {
                id: h.point.id,
                score: h.score,
            })
            .collect())
    }
}
