//! `configure_threads` sets the thread counts candle and rayon read. One test in its own binary:
//! it changes the process environment.

use task2vec::threads::{configure_threads, CANDLE_POOL_ENV};

#[test]
fn candles_elementwise_pool_gets_no_extra_worker_unless_asked() {
    std::env::remove_var(CANDLE_POOL_ENV);
    std::env::remove_var("RAYON_NUM_THREADS");
    assert_eq!(configure_threads(Some(2)), 2);
    assert_eq!(std::env::var("RAYON_NUM_THREADS").as_deref(), Ok("2"));
    assert_eq!(std::env::var(CANDLE_POOL_ENV).as_deref(), Ok("1"));
    assert_eq!(rayon::current_num_threads(), 2);

    // An explicit setting is the user's and stays.
    std::env::set_var(CANDLE_POOL_ENV, "3");
    assert_eq!(configure_threads(Some(2)), 2);
    assert_eq!(std::env::var(CANDLE_POOL_ENV).as_deref(), Ok("3"));
}
