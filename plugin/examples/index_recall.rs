//! How well the cosine top-K of an index transform finds the exact top 10 under `d_asym`, on
//! synthetic but realistic tasks (log-space mixtures of the four real reference embeddings,
//! EfficientNet-Lite0 Monte-Carlo, plus per-coordinate log-normal noise: tests/common). Pure
//! computation, no engine and no HNSW: the cosine is exact, so this is the transform's own
//! recall, an upper bound of what Qdrant's graph search gives. Rows `− t0` are taken relative
//! to the trivial embedding (the default store transform is `layered_sketch 4096 − t0`); the
//! last row is not a store transform: the full-length centred log minus the trivial's.
//!
//! ```text
//! cargo run --release -p task2vec-qdrant --example index_recall -- [N] [QUERIES] [ROWS]
//! ```
//!
//! Defaults 3000 and 20; `ROWS` keeps only the rows whose name contains it (e.g. `t0`). Stored vectors are regenerated one at a time from their seeds (the
//! same seeds as `bench_select`), so memory holds scores, not vectors.

#[path = "../tests/common/mod.rs"]
mod common;

use task2vec::distance::{d_asym, d_sym};
use task2vec_qdrant::{IndexTransform, VectorSpace, FORMULA_KAPPA};

const KS: [usize; 5] = [20, 50, 100, 200, 300];
/// Two-stage shortlists: the cosine top `K2` re-scored by the formula (`s |u − v|² − alpha c`,
/// the Qdrant-only query's score), cut to its top `K`.
const TWO_STAGE: [(usize, usize); 3] = [(200, 100), (300, 100), (400, 100)];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .take(2)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let n = args.first().copied().unwrap_or(3000);
    let queries = args.get(1).copied().unwrap_or(20);
    let alpha = 0.15;
    let trivial = &common::fixture_hessians()[4];
    let space = VectorSpace::of(&common::fixture_embedding(0));
    type Index = Box<dyn Fn(&[f32]) -> task2vec_qdrant::Result<Vec<f32>>>;
    // Each transform relative to the trivial embedding where it is one that can be.
    let of = |t: IndexTransform| -> Index {
        let space = space.clone();
        let centre = t.centre(trivial);
        Box::new(move |h: &[f32]| t.apply(h, &space, centre.as_ref()))
    };
    let sketch = |sketch_dim, relative_to_trivial| IndexTransform::LayeredSketch {
        floor_rel: 1e-4,
        sketch_dim,
        relative_to_trivial,
    };
    let mut transforms: Vec<(String, Index)> = Vec::new();
    for d in [1024, 2048, 4096, 8192] {
        transforms.push((format!("layered_sketch {d}"), of(sketch(d, false))));
    }
    for d in [1024, 2048, 4096, 8192, 16384] {
        transforms.push((format!("layered_sketch {d} − t0"), of(sketch(d, true))));
    }
    let full = IndexTransform::CenteredLog { floor_rel: 1e-4 };
    transforms.push(("centered_log (full)".to_string(), of(full)));
    // Not a store transform: the full-length centred log minus the trivial embedding's.
    let t0 = full.apply(trivial, &space, None)?;
    let minus_t0 = of(full);
    transforms.push((
        "centered_log − t0 (full)".to_string(),
        Box::new(move |h: &[f32]| Ok(minus_t0(h)?.iter().zip(&t0).map(|(x, m)| x - m).collect())),
    ));
    // Optional: only the rows whose name contains this text.
    if let Some(only) = std::env::args().nth(3) {
        transforms.retain(|(name, _)| name.contains(&only));
    }
    let vector = |seed: u64| {
        let mut rng = common::Normal::new(seed);
        common::random_mixture(&mut rng, seed)
    };
    let probes: Vec<Vec<f32>> = (0..queries).map(|q| vector(9_000_000 + q as u64)).collect();
    let probe_raw: Vec<Vec<Vec<f32>>> = transforms
        .iter()
        .map(|(_, t)| probes.iter().map(|p| t(p)).collect::<Result<_, _>>())
        .collect::<Result<_, _>>()?;
    let probe_index: Vec<Vec<Vec<f32>>> = probe_raw
        .iter()
        .map(|ps| ps.iter().cloned().map(unit).collect())
        .collect();
    let slope = FORMULA_KAPPA / (2.0 * space.dimension as f64);
    // exact[q][i] and cosine distances cos[t][q][i].
    let mut exact = vec![Vec::with_capacity(n); queries];
    let mut cos = vec![vec![Vec::with_capacity(n); queries]; transforms.len()];
    // The formula's approximate d_asym, per transform, query and stored vector.
    let mut formula = vec![vec![Vec::with_capacity(n); queries]; transforms.len()];
    for i in 0..n {
        let h = vector(1_000_000 + i as u64);
        for (q, p) in probes.iter().enumerate() {
            exact[q].push(d_asym(&h, p, trivial, alpha)?);
        }
        let complexity = d_sym(&h, trivial)?;
        for (ti, (_, t)) in transforms.iter().enumerate() {
            let u = t(&h)?;
            for q in 0..queries {
                let sq: f64 = u
                    .iter()
                    .zip(&probe_raw[ti][q])
                    .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                    .sum();
                formula[ti][q].push(slope * sq - alpha * complexity);
            }
            let v = unit(u);
            for q in 0..queries {
                cos[ti][q].push(-dot(&v, &probe_index[ti][q]));
            }
        }
        if (i + 1) % 10_000 == 0 {
            eprintln!("  {} stored vectors scored", i + 1);
        }
    }
    println!(
        "{n} stored tasks, {queries} queries, alpha {alpha}: recall@10 of the exact d_asym top \
         10 within the cosine top K"
    );
    let truth: Vec<Vec<usize>> = exact.iter().map(|e| top(e, 10)).collect();
    for (((name, t), scores), formula) in transforms.iter().zip(&cos).zip(&formula) {
        let mut line = format!("{name:>28} ({:>5} dims)", t(&probes[0])?.len());
        for k in KS {
            let r: f64 = (0..queries)
                .map(|q| overlap(&truth[q], &top(&scores[q], k)))
                .sum::<f64>()
                / queries as f64;
            line += &format!("  K={k} {r:.3}");
        }
        for (k2, k) in TWO_STAGE {
            let r: f64 = (0..queries)
                .map(|q| {
                    let mut shortlist = top(&scores[q], k2);
                    shortlist.sort_by(|&a, &b| formula[q][a].total_cmp(&formula[q][b]));
                    shortlist.truncate(k);
                    overlap(&truth[q], &shortlist)
                })
                .sum::<f64>()
                / queries as f64;
            line += &format!("  K={k2}→{k} {r:.3}");
        }
        println!("{line}");
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
    idx.select_nth_unstable_by(k.min(values.len() - 1), |&a, &b| {
        values[a].total_cmp(&values[b])
    });
    idx.truncate(k);
    idx
}

fn overlap(truth: &[usize], found: &[usize]) -> f64 {
    truth.iter().filter(|i| found.contains(i)).count() as f64 / truth.len() as f64
}
