//! `Pool::parallel_for`: every index exactly once, chunking, the caller's
//! participation, concurrent callers and nested calls; pinning (each
//! worker's affinity read back), chunk tracing and first touch.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::thread::ThreadId;

use cpucc_runtime::topology::Topology;
use cpucc_runtime::{Pool, PoolOptions, affinity, placement};

fn check_coverage(pool: &Pool, n: usize) {
    let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
    let calls = AtomicUsize::new(0);
    pool.parallel_for(n, |b, e| {
        assert!(b < e && e <= n, "bad chunk [{b}, {e}) of {n}");
        calls.fetch_add(1, Ordering::Relaxed);
        for h in &hits[b..e] {
            h.fetch_add(1, Ordering::Relaxed);
        }
    });
    for (i, h) in hits.iter().enumerate() {
        assert_eq!(
            h.load(Ordering::Relaxed),
            1,
            "index {i} of {n}, {} threads",
            pool.threads()
        );
    }
    // One contiguous chunk per thread at most, none empty.
    assert_eq!(calls.load(Ordering::Relaxed), n.min(pool.threads()));
}

#[test]
fn every_index_exactly_once() {
    for threads in [1, 2, 3, 4, 7, 16] {
        let pool = Pool::new(threads).unwrap();
        assert_eq!(pool.threads(), threads);
        for n in [0, 1, 2, 3, 5, 7, 15, 16, 17, 100, 1000, 4097] {
            check_coverage(&pool, n);
        }
    }
}

#[test]
fn zero_threads_means_physical_cores() {
    let pool = Pool::new(0).unwrap();
    let want = placement::plan(&Topology::host(), &PoolOptions::default()).unwrap();
    assert_eq!(pool.cores(), want.as_slice());
    // One thread per physical core: never more than the sysfs count.
    assert!(pool.threads() <= cpucc_targets::physical_cores());
    check_coverage(&pool, 123);
}

#[test]
fn workers_are_pinned_to_their_cores() {
    let allowed = affinity::current().unwrap();
    let topo = Topology::host();
    let cores = topo.physical_cores(&allowed);
    let pool = Pool::with_options(&PoolOptions {
        threads: Some(cores.len()),
        ..PoolOptions::default()
    })
    .unwrap();
    let mut used = pool.cores().to_vec();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used.len(), pool.threads(), "distinct cores");
    for (i, mask) in pool.worker_masks().iter().enumerate().skip(1) {
        assert_eq!(mask, &vec![pool.cores()[i]], "worker {i}");
    }
    // The caller is pinned only on request, to core 0 of the pool.
    assert_eq!(affinity::current().unwrap(), allowed);
    std::thread::scope(|s| {
        s.spawn(|| {
            pool.pin_caller().unwrap();
            assert_eq!(affinity::current().unwrap(), vec![pool.cores()[0]]);
            check_coverage(&pool, 64);
        });
    });
}

#[test]
fn unpinned_workers_keep_the_process_mask() {
    let allowed = affinity::current().unwrap();
    let pool = Pool::with_options(&PoolOptions {
        threads: Some(3),
        pin: false,
        ..PoolOptions::default()
    })
    .unwrap();
    for mask in &pool.worker_masks()[1..] {
        assert_eq!(mask, &allowed);
    }
    check_coverage(&pool, 10);
}

#[test]
fn cores_outside_the_mask_are_refused() {
    let allowed = affinity::current().unwrap();
    let outside = allowed.last().unwrap() + 1;
    let e = Pool::with_options(&PoolOptions {
        cores: Some(vec![outside]),
        ..PoolOptions::default()
    })
    .err()
    .expect("an error");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn traces_record_every_chunk_once() {
    let pool = Pool::on_cores(vec![0; 3], false, 100, 16).unwrap();
    pool.parallel_for(9, |_, _| std::hint::black_box(()));
    pool.parallel_for(1, |_, _| ());
    let mut spans = pool.take_trace();
    spans.sort_by_key(|s| (s.thread, s.begin));
    let threads: Vec<usize> = spans.iter().map(|s| s.thread).collect();
    // Three chunks of the first job, then the single-item job inline.
    assert_eq!(threads, vec![0, 0, 1, 2]);
    assert!(spans.iter().all(|s| s.begin <= s.end));
    assert!(pool.take_trace().is_empty(), "taken");
    // Full buffers drop records instead of growing.
    for _ in 0..40 {
        pool.parallel_for(3, |_, _| ());
    }
    assert_eq!(pool.take_trace().len(), 3 * 16);
}

#[test]
fn first_touch_keeps_the_contents() {
    let pool = Pool::new(2).unwrap();
    let mut a = cpucc_runtime::Arena::new(3 * cpucc_runtime::HUGE_PAGE + 5).unwrap();
    for (i, b) in a.as_mut_slice().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    pool.first_touch(a.as_mut_slice());
    assert!(
        a.as_slice()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8)
    );
}

#[test]
fn absurd_thread_counts_are_refused() {
    let e = Pool::new(usize::MAX).err().expect("an error");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn the_caller_runs_the_first_chunk_and_workers_the_rest() {
    let pool = Pool::new(4).unwrap();
    let who: Mutex<Vec<(usize, ThreadId)>> = Mutex::new(Vec::new());
    pool.parallel_for(8, |b, _| {
        who.lock().unwrap().push((b, std::thread::current().id()))
    });
    let who = who.into_inner().unwrap();
    let me = std::thread::current().id();
    let first = who.iter().find(|(b, _)| *b == 0).unwrap();
    assert_eq!(first.1, me);
    let ids: HashSet<ThreadId> = who.iter().map(|w| w.1).collect();
    assert_eq!(ids.len(), 4, "each chunk on its own thread");
}

#[test]
fn many_small_jobs_in_a_row() {
    let pool = Pool::new(3).unwrap();
    let total = AtomicUsize::new(0);
    for i in 0..2000 {
        pool.parallel_for(i % 7, |b, e| {
            total.fetch_add(e - b, Ordering::Relaxed);
        });
    }
    let want: usize = (0..2000).map(|i| i % 7).sum();
    assert_eq!(total.load(Ordering::Relaxed), want);
}

#[test]
fn concurrent_callers_share_one_pool() {
    let pool = Pool::new(3).unwrap();
    std::thread::scope(|s| {
        for c in 0..4 {
            let pool = &pool;
            s.spawn(move || {
                for round in 0..200 {
                    check_coverage(pool, 1 + (c * 31 + round) % 50);
                }
            });
        }
    });
}

#[test]
fn nested_calls_run_inline() {
    let pool = Pool::new(3).unwrap();
    let total = AtomicUsize::new(0);
    pool.parallel_for(6, |b, e| {
        for _ in b..e {
            pool.parallel_for(10, |b2, e2| {
                total.fetch_add(e2 - b2, Ordering::Relaxed);
            });
        }
    });
    assert_eq!(total.load(Ordering::Relaxed), 60);
}

#[test]
fn the_c_table_drives_the_same_pool() {
    use std::ffi::c_void;
    unsafe extern "C" fn add_range(arg: *const c_void, b: usize, e: usize) {
        let sum = unsafe { &*arg.cast::<AtomicUsize>() };
        sum.fetch_add((b..e).sum::<usize>(), Ordering::Relaxed);
    }
    let pool = Pool::new(4).unwrap();
    let c = unsafe { &*pool.as_c() };
    assert_eq!(c.threads, 4);
    let sum = AtomicUsize::new(0);
    unsafe { (c.parallel_for)(c.ctx, 1000, add_range, (&raw const sum).cast()) };
    assert_eq!(sum.load(Ordering::Relaxed), 999 * 1000 / 2);
}
