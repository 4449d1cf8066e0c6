//! Building blocks shared by the probe architectures.

use candle_core::{Tensor, Var, D};

use super::ops::Activation;
use super::{BnMode, Forward};
use crate::Result;

/// The tensor of a parameter as a forward pass should see it: tracked when gradients are
/// wanted, detached (same storage, no graph) otherwise.
pub fn param(var: &Var, fwd: Forward) -> Tensor {
    if fwd.grad {
        var.as_tensor().clone()
    } else {
        var.as_detached_tensor()
    }
}

/// A batch-norm layer's tensors. Running statistics are buffers, never trained.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    /// Scale (gamma), `[C]`.
    pub weight: Var,
    /// Shift (beta), `[C]`.
    pub bias: Var,
    /// Running mean, `[C]`.
    pub running_mean: Tensor,
    /// Running (unbiased) variance, `[C]`.
    pub running_var: Tensor,
    /// Added to the variance before the square root.
    pub eps: f64,
}

impl BatchNorm {
    /// Normalises `x` of shape `[N, C, H, W]` (or `[N, C]`) per channel.
    ///
    /// In [`BnMode::Train`] the statistics are the batch's own mean and *biased* variance (divide by
    /// N·H·W, as PyTorch does in training), with gradients flowing through them; the running
    /// statistics are left untouched.
    pub fn forward(&self, x: &Tensor, fwd: Forward) -> Result<Tensor> {
        self.forward_act(x, fwd, Activation::Identity)
    }

    /// [`Self::forward`] followed by `act`.
    pub fn forward_act(&self, x: &Tensor, fwd: Forward, act: Activation) -> Result<Tensor> {
        if fwd.bn == BnMode::Train && x.rank() >= 3 {
            // One fused operation (statistics, normalisation, affine, activation, and their
            // backward), instead of the ten full-size tensors of the composition below.
            return super::ops::batch_norm_train(
                x,
                &param(&self.weight, fwd),
                &param(&self.bias, fwd),
                self.eps,
                act,
            );
        }
        act.composite(self.forward_composite(x, fwd)?)
    }

    fn forward_composite(&self, x: &Tensor, fwd: Forward) -> Result<Tensor> {
        let c = self.running_mean.dim(0)?;
        let rank = x.rank();
        let mut shape = vec![1usize; rank];
        shape[1] = c;
        let w = param(&self.weight, fwd).reshape(shape.as_slice())?;
        let b = param(&self.bias, fwd).reshape(shape.as_slice())?;
        let (mean, var) = match fwd.bn {
            BnMode::Eval => (
                self.running_mean.reshape(shape.as_slice())?,
                self.running_var.reshape(shape.as_slice())?,
            ),
            BnMode::Train => {
                // Move channels last, flatten the rest: statistics over every non-channel axis.
                let dims: Vec<usize> = (0..rank).filter(|&d| d != 1).chain([1]).collect();
                let flat = x.permute(dims)?.reshape(((), c))?;
                let mean = flat.mean_keepdim(0)?;
                let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
                (
                    mean.reshape(shape.as_slice())?,
                    var.reshape(shape.as_slice())?,
                )
            }
        };
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let y = x.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?;
        Ok(y.broadcast_mul(&w)?.broadcast_add(&b)?)
    }
}

/// Global average pooling `[N, C, H, W] -> [N, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(2)?.mean(D::Minus1)?)
}
