//! Measures the dispatch overhead of an empty `parallel_for` (2 items on a
//! 2-thread pool, pinned and not): median and p90 over many calls. Each
//! pool is driven from a fresh thread, so pinning one caller does not
//! narrow the next pool's CPUs.
//!
//! `cargo run --release -p cpucc-runtime --example parallel_for_overhead [CALLS]`

use std::time::Instant;

use cpucc_runtime::{Pool, PoolOptions};

fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    for pin in [true, false, true, false] {
        std::thread::spawn(move || measure(pin, calls))
            .join()
            .expect("measurement thread");
    }
}

fn measure(pin: bool, calls: usize) {
    {
        let pool = Pool::with_options(&PoolOptions {
            threads: Some(2),
            pin,
            ..PoolOptions::default()
        })
        .expect("pool");
        pool.pin_caller().expect("pin");
        let mut ns: Vec<f64> = (0..calls)
            .map(|_| {
                let t = Instant::now();
                pool.parallel_for(2, |b, e| {
                    std::hint::black_box((b, e));
                });
                t.elapsed().as_nanos() as f64
            })
            .collect();
        ns.sort_by(f64::total_cmp);
        let pct = |p: f64| ns[((ns.len() - 1) as f64 * p) as usize] / 1e3;
        println!(
            "{} pool on CPUs {:?}: empty parallel_for(2) over {calls} calls: median {:.2} us, p90 {:.2} us, min {:.2} us",
            if pin { "pinned" } else { "unpinned" },
            pool.cores(),
            pct(0.5),
            pct(0.9),
            pct(0.0)
        );
    }
}
