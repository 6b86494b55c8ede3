//! The cycle counter profiles use: `rdtsc` on x86-64, `cntvct_el0` on
//! aarch64 (both readable from user space without a syscall), the same
//! counters compiled models read through their `N_ticks` helper, so pool
//! records and per-step times share one clock.

use std::sync::OnceLock;

/// The current tick count.
#[inline]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86-64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let t: u64;
        // SAFETY: cntvct_el0 is readable at EL0 on Linux.
        unsafe { core::arch::asm!("mrs {t}, cntvct_el0", t = out(reg) t) };
        t
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
        EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

/// Ticks per second: `cntfrq_el0` on aarch64; on x86-64 measured once
/// against the monotonic clock over 20 ms (the TSC is invariant on every
/// CPU that has `constant_tsc`, i.e. all current ones).
pub fn tick_hz() -> f64 {
    static HZ: OnceLock<f64> = OnceLock::new();
    *HZ.get_or_init(|| {
        #[cfg(target_arch = "aarch64")]
        {
            let f: u64;
            // SAFETY: cntfrq_el0 is readable at EL0 on Linux.
            unsafe { core::arch::asm!("mrs {f}, cntfrq_el0", f = out(reg) f) };
            f as f64
        }
        #[cfg(not(target_arch = "aarch64"))]
        {
            let (t0, i0) = (ticks(), std::time::Instant::now());
            while i0.elapsed() < std::time::Duration::from_millis(20) {
                std::hint::spin_loop();
            }
            let (t1, el) = (ticks(), i0.elapsed());
            (t1.wrapping_sub(t0)) as f64 / el.as_secs_f64()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn ticks_advance_at_the_calibrated_rate() {
        let hz = tick_hz();
        assert!(hz > 1e6, "{hz} Hz");
        let (t0, i0) = (ticks(), Instant::now());
        std::thread::sleep(Duration::from_millis(30));
        let secs = (ticks() - t0) as f64 / hz;
        let real = i0.elapsed().as_secs_f64();
        assert!((secs - real).abs() < 0.2 * real, "{secs} s vs {real} s");
    }
}
