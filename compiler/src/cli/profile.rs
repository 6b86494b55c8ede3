//! `cpucc profile`: compiles with per-step tick counts (the cycle counter,
//! read by the compiled `N_run` itself: no syscalls during a run), runs the
//! model, and prints a per-node table like the PyTorch profiler's
//! `key_averages`: kernel, source ONNX nodes, calls, self time, % of total,
//! GFLOP/s and % of the machine's nominal peak, sorted by self time.
//!
//! What is measured: a step's time runs from the tick before it to the tick
//! before the next step, on the calling thread, so it includes dispatching
//! to the pool and waiting for the slowest worker; the steps sum to the
//! whole run minus the argument checks. `--trace` writes the last run as a
//! Chrome/Perfetto trace: the caller's track holds every step, and one
//! track per pool thread holds the chunks that thread ran (recorded by the
//! pool with the same clock).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use cpucc::codegen::Source;
use cpucc::codegen::jit::JitModel;
use cpucc::{Error, Result};
use cpucc_runtime::{Pool, Span, clock};

use super::bench::{PlaceArgs, load, pool_error};
use super::{FastMathArgs, ModelArgs, PassArgs};
use crate::cli::engine;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    place: PlaceArgs,
    /// Profiled iterations (times are averaged over them).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Write a Chrome/Perfetto trace (JSON) of the last run.
    #[arg(long, value_name = "FILE.json")]
    trace: Option<PathBuf>,
    /// Table rows to print (the rest are summed in one line).
    #[arg(long, default_value_t = 30)]
    rows: usize,
    #[command(flatten)]
    fast_math: FastMathArgs,
    #[command(flatten)]
    passes: PassArgs,
}

/// Nominal peak f32 FLOP/s of one core per tick-clock cycle: FMA pipes x
/// lanes x 2, by the widest vector ISA the target has. On x86 the TSC runs
/// at the nominal frequency, so ticks/s x this is the nominal peak; on
/// aarch64 the generic timer is not the core clock and no peak is claimed.
fn flops_per_cycle(t: &cpucc_targets::Target) -> Option<f64> {
    if !t.triple.to_string().starts_with("x86_64") {
        return None;
    }
    Some(if t.has("avx512f") {
        64.0
    } else if t.has("fma") {
        32.0
    } else if t.has("avx") {
        16.0
    } else {
        8.0
    })
}

struct Row<'a> {
    source: &'a Source,
    steps: usize,
    ticks: u64,
}

pub fn main(a: Args) -> Result<()> {
    let target = engine::target("native")?;
    if a.iters == 0 {
        cpucc::bail!(Invalid, "--iters must be at least 1");
    }
    let (opts, parts) = a.place.instance_cores(1)?;
    let cores = parts.into_iter().next().expect("one instance");
    let (g, inputs) = load(&a.model, &a.passes)?;
    let m = JitModel::compile_profiled(&g, &target, &a.fast_math.options()?)?;
    let steps = &m.iface.steps;
    // Each step is at most one chunk per thread; a run's worth suffices.
    let pool = Pool::on_cores(cores, opts.pin, opts.spin, steps.len() + 1).map_err(pool_error)?;
    pool.pin_caller().map_err(pool_error)?;
    let mut s = m.session()?;
    pool.first_touch(s.workspace_mut().as_mut_slice());
    s.set_inputs(&inputs)?;
    let pool_ptr = pool.as_c().cast::<u8>();

    let mut per_step = vec![0u64; steps.len()];
    let mut walls = Vec::with_capacity(a.iters);
    let mut sums = Vec::with_capacity(a.iters);
    let mut last: (Vec<u64>, Vec<Span>) = Default::default();
    for i in 0..a.warmup + a.iters {
        pool.take_trace();
        let t = Instant::now();
        // SAFETY: the pool outlives the run.
        unsafe { s.run(pool_ptr)? };
        let wall = t.elapsed().as_secs_f64();
        if i < a.warmup {
            continue;
        }
        walls.push(wall);
        let ticks = s
            .step_ticks()
            .ok_or_else(|| Error::Internal("profiled model has no tick record".into()))?;
        for (acc, w) in per_step.iter_mut().zip(ticks.windows(2)) {
            *acc += w[1].wrapping_sub(w[0]);
        }
        sums.push(ticks[ticks.len() - 1].wrapping_sub(ticks[0]) as f64 / clock::tick_hz());
        last = (ticks, pool.take_trace());
    }
    let hz = clock::tick_hz();
    let per_run_ms = |ticks: u64| ticks as f64 / hz * 1e3 / a.iters as f64;

    let mut rows: BTreeMap<usize, Row> = BTreeMap::new();
    for (i, &src) in steps.iter().enumerate() {
        let r = rows.entry(src).or_insert(Row {
            source: &m.iface.sources[src],
            steps: 0,
            ticks: 0,
        });
        r.steps += 1;
        r.ticks += per_step[i];
    }
    let mut rows: Vec<Row> = rows.into_values().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.ticks));
    let total: u64 = per_step.iter().sum();
    walls.sort_by(f64::total_cmp);
    sums.sort_by(f64::total_cmp);
    let wall_ms = walls[walls.len() / 2] * 1e3;
    let sum_ms = sums[sums.len() / 2] * 1e3;
    let peak = flops_per_cycle(&target).map(|f| f * hz * pool.threads() as f64 / 1e9);

    println!(
        "{:<20} {:<44} {:>6} {:>11} {:>7} {:>9} {:>7}",
        "kernel", "source nodes", "calls", "self ms/run", "%", "GFLOP/s", "% peak"
    );
    let shown = rows.len().min(a.rows);
    for r in &rows[..shown] {
        let ms = per_run_ms(r.ticks);
        let gflops = (r.source.macs > 0).then(|| 2.0 * r.source.macs as f64 / (ms * 1e-3) / 1e9);
        let mut names = std::iter::once(r.source.node.as_str())
            .chain(
                r.source
                    .fused
                    .iter()
                    .map(String::as_str)
                    .filter(|f| *f != r.source.node),
            )
            .collect::<Vec<_>>()
            .join(",");
        if names.chars().count() > 44 {
            names = names.chars().take(41).collect::<String>() + "...";
        }
        println!(
            "{:<20} {:<44} {:>6} {:>11.3} {:>6.1}% {:>9} {:>7}",
            r.source.op.trim_start_matches("cpucc."),
            names,
            r.steps * a.iters,
            ms,
            100.0 * r.ticks as f64 / total.max(1) as f64,
            gflops.map_or("-".into(), |g| format!("{g:.1}")),
            match (gflops, peak) {
                (Some(g), Some(p)) => format!("{:.1}%", 100.0 * g / p),
                _ => "-".into(),
            }
        );
    }
    if rows.len() > shown {
        let rest: u64 = rows[shown..].iter().map(|r| r.ticks).sum();
        println!(
            "{:<20} {:<44} {:>6} {:>11.3} {:>6.1}%",
            format!("({} more)", rows.len() - shown),
            "",
            "",
            per_run_ms(rest),
            100.0 * rest as f64 / total.max(1) as f64
        );
    }
    let macs: u64 = m.iface.sources.iter().map(|s| s.macs).sum();
    println!(
        "steps sum to {sum_ms:.3} ms/run (median; mean {:.3}); median run {wall_ms:.3} ms ({} iters, {} threads on cores {}, {})",
        per_run_ms(total),
        a.iters,
        pool.threads(),
        cpucc_runtime::topology::format_cpu_list(pool.cores()),
        if pool.pinned() {
            "pinned"
        } else {
            "not pinned"
        },
    );
    println!(
        "{:.2} GFLOP/run, {:.1} GFLOP/s; nominal peak {}",
        2.0 * macs as f64 / 1e9,
        2.0 * macs as f64 / (per_run_ms(total) * 1e-3) / 1e9,
        peak.map_or("unknown".into(), |p| format!(
            "{p:.1} GFLOP/s ({} threads x {:.2} GHz x {} FLOP/cycle)",
            pool.threads(),
            hz / 1e9,
            flops_per_cycle(&target).unwrap_or(0.0)
        ))
    );
    if let Some(path) = &a.trace {
        let json = trace_json(&m, &last.0, &last.1, hz, pool.cores());
        std::fs::write(path, json.to_string()).map_err(|e| Error::io(path, e))?;
        println!("trace: {}", path.display());
    }
    Ok(())
}

/// Chrome trace events (`ph: "X"`, microseconds from the run's start).
fn trace_json(
    m: &JitModel,
    ticks: &[u64],
    spans: &[Span],
    hz: f64,
    cores: &[usize],
) -> serde_json::Value {
    let t0 = ticks.first().copied().unwrap_or(0);
    let us = |t: u64| t.wrapping_sub(t0) as f64 / hz * 1e6;
    let src = |step: usize| &m.iface.sources[m.iface.steps[step]];
    let mut events = Vec::new();
    for (t, &cpu) in cores.iter().enumerate() {
        let who = if t == 0 { " (caller)" } else { "" };
        events.push(serde_json::json!({
            "ph": "M", "name": "thread_name", "pid": 1, "tid": t,
            "args": { "name": format!("thread {t}{who} on CPU {cpu}") },
        }));
    }
    for (i, w) in ticks.windows(2).enumerate() {
        let s = src(i);
        events.push(serde_json::json!({
            "ph": "X", "pid": 1, "tid": 0, "cat": "step",
            "name": s.node, "ts": us(w[0]), "dur": us(w[1]) - us(w[0]),
            "args": { "op": s.op, "step": i, "fused": s.fused },
        }));
    }
    for sp in spans {
        // The step whose interval holds the chunk's start.
        let step = ticks
            .windows(2)
            .position(|w| w[0] <= sp.begin && sp.begin < w[1]);
        let name = step.map_or("?".to_string(), |i| src(i).node.clone());
        events.push(serde_json::json!({
            "ph": "X", "pid": 1, "tid": sp.thread, "cat": "chunk",
            "name": name, "ts": us(sp.begin), "dur": us(sp.end) - us(sp.begin),
        }));
    }
    serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}
