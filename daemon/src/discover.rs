//! Finding datasets under the watched roots, telling cheaply whether one changed, and opening
//! one.
//!
//! - A **dataset** is a direct sub-folder of a root whose name does not start with a dot
//!   (dot-folders are ignored, so `cp -r data root/.incoming && mv root/.incoming root/data`
//!   is another way to drop a dataset atomically). Files directly in a root are ignored.
//! - Its **layout** is what [`open_dataset`] finds inside: IDX files (MNIST style); else one
//!   CSV or JSON Lines manifest at its top level; else one sub-folder per class.
//! - Its **stamp** ([`Stamp`]) sums up its files without reading them: count, total size,
//!   newest modification time, and the completion marker's time. Two equal stamps taken a
//!   quiet period apart mean nobody is writing into the folder.
//! - Its **URI** is its absolute path under the canonical root (`/data/datasets/cats`); the
//!   sub-folder itself is not canonicalised, so a symbolic link in a root is a dataset named
//!   after the link.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use task2vec::dataset::{Dataset, Format, OpenOptions};

/// A cheap summary of a dataset folder's files, to notice changes without reading them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Files in the folder, recursively (links followed), the marker excluded.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// The newest modification time of those files and of the sub-folders, nanoseconds since
    /// the Unix epoch.
    pub newest_ns: i64,
    /// The completion marker's modification time, when it is there.
    pub marker_ns: Option<i64>,
}

impl Stamp {
    /// Same files, sizes and times (the marker is not compared).
    pub fn same_content(&self, other: &Stamp) -> bool {
        (self.files, self.bytes, self.newest_ns) == (other.files, other.bytes, other.newest_ns)
    }

    /// The marker is there and no file of the dataset is newer: the writer said it is done.
    pub fn marker_is_fresh(&self) -> bool {
        self.marker_ns.is_some_and(|m| m >= self.newest_ns)
    }
}

/// Takes the stamp of the dataset folder `dir`. `marker` is the completion marker's file name.
///
/// Errors: the folder cannot be read (missing: [`io::ErrorKind::NotFound`]). Entries that
/// vanish or cannot be read while walking are left out: the next stamp will differ.
pub fn stamp(dir: &Path, marker: &str) -> io::Result<Stamp> {
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a folder", dir.display()),
        ));
    }
    let mut s = Stamp {
        files: 0,
        bytes: 0,
        newest_ns: 0,
        marker_ns: None,
    };
    for entry in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(true)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let modified = mtime_ns(&meta);
        if entry.depth() == 1 && entry.file_name() == marker {
            s.marker_ns = Some(modified);
            continue;
        }
        if meta.is_file() {
            s.files += 1;
            s.bytes += meta.len();
        }
        s.newest_ns = s.newest_ns.max(modified);
    }
    Ok(s)
}

/// The modification time of the marker file in `dir`, if it is there (one `stat`).
pub fn marker_time(dir: &Path, marker: &str) -> Option<i64> {
    std::fs::metadata(dir.join(marker))
        .ok()
        .map(|m| mtime_ns(&m))
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    let t = meta.modified().unwrap_or(UNIX_EPOCH);
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The dataset folders directly under `root` (absolute paths, sorted). Dot-folders and files
/// are left out; so are names that are not UTF-8 (their URI could not be written faithfully),
/// with a warning.
pub fn list_datasets(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(root = %root.display(), name = ?entry.file_name(),
                "ignoring a folder whose name is not UTF-8");
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // A link to a folder counts: `is_dir` follows it.
        if entry.path().is_dir() {
            out.push(root.join(name));
        }
    }
    out.sort();
    Ok(out)
}

/// The dataset folder an event path belongs to: the first component of `path` under `root`.
/// `None` for the root itself, files directly in it, dot-folders, or paths elsewhere.
/// The flag says whether the path is that dataset's marker file.
pub fn dataset_of(root: &Path, path: &Path, marker: &str) -> Option<(PathBuf, bool)> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?.as_os_str().to_str()?;
    if first.starts_with('.') {
        return None;
    }
    let second = parts.next();
    let is_marker = second.is_some_and(|c| c.as_os_str() == marker) && parts.next().is_none();
    Some((root.join(first), is_marker))
}

/// Opens the dataset in folder `dir`: IDX files in it make an IDX dataset; else exactly one
/// top-level `.csv`, `.jsonl` or `.ndjson` file (not a dot-file) makes a manifest dataset
/// (paths in it relative to the folder); else the folder is an image folder, one sub-folder
/// per class.
///
/// Errors: as [`Dataset::open`]; [`task2vec::Error::Dataset`] when several manifests make the
/// layout ambiguous.
pub fn open_dataset(dir: &Path) -> task2vec::Result<Dataset> {
    let opts = OpenOptions::default();
    let detected = Dataset::detect(dir)?;
    if detected == Format::Idx {
        return Dataset::open(dir, &opts);
    }
    let mut manifests = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| task2vec::Error::io(dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !hidden && path.is_file() && matches!(ext.as_deref(), Some("csv" | "jsonl" | "ndjson")) {
            manifests.push(path);
        }
    }
    manifests.sort();
    match manifests.as_slice() {
        [] => Dataset::open(dir, &opts),
        [one] => Dataset::open(one, &opts),
        several => Err(task2vec::Error::dataset(
            dir,
            format!(
                "{} manifests at the top level ({}): a dataset folder holds at most one",
                several.len(),
                several
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Whether `uri` names a dataset folder directly under `root`.
pub fn is_under(root: &Path, uri: &str) -> bool {
    Path::new(uri).parent().is_some_and(|parent| parent == root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_paths_map_to_their_dataset() {
        let root = Path::new("/r");
        assert_eq!(dataset_of(root, Path::new("/r"), ".m"), None);
        assert_eq!(
            dataset_of(root, Path::new("/r/cats"), ".m"),
            Some((PathBuf::from("/r/cats"), false))
        );
        assert_eq!(
            dataset_of(root, Path::new("/r/cats/a/1.png"), ".m"),
            Some((PathBuf::from("/r/cats"), false))
        );
        assert_eq!(
            dataset_of(root, Path::new("/r/cats/.m"), ".m"),
            Some((PathBuf::from("/r/cats"), true))
        );
        assert_eq!(
            dataset_of(root, Path::new("/r/cats/a/.m"), ".m"),
            Some((PathBuf::from("/r/cats"), false))
        );
        assert_eq!(dataset_of(root, Path::new("/r/.incoming/x"), ".m"), None);
        assert_eq!(dataset_of(root, Path::new("/elsewhere/x"), ".m"), None);
        assert!(is_under(root, "/r/cats"));
        assert!(!is_under(root, "/r/cats/dogs"));
        assert!(!is_under(root, "/rr/cats"));
    }

    #[test]
    fn stamps_see_changes_and_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("a")).unwrap();
        std::fs::write(d.join("a/1.png"), b"12345").unwrap();
        let s1 = stamp(d, ".m").unwrap();
        assert_eq!((s1.files, s1.bytes, s1.marker_ns), (1, 5, None));
        assert!(!s1.marker_is_fresh());
        std::fs::write(d.join("a/2.png"), b"1").unwrap();
        let s2 = stamp(d, ".m").unwrap();
        assert!(!s1.same_content(&s2));
        std::fs::write(d.join(".m"), b"").unwrap();
        let s3 = stamp(d, ".m").unwrap();
        assert!(s3.same_content(&s2), "the marker is not content");
        assert!(s3.marker_is_fresh());
        assert!(stamp(&d.join("absent"), ".m").is_err());
        assert_eq!(list_datasets(d).unwrap(), [d.join("a")]);
    }
}
