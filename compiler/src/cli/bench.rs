//! `cpucc bench`: compiles for the host and times runs on fixed-seed random
//! inputs: warm-up, then timed iterations; min / median / p90 / p99 latency
//! and throughput. `--instances K` serves K copies side by side, each on
//! its own disjoint set of physical cores with its own pool and workspace
//! (throughput is then the aggregate over all instances).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cpucc::codegen::Dumps;
use cpucc::codegen::jit::JitModel;
use cpucc::ir::{Graph, Tensor};
use cpucc::random::SplitMix64;
use cpucc::{Error, Result, import};
use cpucc_runtime::placement::{self, PoolOptions};
use cpucc_runtime::topology::{Topology, format_cpu_list, parse_cpu_list};
use cpucc_runtime::{Pool, placement::DEFAULT_SPIN};

use super::{FastMathArgs, ModelArgs, PassArgs};
use crate::cli::engine;

/// Where the threads run: shared by `bench` and `profile`.
#[derive(clap::Args)]
pub(super) struct PlaceArgs {
    /// Threads per instance, the caller included (default:
    /// `CPUCC_NUM_THREADS`, else every physical core of one NUMA node,
    /// split between the instances).
    #[arg(long)]
    pub threads: Option<usize>,
    /// CPUs to run on, a list like `0-13,28` (default: `CPUCC_CORES`, else
    /// all this process may use); SMT siblings are skipped.
    #[arg(long)]
    pub cores: Option<String>,
    /// Keep to one NUMA node's CPUs (default: `CPUCC_NUMA_NODE`).
    #[arg(long)]
    pub numa_node: Option<usize>,
    /// Plain threads, not pinned to cores (for comparison).
    #[arg(long)]
    pub no_pin: bool,
    /// Microseconds a waiting thread spins before it parks (default:
    /// `CPUCC_SPIN`, else 200).
    #[arg(long)]
    pub spin: Option<u32>,
}

impl PlaceArgs {
    /// The pool options of the flags, then the environment.
    pub fn options(&self) -> Result<PoolOptions> {
        if self.threads == Some(0) {
            cpucc::bail!(Invalid, "--threads must be at least 1");
        }
        let cores = match &self.cores {
            Some(c) => Some(parse_cpu_list(c).ok_or_else(|| {
                Error::Invalid(format!("--cores {c:?} is not a CPU list like 0-3,8"))
            })?),
            None => None,
        };
        PoolOptions {
            threads: self.threads,
            cores,
            numa_node: self.numa_node,
            pin: !self.no_pin,
            spin: self.spin.unwrap_or(DEFAULT_SPIN),
            trace_capacity: 0,
        }
        .with_env()
        .map_err(Error::Invalid)
    }

    /// The cores of `instances` disjoint instances.
    pub fn instance_cores(&self, instances: usize) -> Result<(PoolOptions, Vec<Vec<usize>>)> {
        let opts = self.options()?;
        let topo = Topology::host();
        if instances == 1 {
            let cores = placement::plan(&topo, &opts).map_err(Error::Invalid)?;
            return Ok((opts, vec![cores]));
        }
        // Every node's cores are candidates: instances may span sockets.
        let all = PoolOptions {
            threads: Some(1),
            ..opts.clone()
        };
        let cands = placement::candidate_cores(&topo, &all).map_err(Error::Invalid)?;
        let per = opts.threads.unwrap_or(cands.len() / instances).max(1);
        let parts = placement::partition(&cands, instances, per).map_err(Error::Invalid)?;
        Ok((opts, parts))
    }
}

pub(super) fn pool_error(e: std::io::Error) -> Error {
    Error::Invalid(format!("thread pool: {e}"))
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    place: PlaceArgs,
    /// Independent instances on disjoint cores, each with its own pool and
    /// workspace.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Timed iterations per instance.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Target; only the host can be timed.
    #[arg(long, default_value = "native")]
    target: String,
    #[command(flatten)]
    fast_math: FastMathArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    passes: PassArgs,
}

/// Loads `model`, runs the passes, and makes fixed-seed inputs.
pub(super) fn load(model: &ModelArgs, passes: &PassArgs) -> Result<(Graph, Vec<Tensor>)> {
    let mut g = import::load(&model.model, &model.options()?)?;
    passes.run(&mut g)?;
    let mut rng = SplitMix64::new(0);
    let inputs = g
        .inputs
        .iter()
        .map(|&v| rng.tensor(g.value(v).ty.dtype, &g.value(v).ty.shape))
        .collect();
    Ok((g, inputs))
}

/// One instance's timed latencies (ms) and the wall-clock span of its
/// timed runs.
struct Timed {
    times: Vec<f64>,
    start: Instant,
    end: Instant,
    huge_pages: bool,
}

fn instance(
    m: &JitModel,
    inputs: &[Tensor],
    cores: Vec<usize>,
    opts: &PoolOptions,
    a: &Args,
    sync: &Barrier,
    done: &AtomicUsize,
) -> Result<Timed> {
    let setup = || -> Result<_> {
        let pool = Pool::on_cores(cores, opts.pin, opts.spin, 0).map_err(pool_error)?;
        pool.pin_caller().map_err(pool_error)?;
        let mut s = m.session()?;
        pool.first_touch(s.workspace_mut().as_mut_slice());
        s.set_inputs(inputs)?;
        for _ in 0..a.warmup {
            // SAFETY: the pool outlives every run.
            unsafe { s.run(pool.as_c().cast())? };
        }
        Ok((pool, s))
    };
    let setup = setup();
    // Every instance starts its timed runs together, even after an error.
    sync.wait();
    let (pool, mut s) = setup?;
    let huge_pages = s.workspace_mut().huge_pages();
    let pool_ptr = pool.as_c().cast::<u8>();
    let mut times = Vec::with_capacity(a.iters);
    let start = Instant::now();
    for _ in 0..a.iters {
        let t = Instant::now();
        // SAFETY: as above.
        unsafe { s.run(pool_ptr)? };
        times.push(t.elapsed().as_secs_f64() * 1e3);
        done.fetch_add(1, Ordering::Relaxed);
    }
    let end = Instant::now();
    Ok(Timed {
        times,
        start,
        end,
        huge_pages,
    })
}

/// Draws a progress bar on stderr until `stop`, when the runs will take
/// more than a couple of seconds and stderr is a terminal.
fn progress(done: &AtomicUsize, total: usize, stop: &AtomicBool) {
    let mut err = std::io::stderr();
    while !stop.load(Ordering::Relaxed) {
        let d = done.load(Ordering::Relaxed).min(total);
        let filled = d * 30 / total.max(1);
        let _ = write!(
            err,
            "\r[{}{}] {d}/{total} runs",
            "#".repeat(filled),
            ".".repeat(30 - filled)
        );
        let _ = err.flush();
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = write!(err, "\r{}\r", " ".repeat(50));
}

pub fn main(a: Args) -> Result<()> {
    let target = engine::target(&a.target)?;
    if let Err(why) = target.runs_on_host() {
        cpucc::bail!(Unsupported, "cpucc bench times host code only ({why})");
    }
    if a.iters == 0 || a.instances == 0 {
        cpucc::bail!(Invalid, "--iters and --instances must be at least 1");
    }
    let (opts, parts) = a.place.instance_cores(a.instances)?;
    let t0 = Instant::now();
    let (g, inputs) = load(&a.model, &a.passes)?;
    let copts = a.fast_math.options()?;
    let m = JitModel::compile_with(&g, &target, &copts, &mut Dumps::default())?;
    let compile_s = t0.elapsed().as_secs_f64();

    // One untimed run to estimate whether a progress bar is worth it.
    let probe = Instant::now();
    m.run(&inputs)?;
    let estimate = probe.elapsed().as_secs_f64() * (a.iters + a.warmup) as f64;
    let total = a.iters * a.instances;
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let sync = Arc::new(Barrier::new(a.instances));
    let results: Vec<Result<Timed>> = std::thread::scope(|sc| {
        let bar = (estimate > 2.0 && std::io::stderr().is_terminal())
            .then(|| sc.spawn(|| progress(&done, total, &stop)));
        let handles: Vec<_> = parts
            .iter()
            .map(|cores| {
                let (m, inputs, opts, a, sync, done) = (&m, &inputs, &opts, &a, &sync, &done);
                let cores = cores.clone();
                sc.spawn(move || instance(m, inputs, cores, opts, a, sync, done))
            })
            .collect();
        let out = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("instance panicked".into())))
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        if let Some(b) = bar {
            let _ = b.join();
        }
        out
    });
    let results = results.into_iter().collect::<Result<Vec<_>>>()?;
    let mut times: Vec<f64> = results.iter().flat_map(|r| r.times.clone()).collect();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let (min, median, p90, p99) = (times[0], pct(0.5), pct(0.9), pct(0.99));
    let first = results.iter().map(|r| r.start).min().expect("an instance");
    let last = results.iter().map(|r| r.end).max().expect("an instance");
    let throughput = times.len() as f64 / (last - first).as_secs_f64();
    let threads = parts[0].len();
    let cores: Vec<String> = parts.iter().map(|c| format_cpu_list(c)).collect();
    let cpu = cpucc_runtime::topology::cpu_model();
    let huge = results.iter().all(|r| r.huge_pages);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": a.model.model.display().to_string(),
                "target": target.name,
                "fast_math": a.fast_math.fast_math.as_deref().unwrap_or("none"),
                "cpu_model": cpu,
                "instances": a.instances,
                "threads": threads,
                "cores": cores,
                "pinned": opts.pin,
                "workspace_huge_pages": huge,
                "iters": a.iters,
                "warmup": a.warmup,
                "min_ms": min,
                "median_ms": median,
                "p90_ms": p90,
                "p99_ms": p99,
                "throughput_per_s": throughput,
                "compile_s": compile_s,
            })
        );
    } else {
        println!(
            "{}{}: {} instance(s) x {threads} threads on cores {} ({}), {} iters: min {min:.3} ms, median {median:.3} ms, p90 {p90:.3} ms, p99 {p99:.3} ms; {throughput:.1} runs/s (compile {compile_s:.2} s)",
            a.model.model.display(),
            match a.fast_math.fast_math.as_deref() {
                Some("bf16") => " (fast-math bf16)",
                _ => "",
            },
            a.instances,
            cores.join(" | "),
            if opts.pin { "pinned" } else { "not pinned" },
            a.iters
        );
        println!("cpu: {cpu}");
    }
    Ok(())
}
