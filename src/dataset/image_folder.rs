//! Listing a folder with one sub-folder per class (torchvision's `ImageFolder` layout).
//!
//! - Classes are the sub-folders of the root, sorted by name (Unicode code point order, as
//!   Python's `sorted`); class `i` is the `i`-th name. Images are found recursively inside each
//!   class folder, in file-name order at every level.
//! - Names starting with `.` (hidden files and folders) are ignored everywhere, silently.
//! - Symbolic links are followed. A link back to a folder that contains it (or to the dataset
//!   root or above) is a skipped [`SkipReason::SymlinkLoop`]; the walk never descends into it.
//! - A class folder with no usable image is dropped and recorded as
//!   [`SkipReason::EmptyClass`], so the classes that remain still number 0..n.
//! - A class folder whose name is not UTF-8 cannot name a class: it is skipped with
//!   [`SkipReason::NonUtf8ClassName`] (its path is shown lossily).
//! - Files directly in the root are skipped as [`SkipReason::OutsideClassFolder`]; files in a
//!   class folder that are not images are skipped as [`SkipReason::NotAnImage`] (see
//!   [`super::decode`] for how images are recognised).

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use walkdir::WalkDir;

use super::decode::sniff;
use super::listing::{FileStamp, Listing};
use super::skip::{SkipReason, Skipped};
use super::Source;
use crate::{Error, Result};

/// True for names starting with a dot.
fn hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// Lists the class folders and images under `root`.
pub(crate) fn list(root: &Path) -> Result<Listing> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io(root, e))?;
    entries.sort_by_key(|e| e.file_name());
    let canonical_root = fs::canonicalize(root).map_err(|e| Error::io(root, e))?;

    let mut listing = Listing::default();
    let mut class_dirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let path = entry.path();
        if hidden(&entry.file_name()) {
            continue;
        }
        // `fs::metadata` follows links: a linked class folder counts as a folder.
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                listing
                    .skipped
                    .push(Skipped::warn(path, SkipReason::Unreadable(e.to_string())));
                continue;
            }
        };
        if !meta.is_dir() {
            listing
                .skipped
                .push(Skipped::warn(path, SkipReason::OutsideClassFolder));
            continue;
        }
        match entry.file_name().to_str() {
            Some(name) => class_dirs.push((name.to_owned(), path)),
            None => listing
                .skipped
                .push(Skipped::warn(path, SkipReason::NonUtf8ClassName)),
        }
    }
    class_dirs.sort();

    for (class, dir) in class_dirs {
        let files = walk_class(&dir, &canonical_root, &mut listing.skipped);
        // Sniffing reads a few bytes per file; do it in parallel, keeping the walk's order.
        let sniffed: Vec<(PathBuf, FileStamp, std::result::Result<(), SkipReason>)> = files
            .into_par_iter()
            .map(|(path, stamp)| {
                let ok = if stamp.size == 0 {
                    Err(SkipReason::EmptyFile)
                } else {
                    sniff(&path).map(|_| ())
                };
                (path, stamp, ok)
            })
            .collect();
        let label = listing.classes.len();
        let before = listing.items.len();
        for (path, stamp, ok) in sniffed {
            match ok {
                Ok(()) => {
                    let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                    listing.push(label, Source::File(path), FileStamp { rel, ..stamp });
                }
                Err(reason) => listing.skipped.push(Skipped::warn(path, reason)),
            }
        }
        if listing.items.len() == before {
            listing
                .skipped
                .push(Skipped::warn(dir, SkipReason::EmptyClass { class }));
        } else {
            listing.classes.push(class);
        }
    }
    Ok(listing)
}

/// Walks one class folder: the regular files found (with their stamps), in name order; skips
/// go to `skipped`.
fn walk_class(
    dir: &Path,
    canonical_root: &Path,
    skipped: &mut Vec<Skipped>,
) -> Vec<(PathBuf, FileStamp)> {
    let mut files = Vec::new();
    let mut walk = WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !hidden(e.file_name()));
    while let Some(next) = walk.next() {
        let entry = match next {
            Ok(entry) => entry,
            Err(err) => {
                let path = err.path().unwrap_or(dir).to_path_buf();
                let reason = match err.loop_ancestor() {
                    Some(ancestor) => SkipReason::SymlinkLoop {
                        ancestor: ancestor.to_path_buf(),
                    },
                    None => SkipReason::Unreadable(
                        err.io_error()
                            .map(ToString::to_string)
                            .unwrap_or_else(|| err.to_string()),
                    ),
                };
                skipped.push(Skipped::warn(path, reason));
                continue;
            }
        };
        if entry.file_type().is_dir() {
            // walkdir only sees loops among the folders it walked from `dir`; a link to the
            // dataset root (or above it) would re-list every class under this one.
            if entry.path_is_symlink() {
                if let Ok(target) = fs::canonicalize(entry.path()) {
                    if canonical_root.starts_with(&target) {
                        skipped.push(Skipped::warn(
                            entry.path(),
                            SkipReason::SymlinkLoop { ancestor: target },
                        ));
                        walk.skip_current_dir();
                    }
                }
            }
            continue;
        }
        match entry.metadata() {
            Ok(meta) if !meta.is_file() => {
                skipped.push(Skipped::warn(entry.path(), SkipReason::NotAFile))
            }
            Ok(meta) => {
                let stamp = FileStamp::new(entry.path(), &meta);
                files.push((entry.into_path(), stamp));
            }
            Err(e) => skipped.push(Skipped::warn(
                entry.path(),
                SkipReason::Unreadable(e.to_string()),
            )),
        }
    }
    files
}
