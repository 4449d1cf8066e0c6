//! EfficientNet-Lite0 in candle against PyTorch: forward conformance on ImageNet photos and on
//! the 64×64 MNIST fixture (every stage), gradients against finite differences in F64 (both
//! batch-norm modes, every parameter kind and convolution kind), `skip_layers` equivalence, and
//! the per-example Fisher diagonal of the PyTorch fixture.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{DType, Device, IndexOp, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use task2vec::probe::efficientnet_lite::EfficientNetLite0;
use task2vec::probe::ops::{conv2d_same, depthwise_conv2d, relu6};
use task2vec::probe::{weights, BnMode, Forward, ParamKind, Probe};
use task2vec::Error;

const EVAL_GRAD: Forward = Forward {
    bn: BnMode::Eval,
    grad: true,
};
const TRAIN_GRAD: Forward = Forward {
    bn: BnMode::Train,
    grad: true,
};

fn probe(dtype: DType) -> &'static EfficientNetLite0 {
    static F32: OnceLock<EfficientNetLite0> = OnceLock::new();
    static F64: OnceLock<EfficientNetLite0> = OnceLock::new();
    let cell = if dtype == DType::F64 { &F64 } else { &F32 };
    cell.get_or_init(|| {
        EfficientNetLite0::load(&common::efficientnet_lite0_pth(), &Device::Cpu, dtype)
            .expect("load weights")
    })
}

fn fixture(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(common::conformance(file), &Device::Cpu).expect("read fixture")
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    max_abs(&a.sub(&b).unwrap())
}

fn top5(row: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    idx.truncate(5);
    idx
}

#[test]
fn loads_the_checkpoint_with_names_kinds_and_stages_in_module_order() {
    let p = probe(DType::F32);
    let info = p.info();
    assert_eq!(
        (
            info.arch.as_str(),
            info.feature_dim,
            info.num_classes,
            info.num_stages
        ),
        ("efficientnet-lite0", 1280, 1000, 18)
    );
    assert_eq!(info.weights_sha256.len(), 64);

    let params = p.params();
    // Stem + 16 depthwise + 32 pointwise (15 expand, 16 project, head) convolutions, one BN
    // (weight and bias) after each, then the classifier's weight and bias.
    assert_eq!(params.len(), 49 + 49 * 2 + 2);
    assert_eq!(params[0].name, "_conv_stem.weight");
    assert_eq!(params[1].name, "_bn0.weight");
    assert_eq!(params[2].name, "_bn0.bias");
    assert_eq!(params[3].name, "_blocks.0._depthwise_conv.weight");
    assert_eq!(params.last().unwrap().name, "_fc.bias");

    // The Fisher layout lists every module with a weight, in PyTorch's named_modules() order.
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::conformance("fisher_layout.json")).unwrap())
            .unwrap();
    let modules = layout["modules"].as_array().unwrap();
    let weights: Vec<_> = params
        .iter()
        .filter(|q| q.name.ends_with(".weight") && q.stage.is_some())
        .collect();
    assert_eq!(weights.len(), modules.len());
    for (q, m) in weights.iter().zip(modules) {
        assert_eq!(q.name, m["param"].as_str().unwrap());
        assert_eq!(q.module, m["module"].as_str().unwrap());
        let shape: Vec<usize> = m["weight_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(q.var.dims(), shape.as_slice(), "{}", q.name);
        let kind = match m["kind"].as_str().unwrap() {
            "conv" => ParamKind::Conv,
            "depthwise" => ParamKind::Depthwise,
            "bn" => ParamKind::BnWeight,
            k => panic!("unknown kind {k}"),
        };
        assert_eq!(q.kind, kind, "{}", q.name);
    }
    // Every BN weight is followed by its bias; stages follow the blocks.
    for w in params.windows(2) {
        if w[0].kind == ParamKind::BnWeight {
            assert_eq!(w[1].kind, ParamKind::BnBias);
            assert_eq!(w[1].module, w[0].module);
        }
    }
    let stage_of = |name: &str| params.iter().find(|q| q.name == name).unwrap().stage;
    assert_eq!(stage_of("_bn0.bias"), Some(0));
    assert_eq!(stage_of("_blocks.0._project_conv.weight"), Some(1));
    assert_eq!(stage_of("_blocks.15._bn2.weight"), Some(16));
    assert_eq!(stage_of("_conv_head.weight"), Some(17));
    assert_eq!(stage_of("_bn1.bias"), Some(17));
    assert_eq!(stage_of("_fc.weight"), None);
    let fc: Vec<ParamKind> = params[params.len() - 2..].iter().map(|q| q.kind).collect();
    assert_eq!(
        fc,
        vec![ParamKind::ClassifierWeight, ParamKind::ClassifierBias]
    );
}

#[test]
fn strict_loading_names_the_missing_unexpected_or_misshapen_tensor() {
    let path = common::efficientnet_lite0_pth();
    let map = weights::read_tensor_map(&path).unwrap();
    let dev = Device::Cpu;
    let build = |m: &HashMap<String, Tensor>| {
        EfficientNetLite0::from_tensors(m, &dev, DType::F32, "x".into())
    };
    assert!(build(&map).is_ok());

    let mut missing = map.clone();
    missing.remove("_blocks.7._bn1.running_var");
    let e = build(&missing).unwrap_err();
    assert!(
        matches!(e, Error::Mismatch(_)) && e.to_string().contains("_blocks.7._bn1.running_var"),
        "{e}"
    );

    let mut extra = map.clone();
    extra.insert(
        "_blocks.16._expand_conv.weight".into(),
        Tensor::zeros(3, DType::F32, &dev).unwrap(),
    );
    let e = build(&extra).unwrap_err();
    assert!(
        e.to_string().contains("_blocks.16._expand_conv.weight"),
        "{e}"
    );

    let mut shape = map.clone();
    shape.insert(
        "_blocks.3._depthwise_conv.weight".into(),
        Tensor::zeros((144, 1, 3, 3), DType::F32, &dev).unwrap(),
    );
    let e = build(&shape).unwrap_err();
    assert!(
        e.to_string().contains("_blocks.3._depthwise_conv.weight")
            && e.to_string().contains("[144, 1, 5, 5]"),
        "{e}"
    );

    // Through `load`, the error is a weights error naming the file.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("wrong.safetensors");
    let mut only_fc = HashMap::new();
    only_fc.insert("_fc.weight".to_string(), map["_fc.weight"].clone());
    candle_core::safetensors::save(&only_fc, &bad).unwrap();
    let e = EfficientNetLite0::load(&bad, &dev, DType::F32).unwrap_err();
    assert!(
        matches!(e, Error::Weights { .. }) && e.to_string().contains("wrong.safetensors"),
        "{e}"
    );
}

/// Conformance A: eval-mode logits and features of 8 ImageNet photos against PyTorch.
/// Observed (F32): max |Δlogit| 1.4e-5, max |Δfeature| 1.1e-5.
#[test]
fn imagenet_logits_and_features_match_pytorch() {
    let fx = fixture("probe_forward.safetensors");
    let p = probe(DType::F32);
    let features = p.features(&fx["input"], Forward::INFERENCE).unwrap();
    let logits = p.classify(&features, Forward::INFERENCE).unwrap();
    let dl = max_abs_diff(&logits, &fx["logits"]);
    let df = max_abs_diff(&features, &fx["features"]);
    println!("max |Δlogit| = {dl:.3e}, max |Δfeature| = {df:.3e}");
    assert!(dl <= 1e-3, "max |Δlogit| = {dl}");
    assert!(df <= 1e-3, "max |Δfeature| = {df}");
    let ours = logits.to_vec2::<f32>().unwrap();
    let theirs = fx["logits"].to_vec2::<f32>().unwrap();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(top5(a), top5(b), "top-5 of row {i}");
    }
    // The shipped classifier gets the labels of these rows right except image 6 (MANIFEST).
    let labels = fx["labels"].to_vec1::<i64>().unwrap();
    let correct = ours
        .iter()
        .zip(&labels)
        .filter(|(r, &l)| top5(r)[0] == l as usize)
        .count();
    assert_eq!(correct, 7);
}

/// Conformance B trace: every stage's output for image 0 of the 64×64 MNIST fixture.
/// Observed (F32): worst stage max |Δ| / max |ref| = 3.8e-6 (block 4).
#[test]
fn every_stage_output_matches_the_pytorch_trace() {
    let fx = fixture("fisher.safetensors");
    let p = probe(DType::F32);
    let x = fx["input"].i(0..1).unwrap();
    let mut h = x;
    let mut worst = 0f64;
    for stage in 0..18 {
        h = p
            .forward_stages(&h, stage, stage + 1, Forward::INFERENCE)
            .unwrap();
        // Stage 0 → trace 02 (after ReLU6), blocks → 03..18, head → 22 (pooled features).
        let key = match stage {
            0 => "trace0.02".to_string(),
            17 => "trace0.22".to_string(),
            s => format!("trace0.{:02}", s + 2),
        };
        let r = &fx[&key];
        assert_eq!(h.dims(), r.dims(), "{key}");
        let rel = max_abs_diff(&h, r) / max_abs(r).max(1e-12);
        println!("stage {stage:2} ({key}): max |Δ| / max |ref| = {rel:.2e}");
        assert!(rel < 1e-4, "stage {stage} ({key}): {rel}");
        worst = worst.max(rel);
    }
    let head = fx["head.weight"].clone();
    let logits = h
        .matmul(&head.t().unwrap())
        .unwrap()
        .broadcast_add(&fx["head.bias"])
        .unwrap();
    assert!(max_abs_diff(&logits, &fx["trace0.23"]) < 1e-4);
    println!("worst stage: {worst:.2e}");
}

/// A reproducible tensor of normal deviates with standard deviation `std`.
fn normal(rng: &mut ChaCha8Rng, shape: impl Into<candle_core::Shape>, std: f64) -> Tensor {
    let shape = shape.into();
    let v: Vec<f64> = (0..shape.elem_count())
        .map(|_| {
            // Box–Muller from two uniforms in (0, 1].
            let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
            std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Runs the network from the image and returns a scalar loss touching every parameter:
/// fixed random weights on the features (a random linear head) plus on the shipped logits.
fn fd_loss(p: &EfficientNetLite0, x: &Tensor, fwd: Forward, a: &Tensor, u: &Tensor) -> Tensor {
    let f = p.features(x, fwd).unwrap();
    let logits = p.classify(&f, fwd).unwrap();
    let head = f.matmul(a).unwrap().sum_all().unwrap();
    let cls = logits.mul(u).unwrap().sum_all().unwrap();
    (head + cls).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Sets one coordinate of a variable, returning the old value.
fn poke(var: &Var, flat: usize, value: f64) -> f64 {
    let shape = var.shape().clone();
    let mut data = var.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let old = data[flat];
    data[flat] = value;
    var.set(&Tensor::from_vec(data, shape, &Device::Cpu).unwrap())
        .unwrap();
    old
}

/// Backward (c): analytic gradients against central differences in F64, for coordinates of
/// every parameter kind and every convolution kind, in both BN modes. The input is 34×34, so
/// the stem pads asymmetrically and the later stride-2 layers see odd sizes.
/// Tolerance |fd − g| ≤ 1e-6·|g| + 1e-8·max|g|; observed worst 0.2× (eval) and 0.5× (train)
/// of it, and at most 0.8× over ten input seeds.
#[test]
fn gradients_match_finite_differences_in_both_bn_modes() {
    // A private copy: the difference quotients change weights in place, which must not race
    // with the tests sharing `probe(F64)`.
    let own = EfficientNetLite0::load(&common::efficientnet_lite0_pth(), &Device::Cpu, DType::F64)
        .expect("load weights");
    let p = &own;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x = normal(&mut rng, (2, 3, 34, 34), 1.5);
    let a = normal(&mut rng, (1280, 3), 1.0 / 1280f64.sqrt());
    let u = normal(&mut rng, (2, 1000), 0.01);
    let names = [
        "_conv_stem.weight", // dense 3×3 stride 2
        "_bn0.weight",
        "_bn0.bias",
        "_blocks.0._depthwise_conv.weight", // depthwise 3×3 stride 1, no expansion
        "_blocks.1._expand_conv.weight",    // 1×1
        "_blocks.1._depthwise_conv.weight", // depthwise 3×3 stride 2
        "_blocks.3._depthwise_conv.weight", // depthwise 5×5 stride 2
        "_blocks.4._depthwise_conv.weight", // depthwise 5×5 stride 1
        "_blocks.4._bn1.weight",
        "_blocks.4._bn1.bias",
        "_blocks.10._project_conv.weight", // 1×1 into a residual
        "_blocks.15._bn2.weight",
        "_conv_head.weight",
        "_bn1.weight",
        "_bn1.bias",
        "_fc.weight",
        "_fc.bias",
    ];
    // |fd − g| ≤ RTOL·|g| + ATOL·max|g|: ATOL covers the difference quotient's rounding floor
    // (ε·|loss|/h ≈ 1e-9 here), which dominates for tiny entries.
    const RTOL: f64 = 1e-6;
    const ATOL: f64 = 1e-8;
    for fwd in [EVAL_GRAD, TRAIN_GRAD] {
        let loss = fd_loss(p, &x, fwd, &a, &u);
        let grads = loss.backward().unwrap();
        let mut worst = 0f64;
        for name in names {
            let param = p.params().iter().find(|q| q.name == name).unwrap();
            let g = grads
                .get(param.var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let gv = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let scale = gv.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{name}: gradient is all zero in {:?}", fwd.bn);
            // The largest entry plus three random ones.
            let argmax = gv
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
                .unwrap()
                .0;
            let mut coords = vec![argmax];
            coords.extend((0..3).map(|_| rng.random_range(0..gv.len())));
            for c in coords {
                // A step that carries some ReLU6 input across 0 or 6 spoils the difference
                // quotient (the network has ~10⁵ such kinks), so try a few steps: a correct
                // gradient agrees with at least one, a wrong one with none.
                let mut best = f64::INFINITY;
                let mut fd_best = f64::NAN;
                for h in [1e-6, 3e-7, 1e-7] {
                    let old = poke(&param.var, c, 0.0);
                    poke(&param.var, c, old + h);
                    let lp = scalar(&fd_loss(p, &x, Forward { grad: false, ..fwd }, &a, &u));
                    poke(&param.var, c, old - h);
                    let lm = scalar(&fd_loss(p, &x, Forward { grad: false, ..fwd }, &a, &u));
                    poke(&param.var, c, old);
                    let fd = (lp - lm) / (2.0 * h);
                    // Relative to the allowed error: 1 means exactly at the tolerance.
                    let err = (fd - gv[c]).abs() / (RTOL * gv[c].abs() + ATOL * scale);
                    if err < best {
                        (best, fd_best) = (err, fd);
                    }
                    if best <= 1.0 {
                        break;
                    }
                }
                worst = worst.max(best);
                assert!(
                    best <= 1.0,
                    "{name}[{c}] {:?}: fd {fd_best:e} vs analytic {:e} ({best:.2} × tolerance)",
                    fwd.bn,
                    gv[c]
                );
            }
        }
        println!("{:?}: worst error {worst:.2} × tolerance", fwd.bn);
    }
}

/// Central-difference check of an operation's gradient with respect to one input tensor.
fn check_op_fd(
    rng: &mut ChaCha8Rng,
    f: &dyn Fn(&Tensor, &Tensor) -> Tensor,
    x: &Var,
    k: &Var,
    tol: f64,
) -> f64 {
    let y0 = f(x.as_tensor(), k.as_tensor());
    let wts = normal(rng, y0.dims(), 1.0);
    let loss = |x: &Tensor, k: &Tensor| scalar(&f(x, k).mul(&wts).unwrap().sum_all().unwrap());
    let grads = y0.mul(&wts).unwrap().sum_all().unwrap().backward().unwrap();
    let h = 1e-6;
    let mut worst = 0f64;
    for var in [x, k] {
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (c, &gc) in g.iter().enumerate() {
            let old = poke(var, c, 0.0);
            poke(var, c, old + h);
            let lp = loss(x.as_tensor(), k.as_tensor());
            poke(var, c, old - h);
            let lm = loss(x.as_tensor(), k.as_tensor());
            poke(var, c, old);
            let fd = (lp - lm) / (2.0 * h);
            let err = (fd - gc).abs() / (1.0 + gc.abs());
            worst = worst.max(err);
            assert!(err < tol, "coordinate {c}: fd {fd:e} vs analytic {:e}", gc);
        }
    }
    worst
}

/// The depthwise operation's input and kernel gradients, every coordinate, against central
/// differences: 3×3 and 5×5, strides 1 and 2, even and odd sizes (asymmetric padding).
/// The operation is linear in each argument, so only rounding separates the two: observed 1e-9.
#[test]
fn depthwise_op_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (k, s, h, w) in [
        (3, 1, 6, 5),
        (3, 2, 6, 7),
        (5, 1, 5, 6),
        (5, 2, 8, 7),
        (5, 2, 3, 2),
    ] {
        let x = Var::from_tensor(&normal(&mut rng, (2, 3, h, w), 1.0)).unwrap();
        let kern = Var::from_tensor(&normal(&mut rng, (3, 1, k, k), 1.0)).unwrap();
        let y = depthwise_conv2d(x.as_tensor(), kern.as_tensor(), s).unwrap();
        assert_eq!(y.dims(), &[2, 3, h.div_ceil(s), w.div_ceil(s)]);
        let worst = check_op_fd(
            &mut rng,
            &|x, k| depthwise_conv2d(x, k, s).unwrap(),
            &x,
            &kern,
            1e-7,
        );
        println!("depthwise {k}x{k} s{s} {h}x{w}: worst {worst:.1e}");
    }
    // The stem's dense convolution, stride 2, odd and even sizes.
    for (h, w) in [(7, 6), (8, 8)] {
        let x = Var::from_tensor(&normal(&mut rng, (2, 3, h, w), 1.0)).unwrap();
        let kern = Var::from_tensor(&normal(&mut rng, (4, 3, 3, 3), 1.0)).unwrap();
        check_op_fd(
            &mut rng,
            &|x, k| conv2d_same(x, k, 2).unwrap(),
            &x,
            &kern,
            1e-7,
        );
    }
}

/// The depthwise forward by the definition (zero padding top/left = `total / 2`), checked at
/// one hand-made case where asymmetric and symmetric padding differ.
#[test]
fn depthwise_padding_is_tensorflow_same() {
    let dev = Device::Cpu;
    // 4×4 input, 3×3 kernel of ones, stride 2: SAME pads 0 before and 1 after, so output (0, 0)
    // sums rows 0..=1 and columns 0..=1 only; symmetric padding 1 would start at row -1 too.
    let x = Tensor::arange(0f32, 16.0, &dev)
        .unwrap()
        .reshape((1, 1, 4, 4))
        .unwrap();
    let k = Tensor::ones((1, 1, 3, 3), DType::F32, &dev).unwrap();
    let y = depthwise_conv2d(&x, &k, 2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // (0,0): rows 0-2, cols 0-2 = 0+1+2+4+5+6+8+9+10 = 45; (0,1): cols 2-3 = 2+3+6+7+10+11 = 39;
    // (1,0): rows 2-3, cols 0-2 = 8+9+10+12+13+14 = 66; (1,1): 10+11+14+15 = 50.
    assert_eq!(y, vec![45.0, 39.0, 66.0, 50.0]);
}

/// ReLU6's derivative is PyTorch's: 1 strictly inside (0, 6), 0 at exactly 0 and 6.
#[test]
fn relu6_derivative_is_zero_at_the_kinks() {
    let dev = Device::Cpu;
    let x = Var::new(&[-0.5f64, 0.0, 0.25, 5.999, 6.0, 6.5][..], &dev).unwrap();
    let y = relu6(x.as_tensor()).unwrap();
    assert_eq!(
        y.to_vec1::<f64>().unwrap(),
        vec![0.0, 0.0, 0.25, 5.999, 6.0, 6.0]
    );
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(
        g.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap(),
        vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    );
}

/// `skip_layers`: running stages 0..k, caching, then k..18 gives the same features.
#[test]
fn split_forward_equals_the_full_forward() {
    let p = probe(DType::F32);
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (size, fwd) in [
        (64, Forward::INFERENCE),
        (
            65,
            Forward {
                bn: BnMode::Train,
                grad: false,
            },
        ),
    ] {
        let x = normal(&mut rng, (2, 3, size, size), 1.0)
            .to_dtype(DType::F32)
            .unwrap();
        let full = p.forward_stages(&x, 0, 18, fwd).unwrap();
        assert_eq!(full.dims(), &[2, 1280]);
        for k in [1, 2, 5, 12, 17, 18] {
            let mid = p.forward_stages(&x, 0, k, fwd).unwrap();
            let rest = p.forward_stages(&mid, k, 18, fwd).unwrap();
            assert_eq!(max_abs_diff(&rest, &full), 0.0, "split at {k}, size {size}");
        }
    }
    // Misuse is an error, not a panic.
    let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &dev).unwrap();
    assert!(p.forward_stages(&x, 3, 18, Forward::INFERENCE).is_err());
    assert!(p.forward_stages(&x, 0, 19, Forward::INFERENCE).is_err());
    assert!(p
        .forward_stages(&x.to_dtype(DType::F64).unwrap(), 0, 18, Forward::INFERENCE)
        .is_err());
}

/// Fisher (e): the per-example eval-mode Fisher diagonal, F = mean_i (∂ CE_i / ∂θ)², of the
/// 64 MNIST images equals PyTorch's for every stored parameter (|Δ| ≤ 1e-2·|ref| + 1e-5·max).
/// Observed (F32) max |Δ| / max |ref| per tensor: 5e-7 to 5.4e-5 (`_bn0.bias`), PyTorch's own
/// f32-vs-f64 spread being 1e-6 to 1e-5.
#[test]
fn per_example_fisher_matches_pytorch() {
    let fx = fixture("fisher.safetensors");
    let p = probe(DType::F32);
    let dev = Device::Cpu;
    let head_w = Var::from_tensor(&fx["head.weight"]).unwrap();
    let head_b = Var::from_tensor(&fx["head.bias"]).unwrap();
    let labels = fx["sampled_labels"].to_vec1::<i64>().unwrap();
    let targets: Vec<(&str, Tensor)> = fx
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("per_example_bn_eval.diag.")
                .map(|n| (n, v.clone()))
        })
        .collect();
    assert_eq!(targets.len(), 14);
    let var_of = |name: &str| -> Var {
        match name {
            "_fc.weight" => head_w.clone(),
            "_fc.bias" => head_b.clone(),
            n => p.params().iter().find(|q| q.name == n).unwrap().var.clone(),
        }
    };
    let mut acc: HashMap<&str, Tensor> = targets
        .iter()
        .map(|(n, t)| (*n, Tensor::zeros(t.dims(), DType::F32, &dev).unwrap()))
        .collect();
    for (i, &label) in labels.iter().enumerate() {
        let x = fx["input"].i(i..i + 1).unwrap();
        let f = p.features(&x, EVAL_GRAD).unwrap();
        let logits = f
            .matmul(&head_w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(head_b.as_tensor())
            .unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let ce = logp.i((0, label as usize)).unwrap().neg().unwrap();
        let grads = ce.backward().unwrap();
        for (n, a) in acc.iter_mut() {
            let g = grads.get(var_of(n).as_tensor()).unwrap();
            *a = a.add(&g.sqr().unwrap()).unwrap();
        }
    }
    for (n, reference) in &targets {
        let ours = (acc[n].clone() / labels.len() as f64).unwrap();
        let max_ref = max_abs(reference);
        let diff = ours.sub(reference).unwrap().abs().unwrap();
        let bound = ((reference.abs().unwrap() * 1e-2).unwrap() + 1e-5 * max_ref).unwrap();
        let excess = max_abs(&diff.sub(&bound).unwrap().relu().unwrap());
        println!(
            "{n}: max |Δ| / max |ref| = {:.2e}",
            max_abs(&diff) / max_ref
        );
        assert_eq!(excess, 0.0, "{n}: Fisher diagonal differs from PyTorch's");
    }
}

/// A non-square 70×65 input, where "SAME" padding changes between layers and axes (rows
/// 70→35→18→9→5→3 alternate asymmetric and symmetric padding, columns 65→33→17→9→5→3 are
/// symmetric), against PyTorch in float64 (`tools/gen_efficientnet_odd_fixture.py`): features,
/// logits, the cross-entropy loss and the gradients of six parameters, in both BN modes.
/// Observed (F64): worst max |Δ| / max |ref| 5e-8 (the fixture's float32 rounding).
#[test]
fn non_square_input_matches_pytorch_forward_and_backward() {
    let path = common::root().join("tests/data/efficientnet_lite0_70x65.safetensors");
    let fx = candle_core::safetensors::load(&path, &Device::Cpu).expect("read 70x65 fixture");
    let p = probe(DType::F64);
    let x = fx["input"].to_dtype(DType::F64).unwrap();
    let labels = [3usize, 7];
    let rel = |ours: &Tensor, reference: &Tensor| {
        max_abs_diff(ours, reference) / max_abs(reference).max(1e-30)
    };
    for (mode, bn) in [("eval", BnMode::Eval), ("train", BnMode::Train)] {
        let fwd = Forward { bn, grad: true };
        let f = p.features(&x, fwd).unwrap();
        let logits = p.classify(&f, fwd).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let picked: Vec<Tensor> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| logp.i((i, l)).unwrap())
            .collect();
        let loss = (Tensor::stack(&picked, 0).unwrap().sum_all().unwrap() * (-0.5)).unwrap();
        let grads = loss.backward().unwrap();

        let mut worst = rel(&f, &fx[&format!("{mode}.features")])
            .max(rel(&logits, &fx[&format!("{mode}.logits")]));
        let ref_loss = fx[&format!("{mode}.loss")].to_vec1::<f64>().unwrap()[0];
        let our_loss = scalar(&loss);
        assert!(
            (our_loss - ref_loss).abs() <= 1e-9 * ref_loss.abs(),
            "{mode}: loss {our_loss} vs {ref_loss}"
        );
        let prefix = format!("{mode}.grad.");
        let mut checked = 0;
        for (key, reference) in fx.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            let name = &key[prefix.len()..];
            let param = p.params().iter().find(|q| q.name == name).unwrap();
            let g = grads.get(param.var.as_tensor()).unwrap();
            let r = rel(g, reference);
            assert!(
                r < 1e-5,
                "{mode}: gradient of {name} differs (max |Δ| / max |ref| = {r:e})"
            );
            worst = worst.max(r);
            checked += 1;
        }
        assert_eq!(checked, 6);
        println!("{mode}: worst max |Δ| / max |ref| = {worst:.1e}");
        assert!(worst < 1e-5, "{mode}: {worst}");
    }
}
