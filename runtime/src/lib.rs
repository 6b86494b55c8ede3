//! Runtime for compiled cpucc artifacts: the `cpucc_pool` a model's `N_run`
//! takes (see `include/cpucc_runtime.h`), usable from Rust ([`Pool`]) and,
//! through the static library, from C (`cpucc_pool_create`/`_destroy`);
//! the placement of its threads (physical cores from sysfs topology, NUMA
//! nodes, affinity), workspace arenas on huge pages, the tick clock
//! profiles use, and AMX tile permission (`cpucc_amx_init`).
//!
//! `harness/harness.c` is the generic C program that runs a compiled model
//! on `.npy` inputs (cross execution under qemu uses it).

pub mod affinity;
pub mod amx;
mod arena;
mod capi;
pub mod clock;
pub mod placement;
mod pool;
pub mod topology;

pub use arena::{Arena, HUGE_PAGE};
pub use capi::{cpucc_pool_create, cpucc_pool_destroy};
pub use placement::PoolOptions;
pub use pool::{CpuccPool, CpuccTask, Pool, Span, chunk};
