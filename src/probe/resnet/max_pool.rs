//! ResNet's stem max-pool (3×3 window, stride 2, padding 1).
//!
//! candle 0.11's `max_pool2d` takes no padding and has no backward pass for overlapping windows.
//! On the CPU (f32, f64) the pool is [`crate::probe::ops::max_pool_3x3_s2_p1`], one pass each
//! way with PyTorch's gradient at ties (all to the first maximal element). Elsewhere it is
//! assembled from slices, reshapes and element-wise `maximum`, which candle can differentiate on
//! every device: a 3×3 max is separable, a 3-wide max along the width followed by a 3-tall max
//! along the height. That composition costs about ten full-size tensors each way (a tenth of a
//! ResNet-18 embedding at 224 px on the CPU), and at ties candle's `maximum` splits the
//! gradient equally between equal operands. The two agree wherever the maximum is unique; in
//! ResNet the pool follows a ReLU, so the common ties are between zeros, whose incoming
//! gradient the ReLU discards anyway.

use candle_core::{DType, Tensor};

use crate::Result;

/// Max-pool `[N, C, H, W]` with a 3×3 window, stride 2 and padding 1, as PyTorch's
/// `MaxPool2d(kernel_size=3, stride=2, padding=1)`: the output is
/// `[N, C, (H - 1) / 2 + 1, (W - 1) / 2 + 1]` (integer division) and padding never wins.
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return crate::probe::ops::max_pool_3x3_s2_p1(x);
    }
    composite(x)
}

/// [`max_pool_3x3_s2_p1`] from candle's own operations.
fn composite(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        return Err(crate::Error::Mismatch(format!(
            "max-pool: empty spatial size {h}x{w}"
        )));
    }
    let x = max3_stride2(x, 3)?;
    max3_stride2(&x, 2)
}

/// Along axis `dim` (2 or 3 of a rank-4 tensor): `out[j] = max(x[2j-1], x[2j], x[2j+1])` for
/// `j < (len - 1) / 2 + 1`, with out-of-range positions ignored.
fn max3_stride2(x: &Tensor, dim: usize) -> Result<Tensor> {
    let len = x.dim(dim)?;
    let out = (len - 1) / 2 + 1;
    // Pad with -inf: one element on the left, and on the right as many as make the padded length
    // 2*out + 2 (one or two). Every window holds at least one real element, so -inf never reaches
    // the output, and `maximum`'s gradient never multiplies by it.
    let right = 2 * out + 1 - len;
    let mut shape = x.dims().to_vec();
    shape[dim] = 1;
    let left_pad = neg_inf(x, &shape)?;
    shape[dim] = right;
    let right_pad = neg_inf(x, &shape)?;
    let padded = Tensor::cat(&[&left_pad, x, &right_pad], dim)?;

    // View positions 0..2*out as [out, 2]: index 0 is padded position 2j, index 1 is 2j+1.
    // The same trick on positions 2..2*out+2 gives 2j+2.
    let pairs = |start: usize| -> Result<Tensor> {
        let mut split = x.dims().to_vec();
        split[dim] = out;
        split.insert(dim + 1, 2);
        Ok(padded.narrow(dim, start, 2 * out)?.reshape(split)?)
    };
    let a = pairs(0)?;
    let b = pairs(2)?;
    let first = a.narrow(dim + 1, 0, 1)?;
    let second = a.narrow(dim + 1, 1, 1)?;
    let third = b.narrow(dim + 1, 0, 1)?;
    Ok(first.maximum(&second)?.maximum(&third)?.squeeze(dim + 1)?)
}

fn neg_inf(like: &Tensor, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::full(f32::NEG_INFINITY, shape, like.device())?.to_dtype(like.dtype())?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    /// The definition, one output at a time.
    fn naive(x: &[f64], n: usize, h: usize, w: usize) -> Vec<f64> {
        let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
        let mut out = Vec::new();
        for p in 0..n {
            for i in 0..ho {
                for j in 0..wo {
                    let mut m = f64::NEG_INFINITY;
                    for di in 0..3 {
                        for dj in 0..3 {
                            let (r, c) = ((2 * i + di) as isize - 1, (2 * j + dj) as isize - 1);
                            if r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w {
                                m = m.max(x[p * h * w + r as usize * w + c as usize]);
                            }
                        }
                    }
                    out.push(m);
                }
            }
        }
        out
    }

    /// Distinct values in a scrambled order, so every window has a unique maximum.
    fn scrambled(len: usize) -> Vec<f64> {
        (0..len)
            .map(|i| ((i * 7919) % len) as f64 * 0.01 - 1.0)
            .collect()
    }

    #[test]
    fn matches_the_definition_for_odd_and_even_sizes() {
        type Pool = fn(&Tensor) -> Result<Tensor>;
        let ways: [(&str, Pool); 2] = [("op", max_pool_3x3_s2_p1), ("composite", composite)];
        for ((h, w), (way, pool)) in [(1, 1), (2, 3), (5, 4), (7, 7), (8, 8), (9, 6)]
            .into_iter()
            .flat_map(|size| ways.map(|way| (size, way)))
        {
            let n = 2;
            let data = scrambled(n * h * w);
            let x = Tensor::from_vec(data.clone(), (1, n, h, w), &Device::Cpu).unwrap();
            let y = pool(&x).unwrap();
            assert_eq!(y.dims(), &[1, n, (h - 1) / 2 + 1, (w - 1) / 2 + 1]);
            assert_eq!(
                y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                naive(&data, n, h, w),
                "{way} {h}x{w}"
            );
        }
    }

    #[test]
    fn gradient_goes_to_the_window_maximum() {
        // Each input element receives the sum of the upstream gradients of the windows it is
        // the (unique) maximum of.
        let (h, w) = (7, 6);
        let data = scrambled(h * w);
        let x = Var::from_vec(data.clone(), (1, 1, h, w), &Device::Cpu).unwrap();
        let y = max_pool_3x3_s2_p1(x.as_tensor()).unwrap();
        let (ho, wo) = (y.dim(2).unwrap(), y.dim(3).unwrap());
        let up: Vec<f64> = (0..ho * wo).map(|k| 1.0 + k as f64).collect();
        let upt = Tensor::from_vec(up.clone(), (1, 1, ho, wo), &Device::Cpu).unwrap();
        let grads = (y * upt).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let mut expected = vec![0.0; h * w];
        for i in 0..ho {
            for j in 0..wo {
                let mut best = (f64::NEG_INFINITY, 0);
                for di in 0..3 {
                    for dj in 0..3 {
                        let (r, c) = ((2 * i + di) as isize - 1, (2 * j + dj) as isize - 1);
                        if r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w {
                            let k = r as usize * w + c as usize;
                            if data[k] > best.0 {
                                best = (data[k], k);
                            }
                        }
                    }
                }
                expected[best.1] += up[i * wo + j];
            }
        }
        assert_eq!(g, expected);
    }

    #[test]
    fn at_ties_the_whole_gradient_goes_to_the_first_maximum_as_in_pytorch() {
        // A 3×3 plane of equal values, plus a NaN-free tie between (0, 1) and (1, 0) in a 2×2
        // one: PyTorch's row-major scan keeps the first.
        let x = Var::from_vec(vec![1.0f64; 9], (1, 1, 3, 3), &Device::Cpu).unwrap();
        let y = max_pool_3x3_s2_p1(x.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        // Output (0,0) reads rows 0..2, cols 0..2: first is (0,0); (0,1): rows 0..2, cols
        // 1..3: first (0,1); (1,0): (1,0); (1,1): (1,1).
        assert_eq!(g, vec![1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let x = Var::from_vec(vec![0.0f32, 5.0, 5.0, 1.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let g = max_pool_3x3_s2_p1(x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(g, vec![0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn keeps_the_dtype() {
        let x = Tensor::ones((1, 2, 5, 5), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(max_pool_3x3_s2_p1(&x).unwrap().dtype(), DType::F32);
    }
}
