//! One seed in, independent seeds out: every random choice of the pipeline gets its own stream,
//! so changing how many numbers one stage draws never shifts another stage's numbers.

/// The random choices of an embedding, each with its own stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    /// Which images are sampled (and in which order).
    Sample = 1,
    /// Random labels of the trivial embedding.
    RandomLabels = 2,
    /// The head's initial weights.
    HeadInit = 3,
    /// The head's class-balanced draws (mixed with the epoch).
    HeadDraws = 4,
    /// The Fisher pass's class-balanced draws (mixed with the epoch).
    FisherDraws = 5,
    /// The Fisher estimator's own randomness (label sampling, variational noise).
    Fisher = 6,
}

/// The seed of `stream` for master seed `seed`.
pub(crate) fn derive(seed: u64, stream: Stream) -> u64 {
    mix(seed ^ mix(stream as u64))
}

/// The seed of epoch `epoch` of a per-epoch stream.
pub(crate) fn derive_epoch(seed: u64, stream: Stream, epoch: usize) -> u64 {
    mix(derive(seed, stream) ^ mix(0x5EED_0000_0000_0000 | epoch as u64))
}

/// SplitMix64's finaliser: a bijection of u64 whose outputs for nearby inputs look unrelated.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_epochs_get_distinct_seeds() {
        let streams = [
            Stream::Sample,
            Stream::RandomLabels,
            Stream::HeadInit,
            Stream::HeadDraws,
            Stream::FisherDraws,
            Stream::Fisher,
        ];
        let mut seen = std::collections::HashSet::new();
        for seed in [0u64, 1, 2, u64::MAX] {
            for s in streams {
                assert!(seen.insert(derive(seed, s)));
                for e in 0..4 {
                    assert!(seen.insert(derive_epoch(seed, s, e)));
                }
            }
        }
        assert_eq!(derive(7, Stream::Fisher), derive(7, Stream::Fisher));
    }
}
