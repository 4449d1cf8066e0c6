//! How to open a dataset: which format, which IDX split, how large an image may be.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The on-disk layouts this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A folder with one sub-folder per class (torchvision's `ImageFolder` layout).
    ImageFolder,
    /// A CSV manifest with a `path,label` header.
    Csv,
    /// A JSON Lines manifest, one `{"path": ..., "label": ...}` object per line.
    JsonLines,
    /// MNIST-style IDX files (`*-images-idx3-ubyte[.gz]` + `*-labels-idx1-ubyte[.gz]`).
    Idx,
}

impl Format {
    /// The format's short name, as `t2v` prints and accepts it.
    pub fn name(self) -> &'static str {
        match self {
            Format::ImageFolder => "image-folder",
            Format::Csv => "csv",
            Format::JsonLines => "jsonl",
            Format::Idx => "idx",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which pairs of IDX files a folder of IDX files contributes.
///
/// A pair is an images file `PREFIX-images-idx3-ubyte[.gz]` with its labels file
/// `PREFIX-labels-idx1-ubyte[.gz]`. A prefix ending in `train` is the training split; one
/// ending in `t10k` or `test` is the test split. When a direct path to an images file is
/// opened, the split is ignored and that file's pair is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdxSplit {
    /// The training pair (the default: Task2Vec embeds a task by its training data).
    #[default]
    Train,
    /// The test pair (`t10k` in MNIST and Fashion-MNIST).
    Test,
    /// The training pair, then the test pair, as one dataset (indices continue across them).
    All,
}

/// The default pixel cap: 64 megapixels (an 8000×8000 photo), far above any probe's input yet
/// small enough that a decompression bomb fails before it allocates gigabytes.
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Options for [`super::Dataset::open`]. `OpenOptions::default()` autodetects the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenOptions {
    /// The layout to read; `None` autodetects it from the path (see [`super::Dataset::open`]).
    pub format: Option<Format>,
    /// Which IDX pairs a folder of IDX files contributes.
    pub idx_split: IdxSplit,
    /// The largest image (width × height) that will be decoded; larger ones are skipped with
    /// [`super::SkipReason::TooManyPixels`] before any pixel buffer is allocated.
    pub max_pixels: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            format: None,
            idx_split: IdxSplit::Train,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

impl OpenOptions {
    /// Forces a format instead of autodetecting it.
    pub fn format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }

    /// Chooses the IDX split.
    pub fn idx_split(mut self, split: IdxSplit) -> Self {
        self.idx_split = split;
        self
    }

    /// Sets the pixel cap.
    pub fn max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }
}
