//! Micro-benchmark of ResNet-18's 3×3 stride-1 convolutions: Winograd F(2×2, 3×3)
//! ([`task2vec::probe::ops::conv3x3_winograd`], what [`task2vec::probe::ops::conv2d`] uses for
//! them where it pays) against im2col + matrix products
//! ([`task2vec::probe::ops::conv2d_im2col`]), forward, and backward (input and kernel
//! gradients), at one input size.
//!
//! ```text
//! cargo run --release --example bench_conv3x3 -- [--size 32] [--batch 64] [--threads 2] [--reps 5] [--method winograd|im2col]
//! ```
//!
//! Prints one JSON line per (stage, method) with the best time of `reps` runs of each phase.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde_json::json;
use task2vec::probe::ops::{conv2d_im2col, conv3x3_winograd};
use task2vec::threads::configure_threads;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;
type ConvFn = fn(&Tensor, &Tensor, usize, usize) -> task2vec::Result<Tensor>;

fn time(reps: usize, mut f: impl FnMut() -> AnyResult<()>) -> AnyResult<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn run(size: usize, batch: usize, reps: usize, only: Option<&str>) -> AnyResult<()> {
    let dev = Device::Cpu;
    // ResNet-18's stages after the stem (size / 4) and each stride-2 stage.
    for (stage, (c, div)) in [(64, 4), (128, 8), (256, 16), (512, 32)]
        .into_iter()
        .enumerate()
    {
        let side = (size / div).max(1);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, c, side, side), &dev)?)?;
        let k = Var::from_tensor(&Tensor::randn(0f32, 0.05, (c, c, 3, 3), &dev)?)?;
        let methods: [(&str, ConvFn); 2] = [
            ("winograd", |x, k, _, _| conv3x3_winograd(x, k)),
            ("im2col", conv2d_im2col),
        ];
        for (name, conv) in methods {
            // Winograd needs a plane of at least 2×2 (32 px inputs reach 1×1 at stage 4).
            if only.is_some_and(|m| m != name) || (name == "winograd" && side < 2) {
                continue;
            }
            let fwd = time(reps, || {
                conv(x.as_tensor(), k.as_tensor(), 1, 1)?;
                Ok(())
            })?;
            let y = conv(x.as_tensor(), k.as_tensor(), 1, 1)?;
            let r = Tensor::randn(0f32, 1.0, y.shape(), &dev)?;
            let loss = (&y * &r)?.sum_all()?;
            let bwd = time(reps, || {
                loss.backward()?;
                Ok(())
            })?;
            println!(
                "{}",
                json!({"stage": stage + 1, "channels": c, "side": side, "batch": batch,
                       "method": name, "forward_s": fwd, "backward_s": bwd})
            );
        }
    }
    Ok(())
}

fn main() -> AnyResult<()> {
    let (mut size, mut batch, mut threads, mut reps) = (32, 64, 2, 5);
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--method" {
            only = args.next();
            continue;
        }
        let value: usize = args
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--size" => size = value,
            "--batch" => batch = value,
            "--threads" => threads = value,
            "--reps" => reps = value.max(1),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    configure_threads(Some(threads));
    task2vec::malloc::retain_freed_memory();
    run(size, batch, reps, only.as_deref())
}
