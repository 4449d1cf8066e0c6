//! Manifest files that list images with their labels: CSV and JSON Lines.
//!
//! - **CSV**: a header row naming a `path` and a `label` column (in any order, other columns
//!   ignored), then one row per image. Parsed with the `csv` crate, so quoted fields work.
//! - **JSON Lines**: one object per line, `{"path": "cats/1.jpg", "label": "cat"}`; the label
//!   may also be an integer (`"label": 3` is class `"3"`). Blank lines are ignored.
//!
//! Relative paths are relative to the folder holding the manifest; absolute paths are used as
//! they are. A row whose file is missing is skipped ([`SkipReason::Missing`], with its line);
//! a file that is not an image is skipped as in an image folder. Anything wrong with the
//! manifest itself (bad UTF-8, a malformed row, a missing column, an empty path or label) is an
//! [`Error::Invalid`] naming the manifest and the line: a manifest is written by a program, so
//! a broken one must be fixed, not half-read.
//!
//! **Class order.** Classes are the distinct labels of the rows that were kept. If every label
//! is a plain decimal integer (`0`, `7`, `12`, no sign or leading zero) they are sorted
//! numerically, so label `k` of a `0..n` labelling is class `k`; otherwise they are sorted as
//! strings (Unicode code point order, as Python's `sorted`). A label all of whose rows were
//! skipped is recorded as [`SkipReason::EmptyClass`].

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::decode::sniff;
use super::listing::{FileStamp, Listing};
use super::skip::{SkipReason, Skipped};
use super::Source;
use crate::{Error, Result};

/// One manifest row: its 1-based line, the path as written and the label.
struct Row {
    line: u64,
    path: String,
    label: String,
}

/// Reads a CSV manifest's rows.
fn csv_rows(manifest: &Path) -> Result<Vec<Row>> {
    let file = File::open(manifest).map_err(|e| Error::io(manifest, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file);
    let headers = reader
        .headers()
        .map_err(|e| csv_error(manifest, e))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::invalid(
                    manifest,
                    format!(
                        "line 1: the header has no {name:?} column (found {:?})",
                        headers.iter().collect::<Vec<_>>()
                    ),
                )
            })
    };
    let (path_col, label_col) = (column("path")?, column("label")?);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(manifest, e))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or_default().trim().to_owned();
        rows.push(Row {
            line,
            path: field(path_col),
            label: field(label_col),
        });
    }
    Ok(rows)
}

/// A CSV error as an invalid-manifest error with its line.
fn csv_error(manifest: &Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| p.line());
    let what = match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_owned(),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("{len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Io(io) => {
            return Error::io(manifest, std::io::Error::new(io.kind(), io.to_string()))
        }
        _ => e.to_string(),
    };
    match line {
        Some(line) => Error::invalid(manifest, format!("line {line}: {what}")),
        None => Error::invalid(manifest, what),
    }
}

/// Reads a JSON Lines manifest's rows.
fn jsonl_rows(manifest: &Path) -> Result<Vec<Row>> {
    let file = File::open(manifest).map_err(|e| Error::io(manifest, e))?;
    let mut reader = BufReader::new(file);
    let mut rows = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(manifest, e))?;
        if n == 0 {
            break;
        }
        line += 1;
        let invalid = |what: String| Error::invalid(manifest, format!("line {line}: {what}"));
        let text = std::str::from_utf8(&buf).map_err(|_| invalid("not valid UTF-8".to_owned()))?;
        if text.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let path = match value.get("path") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(invalid(format!("\"path\" must be a string, found {other}")))
            }
            None => return Err(invalid("no \"path\" field".to_owned())),
        };
        let label = match value.get("label") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(other) => {
                return Err(invalid(format!(
                    "\"label\" must be a string or an integer, found {other}"
                )))
            }
            None => return Err(invalid("no \"label\" field".to_owned())),
        };
        rows.push(Row { line, path, label });
    }
    Ok(rows)
}

/// True for a plain decimal integer: digits only, no leading zero unless it is `0`.
fn plain_integer(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 19
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'))
}

/// Sorts class names: numerically if all are plain integers, else as strings.
pub(crate) fn sort_labels(labels: &mut [String]) {
    if labels.iter().all(|l| plain_integer(l)) {
        labels.sort_by_key(|l| l.parse::<u64>().unwrap_or(u64::MAX));
    } else {
        labels.sort();
    }
}

/// Checks the rows, resolves their paths and sniffs their files.
fn list_rows(manifest: &Path, rows: Vec<Row>) -> Result<Listing> {
    for row in &rows {
        if row.path.is_empty() {
            return Err(Error::invalid(
                manifest,
                format!("line {}: empty path", row.line),
            ));
        }
        if row.label.is_empty() {
            return Err(Error::invalid(
                manifest,
                format!("line {}: empty label", row.line),
            ));
        }
    }
    let base = manifest.parent().unwrap_or(Path::new("."));
    let all_labels: BTreeSet<String> = rows.iter().map(|r| r.label.clone()).collect();

    // Stat and sniff every row in parallel; the order of rows is kept.
    let checked: Vec<(Row, PathBuf, std::result::Result<FileStamp, SkipReason>)> = rows
        .into_par_iter()
        .map(|row| {
            let path = base.join(&row.path);
            let result = match fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(SkipReason::Missing { line: row.line })
                }
                Err(e) => Err(SkipReason::Unreadable(e.to_string())),
                Ok(meta) if !meta.is_file() => Err(SkipReason::NotAFile),
                Ok(meta) if meta.len() == 0 => Err(SkipReason::EmptyFile),
                Ok(meta) => sniff(&path).map(|_| FileStamp {
                    rel: PathBuf::from(&row.path),
                    ..FileStamp::new(&path, &meta)
                }),
            };
            (row, path, result)
        })
        .collect();

    let mut listing = Listing::default();
    let mut kept_labels: Vec<String> = checked
        .iter()
        .filter(|c| c.2.is_ok())
        .map(|c| c.0.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    sort_labels(&mut kept_labels);
    let index: HashMap<&str, usize> = kept_labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    for (row, path, result) in checked {
        match result {
            Ok(stamp) => {
                // Every kept row's label is in `index` by construction.
                let label = index.get(row.label.as_str()).copied().unwrap_or_default();
                listing.push(label, Source::File(path), stamp);
            }
            Err(reason) => listing.skipped.push(Skipped::warn(path, reason)),
        }
    }
    for label in all_labels.into_iter().filter(|l| !kept_labels.contains(l)) {
        listing.skipped.push(Skipped::warn(
            manifest,
            SkipReason::EmptyClass { class: label },
        ));
    }
    listing.classes = kept_labels;
    Ok(listing)
}

/// Lists a CSV manifest.
pub(crate) fn list_csv(manifest: &Path) -> Result<Listing> {
    list_rows(manifest, csv_rows(manifest)?)
}

/// Lists a JSON Lines manifest.
pub(crate) fn list_jsonl(manifest: &Path) -> Result<Listing> {
    list_rows(manifest, jsonl_rows(manifest)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_labels_sort_numerically_others_as_strings() {
        let mut a: Vec<String> = ["10", "2", "0", "1"].map(String::from).to_vec();
        sort_labels(&mut a);
        assert_eq!(a, ["0", "1", "2", "10"]);
        let mut b: Vec<String> = ["dog", "10", "Cat", "2"].map(String::from).to_vec();
        sort_labels(&mut b);
        assert_eq!(b, ["10", "2", "Cat", "dog"]);
        let mut c: Vec<String> = ["07", "7"].map(String::from).to_vec();
        sort_labels(&mut c);
        assert_eq!(c, ["07", "7"]);
    }
}
