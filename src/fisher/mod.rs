//! Fisher information of a probe's weights for a task: the heart of Task2Vec.
//!
//! [`estimate`] takes the probe, a fitted linear head and a source of batches (inputs of stage
//! `from_stage`), and returns the diagonal of the Fisher for every probe parameter of stage
//! >= `from_stage` (classifier excluded). Three estimators, chosen by [`Estimator`]:
//!
//! - [`Estimator::MonteCarlo`] ([`montecarlo`]): the reference convention, the squared gradient
//!   of each batch-mean loss averaged over batches;
//! - [`Estimator::PerExample`] ([`per_example`]): the mean of per-example squared gradients;
//! - [`Estimator::Variational`] ([`variational`]): learned per-filter noise variances.
//!
//! Every estimator keeps only accumulators between batches, so memory does not grow with the
//! number of batches, and everything random (label draws, variational noise) comes from a
//! ChaCha8 generator seeded with [`FisherSettings::seed`]: equal settings and inputs give
//! bit-identical results.

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::probe::{BnMode, ParamKind, Probe, ProbeParam};
use crate::{Error, Result};

pub mod labels;
pub mod montecarlo;
pub mod per_example;
pub mod variational;

/// Which estimator of the Fisher diagonal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Estimator {
    /// The reference convention: squared gradient of the batch-mean loss, labels sampled from
    /// the model, averaged over batches (F / batch_size in expectation).
    MonteCarlo,
    /// Mean of per-example squared gradients, labels sampled from the model.
    PerExample,
    /// Learned per-filter noise variances (local reparametrisation), the paper's figures.
    Variational,
}

/// A linear head `[classes, features]` fitted on the probe's features.
#[derive(Debug, Clone)]
pub struct Head {
    /// `[classes, features]`.
    pub weight: Var,
    /// `[classes]`.
    pub bias: Var,
}

/// One batch for the Fisher pass.
#[derive(Debug, Clone)]
pub struct FisherBatch {
    /// Input of stage `from_stage`: images `[N,3,H,W]` when it is 0, cached activations otherwise.
    pub input: Tensor,
    /// Fixed targets `[N]` (u32). `None`: sample each label from the model's softmax (the
    /// Task2Vec definition); fixed labels exist for conformance tests.
    ///
    /// The variational estimator trains on these labels when given (the reference trains it on
    /// the dataset's labels) and samples from the model otherwise.
    pub labels: Option<Tensor>,
}

/// Where batches come from; called once per epoch (the variational estimator takes several).
pub trait BatchSource {
    /// The batches of epoch `epoch`, in order.
    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<FisherBatch>> + '_>;
}

/// Settings of the variational estimator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariationalSettings {
    /// Weight of the KL term (the paper: 1e-7).
    pub beta: f64,
    /// Epochs over the batch source (the paper: 2).
    pub epochs: usize,
    /// Adam learning rate of the log-variances (reference: 1e-2).
    pub lr_variance: f64,
    /// Adam learning rate of the head (reference: 5e-4).
    pub lr_head: f64,
}

impl Default for VariationalSettings {
    /// The reference values: beta 1e-7, 2 epochs, lr 1e-2 for the variances, 5e-4 for the head.
    fn default() -> Self {
        VariationalSettings {
            beta: 1e-7,
            epochs: 2,
            lr_variance: 1e-2,
            lr_head: 5e-4,
        }
    }
}

/// Settings of one Fisher estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FisherSettings {
    /// The estimator.
    pub estimator: Estimator,
    /// Batch-norm behaviour during the pass.
    pub bn: BnMode,
    /// First stage whose parameters get a Fisher (Task2Vec's `skip_layers`).
    pub from_stage: usize,
    /// Seed of the label sampling (and of the variational noise).
    pub seed: u64,
    /// Variational settings (used by [`Estimator::Variational`] only).
    pub variational: VariationalSettings,
}

/// The Fisher diagonal of one parameter.
#[derive(Debug, Clone)]
pub struct ParamFisher {
    /// Parameter name in checkpoint layout.
    pub name: String,
    /// Owning module.
    pub module: String,
    /// Kind (decides filter averaging).
    pub kind: ParamKind,
    /// Same shape as the parameter (for the variational estimator: one value per filter,
    /// `[out]`, the inverse variance).
    pub diag: Tensor,
    /// Shape of the parameter itself (equal to `diag`'s shape except for per-filter values).
    pub weight_shape: Vec<usize>,
}

/// The result of [`estimate`].
#[derive(Debug, Clone)]
pub struct FisherDiag {
    /// Every parameter of stage >= `from_stage`, in module order, classifier excluded. The
    /// variational estimator only has the convolution kernels (dense and depthwise), one value
    /// per filter: batch norms get no noise, as in the reference.
    pub params: Vec<ParamFisher>,
    /// Number of examples that contributed (summed over epochs for the variational estimator).
    pub samples: usize,
    /// Per-layer prior scale (variational only), by module name.
    pub scale: Vec<(String, f32)>,
    /// Cross-entropy of each backward pass, in order: one per batch (Monte-Carlo, batch mean),
    /// per example (per-example) or per optimisation step (variational, the KL term excluded).
    pub losses: Vec<f64>,
}

/// Estimates the Fisher diagonal.
///
/// Errors: [`Error::Mismatch`] when the head does not fit the probe, `from_stage` is out of
/// range, a batch is empty or has labels that do not fit, or the source has no batch at all;
/// any error the source yields is passed on.
pub fn estimate(
    probe: &dyn Probe,
    head: &Head,
    source: &dyn BatchSource,
    settings: &FisherSettings,
) -> Result<FisherDiag> {
    let num_stages = probe.info().num_stages;
    if settings.from_stage > num_stages {
        return Err(Error::Mismatch(format!(
            "Fisher from stage {} but the probe `{}` has {num_stages} stages",
            settings.from_stage,
            probe.info().arch
        )));
    }
    let head = HeadTensors::new(probe, head)?;
    match settings.estimator {
        Estimator::MonteCarlo => montecarlo::estimate(probe, &head, source, settings),
        Estimator::PerExample => per_example::estimate(probe, &head, source, settings),
        Estimator::Variational => variational::estimate(probe, &head, source, settings),
    }
}

/// The head's tensors in the probe's dtype and device, detached: the estimators never need the
/// head's own Fisher (the variational one trains a private copy).
#[derive(Debug, Clone)]
pub(crate) struct HeadTensors {
    /// `[classes, features]`.
    pub weight: Tensor,
    /// `[classes]`.
    pub bias: Tensor,
}

impl HeadTensors {
    fn new(probe: &dyn Probe, head: &Head) -> Result<Self> {
        let info = probe.info();
        let w = head.weight.as_detached_tensor();
        let b = head.bias.as_detached_tensor();
        let ok = w.rank() == 2
            && w.dim(1)? == info.feature_dim
            && w.dim(0)? >= 1
            && b.dims() == [w.dim(0)?];
        if !ok {
            return Err(Error::Mismatch(format!(
                "head weight {:?} and bias {:?} do not fit the {} features of `{}` \
                 (want [classes, {}] and [classes])",
                w.dims(),
                b.dims(),
                info.feature_dim,
                info.arch,
                info.feature_dim
            )));
        }
        let (dev, dtype) = (probe.device(), probe.dtype());
        Ok(HeadTensors {
            weight: w.to_dtype(dtype)?.to_device(dev)?,
            bias: b.to_dtype(dtype)?.to_device(dev)?,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.bias.dims()[0]
    }
}

/// Logits `[N, classes]` of a linear head on features `[N, F]`.
pub(crate) fn linear(features: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(features.matmul(&weight.t()?)?.broadcast_add(bias)?)
}

/// The parameters the Fisher covers: stage >= `from_stage`, classifier excluded, module order.
pub(crate) fn covered_params(probe: &dyn Probe, from_stage: usize) -> Vec<&ProbeParam> {
    probe
        .params()
        .iter()
        .filter(|p| p.stage.is_some_and(|s| s >= from_stage))
        .filter(|p| {
            !matches!(
                p.kind,
                ParamKind::ClassifierWeight | ParamKind::ClassifierBias
            )
        })
        .collect()
}

/// Checks a batch's input against the probe and returns its size.
pub(crate) fn check_batch(probe: &dyn Probe, batch: &FisherBatch, index: usize) -> Result<usize> {
    let x = &batch.input;
    let n = x.dims().first().copied().unwrap_or(0);
    if x.rank() < 2 || n == 0 {
        return Err(Error::Mismatch(format!(
            "Fisher batch {index}: input of shape {:?} is empty or not a batch",
            x.dims()
        )));
    }
    if x.dtype() != probe.dtype() {
        return Err(Error::Mismatch(format!(
            "Fisher batch {index}: input has dtype {:?}, the probe runs in {:?}",
            x.dtype(),
            probe.dtype()
        )));
    }
    Ok(n)
}

/// Running sums of squared gradients, one per covered parameter, in the probe's dtype.
pub(crate) struct SquaredGradSums {
    sums: Vec<Tensor>,
}

impl SquaredGradSums {
    pub fn new(params: &[&ProbeParam]) -> Result<Self> {
        let sums = params
            .iter()
            .map(|p| {
                let t = p.var.as_tensor();
                Tensor::zeros(t.dims(), t.dtype(), t.device())
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(SquaredGradSums { sums })
    }

    /// Adds the squared gradient of every parameter; a parameter without a gradient (no path
    /// from the loss) contributes zero, so the layout never depends on the data. On the CPU
    /// each sum is updated in place in one pass ([`AddSquare`]), elsewhere through candle's
    /// `sqr` and `add`.
    pub fn add(
        &mut self,
        params: &[&ProbeParam],
        grads: &candle_core::backprop::GradStore,
    ) -> Result<()> {
        for (sum, p) in self.sums.iter_mut().zip(params) {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            if sum.device().is_cpu() && sum.dtype() == g.dtype() && sum.dims() == g.dims() {
                sum.inplace_op2(&g.detach().contiguous()?, &AddSquare)?;
            } else {
                *sum = sum.add(&g.detach().sqr()?)?.detach();
            }
        }
        Ok(())
    }

    /// The squared gradient of every parameter (`None`: no gradient), detached.
    pub fn squares(
        params: &[&ProbeParam],
        grads: &candle_core::backprop::GradStore,
    ) -> Result<Vec<Option<Tensor>>> {
        params
            .iter()
            .map(|p| {
                // Detached: the accumulator must never keep a graph alive.
                Ok(match grads.get(p.var.as_tensor()) {
                    Some(g) => Some(g.detach().sqr()?),
                    None => None,
                })
            })
            .collect()
    }

    /// Adds squares from [`SquaredGradSums::squares`], in the parameters' order.
    pub fn add_squares(&mut self, squares: Vec<Option<Tensor>>) -> Result<()> {
        for (sum, sq) in self.sums.iter_mut().zip(squares) {
            if let Some(sq) = sq {
                *sum = sum.add(&sq)?.detach();
            }
        }
        Ok(())
    }

    /// The sums divided by `count`, as [`ParamFisher`]s.
    pub fn finish(self, params: &[&ProbeParam], count: usize) -> Result<Vec<ParamFisher>> {
        let inv = 1.0 / count.max(1) as f64;
        self.sums
            .into_iter()
            .zip(params)
            .map(|(s, p)| {
                Ok(ParamFisher {
                    name: p.name.clone(),
                    module: p.module.clone(),
                    kind: p.kind,
                    weight_shape: s.dims().to_vec(),
                    diag: (s * inv)?,
                })
            })
            .collect()
    }
}

/// `sum += g²`, in place, for same-shape f32 or f64 CPU tensors: one pass and no allocation
/// (candle's `sqr` then `add` make two passes and two new tensors per parameter and batch).
struct AddSquare;

impl candle_core::InplaceOp2 for AddSquare {
    fn name(&self) -> &'static str {
        "add-square"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::CpuStorage::{F32, F64};
        fn run<T: candle_core::WithDType>(
            sum: &mut [T],
            l1: &candle_core::Layout,
            g: &[T],
            l2: &candle_core::Layout,
        ) -> candle_core::Result<()> {
            match (l1.contiguous_offsets(), l2.contiguous_offsets()) {
                (Some((a0, a1)), Some((b0, b1))) if a1 - a0 == b1 - b0 => {
                    for (s, &v) in sum[a0..a1].iter_mut().zip(&g[b0..b1]) {
                        *s += v * v;
                    }
                    Ok(())
                }
                _ => candle_core::bail!(
                    "add-square: layouts {:?} and {:?} are not contiguous and alike",
                    l1.dims(),
                    l2.dims()
                ),
            }
        }
        match (s1, s2) {
            (F32(sum), F32(g)) => run(sum, l1, g, l2),
            (F64(sum), F64(g)) => run(sum, l1, g, l2),
            (a, b) => candle_core::bail!(
                "add-square supports f32 and f64 only, got {:?} and {:?}",
                candle_core::backend::BackendStorage::dtype(&*a),
                candle_core::backend::BackendStorage::dtype(b)
            ),
        }
    }
}

/// Fixed labels of a batch as u32 `[n]` on `device`, checked against the number of classes.
pub(crate) fn fixed_labels(
    labels: &Tensor,
    n: usize,
    classes: usize,
    device: &Device,
    index: usize,
) -> Result<Tensor> {
    if labels.dims() != [n] {
        return Err(Error::Mismatch(format!(
            "Fisher batch {index}: labels of shape {:?} for {n} inputs",
            labels.dims()
        )));
    }
    if labels.dtype().is_float() {
        return Err(Error::Mismatch(format!(
            "Fisher batch {index}: labels must be integers, got {:?}",
            labels.dtype()
        )));
    }
    let values = labels.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    if let Some(bad) = values
        .iter()
        .find(|&&v| v < 0 || v as u64 >= classes as u64)
    {
        return Err(Error::Mismatch(format!(
            "Fisher batch {index}: label {bad} outside the head's {classes} classes"
        )));
    }
    let v: Vec<u32> = values.iter().map(|&v| v as u32).collect();
    Ok(Tensor::from_vec(v, n, device)?)
}

/// Errors when a source gave no batch at all.
pub(crate) fn require_samples(samples: usize) -> Result<()> {
    if samples == 0 {
        return Err(Error::Mismatch(
            "the Fisher batch source gave no batch".to_string(),
        ));
    }
    Ok(())
}
