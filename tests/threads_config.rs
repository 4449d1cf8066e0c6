//! `configure_threads` sets the thread counts candle and rayon read. One test in its own binary:
//! it changes the process environment.

use task2vec::threads::{configure_threads, CANDLE_SPIN_ENV, CANDLE_SPIN_LIMIT};

#[test]
fn candles_elementwise_pool_spins_briefly_unless_asked_otherwise() {
    std::env::remove_var(CANDLE_SPIN_ENV);
    std::env::remove_var("RAYON_NUM_THREADS");
    assert_eq!(configure_threads(Some(2)), 2);
    assert_eq!(std::env::var("RAYON_NUM_THREADS").as_deref(), Ok("2"));
    assert_eq!(
        std::env::var(CANDLE_SPIN_ENV).as_deref(),
        Ok(CANDLE_SPIN_LIMIT)
    );
    assert_eq!(rayon::current_num_threads(), 2);

    // An explicit setting is the user's and stays.
    std::env::set_var(CANDLE_SPIN_ENV, "5000");
    assert_eq!(configure_threads(Some(2)), 2);
    assert_eq!(std::env::var(CANDLE_SPIN_ENV).as_deref(), Ok("5000"));
}
