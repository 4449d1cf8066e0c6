//! ResNet probes: conformance with torchvision, gradients against finite differences, stages,
//! strict loading and architecture detection.
//!
//! The weights are synthetic and deterministic: `synth` below fills every tensor from its name
//! and element index exactly as `tools/gen_resnet_fixture.py` does, so the PyTorch reference
//! outputs in `tests/data/resnet/*.safetensors` (a few hundred KB) stand in for the weights
//! (tens of MB) that would otherwise have to be shipped.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use task2vec::probe::resnet::{ResNet, ResNetArch};
use task2vec::probe::{BnMode, Forward, ParamKind, Probe};
use task2vec::Error;

// ---------------------------------------------------------------------------------------------
// The deterministic weights (mirror of `synth` in tools/gen_resnet_fixture.py).

/// 64-bit FNV-1a of the name.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Element `i` of the name's uniform stream in [0, 1): splitmix64 of `seed + i * golden`.
fn uniform(seed: u64, i: usize) -> f64 {
    let mut z = seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The float32 values of tensor `name` (its kind decided from the name and rank).
fn synth(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let seed = name_seed(name);
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let f: Box<dyn Fn(f64) -> f64> = if name == "input" {
        Box::new(|u| (u - 0.5) * 12f64.sqrt())
    } else if name == "fc.weight" {
        let s = (12.0 / shape[1] as f64).sqrt();
        Box::new(move |u| (u - 0.5) * s)
    } else if name == "fc.bias" {
        Box::new(|u| (u - 0.5) * 0.2)
    } else if shape.len() == 4 {
        let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
        let s = (24.0 / fan_in).sqrt();
        Box::new(move |u| (u - 0.5) * s)
    } else {
        match leaf {
            "weight" => Box::new(|u| 0.5 + 0.5 * u),
            "bias" | "running_mean" => Box::new(|u| (u - 0.5) * 0.2),
            "running_var" => Box::new(|u| 0.5 + u),
            other => panic!("no synthetic rule for {other}"),
        }
    };
    (0..n).map(|i| f(uniform(seed, i)) as f32).collect()
}

/// A complete torchvision state dict of synthetic weights (F32 on the CPU), with the
/// `num_batches_tracked` counters a real checkpoint has.
fn synthetic_state_dict(arch: ResNetArch, num_classes: usize) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (name, shape) in arch.checkpoint_shapes(num_classes) {
        let t = Tensor::from_vec(synth(&name, &shape), shape.as_slice(), &Device::Cpu).unwrap();
        if let Some(module) = name.strip_suffix(".running_var") {
            let counter = Tensor::new(0i64, &Device::Cpu).unwrap();
            out.insert(format!("{module}.num_batches_tracked"), counter);
        }
        out.insert(name, t);
    }
    out
}

fn synthetic_net(arch: ResNetArch, num_classes: usize, dtype: DType) -> ResNet {
    let sd = synthetic_state_dict(arch, num_classes);
    ResNet::from_tensors(arch, &sd, &Device::Cpu, dtype, "synthetic".into()).unwrap()
}

fn synthetic_input(batch: usize, size: usize, dtype: DType) -> Tensor {
    let shape = [batch, 3, size, size];
    Tensor::from_vec(synth("input", &shape), shape.as_slice(), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn labels(batch: usize, num_classes: usize) -> Tensor {
    let l: Vec<u32> = (0..batch)
        .map(|i| ((7 * i + 3) % num_classes) as u32)
        .collect();
    Tensor::from_vec(l, batch, &Device::Cpu).unwrap()
}

fn fixture_path(arch: ResNetArch) -> PathBuf {
    let p = common::root()
        .join("tests/data/resnet")
        .join(format!("{arch}.safetensors"));
    assert!(
        p.exists(),
        "{} missing: run tools/gen_resnet_fixture.py",
        p.display()
    );
    p
}

/// The fixture's tensors (as F64) and its `__metadata__`.
fn fixture(arch: ResNetArch) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = fixture_path(arch);
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F64).unwrap()))
        .collect();
    (tensors, meta)
}

/// max |a - b| / max |b|: the error relative to the reference's scale.
fn scaled_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape");
    let got = got.to_dtype(DType::F64).unwrap();
    let diff = (&got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    diff / scale.max(1e-30)
}

fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    candle_nn::loss::cross_entropy(logits, labels).unwrap()
}

fn forward(bn: BnMode) -> Forward {
    Forward { bn, grad: true }
}

// ---------------------------------------------------------------------------------------------
// (a) Conformance with PyTorch.

#[test]
fn synthetic_weights_match_the_python_generator() {
    let (fx, _) = fixture(ResNetArch::ResNet18);
    let sd = synthetic_state_dict(ResNetArch::ResNet18, 1000);
    for name in ["conv1.weight", "bn1.running_var", "fc.weight"] {
        let want = fx[&format!("synth.{name}")]
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got = sd[name]
            .flatten_all()
            .unwrap()
            .narrow(0, 0, want.len())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Bit-identical: both sides round the same float64 expression once to float32.
        assert_eq!(got, want, "{name}");
    }
}

/// Largest scaled error seen per quantity, over both sizes and both BN modes.
#[derive(Default, Debug)]
struct Errors {
    features: f64,
    logits: f64,
    loss: f64,
    grad_norms: f64,
    grads: f64,
    input_grad: f64,
}

fn compare_with_pytorch(
    arch: ResNetArch,
    num_classes: usize,
    dtype: DType,
    runs: &[(usize, BnMode)],
) -> Errors {
    let (fx, meta) = fixture(arch);
    let batch: usize = meta["batch"].parse().unwrap();
    assert_eq!(meta["num_classes"], num_classes.to_string());
    let net = synthetic_net(arch, num_classes, dtype);
    // Parameter order must be torchvision's `named_parameters()` order.
    let names: Vec<String> = serde_json::from_str(&meta["param_names"]).unwrap();
    let ours: Vec<&str> = net.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(ours, names);

    let mut e = Errors::default();
    let up = |slot: &mut f64, v: f64| *slot = slot.max(v);
    for &(size, bn) in runs {
        let x = Var::from_tensor(&synthetic_input(batch, size, dtype)).unwrap();
        {
            let mode = if bn == BnMode::Eval { "eval" } else { "train" };
            let key = |k: &str| format!("s{size}.{mode}.{k}");
            let fwd = forward(bn);
            let feats = net.features(x.as_tensor(), fwd).unwrap();
            let logits = net.classify(&feats, fwd).unwrap();
            let loss = cross_entropy(&logits, &labels(batch, num_classes));
            let grads = loss.backward().unwrap();
            up(&mut e.features, scaled_err(&feats, &fx[&key("features")]));
            up(&mut e.logits, scaled_err(&logits, &fx[&key("logits")]));
            up(
                &mut e.loss,
                scaled_err(&loss.reshape(1).unwrap(), &fx[&key("loss")]),
            );
            let norms: Vec<f64> = net
                .params()
                .iter()
                .map(|p| {
                    let g = grads
                        .get(p.var.as_tensor())
                        .expect("every parameter gets a gradient");
                    g.to_dtype(DType::F64)
                        .unwrap()
                        .sqr()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .sqrt()
                        .unwrap()
                        .to_scalar()
                        .unwrap()
                })
                .collect();
            let norms = Tensor::new(norms, &Device::Cpu).unwrap();
            // Per parameter, relative to that parameter's own norm.
            let want = &fx[&key("grad_norms")];
            let rel = ((&norms - want).unwrap().abs().unwrap() / want).unwrap();
            up(
                &mut e.grad_norms,
                rel.max_all().unwrap().to_scalar::<f64>().unwrap(),
            );
            for (k, want) in fx
                .iter()
                .filter(|(k, _)| k.starts_with(&key("grad.")) && !k.ends_with(".input"))
            {
                let name = k.strip_prefix(&key("grad.")).unwrap();
                let p = net.params().iter().find(|p| p.name == name).unwrap();
                let g = grads
                    .get(p.var.as_tensor())
                    .unwrap()
                    .narrow(0, 0, want.dim(0).unwrap())
                    .unwrap();
                up(&mut e.grads, scaled_err(&g, want));
            }
            let gx = grads
                .get(x.as_tensor())
                .unwrap()
                .get(0)
                .unwrap()
                .get(0)
                .unwrap();
            let gx = gx.narrow(0, 0, 16).unwrap().narrow(1, 0, 16).unwrap();
            up(&mut e.input_grad, scaled_err(&gx, &fx[&key("grad.input")]));
        }
    }
    eprintln!("{arch} {dtype:?} {runs:?} vs PyTorch (max error / max |reference|): {e:#?}");
    e
}

/// Asserts the forward quantities (features, logits, loss) within `forward` and the gradients
/// (norms, selected tensors, input) within `grad`.
fn assert_within(e: &Errors, forward: f64, grad: f64) {
    for (what, v, tol) in [
        ("features", e.features, forward),
        ("logits", e.logits, forward),
        ("loss", e.loss, forward),
        ("grad_norms", e.grad_norms, grad),
        ("grads", e.grads, grad),
        ("input_grad", e.input_grad, grad),
    ] {
        assert!(v <= tol, "{what}: scaled error {v:e} above {tol:e}");
    }
}

const EVAL_32: (usize, BnMode) = (32, BnMode::Eval);
const EVAL_64: (usize, BnMode) = (64, BnMode::Eval);
const TRAIN_32: (usize, BnMode) = (32, BnMode::Train);
const TRAIN_64: (usize, BnMode) = (64, BnMode::Train);

// Conditioning. At 32 px `layer4` runs at 1×1, so with BN in train mode each of its batch norms
// normalises two values per channel: the output is nearly ±1 whatever the inputs' difference,
// and rounding errors decide signs. PyTorch's own float32 logits differ from its float64 ones by
// 0.6 (scaled) there for ResNet-50, 1e-3 for ResNet-18. Likewise a float32 backward pass through
// ResNet-50 moves gradients by up to 3e-2 (scaled) in PyTorch itself, as ReLU and max-pool
// decisions flip. The float64 runs are therefore the strict test; the float32 runs check the
// float32 path at tolerances that such conditioning allows.

#[test]
fn resnet18_matches_pytorch_in_f64() {
    // The reference was computed in float64 and stored as float32, which bounds agreement at
    // ~6e-8 relative. Observed: at most 5e-8 for every quantity.
    let e = compare_with_pytorch(
        ResNetArch::ResNet18,
        1000,
        DType::F64,
        &[EVAL_32, EVAL_64, TRAIN_32, TRAIN_64],
    );
    assert_within(&e, 1e-6, 1e-6);
}

#[test]
fn resnet50_matches_pytorch_in_f64() {
    // Observed: at most 5e-8. (Eval at 64 px agrees as closely; at 32 px in train mode, the
    // ill-conditioned case above, float64 rounding alone reaches 2e-6. Both are left out to keep
    // the test fast; ResNet-18 covers all four runs.)
    let e = compare_with_pytorch(ResNetArch::ResNet50, 10, DType::F64, &[EVAL_32, TRAIN_64]);
    assert_within(&e, 1e-6, 1e-6);
}

#[test]
fn resnet18_matches_pytorch_in_f32() {
    // Observed: forward 1e-6, gradients 1.5e-6 (eval); forward 6e-6, gradients 1e-5 (train).
    let e = compare_with_pytorch(ResNetArch::ResNet18, 1000, DType::F32, &[EVAL_32, EVAL_64]);
    assert_within(&e, 1e-5, 1e-5);
    let e = compare_with_pytorch(ResNetArch::ResNet18, 1000, DType::F32, &[TRAIN_64]);
    assert_within(&e, 1e-4, 1e-4);
}

#[test]
fn resnet50_matches_pytorch_in_f32() {
    // Observed: forward 1.2e-6; gradients 2e-3 (PyTorch's own float32 run: 3e-2 at 64 px).
    let e = compare_with_pytorch(ResNetArch::ResNet50, 10, DType::F32, &[EVAL_32]);
    assert_within(&e, 1e-5, 1e-2);
}

// ---------------------------------------------------------------------------------------------
// (b) Gradients against central finite differences, in F64.

/// Deterministic sample of `k` indices in `0..n`.
fn sample(n: usize, k: usize, salt: u64) -> Vec<usize> {
    (0..k)
        .map(|i| (uniform(salt, i) * n as f64) as usize)
        .collect()
}

/// Step of the central differences. The truncation error is O(h²) and float64 rounding of the
/// loss (~7, so ~1e-15 absolute) contributes ~1e-10 to the quotient; a step moves a ReLU input
/// across zero, or reorders a max-pool window, only when one lies within ~1e-5 of the switch,
/// which none of the sampled coordinates do.
const FD_STEP: f64 = 1e-5;

/// `|analytic - numeric| <= FD_ATOL + FD_RTOL * |analytic|`.
const FD_ATOL: f64 = 1e-9;
const FD_RTOL: f64 = 1e-6;

fn loss_of(net: &ResNet, x: &Tensor, bn: BnMode, y: &Tensor) -> f64 {
    let logits = net.logits(x, Forward { bn, grad: false }).unwrap();
    cross_entropy(&logits, y).to_scalar::<f64>().unwrap()
}

fn central_difference(mut at: impl FnMut(f64) -> f64) -> f64 {
    (at(FD_STEP) - at(-FD_STEP)) / (2.0 * FD_STEP)
}

/// (what, analytic, numeric) for sampled coordinates of the named parameters and of the input.
fn finite_difference_pairs(
    net: &ResNet,
    x: &Tensor,
    y: &Tensor,
    bn: BnMode,
    params: &[(&str, usize)],
    input_samples: usize,
) -> Vec<(String, f64, f64)> {
    let xv = Var::from_tensor(x).unwrap();
    let loss = cross_entropy(&net.logits(xv.as_tensor(), forward(bn)).unwrap(), y);
    let grads = loss.backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let mut out = Vec::new();
    for &(name, k) in params {
        let p = net.params().iter().find(|p| p.name == name).unwrap();
        let grad = flat(grads.get(p.var.as_tensor()).unwrap());
        let shape = p.var.shape().clone();
        let original = flat(p.var.as_tensor());
        for i in sample(original.len(), k, name_seed(name)) {
            let numeric = central_difference(|delta| {
                let mut v = original.clone();
                v[i] += delta;
                p.var
                    .set(&Tensor::from_vec(v, &shape, &Device::Cpu).unwrap())
                    .unwrap();
                loss_of(net, x, bn, y)
            });
            out.push((format!("{name}[{i}] {bn:?}"), grad[i], numeric));
        }
        p.var
            .set(&Tensor::from_vec(original, &shape, &Device::Cpu).unwrap())
            .unwrap();
    }
    // The input gradient passes back through every block, the max-pool and the stem.
    let grad = flat(grads.get(xv.as_tensor()).unwrap());
    let original = flat(x);
    for i in sample(original.len(), input_samples, 7) {
        let numeric = central_difference(|delta| {
            let mut v = original.clone();
            v[i] += delta;
            loss_of(
                net,
                &Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap(),
                bn,
                y,
            )
        });
        out.push((format!("input[{i}] {bn:?}"), grad[i], numeric));
    }
    out
}

fn assert_pairs_agree(pairs: &[(String, f64, f64)]) -> (f64, String) {
    assert!(
        pairs.iter().filter(|(_, a, _)| a.abs() > 1e-6).count() > pairs.len() / 2,
        "most sampled gradients vanish, the test would be weak: {pairs:?}"
    );
    let mut worst = (0.0f64, String::new());
    for (what, analytic, numeric) in pairs {
        let err = (analytic - numeric).abs();
        let ratio = err / (FD_ATOL + FD_RTOL * analytic.abs());
        assert!(
            ratio <= 1.0,
            "{what}: analytic {analytic:e} vs numeric {numeric:e} (error {err:e})"
        );
        if ratio > worst.0 {
            worst = (
                ratio,
                format!("{what}: analytic {analytic:e}, numeric {numeric:e}"),
            );
        }
    }
    worst
}

#[test]
fn gradients_match_finite_differences_in_f64_bn_eval() {
    let net = synthetic_net(ResNetArch::ResNet18, 1000, DType::F64);
    let x = synthetic_input(2, 32, DType::F64);
    let params = [
        ("conv1.weight", 2),
        ("bn1.weight", 1),
        ("bn1.bias", 1),
        ("layer1.1.conv2.weight", 1),
        ("layer2.0.downsample.0.weight", 1),
        ("layer2.0.downsample.1.weight", 1),
        ("layer3.0.bn2.weight", 1),
        ("layer4.1.bn2.bias", 1),
        ("fc.weight", 1),
        ("fc.bias", 1),
    ];
    let pairs = finite_difference_pairs(&net, &x, &labels(2, 1000), BnMode::Eval, &params, 3);
    let worst = assert_pairs_agree(&pairs);
    eprintln!(
        "finite differences, BN eval: worst error / tolerance {:.3} at {}",
        worst.0, worst.1
    );
}

#[test]
fn gradients_match_finite_differences_in_f64_bn_train() {
    // 48 px, not 32: at 32 px `layer4` is 1×1 and its batch norms normalise two values per
    // channel, which makes the loss so curved that central differences are off by 1e-4
    // (relative) even at h = 1e-5. At 48 px `layer4` is 2×2 (eight values per channel).
    let net = synthetic_net(ResNetArch::ResNet18, 1000, DType::F64);
    let x = synthetic_input(2, 48, DType::F64);
    let params = [
        ("conv1.weight", 1),
        ("bn1.weight", 1),
        ("bn1.bias", 1),
        ("layer2.0.downsample.0.weight", 1),
        ("layer2.0.downsample.1.weight", 1),
        ("layer4.1.bn2.bias", 1),
    ];
    let pairs = finite_difference_pairs(&net, &x, &labels(2, 1000), BnMode::Train, &params, 2);
    let worst = assert_pairs_agree(&pairs);
    eprintln!(
        "finite differences, BN train: worst error / tolerance {:.3} at {}",
        worst.0, worst.1
    );
}

#[test]
fn max_pool_input_gradient_matches_finite_differences() {
    use task2vec::probe::resnet::max_pool_3x3_s2_p1;
    // Distinct values 1e-3 apart in a scrambled order: every window has a unique maximum with a
    // margin far above the step, so the pool is exactly linear around the point.
    let (n, c, h, w) = (2, 3, 9, 8);
    let len = n * c * h * w;
    let data: Vec<f64> = (0..len)
        .map(|i| ((i * 131) % len) as f64 * 1e-3 - 0.2)
        .collect();
    let r: Vec<f64> = (0..n * c * 5 * 4).map(|i| uniform(99, i) - 0.5).collect();
    let rt = Tensor::from_vec(r, (n, c, 5, 4), &Device::Cpu).unwrap();
    let f = |v: &[f64]| -> f64 {
        let x = Tensor::from_vec(v.to_vec(), (n, c, h, w), &Device::Cpu).unwrap();
        (max_pool_3x3_s2_p1(&x).unwrap() * &rt)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let x = Var::from_vec(data.clone(), (n, c, h, w), &Device::Cpu).unwrap();
    let y = (max_pool_3x3_s2_p1(x.as_tensor()).unwrap() * &rt)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y
        .backward()
        .unwrap()
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let mut nonzero = 0;
    for i in 0..len {
        let (mut p, mut m) = (data.clone(), data.clone());
        p[i] += FD_STEP;
        m[i] -= FD_STEP;
        let numeric = (f(&p) - f(&m)) / (2.0 * FD_STEP);
        assert!(
            (numeric - g[i]).abs() <= 1e-9,
            "element {i}: analytic {} numeric {numeric}",
            g[i]
        );
        nonzero += usize::from(g[i] != 0.0);
    }
    // Each of the 2*3*5*4 windows routes its gradient to one element.
    assert!(nonzero > 60, "only {nonzero} elements received gradient");
}

// ---------------------------------------------------------------------------------------------
// (c) Stages.

#[test]
fn starting_at_any_stage_gives_the_same_features() {
    let net = synthetic_net(ResNetArch::ResNet18, 1000, DType::F32);
    let x = synthetic_input(2, 32, DType::F32);
    let n = net.info().num_stages;
    assert_eq!(n, 9);
    for bn in [BnMode::Eval, BnMode::Train] {
        let fwd = Forward { bn, grad: false };
        let full = net.forward_stages(&x, 0, n, fwd).unwrap();
        assert_eq!(full.dims(), &[2, 512]);
        for k in 0..=n {
            let cached = net.forward_stages(&x, 0, k, fwd).unwrap();
            let rest = net.forward_stages(&cached, k, n, fwd).unwrap();
            let diff = (&rest - &full)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // The same operations on the same values: bit-identical.
            assert_eq!(diff, 0.0, "split at stage {k}, {bn:?}");
        }
    }
}

#[test]
fn a_32_pixel_input_reaches_layer4_at_1x1() {
    let net = synthetic_net(ResNetArch::ResNet18, 1000, DType::F32);
    let x = synthetic_input(1, 32, DType::F32);
    let fwd = Forward::INFERENCE;
    assert_eq!(
        net.forward_stages(&x, 0, 1, fwd).unwrap().dims(),
        &[1, 64, 8, 8]
    );
    // Stage 7 is layer4.0 (stages 0..8 run through it); its output is 1×1.
    assert_eq!(
        net.forward_stages(&x, 0, 8, fwd).unwrap().dims(),
        &[1, 512, 1, 1]
    );
    assert_eq!(net.forward_stages(&x, 0, 9, fwd).unwrap().dims(), &[1, 512]);
}

#[test]
fn params_follow_module_order_with_kinds_and_stages() {
    let net = synthetic_net(ResNetArch::ResNet50, 10, DType::F32);
    let info = net.info();
    assert_eq!(
        (
            info.arch.as_str(),
            info.feature_dim,
            info.num_classes,
            info.num_stages
        ),
        ("resnet50", 2048, 10, 17)
    );
    let p = net.params();
    assert_eq!(p.len(), 161);
    let find = |n: &str| p.iter().find(|q| q.name == n).unwrap();
    assert_eq!(
        (find("conv1.weight").kind, find("conv1.weight").stage),
        (ParamKind::Conv, Some(0))
    );
    assert_eq!(
        (find("bn1.bias").kind, find("bn1.bias").module.as_str()),
        (ParamKind::BnBias, "bn1")
    );
    let ds = find("layer1.0.downsample.0.weight");
    assert_eq!(
        (ds.kind, ds.stage, ds.module.as_str()),
        (ParamKind::Conv, Some(1), "layer1.0.downsample.0")
    );
    assert_eq!(find("layer4.2.bn3.weight").stage, Some(16));
    assert_eq!(
        (find("fc.weight").kind, find("fc.weight").stage),
        (ParamKind::ClassifierWeight, None)
    );
    // Stages never decrease along the list (the classifier excepted).
    let stages: Vec<usize> = p.iter().filter_map(|q| q.stage).collect();
    assert!(stages.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn out_of_range_stages_and_bad_inputs_are_errors() {
    let net = synthetic_net(ResNetArch::ResNet18, 1000, DType::F32);
    let x = synthetic_input(1, 32, DType::F32);
    assert!(matches!(
        net.forward_stages(&x, 0, 10, Forward::INFERENCE),
        Err(Error::Mismatch(_))
    ));
    assert!(matches!(
        net.forward_stages(&x, 3, 2, Forward::INFERENCE),
        Err(Error::Mismatch(_))
    ));
    let f64_input = x.to_dtype(DType::F64).unwrap();
    assert!(matches!(
        net.features(&f64_input, Forward::INFERENCE),
        Err(Error::Mismatch(_))
    ));
    let bad_features = Tensor::zeros((1, 100), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        net.classify(&bad_features, Forward::INFERENCE),
        Err(Error::Mismatch(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// (d) Strict loading, (e) architecture detection.

fn load_error(arch: ResNetArch, sd: &HashMap<String, Tensor>) -> String {
    match ResNet::from_tensors(arch, sd, &Device::Cpu, DType::F32, String::new()) {
        Ok(_) => panic!("{arch} accepted bad weights"),
        Err(e @ Error::Mismatch(_)) => e.to_string(),
        Err(other) => panic!("expected a mismatch error, got {other}"),
    }
}

#[test]
fn strict_loading_names_missing_wrong_and_unexpected_keys() {
    let arch = ResNetArch::ResNet18;
    let good = synthetic_state_dict(arch, 1000);

    let mut sd = good.clone();
    sd.remove("layer3.1.bn2.running_var");
    let msg = load_error(arch, &sd);
    assert!(
        msg.contains("missing") && msg.contains("`layer3.1.bn2.running_var`"),
        "{msg}"
    );

    let mut sd = good.clone();
    sd.insert(
        "layer2.0.downsample.0.weight".into(),
        Tensor::zeros((128, 64, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = load_error(arch, &sd);
    assert!(
        msg.contains("`layer2.0.downsample.0.weight` is [128, 64, 3, 3], expected [128, 64, 1, 1]"),
        "{msg}"
    );

    let mut sd = good.clone();
    sd.insert(
        "head.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = load_error(arch, &sd);
    assert!(
        msg.contains("unexpected") && msg.contains("`head.weight`"),
        "{msg}"
    );

    let mut sd = good.clone();
    sd.insert(
        "fc.weight".into(),
        Tensor::zeros((10, 2048), DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = load_error(arch, &sd);
    assert!(
        msg.contains("`fc.weight` is [10, 2048], expected [10, 512]"),
        "{msg}"
    );

    // ResNet-34 weights loaded as ResNet-18: unexpected blocks, and a hint.
    let msg = load_error(arch, &synthetic_state_dict(ResNetArch::ResNet34, 1000));
    assert!(
        msg.contains("unexpected: `layer1.2.") && msg.contains("look like resnet34"),
        "{msg}"
    );

    // The optional counters may be absent (checkpoints from before PyTorch 0.4.1).
    let mut sd = good.clone();
    sd.retain(|k, _| !k.ends_with("num_batches_tracked"));
    assert!(ResNet::from_tensors(arch, &sd, &Device::Cpu, DType::F32, String::new()).is_ok());

    // An integer target dtype is refused.
    assert!(ResNet::from_tensors(arch, &good, &Device::Cpu, DType::U8, String::new()).is_err());
}

#[test]
fn load_reads_a_safetensors_checkpoint_and_detects_the_variant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet18.safetensors");
    let sd = synthetic_state_dict(ResNetArch::ResNet18, 1000);
    candle_core::safetensors::save(&sd, &path).unwrap();

    let net = ResNet::load(&path, None, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(net.arch(), ResNetArch::ResNet18);
    let list = task2vec::probe::weights::read_tensors(&path).unwrap();
    assert_eq!(
        net.info().weights_sha256,
        task2vec::probe::weights::tensors_sha256(&list).unwrap()
    );
    assert_eq!(net.info().weights_sha256.len(), 64);

    let reference = synthetic_net(ResNetArch::ResNet18, 1000, DType::F32);
    let x = synthetic_input(1, 32, DType::F32);
    let a = net.logits(&x, Forward::INFERENCE).unwrap();
    let b = reference.logits(&x, Forward::INFERENCE).unwrap();
    assert_eq!(scaled_err(&a, &b.to_dtype(DType::F64).unwrap()), 0.0);

    // A wrong variant requested explicitly: a weights error naming the file.
    match ResNet::load(&path, Some(ResNetArch::ResNet50), &Device::Cpu, DType::F32) {
        Err(Error::Weights { path: p, what }) => {
            assert_eq!(p, path);
            assert!(what.contains("missing"), "{what}");
        }
        other => panic!("expected a weights error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn detects_each_variant_from_its_keys() {
    for arch in ResNetArch::ALL {
        let names: Vec<String> = arch
            .checkpoint_shapes(1000)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            ResNetArch::detect_from_names(names.iter().map(String::as_str)).unwrap(),
            arch
        );
    }
    let sd = synthetic_state_dict(ResNetArch::ResNet50, 10);
    assert_eq!(ResNetArch::detect(&sd).unwrap(), ResNetArch::ResNet50);

    // ResNet-101 (bottleneck [3, 4, 23, 3]) is not supported: a clear error, not a wrong guess.
    let mut names: Vec<String> = ResNetArch::ResNet50
        .checkpoint_shapes(1000)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.extend((6..23).map(|i| format!("layer3.{i}.conv1.weight")));
    let err = ResNetArch::detect_from_names(names.iter().map(String::as_str))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[3, 4, 23, 3]"), "{err}");

    // Keys of another network entirely.
    let err = ResNetArch::detect_from_names(["_conv_stem.weight", "_bn0.weight"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot detect"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Timing (not run by default): `cargo test --release --test resnet -- --ignored --nocapture`.

#[test]
#[ignore]
fn resnet18_forward_backward_timing() {
    let net = synthetic_net(ResNetArch::ResNet18, 1000, DType::F32);
    for size in [32, 224] {
        let x = synthetic_input(8, size, DType::F32);
        let y = labels(8, 1000);
        for bn in [BnMode::Eval, BnMode::Train] {
            let t0 = Instant::now();
            let loss = cross_entropy(&net.logits(&x, forward(bn)).unwrap(), &y);
            let t1 = Instant::now();
            let grads = loss.backward().unwrap();
            let t2 = Instant::now();
            let g = grads.get(net.params()[0].var.as_tensor()).unwrap();
            assert!(g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .is_finite());
            eprintln!(
                "resnet18 batch 8 at {size}x{size}, {bn:?}: forward {:.3}s, backward {:.3}s",
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64()
            );
        }
    }
}
