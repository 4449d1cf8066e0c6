//! PyTorch's object layer on top of the pickle, shared by the zip and legacy `.pth` readers:
//! finding the state dict in the unpickled object, decoding `_rebuild_tensor_v2` calls and
//! their storage references, and cutting each tensor out of its storage's bytes (honouring the
//! storage offset and strides, so views and shared storages come out as PyTorch shows them).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::pickle::{Fallible, Value};

/// A storage as a persistent id names it: `('storage', torch.FloatStorage, key, location,
/// numel[, view_metadata])`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    /// The key its bytes are filed under (a number as text).
    pub key: String,
    /// Element type of the storage.
    pub dtype: DType,
    /// Element count of the (root) storage.
    pub numel: usize,
    /// For the legacy format's storage views (PyTorch < 0.4): `(offset, len)` in elements of
    /// the root storage that the tensor's storage covers.
    pub view: Option<(usize, usize)>,
}

/// One tensor of the state dict, not yet read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    /// The state-dict key.
    pub name: String,
    /// Where its elements live.
    pub storage: StorageRef,
    /// Offset of element `[0, 0, ...]` in the storage, in elements.
    pub offset: usize,
    /// Shape.
    pub size: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// Maps a PyTorch storage class to a candle dtype.
fn storage_dtype(module: &str, name: &str) -> Fallible<DType> {
    let dtype = match (module, name) {
        ("torch", "FloatStorage") => DType::F32,
        ("torch", "DoubleStorage") => DType::F64,
        ("torch", "HalfStorage") => DType::F16,
        ("torch", "BFloat16Storage") => DType::BF16,
        ("torch", "LongStorage") => DType::I64,
        ("torch", "IntStorage") => DType::I32,
        ("torch", "ShortStorage") => DType::I16,
        // Bools are stored one byte each, 0 or 1; candle has no bool type.
        ("torch", "ByteStorage") | ("torch", "BoolStorage") => DType::U8,
        _ => return Err(format!("unsupported storage type {module}.{name}")),
    };
    Ok(dtype)
}

fn non_negative(v: &Value, what: &str) -> Fallible<usize> {
    v.as_int()
        .and_then(|i| usize::try_from(i).ok())
        .ok_or_else(|| format!("{what} should be a non-negative int, found {}", v.kind()))
}

fn int_tuple(v: &Value, what: &str) -> Fallible<Vec<usize>> {
    let items = v
        .as_seq()
        .ok_or_else(|| format!("{what} should be a tuple, found {}", v.kind()))?;
    items.iter().map(|i| non_negative(i, what)).collect()
}

fn parse_storage(pid: &Value) -> Fallible<StorageRef> {
    let items = pid
        .as_seq()
        .ok_or_else(|| format!("storage id should be a tuple, found {}", pid.kind()))?;
    match items.first().and_then(Value::as_str) {
        Some("storage") => {}
        Some("module") => {
            return Err("the file pickles a whole nn.Module; save its state_dict() instead".into())
        }
        _ => return Err("persistent id is not a storage".into()),
    }
    if !(5..=6).contains(&items.len()) {
        return Err(format!(
            "storage id has {} fields, expected 5 or 6",
            items.len()
        ));
    }
    let (module, name) = items[1]
        .as_global()
        .ok_or_else(|| format!("storage type should be a class, found {}", items[1].kind()))?;
    let dtype = storage_dtype(module, name)?;
    let key = items[2]
        .as_str()
        .ok_or_else(|| format!("storage key should be a str, found {}", items[2].kind()))?
        .to_string();
    let numel = non_negative(&items[4], "storage size")?;
    let view = match items.get(5) {
        None | Some(Value::None) => None,
        Some(meta) => match meta.as_seq() {
            Some([_view_key, offset, len]) => {
                let offset = non_negative(offset, "storage view offset")?;
                let len = non_negative(len, "storage view size")?;
                if offset.checked_add(len).is_none_or(|end| end > numel) {
                    return Err(format!(
                        "storage {key}: view [{offset}, +{len}) outside its {numel} elements"
                    ));
                }
                Some((offset, len))
            }
            _ => return Err(format!("storage {key}: bad view metadata {}", meta.kind())),
        },
    };
    Ok(StorageRef {
        key,
        dtype,
        numel,
        view,
    })
}

/// If `v` is a tensor, decodes it. `Ok(None)` for values that are not tensors (they are
/// skipped, like `_metadata` or an `epoch` count next to the weights).
fn parse_tensor(name: &str, v: &Value) -> Fallible<Option<TensorRef>> {
    let Some(call) = v.as_call() else {
        return Ok(None);
    };
    let Some(func) = call.func.as_global() else {
        return Ok(None);
    };
    parse_rebuild(name, func, call.args.as_seq().unwrap_or(&[]))
}

/// Decodes a call of one of PyTorch's tensor rebuild functions.
fn parse_rebuild(name: &str, func: (&str, &str), args: &[Value]) -> Fallible<Option<TensorRef>> {
    match func {
        // Parameters wrap a tensor: (tensor, requires_grad, backward_hooks[, state]).
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            let inner = args.first().ok_or("empty _rebuild_parameter call")?;
            parse_tensor(name, inner)?
                .map(Some)
                .ok_or_else(|| format!("parameter wraps {}, not a tensor", inner.kind()))
        }
        // Tensor subclasses: (func, type, args, state).
        ("torch._tensor", "_rebuild_from_type_v2") => match args {
            [f, _, inner, ..] => {
                let f = f
                    .as_global()
                    .ok_or("malformed _rebuild_from_type_v2 call")?;
                let inner = inner
                    .as_seq()
                    .ok_or("malformed _rebuild_from_type_v2 call")?;
                parse_rebuild(name, f, inner)
            }
            _ => Err("malformed _rebuild_from_type_v2 call".into()),
        },
        // (storage, storage_offset, size, stride[, requires_grad, backward_hooks, metadata]);
        // the older `_rebuild_tensor` has the first four only.
        ("torch._utils", f @ ("_rebuild_tensor_v2" | "_rebuild_tensor")) => {
            if args.len() < 4 {
                return Err(format!("{f} with {} arguments", args.len()));
            }
            let pid = args[0].persistent_id().ok_or_else(|| {
                format!("tensor storage is {}, not a persistent id", args[0].kind())
            })?;
            let storage = parse_storage(pid)?;
            let offset = non_negative(&args[1], "storage offset")?;
            let size = int_tuple(&args[2], "size")?;
            let stride = int_tuple(&args[3], "stride")?;
            if size.len() != stride.len() {
                return Err(format!(
                    "size {size:?} and stride {stride:?} differ in rank"
                ));
            }
            Ok(Some(TensorRef {
                name: name.to_string(),
                storage,
                offset,
                size,
                stride,
            }))
        }
        (m, f) if m.starts_with("torch") && f.starts_with("_rebuild") => Err(format!(
            "unsupported tensor kind {m}.{f} (quantized, sparse or nested?)"
        )),
        _ => Ok(None),
    }
}

/// The tensors of the state dict held by `root`, in the dict's order. `root` may be the state
/// dict itself or a checkpoint dict holding it under `state_dict` or `model`.
pub(crate) fn find_tensors(root: &Value) -> Fallible<Vec<TensorRef>> {
    let items = root.as_dict().ok_or_else(|| {
        format!(
            "the pickle holds {}, not a dict of tensors (a state dict)",
            root.kind()
        )
    })?;
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for (k, v) in items {
        let Some(name) = k.as_str() else { continue };
        let parsed = parse_tensor(name, v).map_err(|e| format!("tensor {name:?}: {e}"))?;
        if let Some(t) = parsed {
            if seen.insert(name.to_string(), ()).is_some() {
                return Err(format!("tensor {name:?} appears twice"));
            }
            out.push(t);
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    for wrapper in ["state_dict", "model"] {
        let inner = items.iter().find(|(k, _)| k.as_str() == Some(wrapper));
        if let Some((_, inner)) = inner {
            if inner.as_dict().is_some() {
                return find_tensors(inner).map_err(|e| format!("in '{wrapper}': {e}"));
            }
        }
    }
    Err(
        "no tensors found (expected a state dict, or a dict holding one under \
         'state_dict' or 'model')"
            .into(),
    )
}

/// The dtype and element count of every storage the tensors use, checking that references to
/// one key agree.
pub(crate) fn storage_table(tensors: &[TensorRef]) -> Fallible<HashMap<String, (DType, usize)>> {
    let mut table: HashMap<String, (DType, usize)> = HashMap::new();
    for t in tensors {
        let s = &t.storage;
        match table.get(&s.key) {
            Some(&(dtype, numel)) if dtype != s.dtype || numel != s.numel => {
                return Err(format!(
                    "storage {} is referenced as {numel} {dtype:?} and as {} {:?}",
                    s.key, s.numel, s.dtype
                ))
            }
            Some(_) => {}
            None => {
                table.insert(s.key.clone(), (s.dtype, s.numel));
            }
        }
    }
    Ok(table)
}

/// Cuts tensor `t` out of the bytes of its root storage (`numel` elements of its dtype,
/// little-endian). `max_bytes` caps the result: a view may repeat elements (stride 0), but not
/// without bound.
pub(crate) fn materialize(t: &TensorRef, storage: &[u8], max_bytes: usize) -> Fallible<Tensor> {
    let dtype = t.storage.dtype;
    let elsize = dtype.size_in_bytes();
    let storage_numel = storage.len() / elsize;
    let (base, limit) = match t.storage.view {
        Some((offset, len)) => (offset, len),
        None => (0, storage_numel),
    };
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n.checked_mul(elsize).is_some_and(|b| b <= max_bytes))
        .ok_or_else(|| format!("shape {:?} is implausibly large for this file", t.size))?;
    let mut bytes = Vec::with_capacity(numel * elsize);
    if numel > 0 {
        // Highest element index the view touches, relative to the storage (view) start.
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
            });
        if last.is_none_or(|last| last >= limit) {
            return Err(format!(
                "offset {} with size {:?} and stride {:?} reaches past the {limit} elements of \
                 storage {}",
                t.offset, t.size, t.stride, t.storage.key
            ));
        }
        gather(
            &mut bytes,
            storage,
            elsize,
            base + t.offset,
            &t.size,
            &t.stride,
        );
    }
    Tensor::from_raw_buffer(&bytes, dtype, &t.size, &Device::Cpu)
        .map_err(|e| format!("cannot build tensor: {e}"))
}

/// Appends the elements of a strided view to `out` in row-major order. Bounds were checked by
/// the caller; runs that are contiguous in the innermost dimension are copied in one go.
fn gather(
    out: &mut Vec<u8>,
    src: &[u8],
    elsize: usize,
    start: usize,
    size: &[usize],
    stride: &[usize],
) {
    let rank = size.len();
    if rank == 0 {
        out.extend_from_slice(&src[start * elsize..(start + 1) * elsize]);
        return;
    }
    // Collapse the trailing dimensions that are laid out contiguously into one run.
    let mut run = 1usize;
    let mut outer = rank;
    while outer > 0 && (size[outer - 1] == 1 || stride[outer - 1] == run) {
        run *= size[outer - 1];
        outer -= 1;
    }
    let run_bytes = run * elsize;
    let mut index = vec![0usize; outer];
    loop {
        let pos = start + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&src[pos * elsize..pos * elsize + run_bytes]);
        // Odometer over the non-contiguous outer dimensions.
        let mut d = outer;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < size[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tref(offset: usize, size: &[usize], stride: &[usize], numel: usize) -> TensorRef {
        TensorRef {
            name: "t".into(),
            storage: StorageRef {
                key: "0".into(),
                dtype: DType::U8,
                numel,
                view: None,
            },
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        }
    }

    fn bytes(t: &Tensor) -> Vec<u8> {
        t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
    }

    #[test]
    fn transposed_view_is_read_in_row_major_order() {
        let storage: Vec<u8> = (0..6).collect(); // a 2x3 matrix
        let t = materialize(&tref(0, &[3, 2], &[1, 3], 6), &storage, 1 << 20).unwrap();
        assert_eq!(bytes(&t), [0, 3, 1, 4, 2, 5]);
        assert_eq!(t.dims(), [3, 2]);
    }

    #[test]
    fn offset_slice_and_scalar_and_broadcast() {
        let storage: Vec<u8> = (0..10).collect();
        let t = materialize(&tref(4, &[2, 2], &[3, 1], 10), &storage, 1 << 20).unwrap();
        assert_eq!(bytes(&t), [4, 5, 7, 8]);
        let s = materialize(&tref(9, &[], &[], 10), &storage, 1 << 20).unwrap();
        assert_eq!(s.dims(), [] as [usize; 0]);
        assert_eq!(bytes(&s), [9]);
        let b = materialize(&tref(2, &[3], &[0], 10), &storage, 1 << 20).unwrap();
        assert_eq!(bytes(&b), [2, 2, 2]);
        let e = materialize(&tref(10, &[0, 4], &[4, 1], 10), &storage, 1 << 20).unwrap();
        assert_eq!(e.dims(), [0, 4]);
    }

    #[test]
    fn out_of_range_views_and_huge_shapes_are_errors() {
        let storage: Vec<u8> = (0..10).collect();
        let err = materialize(&tref(8, &[3], &[1], 10), &storage, 1 << 20).unwrap_err();
        assert!(err.contains("reaches past"), "{err}");
        let err = materialize(
            &tref(0, &[1 << 40, 1 << 40], &[0, 0], 10),
            &storage,
            1 << 20,
        )
        .unwrap_err();
        assert!(err.contains("implausibly large"), "{err}");
        let err = materialize(&tref(0, &[100], &[0], 10), &storage, 50).unwrap_err();
        assert!(err.contains("implausibly large"), "{err}");
    }
}
