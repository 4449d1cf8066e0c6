//! What to do with Fisher entries that are exactly 0, and the input checks that go with it.
//!
//! Zero entries are common: a ReLU6 unit that never activates on a task (or is always
//! saturated) gets no gradient, so its filter's Fisher is 0 and its posterior variance `1/h` is
//! infinite. The reference then returns NaN for the variance-based distances and a silent 0 for
//! `normalized_cosine`. Every policy here turns a pair of `f32` embeddings into the `f64`
//! vectors the formulas run on.

use serde::{Deserialize, Serialize};

use super::{Distance, EmbeddingView};
use crate::{Error, Result};

/// How distances treat hessian (Fisher) entries that are 0.
///
/// The default, [`ZeroPolicy::DropUndefined`], gives finite numbers on real embeddings, keeps
/// the paper's d_sym (reference `cosine`) unchanged, and reports every case it cannot answer
/// as an error rather than a NaN or a 0. See `docs/distances.md` for the reasoning and numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroPolicy {
    /// Bit-for-bit the reference (task_similarity.py + scipy), quirks included: no input
    /// checks, NaN results are returned as `Ok(NaN)` (kl, asymmetric_kl, jsd and correlation
    /// whenever a coordinate is 0), and scipy's clamp turns a NaN cosine into `Ok(0.0)` (so
    /// `normalized_cosine` with zeros is a silent 0). Used by the conformance tests; not meant
    /// for decisions.
    Reference,
    /// Clamp each hessian entry to at least `relative × max(hessian)`, the maximum taken over
    /// that embedding alone (so scaling an embedding scales its floor, and the scale-invariant
    /// distances stay scale-invariant). Keeps every coordinate. The floored coordinates
    /// dominate the KL family (a one-sided zero contributes about `½·h_other / floor`), so the
    /// number mostly measures the floor there; see [`ZeroPolicy::DEFAULT_FLOOR`].
    Floor(f64),
    /// Drop every coordinate where either hessian is 0, for every distance: all seven
    /// distances then see the same support for a given pair. Changes d_sym by about 1% on
    /// real embeddings, because a one-sided zero is the strongest disagreement d_sym can see.
    DropZeros,
    /// The default. Drop a coordinate where it carries no information or where the distance
    /// is undefined: where *both* hessians are 0 (no task uses that filter) for every
    /// distance, and where *either* is 0 for the distances built on the variance `1/h`
    /// (`normalized_cosine`, `correlation`, `kl`, `asymmetric_kl`, `jsd`), whose term is
    /// infinite there. `cosine` (d_sym) and `entropy` keep one-sided zeros: their term is
    /// finite and means "only one task uses this filter". For `cosine` this equals the
    /// reference exactly (a both-zero coordinate adds nothing); for `entropy` it removes the
    /// `ln 2` the reference adds for every filter dead in both tasks.
    #[default]
    DropUndefined,
}

impl ZeroPolicy {
    /// The suggested relative floor for [`ZeroPolicy::Floor`]: `1e-12 × max`. On the
    /// conformance embeddings (ResNet-style probe, Monte-Carlo Fisher) positive entries reach
    /// down to `2e-14 × max`, so this floor raises the exact zeros and only a handful of live
    /// entries; a larger floor would rewrite real measurements.
    pub const DEFAULT_FLOOR: f64 = 1e-12;

    /// [`ZeroPolicy::Floor`] with [`ZeroPolicy::DEFAULT_FLOOR`].
    pub fn default_floor() -> Self {
        ZeroPolicy::Floor(Self::DEFAULT_FLOOR)
    }

    /// Whether this policy keeps coordinate `i` of a pair whose hessians there are `h0`, `h1`.
    fn keeps(self, kind: Distance, h0: f32, h1: f32) -> bool {
        match self {
            ZeroPolicy::Reference | ZeroPolicy::Floor(_) => true,
            ZeroPolicy::DropZeros => h0 > 0.0 && h1 > 0.0,
            ZeroPolicy::DropUndefined if kind.is_hessian_based() => h0 > 0.0 || h1 > 0.0,
            ZeroPolicy::DropUndefined => h0 > 0.0 && h1 > 0.0,
        }
    }
}

/// The `f64` vectors one distance evaluation runs on. `s0`/`s1` are filled only for the
/// distances that use the scale.
pub(super) struct PreparedPair {
    pub h0: Vec<f64>,
    pub h1: Vec<f64>,
    pub s0: Vec<f64>,
    pub s1: Vec<f64>,
}

/// Which of the two embeddings an error message is about.
const SIDES: [&str; 2] = ["first", "second"];

/// Applies `policy` to the pair (lengths already checked), after checking the inputs unless the
/// policy is [`ZeroPolicy::Reference`].
pub(super) fn prepare(
    kind: Distance,
    a: EmbeddingView<'_>,
    b: EmbeddingView<'_>,
    policy: ZeroPolicy,
) -> Result<PreparedPair> {
    if policy != ZeroPolicy::Reference {
        for (side, e) in SIDES.iter().zip([a, b]) {
            check_embedding(kind, side, e)?;
        }
    }
    // Each embedding's floor, only under `Floor`: elsewhere the values pass through untouched
    // (a `max` would also replace the NaN that `Reference` must keep).
    let floors = match policy {
        ZeroPolicy::Floor(relative) => {
            if !(relative > 0.0 && relative <= 1.0) {
                return Err(Error::Mismatch(format!(
                    "{kind} distance: zero-policy floor must be in (0, 1], got {relative}"
                )));
            }
            [
                Some(relative * max_of(a.hessian)),
                Some(relative * max_of(b.hessian)),
            ]
        }
        _ => [None, None],
    };
    let kept: Vec<usize> = (0..a.hessian.len())
        .filter(|&i| policy.keeps(kind, a.hessian[i], b.hessian[i]))
        .collect();
    if kept.is_empty() && policy != ZeroPolicy::Reference {
        return Err(Error::Mismatch(format!(
            "{kind} distance: no coordinate is left under zero policy {policy:?} \
             (the two hessians are never positive at the same index)"
        )));
    }
    let hessian = |h: &[f32], floor: Option<f64>| -> Vec<f64> {
        kept.iter()
            .map(|&i| {
                let x = f64::from(h[i]);
                floor.map_or(x, |f| x.max(f))
            })
            .collect()
    };
    let scale = |e: &EmbeddingView<'_>| -> Vec<f64> {
        match e.scale {
            Some(s) if kind.uses_scale() => kept.iter().map(|&i| f64::from(s[i])).collect(),
            None if kind.uses_scale() => vec![1.0; kept.len()],
            _ => Vec::new(),
        }
    };
    Ok(PreparedPair {
        h0: hessian(a.hessian, floors[0]),
        h1: hessian(b.hessian, floors[1]),
        s0: scale(&a),
        s1: scale(&b),
    })
}

/// The largest entry of a checked (finite, non-negative) hessian.
fn max_of(h: &[f32]) -> f64 {
    h.iter().fold(0.0f64, |m, &x| m.max(f64::from(x)))
}

/// A hessian must be finite and non-negative with at least one positive entry, and a scale
/// (when the distance uses one) finite and positive: anything else is not a Fisher embedding,
/// and the distance would be NaN or meaningless.
fn check_embedding(kind: Distance, side: &str, e: EmbeddingView<'_>) -> Result<()> {
    if let Some((i, &x)) = e
        .hessian
        .iter()
        .enumerate()
        .find(|(_, x)| !(x.is_finite() && **x >= 0.0))
    {
        return Err(Error::Mismatch(format!(
            "{kind} distance: hessian of the {side} embedding has entry {x} at index {i}; \
             a Fisher diagonal must be finite and non-negative"
        )));
    }
    if !e.hessian.iter().any(|&x| x > 0.0) {
        return Err(Error::Mismatch(format!(
            "{kind} distance: hessian of the {side} embedding has no positive entry; \
             the distance is undefined for an all-zero Fisher"
        )));
    }
    if let (true, Some(scale)) = (kind.uses_scale(), e.scale) {
        if let Some((i, &x)) = scale
            .iter()
            .enumerate()
            .find(|(_, x)| !(x.is_finite() && **x > 0.0))
        {
            return Err(Error::Mismatch(format!(
                "{kind} distance: scale of the {side} embedding has entry {x} at index {i}; \
                 a scale must be finite and positive"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_undefined_keeps_one_sided_zeros_only_for_hessian_based_distances() {
        let p = ZeroPolicy::DropUndefined;
        assert!(p.keeps(Distance::Cosine, 0.0, 1.0));
        assert!(p.keeps(Distance::Entropy, 1.0, 0.0));
        assert!(!p.keeps(Distance::Cosine, 0.0, 0.0));
        assert!(!p.keeps(Distance::Kl, 0.0, 1.0));
        assert!(!p.keeps(Distance::NormalizedCosine, 1.0, 0.0));
        assert!(p.keeps(Distance::Jsd, 1.0, 2.0));
    }

    #[test]
    fn drop_zeros_drops_one_sided_zeros_for_every_distance() {
        for kind in Distance::ALL {
            assert!(!ZeroPolicy::DropZeros.keeps(kind, 0.0, 1.0));
            assert!(ZeroPolicy::DropZeros.keeps(kind, 3.0, 1.0));
        }
    }

    #[test]
    fn floor_is_relative_to_each_embeddings_own_maximum() {
        let a = [0.0f32, 4.0];
        let b = [2.0f32, 0.0];
        let p = prepare(
            Distance::Kl,
            EmbeddingView::new(&a),
            EmbeddingView::new(&b),
            ZeroPolicy::Floor(0.25),
        )
        .expect("valid input");
        assert_eq!(p.h0, vec![1.0, 4.0]);
        assert_eq!(p.h1, vec![2.0, 0.5]);
    }

    #[test]
    fn reference_policy_passes_invalid_input_through_unchanged() {
        let a = [f32::NAN, -1.0];
        let b = [1.0f32, 1.0];
        let p = prepare(
            Distance::Kl,
            EmbeddingView::new(&a),
            EmbeddingView::new(&b),
            ZeroPolicy::Reference,
        )
        .expect("reference never checks");
        assert!(p.h0[0].is_nan());
        assert_eq!(p.h0[1], -1.0);
    }
}
