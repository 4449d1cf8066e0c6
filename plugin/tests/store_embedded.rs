//! The store against the real embedded Qdrant engine (Qdrant Edge): round trips, idempotent
//! re-upserts, deletes, persistence across reopening, and refusal of vectors that do not belong
//! to the store. Vectors are the reference EfficientNet-Lite0 embeddings and log-normal
//! perturbations of them.

mod common;

use std::collections::BTreeMap;

use common::{embedding, fixture_embedding, perturbed};
use task2vec::fisher::Estimator;
use task2vec_qdrant::{
    expert_point_id, task_point_id, Error, Expert, IndexPrecision, IndexTransform, Layout,
    SimilarOptions, Store, Tags, VectorSpace,
};

fn space() -> VectorSpace {
    VectorSpace::of(&fixture_embedding(0))
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mismatch_message(r: task2vec_qdrant::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::Mismatch(m)) => m,
        other => panic!("expected a mismatch error, got {other:?}"),
    }
}

#[test]
fn task_round_trip_is_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &space()).expect("create store");
    let e = fixture_embedding(2);
    let t = tags(&[("owner", "vision-team")]);
    let id = store.upsert_task(&e, &t).expect("upsert");
    assert_eq!(
        id,
        task_point_id(
            "/data/fashion_tops",
            common::WEIGHTS_SHA256,
            Estimator::MonteCarlo
        )
    );

    let back = store.get_task(id).expect("get").expect("stored task");
    assert_eq!(back.id, id);
    assert_eq!(
        back.embedding, e,
        "hessian, scale and metadata read back exactly"
    );
    assert_eq!(back.tags, t);

    let list = store.list_tasks().expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
    assert_eq!(list[0].dataset_uri, "/data/fashion_tops");
    assert_eq!(list[0].fingerprint, e.meta.dataset.fingerprint);
    assert_eq!(list[0].samples, 320);
    assert_eq!(list[0].n_classes, 5);
    assert!((list[0].norm - e.norm()).abs() < 1e-9 * e.norm());
    assert_eq!(store.count_tasks().expect("count"), 1);
    assert!(store.get_task(uuid::Uuid::nil()).expect("get").is_none());
}

/// The named vectors of `collection` as Qdrant Edge recorded them.
fn edge_vectors(dir: &std::path::Path, collection: &str) -> serde_json::Value {
    let path = dir.join(collection).join("edge_config.json");
    let text = std::fs::read_to_string(&path).expect("edge config");
    let config: serde_json::Value = serde_json::from_str(&text).expect("edge config JSON");
    config["vectors"].clone()
}

/// Calls `check` with every searched index vector's engine parameters (`collection.name`
/// first), after checking the raw vectors of both companion collections (and that the searched
/// collections hold none); experts have no `task2vec` copy (version 2).
fn for_each_index_vector(dir: &std::path::Path, check: impl Fn(&str, &serde_json::Value)) {
    for (collection, searched) in [("tasks", "task2vec"), ("experts", "model2vec")] {
        let raw = format!("{collection}_raw");
        assert_raw_vectors_on_disk(&edge_vectors(dir, &raw), &raw);
        let vectors = edge_vectors(dir, collection);
        assert!(vectors.get("hessian").is_none(), "{collection}: {vectors}");
        check(&format!("{collection}.{searched}"), &vectors[searched]);
        if collection == "experts" {
            assert!(vectors.get("task2vec").is_none(), "{vectors}");
        }
    }
}

fn assert_raw_vectors_on_disk(vectors: &serde_json::Value, collection: &str) {
    // `scale` only in variational stores: Qdrant would allocate it for every point.
    assert!(vectors.get("scale").is_none(), "{collection}: {vectors}");
    let v = &vectors["hessian"];
    assert_eq!(v["size"], 42016, "{collection}.hessian");
    assert_eq!(v["distance"], "Dot", "{collection}.hessian");
    assert_eq!(v["on_disk"], true, "{collection}.hessian");
    assert_eq!(v["hnsw_config"]["m"], 0, "{collection}.hessian: {v}");
    assert!(
        v.get("quantization_config").is_none(),
        "{collection}.hessian: {v}"
    );
}

/// Removes `index_precision` from the store's manifest, as in stores written before the key
/// existed, and returns what it said.
fn remove_index_precision(dir: &std::path::Path) -> serde_json::Value {
    let path = dir.join("store.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("manifest")).expect("JSON");
    let was = m.as_object_mut().expect("object").remove("index_precision");
    std::fs::write(&path, m.to_string()).expect("write manifest");
    was.expect("the manifest has `index_precision`")
}

fn assert_int8_in_ram(at: &str, v: &serde_json::Value) {
    assert_eq!(v["on_disk"], true, "{at}: the f32 originals");
    let q = &v["quantization_config"]["scalar"];
    assert_eq!(q["type"], "int8", "{at}: {v}");
    assert_eq!(q["always_ram"], true, "{at}: {v}");
}

#[test]
fn new_stores_keep_short_index_vectors_int8_in_ram_and_raw_vectors_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &space()).expect("create store");
    assert_eq!(store.index_precision(), IndexPrecision::Int8);
    let len = store.transform().len(&space());
    // One coordinate per layout module plus the sketch.
    assert_eq!(len, space().layout.len() + 8192);
    let e = fixture_embedding(2);
    assert_eq!(store.index_vector(&e.hessian).expect("index").len(), len);
    store.close();
    for_each_index_vector(dir.path(), |at, v| {
        assert_eq!(v["size"], len, "{at}");
        assert_eq!(v["distance"], "Cosine", "{at}");
        assert_int8_in_ram(at, v);
    });
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("store.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    assert_eq!(manifest["index_precision"], "int8");
}

#[test]
fn stores_made_with_f32_index_vectors_keep_them_in_ram_and_still_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let f32_layout = Layout {
        index_precision: IndexPrecision::F32,
        ..Layout::default()
    };
    let store = Store::open_with(dir.path(), &space(), f32_layout).expect("create store");
    let first = fixture_embedding(0);
    let first_id = store.upsert_task(&first, &Tags::new()).expect("upsert");
    store.close();
    // As a store written before the manifest had the key: a layered sketch meant f32.
    assert_eq!(remove_index_precision(dir.path()), "f32");

    let store = Store::open_existing(dir.path()).expect("reopen");
    assert_eq!(store.index_precision(), IndexPrecision::F32);
    let second = fixture_embedding(1);
    let second_id = store.upsert_task(&second, &Tags::new()).expect("upsert");
    let target = fixture_embedding(2);
    let hits = store
        .similar_tasks(&target, &SimilarOptions::default())
        .expect("similar");
    let mut expected = [(first_id, &first), (second_id, &second)].map(|(id, e)| {
        let d = task2vec::distance::d_sym(&e.hessian, &target.hessian).expect("d_sym");
        (id, d)
    });
    expected.sort_by(|a, b| a.1.total_cmp(&b.1));
    let got: Vec<_> = hits.iter().map(|h| (h.id, h.d_sym)).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    for ((id, d), (want_id, want_d)) in got.iter().zip(expected) {
        assert_eq!(*id, want_id, "{got:?}");
        assert!((d - want_d).abs() <= 1e-12 * want_d, "{d} vs {want_d}");
    }
    store.close();
    for_each_index_vector(dir.path(), |at, v| {
        assert_eq!(v["on_disk"], false, "{at}");
        assert!(v.get("quantization_config").is_none(), "{at}: {v}");
    });
}

#[test]
fn full_length_index_vectors_of_older_stores_stay_quantized() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = IndexTransform::CenteredLog { floor_rel: 1e-4 };
    Store::open_with(dir.path(), &space(), full)
        .expect("create store")
        .close();
    // As a store written before the manifest had `index_precision`: full length meant int8.
    assert_eq!(remove_index_precision(dir.path()), "int8");
    let store = Store::open_existing(dir.path()).expect("reopen");
    assert_eq!(store.transform(), full, "the manifest keeps the transform");
    assert_eq!(store.index_precision(), IndexPrecision::Int8);
    store.close();
    for_each_index_vector(dir.path(), |at, v| {
        assert_eq!(v["size"], 42016, "{at}");
        assert_int8_in_ram(at, v);
    });
}

#[test]
fn an_invalid_transform_is_refused_at_creation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = IndexTransform::LayeredSketch {
        floor_rel: 1e-4,
        sketch_dim: 0,
        relative_to_trivial: true,
    };
    let m = mismatch_message(Store::open_with(dir.path(), &space(), bad).map(|_| ()));
    assert!(m.contains("sketch_dim"), "{m}");
    assert!(!dir.path().join("store.json").exists(), "nothing created");
}

/// `closed-*` files in a collection's write-ahead log folder.
fn closed_wal_segments(dir: &std::path::Path, collection: &str) -> usize {
    std::fs::read_dir(dir.join(collection).join("wal"))
        .expect("wal folder")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("closed-"))
        })
        .count()
}

#[test]
fn reopening_or_optimizing_compacts_the_write_ahead_log_and_later_writes_persist() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = fixture_embedding(0);
    // ≈ 190 kB of log per task: 32 MiB log segments close every ≈ 170 tasks.
    let n = 420;
    let fill = |store: &Store, from: usize| -> Vec<uuid::Uuid> {
        (from..from + n)
            .map(|i| {
                let e = embedding(&format!("wal-{i}"), base.hessian.clone());
                store.upsert_task(&e, &Tags::new()).expect("upsert")
            })
            .collect()
    };
    let ids = {
        let store = Store::open(dir.path(), &space()).expect("create store");
        let ids = fill(&store, 0);
        store.close();
        ids
    };
    assert!(
        closed_wal_segments(dir.path(), "tasks_raw") >= 2,
        "the log grew past two segments"
    );
    {
        let store = Store::open_existing(dir.path()).expect("reopen");
        assert_eq!(
            closed_wal_segments(dir.path(), "tasks_raw"),
            1,
            "compacted on open"
        );
        assert_eq!(store.count_tasks().expect("count"), n);
        // Operation numbers continue after the compaction: a re-upsert replaces the point.
        let e = embedding("wal-7", perturbed(1, 0.3, 7));
        let id = store
            .upsert_task(&e, &tags(&[("round", "2")]))
            .expect("upsert after compaction");
        assert_eq!(id, ids[7]);
        // While the store stays open, optimize() compacts too.
        fill(&store, n);
        assert!(closed_wal_segments(dir.path(), "tasks_raw") >= 2);
        store.optimize().expect("optimize");
        assert_eq!(
            closed_wal_segments(dir.path(), "tasks_raw"),
            1,
            "compacted in place"
        );
        store
            .upsert_task(
                &embedding("wal-8", perturbed(2, 0.3, 8)),
                &tags(&[("round", "3")]),
            )
            .expect("upsert after optimize");
        assert_eq!(store.count_tasks().expect("count"), 2 * n);
        store.close();
    }
    let store = Store::open_existing(dir.path()).expect("reopen again");
    assert_eq!(store.count_tasks().expect("count"), 2 * n);
    let back = store.get_task(ids[7]).expect("get").expect("kept");
    assert_eq!(back.tags, tags(&[("round", "2")]));
    assert_eq!(back.embedding.hessian, perturbed(1, 0.3, 7));
    let back = store.get_task(ids[8]).expect("get").expect("kept");
    assert_eq!(back.tags, tags(&[("round", "3")]));
    assert_eq!(back.embedding.hessian, perturbed(2, 0.3, 8));
    let first = store.get_task(ids[0]).expect("get").expect("kept");
    assert_eq!(first.embedding.hessian, base.hessian);
}

#[test]
fn variational_scale_round_trips() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut e = fixture_embedding(1);
    e.meta.settings.fisher.estimator = Estimator::Variational;
    // A per-layer prior precision, repeated over each layer's filters.
    for (k, entry) in e.meta.layout.iter().enumerate() {
        let s = 0.5 + k as f32 * 0.01;
        e.scale[entry.offset..entry.offset + entry.n_filters].fill(s);
    }
    let store = Store::open(dir.path(), &VectorSpace::of(&e)).expect("create store");
    let id = store.upsert_task(&e, &Tags::new()).expect("upsert");
    let back = store.get_task(id).expect("get").expect("stored");
    assert_eq!(back.embedding.scale, e.scale);
    assert_eq!(back.embedding, e);
    store.close();
    let scale = &edge_vectors(dir.path(), "tasks_raw")["scale"];
    assert_eq!(scale["size"], 42016, "{scale}");
    assert_eq!(scale["on_disk"], true, "{scale}");

    // A Monte-Carlo store refuses an embedding that carries a scale.
    let mc = tempfile::tempdir().expect("temp dir");
    let store = Store::open(mc.path(), &space()).expect("create store");
    let mut odd = fixture_embedding(1);
    odd.scale[0] = 2.0;
    let m = mismatch_message(store.upsert_task(&odd, &Tags::new()));
    assert!(m.contains("only variational"), "{m}");
}

#[test]
fn re_upserting_the_same_dataset_replaces_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &space()).expect("create store");
    let first = embedding("cifar-like", perturbed(0, 0.3, 1));
    let mut second = embedding("cifar-like", perturbed(0, 0.3, 2));
    second.meta.settings.seed = 7;
    assert_ne!(first.hessian, second.hessian);

    let id1 = store
        .upsert_task(&first, &Tags::new())
        .expect("first upsert");
    let id1_again = store
        .upsert_task(&first, &Tags::new())
        .expect("same upsert");
    let id2 = store
        .upsert_task(&second, &tags(&[("run", "2")]))
        .expect("second upsert");
    assert_eq!(id1, id1_again);
    assert_eq!(id1, id2, "same dataset, probe and estimator: same point");
    assert_eq!(store.count_tasks().expect("count"), 1);
    let back = store.get_task(id1).expect("get").expect("stored");
    assert_eq!(back.embedding, second, "the last write wins");
    assert_eq!(back.tags, tags(&[("run", "2")]));
}

#[test]
fn a_changed_dataset_at_the_same_path_replaces_its_point() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &space()).expect("create store");
    let before = embedding("photos", perturbed(2, 0.2, 1));
    let mut after = embedding("photos", perturbed(2, 0.2, 2));
    after.meta.dataset.fingerprint = common::fingerprint("photos, two files added");
    let id = store.upsert_task(&before, &Tags::new()).expect("upsert");
    assert_eq!(
        store.upsert_task(&after, &Tags::new()).expect("re-upsert"),
        id,
        "same location: same point"
    );
    assert_eq!(store.count_tasks().expect("count"), 1);
    let listed = store.list_tasks().expect("list");
    assert_eq!(listed[0].fingerprint, after.meta.dataset.fingerprint);
    assert_eq!(
        store.get_task(id).expect("get").expect("stored").embedding,
        after
    );
    assert_eq!(
        store
            .find_task_by_uri("/data/photos")
            .expect("find")
            .map(|t| t.id),
        Some(id)
    );
    assert!(store
        .find_task_by_uri("/data/photo")
        .expect("find")
        .is_none());

    // The same content at another location is another task.
    let mut copy = after.clone();
    copy.meta.dataset.path = "/mnt/backup/photos".into();
    let other = store.upsert_task(&copy, &Tags::new()).expect("upsert copy");
    assert_ne!(other, id);
    assert_eq!(store.count_tasks().expect("count"), 2);
}

#[test]
fn tag_keys_with_equals_signs_and_bad_metrics_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &space()).expect("create store");
    let m = mismatch_message(store.upsert_task(&fixture_embedding(0), &tags(&[("a=b", "c")])));
    assert!(m.contains("a=b"), "{m}");
    let expert = Expert {
        key: "nan-metric".into(),
        metrics: BTreeMap::from([("top1".to_string(), f64::NAN)]),
        ..Expert::default()
    };
    let m = mismatch_message(store.upsert_expert(&expert, &fixture_embedding(0)));
    assert!(m.contains("top1"), "{m}");
    assert_eq!(store.count_tasks().expect("count"), 0);
    assert_eq!(store.count_experts().expect("count"), 0);
}

#[test]
fn delete_removes_only_that_task() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &space()).expect("create store");
    let ids: Vec<_> = (0..3)
        .map(|i| {
            store
                .upsert_task(&fixture_embedding(i), &Tags::new())
                .expect("upsert")
        })
        .collect();
    assert_eq!(store.count_tasks().expect("count"), 3);

    assert!(store.delete_task(ids[1]).expect("delete"));
    assert!(
        !store.delete_task(ids[1]).expect("delete again"),
        "already gone"
    );
    assert_eq!(store.count_tasks().expect("count"), 2);
    assert!(store.get_task(ids[1]).expect("get").is_none());
    assert!(store.get_task(ids[0]).expect("get").is_some());
    let mut listed: Vec<_> = store
        .list_tasks()
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    listed.sort();
    let mut expected = vec![ids[0], ids[2]];
    expected.sort();
    assert_eq!(listed, expected);
    store.close();
    // The raw vectors went with it: the companion collection holds the other two.
    let raw = qdrant_edge::EdgeShard::load(&dir.path().join("tasks_raw"), None).expect("shard");
    let count = raw
        .count(qdrant_edge::CountRequest {
            filter: None,
            exact: true,
        })
        .expect("count");
    assert_eq!(count, 2);
}

#[test]
fn store_persists_across_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tasks: Vec<_> = (0..4).map(fixture_embedding).collect();
    let expert = Expert {
        key: "resnet-mnist".into(),
        name: "ResNet-18 fine-tuned on MNIST 0-4".into(),
        weights_uri: "s3://zoo/resnet-mnist.safetensors".into(),
        tags: tags(&[("arch", "resnet18")]),
        metrics: BTreeMap::from([("top1".to_string(), 0.991)]),
    };
    let (task_ids, expert_id) = {
        let store = Store::open(dir.path(), &space()).expect("create store");
        let ids: Vec<_> = tasks
            .iter()
            .map(|e| store.upsert_task(e, &Tags::new()).expect("upsert"))
            .collect();
        let eid = store.upsert_expert(&expert, &tasks[0]).expect("expert");
        store.delete_task(ids[3]).expect("delete");
        store.close();
        (ids, eid)
    };
    // Reopened without naming the space: the manifest has it.
    {
        let store = Store::open_existing(dir.path()).expect("reopen");
        assert_eq!(store.space(), &space());
        assert_eq!(store.transform(), IndexTransform::default());
        assert_eq!(store.count_tasks().expect("count"), 3);
        for (id, e) in task_ids.iter().zip(&tasks).take(3) {
            let back = store.get_task(*id).expect("get").expect("persisted");
            assert_eq!(&back.embedding, e);
        }
        assert!(
            store.get_task(task_ids[3]).expect("get").is_none(),
            "delete persisted"
        );
        let back = store.get_expert(expert_id).expect("get").expect("expert");
        assert_eq!(back.expert, expert);
        // Dropped without close: drop flushes too.
        store
            .upsert_task(&tasks[3], &Tags::new())
            .expect("upsert again");
    }
    let store = Store::open(dir.path(), &space()).expect("reopen with space");
    assert_eq!(store.count_tasks().expect("count"), 4);
    assert_eq!(store.count_experts().expect("count"), 1);
}

#[test]
fn experts_round_trip_and_delete() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &space()).expect("create store");
    let trained_on = fixture_embedding(3);
    let expert = Expert {
        key: "effnet-footwear".into(),
        name: "EfficientNet-Lite0 on footwear".into(),
        weights_uri: "file:///zoo/footwear.pth".into(),
        tags: Tags::new(),
        metrics: BTreeMap::new(),
    };
    let id = store.upsert_expert(&expert, &trained_on).expect("upsert");
    assert_eq!(
        id,
        expert_point_id(
            "effnet-footwear",
            common::WEIGHTS_SHA256,
            Estimator::MonteCarlo
        )
    );
    assert_eq!(store.expert_id("effnet-footwear"), id);
    assert_eq!(
        store.upsert_expert(&expert, &trained_on).expect("again"),
        id
    );
    assert_eq!(store.count_experts().expect("count"), 1);

    let back = store.get_expert(id).expect("get").expect("stored");
    assert_eq!(back.expert, expert);
    assert_eq!(back.trained_on, trained_on);
    assert_eq!(
        back.trained_on_task,
        task_point_id(
            &trained_on.meta.dataset.path,
            common::WEIGHTS_SHA256,
            Estimator::MonteCarlo
        )
    );
    assert_eq!(
        store.list_experts().expect("list"),
        vec![(id, expert.clone())]
    );
    assert_eq!(
        store.count_tasks().expect("count"),
        0,
        "experts are not tasks"
    );

    let nameless = Expert {
        key: " ".into(),
        ..expert
    };
    mismatch_message(store.upsert_expert(&nameless, &trained_on));
    assert!(store.delete_expert(id).expect("delete"));
    assert_eq!(store.count_experts().expect("count"), 0);
}

#[test]
fn vectors_that_do_not_belong_to_the_store_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &space()).expect("create store");

    let mut other_weights = fixture_embedding(0);
    other_weights.meta.probe.weights_sha256 = "0".repeat(64);
    let m = mismatch_message(store.upsert_task(&other_weights, &Tags::new()));
    assert!(m.contains("probe weights"), "{m}");

    let mut other_estimator = fixture_embedding(0);
    other_estimator.meta.settings.fisher.estimator = Estimator::PerExample;
    let m = mismatch_message(store.upsert_task(&other_estimator, &Tags::new()));
    assert!(m.contains("estimator (monte-carlo vs per-example)"), "{m}");

    let mut other_probe = fixture_embedding(0);
    other_probe.meta.probe.arch = "resnet18".into();
    let m = mismatch_message(store.upsert_task(&other_probe, &Tags::new()));
    assert!(m.contains("probe (efficientnet-lite0 vs resnet18)"), "{m}");

    // Fewer layers (as with skip_stages): shorter vector, shorter layout.
    let mut shorter = fixture_embedding(0);
    let keep = shorter.meta.layout.len() - 1;
    let cut = shorter.meta.layout[keep].offset;
    shorter.meta.layout.truncate(keep);
    shorter.hessian.truncate(cut);
    shorter.scale.truncate(cut);
    let m = mismatch_message(store.upsert_task(&shorter, &Tags::new()));
    assert!(m.contains(&format!("dimension (42016 vs {cut})")), "{m}");

    let mut nan = fixture_embedding(0);
    nan.hessian[17] = f32::NAN;
    let m = mismatch_message(store.upsert_task(&nan, &Tags::new()));
    assert!(m.contains("hessian[17]"), "{m}");

    let mut trivial = fixture_embedding(4);
    trivial.meta.settings.random_labels = true;
    let m = mismatch_message(store.upsert_task(&trivial, &Tags::new()));
    assert!(m.contains("random labels"), "{m}");

    let expert = Expert {
        key: "x".into(),
        ..Expert::default()
    };
    mismatch_message(store.upsert_expert(&expert, &other_estimator));

    assert_eq!(
        store.count_tasks().expect("count"),
        0,
        "nothing was written"
    );
    assert_eq!(store.count_experts().expect("count"), 0);
}

#[test]
fn reopening_for_another_space_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    Store::open(dir.path(), &space()).expect("create").close();
    let mut other = space();
    other.estimator = Estimator::Variational;
    other.montecarlo_batch_size = None;
    let m = mismatch_message(Store::open(dir.path(), &other).map(|_| ()));
    assert!(m.contains("estimator"), "{m}");
    Store::open(dir.path(), &space()).expect("the right space still opens");
}

#[test]
fn a_store_open_elsewhere_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &space()).expect("create");
    match Store::open_existing(dir.path()) {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected the lock to refuse, got {:?}", other.map(|_| ())),
    }
    drop(store);
    Store::open_existing(dir.path()).expect("free after close");
    match Store::open_existing(&dir.path().join("nowhere")) {
        Err(Error::Store { what, .. }) => assert!(what.contains("not a store"), "{what}"),
        other => panic!("expected not-a-store, got {:?}", other.map(|_| ())),
    }
}

/// Segments of `collection` with an HNSW graph on `task2vec` (built by an optimisation).
fn indexed_segments(dir: &std::path::Path, collection: &str) -> usize {
    std::fs::read_dir(dir.join(collection).join("segments"))
        .expect("segments folder")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().join("vector_index-task2vec").is_dir())
        })
        .count()
}

#[test]
fn the_store_indexes_by_itself_every_so_many_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &space()).expect("create store");
    // The engine builds a graph only for segments over 10 MB of vectors (smaller ones are
    // searched exactly): 700 index vectors of 33 kB.
    let every = 700;
    store.set_auto_optimize(every);
    let base = fixture_embedding(3);
    let write = |i: usize| {
        let e = embedding(&format!("auto-{i}"), base.hessian.clone());
        store.upsert_task(&e, &Tags::new()).expect("upsert");
    };
    (0..every - 1).for_each(write);
    store.flush();
    assert_eq!(indexed_segments(dir.path(), "tasks"), 0, "not yet");
    write(every - 1);
    assert_eq!(
        indexed_segments(dir.path(), "tasks"),
        1,
        "the 700th write indexed"
    );
    assert_eq!(store.count_tasks().expect("count"), every);
    // Off: nothing happens by itself.
    store.set_auto_optimize(0);
    (every..every + 150).for_each(write);
    assert_eq!(indexed_segments(dir.path(), "tasks"), 1);
    assert_eq!(store.count_tasks().expect("count"), every + 150);
}
