//! A blocking client of a running daemon's HTTP API, for `t2v similar`, `t2v select`,
//! `t2v tasks list` and `t2v zoo` while the daemon owns the embedded store (only one process
//! may open it).

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

use task2vec_qdrant::Expert;

use crate::api::{
    target_pairs, AddExpert, ErrorBody, ExpertAdded, ExpertInfo, ExpertRemoved, Health,
    SelectParams, SelectResponse, SimilarParams, SimilarResponse, StatusReport, Target, TaskInfo,
};
use crate::config::DaemonConfig;
use crate::{Error, Result};

/// Name of the file in the state folder holding the address the daemon's HTTP endpoint is
/// bound to (written at start, removed at a clean stop).
pub const ADDR_FILE: &str = "daemon.addr";

/// Default limit of one request: generous, because a query on a dataset that is not stored
/// embeds it first.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A blocking client of the daemon's HTTP API (see [`crate::api`]).
#[derive(Debug, Clone)]
pub struct DaemonClient {
    base: String,
    agent: ureq::Agent,
}

impl DaemonClient {
    /// A client of the daemon at `base_url` (`http://127.0.0.1:7878`), with
    /// [`DEFAULT_TIMEOUT`].
    pub fn new(base_url: impl Into<String>) -> Self {
        DaemonClient::with_timeout(base_url, DEFAULT_TIMEOUT)
    }

    /// A client whose requests give up after `timeout`.
    pub fn with_timeout(base_url: impl Into<String>, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        DaemonClient {
            base: base_url.into().trim_end_matches('/').to_string(),
            agent,
        }
    }

    /// The client of the daemon `config` describes: the address in its state folder's
    /// `daemon.addr` when the daemon is running, else `http.addr` (an unspecified address such
    /// as `0.0.0.0` is reached on the loopback).
    pub fn from_config(config: &DaemonConfig) -> Self {
        let mut addr = running_daemon_addr(&config.daemon.state_dir).unwrap_or(config.http.addr);
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        DaemonClient::new(format!("http://{addr}"))
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /healthz`.
    pub fn health(&self) -> Result<Health> {
        self.get_json("/healthz", &[])
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<StatusReport> {
        self.get_json("/status", &[])
    }

    /// `GET /metrics` (Prometheus text).
    pub fn metrics(&self) -> Result<String> {
        let url = format!("{}/metrics", self.base);
        let mut resp = self.call(&url, &[])?;
        resp.body_mut()
            .read_to_string()
            .map_err(|e| client_error(&url, None, e.to_string()))
    }

    /// `GET /api/tasks`: every stored task.
    pub fn tasks(&self) -> Result<Vec<TaskInfo>> {
        self.get_json("/api/tasks", &[])
    }

    /// `GET /api/similar`: the stored tasks nearest `target`. A relative dataset path is made
    /// absolute against this process's working directory first.
    pub fn similar(&self, target: &Target, params: &SimilarParams) -> Result<SimilarResponse> {
        let mut q = vec![target_pair(target)?];
        push(&mut q, "limit", params.limit);
        push(&mut q, "prefetch", params.prefetch);
        push(&mut q, "min_samples", params.min_samples);
        push(&mut q, "min_classes", params.min_classes);
        for (k, v) in &params.tags {
            q.push(("tag".into(), format!("{k}:{v}")));
        }
        self.get_json("/api/similar", &q)
    }

    /// `GET /api/select`: the experts best suited to `target`.
    pub fn select(&self, target: &Target, params: &SelectParams) -> Result<SelectResponse> {
        let mut q = vec![target_pair(target)?];
        push(&mut q, "alpha", params.alpha);
        push(&mut q, "limit", params.limit);
        push(&mut q, "prefetch", params.prefetch);
        self.get_json("/api/select", &q)
    }

    /// `GET /api/experts`: the zoo.
    pub fn experts(&self) -> Result<Vec<ExpertInfo>> {
        self.get_json("/api/experts", &[])
    }

    /// `POST /api/experts`: stores an expert trained on a stored task or a dataset (a
    /// relative path is made absolute first); the daemon embeds the dataset if it must.
    pub fn add_expert(&self, expert: &Expert, trained_on: &Target) -> Result<ExpertAdded> {
        let (task_id, dataset) = match trained_on {
            Target::TaskId(id) => (Some(*id), None),
            Target::Dataset(p) => (
                None,
                Some(std::path::absolute(p).map_err(|e| Error::io(p.as_path(), e))?),
            ),
        };
        let body = AddExpert {
            expert: expert.clone(),
            task_id,
            dataset,
        };
        let url = format!("{}/api/experts", self.base);
        let resp = self.agent.post(&url).send_json(&body);
        read_json(&url, checked(&url, resp)?)
    }

    /// `DELETE /api/experts/{key}`.
    pub fn remove_expert(&self, key: &str) -> Result<ExpertRemoved> {
        let url = format!("{}/api/experts/{}", self.base, url_segment(key));
        let resp = self.agent.delete(&url).call();
        read_json(&url, checked(&url, resp)?)
    }

    fn call(
        &self,
        url: &str,
        query: &[(String, String)],
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let resp = self
            .agent
            .get(url)
            .query_pairs(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .call();
        checked(url, resp)
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str, query: &[(String, String)]) -> Result<T> {
        let url = format!("{}{path}", self.base);
        read_json(&url, self.call(&url, query)?)
    }
}

/// The answer, or its error (`{"error": ...}` for a status of 400 and above).
fn checked(
    url: &str,
    resp: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<ureq::http::Response<ureq::Body>> {
    let mut resp = resp.map_err(|e| client_error(url, None, format!("unreachable: {e}")))?;
    let status = resp.status().as_u16();
    if status >= 400 {
        let message = match resp.body_mut().read_json::<ErrorBody>() {
            Ok(b) => b.error,
            Err(_) => format!("HTTP {status}"),
        };
        return Err(client_error(url, Some(status), message));
    }
    Ok(resp)
}

fn read_json<T: DeserializeOwned>(
    url: &str,
    mut resp: ureq::http::Response<ureq::Body>,
) -> Result<T> {
    resp.body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_json()
        .map_err(|e| client_error(url, None, format!("unexpected answer: {e}")))
}

/// `key` as one URL path segment (percent-encoding everything but unreserved characters).
fn url_segment(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn client_error(url: &str, status: Option<u16>, message: String) -> Error {
    Error::Client {
        url: url.to_string(),
        status,
        message,
    }
}

fn push<T: ToString>(q: &mut Vec<(String, String)>, name: &str, value: Option<T>) {
    if let Some(v) = value {
        q.push((name.to_string(), v.to_string()));
    }
}

fn target_pair(target: &Target) -> Result<(String, String)> {
    match target {
        Target::Dataset(p) if p.is_relative() => {
            let abs = std::path::absolute(p).map_err(|e| Error::io(p.as_path(), e))?;
            Ok(target_pairs(&Target::Dataset(abs)))
        }
        t => Ok(target_pairs(t)),
    }
}

/// Reads the address a daemon wrote into `state_dir` (see [`ADDR_FILE`]), if it is running.
pub fn running_daemon_addr(state_dir: &Path) -> Option<std::net::SocketAddr> {
    std::fs::read_to_string(state_dir.join(ADDR_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}
