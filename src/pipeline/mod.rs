//! From a labelled dataset and a probe to a task embedding, end to end.
//!
//! [`embed`] runs the Task2Vec recipe in four stages, reporting [`Progress`] as it goes:
//!
//! 1. **Features** (`features`): up to `max_samples` images chosen class-balanced and seeded
//!    ([`crate::dataset::balanced_sample`]; an image that fails to decode is counted and
//!    replaced by the next in the sample order), decoded and preprocessed one batch at a time,
//!    run through the probe in eval mode without a gradient graph. The pooled features are
//!    kept; so are the Fisher pass's inputs when they fit `cache_budget_bytes`.
//! 2. **Head** ([`crate::head`]): a fresh linear head, initialised like `torch.nn.Linear`,
//!    fitted on the cached features with the reference recipe.
//! 3. **Fisher** (`fisher_source` + [`crate::fisher::estimate`]): class-balanced draws with
//!    replacement *from the same sampled images*, so `max_samples` bounds every stage (the
//!    reference ignores it for the Fisher when `skip_layers` is 0), in batches whose labels the
//!    estimator samples from the model (the variational estimator gets the task's labels).
//! 4. **Filter averaging** ([`crate::embedding::filter_average`]) into the vector and its
//!    layout, wrapped with its metadata into an [`Embedding`].
//!
//! Every random choice has its own stream derived from [`EmbedSettings::seed`] (`seeds`), and
//! every reduction runs in a fixed order, so the same inputs and settings give a bit-identical
//! vector on the same machine. [`embed_trivial`] makes the task's trivial embedding (random
//! labels, same images) for the asymmetric distance; [`embed_with_trivial`] makes both,
//! sharing the feature pass.

mod features;
mod fisher_source;
mod seeds;

use std::cell::{Cell, RefCell};
use std::time::SystemTime;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::dataset::{Dataset, Preprocess};
use crate::embedding::{
    filter_average, l2_norm, rfc3339_utc, DatasetRecord, EmbedSettings, Embedding, EmbeddingMeta,
    HeadRecord, ProbeRecord, SampleCounts, FORMAT_VERSION,
};
use crate::fisher::{estimate, Estimator, FisherDiag};
use crate::head::{fit_head, init_head};
use crate::probe::Probe;
use crate::{Error, Result};
use features::FeaturePass;
use fisher_source::SampleSource;
use seeds::{derive, derive_epoch, Stream};

/// A stage of the pipeline, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Decoding images and computing their features (unit: images).
    Features,
    /// Fitting the classifier head (unit: draws of cached features).
    Head,
    /// Estimating the Fisher diagonal (unit: draws, i.e. images through forward + backward).
    Fisher,
}

/// Where the pipeline is. Each stage starts with a report of `done = 0` and ends with
/// `done = total`; `done` never decreases within a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// The stage running.
    pub stage: Stage,
    /// Units done in this stage.
    pub done: usize,
    /// Units this stage will do.
    pub total: usize,
    /// True during the head and Fisher stages of the trivial (random-label) embedding.
    pub random_labels: bool,
}

/// Embeds `dataset` with `probe`: see the [module docs](self).
///
/// Errors: [`Error::Mismatch`] for settings that do not fit the probe
/// ([`EmbedSettings::validate`]); [`Error::Dataset`] when the decoded images cover fewer than
/// two classes; I/O and tensor errors as they come.
pub fn embed(
    dataset: &Dataset,
    probe: &dyn Probe,
    settings: &EmbedSettings,
    progress: &mut dyn FnMut(Progress),
) -> Result<Embedding> {
    let task = Task::prepare(dataset, probe, settings, progress)?;
    task.embed(settings.random_labels, progress)
}

/// The trivial embedding of `dataset`: the same images as [`embed`] with the same settings,
/// with labels drawn uniformly at random (seeded), i.e. a task whose labels carry no
/// information about its images. It is the `t0` of the asymmetric distance for the
/// Monte-Carlo and per-example estimators (see `docs/trivial-embedding.md`; for variational
/// embeddings [`Embedding::prior`] is the reference's choice).
pub fn embed_trivial(
    dataset: &Dataset,
    probe: &dyn Probe,
    settings: &EmbedSettings,
    progress: &mut dyn FnMut(Progress),
) -> Result<Embedding> {
    let task = Task::prepare(dataset, probe, settings, progress)?;
    task.embed(true, progress)
}

/// The embedding of `dataset` and its trivial embedding (as [`embed`] with
/// `random_labels = false` and [`embed_trivial`]), computing the features once.
pub fn embed_with_trivial(
    dataset: &Dataset,
    probe: &dyn Probe,
    settings: &EmbedSettings,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Embedding, Embedding)> {
    let task = Task::prepare(dataset, probe, settings, progress)?;
    Ok((task.embed(false, progress)?, task.embed(true, progress)?))
}

/// A dataset after the feature pass, ready for heads and Fisher passes.
struct Task<'a> {
    dataset: &'a Dataset,
    probe: &'a dyn Probe,
    settings: &'a EmbedSettings,
    pre: Preprocess,
    pass: FeaturePass,
}

impl<'a> Task<'a> {
    fn prepare(
        dataset: &'a Dataset,
        probe: &'a dyn Probe,
        settings: &'a EmbedSettings,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self> {
        settings.validate(probe.info())?;
        let pre = settings.preprocess(probe.info());
        let pass = features::run(dataset, probe, &pre, settings, &mut |done, total| {
            progress(Progress {
                stage: Stage::Features,
                done,
                total,
                random_labels: false,
            })
        })?;
        Ok(Task {
            dataset,
            probe,
            settings,
            pre,
            pass,
        })
    }

    /// Head, Fisher and filter averaging, with the dataset's labels or random ones.
    fn embed(&self, random_labels: bool, progress: &mut dyn FnMut(Progress)) -> Result<Embedding> {
        let (settings, probe) = (self.settings, self.probe);
        let classes = self.dataset.classes().len();
        let labels = if random_labels {
            let mut rng = ChaCha8Rng::seed_from_u64(derive(settings.seed, Stream::RandomLabels));
            (0..self.pass.labels.len())
                .map(|_| rng.random_range(0..classes))
                .collect()
        } else {
            self.pass.labels.clone()
        };

        let head_total = settings.head.epochs * settings.head.draws_per_epoch;
        let report_head = |progress: &mut dyn FnMut(Progress), done| {
            progress(Progress {
                stage: Stage::Head,
                done,
                total: head_total,
                random_labels,
            })
        };
        report_head(progress, 0);
        let head = init_head(
            classes,
            probe.info().feature_dim,
            derive(settings.seed, Stream::HeadInit),
            probe.device(),
            probe.dtype(),
        )?;
        let fitted = fit_head(
            &head,
            &self.pass.features,
            &labels,
            &settings.head,
            &|epoch| derive_epoch(settings.seed, Stream::HeadDraws, epoch),
            &mut |done, _| report_head(progress, done),
        )?;

        let epochs = settings.fisher.epochs();
        let total = epochs * settings.fisher.draws;
        progress(Progress {
            stage: Stage::Fisher,
            done: 0,
            total,
            random_labels,
        });
        let source = SampleSource {
            dataset: self.dataset,
            probe,
            pre: &self.pre,
            pass: &self.pass,
            labels: &labels,
            skip_stages: settings.skip_stages,
            draws: settings.fisher.draws,
            batch_size: settings.fisher.batch_size,
            seed: settings.seed,
            give_labels: settings.fisher.estimator == Estimator::Variational,
            random_labels,
            total,
            progress: RefCell::new(&mut *progress),
            done: Cell::new(0),
            skipped: RefCell::new(Vec::new()),
        };
        let diag = estimate(
            probe,
            &fitted.head,
            &source,
            &settings.fisher_settings(derive(settings.seed, Stream::Fisher)),
        )?;
        let fisher_skipped = source.skipped.borrow().len();
        drop(source);

        let (hessian, layout) = filter_average(&diag, settings.include_bn)?;
        let scale = scale_vector(&diag, &layout, settings.fisher.estimator)?;
        let mut recorded = settings.clone();
        recorded.random_labels = random_labels;
        Ok(Embedding {
            meta: EmbeddingMeta {
                format_version: FORMAT_VERSION,
                library_version: env!("CARGO_PKG_VERSION").to_string(),
                created: rfc3339_utc(SystemTime::now()),
                probe: ProbeRecord::new(probe.info(), self.pre.clone()),
                settings: recorded,
                layout,
                dataset: DatasetRecord::new(self.dataset),
                samples: SampleCounts {
                    features: self.pass.indices.len(),
                    fisher: diag.samples,
                    skipped: self.pass.skipped.len() + fisher_skipped,
                },
                head: HeadRecord {
                    final_loss: fitted.epoch_losses.last().copied(),
                    train_accuracy: fitted.train_accuracy,
                },
                norm: l2_norm(&hessian),
            },
            hessian,
            scale,
        })
    }
}

/// The per-filter scale: ones, or for the variational estimator each layer's prior scale
/// repeated over its filters.
fn scale_vector(
    diag: &FisherDiag,
    layout: &[crate::embedding::LayoutEntry],
    estimator: Estimator,
) -> Result<Vec<f32>> {
    let mut scale = Vec::new();
    for entry in layout {
        let value = match estimator {
            Estimator::Variational => diag
                .scale
                .iter()
                .find(|(module, _)| *module == entry.module)
                .map(|&(_, s)| s)
                .ok_or_else(|| {
                    Error::Mismatch(format!(
                        "the variational estimate has no prior scale for `{}`",
                        entry.module
                    ))
                })?,
            Estimator::MonteCarlo | Estimator::PerExample => 1.0,
        };
        scale.extend(std::iter::repeat_n(value, entry.n_filters));
    }
    Ok(scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedding::{LayoutEntry, LayoutKind};

    fn entry(module: &str, n_filters: usize, offset: usize) -> LayoutEntry {
        LayoutEntry {
            module: module.into(),
            param: format!("{module}.weight"),
            kind: LayoutKind::Conv,
            weight_shape: vec![n_filters, 2, 1, 1],
            n_filters,
            values_per_filter: 2,
            offset,
        }
    }

    fn diag(scale: Vec<(String, f32)>) -> FisherDiag {
        FisherDiag {
            params: Vec::new(),
            samples: 1,
            scale,
            losses: Vec::new(),
        }
    }

    #[test]
    fn variational_scale_is_broadcast_per_filter_and_others_are_ones() {
        let layout = [entry("a", 3, 0), entry("b", 2, 3)];
        let d = diag(vec![("b".into(), 0.5), ("a".into(), 2.0)]);
        assert_eq!(
            scale_vector(&d, &layout, Estimator::Variational).unwrap(),
            [2.0, 2.0, 2.0, 0.5, 0.5]
        );
        assert_eq!(
            scale_vector(&d, &layout, Estimator::MonteCarlo).unwrap(),
            [1.0; 5]
        );
        let missing = diag(vec![("a".into(), 2.0)]);
        let e = scale_vector(&missing, &layout, Estimator::Variational).unwrap_err();
        assert!(e.to_string().contains("`b`"), "{e}");
    }
}
