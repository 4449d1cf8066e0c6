//! Weight files: reading PyTorch and safetensors checkpoints into candle tensors, caching them as
//! safetensors, and hashing them.
//!
//! [`read_tensors`] recognises the format from the file's content, never its name:
//!
//! - **safetensors** (through the `safetensors` crate);
//! - **zip `.pth`**, what `torch.save` writes since PyTorch 1.6;
//! - **legacy `.pth`**, the older stream-of-pickles format (`_use_new_zipfile_serialization=False`,
//!   e.g. the EfficientNet-Lite0 weights), which candle cannot read.
//!
//! Both PyTorch formats are decoded by this module's own small pickle interpreter (nothing is
//! executed): the state dict may be the top-level object or sit under `state_dict` / `model`;
//! storage offsets and strides are honoured, so transposed views and tensors sharing a storage
//! come out exactly as PyTorch shows them. Non-tensor entries are skipped.
//!
//! Every file is read whole into memory and every size in it is checked against the file's
//! length before anything is allocated, so a corrupt file gives [`Error::Weights`] naming the
//! file and saying what is wrong, never a panic or an absurd allocation.
//!
//! Supported element types: `f16`, `bf16`, `f32`, `f64`, `i64`, `i32`, `i16`, `u8` (PyTorch
//! `bool` is read as `u8` 0/1; `u32` from safetensors too).

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Tensor;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

mod legacy_pth;
mod pickle;
mod safetensors_format;
mod state_dict;
mod zip_pth;

/// Reads every tensor of a weights file (safetensors, zip `.pth` or legacy `.pth`, recognised by
/// content) as CPU tensors with the file's dtypes, in the file's order: state-dict order for
/// PyTorch files and for caches written by [`cache_as_safetensors`], data order for other
/// safetensors files.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes).map_err(|what| Error::weights(path, what))
}

/// Like [`read_tensors`], keyed by name.
pub fn read_tensor_map(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(read_tensors(path)?.into_iter().collect())
}

/// True when `path` is a safetensors file (judged by its header, like [`read_tensors`]); such
/// files need no conversion before loading.
pub fn is_safetensors(path: &Path) -> Result<bool> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = [0u8; 9];
    if len < head.len() as u64 {
        return Ok(false);
    }
    file.read_exact(&mut head).map_err(|e| Error::io(path, e))?;
    Ok(safetensors_format::header_says_safetensors(&head, len))
}

/// Recognises the format of an in-memory weights file and decodes it.
fn parse(bytes: &[u8]) -> std::result::Result<Vec<(String, Tensor)>, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return zip_pth::read(bytes).map_err(|e| format!("zip PyTorch checkpoint: {e}"));
    }
    if legacy_pth::looks_legacy(bytes) {
        return legacy_pth::read(bytes).map_err(|e| format!("legacy PyTorch checkpoint: {e}"));
    }
    if safetensors_format::looks_safetensors(bytes) {
        return safetensors_format::read(bytes).map_err(|e| format!("safetensors: {e}"));
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(format!(
        "unrecognised format (not safetensors, a zip PyTorch checkpoint or a legacy PyTorch \
         checkpoint); first bytes: {}",
        head.join(" ")
    ))
}

/// The bytes of a tensor, row-major and little-endian, as files store them.
fn tensor_le_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(t.elem_count() * t.dtype().size_in_bytes());
    t.write_bytes(&mut out)?;
    Ok(out)
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's bytes, as 64 lowercase hex digits.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 identifying a set of weights independently of the file format: over the tensors
/// sorted by name, each contributes its name, dtype, shape and little-endian row-major bytes
/// (all length-prefixed, so no two different sets hash alike by concatenation). A legacy `.pth`
/// and its safetensors cache give the same value. 64 lowercase hex digits.
pub fn tensors_sha256(tensors: &[(String, Tensor)]) -> Result<String> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for (name, t) in sorted {
        field(name.as_bytes());
        field(t.dtype().as_str().as_bytes());
        let dims: Vec<u8> = t
            .dims()
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        field(&dims);
        field(&tensor_le_bytes(t)?);
    }
    Ok(hex(&hasher.finalize()))
}

/// Converts a weights file (any format [`read_tensors`] reads) to safetensors once, and returns
/// the cached file `<cache_dir>/<stem>-<first 16 hex digits of the source's SHA-256>.safetensors`.
///
/// The cache is keyed by the source's content, so a changed source gets a new entry; an
/// existing entry is reused without reading the source's tensors. It is written to a temporary
/// file in `cache_dir` and renamed into place, so a concurrent reader never sees a partial
/// file. All tensors are kept, integer buffers such as `num_batches_tracked` included, so the
/// cache has the same [`tensors_sha256`] as its source and reads back in the source's order.
pub fn cache_as_safetensors(src: &Path, cache_dir: &Path) -> Result<PathBuf> {
    let digest = file_sha256(src)?;
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = if stem.is_empty() {
        "weights".to_string()
    } else {
        stem
    };
    let target = cache_dir.join(format!("{stem}-{}.safetensors", &digest[..16]));
    if target.is_file() {
        return Ok(target);
    }
    let tensors = read_tensors(src)?;
    let bytes =
        safetensors_format::serialize(&tensors).map_err(|what| Error::weights(src, what))?;
    fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
    // Unique per process and call, in the target's folder so that the rename is atomic.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let tmp = cache_dir.join(format!(
        ".{stem}-{}.{}-{call}.tmp",
        &digest[..16],
        std::process::id()
    ));
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, &target) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&target, e));
    }
    Ok(target)
}
