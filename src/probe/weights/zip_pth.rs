//! PyTorch's zip checkpoint format (`torch.save` since 1.6).
//!
//! The archive holds `<prefix>/data.pkl` (the pickled object, storages as persistent ids
//! `('storage', torch.FloatStorage, key, location, numel)`), one record `<prefix>/data/<key>`
//! per storage with its raw little-endian bytes, and optionally `<prefix>/byteorder`. The
//! pickle goes through the same interpreter as the legacy format, so both give identical
//! tensors (file order, views and strides included).

use std::collections::HashMap;
use std::io::{Cursor, Read};

use candle_core::Tensor;

use super::pickle::{Fallible, Unpickler};
use super::state_dict::{find_tensors, materialize, storage_table};

/// Deflate cannot compress better than about 1032:1, so no honest record inflates beyond that.
const MAX_INFLATION: u64 = 1032;

type Archive<'a> = zip::ZipArchive<Cursor<&'a [u8]>>;

/// Reads record `name` whole, refusing sizes the archive cannot honestly hold.
fn read_record(zip: &mut Archive<'_>, name: &str, file_len: u64) -> Fallible<Vec<u8>> {
    let record = zip
        .by_name(name)
        .map_err(|e| format!("record {name}: {e}"))?;
    let size = record.size();
    if size > file_len.saturating_mul(MAX_INFLATION) {
        return Err(format!(
            "record {name} claims {size} bytes, impossible for this file"
        ));
    }
    // Reserve no more than the file holds: a lying header must not cause a huge allocation.
    let mut out = Vec::with_capacity(size.min(file_len) as usize);
    record
        .take(size)
        .read_to_end(&mut out)
        .map_err(|e| format!("record {name}: {e}"))?;
    if out.len() as u64 != size {
        return Err(format!(
            "record {name}: {} of {size} bytes readable",
            out.len()
        ));
    }
    Ok(out)
}

/// Reads every tensor of a zip-format `.pth` held in memory, in state-dict order.
pub(crate) fn read(bytes: &[u8]) -> Fallible<Vec<(String, Tensor)>> {
    let file_len = bytes.len() as u64;
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    // The pickle sits at `<prefix>/data.pkl`, where the prefix is the archive's single top
    // folder (the file's stem when it was written).
    let pickles: Vec<String> = zip
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .collect();
    let pkl = match pickles.as_slice() {
        [one] => one.clone(),
        [] => return Err("zip archive without <name>/data.pkl: not a PyTorch checkpoint".into()),
        _ => {
            return Err(format!(
                "zip archive with {} data.pkl records",
                pickles.len()
            ))
        }
    };
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let byteorder = format!("{prefix}byteorder");
    if zip.file_names().any(|n| n == byteorder) {
        let order = read_record(&mut zip, &byteorder, file_len)?;
        if order.trim_ascii() != b"little" {
            return Err("big-endian checkpoints are not supported".into());
        }
    }

    let pickle = read_record(&mut zip, &pkl, file_len)?;
    let (root, _) = Unpickler::load(&pickle, 0)?;
    let tensors = find_tensors(&root)?;
    let table = storage_table(&tensors)?;
    let mut data: HashMap<&str, Vec<u8>> = HashMap::with_capacity(table.len());
    let mut stored = 0usize;
    for (key, &(dtype, numel)) in &table {
        let name = format!("{prefix}data/{key}");
        let expected = numel
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| format!("storage {key} size overflows"))?;
        let declared = zip
            .by_name(&name)
            .map_err(|e| format!("record {name}: {e}"))?
            .size();
        if declared != expected as u64 {
            return Err(format!(
                "storage {key}: record holds {declared} bytes, the pickle declares {numel} x \
                 {dtype:?}"
            ));
        }
        let record = read_record(&mut zip, &name, file_len)?;
        stored = stored.saturating_add(record.len());
        data.insert(key.as_str(), record);
    }

    // Views may repeat elements (stride 0), within reason; records may have been compressed.
    let max_bytes = bytes
        .len()
        .saturating_add(stored)
        .saturating_mul(8)
        .saturating_add(1 << 16);
    tensors
        .iter()
        .map(|t| {
            // Every key is in `data`: it was filled from the same table.
            let storage = data
                .get(t.storage.key.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let tensor = materialize(t, storage, max_bytes)
                .map_err(|e| format!("tensor {:?}: {e}", t.name))?;
            Ok((t.name.clone(), tensor))
        })
        .collect()
}
