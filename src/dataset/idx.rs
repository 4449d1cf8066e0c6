//! MNIST-style IDX files, gzipped or not.
//!
//! An IDX file is a big-endian header — two zero bytes, a data-type byte (`0x08` = unsigned
//! byte, the only one used for images and labels), a dimension count — then one `u32` per
//! dimension and the data. Images are `idx3` (`count × rows × cols`), labels `idx1`
//! (`count`). Gzip is recognised by its magic bytes, not the `.gz` name.
//!
//! Every header is checked against the data: a truncated download or a half-copied file is an
//! error that says how many bytes were declared and how many are there, never a short dataset.
//! The images stay in memory (Fashion-MNIST's 70,000 are 55 MB).
//!
//! Classes are the distinct label values in increasing numeric order, named by their decimal
//! value (`"0"` ... `"9"` for MNIST), so a label's class index equals its value whenever every
//! value from 0 up is present.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

use super::options::IdxSplit;
use crate::{Error, Result};

const IMAGES_SUFFIXES: [&str; 2] = ["-images-idx3-ubyte", "-images.idx3-ubyte"];

/// The images and labels read from one or more IDX pairs.
#[derive(Debug)]
pub(crate) struct IdxData {
    pub rows: u32,
    pub cols: u32,
    /// `count * rows * cols` grey bytes, image after image.
    pub pixels: Vec<u8>,
    /// One raw label value per image.
    pub labels: Vec<u8>,
    /// Every file read, with the SHA-256 of its bytes as stored (for the fingerprint).
    pub files: Vec<(PathBuf, [u8; 32])>,
}

/// One images file with its labels file.
#[derive(Debug, Clone)]
struct Pair {
    prefix: String,
    images: PathBuf,
    labels: PathBuf,
}

/// The prefix of an images file name (`train` for `train-images-idx3-ubyte.gz`), or `None`
/// if the name is not that of an IDX images file.
fn images_prefix(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".gz").unwrap_or(name);
    IMAGES_SUFFIXES
        .iter()
        .find_map(|s| stem.strip_suffix(s).map(|p| (p, *s)))
}

/// True if `dir` holds at least one IDX images file (how autodetection recognises the layout).
pub(crate) fn folder_has_idx(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_str().and_then(images_prefix).is_some())
        })
        .unwrap_or(false)
}

/// True if `path` names an IDX images file.
pub(crate) fn is_images_file_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(images_prefix)
        .is_some()
}

/// The labels file that goes with an images file: same folder, same prefix, `.gz` or not
/// (the same compression as the images file is tried first).
fn labels_for(images: &Path) -> Result<PathBuf> {
    let name = images
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let (prefix, suffix) = images_prefix(name).ok_or_else(|| {
        Error::invalid(
            images,
            "not an IDX images file name (*-images-idx3-ubyte[.gz])",
        )
    })?;
    let labels_suffix = suffix.replace("images", "labels").replace("idx3", "idx1");
    let gz_first = name.ends_with(".gz");
    let candidates = if gz_first { [".gz", ""] } else { ["", ".gz"] };
    let dir = images.parent().unwrap_or(Path::new("."));
    candidates
        .iter()
        .map(|ext| dir.join(format!("{prefix}{labels_suffix}{ext}")))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::invalid(
                images,
                format!("no matching labels file {prefix}{labels_suffix}[.gz] beside it"),
            )
        })
}

/// The pairs in a folder, selected by `split`, in reading order (train before test).
fn pairs_in(dir: &Path, split: IdxSplit) -> Result<Vec<Pair>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| images_prefix(n).is_some())
        .collect();
    // Sorted, so that for one prefix the plain file comes before its `.gz` twin and wins.
    names.sort();
    let mut pairs: Vec<Pair> = Vec::new();
    for name in names {
        let Some((prefix, _)) = images_prefix(&name) else {
            continue;
        };
        if pairs.iter().any(|p| p.prefix == prefix) {
            continue;
        }
        let images = dir.join(&name);
        let labels = labels_for(&images)?;
        pairs.push(Pair {
            prefix: prefix.to_owned(),
            images,
            labels,
        });
    }
    let is_train = |p: &Pair| p.prefix.ends_with("train");
    let is_test = |p: &Pair| p.prefix.ends_with("t10k") || p.prefix.ends_with("test");
    let train: Vec<Pair> = pairs.iter().filter(|p| is_train(p)).cloned().collect();
    let test: Vec<Pair> = pairs.iter().filter(|p| is_test(p)).cloned().collect();
    let chosen = match split {
        IdxSplit::Train => train,
        IdxSplit::Test => test,
        IdxSplit::All => train.into_iter().chain(test).collect(),
    };
    if chosen.is_empty() {
        let found: Vec<&str> = pairs.iter().map(|p| p.prefix.as_str()).collect();
        return Err(Error::dataset(
            dir,
            format!("no IDX pair for split {split:?} (pairs found: {found:?}; train = *train, test = *t10k or *test)"),
        ));
    }
    Ok(chosen)
}

/// Reads a whole IDX file: returns its dimensions, its data and the SHA-256 of the stored
/// bytes. `dims` is the dimension count the caller expects (3 for images, 1 for labels).
fn read_idx(path: &Path, dims: u8) -> Result<(Vec<u32>, Vec<u8>, [u8; 32])> {
    let stored = fs::read(path).map_err(|e| Error::io(path, e))?;
    let digest: [u8; 32] = Sha256::digest(&stored).into();
    let gz = stored.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read + '_> = if gz {
        Box::new(GzDecoder::new(stored.as_slice()))
    } else {
        Box::new(stored.as_slice())
    };
    let what = if gz { "gzip stream" } else { "file" };

    let mut magic = [0u8; 4];
    read_exact(&mut reader, &mut magic, path, what, "header")?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(Error::invalid(
            path,
            format!("not an IDX file (magic bytes {magic:02x?})"),
        ));
    }
    if magic[2] != 0x08 {
        return Err(Error::invalid(
            path,
            format!(
                "IDX data type 0x{:02x} is not supported (only 0x08, unsigned bytes)",
                magic[2]
            ),
        ));
    }
    if magic[3] != dims {
        return Err(Error::invalid(
            path,
            format!(
                "IDX file has {} dimensions, expected {dims} (idx{dims})",
                magic[3]
            ),
        ));
    }
    let mut shape = Vec::with_capacity(usize::from(dims));
    for _ in 0..dims {
        let mut d = [0u8; 4];
        read_exact(&mut reader, &mut d, path, what, "header")?;
        shape.push(u32::from_be_bytes(d));
    }
    let expected = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)));
    let expected = expected
        .ok_or_else(|| Error::invalid(path, format!("IDX dimensions {shape:?} overflow")))?;
    // Read at most one byte more than declared, so a lying header cannot make us allocate
    // more than the file really holds, and trailing data is still noticed.
    let mut data = Vec::new();
    reader
        .take(expected.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| Error::invalid(path, format!("corrupt {what}: {e}")))?;
    let got = data.len() as u64;
    if got < expected {
        return Err(Error::invalid(
            path,
            format!("truncated: header declares {shape:?} = {expected} bytes of data but only {got} follow"),
        ));
    }
    if got > expected {
        return Err(Error::invalid(
            path,
            format!("trailing bytes after the {expected} declared by {shape:?}"),
        ));
    }
    Ok((shape, data, digest))
}

fn read_exact(
    reader: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
    what: &str,
    part: &str,
) -> Result<()> {
    reader
        .read_exact(buf)
        .map_err(|e| Error::invalid(path, format!("truncated {part} in {what}: {e}")))
}

/// Reads one pair and checks that it holds as many labels as images.
fn read_pair(images: &Path, labels: &Path, data: &mut IdxData) -> Result<()> {
    let (shape, pixels, digest) = read_idx(images, 3)?;
    let (count, rows, cols) = (shape[0], shape[1], shape[2]);
    if rows == 0 || cols == 0 {
        return Err(Error::invalid(
            images,
            format!("IDX images are {rows}×{cols}"),
        ));
    }
    if !data.files.is_empty() && (rows, cols) != (data.rows, data.cols) {
        return Err(Error::invalid(
            images,
            format!(
                "images are {rows}×{cols} but the previous split's are {}×{}",
                data.rows, data.cols
            ),
        ));
    }
    let (lshape, lvalues, ldigest) = read_idx(labels, 1)?;
    if lshape[0] != count {
        return Err(Error::invalid(
            labels,
            format!(
                "{} labels for the {count} images of {}",
                lshape[0],
                images.display()
            ),
        ));
    }
    data.rows = rows;
    data.cols = cols;
    data.pixels.extend_from_slice(&pixels);
    data.labels.extend_from_slice(&lvalues);
    data.files.push((images.to_path_buf(), digest));
    data.files.push((labels.to_path_buf(), ldigest));
    Ok(())
}

/// Reads an IDX dataset from a folder (pairs chosen by `split`) or from an images file.
pub(crate) fn read(path: &Path, split: IdxSplit) -> Result<IdxData> {
    let pairs: Vec<(PathBuf, PathBuf)> = if path.is_dir() {
        pairs_in(path, split)?
            .into_iter()
            .map(|p| (p.images, p.labels))
            .collect()
    } else {
        vec![(path.to_path_buf(), labels_for(path)?)]
    };
    let mut data = IdxData {
        rows: 0,
        cols: 0,
        pixels: Vec::new(),
        labels: Vec::new(),
        files: Vec::new(),
    };
    for (images, labels) in pairs {
        read_pair(&images, &labels, &mut data)?;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_prefix_recognises_mnist_names() {
        assert_eq!(
            images_prefix("train-images-idx3-ubyte.gz").map(|p| p.0),
            Some("train")
        );
        assert_eq!(
            images_prefix("t10k-images-idx3-ubyte").map(|p| p.0),
            Some("t10k")
        );
        assert_eq!(
            images_prefix("t10k-images.idx3-ubyte").map(|p| p.0),
            Some("t10k")
        );
        assert_eq!(
            images_prefix("emnist-letters-train-images-idx3-ubyte").map(|p| p.0),
            Some("emnist-letters-train")
        );
        assert_eq!(images_prefix("train-labels-idx1-ubyte.gz"), None);
        assert_eq!(images_prefix("train.csv"), None);
    }
}
