//! The vector space of a store: which embeddings it accepts.
//!
//! A distance between two Task2Vec vectors only means something when every coordinate means
//! the same in both (same probe weights, layout, estimator and the settings that change a
//! coordinate's scale), the rule of [`Embedding::check_comparable`]. A store holds one such
//! space, fixed when it is created and recorded in its manifest; every vector written later is
//! checked against it, so a store never mixes incomparable vectors.

use serde::{Deserialize, Serialize};
use task2vec::dataset::Preprocess;
use task2vec::embedding::{Embedding, LayoutEntry};
use task2vec::fisher::Estimator;
use task2vec::probe::BnMode;

use crate::{Error, Result};

/// Everything that must agree between two embeddings for a distance between them to mean
/// something (the fields [`Embedding::check_comparable`] compares).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorSpace {
    /// Probe architecture id, e.g. `efficientnet-lite0`.
    pub probe_arch: String,
    /// SHA-256 of the probe weights.
    pub weights_sha256: String,
    /// Input preprocessing (image size and normalisation).
    pub preprocess: Preprocess,
    /// The Fisher estimator.
    pub estimator: Estimator,
    /// Batch-norm mode of the Fisher pass.
    pub bn: BnMode,
    /// Stages skipped by the Fisher pass.
    pub skip_stages: usize,
    /// Whether batch-norm scales are part of the vector.
    pub include_bn: bool,
    /// The Monte-Carlo estimate is F / batch size, so its batch size is part of the space;
    /// `None` for the other estimators.
    pub montecarlo_batch_size: Option<usize>,
    /// Length of the vectors.
    pub dimension: usize,
    /// Which slice of the vector belongs to which module of the probe.
    pub layout: Vec<LayoutEntry>,
}

impl VectorSpace {
    /// The space `embedding` lives in.
    pub fn of(embedding: &Embedding) -> Self {
        let meta = &embedding.meta;
        let settings = &meta.settings;
        VectorSpace {
            probe_arch: meta.probe.arch.clone(),
            weights_sha256: meta.probe.weights_sha256.clone(),
            preprocess: meta.probe.preprocess.clone(),
            estimator: settings.fisher.estimator,
            bn: settings.bn,
            skip_stages: settings.skip_stages,
            include_bn: settings.include_bn,
            montecarlo_batch_size: (settings.fisher.estimator == Estimator::MonteCarlo)
                .then_some(settings.fisher.batch_size),
            dimension: embedding.len(),
            layout: meta.layout.clone(),
        }
    }

    /// The estimator's name as it appears in payloads and point ids (`monte-carlo`,
    /// `per-example`, `variational`: the core library's serde form).
    pub fn estimator_name(&self) -> &'static str {
        estimator_name(self.estimator)
    }

    /// Checks that `embedding` belongs to this space and is a valid Fisher vector.
    ///
    /// Errors: [`Error::Mismatch`] naming every difference (probe, weights, preprocessing,
    /// estimator, batch-norm mode, `skip_stages`, `include_bn`, Monte-Carlo batch size,
    /// length, layout) or the first invalid entry (negative or non-finite) of `hessian` or
    /// `scale`.
    pub fn check(&self, embedding: &Embedding) -> Result<()> {
        let other = VectorSpace::of(embedding);
        let diffs = self.differences(&other);
        if !diffs.is_empty() {
            return Err(Error::Mismatch(format!(
                "the embedding of `{}` does not belong to this store: different {} (store vs \
                 embedding)",
                embedding.meta.dataset.path,
                diffs.join(", ")
            )));
        }
        check_vector("hessian", &embedding.hessian, self.dimension, false)?;
        check_vector("scale", &embedding.scale, self.dimension, true)?;
        Ok(())
    }

    /// Human-readable differences between two spaces, empty when they are the same.
    pub fn differences(&self, other: &VectorSpace) -> Vec<String> {
        let mut diffs = Vec::new();
        let mut differ = |what: &str, x: String, y: String| {
            if x != y {
                diffs.push(format!("{what} ({x} vs {y})"));
            }
        };
        differ("probe", self.probe_arch.clone(), other.probe_arch.clone());
        differ(
            "probe weights",
            short(&self.weights_sha256),
            short(&other.weights_sha256),
        );
        differ(
            "input preprocessing",
            format!("{:?}", self.preprocess),
            format!("{:?}", other.preprocess),
        );
        differ(
            "estimator",
            self.estimator_name().to_string(),
            other.estimator_name().to_string(),
        );
        differ(
            "batch-norm mode",
            format!("{:?}", self.bn),
            format!("{:?}", other.bn),
        );
        differ(
            "skip_stages",
            self.skip_stages.to_string(),
            other.skip_stages.to_string(),
        );
        differ(
            "include_bn",
            self.include_bn.to_string(),
            other.include_bn.to_string(),
        );
        differ(
            "Monte-Carlo Fisher batch size",
            format!("{:?}", self.montecarlo_batch_size),
            format!("{:?}", other.montecarlo_batch_size),
        );
        differ(
            "dimension",
            self.dimension.to_string(),
            other.dimension.to_string(),
        );
        if self.dimension == other.dimension {
            if self.layout.len() != other.layout.len() {
                diffs.push(format!(
                    "layout ({} modules vs {} modules)",
                    self.layout.len(),
                    other.layout.len()
                ));
            } else if let Some((x, y)) = self.layout.iter().zip(&other.layout).find(|(x, y)| {
                (&x.param, x.kind, x.n_filters, x.offset)
                    != (&y.param, y.kind, y.n_filters, y.offset)
            }) {
                diffs.push(format!(
                    "layout (module at offset {}: `{}` {:?}×{} vs `{}` {:?}×{})",
                    x.offset, x.param, x.kind, x.n_filters, y.param, y.kind, y.n_filters
                ));
            }
        }
        diffs
    }
}

/// The core library's serde name of an estimator.
pub(crate) fn estimator_name(estimator: Estimator) -> &'static str {
    match estimator {
        Estimator::MonteCarlo => "monte-carlo",
        Estimator::PerExample => "per-example",
        Estimator::Variational => "variational",
    }
}

/// Checks length and entries of one stored vector: finite and non-negative (a Fisher
/// diagonal), and strictly positive for a scale.
fn check_vector(what: &str, v: &[f32], dimension: usize, positive: bool) -> Result<()> {
    if v.len() != dimension {
        return Err(Error::Mismatch(format!(
            "{what} has {} values, the store's vectors have {dimension}",
            v.len()
        )));
    }
    let bad = |x: f32| !x.is_finite() || x < 0.0 || (positive && x == 0.0);
    if let Some((i, x)) = v.iter().enumerate().find(|(_, &x)| bad(x)) {
        let need = if positive { "positive" } else { "non-negative" };
        return Err(Error::Mismatch(format!(
            "{what}[{i}] = {x}: every entry must be finite and {need}"
        )));
    }
    if !positive && v.iter().all(|&x| x == 0.0) {
        return Err(Error::Mismatch(format!(
            "{what} is all zeros: not a Fisher embedding"
        )));
    }
    Ok(())
}

/// The first 12 hex digits of a hash, enough to tell two apart in a message.
fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimator_names_are_the_core_serde_names() {
        for e in [
            Estimator::MonteCarlo,
            Estimator::PerExample,
            Estimator::Variational,
        ] {
            let json = serde_json::to_value(e).expect("serialise estimator");
            assert_eq!(json.as_str(), Some(estimator_name(e)));
        }
    }

    #[test]
    fn check_vector_refuses_bad_entries_and_lengths() {
        assert!(check_vector("hessian", &[0.0, 1.0], 2, false).is_ok());
        assert!(check_vector("hessian", &[1.0], 2, false).is_err());
        assert!(check_vector("hessian", &[0.0, 0.0], 2, false).is_err());
        assert!(check_vector("hessian", &[-1.0, 1.0], 2, false).is_err());
        assert!(check_vector("hessian", &[f32::NAN, 1.0], 2, false).is_err());
        assert!(check_vector("scale", &[0.0, 1.0], 2, true).is_err());
        assert!(check_vector("scale", &[1.0, 1.0], 2, true).is_ok());
    }
}
