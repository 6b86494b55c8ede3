//! Runtime for compiled cpucc artifacts: the `cpucc_pool` a model's `N_run`
//! takes (see `include/cpucc_runtime.h`), usable from Rust ([`Pool`]) and,
//! through the static library, from C (`cpucc_pool_create`/`_destroy`).
//!
//! `harness/harness.c` is the generic C program that runs a compiled model
//! on `.npy` inputs (cross execution under qemu uses it).

mod capi;
mod pool;

pub use capi::{cpucc_pool_create, cpucc_pool_destroy};
pub use pool::{CpuccPool, CpuccTask, Pool};
