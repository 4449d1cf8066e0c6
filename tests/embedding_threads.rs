//! An embedding does not depend on the number of compute threads.
//!
//! candle reads `RAYON_NUM_THREADS` on every matrix product to split it, and the probe's own
//! operations split their work over rayon; all of them split outputs, never a sum, so the bits
//! must not change with the thread count. This file holds a single test because it changes
//! the environment variable between runs: no other test may run beside it.

mod common;

use candle_core::{DType, Device};
use task2vec::dataset::{Dataset, IdxSplit, OpenOptions};
use task2vec::embedding::{EmbedSettings, FisherPassSettings};
use task2vec::head::HeadSettings;
use task2vec::pipeline::embed;
use task2vec::probe::efficientnet_lite::EfficientNetLite0;

#[test]
fn the_vector_is_the_same_with_one_two_or_three_threads() {
    let probe =
        EfficientNetLite0::load(&common::efficientnet_lite0_pth(), &Device::Cpu, DType::F32)
            .expect("load EfficientNet-Lite0");
    let fashion = Dataset::open(
        &common::fashion_mnist_dir(),
        &OpenOptions::default().idx_split(IdxSplit::Test),
    )
    .expect("open Fashion-MNIST");
    let settings = EmbedSettings {
        max_samples: 16,
        image_size: Some(64),
        head: HeadSettings {
            epochs: 1,
            draws_per_epoch: 128,
            ..HeadSettings::default()
        },
        fisher: FisherPassSettings {
            draws: 16,
            batch_size: 16,
            ..FisherPassSettings::default()
        },
        // From block 14: its 1×1 convolutions are matrix products large enough to be split.
        skip_stages: 15,
        ..EmbedSettings::default()
    };
    let mut runs = Vec::new();
    for threads in ["1", "2", "3"] {
        std::env::set_var("RAYON_NUM_THREADS", threads);
        let e = embed(&fashion, &probe, &settings, &mut |_| {}).expect("embed");
        let bits: Vec<u32> = e.hessian.iter().map(|v| v.to_bits()).collect();
        runs.push((threads, bits));
    }
    std::env::remove_var("RAYON_NUM_THREADS");
    for (threads, bits) in &runs[1..] {
        assert!(
            *bits == runs[0].1,
            "{threads} threads gave another vector than 1 thread"
        );
    }
}
