//! Class-balanced sampling, deterministic for a seed.
//!
//! Task2Vec fits its classifier head on at most `max_samples` images and estimates the Fisher
//! on class-balanced draws; a skewed dataset must not let one class dominate either. Both
//! samplers use `ChaCha8Rng` seeded with [`rand::SeedableRng::seed_from_u64`], so a seed gives
//! the same indices on every platform and run. They do not reproduce PyTorch's random streams.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The indices of each class's items, classes in increasing label order (empty classes left
/// out).
fn by_class(labels: &[usize]) -> Vec<Vec<usize>> {
    // A map rather than a vector indexed by label, so any label value is safe.
    let mut classes: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &y) in labels.iter().enumerate() {
        classes.entry(y).or_default().push(i);
    }
    classes.into_values().collect()
}

/// Chooses at most `max_samples` distinct indices into `labels` with the classes as equal as
/// possible.
///
/// Each class's indices are shuffled, then taken round-robin (one from each class in label
/// order, again and again; a class that runs out drops out of the rotation) until `max_samples`
/// are taken or every item is. So every class gets `min(its size, share)` items, the shares
/// differing by at most one, and *every prefix* of the result is balanced as well: a caller
/// may cut it into batches. The same `seed` gives the same result; another seed gives another
/// choice and order.
pub fn balanced_sample(labels: &[usize], max_samples: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut classes = by_class(labels);
    for c in &mut classes {
        c.shuffle(&mut rng);
    }
    let total = labels.len().min(max_samples);
    let mut out = Vec::with_capacity(total);
    let mut round = 0;
    while out.len() < total {
        for c in &classes {
            if let Some(&i) = c.get(round) {
                out.push(i);
                if out.len() == total {
                    break;
                }
            }
        }
        round += 1;
    }
    out
}

/// Draws `n` indices into `labels` with replacement, item `i` with probability proportional to
/// `1 / count(labels[i])` — PyTorch's class-balanced `WeightedRandomSampler`, as the reference
/// Task2Vec uses for its classifier and Fisher loops.
///
/// Those weights give every class the same total probability, so a draw is done as: a class
/// uniformly among the present ones, then an item uniformly within it (the same distribution,
/// in constant time). Empty `labels` give no draws.
pub fn balanced_draws(labels: &[usize], n: usize, seed: u64) -> Vec<usize> {
    let classes = by_class(labels);
    if classes.is_empty() {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let c = &classes[rng.random_range(0..classes.len())];
            c[rng.random_range(0..c.len())]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 50 of class 0, 10 of class 1, 3 of class 2, 0 of class 3, 20 of class 4, interleaved.
    fn skewed() -> Vec<usize> {
        let mut v = Vec::new();
        for (label, count) in [(0, 50), (1, 10), (2, 3), (4, 20)] {
            v.extend(std::iter::repeat_n(label, count));
        }
        // A fixed interleaving so classes are not contiguous.
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        v.shuffle(&mut rng);
        v
    }

    fn counts(labels: &[usize], picked: &[usize]) -> [usize; 5] {
        let mut c = [0; 5];
        for &i in picked {
            c[labels[i]] += 1;
        }
        c
    }

    #[test]
    fn balanced_sample_equalises_classes_under_the_cap() {
        let labels = skewed();
        let picked = balanced_sample(&labels, 24, 7);
        assert_eq!(picked.len(), 24);
        // 4 classes, 24 slots: 6 each, but class 2 has only 3, so its 3 go to the others.
        assert_eq!(counts(&labels, &picked), [7, 7, 3, 0, 7]);
        let mut distinct = picked.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 24, "indices must be distinct");
    }

    #[test]
    fn balanced_sample_prefixes_are_balanced() {
        let labels = skewed();
        let picked = balanced_sample(&labels, 40, 1);
        let c = counts(&labels, &picked[..8]);
        assert_eq!(c, [2, 2, 2, 0, 2]);
    }

    #[test]
    fn balanced_sample_cap_above_size_returns_everything() {
        let labels = skewed();
        let mut picked = balanced_sample(&labels, 1000, 3);
        assert_eq!(picked.len(), labels.len());
        picked.sort();
        assert_eq!(picked, (0..labels.len()).collect::<Vec<_>>());
        assert!(balanced_sample(&labels, 0, 3).is_empty());
        assert!(balanced_sample(&[], 10, 3).is_empty());
    }

    #[test]
    fn balanced_sample_is_deterministic_and_seed_dependent() {
        let labels = skewed();
        assert_eq!(
            balanced_sample(&labels, 30, 5),
            balanced_sample(&labels, 30, 5)
        );
        assert_ne!(
            balanced_sample(&labels, 30, 5),
            balanced_sample(&labels, 30, 6)
        );
    }

    #[test]
    fn balanced_draws_give_each_class_equal_mass() {
        let labels = skewed();
        let n = 20_000;
        let draws = balanced_draws(&labels, n, 11);
        assert_eq!(draws.len(), n);
        let c = counts(&labels, &draws);
        // Each of the 4 present classes should get 1/4; binomial sd = sqrt(n p (1-p)) ≈ 61,
        // so ±400 (over 6 sd) cannot fail by chance for a fixed seed but catches a bias.
        for (label, &count) in c.iter().enumerate() {
            if label == 3 {
                assert_eq!(count, 0);
            } else {
                assert!((count as i64 - 5000).abs() < 400, "class {label}: {count}");
            }
        }
        // Within a class, items are uniform: class 2's three items each about 1/12.
        let class2: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 2).collect();
        for i in class2 {
            let k = draws.iter().filter(|&&d| d == i).count();
            assert!((k as i64 - 1667).abs() < 250, "item {i}: {k}");
        }
    }

    #[test]
    fn balanced_draws_are_deterministic_and_seed_dependent() {
        let labels = skewed();
        assert_eq!(
            balanced_draws(&labels, 100, 2),
            balanced_draws(&labels, 100, 2)
        );
        assert_ne!(
            balanced_draws(&labels, 100, 2),
            balanced_draws(&labels, 100, 3)
        );
        assert!(balanced_draws(&[], 100, 2).is_empty());
    }
}
