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

use task2vec::embedding::LayoutEntry;

use crate::{Error, Result, VectorSpace};

/// Buckets of the default transform's sketch: the fewest that find the exact top 10 under
/// `d_asym` within the cosine top 100 at 100,000 stored experts (recall@10 0.990; 4,096 buckets
/// give 0.965: BENCHMARKS.md, "Expert selection"). Stores made with 4,096 keep them.
pub const DEFAULT_SKETCH_DIM: usize = 8192;

/// How a Fisher vector becomes the vector Qdrant indexes under cosine similarity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IndexTransform {
    /// The default: the centred log-vector `x` of [`IndexTransform::CenteredLog`] in a short
    /// form with (to sketch precision) the same dot products. For every module `k` of the
    /// layout (its `n_k` values at `offset_k`) one coordinate `√n_k · m_k`, with `m_k` the
    /// mean of `x` over the module; then `sketch_dim` coordinates, a count sketch of the
    /// within-module deviations `x_i − m_k`: coordinate `i` adds `± (x_i − m_k)` to bucket
    /// `b(i)` ([`sketch_slot`]). Length: modules + `sketch_dim`. The module part carries the
    /// layer-level shape of the task exactly; the sketch keeps every filter's deviation at the
    /// cost of sampling noise in the dot product (standard deviation about `|u||v|/√sketch_dim`
    /// of the deviations), which is why the exact re-rank follows.
    LayeredSketch {
        /// The floor relative to the mean positive entry, as in `CenteredLog`.
        floor_rel: f32,
        /// Buckets of the count sketch.
        sketch_dim: usize,
        /// Whether `x` is taken relative to the store's trivial embedding t0 (`x − x_t0`,
        /// both centred logs) once the store has one. The index then measures how a task
        /// departs from "no task", per filter, which is what `d_sym` weighs: recall of the
        /// exact top 10 rises markedly (BENCHMARKS.md). Stores made before it read `false`.
        #[serde(default)]
        relative_to_trivial: bool,
    },
    /// `x_i = ln(max(h_i, floor)) − mean_j ln(max(h_j, floor))`, with
    /// `floor = floor_rel · mean of the positive entries of h`. The floor keeps exact zeros
    /// (a few hundred per EfficientNet-Lite0 embedding) finite and bounds their weight. As long
    /// as the Fisher vector (42,016 numbers for the default probe): stores made before the
    /// layered sketch use it.
    CenteredLog {
        /// The floor relative to the mean positive entry.
        floor_rel: f32,
    },
    /// `x_i = √h_i` (Qdrant normalises it for cosine).
    Sqrt,
}

impl Default for IndexTransform {
    fn default() -> Self {
        IndexTransform::LayeredSketch {
            floor_rel: 1e-4,
            sketch_dim: DEFAULT_SKETCH_DIM,
            relative_to_trivial: true,
        }
    }
}

impl IndexTransform {
    /// Length of the index vectors of `space`.
    pub fn len(&self, space: &VectorSpace) -> usize {
        match *self {
            IndexTransform::LayeredSketch { sketch_dim, .. } => {
                modules(&space.layout, space.dimension).len() + sketch_dim
            }
            IndexTransform::CenteredLog { .. } | IndexTransform::Sqrt => space.dimension,
        }
    }

    /// Whether the index vectors are as long as the Fisher vectors (the older transforms):
    /// such stores keep an int8 quantized copy in RAM instead of the f32 vectors.
    pub fn is_full_length(&self) -> bool {
        !matches!(self, IndexTransform::LayeredSketch { .. })
    }

    /// Checks the transform's parameters.
    ///
    /// Errors: [`Error::Mismatch`] for a floor that is not a positive finite number or a
    /// sketch of no buckets.
    pub fn validate(&self) -> Result<()> {
        let floor = match *self {
            IndexTransform::LayeredSketch {
                floor_rel,
                sketch_dim,
                ..
            } => {
                if sketch_dim == 0 {
                    return Err(Error::Mismatch(
                        "index transform: sketch_dim must be at least 1".into(),
                    ));
                }
                floor_rel
            }
            IndexTransform::CenteredLog { floor_rel } => floor_rel,
            IndexTransform::Sqrt => return Ok(()),
        };
        if !(floor.is_finite() && floor > 0.0) {
            return Err(Error::Mismatch(format!(
                "index transform: floor_rel must be a positive number, not {floor}"
            )));
        }
        Ok(())
    }

    /// The centre the index vectors are taken relative to, for a store whose trivial
    /// embedding is `trivial`: its centred log-vector for a layered sketch relative to the
    /// trivial embedding; `None` (no centre) for the other transforms.
    pub fn centre(&self, trivial: &[f32]) -> Option<IndexCentre> {
        match *self {
            IndexTransform::LayeredSketch {
                floor_rel,
                relative_to_trivial: true,
                ..
            } => Some(IndexCentre(centered_log(trivial, floor_rel))),
            _ => None,
        }
    }

    /// The index vector of the Fisher vector `hessian` of `space` (finite, non-negative, not
    /// all zero, as [`crate::VectorSpace::check`] ensures), relative to `centre` when given
    /// (see [`IndexTransform::centre`]).
    ///
    /// Errors: [`Error::Mismatch`] when the result has no direction (all entries equal under
    /// the log transforms, which a real embedding never gives), since a zero vector has no
    /// cosine, or when the centre is not as long as the vector.
    pub fn apply(
        &self,
        hessian: &[f32],
        space: &VectorSpace,
        centre: Option<&IndexCentre>,
    ) -> Result<Vec<f32>> {
        self.index(hessian, &space.layout, centre)
    }

    fn index(
        &self,
        hessian: &[f32],
        layout: &[LayoutEntry],
        centre: Option<&IndexCentre>,
    ) -> Result<Vec<f32>> {
        let out = match *self {
            IndexTransform::LayeredSketch {
                floor_rel,
                sketch_dim,
                ..
            } => {
                let mut x = centered_log(hessian, floor_rel);
                if let Some(IndexCentre(c)) = centre {
                    if c.len() != x.len() {
                        return Err(Error::Mismatch(format!(
                            "index centre of {} values for a vector of {}",
                            c.len(),
                            x.len()
                        )));
                    }
                    // A vector equal to t0 (up to scale) has no direction relative to it: it
                    // keeps its own, so it stays searchable.
                    if x.iter().zip(c).any(|(v, m)| v != m) {
                        x.iter_mut().zip(c).for_each(|(v, m)| *v -= m);
                    }
                }
                layered_sketch(&x, &modules(layout, hessian.len()), sketch_dim)
            }
            IndexTransform::CenteredLog { floor_rel } => centered_log(hessian, floor_rel)
                .into_iter()
                .map(|x| x as f32)
                .collect(),
            IndexTransform::Sqrt => hessian.iter().map(|&h| h.max(0.0).sqrt()).collect(),
        };
        let norm2 = norm(&out).powi(2);
        if !(norm2 > 0.0 && norm2.is_finite()) {
            return Err(Error::Mismatch(format!(
                "the index vector ({self:?}) of this embedding has norm² {norm2}: cosine \
                 similarity is undefined for it"
            )));
        }
        Ok(out)
    }
}

/// The Euclidean norm of an index vector, summed in f64 (the payload `index_norm`, and `|v|`
/// of a formula query).
pub(crate) fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

/// The point every index vector of a store is taken relative to: the centred log-vector of its
/// trivial embedding ([`IndexTransform::centre`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexCentre(Vec<f64>);

/// The bucket and sign of coordinate `i` in a count sketch of `sketch_dim` buckets: the
/// SplitMix64 output `z` for the state `(i + 1) · 0x9E3779B97F4A7C15` (mod 2⁶⁴); the bucket
/// is `(z >> 1) mod sketch_dim`, the sign `+1` when `z` is even, else `−1`. Written out in
/// docs/schema.md so other languages can build query vectors.
pub fn sketch_slot(i: usize, sketch_dim: usize) -> (usize, f64) {
    let mut z = (i as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let sign = if z & 1 == 0 { 1.0 } else { -1.0 };
    ((z >> 1) as usize % sketch_dim, sign)
}

/// The `(offset, length)` of every module, in layout order, when the layout tiles the vector
/// exactly; otherwise (no layout, gaps or overlaps) the whole vector as one module.
fn modules(layout: &[LayoutEntry], dimension: usize) -> Vec<(usize, usize)> {
    let mut parts: Vec<(usize, usize)> = layout.iter().map(|e| (e.offset, e.n_filters)).collect();
    parts.sort_unstable();
    let mut next = 0;
    let tiles = parts.iter().all(|&(offset, len)| {
        let ok = offset == next && len > 0;
        next = offset + len;
        ok
    }) && next == dimension;
    if tiles && !parts.is_empty() {
        parts
    } else {
        vec![(0, dimension)]
    }
}

fn layered_sketch(x: &[f64], modules: &[(usize, usize)], sketch_dim: usize) -> Vec<f32> {
    let mut out = vec![0.0_f64; modules.len() + sketch_dim];
    let (means, sketch) = out.split_at_mut(modules.len());
    for (k, &(offset, len)) in modules.iter().enumerate() {
        let part = &x[offset..offset + len];
        let mean = part.iter().sum::<f64>() / len as f64;
        means[k] = mean * (len as f64).sqrt();
        for (j, &v) in part.iter().enumerate() {
            let (bucket, sign) = sketch_slot(offset + j, sketch_dim);
            sketch[bucket] += sign * (v - mean);
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

fn centered_log(hessian: &[f32], floor_rel: f32) -> Vec<f64> {
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
    logs.iter().map(|&l| l - mean).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum()
    }

    #[test]
    fn centered_log_is_scale_invariant_and_centred() {
        let h = [1.0_f32, 2.0, 4.0, 0.0, 8.0];
        let a = centered_log(&h, 1e-4);
        let scaled: Vec<f32> = h.iter().map(|x| x * 1000.0).collect();
        let b = centered_log(&scaled, 1e-4);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        let mean: f64 = a.iter().sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 1e-9);
        // Doubling steps are ln 2 apart; the zero sits at the floor, far below.
        assert!((a[1] - a[0] - std::f64::consts::LN_2).abs() < 1e-6);
        assert!(a[3] < a[0] - 5.0);
    }

    #[test]
    fn the_module_part_carries_piecewise_constant_vectors_exactly() {
        // Constant within each module: the sketch part is zero and the dot product is exact.
        let parts = [(0, 3), (3, 5), (8, 2)];
        let x: Vec<f64> = [1.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0, -2.0, 0.5, 0.5].to_vec();
        let y: Vec<f64> = [3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, -4.0, -4.0].to_vec();
        let (lx, ly) = (
            layered_sketch(&x, &parts, 16),
            layered_sketch(&y, &parts, 16),
        );
        assert_eq!(lx.len(), 3 + 16);
        assert!(lx[3..].iter().all(|&v| v == 0.0));
        let exact: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert!(
            (dot(&lx, &ly) - exact).abs() < 1e-5,
            "{} vs {exact}",
            dot(&lx, &ly)
        );
    }

    #[test]
    fn the_sketch_keeps_dot_products_of_within_module_deviations() {
        // Pseudo-random vectors, two modules; with many more buckets than coordinates the
        // count sketch has few collisions and the dot product is nearly exact.
        let n = 2000;
        let wave = |i: usize, f: f64| ((i as f64) * f).sin() + 0.3 * ((i * i) as f64 * 0.01).cos();
        let x: Vec<f64> = (0..n).map(|i| wave(i, 0.37)).collect();
        let y: Vec<f64> = (0..n)
            .map(|i| wave(i, 0.37) + 0.5 * wave(i, 1.91))
            .collect();
        let parts = [(0, 1200), (1200, 800)];
        let (lx, ly) = (
            layered_sketch(&x, &parts, 200_000),
            layered_sketch(&y, &parts, 200_000),
        );
        let exact: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rel = (dot(&lx, &ly) - exact).abs() / exact.abs();
        assert!(
            rel < 0.01,
            "sketched dot {} vs exact {exact}",
            dot(&lx, &ly)
        );
        // Norms (dot with itself) too.
        let exact_xx: f64 = x.iter().map(|a| a * a).sum();
        assert!((dot(&lx, &lx) - exact_xx).abs() / exact_xx < 0.01);
    }

    #[test]
    fn sketch_slots_are_the_documented_splitmix64() {
        // Values of the formula in docs/schema.md, computed independently (Python).
        assert_eq!(sketch_slot(0, 4096), (1751, -1.0));
        assert_eq!(sketch_slot(1, 4096), (762, 1.0));
        assert_eq!(sketch_slot(42015, 4096), (179, 1.0));
        let buckets: std::collections::HashSet<usize> =
            (0..50_000).map(|i| sketch_slot(i, 4096).0).collect();
        assert_eq!(buckets.len(), 4096, "every bucket is used");
    }

    #[test]
    fn a_layout_that_does_not_tile_the_vector_is_one_module() {
        assert_eq!(modules(&[], 7), vec![(0, 7)]);
    }

    #[test]
    fn a_vector_without_direction_is_refused() {
        for t in [
            IndexTransform::default(),
            IndexTransform::CenteredLog { floor_rel: 1e-4 },
        ] {
            assert!(matches!(
                t.index(&[3.0, 3.0, 3.0], &[], None),
                Err(Error::Mismatch(_))
            ));
        }
        assert!(IndexTransform::Sqrt.index(&[3.0, 3.0], &[], None).is_ok());
    }
}
