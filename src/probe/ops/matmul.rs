//! Matrix-product convolutions: 1×1 convolutions and (through im2col) the dense stem.
//!
//! A 1×1 convolution of `[N, C, L]` activations with an `[O, C]` kernel is one matrix product per
//! image. Written with candle's `broadcast_matmul`, the kernel gradient comes back as `[N, O, C]`
//! and candle sums it over N with a slow generic reduction; [`channel_matmul`] instead calls the
//! same `gemm` kernels candle uses, accumulating the kernel gradient over images in place.

use candle_core::backend::BackendStorage;
use std::borrow::Cow;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, WithDType,
};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{contiguous_slice, dims4, pad_same, Window};
use crate::Result;

/// `x` `[N, C, H, W]` -> columns `[N, C*k*k, out_h*out_w]`, "SAME" padding folded in.
#[derive(Debug, Clone, Copy)]
struct Im2Col {
    k: usize,
    stride: usize,
}

/// The kernel taps of a window that read at least one real pixel, with the column span
/// ([`Window::col_span`]) of each, computed once per operation. On small planes whole taps
/// fall in the padding (a 3×3 kernel with padding 1 on a 1×1 plane reads only its centre):
/// their column rows would be all zeros, so they are left out of the column matrix and of the
/// matrix products.
struct Taps {
    /// `(i, j, (lo, hi, ix))`: kernel row, kernel column, and the column span.
    live: Vec<(usize, usize, (usize, usize, usize))>,
}

impl Taps {
    fn of(win: Window) -> Self {
        let spans = win.col_spans();
        let live = (0..win.k)
            .filter(|&i| (0..win.out_h).any(|oy| win.in_row(oy, i).is_some()))
            .flat_map(|i| {
                spans
                    .iter()
                    .enumerate()
                    .filter(|(_, &(lo, hi, _))| lo < hi)
                    .map(move |(j, &span)| (i, j, span))
            })
            .collect();
        Taps { live }
    }

    /// Every tap, live or not (the layout of [`Im2Col`]'s output).
    fn all(win: Window) -> Self {
        let spans = win.col_spans();
        let live = (0..win.k)
            .flat_map(|i| spans.iter().enumerate().map(move |(j, &span)| (i, j, span)))
            .collect();
        Taps { live }
    }

    fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether every tap of a `k`×`k` kernel is live.
    fn is_full(&self, k: usize) -> bool {
        self.live.len() == k * k
    }

    /// The kernel `[o, c·k·k]` restricted to the live taps, `[o, c·len]`.
    fn gather<T: WithDType>(&self, kernel: &[T], k: usize) -> Vec<T> {
        kernel
            .chunks_exact(k * k)
            .flat_map(|taps| self.live.iter().map(move |&(i, j, _)| taps[i * k + j]))
            .collect()
    }

    /// The inverse of [`Taps::gather`] for a gradient: `[o, c·len]` -> `[o, c·k·k]`, zero at
    /// the dead taps.
    fn scatter<T: WithDType>(&self, live: &[T], k: usize) -> Vec<T> {
        let (kk, len) = (k * k, self.len().max(1));
        let mut out = vec![T::from_f64(0.0); live.len() / len * kk];
        for (dst, src) in out.chunks_exact_mut(kk).zip(live.chunks_exact(len)) {
            for (&(i, j, _), &v) in self.live.iter().zip(src) {
                dst[i * k + j] = v;
            }
        }
        out
    }
}

/// Writes the column rows of one input plane `xp` into `rows`, one row per live tap, row `r`
/// starting at `r * row_stride` (`row_stride` = the output plane for a lone image, wider when
/// several images share one column matrix). Each pixel is a block of `block` consecutive
/// values (one image's value when `block` is 1; the same pixel of `block` images, image-minor,
/// when images share a column matrix), copied as a whole. Entries that fall in the padding are
/// left untouched, so `rows` must start zeroed.
fn unfold_plane<T: WithDType>(
    xp: &[T],
    win: Window,
    taps: &Taps,
    rows: &mut [T],
    row_stride: usize,
    block: usize,
) {
    for (r, &(i, _, (lo, hi, ix))) in taps.live.iter().enumerate() {
        if lo >= hi {
            continue;
        }
        let start = r * row_stride;
        let row = &mut rows[start..start + win.out_plane() * block];
        for oy in 0..win.out_h {
            let Some(iy) = win.in_row(oy, i) else {
                continue;
            };
            let xrow = &xp[iy * win.w * block..(iy + 1) * win.w * block];
            let orow = &mut row[(oy * win.out_w + lo) * block..(oy * win.out_w + hi) * block];
            if win.stride == 1 {
                orow.copy_from_slice(&xrow[ix * block..(ix + hi - lo) * block]);
            } else if block == 1 {
                for (d, &v) in orow.iter_mut().zip(xrow[ix..].iter().step_by(win.stride)) {
                    *d = v;
                }
            } else {
                let pixels = xrow[ix * block..].chunks(block).step_by(win.stride);
                for (d, src) in orow.chunks_exact_mut(block).zip(pixels) {
                    d.copy_from_slice(src);
                }
            }
        }
    }
}

/// The adjoint of [`unfold_plane`]: adds every column entry back into the pixel of `gxp` it was
/// copied from.
fn fold_plane<T: WithDType>(
    rows: &[T],
    row_stride: usize,
    win: Window,
    taps: &Taps,
    gxp: &mut [T],
    block: usize,
) {
    for (r, &(i, _, (lo, hi, ix))) in taps.live.iter().enumerate() {
        if lo >= hi {
            continue;
        }
        let start = r * row_stride;
        let row = &rows[start..start + win.out_plane() * block];
        for oy in 0..win.out_h {
            let Some(iy) = win.in_row(oy, i) else {
                continue;
            };
            let grow = &row[(oy * win.out_w + lo) * block..(oy * win.out_w + hi) * block];
            let xrow = &mut gxp[iy * win.w * block..(iy + 1) * win.w * block];
            if win.stride == 1 {
                for (d, &v) in xrow[ix * block..(ix + hi - lo) * block]
                    .iter_mut()
                    .zip(grow)
                {
                    *d += v;
                }
            } else if block == 1 {
                for (d, &v) in xrow[ix..].iter_mut().step_by(win.stride).zip(grow) {
                    *d += v;
                }
            } else {
                let pixels = xrow[ix * block..].chunks_mut(block).step_by(win.stride);
                for (d, src) in pixels.zip(grow.chunks_exact(block)) {
                    for (d, &v) in d.iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
}

impl Im2Col {
    fn forward<T: WithDType>(x: &[T], c: usize, win: Window) -> Vec<T> {
        let (inp, outp, kk) = (win.in_plane(), win.out_plane(), win.k * win.k);
        let per_image = c * kk * outp;
        let n = x.len().checked_div(c * inp).unwrap_or(0);
        let mut cols = vec![T::from_f64(0.0); n * per_image];
        if per_image == 0 {
            return cols;
        }
        let taps = Taps::all(win);
        // One task per (image, input channel): its k*k rows of the column matrix.
        cols.par_chunks_mut(kk * outp)
            .enumerate()
            .for_each(|(plane, rows)| {
                unfold_plane(
                    &x[plane * inp..(plane + 1) * inp],
                    win,
                    &taps,
                    rows,
                    outp,
                    1,
                )
            });
        cols
    }

    /// The adjoint: sums every column entry back into the pixel it was copied from.
    fn backward<T: WithDType>(cols: &[T], win: Window) -> Vec<T> {
        let (inp, outp, kk) = (win.in_plane(), win.out_plane(), win.k * win.k);
        let planes = cols.len().checked_div(kk * outp).unwrap_or(0);
        let mut gx = vec![T::from_f64(0.0); planes * inp];
        if inp == 0 {
            return gx;
        }
        let taps = Taps::all(win);
        gx.par_chunks_mut(inp).enumerate().for_each(|(plane, gxp)| {
            let rows = &cols[plane * kk * outp..(plane + 1) * kk * outp];
            fold_plane(rows, outp, win, &taps, gxp, 1)
        });
        gx
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col-same"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l, "conv2d_same input")?;
        let win = Window::same(h, w, self.k, self.stride);
        let shape = Shape::from((n, c * self.k * self.k, win.out_plane()));
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(Self::forward(contiguous_slice::<f32>(s, l)?, c, win)),
            DType::F64 => CpuStorage::F64(Self::forward(contiguous_slice::<f64>(s, l)?, c, win)),
            d => bail!("conv2d_same supports f32 and f64 only, got {d:?}"),
        };
        Ok((out, shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let op = Col2Im {
            k: self.k,
            stride: self.stride,
            x_dims: x.dims4()?,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// Backward of [`Im2Col`]: columns -> input-shaped gradient.
struct Col2Im {
    k: usize,
    stride: usize,
    x_dims: (usize, usize, usize, usize),
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im-same"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = self.x_dims;
        let win = Window::same(h, w, self.k, self.stride);
        if l.dims() != [n, c * self.k * self.k, win.out_plane()] {
            bail!(
                "conv2d_same backward: gradient shape {:?} does not fit input {:?}",
                l.dims(),
                self.x_dims
            );
        }
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(Im2Col::backward(contiguous_slice::<f32>(s, l)?, win)),
            DType::F64 => CpuStorage::F64(Im2Col::backward(contiguous_slice::<f64>(s, l)?, win)),
            d => bail!("conv2d_same supports f32 and f64 only, got {d:?}"),
        };
        Ok((out, Shape::from((n, c, h, w))))
    }
}

/// A strided read-only matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(super) struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// `dst[m×n] (row-major) = lhs[m×k] · rhs[k×n]`, or `+=` when `accumulate`.
///
/// Every index the product touches is checked against the slices first, which is what makes
/// the call into `gemm` sound.
pub(super) fn gemm_into<T: WithDType>(
    dst: &mut [T],
    (m, n, k): (usize, usize, usize),
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    accumulate: bool,
    par: Parallelism,
) -> candle_core::Result<()> {
    if !matches!(T::DTYPE, DType::F32 | DType::F64) {
        bail!(
            "matrix product supports f32 and f64 only, got {:?}",
            T::DTYPE
        );
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if dst.len() < m * n {
        bail!(
            "matrix product: destination holds {} < {m}×{n} values",
            dst.len()
        );
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::from_f64(0.0));
        }
        return Ok(());
    }
    if last(m, k, lhs.rs, lhs.cs) >= lhs.data.len() || last(k, n, rhs.rs, rhs.cs) >= rhs.data.len()
    {
        bail!("matrix product: operand views exceed their storage");
    }
    // SAFETY: T is f32 or f64 (checked above), the only types besides f16/complex that gemm
    // accepts; every element read is within `lhs.data` / `rhs.data` and every element written
    // within `dst[..m * n]` (checked above); `dst` is exclusively borrowed and cannot alias the
    // shared operand slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            // dst = alpha·dst + beta·lhs·rhs
            T::from_f64(if accumulate { 1.0 } else { 0.0 }),
            T::from_f64(1.0),
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// How to spread `batch` independent products over the thread pool: one image per task when
/// there are at least as many images as threads, otherwise one product at a time, each
/// parallel inside.
fn batch_parallel(batch: usize) -> (bool, Parallelism) {
    let threads = rayon::current_num_threads();
    if threads <= 1 {
        (false, Parallelism::None)
    } else if batch >= threads {
        (true, Parallelism::None)
    } else {
        (false, Parallelism::Rayon(threads))
    }
}

/// Dimensions of a channel product: `x` `[n, c, l]`, kernel `[o, c]`.
#[derive(Debug, Clone, Copy)]
struct ChannelMatmulDims {
    n: usize,
    c: usize,
    l: usize,
    o: usize,
}

impl ChannelMatmulDims {
    fn of(x: &Layout, w: &Layout) -> candle_core::Result<Self> {
        match (x.dims(), w.dims()) {
            (&[n, c, l], &[o, wc]) if wc == c => Ok(ChannelMatmulDims { n, c, l, o }),
            (xd, wd) => bail!("channel_matmul: kernel {wd:?} does not fit input {xd:?} (want [N, C, L] and [O, C])"),
        }
    }

    /// `y_b[o×l] = w[o×c] · x_b[c×l]`.
    fn forward<T: WithDType>(&self, x: &[T], w: &[T]) -> candle_core::Result<Vec<T>> {
        let Self { c, l, o, .. } = *self;
        let mut y = vec![T::from_f64(0.0); self.n * o * l];
        for_each_group(&mut y, o * l, 1, |b, yb, par| {
            let xb = MatRef {
                data: &x[b * c * l..(b + 1) * c * l],
                rs: l,
                cs: 1,
            };
            gemm_into(
                yb,
                (o, l, c),
                MatRef {
                    data: w,
                    rs: c,
                    cs: 1,
                },
                xb,
                false,
                par,
            )
        })?;
        Ok(y)
    }

    /// `gx_b[c×l] = wᵀ[c×o] · g_b[o×l]`.
    fn grad_input<T: WithDType>(&self, g: &[T], w: &[T]) -> candle_core::Result<Vec<T>> {
        let Self { c, l, o, .. } = *self;
        let mut gx = vec![T::from_f64(0.0); self.n * c * l];
        for_each_group(&mut gx, c * l, 1, |b, gxb, par| {
            let gb = MatRef {
                data: &g[b * o * l..(b + 1) * o * l],
                rs: l,
                cs: 1,
            };
            gemm_into(
                gxb,
                (c, l, o),
                MatRef {
                    data: w,
                    rs: 1,
                    cs: c,
                },
                gb,
                false,
                par,
            )
        })?;
        Ok(gx)
    }

    /// `gw[o×c] = Σ_b g_b[o×l] · x_bᵀ[l×c]`, accumulated in place (per thread, then summed).
    fn grad_weight<T: WithDType>(&self, x: &[T], g: &[T]) -> candle_core::Result<Vec<T>> {
        let Self { n, c, l, o } = *self;
        let accumulate_range = |range: std::ops::Range<usize>, par: Parallelism| {
            let mut acc = vec![T::from_f64(0.0); o * c];
            for (i, b) in range.enumerate() {
                let gb = MatRef {
                    data: &g[b * o * l..(b + 1) * o * l],
                    rs: l,
                    cs: 1,
                };
                let xbt = MatRef {
                    data: &x[b * c * l..(b + 1) * c * l],
                    rs: 1,
                    cs: l,
                };
                gemm_into(&mut acc, (o, c, l), gb, xbt, i > 0, par)?;
            }
            Ok::<_, candle_core::Error>(acc)
        };
        match batch_parallel(n) {
            (true, par) => {
                let tasks = rayon::current_num_threads().min(n);
                let per = n.div_ceil(tasks);
                let partial: Vec<Vec<T>> = (0..tasks)
                    .into_par_iter()
                    .map(|t| accumulate_range(t * per..((t + 1) * per).min(n), par))
                    .collect::<candle_core::Result<_>>()?;
                let mut total = vec![T::from_f64(0.0); o * c];
                for p in partial {
                    for (d, v) in total.iter_mut().zip(p) {
                        *d += v;
                    }
                }
                Ok(total)
            }
            (false, par) => accumulate_range(0..n, par),
        }
    }
}

/// Forward op: `(x [N, C, L], w [O, C]) -> [N, O, L]`.
struct ChannelMatmul;

impl CustomOp2 for ChannelMatmul {
    fn name(&self) -> &'static str {
        "channel-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = ChannelMatmulDims::of(l1, l2)?;
        let out = dispatch2!(s1, l1, s2, l2, "channel_matmul", |x, w| d.forward(x, w)?);
        Ok((out, Shape::from((d.n, d.o, d.l))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &ChannelMatmulGradInput { x_dims: x.dims3()? })?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &ChannelMatmulGradWeight { o: w.dim(0)? })?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// Backward op: `(grad [N, O, L], w [O, C]) -> grad_x [N, C, L]`.
struct ChannelMatmulGradInput {
    x_dims: (usize, usize, usize),
}

impl CustomOp2 for ChannelMatmulGradInput {
    fn name(&self) -> &'static str {
        "channel-matmul-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, l) = self.x_dims;
        let o = l2.dims()[0];
        if l1.dims() != [n, o, l] || l2.dims() != [o, c] {
            bail!(
                "channel_matmul backward: gradient {:?} and kernel {:?} do not fit input {:?}",
                l1.dims(),
                l2.dims(),
                self.x_dims
            );
        }
        let d = ChannelMatmulDims { n, c, l, o };
        let out = dispatch2!(s1, l1, s2, l2, "channel_matmul", |g, w| d
            .grad_input(g, w)?);
        Ok((out, Shape::from((n, c, l))))
    }
}

/// Backward op: `(x [N, C, L], grad [N, O, L]) -> grad_w [O, C]`.
struct ChannelMatmulGradWeight {
    o: usize,
}

impl CustomOp2 for ChannelMatmulGradWeight {
    fn name(&self) -> &'static str {
        "channel-matmul-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, l) = match l1.dims() {
            &[n, c, l] => (n, c, l),
            d => bail!("channel_matmul backward: expected a 3-d input, got {d:?}"),
        };
        if l2.dims() != [n, self.o, l] {
            bail!(
                "channel_matmul backward: gradient {:?} does not fit input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let d = ChannelMatmulDims { n, c, l, o: self.o };
        let out = dispatch2!(s1, l1, s2, l2, "channel_matmul", |x, g| d
            .grad_weight(x, g)?);
        Ok((out, Shape::from((self.o, c))))
    }
}

/// Per-image matrix product over channels: `x` `[N, C, L]`, `w` `[O, C]`, output `[N, O, L]`
/// with `y[b] = w · x[b]`. The kernel gradient is accumulated over images inside the backward
/// pass (no `[N, O, C]` intermediate), and no input gradient is computed for untracked inputs.
/// Off the CPU this is candle's `broadcast_matmul`.
pub fn channel_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op2(&w.contiguous()?, ChannelMatmul)?)
    } else {
        Ok(w.broadcast_matmul(x)?)
    }
}

/// Dense convolution without bias and with TensorFlow "SAME" padding: `x` `[N, C, H, W]`,
/// `kernel` `[O, C, k, k]`, output `[N, O, ceil(H/stride), ceil(W/stride)]`.
///
/// On the CPU the input is unfolded (im2col, padding folded in) and multiplied by the kernel
/// as an `[O, C*k*k]` matrix with [`channel_matmul`]. Elsewhere it is candle's `conv2d` on an
/// explicitly padded input.
pub fn conv2d_same(x: &Tensor, kernel: &Tensor, stride: usize) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    let (o, c, k, _) = kernel.dims4()?;
    let stride = stride.max(1);
    if !x.device().is_cpu() {
        return Ok(pad_same(x, h, w, k, stride)?.conv2d(kernel, 0, stride, 1, 1)?);
    }
    let win = Window::same(h, w, k, stride);
    let cols = x.contiguous()?.apply_op1(Im2Col { k, stride })?;
    let y = channel_matmul(&cols, &kernel.reshape((o, c * k * k))?)?;
    Ok(y.reshape((n, o, win.out_h, win.out_w))?)
}

/// Dense convolution without bias and with PyTorch's symmetric zero padding, as
/// `F.conv2d(x, kernel, stride=stride, padding=padding)`: `x` `[N, C, H, W]`, `kernel`
/// `[O, C, k, k]`, output `[N, O, (H + 2p − k) / s + 1, (W + 2p − k) / s + 1]`.
///
/// On the CPU (f32, f64) each image is unfolded (im2col, padding folded in) and multiplied by
/// the kernel as an `[O, C·k·k]` matrix. The backward pass unfolds each image again instead of
/// keeping the columns (k² times the input) in the graph: the kernel gradient accumulates
/// `Σ_b dY_b · cols_bᵀ` in place, the input gradient folds `Kᵀ · dY_b` back (col2im); it
/// needs no zero-stuffing for strides and computes only the gradients that are tracked.
/// 3×3 stride-1 convolutions on planes where it measured faster go through Winograd's
/// F(2×2, 3×3) instead (see `applies` in `winograd.rs`). Elsewhere it is candle's `conv2d`.
pub fn conv2d(x: &Tensor, kernel: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let stride = stride.max(1);
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return Ok(x.conv2d(kernel, padding, stride, 1, 1)?);
    }
    let (_, c, h, w) = x.dims4()?;
    let (_, _, kh, kw) = kernel.dims4()?;
    if kh == kw && super::winograd::applies(kh, stride, padding, c, h, w) {
        return super::winograd::conv3x3_winograd(x, kernel);
    }
    conv2d_im2col(x, kernel, stride, padding)
}

/// [`conv2d`] always through im2col and matrix products (f32 or f64 on the CPU), also where
/// [`conv2d`] would use Winograd's algorithm: for benchmarks and cross-checks.
pub fn conv2d_im2col(x: &Tensor, kernel: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let stride = stride.max(1);
    let op = DenseConv { stride, padding };
    Ok(x.contiguous()?.apply_op2(&kernel.contiguous()?, op)?)
}

/// Columns below which a convolution's matrix product batches images: a 1×1 or 2×2 output
/// plane (ResNet's last stages at 32 px) makes a per-image product a matrix-vector product
/// that streams the whole kernel once per image, while a few images side by side in one column
/// matrix make it a GEMM.
const GROUP_COLUMNS: usize = 512;

/// Independent runs the kernel gradient's sum over images is split into (fixed, so the result
/// does not depend on the thread count).
const KERNEL_GRAD_PARTS: usize = 2;

/// How many consecutive images share one column matrix.
fn images_per_group(n: usize, out_plane: usize) -> usize {
    GROUP_COLUMNS.div_ceil(out_plane.max(1)).clamp(1, n.max(1))
}

/// A sum over the groups of `g` consecutive images (of `n`) of `len` values, with bits that do
/// not depend on the thread count: the groups split into [`KERNEL_GRAD_PARTS`] fixed runs, each
/// accumulated group after group on its own thread by `add_group(first_image, sum, accumulate,
/// par)` (`accumulate` false for a run's first group, which overwrites the zeroed sum; `par`
/// the threads left to each run), and the runs' sums added in order.
pub(super) fn sum_in_fixed_runs<T: WithDType>(
    n: usize,
    g: usize,
    len: usize,
    add_group: impl Fn(usize, &mut [T], bool, Parallelism) -> candle_core::Result<()> + Sync,
) -> candle_core::Result<Vec<T>> {
    let starts: Vec<usize> = (0..n).step_by(g.max(1)).collect();
    let runs: Vec<&[usize]> = starts
        .chunks(starts.len().div_ceil(KERNEL_GRAD_PARTS).max(1))
        .collect();
    let par = match rayon::current_num_threads() / runs.len().max(1) {
        0 | 1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    };
    let partial = |run: &[usize]| -> candle_core::Result<Vec<T>> {
        let mut sum = vec![T::from_f64(0.0); len];
        for (index, &b0) in run.iter().enumerate() {
            add_group(b0, &mut sum, index > 0, par)?;
        }
        Ok(sum)
    };
    let mut sums = runs
        .into_par_iter()
        .map(partial)
        .collect::<candle_core::Result<Vec<_>>>()?
        .into_iter();
    let mut total = sums.next().unwrap_or_else(|| vec![T::from_f64(0.0); len]);
    for part in sums {
        for (a, b) in total.iter_mut().zip(part) {
            *a += b;
        }
    }
    Ok(total)
}

/// `dst` `[b, a]` = the transpose of `x` `[a, b]`, in parallel over runs of `dst`'s rows.
fn transpose_into<T: WithDType>(x: &[T], a: usize, dst: &mut [T]) {
    let b = x.len().checked_div(a).unwrap_or(0);
    if b == 0 {
        return;
    }
    let rows_per_task = (TRANSPOSE_VALUES / a).max(1);
    dst.par_chunks_mut(a * rows_per_task)
        .enumerate()
        .for_each(|(chunk, d)| {
            let j0 = chunk * rows_per_task;
            for (j, row) in d.chunks_exact_mut(a).enumerate() {
                for (i, v) in row.iter_mut().enumerate() {
                    *v = x[i * b + j0 + j];
                }
            }
        });
}

/// Values per parallel task of [`transpose_into`].
const TRANSPOSE_VALUES: usize = 16 * 1024;

/// `[gi, rows]` -> `[rows, gi]`: `gi` images' values side by side, image-minor (borrowed for a
/// lone image). This is the layout of a group's column matrix and product, so that a pixel of
/// every image of the group moves as one block and short rows of small planes become long
/// copies.
fn image_minor<T: WithDType>(x: &[T], gi: usize) -> Cow<'_, [T]> {
    if gi <= 1 {
        return Cow::Borrowed(x);
    }
    let mut out = vec![T::from_f64(0.0); x.len()];
    transpose_into(x, gi, &mut out);
    Cow::Owned(out)
}

/// The inverse of [`image_minor`], written into `dst` (`[gi, rows]`).
fn from_image_minor<T: WithDType>(x: &[T], gi: usize, dst: &mut [T]) {
    if let Some(rows) = dst.len().checked_div(gi) {
        transpose_into(x, rows, dst);
    }
}

/// Unfolds `gi` consecutive images of `c` planes into one `[c·taps, outp·gi]` column matrix
/// (the live taps only), image-minor: column `p·gi + i` is output pixel `p` of image `i`.
fn unfold_images<T: WithDType>(x: &[T], c: usize, win: Window, taps: &Taps) -> Vec<T> {
    let (inp, outp, kt) = (win.in_plane(), win.out_plane(), taps.len());
    let gi = x.len().checked_div(c * inp).unwrap_or(0);
    let row_stride = gi * outp;
    let mut cols = vec![T::from_f64(0.0); c * kt * row_stride];
    if cols.is_empty() {
        return cols;
    }
    let xt = image_minor(x, gi);
    // One task per input channel: its rows, every image's columns.
    cols.par_chunks_mut(kt * row_stride)
        .enumerate()
        .for_each(|(ch, rows)| {
            let xp = &xt[ch * inp * gi..(ch + 1) * inp * gi];
            unfold_plane(xp, win, taps, rows, row_stride, gi);
        });
    cols
}

/// The adjoint of [`unfold_images`]: writes the column matrix folded back into `gx` (`gi`
/// images, `[gi, c, inp]`).
fn fold_images<T: WithDType>(cols: &[T], c: usize, win: Window, taps: &Taps, gx: &mut [T]) {
    let (inp, outp, kt) = (win.in_plane(), win.out_plane(), taps.len());
    let gi = gx.len().checked_div(c * inp).unwrap_or(0);
    let row_stride = gi * outp;
    if inp == 0 || kt == 0 {
        return;
    }
    let fold = |ch: usize, gp: &mut [T]| {
        fold_plane(&cols[ch * kt * row_stride..], row_stride, win, taps, gp, gi)
    };
    if gi == 1 {
        gx.par_chunks_mut(inp)
            .enumerate()
            .for_each(|(ch, gp)| fold(ch, gp));
        return;
    }
    let mut gt = vec![T::from_f64(0.0); gx.len()];
    gt.par_chunks_mut(inp * gi)
        .enumerate()
        .for_each(|(ch, gp)| fold(ch, gp));
    from_image_minor(&gt, gi, gx);
}

/// The kernel as the matrix products see it: borrowed when every tap is live, restricted to
/// the live taps ([`Taps::gather`]) otherwise.
fn live_kernel<'a, T: WithDType>(kernel: &'a [T], taps: &Taps, k: usize) -> Cow<'a, [T]> {
    if taps.is_full(k) {
        Cow::Borrowed(kernel)
    } else {
        Cow::Owned(taps.gather(kernel, k))
    }
}

/// Runs `f(b0, dst_g, par)` for every group of `g` consecutive images of a `[batch, per]`
/// destination (the last group may be smaller), in parallel across groups when there are
/// enough of them.
fn for_each_group<T: WithDType>(
    dst: &mut [T],
    per: usize,
    g: usize,
    f: impl Fn(usize, &mut [T], Parallelism) -> candle_core::Result<()> + Sync,
) -> candle_core::Result<()> {
    if per == 0 {
        return Ok(());
    }
    let groups = (dst.len() / per).div_ceil(g);
    match batch_parallel(groups) {
        (true, par) => dst
            .par_chunks_mut(per * g)
            .enumerate()
            .try_for_each(|(i, d)| f(i * g, d, par)),
        (false, par) => dst
            .chunks_mut(per * g)
            .enumerate()
            .try_for_each(|(i, d)| f(i * g, d, par)),
    }
}

/// The operation behind [`conv2d`].
#[derive(Debug, Clone, Copy)]
struct DenseConv {
    stride: usize,
    padding: usize,
}

impl DenseConv {
    fn window(&self, x: (usize, usize, usize, usize), k: usize) -> candle_core::Result<Window> {
        let (_, _, h, w) = x;
        match Window::symmetric(h, w, k, self.stride, self.padding) {
            Some(win) => Ok(win),
            None => bail!(
                "conv2d: a {k}×{k} kernel does not fit a {h}×{w} input padded by {}",
                self.padding
            ),
        }
    }

    /// `Y_g = K · cols(X_g)` for every group of images.
    fn forward<T: WithDType>(
        x: &[T],
        kernel: &[T],
        (n, c): (usize, usize),
        o: usize,
        win: Window,
    ) -> candle_core::Result<Vec<T>> {
        let (inp, outp) = (win.in_plane(), win.out_plane());
        let taps = Taps::of(win);
        let ckk = c * taps.len();
        let kernel = live_kernel(kernel, &taps, win.k);
        let mut y = vec![T::from_f64(0.0); n * o * outp];
        let g = images_per_group(n, outp);
        for_each_group(&mut y, o * outp, g, |b0, yg, par| {
            let gi = yg.len() / (o * outp);
            let cols = unfold_images(&x[b0 * c * inp..(b0 + gi) * c * inp], c, win, &taps);
            let k = MatRef {
                data: &kernel,
                rs: ckk,
                cs: 1,
            };
            let cols = MatRef {
                data: &cols,
                rs: gi * outp,
                cs: 1,
            };
            if gi == 1 {
                return gemm_into(yg, (o, outp, ckk), k, cols, false, par);
            }
            let mut product = vec![T::from_f64(0.0); yg.len()];
            gemm_into(&mut product, (o, gi * outp, ckk), k, cols, false, par)?;
            from_image_minor(&product, gi, yg);
            Ok(())
        })?;
        Ok(y)
    }

    /// `dX_g = fold(Kᵀ · dY_g)` for every group of images.
    fn grad_input<T: WithDType>(
        grad: &[T],
        kernel: &[T],
        (n, c): (usize, usize),
        o: usize,
        win: Window,
    ) -> candle_core::Result<Vec<T>> {
        let (inp, outp) = (win.in_plane(), win.out_plane());
        let taps = Taps::of(win);
        let ckk = c * taps.len();
        let kernel = live_kernel(kernel, &taps, win.k);
        let mut gx = vec![T::from_f64(0.0); n * c * inp];
        let g = images_per_group(n, outp);
        for_each_group(&mut gx, c * inp, g, |b0, gxg, par| {
            let gi = gxg.len() / (c * inp);
            let gy = image_minor(&grad[b0 * o * outp..(b0 + gi) * o * outp], gi);
            let mut cols = vec![T::from_f64(0.0); ckk * gi * outp];
            let kt = MatRef {
                data: &kernel,
                rs: 1,
                cs: ckk,
            };
            let gy = MatRef {
                data: &gy,
                rs: gi * outp,
                cs: 1,
            };
            gemm_into(&mut cols, (ckk, gi * outp, o), kt, gy, false, par)?;
            fold_images(&cols, c, win, &taps, gxg);
            Ok(())
        })?;
        Ok(gx)
    }

    /// `dK = Σ_g dY_g · cols(X_g)ᵀ`: the groups split into [`KERNEL_GRAD_PARTS`] fixed runs,
    /// each accumulated group after group on its own thread, the runs' sums added in order.
    /// The split never depends on the thread count, so neither do the bits.
    fn grad_kernel<T: WithDType>(
        x: &[T],
        grad: &[T],
        (n, c): (usize, usize),
        o: usize,
        win: Window,
    ) -> candle_core::Result<Vec<T>> {
        let (inp, outp) = (win.in_plane(), win.out_plane());
        let taps = Taps::of(win);
        let ckk = c * taps.len();
        let g = images_per_group(n, outp);
        let gk = sum_in_fixed_runs(n, g, o * ckk, |b0, gk, accumulate, par| {
            let gi = g.min(n - b0);
            let cols = unfold_images(&x[b0 * c * inp..(b0 + gi) * c * inp], c, win, &taps);
            let gy = image_minor(&grad[b0 * o * outp..(b0 + gi) * o * outp], gi);
            let gy = MatRef {
                data: &gy,
                rs: gi * outp,
                cs: 1,
            };
            let cols_t = MatRef {
                data: &cols,
                rs: 1,
                cs: gi * outp,
            };
            gemm_into(gk, (o, ckk, gi * outp), gy, cols_t, accumulate, par)
        })?;
        Ok(if taps.is_full(win.k) {
            gk
        } else {
            taps.scatter(&gk, win.k)
        })
    }
}

impl CustomOp2 for DenseConv {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l1, "conv2d input")?;
        let (o, kc, k, k2) = dims4(l2, "conv2d kernel")?;
        if kc != c || k2 != k {
            bail!(
                "conv2d: kernel {:?} does not fit input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let win = self.window((n, c, h, w), k)?;
        let out = dispatch2!(s1, l1, s2, l2, "conv2d", |x, k| Self::forward(
            x,
            k,
            (n, c),
            o,
            win
        )?);
        Ok((out, Shape::from((n, o, win.out_h, win.out_w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let x_dims = x.dims4()?;
        let k_dims = kernel.dims4()?;
        let gx = if x.track_op() {
            let op = DenseConvGrad {
                conv: *self,
                x_dims,
                k: k_dims.2,
                of_input: true,
            };
            Some(grad.apply_op2_no_bwd(&kernel.detach(), &op)?)
        } else {
            None
        };
        let gk = if kernel.track_op() {
            let op = DenseConvGrad {
                conv: *self,
                x_dims,
                k: k_dims.2,
                of_input: false,
            };
            Some(grad.apply_op2_no_bwd(&x.detach(), &op)?.reshape(k_dims)?)
        } else {
            None
        };
        Ok((gx, gk))
    }
}

/// Backward of [`DenseConv`]: `(dY, K)` -> `dX` when `of_input`, else `(dY, X)` -> `dK`
/// (as `[O, C·k·k]`).
struct DenseConvGrad {
    conv: DenseConv,
    x_dims: (usize, usize, usize, usize),
    /// Kernel side.
    k: usize,
    of_input: bool,
}

impl CustomOp2 for DenseConvGrad {
    fn name(&self) -> &'static str {
        "conv2d-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = self.x_dims;
        let (gn, o, gh, gw) = dims4(l1, "conv2d gradient")?;
        let k = self.k;
        let win = self.conv.window(self.x_dims, k)?;
        if gn != n || (win.out_h, win.out_w) != (gh, gw) {
            bail!(
                "conv2d backward: gradient {:?} does not fit input {:?}",
                l1.dims(),
                self.x_dims
            );
        }
        let out = if self.of_input {
            dispatch2!(s1, l1, s2, l2, "conv2d", |g, kernel| DenseConv::grad_input(
                g,
                kernel,
                (n, c),
                o,
                win
            )?)
        } else {
            dispatch2!(s1, l1, s2, l2, "conv2d", |g, x| DenseConv::grad_kernel(
                x,
                g,
                (n, c),
                o,
                win
            )?)
        };
        let shape = if self.of_input {
            Shape::from((n, c, h, w))
        } else {
            Shape::from((o, c * k * k))
        };
        Ok((out, shape))
    }
}

/// 1×1 convolution without bias: `x` `[N, C, H, W]`, `kernel` `[O, C, 1, 1]` (or `[O, C]`),
/// as [`channel_matmul`] over the flattened spatial axis.
pub fn pointwise_conv(x: &Tensor, kernel: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let o = kernel.dim(0)?;
    let y = channel_matmul(&x.reshape((n, c, h * w))?, &kernel.reshape((o, c))?)?;
    Ok(y.reshape((n, o, h, w))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ops::max_abs_diff;
    use candle_core::{Device, Var};

    #[test]
    fn conv2d_same_matches_candles_conv2d() {
        let dev = Device::Cpu;
        for &(stride, h, w) in &[(2, 9, 8), (2, 8, 8), (1, 5, 6)] {
            let x = Var::randn(0f64, 1.0, (2, 3, h, w), &dev).unwrap();
            let kern = Var::randn(0f64, 1.0, (4, 3, 3, 3), &dev).unwrap();
            let y = conv2d_same(x.as_tensor(), kern.as_tensor(), stride).unwrap();
            let y_ref = pad_same(x.as_tensor(), h, w, 3, stride)
                .unwrap()
                .conv2d(kern.as_tensor(), 0, stride, 1, 1)
                .unwrap();
            assert!(max_abs_diff(&y, &y_ref) < 1e-12);
            let weights = Tensor::randn(0f64, 1.0, y.dims(), &dev).unwrap();
            let g = (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g_ref = (y_ref * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &kern] {
                let a = g.get(v.as_tensor()).unwrap();
                let b = g_ref.get(v.as_tensor()).unwrap();
                assert!(max_abs_diff(a, b) < 1e-12, "gradient s={stride} {h}x{w}");
            }
        }
    }

    #[test]
    fn channel_matmul_matches_broadcast_matmul_for_one_and_many_images() {
        let dev = Device::Cpu;
        // 1 image (parallel inside the product) and 5 (one image per task).
        for n in [1, 5] {
            let x = Var::randn(0f64, 1.0, (n, 7, 13), &dev).unwrap();
            let w = Var::randn(0f64, 1.0, (4, 7), &dev).unwrap();
            let y = channel_matmul(x.as_tensor(), w.as_tensor()).unwrap();
            let y_ref = w.as_tensor().broadcast_matmul(x.as_tensor()).unwrap();
            assert!(max_abs_diff(&y, &y_ref) < 1e-12);
            let weights = Tensor::randn(0f64, 1.0, y.dims(), &dev).unwrap();
            let g = (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g_ref = (y_ref * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &w] {
                let a = g.get(v.as_tensor()).unwrap();
                let b = g_ref.get(v.as_tensor()).unwrap();
                assert!(max_abs_diff(a, b) < 1e-12, "gradient, {n} images");
            }
        }
    }
}
