//! ONNX import: prost types generated from the vendored `onnx.proto` (IR 14,
//! opset 28), decoded into the IR.

mod graph;
mod tensor;

pub use graph::{input_names, load_bytes};
pub use tensor::{tensor_from_proto, tensor_to_proto};

/// The protobuf messages of `onnx.proto`, as prost generates them.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
