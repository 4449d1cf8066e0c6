//! The variational estimator: learned per-filter noise variances (the paper's figures).
//!
//! Every convolution kernel of stage >= `from_stage` (dense and depthwise; batch norms and the
//! classifier get no noise) is given Gaussian weight noise of variance `σ²_f = exp(logvar_f)`,
//! one log-variance per output filter, and a per-layer prior `N(0, λ²)`. The variances (and a
//! private copy of the head) are trained to minimise
//!
//! `CE(head(f(x; w + ε)), y) + β · KL(N(w, σ²) || N(0, λ²))`
//!
//! with Adam, for [`VariationalSettings::epochs`] passes over the batch source. The noise is
//! sampled with the local reparametrisation trick (Kingma et al. 2015): instead of noisy
//! weights, each convolution's output gets `sqrt(conv(x² + 0.01, σ²)) · ε`, ε ~ N(0, 1), added
//! before its batch norm through [`Probe::forward_stages_perturbed`]. A filter that tolerates
//! much noise carries little information about the task: its Fisher is approximately
//! `1 / σ²_f`, and that (`exp(-logvar_f)`) is the filter's value; `exp(-log λ²)` per layer goes
//! into [`FisherDiag::scale`].
//!
//! Faithful to the reference (`variational.py` of aws-cv-task2vec) in:
//! - initialisation: `logvar_f = ln(0.05 · var_f + 1e-8)` with `var_f` the unbiased variance of
//!   filter f's weights, `log λ² = ln(mean(w²) + 1e-8)` per layer;
//! - the KL term, summed over layers, exactly as the reference writes it (without the ½):
//!   `Σ w²/λ² + Σ σ²/λ² + n·log λ² − Σ logvar − n`, sums over every weight entry (a filter's
//!   log-variance counts once per entry of the filter);
//! - the local reparametrisation `conv(x² + 0.01, σ²)` (padding adds zeros, as PyTorch's);
//! - Adam (β₁ 0.9, β₂ 0.999, ε 1e-8, no weight decay), one learning rate for the variances and
//!   one for the head; the probe's own weights stay fixed.
//!
//! Deviations, all deliberate:
//! - the reference also trains the batch-norm parameters (lr 5e-4); the probe is shared and
//!   fixed here, so they are not trained;
//! - the reference trains on the dataset's labels: so does this estimator when the batches
//!   carry labels; without labels it samples them from the (noisy) model like the other
//!   estimators;
//! - batch norm follows [`FisherSettings::bn`] (the reference always uses train mode);
//! - everything random is seeded: labels from `seed` (stream 0), noise from `seed` on ChaCha8
//!   stream 1, standard normals by Box–Muller.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use candle_nn::loss::cross_entropy;
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::labels::LabelSampler;
use super::{
    check_batch, covered_params, fixed_labels, linear, require_samples, BatchSource, FisherDiag,
    FisherSettings, HeadTensors, ParamFisher, VariationalSettings,
};
use crate::probe::{ConvPerturbation, Forward, ParamKind, Probe, ProbeParam};
use crate::{Error, Result};

/// Added to the squared input before the variance convolution, as in the reference: keeps the
/// output variance (and the gradient of its square root) away from zero.
const INPUT_VARIANCE_FLOOR: f64 = 1e-2;
/// Scale of the initial variance relative to the filter's weight variance (reference: 0.05).
const INITIAL_VARIANCE_SCALE: f64 = 0.05;
/// Keeps the logarithms of the initial values finite for all-zero filters (reference: 1e-8).
const LOG_FLOOR: f64 = 1e-8;

/// One noisy convolution: its learned log-variances and prior scale.
struct NoisyLayer<'a> {
    param: &'a ProbeParam,
    /// `[out]`: one log-variance per output filter.
    logvar: Var,
    /// `[]`: log λ² of the layer's prior.
    loglambda2: Var,
    /// Σ w² of the (fixed) weights.
    weight_sq_sum: f64,
    /// Entries of the weight.
    numel: usize,
    /// Entries per filter.
    per_filter: usize,
}

impl<'a> NoisyLayer<'a> {
    fn new(param: &'a ProbeParam) -> Result<Self> {
        let w = param.var.as_detached_tensor();
        let dims = w.dims().to_vec();
        let out = dims.first().copied().unwrap_or(0);
        let numel = w.elem_count();
        if out == 0 || numel == 0 {
            return Err(Error::Mismatch(format!(
                "variational Fisher: `{}` has an empty weight {dims:?}",
                param.name
            )));
        }
        let per_filter = numel / out;
        let rows = w
            .to_dtype(DType::F64)?
            .reshape((out, per_filter))?
            .to_vec2::<f64>()?;
        let init: Vec<f64> = rows
            .iter()
            .map(|r| {
                let mean = r.iter().sum::<f64>() / per_filter as f64;
                // Unbiased, as torch.var; a one-entry filter falls back to the biased estimate.
                let ss: f64 = r.iter().map(|v| (v - mean) * (v - mean)).sum();
                let var = ss / per_filter.saturating_sub(1).max(1) as f64;
                (var * INITIAL_VARIANCE_SCALE + LOG_FLOOR).ln()
            })
            .collect();
        let weight_sq_sum: f64 = rows.iter().flatten().map(|v| v * v).sum();
        let dtype = w.dtype();
        let dev = w.device();
        let logvar = Var::from_tensor(&Tensor::from_vec(init, out, dev)?.to_dtype(dtype)?)?;
        let loglambda2 = Var::from_tensor(
            &Tensor::new((weight_sq_sum / numel as f64 + LOG_FLOOR).ln(), dev)?.to_dtype(dtype)?,
        )?;
        Ok(NoisyLayer {
            param,
            logvar,
            loglambda2,
            weight_sq_sum,
            numel,
            per_filter,
        })
    }

    /// This layer's term of the reference KL, without the constant `-numel`.
    fn kl(&self) -> Result<Tensor> {
        let inv_lambda2 = self.loglambda2.as_tensor().neg()?.exp()?;
        let lv = self.logvar.as_tensor();
        let pf = self.per_filter as f64;
        let w_norm2 = (&inv_lambda2 * self.weight_sq_sum)?;
        let trace = ((lv.exp()?.sum_all()? * pf)? * &inv_lambda2)?;
        let lambda2_cost = (self.loglambda2.as_tensor() * self.numel as f64)?;
        let logvar = (lv.sum_all()? * pf)?;
        Ok((((w_norm2 + trace)? + lambda2_cost)? - logvar)?)
    }
}

/// The [`ConvPerturbation`] that adds the local-reparametrisation noise.
struct LocalReparametrisation<'a, 'b> {
    layers: HashMap<&'b str, &'b NoisyLayer<'a>>,
    rng: RefCell<ChaCha8Rng>,
}

impl LocalReparametrisation<'_, '_> {
    /// A tensor of standard normals (Box–Muller) shaped like `like`.
    fn standard_normal(&self, like: &Tensor) -> Result<Tensor> {
        let n = like.elem_count();
        let mut rng = self.rng.borrow_mut();
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            // 1 - u keeps the logarithm's argument in (0, 1].
            let u1 = 1.0 - rng.random::<f64>();
            let u2 = rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            v.push(r * t.cos());
            v.push(r * t.sin());
        }
        v.truncate(n);
        Ok(Tensor::from_vec(v, like.shape(), like.device())?.to_dtype(like.dtype())?)
    }
}

impl ConvPerturbation for LocalReparametrisation<'_, '_> {
    fn perturb(
        &self,
        module: &str,
        input: &Tensor,
        conv: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Option<Tensor>> {
        let Some(layer) = self.layers.get(module) else {
            return Ok(None);
        };
        let shape = layer.param.var.as_tensor().dims().to_vec();
        let mut per_filter_shape = vec![1usize; shape.len()];
        per_filter_shape[0] = shape[0];
        let variance = layer
            .logvar
            .as_tensor()
            .exp()?
            .reshape(per_filter_shape)?
            .broadcast_as(shape)?
            .contiguous()?;
        let out_var = conv(&(input.sqr()? + INPUT_VARIANCE_FLOOR)?, &variance)?;
        let eps = self.standard_normal(&out_var)?;
        Ok(Some(out_var.sqrt()?.mul(&eps)?))
    }
}

fn check_settings(v: &VariationalSettings) -> Result<()> {
    let bad = |what: &str| Err(Error::Mismatch(format!("variational Fisher: {what}")));
    if v.epochs == 0 {
        return bad("epochs must be at least 1");
    }
    if !(v.beta.is_finite() && v.beta >= 0.0) {
        return bad(&format!("beta must be finite and >= 0, got {}", v.beta));
    }
    for (name, lr) in [("lr_variance", v.lr_variance), ("lr_head", v.lr_head)] {
        if !(lr.is_finite() && lr > 0.0) {
            return bad(&format!("{name} must be finite and > 0, got {lr}"));
        }
    }
    Ok(())
}

fn adam(vars: Vec<Var>, lr: f64) -> Result<AdamW> {
    Ok(AdamW::new(
        vars,
        ParamsAdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?)
}

/// Runs the variational estimator over `settings.variational.epochs` epochs of `source`.
pub(crate) fn estimate(
    probe: &dyn Probe,
    head: &HeadTensors,
    source: &dyn BatchSource,
    settings: &FisherSettings,
) -> Result<FisherDiag> {
    let vs = &settings.variational;
    check_settings(vs)?;
    let layers = covered_params(probe, settings.from_stage)
        .into_iter()
        .filter(|p| matches!(p.kind, ParamKind::Conv | ParamKind::Depthwise))
        .map(NoisyLayer::new)
        .collect::<Result<Vec<_>>>()?;
    let kl_constant: f64 = layers.iter().map(|l| l.numel as f64).sum();

    // A private copy of the head: the caller's stays as it was.
    let head_w = Var::from_tensor(&head.weight.copy()?)?;
    let head_b = Var::from_tensor(&head.bias.copy()?)?;
    let mut variance_vars = Vec::with_capacity(2 * layers.len());
    for l in &layers {
        variance_vars.push(l.logvar.clone());
        variance_vars.push(l.loglambda2.clone());
    }
    let mut opt_variance = adam(variance_vars, vs.lr_variance)?;
    let mut opt_head = adam(vec![head_w.clone(), head_b.clone()], vs.lr_head)?;

    let mut noise_rng = ChaCha8Rng::seed_from_u64(settings.seed);
    noise_rng.set_stream(1);
    let hook = LocalReparametrisation {
        layers: layers
            .iter()
            .map(|l| (l.param.module.as_str(), l))
            .collect(),
        rng: RefCell::new(noise_rng),
    };
    let mut sampler = LabelSampler::new(settings.seed);
    let fwd = Forward {
        bn: settings.bn,
        grad: false,
    };
    let to = probe.info().num_stages;
    let mut samples = 0;
    let mut losses = Vec::new();
    for epoch in 0..vs.epochs {
        for (index, batch) in source.batches(epoch).enumerate() {
            let batch = batch?;
            let n = check_batch(probe, &batch, index)?;
            let features = probe.forward_stages_perturbed(
                &batch.input,
                settings.from_stage,
                to,
                fwd,
                &hook,
            )?;
            let logits = linear(&features, head_w.as_tensor(), head_b.as_tensor())?;
            let labels = match &batch.labels {
                Some(l) => fixed_labels(l, n, head.classes(), probe.device(), index)?,
                None => sampler.sample(&logits, probe.device())?,
            };
            let ce = cross_entropy(&logits, &labels)?;
            let mut loss = ce.clone();
            if vs.beta > 0.0 && !layers.is_empty() {
                let mut kl = layers[0].kl()?;
                for l in &layers[1..] {
                    kl = (kl + l.kl()?)?;
                }
                let kl = (kl - kl_constant)?;
                loss = (loss + (kl * vs.beta)?)?;
            }
            let grads = loss.backward()?;
            opt_variance.step(&grads)?;
            opt_head.step(&grads)?;
            losses.push(ce.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            samples += n;
        }
    }
    require_samples(samples)?;

    let mut params = Vec::with_capacity(layers.len());
    let mut scale = Vec::with_capacity(layers.len());
    for l in &layers {
        params.push(ParamFisher {
            name: l.param.name.clone(),
            module: l.param.module.clone(),
            kind: l.param.kind,
            diag: l.logvar.as_tensor().neg()?.exp()?,
            weight_shape: l.param.var.as_tensor().dims().to_vec(),
        });
        let s = l
            .loglambda2
            .as_tensor()
            .neg()?
            .exp()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        scale.push((l.param.module.clone(), s as f32));
    }
    Ok(FisherDiag {
        params,
        samples,
        scale,
        losses,
    })
}
