//! What an embedding records about how it was made (the file's JSON metadata document).

use serde::{Deserialize, Serialize};

use super::{EmbedSettings, LayoutEntry};
use crate::dataset::{Dataset, Format, Preprocess};
use crate::probe::ProbeInfo;

/// Version of the file format written by this library. Readers refuse other versions: a new
/// version is made whenever an existing field changes meaning; adding a field does not.
pub const FORMAT_VERSION: u32 = 1;

/// Key of the JSON document in the safetensors `__metadata__` map.
pub const METADATA_KEY: &str = "task2vec";

/// Everything an embedding records besides its two vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingMeta {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Version of the `task2vec` library that computed it.
    pub library_version: String,
    /// When it was computed, RFC 3339 in UTC to the second (`2025-11-28T08:05:03Z`).
    pub created: String,
    /// The probe it was computed with.
    pub probe: ProbeRecord,
    /// Every setting (estimator and its settings, batch-norm mode, `skip_stages`,
    /// `include_bn`, seed, random labels, ...).
    pub settings: EmbedSettings,
    /// Which slice of the vector belongs to which module of the probe.
    pub layout: Vec<LayoutEntry>,
    /// The dataset it embeds.
    pub dataset: DatasetRecord,
    /// How many images went into it.
    pub samples: SampleCounts,
    /// How well the task's classifier head fitted.
    pub head: HeadRecord,
    /// Euclidean norm of the `hessian` vector (the paper relates it to task difficulty).
    pub norm: f64,
}

/// The probe an embedding was computed with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// Architecture id, e.g. `efficientnet-lite0`.
    pub arch: String,
    /// SHA-256 of the weights as loaded (see [`ProbeInfo::weights_sha256`]).
    pub weights_sha256: String,
    /// Length of the probe's penultimate features.
    pub feature_dim: usize,
    /// The preprocessing actually used, input size included.
    pub preprocess: Preprocess,
}

impl ProbeRecord {
    /// The record of `probe` run with `preprocess`.
    pub fn new(probe: &ProbeInfo, preprocess: Preprocess) -> Self {
        ProbeRecord {
            arch: probe.arch.clone(),
            weights_sha256: probe.weights_sha256.clone(),
            feature_dim: probe.feature_dim,
            preprocess,
        }
    }
}

/// The dataset an embedding describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// The path it was opened from, made absolute and canonical when it still exists (so the
    /// same dataset gets the same path from any working directory; lossily converted to UTF-8).
    pub path: String,
    /// [`Dataset::fingerprint`] at the time.
    pub fingerprint: String,
    /// Its layout.
    pub format: Format,
    /// Class names; label `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Number of items listed.
    pub items: usize,
}

impl DatasetRecord {
    /// The record of `dataset`.
    pub fn new(dataset: &Dataset) -> Self {
        DatasetRecord {
            path: std::fs::canonicalize(dataset.root())
                .unwrap_or_else(|_| dataset.root().to_path_buf())
                .to_string_lossy()
                .into_owned(),
            fingerprint: dataset.fingerprint(),
            format: dataset.format(),
            classes: dataset.classes().to_vec(),
            items: dataset.len(),
        }
    }
}

/// How many images went into an embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleCounts {
    /// Distinct images whose features were computed (the head's training set and the pool the
    /// Fisher draws from).
    pub features: usize,
    /// Examples that contributed to the Fisher (draws × epochs, minus any that failed to decode).
    pub fisher: usize,
    /// Images that could not be decoded, in both passes together (they were replaced by others
    /// in the feature pass when the dataset had more).
    pub skipped: usize,
}

/// How well the task's classifier head fitted its features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadRecord {
    /// Mean cross-entropy over the last epoch's draws (`None` with zero epochs).
    pub final_loss: Option<f64>,
    /// Accuracy on the images it was fitted on, in `[0, 1]`.
    pub train_accuracy: f64,
}
