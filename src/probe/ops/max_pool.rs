//! Max-pooling with a 3×3 window, stride 2 and padding 1 (ResNet's stem), forward and backward
//! in one pass each.
//!
//! The window's maximum is PyTorch's: scanned in row-major order, the first element greater
//! than everything before it (or NaN) wins, so at ties the whole gradient goes to the first
//! maximal element, as `torch.nn.MaxPool2d` does. The backward pass recomputes each window's
//! winner from the input instead of keeping an index tensor in the graph.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::dims4;
use crate::Result;

/// Output length of one spatial axis: `(len + 2·1 − 3) / 2 + 1`.
fn out_len(len: usize) -> usize {
    (len.saturating_sub(1)) / 2 + 1
}

/// The index (into the `h`×`w` plane) of the winner of the window centred on input
/// `(2·oy, 2·ox)`, and its value.
#[inline]
fn winner<T: WithDType>(plane: &[T], (h, w): (usize, usize), oy: usize, ox: usize) -> (usize, T) {
    let rows = (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h);
    let cols = (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w);
    let mut best = (rows.start * w + cols.start, T::from_f64(f64::NEG_INFINITY));
    for r in rows {
        for c in cols.clone() {
            let v = plane[r * w + c];
            // `v != v`: NaN wins, as in PyTorch.
            #[allow(clippy::eq_op)]
            if v > best.1 || v != v {
                best = (r * w + c, v);
            }
        }
    }
    best
}

fn forward<T: WithDType>(x: &[T], (h, w): (usize, usize)) -> Vec<T> {
    let (oh, ow) = (out_len(h), out_len(w));
    let mut y = vec![T::from_f64(0.0); x.len() / (h * w).max(1) * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(out, plane)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    out[oy * ow + ox] = winner(plane, (h, w), oy, ox).1;
                }
            }
        });
    y
}

fn backward<T: WithDType>(x: &[T], grad: &[T], (h, w): (usize, usize)) -> Vec<T> {
    let (oh, ow) = (out_len(h), out_len(w));
    let mut gx = vec![T::from_f64(0.0); x.len()];
    gx.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w).zip(grad.par_chunks(oh * ow)))
        .for_each(|(gplane, (plane, g))| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (k, _) = winner(plane, (h, w), oy, ox);
                    gplane[k] += g[oy * ow + ox];
                }
            }
        });
    gx
}

/// Forward op of [`max_pool_3x3_s2_p1`].
struct MaxPool;

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2-p1"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l, "max_pool_3x3_s2_p1 input")?;
        if h == 0 || w == 0 {
            candle_core::bail!("max-pool: empty spatial size {h}x{w}");
        }
        let out = dispatch1!(s, l, "max_pool_3x3_s2_p1", |x| forward(x, (h, w)));
        Ok((out, Shape::from((n, c, out_len(h), out_len(w)))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGrad)?))
    }
}

/// Backward op: `(x, grad) -> grad x`, each output's gradient added to its window's winner.
struct MaxPoolGrad;

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2-p1-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l1, "max-pool input")?;
        if l2.dims() != [n, c, out_len(h), out_len(w)] {
            candle_core::bail!(
                "max-pool backward: gradient {:?} does not fit input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let out = dispatch2!(s1, l1, s2, l2, "max_pool_3x3_s2_p1", |x, g| backward(
            x,
            g,
            (h, w)
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// Max-pool `[N, C, H, W]` (f32 or f64, on the CPU) with a 3×3 window, stride 2 and padding 1,
/// as PyTorch's `MaxPool2d(kernel_size=3, stride=2, padding=1)`, including its gradient at ties
/// (all of it to the first maximal element in row-major order).
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(MaxPool)?)
}
