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
//! - [`error`]: the typed error every function returns.

pub mod dataset;
pub mod error;
pub mod probe;

pub use error::{Error, Result};
