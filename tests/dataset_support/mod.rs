//! Builders of real on-disk datasets for the `dataset_*` tests: the foolbox photos re-encoded
//! in every supported format, laid out as class folders in a temporary directory.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, RgbImage};
use tempfile::TempDir;

use crate::common;

/// The five formats a class folder may hold, in the (sorted) order of their class names.
pub const FORMATS: [(&str, ImageFormat); 5] = [
    ("bmp", ImageFormat::Bmp),
    ("gif", ImageFormat::Gif),
    ("jpeg", ImageFormat::Jpeg),
    ("png", ImageFormat::Png),
    ("webp", ImageFormat::WebP),
];

/// The 20 foolbox ImageNet photos, decoded by the `image` crate and shrunk to at most 96 px wide
/// so that encoding them (GIF quantisation especially) stays fast.
pub fn photos() -> Vec<(String, RgbImage)> {
    common::foolbox_imagenet()
        .into_iter()
        .map(|(path, _)| {
            let img = image::open(&path).expect("decode foolbox photo").to_rgb8();
            let (w, h) = img.dimensions();
            let small = image::imageops::resize(
                &img,
                96,
                96 * h / w,
                image::imageops::FilterType::Triangle,
            );
            (
                path.file_stem().unwrap().to_string_lossy().into_owned(),
                small,
            )
        })
        .collect()
}

/// Encodes `img` to `path` in `format` (WebP is lossless in the `image` crate).
pub fn save(img: &RgbImage, path: &Path, format: ImageFormat) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let dynamic = DynamicImage::ImageRgb8(img.clone());
    let dynamic = if format == ImageFormat::Gif {
        DynamicImage::ImageRgba8(dynamic.to_rgba8())
    } else {
        dynamic
    };
    dynamic
        .save_with_format(path, format)
        .unwrap_or_else(|e| panic!("encode {}: {e}", path.display()));
}

/// What [`build_format_folder`] wrote: the relative path and source image of every image
/// file, class by class in the order the dataset must list them.
pub struct Built {
    pub dir: TempDir,
    pub root: PathBuf,
    /// (class name, path relative to root, the pixels that were encoded)
    pub files: Vec<(String, PathBuf, RgbImage)>,
}

/// A class-folder dataset of the 20 photos: class `bmp` holds photos 0-3 as BMP, `gif` 4-7 as
/// GIF, ..., `webp` 16-19 as WebP. In class `png` one photo sits three folders deep; in class
/// `webp` one file has no extension (found by content). Hidden files and folders holding valid
/// images are added too; they must be ignored.
pub fn build_format_folder() -> Built {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("formats");
    let photos = photos();
    let mut files = Vec::new();
    for (k, (class, format)) in FORMATS.iter().enumerate() {
        for (j, (name, img)) in photos[4 * k..4 * k + 4].iter().enumerate() {
            let ext = format.extensions_str()[0];
            let rel = match (*class, j) {
                ("png", 3) => PathBuf::from(format!("png/nested/deeper/{name}.{ext}")),
                ("webp", 3) => PathBuf::from(format!("webp/{name}_no_extension")),
                _ => PathBuf::from(format!("{class}/{name}.{ext}")),
            };
            save(img, &root.join(&rel), *format);
            files.push((class.to_string(), rel, img.clone()));
        }
    }
    // Sort within each class the way the walk visits them: by path component names.
    files.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
    save(
        &photos[0].1,
        &root.join("png/.hidden.png"),
        ImageFormat::Png,
    );
    save(
        &photos[0].1,
        &root.join("png/.cache/thumb.png"),
        ImageFormat::Png,
    );
    save(
        &photos[0].1,
        &root.join(".trash/photo.png"),
        ImageFormat::Png,
    );
    Built { dir, root, files }
}

/// A dataset of two classes of PNG photos (`a`: photos 0-2, `b`: photos 3-5) in a temporary
/// directory; tests add their own bad files to it.
pub fn two_classes() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let photos = photos();
    for (i, (name, img)) in photos.iter().take(6).enumerate() {
        let class = if i < 3 { "a" } else { "b" };
        save(
            img,
            &root.join(class).join(format!("{name}.png")),
            ImageFormat::Png,
        );
    }
    (dir, root)
}

/// Mean absolute difference between two images of the same size, in grey levels.
pub fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    total as f64 / a.as_raw().len() as f64
}
