//! The per-example estimator: F ≈ (1/N) Σ_i (∂/∂θ CE(f(x_i), ŷ_i))².
//!
//! Unbiased for the Fisher diagonal and independent of the batch size. How the per-example
//! gradients are formed depends on the batch-norm mode:
//!
//! - [`BnMode::Eval`]: examples do not interact, so each one is run forward and backward on its
//!   own (a batch of one), exactly its gradient.
//! - [`BnMode::Train`]: each example's output depends on the whole batch through the batch
//!   statistics, so the batch is run forward once and each example's loss is differentiated
//!   through the shared graph (one backward over the batch per example: N times the cost of a
//!   Monte-Carlo batch).
//!
//! Either way the cost is about one pass per example, against one per batch for
//! [`super::montecarlo`]. With sampled labels, one uniform is drawn per example in example
//! order from the seeded sampler and mapped through that example's softmax
//! ([`super::labels`]): the labels the Monte-Carlo estimator would draw from the same logits.

use candle_core::{DType, IndexOp, Tensor, D};
use candle_nn::ops::log_softmax;

use super::labels::{label_from_uniform, LabelSampler};
use super::{
    check_batch, covered_params, fixed_labels, linear, require_samples, BatchSource, FisherDiag,
    FisherSettings, HeadTensors, SquaredGradSums,
};
use crate::probe::{BnMode, Forward, Probe, ProbeParam};
use crate::Result;

/// How example `i` of a batch gets its label.
enum LabelPlan {
    /// The batch's own labels.
    Fixed(Vec<u32>),
    /// One uniform per example, mapped through its softmax.
    Uniforms(Vec<f64>),
}

impl LabelPlan {
    fn label(&self, i: usize, logits_row: &Tensor) -> Result<usize> {
        match self {
            LabelPlan::Fixed(v) => Ok(v[i] as usize),
            LabelPlan::Uniforms(u) => {
                let row = logits_row
                    .detach()
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                Ok(label_from_uniform(&row, u[i])? as usize)
            }
        }
    }
}

/// What every single-example pass shares.
struct SinglePass<'a> {
    probe: &'a dyn Probe,
    head: &'a HeadTensors,
    params: &'a [&'a ProbeParam],
    from_stage: usize,
    fwd: Forward,
}

impl SinglePass<'_> {
    /// Loss and squared gradients of example `i` of `input` run on its own (eval-mode BN).
    fn run(
        &self,
        input: &Tensor,
        i: usize,
        labels: &LabelPlan,
    ) -> Result<(f64, Vec<Option<Tensor>>)> {
        let x = input.narrow(0, i, 1)?;
        let to = self.probe.info().num_stages;
        let features = self
            .probe
            .forward_stages(&x, self.from_stage, to, self.fwd)?;
        let logits = linear(&features, &self.head.weight, &self.head.bias)?;
        let y = labels.label(i, &logits)?;
        let loss = log_softmax(&logits, D::Minus1)?.i((0, y))?.neg()?;
        let grads = loss.backward()?;
        let squares = SquaredGradSums::squares(self.params, &grads)?;
        Ok((loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, squares))
    }
}

/// Runs the per-example estimator over epoch 0 of `source`.
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
    let from = settings.from_stage;
    let dev = probe.device();
    let single = SinglePass {
        probe,
        head,
        params: &params,
        from_stage: from,
        fwd,
    };
    let mut losses = Vec::new();
    for (index, batch) in source.batches(0).enumerate() {
        let batch = batch?;
        let n = check_batch(probe, &batch, index)?;
        let labels = match &batch.labels {
            Some(l) => LabelPlan::Fixed(fixed_labels(l, n, head.classes(), dev, index)?.to_vec1()?),
            None => LabelPlan::Uniforms((0..n).map(|_| sampler.uniform()).collect()),
        };
        match settings.bn {
            BnMode::Eval => {
                for i in 0..n {
                    let (loss, squares) = single.run(&batch.input, i, &labels)?;
                    sums.add_squares(squares)?;
                    losses.push(loss);
                }
            }
            BnMode::Train => {
                let to = probe.info().num_stages;
                let features = probe.forward_stages(&batch.input, from, to, fwd)?;
                let logits = linear(&features, &head.weight, &head.bias)?;
                let logp = log_softmax(&logits, D::Minus1)?;
                for i in 0..n {
                    let y = labels.label(i, &logits.narrow(0, i, 1)?)?;
                    let loss = logp.i((i, y))?.neg()?;
                    let grads = loss.backward()?;
                    sums.add(&params, &grads)?;
                    losses.push(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?);
                }
            }
        }
    }
    let samples = losses.len();
    require_samples(samples)?;
    Ok(FisherDiag {
        params: sums.finish(&params, samples)?,
        samples,
        scale: Vec::new(),
        losses,
    })
}
