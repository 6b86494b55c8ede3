//! `cpucc inspect --after/--passes/--stats`: the IR after a pass of the
//! pipeline, the per-pass report, and one-line errors for unknown passes.

use std::path::PathBuf;
use std::process::Command;

use cpucc::import::onnx::proto::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto,
    ValueInfoProto, tensor_shape_proto::Dimension, tensor_shape_proto::dimension, type_proto,
};
use cpucc::import::onnx::tensor_to_proto;
use cpucc::ir::{DType, Tensor};
use prost::Message;

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DType::F32.onnx_code()),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        name: Some(format!("{op}_{output}")),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// Conv -> BatchNormalization -> two identical Relus -> Add: five nodes,
/// three after const_fold (BN), cse (one Relu) and dce. Each test writes
/// its own `name`: tests run in parallel, and one test's write would
/// truncate the file another test's cpucc is reading.
fn model_file(name: &str) -> PathBuf {
    let t = |name: &str, shape: &[usize], v: Vec<f32>| {
        tensor_to_proto(&Tensor::from_vec(shape, v).unwrap(), name)
    };
    let graph = GraphProto {
        name: Some("g".into()),
        node: vec![
            node("Conv", &["x", "w"], "c"),
            node("BatchNormalization", &["c", "s", "b", "m", "v"], "n"),
            node("Relu", &["n"], "r1"),
            node("Relu", &["n"], "r2"),
            node("Add", &["r1", "r2"], "y"),
        ],
        initializer: vec![
            t("w", &[3, 2, 1, 1], vec![0.5, -1.0, 2.0, 0.25, -0.75, 1.5]),
            t("s", &[3], vec![1.0, 2.0, 0.5]),
            t("b", &[3], vec![0.1, -0.2, 0.3]),
            t("m", &[3], vec![0.0, 0.5, -0.5]),
            t("v", &[3], vec![1.0, 4.0, 0.25]),
        ],
        input: vec![value_info("x", &[1, 2, 4, 4])],
        output: vec![value_info("y", &[1, 3, 4, 4])],
        ..Default::default()
    };
    let m = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(graph),
        ..Default::default()
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("passes_cli");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.onnx"));
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

/// (exit code, stdout, stderr)
fn cpucc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cpucc"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn after_const_fold_the_batch_norm_is_gone() {
    let m = model_file("after_const_fold_the_batch_norm_is_gone");
    let (code, before, _) = cpucc(&["inspect", m.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(before.contains("= BatchNormalization("));
    let (code, out, err) = cpucc(&["inspect", m.to_str().unwrap(), "--after", "const_fold"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("BatchNormalization"), "{out}");
    assert!(
        out.contains("%n: f32[1,3,4,4] = Conv(%x, %w_folded, %Conv_c_bias)"),
        "{out}"
    );
    // Only const_fold ran: both Relus are still there.
    assert_eq!(out.matches("= Relu(").count(), 2, "{out}");
}

#[test]
fn passes_flag_chooses_the_pipeline() {
    let m = model_file("passes_flag_chooses_the_pipeline");
    let (code, out, err) = cpucc(&["inspect", m.to_str().unwrap(), "--passes", "cse"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("= Relu(").count(), 1, "{out}");
    assert!(out.contains("BatchNormalization"), "{out}");
}

#[test]
fn stats_reports_every_pass_and_the_plan() {
    let m = model_file("stats_reports_every_pass_and_the_plan");
    let (code, out, err) = cpucc(&[
        "inspect",
        m.to_str().unwrap(),
        "--passes",
        "const_fold,cse,dce",
        "--stats",
    ]);
    assert_eq!(code, 0, "{err}");
    let nodes: Vec<(String, usize)> = out
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("arena"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].parse().unwrap())
        })
        .collect();
    let expected: Vec<(String, usize)> =
        [("(import)", 5), ("const_fold", 4), ("cse", 3), ("dce", 3)]
            .iter()
            .map(|(n, c)| (n.to_string(), *c))
            .collect();
    assert_eq!(nodes, expected, "{out}");
    // Two f32[1,3,4,4] intermediates (192 bytes each): the Conv's output
    // and the Relu writing over it in place.
    assert!(
        out.contains("arena: 192 bytes; intermediates: 384 bytes (50.0%)"),
        "{out}"
    );
}

#[test]
fn unknown_or_missing_passes_are_one_line_errors() {
    let m = model_file("unknown_or_missing_passes_are_one_line_errors");
    let m = m.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["--after", "nope"],
            "unknown pass 'nope' (known: const_fold",
        ),
        (vec!["--passes", "cse,nope"], "unknown pass 'nope'"),
        (
            vec!["--passes", "cse", "--after", "dce"],
            "pass 'dce' is not in the pipeline (cse)",
        ),
    ] {
        let mut all = vec!["inspect", m];
        all.extend(args);
        let (code, _, err) = cpucc(&all);
        assert_eq!(code, 2, "{all:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
}
