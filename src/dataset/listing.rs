//! What listing a dataset produces, before it becomes a [`super::Dataset`].

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::skip::Skipped;
use super::{Item, Source};

/// Size and modification time of a listed file, for the fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp {
    /// The path relative to the dataset's root (or as written in the manifest).
    pub rel: PathBuf,
    /// Length in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch (0 where the platform has none).
    pub modified_ns: i128,
}

impl FileStamp {
    /// The stamp of `path` from its metadata.
    pub(crate) fn new(path: &Path, meta: &Metadata) -> Self {
        let modified_ns = meta
            .modified()
            .ok()
            .map(|t| match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_nanos() as i128,
                Err(before) => -(before.duration().as_nanos() as i128),
            })
            .unwrap_or(0);
        FileStamp {
            rel: path.to_path_buf(),
            size: meta.len(),
            modified_ns,
        }
    }
}

/// Classes, items and skips found by one of the listers.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub classes: Vec<String>,
    pub items: Vec<Item>,
    /// One stamp per item, same order.
    pub stamps: Vec<FileStamp>,
    pub skipped: Vec<Skipped>,
}

impl Listing {
    pub(crate) fn push(&mut self, label: usize, source: Source, stamp: FileStamp) {
        self.items.push(Item { label, source });
        self.stamps.push(stamp);
    }
}
