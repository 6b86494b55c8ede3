//! The layout pass on small hand-written graphs: the IR text before and
//! after (insta snapshots), interpreter agreement, and how many layout
//! conversions (Transposes) remain.

mod pass_util;

use cpucc::ir::{Attr, Graph, Tensor};
use cpucc::passes::{fuse, layout};
use pass_util::{B, before_after, count, ints};

const TOL: f64 = 1e-5;

fn conv(b: &mut B, x: cpucc::ir::ValueId, cin: usize, cout: usize) -> cpucc::ir::ValueId {
    let w = b.weight(&format!("w{cout}_{cin}"), &[cout, cin, 3, 3], -0.5, 0.5);
    b.op(
        "Conv",
        &[x, w],
        &[
            ("kernel_shape", ints(&[3, 3])),
            ("pads", ints(&[1, 1, 1, 1])),
        ],
    )
}

fn transposes(g: &Graph) -> usize {
    count(g, "Transpose")
}

#[test]
fn conv_relu_maxpool() {
    let mut b = B::new("conv_relu_pool");
    let x = b.input("x", &[1, 3, 6, 6]);
    let y = conv(&mut b, x, 3, 4);
    let y = b.op("Relu", &[y], &[]);
    let y = b.op(
        "MaxPool",
        &[y],
        &[("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2]))],
    );
    b.output(y);
    let (text, after) = before_after(&b.g, layout::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(transposes(&after), 2);
}

#[test]
fn channel_constants_concat_and_flatten_head() {
    let mut b = B::new("concat_head");
    let x = b.input("x", &[2, 3, 4, 4]);
    let a = conv(&mut b, x, 3, 4);
    let bias = b.weight("bias", &[4, 1, 1], -0.5, 0.5);
    let a = b.op("Add", &[a, bias], &[]);
    let c = conv(&mut b, x, 3, 2);
    let y = b.op("Concat", &[a, c], &[("axis", Attr::Int(1))]);
    let y = b.op("GlobalAveragePool", &[y], &[]);
    let y = b.op("Flatten", &[y], &[("axis", Attr::Int(1))]);
    let w = b.weight("fc", &[6, 5], -0.5, 0.5);
    let y = b.op("MatMul", &[y, w], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, layout::run, TOL);
    insta::assert_snapshot!(text);
    // Only the input is converted: the 1x1 pooled map flattens alike.
    assert_eq!(transposes(&after), 1);
}

#[test]
fn inverse_transposes_cancel() {
    let mut b = B::new("cancel");
    let x = b.input("x", &[1, 3, 4, 4]);
    let y = conv(&mut b, x, 3, 4);
    let y = b.op("Transpose", &[y], &[("perm", ints(&[0, 2, 3, 1]))]);
    let y = b.op("Sigmoid", &[y], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, layout::run, TOL);
    insta::assert_snapshot!(text);
    // The model's own NHWC Transpose meets the pass's NCHW one: both go.
    assert_eq!(transposes(&after), 1);
}

#[test]
fn transpose_of_constant_folds() {
    let mut b = B::new("const_transpose");
    let x = b.input("x", &[1, 2, 3, 3]);
    let y = conv(&mut b, x, 2, 2);
    let k = b.weight("k", &[1, 3, 3, 2], -1.0, 1.0);
    let kt = b.op("Transpose", &[k], &[("perm", ints(&[0, 3, 1, 2]))]);
    let y = b.op("Mul", &[y, kt], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, layout::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(transposes(&after), 2);
}

#[test]
fn pad_and_spatial_reduction() {
    let mut b = B::new("pad_reduce");
    let x = b.input("x", &[1, 3, 4, 4]);
    let y = conv(&mut b, x, 3, 4);
    let pads = b.ints("pads", &[0, 0, 1, 2, 0, 0, 2, 1]);
    let y = b.op("Pad", &[y, pads], &[]);
    let y = b.op(
        "ReduceMean",
        &[y],
        &[("axes", ints(&[2, 3])), ("keepdims", Attr::Int(0))],
    );
    b.output(y);
    let (text, after) = before_after(&b.g, layout::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(transposes(&after), 1);
}

#[test]
fn batchnorm_resize_and_split() {
    let mut b = B::new("bn_resize_split");
    let x = b.input("x", &[1, 2, 3, 3]);
    let y = conv(&mut b, x, 2, 4);
    let gamma = b.weight("gamma", &[4], 0.5, 1.5);
    let beta = b.weight("beta", &[4], -0.5, 0.5);
    let mean = b.weight("mean", &[4], -0.5, 0.5);
    let var = b.weight("var", &[4], 0.5, 1.5);
    let y = b.op("BatchNormalization", &[y, gamma, beta, mean, var], &[]);
    let scales = b.constant(
        "scales",
        Tensor::from_vec(&[4], vec![1.0f32, 1.0, 2.0, 2.0]).unwrap(),
    );
    let y = b.op_opt("Resize", vec![Some(y), None, Some(scales)], &[]);
    let split = b.ints("split", &[1, 3]);
    let k = b.g.fresh_name("s");
    let n =
        b.g.add_node(
            "Split_x",
            "Split",
            13,
            {
                let mut a = cpucc::ir::Attrs::default();
                a.set("axis", Attr::Int(1));
                a
            },
            vec![Some(y), Some(split)],
            &[format!("{k}0"), format!("{k}1")],
        )
        .unwrap();
    let outs = b.g.node(n).outputs.clone();
    let z = b.op("Tanh", &[outs[1]], &[]);
    b.output(outs[0]);
    b.output(z);
    let (text, after) = before_after(&b.g, layout::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(transposes(&after), 3);
}

#[test]
fn runtime_lower_rank_operand_converts_back() {
    let mut b = B::new("lower_rank");
    let x = b.input("x", &[1, 2, 3, 3]);
    let s = b.input("s", &[3, 3]);
    let y = conv(&mut b, x, 2, 2);
    let y = b.op("Mul", &[y, s], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, layout::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(transposes(&after), 2);
}

#[test]
fn graphs_without_2d_convs_are_unchanged() {
    let mut b = B::new("no_conv");
    let x = b.input("x", &[1, 2, 3, 3]);
    let y = b.op("MaxPool", &[x], &[("kernel_shape", ints(&[2, 2]))]);
    b.output(y);
    let (_, after) = before_after(&b.g, layout::run, TOL);
    assert_eq!(
        cpucc::ir::print(&after).unwrap(),
        cpucc::ir::print(&b.g).unwrap()
    );
}

#[test]
fn fused_residual_conv_runs_channels_last() {
    let mut b = B::new("fused_residual");
    let x = b.input("x", &[1, 4, 5, 5]);
    let y = conv(&mut b, x, 4, 4);
    let y = b.op("Add", &[y, x], &[]);
    let y = b.op("Relu", &[y], &[]);
    b.output(y);
    let mut g = b.g.clone();
    fuse::run(&mut g).unwrap();
    let (text, after) = before_after(&g, layout::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(count(&after, "cpucc.FusedConv"), 1);
    assert_eq!(transposes(&after), 2);
}
