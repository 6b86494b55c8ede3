//! The `cpucc` binary on bad input: every case exits with code 2 and one
//! line on stderr that says what is wrong; none panics.

use std::path::{Path, PathBuf};
use std::process::Command;

use cpucc::import::onnx::proto::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto, tensor_shape_proto::Dimension, tensor_shape_proto::dimension,
    type_proto,
};
use cpucc::import::onnx::tensor_to_proto;
use cpucc::ir::{DType, Tensor};
use prost::Message;

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs cpucc and returns (exit code, stderr).
fn cpucc(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cpucc")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Asserts exit code 2 and a single stderr line containing every `needle`.
fn rejects(args: &[&str], needles: &[&str]) {
    let (code, err) = cpucc(args);
    assert_eq!(code, 2, "exit code for {args:?}; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr {err:?} lacks {n:?}");
    }
}

fn vi(name: &str, dims: &[Dimension]) -> ValueInfoProto {
    let mut v = untyped_shape(name);
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.shape = Some(TensorShapeProto { dim: dims.to_vec() });
    }
    v
}

/// A float value whose shape is left for inference.
fn untyped_shape(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DType::F32.onnx_code()),
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn fixed(n: i64) -> Dimension {
    Dimension { value: Some(dimension::Value::DimValue(n)), ..Default::default() }
}

fn node(name: &str, op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, input: ValueInfoProto, output: &str) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(13) }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: vec![input],
            output: vec![untyped_shape(output)],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = tmp(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// x -> Add(x, b) -> y, with `b` an initializer of shape [2].
fn add_model() -> Vec<u8> {
    let b = tensor_to_proto(&Tensor::from_vec(&[2], vec![1f32, 2.0]).unwrap(), "b");
    model(vec![node("add", "Add", &["x", "b"], "y")], vec![b], vi("x", &[fixed(2)]), "y")
}

#[test]
fn empty_file() {
    let p = write("empty.onnx", b"");
    rejects(&["run", s(&p)], &["empty"]);
}

#[test]
fn truncated_model() {
    let full = add_model();
    let p = write("truncated.onnx", &full[..full.len() - 7]);
    rejects(&["run", s(&p)], &["truncated.onnx"]);
}

#[test]
fn random_bytes() {
    let mut rng = cpucc::random::SplitMix64::new(7);
    let bytes: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
    let p = write("random.onnx", &bytes);
    rejects(&["inspect", s(&p)], &["not an ONNX model"]);
}

#[test]
fn valid_protobuf_of_another_message() {
    let t = tensor_to_proto(&Tensor::from_vec(&[3], vec![1f32, 2.0, 3.0]).unwrap(), "t");
    let p = write("tensor.onnx", &t.encode_to_vec());
    rejects(&["run", s(&p)], &["not an ONNX model"]);
}

#[test]
fn graph_with_a_cycle() {
    let nodes = vec![node("a", "Relu", &["x2"], "x1"), node("b", "Relu", &["x1"], "x2")];
    let p = write("cycle.onnx", &model(nodes, vec![], vi("x", &[fixed(2)]), "x2"));
    rejects(&["run", s(&p)], &["cycle", "node 'a'"]);
}

#[test]
fn missing_initializer() {
    let p = write(
        "missing.onnx",
        &model(vec![node("add", "Add", &["x", "w"], "y")], vec![], vi("x", &[fixed(2)]), "y"),
    );
    rejects(&["run", s(&p)], &["node 'add'", "input 'w'", "not defined"]);
}

#[test]
fn input_dtype_mismatch() {
    let m = write("add.onnx", &add_model());
    let x = tmp("x_f64.npy");
    cpucc::io::write_npy(&x, &Tensor::from_vec(&[2], vec![1f64, 2.0]).unwrap()).unwrap();
    rejects(&["run", s(&m), "--input", &format!("x={}", s(&x))], &["input 'x'", "f32[2]", "f64[2]"]);
}

#[test]
fn input_shape_mismatch() {
    let m = write("add2.onnx", &add_model());
    let x = tmp("x_3.npy");
    cpucc::io::write_npy(&x, &Tensor::from_vec(&[3], vec![1f32, 2.0, 3.0]).unwrap()).unwrap();
    rejects(&["run", s(&m), "--input", s(&x)], &["input 'x'", "dimension 0"]);
}

#[test]
fn symbolic_dimension_needs_a_shape() {
    let batch = Dimension { value: Some(dimension::Value::DimParam("batch".into())), ..Default::default() };
    let p = write(
        "symbolic.onnx",
        &model(vec![node("r", "Relu", &["x"], "y")], vec![], vi("x", &[batch, fixed(4)]), "y"),
    );
    rejects(&["inspect", s(&p)], &["input 'x'", "dimension 0", "'batch'", "--shape"]);
    let (code, err) = cpucc(&["inspect", s(&p), "--shape", "x=3,4"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn run_writes_outputs_matching_hand_computed_values() {
    let m = write("add3.onnx", &add_model());
    let x = tmp("x_ok.npy");
    cpucc::io::write_npy(&x, &Tensor::from_vec(&[2], vec![10f32, 20.0]).unwrap()).unwrap();
    let out = tmp("out");
    let (code, err) = cpucc(&["run", s(&m), "--input", s(&x), "--output-dir", s(&out)]);
    assert_eq!(code, 0, "{err}");
    let y = cpucc::io::read_tensor(&out.join("output_0.npy")).unwrap();
    assert_eq!(y, Tensor::from_vec(&[2], vec![11f32, 22.0]).unwrap());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("outputs.json")).unwrap()).unwrap();
    assert_eq!(index[0]["name"], "y");
    assert_eq!(index[0]["shape"], serde_json::json!([2]));
}

#[test]
fn unknown_op_is_unsupported() {
    let p = write(
        "unknown.onnx",
        &model(vec![node("n", "NoSuchOp", &["x"], "y")], vec![], vi("x", &[fixed(2)]), "y"),
    );
    rejects(&["run", s(&p)], &["unsupported", "node 'n'", "NoSuchOp"]);
}
