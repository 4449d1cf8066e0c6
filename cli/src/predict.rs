//! `t2v predict`: the probe's ImageNet classifier on image files.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;
use task2vec::dataset::{load_image, DEFAULT_MAX_PIXELS};

use crate::probe_args::{classify, describe, top_k, ProbeArgs};

/// Flags of `t2v predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Image files (JPEG, PNG, WebP, BMP, GIF).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,

    /// How many classes to show per image.
    #[arg(long, default_value_t = 5, value_name = "K")]
    top: usize,

    #[command(flatten)]
    probe: ProbeArgs,
}

/// Decodes every image (a bad one is reported and the rest still run), then prints each one's
/// top classes.
pub fn run(args: PredictArgs) -> Result<()> {
    let probe = args.probe.load()?;
    let pre = &probe.info().preprocess;
    let mut data = Vec::new();
    let mut good = Vec::new();
    let mut failed = 0;
    for path in &args.images {
        match load_image(path, DEFAULT_MAX_PIXELS) {
            Ok(img) => {
                data.extend(pre.apply(&img));
                good.push(path);
            }
            Err(e) => {
                eprintln!("skipped: {e}");
                failed += 1;
            }
        }
    }
    if !good.is_empty() {
        let images = pre.to_tensor(data, good.len(), &Device::Cpu)?;
        let logits = classify(probe.as_ref(), &images).context("running the probe")?;
        for (path, top) in good.iter().zip(top_k(&logits, args.top.max(1))?) {
            let shown: Vec<String> = top.iter().map(|&(c, p)| describe(c, p)).collect();
            println!("{}\t{}", path.display(), shown.join(", "));
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} images could not be read", args.images.len());
    }
    Ok(())
}
