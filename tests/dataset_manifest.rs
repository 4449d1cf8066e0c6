//! CSV and JSON Lines manifests over real image files.

mod common;
mod dataset_support;

use std::fs;
use std::path::{Path, PathBuf};

use dataset_support::{build_format_folder, mean_abs_diff};
use task2vec::dataset::{Dataset, Format, OpenOptions, SkipReason, Skipped, Source};
use task2vec::Error;

/// The built photo folder, with manifests written beside it (paths relative to the manifest).
struct Fixture {
    built: dataset_support::Built,
    base: PathBuf,
}

fn fixture() -> Fixture {
    let built = build_format_folder();
    let base = built.dir.path().to_path_buf();
    Fixture { built, base }
}

fn write(path: &Path, text: impl AsRef<[u8]>) -> PathBuf {
    fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn invalid(result: task2vec::Result<Dataset>) -> (PathBuf, String) {
    match result {
        Err(Error::Invalid { path, what }) => (path, what),
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

#[test]
fn csv_lists_rows_in_order_with_paths_relative_to_the_manifest() {
    let f = fixture();
    // Labels are not the folder names: the manifest decides. Extra columns are ignored and
    // the columns may come in any order; quoting works.
    let mut csv = String::from("label,path,note\n");
    for (i, (_, rel, _)) in f.built.files.iter().enumerate() {
        let label = if i % 2 == 0 { "even" } else { "odd, really" };
        csv.push_str(&format!("\"{label}\",formats/{},x\n", rel.display()));
    }
    let manifest = write(&f.base.join("list.csv"), csv);
    let ds = Dataset::open(&manifest, &OpenOptions::default()).unwrap();
    assert_eq!(ds.format(), Format::Csv);
    assert_eq!(ds.classes(), ["even", "odd, really"]);
    assert_eq!(ds.class_counts(), vec![10, 10]);
    for (i, (_, rel, original)) in f.built.files.iter().enumerate() {
        assert_eq!(ds.items()[i].label, i % 2);
        assert_eq!(
            ds.items()[i].source,
            Source::File(f.base.join("formats").join(rel))
        );
        if rel.extension().is_some_and(|e| e == "png") {
            assert_eq!(&ds.load_rgb(i).unwrap(), original);
        }
    }
    assert!(ds.skipped().is_empty());
}

#[test]
fn jsonl_accepts_string_and_integer_labels_and_sorts_integers_numerically() {
    let f = fixture();
    let mut lines = String::new();
    for (i, (_, rel, _)) in f.built.files.iter().enumerate() {
        // Labels 0, 2 and 10: as strings "10" < "2", numerically 2 < 10.
        let label = [0, 2, 10][i % 3];
        if i % 2 == 0 {
            lines.push_str(&format!(
                "{{\"path\": \"formats/{}\", \"label\": {label}}}\n",
                rel.display()
            ));
        } else {
            lines.push_str(&format!(
                "{{\"label\": \"{label}\", \"path\": \"formats/{}\"}}\n\n",
                rel.display()
            ));
        }
    }
    let manifest = write(&f.base.join("list.jsonl"), lines);
    let ds = Dataset::open(&manifest, &OpenOptions::default()).unwrap();
    assert_eq!(ds.format(), Format::JsonLines);
    assert_eq!(ds.classes(), ["0", "2", "10"]);
    assert_eq!(ds.class_counts(), vec![7, 7, 6]);
    for i in 0..20 {
        assert_eq!(ds.items()[i].label, i % 3);
    }
    // Every file decodes (the JPEG and GIF close to the original).
    for (i, (_, _, original)) in f.built.files.iter().enumerate() {
        assert!(mean_abs_diff(&ds.load_rgb(i).unwrap(), original) < 8.0);
    }
}

#[test]
fn absolute_paths_are_used_as_written() {
    let f = fixture();
    let elsewhere = tempfile::tempdir().unwrap();
    let a = f.built.root.join(&f.built.files[0].1);
    let b = f.built.root.join(&f.built.files[5].1);
    let manifest = write(
        &elsewhere.path().join("m.csv"),
        format!("path,label\n{},x\n{},y\n", a.display(), b.display()),
    );
    let ds = Dataset::csv(&manifest, &OpenOptions::default()).unwrap();
    assert_eq!(ds.items()[0].source, Source::File(a));
    assert_eq!(ds.items()[1].source, Source::File(b));
}

#[test]
fn missing_and_non_image_rows_are_skipped_with_their_reason() {
    let f = fixture();
    fs::write(f.base.join("readme.txt"), "hello").unwrap();
    let rows: Vec<String> = f
        .built
        .files
        .iter()
        .take(4)
        .map(|(_, rel, _)| format!("formats/{},cat", rel.display()))
        .collect();
    let csv = format!(
        "path,label\n{}\nformats/gone.png,dog\n{}\nreadme.txt,dog\n{}\nformats,dog\n{}\nalso/gone.jpg,bird\n",
        rows[0], rows[1], rows[2], rows[3]
    );
    let manifest = write(&f.base.join("m.csv"), csv);
    let ds = Dataset::csv(&manifest, &OpenOptions::default());
    // Only "cat" keeps images: fewer than two classes.
    match ds {
        Err(Error::Dataset { what, .. }) => {
            assert!(what.starts_with("found 1 class(es) [\"cat\"]"), "{what}")
        }
        other => panic!("expected a dataset error, got {other:?}"),
    }
    // Add one real "dog" image and open again.
    let dog = f.built.files[8].1.display().to_string();
    let manifest = write(
        &f.base.join("m2.csv"),
        format!(
            "{}formats/{dog},dog\n",
            fs::read_to_string(&manifest).unwrap()
        ),
    );
    let ds = Dataset::csv(&manifest, &OpenOptions::default()).unwrap();
    assert_eq!(ds.classes(), ["cat", "dog"]);
    assert_eq!(ds.class_counts(), vec![4, 1]);
    let skipped: Vec<(PathBuf, SkipReason)> = ds
        .skipped()
        .iter()
        .map(|s| (s.path.clone(), s.reason.clone()))
        .collect();
    assert_eq!(
        skipped,
        vec![
            (
                f.base.join("formats/gone.png"),
                SkipReason::Missing { line: 3 }
            ),
            (f.base.join("readme.txt"), SkipReason::NotAnImage),
            (f.base.join("formats"), SkipReason::NotAFile),
            (
                f.base.join("also/gone.jpg"),
                SkipReason::Missing { line: 9 }
            ),
            (
                manifest.clone(),
                SkipReason::EmptyClass {
                    class: "bird".into()
                }
            ),
        ]
    );
    assert_eq!(
        Skipped {
            path: f.base.join("formats/gone.png"),
            reason: SkipReason::Missing { line: 3 }
        }
        .to_string(),
        format!(
            "{}: listed on manifest line 3 but missing",
            f.base.join("formats/gone.png").display()
        )
    );
}

#[test]
fn non_utf8_csv_is_invalid_with_its_line_number() {
    let f = fixture();
    let rel = f.built.files[0].1.display().to_string();
    let mut bytes = format!("path,label\nformats/{rel},cat\nformats/{rel},").into_bytes();
    bytes.extend_from_slice(b"ch\xe2t\n"); // Latin-1 "chât"
    let manifest = write(&f.base.join("latin1.csv"), bytes);
    let (path, what) = invalid(Dataset::open(&manifest, &OpenOptions::default()));
    assert_eq!(path, manifest);
    assert_eq!(what, "line 3: not valid UTF-8");
}

#[test]
fn non_utf8_jsonl_is_invalid_with_its_line_number() {
    let f = fixture();
    let rel = f.built.files[0].1.display().to_string();
    let mut bytes = format!("{{\"path\": \"formats/{rel}\", \"label\": \"a\"}}\n\n{{\"path\": \"formats/{rel}\", \"label\": \"").into_bytes();
    bytes.extend_from_slice(b"\xff\"}\n");
    let manifest = write(&f.base.join("bad.jsonl"), bytes);
    let (path, what) = invalid(Dataset::open(&manifest, &OpenOptions::default()));
    assert_eq!(path, manifest);
    assert_eq!(what, "line 3: not valid UTF-8");
}

#[test]
fn malformed_manifests_are_invalid_naming_the_line() {
    let f = fixture();
    let rel = format!("formats/{}", f.built.files[0].1.display());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a.csv",
            format!("file,class\n{rel},x\n"),
            "line 1: the header has no \"path\" column",
        ),
        (
            "b.csv",
            format!("path,label\n{rel},x\n{rel}\n"),
            "line 3: 1 fields where the header has 2",
        ),
        (
            "c.csv",
            format!("path,label\n{rel},\n"),
            "line 2: empty label",
        ),
        (
            "d.jsonl",
            format!("{{\"path\": \"{rel}\", \"label\": 1}}\n{{\"path\": \"{rel}\"\n"),
            "line 2: not JSON",
        ),
        (
            "e.jsonl",
            format!("{{\"path\": \"{rel}\", \"label\": 1.5}}\n"),
            "line 1: \"label\" must be a string or an integer",
        ),
        (
            "f.jsonl",
            "{\"label\": \"x\"}\n".to_string(),
            "line 1: no \"path\" field",
        ),
        (
            "g.jsonl",
            "{\"path\": \"\", \"label\": \"x\"}\n".to_string(),
            "line 1: empty path",
        ),
    ];
    for (name, text, expected) in cases {
        let manifest = write(&f.base.join(name), text);
        let (path, what) = invalid(Dataset::open(&manifest, &OpenOptions::default()));
        assert_eq!(path, manifest);
        assert!(
            what.starts_with(expected),
            "{name}: {what:?} should start with {expected:?}"
        );
    }
}

#[test]
fn manifest_fingerprint_follows_the_listed_files() {
    let f = fixture();
    let rows: String = f
        .built
        .files
        .iter()
        .enumerate()
        .map(|(i, (_, rel, _))| format!("formats/{},{}\n", rel.display(), i % 2))
        .collect();
    let manifest = write(&f.base.join("m.csv"), format!("path,label\n{rows}"));
    let fp = Dataset::open(&manifest, &OpenOptions::default())
        .unwrap()
        .fingerprint();
    assert_eq!(
        Dataset::open(&manifest, &OpenOptions::default())
            .unwrap()
            .fingerprint(),
        fp
    );
    // Swapping two labels keeps every file but changes the answer.
    let swapped = rows
        .replacen(",0\n", ",X\n", 1)
        .replacen(",1\n", ",0\n", 1)
        .replacen(",X\n", ",1\n", 1);
    write(&manifest, format!("path,label\n{swapped}"));
    assert_ne!(
        Dataset::open(&manifest, &OpenOptions::default())
            .unwrap()
            .fingerprint(),
        fp
    );
}
