//! Dense convolution with PyTorch's symmetric padding, for the ResNet probes.
//!
//! candle 0.11 differentiates `conv2d` through `conv_transpose2d`, whose CPU kernel is a direct
//! loop about six times slower than the forward convolution, and which derives the transposed
//! convolution's output padding from the height alone, so non-square inputs get wrongly shaped
//! gradients. On the CPU [`conv2d`] is the crate's im2col + GEMM operation
//! ([`crate::probe::ops::conv2d`]), whose backward pass unfolds each image again and needs no
//! zero-stuffing for strided convolutions; elsewhere (and for other dtypes) it is candle's.

use candle_core::Tensor;

use crate::Result;

/// `conv2d(x, kernel)` with zero padding `padding` on every side and stride `stride`, as
/// PyTorch's `F.conv2d(x, kernel, stride=stride, padding=padding)`: `x` `[N, C, H, W]`, kernel
/// `[O, C, k, k]`, output `[N, O, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1]`.
pub fn conv2d(x: &Tensor, kernel: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    crate::probe::ops::conv2d(x, kernel, stride, padding)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

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
        // Small output planes batch several images into one matrix product (all five images
        // in one group for the small planes; 12×12 gives groups of 4 + 1), so batches of 1, 2
        // and 5 images cover lone images, whole groups and a partial last group.
        let cases = [
            (7, 7, 3, 1, 1),
            (8, 8, 3, 2, 1),
            (9, 6, 3, 2, 1),
            (10, 7, 7, 2, 3),
            (5, 8, 1, 2, 0),
            (6, 5, 1, 1, 0),
            (1, 1, 3, 2, 1),
            (24, 24, 3, 2, 1),
            // Kernel taps entirely in the padding (left out of the products): ResNet's last
            // stage at 32 px, 1×1 planes (centre tap only) and 2×2 -> 1×1 (four taps).
            (1, 1, 3, 1, 1),
            (2, 2, 3, 2, 1),
            (2, 3, 3, 1, 1),
            // Output rows of 16 and more unfold by row pieces, narrower ones through a
            // gather table: both, with and without stride.
            (5, 17, 3, 1, 1),
            (6, 36, 3, 2, 1),
        ];
        for ((h, w, ks, s, p), n) in cases.into_iter().flat_map(|c| [(c, 1), (c, 2), (c, 5)]) {
            let (c, o) = (3, 4);
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
                assert_eq!(a.len(), b.len(), "{what} {n}×{h}x{w} k{ks} s{s}");
                let err = a
                    .iter()
                    .zip(b)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(err < 1e-12, "{what} {n}×{h}x{w} k{ks} s{s}: error {err}");
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
    fn gradients_are_the_same_bits_with_one_or_three_threads() {
        // 24 images of 4×4 make several groups, split into the kernel gradient's fixed runs.
        let (n, c, o, h) = (24, 5, 6, 4);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let xv: Vec<f32> = values(n * c * h * h, 1).iter().map(|&v| v as f32).collect();
                let kv: Vec<f32> = values(o * c * 9, 2).iter().map(|&v| v as f32).collect();
                let x = Var::from_vec(xv, (n, c, h, h), &Device::Cpu).unwrap();
                let k = Var::from_vec(kv, (o, c, 3, 3), &Device::Cpu).unwrap();
                let y = conv2d(x.as_tensor(), k.as_tensor(), 1, 1).unwrap();
                let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                let bits = |t: &Tensor| -> Vec<u32> {
                    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    v.iter().map(|v| v.to_bits()).collect()
                };
                (
                    bits(g.get(x.as_tensor()).unwrap()),
                    bits(g.get(k.as_tensor()).unwrap()),
                )
            })
        };
        assert!(run(1) == run(3), "the thread count changed the gradients");
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
