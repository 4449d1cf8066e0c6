//! The real `t2v` binary on real data: what a newcomer runs first.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn assets() -> PathBuf {
    std::env::var_os("T2V_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("assets"))
}

fn t2v(args: &[&str], cache: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_t2v"))
        .args(args)
        .env("T2V_ASSETS", assets())
        .env("T2V_CACHE", cache)
        .env("RUST_LOG", "error")
        .output()
        .expect("run t2v")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_names_every_subcommand_and_the_dataset_layouts() {
    let cache = tempfile::tempdir().unwrap();
    let out = t2v(&["--help"], cache.path());
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "inspect",
        "predict",
        "IDX",
        "manifest",
        "EfficientNet-Lite0",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn inspect_fashion_mnist_shows_classes_counts_and_probe_predictions() {
    let cache = tempfile::tempdir().unwrap();
    let out = t2v(
        &[
            "inspect",
            "/usr/share/datasets/fashion-mnist",
            "--predict",
            "3",
            "--json",
        ],
        cache.path(),
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["summary"]["total"], 60000);
    let classes = v["summary"]["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 10);
    assert!(classes.iter().all(|c| c["count"] == 6000));
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3);
    for p in preds {
        let top = p["imagenet_top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let probs: Vec<f64> = top.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
        assert!(
            probs.windows(2).all(|w| w[0] >= w[1]),
            "not sorted: {probs:?}"
        );
    }
    // The legacy .pth was converted once into the cache.
    let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(cached.len(), 1, "expected one cached safetensors file");
}

#[test]
fn predict_names_the_right_class_and_reports_a_bad_file_without_stopping() {
    let cache = tempfile::tempdir().unwrap();
    let photo = assets().join("pypi/foolbox/data/imagenet_00_243.jpg");
    let bogus = cache.path().join("notes.jpg");
    std::fs::write(&bogus, "not an image").unwrap();
    let out = t2v(
        &[
            "predict",
            photo.to_str().unwrap(),
            bogus.to_str().unwrap(),
            "--top",
            "1",
        ],
        cache.path(),
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stdout.contains("bull mastiff"), "stdout: {stdout}");
    assert!(
        stderr.contains("notes.jpg"),
        "stderr names the bad file: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed file makes the exit code 1"
    );
}

#[test]
fn a_one_class_folder_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("only");
    std::fs::create_dir(&class).unwrap();
    std::fs::copy(
        assets().join("pypi/foolbox/data/imagenet_00_243.jpg"),
        class.join("a.jpg"),
    )
    .unwrap();
    let out = t2v(
        &["inspect", dir.path().to_str().unwrap(), "--predict", "0"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("at least two"), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn unknown_probe_weights_missing_is_explained() {
    let cache = tempfile::tempdir().unwrap();
    let out = t2v(
        &[
            "inspect",
            "/usr/share/datasets/fashion-mnist",
            "--probe",
            "resnet34",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--weights"),
        "stderr: {}",
        text(&out.stderr)
    );
}

/// Small, fast settings for the embedding commands (64 px, few images, late stages only).
const FAST: &[&str] = &[
    "--image-size",
    "64",
    "--max-samples",
    "32",
    "--fisher-draws",
    "32",
    "--skip-stages",
    "15",
    "--quiet",
];

#[test]
fn embed_distance_and_matrix_work_end_to_end_and_refuse_mismatched_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let fashion = "/usr/share/datasets/fashion-mnist";

    let first = out("fashion.t2v.safetensors");
    let mut args = vec!["embed", fashion, "-o", &first];
    args.extend_from_slice(FAST);
    args.push("--trivial");
    let o = t2v(&args, dir.path());
    assert!(o.status.success(), "embed failed: {}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("wrote") && stdout.contains("norm"),
        "summary: {stdout}"
    );
    let trivial = out("fashion.trivial.t2v.safetensors");
    assert!(
        std::path::Path::new(&trivial).exists(),
        "--trivial writes the random-label embedding"
    );

    let o = t2v(&["distance", &first, &trivial, "--json"], dir.path());
    assert!(o.status.success(), "distance failed: {}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cos = v["cosine"].as_f64().unwrap();
    assert!(
        cos > 0.0 && cos < 1.0,
        "d_sym between a task and its trivial embedding: {cos}"
    );
    assert_eq!(v.as_object().unwrap().len(), 7, "all seven distances: {v}");

    // Same task, different seed: a third task for the matrix.
    let third = out("fashion-seed1.t2v.safetensors");
    let mut args = vec!["embed", fashion, "-o", &third, "--seed", "1"];
    args.extend_from_slice(FAST);
    assert!(t2v(&args, dir.path()).status.success());

    let prefix = out("m/tasks");
    let o = t2v(
        &["matrix", &first, &trivial, &third, "--out", &prefix],
        dir.path(),
    );
    assert!(o.status.success(), "matrix failed: {}", text(&o.stderr));
    let csv = std::fs::read_to_string(format!("{prefix}.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 4, "header + 3 rows:\n{csv}");
    assert_eq!(rows[0], "source,fashion,fashion.trivial,fashion-seed1");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{prefix}.json")).unwrap()).unwrap();
    assert_eq!(json["dendrogram_order"].as_array().unwrap().len(), 3);
    assert_eq!(json["matrix"][0][0], 0.0);
    for png in ["-heatmap.png", "-map.png"] {
        let img = image::open(format!("{prefix}{png}")).expect("a readable PNG");
        assert!(img.width() > 200 && img.height() > 200);
    }

    // A different skip_stages makes a vector of another layout: comparing must be refused.
    let other = out("other.t2v.safetensors");
    let mut args = vec!["embed", fashion, "-o", &other];
    args.extend_from_slice(FAST);
    let n = args.iter().position(|a| *a == "15").unwrap();
    args[n] = "14";
    assert!(t2v(&args, dir.path()).status.success());
    let o = t2v(&["distance", &first, &other], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("skip_stages"),
        "stderr: {}",
        text(&o.stderr)
    );
}
