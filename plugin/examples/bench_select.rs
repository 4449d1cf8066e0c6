//! Latency of `select` on stored vectors only (no embedding), on the embedded engine: N experts
//! with the default probe's dimension (EfficientNet-Lite0, 42016), cosine prefetch of P, exact
//! d_asym re-rank; p50/p99 over Q queries (and where the time goes, with the feature
//! `phase-timings`), recall@10 against a brute-force exact d_asym over all N, build time, memory
//! and disk.
//!
//! ```text
//! cargo run --release -p task2vec-qdrant --features phase-timings --example bench_select -- \
//!     N [QUERIES] [PREFETCH[,PREFETCH...]] [DIR] [layered|full] [companion|inline] \
//!     [RECALL_Q] [READERS] [int8|f32]
//! ```
//!
//! `layered` (the default) is the store's default index transform, the layered sketch;
//! `full` is the older full-length centred log (int8 quantized in RAM), for a side-by-side
//! run. Several prefetch sizes are measured on the same store. The store indexes itself every
//! 5,000 upserts (`Store::set_auto_optimize`), so the upsert time includes that; a final
//! `optimize()` indexes the rest and merges segments. On an existing DIR the experts already
//! stored are kept (only the query phase runs when there are N); `RECALL_Q` (default 20) is
//! how many queries the brute force checks, 0 for none; `READERS` the threads that read a
//! shortlist's raw vectors (`Store::set_shortlist_readers`; default `SHORTLIST_READERS`, 0
//! for the caller's pool); `int8` (the default) or `f32` how a new store keeps its index
//! vectors in RAM ([`IndexPrecision`]; an existing store keeps its own). With `BENCH_COLD`
//! set the store is not read once before the queries (after `echo 3 > /proc/sys/vm/drop_caches`: a freshly started process on a cold
//! page cache), and the one warm-up query is skipped.
//!
//! Vectors are synthetic but realistic: log-space mixtures of the four real reference task
//! embeddings plus per-coordinate log-normal noise (tests/common), each regenerated from its
//! seed for the brute-force pass (on every core), so memory holds no copy of the N vectors.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

use task2vec::distance::d_asym;
use task2vec_qdrant::{
    phase_timings, Expert, FormulaOptions, IndexPrecision, IndexTransform, Layout, RawVectors,
    SelectOptions, Store, VectorSpace,
};

/// Seed of stored expert `i`.
fn expert_seed(i: usize) -> u64 {
    1_000_000 + i as u64
}

/// Seed of query `q`.
fn query_seed(q: usize) -> u64 {
    9_000_000 + q as u64
}

fn vector(seed: u64) -> Vec<f32> {
    let mut n = common::Normal::new(seed);
    common::random_mixture(&mut n, seed)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let queries: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(50);
    let prefetches: Vec<usize> = match args.get(2) {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![100],
    };
    let scratch;
    let dir: PathBuf = match args.get(3) {
        Some(d) => PathBuf::from(d),
        None => {
            scratch = tempfile::tempdir()?;
            scratch.path().to_path_buf()
        }
    };
    let transform = match args.get(4).map(String::as_str) {
        None | Some("layered") => IndexTransform::default(),
        Some("full") => IndexTransform::CenteredLog { floor_rel: 1e-4 },
        Some(other) => return Err(format!("unknown transform `{other}`").into()),
    };
    let raw_vectors = match args.get(5).map(String::as_str) {
        None | Some("companion") => RawVectors::Companion,
        Some("inline") => RawVectors::Inline,
        Some(other) => return Err(format!("unknown raw-vector placement `{other}`").into()),
    };
    // Queries checked against the brute force (0: none, for timing runs on a built store).
    let recall_queries: usize = args.get(6).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let readers: usize = match args.get(7) {
        Some(s) => s.parse()?,
        None => task2vec_qdrant::SHORTLIST_READERS,
    };
    let index_precision = match args.get(8).map(String::as_str) {
        None | Some("int8") => IndexPrecision::Int8,
        Some("f32") => IndexPrecision::F32,
        Some(other) => return Err(format!("unknown index precision `{other}`").into()),
    };
    let alpha = 0.15;
    let trivial = common::trivial_embedding();
    let space = VectorSpace::of(&common::fixture_embedding(0));
    println!(
        "bench_select: N={n} experts, dimension {}, {queries} queries, prefetch {prefetches:?}, \
         alpha {alpha}, index {transform:?} ({} values), store {}, {readers} shortlist readers",
        space.dimension,
        transform.len(&space),
        dir.display()
    );

    let store = Store::open_with(
        &dir,
        &space,
        Layout {
            transform,
            raw_vectors,
            index_precision,
        },
    )?;
    store.set_trivial(&trivial)?;
    println!("index vectors kept as {:?}", store.index_precision());
    store.set_shortlist_readers(readers);
    let t = Instant::now();
    let existing = store.count_experts()?;
    for i in existing..n {
        let e = common::embedding(&format!("task-{i}"), vector(expert_seed(i)));
        let expert = Expert {
            key: format!("expert-{i}"),
            name: format!("expert {i}"),
            ..Expert::default()
        };
        store.upsert_expert(&expert, &e)?;
        if (i + 1) % 10_000 == 0 {
            eprintln!("  {} upserted, {:.0} s", i + 1, t.elapsed().as_secs_f64());
        }
    }
    let upsert_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    store.optimize()?;
    store.flush();
    let optimize_s = t.elapsed().as_secs_f64();
    println!(
        "build: {} upserts in {upsert_s:.1} s ({:.1} ms each), optimize (HNSW) {optimize_s:.1} s",
        n - existing,
        1e3 * upsert_s / (n - existing).max(1) as f64
    );
    println!(
        "memory after build: RSS {} MiB (anonymous {} MiB), peak {} MiB; disk {} MiB",
        proc_status_kib("VmRSS") / 1024,
        proc_status_kib("RssAnon") / 1024,
        proc_status_kib("VmHWM") / 1024,
        du(&dir) / (1 << 20)
    );

    let qs: Vec<_> = (0..queries)
        .map(|q| common::embedding(&format!("query-{q}"), vector(query_seed(q))))
        .collect();
    // Cold: the first queries after opening read their candidates' raw vectors from disk
    // unless the page cache still holds them (it does here, right after building, up to RAM).
    let cold = std::env::var_os("BENCH_COLD").is_some();
    if cold {
        println!("page cache not warmed (BENCH_COLD): the figures below read what is not cached");
    } else {
        let t = Instant::now();
        let bytes = prewarm(&dir)?;
        println!(
            "page cache warmed: read the {} MiB of the store that queries read in {:.1} s (the \
             figures below are warm)",
            bytes >> 20,
            t.elapsed().as_secs_f64()
        );
    }
    let mut results = Vec::new();
    for &prefetch in &prefetches {
        let options = SelectOptions {
            alpha,
            prefetch,
            limit: 10,
        };
        // One warm-up query (page cache, lazy structures), not counted.
        if !cold {
            store.select_experts(&qs[0], &options)?;
        }
        let mut total = Vec::new();
        let mut formula = Vec::new();
        let mut ranked_all = Vec::new();
        let mut phases = Vec::new();
        for q in &qs {
            // The index vector alone (select computes it again), to tell it apart.
            let t = Instant::now();
            store.index_vector(&q.hessian)?;
            let index_ms = t.elapsed().as_secs_f64() * 1e3;
            phase_timings::take();
            let t = Instant::now();
            let ranked = store.select_experts(q, &options)?;
            let select_ms = t.elapsed().as_secs_f64() * 1e3;
            total.push(select_ms);
            if let Some(p) = phase_timings::take().first() {
                phases.push([
                    select_ms,
                    index_ms,
                    p.search_ms,
                    p.shortlist_ms,
                    p.read_ms,
                    p.d_sym_ms,
                    select_ms - index_ms - p.search_ms - p.shortlist_ms,
                ]);
            }
            let t = Instant::now();
            store.rank_experts_by_formula(
                q,
                &FormulaOptions {
                    alpha,
                    prefetch,
                    limit: 10,
                    ..FormulaOptions::default()
                },
            )?;
            formula.push(t.elapsed().as_secs_f64() * 1e3);
            ranked_all.push(ranked);
        }
        let (p50, p99) = (percentile(&total, 0.5), percentile(&total, 0.99));
        let (f50, f99) = (percentile(&formula, 0.5), percentile(&formula, 0.99));
        println!(
            "prefetch {prefetch}: select (prefetch + exact re-rank) p50 {p50:.2} ms, p99 \
             {p99:.2} ms, mean {:.2} ms; Qdrant-only (prefetch + formula) p50 {f50:.2} ms, p99 \
             {f99:.2} ms",
            mean(&total),
        );
        print_phases(&mut phases);
        results.push((prefetch, ranked_all));
    }

    // Brute force: exact d_asym of every stored expert for every query, in one pass over the
    // experts (each regenerated once from its seed).
    let t = Instant::now();
    let brute_queries = queries.min(recall_queries);
    if brute_queries == 0 {
        store.close();
        return Ok(());
    }
    let scores: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let v = vector(expert_seed(i));
            qs[..brute_queries]
                .iter()
                .map(|q| d_asym(&v, &q.hessian, &trivial.hessian, alpha))
                .collect::<Result<Vec<f64>, _>>()
        })
        .collect::<Result<_, _>>()?;
    let mut all: Vec<Vec<(f64, usize)>> = (0..brute_queries)
        .map(|q| scores.iter().enumerate().map(|(i, s)| (s[q], i)).collect())
        .collect();
    for row in all.iter_mut() {
        row.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    println!(
        "brute force (exact d_asym of all {n} experts for {brute_queries} queries) took {:.0} s",
        t.elapsed().as_secs_f64()
    );
    for (prefetch, ranked_all) in &results {
        let mut recall = 0.0;
        let mut top1 = 0usize;
        for (row, ranked) in all.iter().zip(ranked_all) {
            let truth: Vec<String> = row[..10.min(n)]
                .iter()
                .map(|(_, i)| format!("expert-{i}"))
                .collect();
            let found: Vec<&str> = ranked.iter().map(|r| r.key.as_str()).collect();
            recall += truth.iter().filter(|k| found.contains(&k.as_str())).count() as f64
                / truth.len() as f64;
            top1 += usize::from(found.first().copied() == truth.first().map(String::as_str));
        }
        println!(
            "prefetch {prefetch}: recall@10 vs brute-force exact d_asym {:.3} over \
             {brute_queries} queries (top-1 {top1}/{brute_queries})",
            recall / brute_queries as f64
        );
    }
    println!(
        "memory at the end: RSS {} MiB (anonymous {} MiB), peak {} MiB",
        proc_status_kib("VmRSS") / 1024,
        proc_status_kib("RssAnon") / 1024,
        proc_status_kib("VmHWM") / 1024
    );
    store.close();
    Ok(())
}

/// The phases of each `select` (rows of `select, index vector, search, shortlist wall,
/// reading summed over threads, d_sym summed over threads, the rest`), when recorded.
fn print_phases(rows: &mut [[f64; 7]]) {
    if rows.is_empty() {
        println!("  (phases: build with `--features phase-timings` for the breakdown)");
        return;
    }
    let names = [
        "select",
        "index vector",
        "search",
        "shortlist (wall)",
        "reading (Σ threads)",
        "d_sym (Σ threads)",
        "the rest",
    ];
    for (k, name) in names.iter().enumerate() {
        let col: Vec<f64> = rows.iter().map(|r| r[k]).collect();
        println!(
            "  phase {name:>20}: p50 {:.2} p90 {:.2} p99 {:.2} mean {:.2} ms",
            percentile(&col, 0.5),
            percentile(&col, 0.9),
            percentile(&col, 0.99),
            mean(&col)
        );
    }
    rows.sort_by(|a, b| b[0].total_cmp(&a[0]));
    for r in rows.iter().take(3) {
        let ms: Vec<String> = r.iter().map(|x| format!("{x:.1}")).collect();
        println!("  slowest: {} ms", ms.join(" / "));
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// A `/proc/self/status` field in KiB (0 where unavailable).
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|x| x.parse().ok())
        })
        .unwrap_or(0)
}

/// Reads every file under `dir` that a query reads (so the page cache holds them), returning
/// the bytes: not the write-ahead logs, nor the experts' `task2vec` copy, which no query
/// touches and which would only push the raw vectors out of a page cache they barely fit.
fn prewarm(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "wal"
            || name.ends_with("-task2vec") && path.to_string_lossy().contains("experts")
        {
            continue;
        }
        if path.is_dir() {
            total += prewarm(&path)?;
        } else {
            total += std::io::copy(&mut std::fs::File::open(&path)?, &mut std::io::sink())?;
        }
    }
    Ok(total)
}

/// Bytes of disk allocated under `dir` (as `du`: the engine's files are sparse, their
/// apparent length overstates the disk used).
fn du(dir: &std::path::Path) -> u64 {
    walk(dir)
}

fn walk(p: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
            .unwrap_or(0)
    } else {
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512
    }
}
