//! `t2v embed`: a dataset's Task2Vec embedding, written to a file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use task2vec::embedding::{EmbedSettings, Embedding};
use task2vec::fisher::Estimator;
use task2vec::pipeline::{embed, embed_with_trivial, Progress, Stage};
use task2vec::probe::BnMode;

use crate::inspect::DatasetArgs;
use crate::probe_args::ProbeArgs;

/// Fisher estimators, as flags.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum EstimatorArg {
    /// Squared gradient of the batch-mean loss, labels sampled from the model (reference).
    Montecarlo,
    /// Mean of per-example squared gradients (batch-size independent).
    PerExample,
    /// Learned per-filter noise variances (the paper's figures).
    Variational,
}

/// Batch-norm modes, as flags.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum BnArg {
    /// Running statistics (default).
    Eval,
    /// Batch statistics during the Fisher pass, as the reference code does.
    Train,
}

/// Flags of `t2v embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    dataset: DatasetArgs,

    /// Output file (default: ./<dataset name>.t2v.safetensors).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Settings as JSON (any subset of the fields in docs/embedding-format.md); flags below
    /// override it.
    #[arg(long, value_name = "FILE")]
    settings: Option<PathBuf>,

    /// Fisher estimator.
    #[arg(long, value_enum)]
    estimator: Option<EstimatorArg>,

    /// Most images used (class-balanced, seeded).
    #[arg(long, value_name = "N")]
    max_samples: Option<usize>,

    /// Class-balanced draws for the Fisher pass.
    #[arg(long, value_name = "N")]
    fisher_draws: Option<usize>,

    /// Input side in pixels (default: the probe's, 224). Smaller is much faster.
    #[arg(long, value_name = "PX")]
    image_size: Option<u32>,

    /// Start the Fisher at this stage of the probe (Task2Vec's skip_layers).
    #[arg(long, value_name = "K")]
    skip_stages: Option<usize>,

    /// Batch-norm mode in the Fisher pass.
    #[arg(long, value_enum)]
    bn: Option<BnArg>,

    /// Seed of every random choice.
    #[arg(long)]
    seed: Option<u64>,

    /// Also write the trivial (random-label) embedding, FILE with `.trivial` before the
    /// extension, for the asymmetric distance.
    #[arg(long)]
    trivial: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,

    #[command(flatten)]
    probe: ProbeArgs,
}

impl EmbedArgs {
    fn settings(&self) -> Result<EmbedSettings> {
        let mut s = match &self.settings {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not valid embedding settings", p.display()))?
            }
            None => EmbedSettings::default(),
        };
        if let Some(e) = self.estimator {
            s.fisher.estimator = match e {
                EstimatorArg::Montecarlo => Estimator::MonteCarlo,
                EstimatorArg::PerExample => Estimator::PerExample,
                EstimatorArg::Variational => Estimator::Variational,
            };
        }
        if let Some(n) = self.max_samples {
            s.max_samples = n;
        }
        if let Some(n) = self.fisher_draws {
            s.fisher.draws = n;
        }
        if self.image_size.is_some() {
            s.image_size = self.image_size;
        }
        if let Some(k) = self.skip_stages {
            s.skip_stages = k;
        }
        if let Some(bn) = self.bn {
            s.bn = match bn {
                BnArg::Eval => BnMode::Eval,
                BnArg::Train => BnMode::Train,
            };
        }
        if let Some(seed) = self.seed {
            s.seed = seed;
        }
        Ok(s)
    }
}

/// A progress bar per pipeline stage, with images/s and ETA.
struct Bars {
    quiet: bool,
    current: Option<(Stage, bool, ProgressBar)>,
}

impl Bars {
    fn update(&mut self, p: Progress) {
        if self.quiet {
            return;
        }
        let same =
            matches!(&self.current, Some((s, r, _)) if *s == p.stage && *r == p.random_labels);
        if !same {
            if let Some((_, _, bar)) = self.current.take() {
                bar.finish();
            }
            let (what, unit) = match p.stage {
                Stage::Features => ("features", "img"),
                Stage::Head => ("head", "draws"),
                Stage::Fisher => ("fisher", "img"),
            };
            let label = if p.random_labels {
                format!("{what} (trivial)")
            } else {
                what.to_string()
            };
            let bar = ProgressBar::new(p.total as u64);
            let style = ProgressStyle::with_template(&format!(
                "{{prefix:>18}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{per_sec}}  ETA {{eta}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label);
            self.current = Some((p.stage, p.random_labels, bar));
        }
        if let Some((_, _, bar)) = &self.current {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
        }
    }

    fn finish(&mut self) {
        if let Some((_, _, bar)) = self.current.take() {
            bar.finish();
        }
    }
}

/// `<name>.t2v.safetensors` → `<name>.trivial.t2v.safetensors`.
fn trivial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let new = match name.strip_suffix(".t2v.safetensors") {
        Some(stem) => format!("{stem}.trivial.t2v.safetensors"),
        None => format!("{name}.trivial"),
    };
    path.with_file_name(new)
}

fn default_output(dataset: &Path) -> PathBuf {
    let name = dataset
        .canonicalize()
        .ok()
        .as_deref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    PathBuf::from(format!("{name}.t2v.safetensors"))
}

/// Opens the dataset and the probe, runs the pipeline, writes the file(s), prints a summary.
pub fn run(args: EmbedArgs) -> Result<()> {
    let settings = args.settings()?;
    let dataset = args.dataset.open()?;
    let probe = args.probe.load()?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&args.dataset.path));
    let started = Instant::now();
    let mut bars = Bars {
        quiet: args.quiet,
        current: None,
    };
    let mut report = |p: Progress| bars.update(p);
    let (emb, trivial) = if args.trivial {
        let (e, t) = embed_with_trivial(&dataset, probe.as_ref(), &settings, &mut report)?;
        (e, Some(t))
    } else {
        (
            embed(&dataset, probe.as_ref(), &settings, &mut report)?,
            None,
        )
    };
    bars.finish();
    emb.save(&output)?;
    print_summary(&emb, &output, started.elapsed().as_secs_f64());
    if let Some(t) = trivial {
        let path = trivial_path(&output);
        t.save(&path)?;
        println!("trivial    {} (random labels, same images)", path.display());
    }
    Ok(())
}

fn print_summary(e: &Embedding, path: &Path, secs: f64) {
    let m = &e.meta;
    println!("wrote      {}", path.display());
    println!(
        "dataset    {} ({} classes, {} items)",
        m.dataset.path,
        m.dataset.classes.len(),
        m.dataset.items
    );
    println!(
        "probe      {} (weights {}…)",
        m.probe.arch,
        &m.probe.weights_sha256[..12.min(m.probe.weights_sha256.len())]
    );
    println!(
        "estimator  {:?}, bn {:?}, skip_stages {}",
        m.settings.fisher.estimator, m.settings.bn, m.settings.skip_stages
    );
    println!(
        "samples    {} for features, {} Fisher draws, {} skipped",
        m.samples.features, m.samples.fisher, m.samples.skipped
    );
    println!("head       train accuracy {:.3}", m.head.train_accuracy);
    println!("vector     {} values, norm {:.4e}", e.len(), e.norm());
    println!("time       {secs:.1} s");
}
