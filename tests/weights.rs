//! Weight readers against real files: the EfficientNet-Lite0 legacy `.pth`, and tiny PyTorch
//! checkpoints in every format written by `tools/gen_weight_fixtures.py`, whose expected
//! values (and `tensors_sha256`, recomputed in Python) come from PyTorch itself.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use task2vec::probe::weights::{
    cache_as_safetensors, file_sha256, read_tensor_map, read_tensors, tensors_sha256,
};
use task2vec::Error;

const LITE0_SHA256: &str = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db";

fn data(name: &str) -> PathBuf {
    common::root().join("tests/data/weights").join(name)
}

fn json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(data(name)).expect("read expected JSON");
    serde_json::from_str(&text).expect("parse expected JSON")
}

fn le_bytes(t: &Tensor) -> Vec<u8> {
    let mut out = Vec::new();
    t.write_bytes(&mut out).expect("tensor bytes");
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Asserts `tensors` are exactly the tiny fixture's state dict: order, dtypes, shapes, bytes.
fn assert_tiny(tensors: &[(String, Tensor)], source: &str) {
    let expected = json("tiny_expected.json");
    let expected = expected["tensors"].as_array().unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = expected
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, want, "{source}: names or order");
    for ((name, t), e) in tensors.iter().zip(expected) {
        assert_eq!(
            t.dtype().as_str(),
            e["dtype"].as_str().unwrap(),
            "{source}: {name} dtype"
        );
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.dims(), shape.as_slice(), "{source}: {name} shape");
        assert_eq!(
            hex(&le_bytes(t)),
            e["hex"].as_str().unwrap(),
            "{source}: {name} bytes"
        );
    }
}

#[test]
fn legacy_lite0_reads_296_tensors_in_file_order_with_torch_shapes() {
    let path = common::efficientnet_lite0_pth();
    assert_eq!(file_sha256(&path).unwrap(), LITE0_SHA256);
    let tensors = read_tensors(&path).unwrap();
    let facts = json("efficientnet_lite0_expected.json");
    let keys: Vec<&str> = facts["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(tensors.len(), 296);
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, keys, "state-dict order as torch.load gives it");

    let map = read_tensor_map(&path).unwrap();
    assert_eq!(map.len(), 296);
    assert_eq!(map["_conv_stem.weight"].dims(), [32, 3, 3, 3]);
    assert_eq!(map["_fc.weight"].dims(), [1000, 1280]);
    assert_eq!(
        map["_blocks.15._project_conv.weight"].dims(),
        [320, 1152, 1, 1]
    );
    let nbt = &map["_bn0.num_batches_tracked"];
    assert_eq!(nbt.dtype(), DType::I64);
    assert_eq!(nbt.dims(), [] as [usize; 0]);
    assert_eq!(map["_fc.weight"].dtype(), DType::F32);
}

#[test]
fn legacy_lite0_values_match_torch_and_are_sane() {
    let path = common::efficientnet_lite0_pth();
    let tensors = read_tensors(&path).unwrap();
    let facts = json("efficientnet_lite0_expected.json");
    // The whole set, bit for bit, against the hash PyTorch's own reading gives.
    assert_eq!(
        tensors_sha256(&tensors).unwrap(),
        facts["tensors_sha256"].as_str().unwrap()
    );

    let map: std::collections::HashMap<_, _> = tensors.iter().cloned().collect();
    for (name, f) in facts["picked"].as_object().unwrap() {
        let t = &map[name];
        let v = f64s(t);
        let sum: f64 = v.iter().sum();
        let want = f["sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{name}: sum {sum} vs {want}"
        );
        // The picked tensors are f32 / i64; JSON decimals round-trip exactly at f32 precision.
        for (got, want) in v.iter().zip(f["first"].as_array().unwrap()) {
            assert_eq!(
                *got as f32,
                want.as_f64().unwrap() as f32,
                "{name}: leading values"
            );
        }
    }
    let (mut running_vars, mut zero_vars) = (0, 0);
    for (name, t) in &tensors {
        if t.dtype() == DType::F32 {
            assert!(
                f64s(t).iter().all(|x| x.is_finite()),
                "{name} has non-finite values"
            );
        }
        if name.ends_with("running_var") {
            running_vars += 1;
            let v = f64s(t);
            assert!(
                v.iter().all(|&x| x >= 0.0),
                "{name} has a negative variance"
            );
            zero_vars += v.iter().filter(|&&x| x == 0.0).count();
        }
    }
    assert_eq!(running_vars, 49);
    // This checkpoint has dead channels whose running variance is exactly 0 (torch.load counts
    // 130 of its 21,008 BN channels): BN must add eps. Any other count would be a misreading.
    assert_eq!(zero_vars, 130);
}

#[test]
fn tiny_fixtures_give_torch_values_in_every_format() {
    for file in [
        "tiny_legacy.pth",
        "tiny_legacy_p4.pth",
        "tiny_zip.pth",
        "tiny_wrapped_legacy.pth",
        "tiny_wrapped_zip.pth",
    ] {
        let tensors = read_tensors(&data(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_tiny(&tensors, file);
        let want = json("tiny_expected.json");
        assert_eq!(
            tensors_sha256(&tensors).unwrap(),
            want["tensors_sha256"].as_str().unwrap()
        );
    }
}

#[test]
fn tiny_views_and_shared_storages_hold_torch_semantics() {
    let map = read_tensor_map(&data("tiny_legacy.pth")).unwrap();
    let base = f64s(&map["base"]); // 0..15 as 3x5
    let transposed = &map["transposed"];
    assert_eq!(transposed.dims(), [5, 3]);
    let tv = f64s(transposed);
    for i in 0..5 {
        for j in 0..3 {
            assert_eq!(tv[i * 3 + j], base[j * 5 + i]);
        }
    }
    assert_eq!(
        f64s(&map["every_other"]),
        [1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0]
    );
    // shared_b starts 4 elements into the storage shared_a starts at: they overlap in 2.
    let a = f64s(&map["shared_a"]);
    let b = f64s(&map["shared_b"]);
    assert_eq!(a[4..6], b[0..2]);
    assert_eq!(f64s(&map["scalar"]), [3.25]);
    assert_eq!(map["scalar"].dims(), [] as [usize; 0]);
    assert_eq!(map["mask"].dtype(), DType::U8);
    assert_eq!(map["bn.num_batches_tracked"].to_scalar::<i64>().unwrap(), 7);
}

#[test]
fn cache_round_trip_is_bit_exact_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::efficientnet_lite0_pth();
    let original = read_tensors(&src).unwrap();
    let cached = cache_as_safetensors(&src, dir.path()).unwrap();
    assert_eq!(
        cached,
        dir.path()
            .join("efficientnet-lite0-57934424-579344248a93e230.safetensors")
    );
    let back = read_tensors(&cached).unwrap();
    assert_eq!(back.len(), original.len());
    for ((n1, t1), (n2, t2)) in original.iter().zip(&back) {
        assert_eq!(n1, n2, "cache keeps the state-dict order");
        assert_eq!(t1.dtype(), t2.dtype(), "{n1}");
        assert_eq!(t1.dims(), t2.dims(), "{n1}");
        assert_eq!(le_bytes(t1), le_bytes(t2), "{n1}");
    }
    assert_eq!(
        tensors_sha256(&original).unwrap(),
        tensors_sha256(&back).unwrap()
    );
    // Nothing but the cache file is left in the folder (the temporary file was renamed).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // A second call must reuse the entry, not rewrite it: replace the entry's content with the
    // tiny fixture's cache and check that this is what the second call hands back.
    let tiny_cache = cache_as_safetensors(&data("tiny_zip.pth"), dir.path()).unwrap();
    assert_tiny(&read_tensors(&tiny_cache).unwrap(), "tiny zip cache");
    std::fs::copy(&tiny_cache, &cached).unwrap();
    let again = cache_as_safetensors(&src, dir.path()).unwrap();
    assert_eq!(again, cached);
    assert_tiny(&read_tensors(&again).unwrap(), "reused cache entry");
}

#[test]
fn legacy_and_zip_caches_are_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let a = cache_as_safetensors(&data("tiny_legacy.pth"), dir.path()).unwrap();
    let b = cache_as_safetensors(&data("tiny_zip.pth"), dir.path()).unwrap();
    assert_ne!(a, b, "different sources, different entries");
    let ha = tensors_sha256(&read_tensors(&a).unwrap()).unwrap();
    let hb = tensors_sha256(&read_tensors(&b).unwrap()).unwrap();
    assert_eq!(ha, hb);
}

#[test]
fn foreign_safetensors_files_are_read_in_data_order() {
    // Written by candle, without the order metadata the cache records.
    let dir = tempfile::tempdir().unwrap();
    let tiny = read_tensor_map(&data("tiny_zip.pth")).unwrap();
    let path = dir.path().join("candle.safetensors");
    candle_core::safetensors::save(&tiny, &path).unwrap();
    let back = read_tensors(&path).unwrap();
    assert_eq!(back.len(), tiny.len());
    // safetensors lays data out grouped by dtype, by name within a group: that is the order.
    let mut groups: Vec<DType> = Vec::new();
    for w in back.windows(2) {
        let ((n1, t1), (n2, t2)) = (&w[0], &w[1]);
        if t1.dtype() == t2.dtype() {
            assert!(n1 < n2, "{n1} before {n2}");
        } else {
            groups.push(t1.dtype());
            assert!(
                !groups.contains(&t2.dtype()),
                "dtype {:?} split",
                t2.dtype()
            );
        }
    }
    for (name, t) in &back {
        assert_eq!(t.dtype(), tiny[name].dtype(), "{name}");
        assert_eq!(t.dims(), tiny[name].dims(), "{name}");
        assert_eq!(le_bytes(t), le_bytes(&tiny[name]), "{name}");
    }
}

// ----- corrupt input -----

/// Asserts `path` is rejected with `Error::Weights` naming it and mentioning `what`.
fn assert_rejected(path: &Path, what: &str) -> String {
    match read_tensors(path) {
        Err(Error::Weights { path: p, what: w }) => {
            assert_eq!(p, path, "the error names the file");
            assert!(
                w.contains(what),
                "{}: expected '{what}' in: {w}",
                path.display()
            );
            w
        }
        Err(other) => panic!("{}: wrong error kind {other:?}", path.display()),
        Ok(t) => panic!("{}: accepted ({} tensors)", path.display(), t.len()),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn empty_text_and_random_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    assert_rejected(&write(dir.path(), "empty.pth", b""), "empty file");
    assert_rejected(
        &write(dir.path(), "notes.pth", b"these are not weights\n"),
        "unrecognised",
    );
    // Deterministic pseudo-random bytes (xorshift), several seeds and sizes, each also with a
    // leading PROTO byte so that the pickle path is exercised too.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for (i, len) in [1usize, 7, 64, 4096, 100_000].into_iter().enumerate() {
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(read_tensors(&write(dir.path(), &format!("r{i}.bin"), &bytes)).is_err());
        bytes[0] = 0x80;
        let p = write(dir.path(), &format!("p{i}.bin"), &bytes);
        assert!(matches!(read_tensors(&p), Err(Error::Weights { .. })));
    }
    // A missing file is an I/O error naming it.
    let missing = dir.path().join("missing.pth");
    assert!(matches!(read_tensors(&missing), Err(Error::Io { path, .. }) if path == missing));
}

#[test]
fn truncated_legacy_files_are_rejected_at_every_cut() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(data("tiny_legacy.pth")).unwrap();
    // Every cut of the tiny file: inside each pickle, between pickles, inside the data.
    for cut in 1..full.len() {
        let p = write(dir.path(), "cut.pth", &full[..cut]);
        match read_tensors(&p) {
            Err(Error::Weights { path, what }) => {
                assert_eq!(path, p);
                assert!(!what.is_empty());
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // A few cuts of the real file: in its main pickle, in the key list, in the data, 1 byte short.
    let real = std::fs::read(common::efficientnet_lite0_pth()).unwrap();
    for cut in [200, 30_000, 47_000, 5_000_000, real.len() - 1] {
        let p = write(dir.path(), "real_cut.pth", &real[..cut]);
        assert_rejected(&p, "truncated");
    }
}

#[test]
fn truncated_and_damaged_zip_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(data("tiny_zip.pth")).unwrap();
    for cut in [10, full.len() / 2, full.len() - 30] {
        let p = write(dir.path(), "cut.pth", &full[..cut]);
        assert_rejected(&p, "zip");
    }
}

#[test]
fn unsupported_storage_types_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(data("tiny_legacy.pth")).unwrap();
    let at = bytes.windows(11).position(|w| w == b"HalfStorage").unwrap();
    bytes[at..at + 11].copy_from_slice(b"CharStorage");
    let p = write(dir.path(), "char.pth", &bytes);
    assert_rejected(&p, "unsupported storage type torch.CharStorage");
}

/// Writes a minimal legacy checkpoint by hand: one FloatStorage `key` of `numel` elements
/// declared in the pickle (`data_count` written before `data`), one tensor using it.
fn legacy_file(
    numel: i32,
    data_count: u64,
    data: &[f32],
    offset: u8,
    size: &[u8],
    stride: &[u8],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."); // magic
    b.extend(b"\x80\x02M\xe9\x03."); // protocol 1001
    b.extend(b"\x80\x02}."); // sys_info
    b.extend(b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(");
    b.extend(
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00kX\x03\x00\x00\x00cpuJ",
    );
    b.extend(numel.to_le_bytes());
    b.extend(b"NtQK");
    b.push(offset);
    for dims in [size, stride] {
        b.push(b'(');
        for &d in dims {
            b.extend([b'K', d]);
        }
        b.push(b't');
    }
    b.extend(b"\x89}tRs.");
    b.extend(b"\x80\x02]X\x01\x00\x00\x00ka.");
    b.extend(data_count.to_le_bytes());
    for v in data {
        b.extend(v.to_le_bytes());
    }
    b
}

#[test]
fn hand_built_legacy_file_reads_and_bad_headers_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let vals = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    // A correct file: a 2x2 view at offset 1 with strides (2, 1): [[1, 2], [3, 4]].
    let ok = write(
        dir.path(),
        "ok.pth",
        &legacy_file(6, 6, &vals, 1, &[2, 2], &[2, 1]),
    );
    let t = read_tensors(&ok).unwrap();
    assert_eq!(t[0].0, "w");
    assert_eq!(f64s(&t[0].1), [1.0, 2.0, 3.0, 4.0]);

    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "offset.pth",
            legacy_file(6, 6, &vals, 3, &[2, 2], &[2, 1]),
            "reaches past",
        ),
        (
            "stride.pth",
            legacy_file(6, 6, &vals, 0, &[2, 2], &[9, 1]),
            "reaches past",
        ),
        // A header claiming ~2 billion elements must not allocate them.
        (
            "numel.pth",
            legacy_file(i32::MAX, i32::MAX as u64, &vals, 0, &[2], &[1]),
            "truncated",
        ),
        (
            "count.pth",
            legacy_file(6, 5, &vals, 0, &[2], &[1]),
            "declares 6",
        ),
    ];
    for (name, bytes, what) in cases {
        assert_rejected(&write(dir.path(), name, &bytes), what);
    }
}
