//! The head-fitting recipe against PyTorch: the same initial `nn.Linear`, features and
//! mini-batches through `torch.optim.Adam(weight_decay=..)` (coupled L2) and through
//! `task2vec::head::fit_head_on_batches` must end at the same weights. The fixture and the
//! script that made it: `tests/data/head/adam_head.safetensors`, `tools/gen_head_fixture.py`.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use task2vec::fisher::Head;
use task2vec::head::{fit_head_on_batches, HeadSettings};

fn fixture() -> HashMap<String, Tensor> {
    let path = common::root().join("tests/data/head/adam_head.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu).expect("read the head fixture")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b)
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

fn fit(fx: &HashMap<String, Tensor>, weight_decay: f64) -> (Tensor, Tensor, Vec<f64>) {
    let labels: Vec<usize> = fx["labels"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|y| y as usize)
        .collect();
    let epochs: Vec<Vec<Vec<usize>>> = fx["batches"]
        .to_vec3::<i64>()
        .unwrap()
        .into_iter()
        .map(|epoch| {
            epoch
                .into_iter()
                .map(|b| b.into_iter().map(|i| i as usize).collect())
                .collect()
        })
        .collect();
    let head = Head {
        weight: Var::from_tensor(&fx["weight0"]).unwrap(),
        bias: Var::from_tensor(&fx["bias0"]).unwrap(),
    };
    let settings = HeadSettings {
        lr: 0.01,
        weight_decay,
        ..HeadSettings::default()
    };
    let fitted = fit_head_on_batches(
        &head,
        &fx["features"],
        &labels,
        &settings,
        epochs,
        &mut |_| {},
    )
    .unwrap();
    (
        fitted.head.weight.as_tensor().clone(),
        fitted.head.bias.as_tensor().clone(),
        fitted.epoch_losses,
    )
}

#[test]
fn adam_with_coupled_weight_decay_matches_pytorch() {
    let fx = fixture();
    let (w, b, losses) = fit(&fx, 0.1);
    assert_eq!(w.dtype(), DType::F32);
    // 15 Adam steps in f32 on both sides: agreement to rounding.
    let (dw, db) = (
        max_abs_diff(&w, &fx["weight"]),
        max_abs_diff(&b, &fx["bias"]),
    );
    assert!(dw < 2e-6 && db < 2e-6, "weight {dw}, bias {db}");
    let want = fx["epoch_losses"].to_vec1::<f32>().unwrap();
    for (got, want) in losses.iter().zip(&want) {
        assert!(
            (got - f64::from(*want)).abs() < 1e-5,
            "{losses:?} vs {want}"
        );
    }
    // The weights moved far more than the tolerance, so the comparison means something.
    assert!(max_abs_diff(&w, &fx["weight0"]) > 0.05);
}

#[test]
fn a_different_weight_decay_is_detected() {
    // Without the decay the run ends elsewhere: the fixture pins the decay's effect down.
    let fx = fixture();
    let (w, _, _) = fit(&fx, 0.0);
    assert!(max_abs_diff(&w, &fx["weight"]) > 1e-4);
}
