//! How well Qdrant's cosine top-K on the index vector finds the exact top 10 under d_sym and
//! d_asym, on synthetic but realistic tasks: log-space mixtures of the four real reference
//! embeddings (EfficientNet-Lite0, Monte-Carlo) plus per-coordinate log-normal noise.
//!
//! `cargo run --release --example index_recall -- [N] [QUERIES]` (defaults 600 and 20). Pure
//! computation (no engine): cosine is computed here exactly as Qdrant computes it.

#[path = "../tests/common/mod.rs"]
mod common;

use task2vec::distance::{d_asym, d_sym};
use task2vec_qdrant::IndexTransform;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let n = args.first().copied().unwrap_or(600);
    let queries = args.get(1).copied().unwrap_or(20);
    let alpha = 0.15;

    let trivial = &common::fixture_hessians()[4];
    let mut rng = common::Normal::new(42);
    let mut seed = 1000;
    let mut make = |rng: &mut common::Normal| {
        seed += 1;
        common::random_mixture(rng, seed)
    };
    let stored: Vec<Vec<f32>> = (0..n).map(|_| make(&mut rng)).collect();
    let probes: Vec<Vec<f32>> = (0..queries).map(|_| make(&mut rng)).collect();

    let transforms = [
        (
            "centered_log 1e-4",
            IndexTransform::CenteredLog { floor_rel: 1e-4 },
        ),
        (
            "centered_log 1e-2",
            IndexTransform::CenteredLog { floor_rel: 1e-2 },
        ),
        ("sqrt", IndexTransform::Sqrt),
    ];
    let exact_sym: Vec<Vec<f64>> = probes
        .iter()
        .map(|q| stored.iter().map(|s| d_sym(s, q)).collect())
        .collect::<Result<_, _>>()?;
    let exact_asym: Vec<Vec<f64>> = probes
        .iter()
        .map(|q| {
            stored
                .iter()
                .map(|s| d_asym(s, q, trivial, alpha))
                .collect()
        })
        .collect::<Result<_, _>>()?;
    println!("{n} stored tasks, {queries} queries, alpha {alpha}");
    for (name, t) in transforms {
        let index: Vec<Vec<f32>> = stored
            .iter()
            .map(|s| t.apply(s).map(unit))
            .collect::<Result<_, _>>()?;
        for k in [10, 20, 50, 100] {
            let (mut r_sym, mut r_asym) = (0.0, 0.0);
            for (qi, q) in probes.iter().enumerate() {
                let qv = unit(t.apply(q)?);
                let cos: Vec<f64> = index.iter().map(|v| -dot(v, &qv)).collect();
                let top_cos = top(&cos, k);
                r_sym += overlap(&top(&exact_sym[qi], 10), &top_cos);
                r_asym += overlap(&top(&exact_asym[qi], 10), &top_cos);
            }
            println!(
                "{name:>18}  K={k:<4} recall@10 d_sym {:.3}  d_asym {:.3}",
                r_sym / queries as f64,
                r_asym / queries as f64
            );
        }
    }
    Ok(())
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt() as f32;
    v.into_iter().map(|x| x / n).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Indices of the `k` smallest values.
fn top(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    idx.truncate(k);
    idx
}

fn overlap(truth: &[usize], found: &[usize]) -> f64 {
    truth.iter().filter(|i| found.contains(i)).count() as f64 / truth.len() as f64
}
