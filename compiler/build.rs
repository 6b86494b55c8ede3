//! Compiles the vendored `onnx.proto` with prost. `protox` parses the .proto
//! in pure Rust, so no `protoc` binary is needed on the build machine.
fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"]).expect("parse onnx.proto");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generate onnx.proto bindings");
}
