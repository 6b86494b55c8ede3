//! Runs of JIT-compiled models through the runtime: a run allocates nothing
//! on the heap (a counting global allocator watches every thread, the
//! pool's workers included), and a profiled run's per-step times add up to
//! the run's wall time.
//!
//! One test per concern, serialized through a lock: the allocator counts
//! process-wide, so nothing else may run during a counted window.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use cpucc::codegen::Dumps;
use cpucc::codegen::jit::JitModel;
use cpucc::import::{self, ImportOptions};
use cpucc::ir::Graph;
use cpucc::random::SplitMix64;
use cpucc_runtime::{Pool, clock};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn conv_relu() -> Graph {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models/conv_relu.onnx");
    let mut g = import::load(&path, &ImportOptions::default()).unwrap();
    cpucc::passes::run_pipeline(&mut g, cpucc::passes::DEFAULT_PIPELINE).unwrap();
    g
}

fn inputs(g: &Graph) -> Vec<cpucc::ir::Tensor> {
    let mut rng = SplitMix64::new(1);
    g.inputs
        .iter()
        .map(|&v| rng.tensor(g.value(v).ty.dtype, &g.value(v).ty.shape))
        .collect()
}

#[test]
fn a_run_allocates_nothing() {
    let _one = SERIAL.lock().unwrap();
    let g = conv_relu();
    let m = JitModel::compile(&g, &cpucc_targets::Target::host(), &mut Dumps::default()).unwrap();
    let ins = inputs(&g);
    let want = m.run(&ins).unwrap();
    let pool = Pool::new(2).unwrap();
    let mut s = m.session().unwrap();
    s.set_inputs(&ins).unwrap();
    // Warm up: threads started, lazy statics initialized.
    unsafe { s.run(pool.as_c().cast()).unwrap() };
    ALLOCS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for _ in 0..20 {
        unsafe { s.run(pool.as_c().cast()).unwrap() };
        unsafe { s.run(std::ptr::null()).unwrap() };
    }
    COUNTING.store(false, Ordering::Relaxed);
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        0,
        "heap allocations during runs"
    );
    // The counter does count: the allocating form is seen.
    COUNTING.store(true, Ordering::Relaxed);
    let got = m.run(&ins).unwrap();
    COUNTING.store(false, Ordering::Relaxed);
    assert!(ALLOCS.load(Ordering::Relaxed) > 0);
    // And the session computes what the plain run does.
    assert_eq!(s.outputs().unwrap(), want);
    assert_eq!(got, want);
}

#[test]
fn profiled_steps_sum_to_the_run_time() {
    let _one = SERIAL.lock().unwrap();
    let g = conv_relu();
    let m = JitModel::compile_profiled(&g, &cpucc_targets::Target::host(), &Default::default())
        .unwrap();
    let plain =
        JitModel::compile(&g, &cpucc_targets::Target::host(), &mut Dumps::default()).unwrap();
    let ins = inputs(&g);
    let n = m.iface.steps.len();
    assert!(n > 0);
    assert!(m.iface.profile_offset.is_some());
    assert!(plain.iface.profile_offset.is_none());
    // Profiling does not change the model's results.
    assert_eq!(m.run(&ins).unwrap(), plain.run(&ins).unwrap());
    let mut s = m.session().unwrap();
    s.set_inputs(&ins).unwrap();
    let hz = clock::tick_hz();
    let mut pairs = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        unsafe { s.run(std::ptr::null()).unwrap() };
        let wall = t.elapsed().as_secs_f64();
        let ticks = s.step_ticks().unwrap();
        assert_eq!(ticks.len(), n + 1);
        assert!(ticks.windows(2).all(|w| w[0] <= w[1]), "ticks increase");
        let sum: u64 = ticks.windows(2).map(|w| w[1] - w[0]).sum();
        pairs.push((wall, sum as f64 / hz));
    }
    // Median run: the steps cover the run (less entry checks), never more.
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (wall, steps) = pairs[pairs.len() / 2];
    assert!(
        steps <= wall * 1.02 + 2e-6,
        "steps {steps} s > run {wall} s"
    );
    assert!(
        steps >= wall * 0.9 - 20e-6,
        "steps {steps} s << run {wall} s"
    );
}
