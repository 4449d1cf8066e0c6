//! Task embeddings: the vector, how it was made, and its file.
//!
//! An [`Embedding`] is what [`crate::pipeline::embed`] returns: the filter-averaged Fisher
//! diagonal (`hessian`, one value per filter of the probe, in the probe's module order), the
//! per-filter prior `scale` (all ones except for the variational estimator), and an
//! [`EmbeddingMeta`] recording everything needed to trust and compare it: probe and weights
//! hash, settings, [`LayoutEntry`] list, dataset fingerprint, sample counts.
//!
//! - `layout`: filter averaging ([`filter_average`]) and the vector's [`LayoutEntry`] list;
//! - `settings`: [`EmbedSettings`], every knob of the pipeline, with the product defaults;
//! - `metadata`: [`EmbeddingMeta`] and its records;
//! - `file`: [`Embedding::save`] / [`Embedding::load`], safetensors with a JSON document in
//!   the header (the format is documented in `docs/embedding-format.md`);
//! - `compare`: [`Embedding::check_comparable`], which refuses to compare embeddings made
//!   with different probes or settings that change the vector's meaning.

mod compare;
mod file;
mod layout;
mod metadata;
mod settings;
mod timestamp;

pub use layout::*;
pub use metadata::{
    DatasetRecord, EmbeddingMeta, HeadRecord, ProbeRecord, SampleCounts, FORMAT_VERSION,
    METADATA_KEY,
};
pub use settings::{EmbedSettings, FisherPassSettings, DEFAULT_CACHE_BUDGET_BYTES};

pub(crate) use timestamp::rfc3339_utc;

use crate::fisher::Estimator;
use crate::{Error, Result};

/// A task embedding: two vectors of the layout's length and the record of how they were made.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The filter-averaged Fisher diagonal (for the variational estimator, the per-filter
    /// inverse variance): non-negative, one value per [`LayoutEntry`] filter.
    pub hessian: Vec<f32>,
    /// The per-filter prior scale: ones for the Monte-Carlo and per-example estimators; for
    /// the variational one, each layer's prior precision repeated over its filters.
    pub scale: Vec<f32>,
    /// How it was made.
    pub meta: EmbeddingMeta,
}

impl Embedding {
    /// Length of the vectors.
    pub fn len(&self) -> usize {
        self.hessian.len()
    }

    /// True for an empty embedding (never made by the pipeline).
    pub fn is_empty(&self) -> bool {
        self.hessian.is_empty()
    }

    /// Euclidean norm of `hessian`, computed in f64.
    pub fn norm(&self) -> f64 {
        l2_norm(&self.hessian)
    }

    /// The estimator that made it.
    pub fn estimator(&self) -> Estimator {
        self.meta.settings.fisher.estimator
    }

    /// The variational *trivial* embedding of the same task: the prior, whose precision is the
    /// scale (`hessian = scale`), as the reference code defines it for the asymmetric distance.
    ///
    /// Errors: [`Error::Mismatch`] for the other estimators, which have no prior; their trivial
    /// embedding is a random-label run ([`crate::pipeline::embed_trivial`]).
    pub fn prior(&self) -> Result<Embedding> {
        if self.estimator() != Estimator::Variational {
            return Err(Error::Mismatch(format!(
                "only variational embeddings have a prior; this one is {:?} (use a random-label \
                 embedding as its trivial embedding)",
                self.estimator()
            )));
        }
        let mut meta = self.meta.clone();
        meta.norm = l2_norm(&self.scale);
        Ok(Embedding {
            hessian: self.scale.clone(),
            scale: self.scale.clone(),
            meta,
        })
    }
}

/// Euclidean norm in f64.
pub(crate) fn l2_norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}
