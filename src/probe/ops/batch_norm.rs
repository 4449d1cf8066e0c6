//! Batch-norm epilogues of a convolution, each fused with an optional ReLU6.
//!
//! - [`bias_act`]: a per-channel shift, the eval-mode batch norm once its scale is folded into
//!   the convolution kernel;
//! - [`batch_norm_train`]: normalisation with the batch's own mean and biased variance, as
//!   PyTorch's training mode, with the closed-form backward through the statistics.
//!
//! Written with broadcasting candle operations, the backward of a per-channel parameter sums
//! over the batch and spatial axes with candle's generic strided reduction, which dominated the
//! backward pass. These operations reduce one channel's planes at a time instead, in f64.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use super::{contiguous_slice, ActGrad, Activation, ELEMWISE_CHUNK};
use crate::Result;

/// An activation tensor seen as `n` images × `c` channels × `l` values per plane.
#[derive(Debug, Clone, Copy)]
struct Planes {
    n: usize,
    c: usize,
    l: usize,
}

impl Planes {
    fn of(dims: &[usize], what: &str) -> candle_core::Result<Self> {
        match dims {
            [n, c, rest @ ..] => Ok(Planes {
                n: *n,
                c: *c,
                l: rest.iter().product(),
            }),
            d => bail!("{what}: expected [N, C, ...], got shape {d:?}"),
        }
    }

    /// Values per channel.
    fn count(&self) -> usize {
        self.n * self.l
    }

    /// Plane `(b, ch)` of `data`.
    fn plane<'a, T>(&self, data: &'a [T], b: usize, ch: usize) -> &'a [T] {
        let start = (b * self.c + ch) * self.l;
        &data[start..start + self.l]
    }

    /// Calls `f(channel, plane_out, plane_index)` for every plane of `out`, in parallel.
    fn for_each_plane<T: WithDType>(
        &self,
        out: &mut [T],
        f: impl Fn(usize, &mut [T], usize) + Sync,
    ) {
        if self.l == 0 {
            return;
        }
        let per_task = (ELEMWISE_CHUNK / self.l).max(1);
        out.par_chunks_mut(self.l * per_task)
            .enumerate()
            .for_each(|(t, chunk)| {
                for (i, o) in chunk.chunks_mut(self.l).enumerate() {
                    let plane = t * per_task + i;
                    f(plane % self.c, o, plane);
                }
            });
    }

    /// `f(channel)` for every channel, in parallel.
    fn per_channel<R: Send>(&self, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
        (0..self.c).into_par_iter().map(f).collect()
    }
}

// ---- per-channel shift -----------------------------------------------------------------------

/// Forward op: `(x [N, C, ...], bias [C]) -> act(x + bias[c])`.
struct BiasAct {
    act: Activation,
}

fn bias_act_kernel<T: WithDType>(x: &[T], bias: &[T], p: Planes, act: Activation) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); x.len()];
    p.for_each_plane(&mut out, |ch, o, plane| {
        let b = bias[ch];
        let xp = &x[plane * p.l..(plane + 1) * p.l];
        for (d, &v) in o.iter_mut().zip(xp) {
            *d = act.apply(v + b);
        }
    });
    out
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = Planes::of(l1.dims(), "bias_act")?;
        if l2.dims() != [p.c] {
            bail!(
                "bias_act: bias {:?} does not fit input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let out = dispatch2!(s1, l1, s2, l2, "bias_act", |x, b| bias_act_kernel(
            x, b, p, self.act
        ));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The output gives PyTorch's mask without keeping the pre-activation.
        let gm = match self.act {
            Activation::Identity => grad,
            act => res.apply_op2_no_bwd(&grad, &ActGrad(act))?,
        };
        let gb = if bias.track_op() {
            Some(gm.apply_op1_no_bwd(&ChannelSum)?)
        } else {
            None
        };
        let gx = if x.track_op() { Some(gm) } else { None };
        Ok((gx, gb))
    }
}

/// `[N, C, ...] -> [C]`: the sum over everything but the channel axis, accumulated in f64.
struct ChannelSum;

fn channel_sum_kernel<T: WithDType>(x: &[T], p: Planes) -> Vec<T> {
    p.per_channel(|ch| {
        let s: f64 = (0..p.n)
            .map(|b| p.plane(x, b, ch).iter().map(|v| v.to_f64()).sum::<f64>())
            .sum();
        T::from_f64(s)
    })
}

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = Planes::of(l.dims(), "channel_sum")?;
        let out = dispatch1!(s, l, "channel_sum", |x| channel_sum_kernel(x, p));
        Ok((out, Shape::from(p.c)))
    }
}

/// `act(x + bias[c])` for `x` `[N, C, ...]` and `bias` `[C]` (the activation with PyTorch's
/// derivative). The bias gradient is a per-channel sum done in f64.
pub fn bias_act(x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?
            .apply_op2(&bias.contiguous()?, BiasAct { act })?)
    } else {
        let mut shape = vec![1usize; x.rank()];
        shape[1] = bias.dim(0)?;
        act.composite(x.broadcast_add(&bias.reshape(shape)?)?)
    }
}

// ---- training-mode batch norm ----------------------------------------------------------------

/// Per-channel batch mean and `1 / sqrt(biased variance + eps)`, two passes in f64.
fn channel_moments<T: WithDType>(x: &[T], p: Planes, eps: f64) -> Vec<(f64, f64)> {
    let count = p.count().max(1) as f64;
    p.per_channel(|ch| {
        let sum: f64 = (0..p.n)
            .map(|b| p.plane(x, b, ch).iter().map(|v| v.to_f64()).sum::<f64>())
            .sum();
        let mean = sum / count;
        let ss: f64 = (0..p.n)
            .map(|b| {
                p.plane(x, b, ch)
                    .iter()
                    .map(|v| {
                        let d = v.to_f64() - mean;
                        d * d
                    })
                    .sum::<f64>()
            })
            .sum();
        (mean, 1.0 / (ss / count + eps).sqrt())
    })
}

/// Forward op: `(x [N, C, ...], gamma [C], beta [C]) -> act(BN_batch(x))`.
struct BatchNormTrain {
    eps: f64,
    act: Activation,
}

fn bn_train_kernel<T: WithDType>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    p: Planes,
    eps: f64,
    act: Activation,
) -> Vec<T> {
    let moments = channel_moments(x, p, eps);
    // y = (x - mean) · (inv_std · gamma) + beta, per channel.
    let coef: Vec<(T, T, T)> = moments
        .iter()
        .zip(gamma.iter().zip(beta))
        .map(|(&(mean, inv), (&g, &b))| (T::from_f64(mean), T::from_f64(inv * g.to_f64()), b))
        .collect();
    let mut out = vec![T::from_f64(0.0); x.len()];
    p.for_each_plane(&mut out, |ch, o, plane| {
        let (mean, scale, shift) = coef[ch];
        let xp = &x[plane * p.l..(plane + 1) * p.l];
        for (d, &v) in o.iter_mut().zip(xp) {
            let y = (v - mean) * scale + shift;
            *d = act.apply(y);
        }
    });
    out
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = Planes::of(l1.dims(), "batch_norm_train")?;
        if l2.dims() != [p.c] || l3.dims() != [p.c] {
            bail!(
                "batch_norm_train: weight {:?} / bias {:?} do not fit input {:?}",
                l2.dims(),
                l3.dims(),
                l1.dims()
            );
        }
        let out = match (s1.dtype(), s2.dtype(), s3.dtype()) {
            (DType::F32, DType::F32, DType::F32) => CpuStorage::F32(bn_train_kernel(
                contiguous_slice::<f32>(s1, l1)?,
                contiguous_slice(s2, l2)?,
                contiguous_slice(s3, l3)?,
                p,
                self.eps,
                self.act,
            )),
            (DType::F64, DType::F64, DType::F64) => CpuStorage::F64(bn_train_kernel(
                contiguous_slice::<f64>(s1, l1)?,
                contiguous_slice(s2, l2)?,
                contiguous_slice(s3, l3)?,
                p,
                self.eps,
                self.act,
            )),
            (a, b, c) => {
                bail!("batch_norm_train supports f32 and f64 only, got {a:?}, {b:?}, {c:?}")
            }
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gm = match self.act {
            Activation::Identity => grad,
            act => res.apply_op2_no_bwd(&grad, &ActGrad(act))?,
        };
        // One packed result [grad_x (N·C·L), grad_gamma (C), grad_beta (C)]: the three share
        // the per-channel sums.
        let packed = x.apply_op3_no_bwd(&gm, gamma, &BatchNormTrainGrad { eps: self.eps })?;
        let (ncl, c) = (x.elem_count(), gamma.elem_count());
        let gx = if x.track_op() {
            Some(packed.narrow(0, 0, ncl)?.reshape(x.shape())?)
        } else {
            None
        };
        let gg = if gamma.track_op() {
            Some(packed.narrow(0, ncl, c)?)
        } else {
            None
        };
        let gb = if beta.track_op() {
            Some(packed.narrow(0, ncl + c, c)?)
        } else {
            None
        };
        Ok((gx, gg, gb))
    }
}

/// Backward op: `(x, grad_y, gamma) -> [grad_x, grad_gamma, grad_beta]` flattened, with
/// `x̂ = (x - mean) · inv_std`, `M = N·L`:
/// `grad_beta = Σ g`, `grad_gamma = Σ g·x̂`,
/// `grad_x = gamma · inv_std · (g - grad_beta / M - x̂ · grad_gamma / M)`.
struct BatchNormTrainGrad {
    eps: f64,
}

fn bn_train_grad_kernel<T: WithDType>(
    x: &[T],
    g: &[T],
    gamma: &[T],
    p: Planes,
    eps: f64,
) -> Vec<T> {
    let moments = channel_moments(x, p, eps);
    let sums: Vec<(f64, f64)> = p.per_channel(|ch| {
        let (mean, inv) = moments[ch];
        let (mut sg, mut sgx) = (0f64, 0f64);
        for b in 0..p.n {
            for (&gv, &xv) in p.plane(g, b, ch).iter().zip(p.plane(x, b, ch)) {
                let gv = gv.to_f64();
                sg += gv;
                sgx += gv * (xv.to_f64() - mean) * inv;
            }
        }
        (sg, sgx)
    });
    let m = p.count().max(1) as f64;
    // grad_x = a·g + b·(x - mean) + c per channel: the formula above with x̂ expanded (x is
    // centred first so large means do not cancel in f32).
    let coef: Vec<(T, T, T, T)> = (0..p.c)
        .map(|ch| {
            let (mean, inv) = moments[ch];
            let (sg, sgx) = sums[ch];
            let k = gamma[ch].to_f64() * inv;
            let (a, b, c) = (k, -k * inv * sgx / m, -k * sg / m);
            (
                T::from_f64(a),
                T::from_f64(b),
                T::from_f64(c),
                T::from_f64(mean),
            )
        })
        .collect();
    let ncl = x.len();
    let mut out = vec![T::from_f64(0.0); ncl + 2 * p.c];
    let (gx, tail) = out.split_at_mut(ncl);
    p.for_each_plane(gx, |ch, o, plane| {
        let (a, b, c, mean) = coef[ch];
        let gp = &g[plane * p.l..(plane + 1) * p.l];
        let xp = &x[plane * p.l..(plane + 1) * p.l];
        for ((d, &gv), &xv) in o.iter_mut().zip(gp).zip(xp) {
            *d = a * gv + b * (xv - mean) + c;
        }
    });
    for (ch, &(sg, sgx)) in sums.iter().enumerate() {
        tail[ch] = T::from_f64(sgx);
        tail[p.c + ch] = T::from_f64(sg);
    }
    out
}

impl CustomOp3 for BatchNormTrainGrad {
    fn name(&self) -> &'static str {
        "batch-norm-train-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = Planes::of(l1.dims(), "batch_norm_train backward")?;
        if l2.dims() != l1.dims() || l3.dims() != [p.c] {
            bail!(
                "batch_norm_train backward: shapes {:?}, {:?}, {:?} disagree",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let out = match (s1.dtype(), s2.dtype(), s3.dtype()) {
            (DType::F32, DType::F32, DType::F32) => CpuStorage::F32(bn_train_grad_kernel(
                contiguous_slice::<f32>(s1, l1)?,
                contiguous_slice(s2, l2)?,
                contiguous_slice(s3, l3)?,
                p,
                self.eps,
            )),
            (DType::F64, DType::F64, DType::F64) => CpuStorage::F64(bn_train_grad_kernel(
                contiguous_slice::<f64>(s1, l1)?,
                contiguous_slice(s2, l2)?,
                contiguous_slice(s3, l3)?,
                p,
                self.eps,
            )),
            (a, b, c) => {
                bail!("batch_norm_train supports f32 and f64 only, got {a:?}, {b:?}, {c:?}")
            }
        };
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * p.c)))
    }
}

/// Training-mode batch norm of `x` `[N, C, ...]`, then the activation: per channel, the
/// batch's mean and *biased* variance (divide by N·H·W), `y = (x - mean) / sqrt(var + eps) ·
/// gamma + beta`, with gradients through the statistics (PyTorch's `train()` forward; no
/// running statistics are touched).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    if x.device().is_cpu() {
        let op = BatchNormTrain { eps, act };
        Ok(x.contiguous()?
            .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?)
    } else {
        act.composite(batch_norm_train_composite(x, gamma, beta, eps)?)
    }
}

/// [`batch_norm_train`] (without the activation) from candle's own operations.
fn batch_norm_train_composite(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let p = Planes::of(&dims, "batch_norm_train")?;
    let count = p.count() as f64;
    // [N, C, L] keeps channels in place: reductions over axes 0 and 2, no transposed copy.
    let x3 = x.reshape((p.n, p.c, p.l))?;
    let mean = (x3.sum_keepdim(2)?.sum_keepdim(0)? / count)?;
    let centred = x3.broadcast_sub(&mean)?;
    let var = (centred.sqr()?.sum_keepdim(2)?.sum_keepdim(0)? / count)?;
    let inv_std = (var + eps)?.sqrt()?.recip()?;
    let scale = inv_std.broadcast_mul(&gamma.reshape((1, p.c, 1))?)?;
    let y = centred
        .broadcast_mul(&scale)?
        .broadcast_add(&beta.reshape((1, p.c, 1))?)?;
    Ok(y.reshape(dims)?)
}

#[cfg(test)]
mod tests {
    use super::super::ACTIVATIONS;
    use super::*;
    use crate::probe::ops::max_abs_diff;
    use candle_core::{Device, Var};

    /// Forward values and the gradients of every argument agree between the fused operation
    /// and its composition from candle's own operations.
    fn compare(
        fused: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
        reference: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
        dims: (usize, usize, usize, usize),
    ) {
        let dev = Device::Cpu;
        let c = dims.1;
        // Wide spread so some values land below 0 and above 6.
        let x = Var::from_tensor(&(Tensor::randn(1f64, 3.0, dims, &dev).unwrap())).unwrap();
        let g = Var::randn(1f64, 0.5, c, &dev).unwrap();
        let b = Var::randn(2f64, 1.0, c, &dev).unwrap();
        let y = fused(x.as_tensor(), g.as_tensor(), b.as_tensor());
        let y_ref = reference(x.as_tensor(), g.as_tensor(), b.as_tensor());
        assert!(max_abs_diff(&y, &y_ref) < 1e-12);
        let w = Tensor::randn(0f64, 1.0, y.dims(), &dev).unwrap();
        let gr = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr_ref = (y_ref * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &g, &b] {
            if let Some(a) = gr_ref.get(v.as_tensor()) {
                let ours = gr.get(v.as_tensor()).expect("gradient missing");
                assert!(
                    max_abs_diff(ours, a) < 1e-10,
                    "gradient differs by {}",
                    max_abs_diff(ours, a)
                );
            }
        }
    }

    #[test]
    fn bias_act_matches_broadcast_add_and_the_activation() {
        for act in ACTIVATIONS {
            compare(
                &|x, _, b| bias_act(x, b, act).unwrap(),
                &|x, _, b| {
                    let y = x
                        .broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap())
                        .unwrap();
                    act.composite(y).unwrap()
                },
                (3, 5, 4, 3),
            );
        }
    }

    #[test]
    fn batch_norm_train_matches_its_composition_from_candle_ops() {
        for act in ACTIVATIONS {
            for dims in [(3, 5, 4, 3), (2, 4, 1, 1)] {
                compare(
                    &|x, g, b| batch_norm_train(x, g, b, 1e-3, act).unwrap(),
                    &|x, g, b| {
                        act.composite(batch_norm_train_composite(x, g, b, 1e-3).unwrap())
                            .unwrap()
                    },
                    dims,
                );
            }
        }
    }
}
