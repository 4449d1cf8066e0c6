//! The store on a real Qdrant server (gRPC), when `QDRANT_URL` is set (e.g.
//! `http://127.0.0.1:6334`); otherwise each test prints "skipped: QDRANT_URL not set". Each
//! test works under a collection prefix of its own and drops its collections at the end.
//!
//! The unreachable-server tests need no server and always run.

mod common;
#[path = "common/remote.rs"]
mod remote;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{embedding, fixture_embedding, perturbed, trivial_embedding};
use remote::{server_url, RemoteStore};
use task2vec::fisher::Estimator;
use task2vec_qdrant::{
    task_point_id, Error, Expert, FormulaOptions, RemoteConfig, SelectOptions, SimilarOptions,
    Store, StoreConfig, Tags, TaskFilter, VectorSpace,
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

fn expert(key: &str) -> Expert {
    Expert {
        key: key.into(),
        name: format!("model {key}"),
        weights_uri: format!("s3://zoo/{key}"),
        tags: tags(&[("arch", "resnet18")]),
        metrics: BTreeMap::from([("top1".to_string(), 0.93)]),
    }
}

#[test]
fn remote_round_trip_reupsert_delete_and_reopen() {
    let Some(url) = server_url() else { return };
    let r = RemoteStore::new(&url, "roundtrip");
    let config = r.store_config();
    assert!(!Store::exists_config(&config).expect("exists"));
    let store = Store::open_config(&config, &space()).expect("create remote store");
    assert!(store.dir().is_none());
    assert!(Store::exists_config(&config).expect("exists"));

    check_collection_settings(&r);

    let e = fixture_embedding(2);
    let id = store
        .upsert_task(&e, &tags(&[("owner", "vision")]))
        .expect("upsert");
    assert_eq!(
        id,
        task_point_id(
            "/data/fashion_tops",
            common::WEIGHTS_SHA256,
            Estimator::MonteCarlo
        )
    );
    let back = store.get_task(id).expect("get").expect("stored");
    assert_eq!(back.embedding, e, "every f32 and every metadata field");
    assert_eq!(back.tags, tags(&[("owner", "vision")]));
    assert_eq!(store.count_tasks().expect("count"), 1);
    assert_eq!(
        store
            .find_task_by_uri("/data/fashion_tops")
            .expect("find")
            .map(|t| t.id),
        Some(id)
    );

    // Re-upserting the same location replaces.
    let mut again = embedding("fashion_tops", perturbed(2, 0.2, 5));
    again.meta.dataset.fingerprint = common::fingerprint("changed");
    assert_eq!(store.upsert_task(&again, &Tags::new()).expect("upsert"), id);
    assert_eq!(store.count_tasks().expect("count"), 1);
    assert_eq!(
        store.get_task(id).expect("get").expect("stored").embedding,
        again
    );

    // Two more datasets (fixture 2 is `fashion_tops` again: the same point).
    let ids: Vec<_> = (0..3)
        .map(|i| {
            store
                .upsert_task(&fixture_embedding(i), &Tags::new())
                .expect("upsert")
        })
        .collect();
    assert_eq!(ids[2], id);
    assert_eq!(store.count_tasks().expect("count"), 3);
    assert!(store.delete_task(ids[1]).expect("delete"));
    assert!(!store.delete_task(ids[1]).expect("delete again"));
    assert_eq!(store.count_tasks().expect("count"), 2);
    assert_eq!(store.list_tasks().expect("list").len(), 2);

    let eid = store
        .upsert_expert(&expert("resnet-mnist"), &fixture_embedding(0))
        .expect("expert");
    assert_eq!(store.expert_id("resnet-mnist"), eid);
    let back = store.get_expert(eid).expect("get").expect("expert");
    assert_eq!(back.expert, expert("resnet-mnist"));
    assert_eq!(back.trained_on, fixture_embedding(0));
    store.set_trivial(&trivial_embedding()).expect("trivial");

    // A second client finds the same store.
    let second = Store::open_existing_config(&config).expect("second client");
    assert_eq!(second.space(), &space());
    assert_eq!(second.count_tasks().expect("count"), 2);
    assert_eq!(second.list_experts().expect("list").len(), 1);
    assert_eq!(second.trivial(), Some(trivial_embedding().hessian));
    assert_eq!(
        second.trivial_embedding().expect("t0"),
        store.trivial_embedding().expect("t0")
    );
    assert_eq!(
        second.get_task(id).expect("get").expect("stored").embedding,
        fixture_embedding(2)
    );

    // Another space on the same prefix is refused.
    let mut other = space();
    other.estimator = Estimator::PerExample;
    other.montecarlo_batch_size = None;
    match Store::open_config(&config, &other) {
        Err(Error::Mismatch(m)) => assert!(m.contains("estimator"), "{m}"),
        other => panic!("expected a mismatch, got {:?}", other.map(|_| ())),
    }
}

/// The collections have the settings of docs/schema.md: index vectors cosine, on disk, int8
/// scalar quantization in RAM; raw vectors dot, on disk, no graph; the payload indexes.
// Client 1.19 deprecates `on_disk`/`always_ram` for its new `memory` placement, which a 1.18
// server does not know: these are the fields the server fills.
#[allow(deprecated)]
fn check_collection_settings(r: &RemoteStore) {
    use qdrant_client::qdrant::{vectors_config, Distance};
    for (collection, index_vectors, indexed_fields) in [
        (
            "tasks",
            &["task2vec"][..],
            &["dataset_uri", "samples", "n_classes", "tag_pairs", "t0"][..],
        ),
        (
            "experts",
            &["model2vec"][..],
            &["key", "tag_pairs", "t0"][..],
        ),
    ] {
        let info = r.info(collection);
        let params = info
            .config
            .as_ref()
            .and_then(|c| c.params.as_ref())
            .expect("params");
        assert!(params.on_disk_payload);
        let Some(vectors_config::Config::ParamsMap(map)) = params
            .vectors_config
            .as_ref()
            .and_then(|v| v.config.as_ref())
        else {
            panic!("{collection}: named vectors expected");
        };
        for name in index_vectors {
            // The short index vector (98 modules + an 8,192-bucket sketch), f32 in RAM.
            let v = &map.map[*name];
            assert_eq!((v.size, v.distance), (8290, Distance::Cosine as i32));
            assert_eq!(v.on_disk, Some(false), "{collection}.{name}");
            assert!(v.quantization_config.is_none(), "{collection}.{name}");
        }
        if collection == "experts" {
            // Version 2: no `task2vec` copy of `model2vec`.
            assert!(!map.map.contains_key("task2vec"), "{collection}");
        } else {
            assert!(!map.map.contains_key("model2vec"), "{collection}");
        }
        // Raw vectors in the companion collection: on disk, no graph; `scale` only in
        // variational stores.
        assert!(!map.map.contains_key("hessian"), "{collection}");
        let raw = format!("{collection}_raw");
        let raw_info = r.info(&raw);
        let Some(vectors_config::Config::ParamsMap(raw_map)) = raw_info
            .config
            .as_ref()
            .and_then(|c| c.params.as_ref())
            .and_then(|p| p.vectors_config.as_ref())
            .and_then(|v| v.config.as_ref())
        else {
            panic!("{raw}: named vectors expected");
        };
        let v = &raw_map.map["hessian"];
        assert_eq!((v.size, v.distance), (42016, Distance::Dot as i32));
        assert_eq!(v.on_disk, Some(true));
        assert_eq!(v.hnsw_config.as_ref().and_then(|h| h.m), Some(0));
        assert!(!raw_map.map.contains_key("scale"), "{raw}");
        for field in indexed_fields {
            assert!(
                info.payload_schema.contains_key(*field),
                "{collection}: no payload index on `{field}`"
            );
        }
    }
}

#[test]
fn remote_seeds_and_scales_round_trip() {
    let Some(url) = server_url() else { return };
    let r = RemoteStore::new(&url, "scales");
    let mut e = fixture_embedding(1);
    e.meta.settings.fisher.estimator = Estimator::Variational;
    e.meta.settings.seed = u64::MAX - 3;
    for (k, entry) in e.meta.layout.iter().enumerate() {
        let s = 0.5 + k as f32 * 0.01;
        e.scale[entry.offset..entry.offset + entry.n_filters].fill(s);
    }
    let store = Store::open_config(&r.store_config(), &VectorSpace::of(&e)).expect("store");
    let id = store.upsert_task(&e, &Tags::new()).expect("upsert");
    assert_eq!(
        store.get_task(id).expect("get").expect("stored").embedding,
        e
    );
}

#[test]
fn remote_refuses_vectors_of_another_space() {
    let Some(url) = server_url() else { return };
    let r = RemoteStore::new(&url, "refuse");
    let store = Store::open_config(&r.store_config(), &space()).expect("store");
    let mut other_weights = fixture_embedding(0);
    other_weights.meta.probe.weights_sha256 = "0".repeat(64);
    assert!(matches!(
        store.upsert_task(&other_weights, &Tags::new()),
        Err(Error::Mismatch(_))
    ));
    let mut nan = fixture_embedding(0);
    nan.hessian[17] = f32::NAN;
    assert!(matches!(
        store.upsert_task(&nan, &Tags::new()),
        Err(Error::Mismatch(_))
    ));
    assert!(matches!(
        store.upsert_expert(&expert("x"), &other_weights),
        Err(Error::Mismatch(_))
    ));
    assert_eq!(store.count_tasks().expect("count"), 0);
    assert_eq!(store.count_experts().expect("count"), 0);
}

#[test]
fn remote_queries_match_the_embedded_engine() {
    let Some(url) = server_url() else { return };
    let r = RemoteStore::new(&url, "queries");
    let dir = tempfile::tempdir().expect("temp dir");
    let remote = Store::open_config(&r.store_config(), &space()).expect("remote");
    let local = Store::open(dir.path(), &space()).expect("embedded");
    for store in [&remote, &local] {
        for i in 0..4 {
            store
                .upsert_expert(&expert(common::TASKS[i]), &fixture_embedding(i))
                .expect("expert");
            let decoy = embedding(&format!("decoy{i}"), perturbed(i, 0.25, 50 + i as u64));
            store
                .upsert_expert(&expert(&format!("decoy{i}")), &decoy)
                .expect("decoy");
        }
        for k in 0..12 {
            let mut e = embedding(&format!("task{k}"), perturbed(k % 4, 0.2, k as u64));
            e.meta.samples.features = 100 * (k + 1);
            let owner = if k % 2 == 0 { "vision" } else { "speech" };
            store
                .upsert_task(&e, &tags(&[("owner", owner)]))
                .expect("task");
        }
        store.set_trivial(&trivial_embedding()).expect("trivial");
    }
    let options = SelectOptions {
        alpha: 0.15,
        prefetch: 8,
        limit: 8,
    };
    let formula = FormulaOptions {
        alpha: 0.15,
        prefetch: 8,
        limit: 8,
        ..FormulaOptions::default()
    };
    for i in 0..4 {
        let target = embedding("new-data", perturbed(i, 0.1, 7 + i as u64));
        let a = remote
            .select_experts(&target, &options)
            .expect("remote select");
        let b = local
            .select_experts(&target, &options)
            .expect("local select");
        assert_eq!(a.len(), 8);
        assert_eq!(a[0].key, common::TASKS[i], "{a:#?}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.id, x.d_sym, x.complexity), (y.id, y.d_sym, y.complexity));
            assert!((x.cosine - y.cosine).abs() < 1e-4);
        }
        let fa = remote
            .rank_experts_by_formula(&target, &formula)
            .expect("remote formula");
        let fb = local
            .rank_experts_by_formula(&target, &formula)
            .expect("local formula");
        assert_eq!(
            fa.iter().map(|h| h.id).collect::<Vec<_>>(),
            fb.iter().map(|h| h.id).collect::<Vec<_>>()
        );
        for (x, y) in fa.iter().zip(&fb) {
            assert!(
                (x.score - y.score).abs() < 1e-4,
                "{} vs {}",
                x.score,
                y.score
            );
        }
        let similar = SimilarOptions {
            limit: 5,
            prefetch: 12,
            filter: TaskFilter {
                min_samples: Some(300),
                tags: tags(&[("owner", "vision")]),
                ..TaskFilter::default()
            },
        };
        let sa = remote
            .similar_tasks(&target, &similar)
            .expect("remote similar");
        let sb = local
            .similar_tasks(&target, &similar)
            .expect("local similar");
        assert!(!sa.is_empty());
        assert_eq!(
            sa.iter().map(|s| (s.id, s.d_sym)).collect::<Vec<_>>(),
            sb.iter().map(|s| (s.id, s.d_sym)).collect::<Vec<_>>()
        );
        assert!(sa
            .iter()
            .all(|s| s.samples >= 300 && s.tags["owner"] == "vision"));
    }
    let some_task = remote.list_tasks().expect("list")[0].id;
    let a = remote
        .similar_to_task(some_task, &SimilarOptions::default())
        .expect("similar to task");
    assert!(a.iter().all(|s| s.id != some_task));
    assert_eq!(a.len(), 10);
    let ranked = remote
        .select_experts_for_task(some_task, &options)
        .expect("select for task");
    assert_eq!(ranked.len(), 8);
}

#[test]
fn remote_migration_round_trips_through_a_dump() {
    let Some(url) = server_url() else { return };
    let r = RemoteStore::new(&url, "migrate");
    let root = tempfile::tempdir().expect("temp dir");
    let source = Store::open(&root.path().join("a"), &space()).expect("embedded");
    for k in 0..5 {
        let e = embedding(&format!("task{k}"), perturbed(k % 4, 0.2, k as u64));
        source
            .upsert_task(&e, &tags(&[("k", &k.to_string())]))
            .expect("task");
    }
    for i in 0..3 {
        source
            .upsert_expert(&expert(&format!("e{i}")), &fixture_embedding(i))
            .expect("expert");
    }
    source.set_trivial(&trivial_embedding()).expect("trivial");
    let dump_a = root.path().join("dump-a");
    let summary = source.export_dump(&dump_a).expect("export");

    // Embedded → server.
    let imported = Store::import_dump_into(&r.store_config(), &dump_a).expect("import");
    assert_eq!(imported, summary);
    let remote = Store::open_existing_config(&r.store_config()).expect("remote");
    assert_eq!(remote.trivial(), source.trivial());
    for t in source.list_tasks().expect("list") {
        assert_eq!(
            remote.get_task(t.id).expect("get"),
            source.get_task(t.id).expect("get")
        );
    }
    assert_eq!(
        remote.list_experts().expect("list"),
        source.list_experts().expect("list")
    );

    // Server → embedded again: identical points.
    let dump_b = root.path().join("dump-b");
    assert_eq!(remote.export_dump(&dump_b).expect("export remote"), summary);
    let back = root.path().join("b");
    Store::import_dump_into(&StoreConfig::Embedded { path: back.clone() }, &dump_b)
        .expect("import back");
    let target = Store::open_existing(&back).expect("embedded again");
    assert_eq!(
        target.list_tasks().expect("list"),
        source.list_tasks().expect("list")
    );
    for t in source.list_tasks().expect("list") {
        assert_eq!(
            target.get_task(t.id).expect("get"),
            source.get_task(t.id).expect("get")
        );
    }
    for (id, _) in source.list_experts().expect("list") {
        assert_eq!(
            target.get_expert(id).expect("get"),
            source.get_expert(id).expect("get")
        );
    }

    // A dump of another space is refused by the server store too.
    let mut other = space();
    other.weights_sha256 = "f".repeat(64);
    let other_dir = root.path().join("other");
    let o = Store::open(&other_dir, &other).expect("other space");
    let dump_o = root.path().join("dump-o");
    o.export_dump(&dump_o).expect("export other");
    match remote.import_dump(&dump_o) {
        Err(Error::Mismatch(m)) => assert!(m.contains("probe weights"), "{m}"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[test]
fn remote_store_works_from_spawn_blocking_and_drops_anywhere() {
    let Some(url) = server_url() else { return };
    let r = RemoteStore::new(&url, "blocking");
    let config = r.store_config();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let count = runtime.block_on(async move {
        let store = tokio::task::spawn_blocking(move || {
            let store = Store::open_config(&config, &space()).expect("open");
            store
                .upsert_task(&fixture_embedding(0), &Tags::new())
                .expect("upsert");
            store
        })
        .await
        .expect("join");
        let store = std::sync::Arc::new(store);
        let s = std::sync::Arc::clone(&store);
        let n = tokio::task::spawn_blocking(move || s.count_tasks().expect("count"))
            .await
            .expect("join");
        // Dropped on an async worker thread: must neither block nor panic.
        drop(store);
        n
    });
    assert_eq!(count, 1);
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Nothing listens on port 1 of the loopback address: the connection is refused.
    let config = StoreConfig::Remote(RemoteConfig {
        timeout_secs: 2.0,
        connect_timeout_secs: 2.0,
        ..RemoteConfig::new("http://127.0.0.1:1")
    });
    let start = Instant::now();
    match Store::open_config(&config, &space()) {
        Err(Error::Remote { url, operation, .. }) => {
            assert_eq!(url, "http://127.0.0.1:1");
            assert_eq!(operation, "health check");
        }
        other => panic!("expected a remote error, got {:?}", other.map(|_| ())),
    }
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(
        Store::exists_config(&config),
        Err(Error::Remote { .. })
    ));
    let message = Store::open_existing_config(&config)
        .map(|_| ())
        .expect_err("unreachable")
        .to_string();
    assert!(message.contains("http://127.0.0.1:1"), "{message}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    // A socket that accepts connections (the kernel completes the handshake) but never
    // answers: only the request timeout can end the wait.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let config = StoreConfig::Remote(RemoteConfig {
        timeout_secs: 1.0,
        connect_timeout_secs: 1.0,
        ..RemoteConfig::new(format!("http://127.0.0.1:{port}"))
    });
    let start = Instant::now();
    match Store::open_config(&config, &space()) {
        Err(Error::Remote { url, .. }) => assert!(url.ends_with(&port.to_string())),
        other => panic!("expected a remote error, got {:?}", other.map(|_| ())),
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    drop(listener);
}

#[test]
fn bad_remote_settings_are_refused_before_connecting() {
    let config = StoreConfig::Remote(RemoteConfig::new("127.0.0.1:6334"));
    match Store::open_config(&config, &space()) {
        Err(Error::Store { what, .. }) => assert!(what.contains("http://"), "{what}"),
        other => panic!("expected a store error, got {:?}", other.map(|_| ())),
    }
}
