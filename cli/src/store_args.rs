//! The flags every store-using subcommand shares: where the store is, and how a query target
//! (a dataset, an embedding file or a stored task) becomes an embedding of the store's space.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use task2vec::dataset::{Dataset, OpenOptions};
use task2vec::embedding::{EmbedSettings, Embedding};
use task2vec::fisher::Estimator;
use task2vec::pipeline::{embed, embed_with_trivial};
use task2vec::probe::spec::ProbeArch;
use task2vec::probe::Probe;
use task2vec_qdrant::{Store, StoreConfig, VectorSpace};
use uuid::Uuid;

use crate::probe_args::ProbeArgs;

/// Where the store is.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Configuration file (TOML, the daemon's: see config/default.toml). Its `[store]` section
    /// says where the store is; T2V__STORE__* environment variables override it.
    #[arg(long, env = "T2V_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Embedded store folder (overrides the configuration; default ./data).
    #[arg(long, value_name = "DIR", conflicts_with = "qdrant_url")]
    pub store: Option<PathBuf>,

    /// Use the Qdrant server at this gRPC URL instead (e.g. http://localhost:6334).
    #[arg(long, value_name = "URL")]
    pub qdrant_url: Option<String>,

    /// API key of the Qdrant server.
    #[arg(
        long,
        env = "QDRANT_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub qdrant_api_key: Option<String>,
}

/// The store configuration and the daemon's address, as the flags and files say.
pub struct Resolved {
    /// The store to open.
    pub store: StoreConfig,
    /// The daemon's HTTP address, for queries while it owns the embedded store.
    pub daemon: Option<String>,
    /// The embedding settings a new store's vectors are made with (the daemon's).
    pub embedding: EmbedSettings,
}

impl StoreArgs {
    /// Flags over the configuration files over the defaults.
    pub fn resolve(&self) -> Result<Resolved> {
        let config = task2vec_daemon::load_config(self.config.as_deref())
            .context("reading the configuration")?;
        let mut store = config.store.clone();
        if let Some(dir) = &self.store {
            store = StoreConfig::Embedded { path: dir.clone() };
        }
        if let Some(url) = &self.qdrant_url {
            let mut remote = match store {
                StoreConfig::Remote(r) => r,
                StoreConfig::Embedded { .. } => task2vec_qdrant::RemoteConfig::default(),
            };
            remote.url = url.clone();
            store = StoreConfig::Remote(remote);
        }
        if let (Some(key), StoreConfig::Remote(r)) = (&self.qdrant_api_key, &mut store) {
            r.api_key = Some(key.clone());
        }
        // The address the running daemon bound (port 0 picks one), else the configured one.
        let daemon = task2vec_daemon::client::running_daemon_addr(&config.daemon.state_dir)
            .unwrap_or(config.http.addr);
        Ok(Resolved {
            store,
            daemon: Some(format!("http://{daemon}")),
            embedding: config.embedding.clone(),
        })
    }
}

/// Where a store is, in words.
pub fn describe(config: &StoreConfig) -> String {
    match config {
        StoreConfig::Embedded { path } => format!("embedded store {}", path.display()),
        StoreConfig::Remote(r) => format!("Qdrant server {}", r.url),
    }
}

/// Opens an existing store.
pub fn open_existing(config: &StoreConfig) -> Result<Store> {
    Store::open_existing_config(config).with_context(|| format!("opening {}", describe(config)))
}

/// What a query is about: a dataset to embed, an embedding file, or a stored task.
#[derive(Debug, Clone)]
pub enum Target {
    /// A dataset (embedded with the store's settings).
    Dataset(PathBuf),
    /// A `.t2v.safetensors` file.
    File(PathBuf),
    /// A stored task's point id.
    Task(Uuid),
}

impl Target {
    /// `ID` (a UUID), `FILE.t2v.safetensors` or a dataset path.
    pub fn parse(s: &str) -> Target {
        if let Ok(id) = s.parse::<Uuid>() {
            return Target::Task(id);
        }
        let path = PathBuf::from(s);
        if path.is_file() && s.ends_with(".safetensors") {
            Target::File(path)
        } else {
            Target::Dataset(path)
        }
    }
}

/// The embedding settings that put a new embedding in `space` (probe, preprocessing, estimator,
/// batch-norm mode, skipped stages, BN scales, Monte-Carlo batch size); the rest (sample
/// counts, head, seed) from `base`, the configured settings.
pub fn settings_for(space: &VectorSpace, probe: &dyn Probe, base: &EmbedSettings) -> EmbedSettings {
    let mut s = base.clone();
    s.image_size = None;
    let info = probe.info();
    if space.preprocess != info.preprocess {
        s.image_size = Some(space.preprocess.crop);
    }
    s.fisher.estimator = space.estimator;
    s.bn = space.bn;
    s.skip_stages = space.skip_stages;
    s.include_bn = space.include_bn;
    if let Some(b) = space.montecarlo_batch_size {
        s.fisher.batch_size = b;
    }
    s
}

/// Loads the probe a store's vectors were made with (its weights must hash the same; the store
/// refuses the embedding otherwise).
pub fn probe_for(space: &VectorSpace, args: &ProbeArgs) -> Result<Box<dyn Probe>> {
    let arch: ProbeArch = space
        .probe_arch
        .parse()
        .map_err(|e| anyhow::anyhow!("the store's probe `{}`: {e}", space.probe_arch))?;
    let mut args = args.clone();
    args.probe = arch;
    let probe = args.load()?;
    if probe.info().weights_sha256 != space.weights_sha256 {
        bail!(
            "the store's vectors were made with {} weights {}…, but the weights found are {}…: \
             pass --weights with the store's weights",
            space.probe_arch,
            short(&space.weights_sha256),
            short(&probe.info().weights_sha256)
        );
    }
    Ok(probe)
}

fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

/// The store if it exists yet.
pub fn existing_store(config: &StoreConfig) -> Result<Option<Store>> {
    if !Store::exists_config(config).with_context(|| format!("looking for {}", describe(config)))? {
        return Ok(None);
    }
    open_existing(config).map(Some)
}

/// Opens the store for embeddings like `e`, creating it (in `e`'s space) if absent.
pub fn open_for(config: &StoreConfig, e: &Embedding) -> Result<Store> {
    Store::open_config(config, &VectorSpace::of(e))
        .with_context(|| format!("opening {}", describe(config)))
}

/// How to embed a dataset for a store: with the store's own probe and settings when it
/// exists, else with the probe flags and the configured settings (the store will then be
/// created in that space).
pub struct EmbedPlan {
    /// The probe.
    pub probe: Box<dyn Probe>,
    /// The settings.
    pub settings: EmbedSettings,
}

impl EmbedPlan {
    /// The plan for an existing store, with `base` for what its space leaves open.
    pub fn for_store(store: &Store, probe_args: &ProbeArgs, base: &EmbedSettings) -> Result<Self> {
        let probe = probe_for(store.space(), probe_args)?;
        let settings = settings_for(store.space(), probe.as_ref(), base);
        Ok(EmbedPlan { probe, settings })
    }

    /// The plan for `store` if there is one, else for a new store.
    pub fn new(
        store: Option<&Store>,
        probe_args: &ProbeArgs,
        defaults: &EmbedSettings,
    ) -> Result<Self> {
        match store {
            Some(s) => EmbedPlan::for_store(s, probe_args, defaults),
            None => Ok(EmbedPlan {
                probe: probe_args.load()?,
                settings: defaults.clone(),
            }),
        }
    }

    /// Embeds the dataset at `path`; also its trivial embedding when `with_trivial` (not for
    /// the variational estimator, whose prior is the trivial embedding).
    pub fn embed(&self, path: &Path, with_trivial: bool) -> Result<(Embedding, Option<Embedding>)> {
        let dataset = open_dataset(path)?;
        eprintln!(
            "embedding {} ({} images, {} classes) with {} ...",
            path.display(),
            dataset.len(),
            dataset.classes().len(),
            self.probe.info().arch
        );
        let mut quiet = |_| {};
        let probe = self.probe.as_ref();
        if with_trivial && self.settings.fisher.estimator != Estimator::Variational {
            let (e, t) = embed_with_trivial(&dataset, probe, &self.settings, &mut quiet)?;
            Ok((e, Some(t)))
        } else {
            Ok((embed(&dataset, probe, &self.settings, &mut quiet)?, None))
        }
    }
}

/// Opens a dataset with the default options.
pub fn open_dataset(path: &Path) -> Result<Dataset> {
    Dataset::open(path, &OpenOptions::default())
        .with_context(|| format!("opening dataset {}", path.display()))
}

/// Whether `e` says the store is held open by another process (the daemon).
pub fn is_locked(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<task2vec_qdrant::Error>(),
            Some(task2vec_qdrant::Error::Locked { .. })
        )
    })
}

/// Reads an embedding file.
pub fn load_embedding(path: &Path) -> Result<Embedding> {
    Embedding::load(path).with_context(|| format!("reading embedding {}", path.display()))
}
