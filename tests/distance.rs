//! Task2Vec distances against the reference (awslabs task_similarity.py + scipy 1.10).
//!
//! Fixture: `distances.safetensors` (MANIFEST.md section C): the reference embeddings of five
//! tasks (two MNIST halves, Fashion-MNIST tops and footwear, MNIST with random labels = t0) and
//! every distance matrix the reference computes from them, on the `full` embeddings (about 300
//! exact zeros each) and on the `nz` restriction (coordinates positive in all five).

mod common;

use std::sync::OnceLock;

use safetensors::{Dtype, SafeTensors};
use task2vec::distance::{
    cdist, d_asym, d_sym, distance, pdist, Distance, DistanceOptions, EmbeddingView, ZeroPolicy,
};
use task2vec::Error;

const TASKS: usize = 5;
const LEN: usize = 42016;
const ALPHA: f64 = 0.15;
const TRIVIAL: usize = 4;

fn fixture_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let path = common::conformance("distances.safetensors");
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    })
}

/// A tensor of the fixture as raw little-endian bytes, after checking dtype and shape.
fn tensor(name: &str, dtype: Dtype, shape: &[usize]) -> &'static [u8] {
    let st = SafeTensors::deserialize(fixture_bytes()).expect("valid safetensors");
    let view = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    assert_eq!(view.dtype(), dtype, "{name} dtype");
    assert_eq!(view.shape(), shape, "{name} shape");
    view.data()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A reference matrix (F64, [5, 5]), row-major.
fn matrix(name: &str) -> Vec<f64> {
    tensor(name, Dtype::F64, &[TASKS, TASKS])
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// The five embeddings of one fixture set (`full` or `nz`): hessians and scales.
struct Set {
    hessians: Vec<Vec<f32>>,
    scales: Vec<Vec<f32>>,
}

impl Set {
    fn views(&self) -> Vec<EmbeddingView<'_>> {
        self.hessians
            .iter()
            .zip(&self.scales)
            .map(|(h, s)| EmbeddingView::with_scale(h, s))
            .collect()
    }
}

fn full_set() -> Set {
    let rows = |name: &str| -> Vec<Vec<f32>> {
        f32s(tensor(name, Dtype::F32, &[TASKS, LEN]))
            .chunks_exact(LEN)
            .map(<[f32]>::to_vec)
            .collect()
    };
    Set {
        hessians: rows("embeddings.hessian"),
        scales: rows("embeddings.scale"),
    }
}

/// `hessian[:, nz_mask == 1]`, keeping order, as the fixture's `nz` set is built.
fn nz_set() -> Set {
    let mask = tensor("nz_mask", Dtype::U8, &[LEN]);
    let full = full_set();
    let restrict = |rows: &[Vec<f32>]| -> Vec<Vec<f32>> {
        rows.iter()
            .map(|r| {
                r.iter()
                    .zip(mask)
                    .filter(|(_, &m)| m == 1)
                    .map(|(&x, _)| x)
                    .collect()
            })
            .collect()
    };
    let set = Set {
        hessians: restrict(&full.hessians),
        scales: restrict(&full.scales),
    };
    assert_eq!(set.hessians[0].len(), 41668, "nz_mask count (MANIFEST)");
    set
}

fn set(name: &str) -> Set {
    match name {
        "full" => full_set(),
        "nz" => nz_set(),
        other => panic!("unknown fixture set {other}"),
    }
}

/// Checks `ours` against the reference matrix `key`: NaN exactly where the reference has NaN,
/// elsewhere `|ours − ref| ≤ rtol·|ref| + atol`. Returns the largest relative error over the
/// non-zero finite entries.
fn assert_matches(key: &str, ours: &[Vec<f64>], expected: &[f64], rtol: f64, atol: f64) -> f64 {
    let mut worst: f64 = 0.0;
    for i in 0..TASKS {
        for j in 0..TASKS {
            let (a, e) = (ours[i][j], expected[i * TASKS + j]);
            assert_eq!(
                a.is_nan(),
                e.is_nan(),
                "{key}[{i},{j}]: ours {a}, reference {e} (NaN position differs)"
            );
            if e.is_nan() {
                continue;
            }
            assert!(
                (a - e).abs() <= rtol * e.abs() + atol,
                "{key}[{i},{j}]: ours {a}, reference {e}, rel err {:e}",
                ((a - e) / e).abs()
            );
            if e != 0.0 {
                worst = worst.max(((a - e) / e).abs());
            }
        }
    }
    worst
}

/// Every `{set}.{pdist,cdist}.{prec}.{dist}` matrix under `ZeroPolicy::Reference`; returns the
/// largest relative error seen.
fn check_reference_matrices(set_name: &str, prec: &str, rtol: f64, atol: f64) -> f64 {
    let data = set(set_name);
    let views = data.views();
    let opts = DistanceOptions::reference();
    let mut worst: f64 = 0.0;
    for kind in Distance::ALL {
        let key = format!("{set_name}.pdist.{prec}.{kind}");
        let ours = pdist(kind, &views, &opts).expect("reference never fails on equal lengths");
        worst = worst.max(assert_matches(&key, &ours, &matrix(&key), rtol, atol));
        let key = format!("{set_name}.cdist.{prec}.{kind}");
        let ours = cdist(kind, &views, &views, &opts).expect("reference never fails");
        worst = worst.max(assert_matches(&key, &ours, &matrix(&key), rtol, atol));
    }
    println!("{set_name} {prec}: max rel err {worst:e}");
    worst
}

// Observed max relative error against the f64 keys: 4.2e-13 on `full`, 6.6e-12 on `nz`
// (tolerance rtol 1e-6; atol 1e-15 only for the reference's exact zeros). NaN positions are
// identical: kl, asymmetric_kl, jsd and correlation are NaN off the pdist diagonal on `full`,
// normalized_cosine is the clamped silent 0.
#[test]
fn reference_policy_reproduces_every_full_set_matrix() {
    let worst = check_reference_matrices("full", "f64", 1e-6, 1e-15);
    assert!(worst < 1e-6);
}

#[test]
fn reference_policy_reproduces_every_nz_set_matrix() {
    let worst = check_reference_matrices("nz", "f64", 1e-6, 1e-15);
    assert!(worst < 1e-6);
}

// The reference really runs in float32. Our f64 maths against its f32 keys, rtol 1e-4 as
// MANIFEST suggests: observed max relative error 1.5e-5 on `full`, 1.1e-4 on `nz`, the latter
// on the cdist entropy diagonal (8.4e-4), which is `ln 2 − mean(H)` with `mean(H) ≈ ln 2`
// rounded to float32 by the reference: an absolute error of ~1e-7 there. atol 5e-7 allows
// exactly that float32 resolution.
#[test]
fn f64_maths_stays_close_to_the_float32_reference() {
    for set_name in ["full", "nz"] {
        let worst = check_reference_matrices(set_name, "f32", 1e-4, 5e-7);
        assert!(worst < 2e-4, "{set_name}: {worst:e}");
    }
}

// `d_asym` under the default policy equals the reference on valid embeddings, zeros included:
// observed max rel err 1.1e-13 on both sets (rtol 1e-6).
#[test]
fn d_asym_reproduces_the_fixture_with_random_labels_as_trivial_task() {
    for set_name in ["full", "nz"] {
        let data = set(set_name);
        let h = &data.hessians;
        let ours: Vec<Vec<f64>> = (0..TASKS)
            .map(|i| {
                (0..TASKS)
                    .map(|j| d_asym(&h[i], &h[j], &h[TRIVIAL], ALPHA).expect("valid embeddings"))
                    .collect()
            })
            .collect();
        let key = format!("{set_name}.d_asym.f64");
        let worst = assert_matches(&key, &ours, &matrix(&key), 1e-6, 1e-15);
        println!("{key}: max rel err {worst:e}");
    }
}

#[test]
fn default_policy_gives_finite_values_for_every_distance_on_the_full_set() {
    let data = full_set();
    let views = data.views();
    let opts = DistanceOptions::default();
    for kind in Distance::ALL {
        let m = cdist(kind, &views, &views, &opts).expect("default policy answers");
        for (i, row) in m.iter().enumerate() {
            for (j, d) in row.iter().enumerate() {
                assert!(d.is_finite(), "{kind}[{i},{j}] = {d}");
                if i != j {
                    assert!(*d != 0.0, "{kind}[{i},{j}] is a silent 0");
                }
            }
        }
    }
}

#[test]
fn default_d_sym_equals_the_reference_cosine_with_zeros_present() {
    let data = full_set();
    let views = data.views();
    let ours = pdist(Distance::Cosine, &views, &DistanceOptions::default()).expect("valid");
    let key = "full.pdist.f64.cosine";
    assert_matches(key, &ours, &matrix(key), 1e-12, 0.0);
}

/// Reference `entropy` adds `ln 2` for every filter dead in both tasks; the default drops those
/// filters and averages over the rest. With `S` the summed binary entropy, which dead filters
/// do not change: `(ln 2 − reference)·n = S = (ln 2 − default)·m`.
#[test]
fn default_entropy_leaves_out_filters_dead_in_both_tasks() {
    let data = full_set();
    let ln2 = std::f64::consts::LN_2;
    for (i, j) in [(0, 0), (0, 1), (2, 3), (4, 1)] {
        let (a, b) = (&data.hessians[i], &data.hessians[j]);
        let alive = a
            .iter()
            .zip(b)
            .filter(|(x, y)| **x > 0.0 || **y > 0.0)
            .count();
        assert!(
            alive < LEN,
            "the fixture has filters dead in both tasks {i}, {j}"
        );
        let (va, vb) = (EmbeddingView::new(a), EmbeddingView::new(b));
        let reference =
            distance(Distance::Entropy, va, vb, &DistanceOptions::reference()).expect("ok");
        let default = distance(Distance::Entropy, va, vb, &DistanceOptions::default()).expect("ok");
        assert!(default < reference, "({i},{j}): {default} vs {reference}");
        let s_ref = (ln2 - reference) * LEN as f64;
        let s_def = (ln2 - default) * alive as f64;
        assert!(
            ((s_ref - s_def) / s_ref).abs() < 1e-9,
            "({i},{j}): {s_ref} vs {s_def}"
        );
    }
}

/// Under the default, a variance-based distance is the reference value on the coordinates where
/// both Fisher entries are positive.
#[test]
fn default_variance_distances_use_the_pairs_common_support() {
    let data = full_set();
    let (a, b) = (&data.hessians[0], &data.hessians[3]);
    let (ra, rb): (Vec<f32>, Vec<f32>) = a
        .iter()
        .zip(b)
        .filter(|(x, y)| **x > 0.0 && **y > 0.0)
        .map(|(x, y)| (*x, *y))
        .unzip();
    assert!(ra.len() < LEN);
    for kind in [
        Distance::NormalizedCosine,
        Distance::Correlation,
        Distance::Kl,
        Distance::AsymmetricKl,
        Distance::Jsd,
    ] {
        let default = distance(
            kind,
            EmbeddingView::new(a),
            EmbeddingView::new(b),
            &DistanceOptions::default(),
        )
        .expect("finite");
        let restricted = distance(
            kind,
            EmbeddingView::new(&ra),
            EmbeddingView::new(&rb),
            &DistanceOptions::reference(),
        )
        .expect("ok");
        assert!(restricted.is_finite());
        assert!(
            ((default - restricted) / restricted).abs() < 1e-12,
            "{kind}"
        );
    }
}

/// Zero policies act on zeros only: with none present, every policy but `Floor` is the
/// reference.
#[test]
fn zero_policies_agree_when_there_are_no_zeros() {
    let data = nz_set();
    let views = data.views();
    for kind in Distance::ALL {
        let reference = pdist(kind, &views, &DistanceOptions::reference()).expect("ok");
        for policy in [ZeroPolicy::DropZeros, ZeroPolicy::DropUndefined] {
            let opts = DistanceOptions::default().with_zero_policy(policy);
            assert_eq!(
                pdist(kind, &views, &opts).expect("ok"),
                reference,
                "{kind} {policy:?}"
            );
        }
    }
}

/// `Floor` keeps every coordinate and answers, but a one-sided zero contributes about
/// `½·h / floor` to the KL family: the value then measures the floor (documented trade-off).
#[test]
fn floor_policy_is_finite_and_its_kl_grows_as_the_floor_shrinks() {
    let data = full_set();
    let (a, b) = (
        EmbeddingView::new(&data.hessians[0]),
        EmbeddingView::new(&data.hessians[1]),
    );
    let at = |floor: f64| {
        let opts = DistanceOptions::default().with_zero_policy(ZeroPolicy::Floor(floor));
        distance(Distance::Kl, a, b, &opts).expect("floored Fisher is valid")
    };
    let tight = at(ZeroPolicy::DEFAULT_FLOOR);
    let loose = at(1e-9);
    assert!(tight.is_finite() && loose.is_finite());
    assert!(tight > 10.0 * loose, "{tight} vs {loose}");
    let opts = DistanceOptions::default().with_zero_policy(ZeroPolicy::default_floor());
    for kind in Distance::ALL {
        assert!(
            distance(kind, a, b, &opts).expect("answers").is_finite(),
            "{kind}"
        );
    }
}

#[test]
fn d_sym_of_an_embedding_with_itself_is_zero() {
    let data = full_set();
    for h in &data.hessians {
        assert_eq!(d_sym(h, h).expect("valid"), 0.0);
    }
}

#[test]
fn d_sym_is_symmetric() {
    let data = full_set();
    let h = &data.hessians;
    for i in 0..TASKS {
        for j in 0..TASKS {
            assert_eq!(
                d_sym(&h[i], &h[j]).expect("ok"),
                d_sym(&h[j], &h[i]).expect("ok")
            );
        }
    }
}

/// Multiplying by 4 is exact in f32, so any change would come from the formula itself.
fn scaled(h: &[f32], c: f32) -> Vec<f32> {
    h.iter().map(|&x| x * c).collect()
}

#[test]
fn variance_distances_ignore_a_common_scale_of_both_fishers() {
    let data = nz_set();
    let (a, b) = (&data.hessians[1], &data.hessians[2]);
    let (a4, b4) = (scaled(a, 4.0), scaled(b, 4.0));
    let opts = DistanceOptions::default();
    for kind in [
        Distance::NormalizedCosine,
        Distance::Correlation,
        Distance::Kl,
        Distance::AsymmetricKl,
        Distance::Jsd,
    ] {
        let d = distance(kind, EmbeddingView::new(a), EmbeddingView::new(b), &opts).expect("ok");
        let d4 = distance(
            kind,
            EmbeddingView::new(&a4),
            EmbeddingView::new(&b4),
            &opts,
        )
        .expect("ok");
        assert!(((d - d4) / d).abs() < 1e-9, "{kind}: {d} vs {d4}");
    }
}

#[test]
fn cosine_and_correlation_of_variances_ignore_the_scale_of_one_fisher() {
    let data = nz_set();
    let (a, b) = (&data.hessians[0], &data.hessians[3]);
    let a4 = scaled(a, 0.25);
    let opts = DistanceOptions::default();
    for kind in [Distance::NormalizedCosine, Distance::Correlation] {
        let d = distance(kind, EmbeddingView::new(a), EmbeddingView::new(b), &opts).expect("ok");
        let d4 = distance(kind, EmbeddingView::new(&a4), EmbeddingView::new(b), &opts).expect("ok");
        assert!(((d - d4) / d).abs() < 1e-9, "{kind}: {d} vs {d4}");
    }
}

/// The reference's `+1e-8` is absolute: shrinking both Fishers far below it (median entries
/// ~2e-5 become ~2e-11) changes d_sym a lot, so d_sym is only scale-invariant for Fishers well
/// above 1e-8.
#[test]
fn d_sym_depends_on_the_overall_scale_through_its_epsilon() {
    let data = full_set();
    let (a, b) = (&data.hessians[0], &data.hessians[2]);
    let tiny = 1.0 / (1u32 << 20) as f32;
    let d = d_sym(a, b).expect("ok");
    let d_tiny = d_sym(&scaled(a, tiny), &scaled(b, tiny)).expect("ok");
    assert!(((d - d_tiny) / d).abs() > 0.01, "{d} vs {d_tiny}");
}

#[test]
fn d_asym_is_d_sym_minus_alpha_times_the_distance_to_trivial() {
    let data = full_set();
    let h = &data.hessians;
    let (source, target, trivial) = (&h[2], &h[3], &h[TRIVIAL]);
    let expected = d_sym(source, target).expect("ok") - ALPHA * d_sym(source, trivial).expect("ok");
    assert_eq!(
        d_asym(source, target, trivial, ALPHA).expect("ok"),
        expected
    );
    assert_eq!(
        d_asym(source, target, trivial, 0.0).expect("ok"),
        d_sym(source, target).expect("ok")
    );
    // A more complex source (farther from trivial) is favoured: the term lowers the distance.
    assert!(
        d_asym(source, target, trivial, ALPHA).expect("ok") < d_sym(source, target).expect("ok")
    );
}

/// With scale = hessian, `normalized_cosine` compares `s / h = 1` with `1`: distance 0. The
/// same hessians with unit scale are far apart, so the scale is really read.
#[test]
fn normalized_cosine_reads_the_scale() {
    let data = nz_set();
    let (a, b) = (&data.hessians[0], &data.hessians[2]);
    let opts = DistanceOptions::default();
    let unit = distance(
        Distance::NormalizedCosine,
        EmbeddingView::new(a),
        EmbeddingView::new(b),
        &opts,
    )
    .expect("ok");
    let self_scaled = distance(
        Distance::NormalizedCosine,
        EmbeddingView::with_scale(a, a),
        EmbeddingView::with_scale(b, b),
        &opts,
    )
    .expect("ok");
    assert!(unit > 0.01, "{unit}");
    assert!(self_scaled < 1e-12, "{self_scaled}");
}

#[test]
fn length_mismatch_is_an_error_under_every_policy() {
    let data = full_set();
    let a = &data.hessians[0];
    let short = &data.hessians[1][..LEN - 1];
    let policies = [
        ZeroPolicy::Reference,
        ZeroPolicy::default_floor(),
        ZeroPolicy::DropZeros,
        ZeroPolicy::DropUndefined,
    ];
    for policy in policies {
        let opts = DistanceOptions::default().with_zero_policy(policy);
        for kind in Distance::ALL {
            let r = distance(
                kind,
                EmbeddingView::new(a),
                EmbeddingView::new(short),
                &opts,
            );
            assert!(matches!(r, Err(Error::Mismatch(_))), "{kind} {policy:?}");
        }
        let views = [EmbeddingView::new(a), EmbeddingView::new(short)];
        assert!(matches!(
            pdist(Distance::Cosine, &views, &opts),
            Err(Error::Mismatch(_))
        ));
    }
    assert!(matches!(d_sym(a, short), Err(Error::Mismatch(_))));
    assert!(matches!(
        d_asym(a, a, short, ALPHA),
        Err(Error::Mismatch(_))
    ));
    let bad_scale = EmbeddingView::with_scale(a, short);
    let r = distance(
        Distance::NormalizedCosine,
        bad_scale,
        EmbeddingView::new(a),
        &DistanceOptions::reference(),
    );
    assert!(matches!(r, Err(Error::Mismatch(_))));
}
