//! Depthwise convolution with "SAME" padding and a direct backward pass.
//!
//! candle's grouped convolution loops over groups, and its backward goes through a naive
//! transposed convolution; here one pass over each (image, channel) plane gives the output, the
//! input gradient or (summed over images) the kernel gradient.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::{dims4, pad_same, Window};
use crate::Result;

/// Strided `dst[t] += a * src[t * stride]` over `dst`.
#[inline(always)]
fn axpy_strided<T: WithDType>(dst: &mut [T], a: T, src: &[T], stride: usize) {
    if stride == 1 {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d += a * x;
        }
    } else {
        for (d, &x) in dst.iter_mut().zip(src.iter().step_by(stride)) {
            *d += a * x;
        }
    }
}

/// Strided `dst[t * stride] += a * src[t]` over `src`.
#[inline(always)]
fn scatter_axpy_strided<T: WithDType>(dst: &mut [T], a: T, src: &[T], stride: usize) {
    if stride == 1 {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d += a * x;
        }
    } else {
        for (d, &x) in dst.iter_mut().step_by(stride).zip(src) {
            *d += a * x;
        }
    }
}

/// Strided dot product `sum_t a[t] * b[t * stride]` over `a`.
#[inline(always)]
fn dot_strided<T: WithDType>(a: &[T], b: &[T], stride: usize) -> T {
    let mut acc = T::from_f64(0.0);
    if stride == 1 {
        // Eight independent partial sums: a single running sum is a serial dependency chain
        // the compiler may not reorder, so it would not vectorise.
        let b = &b[..a.len()];
        let mut lanes = [T::from_f64(0.0); 8];
        let (a8, a_rest) = a.split_at(a.len() - a.len() % 8);
        let (b8, b_rest) = b.split_at(a8.len());
        for (xa, xb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
            for l in 0..8 {
                lanes[l] += xa[l] * xb[l];
            }
        }
        for (&x, &y) in a_rest.iter().zip(b_rest) {
            acc += x * y;
        }
        for l in lanes {
            acc += l;
        }
    } else {
        for (&x, &y) in a.iter().zip(b.iter().step_by(stride)) {
            acc += x * y;
        }
    }
    acc
}

/// Buffers of the stride-1 kernels. The input plane is zero-padded into a `(h + k - 1) × pw`
/// buffer (`pw = w + k - 1`, plus `k` spare zeros) and every output row is computed at the full
/// padded width `pw`: tap `(i, j)` is then one contiguous multiply-add over `out_h · pw` values
/// at offset `i · pw + j`, long enough to vectorise even on 7×7 planes. The `pw - out_w` extra
/// columns of each row are scratch and dropped.
struct Flat<T> {
    pw: usize,
    /// `out_h · pw`: the length of every tap's multiply-add.
    len: usize,
    /// The padded plane.
    padded: Vec<T>,
    /// An output-shaped plane at width `pw`.
    wide: Vec<T>,
}

impl<T: WithDType> Flat<T> {
    fn new(win: &Window) -> Self {
        let pw = win.w + win.k - 1;
        let ph = win.h + win.k - 1;
        let len = win.out_h * pw;
        let zero = T::from_f64(0.0);
        Flat {
            pw,
            len,
            padded: vec![zero; ph * pw + win.k],
            wide: vec![zero; len],
        }
    }

    /// Copies plane `src` into the padded buffer (its border stays zero).
    fn load_padded(&mut self, win: &Window, src: &[T]) {
        for (y, row) in src.chunks_exact(win.w).enumerate() {
            let start = (y + win.pad_top) * self.pw + win.pad_left;
            self.padded[start..start + win.w].copy_from_slice(row);
        }
    }

    /// Copies an output-shaped plane into the wide buffer (its extra columns stay zero).
    fn load_wide(&mut self, win: &Window, src: &[T]) {
        for (y, row) in src.chunks_exact(win.out_w).enumerate() {
            self.wide[y * self.pw..y * self.pw + win.out_w].copy_from_slice(row);
        }
    }
}

/// Depthwise convolution kernels over one plane each. `x`: `[N, C, H, W]`, kernel `[C, 1, k, k]`.
#[derive(Debug, Clone, Copy)]
struct DepthwiseConv {
    c: usize,
    win: Window,
}

impl DepthwiseConv {
    fn forward<T: WithDType>(&self, x: &[T], wk: &[T]) -> Vec<T> {
        let win = self.win;
        let spans = win.col_spans();
        let (inp, outp, kk) = (win.in_plane(), win.out_plane(), win.k * win.k);
        let planes = x.len() / inp.max(1);
        let mut out = vec![T::from_f64(0.0); planes * outp];
        if outp == 0 {
            return out;
        }
        let per_task = win.planes_per_task();
        if win.stride == 1 {
            out.par_chunks_mut(outp * per_task)
                .enumerate()
                .for_each(|(task, chunk)| {
                    let mut f = Flat::new(&win);
                    for (p, o) in chunk.chunks_mut(outp).enumerate() {
                        let plane = task * per_task + p;
                        let ch = plane % self.c;
                        let kp = &wk[ch * kk..(ch + 1) * kk];
                        f.load_padded(&win, &x[plane * inp..(plane + 1) * inp]);
                        f.wide.fill(T::from_f64(0.0));
                        for i in 0..win.k {
                            for j in 0..win.k {
                                let src = &f.padded[i * f.pw + j..i * f.pw + j + f.len];
                                axpy_strided(&mut f.wide, kp[i * win.k + j], src, 1);
                            }
                        }
                        for (orow, wrow) in o.chunks_exact_mut(win.out_w).zip(f.wide.chunks(f.pw)) {
                            orow.copy_from_slice(&wrow[..win.out_w]);
                        }
                    }
                });
            return out;
        }
        out.par_chunks_mut(outp * per_task)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (p, o) in chunk.chunks_mut(outp).enumerate() {
                    let plane = task * per_task + p;
                    let ch = plane % self.c;
                    let xp = &x[plane * inp..(plane + 1) * inp];
                    let kp = &wk[ch * kk..(ch + 1) * kk];
                    for oy in 0..win.out_h {
                        let orow = &mut o[oy * win.out_w..(oy + 1) * win.out_w];
                        for i in 0..win.k {
                            let Some(iy) = win.in_row(oy, i) else {
                                continue;
                            };
                            let xrow = &xp[iy * win.w..(iy + 1) * win.w];
                            for j in 0..win.k {
                                let (lo, hi, ix) = spans[j];
                                if lo < hi {
                                    axpy_strided(
                                        &mut orow[lo..hi],
                                        kp[i * win.k + j],
                                        &xrow[ix..],
                                        win.stride,
                                    );
                                }
                            }
                        }
                    }
                }
            });
        out
    }

    /// Gradient with respect to the input: each output gradient is scattered back through the
    /// taps that produced it.
    fn grad_input<T: WithDType>(&self, g: &[T], wk: &[T]) -> Vec<T> {
        let win = self.win;
        let spans = win.col_spans();
        let (inp, outp, kk) = (win.in_plane(), win.out_plane(), win.k * win.k);
        let planes = g.len() / outp.max(1);
        let mut gx = vec![T::from_f64(0.0); planes * inp];
        if outp == 0 || inp == 0 {
            return gx;
        }
        let per_task = win.planes_per_task();
        if win.stride == 1 {
            gx.par_chunks_mut(inp * per_task)
                .enumerate()
                .for_each(|(task, chunk)| {
                    // Scatter the wide gradient plane into the padded buffer, then crop.
                    let mut f = Flat::new(&win);
                    for (p, gxp) in chunk.chunks_mut(inp).enumerate() {
                        let plane = task * per_task + p;
                        let ch = plane % self.c;
                        let kp = &wk[ch * kk..(ch + 1) * kk];
                        f.load_wide(&win, &g[plane * outp..(plane + 1) * outp]);
                        f.padded.fill(T::from_f64(0.0));
                        for i in 0..win.k {
                            for j in 0..win.k {
                                let dst = &mut f.padded[i * f.pw + j..i * f.pw + j + f.len];
                                axpy_strided(dst, kp[i * win.k + j], &f.wide, 1);
                            }
                        }
                        for (y, row) in gxp.chunks_exact_mut(win.w).enumerate() {
                            let start = (y + win.pad_top) * f.pw + win.pad_left;
                            row.copy_from_slice(&f.padded[start..start + win.w]);
                        }
                    }
                });
            return gx;
        }
        gx.par_chunks_mut(inp * per_task)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (p, gxp) in chunk.chunks_mut(inp).enumerate() {
                    let plane = task * per_task + p;
                    let ch = plane % self.c;
                    let gp = &g[plane * outp..(plane + 1) * outp];
                    let kp = &wk[ch * kk..(ch + 1) * kk];
                    for oy in 0..win.out_h {
                        let grow = &gp[oy * win.out_w..(oy + 1) * win.out_w];
                        for i in 0..win.k {
                            let Some(iy) = win.in_row(oy, i) else {
                                continue;
                            };
                            let xrow = &mut gxp[iy * win.w..(iy + 1) * win.w];
                            for j in 0..win.k {
                                let (lo, hi, ix) = spans[j];
                                if lo < hi {
                                    scatter_axpy_strided(
                                        &mut xrow[ix..],
                                        kp[i * win.k + j],
                                        &grow[lo..hi],
                                        win.stride,
                                    );
                                }
                            }
                        }
                    }
                }
            });
        gx
    }

    /// Gradient with respect to the kernel, one channel per task. Each row's dot product is
    /// taken in `T`, the sum over rows and images in f64, which keeps F32 sums over a whole
    /// batch accurate.
    fn grad_kernel<T: WithDType>(&self, x: &[T], g: &[T]) -> Vec<T> {
        let win = self.win;
        let spans = win.col_spans();
        let (inp, outp, kk) = (win.in_plane(), win.out_plane(), win.k * win.k);
        let n = g.len().checked_div(outp * self.c).unwrap_or(0);
        let mut gw = vec![T::from_f64(0.0); self.c * kk];
        if win.stride == 1 {
            gw.par_chunks_mut(kk).enumerate().for_each(|(ch, gk)| {
                let mut f = Flat::new(&win);
                let mut acc = vec![0f64; kk];
                for b in 0..n {
                    let plane = b * self.c + ch;
                    f.load_padded(&win, &x[plane * inp..(plane + 1) * inp]);
                    f.load_wide(&win, &g[plane * outp..(plane + 1) * outp]);
                    for i in 0..win.k {
                        for j in 0..win.k {
                            let src = &f.padded[i * f.pw + j..i * f.pw + j + f.len];
                            acc[i * win.k + j] += dot_strided(&f.wide, src, 1).to_f64();
                        }
                    }
                }
                for (d, a) in gk.iter_mut().zip(acc) {
                    *d = T::from_f64(a);
                }
            });
            return gw;
        }
        gw.par_chunks_mut(kk).enumerate().for_each(|(ch, gk)| {
            let mut acc = vec![0f64; kk];
            for b in 0..n {
                let plane = b * self.c + ch;
                let xp = &x[plane * inp..(plane + 1) * inp];
                let gp = &g[plane * outp..(plane + 1) * outp];
                for oy in 0..win.out_h {
                    let grow = &gp[oy * win.out_w..(oy + 1) * win.out_w];
                    for i in 0..win.k {
                        let Some(iy) = win.in_row(oy, i) else {
                            continue;
                        };
                        let xrow = &xp[iy * win.w..(iy + 1) * win.w];
                        for j in 0..win.k {
                            let (lo, hi, ix) = spans[j];
                            if lo < hi {
                                acc[i * win.k + j] +=
                                    dot_strided(&grow[lo..hi], &xrow[ix..], win.stride).to_f64();
                            }
                        }
                    }
                }
            }
            for (d, a) in gk.iter_mut().zip(acc) {
                *d = T::from_f64(a);
            }
        });
        gw
    }
}

/// Forward op: `(x, kernel) -> y`.
struct DepthwiseFwd {
    k: usize,
    stride: usize,
}

impl DepthwiseFwd {
    fn geometry(&self, x: &Layout, kernel: &Layout) -> candle_core::Result<(usize, DepthwiseConv)> {
        let (n, c, h, w) = dims4(x, "depthwise_conv2d input")?;
        let (kc, one, kh, kw) = dims4(kernel, "depthwise_conv2d kernel")?;
        if kc != c || one != 1 || kh != self.k || kw != self.k {
            bail!(
                "depthwise_conv2d: kernel {:?} does not fit input {:?} (want [{c}, 1, {}, {}])",
                kernel.dims(),
                x.dims(),
                self.k,
                self.k
            );
        }
        Ok((
            n,
            DepthwiseConv {
                c,
                win: Window::same(h, w, self.k, self.stride),
            },
        ))
    }
}

impl CustomOp2 for DepthwiseFwd {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-same"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, op) = self.geometry(l1, l2)?;
        let shape = Shape::from((n, op.c, op.win.out_h, op.win.out_w));
        let out = dispatch2!(s1, l1, s2, l2, "depthwise_conv2d", |a, b| op.forward(a, b));
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // Untracked inputs (the image batch, a cached activation) need no gradient.
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                kernel,
                &DepthwiseGradInput {
                    k: self.k,
                    stride: self.stride,
                    x_dims: x.dims4()?,
                },
            )?)
        } else {
            None
        };
        let gk = if kernel.track_op() {
            Some(x.apply_op2_no_bwd(
                &grad,
                &DepthwiseGradKernel {
                    k: self.k,
                    stride: self.stride,
                },
            )?)
        } else {
            None
        };
        Ok((gx, gk))
    }
}

/// Backward op: `(grad_out, kernel) -> grad_x`.
struct DepthwiseGradInput {
    k: usize,
    stride: usize,
    x_dims: (usize, usize, usize, usize),
}

impl CustomOp2 for DepthwiseGradInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-same-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = self.x_dims;
        let op = DepthwiseConv {
            c,
            win: Window::same(h, w, self.k, self.stride),
        };
        if l1.dims() != [n, c, op.win.out_h, op.win.out_w] {
            bail!(
                "depthwise_conv2d backward: gradient shape {:?} does not fit input {:?}",
                l1.dims(),
                self.x_dims
            );
        }
        let out = dispatch2!(s1, l1, s2, l2, "depthwise_conv2d", |a, b| op
            .grad_input(a, b));
        Ok((out, Shape::from((n, c, h, w))))
    }
}

/// Backward op: `(x, grad_out) -> grad_kernel`.
struct DepthwiseGradKernel {
    k: usize,
    stride: usize,
}

impl CustomOp2 for DepthwiseGradKernel {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-same-grad-kernel"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l1, "depthwise_conv2d backward input")?;
        let op = DepthwiseConv {
            c,
            win: Window::same(h, w, self.k, self.stride),
        };
        if l2.dims() != [n, c, op.win.out_h, op.win.out_w] {
            bail!(
                "depthwise_conv2d backward: gradient shape {:?} does not fit input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let out = dispatch2!(s1, l1, s2, l2, "depthwise_conv2d", |a, b| op
            .grad_kernel(a, b));
        Ok((out, Shape::from((c, 1, self.k, self.k))))
    }
}

/// Depthwise convolution with TensorFlow "SAME" padding: `x` `[N, C, H, W]`, `kernel`
/// `[C, 1, k, k]`, output `[N, C, ceil(H/stride), ceil(W/stride)]`.
///
/// On the CPU this is one custom operation whose backward gives the input and kernel gradients
/// directly; elsewhere it is candle's grouped convolution on an explicitly padded input.
pub fn depthwise_conv2d(x: &Tensor, kernel: &Tensor, stride: usize) -> Result<Tensor> {
    let k = kernel.dim(3)?;
    if x.device().is_cpu() {
        let op = DepthwiseFwd {
            k,
            stride: stride.max(1),
        };
        Ok(x.contiguous()?.apply_op2(&kernel.contiguous()?, op)?)
    } else {
        depthwise_conv2d_composite(x, kernel, stride)
    }
}

/// [`depthwise_conv2d`] from candle's own operations (any device).
fn depthwise_conv2d_composite(x: &Tensor, kernel: &Tensor, stride: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let k = kernel.dim(3)?;
    let xp = pad_same(x, h, w, k, stride)?;
    Ok(xp.conv2d(kernel, 0, stride.max(1), 1, c)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ops::max_abs_diff;
    use candle_core::{Device, Var};

    /// Reference: candle's grouped convolution on an explicitly padded input.
    fn depthwise_reference(x: &Tensor, k: &Tensor, stride: usize) -> Tensor {
        depthwise_conv2d_composite(x, k, stride).unwrap()
    }

    #[test]
    fn depthwise_forward_and_gradients_match_candles_grouped_conv() {
        let dev = Device::Cpu;
        for &(k, stride, h, w) in &[
            (3, 1, 7, 6),
            (3, 2, 8, 8),
            (3, 2, 7, 9),
            (5, 1, 6, 5),
            (5, 2, 9, 8),
            (5, 2, 2, 3),
        ] {
            let x = Var::randn(0f64, 1.0, (2, 3, h, w), &dev).unwrap();
            let kern = Var::randn(0f64, 1.0, (3, 1, k, k), &dev).unwrap();
            let y = depthwise_conv2d(x.as_tensor(), kern.as_tensor(), stride).unwrap();
            let y_ref = depthwise_reference(x.as_tensor(), kern.as_tensor(), stride);
            assert_eq!(y.dims(), y_ref.dims());
            assert!(
                max_abs_diff(&y, &y_ref) < 1e-12,
                "forward k={k} s={stride} {h}x{w}"
            );

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
                assert!(
                    max_abs_diff(a, b) < 1e-12,
                    "gradient k={k} s={stride} {h}x{w}"
                );
            }
        }
    }
}
