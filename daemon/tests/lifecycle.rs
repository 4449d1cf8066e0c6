//! One daemon's life on real datasets: a slow copy is not embedded half-copied, marked
//! datasets are taken at once, every dataset becomes searchable through the HTTP API, a
//! changed dataset is re-embedded onto the same point, a deleted one leaves the store, a
//! corrupt one is parked (and retried once fixed) while the daemon stays up, SIGTERM stops it
//! cleanly and the store reopens with exactly what is on disk, and with the trivial embedding
//! the first dataset gave it.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use common::{
    copy_slowly, dataset, dataset_files, fingerprint, idle, indexed, mark_ready, metric,
    write_files, Daemon, TestEnv,
};
use task2vec_daemon::api::Target;
use task2vec_daemon::state::DatasetState;
use task2vec_daemon::{SelectParams, SimilarParams};

const WAIT: Duration = Duration::from_secs(90);

#[test]
fn datasets_are_indexed_changed_deleted_and_parked() {
    let env = TestEnv::new("");
    let a = env.root.join("alpha");
    let b = env.root.join("beta");
    let c = env.root.join("corrupt");
    let files_a = dataset_files(&[0, 1, 2], 8, 0);
    let files_b = dataset_files(&[7, 8, 9], 8, 0);
    let daemon = Daemon::start(&env);

    // A slow copy, file by file (each file in two halves), the gaps shorter than the quiet
    // period: the daemon must wait for the end.
    let copier = {
        let (a, files) = (a.clone(), files_a.clone());
        std::thread::spawn(move || copy_slowly(&a, &files, Duration::from_millis(120)))
    };
    let mut seen_settling = false;
    while !copier.is_finished() {
        let s = daemon.status();
        if let Some(d) = dataset(&s, &a) {
            assert_eq!(
                d.state,
                DatasetState::Settling,
                "alpha taken while being copied: {d:?}"
            );
            seen_settling = true;
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    copier.join().expect("copier thread");
    assert!(seen_settling, "the daemon never noticed the copy");

    // Beta arrives whole, with its completion marker.
    write_files(&b, &files_b);
    mark_ready(&b);

    let s = daemon.wait_for("alpha and beta indexed", WAIT, |s| {
        indexed(s, &a) && indexed(s, &b)
    });
    let da = dataset(&s, &a).expect("alpha known");
    assert_eq!(da.embeddings, 1, "alpha embedded more than once: {da:?}");
    assert_eq!(
        da.fingerprint.as_deref(),
        Some(fingerprint(&a).as_str()),
        "the stored fingerprint is not the complete dataset's"
    );
    let alpha_id = da.task_id.expect("alpha's point id");
    assert_eq!(dataset(&s, &b).map(|d| d.embeddings), Some(1));

    // Searchable: through the daemon, by stored dataset path and by a dataset embedded on
    // the fly.
    let tasks = daemon.client.tasks().expect("GET /api/tasks");
    let uris: BTreeSet<String> = tasks.iter().map(|t| t.dataset_uri.clone()).collect();
    let expected: BTreeSet<String> = [&a, &b]
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(uris, expected);
    let near = daemon
        .client
        .similar(&Target::Dataset(a.clone()), &SimilarParams::default())
        .expect("similar to alpha");
    assert_eq!(near.target.source, "stored");
    assert_eq!(near.target.task_id, Some(alpha_id));
    assert_eq!(near.results.len(), 1, "{near:?}");
    assert_eq!(near.results[0].dataset_uri, b.to_string_lossy());
    assert!(near.results[0].d_sym.is_finite());

    let elsewhere = env.tmp.path().join("elsewhere").join("gamma");
    write_files(&elsewhere, &dataset_files(&[0, 1, 2], 8, 100));
    let near = daemon
        .client
        .similar(
            &Target::Dataset(elsewhere.clone()),
            &SimilarParams::default(),
        )
        .expect("similar to a dataset outside the roots");
    assert_eq!(near.target.source, "embedded");
    assert_eq!(near.results.len(), 2, "{near:?}");
    // Same three classes as alpha (other images): alpha is nearer than beta.
    assert_eq!(near.results[0].dataset_uri, a.to_string_lossy(), "{near:?}");
    let by_id = daemon
        .client
        .similar(&Target::TaskId(alpha_id), &SimilarParams::default())
        .expect("similar by task id");
    assert_eq!(by_id.results.len(), 1);
    let filtered = daemon
        .client
        .similar(
            &Target::TaskId(alpha_id),
            &SimilarParams {
                min_samples: Some(1000),
                ..Default::default()
            },
        )
        .expect("similar with a filter");
    assert!(filtered.results.is_empty(), "{filtered:?}");
    let experts = daemon
        .client
        .select(&Target::Dataset(a.clone()), &SelectParams::default())
        .expect("select for alpha");
    assert!(experts.results.is_empty(), "no expert was stored");
    let bad = daemon
        .client
        .similar(
            &Target::Dataset(env.tmp.path().join("no-such-folder")),
            &SimilarParams::default(),
        )
        .expect_err("a missing dataset");
    assert!(bad.to_string().contains("404"), "{bad}");

    // A corrupt dataset: the daemon stays up and reports it.
    fs::create_dir_all(c.join("x")).unwrap();
    fs::create_dir_all(c.join("y")).unwrap();
    fs::write(c.join("x/1.png"), b"not a png at all").unwrap();
    fs::write(c.join("y/1.png"), b"\x89PNG\r\n\x1a\ntruncated").unwrap();
    mark_ready(&c);
    let s = daemon.wait_for("corrupt parked", WAIT, |s| {
        dataset(s, &c).is_some_and(|d| d.state == DatasetState::Parked)
    });
    let error = dataset(&s, &c)
        .and_then(|d| d.last_error.clone())
        .expect("parked with its error");
    assert!(error.contains("class"), "{error}");
    assert_eq!(
        daemon.client.health().expect("healthz").status,
        "ok",
        "the daemon must stay up"
    );

    // Alpha changes (a fourth class): re-embedded onto the same single point.
    let before = fingerprint(&a);
    write_files(&a, &dataset_files(&[6], 8, 0));
    let s = daemon.wait_for("alpha re-embedded", WAIT, |s| {
        dataset(s, &a).is_some_and(|d| d.state == DatasetState::Indexed && d.embeddings == 2)
    });
    let after = fingerprint(&a);
    assert_ne!(before, after);
    let da = dataset(&s, &a).unwrap();
    assert_eq!(da.fingerprint.as_deref(), Some(after.as_str()));
    assert_eq!(
        da.task_id,
        Some(alpha_id),
        "a changed dataset keeps its point"
    );
    let tasks = daemon.client.tasks().unwrap();
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    let stored_a = tasks
        .iter()
        .find(|t| t.dataset_uri == a.to_string_lossy())
        .expect("alpha stored");
    assert_eq!(stored_a.fingerprint, after);
    assert_eq!(stored_a.n_classes, 4);

    // Beta is deleted: it leaves the store.
    fs::remove_dir_all(&b).unwrap();
    daemon.wait_for("beta forgotten", WAIT, |s| dataset(s, &b).is_none());
    let deadline = std::time::Instant::now() + WAIT;
    while daemon
        .client
        .tasks()
        .unwrap()
        .iter()
        .any(|t| t.dataset_uri == b.to_string_lossy())
    {
        assert!(std::time::Instant::now() < deadline, "beta still stored");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The corrupt dataset is fixed: retried because its files changed.
    fs::remove_dir_all(&c).unwrap();
    write_files(&c, &dataset_files(&[3, 4], 8, 0));
    mark_ready(&c);
    let s = daemon.wait_for("fixed dataset indexed", WAIT, |s| indexed(s, &c) && idle(s));
    assert_eq!(dataset(&s, &c).unwrap().last_error, None);

    let metrics = daemon.client.metrics().expect("GET /metrics");
    assert!(metric(&metrics, "t2v_daemon_embeddings_done_total") >= 4.0);
    assert!(metric(&metrics, "t2v_daemon_embeddings_failed_total") >= 1.0);
    assert!(metric(&metrics, "t2v_daemon_images_total") > 0.0);
    assert!(metric(&metrics, "t2v_daemon_embedding_seconds_count") >= 4.0);
    assert_eq!(metric(&metrics, "t2v_daemon_queue_depth"), 0.0);

    // SIGTERM: exit 0, and the store reopens with exactly alpha and the fixed dataset.
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");
    let store = env.open_store();
    let tasks = store.list_tasks().expect("list tasks");
    let stored: BTreeSet<(String, String)> = tasks
        .iter()
        .map(|t| (t.dataset_uri.clone(), t.fingerprint.clone()))
        .collect();
    let on_disk: BTreeSet<(String, String)> = [&a, &c]
        .iter()
        .map(|p| (p.to_string_lossy().into_owned(), fingerprint(p)))
        .collect();
    assert_eq!(stored, on_disk);
    // The first dataset indexed gave the store its trivial embedding (its images, random
    // labels).
    let t0 = store.trivial_embedding().expect("read t0").expect("t0 set");
    assert!(t0.meta.settings.random_labels);
    let first = [&a, &b].map(|p| p.to_string_lossy().into_owned());
    assert!(
        first.contains(&t0.meta.dataset.path),
        "{}",
        t0.meta.dataset.path
    );
}
