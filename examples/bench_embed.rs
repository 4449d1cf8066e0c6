//! Rust side of the embedding benchmark (`tools/bench/run.sh`, `BENCHMARKS.md`): one
//! Monte-Carlo embedding with the reference recipe's settings, timed stage by stage.
//!
//! ```text
//! cargo run --release --example bench_embed -- --probe resnet18 \
//!     --weights /tmp/t2v-bench/resnet18.safetensors --data /tmp/t2v-bench/fmnist-256 \
//!     --size 32 [--threads 2] [--bn train|eval] [--cache-budget BYTES] [--max-samples N]
//! ```
//!
//! With N the number of images (`--max-samples`, default the whole dataset), the settings
//! match `tools/bench/reference.py`: features of N images in batches of 64, a 10-epoch head
//! fit on N class-balanced draws per epoch, a Fisher pass over N draws in batches of 64 with
//! the whole probe (`skip_stages` 0) and batch norm in train mode, as the reference's
//! `model.train()` gives. The stage times come from the pipeline's progress reports (a stage
//! runs from its first report to the next stage's first one). Prints one JSON object;
//! `peak_rss_mib` is the process's high-water mark (`VmHWM`), `probe_rss_mib` the resident
//! size right after the probe was loaded.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device};
use serde_json::json;
use task2vec::dataset::{Dataset, OpenOptions};
use task2vec::embedding::{EmbedSettings, FisherPassSettings, DEFAULT_CACHE_BUDGET_BYTES};
use task2vec::head::HeadSettings;
use task2vec::pipeline::{embed, Progress, Stage};
use task2vec::probe::spec::{open_probe, ProbeArch};
use task2vec::probe::BnMode;
use task2vec::threads::configure_threads;

/// Reference batch size of every loader.
const BATCH: usize = 64;

/// Command-line options.
struct Args {
    probe: ProbeArch,
    weights: PathBuf,
    data: PathBuf,
    size: u32,
    threads: usize,
    bn: BnMode,
    cache_budget: u64,
    max_samples: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut probe = None;
    let mut weights = None;
    let mut data = None;
    let mut size = None;
    let mut threads = 2;
    let mut bn = BnMode::Train;
    let mut cache_budget = DEFAULT_CACHE_BUDGET_BYTES;
    let mut max_samples = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|e| format!("{flag}: `{v}` is not a number ({e})"))
        };
        match flag.as_str() {
            "--probe" => probe = Some(value.parse::<ProbeArch>().map_err(|e| e.to_string())?),
            "--weights" => weights = Some(PathBuf::from(value)),
            "--data" => data = Some(PathBuf::from(value)),
            "--size" => size = Some(number(&value)? as u32),
            "--threads" => threads = number(&value)? as usize,
            "--bn" => {
                bn = match value.as_str() {
                    "train" => BnMode::Train,
                    "eval" => BnMode::Eval,
                    other => return Err(format!("--bn: `{other}` is neither train nor eval")),
                }
            }
            "--cache-budget" => cache_budget = number(&value)?,
            "--max-samples" => max_samples = Some(number(&value)? as usize),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        probe: probe.ok_or("--probe is required")?,
        weights: weights.ok_or("--weights is required")?,
        data: data.ok_or("--data is required")?,
        size: size.ok_or("--size is required")?,
        threads,
        bn,
        cache_budget,
        max_samples,
    })
}

/// A field of `/proc/self/status` in MiB (Linux; `None` elsewhere).
fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn run(args: Args) -> task2vec::Result<serde_json::Value> {
    let threads = configure_threads(Some(args.threads));
    let t = Instant::now();
    let probe = open_probe(args.probe, &args.weights, None, &Device::Cpu, DType::F32)?;
    let load_s = t.elapsed().as_secs_f64();
    let probe_rss = proc_status_mib("VmRSS:");
    let dataset = Dataset::open(&args.data, &OpenOptions::default())?;
    let n = args.max_samples.unwrap_or(dataset.len()).min(dataset.len());
    let settings = EmbedSettings {
        max_samples: n,
        image_size: Some(args.size),
        feature_batch_size: BATCH,
        head: HeadSettings {
            epochs: 10,
            draws_per_epoch: n,
            batch_size: BATCH,
            ..HeadSettings::default()
        },
        fisher: FisherPassSettings {
            draws: n,
            batch_size: BATCH,
            ..FisherPassSettings::default()
        },
        bn: args.bn,
        skip_stages: 0,
        cache_budget_bytes: args.cache_budget,
        ..EmbedSettings::default()
    };

    // First report of each stage, in order.
    let mut starts: Vec<(Stage, Instant)> = Vec::new();
    let t0 = Instant::now();
    let embedding = embed(&dataset, probe.as_ref(), &settings, &mut |p: Progress| {
        if starts.last().map(|&(s, _)| s) != Some(p.stage) {
            starts.push((p.stage, Instant::now()));
        }
    })?;
    let end = Instant::now();
    let total = end - t0;
    let stage_s = |stage: Stage| -> f64 {
        let Some(i) = starts.iter().position(|&(s, _)| s == stage) else {
            return f64::NAN;
        };
        let next = starts.get(i + 1).map_or(end, |&(_, t)| t);
        (next - starts[i].1).as_secs_f64()
    };
    let (features_s, head_s, fisher_s) = (
        stage_s(Stage::Features),
        stage_s(Stage::Head),
        stage_s(Stage::Fisher),
    );
    let features_images = embedding.meta.samples.features;
    let fisher_images = embedding.meta.samples.fisher;
    Ok(json!({
        "side": "rust",
        "arch": args.probe.id(),
        "image_size": args.size,
        "images": n,
        "threads": threads,
        "bn": match args.bn { BnMode::Train => "train", BnMode::Eval => "eval" },
        "cache_budget_bytes": args.cache_budget,
        "load_s": load_s,
        "features_s": features_s,
        "features_images": features_images,
        "features_images_per_s": features_images as f64 / features_s,
        "head_s": head_s,
        "head_draws": settings.head.epochs * settings.head.draws_per_epoch,
        "fisher_s": fisher_s,
        "fisher_images": fisher_images,
        "fisher_images_per_s": fisher_images as f64 / fisher_s,
        "total_s": total.as_secs_f64(),
        "embedding_len": embedding.hessian.len(),
        "embedding_finite": embedding.hessian.iter().all(|x| x.is_finite()),
        "probe_rss_mib": probe_rss,
        "peak_rss_mib": proc_status_mib("VmHWM:"),
    }))
}

fn main() -> ExitCode {
    // As `t2v` does (T2V_RETAIN_FREED_MEMORY=0 measures glibc's default instead).
    task2vec::malloc::retain_freed_memory();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_embed: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench_embed: {e}");
            ExitCode::FAILURE
        }
    }
}
