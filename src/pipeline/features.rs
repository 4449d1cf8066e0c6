//! The feature pass: choose the images, decode them batch by batch, run the probe once.
//!
//! Memory stays flat in the dataset's size: only one batch of decoded images exists at a time.
//! What is kept is small — the pooled features `[n, F]` (10,000 × 1280 f32 = 51 MB) — plus,
//! when all of it fits the settings' memory budget, the Fisher pass's inputs (the preprocessed
//! images, or the activations entering stage `skip_stages`), so the Fisher pass neither
//! decodes nor recomputes. The decision is made once, from the first batch's size per image.

use std::collections::BTreeSet;

use candle_core::Tensor;

use super::seeds::{derive, Stream};
use crate::dataset::{balanced_sample, Dataset, Preprocess, Skipped};
use crate::embedding::EmbedSettings;
use crate::probe::{Forward, Probe};
use crate::{Error, Result};

/// The images of an embedding and what the probe made of them.
pub(crate) struct FeaturePass {
    /// Dataset index of each image that decoded, in sample order ("positions").
    pub indices: Vec<usize>,
    /// Its label in the dataset.
    pub labels: Vec<usize>,
    /// Pooled penultimate features `[n, F]`, eval-mode batch norm.
    pub features: Tensor,
    /// The Fisher pass's inputs, when they fit the memory budget.
    pub cache: Option<InputCache>,
    /// Images that failed to decode (replaced by further images of the sample order).
    pub skipped: Vec<Skipped>,
}

/// Inputs of stage `skip_stages` for every position, kept in the batches they were computed in.
pub(crate) struct InputCache {
    chunks: Vec<Tensor>,
    /// (chunk, row) of each position.
    at: Vec<(usize, usize)>,
}

impl InputCache {
    /// The inputs of `positions`, stacked in that order (a position may repeat).
    pub fn gather(&self, positions: &[usize]) -> Result<Tensor> {
        let rows = positions
            .iter()
            .map(|&p| {
                let (chunk, row) = self.at[p];
                self.chunks[chunk].narrow(0, row, 1)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    }
}

/// Runs the feature pass. `progress(done, total)` gets the images processed so far out of the
/// number wanted, `min(max_samples, dataset size)`.
///
/// The sample order is [`balanced_sample`] over the whole dataset: its first `max_samples`
/// entries are the class-balanced sample, and an image that fails to decode is replaced by the
/// next one in that order, so corrupt files cost images only when the dataset runs out.
///
/// Errors: [`Error::Dataset`] when the decoded images cover fewer than two classes.
pub(crate) fn run(
    dataset: &Dataset,
    probe: &dyn Probe,
    pre: &Preprocess,
    settings: &EmbedSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FeaturePass> {
    let order = balanced_sample(
        &dataset.labels(),
        dataset.len(),
        derive(settings.seed, Stream::Sample),
    );
    let target = settings.max_samples.min(order.len());
    let (device, dtype) = (probe.device(), probe.dtype());
    let stages = probe.info().num_stages;
    let skip = settings.skip_stages;

    let mut indices = Vec::with_capacity(target);
    let mut labels = Vec::with_capacity(target);
    let mut features = Vec::new();
    let mut skipped = Vec::new();
    let mut cache: Option<InputCache> = None;
    let mut cache_decided = false;
    let mut next = 0;
    progress(0, target);
    while indices.len() < target && next < order.len() {
        let take = settings
            .feature_batch_size
            .min(target - indices.len())
            .min(order.len() - next);
        let batch = dataset.load_batch(&order[next..next + take], pre)?;
        next += take;
        skipped.extend(batch.skipped.iter().cloned());
        if batch.is_empty() {
            continue;
        }
        let x = batch.images(device)?.to_dtype(dtype)?;
        let input = if skip > 0 {
            probe.forward_stages(&x, 0, skip, Forward::INFERENCE)?
        } else {
            x
        };
        features.push(probe.forward_stages(&input, skip, stages, Forward::INFERENCE)?);
        if !cache_decided {
            cache_decided = true;
            let per_image = (input.elem_count() / batch.len() * dtype.size_in_bytes()) as u64;
            if per_image.saturating_mul(target as u64) <= settings.cache_budget_bytes {
                cache = Some(InputCache {
                    chunks: Vec::new(),
                    at: Vec::with_capacity(target),
                });
            }
        }
        if let Some(c) = &mut cache {
            let chunk = c.chunks.len();
            c.at.extend((0..batch.len()).map(|row| (chunk, row)));
            c.chunks.push(input);
        }
        indices.extend_from_slice(&batch.indices);
        labels.extend_from_slice(&batch.labels);
        progress(indices.len(), target);
    }

    let classes: BTreeSet<usize> = labels.iter().copied().collect();
    if classes.len() < 2 {
        let first = skipped
            .first()
            .map(|s| format!("; first failure: {s}"))
            .unwrap_or_default();
        return Err(Error::dataset(
            dataset.root(),
            format!(
                "{} image(s) decoded ({} failed), covering {} class(es): at least two classes \
                 are needed{first}",
                indices.len(),
                skipped.len(),
                classes.len()
            ),
        ));
    }
    Ok(FeaturePass {
        indices,
        labels,
        features: Tensor::cat(&features, 0)?,
        cache,
        skipped,
    })
}
