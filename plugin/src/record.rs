//! What a stored point holds: the payload documents of tasks and experts, and the records the
//! store hands back.
//!
//! Payload fields are flat where a query may filter on them (`samples`, `n_classes`,
//! `tag_pairs`, `dataset_uri`, ...) and the embedding's whole metadata rides along under
//! `meta` as JSON text (minus its layout, which is the store's and lives once in its manifest),
//! so a stored task reads back as the exact [`Embedding`] that was written. Text rather than a
//! nested object because Qdrant's gRPC payload values have no unsigned 64-bit integer: a seed
//! above 2^63 would come back altered from a server. docs/schema.md is the field-by-field
//! contract.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use task2vec::embedding::{Embedding, EmbeddingMeta};
use uuid::Uuid;

use crate::{Error, Result};

/// Version of the payload documents written by this crate.
pub const PAYLOAD_SCHEMA: u32 = 2;

/// Free-form string labels (owner, team, domain, ...). Stored as the object `tags` and, for
/// indexed filtering, as the keyword array `tag_pairs` of `key=value` strings (so a key may not
/// contain `=`).
pub type Tags = BTreeMap<String, String>;

/// The `tag_pairs` payload value of `tags`: `key=value` for each pair, in key order.
///
/// Errors: [`Error::Mismatch`] for an empty key or a key containing `=`, which would make the
/// pair ambiguous.
pub fn tag_pairs(tags: &Tags) -> Result<Vec<String>> {
    tags.iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                Err(Error::Mismatch(format!(
                    "tag key `{k}`: a tag key must be non-empty and contain no `=`"
                )))
            } else {
                Ok(tag_pair(k, v))
            }
        })
        .collect()
}

/// One `tag_pairs` entry.
pub(crate) fn tag_pair(key: &str, value: &str) -> String {
    format!("{key}={value}")
}

/// (De)serialises a value as JSON text inside the payload.
mod json_text {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(v).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}

/// Payload of a point of the `tasks` collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TaskPayload {
    pub schema: u32,
    pub dataset_uri: String,
    pub fingerprint: String,
    pub classes: Vec<String>,
    pub n_classes: usize,
    /// Distinct images whose features were computed.
    pub samples: usize,
    pub probe: String,
    pub weights_sha256: String,
    pub estimator: String,
    pub norm: f64,
    /// When the embedding was computed.
    pub created: String,
    /// When it was written to the store.
    pub stored_at: String,
    pub tags: Tags,
    /// `key=value` for each tag (keyword-indexed).
    pub tag_pairs: Vec<String>,
    /// Whether the point has a `scale` vector (absent means all ones).
    pub has_scale: bool,
    /// `d_sym(task, trivial)`: the complexity term of the asymmetric distance, `null` while the
    /// store knows no trivial embedding.
    pub complexity: Option<f64>,
    /// The mark of the trivial embedding `complexity` and the index vector were derived with
    /// ([`crate::Store::trivial_mark`]), `none` while the store knows none (empty: written
    /// before the field existed).
    #[serde(default)]
    pub t0: String,
    /// Euclidean norm of the index vector (the formula query uses it).
    #[serde(default)]
    pub index_norm: f64,
    /// The embedding's metadata with an empty layout, as JSON text.
    #[serde(with = "json_text")]
    pub meta: EmbeddingMeta,
}

/// Payload of a point of the `experts` collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ExpertPayload {
    pub schema: u32,
    pub key: String,
    pub name: String,
    pub weights_uri: String,
    pub tags: Tags,
    /// `key=value` for each tag (keyword-indexed).
    pub tag_pairs: Vec<String>,
    pub metrics: BTreeMap<String, f64>,
    /// Point id (in `tasks`) of the task the expert was trained on.
    pub trained_on_task: Uuid,
    pub trained_on_uri: String,
    pub trained_on_fingerprint: String,
    pub probe: String,
    pub weights_sha256: String,
    pub estimator: String,
    pub norm: f64,
    pub stored_at: String,
    pub has_scale: bool,
    /// `d_sym(training task, trivial)`, `null` while the store knows no trivial embedding.
    pub complexity: Option<f64>,
    /// As in the task payload.
    #[serde(default)]
    pub t0: String,
    /// As in the task payload.
    #[serde(default)]
    pub index_norm: f64,
    /// The training task's embedding metadata with an empty layout, as JSON text.
    #[serde(with = "json_text")]
    pub meta: EmbeddingMeta,
}

/// The fields of an expert's payload that a ranking shows, read without parsing the rest
/// (`meta` above all, JSON text of about 1.5 kB): `select` reads one per shortlisted expert.
#[derive(Debug, Deserialize)]
pub(crate) struct ExpertRankFields {
    pub key: String,
    pub name: String,
    pub complexity: Option<f64>,
}

/// The fields of a task's payload that [`crate::SimilarTask`] shows, read without parsing the
/// rest.
#[derive(Debug, Deserialize)]
pub(crate) struct TaskHitFields {
    pub dataset_uri: String,
    pub fingerprint: String,
    pub n_classes: usize,
    pub samples: usize,
    pub stored_at: String,
    pub tags: Tags,
}

/// A stored task, read back whole.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTask {
    /// Its point id ([`crate::task_point_id`]).
    pub id: Uuid,
    /// The embedding as it was written (raw hessian and scale, full metadata).
    pub embedding: Embedding,
    /// Its tags.
    pub tags: Tags,
    /// When it was written, RFC 3339 UTC.
    pub stored_at: String,
}

/// A stored task as listed (no vectors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Its point id.
    pub id: Uuid,
    /// The dataset's path or URI.
    pub dataset_uri: String,
    /// The dataset's fingerprint.
    pub fingerprint: String,
    /// Number of classes.
    pub n_classes: usize,
    /// Distinct images whose features were computed.
    pub samples: usize,
    /// Euclidean norm of the hessian.
    pub norm: f64,
    /// Its tags.
    pub tags: Tags,
    /// When it was written, RFC 3339 UTC.
    pub stored_at: String,
}

/// An expert (a pretrained model of the zoo) as the user describes it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Expert {
    /// The user's id for it (unique in the zoo; the point id derives from it).
    pub key: String,
    /// Display name.
    pub name: String,
    /// Where its weights are.
    pub weights_uri: String,
    /// Free-form labels.
    pub tags: Tags,
    /// Free-form metrics (accuracy on its training task, ...).
    pub metrics: BTreeMap<String, f64>,
}

/// A stored expert, read back whole.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredExpert {
    /// Its point id ([`crate::expert_point_id`]).
    pub id: Uuid,
    /// The expert as described.
    pub expert: Expert,
    /// The embedding of the task it was trained on (its `model2vec` vector until Model2Vec
    /// biases are learned).
    pub trained_on: Embedding,
    /// The point id that task has (or would have) in `tasks`.
    pub trained_on_task: Uuid,
    /// When it was written, RFC 3339 UTC.
    pub stored_at: String,
}

impl From<(Uuid, &TaskPayload)> for TaskSummary {
    fn from((id, p): (Uuid, &TaskPayload)) -> Self {
        TaskSummary {
            id,
            dataset_uri: p.dataset_uri.clone(),
            fingerprint: p.fingerprint.clone(),
            n_classes: p.n_classes,
            samples: p.samples,
            norm: p.norm,
            tags: p.tags.clone(),
            stored_at: p.stored_at.clone(),
        }
    }
}
