//! `t2v`: the Task2Vec command line.
//!
//! A thin layer over the `task2vec` library: it parses flags, picks defaults (where the probe's
//! weights and the cache live), prints results and maps errors to exit codes (0 success, 1 a
//! failure explained on stderr, 2 a usage error from clap).

mod daemon;
mod distance;
mod embed;
mod inspect;
mod matrix;
mod migrate;
mod plot;
mod predict;
mod probe_args;
mod select;
mod store_args;
mod table;
mod task_map;
mod tasks;
mod zoo;

use std::io::IsTerminal;

use anyhow::Result;
use clap::{Parser, Subcommand};

const ABOUT: &str = "Task2Vec: describe a labelled dataset (a *task*) as a fixed-length vector, \
so related tasks get close vectors and the best pretrained expert for a new task can be picked.";

const LONG_ABOUT: &str = "Task2Vec: describe a labelled dataset (a *task*) as a fixed-length \
vector, so related tasks get close vectors and the best pretrained expert for a new task can be \
picked.

A dataset is one of:
  - a folder with one sub-folder per class (JPEG, PNG, WebP, BMP, GIF images),
  - a CSV (path,label) or JSON Lines ({\"path\", \"label\"}) manifest, paths relative to it,
  - MNIST-style IDX files (a folder holding *-images-idx3-ubyte[.gz] and *-labels-idx1-ubyte[.gz]).

The default probe is EfficientNet-Lite0 trained on ImageNet; scripts/setup.sh installs its
weights. Start with:
  t2v inspect /usr/share/datasets/fashion-mnist
  t2v predict photo.jpg";

#[derive(Parser, Debug)]
#[command(name = "t2v", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    /// Compute threads (default: RAYON_NUM_THREADS, or every CPU this process may use).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show a dataset: its classes and counts, the files skipped and why, and what the probe
    /// sees in a few of its images (so you can tell the data and the weights are right).
    #[command(visible_alias = "info")]
    Inspect(inspect::InspectArgs),
    /// Classify image files with the probe's own ImageNet classifier.
    Predict(predict::PredictArgs),
    /// Embed a dataset as a Task2Vec vector (written to a .t2v.safetensors file).
    Embed(embed::EmbedArgs),
    /// Every Task2Vec distance between two embedding files (or one, with --distance).
    Distance(distance::DistanceArgs),
    /// The distance matrix of many embeddings: CSV, JSON, a heat-map with a dendrogram and a
    /// 2-D map of the tasks (PNG).
    Matrix(matrix::MatrixArgs),
    /// Rank the experts of the zoo for a new task: cosine prefetch in Qdrant, exact re-rank by
    /// the asymmetric distance.
    Select(select::SelectArgs),
    /// The stored tasks nearest a task (d_sym), with payload filters.
    Similar(select::SimilarArgs),
    /// The experts (pretrained models) to choose from: add, list, rm.
    Zoo(zoo::ZooArgs),
    /// The stored tasks: add, list, rm.
    Tasks(tasks::TasksArgs),
    /// The store: info, export, import (migration between backends).
    Store(migrate::StoreCmdArgs),
    /// Watch dataset folders and keep the store in sync (the indexing daemon).
    Daemon(daemon::DaemonArgs),
}

fn main() {
    // Before any large allocation: freed activations stay in the process (src/malloc.rs).
    task2vec::malloc::retain_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        // The daemon logs and sizes its threads as its configuration says.
        Command::Daemon(args) => daemon::run(args, cli.verbose),
        command => {
            init_logging(cli.verbose);
            task2vec::threads::configure_threads(cli.threads);
            run(command)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Inspect(args) => inspect::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Distance(args) => distance::run(args),
        Command::Matrix(args) => matrix::run(args),
        Command::Select(args) => select::run_select(args),
        Command::Similar(args) => select::run_similar(args),
        Command::Zoo(args) => zoo::run(args),
        Command::Tasks(args) => tasks::run(args),
        Command::Store(args) => migrate::run(args),
        Command::Daemon(args) => daemon::run(args, 0),
    }
}

fn init_logging(verbose: u8) {
    // Skipped files are listed in each command's own report; their one-per-file log lines
    // only show with -v.
    let default = match verbose {
        // Qdrant Edge warns once per process about feature flags it was never given.
        0 => "warn,task2vec::dataset=error,qdrant_edge=error",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
