//! Migration through the store's own dump, embedded engine to embedded engine: every point,
//! vector and payload comes back identical, the trivial embedding travels, and a dump of
//! another space or a damaged dump is refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{embedding, fixture_embedding, perturbed, trivial_embedding};
use task2vec::fisher::Estimator;
use task2vec_qdrant::{Error, Expert, SelectOptions, Store, StoreConfig, Tags, VectorSpace};

fn space() -> VectorSpace {
    VectorSpace::of(&fixture_embedding(0))
}

fn embedded(dir: &Path) -> StoreConfig {
    StoreConfig::Embedded {
        path: dir.to_path_buf(),
    }
}

/// The selection the migration tests compare before and after.
fn select_options() -> SelectOptions {
    SelectOptions {
        alpha: 0.15,
        prefetch: 10,
        limit: 4,
    }
}

/// A store with tasks, experts and a trivial embedding.
fn fill(store: &Store) {
    for k in 0..6 {
        let e = embedding(&format!("task{k}"), perturbed(k % 4, 0.2, k as u64));
        let tags = Tags::from([("batch".to_string(), format!("{}", k % 2))]);
        store.upsert_task(&e, &tags).expect("upsert task");
    }
    for i in 0..4 {
        let expert = Expert {
            key: format!("expert{i}"),
            name: format!("model {i}"),
            weights_uri: format!("s3://zoo/{i}.safetensors"),
            tags: Tags::from([("arch".to_string(), "resnet18".to_string())]),
            metrics: BTreeMap::from([("top1".to_string(), 0.9 + 0.01 * i as f64)]),
        };
        store
            .upsert_expert(&expert, &fixture_embedding(i))
            .expect("upsert expert");
    }
    store.set_trivial(&trivial_embedding()).expect("trivial");
}

/// A dump vector (base64 of little-endian f32) decoded.
fn floats(v: &serde_json::Value) -> Vec<f32> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 text"))
        .expect("base64");
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The dump's point files, each line parsed, in id order.
fn points(dump: &Path, file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dump.join(file)).expect("read points");
    let mut v: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    v
}

#[test]
fn embedded_dump_round_trips_every_point_exactly() {
    let root = tempfile::tempdir().expect("temp dir");
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let (dump_a, dump_b) = (root.path().join("dump-a"), root.path().join("dump-b"));

    let source = Store::open(&a, &space()).expect("store a");
    fill(&source);
    let summary = source.export_dump(&dump_a).expect("export");
    assert_eq!(
        (summary.tasks, summary.experts, summary.trivial),
        (6, 4, true)
    );

    // Into a store that does not exist yet: created with the dump's space and transform.
    let imported = Store::import_dump_into(&embedded(&b), &dump_a).expect("import");
    assert_eq!(imported, summary);
    let target = Store::open_existing(&b).expect("store b");
    assert_eq!(target.space(), source.space());
    assert_eq!(target.transform(), source.transform());
    assert_eq!(target.trivial(), source.trivial());
    assert_eq!(
        target.trivial_embedding().expect("t0"),
        source.trivial_embedding().expect("t0")
    );

    // Identical points: the second store's dump has the same ids, every payload field
    // (timestamps included) and every raw vector bit for bit.
    target.export_dump(&dump_b).expect("export b");
    for file in ["tasks.jsonl", "experts.jsonl"] {
        let (pa, pb) = (points(&dump_a, file), points(&dump_b, file));
        assert_eq!(pa.len(), pb.len());
        for (x, y) in pa.iter().zip(&pb) {
            assert_eq!(x["id"], y["id"]);
            assert_eq!(x["payload"], y["payload"], "{file}: payload of {}", x["id"]);
            let (vx, vy) = (&x["vectors"], &y["vectors"]);
            assert_eq!(
                vx.as_object().map(|o| o.keys().collect::<Vec<_>>()),
                vy.as_object().map(|o| o.keys().collect::<Vec<_>>()),
                "{file}: vector names of {}",
                x["id"]
            );
            for (name, a) in vx.as_object().expect("vectors") {
                if name == "hessian" || name == "scale" {
                    assert!(
                        a == &vy[name],
                        "{file}: raw `{name}` of {} differs",
                        x["id"]
                    );
                } else {
                    // Cosine vectors are normalised again by the importing engine: the same to
                    // the last bit or two.
                    let (a, b) = (floats(a), floats(&vy[name]));
                    let worst = a
                        .iter()
                        .zip(&b)
                        .map(|(p, q)| (p - q).abs())
                        .fold(0.0_f32, f32::max);
                    assert!(worst <= 1e-7, "{file}: `{name}` of {}: {worst}", x["id"]);
                }
            }
        }
    }
    // And through the API.
    assert_eq!(
        target.list_tasks().expect("list"),
        source.list_tasks().expect("list")
    );
    assert_eq!(
        target.list_experts().expect("list"),
        source.list_experts().expect("list")
    );
    for t in source.list_tasks().expect("list") {
        let x = source.get_task(t.id).expect("get").expect("task");
        let y = target.get_task(t.id).expect("get").expect("task");
        assert_eq!(x, y);
    }
    let query = embedding("query", perturbed(2, 0.1, 77));
    let options = SelectOptions {
        alpha: 0.15,
        prefetch: 4,
        limit: 4,
    };
    let (x, y) = (
        target.select_experts(&query, &options).expect("select"),
        source.select_experts(&query, &options).expect("select"),
    );
    assert_eq!(x.len(), y.len());
    for (a, b) in x.iter().zip(&y) {
        assert_eq!(
            (a.id, a.d_asym, a.d_sym, a.complexity),
            (b.id, b.d_asym, b.d_sym, b.complexity)
        );
        assert!((a.cosine - b.cosine).abs() < 1e-6);
    }

    // Importing again changes nothing (same ids replace).
    target.import_dump(&dump_a).expect("import again");
    assert_eq!(target.count_tasks().expect("count"), 6);
    assert_eq!(target.count_experts().expect("count"), 4);

    // A folder holding a dump is not overwritten.
    match source.export_dump(&dump_a) {
        Err(Error::Dump { what, .. }) => assert!(what.contains("already"), "{what}"),
        other => panic!("expected a dump error, got {other:?}"),
    }
}

#[test]
fn a_dump_of_another_space_or_a_damaged_dump_is_refused() {
    let root = tempfile::tempdir().expect("temp dir");
    let source = Store::open(&root.path().join("a"), &space()).expect("store");
    fill(&source);
    let dump = root.path().join("dump");
    source.export_dump(&dump).expect("export");

    let mut other_space = space();
    other_space.estimator = Estimator::PerExample;
    other_space.montecarlo_batch_size = None;
    let other = Store::open(&root.path().join("other"), &other_space).expect("other store");
    match other.import_dump(&dump) {
        Err(Error::Mismatch(m)) => assert!(m.contains("estimator"), "{m}"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert_eq!(other.count_tasks().expect("count"), 0, "nothing imported");

    // A truncated point file.
    let text = std::fs::read_to_string(dump.join("experts.jsonl")).expect("read");
    let kept: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(dump.join("experts.jsonl"), kept.join("\n")).expect("truncate");
    let fresh = Store::open(&root.path().join("fresh"), &space()).expect("fresh store");
    match fresh.import_dump(&dump) {
        Err(Error::Dump { what, .. }) => assert!(what.contains("holds 3 points"), "{what}"),
        other => panic!("expected a dump error, got {other:?}"),
    }
    // A vector of the wrong length.
    let line: serde_json::Value = serde_json::from_str(kept[0]).expect("a JSON line");
    let mut bad = line.clone();
    bad["vectors"]["hessian"] = serde_json::json!("AAAAAA==");
    std::fs::write(dump.join("experts.jsonl"), bad.to_string()).expect("write");
    match fresh.import_dump(&dump) {
        Err(Error::Dump { what, .. }) => assert!(what.contains("has 1 values"), "{what}"),
        other => panic!("expected a dump error, got {other:?}"),
    }
    // Not a dump at all.
    match fresh.import_dump(root.path()) {
        Err(Error::Dump { what, .. }) => assert!(what.contains("not a dump"), "{what}"),
        other => panic!("expected a dump error, got {other:?}"),
    }
}

#[test]
fn a_store_with_the_older_full_length_index_migrates_to_the_layered_sketch() {
    let root = tempfile::tempdir().expect("temp dir");
    let full = task2vec_qdrant::IndexTransform::CenteredLog { floor_rel: 1e-4 };
    let old = Store::open_with(&root.path().join("old"), &space(), full).expect("old store");
    fill(&old);
    let options = select_options();
    let target = embedding("target", perturbed(2, 0.25, 99));
    let before = old.select_experts(&target, &options).expect("select");
    let dump = root.path().join("dump");
    old.export_dump(&dump).expect("export");
    old.close();

    let summary = Store::import_dump_into(&embedded(&root.path().join("new")), &dump)
        .expect("import into a new store");
    assert_eq!((summary.tasks, summary.experts), (6, 4));
    let new = Store::open_existing(&root.path().join("new")).expect("open");
    assert_eq!(new.transform(), task2vec_qdrant::IndexTransform::default());
    let after = new.select_experts(&target, &options).expect("select");
    // The exact re-rank sees the same raw vectors: same experts, same distances.
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.key, a.key);
        assert_eq!(b.d_asym, a.d_asym);
    }
    let task = new.list_tasks().expect("list")[0].id;
    let stored = new.get_task(task).expect("get").expect("task");
    assert_eq!(
        new.index_vector(&stored.embedding.hessian)
            .expect("index")
            .len(),
        space().layout.len() + 8192
    );
}

/// Rewrites an embedded store's manifest as a version-1 library wrote it: version 1, no
/// `raw_vectors` key.
fn make_version_1(dir: &Path) {
    let path = dir.join("store.json");
    let text = std::fs::read_to_string(&path).expect("manifest");
    let mut m: serde_json::Value = serde_json::from_str(&text).expect("manifest JSON");
    assert_eq!(m["version"], 2);
    assert_eq!(m["raw_vectors"], "inline");
    assert_eq!(m["index_precision"], "f32");
    m["version"] = 1.into();
    let keys = m.as_object_mut().expect("object");
    keys.remove("raw_vectors");
    keys.remove("index_precision");
    std::fs::write(&path, m.to_string()).expect("write manifest");
}

#[test]
fn a_version_1_store_with_inline_raw_vectors_still_works_and_migrates_to_companion_collections() {
    let root = tempfile::tempdir().expect("temp dir");
    let old_dir = root.path().join("old");
    // Version 1 kept the layered sketch's index vectors as f32 in RAM.
    let inline = task2vec_qdrant::Layout {
        raw_vectors: task2vec_qdrant::RawVectors::Inline,
        index_precision: task2vec_qdrant::IndexPrecision::F32,
        ..Default::default()
    };
    let old = Store::open_with(&old_dir, &space(), inline).expect("old store");
    fill(&old);
    old.close();
    make_version_1(&old_dir);
    // Version 1: the raw vectors are in the searched collections, no companions.
    assert!(!old_dir.join("tasks_raw").exists());
    assert!(!old_dir.join("experts_raw").exists());
    let config = std::fs::read_to_string(old_dir.join("tasks").join("edge_config.json"))
        .expect("edge config");
    assert!(config.contains("\"hessian\""), "{config}");
    assert!(!config.contains("quantization_config"), "{config}");

    let old = Store::open_existing(&old_dir).expect("a version-1 store opens");
    assert_eq!(old.index_precision(), task2vec_qdrant::IndexPrecision::F32);
    let options = select_options();
    let target = embedding("target", perturbed(1, 0.25, 98));
    let before = old.select_experts(&target, &options).expect("select");
    assert_eq!(before.len(), 4);
    let task = old.list_tasks().expect("list")[0].id;
    let task_before = old.get_task(task).expect("get").expect("task");
    // Writes keep the inline layout (and no companion appears).
    let extra = embedding("extra", perturbed(3, 0.2, 77));
    let extra_id = old.upsert_task(&extra, &Tags::new()).expect("upsert");
    assert_eq!(
        old.get_task(extra_id)
            .expect("get")
            .expect("extra")
            .embedding,
        extra
    );
    assert!(old.delete_task(extra_id).expect("delete"));
    assert!(!old_dir.join("tasks_raw").exists());
    let dump = root.path().join("dump");
    old.export_dump(&dump).expect("export");
    old.close();

    let new_dir = root.path().join("new");
    Store::import_dump_into(&embedded(&new_dir), &dump).expect("import");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(new_dir.join("store.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    assert_eq!(manifest["version"], 2);
    assert_eq!(manifest["raw_vectors"], "companion");
    let config = std::fs::read_to_string(new_dir.join("tasks").join("edge_config.json"))
        .expect("edge config");
    assert!(!config.contains("\"hessian\""), "{config}");
    // The import also moves the index vectors to the current default, int8 in RAM.
    assert_eq!(manifest["index_precision"], "int8");
    assert!(config.contains("\"int8\""), "{config}");
    assert!(new_dir.join("tasks_raw").is_dir() && new_dir.join("experts_raw").is_dir());

    let new = Store::open_existing(&new_dir).expect("open");
    let after = new.select_experts(&target, &options).expect("select");
    assert_eq!(before, after, "same ranking, same distances");
    assert_eq!(
        new.get_task(task).expect("get").expect("task").embedding,
        task_before.embedding
    );
}

#[test]
fn a_manifest_of_an_unknown_version_is_refused() {
    let root = tempfile::tempdir().expect("temp dir");
    Store::open(root.path(), &space()).expect("store").close();
    let path = root.path().join("store.json");
    let text = std::fs::read_to_string(&path).expect("manifest");
    std::fs::write(&path, text.replace("\"version\": 2", "\"version\": 3")).expect("write");
    match Store::open_existing(root.path()) {
        Err(Error::Store { what, .. }) => assert!(what.contains("version 3"), "{what}"),
        other => panic!("expected a store error, got {:?}", other.map(|_| ())),
    }
}
