//! Runtime for compiled cpucc artifacts.
//!
//! Empty until the backend lands (issues 3 and 6): it will hold the pinned,
//! NUMA-aware `cpucc_pool` implementation and 64-byte aligned, huge-page
//! backed workspaces. Nothing in the foundation needs it yet.
