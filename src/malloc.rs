//! The process's allocator policy, for the binaries to choose at start-up.
//!
//! At 224 px a probe's activations and gradients are tens to hundreds of MiB each. glibc's
//! malloc serves every block above its mmap threshold with a fresh `mmap` and returns it to the
//! kernel on `free`, so each candle operation page-faults and zeroes its whole output anew:
//! BENCHMARKS.md ("Where the time goes", item 1) measured about 46 % of an EfficientNet-Lite0
//! embedding's CPU time in the kernel that way, and a 1.65× faster embedding (+16 % peak RSS)
//! when freed memory stays in the process. The library itself never changes the allocator;
//! `t2v` and `t2v-daemon` call [`retain_freed_memory`] first thing.

/// Environment variable that, set to `0`, keeps glibc's default policy.
pub const OPT_OUT_ENV: &str = "T2V_RETAIN_FREED_MEMORY";

/// Asks glibc's malloc to serve large blocks from the heap and to keep freed memory for reuse
/// (`mallopt(M_MMAP_MAX, 0)`, `mallopt(M_TRIM_THRESHOLD, -1)`: never trim), unless
/// [`OPT_OUT_ENV`] is `0`. Returns whether the policy is now in effect: `false` on other
/// platforms and allocators, or when opted out. Call it before any large allocation.
pub fn retain_freed_memory() -> bool {
    if std::env::var(OPT_OUT_ENV).is_ok_and(|v| v.trim() == "0") {
        return false;
    }
    imp::retain()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    pub fn retain() -> bool {
        // A trim threshold of -1 disables trimming completely (mallopt(3)). A finite one is
        // not enough: at the end of a ResNet-18 Fisher batch at 224 px the whole graph (≈ 4 GiB)
        // is freed at once, the heap's top exceeds even 2 GiB − 1, glibc hands it back, and
        // the next batch faults and zeroes it again (a third of the page faults of an
        // embedding, ≈ 13 % of its time).
        // SAFETY: mallopt only changes malloc's tuning parameters; it is called with valid
        // parameter numbers and values and is thread-safe in glibc.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn retain() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_the_policy() {
        let expected = cfg!(all(target_os = "linux", target_env = "gnu"))
            && std::env::var(OPT_OUT_ENV).map_or(true, |v| v.trim() != "0");
        assert_eq!(retain_freed_memory(), expected);
    }
}
