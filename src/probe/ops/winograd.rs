//! 3×3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering, F(2×2, 3×3).
//!
//! Every 2×2 block ("tile") of the output is computed from the 4×4 input patch around it as
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` (Lavin and Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2016): 16 multiplications per tile, input channel and output channel instead of
//! the 36 of the direct product. Summed over input channels, the element-wise products become 16
//! matrix products, one per position ξ of the 4×4 transformed tile:
//! `M_ξ[O, P] = U_ξ[O, C] · V_ξ[C, P]` over the `P` tiles of a group of images.
//!
//! The map from kernel to output is the same linear map as the direct convolution, so its
//! adjoints are the convolution's gradients: the input gradient is the same algorithm applied to
//! the output gradient with the kernel turned by 180° and its channels swapped, and the kernel
//! gradient is `Gᵀ [Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)] G`, again 16 matrix products. Nothing is kept
//! for the backward pass beyond the input and the kernel. In ResNets, 3×3 stride-1 convolutions
//! carry most of the arithmetic (83 % of ResNet-18's multiply-adds at 224 px).

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use super::dims4;
use super::matmul::{gemm_into, sum_in_fixed_runs, MatRef};

/// Values of one transformed tile (4×4).
const XI: usize = 16;

/// The 2×2 output tiles of an `h`×`w` plane (the last row or column of tiles is half outside
/// the plane when a side is odd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tiling {
    h: usize,
    w: usize,
    /// Tiles down and across.
    th: usize,
    tw: usize,
}

impl Tiling {
    fn of(h: usize, w: usize) -> Self {
        Tiling {
            h,
            w,
            th: h.div_ceil(2),
            tw: w.div_ceil(2),
        }
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    fn tiles(&self) -> usize {
        self.th * self.tw
    }
}

/// Whether [`conv3x3_winograd`] applies, and pays: a square 3×3 kernel, stride 1, padding 1,
/// `c` input channels, an `h`×`w` plane. On small planes the transforms' per-row and per-call costs (the
/// kernel's transform is 16/9 the kernel, made again on every call) outweigh the saved
/// arithmetic: with ResNet-18 on 32-pixel inputs (planes of 8×8, 4×4, 2×2) im2col was faster at
/// every stage, and the whole embedding took a third longer with Winograd everywhere, while at
/// 224 px (56×56 down to 7×7 with 512 channels) every stage gained
/// (`examples/bench_conv3x3.rs`, BENCHMARKS.md). Hence: at least 7×7 tiles (a 13×13 plane), or
/// 4×4 tiles with at least 256 channels.
pub(super) fn applies(
    k: usize,
    stride: usize,
    padding: usize,
    c: usize,
    h: usize,
    w: usize,
) -> bool {
    let tiles = h.div_ceil(2) * w.div_ceil(2);
    k == 3
        && stride == 1
        && padding == 1
        && h >= 2
        && w >= 2
        && (tiles >= 49 || (tiles >= 16 && c >= 256))
}

#[inline(always)]
fn half<T: WithDType>() -> T {
    T::from_f64(0.5)
}

/// `Bᵀ·a` for a column of four input values.
#[inline(always)]
fn bt<T: WithDType>(a: [T; 4]) -> [T; 4] {
    [a[0] - a[2], a[1] + a[2], a[2] - a[1], a[1] - a[3]]
}

/// `G·a` for a column of three kernel values.
#[inline(always)]
fn g<T: WithDType>(a: [T; 3]) -> [T; 4] {
    let h = half::<T>();
    [
        a[0],
        h * (a[0] + a[1] + a[2]),
        h * (a[0] - a[1] + a[2]),
        a[2],
    ]
}

/// `Gᵀ·a`, the adjoint of [`g`].
#[inline(always)]
fn gt<T: WithDType>(a: [T; 4]) -> [T; 3] {
    let h = half::<T>();
    [
        a[0] + h * (a[1] + a[2]),
        h * (a[1] - a[2]),
        h * (a[1] + a[2]) + a[3],
    ]
}

/// `Aᵀ·a` for a column of four transformed values.
#[inline(always)]
fn at<T: WithDType>(a: [T; 4]) -> [T; 2] {
    [a[0] + a[1] + a[2], a[1] - a[2] - a[3]]
}

/// `A·a`, the adjoint of [`at`].
#[inline(always)]
fn a<T: WithDType>(v: [T; 2]) -> [T; 4] {
    [v[0], v[0] + v[1], v[0] - v[1], T::from_f64(0.0) - v[1]]
}

/// `L·X·Lᵀ` for a 1-d transform `L` (`R` rows of `L`, `S` columns) and an `S`×`S` matrix `X`:
/// `L` on every column, then on every row. Returns the `R`×`R` result.
#[inline(always)]
fn both_sides<T: WithDType, const S: usize, const R: usize>(
    x: [[T; S]; S],
    l: impl Fn([T; S]) -> [T; R],
) -> [[T; R]; R] {
    let zero = T::from_f64(0.0);
    // Columns: cols[b] = L·x[.][b].
    let mut cols = [[zero; R]; S];
    for (b, col) in cols.iter_mut().enumerate() {
        *col = l(std::array::from_fn(|r| x[r][b]));
    }
    // Rows of the intermediate `L·X` are cols[.][a]; then `(L·X)·Lᵀ` row by row.
    std::array::from_fn(|a| l(std::array::from_fn(|b| cols[b][a])))
}

/// `U[ξ][o][c] = (G g Gᵀ)[ξ]` for the kernel `[O, C, 3, 3]`; with `flip`, the kernel of the
/// input gradient instead: `U[ξ][c][o]` of the kernel turned by 180°.
fn transform_kernel<T: WithDType>(kernel: &[T], (o, c): (usize, usize), flip: bool) -> Vec<T> {
    let (rows, cols) = if flip { (c, o) } else { (o, c) };
    // Tile by tile first (`[rows][cols][ξ]`), in parallel over rows; then each ξ's matrix.
    let mut tiles = vec![T::from_f64(0.0); rows * cols * XI];
    tiles
        .par_chunks_mut(cols * XI)
        .enumerate()
        .for_each(|(r, row)| {
            for (col, dst) in row.chunks_exact_mut(XI).enumerate() {
                let (oi, ci) = if flip { (col, r) } else { (r, col) };
                let taps = &kernel[(oi * c + ci) * 9..(oi * c + ci + 1) * 9];
                let tap = |i: usize, j: usize| {
                    if flip {
                        taps[(2 - i) * 3 + (2 - j)]
                    } else {
                        taps[i * 3 + j]
                    }
                };
                let t = both_sides(
                    std::array::from_fn(|i| std::array::from_fn(|j| tap(i, j))),
                    g,
                );
                for (d, v) in dst.iter_mut().zip(t.iter().flatten()) {
                    *d = *v;
                }
            }
        });
    let mut u = vec![T::from_f64(0.0); XI * rows * cols];
    u.par_chunks_mut(rows * cols)
        .enumerate()
        .for_each(|(xi, ux)| {
            for (d, t) in ux.iter_mut().zip(tiles.chunks_exact(XI)) {
                *d = t[xi];
            }
        });
    u
}

/// The adjoint of [`transform_kernel`] (without flip): `dK[o][c] = Gᵀ dU[.][o][c] G`.
fn untransform_kernel_grad<T: WithDType>(du: &[T], (o, c): (usize, usize)) -> Vec<T> {
    let mut gk = vec![T::from_f64(0.0); o * c * 9];
    gk.par_chunks_mut(c * 9).enumerate().for_each(|(oi, row)| {
        for (ci, dst) in row.chunks_exact_mut(9).enumerate() {
            let oc = oi * c + ci;
            let t: [[T; 4]; 4] =
                std::array::from_fn(|a| std::array::from_fn(|b| du[(a * 4 + b) * o * c + oc]));
            for (d, v) in dst.iter_mut().zip(both_sides(t, gt).iter().flatten()) {
                *d = *v;
            }
        }
    });
    gk
}

/// Tiles transformed and multiplied at a time. A block's transformed inputs and products
/// (`16 × (C + O) × BLOCK_TILES` values) stay in the caches, and its buffers are reused from
/// block to block.
const BLOCK_TILES: usize = 128;

/// A block of tiles: tile rows `r0..r1` of images `i0..i1` of a task, numbered image by image,
/// row by row.
#[derive(Debug, Clone, Copy)]
struct Block {
    i0: usize,
    i1: usize,
    r0: usize,
    r1: usize,
}

impl Block {
    fn tiles(&self, tl: Tiling) -> usize {
        (self.i1 - self.i0) * (self.r1 - self.r0) * tl.tw
    }

    /// Index within the block of the first tile of row `ty` of image `i`.
    fn first(&self, tl: Tiling, i: usize, ty: usize) -> usize {
        ((i - self.i0) * (self.r1 - self.r0) + ty - self.r0) * tl.tw
    }
}

/// Images per task: one when an image has a block's worth of tiles, otherwise as many as make
/// up a block. Fixed by the shapes alone, never by the thread count, so the bits are too.
fn images_per_task(n: usize, tl: Tiling) -> usize {
    (BLOCK_TILES / tl.tiles().max(1)).clamp(1, n.max(1))
}

/// The blocks of a task of `gi` images: the whole task at once when its images are small,
/// otherwise each image in runs of tile rows.
fn blocks(gi: usize, tl: Tiling) -> Vec<Block> {
    if tl.tiles() < BLOCK_TILES {
        return vec![Block {
            i0: 0,
            i1: gi,
            r0: 0,
            r1: tl.th,
        }];
    }
    let rows = (BLOCK_TILES / tl.tw.max(1)).max(1);
    (0..gi)
        .flat_map(|i| {
            (0..tl.th).step_by(rows).map(move |r0| Block {
                i0: i,
                i1: i + 1,
                r0,
                r1: (r0 + rows).min(tl.th),
            })
        })
        .collect()
}

/// Input row `y` of plane `xp` (`y` counted from the zero row above the plane) split by the
/// parity of its padded column: `odd[j]` = padded column `2j + 1` = input column `2j`,
/// `even[j]` = padded column `2j` = input column `2j − 1`; zero outside the plane.
fn split_row<T: WithDType>(xp: &[T], tl: Tiling, padded_row: usize, even: &mut [T], odd: &mut [T]) {
    let zero = T::from_f64(0.0);
    even.fill(zero);
    odd.fill(zero);
    let Some(y) = padded_row.checked_sub(1).filter(|&y| y < tl.h) else {
        return;
    };
    let row = &xp[y * tl.w..(y + 1) * tl.w];
    for (d, &v) in odd.iter_mut().zip(row.iter().step_by(2)) {
        *d = v;
    }
    for (d, &v) in even[1..].iter_mut().zip(row.iter().skip(1).step_by(2)) {
        *d = v;
    }
}

/// `Bᵀ·(r0, r1, r2, r3)` over whole rows, in place.
fn bt_rows<T: WithDType>(rows: &mut [Vec<T>; 4]) {
    let [r0, r1, r2, r3] = rows;
    let len = r0.len();
    let (r0, r1, r2, r3) = (
        &mut r0[..len],
        &mut r1[..len],
        &mut r2[..len],
        &mut r3[..len],
    );
    for j in 0..len {
        [r0[j], r1[j], r2[j], r3[j]] = bt([r0[j], r1[j], r2[j], r3[j]]);
    }
}

/// `Bᵀ d B` of the 4×4 patch of every tile of block `blk` of the task's images `x` (`c` planes
/// each), into `v` = `V[c][ξ][p]` for the block's `pb` tiles.
fn transform_input<T: WithDType>(x: &[T], c: usize, tl: Tiling, blk: Block, v: &mut [T]) {
    let (plane, tw, half) = (tl.plane(), tl.tw, tl.tw + 1);
    let pb = blk.tiles(tl);
    v.par_chunks_mut(XI * pb).enumerate().for_each(|(ch, vc)| {
        let zero = T::from_f64(0.0);
        let mut even: [Vec<T>; 4] = std::array::from_fn(|_| vec![zero; half]);
        let mut odd: [Vec<T>; 4] = std::array::from_fn(|_| vec![zero; half]);
        for i in blk.i0..blk.i1 {
            let xp = &x[(i * c + ch) * plane..(i * c + ch + 1) * plane];
            for ty in blk.r0..blk.r1 {
                for r in 0..4 {
                    split_row(xp, tl, 2 * ty + r, &mut even[r], &mut odd[r]);
                }
                bt_rows(&mut even);
                bt_rows(&mut odd);
                let t0 = blk.first(tl, i, ty);
                for a in 0..4 {
                    let (e0, e1) = (&even[a][..tw], &even[a][1..=tw]);
                    let (o0, o1) = (&odd[a][..tw], &odd[a][1..=tw]);
                    let mut out =
                        rows_of::<T, 4>(&mut vc[4 * a * pb..(4 * a + 4) * pb], pb, t0, tw);
                    for j in 0..tw {
                        let t = bt([e0[j], o0[j], e1[j], o1[j]]);
                        for (b, dst) in out.iter_mut().enumerate() {
                            dst[j] = t[b];
                        }
                    }
                }
            }
        }
    });
}

/// `R` consecutive rows of `pb` values of `buf`, each cut to `t0..t0 + tw`.
fn rows_of<T, const R: usize>(buf: &mut [T], pb: usize, t0: usize, tw: usize) -> [&mut [T]; R] {
    let mut rest = buf;
    std::array::from_fn(|_| {
        let (row, tail) = std::mem::take(&mut rest).split_at_mut(pb);
        rest = tail;
        &mut row[t0..t0 + tw]
    })
}

/// `A dY Aᵀ` of every tile of block `blk` of the task's output gradients `gy` (`o` planes per
/// image), output positions outside the plane counted as zero: `dm` = `dM[o][ξ][p]`.
fn transform_output_grad<T: WithDType>(gy: &[T], o: usize, tl: Tiling, blk: Block, dm: &mut [T]) {
    let (plane, tw) = (tl.plane(), tl.tw);
    let pb = blk.tiles(tl);
    dm.par_chunks_mut(XI * pb)
        .enumerate()
        .for_each(|(oc, dmo)| {
            let zero = T::from_f64(0.0);
            // The tile row's two output rows split by column parity, zero beyond the plane.
            let mut e: [Vec<T>; 2] = std::array::from_fn(|_| vec![zero; tw]);
            let mut od: [Vec<T>; 2] = std::array::from_fn(|_| vec![zero; tw]);
            for i in blk.i0..blk.i1 {
                let gp = &gy[(i * o + oc) * plane..(i * o + oc + 1) * plane];
                for ty in blk.r0..blk.r1 {
                    for r in 0..2 {
                        let y = 2 * ty + r;
                        e[r].fill(zero);
                        od[r].fill(zero);
                        if y < tl.h {
                            let row = &gp[y * tl.w..(y + 1) * tl.w];
                            for (d, &v) in e[r].iter_mut().zip(row.iter().step_by(2)) {
                                *d = v;
                            }
                            for (d, &v) in od[r].iter_mut().zip(row.iter().skip(1).step_by(2)) {
                                *d = v;
                            }
                        }
                    }
                    let t0 = blk.first(tl, i, ty);
                    let out = rows_of::<T, XI>(dmo, pb, t0, tw);
                    let (e0, e1, o0, o1) = (&e[0][..tw], &e[1][..tw], &od[0][..tw], &od[1][..tw]);
                    for j in 0..tw {
                        // A·dY on the columns, then on the rows.
                        let ce = a([e0[j], e1[j]]);
                        let co = a([o0[j], o1[j]]);
                        for r in 0..4 {
                            let t = a([ce[r], co[r]]);
                            for (b, &val) in t.iter().enumerate() {
                                out[4 * r + b][j] = val;
                            }
                        }
                    }
                }
            }
        });
}

/// `Y = Aᵀ M A` of every tile of block `blk`, from `m` = `M[ξ][o][p]`, into the task's output
/// `y` (`o` planes per image).
fn untransform_output<T: WithDType>(m: &[T], o: usize, tl: Tiling, blk: Block, y: &mut [T]) {
    let (plane, tw) = (tl.plane(), tl.tw);
    let pb = blk.tiles(tl);
    let planes = &mut y[blk.i0 * o * plane..blk.i1 * o * plane];
    planes
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(pl, yp)| {
            let (i, oc) = (blk.i0 + pl / o, pl % o);
            let zero = T::from_f64(0.0);
            // The tile row's two output rows, even and odd columns.
            let mut yo: [[Vec<T>; 2]; 2] =
                std::array::from_fn(|_| std::array::from_fn(|_| vec![zero; tw]));
            for ty in blk.r0..blk.r1 {
                let t0 = blk.first(tl, i, ty);
                let mrow: [&[T]; XI] = std::array::from_fn(|xi| {
                    &m[(xi * o + oc) * pb + t0..(xi * o + oc) * pb + t0 + tw]
                });
                {
                    let [[y0e, y0o], [y1e, y1o]] = &mut yo;
                    let (y0e, y0o, y1e, y1o) = (
                        &mut y0e[..tw],
                        &mut y0o[..tw],
                        &mut y1e[..tw],
                        &mut y1o[..tw],
                    );
                    for j in 0..tw {
                        // Aᵀ·M on the columns (rows of the result: s[r][b]), then on the rows.
                        let s: [[T; 2]; 4] = std::array::from_fn(|b| {
                            at([mrow[b][j], mrow[4 + b][j], mrow[8 + b][j], mrow[12 + b][j]])
                        });
                        [y0e[j], y0o[j]] = at([s[0][0], s[1][0], s[2][0], s[3][0]]);
                        [y1e[j], y1o[j]] = at([s[0][1], s[1][1], s[2][1], s[3][1]]);
                    }
                }
                for (r, [ye, yd]) in yo.iter().enumerate() {
                    let yy = 2 * ty + r;
                    if yy >= tl.h {
                        continue;
                    }
                    let row = &mut yp[yy * tl.w..(yy + 1) * tl.w];
                    for (d, &v) in row.iter_mut().step_by(2).zip(ye) {
                        *d = v;
                    }
                    for (d, &v) in row.iter_mut().skip(1).step_by(2).zip(yd) {
                        *d = v;
                    }
                }
            }
        });
}

/// Grows `buf` to at least `len` values and returns its first `len`.
fn scratch<T: WithDType>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::from_f64(0.0));
    }
    &mut buf[..len]
}

/// `M_ξ[o, pb] = U_ξ[o, c] · V_ξ[c, pb]` for the 16 positions ξ, side by side: `m` is
/// `M[ξ][o][pb]`, `u` is `U[ξ][o][c]`, `v` is `V[c][ξ][pb]`.
fn products<T: WithDType>(
    u: &[T],
    v: &[T],
    (o, c, pb): (usize, usize, usize),
    m: &mut [T],
) -> candle_core::Result<()> {
    m.par_chunks_mut(o * pb)
        .enumerate()
        .try_for_each(|(xi, mx)| {
            let lhs = MatRef {
                data: &u[xi * o * c..(xi + 1) * o * c],
                rs: c,
                cs: 1,
            };
            let rhs = MatRef {
                data: &v[xi * pb..],
                rs: XI * pb,
                cs: 1,
            };
            gemm_into(mx, (o, pb, c), lhs, rhs, false, Parallelism::None)
        })
}

/// `dU_ξ[o, c] (+)= dM_ξ[o, pb] · V_ξ[c, pb]ᵀ` for the 16 positions ξ, side by side: `du` is
/// `dU[ξ][o][c]`, `dm` is `dM[o][ξ][pb]`, `v` is `V[c][ξ][pb]`.
fn kernel_products<T: WithDType>(
    dm: &[T],
    v: &[T],
    (o, c, pb): (usize, usize, usize),
    du: &mut [T],
    accumulate: bool,
) -> candle_core::Result<()> {
    du.par_chunks_mut(o * c)
        .enumerate()
        .try_for_each(|(xi, dux)| {
            let lhs = MatRef {
                data: &dm[xi * pb..],
                rs: XI * pb,
                cs: 1,
            };
            let rhs = MatRef {
                data: &v[xi * pb..],
                rs: 1,
                cs: XI * pb,
            };
            gemm_into(dux, (o, c, pb), lhs, rhs, accumulate, Parallelism::None)
        })
}

/// The convolution of `n` images of `c` planes with the transformed kernel `u` (`U[ξ][o][c]`):
/// `[n, o, h, w]`. Tasks of whole images run in parallel; within a block, the 16 products do.
fn convolve<T: WithDType>(
    x: &[T],
    u: &[T],
    (n, c): (usize, usize),
    o: usize,
    tl: Tiling,
) -> candle_core::Result<Vec<T>> {
    let plane = tl.plane();
    let mut y = vec![T::from_f64(0.0); n * o * plane];
    if y.is_empty() {
        return Ok(y);
    }
    let ipt = images_per_task(n, tl);
    y.par_chunks_mut(ipt * o * plane)
        .enumerate()
        .try_for_each_init(
            || (Vec::new(), Vec::new()),
            |(vbuf, mbuf), (task, yt)| {
                let gi = yt.len() / (o * plane);
                let xt = &x[task * ipt * c * plane..(task * ipt + gi) * c * plane];
                for blk in blocks(gi, tl) {
                    let pb = blk.tiles(tl);
                    let v = scratch(vbuf, c * XI * pb);
                    transform_input(xt, c, tl, blk, v);
                    let m = scratch(mbuf, XI * o * pb);
                    products(u, v, (o, c, pb), m)?;
                    untransform_output(m, o, tl, blk, yt);
                }
                candle_core::Result::Ok(())
            },
        )?;
    Ok(y)
}

/// `dK = Gᵀ [Σ_tiles dM ⊙ V] G`: the 16 products `dU_ξ[O, C] = Σ_p dM_ξ[O, p] V_ξ[C, p]`
/// accumulated block after block, task after task, in fixed runs ([`sum_in_fixed_runs`]), so
/// the bits do not depend on the thread count. Returns `[O, C·9]`.
fn kernel_grad<T: WithDType>(
    x: &[T],
    gy: &[T],
    (n, c): (usize, usize),
    o: usize,
    tl: Tiling,
) -> candle_core::Result<Vec<T>> {
    let plane = tl.plane();
    let ipt = images_per_task(n, tl);
    let du = sum_in_fixed_runs(n, ipt, XI * o * c, |b0, du, accumulate, _| {
        let gi = ipt.min(n - b0);
        let xt = &x[b0 * c * plane..(b0 + gi) * c * plane];
        let gt = &gy[b0 * o * plane..(b0 + gi) * o * plane];
        let (mut vbuf, mut dmbuf) = (Vec::new(), Vec::new());
        for (index, blk) in blocks(gi, tl).into_iter().enumerate() {
            let pb = blk.tiles(tl);
            let v = scratch(&mut vbuf, c * XI * pb);
            transform_input(xt, c, tl, blk, v);
            let dm = scratch(&mut dmbuf, o * XI * pb);
            transform_output_grad(gt, o, tl, blk, dm);
            kernel_products(dm, v, (o, c, pb), du, accumulate || index > 0)?;
        }
        Ok(())
    })?;
    Ok(untransform_kernel_grad(&du, (o, c)))
}

/// The operation behind [`conv3x3_winograd`].
#[derive(Debug, Clone, Copy)]
struct Winograd;

impl CustomOp2 for Winograd {
    fn name(&self) -> &'static str {
        "conv3x3-winograd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l1, "conv3x3 input")?;
        let (o, kc, k, k2) = dims4(l2, "conv3x3 kernel")?;
        if kc != c || (k, k2) != (3, 3) || h < 2 || w < 2 {
            bail!(
                "conv3x3: kernel {:?} and input {:?} are not a 3×3 convolution of a plane of at least 2×2",
                l2.dims(),
                l1.dims()
            );
        }
        let tl = Tiling::of(h, w);
        let out = dispatch2!(s1, l1, s2, l2, "conv3x3", |x, kernel| {
            let u = transform_kernel(kernel, (o, c), false);
            convolve(x, &u, (n, c), o, tl)?
        });
        Ok((out, Shape::from((n, o, h, w))))
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
        let gx = if x.track_op() {
            let op = WinogradGrad {
                x_dims,
                of_input: true,
            };
            Some(grad.apply_op2_no_bwd(&kernel.detach(), &op)?)
        } else {
            None
        };
        let gk = if kernel.track_op() {
            let op = WinogradGrad {
                x_dims,
                of_input: false,
            };
            Some(
                grad.apply_op2_no_bwd(&x.detach(), &op)?
                    .reshape(kernel.dims4()?)?,
            )
        } else {
            None
        };
        Ok((gx, gk))
    }
}

/// Backward of [`Winograd`]: `(dY, K)` -> `dX` when `of_input`, else `(dY, X)` -> `dK` (as
/// `[O, C·9]`).
struct WinogradGrad {
    x_dims: (usize, usize, usize, usize),
    of_input: bool,
}

impl CustomOp2 for WinogradGrad {
    fn name(&self) -> &'static str {
        "conv3x3-winograd-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = self.x_dims;
        let (gn, o, gh, gw) = dims4(l1, "conv3x3 gradient")?;
        if (gn, gh, gw) != (n, h, w) {
            bail!(
                "conv3x3 backward: gradient {:?} does not fit input {:?}",
                l1.dims(),
                self.x_dims
            );
        }
        let tl = Tiling::of(h, w);
        if self.of_input {
            let out = dispatch2!(s1, l1, s2, l2, "conv3x3", |gy, kernel| {
                let u = transform_kernel(kernel, (o, c), true);
                convolve(gy, &u, (n, o), c, tl)?
            });
            Ok((out, Shape::from((n, c, h, w))))
        } else {
            let out = dispatch2!(s1, l1, s2, l2, "conv3x3", |gy, x| kernel_grad(
                x,
                gy,
                (n, c),
                o,
                tl
            )?);
            Ok((out, Shape::from((o, c * 9))))
        }
    }
}

/// `F.conv2d(x, kernel, stride=1, padding=1)` for a `[O, C, 3, 3]` kernel by Winograd's
/// F(2×2, 3×3), forward and backward, for any plane of at least 2×2, f32 or f64 on the CPU
/// (other dtypes and devices are errors). [`crate::probe::ops::conv2d`] uses it where it pays
/// ([`applies`]); this entry point is for benchmarks and cross-checks.
pub fn conv3x3_winograd(x: &Tensor, kernel: &Tensor) -> crate::Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(&kernel.contiguous()?, Winograd)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    use candle_core::{DType, Device, Var};

    use crate::probe::ops::conv2d_im2col;

    fn values(len: usize, salt: usize) -> Vec<f64> {
        (0..len)
            .map(|i| (((i * 7919 + salt * 104_729) % 1009) as f64 / 1009.0) - 0.5)
            .collect()
    }

    /// Output, input gradient and kernel gradient of `sum(conv(x, k) * r)`.
    fn run(
        conv: fn(&Tensor, &Tensor) -> crate::Result<Tensor>,
        (n, c, o, h, w): (usize, usize, usize, usize, usize),
        dtype: DType,
    ) -> [Vec<f64>; 3] {
        let dev = Device::Cpu;
        let x = Var::from_vec(values(n * c * h * w, 1), (n, c, h, w), &dev).unwrap();
        let k = Var::from_vec(values(o * c * 9, 2), (o, c, 3, 3), &dev).unwrap();
        let (x, k) = (
            Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap(),
            Var::from_tensor(&k.to_dtype(dtype).unwrap()).unwrap(),
        );
        let y = conv(x.as_tensor(), k.as_tensor()).unwrap();
        let r = Tensor::from_vec(values(n * o * h * w, 3), y.shape(), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| -> Vec<f64> {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        [
            flat(&y),
            flat(grads.get(x.as_tensor()).unwrap()),
            flat(grads.get(k.as_tensor()).unwrap()),
        ]
    }

    /// Largest difference relative to the largest magnitude of `want`.
    fn rel_err(got: &[f64], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
        got.iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
            / scale
    }

    fn im2col(x: &Tensor, k: &Tensor) -> crate::Result<Tensor> {
        conv2d_im2col(x, k, 1, 1)
    }

    /// Every block layout: lone 2×2 planes, odd sides (half-outside tiles), several small
    /// images in one block, and planes of more than `BLOCK_TILES` tiles cut into runs of rows
    /// (24×24: 144 tiles, runs of 10 + 2 rows; 25×23: 13×12 tiles).
    const SHAPES: [(usize, usize, usize, usize, usize); 7] = [
        (1, 3, 4, 2, 2),
        (2, 3, 4, 3, 5),
        (5, 2, 3, 5, 5),
        (3, 4, 5, 7, 7),
        (1, 2, 3, 24, 24),
        (2, 2, 3, 25, 23),
        (40, 2, 3, 6, 4),
    ];

    #[test]
    fn output_and_gradients_equal_im2cols_in_f64() {
        // Both compute the same sums in different orders: float64 rounding only. Allowed 1e-12
        // relative to the largest value; observed 6.6e-16.
        for shape in SHAPES {
            let want = run(im2col, shape, DType::F64);
            let got = run(conv3x3_winograd, shape, DType::F64);
            for (what, g, w) in [
                ("output", 0, 0),
                ("input grad", 1, 1),
                ("kernel grad", 2, 2),
            ] {
                let err = rel_err(&got[g], &want[w]);
                assert!(err < 1e-12, "{what} {shape:?}: relative error {err:e}");
            }
        }
    }

    #[test]
    fn float32_stays_close_to_float64() {
        // Winograd's transforms add a few roundings per value; float32 against the float64
        // result: allowed 1e-5 relative to the largest value, observed 2.3e-7.
        for shape in SHAPES {
            let want = run(im2col, shape, DType::F64);
            let got = run(conv3x3_winograd, shape, DType::F32);
            for (i, what) in ["output", "input grad", "kernel grad"].iter().enumerate() {
                let err = rel_err(&got[i], &want[i]);
                assert!(err < 1e-5, "{what} {shape:?}: relative error {err:e}");
            }
        }
    }

    #[test]
    fn the_thread_count_does_not_change_the_bits() {
        // 40 images of 6×4 make three tasks (14 images each), the kernel gradient two runs;
        // 24×24 makes row blocks.
        for shape in [(40, 3, 5, 6, 4), (3, 2, 4, 24, 24)] {
            let with = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let out = pool.install(|| run(conv3x3_winograd, shape, DType::F32));
                out.map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            };
            assert!(
                with(1) == with(3),
                "{shape:?}: the thread count changed the bits"
            );
        }
    }

    #[test]
    fn conv2d_uses_winograd_only_where_it_pays() {
        // ResNet-18 at 224 px: planes 56, 28, 14 and 7 (512 channels); at 32 px: 8, 4, 2, 1.
        assert!(applies(3, 1, 1, 64, 56, 56));
        assert!(applies(3, 1, 1, 256, 14, 14));
        assert!(applies(3, 1, 1, 512, 7, 7));
        assert!(!applies(3, 1, 1, 64, 8, 8));
        assert!(!applies(3, 1, 1, 256, 2, 2));
        assert!(!applies(3, 1, 1, 512, 1, 1));
        // Not a 3×3, stride-1, padding-1 convolution.
        assert!(!applies(3, 2, 1, 64, 56, 56));
        assert!(!applies(3, 1, 0, 64, 56, 56));
        assert!(!applies(1, 1, 1, 64, 56, 56));
    }

    #[test]
    fn other_dtypes_and_tiny_planes_are_errors() {
        let dev = Device::Cpu;
        let k = Tensor::zeros((2, 1, 3, 3), DType::F32, &dev).unwrap();
        let x = Tensor::zeros((1, 1, 1, 5), DType::F32, &dev).unwrap();
        let err = conv3x3_winograd(&x, &k).unwrap_err().to_string();
        assert!(err.contains("at least 2×2"), "{err}");
        let x = Tensor::zeros((1, 1, 4, 4), DType::F16, &dev).unwrap();
        let k16 = k.to_dtype(DType::F16).unwrap();
        let err = conv3x3_winograd(&x, &k16).unwrap_err().to_string();
        assert!(err.contains("f32 and f64 only"), "{err}");
    }

    /// The 1-d transforms compute a 2-output, 3-tap correlation: `Aᵀ[(G g) ⊙ (Bᵀ d)]`.
    #[test]
    fn one_dimensional_transforms_compute_a_correlation() {
        let d = [0.3f64, -1.2, 2.5, 0.7];
        let k = [1.5f64, -0.25, 0.8];
        let (vd, vg) = (bt(d), g(k));
        let m: [f64; 4] = std::array::from_fn(|i| vd[i] * vg[i]);
        let y = at(m);
        for (r, &got) in y.iter().enumerate() {
            let want: f64 = (0..3).map(|s| d[r + s] * k[s]).sum();
            assert!((got - want).abs() < 1e-14, "output {r}: {got} vs {want}");
        }
    }

    /// `gt` and `a` are the adjoints of `g` and `at`: ⟨L x, y⟩ = ⟨x, Lᵀ y⟩.
    #[test]
    fn gradient_transforms_are_the_adjoints() {
        let x3 = [0.4f64, -1.1, 2.0];
        let y4 = [1.3f64, 0.2, -0.7, 0.9];
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
        assert!((dot(&g(x3), &y4) - dot(&x3, &gt(y4))).abs() < 1e-14);
        let x2 = [0.6f64, -1.9];
        assert!((dot(&a(x2), &y4) - dot(&x2, &at(y4))).abs() < 1e-14);
    }
}
