//! `cpucc bench`: compiles for the host and times runs on fixed-seed random
//! inputs: warm-up, then timed iterations; min / median / p90 latency.

use std::time::Instant;

use cpucc::codegen::Dumps;
use cpucc::codegen::jit::JitModel;
use cpucc::random::SplitMix64;
use cpucc::{Error, Result, import};
use cpucc_runtime::Pool;

use super::{ModelArgs, PassArgs};
use crate::cli::engine;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Worker threads (including the caller); 1 runs on the calling thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Target; only the host can be timed.
    #[arg(long, default_value = "native")]
    target: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    passes: PassArgs,
}

pub fn main(a: Args) -> Result<()> {
    let target = engine::target(&a.target)?;
    if let Err(why) = target.runs_on_host() {
        cpucc::bail!(Unsupported, "cpucc bench times host code only ({why})");
    }
    if a.iters == 0 || a.threads == 0 {
        cpucc::bail!(Invalid, "--iters and --threads must be at least 1");
    }
    let t0 = Instant::now();
    let mut g = import::load(&a.model.model, &a.model.options()?)?;
    a.passes.run(&mut g)?;
    let m = JitModel::compile(&g, &target, &mut Dumps::default())?;
    let compile_s = t0.elapsed().as_secs_f64();
    let mut rng = SplitMix64::new(0);
    let inputs: Vec<_> = g
        .inputs
        .iter()
        .map(|&v| rng.tensor(g.value(v).ty.dtype, &g.value(v).ty.shape))
        .collect();
    let pool = if a.threads > 1 {
        Some(Pool::new(a.threads).map_err(|e| Error::Internal(format!("thread pool: {e}")))?)
    } else {
        None
    };
    let pool_ptr = pool
        .as_ref()
        .map_or(std::ptr::null(), |p| p.as_c() as *const u8);
    let mut times = Vec::with_capacity(a.iters);
    for i in 0..a.warmup + a.iters {
        let t = Instant::now();
        // SAFETY: the pool outlives every run.
        unsafe { m.run_with(&inputs, pool_ptr)? };
        if i >= a.warmup {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let (min, median, p90) = (times[0], pct(0.5), pct(0.9));
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": a.model.model.display().to_string(),
                "target": target.name,
                "threads": a.threads,
                "iters": a.iters,
                "warmup": a.warmup,
                "min_ms": min,
                "median_ms": median,
                "p90_ms": p90,
                "compile_s": compile_s,
            })
        );
    } else {
        println!(
            "{}: {} threads, {} iters: min {min:.3} ms, median {median:.3} ms, p90 {p90:.3} ms (compile {compile_s:.2} s)",
            a.model.model.display(),
            a.threads,
            a.iters
        );
    }
    Ok(())
}
