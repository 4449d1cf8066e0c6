//! Labels drawn from the model's own predictive distribution, reproducibly.
//!
//! The Fisher is an expectation over `y ~ p_w(y|x)`, so each example's label is drawn from the
//! softmax of its logits. The draw procedure is part of the project's reproducibility contract:
//!
//! 1. one [`ChaCha8Rng`] is seeded with `seed` ([`SeedableRng::seed_from_u64`]) at the start of
//!    an estimate and used for every batch, in order;
//! 2. for each row of the logits, in row order, the softmax is computed in f64 (max-subtracted),
//!    one `u` is drawn uniformly in `[0, 1)` (`Rng::random::<f64>()`), and the label is the first
//!    class whose cumulative probability exceeds `u · total`; rounding that leaves `u · total`
//!    above every partial sum picks the last class with a non-zero probability.
//!
//! The same seed and the same logits therefore give the same labels on every platform.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// A seeded sampler of labels from logits.
#[derive(Debug, Clone)]
pub struct LabelSampler {
    rng: ChaCha8Rng,
}

impl LabelSampler {
    /// A sampler whose draws are fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        LabelSampler {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// One label per row of `logits` `[N, classes]` (any float dtype), as u32 `[N]` on `device`.
    pub fn sample(&mut self, logits: &Tensor, device: &Device) -> Result<Tensor> {
        let rows = logits.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let labels = rows
            .iter()
            .map(|row| self.draw(row))
            .collect::<Result<Vec<u32>>>()?;
        let n = labels.len();
        Ok(Tensor::from_vec(labels, n, device)?)
    }

    /// One label from one row of logits.
    pub fn draw(&mut self, logits: &[f64]) -> Result<u32> {
        let u = self.uniform();
        label_from_uniform(logits, u)
    }

    /// The next uniform draw in `[0, 1)`. Drawing the uniforms of a batch first, in row order,
    /// and mapping them with [`label_from_uniform`] later gives the same labels as
    /// [`LabelSampler::draw`] row by row (what lets rows be processed in parallel).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }
}

/// The label a uniform draw `u` in `[0, 1)` selects from one row of logits: the first class
/// whose cumulative softmax probability exceeds `u · total` (see the module documentation).
pub fn label_from_uniform(logits: &[f64], u: f64) -> Result<u32> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() || logits.iter().any(|l| l.is_nan()) {
        return Err(Error::Mismatch(format!(
            "cannot sample a label: logits are not finite (max {max})"
        )));
    }
    let probs: Vec<f64> = logits.iter().map(|&l| (l - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut cum = 0.0;
    let mut last_positive = 0;
    for (c, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last_positive = c;
        }
        cum += p;
        if target < cum {
            return Ok(c as u32);
        }
    }
    Ok(last_positive as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_labels_and_frequencies_follow_the_softmax() {
        let logits = [0.0, (2.0f64).ln(), f64::NEG_INFINITY.max(-1e300)];
        let mut a = LabelSampler::new(7);
        let mut b = LabelSampler::new(7);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            let x = a.draw(&logits).unwrap();
            assert_eq!(x, b.draw(&logits).unwrap());
            counts[x as usize] += 1;
        }
        // p = (1/3, 2/3, 0): the third class has probability exactly zero after exp underflow.
        assert_eq!(counts[2], 0);
        let p1 = counts[1] as f64 / 30_000.0;
        assert!((p1 - 2.0 / 3.0).abs() < 0.01, "p1 = {p1}");
    }

    #[test]
    fn different_seeds_draw_differently() {
        let logits = [0.0, 0.0, 0.0, 0.0];
        let draws = |seed| {
            let mut s = LabelSampler::new(seed);
            (0..64)
                .map(|_| s.draw(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_ne!(draws(1), draws(2));
    }

    #[test]
    fn non_finite_logits_are_an_error() {
        let mut s = LabelSampler::new(0);
        assert!(s.draw(&[f64::NAN, 0.0]).is_err());
        assert!(s.draw(&[f64::NEG_INFINITY, f64::NEG_INFINITY]).is_err());
    }
}
