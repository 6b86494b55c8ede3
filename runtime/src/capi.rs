//! The C entry points of the static library (declared in
//! `include/cpucc_runtime.h`).

use crate::pool::{CpuccPool, Pool};

/// Creates a pool of `threads` threads (the caller included); 0 means one per
/// physical core. Returns NULL when threads cannot be started.
#[unsafe(no_mangle)]
pub extern "C" fn cpucc_pool_create(threads: usize) -> *mut CpuccPool {
    match Pool::new(threads) {
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
