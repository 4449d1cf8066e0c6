//! `on_remove = "repoint"`: a renamed dataset folder keeps its vector (moved, not embedded
//! again); a deleted one leaves the store once no new folder claims it.

mod common;

use std::time::{Duration, Instant};

use common::{
    dataset, dataset_files, fingerprint, idle, indexed, mark_ready, write_files, Daemon, TestEnv,
};

const WAIT: Duration = Duration::from_secs(90);

#[test]
fn a_renamed_dataset_is_repointed_without_embedding() {
    let env = TestEnv::new("");
    let old = env.root.join("shoes");
    let new = env.root.join("footwear");
    write_files(&old, &dataset_files(&[5, 7, 9], 8, 0));
    mark_ready(&old);
    let daemon = Daemon::start_with(&env, &[("T2V__WATCH__ON_REMOVE", "repoint")]);
    let s = daemon.wait_for("indexed", WAIT, |s| indexed(s, &old) && idle(s));
    assert_eq!(s.embeddings_done, 1);
    let fp = fingerprint(&old);

    std::fs::rename(&old, &new).unwrap();
    let s = daemon.wait_for("the renamed folder indexed", WAIT, |s| {
        indexed(s, &new) && dataset(s, &old).is_none() && idle(s)
    });
    assert_eq!(
        s.embeddings_done, 1,
        "the renamed dataset was embedded again"
    );
    assert_eq!(
        dataset(&s, &new).unwrap().fingerprint.as_deref(),
        Some(fp.as_str())
    );
    let tasks = daemon.client.tasks().unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].dataset_uri, new.to_string_lossy());
    assert_eq!(tasks[0].fingerprint, fp);

    // Deleted for good: the point goes once nothing claims it.
    std::fs::remove_dir_all(&new).unwrap();
    let deadline = Instant::now() + WAIT;
    while !daemon.client.tasks().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the deleted dataset's point stayed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.terminate().success());
    assert_eq!(env.open_store().count_tasks().unwrap(), 0);
}
