//! Migration between stores (embedded ↔ server, or between servers): the store's own dump.
//!
//! A dump is a folder:
//!
//! - `dump.json`: format and version, the source store's manifest (space, transform), the
//!   point counts and whether a trivial embedding is included; written last, so a folder
//!   without it is an interrupted export;
//! - `trivial.safetensors`: the trivial embedding, when the store has one (the core library's
//!   embedding file);
//! - `tasks.jsonl`, `experts.jsonl`: one point per line,
//!   `{"id": UUID, "vectors": {NAME: BASE64, ...}, "payload": {...}}`, where each vector is
//!   its little-endian f32 bytes in standard base64 (so every value round-trips exactly) and
//!   the payload is the point's as stored (docs/schema.md).
//!
//! Raw vectors (`hessian`, `scale`) are copied bit for bit. The index vectors are written too
//! (as the engine returns them: normalised), for readers of the dump, but an import recomputes
//! them from `hessian` with the importing store's transform: that is how a store made with an
//! older transform (the full-length `centered_log`) moves to the current one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use task2vec::embedding::Embedding;
use uuid::Uuid;

use crate::backend::{Filter, Point, WithVectors};
use crate::record::{ExpertPayload, TaskPayload};
use crate::store::{now, Kind, Manifest, HESSIAN, MODEL2VEC, RAW_NAMES, SCALE, TASK2VEC};
use crate::{Error, Result, Store, StoreConfig};

const DUMP_FORMAT: &str = "task2vec-qdrant-dump";
/// Version of the dump layout; readers refuse others.
pub const DUMP_VERSION: u32 = 1;
const HEADER_FILE: &str = "dump.json";
const TRIVIAL_FILE: &str = "trivial.safetensors";
const TASKS_FILE: &str = "tasks.jsonl";
const EXPERTS_FILE: &str = "experts.jsonl";
/// Points read or written per request.
const BATCH: usize = 32;

/// What a dump holds (or an import wrote).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpSummary {
    /// Task points.
    pub tasks: usize,
    /// Expert points.
    pub experts: usize,
    /// Whether the trivial embedding is included.
    pub trivial: bool,
}

/// `dump.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    exported_at: String,
    store: Manifest,
    tasks: usize,
    experts: usize,
    trivial: bool,
}

/// One line of `tasks.jsonl` / `experts.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    id: Uuid,
    vectors: BTreeMap<String, String>,
    payload: serde_json::Map<String, Value>,
}

impl Store {
    /// Writes every point, the manifest and the trivial embedding to the folder `dir` (created
    /// when absent).
    ///
    /// Errors: [`Error::Dump`] when `dir` already holds a dump; [`Error::Io`] when a file
    /// cannot be written.
    pub fn export_dump(&self, dir: &Path) -> Result<DumpSummary> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let header_path = dir.join(HEADER_FILE);
        if header_path.exists() {
            return Err(Error::Dump {
                path: header_path,
                what: "already holds a dump: export into a new folder".into(),
            });
        }
        let tasks = export_points(self, Kind::Tasks, &dir.join(TASKS_FILE))?;
        let experts = export_points(self, Kind::Experts, &dir.join(EXPERTS_FILE))?;
        let trivial = match self.trivial_embedding()? {
            Some(t) => {
                t.save(&dir.join(TRIVIAL_FILE))?;
                true
            }
            None => false,
        };
        let header = Header {
            format: DUMP_FORMAT.into(),
            version: DUMP_VERSION,
            exported_at: now(),
            store: self.manifest().clone(),
            tasks,
            experts,
            trivial,
        };
        let text = serde_json::to_string_pretty(&header).map_err(|e| Error::Dump {
            path: header_path.clone(),
            what: format!("header does not serialise: {e}"),
        })?;
        let tmp = dir.join(format!("{HEADER_FILE}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &header_path).map_err(|e| Error::io(&header_path, e))?;
        Ok(DumpSummary {
            tasks,
            experts,
            trivial,
        })
    }

    /// Adds every point of the dump in `dir` to this store (a point with the same id is
    /// replaced). The trivial embedding: a store without one takes the dump's; a store with
    /// another keeps its own and recomputes the imported points' complexities.
    ///
    /// Errors: [`Error::Mismatch`] for a dump of another space;
    /// [`Error::Dump`] for a folder that is not a complete dump or a line that does not parse
    /// (points before it are already imported).
    pub fn import_dump(&self, dir: &Path) -> Result<DumpSummary> {
        let header = read_header(dir)?;
        let diffs = header.store.space.differences(self.space());
        if !diffs.is_empty() {
            return Err(Error::Mismatch(format!(
                "the dump in {} holds vectors of another space than this store: different {} \
                 (dump vs store)",
                dir.display(),
                diffs.join(", ")
            )));
        }
        let tasks = import_points(
            self,
            Kind::Tasks,
            &dir.join(TASKS_FILE),
            header.tasks,
            &[TASK2VEC, HESSIAN, SCALE],
            |p| serde_json::from_value::<TaskPayload>(p).map(|_| ()),
        )?;
        let experts = import_points(
            self,
            Kind::Experts,
            &dir.join(EXPERTS_FILE),
            header.experts,
            &[TASK2VEC, MODEL2VEC, HESSIAN, SCALE],
            |p| serde_json::from_value::<ExpertPayload>(p).map(|_| ()),
        )?;
        let dump_trivial = if header.trivial {
            let path = dir.join(TRIVIAL_FILE);
            let t = Embedding::load(&path)?;
            self.space().check(&t)?;
            Some(t)
        } else {
            None
        };
        // The points were derived with the store's own t0; a store without one takes the
        // dump's (and re-derives the imported points with it).
        if let (Some(t), None) = (dump_trivial, self.trivial_mark()) {
            self.set_trivial(&t)?;
        }
        Ok(DumpSummary {
            tasks,
            experts,
            trivial: header.trivial,
        })
    }

    /// Imports the dump in `dir` into the store `config` describes, creating the store (with
    /// the dump's space and this library's default index transform) when there is none.
    ///
    /// Errors: as [`Store::open_config`] and [`Store::import_dump`].
    pub fn import_dump_into(config: &StoreConfig, dir: &Path) -> Result<DumpSummary> {
        let header = read_header(dir)?;
        let store = Store::open_config(config, &header.store.space)?;
        let summary = store.import_dump(dir)?;
        store.close();
        Ok(summary)
    }
}

fn read_header(dir: &Path) -> Result<Header> {
    let path = dir.join(HEADER_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Dump {
                path,
                what: "missing: not a dump, or an interrupted export".into(),
            })
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let header: Header = serde_json::from_str(&text).map_err(|e| Error::Dump {
        path: path.clone(),
        what: format!("does not parse: {e}"),
    })?;
    if header.format != DUMP_FORMAT || header.version != DUMP_VERSION {
        return Err(Error::Dump {
            path,
            what: format!(
                "is `{}` version {}, this library reads `{DUMP_FORMAT}` version {DUMP_VERSION}",
                header.format, header.version
            ),
        });
    }
    Ok(header)
}

/// Writes every point of the `kind` collection of `store` (with its raw vectors, wherever the
/// store keeps them) to `path`, one JSON line each; returns how many.
fn export_points(store: &Store, kind: Kind, path: &Path) -> Result<usize> {
    let c = store.collection(kind);
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = BufWriter::new(file);
    let mut n = 0;
    let mut offset = None;
    loop {
        let (mut page, next) = c.scroll(&Filter::default(), WithVectors::All, offset, BATCH)?;
        store.add_raw(kind, &mut page, WithVectors::All)?;
        for p in page {
            let line = Line {
                id: p.id,
                vectors: p
                    .vectors
                    .iter()
                    .map(|(name, v)| (name.clone(), encode(v)))
                    .collect(),
                payload: p.payload,
            };
            serde_json::to_writer(&mut out, &line).map_err(|e| Error::Dump {
                path: path.to_path_buf(),
                what: format!("point {} does not serialise: {e}", line.id),
            })?;
            out.write_all(b"\n").map_err(|e| Error::io(path, e))?;
            n += 1;
        }
        match next {
            Some(next) => offset = Some(next),
            None => break,
        }
    }
    out.into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io(path, e))?;
    Ok(n)
}

/// Reads `path` and upserts its points into the `kind` collection of `store`, checking each
/// line; returns how many. The index vectors (any vector of `names` but `hessian` and `scale`)
/// are recomputed from `hessian` with the store's transform, for the index vectors this store's
/// points carry (a version-1 store's experts have a `task2vec` copy, a version-2 store's not).
fn import_points(
    store: &Store,
    kind: Kind,
    path: &Path,
    expected: usize,
    names: &[&str],
    check_payload: impl Fn(Value) -> serde_json::Result<()>,
) -> Result<usize> {
    let dimension = store.space().dimension;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let bad = |line: usize, what: String| Error::Dump {
        path: PathBuf::from(format!("{}:{line}", path.display())),
        what,
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut n = 0;
    for (i, text) in BufReader::new(file).lines().enumerate() {
        let text = text.map_err(|e| Error::io(path, e))?;
        if text.trim().is_empty() {
            continue;
        }
        let line: Line =
            serde_json::from_str(&text).map_err(|e| bad(i + 1, format!("does not parse: {e}")))?;
        let mut vectors = BTreeMap::new();
        for (name, b64) in &line.vectors {
            if !names.contains(&name.as_str()) {
                return Err(bad(i + 1, format!("unknown vector `{name}`")));
            }
            let v = decode(b64).ok_or_else(|| {
                bad(
                    i + 1,
                    format!("vector `{name}` is not base64 of f32 values"),
                )
            })?;
            if !RAW_NAMES.contains(&name.as_str()) {
                // Derived data: recomputed below with this store's transform.
                continue;
            }
            if v.len() != dimension {
                return Err(bad(
                    i + 1,
                    format!(
                        "vector `{name}` has {} values, the store's have {dimension}",
                        v.len()
                    ),
                ));
            }
            vectors.insert(name.clone(), v);
        }
        let hessian = vectors
            .get(HESSIAN)
            .ok_or_else(|| bad(i + 1, "has no `hessian` vector".into()))?;
        // Derived data (index vectors, complexity and its t0 mark) is recomputed with this
        // store's transform and trivial embedding.
        let derived = store
            .derive(hessian, vectors.get(SCALE).map(Vec::as_slice))
            .map_err(|e| bad(i + 1, e.to_string()))?;
        for name in store.index_names(kind) {
            vectors.insert(name.to_string(), derived.index.clone());
        }
        let mut payload = line.payload;
        derived.write_payload(&mut payload);
        check_payload(Value::Object(payload.clone()))
            .map_err(|e| bad(i + 1, format!("payload does not parse: {e}")))?;
        batch.push(Point {
            id: line.id,
            vectors,
            payload,
        });
        n += 1;
        if batch.len() == BATCH {
            store.write_points(kind, std::mem::take(&mut batch))?;
            store.wrote(kind, BATCH)?;
        }
    }
    if !batch.is_empty() {
        let len = batch.len();
        store.write_points(kind, batch)?;
        store.wrote(kind, len)?;
    }
    if n != expected {
        return Err(Error::Dump {
            path: path.to_path_buf(),
            what: format!("holds {n} points, dump.json says {expected}: truncated dump?"),
        });
    }
    Ok(n)
}

fn encode(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    STANDARD.encode(bytes)
}

fn decode(s: &str) -> Option<Vec<f32>> {
    let bytes = STANDARD.decode(s).ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_bit_for_bit() {
        let v = [
            0.1_f32,
            -0.0,
            f32::MIN_POSITIVE,
            1e-45,
            3.402_823_5e38,
            1.0 / 3.0,
        ];
        let back = decode(&encode(&v)).expect("decode");
        assert_eq!(
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            back.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert!(decode("AAA").is_none(), "3 bytes are not an f32");
        assert!(decode("not base64!").is_none());
    }
}
