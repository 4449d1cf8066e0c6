//! Dataset readers: the labelled images Task2Vec embeds.
//!
//! One entry point, [`Dataset::open`], reads any of the supported layouts (autodetected, or
//! forced with [`OpenOptions::format`]):
//!
//! | layout | recognised by | module |
//! | --- | --- | --- |
//! | folder with one sub-folder per class | a folder without IDX files | `image_folder` |
//! | CSV manifest (`path,label` header) | `.csv` extension | `manifest` |
//! | JSON Lines manifest (`{"path", "label"}`) | `.jsonl` / `.ndjson` extension | `manifest` |
//! | MNIST-style IDX files, gzipped or not | a folder holding `*-images-idx3-ubyte[.gz]`, or such a file | `idx` |
//!
//! A [`Dataset`] knows its classes (label `i` is `classes()[i]`), its [`Item`]s (label and
//! source) and the files it [`Skipped`] while listing, with reasons. Nothing is decoded when a
//! dataset is opened except IDX files, which are small and read whole. Images are decoded on
//! demand ([`Dataset::load_rgb`], [`Dataset::load_batch`]) with a pixel cap against
//! decompression bombs; a file that turns out corrupt then is a counted skip, not a failure.
//!
//! Bad input never panics and never silently changes the answer: the dataset as a whole fails
//! with [`Error::Dataset`] when it is unusable (fewer than two classes), a malformed manifest
//! or IDX file fails with [`Error::Invalid`] naming the line or the byte counts, and individual
//! bad files are [`Skipped`] and logged with `tracing::warn!`.
//!
//! # Decisions
//!
//! - **Images are recognised by content** (their first bytes), not by extension: an HTML page
//!   named `.jpg` is "not an image", a PNG without extension is used. JPEG, PNG, WebP, BMP and
//!   GIF (first frame) are decoded; other recognised formats are skipped as unsupported.
//! - **Image folders** follow torchvision's `ImageFolder`: classes are the sub-folder names
//!   sorted by code point, files are found recursively in name order. Dot-files and
//!   dot-folders are ignored silently. Symbolic links are followed; a loop is a skip.
//!   A class folder with no usable image is **dropped** (recorded as
//!   [`SkipReason::EmptyClass`]) rather than kept with zero items or failing the dataset; one
//!   whose name is not UTF-8 is skipped ([`SkipReason::NonUtf8ClassName`]).
//! - **Manifests**: paths are relative to the manifest's folder. Classes are the distinct
//!   labels, sorted numerically when all are plain integers (`0, 2, 10`), else as strings.
//! - **IDX**: a folder gives its `train` pair by default; [`IdxSplit::Test`] picks `t10k` (or
//!   `test`), [`IdxSplit::All`] both (train first). A direct path to an images file uses that
//!   file. Classes are the distinct label values in numeric order.
//! - **Decoding** refuses images over [`OpenOptions::max_pixels`] (default
//!   [`DEFAULT_MAX_PIXELS`], 64 Mpx) before allocating, and treats a JPEG without its
//!   end-of-image marker as truncated (the decoder would otherwise fill it with grey).
//!   Colour conversion follows Pillow's `convert('RGB')`; EXIF orientation is not applied.
//!
//! Also here: [`Preprocess`] (resize, crop, normalise, as the probe's reference does),
//! class-balanced sampling ([`balanced_sample`], [`balanced_draws`]), a [`Summary`] for
//! `t2v info` and a [`Dataset::fingerprint`] to notice changed datasets.

mod batch;
mod decode;
mod fingerprint;
mod idx;
mod image_folder;
mod listing;
mod manifest;
mod options;
mod preprocess;
mod resample;
mod sampling;
mod skip;
mod summary;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

pub use batch::Batch;
pub use decode::load_image;
pub use options::{Format, IdxSplit, OpenOptions, DEFAULT_MAX_PIXELS};
pub use preprocess::Preprocess;
pub use sampling::{balanced_draws, balanced_sample};
pub use skip::{SkipReason, Skipped};
pub use summary::{ClassCount, Summary};

use crate::{Error, Result};
use listing::{FileStamp, Listing};

/// Where an item's pixels come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An image file (absolute, or relative to the working directory if the dataset was
    /// opened with a relative path).
    File(PathBuf),
    /// The `n`-th image of the IDX data, counting across the chosen splits.
    Idx(usize),
}

/// One labelled image of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Index into [`Dataset::classes`].
    pub label: usize,
    /// Where its pixels are.
    pub source: Source,
}

/// IDX images kept in memory.
#[derive(Debug)]
struct IdxImages {
    rows: u32,
    cols: u32,
    pixels: Vec<u8>,
    /// File name and SHA-256 of every IDX file read.
    files: Vec<(String, [u8; 32])>,
}

/// A labelled image dataset, listed but not decoded. See the [module docs](self).
#[derive(Debug)]
pub struct Dataset {
    root: PathBuf,
    format: Format,
    classes: Vec<String>,
    items: Vec<Item>,
    /// One per item for file-backed datasets; empty for IDX.
    stamps: Vec<FileStamp>,
    skipped: Vec<Skipped>,
    /// Shared, so a class subset ([`Dataset::select_classes`]) does not copy the pixels.
    idx: Option<Arc<IdxImages>>,
    max_pixels: u64,
}

impl Dataset {
    /// Opens the dataset at `path`, in the layout `opts.format` or, if `None`, the detected one
    /// ([`Dataset::detect`]).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Dataset> {
        let format = match opts.format {
            Some(f) => f,
            None => Dataset::detect(path)?,
        };
        match format {
            Format::ImageFolder => Dataset::image_folder(path, opts),
            Format::Csv => Dataset::csv(path, opts),
            Format::JsonLines => Dataset::json_lines(path, opts),
            Format::Idx => Dataset::idx(path, opts),
        }
    }

    /// Tells the layout of `path`: a folder holding an IDX images file is [`Format::Idx`]
    /// (even if it also has sub-folders), any other folder [`Format::ImageFolder`]; a file
    /// ending in `.csv` is [`Format::Csv`], `.jsonl` or `.ndjson` [`Format::JsonLines`], and
    /// one named `*-images-idx3-ubyte[.gz]` [`Format::Idx`].
    pub fn detect(path: &Path) -> Result<Format> {
        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Ok(if idx::folder_has_idx(path) {
                Format::Idx
            } else {
                Format::ImageFolder
            });
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("jsonl" | "ndjson") => Ok(Format::JsonLines),
            _ if idx::is_images_file_name(path) => Ok(Format::Idx),
            _ => Err(Error::dataset(
                path,
                "unknown layout: expected a folder of class folders, a .csv or .jsonl manifest, \
                 or an IDX images file (*-images-idx3-ubyte[.gz])",
            )),
        }
    }

    /// Opens a folder with one sub-folder per class (see `image_folder` in the module docs).
    pub fn image_folder(root: &Path, opts: &OpenOptions) -> Result<Dataset> {
        Dataset::from_listing(root, Format::ImageFolder, image_folder::list(root)?, opts)
    }

    /// Opens a CSV manifest with a `path,label` header.
    pub fn csv(manifest: &Path, opts: &OpenOptions) -> Result<Dataset> {
        Dataset::from_listing(manifest, Format::Csv, manifest::list_csv(manifest)?, opts)
    }

    /// Opens a JSON Lines manifest of `{"path": ..., "label": ...}` objects.
    pub fn json_lines(manifest: &Path, opts: &OpenOptions) -> Result<Dataset> {
        Dataset::from_listing(
            manifest,
            Format::JsonLines,
            manifest::list_jsonl(manifest)?,
            opts,
        )
    }

    /// Opens IDX files: a folder (pairs chosen by `opts.idx_split`) or an images file (its
    /// labels file is found beside it; the split is ignored).
    pub fn idx(path: &Path, opts: &OpenOptions) -> Result<Dataset> {
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let data = idx::read(path, opts.idx_split)?;
        let mut values: Vec<u8> = data.labels.clone();
        values.sort_unstable();
        values.dedup();
        let mut class_of = [0usize; 256];
        for (i, &v) in values.iter().enumerate() {
            class_of[usize::from(v)] = i;
        }
        let listing = Listing {
            classes: values.iter().map(u8::to_string).collect(),
            items: data
                .labels
                .iter()
                .enumerate()
                .map(|(i, &v)| Item {
                    label: class_of[usize::from(v)],
                    source: Source::Idx(i),
                })
                .collect(),
            stamps: Vec::new(),
            skipped: Vec::new(),
        };
        let files = data
            .files
            .iter()
            .map(|(p, d)| {
                (
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    *d,
                )
            })
            .collect();
        let mut ds = Dataset::from_listing(path, Format::Idx, listing, opts)?;
        ds.idx = Some(Arc::new(IdxImages {
            rows: data.rows,
            cols: data.cols,
            pixels: data.pixels,
            files,
        }));
        Ok(ds)
    }

    /// Checks a listing and makes it a dataset: at least two classes are required, since a
    /// classifier over one class has no Fisher information to speak of.
    fn from_listing(
        root: &Path,
        format: Format,
        listing: Listing,
        opts: &OpenOptions,
    ) -> Result<Dataset> {
        if listing.classes.len() < 2 {
            let skipped = if listing.skipped.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} files skipped, first: {}",
                    listing.skipped.len(),
                    listing.skipped[0]
                )
            };
            return Err(Error::dataset(
                root,
                format!(
                    "found {} class(es) {:?} with images; at least two are needed{skipped}",
                    listing.classes.len(),
                    listing.classes
                ),
            ));
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            format,
            classes: listing.classes,
            items: listing.items,
            stamps: listing.stamps,
            skipped: listing.skipped,
            idx: None,
            max_pixels: opts.max_pixels,
        })
    }

    /// The task made of some classes of this dataset, e.g. "MNIST digits 0-4".
    ///
    /// `classes` are labels of this dataset; in the subset, label `i` is `classes[i]` (so the
    /// order given is the new label order) and only the items of those classes remain, in
    /// their order. The root, format, listing skips and pixel cap are kept; IDX pixels are
    /// shared, not copied. The subset's [`Dataset::fingerprint`] differs from the whole's.
    ///
    /// Errors: [`Error::Dataset`] when fewer than two classes are given, a label is out of
    /// range or repeated.
    pub fn select_classes(&self, classes: &[usize]) -> Result<Dataset> {
        if classes.len() < 2 {
            return Err(Error::dataset(
                &self.root,
                format!(
                    "a class subset needs at least two classes, {} given",
                    classes.len()
                ),
            ));
        }
        // new_label[old] = the subset's label for old label `old`.
        let mut new_label: Vec<Option<usize>> = vec![None; self.classes.len()];
        for (new, &old) in classes.iter().enumerate() {
            match new_label.get_mut(old) {
                None => {
                    return Err(Error::dataset(
                        &self.root,
                        format!(
                            "class {old} does not exist: the dataset has {} classes (0..{})",
                            self.classes.len(),
                            self.classes.len()
                        ),
                    ))
                }
                Some(Some(_)) => {
                    return Err(Error::dataset(
                        &self.root,
                        format!("class {old} (`{}`) is selected twice", self.classes[old]),
                    ))
                }
                Some(slot) => *slot = Some(new),
            }
        }
        let mut items = Vec::new();
        let mut stamps = Vec::new();
        for (i, item) in self.items.iter().enumerate() {
            if let Some(label) = new_label[item.label] {
                items.push(Item {
                    label,
                    source: item.source.clone(),
                });
                if let Some(stamp) = self.stamps.get(i) {
                    stamps.push(stamp.clone());
                }
            }
        }
        Ok(Dataset {
            root: self.root.clone(),
            format: self.format,
            classes: classes.iter().map(|&c| self.classes[c].clone()).collect(),
            items,
            stamps,
            skipped: self.skipped.clone(),
            idx: self.idx.clone(),
            max_pixels: self.max_pixels,
        })
    }

    /// The path the dataset was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its layout.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Class names; label `i` is `classes()[i]`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Every item, in listing order (class by class and by file name for folders, row order
    /// for manifests, file order for IDX).
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True if there are no items (never, for a dataset that opened).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every item's label, in item order (what the samplers take).
    pub fn labels(&self) -> Vec<usize> {
        self.items.iter().map(|i| i.label).collect()
    }

    /// How many items each class has, in label order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for item in &self.items {
            counts[item.label] += 1;
        }
        counts
    }

    /// Files left out while listing, with reasons.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The pixel cap images are decoded under.
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// Classes with counts, total and skips, for display.
    pub fn summary(&self) -> Summary {
        Summary {
            root: self.root.clone(),
            format: self.format,
            classes: self
                .classes
                .iter()
                .zip(self.class_counts())
                .map(|(name, count)| ClassCount {
                    name: name.clone(),
                    count,
                })
                .collect(),
            total: self.len(),
            skipped: self.skipped.clone(),
        }
    }

    fn item(&self, index: usize) -> Result<&Item> {
        self.items.get(index).ok_or_else(|| {
            Error::Mismatch(format!(
                "item {index} asked of {} with {} items",
                self.root.display(),
                self.len()
            ))
        })
    }

    /// Decodes item `index` as 8-bit RGB (grey copied to three channels, alpha dropped,
    /// palettes expanded). A corrupt, truncated or over-cap file is [`Error::Invalid`] naming
    /// it; an index past the end is [`Error::Mismatch`].
    pub fn load_rgb(&self, index: usize) -> Result<image::RgbImage> {
        let item = self.item(index)?;
        self.decode(item)
            .map_err(|f| f.into_error(self.path_of(item)))
    }

    /// The file an item comes from (the dataset's root for IDX items).
    fn path_of<'a>(&'a self, item: &'a Item) -> &'a Path {
        match &item.source {
            Source::File(path) => path,
            Source::Idx(_) => &self.root,
        }
    }

    fn decode(&self, item: &Item) -> std::result::Result<image::RgbImage, decode::DecodeFailure> {
        match &item.source {
            Source::File(path) => decode::decode_rgb(path, self.max_pixels),
            Source::Idx(i) => {
                let grey = self.idx.as_ref().and_then(|idx| {
                    let size = idx.rows as usize * idx.cols as usize;
                    Some((idx, idx.pixels.get(i * size..(i + 1) * size)?))
                });
                match grey {
                    Some((idx, grey)) => Ok(decode::grey_to_rgb(idx.cols, idx.rows, grey)),
                    None => Err(decode::DecodeFailure::Skip(SkipReason::Corrupt(format!(
                        "IDX image {i} is past the end of the data"
                    )))),
                }
            }
        }
    }

    /// Decodes and preprocesses the items at `indices` (in parallel, order kept).
    ///
    /// Images that fail to decode are left out of the batch and listed in
    /// [`Batch::skipped`] with their reason (and logged); the batch fails as a whole only for
    /// an index past the end ([`Error::Mismatch`]) — a caller's mistake, not the data's.
    pub fn load_batch(&self, indices: &[usize], pre: &Preprocess) -> Result<Batch> {
        for &i in indices {
            self.item(i)?;
        }
        let results: Vec<std::result::Result<Vec<f32>, Skipped>> = indices
            .par_iter()
            .map(|&i| {
                let item = &self.items[i];
                match self.decode(item) {
                    Ok(img) => Ok(pre.apply(&img)),
                    Err(f) => Err(Skipped::warn(self.path_of(item), f.into_reason())),
                }
            })
            .collect();
        let side = pre.crop as usize;
        let mut batch = Batch {
            data: Vec::with_capacity(indices.len() * 3 * side * side),
            side,
            labels: Vec::with_capacity(indices.len()),
            indices: Vec::with_capacity(indices.len()),
            skipped: Vec::new(),
        };
        for (&i, result) in indices.iter().zip(results) {
            match result {
                Ok(data) => {
                    batch.data.extend_from_slice(&data);
                    batch.labels.push(self.items[i].label);
                    batch.indices.push(i);
                }
                Err(skip) => batch.skipped.push(skip),
            }
        }
        Ok(batch)
    }
}
