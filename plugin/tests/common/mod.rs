//! Shared helpers of the plugin's integration tests: realistic embeddings built from the
//! reference fixture (five EfficientNet-Lite0 Monte-Carlo embeddings of MNIST and
//! Fashion-MNIST tasks, `embeddings.hessian` [5, 42016]) and their real layout.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use safetensors::SafeTensors;
use task2vec::dataset::{Format, Preprocess};
use task2vec::embedding::{
    DatasetRecord, EmbedSettings, Embedding, EmbeddingMeta, HeadRecord, LayoutEntry, ProbeRecord,
    SampleCounts, FORMAT_VERSION,
};

/// SHA-256 of the EfficientNet-Lite0 weights the fixture was made with.
pub const WEIGHTS_SHA256: &str = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db";

/// The names of the fixture's five tasks, in its order (the last is the random-label t0).
pub const TASKS: [&str; 5] = [
    "mnist_0-4",
    "mnist_5-9",
    "fashion_tops",
    "fashion_footwear",
    "mnist_random_labels",
];

/// A conformance fixture (`../../shared/fixtures/conformance/FILE` from this crate).
pub fn conformance(file: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/conformance")
        .join(file);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

/// The five reference hessians.
pub fn fixture_hessians() -> &'static Vec<Vec<f32>> {
    static H: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    H.get_or_init(|| {
        let path = conformance("distances.safetensors");
        let bytes = std::fs::read(&path).expect("read distances.safetensors");
        let st = SafeTensors::deserialize(&bytes).expect("parse distances.safetensors");
        let t = st.tensor("embeddings.hessian").expect("embeddings.hessian");
        assert_eq!(t.shape(), &[5, 42016]);
        let all: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        all.chunks(42016).map(<[f32]>::to_vec).collect()
    })
}

/// The fixture's layout (`fisher_layout.json`).
pub fn fixture_layout() -> &'static Vec<LayoutEntry> {
    static L: OnceLock<Vec<LayoutEntry>> = OnceLock::new();
    L.get_or_init(|| {
        let text = std::fs::read_to_string(conformance("fisher_layout.json"))
            .expect("read fisher_layout.json");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("parse fisher_layout.json");
        serde_json::from_value(doc["modules"].clone()).expect("layout entries")
    })
}

/// A deterministic standard-normal stream (SplitMix64 + Box-Muller), so tests need no RNG
/// crate and every run sees the same vectors.
pub struct Normal(u64);

impl Normal {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Normal(seed)
    }

    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// The next draw.
    pub fn next(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Fixture task `base` with multiplicative log-normal noise of spread `sigma` on every
/// coordinate (zeros stay zero, as a Fisher entry that is exactly 0 does).
pub fn perturbed(base: usize, sigma: f64, seed: u64) -> Vec<f32> {
    let mut n = Normal::new(seed);
    fixture_hessians()[base]
        .iter()
        .map(|&h| (f64::from(h) * (sigma * n.next()).exp()) as f32)
        .collect()
}

/// A Monte-Carlo EfficientNet-Lite0 embedding of a dataset called `name` with this hessian,
/// with metadata as the pipeline records it.
pub fn embedding(name: &str, hessian: Vec<f32>) -> Embedding {
    let norm = hessian
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    let n = hessian.len();
    Embedding {
        scale: vec![1.0; n],
        meta: EmbeddingMeta {
            format_version: FORMAT_VERSION,
            library_version: "0.1.0".into(),
            created: "2026-11-28T08:05:03Z".into(),
            probe: ProbeRecord {
                arch: "efficientnet-lite0".into(),
                weights_sha256: WEIGHTS_SHA256.into(),
                feature_dim: 1280,
                preprocess: Preprocess {
                    resize_shorter: 64,
                    crop: 64,
                    ..Preprocess::efficientnet_lite()
                },
            },
            settings: EmbedSettings {
                image_size: Some(64),
                ..EmbedSettings::default()
            },
            layout: fixture_layout().clone(),
            dataset: DatasetRecord {
                path: format!("/data/{name}"),
                fingerprint: fingerprint(name),
                format: Format::Idx,
                classes: (0..5).map(|c| format!("class{c}")).collect(),
                items: 320,
            },
            samples: SampleCounts {
                features: 320,
                fisher: 9984,
                skipped: 0,
            },
            head: HeadRecord {
                final_loss: Some(0.25),
                train_accuracy: 0.95,
            },
            norm,
        },
        hessian,
    }
}

/// A stable stand-in for a dataset fingerprint (64 hex digits derived from the name).
pub fn fingerprint(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::new();
    for round in 0..4u8 {
        for b in name.bytes().chain([round]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

/// The embedding of fixture task `i` under its own name.
pub fn fixture_embedding(i: usize) -> Embedding {
    embedding(TASKS[i], fixture_hessians()[i].clone())
}

/// A synthetic task between the four real ones: the log-space mixture of fixture tasks 0–3
/// with `weights` (normalised here), times per-coordinate log-normal noise of spread `sigma`.
/// A coordinate that is 0 in every real task stays 0.
pub fn mixture(weights: [f64; 4], sigma: f64, seed: u64) -> Vec<f32> {
    let total: f64 = weights.iter().sum();
    let bases = fixture_hessians();
    let mut n = Normal::new(seed);
    (0..bases[0].len())
        .map(|i| {
            let mut log = 0.0;
            let mut zero = true;
            for (k, w) in weights.iter().enumerate() {
                let h = f64::from(bases[k][i]);
                zero &= h == 0.0;
                // A zero in some of the tasks: treat as a tiny value so the mix stays finite.
                log += w / total * h.max(1e-12).ln();
            }
            if zero {
                0.0
            } else {
                (log + sigma * n.next()).exp() as f32
            }
        })
        .collect()
}

/// Random mixture weights (squared normals plus a little, a rough Dirichlet) and a noise
/// spread in [0.1, 0.5], from one stream.
pub fn random_mixture(n: &mut Normal, seed: u64) -> Vec<f32> {
    let w = [0, 1, 2, 3].map(|_| n.next().powi(2) + 0.05);
    let sigma = 0.1 + 0.4 * n.next().abs().min(1.0);
    mixture(w, sigma, seed)
}

/// The random-label reference embedding (fixture task 4) as a trivial embedding.
pub fn trivial_embedding() -> Embedding {
    let mut t = fixture_embedding(4);
    t.meta.settings.random_labels = true;
    t
}
