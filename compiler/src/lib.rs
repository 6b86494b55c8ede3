//! cpucc: an ahead-of-time graph compiler for CPUs.
//!
//! Data flow: [`import`] (ONNX) -> [`ir::Graph`] -> [`passes`] ->
//! [`codegen`] (native code through Cranelift: objects or the JIT), with
//! [`interp`] (reference semantics from the [`ops`] table) as the oracle.
//! See ARCHITECTURE.md.

#[macro_use]
pub mod error;
pub mod codegen;
pub mod cross;
pub mod import;
pub mod interp;
pub mod io;
pub mod ir;
pub mod ops;
pub mod passes;
pub mod random;

pub use error::{Error, Result};
