//! # task2vec-qdrant — Task2Vec vectors in Qdrant
//!
//! Stores every task's Task2Vec embedding and every expert's (pretrained model's) vector in
//! Qdrant and will answer "which expert should I fine-tune for this dataset?" by a cosine
//! prefetch in Qdrant re-ranked by the paper's asymmetric distance.
//!
//! This first part is the embedded backend: [`Store`] keeps the collections `tasks` and
//! `experts` in Qdrant Edge (the Qdrant engine in-process, crate `qdrant-edge`) under one data
//! folder. Layout:
//!
//! - [`space`]: the [`VectorSpace`] (probe, weights, estimator, layout) a store accepts;
//! - [`point_id`]: deterministic point ids (UUID v5), so re-writing replaces;
//! - [`index_vector`]: the [`IndexTransform`] from a Fisher vector to the cosine index vector;
//! - [`record`]: payload documents and the records handed back;
//! - [`store`]: the [`Store`] itself; `collection` wraps one engine shard;
//! - [`query`]: expert selection (cosine prefetch + exact `d_asym` re-rank) and its
//!   Qdrant-only approximation by a formula query.

mod collection;
pub mod error;
pub mod index_vector;
pub mod point_id;
pub mod query;
pub mod record;
pub mod space;
pub mod store;

pub use error::{Error, Result};
pub use index_vector::IndexTransform;
pub use point_id::{expert_point_id, task_point_id};
pub use query::{Hit, RankedExpert, SelectOptions};
pub use record::{Expert, StoredExpert, StoredTask, Tags, TaskSummary};
pub use space::VectorSpace;
pub use store::Store;
