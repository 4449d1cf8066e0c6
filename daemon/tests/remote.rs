//! The daemon on the remote backend, as docker/docker-compose.yml runs it: a real Qdrant
//! server from `QDRANT_URL` (gRPC, e.g. `http://127.0.0.1:6334`), chosen through environment
//! variables only. Without `QDRANT_URL` the test prints "skipped: QDRANT_URL not set".

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{dataset, dataset_files, idle, indexed, mark_ready, write_files, Daemon, TestEnv};
use task2vec_daemon::api::Target;
use task2vec_daemon::{SimilarParams, StoreState};
use task2vec_qdrant::{RemoteConfig, Store, StoreConfig};

const WAIT: Duration = Duration::from_secs(120);

/// Drops the test's collections when it ends, whatever happened.
struct Collections {
    url: String,
    prefix: String,
}

impl Drop for Collections {
    fn drop(&mut self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let client = qdrant_client::Qdrant::from_url(&self.url)
            .skip_compatibility_check()
            .build();
        if let (Ok(runtime), Ok(client)) = (runtime, client) {
            for name in ["tasks", "experts", "tasks_raw", "experts_raw", "meta"] {
                let _ =
                    runtime.block_on(client.delete_collection(format!("{}{name}", self.prefix)));
            }
        }
    }
}

#[test]
fn the_daemon_indexes_into_a_qdrant_server() {
    let url = match std::env::var("QDRANT_URL") {
        Ok(u) if !u.trim().is_empty() => u.trim().to_string(),
        _ => {
            println!("skipped: QDRANT_URL not set");
            return;
        }
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let prefix = format!("t2vdaemon_{}_{nanos}_", std::process::id());
    let _cleanup = Collections {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let env = TestEnv::new("");
    let vars = [
        ("T2V__STORE__BACKEND", "remote"),
        ("T2V__STORE__URL", url.as_str()),
        ("T2V__STORE__COLLECTION_PREFIX", prefix.as_str()),
    ];
    let a = env.root.join("alpha");
    let b = env.root.join("beta");
    write_files(&a, &dataset_files(&[0, 1, 2], 8, 0));
    mark_ready(&a);
    write_files(&b, &dataset_files(&[7, 8, 9], 8, 0));
    mark_ready(&b);

    let daemon = Daemon::start_with(&env, &vars);
    let s = daemon.wait_for("both indexed on the server", WAIT, |s| {
        indexed(s, &a) && indexed(s, &b) && idle(s)
    });
    assert_eq!(s.store.state, StoreState::Open);
    assert!(s.store.location.contains(&prefix), "{}", s.store.location);
    let near = daemon
        .client
        .similar(&Target::Dataset(a.clone()), &SimilarParams::default())
        .expect("similar through the daemon");
    assert_eq!(near.results.len(), 1);
    assert_eq!(near.results[0].dataset_uri, b.to_string_lossy());

    std::fs::remove_dir_all(&b).unwrap();
    daemon.wait_for("beta forgotten", WAIT, |s| dataset(s, &b).is_none());
    let deadline = Instant::now() + WAIT;
    while daemon.client.tasks().unwrap().len() != 1 {
        assert!(Instant::now() < deadline, "beta still stored");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.terminate().success());

    // A second client sees what the daemon stored.
    let store = Store::open_existing_config(&StoreConfig::Remote(RemoteConfig {
        collection_prefix: prefix.clone(),
        ..RemoteConfig::new(&url)
    }))
    .expect("open the remote store");
    let tasks = store.list_tasks().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].dataset_uri, a.to_string_lossy());
}
