//! The embedding file: safetensors with two f32 vectors and a JSON document in the header.
//!
//! ```text
//! tensors:       hessian [D] f32, scale [D] f32
//! __metadata__:  {"task2vec": "<EmbeddingMeta as JSON>"}
//! ```
//!
//! Any safetensors reader can open it (see `docs/embedding-format.md` for a Python snippet).
//! Writing is atomic: a temporary file in the target's folder, synced, then renamed over the
//! target, so a reader (or a file watcher) never sees half a file.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{layout_length, Embedding, EmbeddingMeta, FORMAT_VERSION, METADATA_KEY};
use crate::{Error, Result};

const HESSIAN: &str = "hessian";
const SCALE: &str = "scale";

impl Embedding {
    /// The file's bytes.
    ///
    /// Errors: [`Error::Mismatch`] when the vectors' lengths disagree with each other or with
    /// the layout (such an embedding could not be read back).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.check_shape()
            .map_err(|what| Error::Mismatch(format!("cannot write embedding: {what}")))?;
        let json = serde_json::to_string(&self.meta)
            .map_err(|e| Error::Mismatch(format!("cannot encode embedding metadata: {e}")))?;
        let hessian = le_bytes(&self.hessian);
        let scale = le_bytes(&self.scale);
        let tensors = [
            (HESSIAN, f32_view(&hessian, self.len())?),
            (SCALE, f32_view(&scale, self.len())?),
        ];
        let meta = HashMap::from([(METADATA_KEY.to_string(), json)]);
        safetensors::serialize(tensors, Some(meta))
            .map_err(|e| Error::Mismatch(format!("cannot write embedding: {e}")))
    }

    /// Writes the embedding to `path` atomically (temporary file in the same folder, then
    /// rename). The folder must exist.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let tmp = temp_path(path);
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(path, e));
        }
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(path, e)
        })
    }

    /// Reads an embedding file.
    ///
    /// Errors: [`Error::Io`] when it cannot be read; [`Error::Invalid`] naming the file when
    /// it is not safetensors, has no `task2vec` metadata (not an embedding), was written in
    /// another format version, or its tensors or metadata are malformed or inconsistent.
    pub fn load(path: &Path) -> Result<Embedding> {
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        Embedding::from_bytes(&bytes, path)
    }

    /// Parses the bytes of an embedding file; `path` only names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Embedding> {
        let invalid = |what: String| Error::invalid(path, what);
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| invalid(format!("not a safetensors file ({e})")))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| {
                invalid(format!(
                    "no `{METADATA_KEY}` metadata in the safetensors header: not a Task2Vec \
                     embedding"
                ))
            })?;
        // The version first, from an untyped parse: a future format may not fit the struct.
        let doc: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| invalid(format!("embedding metadata is not JSON: {e}")))?;
        match doc
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
        {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(invalid(format!(
                    "embedding format version {v} is not supported (this library, version {}, \
                     reads version {FORMAT_VERSION})",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            None => return Err(invalid("embedding metadata has no format_version".into())),
        }
        let meta: EmbeddingMeta = serde_json::from_value(doc)
            .map_err(|e| invalid(format!("embedding metadata is malformed: {e}")))?;
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| invalid(format!("not a safetensors file ({e})")))?;
        let read = |name: &str| -> Result<Vec<f32>> {
            let t = tensors
                .tensor(name)
                .map_err(|_| invalid(format!("tensor `{name}` is missing")))?;
            if t.dtype() != Dtype::F32 || t.shape().len() != 1 {
                return Err(invalid(format!(
                    "tensor `{name}` is {:?} {:?}, expected a F32 vector",
                    t.dtype(),
                    t.shape()
                )));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let embedding = Embedding {
            hessian: read(HESSIAN)?,
            scale: read(SCALE)?,
            meta,
        };
        embedding.check_shape().map_err(invalid)?;
        if let Some(i) = embedding.hessian.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "hessian[{i}] is {}, not a finite number",
                embedding.hessian[i]
            )));
        }
        Ok(embedding)
    }

    /// The vectors agree in length with each other and with the layout.
    fn check_shape(&self) -> std::result::Result<(), String> {
        let expected = layout_length(&self.meta.layout);
        if self.hessian.len() != expected || self.scale.len() != expected {
            return Err(format!(
                "hessian has {} values and scale {}, the layout describes {expected}",
                self.hessian.len(),
                self.scale.len()
            ));
        }
        Ok(())
    }
}

fn f32_view(bytes: &[u8], len: usize) -> Result<TensorView<'_>> {
    TensorView::new(Dtype::F32, vec![len], bytes)
        .map_err(|e| Error::Mismatch(format!("cannot write embedding: {e}")))
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A temporary name beside `path`, unique per process and call, so the rename is atomic and
/// concurrent writers never share a temporary file.
fn temp_path(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "embedding".into());
    path.with_file_name(format!(".{name}.{}-{call}.tmp", std::process::id()))
}
