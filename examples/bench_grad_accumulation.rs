//! What candle's backward pass spends accumulating ResNet-18's kernel gradients: for every
//! gradient it stores, candle allocates a zeroed tensor and adds the gradient into it
//! (`zeros_like` + `add`), even when the gradient is the only one. This times exactly that
//! over ResNet-18's 21 convolution kernels (11.2 M values), with the binaries' thread and
//! allocator settings; BENCHMARKS.md compares it with a whole Fisher batch.
//!
//! `cargo run --release --example bench_grad_accumulation`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

fn main() -> candle_core::Result<()> {
    task2vec::malloc::retain_freed_memory();
    task2vec::threads::configure_threads(Some(2));
    let mut shapes: Vec<[usize; 4]> = vec![[64, 3, 7, 7]];
    shapes.extend([[64, 64, 3, 3]; 4]);
    for (c, o) in [(64, 128), (128, 256), (256, 512)] {
        shapes.extend([[o, c, 3, 3], [o, c, 1, 1]]);
        shapes.extend([[o, o, 3, 3]; 3]);
    }
    let grads = shapes
        .iter()
        .map(|s| Tensor::ones(s.as_slice(), DType::F32, &Device::Cpu))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let values: usize = grads.iter().map(Tensor::elem_count).sum();
    let mut times = Vec::new();
    for _ in 0..11 {
        let start = Instant::now();
        for g in &grads {
            let sum = g.zeros_like()?.add(g)?;
            std::hint::black_box(&sum);
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{} kernels, {values} values: zeros_like + add per Fisher batch min {:.1} ms, median {:.1} ms",
        grads.len(),
        times[0],
        times[times.len() / 2]
    );
    Ok(())
}
