//! The task's classifier head: a fresh linear layer fitted on the probe's cached features.
//!
//! Task2Vec replaces the probe's classifier by a linear layer with one output per class of the
//! task and trains only that layer, on features computed once. The recipe is the reference's:
//! cross-entropy, Adam (β = 0.9, 0.999, ε = 1e-8) with *coupled* L2 weight decay — the decay
//! is added to the gradient before the moments, as `torch.optim.Adam(weight_decay=..)` does,
//! not subtracted from the weights as AdamW does — on weight and bias alike, a number of epochs
//! of class-balanced draws with replacement ([`balanced_draws`]) in mini-batches.
//!
//! The initialisation follows `torch.nn.Linear`: weight and bias uniform in
//! `[-1/sqrt(features), 1/sqrt(features))` (Kaiming-uniform with a = sqrt(5)), drawn from a
//! seeded ChaCha8 generator, weight row-major first, then bias, so a seed fixes the head.
//!
//! The gradient of a linear softmax classifier has a closed form (`(softmax - onehot) / B`
//! times the inputs), so no autograd graph is built: each step is two small matrix products
//! on the features' device, and the whole fit is deterministic for a seed.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::balanced_draws;
use crate::fisher::Head;
use crate::{Error, Result};

/// Adam's first-moment decay (PyTorch's default).
const BETA1: f64 = 0.9;
/// Adam's second-moment decay (PyTorch's default).
const BETA2: f64 = 0.999;
/// Adam's denominator guard (PyTorch's default).
const ADAM_EPS: f64 = 1e-8;

/// How the head is trained. The defaults are the reference Task2Vec recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeadSettings {
    /// Adam learning rate (reference: 4e-4).
    pub lr: f64,
    /// Coupled L2 weight decay, added to the gradient (reference: 1e-4).
    pub weight_decay: f64,
    /// Epochs (reference: 10).
    pub epochs: usize,
    /// Class-balanced draws, with replacement, per epoch (reference: 10,000).
    pub draws_per_epoch: usize,
    /// Mini-batch size (reference: 64); the last batch of an epoch may be smaller.
    pub batch_size: usize,
}

impl Default for HeadSettings {
    fn default() -> Self {
        HeadSettings {
            lr: 4e-4,
            weight_decay: 1e-4,
            epochs: 10,
            draws_per_epoch: 10_000,
            batch_size: 64,
        }
    }
}

/// A fitted head and how well it fits.
#[derive(Debug, Clone)]
pub struct FittedHead {
    /// The head, in the features' dtype and on their device.
    pub head: Head,
    /// Mean cross-entropy over the draws of each epoch (empty with zero epochs).
    pub epoch_losses: Vec<f64>,
    /// Accuracy of the fitted head on all the features it was fitted on, in `[0, 1]`.
    pub train_accuracy: f64,
}

/// A fresh head `[classes, features]` initialised like `torch.nn.Linear` from `seed` (see the
/// [module docs](self)), in `dtype` on `device`.
pub fn init_head(
    classes: usize,
    features: usize,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<Head> {
    if classes == 0 || features == 0 {
        return Err(Error::Mismatch(format!(
            "a head needs at least one class and one feature, not {classes}×{features}"
        )));
    }
    let bound = 1.0 / (features as f64).sqrt();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut uniform = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| rng.random_range(-bound..bound))
            .collect::<Vec<f64>>()
    };
    let weight = Tensor::from_vec(uniform(classes * features), (classes, features), device)?;
    let bias = Tensor::from_vec(uniform(classes), classes, device)?;
    Ok(Head {
        weight: Var::from_tensor(&weight.to_dtype(dtype)?)?,
        bias: Var::from_tensor(&bias.to_dtype(dtype)?)?,
    })
}

/// Fits `head` on `features` `[n, F]` with `labels` (one per row, each below the head's class
/// count), drawing `settings.draws_per_epoch` rows per epoch class-balanced with
/// [`balanced_draws`] seeded by `draw_seed(epoch)`.
///
/// `progress(done, total)` is called after every mini-batch with the draws processed so far
/// and `epochs × draws_per_epoch`.
///
/// Errors: [`Error::Mismatch`] when the shapes, labels or settings do not fit.
pub fn fit_head(
    head: &Head,
    features: &Tensor,
    labels: &[usize],
    settings: &HeadSettings,
    draw_seed: &dyn Fn(usize) -> u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FittedHead> {
    if settings.batch_size == 0 {
        return Err(Error::Mismatch(
            "head settings: batch_size must be at least 1".into(),
        ));
    }
    let total = settings.epochs * settings.draws_per_epoch;
    let mut done = 0;
    // Lazily, one epoch at a time: only one epoch's draws are ever held.
    let batches = (0..settings.epochs).map(|epoch| {
        let draws = balanced_draws(labels, settings.draws_per_epoch, draw_seed(epoch));
        draws
            .chunks(settings.batch_size)
            .map(<[usize]>::to_vec)
            .collect::<Vec<_>>()
    });
    fit_head_on_batches(head, features, labels, settings, batches, &mut |n| {
        done += n;
        progress(done, total);
    })
}

/// Fits `head` on explicit mini-batches: `epochs` yields, per epoch, the row indices of each
/// mini-batch. This is [`fit_head`] without the sampler, so the optimiser can be checked
/// against PyTorch on the same batches. `step(n)` is called after each mini-batch of `n` rows.
pub fn fit_head_on_batches(
    head: &Head,
    features: &Tensor,
    labels: &[usize],
    settings: &HeadSettings,
    epochs: impl IntoIterator<Item = Vec<Vec<usize>>>,
    step: &mut dyn FnMut(usize),
) -> Result<FittedHead> {
    let mut w = head.weight.as_detached_tensor();
    let mut b = head.bias.as_detached_tensor();
    let (classes, dim) = w.dims2()?;
    check_inputs(features, labels, classes, dim, &b)?;
    let (device, dtype) = (features.device().clone(), features.dtype());
    w = w.to_device(&device)?.to_dtype(dtype)?;
    b = b.to_device(&device)?.to_dtype(dtype)?;
    let mut adam_w = Adam::new(&w)?;
    let mut adam_b = Adam::new(&b)?;
    let mut epoch_losses = Vec::new();
    for epoch in epochs {
        let mut loss_sum = Tensor::zeros((), DType::F64, &device)?;
        let mut rows = 0usize;
        for batch in epoch {
            if batch.is_empty() {
                continue;
            }
            let x = gather_rows(features, &batch)?;
            let y: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
            let (loss, gw, gb) = gradients(&x, &y, &w, &b)?;
            // Coupled L2: the decay joins the gradient before Adam's moments (not AdamW).
            let gw = (gw + (&w * settings.weight_decay)?)?;
            let gb = (gb + (&b * settings.weight_decay)?)?;
            w = adam_w.step(&w, &gw, settings.lr)?;
            b = adam_b.step(&b, &gb, settings.lr)?;
            loss_sum = (loss_sum + (loss.to_dtype(DType::F64)? * batch.len() as f64)?)?;
            rows += batch.len();
            step(batch.len());
        }
        if rows > 0 {
            epoch_losses.push(loss_sum.to_scalar::<f64>()? / rows as f64);
        }
    }
    let train_accuracy = accuracy(features, labels, &w, &b)?;
    Ok(FittedHead {
        head: Head {
            weight: Var::from_tensor(&w)?,
            bias: Var::from_tensor(&b)?,
        },
        epoch_losses,
        train_accuracy,
    })
}

fn check_inputs(
    features: &Tensor,
    labels: &[usize],
    classes: usize,
    dim: usize,
    bias: &Tensor,
) -> Result<()> {
    let (n, f) = features.dims2().map_err(|_| {
        Error::Mismatch(format!(
            "head features must be [n, {dim}], got {:?}",
            features.dims()
        ))
    })?;
    if f != dim || bias.dims() != [classes] {
        return Err(Error::Mismatch(format!(
            "head weight [{classes}, {dim}] and bias {:?} do not fit features [{n}, {f}]",
            bias.dims()
        )));
    }
    if labels.len() != n {
        return Err(Error::Mismatch(format!(
            "{} labels for {n} feature rows",
            labels.len()
        )));
    }
    if let Some(&bad) = labels.iter().find(|&&y| y >= classes) {
        return Err(Error::Mismatch(format!(
            "label {bad} is out of range for a head with {classes} classes"
        )));
    }
    Ok(())
}

/// Rows `indices` of `x` (a row may repeat: draws are with replacement).
fn gather_rows(x: &Tensor, indices: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    let idx = Tensor::from_vec(idx, indices.len(), x.device())?;
    Ok(x.index_select(&idx, 0)?)
}

/// One-hot rows `[n, classes]` in `like`'s dtype and device.
fn one_hot(labels: &[usize], classes: usize, like: &Tensor) -> Result<Tensor> {
    let mut data = vec![0f32; labels.len() * classes];
    for (row, &y) in labels.iter().enumerate() {
        data[row * classes + y] = 1.0;
    }
    Ok(Tensor::from_vec(data, (labels.len(), classes), like.device())?.to_dtype(like.dtype())?)
}

/// Mean cross-entropy of the head on `x` with labels `y`, and its gradients with respect to
/// the weight and the bias: with `p = softmax(x Wᵀ + b)` and `g = (p - onehot(y)) / n`,
/// `∂L/∂W = gᵀ x` and `∂L/∂b = Σ_rows g`.
fn gradients(x: &Tensor, y: &[usize], w: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let n = y.len();
    let logits = x.matmul(&w.t()?)?.broadcast_add(b)?;
    let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let onehot = one_hot(y, w.dim(0)?, x)?;
    let loss = ((&log_p * &onehot)?.sum_all()? * (-1.0 / n as f64))?;
    let g = ((log_p.exp()? - onehot)? * (1.0 / n as f64))?;
    let gw = g.t()?.matmul(x)?;
    let gb = g.sum(0)?;
    Ok((loss, gw, gb))
}

/// Fraction of rows whose arg-max logit is their label.
fn accuracy(features: &Tensor, labels: &[usize], w: &Tensor, b: &Tensor) -> Result<f64> {
    if labels.is_empty() {
        return Ok(0.0);
    }
    let logits = features.matmul(&w.t()?)?.broadcast_add(b)?;
    let predicted = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let right = predicted
        .iter()
        .zip(labels)
        .filter(|(&p, &y)| p as usize == y)
        .count();
    Ok(right as f64 / labels.len() as f64)
}

/// PyTorch's Adam update for one tensor (no AMSGrad, no maximise).
struct Adam {
    m: Tensor,
    v: Tensor,
    t: i32,
}

impl Adam {
    fn new(like: &Tensor) -> Result<Self> {
        Ok(Adam {
            m: like.zeros_like()?,
            v: like.zeros_like()?,
            t: 0,
        })
    }

    /// `p - lr / (1 - β1ᵗ) · m / (sqrt(v) / sqrt(1 - β2ᵗ) + ε)`, PyTorch's arrangement of the
    /// bias corrections.
    fn step(&mut self, p: &Tensor, g: &Tensor, lr: f64) -> Result<Tensor> {
        self.t += 1;
        self.m = ((&self.m * BETA1)? + (g * (1.0 - BETA1))?)?;
        self.v = ((&self.v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
        let bc1 = 1.0 - BETA1.powi(self.t);
        let bc2 = 1.0 - BETA2.powi(self.t);
        let denom = ((self.v.sqrt()? * (1.0 / bc2.sqrt()))? + ADAM_EPS)?;
        let update = (self.m.div(&denom)? * (lr / bc1))?;
        Ok((p - update)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, f: usize, classes: usize, seed: u64) -> (Tensor, Vec<usize>) {
        // Class c's features cluster around a one-hot direction: linearly separable.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
        let mut data = Vec::with_capacity(n * f);
        for &y in &labels {
            for j in 0..f {
                let centre = if j == y { 3.0 } else { 0.0 };
                data.push(centre + rng.random_range(-1.0f32..1.0));
            }
        }
        (
            Tensor::from_vec(data, (n, f), &Device::Cpu).unwrap(),
            labels,
        )
    }

    #[test]
    fn closed_form_gradients_match_autograd() {
        let (x, y) = toy(7, 5, 3, 1);
        let head = init_head(3, 5, 2, &Device::Cpu, DType::F32).unwrap();
        let (w, b) = (head.weight.as_tensor(), head.bias.as_tensor());
        let (loss, gw, gb) = gradients(&x, &y, &w.detach(), &b.detach()).unwrap();

        let logits = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap();
        let target = Tensor::new(
            y.iter().map(|&v| v as u32).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap();
        let reference = candle_nn::loss::cross_entropy(&logits, &target).unwrap();
        let grads = reference.backward().unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            a.sub(b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let ref_loss: f32 = reference.to_scalar().unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() - ref_loss).abs() < 1e-6);
        assert!(diff(&gw, grads.get(w).unwrap()) < 1e-6);
        assert!(diff(&gb, grads.get(b).unwrap()) < 1e-6);
    }

    #[test]
    fn init_is_seeded_and_within_torch_bounds() {
        let a = init_head(4, 100, 9, &Device::Cpu, DType::F32).unwrap();
        let b = init_head(4, 100, 9, &Device::Cpu, DType::F32).unwrap();
        let c = init_head(4, 100, 10, &Device::Cpu, DType::F32).unwrap();
        let flat = |h: &Head| h.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&a), flat(&b));
        assert_ne!(flat(&a), flat(&c));
        let w = flat(&a);
        assert!(w.iter().all(|v| v.abs() < 0.1), "bound is 1/sqrt(100)");
        // Not degenerate: the values spread over most of the interval.
        let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.09, "max |w| = {max}");
        assert!(init_head(0, 3, 1, &Device::Cpu, DType::F32).is_err());
    }

    #[test]
    fn first_adam_step_moves_each_weight_by_lr_times_sign() {
        // With m̂ = g and v̂ = g² after one step, the update is lr·g/(|g| + ε).
        let p = Tensor::new(&[1.0f64, -2.0, 0.5], &Device::Cpu).unwrap();
        let g = Tensor::new(&[0.3f64, -4.0, 1e-3], &Device::Cpu).unwrap();
        let mut adam = Adam::new(&p).unwrap();
        let q = adam.step(&p, &g, 0.1).unwrap().to_vec1::<f64>().unwrap();
        let want = [
            1.0 - 0.1 * 0.3 / (0.3 + 1e-8),
            -2.0 + 0.1 * 4.0 / (4.0 + 1e-8),
            0.5 - 0.1 * 1e-3 / (1e-3 + 1e-8),
        ];
        for (a, b) in q.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    #[test]
    fn fitting_separable_features_is_accurate_and_reproducible() {
        let (x, y) = toy(60, 8, 4, 3);
        let settings = HeadSettings {
            lr: 5e-2,
            epochs: 3,
            draws_per_epoch: 300,
            batch_size: 32,
            ..HeadSettings::default()
        };
        let run = |seed: u64| {
            let head = init_head(4, 8, seed, &Device::Cpu, DType::F32).unwrap();
            let mut calls = Vec::new();
            let fit = fit_head(
                &head,
                &x,
                &y,
                &settings,
                &|e| 100 + e as u64,
                &mut |d, t| calls.push((d, t)),
            )
            .unwrap();
            (fit, calls)
        };
        let (a, calls) = run(5);
        assert!(a.train_accuracy > 0.95, "accuracy {}", a.train_accuracy);
        assert_eq!(a.epoch_losses.len(), 3);
        assert!(
            a.epoch_losses[2] < a.epoch_losses[0],
            "{:?}",
            a.epoch_losses
        );
        assert_eq!(calls.last(), Some(&(900, 900)));
        assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));
        let (b, _) = run(5);
        let flat = |h: &Head| h.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&a.head), flat(&b.head));
    }

    #[test]
    fn bad_labels_are_refused() {
        let (x, mut y) = toy(6, 4, 2, 1);
        let head = init_head(2, 4, 1, &Device::Cpu, DType::F32).unwrap();
        y[3] = 2;
        let e = fit_head(
            &head,
            &x,
            &y,
            &HeadSettings::default(),
            &|_| 0,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("label 2"), "{e}");
        let e = fit_head(
            &head,
            &x,
            &y[..5],
            &HeadSettings::default(),
            &|_| 0,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("5 labels"), "{e}");
    }
}
