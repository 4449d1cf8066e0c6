//! Deterministic point ids, so that writing the same thing twice replaces it.
//!
//! Ids are name-based UUIDs (version 5, SHA-1, RFC 9562) in the fixed namespace
//! [`NAMESPACE`]. The name is UTF-8 text whose parts are joined by a newline (`\n`), so any
//! language can recompute an id:
//!
//! - task: `task2vec-task\n{dataset uri}\n{probe weights sha256}\n{estimator}`;
//! - expert: `task2vec-expert\n{expert key}\n{probe weights sha256}\n{estimator}`.
//!
//! The estimator is its serde name (`monte-carlo`, `per-example`, `variational`).
//!
//! A task is keyed by *where* the dataset is, not by its content: when the dataset at a path
//! changes and is embedded again, the new vector replaces the old point (same id), and the
//! content fingerprint, kept in the payload, says which version the vector describes. The same
//! location under another probe or estimator gets another id, which keeps ids unique when
//! stores are merged.
//!
//! The URI is used byte for byte: making it canonical (absolute path, symlinks resolved, one
//! spelling of a remote URI) is the caller's job, and every writer of a store must do it the
//! same way. The store itself uses the embedding's `meta.dataset.path`, which the pipeline
//! records as given to it.

use task2vec::fisher::Estimator;
use uuid::Uuid;

use crate::space::estimator_name;

/// The namespace of every point id this crate makes (a random UUID, fixed forever).
pub const NAMESPACE: Uuid = Uuid::from_u128(0x87f2da9d_c397_4bf0_9ece_d0258e026529);

/// The point id of a task: the dataset's location (path or URI, already canonical) under a
/// probe's weights and an estimator.
pub fn task_point_id(dataset_uri: &str, weights_sha256: &str, estimator: Estimator) -> Uuid {
    name_based("task2vec-task", dataset_uri, weights_sha256, estimator)
}

/// The point id of an expert: its user-given key under a probe's weights and an estimator.
pub fn expert_point_id(expert_key: &str, weights_sha256: &str, estimator: Estimator) -> Uuid {
    name_based("task2vec-expert", expert_key, weights_sha256, estimator)
}

fn name_based(kind: &str, key: &str, weights_sha256: &str, estimator: Estimator) -> Uuid {
    let name = format!(
        "{kind}\n{key}\n{weights_sha256}\n{}",
        estimator_name(estimator)
    );
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_depend_on_every_part() {
        let id = task_point_id("abc", "w", Estimator::MonteCarlo);
        assert_eq!(id, task_point_id("abc", "w", Estimator::MonteCarlo));
        assert_eq!(id.get_version_num(), 5);
        assert_ne!(id, task_point_id("abd", "w", Estimator::MonteCarlo));
        assert_ne!(id, task_point_id("abc", "x", Estimator::MonteCarlo));
        assert_ne!(id, task_point_id("abc", "w", Estimator::Variational));
        assert_ne!(id, expert_point_id("abc", "w", Estimator::MonteCarlo));
    }

    #[test]
    fn id_matches_the_documented_recipe() {
        // Python: uuid.uuid5(uuid.UUID("87f2da9d-c397-4bf0-9ece-d0258e026529"),
        //                    "task2vec-task\n/data/abc\nw\nmonte-carlo")
        let expected: Uuid = "26e4893b-5cc1-5529-9715-70728d914819"
            .parse()
            .expect("literal uuid");
        assert_eq!(
            task_point_id("/data/abc", "w", Estimator::MonteCarlo),
            expected
        );
        // Python: uuid.uuid5(..., "task2vec-expert\nresnet-mnist\nw\nmonte-carlo")
        let expected: Uuid = "86694b37-4aac-539d-b403-701223c032ae"
            .parse()
            .expect("literal uuid");
        assert_eq!(
            expert_point_id("resnet-mnist", "w", Estimator::MonteCarlo),
            expected
        );
    }
}
