//! Dense convolution with PyTorch's symmetric padding and a fast backward pass on the CPU.
//!
//! candle 0.11 differentiates `conv2d` through `conv_transpose2d`, whose CPU kernel is a direct
//! loop about six times slower than the forward convolution (which is im2col + GEMM), and which
//! derives the transposed convolution's output padding from the height alone, so non-square
//! inputs get wrongly shaped gradients. [`conv2d`] wraps candle's forward convolution in a custom
//! operation whose backward pass is also made of forward convolutions:
//!
//! - input gradient: the output gradient, dilated by the stride (zeros between its entries) and
//!   padded by `k - 1 - padding` (plus whatever the stride's rounding dropped on the bottom and
//!   right), correlated with the kernel flipped in space and transposed in channels;
//! - kernel gradient: the input and the output gradient correlated with batch and channels
//!   swapped (the output gradient acting as a kernel dilated by the stride), as candle itself
//!   does.
//!
//! Gradients are computed only for operands that need them, so the images fed to the stem cost
//! no input gradient. The backward pass is first order (not itself differentiable). Off the CPU,
//! candle's own convolution and backward are used unchanged.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};

use crate::Result;

/// `conv2d(x, kernel)` with zero padding `padding` on every side and stride `stride`, as
/// PyTorch's `F.conv2d(x, kernel, stride=stride, padding=padding)`: `x` `[N, C, H, W]`, kernel
/// `[O, C, k, k]`, output `[N, O, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1]`.
pub fn conv2d(x: &Tensor, kernel: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let tracked = x.track_op() || kernel.track_op();
    if tracked && x.device().is_cpu() {
        let op = Conv2dOp { stride, padding };
        Ok(x.contiguous()?.apply_op2(&kernel.contiguous()?, op)?)
    } else {
        Ok(x.conv2d(kernel, padding, stride, 1, 1)?)
    }
}

/// The custom operation: forward by candle's convolution, backward as described above.
#[derive(Debug, Clone, Copy)]
struct Conv2dOp {
    stride: usize,
    padding: usize,
}

/// A CPU tensor holding a copy of a contiguous storage region.
fn cpu_tensor(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("resnet conv2d: operand is not contiguous")
    };
    let dev = &Device::Cpu;
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], l.dims(), dev),
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], l.dims(), dev),
        CpuStorage::F16(v) => Tensor::from_slice(&v[start..end], l.dims(), dev),
        CpuStorage::BF16(v) => Tensor::from_slice(&v[start..end], l.dims(), dev),
        other => bail!("resnet conv2d: unsupported dtype {:?}", other.dtype()),
    }
}

/// The storage of a CPU tensor (copied out).
fn cpu_storage(t: &Tensor) -> candle_core::Result<CpuStorage> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1()?),
        DType::F16 => CpuStorage::F16(flat.to_vec1()?),
        DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
        d => bail!("resnet conv2d: unsupported dtype {d:?}"),
    })
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "resnet-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_tensor(s1, l1)?;
        let k = cpu_tensor(s2, l2)?;
        let y = x.conv2d(&k, self.padding, self.stride, 1, 1)?;
        Ok((cpu_storage(&y)?, y.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = if x.track_op() {
            Some(self.grad_input(x, kernel, grad)?)
        } else {
            None
        };
        let gk = if kernel.track_op() {
            Some(self.grad_kernel(x, kernel, grad)?)
        } else {
            None
        };
        Ok((gx, gk))
    }
}

impl Conv2dOp {
    fn grad_input(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let k = kernel.dim(2)?;
        let (s, p) = (self.stride, self.padding);
        if p >= k {
            bail!("resnet conv2d: padding {p} must be below the kernel size {k}");
        }
        let flipped = kernel
            .detach()
            .flip(&[2, 3])?
            .transpose(0, 1)?
            .contiguous()?;
        if s == 1 {
            // Symmetric: `k - 1 - p` on each side gives back the input size.
            return grad.conv2d(&flipped, k - 1 - p, 1, 1, 1);
        }
        let g = dilate(&dilate(grad, 2, s)?, 3, s)?;
        let (_, _, gh, gw) = g.dims4()?;
        // Left/top: k - 1 - p. Right/bottom: whatever makes the length `len + k - 1`; it is at
        // least k - 1 - p, more when the stride's floor dropped input rows at the end.
        let g =
            g.pad_with_zeros(2, k - 1 - p, h + p - gh)?
                .pad_with_zeros(3, k - 1 - p, w + p - gw)?;
        g.conv2d(&flipped, 0, 1, 1, 1)
    }

    fn grad_kernel(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (_, _, kh, kw) = kernel.dims4()?;
        // dK[o, c, i, j] = sum_{n, y, x} g[n, o, y, x] * xpad[n, c, s*y + i, s*x + j]: a
        // convolution over n of x^T [C, N, H, W] by g^T [O, N, Ho, Wo] dilated by s.
        let xt = x.detach().transpose(0, 1)?;
        let gt = grad.transpose(0, 1)?;
        let dk = xt.conv2d(&gt, self.padding, 1, self.stride, 1)?;
        dk.narrow(2, 0, kh)?
            .narrow(3, 0, kw)?
            .transpose(0, 1)?
            .contiguous()
    }
}

/// Inserts `s - 1` zeros between consecutive entries along `dim`: length `(len - 1) * s + 1`.
fn dilate(t: &Tensor, dim: usize, s: usize) -> candle_core::Result<Tensor> {
    let len = t.dim(dim)?;
    let mut zshape = t.dims().to_vec();
    zshape.insert(dim + 1, s - 1);
    let zeros = Tensor::zeros(zshape, t.dtype(), t.device())?;
    let mut shape = t.dims().to_vec();
    shape[dim] = len * s;
    Tensor::cat(&[&t.unsqueeze(dim + 1)?, &zeros], dim + 1)?
        .reshape(shape)?
        .narrow(dim, 0, (len - 1) * s + 1)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;

    /// Loss `sum(conv(x, k) * r)` and its gradients, computed by the definition.
    struct Naive {
        gx: Vec<f64>,
        gk: Vec<f64>,
        y: Vec<f64>,
    }

    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f64],
        k: &[f64],
        r: &[f64],
        (n, c, h, w): (usize, usize, usize, usize),
        (o, ks): (usize, usize),
        s: usize,
        p: usize,
    ) -> Naive {
        let ho = (h + 2 * p - ks) / s + 1;
        let wo = (w + 2 * p - ks) / s + 1;
        let mut out = Naive {
            gx: vec![0.0; x.len()],
            gk: vec![0.0; k.len()],
            y: vec![0.0; n * o * ho * wo],
        };
        for b in 0..n {
            for oc in 0..o {
                for yy in 0..ho {
                    for xx in 0..wo {
                        let yi = ((b * o + oc) * ho + yy) * wo + xx;
                        for ic in 0..c {
                            for i in 0..ks {
                                for j in 0..ks {
                                    let (r_, c_) = (
                                        (s * yy + i) as isize - p as isize,
                                        (s * xx + j) as isize - p as isize,
                                    );
                                    if r_ < 0 || c_ < 0 || r_ as usize >= h || c_ as usize >= w {
                                        continue;
                                    }
                                    let xi = ((b * c + ic) * h + r_ as usize) * w + c_ as usize;
                                    let ki = ((oc * c + ic) * ks + i) * ks + j;
                                    out.y[yi] += x[xi] * k[ki];
                                    out.gx[xi] += r[yi] * k[ki];
                                    out.gk[ki] += r[yi] * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn values(len: usize, salt: usize) -> Vec<f64> {
        (0..len)
            .map(|i| (((i * 7919 + salt * 104_729) % 1009) as f64 / 1009.0) - 0.5)
            .collect()
    }

    #[test]
    fn output_and_gradients_match_the_definition() {
        // (H, W, kernel, stride, padding): the ResNet cases, odd and non-square sizes included.
        for (h, w, ks, s, p) in [
            (7, 7, 3, 1, 1),
            (8, 8, 3, 2, 1),
            (9, 6, 3, 2, 1),
            (10, 7, 7, 2, 3),
            (5, 8, 1, 2, 0),
            (6, 5, 1, 1, 0),
            (1, 1, 3, 2, 1),
        ] {
            let (n, c, o) = (2, 3, 4);
            let xv = values(n * c * h * w, 1);
            let kv = values(o * c * ks * ks, 2);
            let x = Var::from_vec(xv.clone(), (n, c, h, w), &Device::Cpu).unwrap();
            let k = Var::from_vec(kv.clone(), (o, c, ks, ks), &Device::Cpu).unwrap();
            let y = conv2d(x.as_tensor(), k.as_tensor(), s, p).unwrap();
            let rv = values(y.elem_count(), 3);
            let r = Tensor::from_vec(rv.clone(), y.shape(), &Device::Cpu).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let want = naive(&xv, &kv, &rv, (n, c, h, w), (o, ks), s, p);
            let close = |a: &Tensor, b: &[f64], what: &str| {
                let a = a.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                assert_eq!(a.len(), b.len(), "{what} {h}x{w} k{ks} s{s}");
                let err = a
                    .iter()
                    .zip(b)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(err < 1e-12, "{what} {h}x{w} k{ks} s{s}: error {err}");
            };
            close(&y, &want.y, "output");
            close(
                grads.get(x.as_tensor()).unwrap(),
                &want.gx,
                "input gradient",
            );
            close(
                grads.get(k.as_tensor()).unwrap(),
                &want.gk,
                "kernel gradient",
            );
        }
    }

    #[test]
    fn untracked_input_gets_no_gradient() {
        let x = Tensor::ones((1, 2, 5, 5), DType::F32, &Device::Cpu).unwrap();
        let k = Var::ones((3, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let y = conv2d(&x, k.as_tensor(), 2, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        assert_eq!(grads.get(k.as_tensor()).unwrap().dims(), &[3, 2, 3, 3]);
    }
}
