//! The fuse pass on small hand-written graphs, one per pattern: the IR text
//! before and after (insta snapshots) and interpreter agreement.

mod pass_util;

use cpucc::ir::{Attr, Tensor};
use cpucc::passes::fuse;
use pass_util::{B, before_after, count, ints};

const TOL: f64 = 1e-5;

fn layer_norm(b: &mut B, x: cpucc::ir::ValueId, affine: bool, pow: bool) -> cpucc::ir::ValueId {
    let mean = b.op("ReduceMean", &[x], &[("axes", ints(&[-1]))]);
    let d = b.op("Sub", &[x, mean], &[]);
    let sq = if pow {
        let two = b.scalar("two", 2.0);
        b.op("Pow", &[d, two], &[])
    } else {
        b.op("Mul", &[d, d], &[])
    };
    let var = b.op("ReduceMean", &[sq], &[("axes", ints(&[-1]))]);
    let eps = b.scalar("eps", 1e-5);
    let ve = b.op("Add", &[var, eps], &[]);
    let sd = b.op("Sqrt", &[ve], &[]);
    let y = b.op("Div", &[d, sd], &[]);
    if !affine {
        return y;
    }
    let gamma = b.weight("gamma", &[8], 0.5, 1.5);
    let beta = b.weight("beta", &[8], -0.5, 0.5);
    let y = b.op("Mul", &[y, gamma], &[]);
    b.op("Add", &[y, beta], &[])
}

#[test]
fn layer_norm_with_affine() {
    let mut b = B::new("layer_norm");
    let x = b.input("x", &[2, 3, 8]);
    let y = layer_norm(&mut b, x, true, true);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(count(&after, "LayerNormalization"), 1);
    assert_eq!(after.node_count(), 1);
}

#[test]
fn layer_norm_square_by_mul_without_affine() {
    let mut b = B::new("layer_norm_plain");
    let x = b.input("x", &[4, 8]);
    let y = layer_norm(&mut b, x, false, false);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(after.node_count(), 1);
}

#[test]
fn layer_norm_with_shared_intermediate_is_left_alone() {
    let mut b = B::new("layer_norm_shared");
    let x = b.input("x", &[4, 8]);
    let mean = b.op("ReduceMean", &[x], &[("axes", ints(&[-1]))]);
    let d = b.op("Sub", &[x, mean], &[]);
    let sq = b.op("Mul", &[d, d], &[]);
    let var = b.op("ReduceMean", &[sq], &[("axes", ints(&[-1]))]);
    let eps = b.scalar("eps", 1e-5);
    let ve = b.op("Add", &[var, eps], &[]);
    let sd = b.op("Sqrt", &[ve], &[]);
    let y = b.op("Div", &[d, sd], &[]);
    b.output(y);
    // The variance is also a graph output: it cannot be absorbed.
    b.output(var);
    let (_, after) = before_after(&b.g, fuse::run, TOL);
    assert_eq!(count(&after, "LayerNormalization"), 0);
}

#[test]
fn gelu_erf_as_bert_writes_it() {
    let mut b = B::new("gelu_erf");
    let x = b.input("x", &[2, 16]);
    let sqrt2 = b.scalar("sqrt2", std::f32::consts::SQRT_2);
    let d = b.op("Div", &[x, sqrt2], &[]);
    let e = b.op("Erf", &[d], &[]);
    let one = b.scalar("one", 1.0);
    let a = b.op("Add", &[e, one], &[]);
    let m = b.op("Mul", &[x, a], &[]);
    let half = b.scalar("half", 0.5);
    let y = b.op("Mul", &[m, half], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(count(&after, "Gelu"), 1);
    assert_eq!(after.node_count(), 1);
}

#[test]
fn gelu_erf_half_first_and_reciprocal_scale() {
    let mut b = B::new("gelu_erf_variant");
    let x = b.input("x", &[2, 16]);
    let half = b.scalar("half", 0.5);
    let h = b.op("Mul", &[half, x], &[]);
    let r = b.scalar("inv_sqrt2", std::f32::consts::FRAC_1_SQRT_2);
    let d = b.op("Mul", &[x, r], &[]);
    let e = b.op("Erf", &[d], &[]);
    let one = b.scalar("one", 1.0);
    let a = b.op("Add", &[one, e], &[]);
    let y = b.op("Mul", &[h, a], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(after.node_count(), 1);
}

#[test]
fn gelu_tanh_with_pow() {
    let mut b = B::new("gelu_tanh");
    let x = b.input("x", &[2, 16]);
    let three = b.scalar("three", 3.0);
    let cube = b.op("Pow", &[x, three], &[]);
    let c = b.scalar("c", 0.044715);
    let t = b.op("Mul", &[c, cube], &[]);
    let inner = b.op("Add", &[x, t], &[]);
    let k = b.scalar("k", (2.0 / std::f32::consts::PI).sqrt());
    let s = b.op("Mul", &[inner, k], &[]);
    let th = b.op("Tanh", &[s], &[]);
    let one = b.scalar("one", 1.0);
    let a = b.op("Add", &[th, one], &[]);
    let half = b.scalar("half", 0.5);
    let h = b.op("Mul", &[x, half], &[]);
    let y = b.op("Mul", &[h, a], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(after.node_count(), 1);
}

/// BERT's self-attention on [1, 4, 6] with 2 heads of 3.
#[test]
fn attention_bert_style() {
    let mut b = B::new("attention");
    let q = b.input("q", &[1, 4, 6]);
    let k = b.input("k", &[1, 4, 6]);
    let v = b.input("v", &[1, 4, 6]);
    let mask = b.input("mask", &[1, 1, 1, 4]);
    let shape = b.ints("heads_shape", &[1, 4, 2, 3]);
    let split = |b: &mut B, x, perm: &[i64]| {
        let r = b.op("Reshape", &[x, shape], &[]);
        b.op("Transpose", &[r], &[("perm", ints(perm))])
    };
    let qh = split(&mut b, q, &[0, 2, 1, 3]);
    let kt = split(&mut b, k, &[0, 2, 3, 1]);
    let vh = split(&mut b, v, &[0, 2, 1, 3]);
    let s = b.op("MatMul", &[qh, kt], &[]);
    let c = b.scalar("sqrt_d", 3f32.sqrt());
    let s = b.op("Div", &[s, c], &[]);
    let s = b.op("Add", &[s, mask], &[]);
    let p = b.op("Softmax", &[s], &[("axis", Attr::Int(-1))]);
    let ctx = b.op("MatMul", &[p, vh], &[]);
    let ctx = b.op("Transpose", &[ctx], &[("perm", ints(&[0, 2, 1, 3]))]);
    let merged = b.ints("merged_shape", &[1, 4, 6]);
    let y = b.op("Reshape", &[ctx, merged], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(count(&after, "Attention"), 1);
    assert_eq!(after.node_count(), 1);
}

fn conv_attrs(pad: i64) -> Vec<(&'static str, Attr)> {
    vec![
        ("kernel_shape", ints(&[3, 3])),
        ("pads", ints(&[pad, pad, pad, pad])),
    ]
}

#[test]
fn conv_batchnorm_relu() {
    let mut b = B::new("conv_bn_relu");
    let x = b.input("x", &[1, 3, 6, 6]);
    let w = b.weight("w", &[4, 3, 3, 3], -0.5, 0.5);
    let y = b.op("Conv", &[x, w], &conv_attrs(1));
    let gamma = b.weight("gamma", &[4], 0.5, 1.5);
    let beta = b.weight("beta", &[4], -0.5, 0.5);
    let mean = b.weight("mean", &[4], -0.5, 0.5);
    let var = b.weight("var", &[4], 0.5, 1.5);
    let y = b.op(
        "BatchNormalization",
        &[y, gamma, beta, mean, var],
        &[("epsilon", Attr::Float(1e-5))],
    );
    let y = b.op("Relu", &[y], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(count(&after, "cpucc.FusedConv"), 1);
    assert_eq!(after.node_count(), 1);
}

#[test]
fn conv_channel_bias_residual_relu6() {
    let mut b = B::new("conv_bias_residual_clip");
    let x = b.input("x", &[1, 3, 5, 5]);
    let r = b.input("r", &[1, 4, 5, 5]);
    let w = b.weight("w", &[4, 3, 3, 3], -0.5, 0.5);
    let y = b.op("Conv", &[x, w], &conv_attrs(1));
    let bias = b.weight("bias", &[4, 1, 1], -0.5, 0.5);
    let y = b.op("Add", &[bias, y], &[]);
    let y = b.op("Add", &[r, y], &[]);
    let lo = b.scalar("lo", 0.0);
    let hi = b.scalar("hi", 6.0);
    let y = b.op("Clip", &[y, lo, hi], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(after.node_count(), 1);
}

#[test]
fn conv_output_read_twice_keeps_its_relu_apart() {
    let mut b = B::new("conv_shared");
    let x = b.input("x", &[1, 3, 5, 5]);
    let w = b.weight("w", &[4, 3, 3, 3], -0.5, 0.5);
    let y = b.op("Conv", &[x, w], &conv_attrs(0));
    let a = b.op("Relu", &[y], &[]);
    b.output(a);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(count(&after, "Conv"), 1);
    assert_eq!(count(&after, "Relu"), 1);
}

#[test]
fn matmul_bias_gelu() {
    let mut b = B::new("matmul_bias_gelu");
    let x = b.input("x", &[2, 3, 8]);
    let w = b.weight("w", &[8, 5], -0.5, 0.5);
    let bias = b.weight("bias", &[5], -0.5, 0.5);
    let y = b.op("MatMul", &[x, w], &[]);
    let y = b.op("Add", &[bias, y], &[]);
    let y = b.op("Gelu", &[y], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(count(&after, "cpucc.FusedMatMul"), 1);
    assert_eq!(after.node_count(), 1);
}

#[test]
fn matmul_bias_residual() {
    let mut b = B::new("matmul_bias_residual");
    let x = b.input("x", &[3, 8]);
    let h = b.input("h", &[3, 8]);
    let w = b.weight("w", &[8, 8], -0.5, 0.5);
    let bias = b.weight("bias", &[1, 8], -0.5, 0.5);
    let y = b.op("MatMul", &[x, w], &[]);
    let y = b.op("Add", &[y, bias], &[]);
    let y = b.op("Add", &[y, h], &[]);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(after.node_count(), 1);
}

#[test]
fn gemm_leaky_relu() {
    let mut b = B::new("gemm_leaky");
    let x = b.input("x", &[3, 8]);
    let w = b.weight("w", &[5, 8], -0.5, 0.5);
    let c = b.weight("c", &[5], -0.5, 0.5);
    let y = b.op("Gemm", &[x, w, c], &[("transB", Attr::Int(1))]);
    let y = b.op("LeakyRelu", &[y], &[("alpha", Attr::Float(0.2))]);
    b.output(y);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(count(&after, "cpucc.FusedGemm"), 1);
}

#[test]
fn elementwise_chain() {
    let mut b = B::new("elementwise_chain");
    let x = b.input("x", &[2, 8]);
    let y = b.input("y", &[8]);
    let c = b.scalar("c", 1.5);
    let s = b.op("Mul", &[x, c], &[]);
    let s = b.op("Add", &[s, y], &[]);
    let s = b.op("HardSigmoid", &[s], &[("alpha", Attr::Float(0.25))]);
    let s = b.op("Mul", &[x, s], &[]);
    let s = b.op("Neg", &[s], &[]);
    b.output(s);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    assert_eq!(count(&after, "cpucc.Elementwise"), 1);
    assert_eq!(after.node_count(), 1);
}

#[test]
fn elementwise_chain_stops_at_shared_values() {
    let mut b = B::new("elementwise_shared");
    let x = b.input("x", &[2, 8]);
    let e = b.op("Exp", &[x], &[]);
    let a = b.op("Sqrt", &[e], &[]);
    let c = b.op("Log", &[e], &[]);
    let s = b.op("Add", &[a, c], &[]);
    let t = b.op("Tanh", &[s], &[]);
    b.output(t);
    let (text, after) = before_after(&b.g, fuse::run, TOL);
    insta::assert_snapshot!(text);
    // Exp feeds two steps of one chain: it stays outside it, as an input.
    assert_eq!(after.node_count(), 2);
}

#[test]
fn integer_elementwise_is_not_fused() {
    let mut b = B::new("int_chain");
    let x = b.input("x", &[2, 8]);
    let i = b.op("Cast", &[x], &[("to", Attr::Int(7))]);
    let one = b.constant("one", Tensor::scalar(1i64));
    let s = b.op("Add", &[i, one], &[]);
    let s = b.op("Mul", &[s, s], &[]);
    b.output(s);
    let (_, after) = before_after(&b.g, fuse::run, TOL);
    assert_eq!(count(&after, "cpucc.Elementwise"), 0);
}
