//! The index vector: what Qdrant's cosine index sees of a Task2Vec embedding.
//!
//! The paper's symmetric distance is not a cosine between fixed vectors: with `a`, `b` two
//! Fisher vectors, `d_sym(a, b) = d_cos(a / (a + b), b / (a + b))` normalises every coordinate
//! by the pair. Writing `δ_i = ln a_i − ln b_i`, each normalised coordinate is a logistic of
//! `δ_i` (`a_i / (a_i + b_i) = σ(δ_i)`), so `d_sym` depends on the per-coordinate log-ratios
//! only, each coordinate weighing the same whatever its magnitude. Expanding to second order
//! in `δ`:
//!
//! ```text
//! d_sym(a, b) ≈ ½ · Var_i(δ_i) = ½ · |x_a − x_b|² / n,   x = ln h − mean(ln h)
//! ```
//!
//! so nearest neighbours under `d_sym` are, to that order, nearest neighbours in Euclidean
//! distance between centred log-vectors. Qdrant's cosine equals that ranking when the centred
//! log-vectors have equal norms, which they nearly do for one probe: their norm is dominated by
//! the spread of Fisher magnitudes between layers, which all tasks share. Hence the default
//! transform [`IndexTransform::CenteredLog`]. Large log-ratios (beyond about 1) saturate in
//! `d_sym` but not in the expansion, and exact zeros need a floor; the prefetch therefore only
//! *approximates* the ranking, and the exact `d_sym` / `d_asym` re-rank on the raw vectors
//! (stored beside the index vector) decides. [`IndexTransform::Sqrt`] (cosine of `√h`, a
//! Hellinger-like similarity that weighs coordinates by magnitude) is kept for comparison.
//!
//! The transform is part of a store's manifest: every vector of a store goes through the same
//! one, and a query vector must too.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How a Fisher vector becomes the vector Qdrant indexes under cosine similarity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IndexTransform {
    /// `x_i = ln(max(h_i, floor)) − mean_j ln(max(h_j, floor))`, with
    /// `floor = floor_rel · mean of the positive entries of h`. The floor keeps exact zeros
    /// (a few hundred per EfficientNet-Lite0 embedding) finite and bounds their weight.
    CenteredLog {
        /// The floor relative to the mean positive entry.
        floor_rel: f32,
    },
    /// `x_i = √h_i` (Qdrant normalises it for cosine).
    Sqrt,
}

impl Default for IndexTransform {
    fn default() -> Self {
        IndexTransform::CenteredLog { floor_rel: 1e-4 }
    }
}

impl IndexTransform {
    /// The index vector of the Fisher vector `hessian` (finite, non-negative, not all zero, as
    /// [`crate::VectorSpace::check`] ensures).
    ///
    /// Errors: [`Error::Mismatch`] when the result has no direction (all entries equal under
    /// `CenteredLog`, which a real embedding never gives), since a zero vector has no cosine.
    pub fn apply(&self, hessian: &[f32]) -> Result<Vec<f32>> {
        let out = match *self {
            IndexTransform::CenteredLog { floor_rel } => centered_log(hessian, floor_rel),
            IndexTransform::Sqrt => hessian.iter().map(|&h| h.max(0.0).sqrt()).collect(),
        };
        let norm2: f64 = out.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        if !(norm2 > 0.0 && norm2.is_finite()) {
            return Err(Error::Mismatch(format!(
                "the index vector ({self:?}) of this embedding has norm² {norm2}: cosine \
                 similarity is undefined for it"
            )));
        }
        Ok(out)
    }
}

fn centered_log(hessian: &[f32], floor_rel: f32) -> Vec<f32> {
    let (sum, count) = hessian
        .iter()
        .filter(|&&h| h > 0.0)
        .fold((0.0_f64, 0_usize), |(s, c), &h| (s + f64::from(h), c + 1));
    let mean_positive = if count == 0 { 1.0 } else { sum / count as f64 };
    let floor = (f64::from(floor_rel) * mean_positive).max(f64::MIN_POSITIVE);
    let logs: Vec<f64> = hessian
        .iter()
        .map(|&h| f64::from(h).max(floor).ln())
        .collect();
    let mean = logs.iter().sum::<f64>() / logs.len().max(1) as f64;
    logs.iter().map(|&l| (l - mean) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centered_log_is_scale_invariant_and_centred() {
        let h = [1.0_f32, 2.0, 4.0, 0.0, 8.0];
        let t = IndexTransform::default();
        let a = t.apply(&h).expect("transform");
        let scaled: Vec<f32> = h.iter().map(|x| x * 1000.0).collect();
        let b = t.apply(&scaled).expect("transform");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        let mean: f32 = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 1e-5);
        // Doubling steps are ln 2 apart; the zero sits at the floor, far below.
        assert!((a[1] - a[0] - std::f32::consts::LN_2).abs() < 1e-5);
        assert!(a[3] < a[0] - 5.0);
    }

    #[test]
    fn a_vector_without_direction_is_refused() {
        let t = IndexTransform::default();
        assert!(matches!(t.apply(&[3.0, 3.0, 3.0]), Err(Error::Mismatch(_))));
        assert!(IndexTransform::Sqrt.apply(&[3.0, 3.0]).is_ok());
    }
}
