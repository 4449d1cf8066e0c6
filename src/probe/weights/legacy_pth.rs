//! PyTorch's legacy (pre-1.6, non-zip) `torch.save` format, which candle cannot read.
//!
//! The file is a stream of five pickles followed by raw storage data:
//!
//! 1. the magic number `0x1950a86a20f9469cfc6c`;
//! 2. the serialization protocol version (1001);
//! 3. `sys_info`, a dict with `little_endian` and the C type sizes of the writer;
//! 4. the object itself (here: a state dict), whose storages are persistent ids
//!    `('storage', torch.FloatStorage, key, location, numel[, view_metadata])`;
//! 5. the list of storage keys, in the order their data follows;
//!
//! then for each key: a little-endian `u64` element count and that many little-endian elements.

use std::collections::HashMap;

use candle_core::Tensor;

use super::pickle::{Fallible, Unpickler, Value};
use super::state_dict::{find_tensors, materialize, storage_table};

/// `torch.serialization.MAGIC_NUMBER` as a pickled `LONG1`: little-endian bytes.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// `torch.serialization.PROTOCOL_VERSION`.
const PROTOCOL_VERSION: i64 = 1001;

/// The magic number as the first pickle decodes it.
fn magic() -> Value {
    Value::BigInt(MAGIC.as_slice().into())
}

/// Whether `bytes` start like a legacy PyTorch file: a first pickle (protocol 2 or later, so
/// starting with `PROTO`) holding the magic number. That pickle takes 15 to 24 bytes, so only
/// the first 64 are looked at: cheap on any input.
pub(crate) fn looks_legacy(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(64)];
    head.first() == Some(&0x80) && Unpickler::load(head, 0).is_ok_and(|(first, _)| first == magic())
}

/// Reads every tensor of a legacy `.pth` file held in memory, in state-dict order.
pub(crate) fn read(bytes: &[u8]) -> Fallible<Vec<(String, Tensor)>> {
    let (magic, pos) = Unpickler::load(bytes, 0)?;
    if magic != self::magic() {
        return Err("not a legacy PyTorch file (wrong magic number)".into());
    }
    let (version, pos) = Unpickler::load(bytes, pos)?;
    if version != Value::Int(PROTOCOL_VERSION) {
        return Err(format!(
            "unsupported legacy protocol version {}",
            version.kind()
        ));
    }
    let (sys_info, pos) = Unpickler::load(bytes, pos)?;
    let little_endian = sys_info
        .as_dict()
        .and_then(|d| d.iter().find(|(k, _)| k.as_str() == Some("little_endian")))
        .map(|(_, v)| v.clone());
    if little_endian == Some(Value::Bool(false)) {
        return Err("big-endian files are not supported".into());
    }
    let (root, pos) = Unpickler::load(bytes, pos)?;
    let tensors = find_tensors(&root)?;
    let (keys, mut pos) = Unpickler::load(bytes, pos)?;
    let keys = keys
        .as_seq()
        .ok_or_else(|| format!("storage key list is {}, not a list", keys.kind()))?;

    // Locate every storage's bytes. Each count is checked against what the pickle declared
    // and against the bytes left, before anything is sliced.
    let table = storage_table(&tensors)?;
    let mut data: HashMap<&str, &[u8]> = HashMap::with_capacity(keys.len());
    for key in keys {
        let key = key
            .as_str()
            .ok_or_else(|| format!("storage key is {}, not a str", key.kind()))?;
        let &(dtype, numel) = table
            .get(key)
            .ok_or_else(|| format!("storage {key} has data but no tensor uses it"))?;
        let count_bytes = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| format!("truncated: storage {key} is missing (file ends at {pos})"))?;
        let count = u64::from_le_bytes(count_bytes.try_into().map_err(|_| "unreachable")?);
        if count != numel as u64 {
            return Err(format!(
                "storage {key}: data section holds {count} elements, the pickle declares {numel}"
            ));
        }
        let start = pos + 8;
        let len = numel
            .checked_mul(dtype.size_in_bytes())
            .filter(|&n| n <= bytes.len() - start)
            .ok_or_else(|| {
                format!(
                    "truncated: storage {key} needs {numel} x {dtype:?} at byte {start}, only {} \
                     bytes left",
                    bytes.len() - start
                )
            })?;
        if data.insert(key, &bytes[start..start + len]).is_some() {
            return Err(format!("storage {key} is listed twice"));
        }
        pos = start + len;
    }

    let max_bytes = bytes.len().saturating_mul(8).saturating_add(1 << 16);
    tensors
        .iter()
        .map(|t| {
            let storage = data.get(t.storage.key.as_str()).ok_or_else(|| {
                format!("tensor {:?}: storage {} has no data", t.name, t.storage.key)
            })?;
            let tensor = materialize(t, storage, max_bytes)
                .map_err(|e| format!("tensor {:?}: {e}", t.name))?;
            Ok((t.name.clone(), tensor))
        })
        .collect()
}
