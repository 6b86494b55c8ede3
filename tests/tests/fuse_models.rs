//! fuse + layout on the test models, run on the imported graphs as they are
//! (BatchNorm unfolded: fuse folds constant BatchNorm into the convolution
//! before it). Checks what each model must come out as and that the
//! interpreter's outputs agree within 1e-4 of their largest magnitude.

mod pass_util;

use cpucc::import::{ImportOptions, onnx::load_bytes};
use cpucc::interp;
use cpucc::ir::Graph;
use cpucc::passes::{fuse, layout};
use cpucc_tests::models;
use pass_util::{count, inputs, rel_diff};
use prost::Message;

fn load(name: &str) -> Graph {
    let m = models::by_name(name).unwrap();
    let opts = ImportOptions {
        shapes: m
            .shapes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect(),
        ..Default::default()
    };
    load_bytes(&(m.build)().encode_to_vec(), None, &opts).unwrap()
}

/// Runs the passes, checks the outputs agree, and prints node counts.
fn passes(name: &str, with_layout: bool) -> Graph {
    let g = load(name);
    let mut after = g.clone();
    fuse::run(&mut after).unwrap();
    if with_layout {
        layout::run(&mut after).unwrap();
    }
    let ins = inputs(&g, 1.0);
    let want = interp::run(&g, &ins).unwrap();
    let got = interp::run(&after, &ins).unwrap();
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let d = rel_diff(a, b);
        println!("{name} output {i}: max relative difference {d:e}");
        assert!(d <= 1e-4, "{name} output {i}: relative difference {d:e}");
    }
    println!(
        "{name}: {} nodes before, {} after",
        g.node_count(),
        after.node_count()
    );
    after
}

fn conversions(g: &Graph) -> usize {
    count(g, "Transpose")
}

fn assert_activations_fused(g: &Graph) {
    for op in ["Relu", "Clip", "BatchNormalization", "Add", "Conv"] {
        assert_eq!(count(g, op), 0, "a standalone {op} is left");
    }
}

#[test]
fn resnet50() {
    let g = passes("resnet50", true);
    assert_activations_fused(&g);
    assert_eq!(count(&g, "cpucc.FusedConv"), 53);
    assert!(conversions(&g) <= 2, "{} conversions", conversions(&g));
}

#[test]
fn mobilenet_v2() {
    let g = passes("mobilenet_v2", true);
    for op in ["Relu", "Clip", "BatchNormalization", "Conv"] {
        assert_eq!(count(&g, op), 0, "a standalone {op} is left");
    }
    assert_eq!(count(&g, "cpucc.FusedConv"), 52);
    assert!(conversions(&g) <= 2, "{} conversions", conversions(&g));
}

#[test]
fn bert_base() {
    let g = passes("bert_base", false);
    assert_eq!(count(&g, "Attention"), 12);
    assert_eq!(count(&g, "LayerNormalization"), 25);
    assert_eq!(count(&g, "Gelu"), 0, "Gelu is fused into its MatMul");
    for op in ["Erf", "Softmax", "ReduceMean", "Sqrt", "Pow", "MatMul"] {
        assert_eq!(count(&g, op), 0, "a standalone {op} is left");
    }
    let gelus = g
        .node_indices()
        .into_iter()
        .filter(|&n| g.node(n).attrs.string("activation", "").ok() == Some("Gelu"))
        .count();
    assert_eq!(gelus, 12);
}
