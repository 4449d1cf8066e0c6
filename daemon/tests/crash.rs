//! Crashes and outages: `kill -9` in the middle of an embedding loses and duplicates nothing;
//! a restart on unchanged datasets embeds nothing; a store held by another process is retried
//! while the daemon stays up; the query API answers `select` once an expert is stored.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{
    dataset_files, fingerprint, idle, indexed, mark_ready, metric, write_files, Daemon, TestEnv,
};
use task2vec_daemon::api::Target;
use task2vec_daemon::state::DatasetState;
use task2vec_daemon::{SelectParams, StoreState};
use task2vec_qdrant::Expert;

const WAIT: Duration = Duration::from_secs(120);

/// Settings that make one embedding last a few seconds, so a kill lands inside one.
const SLOW: [(&str, &str); 4] = [
    ("T2V__EMBEDDING__IMAGE_SIZE", "64"),
    ("T2V__EMBEDDING__MAX_SAMPLES", "96"),
    ("T2V__EMBEDDING__FISHER__DRAWS", "192"),
    ("T2V__EMBEDDING__SKIP_STAGES", "10"),
];

fn stored(env: &TestEnv) -> BTreeMap<String, Vec<String>> {
    let store = env.open_store();
    let mut by_uri: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in store.list_tasks().expect("list tasks") {
        by_uri.entry(t.dataset_uri).or_default().push(t.fingerprint);
    }
    by_uri
}

#[test]
fn kill_9_restart_unchanged_restart_and_store_outage() {
    let env = TestEnv::new("");
    let names = ["one", "two", "three"];
    let dirs: Vec<_> = names.iter().map(|n| env.root.join(n)).collect();
    for (i, dir) in dirs.iter().enumerate() {
        write_files(dir, &dataset_files(&[3 * i, 3 * i + 1, 3 * i + 2], 32, 0));
        mark_ready(dir);
    }

    // Run 1: killed with -9 while an embedding runs.
    let daemon = Daemon::start_with(&env, &SLOW);
    let s = daemon.wait_for("an embedding under way", WAIT, |s| {
        s.datasets
            .iter()
            .any(|d| d.state == DatasetState::Embedding)
    });
    let killed_in = s
        .datasets
        .iter()
        .find(|d| d.state == DatasetState::Embedding)
        .map(|d| d.path.clone())
        .expect("a dataset being embedded");
    std::thread::sleep(Duration::from_millis(300));
    daemon.kill9();

    // Between runs: whatever was stored is whole, one point per dataset.
    let before = if env.store_dir().join("store.json").is_file() {
        stored(&env)
    } else {
        BTreeMap::new()
    };
    assert!(
        !before.contains_key(&killed_in),
        "{killed_in} was stored although it was killed mid-embedding"
    );
    for (uri, fps) in &before {
        assert_eq!(fps.len(), 1, "{uri} stored {} times", fps.len());
    }

    // Run 2: everything present ends up stored exactly once, and only what was missing is
    // embedded.
    let daemon = Daemon::start_with(&env, &SLOW);
    let s = daemon.wait_for("all indexed after the restart", WAIT, |s| {
        dirs.iter().all(|d| indexed(s, d)) && idle(s)
    });
    assert_eq!(
        s.embeddings_done as usize,
        dirs.len() - before.len(),
        "{s:?}"
    );
    let metrics = daemon.client.metrics().unwrap();
    assert_eq!(
        metric(&metrics, "t2v_daemon_embeddings_done_total") as usize,
        dirs.len() - before.len()
    );
    assert!(daemon.terminate().success());
    let after = stored(&env);
    let expected: BTreeMap<String, Vec<String>> = dirs
        .iter()
        .map(|d| (d.to_string_lossy().into_owned(), vec![fingerprint(d)]))
        .collect();
    assert_eq!(
        after, expected,
        "exactly one point per dataset, with its content"
    );

    // An expert trained on `one`, for the select query.
    {
        let store = env.open_store();
        let one = store
            .list_tasks()
            .unwrap()
            .into_iter()
            .find(|t| t.dataset_uri == dirs[0].to_string_lossy())
            .expect("one stored");
        let task = store.get_task(one.id).unwrap().expect("one's vector");
        let expert = Expert {
            key: "fashion-0-2".into(),
            name: "classifier of classes 0-2".into(),
            weights_uri: "file:///models/fashion-0-2.safetensors".into(),
            ..Expert::default()
        };
        store.upsert_expert(&expert, &task.embedding).unwrap();
    }

    // Run 3, without the state file: nothing changed, so nothing is embedded (the fingerprints
    // equal the stored ones); select works through the daemon.
    std::fs::remove_file(env.data.join("daemon-state.json")).expect("state file written");
    let daemon = Daemon::start_with(&env, &SLOW);
    let s = daemon.wait_for("all indexed, unchanged", WAIT, |s| {
        dirs.iter().all(|d| indexed(s, d)) && idle(s)
    });
    assert_eq!(
        s.embeddings_done, 0,
        "unchanged datasets were embedded again"
    );
    let ranked = daemon
        .client
        .select(
            &Target::Dataset(dirs[0].clone()),
            &SelectParams {
                alpha: Some(0.0),
                ..Default::default()
            },
        )
        .expect("select through the daemon");
    assert_eq!(ranked.target.source, "stored");
    assert_eq!(ranked.results.len(), 1);
    assert_eq!(ranked.results[0].key, "fashion-0-2");
    assert!(ranked.results[0].d_sym.abs() < 1e-6, "{ranked:?}");
    assert!(daemon.terminate().success());

    // Run 4: another process holds the store; the daemon stays up, reports it, retries, and
    // indexes the new dataset once the store is free.
    let holder = env.open_store();
    let daemon = Daemon::start_with(&env, &SLOW);
    let four = env.root.join("four");
    write_files(&four, &dataset_files(&[0, 5, 9], 32, 40));
    mark_ready(&four);
    daemon.wait_for("the store reported unavailable", WAIT, |s| {
        matches!(s.store.state, StoreState::Unavailable { .. })
    });
    std::thread::sleep(Duration::from_millis(1500));
    let health = daemon
        .client
        .health()
        .expect("healthz while the store is down");
    assert!(
        matches!(health.store, StoreState::Unavailable { .. }),
        "{health:?}"
    );
    let metrics = daemon.client.metrics().unwrap();
    assert_eq!(metric(&metrics, "t2v_daemon_store_up"), 0.0);
    assert!(metric(&metrics, "t2v_daemon_store_errors_total") >= 1.0);
    drop(holder);
    let s = daemon.wait_for("indexed once the store is back", WAIT, |s| {
        indexed(s, &four) && idle(s) && s.store.state == StoreState::Open
    });
    assert_eq!(s.embeddings_done, 1, "only the new dataset is embedded");
    assert!(daemon.terminate().success());
    let uris: BTreeSet<String> = stored(&env).into_keys().collect();
    assert_eq!(uris.len(), 4);
    assert!(uris.contains(four.to_string_lossy().as_ref()));
}
