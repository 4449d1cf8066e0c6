//! Deterministic point ids, so that writing the same thing twice replaces it.
//!
//! Ids are name-based UUIDs (version 5, SHA-1, RFC 9562) in the fixed namespace
//! [`NAMESPACE`]. The name is UTF-8 text whose parts are joined by a newline (`\n`), so any
//! language can recompute an id:
//!
//! - task: `task2vec-task\n{dataset fingerprint}\n{probe weights sha256}\n{estimator}`;
//! - expert: `task2vec-expert\n{expert key}\n{probe weights sha256}\n{estimator}`.
//!
//! The estimator is its serde name (`monte-carlo`, `per-example`, `variational`). The same
//! dataset embedded with the same probe and estimator therefore always lands on the same point
//! (a re-embedding with another seed or sample count replaces the old vector), while the same
//! dataset under another probe or estimator gets another id, which keeps ids unique when
//! stores are merged.

use task2vec::fisher::Estimator;
use uuid::Uuid;

use crate::space::estimator_name;

/// The namespace of every point id this crate makes (a random UUID, fixed forever).
pub const NAMESPACE: Uuid = Uuid::from_u128(0x87f2da9d_c397_4bf0_9ece_d0258e026529);

/// The point id of a task: the dataset's fingerprint under a probe's weights and an estimator.
pub fn task_point_id(
    dataset_fingerprint: &str,
    weights_sha256: &str,
    estimator: Estimator,
) -> Uuid {
    name_based(
        "task2vec-task",
        dataset_fingerprint,
        weights_sha256,
        estimator,
    )
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
        //                    "task2vec-task\nabc\nw\nmonte-carlo")
        let expected: Uuid = "b5cf3187-2b4f-5fde-a1ff-a7af36b28e40"
            .parse()
            .expect("literal uuid");
        assert_eq!(task_point_id("abc", "w", Estimator::MonteCarlo), expected);
    }
}
