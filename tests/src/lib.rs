//! Test suites shared by the test binaries and `cargo xtask`: the ONNX
//! node-test runner and the benchmark/test models built in code.

pub mod conformance;
pub mod gemm_graph;
pub mod models;
pub mod random_graph;
