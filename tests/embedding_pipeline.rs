//! The embedding pipeline end to end on real data (MNIST and Fashion-MNIST IDX files, image
//! folders made from them) with the real EfficientNet-Lite0 weights, at small settings —
//! 64-px images, 32 images, the Fisher over the last block and the head (stages 16 and 17) —
//! so that each embedding takes a few seconds.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use task2vec::dataset::{Dataset, IdxSplit, OpenOptions};
use task2vec::embedding::{layout_length, EmbedSettings, Embedding, FisherPassSettings};
use task2vec::fisher::Estimator;
use task2vec::head::HeadSettings;
use task2vec::pipeline::{embed, embed_with_trivial, Progress, Stage};
use task2vec::probe::efficientnet_lite::EfficientNetLite0;
use task2vec::probe::Probe;
use task2vec::Error;

fn probe() -> &'static EfficientNetLite0 {
    static P: OnceLock<EfficientNetLite0> = OnceLock::new();
    P.get_or_init(|| {
        EfficientNetLite0::load(&common::efficientnet_lite0_pth(), &Device::Cpu, DType::F32)
            .expect("load EfficientNet-Lite0")
    })
}

/// MNIST's test split (10,000 digits, 10 classes).
fn mnist() -> &'static Dataset {
    static D: OnceLock<Dataset> = OnceLock::new();
    D.get_or_init(|| {
        Dataset::open(
            &common::mnist_dir(),
            &OpenOptions::default().idx_split(IdxSplit::Test),
        )
        .expect("open MNIST")
    })
}

fn small() -> EmbedSettings {
    EmbedSettings {
        max_samples: 32,
        image_size: Some(64),
        feature_batch_size: 16,
        head: HeadSettings {
            epochs: 2,
            draws_per_epoch: 256,
            ..HeadSettings::default()
        },
        fisher: FisherPassSettings {
            draws: 32,
            batch_size: 16,
            ..FisherPassSettings::default()
        },
        skip_stages: 16,
        ..EmbedSettings::default()
    }
}

/// One embedding of MNIST at [`small`] settings and every progress report it made, shared by
/// the tests that only read it.
fn reference() -> &'static (Embedding, Vec<Progress>) {
    static R: OnceLock<(Embedding, Vec<Progress>)> = OnceLock::new();
    R.get_or_init(|| {
        let mut log = Vec::new();
        let e = embed(mnist(), probe(), &small(), &mut |p| log.push(p)).expect("embed MNIST");
        (e, log)
    })
}

fn run(dataset: &Dataset, settings: &EmbedSettings) -> Embedding {
    embed(dataset, probe(), settings, &mut |_| {}).expect("embed")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn mnist_embedding_has_the_layout_length_and_is_finite_and_non_negative() {
    let (e, _) = reference();
    let meta = &e.meta;
    assert_eq!(e.len(), layout_length(&meta.layout));
    // Stage 16 is `_blocks.15` and stage 17 the head: conv filters + BN channels.
    // Block 15: expand 1152 + bn 1152 + depthwise 1152 + bn 1152 + project 320 + bn 320;
    // head: conv 1280 + bn 1280.
    assert_eq!(e.len(), 4 * 1152 + 2 * 320 + 2 * 1280);
    assert!(
        meta.layout
            .iter()
            .all(|l| l.module.starts_with("_blocks.15.")
                || l.module.ends_with("_head")
                || l.module == "_bn1"),
        "{:?}",
        meta.layout.iter().map(|l| &l.module).collect::<Vec<_>>()
    );
    assert!(e.hessian.iter().all(|v| v.is_finite() && *v >= 0.0));
    assert!(e.hessian.iter().filter(|&&v| v > 0.0).count() > e.len() / 2);
    assert!(
        e.scale.iter().all(|&s| s == 1.0),
        "Monte-Carlo scale is ones"
    );
    assert!((meta.norm - e.norm()).abs() <= 1e-12 * e.norm());

    assert_eq!(meta.samples.features, 32);
    assert_eq!(meta.samples.fisher, 32);
    assert_eq!(meta.samples.skipped, 0);
    assert_eq!(meta.dataset.classes.len(), 10);
    assert_eq!(meta.dataset.fingerprint, mnist().fingerprint());
    assert_eq!(meta.dataset.items, 10_000);
    assert_eq!(meta.probe.arch, "efficientnet-lite0");
    assert_eq!(meta.probe.weights_sha256, probe().info().weights_sha256);
    assert_eq!(
        (
            meta.probe.preprocess.resize_shorter,
            meta.probe.preprocess.crop
        ),
        (64, 64)
    );
    assert_eq!(meta.settings, small());
    assert_eq!(meta.library_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(meta.created.len(), "2025-01-01T00:00:00Z".len());
    assert!(meta.created.ends_with('Z') && meta.created.as_bytes()[10] == b'T');
    assert!((0.0..=1.0).contains(&meta.head.train_accuracy));
    assert!(meta.head.final_loss.is_some_and(f64::is_finite));
}

#[test]
fn progress_is_reported_per_stage_with_monotone_counts() {
    let (_, log) = reference();
    let stages: Vec<Stage> = log.iter().map(|p| p.stage).fold(Vec::new(), |mut v, s| {
        if v.last() != Some(&s) {
            v.push(s);
        }
        v
    });
    assert_eq!(stages, [Stage::Features, Stage::Head, Stage::Fisher]);
    for stage in stages {
        let reports: Vec<&Progress> = log.iter().filter(|p| p.stage == stage).collect();
        let total = reports[0].total;
        assert!(reports.iter().all(|p| p.total == total && !p.random_labels));
        assert_eq!(reports.first().map(|p| p.done), Some(0), "{stage:?}");
        assert_eq!(reports.last().map(|p| p.done), Some(total), "{stage:?}");
        assert!(
            reports.windows(2).all(|w| w[0].done <= w[1].done),
            "{stage:?}"
        );
        assert!(
            reports.len() >= 3,
            "{stage:?}: intermediate reports expected"
        );
    }
    let total_of = |s: Stage| log.iter().find(|p| p.stage == s).map(|p| p.total);
    assert_eq!(total_of(Stage::Features), Some(32));
    assert_eq!(total_of(Stage::Head), Some(2 * 256));
    assert_eq!(total_of(Stage::Fisher), Some(32));
}

#[test]
fn same_settings_give_a_bit_identical_vector_and_another_seed_another() {
    let (e, _) = reference();
    let again = run(mnist(), &small());
    assert_eq!(bits(&again.hessian), bits(&e.hessian));
    assert_eq!(again.meta.layout, e.meta.layout);

    let other = run(mnist(), &EmbedSettings { seed: 1, ..small() });
    assert_ne!(bits(&other.hessian), bits(&e.hessian));
    // Another seed is another estimate of the same quantity: still comparable.
    e.check_comparable(&other).unwrap();
}

#[test]
fn recomputing_fisher_inputs_gives_the_cached_result() {
    // A zero budget forces the Fisher pass to decode and run the frozen stages again, on
    // batches composed differently from the feature pass's; on the CPU every image's
    // activations are computed independently of its batch-mates, so the result is the same
    // to the bit.
    let (e, _) = reference();
    let recomputed = run(
        mnist(),
        &EmbedSettings {
            cache_budget_bytes: 0,
            ..small()
        },
    );
    assert_eq!(bits(&recomputed.hessian), bits(&e.hessian));
}

#[test]
fn trivial_embedding_uses_the_same_images_with_random_labels() {
    let (e, _) = reference();
    let mut log = Vec::new();
    let (task, trivial) =
        embed_with_trivial(mnist(), probe(), &small(), &mut |p| log.push(p)).unwrap();
    assert_eq!(
        bits(&task.hessian),
        bits(&e.hessian),
        "the task's own embedding is unchanged"
    );
    assert!(trivial.meta.settings.random_labels && !task.meta.settings.random_labels);
    assert_eq!(trivial.meta.samples.features, task.meta.samples.features);
    assert_ne!(bits(&trivial.hessian), bits(&task.hessian));
    task.check_comparable(&trivial).unwrap();
    // One feature pass, then head and Fisher twice, the second time flagged.
    assert_eq!(
        log.iter()
            .filter(|p| p.stage == Stage::Features && p.done == 0)
            .count(),
        1
    );
    assert!(log
        .iter()
        .any(|p| p.stage == Stage::Fisher && p.random_labels));
}

#[test]
fn embeddings_with_another_estimator_or_skip_stages_are_refused() {
    let (e, _) = reference();
    let mut per_example = small();
    per_example.fisher.estimator = Estimator::PerExample;
    per_example.fisher.draws = 8;
    let other = run(mnist(), &per_example);
    match e.check_comparable(&other) {
        Err(Error::Mismatch(m)) => assert!(m.contains("estimator"), "{m}"),
        r => panic!("expected a mismatch, got {r:?}"),
    }

    let later = run(
        mnist(),
        &EmbedSettings {
            skip_stages: 17,
            ..small()
        },
    );
    assert_eq!(later.len(), 2 * 1280);
    match later.check_comparable(e) {
        Err(Error::Mismatch(m)) => {
            assert!(m.contains("skip_stages") && m.contains("layout"), "{m}")
        }
        r => panic!("expected a mismatch, got {r:?}"),
    }
}

/// Writes Fashion-MNIST items as PNG files into `dir/<class>/`, `count` per class.
fn write_fashion(dir: &Path, per_class: &[(usize, &str, usize)]) {
    let fashion = Dataset::open(
        &common::fashion_mnist_dir(),
        &OpenOptions::default().idx_split(IdxSplit::Test),
    )
    .expect("open Fashion-MNIST");
    for &(label, name, count) in per_class {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let items = (0..fashion.len()).filter(|&i| fashion.items()[i].label == label);
        for (k, i) in items.take(count).enumerate() {
            let img = fashion.load_rgb(i).unwrap();
            img.save(dir.join(name).join(format!("{k:02}.png")))
                .unwrap();
        }
    }
}

/// A file that looks like a PNG (so it is listed) but does not decode.
fn write_corrupt_png(path: &Path) {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&[0x42; 64]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_images_are_counted_and_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    write_fashion(tmp.path(), &[(0, "shirt", 5), (9, "boot", 6)]);
    write_corrupt_png(&tmp.path().join("shirt").join("99.png"));
    let ds = Dataset::open(tmp.path(), &OpenOptions::default()).unwrap();
    assert_eq!(ds.len(), 12);
    // The sample alternates classes, so all six shirt files are among the first 11 tried.
    let e = run(
        &ds,
        &EmbedSettings {
            max_samples: 11,
            ..small()
        },
    );
    assert_eq!(e.meta.samples.skipped, 1);
    assert_eq!(e.meta.samples.features, 11, "the corrupt file was replaced");
    assert!(e.hessian.iter().all(|v| v.is_finite()));
}

#[test]
fn a_dataset_whose_decodable_images_cover_one_class_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_fashion(tmp.path(), &[(0, "shirt", 4)]);
    std::fs::create_dir_all(tmp.path().join("boot")).unwrap();
    for k in 0..3 {
        write_corrupt_png(&tmp.path().join("boot").join(format!("{k}.png")));
    }
    let ds = Dataset::open(tmp.path(), &OpenOptions::default()).unwrap();
    match embed(&ds, probe(), &small(), &mut |_| {}) {
        Err(Error::Dataset { what, .. }) => {
            assert!(
                what.contains("1 class") && what.contains("3 failed"),
                "{what}"
            )
        }
        r => panic!("expected a dataset error, got {r:?}"),
    }
}

#[test]
fn selecting_classes_remaps_labels_and_refuses_bad_selections() {
    let all = mnist();
    let sub = all.select_classes(&[7, 3]).unwrap();
    assert_eq!(sub.classes(), ["7", "3"]);
    let counts = all.class_counts();
    assert_eq!(sub.class_counts(), [counts[7], counts[3]]);
    // The first subset item is the first 7 or 3 of the whole, with its label renamed.
    let first = (0..all.len())
        .find(|&i| matches!(all.items()[i].label, 7 | 3))
        .unwrap();
    let want = if all.items()[first].label == 7 { 0 } else { 1 };
    assert_eq!(sub.items()[0].label, want);
    assert_eq!(sub.load_rgb(0).unwrap(), all.load_rgb(first).unwrap());
    assert_ne!(sub.fingerprint(), all.fingerprint());

    for (bad, needle) in [
        (vec![3], "at least two"),
        (vec![3, 3], "selected twice"),
        (vec![1, 10], "does not exist"),
    ] {
        match all.select_classes(&bad) {
            Err(Error::Dataset { what, .. }) => assert!(what.contains(needle), "{what}"),
            r => panic!(
                "{bad:?}: expected a dataset error, got {:?}",
                r.map(|d| d.len())
            ),
        }
    }
}

#[test]
fn a_class_subset_embeds_as_its_own_task() {
    let digits = mnist().select_classes(&[0, 1, 2, 3, 4]).unwrap();
    let e = run(&digits, &small());
    assert_eq!(e.meta.dataset.classes, ["0", "1", "2", "3", "4"]);
    assert_eq!(e.meta.dataset.fingerprint, digits.fingerprint());
    assert_eq!(e.meta.samples.features, 32);
    reference().0.check_comparable(&e).unwrap();
    assert_ne!(bits(&e.hessian), bits(&reference().0.hessian));
}

#[test]
fn only_variational_embeddings_have_a_prior() {
    let (e, _) = reference();
    assert!(matches!(e.prior(), Err(Error::Mismatch(_))));
    // A variational embedding's prior is its scale, in place of the Fisher.
    let mut v = e.clone();
    v.meta.settings.fisher.estimator = Estimator::Variational;
    v.scale = (0..v.len()).map(|i| 1.0 + (i % 7) as f32).collect();
    let prior = v.prior().unwrap();
    assert_eq!(prior.hessian, v.scale);
    assert_eq!(prior.scale, v.scale);
    prior.check_comparable(&v).unwrap();
}
