//! Files left out of a dataset, and why.
//!
//! A dataset on disk is rarely clean: a README next to the images, a copy still in progress, a
//! folder that lost its files. Rather than failing the whole dataset or silently dropping data,
//! every file that is left out becomes a [`Skipped`] entry with a precise [`SkipReason`], is
//! logged with `tracing::warn!`, and is shown by `t2v info`.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// One file (or folder) left out of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The file or folder (for a manifest row: the path it names, resolved).
    pub path: PathBuf,
    /// Why it was left out.
    pub reason: SkipReason,
}

impl Skipped {
    /// Records a skip and logs it as a warning.
    pub(crate) fn warn(path: impl Into<PathBuf>, reason: SkipReason) -> Self {
        let path = path.into();
        tracing::warn!(path = %path.display(), %reason, "skipping");
        Skipped { path, reason }
    }
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// Why a file was left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum SkipReason {
    /// The file's first bytes are not those of any image format.
    NotAnImage,
    /// An image format this build cannot decode (named, e.g. `Tiff`).
    UnsupportedFormat(String),
    /// A zero-length file, typically a copy still in progress.
    EmptyFile,
    /// Not a regular file: a folder named by a manifest row, a device, a pipe.
    NotAFile,
    /// The file could not be read: permissions, a broken symbolic link, an I/O error.
    Unreadable(String),
    /// A symbolic link to a folder that contains it (following it would never end).
    SymlinkLoop {
        /// The folder the link leads back to.
        ancestor: PathBuf,
    },
    /// A class folder whose name is not valid UTF-8, so it cannot be a class name.
    NonUtf8ClassName,
    /// A file directly in the dataset's root, outside every class folder.
    OutsideClassFolder,
    /// A class with no usable image; the class is dropped from the dataset.
    EmptyClass {
        /// The class's name.
        class: String,
    },
    /// A manifest row names a file that does not exist.
    Missing {
        /// The 1-based line of the manifest.
        line: u64,
    },
    /// Decoding failed: the data is corrupt or truncated (the decoder's message).
    Corrupt(String),
    /// The image declares more pixels than the configured cap (decompression-bomb guard).
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The cap, in pixels ([`super::OpenOptions::max_pixels`]).
        cap: u64,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotAnImage => write!(f, "not an image"),
            SkipReason::UnsupportedFormat(name) => write!(f, "unsupported image format {name}"),
            SkipReason::EmptyFile => write!(f, "empty file (copy in progress?)"),
            SkipReason::NotAFile => write!(f, "not a regular file"),
            SkipReason::Unreadable(e) => write!(f, "cannot be read: {e}"),
            SkipReason::SymlinkLoop { ancestor } => {
                write!(f, "symbolic link loop back to {}", ancestor.display())
            }
            SkipReason::NonUtf8ClassName => write!(f, "class folder name is not valid UTF-8"),
            SkipReason::OutsideClassFolder => write!(f, "not inside a class folder"),
            SkipReason::EmptyClass { class } => {
                write!(f, "class {class:?} has no usable image; class dropped")
            }
            SkipReason::Missing { line } => write!(f, "listed on manifest line {line} but missing"),
            SkipReason::Corrupt(e) => write!(f, "corrupt or truncated image: {e}"),
            SkipReason::TooManyPixels { width, height, cap } => write!(
                f,
                "image is {width}×{height} = {} pixels, above the cap of {cap} \
                 (decompression bomb? raise max_pixels if intended)",
                u64::from(*width) * u64::from(*height)
            ),
        }
    }
}

impl SkipReason {
    /// A short stable name for the kind of reason, for grouping counts (`"not an image"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            SkipReason::NotAnImage => "not an image",
            SkipReason::UnsupportedFormat(_) => "unsupported format",
            SkipReason::EmptyFile => "empty file",
            SkipReason::NotAFile => "not a file",
            SkipReason::Unreadable(_) => "unreadable",
            SkipReason::SymlinkLoop { .. } => "symlink loop",
            SkipReason::NonUtf8ClassName => "non-UTF-8 class name",
            SkipReason::OutsideClassFolder => "outside class folder",
            SkipReason::EmptyClass { .. } => "empty class",
            SkipReason::Missing { .. } => "missing",
            SkipReason::Corrupt(_) => "corrupt",
            SkipReason::TooManyPixels { .. } => "too many pixels",
        }
    }
}
