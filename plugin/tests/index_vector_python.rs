//! The Python (numpy) index-vector code printed in docs/schema.md computes the same vector as
//! the store, so programs in other languages can build query vectors. The code block is read
//! from the document itself and run with `python3`; numpy comes from `./scripts/setup.sh`
//! (`assets/pypi`, or `$T2V_ASSETS/pypi`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use task2vec_qdrant::{IndexTransform, VectorSpace};

/// The first ```python block after `marker` in docs/schema.md.
fn python_block(marker: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema.md");
    let doc = std::fs::read_to_string(&path).expect("docs/schema.md");
    let after = &doc[doc.find(marker).expect("marker in docs/schema.md")..];
    let start = after.find("```python\n").expect("a python block") + "```python\n".len();
    let len = after[start..].find("```").expect("end of the block");
    after[start..start + len].to_string()
}

fn assets() -> PathBuf {
    std::env::var_os("T2V_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets"))
}

#[test]
fn the_documented_python_builds_the_stores_index_vector() {
    let code = python_block("In Python (numpy), for a query vector:");
    let e = common::fixture_embedding(1);
    let space = VectorSpace::of(&e);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.json");
    std::fs::write(
        &input,
        serde_json::json!({
            "hessian": e.hessian,
            "layout": space.layout,
            "t0": common::fixture_hessians()[4],
        })
        .to_string(),
    )
    .expect("write input");
    let script = format!(
        "{code}\nimport json, sys\nd = json.load(open(sys.argv[1]))\n\
         print(json.dumps([float(v) for v in index_vector(d['hessian'], d['layout'], d['t0'])]))\n"
    );
    let pypi = assets().join("pypi");
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(&input)
        .env("PYTHONPATH", &pypi)
        .output()
        .expect("python3 runs (it is part of the machine's setup)");
    assert!(
        out.status.success(),
        "the documented code failed (numpy from {}: run ./scripts/setup.sh): {}",
        pypi.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let python: Vec<f32> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    // The default transform, relative to a trivial embedding (the fixture's random-label one).
    let t = IndexTransform::default();
    let centre = t.centre(&common::fixture_hessians()[4]);
    assert!(centre.is_some(), "the default transform is relative to t0");
    let rust = t
        .apply(&e.hessian, &space, centre.as_ref())
        .expect("index vector");
    assert_eq!(python.len(), rust.len());
    let scale = rust.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
    let worst = python
        .iter()
        .zip(&rust)
        .map(|(p, r)| (p - r).abs())
        .fold(0.0_f32, f32::max);
    // Both compute in f64 and round to f32; only the order of the sketch's sums differs.
    assert!(
        worst <= 1e-6 * scale,
        "largest difference {worst} (scale {scale})"
    );
}
