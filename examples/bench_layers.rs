//! Micro-benchmark behind the ResNet entries of `BENCHMARKS.md`: every convolution and every
//! training-mode batch norm (+ ReLU) of ResNet-18 at 224 px (batch 64), forward and backward,
//! computed two ways.
//!
//! Convolutions:
//!
//! - `candle`: what `src/probe/resnet/conv.rs` does (reproduced with the same candle calls,
//!   that module being private): candle's `conv2d` forward; the input gradient as a
//!   convolution of the output gradient (dilated by the stride and padded when the stride is 2)
//!   with the flipped, transposed kernel; the kernel gradient as a convolution of the
//!   transposed input by the transposed output gradient. The stem's input gradient is not
//!   computed (the images need none).
//! - `ops`: [`task2vec::probe::ops::conv2d_same`] (im2col + per-image matrix products, kernel
//!   gradient accumulated in place), forward and backward through autograd. For stride 1, and
//!   for 1×1 kernels, TensorFlow "SAME" padding is PyTorch's; for the stem and the 3×3
//!   stride-2 convolutions it is not (one row/column less on the top/left), so those rows are
//!   a cost estimate only.
//!
//! Batch norms (train mode, batch statistics) followed by ReLU, input and parameters tracked:
//!
//! - `candle`: [`task2vec::probe::layers::BatchNorm`] (candle's element-wise operations and
//!   reductions, what the ResNet probe uses) and candle's `relu`;
//! - `ops`: [`task2vec::probe::ops::batch_norm_train`] (one fused custom operation, what
//!   EfficientNet-Lite0 uses) and candle's `relu`.
//!
//! ```text
//! cargo run --release --example bench_layers -- [--threads 2] [--batch 64] [--reps 2]
//! ```
//!
//! Prints one JSON line per (layer, method) with the best time of `reps` runs of each phase;
//! `per_net` is how many such layers ResNet-18 has.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde_json::json;
use task2vec::probe::layers::BatchNorm;
use task2vec::probe::ops::{batch_norm_train, conv2d_same, Activation};
use task2vec::probe::{BnMode, Forward};
use task2vec::threads::configure_threads;

/// A convolution shape of ResNet-18 at 224 px.
struct ConvShape {
    name: &'static str,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    size: usize,
    per_net: usize,
}

const fn shape(
    name: &'static str,
    (c_in, c_out): (usize, usize),
    (k, stride, pad): (usize, usize, usize),
    size: usize,
    per_net: usize,
) -> ConvShape {
    ConvShape {
        name,
        c_in,
        c_out,
        k,
        stride,
        pad,
        size,
        per_net,
    }
}

const SHAPES: [ConvShape; 11] = [
    shape("conv1", (3, 64), (7, 2, 3), 224, 1),
    shape("layer1.3x3", (64, 64), (3, 1, 1), 56, 4),
    shape("layer2.0.conv1", (64, 128), (3, 2, 1), 56, 1),
    shape("layer2.0.downsample", (64, 128), (1, 2, 0), 56, 1),
    shape("layer2.3x3", (128, 128), (3, 1, 1), 28, 3),
    shape("layer3.0.conv1", (128, 256), (3, 2, 1), 28, 1),
    shape("layer3.0.downsample", (128, 256), (1, 2, 0), 28, 1),
    shape("layer3.3x3", (256, 256), (3, 1, 1), 14, 3),
    shape("layer4.0.conv1", (256, 512), (3, 2, 1), 14, 1),
    shape("layer4.0.downsample", (256, 512), (1, 2, 0), 14, 1),
    shape("layer4.3x3", (512, 512), (3, 1, 1), 7, 3),
];

/// (name, channels, spatial size, count in ResNet-18) of the batch norms.
const BATCH_NORMS: [(&str, usize, usize, usize); 5] = [
    ("bn1", 64, 112, 1),
    ("layer1.bn", 64, 56, 4),
    ("layer2.bn", 128, 28, 5),
    ("layer3.bn", 256, 14, 5),
    ("layer4.bn", 512, 7, 5),
];

fn best<T>(reps: usize, mut f: impl FnMut() -> candle_core::Result<T>) -> candle_core::Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        let out = f()?;
        best = best.min(t.elapsed().as_secs_f64());
        drop(out);
    }
    Ok(best)
}

/// Forward and backward of the loss `sum(v * g)` alone, with `v` a leaf shaped like `g`: what
/// the timed backward passes pay on top of the layer's own backward (PyTorch's
/// `autograd.grad(y, .., g)` starts from `g` directly).
fn loss_cost(g: &Tensor, reps: usize) -> candle_core::Result<f64> {
    let v = Var::from_tensor(&g.zeros_like()?)?;
    best(reps, || (v.as_tensor() * g)?.sum_all()?.backward())
}

/// `s - 1` zeros between consecutive entries along `dim` (as resnet/conv.rs).
fn dilate(t: &Tensor, dim: usize, s: usize) -> candle_core::Result<Tensor> {
    let len = t.dim(dim)?;
    let mut zshape = t.dims().to_vec();
    zshape.insert(dim + 1, s - 1);
    let zeros = Tensor::zeros(zshape, t.dtype(), t.device())?;
    let mut full = t.dims().to_vec();
    full[dim] = len * s;
    Tensor::cat(&[&t.unsqueeze(dim + 1)?, &zeros], dim + 1)?
        .reshape(full)?
        .narrow(dim, 0, (len - 1) * s + 1)
}

/// The input gradient as resnet/conv.rs computes it.
fn grad_input(
    g: &Tensor,
    k: &Tensor,
    (h, w): (usize, usize),
    sh: &ConvShape,
) -> candle_core::Result<Tensor> {
    let (ks, s, p) = (sh.k, sh.stride, sh.pad);
    let flipped = k.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
    if s == 1 {
        return g.conv2d(&flipped, ks - 1 - p, 1, 1, 1);
    }
    let d = dilate(&dilate(g, 2, s)?, 3, s)?;
    let (_, _, gh, gw) = d.dims4()?;
    d.pad_with_zeros(2, ks - 1 - p, h + p - gh)?
        .pad_with_zeros(3, ks - 1 - p, w + p - gw)?
        .conv2d(&flipped, 0, 1, 1, 1)
}

/// The kernel gradient as resnet/conv.rs computes it.
fn grad_kernel(x: &Tensor, g: &Tensor, sh: &ConvShape) -> candle_core::Result<Tensor> {
    x.transpose(0, 1)?
        .conv2d(&g.transpose(0, 1)?, sh.pad, 1, sh.stride, 1)?
        .narrow(2, 0, sh.k)?
        .narrow(3, 0, sh.k)?
        .transpose(0, 1)?
        .contiguous()
}

fn run(threads: usize, batch: usize, reps: usize) -> task2vec::Result<()> {
    let threads = configure_threads(Some(threads));
    let dev = Device::Cpu;
    for sh in &SHAPES {
        let x = Tensor::randn(0f32, 1.0, (batch, sh.c_in, sh.size, sh.size), &dev)?;
        let k = Tensor::randn(0f32, 0.05, (sh.c_out, sh.c_in, sh.k, sh.k), &dev)?;
        let y = x.conv2d(&k, sh.pad, sh.stride, 1, 1)?;
        let g = y.randn_like(0.0, 1.0)?;
        let common = json!({"conv": sh.name, "c_in": sh.c_in, "c_out": sh.c_out, "k": sh.k,
                            "stride": sh.stride, "size": sh.size, "batch": batch,
                            "per_net": sh.per_net, "threads": threads});

        let fwd = best(reps, || x.conv2d(&k, sh.pad, sh.stride, 1, 1))?;
        let gi = if sh.name == "conv1" {
            0.0
        } else {
            best(reps, || grad_input(&g, &k, (sh.size, sh.size), sh))?
        };
        let gk = best(reps, || grad_kernel(&x, &g, sh))?;
        let mut row = common.clone();
        row["method"] = json!("candle");
        row["forward_s"] = json!(fwd);
        row["grad_input_s"] = json!(gi);
        row["grad_kernel_s"] = json!(gk);
        row["backward_s"] = json!(gi + gk);
        println!("{row}");

        // ops::conv2d_same through autograd; backward = (forward + backward of sum(y * g)) -
        // forward - the loss's own forward and backward (`loss_cost`).
        let xv = Var::from_tensor(&x)?;
        let kv = Var::from_tensor(&k)?;
        let x_in = if sh.name == "conv1" {
            x.clone()
        } else {
            xv.as_tensor().clone()
        };
        let fwd = best(reps, || {
            conv2d_same(&x_in, kv.as_tensor(), sh.stride).map_err(wrap)
        })?;
        let ys = conv2d_same(&x_in, kv.as_tensor(), sh.stride).map_err(wrap)?;
        let gs = ys.randn_like(0.0, 1.0)?;
        let loss_only = loss_cost(&gs, reps)?;
        let fwd_bwd = best(reps, || {
            let y = conv2d_same(&x_in, kv.as_tensor(), sh.stride).map_err(wrap)?;
            (&y * &gs)?.sum_all()?.backward()
        })?;
        let mut row = common;
        row["method"] = json!("ops");
        row["padding_matches_pytorch"] = json!(sh.stride == 1 || sh.k == 1);
        row["forward_s"] = json!(fwd);
        row["backward_s"] = json!((fwd_bwd - fwd - loss_only).max(0.0));
        println!("{row}");
    }
    for (name, c, size, per_net) in BATCH_NORMS {
        let x = Var::randn(0f32, 1.0, (batch, c, size, size), &dev)?;
        let g = Tensor::randn(0f32, 1.0, (batch, c, size, size), &dev)?;
        let bn = BatchNorm {
            weight: Var::ones(c, candle_core::DType::F32, &dev)?,
            bias: Var::zeros(c, candle_core::DType::F32, &dev)?,
            running_mean: Tensor::zeros(c, candle_core::DType::F32, &dev)?,
            running_var: Tensor::ones(c, candle_core::DType::F32, &dev)?,
            eps: 1e-5,
        };
        let train = Forward {
            bn: BnMode::Train,
            grad: true,
        };
        let loss_only = loss_cost(&g, reps)?;
        let candle_fwd = || -> candle_core::Result<Tensor> {
            bn.forward(x.as_tensor(), train).map_err(wrap)?.relu()
        };
        let ops_fwd = || -> candle_core::Result<Tensor> {
            batch_norm_train(
                x.as_tensor(),
                bn.weight.as_tensor(),
                bn.bias.as_tensor(),
                1e-5,
                Activation::Relu,
            )
            .map_err(wrap)
        };
        for (method, f) in [
            (
                "candle",
                &candle_fwd as &dyn Fn() -> candle_core::Result<Tensor>,
            ),
            ("ops", &ops_fwd),
        ] {
            let fwd = best(reps, f)?;
            let fwd_bwd = best(reps, || (&f()? * &g)?.sum_all()?.backward())?;
            println!(
                "{}",
                json!({"bn": name, "channels": c, "size": size, "batch": batch,
                       "per_net": per_net, "threads": threads, "method": method,
                       "forward_s": fwd,
                       "backward_s": (fwd_bwd - fwd - loss_only).max(0.0)})
            );
        }
    }
    Ok(())
}

/// The crate error as a candle error, for the closures timed above.
fn wrap(e: task2vec::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

fn main() -> std::process::ExitCode {
    let mut threads = 2;
    let mut batch = 64;
    let mut reps = 2;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<usize>().ok());
        match (flag.as_str(), value) {
            ("--threads", Some(v)) => threads = v,
            ("--batch", Some(v)) => batch = v,
            ("--reps", Some(v)) => reps = v.max(1),
            _ => {
                eprintln!("bench_layers: usage: [--threads N] [--batch N] [--reps N]");
                return std::process::ExitCode::from(2);
            }
        }
    }
    match run(threads, batch, reps) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_layers: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
