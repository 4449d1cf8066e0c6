//! Distance matrices with the reference's conventions (`task_similarity.pdist` / `cdist`).
//!
//! Pairs are evaluated in parallel on rayon's pool; each evaluation is independent, so the
//! result does not depend on the thread count.

use rayon::prelude::*;

use super::{distance, Distance, DistanceOptions, EmbeddingView};
use crate::{Error, Result};

/// `m[i][j]` = the distance from `from[i]` to `to[j]`, for every ordered pair (the reference
/// `cdist`; a diagonal, if `from` and `to` share embeddings, is computed like any other entry).
///
/// Errors as [`distance`], prefixed with the pair's indices; embeddings of different lengths
/// are an [`Error::Mismatch`] naming the first one that differs.
pub fn cdist(
    kind: Distance,
    from: &[EmbeddingView<'_>],
    to: &[EmbeddingView<'_>],
    opts: &DistanceOptions,
) -> Result<Vec<Vec<f64>>> {
    check_common_length(kind, from.iter().chain(to))?;
    let pairs: Vec<(usize, usize)> = (0..from.len())
        .flat_map(|i| (0..to.len()).map(move |j| (i, j)))
        .collect();
    let values = evaluate(kind, &pairs, from, to, opts)?;
    let mut m = vec![vec![0.0; to.len()]; from.len()];
    for (&(i, j), d) in pairs.iter().zip(values) {
        m[i][j] = d;
    }
    Ok(m)
}

/// The square matrix of distances within one set, as the reference `pdist` builds it: the
/// diagonal is 0 without being computed, and for symmetric distances only `i < j` is computed
/// and mirrored. `asymmetric_kl` is computed for every ordered pair, diagonal included (so it
/// is NaN there under [`super::ZeroPolicy::Reference`] when the embedding has zeros).
///
/// Errors as [`cdist`].
pub fn pdist(
    kind: Distance,
    embeddings: &[EmbeddingView<'_>],
    opts: &DistanceOptions,
) -> Result<Vec<Vec<f64>>> {
    check_common_length(kind, embeddings.iter())?;
    let n = embeddings.len();
    let pairs: Vec<(usize, usize)> = if kind.is_symmetric() {
        (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .collect()
    } else {
        (0..n).flat_map(|i| (0..n).map(move |j| (i, j))).collect()
    };
    let values = evaluate(kind, &pairs, embeddings, embeddings, opts)?;
    let mut m = vec![vec![0.0; n]; n];
    for (&(i, j), d) in pairs.iter().zip(values) {
        m[i][j] = d;
        if kind.is_symmetric() {
            m[j][i] = d;
        }
    }
    Ok(m)
}

/// The distance of every pair `(i, j)` from `from[i]` to `to[j]`, in the order of `pairs`.
fn evaluate(
    kind: Distance,
    pairs: &[(usize, usize)],
    from: &[EmbeddingView<'_>],
    to: &[EmbeddingView<'_>],
    opts: &DistanceOptions,
) -> Result<Vec<f64>> {
    pairs
        .par_iter()
        .map(|&(i, j)| {
            distance(kind, from[i], to[j], opts).map_err(|e| match e {
                Error::Mismatch(what) => Error::Mismatch(format!("pair ({i}, {j}): {what}")),
                other => other,
            })
        })
        .collect()
}

/// All embeddings of a matrix must have the length of the first one.
fn check_common_length<'a, 'b: 'a>(
    kind: Distance,
    mut embeddings: impl Iterator<Item = &'a EmbeddingView<'b>>,
) -> Result<()> {
    let Some(first) = embeddings.next() else {
        return Ok(());
    };
    match embeddings.enumerate().find(|(_, e)| e.len() != first.len()) {
        Some((k, e)) => Err(Error::Mismatch(format!(
            "{kind} matrix: embedding {} has {} entries, embedding 0 has {} (counting `from` \
             then `to`)",
            k + 1,
            e.len(),
            first.len()
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdist_mirrors_symmetric_distances_and_leaves_the_diagonal_zero() {
        let a = [1.0f32, 0.5, 0.25];
        let b = [0.25f32, 1.0, 2.0];
        let views = [EmbeddingView::new(&a), EmbeddingView::new(&b)];
        let opts = DistanceOptions::default();
        let m = pdist(Distance::Entropy, &views, &opts).expect("valid");
        assert_eq!(m[0][0], 0.0);
        assert_eq!(m[1][1], 0.0);
        assert_eq!(m[0][1], m[1][0]);
        let c = cdist(Distance::Entropy, &views, &views, &opts).expect("valid");
        // cdist computes the diagonal: entropy's `1e-8` makes it positive.
        assert!(c[0][0] > 0.0);
        assert_eq!(c[0][1], m[0][1]);
    }

    #[test]
    fn pdist_computes_both_directions_of_asymmetric_kl() {
        let a = [1.0f32, 2.0];
        let b = [2.0f32, 2.0];
        let views = [EmbeddingView::new(&a), EmbeddingView::new(&b)];
        let m = pdist(Distance::AsymmetricKl, &views, &DistanceOptions::default()).expect("ok");
        assert_ne!(m[0][1], m[1][0]);
        assert_eq!(m[0][0], 0.0);
    }

    #[test]
    fn matrices_reject_embeddings_of_different_lengths() {
        let a = [1.0f32, 2.0];
        let b = [1.0f32, 2.0, 3.0];
        let views = [EmbeddingView::new(&a), EmbeddingView::new(&b)];
        let opts = DistanceOptions::default();
        assert!(matches!(
            pdist(Distance::Cosine, &views, &opts),
            Err(Error::Mismatch(_))
        ));
        assert!(matches!(
            cdist(Distance::Cosine, &views[..1], &views[1..], &opts),
            Err(Error::Mismatch(_))
        ));
    }
}
