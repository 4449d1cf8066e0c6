//! CPU thread count, set once and explicitly.
//!
//! candle's CPU matmul asks for the thread count on every call; when `RAYON_NUM_THREADS` is
//! unset it re-derives it from the CPU affinity mask and `/proc` each time. Setting the count
//! once at start-up makes that a cheap environment read and makes runs comparable.
//!
//! candle 0.11 also runs its element-wise operations on a second pool of its own, whose
//! workers spin for a while after every operation. The probes' heavy operations run on rayon,
//! so those spinning workers only compete with rayon's threads for the cores: a ResNet-18
//! embedding at 32 px is ≈ 15 % faster when candle's pool is left out. Unless
//! `CANDLE_NUM_THREADS` is set, [`configure_threads`] therefore gives candle's pool no extra
//! worker (its element-wise operations run on the calling thread: in the probes they are
//! mostly the gradient accumulations of candle's backward pass).

/// candle's own element-wise pool size (see the module documentation).
pub const CANDLE_POOL_ENV: &str = "CANDLE_NUM_THREADS";

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
    if std::env::var_os(CANDLE_POOL_ENV).is_none() {
        std::env::set_var(CANDLE_POOL_ENV, "1");
    }
    // A global pool may already exist (e.g. in tests); then the env var still steers candle.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    n
}
