//! The any-language ranking examples of docs/schema.md, run against a real Qdrant server when
//! `QDRANT_URL` (gRPC) is set: `docs/examples/select_formula.sh` (curl, REST) and
//! `docs/examples/select_formula.py` (Python `qdrant-client`) must rank the experts exactly as
//! [`Store::rank_experts_by_formula`] does, scores included. The REST URL is
//! `QDRANT_REST_URL`, else `QDRANT_URL` with port 6334 replaced by 6333. Without a server the
//! test prints "skipped: QDRANT_URL not set".

mod common;
#[path = "common/remote.rs"]
mod remote;

use std::path::PathBuf;
use std::process::Command;

use common::{embedding, trivial_embedding, Normal};
use remote::{rest_url, server_url, RemoteStore};
use task2vec_qdrant::{Expert, FormulaOptions, Hit, Store, VectorSpace, FORMULA_KAPPA};
use uuid::Uuid;

fn example(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples")
        .join(name);
    assert!(p.is_file(), "example {} is missing", p.display());
    p
}

/// Runs an example with the REST URL and collection in its environment; its standard output.
fn run(program: &str, script: PathBuf, args: &[String], rest: &str, collection: &str) -> String {
    let out = Command::new(program)
        .arg(&script)
        .args(args)
        .env("QDRANT_URL", rest)
        .env("COLLECTION", collection)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn assert_same_ranking(what: &str, got: &[(Uuid, f64)], expected: &[Hit]) {
    assert_eq!(got.len(), expected.len(), "{what}");
    for ((id, score), h) in got.iter().zip(expected) {
        assert_eq!(*id, h.id, "{what}: order differs");
        assert!(
            (score - f64::from(h.score)).abs() < 1e-4,
            "{what}: score {score} vs {}",
            h.score
        );
    }
}

#[test]
fn the_curl_and_python_examples_rank_as_the_store_does() {
    let Some(url) = server_url() else { return };
    let rest = rest_url(&url);
    let r = RemoteStore::new(&url, "examples");
    let store = Store::open_config(
        &r.store_config(),
        &VectorSpace::of(&common::fixture_embedding(0)),
    )
    .expect("store");
    let mut rng = Normal::new(7);
    for k in 0..30 {
        let e = embedding(
            &format!("zoo{k}"),
            common::random_mixture(&mut rng, 500 + k),
        );
        let expert = Expert {
            key: format!("zoo{k}"),
            name: format!("model {k}"),
            ..Expert::default()
        };
        store.upsert_expert(&expert, &e).expect("upsert");
    }
    store.set_trivial(&trivial_embedding()).expect("trivial");

    let dir = tempfile::tempdir().expect("temp dir");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    for q in 0..3 {
        let target = embedding("target", common::random_mixture(&mut rng, 900 + q));
        let index = store.index_vector(&target.hessian).expect("index");
        let vector_file = dir.path().join(format!("target{q}.json"));
        std::fs::write(&vector_file, serde_json::to_string(&index).expect("json"))
            .expect("write vector");
        let options = FormulaOptions {
            alpha: 0.15,
            prefetch: 20,
            limit: 10,
            kappa: FORMULA_KAPPA,
        };
        let expected = store
            .rank_experts_by_formula(&target, &options)
            .expect("formula");
        let slope = FORMULA_KAPPA / (2.0 * target.hessian.len() as f64);
        let args = [
            vector_file.display().to_string(),
            "0.15".into(),
            "20".into(),
            "10".into(),
            format!("{slope:e}"),
        ];
        let collection = r.collection("experts");

        let text = run(
            "bash",
            example("select_formula.sh"),
            &args,
            &rest,
            &collection,
        );
        let doc: serde_json::Value = serde_json::from_str(&text).expect("curl JSON");
        let got: Vec<(Uuid, f64)> = doc["result"]["points"]
            .as_array()
            .expect("result.points")
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().expect("id").parse().expect("uuid"),
                    p["score"].as_f64().expect("score"),
                )
            })
            .collect();
        assert_same_ranking("curl", &got, &expected);

        let text = run(
            &python,
            example("select_formula.py"),
            &args,
            &rest,
            &collection,
        );
        let doc: serde_json::Value = serde_json::from_str(&text).expect("python JSON");
        let got: Vec<(Uuid, f64)> = doc
            .as_array()
            .expect("array")
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().expect("id").parse().expect("uuid"),
                    p["score"].as_f64().expect("score"),
                )
            })
            .collect();
        assert_same_ranking("python", &got, &expected);
    }
}
