//! CPU thread count, set once and explicitly.
//!
//! candle's CPU matmul asks for the thread count on every call; when `RAYON_NUM_THREADS` is
//! unset it re-derives it from the CPU affinity mask and `/proc` each time. Setting the count
//! once at start-up makes that a cheap environment read and makes runs comparable.
//!
//! candle 0.11 also runs its element-wise operations on a second pool of its own, whose
//! workers spin (25,000 pause instructions by default) after every operation before they sleep.
//! The probes' heavy operations run on rayon, so the spinning workers compete with rayon's
//! threads for the cores: a ResNet-18 embedding at 32 px is ≈ 15 % faster when they give up
//! after 100 spins, and large element-wise operations (EfficientNet-Lite0 at 224 px) keep
//! their parallelism, which leaving candle's pool out entirely would cost (≈ 7 %). Unless
//! `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set, [`configure_threads`] sets it to 100.

/// How long candle's element-wise pool spins before sleeping (see the module documentation).
pub const CANDLE_SPIN_ENV: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// The spin limit [`configure_threads`] sets unless [`CANDLE_SPIN_ENV`] is set.
pub const CANDLE_SPIN_LIMIT: &str = "100";

/// Sets the number of compute threads for candle and rayon and returns it.
///
/// `None` keeps an explicit `RAYON_NUM_THREADS` from the environment, or else uses the number
/// of CPUs this process may run on. Call it at program start, before any tensor work: candle
/// and rayon size their pools once.
pub fn configure_threads(requested: Option<usize>) -> usize {
    let from_env = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0);
    let n = requested
        .filter(|&n| n > 0)
        .or(from_env)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Single-threaded start-up: nothing else reads the environment concurrently yet.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    if std::env::var_os(CANDLE_SPIN_ENV).is_none() {
        std::env::set_var(CANDLE_SPIN_ENV, CANDLE_SPIN_LIMIT);
    }
    // A global pool may already exist (e.g. in tests); then the env var still steers candle.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    n
}

/// Batches whose input holds at most this many values (64 images of 3×64×64) run two at a time
/// ([`runs_in_pairs`]).
const PAIRED_INPUT_VALUES: usize = 64 * 3 * 64 * 64;

/// Whether Fisher batches with `input_values` input values should run two at a time, side by
/// side on the thread pool (the Monte-Carlo estimator). On small images a forward and backward
/// pass is a long chain of short operations, each too short to keep every core busy; two
/// independent chains fill the gaps (ResNet-18 at 32 px: the Fisher pass ≈ 15 % faster; the
/// feature pass, forward only, gained nothing measurable and runs one batch at a time). Each
/// batch's arithmetic is the same whatever runs beside it and results are taken in batch order,
/// so the bits do not change. Large batches run alone: their operations fill the cores already,
/// and two at once would double the peak memory.
pub(crate) fn runs_in_pairs(input_values: usize) -> bool {
    input_values <= PAIRED_INPUT_VALUES
}
