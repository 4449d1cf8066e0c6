//! The embedding file: an exact round trip through safetensors, what other readers see, and a
//! clear error for every kind of bad file. One real embedding (MNIST, EfficientNet-Lite0, tiny
//! settings) is computed once and shared.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use task2vec::dataset::{Dataset, IdxSplit, OpenOptions};
use task2vec::embedding::{EmbedSettings, Embedding, FisherPassSettings, METADATA_KEY};
use task2vec::head::HeadSettings;
use task2vec::pipeline::embed;
use task2vec::probe::efficientnet_lite::EfficientNetLite0;
use task2vec::Error;

fn embedding() -> &'static Embedding {
    static E: OnceLock<Embedding> = OnceLock::new();
    E.get_or_init(|| {
        let probe =
            EfficientNetLite0::load(&common::efficientnet_lite0_pth(), &Device::Cpu, DType::F32)
                .expect("load EfficientNet-Lite0");
        let mnist = Dataset::open(
            &common::mnist_dir(),
            &OpenOptions::default().idx_split(IdxSplit::Test),
        )
        .expect("open MNIST");
        let settings = EmbedSettings {
            max_samples: 16,
            image_size: Some(64),
            head: HeadSettings {
                epochs: 1,
                draws_per_epoch: 64,
                ..HeadSettings::default()
            },
            fisher: FisherPassSettings {
                draws: 16,
                batch_size: 16,
                ..FisherPassSettings::default()
            },
            skip_stages: 16,
            ..EmbedSettings::default()
        };
        embed(&mnist, &probe, &settings, &mut |_| {}).expect("embed MNIST")
    })
}

/// Writes a safetensors file with the given tensors (f32 vectors) and metadata.
fn write_safetensors(path: &Path, tensors: &[(&str, &[f32])], meta: Option<(&str, String)>) {
    let bytes: Vec<(String, Vec<u8>, usize)> = tensors
        .iter()
        .map(|(n, v)| {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.to_string(), b, v.len())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, len)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, vec![*len], b).unwrap(),
            )
        })
        .collect();
    let meta = meta.map(|(k, v)| HashMap::from([(k.to_string(), v)]));
    std::fs::write(path, safetensors::serialize(views, meta).unwrap()).unwrap();
}

fn invalid_message(path: &Path) -> String {
    match Embedding::load(path) {
        Err(Error::Invalid { path: p, what }) => {
            assert_eq!(p, path, "the error names the file");
            what
        }
        r => panic!("{}: expected Error::Invalid, got {r:?}", path.display()),
    }
}

#[test]
fn save_then_load_is_exact() {
    let e = embedding();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mnist.t2v.safetensors");
    e.save(&path).unwrap();
    let back = Embedding::load(&path).unwrap();
    assert_eq!(
        &back, e,
        "vectors (bit for bit) and metadata survive the round trip"
    );
    back.check_comparable(e).unwrap();
    // Saving over an existing file replaces it and leaves no temporary file behind.
    e.save(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|f| f.unwrap().file_name())
        .collect();
    assert_eq!(names, ["mnist.t2v.safetensors"]);
}

#[test]
fn any_safetensors_reader_sees_two_vectors_and_a_json_document() {
    let e = embedding();
    let bytes = e.to_bytes().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort_unstable();
    assert_eq!(names, ["hessian", "scale"]);
    let hessian = st.tensor("hessian").unwrap();
    assert_eq!(
        (hessian.dtype(), hessian.shape()),
        (Dtype::F32, &[e.len()][..])
    );
    let first = f32::from_le_bytes(hessian.data()[..4].try_into().unwrap());
    assert_eq!(first.to_bits(), e.hessian[0].to_bits());

    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let json = &header.metadata().as_ref().unwrap()[METADATA_KEY];
    let doc: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(doc["format_version"], 1);
    assert_eq!(doc["probe"]["arch"], "efficientnet-lite0");
    assert_eq!(doc["settings"]["fisher"]["estimator"], "monte-carlo");
    assert_eq!(doc["settings"]["bn"], "eval");
    assert_eq!(doc["settings"]["skip_stages"], 16);
    assert_eq!(doc["samples"]["features"], 16);
    assert_eq!(doc["layout"].as_array().unwrap().len(), e.meta.layout.len());
    assert_eq!(doc["dataset"]["format"], "idx");
}

#[test]
fn bad_files_fail_to_load_with_a_reason() {
    let e = embedding();
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);

    match Embedding::load(&at("absent.safetensors")) {
        Err(Error::Io { path, .. }) => assert_eq!(path, at("absent.safetensors")),
        r => panic!("expected an I/O error, got {r:?}"),
    }

    std::fs::write(at("text"), "hessian = [1, 2, 3]\n").unwrap();
    assert!(invalid_message(&at("text")).contains("not a safetensors file"));

    let full = e.to_bytes().unwrap();
    std::fs::write(at("truncated"), &full[..full.len() - 10]).unwrap();
    assert!(invalid_message(&at("truncated")).contains("not a safetensors file"));

    write_safetensors(&at("weights"), &[("hessian", &[1.0, 2.0])], None);
    assert!(invalid_message(&at("weights")).contains("not a Task2Vec embedding"));

    let mut doc = serde_json::to_value(&e.meta).unwrap();
    doc["format_version"] = 99.into();
    let tensors: [(&str, &[f32]); 2] = [("hessian", &e.hessian), ("scale", &e.scale)];
    write_safetensors(
        &at("future"),
        &tensors,
        Some((METADATA_KEY, doc.to_string())),
    );
    let m = invalid_message(&at("future"));
    assert!(m.contains("version 99 is not supported"), "{m}");

    let meta = serde_json::to_string(&e.meta).unwrap();
    write_safetensors(
        &at("short"),
        &[("hessian", &e.hessian[1..]), ("scale", &e.scale[1..])],
        Some((METADATA_KEY, meta.clone())),
    );
    let m = invalid_message(&at("short"));
    assert!(m.contains("the layout describes"), "{m}");

    write_safetensors(
        &at("no-scale"),
        &[("hessian", &e.hessian)],
        Some((METADATA_KEY, meta)),
    );
    assert!(invalid_message(&at("no-scale")).contains("`scale` is missing"));

    write_safetensors(&at("not-json"), &tensors, Some((METADATA_KEY, "{".into())));
    assert!(invalid_message(&at("not-json")).contains("not JSON"));
}

#[test]
fn saving_into_a_missing_folder_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-folder").join("e.safetensors");
    match embedding().save(&path) {
        Err(Error::Io { path: p, .. }) => assert_eq!(p, path),
        r => panic!("expected an I/O error, got {r:?}"),
    }
}
