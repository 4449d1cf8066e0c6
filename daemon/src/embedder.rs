//! The probe and the embedding settings, loaded once and shared by every job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use candle_core::{DType, Device};
use task2vec::dataset::Dataset;
use task2vec::embedding::{EmbedSettings, Embedding};
use task2vec::pipeline::{embed, Progress, Stage};
use task2vec::probe::spec::{find_default_weights, open_probe, ProbeArch};
use task2vec::probe::Probe;

use crate::config::{DaemonConfig, DeviceChoice};
use crate::locations::{asset_dirs, default_cache_dir, python_site_packages};
use crate::{Error, Result};

/// The loaded probe with the daemon's embedding settings. `Send + Sync`: embeddings of several
/// datasets run at once on the same probe (its weights are only read).
pub(crate) struct Embedder {
    probe: Box<dyn Probe>,
    settings: EmbedSettings,
}

/// What one embedding cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EmbedStats {
    /// Wall time in seconds.
    pub secs: f64,
    /// Images through the probe (feature pass plus Fisher pass).
    pub images: u64,
}

impl Embedder {
    /// Finds the weights, loads the probe on the CPU and checks the settings against it
    /// (blocking: reads and maybe converts the weights).
    ///
    /// Errors: [`Error::Probe`] when the weights cannot be found or read;
    /// [`Error::Config`] (key `embedding`) when the settings do not fit the probe.
    pub fn load(config: &DaemonConfig) -> Result<Embedder> {
        let p = &config.probe;
        match p.device {
            DeviceChoice::Auto => tracing::info!(
                device = "cpu",
                "probe.device = auto: running on the CPU (the probes' custom operations have \
                 CPU kernels only in this build)"
            ),
            DeviceChoice::Cpu => tracing::info!(device = "cpu", "probe.device = cpu"),
        }
        let weights = match &p.weights {
            Some(w) => w.clone(),
            None if p.arch == ProbeArch::EfficientNetLite0 => {
                find_default_weights(&asset_dirs(&p.assets), &python_site_packages())
                    .map_err(Error::Probe)?
            }
            None => {
                return Err(Error::config(
                    "probe.weights",
                    None,
                    format!("probe {} has no bundled weights", p.arch),
                ))
            }
        };
        let cache = p.cache_dir.clone().or_else(default_cache_dir);
        let started = Instant::now();
        let probe = open_probe(p.arch, &weights, cache.as_deref(), &Device::Cpu, DType::F32)
            .map_err(Error::Probe)?;
        config
            .embedding
            .validate(probe.info())
            .map_err(|e| Error::Config {
                key: Some("embedding".into()),
                origin: None,
                message: e.to_string(),
            })?;
        tracing::info!(
            probe = %p.arch,
            weights = %weights.display(),
            sha256 = %probe.info().weights_sha256,
            secs = started.elapsed().as_secs_f64(),
            "probe loaded"
        );
        Ok(Embedder {
            probe,
            settings: config.embedding.clone(),
        })
    }

    /// Embeds `dataset`, recording `uri` as its path; counts images into `images` as they go
    /// (blocking: the whole pipeline).
    pub fn embed(
        &self,
        dataset: &Dataset,
        uri: &str,
        images: &AtomicU64,
    ) -> task2vec::Result<(Embedding, EmbedStats)> {
        let started = Instant::now();
        let mut last = (Stage::Features, 0usize);
        let mut counted = 0u64;
        let mut progress = |p: Progress| {
            if p.stage == Stage::Head {
                return;
            }
            let done_before = if last.0 == p.stage { last.1 } else { 0 };
            let delta = p.done.saturating_sub(done_before) as u64;
            last = (p.stage, p.done);
            counted += delta;
            images.fetch_add(delta, Ordering::Relaxed);
        };
        let mut embedding = embed(dataset, self.probe.as_ref(), &self.settings, &mut progress)?;
        embedding.meta.dataset.path = uri.to_string();
        Ok((
            embedding,
            EmbedStats {
                secs: started.elapsed().as_secs_f64(),
                images: counted,
            },
        ))
    }

    /// The trivial embedding (random labels) of the dataset at `uri`, with the same settings.
    pub fn embed_trivial(&self, dataset: &Dataset, uri: &str) -> task2vec::Result<Embedding> {
        let mut t = task2vec::pipeline::embed_trivial(
            dataset,
            self.probe.as_ref(),
            &self.settings,
            &mut |_| {},
        )?;
        t.meta.dataset.path = uri.to_string();
        Ok(t)
    }
}
