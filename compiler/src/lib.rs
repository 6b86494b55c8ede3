//! cpucc: an ahead-of-time graph compiler for CPUs.
//!
//! Data flow: [`import`] (ONNX) -> [`ir::Graph`] -> [`interp`] (reference
//! semantics from the [`ops`] table). See ARCHITECTURE.md.

#[macro_use]
pub mod error;
pub mod import;
pub mod interp;
pub mod io;
pub mod ir;
pub mod ops;
pub mod passes;
pub mod random;

pub use error::{Error, Result};
