//! Everything that decides an embedding apart from the dataset and the probe.

use serde::{Deserialize, Serialize};

use crate::dataset::Preprocess;
use crate::fisher::{Estimator, FisherSettings, VariationalSettings};
use crate::head::HeadSettings;
use crate::probe::{BnMode, ProbeInfo};
use crate::{Error, Result};

/// The default memory budget for caching the Fisher pass's inputs: 1 GiB.
pub const DEFAULT_CACHE_BUDGET_BYTES: u64 = 1 << 30;

/// Settings of one embedding, independent of the probe. Every field is recorded in the
/// embedding's metadata. The defaults are the product's: the reference Task2Vec recipe, except
/// for the batch-norm mode (see [`EmbedSettings::bn`]) and seeding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmbedSettings {
    /// At most this many images of the dataset are used, chosen class-balanced
    /// ([`crate::dataset::balanced_sample`]); their features fit the head and the Fisher
    /// draws come from them too. Default 10,000.
    pub max_samples: usize,
    /// `None` (default): the probe's own preprocessing (EfficientNet-Lite0: shorter side to
    /// 256, centre crop 224). `Some(s)`: shorter side resized to `s`, centre crop `s`×`s` (the
    /// whole picture of a square image) with the probe's normalisation — smaller is faster
    /// (64 px is about 12 times cheaper than 224) and fits small images such as MNIST.
    pub image_size: Option<u32>,
    /// Images decoded and run through the probe at once while computing features (default 64).
    /// Peak memory grows with it; the result does not depend on it beyond float rounding.
    pub feature_batch_size: usize,
    /// How the task's classifier head is fitted.
    pub head: HeadSettings,
    /// How the Fisher diagonal is estimated.
    pub fisher: FisherPassSettings,
    /// Batch-norm behaviour in the Fisher pass. Default [`BnMode::Eval`]: the probe is a fixed
    /// feature extractor, so each image's gradient does not depend on which other images share
    /// its batch, the per-example estimator means what it says, and the head sees the same
    /// network it was fitted on. [`BnMode::Train`] reproduces the reference code (batch
    /// statistics). Features for the head, and the stages below `skip_stages`, always run in
    /// eval mode.
    pub bn: BnMode,
    /// Task2Vec's `skip_layers`: the Fisher covers stages `skip_stages..` only, and the input of
    /// that stage is computed once without gradients. 0 (default) covers the whole probe.
    pub skip_stages: usize,
    /// Include batch-norm scales (one value per channel) in the vector, as the reference
    /// Monte-Carlo embedding does (default true). The variational estimator has no batch-norm
    /// entries, so there it changes nothing.
    pub include_bn: bool,
    /// Seeds every random choice: the sample, the head's initialisation and draws, the Fisher
    /// draws and label sampling, random labels (default 0).
    pub seed: u64,
    /// Replace the labels of the sampled images by labels drawn uniformly at random: the
    /// *trivial* embedding of the task, for the asymmetric distance (see
    /// `docs/trivial-embedding.md`). Default false.
    pub random_labels: bool,
    /// Cache the Fisher pass's inputs (the preprocessed images, or the activations entering
    /// stage `skip_stages`) from the feature pass when all of them fit in this many bytes;
    /// otherwise decode and recompute them for every Fisher batch. Default 1 GiB. Changes the
    /// speed, not the result (beyond float rounding).
    pub cache_budget_bytes: u64,
}

impl Default for EmbedSettings {
    fn default() -> Self {
        EmbedSettings {
            max_samples: 10_000,
            image_size: None,
            feature_batch_size: 64,
            head: HeadSettings::default(),
            fisher: FisherPassSettings::default(),
            bn: BnMode::Eval,
            skip_stages: 0,
            include_bn: true,
            seed: 0,
            random_labels: false,
            cache_budget_bytes: DEFAULT_CACHE_BUDGET_BYTES,
        }
    }
}

/// How the Fisher diagonal is estimated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FisherPassSettings {
    /// The estimator (default [`Estimator::MonteCarlo`], the reference's).
    pub estimator: Estimator,
    /// Class-balanced draws with replacement per epoch (default 10,000, as the reference).
    pub draws: usize,
    /// Images per backward pass (default 64). The Monte-Carlo estimate is F / batch_size in
    /// expectation, so Monte-Carlo embeddings with different batch sizes are not comparable.
    pub batch_size: usize,
    /// Settings of the variational estimator (its epochs are epochs over `draws`).
    pub variational: VariationalSettings,
}

impl Default for FisherPassSettings {
    fn default() -> Self {
        FisherPassSettings {
            estimator: Estimator::MonteCarlo,
            draws: 10_000,
            batch_size: 64,
            variational: VariationalSettings::default(),
        }
    }
}

impl FisherPassSettings {
    /// Epochs the estimator takes over the draws (the variational one trains several).
    pub fn epochs(&self) -> usize {
        match self.estimator {
            Estimator::Variational => self.variational.epochs,
            Estimator::MonteCarlo | Estimator::PerExample => 1,
        }
    }
}

impl EmbedSettings {
    /// The preprocessing of the probe at the chosen image size.
    pub fn preprocess(&self, probe: &ProbeInfo) -> Preprocess {
        match self.image_size {
            None => probe.preprocess.clone(),
            Some(s) => Preprocess {
                resize_shorter: s,
                crop: s,
                ..probe.preprocess.clone()
            },
        }
    }

    /// The settings handed to [`crate::fisher::estimate`], with its own seed derived from
    /// [`EmbedSettings::seed`].
    pub fn fisher_settings(&self, seed: u64) -> FisherSettings {
        FisherSettings {
            estimator: self.fisher.estimator,
            bn: self.bn,
            from_stage: self.skip_stages,
            seed,
            variational: self.fisher.variational.clone(),
        }
    }

    /// Checks the settings against a probe before anything runs.
    ///
    /// Errors: [`Error::Mismatch`] naming the setting: a zero sample count, batch size, draw
    /// count or image size, a `skip_stages` that leaves no stage for the Fisher, or a learning
    /// rate that is not a positive number.
    pub fn validate(&self, probe: &ProbeInfo) -> Result<()> {
        let bad = |what: String| Err(Error::Mismatch(format!("embedding settings: {what}")));
        if self.max_samples < 2 {
            return bad(format!(
                "max_samples is {}, at least 2 images are needed",
                self.max_samples
            ));
        }
        for (name, v) in [
            ("feature_batch_size", self.feature_batch_size),
            ("head.batch_size", self.head.batch_size),
            ("fisher.batch_size", self.fisher.batch_size),
            ("fisher.draws", self.fisher.draws),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.fisher.epochs() == 0 {
            return bad("fisher.variational.epochs must be at least 1".into());
        }
        if self.image_size == Some(0) {
            return bad("image_size must be at least 1 pixel".into());
        }
        if self.skip_stages >= probe.num_stages {
            return bad(format!(
                "skip_stages is {} but `{}` has {} stages (0..{}): nothing would be left for \
                 the Fisher",
                self.skip_stages,
                probe.arch,
                probe.num_stages,
                probe.num_stages - 1
            ));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.head.lr) {
            return bad(format!("head.lr must be positive, not {}", self.head.lr));
        }
        if !(self.head.weight_decay.is_finite() && self.head.weight_decay >= 0.0) {
            return bad(format!(
                "head.weight_decay must be a non-negative number, not {}",
                self.head.weight_decay
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ProbeInfo {
        ProbeInfo {
            arch: "efficientnet-lite0".into(),
            weights_sha256: "0".repeat(64),
            feature_dim: 1280,
            num_classes: 1000,
            num_stages: 18,
            preprocess: Preprocess::efficientnet_lite(),
        }
    }

    #[test]
    fn defaults_are_the_reference_recipe_and_valid() {
        let s = EmbedSettings::default();
        assert_eq!(s.head.lr, 4e-4);
        assert_eq!(s.head.weight_decay, 1e-4);
        assert_eq!((s.head.epochs, s.head.draws_per_epoch), (10, 10_000));
        assert_eq!(s.fisher.estimator, Estimator::MonteCarlo);
        assert_eq!((s.fisher.draws, s.fisher.batch_size), (10_000, 64));
        s.validate(&info()).unwrap();
        assert_eq!(s.preprocess(&info()), Preprocess::efficientnet_lite());
    }

    #[test]
    fn partial_json_fills_in_defaults() {
        let s: EmbedSettings =
            serde_json::from_str(r#"{"image_size": 64, "fisher": {"draws": 128}}"#).unwrap();
        assert_eq!(s.fisher.draws, 128);
        assert_eq!(s.fisher.batch_size, 64);
        assert_eq!(s.max_samples, 10_000);
        let p = s.preprocess(&info());
        assert_eq!((p.resize_shorter, p.crop), (64, 64));
        assert_eq!(p.mean, Preprocess::efficientnet_lite().mean);
        let back: EmbedSettings =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let check = |s: EmbedSettings, needle: &str| {
            let e = s.validate(&info()).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        check(
            EmbedSettings {
                skip_stages: 18,
                ..Default::default()
            },
            "skip_stages",
        );
        let mut s = EmbedSettings::default();
        s.fisher.batch_size = 0;
        check(s, "fisher.batch_size");
        let mut s = EmbedSettings::default();
        s.head.lr = f64::NAN;
        check(s, "head.lr");
        check(
            EmbedSettings {
                max_samples: 1,
                ..Default::default()
            },
            "max_samples",
        );
    }
}
