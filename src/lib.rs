//! # task2vec — the core library
//!
//! Task2Vec (Achille et al., ICCV 2019) turns a labelled dataset into a fixed-length vector: run
//! the data through a fixed pretrained *probe*, fit a classifier head, take the diagonal of the
//! Fisher information of the probe's weights and average it per filter.
//!
//! This crate is pure, synchronous compute with no I/O policy: it knows nothing about tokio,
//! file watching or Qdrant. Layout, in pipeline order:
//!
//! - [`dataset`]: readers for image folders, manifests (CSV / JSON Lines) and IDX files,
//!   image decoding with limits, class-balanced sampling and probe preprocessing;
//! - [`probe`]: probe networks in candle (EfficientNet-Lite0, ResNet-18/34/50), forward and
//!   backward, with their weight loaders (including PyTorch's legacy `.pth` format);
//! - [`head`]: the task's linear classifier head, fitted on cached probe features (reference
//!   recipe: Adam with coupled L2 weight decay, class-balanced draws);
//! - [`fisher`]: the Fisher diagonal of the probe's weights for a task (Monte-Carlo,
//!   per-example and variational estimators);
//! - [`embedding`]: the Task2Vec vector (filter averaging of a Fisher diagonal, its layout),
//!   its settings and metadata, and its safetensors file format;
//! - [`pipeline`]: the end-to-end `embed` (features → head → Fisher → filter averaging),
//!   seeded and reproducible, with progress reports; also the trivial (random-label)
//!   embedding;
//! - [`distance`]: the Task2Vec distances (d_sym, d_asym, KL family), pdist / cdist;
//! - [`threads`]: the compute thread count, set once at start-up;
//! - [`malloc`]: the allocator policy the binaries choose at start-up (freed memory kept);
//! - [`error`]: the typed error every function returns.

pub mod dataset;
pub mod distance;
pub mod embedding;
pub mod error;
pub mod fisher;
pub mod head;
pub mod malloc;
pub mod pipeline;
pub mod probe;
pub mod threads;

pub use error::{Error, Result};
