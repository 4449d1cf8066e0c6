//! # task2vec-qdrant — Task2Vec vectors in Qdrant
//!
//! Stores every task's Task2Vec embedding and every expert's (pretrained model's) vector in
//! Qdrant and answers "which expert should I fine-tune for this dataset?" by a cosine
//! prefetch in Qdrant re-ranked by the paper's asymmetric distance, and "which stored tasks
//! are like this one?" by a cosine prefetch re-ranked by the exact symmetric distance.
//!
//! [`Store`] keeps the collections `tasks` and `experts` either embedded (Qdrant Edge, the
//! Qdrant engine in-process, under one data folder) or on a Qdrant server or cluster
//! (`qdrant-client`, gRPC), chosen by a [`StoreConfig`]; both behave the same. The data model
//! is a contract other languages read: docs/schema.md. Layout:
//!
//! - [`config`]: [`StoreConfig`] and [`RemoteConfig`], what configuration files embed;
//! - [`space`]: the [`VectorSpace`] (probe, weights, estimator, layout) a store accepts;
//! - [`point_id`]: deterministic point ids (UUID v5), so re-writing replaces;
//! - [`index_vector`]: the [`IndexTransform`] from a Fisher vector to the cosine index vector;
//! - [`record`]: payload documents and the records handed back;
//! - [`store`]: the [`Store`] itself; `backend` holds the two engines behind one internal
//!   interface;
//! - [`query`]: expert selection (cosine prefetch + exact `d_asym` re-rank) and its
//!   Qdrant-only approximation by a formula query;
//! - [`similar`]: nearest stored tasks by exact `d_sym`, with payload filters;
//! - [`dump`]: export and import, for migrating between backends;
//! - [`phase_timings`]: where a shortlist query's time goes (feature `phase-timings`).

mod backend;
pub mod config;
pub mod dump;
pub mod error;
pub mod index_vector;
pub mod phase_timings;
pub mod point_id;
pub mod query;
pub mod record;
pub mod similar;
pub mod space;
pub mod store;

pub use config::{RemoteConfig, StoreConfig};
pub use dump::DumpSummary;
pub use error::{Error, Result};
pub use index_vector::{IndexCentre, IndexTransform};
pub use point_id::{expert_point_id, task_point_id};
pub use query::{FormulaOptions, Hit, RankedExpert, SelectOptions, FORMULA_KAPPA};
pub use record::{Expert, StoredExpert, StoredTask, Tags, TaskSummary};
pub use similar::{SimilarOptions, SimilarTask, TaskFilter};
pub use space::VectorSpace;
pub use store::{IndexPrecision, Layout, RawVectors, Rederived, Store, SHORTLIST_READERS};
