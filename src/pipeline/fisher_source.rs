//! The Fisher pass's batches: class-balanced draws from the sampled images.
//!
//! Each epoch draws `draws` positions of the feature pass's sample with replacement,
//! class-balanced by the labels in use ([`balanced_draws`], seeded per epoch), and cuts them
//! into batches. A batch's input is gathered from the feature pass's cache when there is one,
//! else decoded again and, with `skip_stages > 0`, run through the frozen stages (eval-mode
//! batch norm, no gradient graph) — the same computation the cache holds.

use std::cell::{Cell, RefCell};

use candle_core::Tensor;

use super::features::FeaturePass;
use super::seeds::{derive_epoch, Stream};
use super::{Progress, Stage};
use crate::dataset::{balanced_draws, Dataset, Preprocess, Skipped};
use crate::fisher::{BatchSource, FisherBatch};
use crate::probe::{Forward, Probe};
use crate::Result;

/// A [`BatchSource`] over the images of a feature pass.
pub(crate) struct SampleSource<'a> {
    pub dataset: &'a Dataset,
    pub probe: &'a dyn Probe,
    pub pre: &'a Preprocess,
    pub pass: &'a FeaturePass,
    /// The label of each position (the dataset's, or random ones).
    pub labels: &'a [usize],
    pub skip_stages: usize,
    pub draws: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Hand the labels to the estimator (the variational one trains on the task's labels);
    /// otherwise the estimator samples them from the model.
    pub give_labels: bool,
    /// Whether this is the random-label (trivial) pass, for progress reports.
    pub random_labels: bool,
    /// Draws over all epochs, for progress reports.
    pub total: usize,
    pub progress: RefCell<&'a mut dyn FnMut(Progress)>,
    pub done: Cell<usize>,
    /// Images that failed to decode in this pass (files changed since the feature pass).
    pub skipped: RefCell<Vec<Skipped>>,
}

impl SampleSource<'_> {
    fn report(&self, consumed: usize) {
        self.done.set(self.done.get() + consumed);
        (self.progress.borrow_mut())(Progress {
            stage: Stage::Fisher,
            done: self.done.get(),
            total: self.total,
            random_labels: self.random_labels,
        });
    }

    /// The batch of `positions`, or `None` when none of its images decoded.
    fn batch(&self, positions: &[usize]) -> Result<Option<FisherBatch>> {
        let (input, kept) = match &self.pass.cache {
            Some(cache) => (cache.gather(positions)?, positions.to_vec()),
            None => {
                let wanted: Vec<usize> = positions.iter().map(|&p| self.pass.indices[p]).collect();
                let batch = self.dataset.load_batch(&wanted, self.pre)?;
                self.skipped
                    .borrow_mut()
                    .extend(batch.skipped.iter().cloned());
                if batch.is_empty() {
                    return Ok(None);
                }
                // Decoded images keep their order: walk both lists to find the survivors.
                let mut kept = Vec::with_capacity(batch.len());
                let mut survivors = batch.indices.iter().peekable();
                for &p in positions {
                    if survivors.peek() == Some(&&self.pass.indices[p]) {
                        survivors.next();
                        kept.push(p);
                    }
                }
                let x = batch
                    .images(self.probe.device())?
                    .to_dtype(self.probe.dtype())?;
                let input = if self.skip_stages > 0 {
                    self.probe
                        .forward_stages(&x, 0, self.skip_stages, Forward::INFERENCE)?
                } else {
                    x
                };
                (input, kept)
            }
        };
        let labels = if self.give_labels {
            let y: Vec<u32> = kept.iter().map(|&p| self.labels[p] as u32).collect();
            Some(Tensor::from_vec(y, kept.len(), self.probe.device())?)
        } else {
            None
        };
        Ok(Some(FisherBatch { input, labels }))
    }
}

impl BatchSource for SampleSource<'_> {
    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<FisherBatch>> + '_> {
        let draws = balanced_draws(
            self.labels,
            self.draws,
            derive_epoch(self.seed, Stream::FisherDraws, epoch),
        );
        let chunks: Vec<Vec<usize>> = draws
            .chunks(self.batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect();
        Box::new(EpochBatches {
            source: self,
            chunks: chunks.into_iter(),
            pending: 0,
        })
    }
}

/// One epoch's batches. Progress counts a batch when the estimator asks for the next one, i.e.
/// once it has been used, so the reported rate is the estimator's, not the decoder's.
struct EpochBatches<'s, 'a> {
    source: &'s SampleSource<'a>,
    chunks: std::vec::IntoIter<Vec<usize>>,
    pending: usize,
}

impl Iterator for EpochBatches<'_, '_> {
    type Item = Result<FisherBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pending > 0 {
            self.source.report(std::mem::take(&mut self.pending));
        }
        loop {
            let positions = self.chunks.next()?;
            match self.source.batch(&positions) {
                Ok(Some(batch)) => {
                    self.pending = positions.len();
                    return Some(Ok(batch));
                }
                // Nothing decoded: count the draws as done and move on.
                Ok(None) => self.source.report(positions.len()),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
