//! Task2Vec on real tasks behaves as the paper says: tasks on the same kind of images are
//! close, and a random-label task sits with the trivial embeddings, not with real tasks.
//!
//! Five tasks cut from MNIST and Fashion-MNIST (the fixture-C tasks of
//! ../shared/fixtures/conformance) plus the trivial embeddings, all with the real
//! EfficientNet-Lite0 weights at 64 px, small sample counts so CI stays fast.

mod common;

use candle_core::{DType, Device};
use task2vec::dataset::{Dataset, OpenOptions};
use task2vec::distance::d_sym;
use task2vec::embedding::{EmbedSettings, Embedding, FisherPassSettings};
use task2vec::head::HeadSettings;
use task2vec::pipeline::{embed, embed_with_trivial};
use task2vec::probe::efficientnet_lite::EfficientNetLite0;

fn settings() -> EmbedSettings {
    let defaults = EmbedSettings::default();
    EmbedSettings {
        image_size: Some(64),
        max_samples: 160,
        fisher: FisherPassSettings {
            draws: 160,
            batch_size: 32,
            ..defaults.fisher.clone()
        },
        head: HeadSettings {
            epochs: 3,
            ..defaults.head.clone()
        },
        skip_stages: 10,
        seed: 7,
        ..defaults
    }
}

#[test]
fn digit_tasks_cluster_and_random_labels_sit_with_the_trivial_embedding() {
    let probe =
        EfficientNetLite0::load(&common::efficientnet_lite0_pth(), &Device::Cpu, DType::F32)
            .expect("probe");
    let mnist = Dataset::open(&common::mnist_dir(), &OpenOptions::default()).unwrap();
    let fashion = Dataset::open(&common::fashion_mnist_dir(), &OpenOptions::default()).unwrap();
    let s = settings();
    let mut quiet = |_| {};

    let (m04, t0_m04) = embed_with_trivial(
        &mnist.select_classes(&[0, 1, 2, 3, 4]).unwrap(),
        &probe,
        &s,
        &mut quiet,
    )
    .unwrap();
    let m59 = embed(
        &mnist.select_classes(&[5, 6, 7, 8, 9]).unwrap(),
        &probe,
        &s,
        &mut quiet,
    )
    .unwrap();
    let (tops, t0_tops) = embed_with_trivial(
        &fashion.select_classes(&[0, 2, 4, 6]).unwrap(),
        &probe,
        &s,
        &mut quiet,
    )
    .unwrap();
    let foot = embed(
        &fashion.select_classes(&[5, 7, 9]).unwrap(),
        &probe,
        &s,
        &mut quiet,
    )
    .unwrap();
    let mut random_settings = s.clone();
    random_settings.random_labels = true;
    random_settings.seed = 8;
    let random = embed(&mnist, &probe, &random_settings, &mut quiet).unwrap();

    let d = |a: &Embedding, b: &Embedding| d_sym(&a.hessian, &b.hessian).unwrap();
    let digits = d(&m04, &m59);
    let cross = [
        d(&m04, &tops),
        d(&m04, &foot),
        d(&m59, &tops),
        d(&m59, &foot),
    ];
    println!("d_sym digits {digits:.4}, digit-fashion {cross:.4?}");
    assert!(
        cross.iter().all(|&c| digits < c),
        "digit tasks must be closer to each other ({digits:.4}) than to fashion tasks ({cross:.4?})"
    );

    // The random-label MNIST task is a trivial task: it must be nearer MNIST's trivial
    // embedding than any real task is, and nearer it than to any real task.
    let r_t0 = d(&random, &t0_m04);
    let real = [
        d(&random, &m04),
        d(&random, &m59),
        d(&random, &tops),
        d(&random, &foot),
    ];
    let m04_t0 = d(&m04, &t0_m04);
    println!("d_sym random→t0(mnist) {r_t0:.4}, random→real {real:.4?}, m04→t0 {m04_t0:.4}");
    assert!(
        real.iter().all(|&x| r_t0 < x),
        "random-label task is not nearest the trivial embedding"
    );
    assert!(
        r_t0 < m04_t0,
        "random labels ({r_t0:.4}) should be nearer t0 than the real task ({m04_t0:.4})"
    );
    // Real tasks are away from their trivial embedding (the complexity term of d_asym).
    assert!(d(&tops, &t0_tops) > r_t0);
}
