//! The thread pool behind the `cpucc_pool` callback table: one thread per
//! physical core, each pinned to its core (see `placement.rs` for which
//! cores), the caller being thread 0.
//!
//! `parallel_for(n)` splits `[0, n)` statically into `threads` contiguous
//! chunks (sizes differ by at most one, empty chunks are skipped); the
//! calling thread runs chunk 0 and the workers the rest, and the call returns
//! when all are done. A call allocates nothing: the job lives in one
//! preallocated slot. Waiting threads spin for up to `PoolOptions::spin`
//! microseconds (a model issues its parallel loops back to back; see
//! [`spin_until`]), then park on a condition variable. With tracing on,
//! every chunk's start and end ticks ([`crate::clock`]) go into a
//! preallocated per-thread record buffer.
//!
//! Concurrency: calls from several threads on one pool are serialized by a
//! mutex (one job at a time per pool; use a pool per caller for
//! independent parallel runs). A `parallel_for` issued from inside a task on
//! the same pool runs inline on the calling thread instead of deadlocking.
//! Tasks must not unwind: a panic in a Rust task aborts the process.

use std::cell::Cell;
use std::ffi::c_void;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::placement::{self, PoolOptions};
use crate::topology::Topology;
use crate::{affinity, clock};

/// `cpucc_task`: process items `[begin, end)`.
pub type CpuccTask = unsafe extern "C" fn(arg: *const c_void, begin: usize, end: usize);

/// `cpucc_pool` of the ABI header, field for field.
#[repr(C)]
pub struct CpuccPool {
    pub ctx: *mut c_void,
    pub threads: usize,
    pub parallel_for:
        unsafe extern "C" fn(ctx: *mut c_void, n: usize, task: CpuccTask, arg: *const c_void),
}

/// A thread pool; [`Pool::as_c`] gives the table a model's `N_run` takes.
#[repr(C)]
pub struct Pool {
    // First, so a `*mut Pool` is a `*mut CpuccPool` (the C API relies on it).
    c: CpuccPool,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// The CPU of each thread (index 0 = the caller's).
    cores: Vec<usize>,
    pinned: bool,
    /// Each worker's affinity mask as it read it back after pinning
    /// (index 0, the caller, is not touched by the pool).
    masks: Vec<Vec<usize>>,
}

// SAFETY: `c.ctx` points into `shared`, which is `Sync`; the table itself is
// immutable after construction.
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

/// More threads than any machine has cores: a caller's mistake.
const MAX_THREADS: usize = 1 << 16;

/// A worker's index and its affinity mask after pinning.
type MaskReport = (usize, std::io::Result<Vec<usize>>);

/// One chunk a thread ran, in [`clock::ticks`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    /// Pool thread index (0 = the caller).
    pub thread: usize,
    pub begin: u64,
    pub end: u64,
}

#[derive(Clone, Copy)]
struct Job {
    epoch: u64,
    n: usize,
    task: Option<CpuccTask>,
    arg: usize,
    stop: bool,
}

struct Shared {
    threads: usize,
    spin: u32,
    /// Per thread, when tracing: chunks run since the last `take_trace`.
    trace: Vec<Mutex<Vec<Span>>>,
    /// Held for a whole `parallel_for`: one job at a time.
    run: Mutex<()>,
    job: Mutex<Job>,
    wake: Condvar,
    /// Mirrors `job.epoch` so idle workers can spin without the lock.
    epoch: AtomicU64,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    done_lock: Mutex<()>,
    done: Condvar,
}

thread_local! {
    /// The pool whose job this thread is running, to run nested calls inline.
    static CURRENT: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Tasks never unwind (they are `extern "C"`), so a poisoned lock only
    // means a panic elsewhere; the data is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Chunk `t` of `[0, n)` split over `threads`: contiguous, the first
/// `n % threads` chunks one longer (kernels plan their items for it).
pub fn chunk(n: usize, threads: usize, t: usize) -> (usize, usize) {
    let (q, r) = (n / threads, n % threads);
    let begin = t * q + t.min(r);
    (begin, begin + q + usize::from(t < r))
}

impl Shared {
    /// Runs one chunk as thread `index`, recording it when tracing.
    ///
    /// # Safety
    /// `task` accepts `arg` on `[b, e)`.
    unsafe fn run_chunk(
        &self,
        index: usize,
        task: CpuccTask,
        arg: *const c_void,
        b: usize,
        e: usize,
    ) {
        let Some(rec) = self.trace.get(index) else {
            // SAFETY: the caller's contract.
            unsafe { task(arg, b, e) };
            return;
        };
        let begin = clock::ticks();
        // SAFETY: the caller's contract.
        unsafe { task(arg, b, e) };
        let end = clock::ticks();
        let mut r = lock(rec);
        // Never grow (a run allocates nothing): full buffers drop records.
        if r.len() < r.capacity() {
            r.push(Span {
                thread: index,
                begin,
                end,
            });
        }
    }

    fn parallel_for(&self, n: usize, task: CpuccTask, arg: *const c_void) {
        if n == 0 {
            return;
        }
        let me: *const Shared = self;
        if CURRENT.get() == me {
            // SAFETY: the caller's contract: `task` accepts `arg` on [0, n).
            unsafe { task(arg, 0, n) };
            return;
        }
        if self.threads == 1 || n == 1 {
            // SAFETY: as above.
            unsafe { self.run_chunk(0, task, arg, 0, n) };
            return;
        }
        let _one_job = lock(&self.run);
        let outer = CURRENT.replace(me);
        self.pending.store(self.threads - 1, Ordering::Relaxed);
        {
            let mut job = lock(&self.job);
            job.epoch += 1;
            job.n = n;
            job.task = Some(task);
            job.arg = arg as usize;
            self.epoch.store(job.epoch, Ordering::Release);
        }
        self.wake.notify_all();
        let (b, e) = chunk(n, self.threads, 0);
        // SAFETY: as above; chunks are disjoint.
        unsafe { self.run_chunk(0, task, arg, b, e) };
        spin_until(self.spin, || self.pending.load(Ordering::Acquire) == 0);
        let mut g = lock(&self.done_lock);
        while self.pending.load(Ordering::Acquire) != 0 {
            g = self.done.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
        CURRENT.set(outer);
    }

    fn worker(&self, index: usize) {
        CURRENT.set(self);
        let mut seen = 0;
        loop {
            spin_until(self.spin, || self.epoch.load(Ordering::Acquire) != seen);
            let job = {
                let mut g = lock(&self.job);
                while g.epoch == seen && !g.stop {
                    g = self.wake.wait(g).unwrap_or_else(PoisonError::into_inner);
                }
                *g
            };
            if job.stop {
                return;
            }
            seen = job.epoch;
            let (b, e) = chunk(job.n, self.threads, index);
            if let Some(task) = job.task
                && b < e
            {
                // SAFETY: the job's caller waits for us; its arg is alive.
                unsafe { self.run_chunk(index, task, job.arg as *const c_void, b, e) };
            }
            if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                let _g = lock(&self.done_lock);
                self.done.notify_one();
            }
        }
    }
}

/// Busy-waits up to `spin_us` microseconds for `ready` (the caller then
/// checks it again under its lock before parking). The first [`PURE_SPIN`] only `pause`; after that every check
/// also yields the core, so on an oversubscribed machine a runnable thread
/// (possibly the one being waited for) gets it. The budget is time, not a
/// count of `pause`s, whose latency ranges from ~10 to ~140 cycles between
/// x86 generations: 100 of them (1.3 us here) parked the workers between
/// MobileNetV2's steps, and 2 threads ran it slower than one (5.96 ms vs
/// 5.5; 3.0 ms spinning longer).
fn spin_until(spin_us: u32, ready: impl Fn() -> bool) {
    const PAUSES: usize = 16;
    if ready() {
        return;
    }
    let start = Instant::now();
    let budget = Duration::from_micros(spin_us.into());
    loop {
        for _ in 0..PAUSES {
            spin_loop();
            if ready() {
                return;
            }
        }
        let waited = start.elapsed();
        if waited >= budget {
            return;
        }
        if waited >= PURE_SPIN {
            std::thread::yield_now();
        }
    }
}

/// How long a waiting thread spins before it starts yielding its core.
const PURE_SPIN: Duration = Duration::from_micros(20);

unsafe extern "C" fn c_parallel_for(
    ctx: *mut c_void,
    n: usize,
    task: CpuccTask,
    arg: *const c_void,
) {
    // SAFETY: `ctx` is the `Shared` of a live pool (set in `Pool::new`).
    let shared = unsafe { &*ctx.cast::<Shared>() };
    shared.parallel_for(n, task, arg);
}

unsafe extern "C" fn call_closure<F: Fn(usize, usize) + Sync>(
    arg: *const c_void,
    begin: usize,
    end: usize,
) {
    // SAFETY: `Pool::parallel_for` passes a `&F` that outlives the job.
    let f = unsafe { &*arg.cast::<F>() };
    f(begin, end);
}

impl Pool {
    /// A pool of `threads` threads including the caller's (`threads - 1`
    /// workers), pinned to physical cores; 0 means one per physical core of
    /// one NUMA node. Environment variables are not read (see
    /// [`PoolOptions::with_env`]).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        Pool::with_options(&PoolOptions {
            threads: (threads > 0).then_some(threads),
            ..PoolOptions::default()
        })
    }

    /// A pool placed by `opts` (see `placement.rs`).
    pub fn with_options(opts: &PoolOptions) -> std::io::Result<Pool> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        if let Some(t) = opts.threads
            && t > MAX_THREADS
        {
            return Err(invalid(format!(
                "{t} threads requested, at most {MAX_THREADS} supported"
            )));
        }
        let cores = placement::plan(&Topology::host(), opts).map_err(invalid)?;
        Pool::on_cores(cores, opts.pin, opts.spin, opts.trace_capacity)
    }

    /// A pool of one thread per entry of `cores` (thread i on `cores[i]`),
    /// pinned when `pin`; see [`PoolOptions`] for `spin` and `trace_capacity`.
    pub fn on_cores(
        cores: Vec<usize>,
        pin: bool,
        spin: u32,
        trace_capacity: usize,
    ) -> std::io::Result<Pool> {
        let threads = cores.len();
        if threads == 0 || threads > MAX_THREADS {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a pool needs 1 to {MAX_THREADS} threads, not {threads}"),
            ));
        }
        let trace = if trace_capacity > 0 {
            (0..threads)
                .map(|_| Mutex::new(Vec::with_capacity(trace_capacity)))
                .collect()
        } else {
            Vec::new()
        };
        let shared = Arc::new(Shared {
            threads,
            spin,
            trace,
            run: Mutex::new(()),
            job: Mutex::new(Job {
                epoch: 0,
                n: 0,
                task: None,
                arg: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            epoch: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
        });
        let mut pool = Pool {
            c: CpuccPool {
                ctx: Arc::as_ptr(&shared).cast_mut().cast(),
                threads,
                parallel_for: c_parallel_for,
            },
            shared,
            workers: Vec::with_capacity(threads - 1),
            cores: cores.clone(),
            pinned: pin,
            masks: vec![Vec::new(); threads],
        };
        // Workers report their read-back masks (or the pinning error) before
        // the constructor returns.
        let reports: Arc<(Mutex<Vec<MaskReport>>, Condvar)> = Arc::default();
        for (index, &cpu) in cores.iter().enumerate().skip(1) {
            let shared = Arc::clone(&pool.shared);
            let reports = Arc::clone(&reports);
            // On a spawn error, dropping `pool` stops the workers started so far.
            pool.workers.push(
                std::thread::Builder::new()
                    .name(format!("cpucc-pool-{index}"))
                    .spawn(move || {
                        let mask = if pin {
                            affinity::set_current(&[cpu]).and_then(|()| affinity::current())
                        } else {
                            affinity::current()
                        };
                        lock(&reports.0).push((index, mask));
                        reports.1.notify_one();
                        shared.worker(index)
                    })?,
            );
        }
        let mut got = lock(&reports.0);
        while got.len() < threads - 1 {
            got = reports.1.wait(got).unwrap_or_else(PoisonError::into_inner);
        }
        for (index, mask) in got.drain(..) {
            pool.masks[index] = mask.map_err(|e| {
                std::io::Error::new(e.kind(), format!("pinning pool thread {index}: {e}"))
            })?;
        }
        drop(got);
        Ok(pool)
    }

    /// Pins the calling thread, which runs chunk 0 of every
    /// `parallel_for`, to the pool's first core (no-op for unpinned pools).
    pub fn pin_caller(&self) -> std::io::Result<()> {
        if self.pinned {
            affinity::set_current(&self.cores[..1])?;
        }
        Ok(())
    }

    /// The CPU of each thread (index 0 = the caller's).
    pub fn cores(&self) -> &[usize] {
        &self.cores
    }

    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Each worker's affinity mask as read back by the worker after
    /// pinning; entry 0 (the caller) is empty.
    pub fn worker_masks(&self) -> &[Vec<usize>] {
        &self.masks
    }

    /// Takes the chunk records collected since the last call (empty unless
    /// the pool was built with a trace capacity). Call between runs.
    pub fn take_trace(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for rec in &self.shared.trace {
            let mut r = lock(rec);
            out.extend_from_slice(&r);
            r.clear();
        }
        out
    }

    /// Writes one byte per 4 KiB page of `mem` from the pool's threads, in
    /// the static partition, so a fresh mapping's pages are placed on the
    /// NUMA node of the threads that touch them.
    pub fn first_touch(&self, mem: &mut [u8]) {
        const PAGE: usize = 4096;
        let base = mem.as_mut_ptr() as usize;
        let len = mem.len();
        self.parallel_for(len.div_ceil(PAGE), |b, e| {
            for p in b..e {
                let at = (base + p * PAGE) as *mut u8;
                // SAFETY: page p starts inside `mem`, which is borrowed
                // mutably for the whole call; chunks are disjoint. The byte
                // is rewritten unchanged: only the fault matters.
                unsafe { std::ptr::write_volatile(at, std::ptr::read_volatile(at)) };
            }
        });
    }

    pub fn threads(&self) -> usize {
        self.c.threads
    }

    /// The C table to pass as `N_run`'s `pool`; valid while `self` lives.
    pub fn as_c(&self) -> *const CpuccPool {
        &self.c
    }

    /// Runs `f(begin, end)` over the chunks of `[0, n)`, as the C entry does.
    pub fn parallel_for<F: Fn(usize, usize) + Sync>(&self, n: usize, f: F) {
        let arg: *const F = &f;
        self.shared
            .parallel_for(n, call_closure::<F>, arg.cast::<c_void>());
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.shared.job).stop = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            // A worker cannot panic (tasks abort instead), so join succeeds.
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chunk;

    #[test]
    fn chunks_tile_the_range_evenly() {
        for n in 0..50 {
            for threads in 1..9 {
                let mut next = 0;
                for t in 0..threads {
                    let (b, e) = chunk(n, threads, t);
                    assert_eq!(b, next);
                    assert!(e - b == n / threads || e - b == n / threads + 1);
                    next = e;
                }
                assert_eq!(next, n);
            }
        }
    }
}
