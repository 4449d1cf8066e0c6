//! The reference formulas, in f64, on vectors the zero policy has already prepared.
//!
//! Each function follows `task_similarity.py` (awslabs/aws-cv-task2vec) and scipy 1.10's
//! `spatial.distance` operation by operation, in the same order, so that NaN and infinity
//! propagate exactly as they do in numpy. Nothing here clamps or checks: the cosine clamp and
//! the handling of NaN depend on the zero policy and happen in the caller.

/// The `+1e-8` that the reference adds to `h0 + h1` before normalising. It is absolute, so the
/// hessian-based distances (`cosine`, `entropy`) depend slightly on the overall Fisher scale.
pub(super) const PAIR_EPSILON: f64 = 1e-8;

/// numpy's `mean`: the sum divided by the count (NaN for an empty slice, as numpy gives).
fn mean(xs: impl Iterator<Item = f64>, n: usize) -> f64 {
    xs.sum::<f64>() / n as f64
}

/// `np.maximum`: NaN when either side is NaN (Rust's `f64::max` would drop the NaN).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// scipy's `xlogy(x, y)`: `x * ln(y)`, but 0 when `x == 0` and `y` is not NaN.
fn xlogy(x: f64, y: f64) -> f64 {
    if x == 0.0 && !y.is_nan() {
        0.0
    } else {
        x * y.ln()
    }
}

/// The core of scipy's `correlation(u, v, centered)`: `|1 - mean(uv) / sqrt(mean(u²) mean(v²))|`
/// after subtracting the means when `centered`. scipy's `cosine` is the uncentred form plus a
/// clamp (applied by the caller). The division by `sqrt(uu * vv)` in that order makes the
/// distance of a vector to itself exactly 0, as in scipy.
fn scipy_correlation(u: &[f64], v: &[f64], centered: bool) -> f64 {
    let n = u.len();
    let (mu, mv) = if centered {
        (mean(u.iter().copied(), n), mean(v.iter().copied(), n))
    } else {
        (0.0, 0.0)
    };
    let uv = mean(u.iter().zip(v).map(|(&a, &b)| (a - mu) * (b - mv)), n);
    let uu = mean(u.iter().map(|&a| (a - mu) * (a - mu)), n);
    let vv = mean(v.iter().map(|&b| (b - mv) * (b - mv)), n);
    (1.0 - uv / (uu * vv).sqrt()).abs()
}

/// Python's `max(0, min(d, 2.0))`, as scipy's `cosine` clamps: a NaN survives `min` and loses to
/// 0 in `max`, so NaN becomes **0**. Only the `Reference` zero policy applies this quirk.
pub(super) fn python_cosine_clamp(d: f64) -> f64 {
    let upper = if 2.0 < d { 2.0 } else { d };
    if upper > 0.0 {
        upper
    } else {
        0.0
    }
}

/// The pair-normalised hessians `h0 / (h0 + h1 + 1e-8)` and `h1 / (h0 + h1 + 1e-8)`.
fn scaled_hessians(h0: &[f64], h1: &[f64]) -> (Vec<f64>, Vec<f64>) {
    h0.iter()
        .zip(h1)
        .map(|(&a, &b)| {
            let total = a + b + PAIR_EPSILON;
            (a / total, b / total)
        })
        .unzip()
}

/// The variance `1 / h` of each coordinate (infinite where `h` is 0).
fn variances(h: &[f64]) -> Vec<f64> {
    h.iter().map(|&x| 1.0 / x).collect()
}

/// The per-coordinate KL divergence of zero-mean Gaussians, `½(v0/v1 − 1 + ln v1 − ln v0)`, in
/// the reference's operation order.
fn gaussian_kl(v0: f64, v1: f64) -> f64 {
    0.5 * (v0 / v1 - 1.0 + v1.ln() - v0.ln())
}

/// `d_sym` under the default zero policy in one pass without allocating: coordinates where
/// both hessians are 0 are dropped, the rest scaled by the pair as [`scaled_hessians`] and
/// compared as [`scipy_correlation`] (uncentred), each sum taken in index order as there, so
/// the result has the same bits as the general path's, clamp included. `None` for anything
/// the general path must judge: different lengths, a negative or non-finite entry, an all-zero
/// side, a non-finite result.
pub(super) fn d_sym_one_pass(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    let (mut uv, mut uu, mut vv, mut n) = (0.0_f64, 0.0_f64, 0.0_f64, 0_usize);
    let (mut a_live, mut b_live) = (false, false);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        if !(x >= 0.0 && y >= 0.0 && x.is_finite() && y.is_finite()) {
            return None;
        }
        a_live |= x > 0.0;
        b_live |= y > 0.0;
        if x > 0.0 || y > 0.0 {
            let total = x + y + PAIR_EPSILON;
            let (u, v) = (x / total, y / total);
            uv += u * v;
            uu += u * u;
            vv += v * v;
            n += 1;
        }
    }
    // An all-zero side is an error of the general path, even when the other side is live.
    if n == 0 || !a_live || !b_live {
        return None;
    }
    let n = n as f64;
    let d = (1.0 - (uv / n) / ((uu / n) * (vv / n)).sqrt()).abs();
    d.is_finite().then(|| d.clamp(0.0, 2.0))
}

/// [`d_sym_one_pass`] summed in interleaved lanes, with one division per coordinate
/// (`u = x · r`, `v = y · r`, `r = 1 / (x + y + ε)`) and no branch: the same value to about
/// 1e-13 relative (the sums' order and one rounding per coordinate differ, and `1 − cosine`
/// magnifies that), not the same bits. A pair of zeros adds nothing to the sums (both scaled
/// values are 0). `None` where [`d_sym_one_pass`] would be, for the general path to judge.
/// [`d_sym_avx2_fma`] where the CPU has AVX2 and FMA, else [`d_sym_lanes_portable`].
pub(super) fn d_sym_lanes(a: &[f32], b: &[f32]) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { d_sym_avx2_fma(a, b) };
    }
    d_sym_lanes_portable(a, b)
}

/// [`d_sym_lanes`] written for AVX2 and FMA: four coordinates per step in f64, two steps
/// interleaved, bound by the one division per coordinate (the compiler's vectorisation of
/// [`d_sym_lanes_portable`] spilled its 56 accumulators and took 1.8 times as long: 5.9 against
/// 3.2 ms for 100 vectors of 42,016 values, BENCHMARKS.md).
/// It keeps only the three sums: the count of live pairs cancels out of the cosine
/// (`(uv/n) / √((uu/n)(vv/n)) = uv / √(uu·vv)`, equal up to rounding), an all-zero side shows
/// as `uu` or `vv` equal to 0 (a positive f32 scaled by `r ≥ 1/(2·f32::MAX)` stays positive in
/// f64), a NaN or an infinity makes the sums NaN (`∞ · 0`), and a negative entry shows in the
/// running minimum of the inputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn d_sym_avx2_fma(a: &[f32], b: &[f32]) -> Option<f64> {
    use std::arch::x86_64::*;
    if a.len() != b.len() {
        return None;
    }
    let steps = a.len() / 8;
    let (mut uv, mut uu, mut vv) = (
        [_mm256_setzero_pd(); 2],
        [_mm256_setzero_pd(); 2],
        [_mm256_setzero_pd(); 2],
    );
    let mut low = _mm_setzero_ps();
    let eps = _mm256_set1_pd(PAIR_EPSILON);
    let one = _mm256_set1_pd(1.0);
    for i in 0..steps {
        for h in 0..2 {
            let at = 8 * i + 4 * h;
            // SAFETY: `at + 4 <= 8 * steps <= a.len() == b.len()`; unaligned loads.
            let (xf, yf) = unsafe {
                (
                    _mm_loadu_ps(a.as_ptr().add(at)),
                    _mm_loadu_ps(b.as_ptr().add(at)),
                )
            };
            low = _mm_min_ps(low, _mm_min_ps(xf, yf));
            let (x, y) = (_mm256_cvtps_pd(xf), _mm256_cvtps_pd(yf));
            let r = _mm256_div_pd(one, _mm256_add_pd(_mm256_add_pd(x, y), eps));
            let (u, v) = (_mm256_mul_pd(x, r), _mm256_mul_pd(y, r));
            uv[h] = _mm256_fmadd_pd(u, v, uv[h]);
            uu[h] = _mm256_fmadd_pd(u, u, uu[h]);
            vv[h] = _mm256_fmadd_pd(v, v, vv[h]);
        }
    }
    let sum = |acc: [__m256d; 2]| -> f64 {
        let mut lanes = [0.0_f64; 4];
        // SAFETY: `lanes` holds four f64.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(acc[0], acc[1])) };
        lanes.iter().sum()
    };
    let (mut suv, mut suu, mut svv) = (sum(uv), sum(uu), sum(vv));
    let mut lows = [0.0_f32; 4];
    // SAFETY: `lows` holds four f32.
    unsafe { _mm_storeu_ps(lows.as_mut_ptr(), low) };
    let mut least = lows.iter().fold(0.0_f32, |m, &l| m.min(l));
    for (&xf, &yf) in a[8 * steps..].iter().zip(&b[8 * steps..]) {
        least = least.min(xf.min(yf));
        let (x, y) = (f64::from(xf), f64::from(yf));
        let r = 1.0 / (x + y + PAIR_EPSILON);
        let (u, v) = (x * r, y * r);
        suv = u.mul_add(v, suv);
        suu = u.mul_add(u, suu);
        svv = v.mul_add(v, svv);
    }
    if !(least >= 0.0 && suu > 0.0 && svv > 0.0) {
        return None;
    }
    let d = (1.0 - suv / (suu * svv).sqrt()).abs();
    d.is_finite().then(|| d.clamp(0.0, 2.0))
}

/// The portable form of [`d_sym_lanes`], in [`LANES`] lanes the compiler vectorises; it also
/// counts the live pairs and divides by their number, as the reference does.
#[inline(always)]
pub(super) fn d_sym_lanes_portable(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    let mut acc = [[0.0_f64; LANES]; 6]; // uv, uu, vv, live pairs, Σx, Σy
    let mut low = [0.0_f64; LANES]; // the smallest entry seen, per lane
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ca.remainder().iter().zip(cb.remainder());
    let mut add = |k: usize, x: f32, y: f32| {
        let (x, y) = (f64::from(x), f64::from(y));
        let r = 1.0 / (x + y + PAIR_EPSILON);
        let (u, v) = (x * r, y * r);
        acc[0][k] += u * v;
        acc[1][k] += u * u;
        acc[2][k] += v * v;
        acc[3][k] += f64::from(u8::from(x + y > 0.0));
        acc[4][k] += x;
        acc[5][k] += y;
        low[k] = low[k].min(x.min(y));
    };
    for (xa, xb) in ca.zip(cb) {
        for k in 0..LANES {
            add(k, xa[k], xb[k]);
        }
    }
    for (&x, &y) in tail {
        add(0, x, y);
    }
    let [uv, uu, vv, n, sx, sy] = acc.map(|lanes| lanes.iter().sum::<f64>());
    // A NaN or an infinity makes Σx or Σy non-finite; a negative entry shows in `low`.
    let valid = sx.is_finite() && sy.is_finite() && low.iter().all(|&l| l >= 0.0);
    if !valid || n == 0.0 || sx <= 0.0 || sy <= 0.0 {
        return None;
    }
    let d = (1.0 - (uv / n) / ((uu / n) * (vv / n)).sqrt()).abs();
    d.is_finite().then(|| d.clamp(0.0, 2.0))
}

/// Lanes of [`d_sym_lanes`]: eight f64 accumulators per sum, two AVX2 registers.
const LANES: usize = 8;

/// Reference `cosine`, the paper's d_sym, before the clamp.
pub(super) fn cosine(h0: &[f64], h1: &[f64]) -> f64 {
    let (p0, p1) = scaled_hessians(h0, h1);
    scipy_correlation(&p0, &p1, false)
}

/// Reference `normalized_cosine` before the clamp: the cosine of `(1/h) / (1/s)`, computed as
/// the reference does (variance divided by the inverse scale).
pub(super) fn normalized_cosine(h0: &[f64], h1: &[f64], s0: &[f64], s1: &[f64]) -> f64 {
    let normalise = |h: &[f64], s: &[f64]| -> Vec<f64> {
        h.iter()
            .zip(s)
            .map(|(&h, &s)| (1.0 / h) / (1.0 / s))
            .collect()
    };
    scipy_correlation(&normalise(h0, s0), &normalise(h1, s1), false)
}

/// Reference `correlation`: scipy's centred Pearson distance of the variances (no clamp).
pub(super) fn correlation(h0: &[f64], h1: &[f64]) -> f64 {
    scipy_correlation(&variances(h0), &variances(h1), true)
}

/// Reference `kl`: the sum over coordinates of the larger of the two directed Gaussian KLs.
pub(super) fn kl(h0: &[f64], h1: &[f64]) -> f64 {
    h0.iter()
        .zip(h1)
        .map(|(&a, &b)| {
            let (v0, v1) = (1.0 / a, 1.0 / b);
            nan_max(gaussian_kl(v0, v1), gaussian_kl(v1, v0))
        })
        .sum()
}

/// Reference `asymmetric_kl`: the sum of KL(N(0, v0) ‖ N(0, v1)) over coordinates.
pub(super) fn asymmetric_kl(h0: &[f64], h1: &[f64]) -> f64 {
    h0.iter()
        .zip(h1)
        .map(|(&a, &b)| gaussian_kl(1.0 / a, 1.0 / b))
        .sum()
}

/// Reference `jsd`: the *mean* over coordinates of the average KL to the mean variance.
pub(super) fn jsd(h0: &[f64], h1: &[f64]) -> f64 {
    let terms = h0.iter().zip(h1).map(|(&a, &b)| {
        let (v0, v1) = (1.0 / a, 1.0 / b);
        let v = 0.5 * (v0 + v1);
        0.5 * (gaussian_kl(v0, v) + gaussian_kl(v1, v))
    });
    mean(terms, h0.len())
}

/// Reference `entropy`: `ln 2 − mean(H(p0))` with `p0 = h0 / (h0 + h1 + 1e-8)` and the binary
/// entropy `H(p) = −(p ln p + (1−p) ln(1−p))`, `0 ln 0 = 0`.
pub(super) fn entropy(h0: &[f64], h1: &[f64]) -> f64 {
    let (p0, _) = scaled_hessians(h0, h1);
    let binary_entropy = p0.iter().map(|&p| -(xlogy(p, p) + xlogy(1.0 - p, 1.0 - p)));
    std::f64::consts::LN_2 - mean(binary_entropy, p0.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn python_clamp_turns_nan_into_zero_and_caps_at_two() {
        assert_eq!(python_cosine_clamp(f64::NAN), 0.0);
        assert_eq!(python_cosine_clamp(2.5), 2.0);
        assert_eq!(python_cosine_clamp(f64::INFINITY), 2.0);
        assert_eq!(python_cosine_clamp(0.25), 0.25);
    }

    #[test]
    fn nan_max_propagates_nan_like_numpy_maximum() {
        assert!(nan_max(f64::NAN, 1.0).is_nan());
        assert!(nan_max(1.0, f64::NAN).is_nan());
        assert_eq!(nan_max(1.0, 3.0), 3.0);
    }

    #[test]
    fn xlogy_is_zero_at_zero_but_keeps_nan() {
        assert_eq!(xlogy(0.0, 0.0), 0.0);
        assert!(xlogy(0.0, f64::NAN).is_nan());
        assert!(close(xlogy(0.5, 0.5), 0.5 * 0.5f64.ln()));
    }

    #[test]
    fn kl_matches_a_hand_computed_value() {
        // h = (1, 2) against (2, 2): v0 = (1, 0.5), v1 = (0.5, 0.5).
        // Coordinate 0: KL(v0‖v1) = ½(2 − 1 + ln 0.5) = ½(1 − ln 2); KL(v1‖v0) = ½(0.5 − 1 + ln 2).
        let h0 = [1.0, 2.0];
        let h1 = [2.0, 2.0];
        let forward = 0.5 * (1.0 - std::f64::consts::LN_2);
        let backward = 0.5 * (-0.5 + std::f64::consts::LN_2);
        assert!(close(asymmetric_kl(&h0, &h1), forward));
        assert!(close(asymmetric_kl(&h1, &h0), backward));
        assert!(close(kl(&h0, &h1), forward.max(backward)));
    }

    #[test]
    fn zero_hessian_gives_nan_in_the_variance_family() {
        let h0 = [0.0, 1.0];
        let h1 = [1.0, 1.0];
        assert!(kl(&h0, &h1).is_nan());
        assert!(jsd(&h0, &h1).is_nan());
        assert!(correlation(&h0, &h1).is_nan());
        assert!(normalized_cosine(&h0, &h1, &[1.0; 2], &[1.0; 2]).is_nan());
        assert!(cosine(&h0, &h1).is_finite());
        assert!(entropy(&h0, &h1).is_finite());
    }

    #[test]
    fn cosine_of_a_vector_with_itself_is_exactly_zero() {
        let h = [0.3, 1e-5, 7.0, 0.0];
        assert_eq!(cosine(&h, &h), 0.0);
    }

    #[test]
    fn entropy_of_disjoint_supports_is_ln2() {
        // p0 is exactly 0 or (almost) 1 everywhere: no entropy left.
        let h0 = [1.0, 0.0];
        let h1 = [0.0, 1.0];
        assert!((entropy(&h0, &h1) - std::f64::consts::LN_2).abs() < 1e-6);
    }
}
