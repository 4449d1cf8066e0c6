//! Fisher estimators and filter averaging against the PyTorch reference (fixture B of
//! `MANIFEST.md`): 64 MNIST digits at 64×64 through EfficientNet-Lite0 with the real weights,
//! the fitted 3-way head and the fixed sampled labels, batches of 16 in order. Checks the
//! Monte-Carlo estimator with eval- and train-mode batch norm, the per-example estimator, the
//! per-parameter diagonals, the batch losses and the 42016-value layout; then reproducibility of
//! sampled labels, the variational estimator, and input errors.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use task2vec::embedding::{filter_average, layout_length, LayoutEntry};
use task2vec::fisher::{
    estimate, BatchSource, Estimator, FisherBatch, FisherDiag, FisherSettings, Head,
    VariationalSettings,
};
use task2vec::probe::efficientnet_lite::EfficientNetLite0;
use task2vec::probe::BnMode;
use task2vec::{Error, Result};

fn probe(dtype: DType) -> &'static EfficientNetLite0 {
    static F32: OnceLock<EfficientNetLite0> = OnceLock::new();
    static F64: OnceLock<EfficientNetLite0> = OnceLock::new();
    let cell = if dtype == DType::F64 { &F64 } else { &F32 };
    cell.get_or_init(|| {
        EfficientNetLite0::load(&common::efficientnet_lite0_pth(), &Device::Cpu, dtype)
            .expect("load weights")
    })
}

fn fixture() -> &'static HashMap<String, Tensor> {
    static FX: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    FX.get_or_init(|| {
        candle_core::safetensors::load(common::conformance("fisher.safetensors"), &Device::Cpu)
            .expect("read fisher.safetensors")
    })
}

/// Fixed batches of the fixture's input, in order.
struct Batches(Vec<FisherBatch>);

impl BatchSource for Batches {
    fn batches(&self, _epoch: usize) -> Box<dyn Iterator<Item = Result<FisherBatch>> + '_> {
        Box::new(self.0.iter().cloned().map(Ok))
    }
}

/// Rows `[0:16), [16:32), ...` of the first `n` fixture images in `dtype`, with the fixture's
/// sampled labels when `fixed_labels`.
fn batches(dtype: DType, n: usize, fixed_labels: bool) -> Batches {
    let fx = fixture();
    let input = fx["input"].to_dtype(dtype).unwrap();
    let labels = &fx["sampled_labels"];
    Batches(
        (0..n)
            .step_by(16)
            .map(|s| FisherBatch {
                input: input.narrow(0, s, 16).unwrap(),
                labels: fixed_labels.then(|| labels.narrow(0, s, 16).unwrap()),
            })
            .collect(),
    )
}

fn head() -> Head {
    let fx = fixture();
    Head {
        weight: Var::from_tensor(&fx["head.weight"]).unwrap(),
        bias: Var::from_tensor(&fx["head.bias"]).unwrap(),
    }
}

fn settings(estimator: Estimator, bn: BnMode, seed: u64) -> FisherSettings {
    FisherSettings {
        estimator,
        bn,
        from_stage: 0,
        seed,
        variational: VariationalSettings::default(),
    }
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A tolerance |ours − ref| ≤ rtol·|ref| + atol_frac·max|ref|, met by all but `outliers` values.
#[derive(Clone, Copy)]
struct Tol {
    rtol: f64,
    atol_frac: f64,
    outliers: usize,
}

const fn tol(rtol: f64, atol_frac: f64) -> Tol {
    Tol {
        rtol,
        atol_frac,
        outliers: 0,
    }
}

/// Checks `ours` against `reference` and prints the observed max |Δ| / max |ref|.
fn assert_close(what: &str, ours: &[f64], reference: &[f64], t: Tol) -> f64 {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let max_ref = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
    let atol = t.atol_frac * max_ref;
    let mut worst = 0f64;
    let mut bad = Vec::new();
    for (i, (&a, &r)) in ours.iter().zip(reference).enumerate() {
        let d = (a - r).abs();
        worst = worst.max(d);
        if d > t.rtol * r.abs() + atol || !a.is_finite() {
            bad.push((i, a, r));
        }
    }
    let rel = worst / max_ref.max(f64::MIN_POSITIVE);
    println!(
        "{what}: max |Δ| / max |ref| = {rel:.2e}, {} of {} outside rtol {:e} + {:e}·max",
        bad.len(),
        ours.len(),
        t.rtol,
        t.atol_frac
    );
    assert!(
        bad.len() <= t.outliers && !ours.iter().any(|v| !v.is_finite()),
        "{what}: {} of {} values outside rtol {:e} + {:e}·max (allowed {}), first {:?}",
        bad.len(),
        ours.len(),
        t.rtol,
        t.atol_frac,
        t.outliers,
        &bad[..bad.len().min(5)]
    );
    rel
}

/// The reference layout file.
fn reference_layout() -> (usize, Vec<LayoutEntry>) {
    let text = std::fs::read_to_string(common::conformance("fisher_layout.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let total = v["total_length"].as_u64().unwrap() as usize;
    let modules: Vec<LayoutEntry> = serde_json::from_value(v["modules"].clone()).unwrap();
    (total, modules)
}

/// Runs one estimator on the 64 fixture images with the fixed labels and checks the embedding,
/// every stored diagonal and the losses against the fixture's convention `conv`.
fn check_convention(
    conv: &str,
    estimator: Estimator,
    bn: BnMode,
    dtype: DType,
    vector_tol: Tol,
    diag_tol: Tol,
) -> FisherDiag {
    let fx = fixture();
    let t = Instant::now();
    let diag = estimate(
        probe(dtype),
        &head(),
        &batches(dtype, 64, true),
        &settings(estimator, bn, 0),
    )
    .unwrap();
    println!(
        "{conv} {dtype:?}: {:.2} s for 64 images",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(diag.samples, 64);
    let (vector, layout) = filter_average(&diag, true).unwrap();
    assert_eq!(vector.len(), 42016);
    assert_eq!(layout_length(&layout), 42016);
    let suffix = if dtype == DType::F64 { "_f64" } else { "" };
    let reference = to_f64(&fx[&format!("{conv}.embedding{suffix}")]);
    // The vector itself is f32 whatever the dtype: compare at f32 resolution in F64 runs.
    let ours: Vec<f64> = vector.iter().map(|&v| v as f64).collect();
    assert_close(
        &format!("{conv} {dtype:?} embedding"),
        &ours,
        &reference,
        vector_tol,
    );
    if dtype == DType::F32 {
        let prefix = format!("{conv}.diag.");
        let mut checked = 0;
        for (key, reference) in fx.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            let name = &key[prefix.len()..];
            if name.starts_with("_fc.") {
                continue; // the head's Fisher is not part of the probe's diagonal
            }
            let ours = diag
                .params
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("no Fisher for `{name}`"));
            assert_eq!(ours.diag.dims(), reference.dims(), "{name}");
            assert_close(
                &format!("{conv} diag {name}"),
                &to_f64(&ours.diag),
                &to_f64(reference),
                diag_tol,
            );
            checked += 1;
        }
        assert_eq!(checked, 12, "stored probe diagonals of {conv}");
        assert_close(
            &format!("{conv} losses"),
            &diag.losses,
            &to_f64(&fx[&format!("{conv}.losses")]),
            tol(1e-4, 0.0),
        );
    }
    diag
}

/// Monte-Carlo, BN eval, F32: rtol 1e-2 + 1e-5·max (MANIFEST) for the vector and the stored
/// diagonals, losses to 1e-4. The layout equals `fisher_layout.json` (98 modules, 42016 values)
/// field by field. Observed: vector 3.7e-5 of max, diagonals ≤ 1.7e-4 of max (`_conv_stem`),
/// losses 2.4e-7.
#[test]
fn montecarlo_bn_eval_matches_pytorch_and_the_reference_layout() {
    let t = tol(1e-2, 1e-5);
    let diag = check_convention(
        "mc_bn_eval",
        Estimator::MonteCarlo,
        BnMode::Eval,
        DType::F32,
        t,
        t,
    );
    let (_, layout) = filter_average(&diag, true).unwrap();
    let (total, reference) = reference_layout();
    assert_eq!(total, 42016);
    assert_eq!(reference.len(), 98);
    assert_eq!(layout, reference);
}

/// Monte-Carlo, BN train (batch statistics, gradient through them), F32.
///
/// This convention is chaotic in floating point: in F64, perturbing the input images by 1e-7
/// relative (below f32 resolution) moves the embedding by 3.8e-3 of its max and the gradients
/// at the block boundaries by 2–5 % (measured while writing this test: tiny-variance channels
/// of the digit backgrounds amplify rounding through ~50 train-mode batch norms). An f32 run
/// that does not round exactly as PyTorch does cannot meet the MANIFEST's suggested
/// 3e-2 + 1e-4·max everywhere. Observed: 2 of 42016 values outside it (3.5 % and 7 % off),
/// vector max |Δ| 1.2e-2 of max, per-tensor diagonal max |Δ| 3e-3 .. 5e-2 of max, losses
/// 6e-6. Checked: that bound with at most 8 outliers, every value within 5e-2 of the max,
/// every stored diagonal within 1e-1 of its max, losses to 1e-4. The exact check of this
/// convention is the F64 one ([`f64_montecarlo_bn_train_matches_the_pytorch_float64_embedding`]).
#[test]
fn montecarlo_bn_train_matches_pytorch() {
    let t = Tol {
        rtol: 3e-2,
        atol_frac: 1e-4,
        outliers: 8,
    };
    let diag = check_convention(
        "mc_bn_train",
        Estimator::MonteCarlo,
        BnMode::Train,
        DType::F32,
        t,
        tol(0.0, 1e-1),
    );
    let (vector, _) = filter_average(&diag, true).unwrap();
    let reference = to_f64(&fixture()["mc_bn_train.embedding"]);
    let ours: Vec<f64> = vector.iter().map(|&v| v as f64).collect();
    assert_close(
        "mc_bn_train F32 embedding (abs)",
        &ours,
        &reference,
        tol(0.0, 5e-2),
    );
}

/// Per-example, BN eval, F32: rtol 1e-2 + 1e-5·max. Observed: vector 9.9e-6 of max, diagonals
/// ≤ 5.4e-5 of max, per-example losses to 1e-4.
#[test]
fn per_example_bn_eval_matches_pytorch() {
    let t = tol(1e-2, 1e-5);
    check_convention(
        "per_example_bn_eval",
        Estimator::PerExample,
        BnMode::Eval,
        DType::F32,
        t,
        t,
    );
}

/// Monte-Carlo with train-mode BN entirely in F64 against the fixture's float64 run: only
/// rounding separates them, rtol 1e-6 + 1e-9·max (the vector is f32, so 6e-8 is its floor).
/// Observed: 1.6e-8 of max. (The eval-mode conventions also pass this in F64 — 1.6e-8 and
/// 2.6e-8 — but are left out to keep the file fast: their F32 checks are already tight.)
#[test]
fn f64_montecarlo_bn_train_matches_the_pytorch_float64_embedding() {
    let t = tol(1e-6, 1e-9);
    check_convention(
        "mc_bn_train",
        Estimator::MonteCarlo,
        BnMode::Train,
        DType::F64,
        t,
        t,
    );
}

/// The first `n` fixture images cut to their central 32×32 (cheap passes for the behaviour
/// tests), as `batch`-sized batches.
fn small_batches(n: usize, batch: usize, labels: Option<&str>) -> Batches {
    let fx = fixture();
    let x = fx["input"]
        .narrow(0, 0, n)
        .unwrap()
        .narrow(2, 16, 32)
        .unwrap()
        .narrow(3, 16, 32)
        .unwrap()
        .contiguous()
        .unwrap();
    Batches(
        (0..n)
            .step_by(batch)
            .map(|s| FisherBatch {
                input: x.narrow(0, s, batch).unwrap(),
                labels: labels.map(|k| fx[k].narrow(0, s, batch).unwrap()),
            })
            .collect(),
    )
}

fn vector_bits(d: &FisherDiag, include_bn: bool) -> Vec<u32> {
    filter_average(d, include_bn)
        .unwrap()
        .0
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// With labels drawn from the model, the same seed gives bit-identical vectors (Monte-Carlo and
/// per-example) and a different seed gives a different one.
#[test]
fn sampled_labels_are_reproducible_and_depend_on_the_seed() {
    let p = probe(DType::F32);
    let h = head();
    let src = small_batches(8, 4, None);
    for estimator in [Estimator::MonteCarlo, Estimator::PerExample] {
        let run = |seed| estimate(p, &h, &src, &settings(estimator, BnMode::Eval, seed)).unwrap();
        let a = run(7);
        let b = run(7);
        let c = run(8);
        assert_eq!(a.samples, 8);
        assert_eq!(
            vector_bits(&a, true),
            vector_bits(&b, true),
            "{estimator:?}: same seed"
        );
        assert_eq!(a.losses, b.losses);
        assert_ne!(
            vector_bits(&a, true),
            vector_bits(&c, true),
            "{estimator:?}: other seed"
        );
    }
}

/// `from_stage` (skip_layers) starts the Fisher at a later stage on cached activations: only
/// that stage's parameters appear, and with eval-mode BN their diagonals equal the full pass's
/// (the fixture's `_conv_head.weight`, `_bn1.weight` and `_bn1.bias`, rtol 1e-2 + 1e-5·max).
#[test]
fn from_stage_covers_only_the_later_stages_and_matches_the_full_pass() {
    use task2vec::probe::{Forward, Probe};
    let fx = fixture();
    let p = probe(DType::F32);
    let cached = p
        .forward_stages(&fx["input"], 0, 17, Forward::INFERENCE)
        .unwrap();
    let src = Batches(
        (0..64)
            .step_by(16)
            .map(|s| FisherBatch {
                input: cached.narrow(0, s, 16).unwrap(),
                labels: Some(fx["sampled_labels"].narrow(0, s, 16).unwrap()),
            })
            .collect(),
    );
    let s = FisherSettings {
        from_stage: 17,
        ..settings(Estimator::MonteCarlo, BnMode::Eval, 0)
    };
    let d = estimate(p, &head(), &src, &s).unwrap();
    let names: Vec<&str> = d.params.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["_conv_head.weight", "_bn1.weight", "_bn1.bias"]);
    for q in &d.params {
        let reference = &fx[&format!("mc_bn_eval.diag.{}", q.name)];
        assert_close(
            &format!("from stage 17: {}", q.name),
            &to_f64(&q.diag),
            &to_f64(reference),
            tol(1e-2, 1e-5),
        );
    }
    let (v, layout) = filter_average(&d, true).unwrap();
    assert_eq!(v.len(), 2560);
    let (_, reference) = reference_layout();
    assert_eq!(layout[0].module, reference[96].module);
    assert_eq!(
        (layout[1].module.as_str(), layout[1].offset),
        ("_bn1", 1280)
    );
}

/// The variational estimator on 2 batches of 4 (32×32 crops, the true labels), 2 epochs:
/// one positive, finite value per convolution filter, laid out exactly like the Monte-Carlo
/// vector *without* batch norms (49 convolutions, 21008 filters: the reference gives only
/// convolutions noise), a positive prior scale per layer, values that moved away from their
/// initialisation `1 / (0.05·var(filter) + 1e-8)`, reproducible with a seed, and the caller's
/// head left untouched.
#[test]
fn variational_gives_positive_per_filter_values_in_the_convolution_layout() {
    use task2vec::probe::{ParamKind, Probe};
    let p = probe(DType::F32);
    let h = head();
    let src = small_batches(8, 4, Some("labels"));
    let run = || {
        let t = Instant::now();
        let d = estimate(
            p,
            &h,
            &src,
            &settings(Estimator::Variational, BnMode::Eval, 3),
        )
        .unwrap();
        println!(
            "variational: {:.2} s for 2 epochs of 8 images at 32×32",
            t.elapsed().as_secs_f64()
        );
        d
    };
    let d = run();
    assert_eq!(d.samples, 16);
    assert_eq!(d.losses.len(), 4);
    assert!(d.losses.iter().all(|l| l.is_finite() && *l > 0.0));
    let (v, layout) = filter_average(&d, true).unwrap();
    assert_eq!(v.len(), 21008);
    assert!(
        v.iter().all(|x| x.is_finite() && *x > 0.0),
        "every per-filter value positive"
    );
    let (_, reference) = reference_layout();
    let mut offset = 0;
    let convs: Vec<LayoutEntry> = reference
        .into_iter()
        .filter(|e| e.kind != task2vec::embedding::LayoutKind::Bn)
        .map(|mut e| {
            e.offset = offset;
            offset += e.n_filters;
            e
        })
        .collect();
    assert_eq!(layout, convs);
    assert_eq!(d.scale.len(), 49);
    assert!(d
        .scale
        .iter()
        .zip(&layout)
        .all(|((m, s), e)| *m == e.module && s.is_finite() && *s > 0.0));

    // The initial values, from the weights: 4 Adam steps at lr 1e-2 move log-variances by up
    // to ~4e-2, so most filters must have moved by more than 1 %.
    let mut init = Vec::new();
    for q in p
        .params()
        .iter()
        .filter(|q| matches!(q.kind, ParamKind::Conv | ParamKind::Depthwise))
    {
        let w = q.var.as_tensor();
        let rows = w
            .flatten_from(1)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for r in rows {
            let m = r.iter().sum::<f64>() / r.len() as f64;
            let var = r.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (r.len() - 1) as f64;
            init.push(1.0 / (0.05 * var + 1e-8));
        }
    }
    let moved = v
        .iter()
        .zip(&init)
        .filter(|(a, b)| ((**a as f64 - **b) / **b).abs() > 1e-2)
        .count();
    println!(
        "variational: {moved} of {} filters moved by more than 1 %",
        v.len()
    );
    assert!(moved > v.len() / 2);

    assert_eq!(
        vector_bits(&d, false),
        vector_bits(&run(), false),
        "same seed"
    );
    let fx = fixture();
    assert_eq!(
        to_f64(h.weight.as_tensor()),
        to_f64(&fx["head.weight"]),
        "head untouched"
    );
}

/// Bad inputs are typed [`Error::Mismatch`] errors naming the problem, never panics.
#[test]
fn bad_heads_labels_stages_and_sources_are_mismatch_errors() {
    let p = probe(DType::F32);
    let fx = fixture();
    let one = |labels: Tensor| {
        Batches(vec![FisherBatch {
            input: fx["input"]
                .narrow(0, 0, 2)
                .unwrap()
                .narrow(2, 0, 16)
                .unwrap()
                .narrow(3, 0, 16)
                .unwrap()
                .contiguous()
                .unwrap(),
            labels: Some(labels),
        }])
    };
    let good = one(Tensor::new(&[0i64, 1], &Device::Cpu).unwrap());
    let s = settings(Estimator::MonteCarlo, BnMode::Eval, 0);
    let expect = |r: Result<FisherDiag>, needle: &str| match r {
        Err(Error::Mismatch(m)) => assert!(m.contains(needle), "`{m}` should mention `{needle}`"),
        other => panic!(
            "expected a mismatch about `{needle}`, got {:?}",
            other.map(|d| d.samples)
        ),
    };
    let narrow_head = Head {
        weight: Var::from_tensor(&fx["head.weight"].narrow(1, 0, 100).unwrap()).unwrap(),
        bias: head().bias,
    };
    expect(estimate(p, &narrow_head, &good, &s), "features");
    expect(
        estimate(
            p,
            &head(),
            &one(Tensor::new(&[0i64, 3], &Device::Cpu).unwrap()),
            &s,
        ),
        "label 3",
    );
    expect(
        estimate(
            p,
            &head(),
            &one(Tensor::new(&[0i64], &Device::Cpu).unwrap()),
            &s,
        ),
        "labels of shape",
    );
    expect(
        estimate(
            p,
            &head(),
            &good,
            &FisherSettings {
                from_stage: 19,
                ..s.clone()
            },
        ),
        "stage",
    );
    expect(estimate(p, &head(), &Batches(Vec::new()), &s), "no batch");
    let mut v = settings(Estimator::Variational, BnMode::Eval, 0);
    v.variational.epochs = 0;
    expect(estimate(p, &head(), &good, &v), "epochs");
    let f64_input = Batches(vec![FisherBatch {
        input: good.0[0].input.to_dtype(DType::F64).unwrap(),
        labels: None,
    }]);
    expect(estimate(p, &head(), &f64_input, &s), "dtype");
}
