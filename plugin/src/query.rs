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
use std::collections::HashMap;

use qdrant_edge::{
    Expression, Formula, NamedQuery, PointId, Prefetch, QueryEnum, QueryRequest, ScoringQuery,
    VectorInternal, WithPayloadInterface, WithVector,
};
use task2vec::distance::d_sym;
use task2vec::embedding::Embedding;
use uuid::Uuid;

use crate::record::ExpertPayload;
use crate::store::{point_uuid, HESSIAN, MODEL2VEC};
use crate::{Error, Result, Store};

/// Settings of [`Store::select_experts`].
#[derive(Debug, Clone, Copy, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, Copy, PartialEq)]
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
        let index = self.transform().apply(&target.hessian)?;
        let hits = self.experts().query(QueryRequest {
            prefetches: Vec::new(),
            query: Some(nearest(MODEL2VEC, index)),
            filter: None,
            score_threshold: None,
            limit: options.prefetch,
            offset: 0,
            params: None,
            with_vector: WithVector::Selector(vec![HESSIAN.to_string()]),
            with_payload: WithPayloadInterface::Bool(true),
        })?;
        let mut ranked = Vec::with_capacity(hits.len());
        for hit in hits {
            let record = qdrant_edge::Record {
                id: hit.id,
                payload: hit.payload,
                vector: hit.vector,
                shard_key: None,
                order_value: None,
            };
            let c = self.experts();
            let payload: ExpertPayload = self.payload(c, &record)?;
            let hessian = self.dense(c, &record, HESSIAN)?;
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
            let d = d_sym(&hessian, &target.hessian)?;
            ranked.push(RankedExpert {
                id: point_uuid(c, &record)?,
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

    /// The experts ranked by Qdrant alone: cosine prefetch of `prefetch` on `model2vec`,
    /// re-scored by the formula `$score + alpha · complexity`, best first.
    pub fn rank_experts_by_formula(
        &self,
        target: &Embedding,
        prefetch: usize,
        alpha: f32,
        limit: usize,
    ) -> Result<Vec<Hit>> {
        self.space().check(target)?;
        let index = self.transform().apply(&target.hessian)?;
        let formula = Formula {
            formula: Expression::Sum(vec![
                Expression::Variable("$score".into()),
                Expression::Mult(vec![
                    Expression::Constant(alpha),
                    Expression::Variable("complexity".into()),
                ]),
            ]),
            defaults: HashMap::from([("complexity".to_string(), serde_json::json!(0.0))]),
        };
        let formula = formula.try_into().map_err(|e| Error::Engine {
            collection: self.experts().name().to_string(),
            operation: "parse formula",
            message: format!("{e}"),
        })?;
        let hits = self.experts().query(QueryRequest {
            prefetches: vec![Prefetch {
                prefetches: Vec::new(),
                query: Some(nearest(MODEL2VEC, index)),
                limit: prefetch,
                params: None,
                filter: None,
                score_threshold: None,
            }],
            query: Some(ScoringQuery::Formula(formula)),
            filter: None,
            score_threshold: None,
            limit,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(false),
        })?;
        hits.into_iter()
            .map(|h| match h.id {
                PointId::Uuid(id) => Ok(Hit { id, score: h.score }),
                PointId::NumId(n) => Err(Error::Corrupt {
                    collection: self.experts().name().to_string(),
                    id: n.to_string(),
                    what: "numeric id: not written by this crate".into(),
                }),
            })
            .collect()
    }
}

/// A nearest-neighbour query on the named vector.
fn nearest(using: &str, vector: Vec<f32>) -> ScoringQuery {
    ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery::new(
        VectorInternal::Dense(vector),
        using,
    )))
}
