//! Where a shortlist query's time goes: the wall time of the graph search and of the whole
//! shortlist (reading each hit's payload and raw vector, its exact `d_sym`), and the time the
//! readers spent reading and comparing, summed over their threads. Recorded only with the
//! feature `phase-timings` (for `bench_select`'s breakdown); without it nothing is recorded and
//! [`take`] returns nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The phases of one shortlist query (`select` or `similar`), in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShortlistTimings {
    /// Qdrant's cosine search (the prefetch).
    pub search_ms: f64,
    /// Reading the hits and their exact `d_sym`, wall time.
    pub shortlist_ms: f64,
    /// Reading payloads and raw vectors, summed over the reader threads.
    pub read_ms: f64,
    /// The exact `d_sym` computations, summed over the reader threads.
    pub d_sym_ms: f64,
}

#[cfg(feature = "phase-timings")]
static RECORDED: std::sync::Mutex<Vec<ShortlistTimings>> = std::sync::Mutex::new(Vec::new());

/// The timings recorded since the last call, oldest first (always empty without the feature).
pub fn take() -> Vec<ShortlistTimings> {
    #[cfg(feature = "phase-timings")]
    return std::mem::take(&mut *RECORDED.lock().unwrap_or_else(|e| e.into_inner()));
    #[cfg(not(feature = "phase-timings"))]
    Vec::new()
}

/// A running clock of one query's phases; with the feature off it reads no clock.
pub(crate) struct PhaseClock {
    start: Option<Instant>,
    search_ms: f64,
    read_ns: AtomicU64,
    d_sym_ns: AtomicU64,
}

impl PhaseClock {
    pub(crate) fn start() -> PhaseClock {
        PhaseClock {
            start: now(),
            search_ms: 0.0,
            read_ns: AtomicU64::new(0),
            d_sym_ns: AtomicU64::new(0),
        }
    }

    /// The search has returned.
    pub(crate) fn searched(&mut self) {
        self.search_ms = ms_since(self.start);
    }

    /// Times `f` as reading (from any reader thread).
    pub(crate) fn reading<T>(&self, f: impl FnOnce() -> T) -> T {
        timed(&self.read_ns, f)
    }

    /// Times `f` as exact `d_sym` (from any reader thread).
    pub(crate) fn comparing<T>(&self, f: impl FnOnce() -> T) -> T {
        timed(&self.d_sym_ns, f)
    }

    /// The shortlist is complete: record the query.
    pub(crate) fn done(self) {
        #[cfg(feature = "phase-timings")]
        RECORDED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ShortlistTimings {
                search_ms: self.search_ms,
                shortlist_ms: ms_since(self.start) - self.search_ms,
                read_ms: self.read_ns.into_inner() as f64 / 1e6,
                d_sym_ms: self.d_sym_ns.into_inner() as f64 / 1e6,
            });
    }
}

fn now() -> Option<Instant> {
    cfg!(feature = "phase-timings").then(Instant::now)
}

fn ms_since(t: Option<Instant>) -> f64 {
    t.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3)
}

fn timed<T>(sum_ns: &AtomicU64, f: impl FnOnce() -> T) -> T {
    let t = now();
    let out = f();
    if let Some(t) = t {
        sum_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
    out
}
