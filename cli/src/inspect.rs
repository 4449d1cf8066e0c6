//! `t2v inspect`: a dataset's summary and the probe's view of a few of its images.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use serde_json::json;
use task2vec::dataset::{
    balanced_sample, Dataset, Format, IdxSplit, OpenOptions, DEFAULT_MAX_PIXELS,
};

use crate::probe_args::{classify, describe, top_k, ProbeArgs};

/// Dataset layouts, as flags.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    /// Decide from the path (default).
    Auto,
    /// One sub-folder per class.
    ImageFolder,
    /// CSV manifest.
    Csv,
    /// JSON Lines manifest.
    Jsonl,
    /// MNIST-style IDX files.
    Idx,
}

/// IDX splits, as flags.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum SplitArg {
    /// The `train-*` files.
    Train,
    /// The `t10k-*` / `test-*` files.
    Test,
    /// Both, as one dataset.
    All,
}

/// The flags that say how to open a dataset.
#[derive(Args, Debug, Clone)]
pub struct DatasetArgs {
    /// The dataset: a class-per-folder directory, a .csv/.jsonl manifest or an IDX folder/file.
    #[arg(value_name = "DATASET")]
    pub path: PathBuf,

    /// The dataset's layout.
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatArg,

    /// Which IDX files to read from a folder holding both splits.
    #[arg(long, value_enum, default_value = "train")]
    split: SplitArg,

    /// Largest image (width × height) to decode; larger files are skipped as possible
    /// decompression bombs.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_name = "PIXELS")]
    max_pixels: u64,
}

impl DatasetArgs {
    /// Opens the dataset these flags describe.
    pub fn open(&self) -> Result<Dataset> {
        let mut opts = OpenOptions::default()
            .max_pixels(self.max_pixels)
            .idx_split(match self.split {
                SplitArg::Train => IdxSplit::Train,
                SplitArg::Test => IdxSplit::Test,
                SplitArg::All => IdxSplit::All,
            });
        let format = match self.format {
            FormatArg::Auto => None,
            FormatArg::ImageFolder => Some(Format::ImageFolder),
            FormatArg::Csv => Some(Format::Csv),
            FormatArg::Jsonl => Some(Format::JsonLines),
            FormatArg::Idx => Some(Format::Idx),
        };
        if let Some(f) = format {
            opts = opts.format(f);
        }
        Ok(Dataset::open(&self.path, &opts)?)
    }
}

/// Flags of `t2v inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    dataset: DatasetArgs,

    /// Decode every image now, so corrupt or truncated files are found and listed (otherwise
    /// they are found, and skipped, when the images are used).
    #[arg(long)]
    check: bool,

    /// Show the probe's top ImageNet classes for this many images, drawn evenly across classes
    /// (0: don't load the probe).
    #[arg(long, default_value_t = 5, value_name = "N")]
    predict: usize,

    /// Seed for choosing those images.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    probe: ProbeArgs,
}

/// Prints the summary, the decode check and the predictions.
pub fn run(args: InspectArgs) -> Result<()> {
    let dataset = args.dataset.open()?;
    let mut summary = dataset.summary();

    if args.check {
        let all: Vec<usize> = (0..dataset.len()).collect();
        // Decoding at the crop size of a tiny preprocess keeps the check about the files.
        let pre = task2vec::dataset::Preprocess::efficientnet_lite().at_size(8);
        for chunk in all.chunks(1024) {
            summary
                .skipped
                .extend(dataset.load_batch(chunk, &pre)?.skipped);
        }
    }

    let mut predictions = Vec::new();
    if args.predict > 0 {
        let probe = args.probe.load()?;
        let picks = balanced_sample(&dataset.labels(), args.predict, args.seed);
        let batch = dataset.load_batch(&picks, &probe.info().preprocess)?;
        if !batch.is_empty() {
            let logits = classify(probe.as_ref(), &batch.images(&Device::Cpu)?)
                .context("running the probe")?;
            for ((&i, &label), top) in batch
                .indices
                .iter()
                .zip(&batch.labels)
                .zip(top_k(&logits, 3)?)
            {
                predictions.push((i, dataset.classes()[label].clone(), top));
            }
        }
        summary.skipped.extend(batch.skipped);
    }

    if args.json {
        let preds: Vec<_> = predictions
            .iter()
            .map(|(i, class, top)| {
                json!({
                    "item": i,
                    "class": class,
                    "imagenet_top": top.iter().map(|&(c, p)| json!({
                        "index": c,
                        "name": task2vec::probe::imagenet::class_name(c),
                        "prob": p,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "summary": summary, "predictions": preds }))?
        );
        return Ok(());
    }

    print!("{summary}");
    if !predictions.is_empty() {
        println!(
            "probe    {} (ImageNet top-3 for {} images)",
            args.probe.probe,
            predictions.len()
        );
        for (i, class, top) in &predictions {
            let shown: Vec<String> = top.iter().map(|&(c, p)| describe(c, p)).collect();
            println!("  item {i:>6}  class {class:<12}  {}", shown.join(", "));
        }
    }
    Ok(())
}
