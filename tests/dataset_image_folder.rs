//! Class-folder datasets built from real photos in every supported format.

mod common;
mod dataset_support;

use std::fs;
use std::path::PathBuf;

use candle_core::Device;
use dataset_support::{build_format_folder, mean_abs_diff, save, FORMATS};
use image::ImageFormat;
use task2vec::dataset::{Dataset, Format, IdxSplit, OpenOptions, Preprocess, Source};

#[test]
fn classes_are_sorted_folder_names_and_items_follow_the_walk() {
    let built = build_format_folder();
    let ds = Dataset::open(&built.root, &OpenOptions::default()).unwrap();
    assert_eq!(ds.format(), Format::ImageFolder);
    let names: Vec<&str> = FORMATS.iter().map(|f| f.0).collect();
    assert_eq!(ds.classes(), names.as_slice());
    assert_eq!(ds.class_counts(), vec![4; 5]);
    assert_eq!(ds.len(), 20);
    let listed: Vec<(usize, PathBuf)> = ds
        .items()
        .iter()
        .map(|it| match &it.source {
            Source::File(p) => (it.label, p.strip_prefix(&built.root).unwrap().to_path_buf()),
            Source::Idx(_) => panic!("file dataset with an IDX item"),
        })
        .collect();
    let expected: Vec<(usize, PathBuf)> = built
        .files
        .iter()
        .map(|(c, rel, _)| (names.iter().position(|n| n == c).unwrap(), rel.clone()))
        .collect();
    assert_eq!(listed, expected);
    // Hidden files and folders hold valid images but are ignored without a skip record.
    assert!(ds.skipped().is_empty(), "{:?}", ds.skipped());
}

#[test]
fn every_format_decodes_to_the_pixels_that_were_encoded() {
    let built = build_format_folder();
    let ds = Dataset::image_folder(&built.root, &OpenOptions::default()).unwrap();
    for (i, (class, rel, original)) in built.files.iter().enumerate() {
        let decoded = ds.load_rgb(i).unwrap();
        assert_eq!(
            decoded.dimensions(),
            original.dimensions(),
            "{}",
            rel.display()
        );
        let diff = mean_abs_diff(&decoded, original);
        // PNG, BMP and (lossless) WebP are exact. GIF's 256-colour palette and JPEG's
        // quality-75 compression are not: on these detailed 96-px thumbnails we saw mean
        // errors up to 2.3 (GIF) and 5.0 (JPEG) grey levels; a decoding mistake (swapped
        // channels, wrong palette, garbage) is tens of levels.
        let tolerance = match class.as_str() {
            "png" | "bmp" | "webp" => 0.0,
            "gif" => 4.0,
            _ => 8.0,
        };
        assert!(
            diff <= tolerance,
            "{}: mean |Δ| = {diff:.2} > {tolerance}",
            rel.display()
        );
    }
}

#[test]
fn grey_and_alpha_images_become_rgb_like_pillow_convert() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A real grey MNIST digit (PNG, colour type L) and a photo with an alpha channel.
    let digit_src = common::pypi("foolbox/data/mnist_00_7.png");
    let digit = image::open(&digit_src).unwrap();
    assert!(
        matches!(digit, image::DynamicImage::ImageLuma8(_)),
        "fixture should be grey"
    );
    fs::create_dir_all(root.join("grey")).unwrap();
    fs::copy(&digit_src, root.join("grey/digit.png")).unwrap();
    let photo = dataset_support::photos().remove(0).1;
    let mut rgba = image::DynamicImage::ImageRgb8(photo.clone()).to_rgba8();
    for (x, _, p) in rgba.enumerate_pixels_mut() {
        p.0[3] = (x * 2) as u8; // varying transparency must not change the colours
    }
    fs::create_dir_all(root.join("rgba")).unwrap();
    rgba.save_with_format(root.join("rgba/photo.png"), ImageFormat::Png)
        .unwrap();

    let ds = Dataset::open(root, &OpenOptions::default()).unwrap();
    let grey = ds.load_rgb(0).unwrap();
    let luma = digit.to_luma8();
    assert_eq!(grey.dimensions(), (28, 28));
    for (g, l) in grey.pixels().zip(luma.pixels()) {
        assert_eq!(g.0, [l.0[0]; 3]);
    }
    assert_eq!(
        ds.load_rgb(1).unwrap(),
        photo,
        "alpha is dropped, colours kept"
    );
}

#[test]
fn load_batch_gives_chw_data_labels_and_a_tensor() {
    let built = build_format_folder();
    let ds = Dataset::open(&built.root, &OpenOptions::default()).unwrap();
    let pre = Preprocess::efficientnet_lite();
    let indices = [0, 5, 10, 15, 19];
    let batch = ds.load_batch(&indices, &pre).unwrap();
    assert!(batch.skipped.is_empty());
    assert_eq!(batch.indices, indices);
    assert_eq!(batch.labels, vec![0, 1, 2, 3, 4]);
    assert_eq!(batch.data.len(), 5 * 3 * 224 * 224);
    // Each image's block is exactly what `apply` makes of it.
    let third = pre.apply(&ds.load_rgb(10).unwrap());
    assert_eq!(
        &batch.data[2 * third.len()..3 * third.len()],
        third.as_slice()
    );
    let t = batch.images(&Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[5, 3, 224, 224]);
    let y = batch
        .label_tensor(&Device::Cpu)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    assert_eq!(y, vec![0, 1, 2, 3, 4]);
}

#[test]
fn mnist_digits_saved_as_png_list_and_decode_back_to_the_idx_pixels() {
    let idx = Dataset::open(
        &common::mnist_dir(),
        &OpenOptions::default().idx_split(IdxSplit::Test),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("digits");
    let mut expected = Vec::new();
    for i in 0..30 {
        let img = idx.load_rgb(i).unwrap();
        let class = &idx.classes()[idx.items()[i].label];
        let path = root.join(class).join(format!("{i:05}.png"));
        save(&img, &path, ImageFormat::Png);
        expected.push((class.clone(), path, img));
    }
    expected.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let ds = Dataset::open(&root, &OpenOptions::default()).unwrap();
    let classes: Vec<String> = {
        let mut c: Vec<String> = expected.iter().map(|e| e.0.clone()).collect();
        c.dedup();
        c
    };
    assert_eq!(ds.classes(), classes.as_slice());
    assert_eq!(ds.len(), 30);
    for (i, (class, path, img)) in expected.iter().enumerate() {
        assert_eq!(&ds.classes()[ds.items()[i].label], class);
        assert_eq!(ds.items()[i].source, Source::File(path.clone()));
        assert_eq!(&ds.load_rgb(i).unwrap(), img);
    }
}

#[test]
fn fingerprint_is_stable_survives_a_move_and_changes_with_the_files() {
    let built = build_format_folder();
    let opts = OpenOptions::default();
    let fp = Dataset::open(&built.root, &opts).unwrap().fingerprint();
    assert_eq!(fp.len(), 64);
    assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        Dataset::open(&built.root, &opts).unwrap().fingerprint(),
        fp,
        "same files, same fingerprint"
    );

    let moved = built.dir.path().join("renamed");
    fs::rename(&built.root, &moved).unwrap();
    assert_eq!(
        Dataset::open(&moved, &opts).unwrap().fingerprint(),
        fp,
        "a rename keeps sizes and times"
    );

    // Appending a byte changes the size (and the time).
    let victim = moved.join(&built.files[0].1);
    let mut bytes = fs::read(&victim).unwrap();
    bytes.push(0);
    fs::write(&victim, &bytes).unwrap();
    let fp2 = Dataset::open(&moved, &opts).unwrap().fingerprint();
    assert_ne!(fp2, fp);

    // A new file changes it again.
    fs::copy(&victim, moved.join("gif/extra.bmp")).unwrap();
    let fp3 = Dataset::open(&moved, &opts).unwrap().fingerprint();
    assert_ne!(fp3, fp2);

    // Relabelling (moving a file to another class) changes it too.
    fs::rename(moved.join("gif/extra.bmp"), moved.join("bmp/extra.bmp")).unwrap();
    assert_ne!(Dataset::open(&moved, &opts).unwrap().fingerprint(), fp3);
}

#[test]
fn summary_prints_classes_counts_and_skips() {
    let built = build_format_folder();
    fs::write(built.root.join("png/notes.txt"), "not a photo\n").unwrap();
    let ds = Dataset::open(&built.root, &OpenOptions::default()).unwrap();
    let summary = ds.summary();
    assert_eq!(summary.total, 21 - 1);
    assert_eq!(
        summary.classes.iter().map(|c| c.count).collect::<Vec<_>>(),
        vec![4; 5]
    );
    assert_eq!(summary.skipped.len(), 1);
    let text = summary.to_string();
    assert!(text.contains("20 in 5 classes"), "{text}");
    assert!(text.contains("image-folder"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["3", "png", "4"]),
        "{text}"
    );
    assert!(text.contains("skipped  1 (1 not an image)"), "{text}");
    assert!(text.contains("notes.txt: not an image"), "{text}");
}
