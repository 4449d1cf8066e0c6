//! `similar` against the real embedded Qdrant engine: the exact `d_sym` re-rank after the cosine
//! prefetch, checked against a brute-force ranking of every stored task, with and without
//! payload filters (samples, classes, tags), and the lookup of a task by its location.

mod common;

use common::{embedding, fixture_embedding, perturbed};
use task2vec::distance::d_sym;
use task2vec::embedding::Embedding;
use task2vec_qdrant::{Error, SimilarOptions, Store, Tags, TaskFilter, VectorSpace};
use uuid::Uuid;

/// Which stored tasks a filter should let through.
type Keep = Box<dyn Fn(&Stored) -> bool>;

struct Stored {
    id: Uuid,
    embedding: Embedding,
    tags: Tags,
}

fn owner(o: &str) -> Tags {
    Tags::from([("owner".to_string(), o.to_string())])
}

/// Twenty tasks around the four real ones, with varied sample counts, classes and owners.
fn fill(store: &Store) -> Vec<Stored> {
    let mut out = Vec::new();
    for k in 0..20 {
        let base = k % 4;
        let mut e = embedding(
            &format!("task{k}"),
            perturbed(base, 0.15 + 0.02 * k as f64, k as u64),
        );
        e.meta.samples.features = 100 * (k + 1);
        e.meta.dataset.classes = (0..2 + k % 5).map(|c| format!("c{c}")).collect();
        let tags = owner(if k % 3 == 0 { "vision" } else { "speech" });
        let id = store.upsert_task(&e, &tags).expect("upsert");
        out.push(Stored {
            id,
            embedding: e,
            tags,
        });
    }
    out
}

/// The ids of the stored tasks passing `keep`, nearest `target` first by exact d_sym.
fn brute_force(stored: &[Stored], target: &Embedding, keep: impl Fn(&Stored) -> bool) -> Vec<Uuid> {
    let mut d: Vec<(f64, Uuid)> = stored
        .iter()
        .filter(|s| keep(s))
        .map(|s| {
            (
                d_sym(&s.embedding.hessian, &target.hessian).expect("d_sym"),
                s.id,
            )
        })
        .collect();
    d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    d.into_iter().map(|(_, id)| id).collect()
}

#[test]
fn similar_matches_a_brute_force_ranking_with_and_without_filters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &VectorSpace::of(&fixture_embedding(0))).expect("store");
    let stored = fill(&store);
    let target = embedding("query", perturbed(1, 0.1, 99));

    // No filter, prefetch of everything: exactly the brute-force order.
    let all = SimilarOptions {
        limit: 20,
        prefetch: 20,
        filter: TaskFilter::default(),
    };
    let got = store.similar_tasks(&target, &all).expect("similar");
    let ids: Vec<Uuid> = got.iter().map(|s| s.id).collect();
    assert_eq!(ids, brute_force(&stored, &target, |_| true));
    for s in &got {
        let e = &stored
            .iter()
            .find(|x| x.id == s.id)
            .expect("stored")
            .embedding;
        // The re-rank sums in lanes (d_sym_fast): the core's d_sym to rounding.
        let exact = d_sym(&e.hessian, &target.hessian).expect("d_sym");
        assert!(
            (s.d_sym - exact).abs() <= 1e-12 * exact,
            "{} vs {exact}",
            s.d_sym
        );
        assert_eq!(s.dataset_uri, e.meta.dataset.path);
        assert_eq!(s.fingerprint, e.meta.dataset.fingerprint);
        assert_eq!(s.samples, e.meta.samples.features);
        assert_eq!(s.n_classes, e.meta.dataset.classes.len());
        assert!(s.cosine > 0.0 && s.cosine <= 1.0 + 1e-6, "{}", s.cosine);
    }
    // The nearest are the perturbations of task 1 (k = 1, 5, 9, ...).
    for s in got.iter().take(5) {
        let k = stored.iter().position(|x| x.id == s.id).expect("stored");
        assert_eq!(k % 4, 1, "the five nearest come from task 1: {got:#?}");
    }

    // A default prefetch and a short limit: the same head.
    let short = store
        .similar_tasks(&target, &SimilarOptions::default())
        .expect("similar");
    assert_eq!(short.len(), 10);
    assert_eq!(
        short.iter().map(|s| s.id).collect::<Vec<_>>(),
        ids[..10].to_vec()
    );

    // Each filter alone and all together.
    let cases: Vec<(TaskFilter, Keep)> = vec![
        (
            TaskFilter {
                min_samples: Some(1000),
                ..TaskFilter::default()
            },
            Box::new(|s: &Stored| s.embedding.meta.samples.features >= 1000),
        ),
        (
            TaskFilter {
                min_classes: Some(5),
                ..TaskFilter::default()
            },
            Box::new(|s: &Stored| s.embedding.meta.dataset.classes.len() >= 5),
        ),
        (
            TaskFilter {
                tags: owner("vision"),
                ..TaskFilter::default()
            },
            Box::new(|s: &Stored| s.tags == owner("vision")),
        ),
        (
            TaskFilter {
                min_samples: Some(500),
                min_classes: Some(3),
                tags: owner("speech"),
            },
            Box::new(|s: &Stored| {
                s.embedding.meta.samples.features >= 500
                    && s.embedding.meta.dataset.classes.len() >= 3
                    && s.tags == owner("speech")
            }),
        ),
    ];
    for (filter, keep) in cases {
        let expected = brute_force(&stored, &target, &keep);
        assert!(!expected.is_empty() && expected.len() < 20, "{filter:?}");
        let got = store
            .similar_tasks(
                &target,
                &SimilarOptions {
                    limit: 20,
                    prefetch: 20,
                    filter: filter.clone(),
                },
            )
            .expect("similar");
        assert_eq!(
            got.iter().map(|s| s.id).collect::<Vec<_>>(),
            expected,
            "{filter:?}"
        );
    }

    // A tag nobody has: nothing.
    let none = store
        .similar_tasks(
            &target,
            &SimilarOptions {
                filter: TaskFilter {
                    tags: owner("nobody"),
                    ..TaskFilter::default()
                },
                ..SimilarOptions::default()
            },
        )
        .expect("similar");
    assert!(none.is_empty());
}

#[test]
fn similar_to_a_stored_task_leaves_it_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &VectorSpace::of(&fixture_embedding(0))).expect("store");
    let stored = fill(&store);
    let me = &stored[6];
    let got = store
        .similar_to_task(
            me.id,
            &SimilarOptions {
                limit: 19,
                prefetch: 20,
                filter: TaskFilter::default(),
            },
        )
        .expect("similar");
    assert_eq!(got.len(), 19);
    assert!(got.iter().all(|s| s.id != me.id));
    assert_eq!(
        got.iter().map(|s| s.id).collect::<Vec<_>>(),
        brute_force(&stored, &me.embedding, |s| s.id != me.id)
    );
    let nearest = stored
        .iter()
        .position(|s| s.id == got[0].id)
        .expect("stored");
    assert_eq!(
        nearest % 4,
        6 % 4,
        "its nearest neighbour shares its base task"
    );
    // The same by embedding: a dataset is never its own neighbour, even when re-embedded
    // (here: a changed vector for the same dataset path) and not yet stored again.
    let mut again = me.embedding.clone();
    again.hessian = perturbed(2, 0.1, 4242);
    let by_embedding = store
        .similar_tasks(
            &again,
            &SimilarOptions {
                limit: 19,
                prefetch: 20,
                filter: TaskFilter::default(),
            },
        )
        .expect("similar");
    assert_eq!(by_embedding.len(), 19);
    assert!(by_embedding.iter().all(|s| s.id != me.id));

    match store.similar_to_task(Uuid::nil(), &SimilarOptions::default()) {
        Err(Error::NotFound { what, id }) => {
            assert_eq!(what, "task");
            assert_eq!(id, Uuid::nil());
        }
        other => panic!("expected not found, got {other:?}"),
    }
}

#[test]
fn options_read_from_partial_json() {
    let o: SimilarOptions =
        serde_json::from_str(r#"{"limit": 3, "filter": {"tags": {"owner": "vision"}}}"#)
            .expect("options");
    assert_eq!(o.limit, 3);
    assert_eq!(o.prefetch, 100);
    assert_eq!(o.filter.tags, owner("vision"));
    assert_eq!(o.filter.min_samples, None);
}

#[test]
fn queries_stay_right_after_optimize_builds_the_quantized_index() {
    // 100 tasks: 16.8 MB per index vector, past the engine's indexing threshold, so optimize()
    // builds the HNSW graph and the int8 quantized copy of `task2vec`.
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &VectorSpace::of(&fixture_embedding(0))).expect("store");
    let mut rng = common::Normal::new(31);
    let stored: Vec<Stored> = (0..100)
        .map(|k| {
            let e = embedding(&format!("t{k}"), common::random_mixture(&mut rng, 4000 + k));
            let id = store.upsert_task(&e, &Tags::new()).expect("upsert");
            Stored {
                id,
                embedding: e,
                tags: Tags::new(),
            }
        })
        .collect();
    store.optimize().expect("optimize");
    store.close();
    let store = Store::open_existing(dir.path()).expect("reopen");
    assert_eq!(store.count_tasks().expect("count"), 100);
    for q in 0..5 {
        let target = embedding("q", common::random_mixture(&mut rng, 9000 + q));
        let expected = brute_force(&stored, &target, |_| true);
        let all = store
            .similar_tasks(
                &target,
                &SimilarOptions {
                    limit: 100,
                    prefetch: 100,
                    filter: TaskFilter::default(),
                },
            )
            .expect("similar");
        assert_eq!(all.iter().map(|s| s.id).collect::<Vec<_>>(), expected);
        let top = store
            .similar_tasks(&target, &SimilarOptions::default())
            .expect("similar");
        assert_eq!(top[0].id, expected[0], "query {q}");
    }
}
