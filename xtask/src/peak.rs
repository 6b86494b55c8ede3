//! The machine's fp32 FMA peak, measured: independent `vfmadd231ps` chains
//! (zmm with AVX-512, else ymm with FMA) on 1..=T threads at once. Enough
//! chains (12) to cover FMA latency times two FMA ports, no memory traffic.

use std::time::Instant;

/// Peak GFLOP/s with `threads` threads running FMA loops concurrently, and
/// the ISA used. Best of a few repetitions (the host is shared).
pub fn gflops(threads: usize) -> (f64, &'static str) {
    let (flops_per_iter, isa) = if avx512() {
        (12.0 * 16.0 * 2.0, "avx512f")
    } else {
        (12.0 * 8.0 * 2.0, "avx2+fma")
    };
    let iters: u64 = 50_000_000;
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| fma_loop(iters));
            }
        });
        let secs = t.elapsed().as_secs_f64();
        best = best.max(flops_per_iter * iters as f64 * threads as f64 / secs / 1e9);
    }
    (best, isa)
}

fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

fn fma_loop(iters: u64) {
    if avx512() {
        // SAFETY: AVX-512F is present (checked above).
        unsafe { fma_loop_zmm(iters) }
    } else {
        // SAFETY: AVX2/FMA machines only reach here; the bench needs them.
        unsafe { fma_loop_ymm(iters) }
    }
}

macro_rules! fma_body {
    ($r:literal, $zero:literal) => {
        concat!(
            // Zeros: no denormal or NaN slow paths.
            $zero,
            " ",
            $r,
            "0, ",
            $r,
            "0, ",
            $r,
            "0\n",
            $zero,
            " ",
            $r,
            "1, ",
            $r,
            "1, ",
            $r,
            "1\n",
            $zero,
            " ",
            $r,
            "2, ",
            $r,
            "2, ",
            $r,
            "2\n",
            $zero,
            " ",
            $r,
            "3, ",
            $r,
            "3, ",
            $r,
            "3\n",
            $zero,
            " ",
            $r,
            "4, ",
            $r,
            "4, ",
            $r,
            "4\n",
            $zero,
            " ",
            $r,
            "5, ",
            $r,
            "5, ",
            $r,
            "5\n",
            $zero,
            " ",
            $r,
            "6, ",
            $r,
            "6, ",
            $r,
            "6\n",
            $zero,
            " ",
            $r,
            "7, ",
            $r,
            "7, ",
            $r,
            "7\n",
            $zero,
            " ",
            $r,
            "8, ",
            $r,
            "8, ",
            $r,
            "8\n",
            $zero,
            " ",
            $r,
            "9, ",
            $r,
            "9, ",
            $r,
            "9\n",
            $zero,
            " ",
            $r,
            "10, ",
            $r,
            "10, ",
            $r,
            "10\n",
            $zero,
            " ",
            $r,
            "11, ",
            $r,
            "11, ",
            $r,
            "11\n",
            $zero,
            " ",
            $r,
            "12, ",
            $r,
            "12, ",
            $r,
            "12\n",
            $zero,
            " ",
            $r,
            "13, ",
            $r,
            "13, ",
            $r,
            "13\n",
            "2:\n",
            "vfmadd231ps ",
            $r,
            "0, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "vfmadd231ps ",
            $r,
            "1, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "vfmadd231ps ",
            $r,
            "2, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "vfmadd231ps ",
            $r,
            "3, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "vfmadd231ps ",
            $r,
            "4, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "vfmadd231ps ",
            $r,
            "5, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "vfmadd231ps ",
            $r,
            "6, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "vfmadd231ps ",
            $r,
            "7, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "vfmadd231ps ",
            $r,
            "8, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "vfmadd231ps ",
            $r,
            "9, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "vfmadd231ps ",
            $r,
            "10, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "vfmadd231ps ",
            $r,
            "11, ",
            $r,
            "12, ",
            $r,
            "13\n",
            "dec {n}\n",
            "jnz 2b\n",
            "vzeroupper\n",
        )
    };
}

#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_zmm(iters: u64) {
    // SAFETY: register-only arithmetic; every clobbered register is listed.
    unsafe {
        std::arch::asm!(
            fma_body!("zmm", "vpxord"),
            n = inout(reg) iters => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
            out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _,
            options(nostack, nomem),
        );
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_ymm(iters: u64) {
    // SAFETY: register-only arithmetic; every clobbered register is listed.
    unsafe {
        std::arch::asm!(
            fma_body!("ymm", "vxorps"),
            n = inout(reg) iters => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _,
            options(nostack, nomem),
        );
    }
}
