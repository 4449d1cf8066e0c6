//! When two embeddings may be compared.
//!
//! A distance between two vectors only means something if every coordinate means the same in
//! both: same probe weights, same modules in the same order, same estimator and the settings
//! that change a coordinate's scale or definition. Settings that only change the estimate's
//! noise (seed, sample counts, head recipe) are allowed to differ.

use super::Embedding;
use crate::fisher::Estimator;
use crate::{Error, Result};

impl Embedding {
    /// Checks that `self` and `other` can be compared by a distance.
    ///
    /// Refused, all differences named in one [`Error::Mismatch`]: a different probe
    /// architecture or weights hash, input preprocessing (image size, normalisation),
    /// estimator, batch-norm mode, `skip_stages`, `include_bn`, layout (length or modules),
    /// or — for the Monte-Carlo estimator, whose scale is F / batch size — Fisher batch size.
    pub fn check_comparable(&self, other: &Embedding) -> Result<()> {
        let (a, b) = (&self.meta, &other.meta);
        let mut diffs = Vec::new();
        let mut differ = |what: &str, x: String, y: String| {
            if x != y {
                diffs.push(format!("{what} ({x} vs {y})"));
            }
        };
        differ("probe", a.probe.arch.clone(), b.probe.arch.clone());
        differ(
            "probe weights",
            short(&a.probe.weights_sha256),
            short(&b.probe.weights_sha256),
        );
        let (pa, pb) = (&a.probe.preprocess, &b.probe.preprocess);
        differ(
            "input preprocessing",
            format!(
                "resize {} crop {} mean {:?} std {:?}",
                pa.resize_shorter, pa.crop, pa.mean, pa.std
            ),
            format!(
                "resize {} crop {} mean {:?} std {:?}",
                pb.resize_shorter, pb.crop, pb.mean, pb.std
            ),
        );
        let (sa, sb) = (&a.settings, &b.settings);
        differ(
            "estimator",
            format!("{:?}", sa.fisher.estimator),
            format!("{:?}", sb.fisher.estimator),
        );
        differ(
            "batch-norm mode",
            format!("{:?}", sa.bn),
            format!("{:?}", sb.bn),
        );
        differ(
            "skip_stages",
            sa.skip_stages.to_string(),
            sb.skip_stages.to_string(),
        );
        differ(
            "include_bn",
            sa.include_bn.to_string(),
            sb.include_bn.to_string(),
        );
        if sa.fisher.estimator == Estimator::MonteCarlo
            && sb.fisher.estimator == Estimator::MonteCarlo
        {
            differ(
                "Monte-Carlo Fisher batch size",
                sa.fisher.batch_size.to_string(),
                sb.fisher.batch_size.to_string(),
            );
        }
        if self.len() != other.len() || a.layout.len() != b.layout.len() {
            diffs.push(format!(
                "layout ({} values in {} modules vs {} values in {} modules)",
                self.len(),
                a.layout.len(),
                other.len(),
                b.layout.len()
            ));
        } else if let Some((x, y)) = a
            .layout
            .iter()
            .zip(&b.layout)
            .find(|(x, y)| (&x.param, x.kind, x.n_filters) != (&y.param, y.kind, y.n_filters))
        {
            diffs.push(format!(
                "layout (module at offset {}: `{}` {:?}×{} vs `{}` {:?}×{})",
                x.offset, x.param, x.kind, x.n_filters, y.param, y.kind, y.n_filters
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(Error::Mismatch(format!(
                "embeddings of `{}` and `{}` are not comparable: different {}",
                a.dataset.path,
                b.dataset.path,
                diffs.join(", ")
            )))
        }
    }
}

/// The first 12 hex digits of a hash, enough to tell two apart in a message.
fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}
