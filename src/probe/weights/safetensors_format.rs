//! Reading and writing safetensors through the `safetensors` crate.
//!
//! Safetensors stores tensors sorted by dtype and name, so the original (state-dict) order is
//! lost on the way. Files written here record it in the header metadata under [`ORDER_KEY`];
//! reading honours that list when it names exactly the file's tensors, and otherwise returns
//! tensors in data-offset order.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors, View};

use super::pickle::Fallible;

/// Header metadata key holding the tensor names in their original order, as a JSON array.
pub(crate) const ORDER_KEY: &str = "task2vec.order";

/// Whether `bytes` start like a safetensors file: a little-endian `u64` header length that fits
/// in the file, followed by a JSON object.
pub(crate) fn looks_safetensors(bytes: &[u8]) -> bool {
    header_says_safetensors(bytes, bytes.len() as u64)
}

/// The same test from a file's first bytes (at least 9) and its total length, so a file can be
/// recognised without reading it whole.
pub(crate) fn header_says_safetensors(head: &[u8], total_len: u64) -> bool {
    let (Some(len), Some(&brace)) = (head.get(..8), head.get(8)) else {
        return false;
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(len);
    let n = u64::from_le_bytes(n);
    n >= 2 && n <= total_len.saturating_sub(8) && brace == b'{'
}

fn dtype_from_st(d: Dtype) -> Fallible<DType> {
    let dtype = match d {
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I16 => DType::I16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        other => return Err(format!("unsupported safetensors dtype {other:?}")),
    };
    Ok(dtype)
}

fn dtype_to_st(d: DType) -> Fallible<Dtype> {
    let dtype = match d {
        DType::U8 => Dtype::U8,
        DType::U32 => Dtype::U32,
        DType::I16 => Dtype::I16,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        other => return Err(format!("dtype {other:?} cannot be cached")),
    };
    Ok(dtype)
}

/// Reads every tensor of a safetensors file held in memory.
pub(crate) fn read(bytes: &[u8]) -> Fallible<Vec<(String, Tensor)>> {
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| format!("bad safetensors header: {e}"))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("bad safetensors file: {e}"))?;
    let mut names = meta.offset_keys();
    let recorded: Option<Vec<String>> = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(ORDER_KEY))
        .and_then(|order| serde_json::from_str(order).ok());
    if let Some(order) = recorded {
        let want: HashSet<&String> = names.iter().collect();
        let got: HashSet<&String> = order.iter().collect();
        if order.len() == names.len() && want == got {
            names = order;
        }
    }
    names
        .into_iter()
        .map(|name| {
            let view = st
                .tensor(&name)
                .map_err(|e| format!("tensor {name:?}: {e}"))?;
            let dtype = dtype_from_st(view.dtype()).map_err(|e| format!("tensor {name:?}: {e}"))?;
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .map_err(|e| format!("tensor {name:?}: {e}"))?;
            Ok((name, t))
        })
        .collect()
}

/// A tensor's bytes ready for serialization (candle's own `View` impl unwraps internally).
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Serializes tensors to safetensors bytes, recording their order in the metadata.
pub(crate) fn serialize(tensors: &[(String, Tensor)]) -> Fallible<Vec<u8>> {
    let mut raws = Vec::with_capacity(tensors.len());
    let mut seen = HashSet::new();
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(format!("tensor {name:?} appears twice"));
        }
        let dtype = dtype_to_st(t.dtype()).map_err(|e| format!("tensor {name:?}: {e}"))?;
        let data = super::tensor_le_bytes(t).map_err(|e| format!("tensor {name:?}: {e}"))?;
        raws.push((
            name.as_str(),
            Raw {
                dtype,
                shape: t.dims().to_vec(),
                data,
            },
        ));
    }
    let order: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let order = serde_json::to_string(&order).map_err(|e| e.to_string())?;
    let info = HashMap::from([(ORDER_KEY.to_string(), order)]);
    safetensors::serialize(raws.iter().map(|(n, r)| (*n, r)), Some(info))
        .map_err(|e| format!("cannot serialize: {e}"))
}
