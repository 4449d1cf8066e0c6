//! Picking experts: a cosine prefetch in Qdrant, then the exact asymmetric re-rank; and the same
//! ranking approximated by Qdrant alone with a formula query.
//!
//! `d_asym(expert → target) = d_sym(expert, target) − alpha · d_sym(expert, t0)`. The prefetch
//! takes the `prefetch` experts whose `model2vec` index vector is nearest the target's by
//! cosine; [`Store::select_experts`] then computes `d_sym` exactly on the raw vectors and
//! subtracts `alpha` times the stored `complexity`. [`Store::rank_experts_by_formula`] asks
//! Qdrant for nearly the same order with nothing but its Query API, as any client language can.
//! To second order `d_sym(a, b)` is proportional to the squared Euclidean distance of the
//! index vectors `u_a`, `u_b` ([`crate::IndexTransform`]), `s · |u_a − u_b|²` with
//! `s = κ / (2n)` ([`FORMULA_KAPPA`]), and by the law of cosines that distance follows from the
//! cosine Qdrant scores with and the two norms. Every point stores its index vector's norm
//! `index_norm`, so with `v` the target's index vector:
//!
//! ```text
//! prefetch: nearest(model2vec = v), limit P
//! query:    formula  2s|v| · index_norm · $score − s · index_norm² − s|v|² + alpha · complexity
//!                    (defaults: index_norm = 0, complexity = 0)
//! ```
//!
//! which is `−(s |u − v|² − alpha · complexity) ≈ −d_asym`: higher is better, and the score
//! reads as an approximate `−d_asym`.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use task2vec::embedding::Embedding;
use uuid::Uuid;

use crate::backend::{Filter, FormulaQuery, Nearest};
use crate::record::ExpertRankFields;
use crate::store::{Kind, MODEL2VEC};
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

/// `κ` of the formula query: `d_sym(a, b) ≈ κ · |u_a − u_b|² / (2n)` for index vectors `u` of
/// Fisher vectors of length `n`. The second-order expansion of `d_sym` gives 1; log-ratios
/// beyond about 1 saturate in `d_sym`, so the least-squares value on realistic embeddings is
/// lower (measured by `plugin/tests/formula_embedded.rs` on EfficientNet-Lite0 Monte-Carlo
/// mixtures).
pub const FORMULA_KAPPA: f64 = 0.78;

/// Settings of [`Store::rank_experts_by_formula`] (missing fields of a JSON document take the
/// defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FormulaOptions {
    /// Weight of the complexity term, as in [`SelectOptions::alpha`].
    pub alpha: f64,
    /// Experts fetched by cosine before the formula re-scores them (default 100).
    pub prefetch: usize,
    /// Experts returned (default 10).
    pub limit: usize,
    /// [`FORMULA_KAPPA`] unless measured for another probe.
    pub kappa: f64,
}

impl Default for FormulaOptions {
    fn default() -> Self {
        FormulaOptions {
            alpha: 0.15,
            prefetch: 100,
            limit: 10,
            kappa: FORMULA_KAPPA,
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
            Kind::Experts,
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
            let payload: ExpertRankFields = self.payload(c, &hit.point)?;
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

    /// The experts ranked by Qdrant alone, best first: a cosine prefetch of
    /// `options.prefetch` on `model2vec`, re-scored by a formula of the cosine `$score` and the
    /// payload keys `index_norm` and `complexity` whose score approximates `−d_asym` (see the
    /// module documentation; docs/schema.md, "Ranking in any language", has the measured
    /// agreement with [`Store::select_experts`]).
    ///
    /// Errors: [`Error::Mismatch`] for a target of another space or a slope that is not a
    /// positive number.
    pub fn rank_experts_by_formula(
        &self,
        target: &Embedding,
        options: &FormulaOptions,
    ) -> Result<Vec<Hit>> {
        self.space().check(target)?;
        if !(options.kappa.is_finite() && options.kappa > 0.0) {
            return Err(Error::Mismatch(format!(
                "formula: kappa must be a positive number, not {}",
                options.kappa
            )));
        }
        let index = self.index_vector(&target.hessian)?;
        let query_norm = crate::index_vector::norm(&index);
        let hits = self.experts().formula(&FormulaQuery {
            prefetch: Nearest {
                using: MODEL2VEC,
                vector: index,
                filter: Filter::default(),
                limit: options.prefetch,
            },
            slope: options.kappa / (2.0 * self.space().dimension as f64),
            query_norm,
            alpha: options.alpha,
            limit: options.limit,
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
