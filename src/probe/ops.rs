//! Custom candle operations that make the probes' backward pass fast *and* exact.
//!
//! candle's generic convolution is a poor fit for mobile networks: grouped convolutions run one
//! group at a time (1152 groups in EfficientNet's late blocks), its convolution backward goes
//! through a naive transposed convolution (computed even for the input images), and the
//! gradients of per-channel parameters are summed with a slow generic reduction. The
//! operations here replace those paths:
//!
//! - [`depthwise_conv2d`]: a depthwise k×k convolution with TensorFlow "SAME" padding, whose
//!   backward computes the input and kernel gradients directly, in parallel over planes;
//! - [`channel_matmul`], [`pointwise_conv`], [`conv2d_same`], [`conv2d`]: 1×1 convolutions
//!   and (through im2col) dense ones as per-image matrix products, the kernel gradient
//!   accumulated in place;
//! - [`bias_act`], [`batch_norm_train`]: batch-norm epilogues fused with an [`Activation`]
//!   (ReLU6 for EfficientNet, ReLU for ResNet);
//! - [`add_relu`]: ResNet's residual join `relu(a + b)` as one operation;
//! - [`max_pool_3x3_s2_p1`]: ResNet's stem pool with PyTorch's gradient at ties;
//! - [`relu6`]: `min(max(x, 0), 6)` with PyTorch's derivative, 1 only for `0 < x < 6`.
//!
//! The CPU kernels support F32 and F64. On other devices every function falls back to an
//! equivalent composition of candle's built-in operations (slower, same results).
//!
//! Gradients are first order only: the backward passes are not themselves differentiable.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use crate::Result;

/// Runs a one-input kernel on an f32 or f64 storage (`|x| body` gets the contiguous slice).
macro_rules! dispatch1 {
    ($s:expr, $l:expr, $what:expr, |$x:ident| $body:expr) => {
        match candle_core::backend::BackendStorage::dtype($s) {
            candle_core::DType::F32 => {
                let $x = $crate::probe::ops::contiguous_slice::<f32>($s, $l)?;
                candle_core::CpuStorage::F32($body)
            }
            candle_core::DType::F64 => {
                let $x = $crate::probe::ops::contiguous_slice::<f64>($s, $l)?;
                candle_core::CpuStorage::F64($body)
            }
            d => candle_core::bail!("{} supports f32 and f64 only, got {d:?}", $what),
        }
    };
}

/// Runs a two-input kernel on f32 or f64 storages of one dtype (`|a, b| body` gets the
/// contiguous slices; the body is written once and instantiated for both types).
macro_rules! dispatch2 {
    ($s1:expr, $l1:expr, $s2:expr, $l2:expr, $what:expr, |$a:ident, $b:ident| $body:expr) => {
        match (
            candle_core::backend::BackendStorage::dtype($s1),
            candle_core::backend::BackendStorage::dtype($s2),
        ) {
            (candle_core::DType::F32, candle_core::DType::F32) => {
                let $a = $crate::probe::ops::contiguous_slice::<f32>($s1, $l1)?;
                let $b = $crate::probe::ops::contiguous_slice::<f32>($s2, $l2)?;
                candle_core::CpuStorage::F32($body)
            }
            (candle_core::DType::F64, candle_core::DType::F64) => {
                let $a = $crate::probe::ops::contiguous_slice::<f64>($s1, $l1)?;
                let $b = $crate::probe::ops::contiguous_slice::<f64>($s2, $l2)?;
                candle_core::CpuStorage::F64($body)
            }
            (x, y) => {
                candle_core::bail!("{} supports f32 and f64 only, got {x:?} and {y:?}", $what)
            }
        }
    };
}

mod batch_norm;
mod depthwise;
mod matmul;
mod max_pool;
mod winograd;

pub use batch_norm::{batch_norm_train, bias_act};
pub use depthwise::depthwise_conv2d;
pub use matmul::{channel_matmul, conv2d, conv2d_im2col, conv2d_same, pointwise_conv};
pub use max_pool::max_pool_3x3_s2_p1;
pub use winograd::conv3x3_winograd;

/// Every [`Activation`], for the tests.
#[cfg(test)]
const ACTIVATIONS: [Activation; 3] = [Activation::Identity, Activation::Relu, Activation::Relu6];

/// Minimum number of multiply-adds one parallel task should get, so tiny planes (2×2 at the end
/// of the network on 64-pixel inputs) are grouped instead of paying rayon's per-task cost.
const MIN_TASK_WORK: usize = 16 * 1024;

/// Elements per parallel chunk of the element-wise kernels.
const ELEMWISE_CHUNK: usize = 32 * 1024;

/// TensorFlow "SAME" padding of one spatial dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamePadding {
    /// Output length, `ceil(input / stride)`.
    pub out: usize,
    /// Zeros added before the input (top or left): `total / 2`.
    pub before: usize,
    /// Zeros added after the input (bottom or right): `total - total / 2`.
    pub after: usize,
}

/// "SAME" padding for one dimension of length `input` under a `kernel`-wide window moved by
/// `stride`: `out = ceil(input / stride)`, `total = max((out - 1) * stride + kernel - input, 0)`,
/// with the odd element of `total` going *after* the input (so it is asymmetric).
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> SamePadding {
    let stride = stride.max(1);
    let out = input.div_ceil(stride);
    let total = ((out.saturating_sub(1)) * stride + kernel).saturating_sub(input);
    SamePadding {
        out,
        before: total / 2,
        after: total - total / 2,
    }
}

/// Shape of a 2-d windowed operation over one plane, padding included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// Input height and width.
    h: usize,
    w: usize,
    /// Square kernel side.
    k: usize,
    stride: usize,
    /// Zeros before the input, vertically and horizontally.
    pad_top: usize,
    pad_left: usize,
    /// Output height and width.
    out_h: usize,
    out_w: usize,
}

impl Window {
    fn same(h: usize, w: usize, k: usize, stride: usize) -> Self {
        let ph = same_padding(h, k, stride);
        let pw = same_padding(w, k, stride);
        Window {
            h,
            w,
            k,
            stride,
            pad_top: ph.before,
            pad_left: pw.before,
            out_h: ph.out,
            out_w: pw.out,
        }
    }

    /// PyTorch's convolution window: `pad` zeros on every side, output
    /// `(h + 2·pad − k) / stride + 1` (None when the padded input is smaller than the kernel).
    fn symmetric(h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Option<Self> {
        let out = |len: usize| (len + 2 * pad).checked_sub(k).map(|r| r / stride + 1);
        Some(Window {
            h,
            w,
            k,
            stride,
            pad_top: pad,
            pad_left: pad,
            out_h: out(h)?,
            out_w: out(w)?,
        })
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Input row read by output row `oy` at kernel row `i`, if it is not padding.
    #[inline(always)]
    fn in_row(&self, oy: usize, i: usize) -> Option<usize> {
        (oy * self.stride + i)
            .checked_sub(self.pad_top)
            .filter(|&r| r < self.h)
    }

    /// The output columns `lo..hi` whose input column at kernel column `j` is inside the image,
    /// and the input column of `lo`. Column `ox` reads input column `ox * stride + j - pad_left`.
    fn col_span(&self, j: usize) -> (usize, usize, usize) {
        let s = self.stride;
        let lo = if self.pad_left > j {
            (self.pad_left - j).div_ceil(s)
        } else {
            0
        };
        // Largest ox with ox * s + j - pad_left <= w - 1.
        let hi = match (self.w + self.pad_left).checked_sub(j + 1) {
            Some(num) => (num / s + 1).min(self.out_w),
            None => 0,
        };
        if lo >= hi {
            return (0, 0, 0);
        }
        (lo, hi, lo * s + j - self.pad_left)
    }

    /// [`Window::col_span`] for every kernel column, computed once per operation rather than in
    /// the inner loops.
    fn col_spans(&self) -> Vec<(usize, usize, usize)> {
        (0..self.k).map(|j| self.col_span(j)).collect()
    }

    /// How many planes one parallel task should handle.
    fn planes_per_task(&self) -> usize {
        let work = (self.out_plane() * self.k * self.k).max(1);
        MIN_TASK_WORK.div_ceil(work).max(1)
    }
}

/// The contiguous data of a CPU tensor argument.
fn contiguous_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "custom op expects a contiguous tensor, got strides {:?}",
            l.stride()
        ),
    }
}

fn dims4(l: &Layout, what: &str) -> candle_core::Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] => Ok((n, c, h, w)),
        d => bail!("{what}: expected a 4-d tensor, got shape {d:?}"),
    }
}

/// Zero-pads `x` for a "SAME" `k`×`k` window with the given stride.
fn pad_same(x: &Tensor, h: usize, w: usize, k: usize, stride: usize) -> Result<Tensor> {
    let ph = same_padding(h, k, stride);
    let pw = same_padding(w, k, stride);
    Ok(x.pad_with_zeros(2, ph.before, ph.after)?
        .pad_with_zeros(3, pw.before, pw.after)?)
}

/// Forward op of ReLU6.
struct Relu6;

fn relu6_slice<T: WithDType>(x: &[T]) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); x.len()];
    out.par_chunks_mut(ELEMWISE_CHUNK)
        .zip(x.par_chunks(ELEMWISE_CHUNK))
        .for_each(|(o, x)| {
            for (d, &v) in o.iter_mut().zip(x) {
                // NaN stays NaN, as in PyTorch's hardtanh.
                *d = clamp6(v);
            }
        });
    out
}

impl CustomOp1 for Relu6 {
    fn name(&self) -> &'static str {
        "relu6"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(relu6_slice(contiguous_slice::<f32>(s, l)?)),
            DType::F64 => CpuStorage::F64(relu6_slice(contiguous_slice::<f64>(s, l)?)),
            d => bail!("relu6 supports f32 and f64 only, got {d:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &ActGrad(Activation::Relu6),
        )?))
    }
}

/// The activation an epilogue applies to its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// No activation.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Activation {
    #[inline]
    fn apply<T: WithDType>(self, v: T) -> T {
        let zero = T::from_f64(0.0);
        match self {
            Activation::Identity => v,
            // NaN stays NaN, as in PyTorch.
            Activation::Relu => {
                if v < zero {
                    zero
                } else {
                    v
                }
            }
            Activation::Relu6 => clamp6(v),
        }
    }

    /// Whether the gradient passes an element whose activation *output* (or input: the
    /// answer is the same) is `v`. PyTorch's masks: ReLU passes where the output is positive
    /// (`threshold_backward` on the result), ReLU6 where it lies strictly inside (0, 6); so
    /// neither passes at exactly 0 (nor ReLU6 at exactly 6).
    #[inline]
    fn passes<T: WithDType>(self, v: T) -> bool {
        let zero = T::from_f64(0.0);
        match self {
            Activation::Identity => true,
            Activation::Relu => v > zero,
            Activation::Relu6 => v > zero && v < T::from_f64(6.0),
        }
    }

    /// The same activation from candle's own operations (devices other than the CPU).
    pub(crate) fn composite(self, y: Tensor) -> Result<Tensor> {
        match self {
            Activation::Identity => Ok(y),
            Activation::Relu => Ok(y.relu()?),
            Activation::Relu6 => relu6_composite(&y),
        }
    }
}

#[inline]
fn clamp6<T: WithDType>(v: T) -> T {
    let (zero, six) = (T::from_f64(0.0), T::from_f64(6.0));
    if v < zero {
        zero
    } else if v > six {
        six
    } else {
        v
    }
}

/// Backward op of an activation: `(y, grad) -> grad` where [`Activation::passes`] `y`, 0
/// elsewhere (`y` the activation's output or input).
struct ActGrad(Activation);

/// `f(a[i], b[i])` for every element of two same-length slices, in parallel chunks.
fn zip_map<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); a.len()];
    out.par_chunks_mut(ELEMWISE_CHUNK)
        .zip(
            a.par_chunks(ELEMWISE_CHUNK)
                .zip(b.par_chunks(ELEMWISE_CHUNK)),
        )
        .for_each(|(o, (a, b))| {
            for ((d, &x), &y) in o.iter_mut().zip(a).zip(b) {
                *d = f(x, y);
            }
        });
    out
}

fn act_grad_slice<T: WithDType>(act: Activation, y: &[T], g: &[T]) -> Vec<T> {
    let zero = T::from_f64(0.0);
    zip_map(y, g, |v, gv| if act.passes(v) { gv } else { zero })
}

impl CustomOp2 for ActGrad {
    fn name(&self) -> &'static str {
        "activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            bail!(
                "{:?} backward: gradient shape {:?} differs from the activation's {:?}",
                self.0,
                l2.dims(),
                l1.dims()
            );
        }
        let act = self.0;
        let out = dispatch2!(
            s1,
            l1,
            s2,
            l2,
            "activation backward",
            |y, g| act_grad_slice(act, y, g)
        );
        Ok((out, l1.shape().clone()))
    }
}

/// Forward op of [`add_relu`].
struct AddRelu;

fn add_relu_slice<T: WithDType>(a: &[T], b: &[T]) -> Vec<T> {
    zip_map(a, b, |x, y| Activation::Relu.apply(x + y))
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            bail!(
                "add_relu: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            );
        }
        let out = dispatch2!(s1, l1, s2, l2, "add_relu", |a, b| add_relu_slice(a, b));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // Both summands get the same masked gradient (one tensor, shared).
        let gm = res.apply_op2_no_bwd(&grad.contiguous()?, &ActGrad(Activation::Relu))?;
        let ga = a.track_op().then(|| gm.clone());
        let gb = b.track_op().then_some(gm);
        Ok((ga, gb))
    }
}

/// `relu(a + b)` for two tensors of one shape (a residual join), in one pass, with PyTorch's
/// gradient: `grad` to both inputs where the output is positive, 0 elsewhere.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() && matches!(a.dtype(), DType::F32 | DType::F64) {
        Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)?)
    } else {
        Ok(a.add(b)?.relu()?)
    }
}

/// ReLU6, `min(max(x, 0), 6)`, whose gradient is PyTorch's: 1 where `0 < x < 6`, 0 elsewhere
/// (including at exactly 0 and exactly 6).
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op1(Relu6)?)
    } else {
        relu6_composite(x)
    }
}

/// [`relu6`] from candle's own operations: `x * [0 < x < 6] + 6 * [x >= 6]`, with both masks
/// computed on a detached copy so the gradient is exactly the inner mask.
fn relu6_composite(x: &Tensor) -> Result<Tensor> {
    let xd = x.detach();
    let inner = xd
        .gt(0.0)?
        .to_dtype(x.dtype())?
        .mul(&xd.lt(6.0)?.to_dtype(x.dtype())?)?;
    let high = (xd.ge(6.0)?.to_dtype(x.dtype())? * 6.0)?;
    Ok(x.mul(&inner)?.add(&high)?)
}

/// Largest absolute element difference of two same-shape tensors (f64), for the ops' tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    a.sub(b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_dtype(candle_core::DType::F64))
        .and_then(|d| d.to_scalar::<f64>())
        .expect("max_abs_diff")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn same_padding_matches_the_tensorflow_formula() {
        // (input, kernel, stride) -> (out, before, after): the MANIFEST's table for even sizes,
        // and odd sizes, where the extra zero moves.
        let cases = [
            ((224, 3, 2), (112, 0, 1)),
            ((64, 5, 2), (32, 1, 2)),
            ((56, 3, 1), (56, 1, 1)),
            ((28, 5, 1), (28, 2, 2)),
            ((14, 1, 1), (14, 0, 0)),
            ((65, 3, 2), (33, 1, 1)),
            ((33, 5, 2), (17, 2, 2)),
            ((1, 5, 2), (1, 2, 2)),
        ];
        for ((i, k, s), want) in cases {
            let p = same_padding(i, k, s);
            assert_eq!(
                (p.out, p.before, p.after),
                want,
                "input {i}, kernel {k}, stride {s}"
            );
        }
    }

    #[test]
    fn add_relu_matches_candles_add_and_relu_with_pytorchs_mask() {
        let dev = Device::Cpu;
        // Sums -2, 0 (gradient 0 in PyTorch, 1 in candle's relu), 1e-7, 3.5, 8.
        let a = Var::new(&[-1.0f64, 0.5, 0.0, 1.5, 5.0][..], &dev).unwrap();
        let b = Var::new(&[-1.0f64, -0.5, 1e-7, 2.0, 3.0][..], &dev).unwrap();
        let w = Tensor::new(&[1.0f64, 2.0, 3.0, 4.0, 5.0][..], &dev).unwrap();
        let y = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        let want = a.as_tensor().add(b.as_tensor()).unwrap().relu().unwrap();
        assert_eq!(max_abs_diff(&y, &want), 0.0);
        let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            let g = grads.get(v.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(g, vec![0.0, 0.0, 3.0, 4.0, 5.0]);
        }
        // An untracked summand (an identity shortcut of a constant) gets nothing.
        let c = Tensor::new(&[1.0f32, -3.0][..], &dev).unwrap();
        let v = Var::new(&[1.0f32, 1.0][..], &dev).unwrap();
        let grads = add_relu(&c, v.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&c).is_none());
        assert_eq!(
            grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 0.0]
        );
    }

    #[test]
    fn relu6_gradient_is_zero_at_exactly_zero_and_six() {
        let dev = Device::Cpu;
        let vals = [-1.0f32, 0.0, 1e-7, 3.0, 6.0 - 1e-6, 6.0, 7.0];
        for composite in [false, true] {
            let x = Var::new(&vals[..], &dev).unwrap();
            let y = if composite {
                relu6_composite(x.as_tensor())
            } else {
                relu6(x.as_tensor())
            }
            .unwrap();
            assert_eq!(
                y.to_vec1::<f32>().unwrap(),
                vec![0.0, 0.0, 1e-7, 3.0, 6.0 - 1e-6, 6.0, 6.0]
            );
            let g = y.sum_all().unwrap().backward().unwrap();
            let gx = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                gx,
                vec![0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0],
                "composite={composite}"
            );
        }
    }
}
