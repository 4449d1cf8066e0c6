//! Bad input: every case is a precise error or a counted, logged skip — never a panic, a hang
//! or a silently different dataset.

mod common;
mod dataset_support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use dataset_support::{photos, save, two_classes, FORMATS};
use image::ImageFormat;
use task2vec::dataset::{Dataset, OpenOptions, Preprocess, SkipReason, Source, DEFAULT_MAX_PIXELS};
use task2vec::Error;

fn open(root: &Path) -> Dataset {
    Dataset::open(root, &OpenOptions::default()).unwrap()
}

fn skips(ds: &Dataset) -> Vec<(PathBuf, SkipReason)> {
    ds.skipped()
        .iter()
        .map(|s| (s.path.clone(), s.reason.clone()))
        .collect()
}

/// The index of the item whose file is `path`.
fn index_of(ds: &Dataset, path: &Path) -> usize {
    ds.items()
        .iter()
        .position(|it| it.source == Source::File(path.to_path_buf()))
        .unwrap_or_else(|| panic!("{} not listed", path.display()))
}

#[test]
fn half_copied_images_of_every_format_are_skipped_at_decode() {
    let (_dir, root) = two_classes();
    let photo = &photos()[7].1;
    let mut truncated = Vec::new();
    for (name, format) in FORMATS {
        let full = root.join(format!("b/full.{name}"));
        save(photo, &full, format);
        let bytes = fs::read(&full).unwrap();
        let half = root.join(format!("b/half.{name}"));
        fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
        fs::remove_file(&full).unwrap();
        truncated.push(half);
    }
    let ds = open(&root);
    // The signatures are intact, so listing keeps them; decoding finds them out.
    assert_eq!(ds.len(), 6 + 5);
    assert!(ds.skipped().is_empty());
    let pre = Preprocess::efficientnet_lite().at_size(32);
    let all: Vec<usize> = (0..ds.len()).collect();
    let batch = ds.load_batch(&all, &pre).unwrap();
    assert_eq!(batch.len(), 6, "the six good photos decode");
    assert_eq!(batch.data.len(), 6 * 3 * 32 * 32);
    let mut skipped: Vec<PathBuf> = batch.skipped.iter().map(|s| s.path.clone()).collect();
    skipped.sort();
    truncated.sort();
    assert_eq!(skipped, truncated);
    for s in &batch.skipped {
        assert!(matches!(s.reason, SkipReason::Corrupt(_)), "{s}");
        assert!(s.to_string().contains("corrupt or truncated image"), "{s}");
    }
    // One at a time, the same files are Error::Invalid naming them.
    for path in &truncated {
        match ds.load_rgb(index_of(&ds, path)) {
            Err(Error::Invalid { path: p, what }) => {
                assert_eq!(&p, path);
                assert!(what.starts_with("corrupt or truncated image"), "{what}");
            }
            other => panic!("{}: expected Error::Invalid, got {other:?}", path.display()),
        }
    }
}

#[test]
fn corrupted_png_data_is_skipped_at_decode() {
    let (_dir, root) = two_classes();
    let victim = fs::read_dir(root.join("a"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&victim).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n / 2..n / 2 + 64] {
        *b ^= 0x5a;
    }
    fs::write(&victim, bytes).unwrap();
    let ds = open(&root);
    let batch = ds
        .load_batch(
            &[index_of(&ds, &victim), 4],
            &Preprocess::efficientnet_lite(),
        )
        .unwrap();
    assert_eq!(batch.indices, vec![4]);
    assert_eq!(batch.skipped.len(), 1);
    assert_eq!(batch.skipped[0].path, victim);
    assert!(
        matches!(batch.skipped[0].reason, SkipReason::Corrupt(_)),
        "{}",
        batch.skipped[0]
    );
}

#[test]
fn non_images_in_class_folders_are_skipped_when_listing() {
    let (_dir, root) = two_classes();
    let readme = root.join("a/README.txt");
    fs::write(&readme, "these are photos\n").unwrap();
    // An HTML error page saved under an image name: content decides, not the extension.
    let fake = root.join("b/download.jpg");
    fs::write(&fake, "<!DOCTYPE html><html><body>404</body></html>").unwrap();
    let empty = root.join("b/copying.png");
    fs::write(&empty, "").unwrap();
    // TIFF is recognised but not decoded by this build.
    let tiff = root.join("b/scan.tif");
    fs::write(&tiff, b"II*\x00\x08\x00\x00\x00\x00\x00").unwrap();
    // A real PNG without extension is an image all the same.
    let photo = &photos()[9].1;
    save(photo, &root.join("a/no_extension"), ImageFormat::Png);

    let ds = open(&root);
    assert_eq!(ds.class_counts(), vec![4, 3]);
    assert_eq!(
        skips(&ds),
        vec![
            (readme, SkipReason::NotAnImage),
            (empty, SkipReason::EmptyFile),
            (fake, SkipReason::NotAnImage),
            (tiff, SkipReason::UnsupportedFormat("Tiff".into())),
        ]
    );
    assert_eq!(ds.summary().skipped.len(), 4);
}

#[test]
fn empty_class_folders_are_dropped_and_recorded() {
    let (_dir, root) = two_classes();
    fs::create_dir_all(root.join("aa_empty")).unwrap();
    fs::create_dir_all(root.join("c_only_text/sub")).unwrap();
    fs::write(root.join("c_only_text/sub/notes.md"), "# notes\n").unwrap();
    let ds = open(&root);
    // The remaining classes are numbered without gaps.
    assert_eq!(ds.classes(), ["a", "b"]);
    assert_eq!(ds.labels(), vec![0, 0, 0, 1, 1, 1]);
    assert_eq!(
        skips(&ds),
        vec![
            (
                root.join("aa_empty"),
                SkipReason::EmptyClass {
                    class: "aa_empty".into()
                }
            ),
            (
                root.join("c_only_text/sub/notes.md"),
                SkipReason::NotAnImage
            ),
            (
                root.join("c_only_text"),
                SkipReason::EmptyClass {
                    class: "c_only_text".into()
                }
            ),
        ]
    );
    let text = ds.summary().to_string();
    assert!(
        text.contains("class \"aa_empty\" has no usable image; class dropped"),
        "{text}"
    );
}

#[test]
fn fewer_than_two_classes_is_a_dataset_error() {
    let (_dir, root) = two_classes();
    fs::remove_dir_all(root.join("b")).unwrap();
    fs::create_dir_all(root.join("b")).unwrap();
    match Dataset::open(&root, &OpenOptions::default()) {
        Err(Error::Dataset { root: r, what }) => {
            assert_eq!(r, root);
            assert!(
                what.starts_with("found 1 class(es) [\"a\"] with images; at least two are needed"),
                "{what}"
            );
        }
        other => panic!("expected a dataset error, got {other:?}"),
    }
    let empty = tempfile::tempdir().unwrap();
    match Dataset::open(empty.path(), &OpenOptions::default()) {
        Err(Error::Dataset { what, .. }) => {
            assert!(what.starts_with("found 0 class(es)"), "{what}")
        }
        other => panic!("expected a dataset error, got {other:?}"),
    }
}

#[test]
fn files_outside_class_folders_are_skipped_and_hidden_ones_ignored() {
    let (_dir, root) = two_classes();
    let loose = root.join("loose.png");
    save(&photos()[0].1, &loose, ImageFormat::Png);
    save(&photos()[0].1, &root.join(".DS_Store"), ImageFormat::Png);
    save(&photos()[0].1, &root.join("a/.thumb.png"), ImageFormat::Png);
    let ds = open(&root);
    assert_eq!(ds.len(), 6);
    assert_eq!(skips(&ds), vec![(loose, SkipReason::OutsideClassFolder)]);
}

#[cfg(unix)]
#[test]
fn a_non_utf8_class_folder_name_is_skipped_with_its_path() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let (_dir, root) = two_classes();
    let bad = root.join(OsStr::from_bytes(b"caf\xe9"));
    save(&photos()[0].1, &bad.join("x.png"), ImageFormat::Png);
    let ds = open(&root);
    assert_eq!(ds.classes(), ["a", "b"]);
    assert_eq!(
        skips(&ds),
        vec![(bad.clone(), SkipReason::NonUtf8ClassName)]
    );
    // Shown lossily, never a panic.
    assert!(ds.skipped()[0]
        .to_string()
        .ends_with("caf\u{fffd}: class folder name is not valid UTF-8"));
}

#[cfg(unix)]
#[test]
fn symlink_loops_are_reported_and_not_followed() {
    use std::os::unix::fs::symlink;
    let (_dir, root) = two_classes();
    // A link to its own folder, and a link to the dataset root (which would re-list class b
    // inside class a).
    symlink(root.join("a"), root.join("a/self")).unwrap();
    symlink(&root, root.join("a/up")).unwrap();
    // A broken link.
    symlink(root.join("nowhere.png"), root.join("b/broken.png")).unwrap();
    // A good link to a real image elsewhere is followed.
    let outside = root.parent().unwrap().join("outside.png");
    save(&photos()[10].1, &outside, ImageFormat::Png);
    symlink(&outside, root.join("b/linked.png")).unwrap();

    let ds = open(&root);
    assert_eq!(ds.class_counts(), vec![3, 4]);
    let reasons = skips(&ds);
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0].0, root.join("a/self"));
    assert!(
        matches!(&reasons[0].1, SkipReason::SymlinkLoop { .. }),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[1],
        (
            root.join("a/up"),
            SkipReason::SymlinkLoop {
                ancestor: fs::canonicalize(&root).unwrap()
            }
        )
    );
    assert_eq!(reasons[2].0, root.join("b/broken.png"));
    assert!(
        matches!(&reasons[2].1, SkipReason::Unreadable(_)),
        "{reasons:?}"
    );
}

/// A valid grey PNG of `width`×`height` black pixels, written as a stream (never held in
/// memory): the zlib data of an all-zero image compresses about 1000:1.
fn write_black_png(path: &Path, width: u32, height: u32, rows_to_write: u32) {
    fn chunk(out: &mut impl Write, kind: &[u8; 4], data: &[u8]) {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.write_all(&(data.len() as u32).to_be_bytes()).unwrap();
        out.write_all(kind).unwrap();
        out.write_all(data).unwrap();
        out.write_all(&crc.sum().to_be_bytes()).unwrap();
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey, deflate, no filter, no interlace
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let row = vec![0u8; width as usize + 1]; // filter byte + pixels
    for _ in 0..rows_to_write {
        z.write_all(&row).unwrap();
    }
    let idat = z.finish().unwrap();
    let mut out = std::io::BufWriter::new(fs::File::create(path).unwrap());
    out.write_all(b"\x89PNG\r\n\x1a\n").unwrap();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
}

#[test]
fn decompression_bombs_are_refused_before_allocating() {
    let (_dir, root) = two_classes();
    // A real 9000×8000 image (72 megapixels, 216 MB as RGB) in under 200 kB.
    let bomb = root.join("a/bomb.png");
    write_black_png(&bomb, 9000, 8000, 8000);
    assert!(fs::metadata(&bomb).unwrap().len() < 200_000);
    // A header that lies: 100000×100000 with a single row of data.
    let liar = root.join("b/liar.png");
    write_black_png(&liar, 100_000, 100_000, 1);

    let ds = open(&root);
    assert_eq!(ds.len(), 8, "both are PNG by their signature");
    let good = ds
        .items()
        .iter()
        .position(|it| it.source != Source::File(bomb.clone()))
        .unwrap();
    let batch = ds
        .load_batch(
            &[index_of(&ds, &bomb), index_of(&ds, &liar), good],
            &Preprocess::efficientnet_lite(),
        )
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(
        batch
            .skipped
            .iter()
            .map(|s| (s.path.clone(), s.reason.clone()))
            .collect::<Vec<_>>(),
        vec![
            (
                bomb.clone(),
                SkipReason::TooManyPixels {
                    width: 9000,
                    height: 8000,
                    cap: DEFAULT_MAX_PIXELS
                }
            ),
            (
                liar,
                SkipReason::TooManyPixels {
                    width: 100_000,
                    height: 100_000,
                    cap: DEFAULT_MAX_PIXELS
                }
            ),
        ]
    );
    match ds.load_rgb(index_of(&ds, &bomb)) {
        Err(Error::Invalid { what, .. }) => assert_eq!(
            what,
            "image is 9000×8000 = 72000000 pixels, above the cap of 67108864 \
             (decompression bomb? raise max_pixels if intended)"
        ),
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
    // A higher cap lets the (genuine) big image through.
    let big = Dataset::open(&root, &OpenOptions::default().max_pixels(80_000_000)).unwrap();
    let img = big.load_rgb(index_of(&big, &bomb)).unwrap();
    assert_eq!(img.dimensions(), (9000, 8000));
    assert!(img.pixels().take(1000).all(|p| p.0 == [0, 0, 0]));
}

#[test]
fn the_pixel_cap_is_configurable() {
    let (_dir, root) = two_classes();
    let ds = Dataset::open(&root, &OpenOptions::default().max_pixels(1000)).unwrap();
    let (w, h) = open(&root).load_rgb(0).unwrap().dimensions();
    match ds.load_rgb(0) {
        Err(Error::Invalid { what, .. }) => {
            assert!(
                what.starts_with(&format!(
                    "image is {w}×{h} = {} pixels, above the cap of 1000",
                    w * h
                )),
                "{what}"
            )
        }
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

#[test]
fn an_index_past_the_end_is_a_mismatch_not_a_panic() {
    let (_dir, root) = two_classes();
    let ds = open(&root);
    assert!(matches!(ds.load_rgb(6), Err(Error::Mismatch(_))));
    assert!(matches!(
        ds.load_batch(&[0, 99], &Preprocess::efficientnet_lite()),
        Err(Error::Mismatch(_))
    ));
}

#[test]
fn unknown_paths_and_layouts_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(
        matches!(Dataset::open(&missing, &OpenOptions::default()), Err(Error::Io { path, .. }) if path == missing)
    );
    let odd = dir.path().join("data.parquet");
    fs::write(&odd, "PAR1").unwrap();
    match Dataset::open(&odd, &OpenOptions::default()) {
        Err(Error::Dataset { what, .. }) => assert!(what.starts_with("unknown layout"), "{what}"),
        other => panic!("expected a dataset error, got {other:?}"),
    }
}
