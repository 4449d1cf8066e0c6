//! The reference Monte-Carlo estimator: F ≈ (1/B) Σ_b (∂/∂θ mean_{i∈b} CE(f(x_i), ŷ_i))².
//!
//! Each batch is run forward with gradients (batch norm as [`FisherSettings::bn`] says), labels
//! are taken from the batch or drawn from the head's softmax ([`super::labels`]), the batch-mean
//! cross-entropy is differentiated, and the squares of the gradients are added to per-parameter
//! sums. The result is the mean over batches: F / batch_size in expectation, so it depends on
//! the batch size (see [`super::per_example`] for the scale-free estimator).

use candle_nn::loss::cross_entropy;

use super::labels::LabelSampler;
use super::{
    check_batch, covered_params, fixed_labels, linear, require_samples, BatchSource, FisherDiag,
    FisherSettings, HeadTensors, SquaredGradSums,
};
use crate::probe::{Forward, Probe};
use crate::Result;

/// Runs the Monte-Carlo estimator over epoch 0 of `source`.
pub(crate) fn estimate(
    probe: &dyn Probe,
    head: &HeadTensors,
    source: &dyn BatchSource,
    settings: &FisherSettings,
) -> Result<FisherDiag> {
    let params = covered_params(probe, settings.from_stage);
    let mut sums = SquaredGradSums::new(&params)?;
    let mut sampler = LabelSampler::new(settings.seed);
    let fwd = Forward {
        bn: settings.bn,
        grad: true,
    };
    let to = probe.info().num_stages;
    let mut samples = 0;
    let mut losses = Vec::new();
    for (index, batch) in source.batches(0).enumerate() {
        let batch = batch?;
        let n = check_batch(probe, &batch, index)?;
        let features = probe.forward_stages(&batch.input, settings.from_stage, to, fwd)?;
        let logits = linear(&features, &head.weight, &head.bias)?;
        let labels = match &batch.labels {
            Some(l) => fixed_labels(l, n, head.classes(), probe.device(), index)?,
            None => sampler.sample(&logits, probe.device())?,
        };
        let loss = cross_entropy(&logits, &labels)?;
        let grads = loss.backward()?;
        sums.add(&params, &grads)?;
        losses.push(loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?);
        samples += n;
        // `grads`, `loss` and the graph behind them are dropped here: only the sums survive.
    }
    require_samples(samples)?;
    Ok(FisherDiag {
        params: sums.finish(&params, losses.len())?,
        samples,
        scale: Vec::new(),
        losses,
    })
}
