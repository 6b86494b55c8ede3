//! The C entry points of the static library (declared in
//! `include/cpucc_runtime.h`).

use crate::placement::PoolOptions;
use crate::pool::{CpuccPool, Pool};

/// Creates a pool of `threads` threads (the caller included), pinned to
/// physical cores, and pins the calling thread to the first; 0 means
/// `CPUCC_NUM_THREADS`, else one per physical core of one NUMA node.
/// `CPUCC_CORES`, `CPUCC_NUMA_NODE` and `CPUCC_SPIN` apply. Returns NULL
/// when the settings are invalid or threads cannot be started.
#[unsafe(no_mangle)]
pub extern "C" fn cpucc_pool_create(threads: usize) -> *mut CpuccPool {
    let opts = PoolOptions {
        threads: (threads > 0).then_some(threads),
        ..PoolOptions::default()
    }
    .with_env();
    let pool = opts
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        .and_then(|o| Pool::with_options(&o))
        .and_then(|p| p.pin_caller().map(|()| p));
    match pool {
        // `Pool` is `repr(C)` with the `cpucc_pool` table first, so the box's
        // address is the table's.
        Ok(p) => Box::into_raw(Box::new(p)).cast::<CpuccPool>(),
        Err(_) => std::ptr::null_mut(),
    }
}

/// Stops the pool's threads and frees it. NULL is ignored.
///
/// # Safety
/// `pool` is NULL or came from `cpucc_pool_create` and is not used again;
/// no `parallel_for` on it is running.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cpucc_pool_destroy(pool: *mut CpuccPool) {
    if !pool.is_null() {
        // SAFETY: per the contract, `pool` is a leaked `Box<Pool>`.
        drop(unsafe { Box::from_raw(pool.cast::<Pool>()) });
    }
}
