//! The native GEMM paths (AVX-512 machine-code microkernel where the host
//! has it, and the portable CLIF kernel, forced by compiling for the host
//! minus `avx512f`) against the interpreter: MatMul/Gemm/Conv and their
//! fused forms on shapes that are not multiples of the 14x32 tile or the
//! depth block (1, odd, just past a block), few rows over many panels
//! (the tiles spanning four panels), constant and run-time B,
//! batches with broadcasting, bias of every shape, residual, activations
//! done in registers and after the store; channels-last convolutions
//! lowered as one GEMM over the weights (im2col blocks on the stack), the
//! channel-vectorized depthwise kernel and channels-last global pooling.

use cpucc::codegen::jit::JitModel;
use cpucc::codegen::{Dumps, Target};
use cpucc::interp;
use cpucc::ir::{Attr, Attrs, DType, Graph, Tensor, ValueType};
use cpucc::random::SplitMix64;

fn data(rng: &mut SplitMix64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    Tensor::from_f64s(DType::F32, shape, &v).unwrap()
}

/// Both GEMM paths on this host (the microkernel only when it has
/// AVX-512F).
fn targets() -> Vec<Target> {
    let host = Target::host();
    let mut v = vec![Target::parse("native-avx512f").unwrap()];
    if host.has("avx512f") {
        v.push(host);
    }
    v
}

/// A node operand: a run-time input, a constant, an optional input left
/// out, or a run-time input negated by a node first: a workspace value
/// whose life ends at the node, so the memory plan may put a fused op's
/// output over it when it is the residual (the kernels then accumulate
/// onto it; the node's output is then negated too, to be a workspace
/// value itself).
#[derive(Clone)]
enum Arg {
    In(Tensor),
    Const(Tensor),
    Absent,
    Dying(Tensor),
}
use Arg::{Absent, Const, Dying, In};

/// One node over `args` (in the node's input order): the interpreter's
/// output, and each native target's from two runs (the second reuses the
/// first one's workspace).
fn outputs(
    op: &str,
    opset: i64,
    attrs: &[(&str, Attr)],
    args: Vec<Arg>,
) -> (Vec<f64>, Vec<(String, Vec<f64>)>) {
    let mut g = Graph::new("t");
    let mut ids = Vec::new();
    let mut ins = Vec::new();
    let dying = args.iter().any(|a| matches!(a, Dying(_)));
    for (i, arg) in args.into_iter().enumerate() {
        ids.push(match arg {
            In(t) => {
                let id = g.add_input(&format!("x{i}"), ValueType::of(&t)).unwrap();
                ins.push(t);
                Some(id)
            }
            Const(t) => Some(g.add_const(&format!("c{i}"), t).unwrap()),
            Absent => None,
            Dying(t) => {
                let id = g.add_input(&format!("x{i}"), ValueType::of(&t)).unwrap();
                ins.push(t);
                let neg = g
                    .add_node(
                        &format!("neg{i}"),
                        "Neg",
                        13,
                        Attrs::default(),
                        vec![Some(id)],
                        &[format!("d{i}")],
                    )
                    .unwrap();
                Some(g.node(neg).outputs[0])
            }
        });
    }
    let mut a = Attrs::default();
    for (k, v) in attrs {
        a.set(k, v.clone());
    }
    let mut node = g
        .add_node("n", op, opset, a, ids, &["y".to_string()])
        .unwrap();
    if dying {
        // A workspace output too (the plan writes graph outputs to the
        // caller's buffers): its negation is the graph's.
        let y = g.node(node).outputs[0];
        node = g
            .add_node(
                "neg",
                "Neg",
                13,
                Attrs::default(),
                vec![Some(y)],
                &["z".to_string()],
            )
            .unwrap();
    }
    g.outputs = g.node(node).outputs.clone();
    let want = interp::run(&g, &ins).unwrap().remove(0).to_f64_vec();
    let mut got = Vec::new();
    for t in targets() {
        let m = JitModel::compile(&g, &t, &mut Dumps::default())
            .unwrap_or_else(|e| panic!("{op} on {}: {e}", t.name));
        for run in 0..2 {
            let y = m.run(&ins).unwrap().remove(0).to_f64_vec();
            assert_eq!(y.len(), want.len());
            got.push((format!("{} (run {run})", t.name), y));
        }
    }
    (want, got)
}

/// [`outputs`] agree within 1e-4 of the output's magnitude.
fn check(op: &str, opset: i64, attrs: &[(&str, Attr)], args: Vec<Arg>) {
    let (want, got) = outputs(op, opset, attrs, args);
    let scale = want.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
    for (name, got) in got {
        for (k, (w, h)) in want.iter().zip(&got).enumerate() {
            assert!(
                (w - h).abs() <= 1e-4 * scale,
                "{op} {attrs:?} on {name}: element {k}: {h} != {w}"
            );
        }
    }
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 7, 33),
    (13, 5, 31),
    (14, 64, 32),
    (15, 300, 65),
    (29, 517, 70),
    (3, 1000, 17),
    // Edge panels of 1-2 columns (33, 65 above): the dot tiles.
    (5, 40, 2),
    (17, 200, 66),
    // At most 3 rows over more than 4 panels: the wide tiles (4 panels
    // each), then single panels, then the edge.
    (1, 300, 200),
    (2, 70, 288),
    (3, 5, 161),
    // 9 and 17 row blocks over several depth blocks: the first 8 or 16
    // share the next panel's prefetch, the 16-way tiles stepping the depth
    // by 8 (blocks 192, 192, 19).
    (120, 300, 40),
    (230, 403, 70),
];

/// The residual operand of the `i`-th check of a loop: a graph input and
/// a dying workspace value in turn.
fn residual(i: usize, res: &Tensor) -> Arg {
    if i.is_multiple_of(2) {
        In(res.clone())
    } else {
        Dying(res.clone())
    }
}

fn act(name: &str) -> (&'static str, Attr) {
    ("activation", Attr::String(name.to_string()))
}

#[test]
fn matmul_constant_and_runtime_b() {
    let mut rng = SplitMix64::new(1);
    for &(m, k, n) in SHAPES {
        let a = data(&mut rng, &[m, k]);
        let b = data(&mut rng, &[k, n]);
        check("MatMul", 13, &[], vec![In(a.clone()), Const(b.clone())]);
        check("MatMul", 13, &[], vec![In(a), In(b)]);
    }
}

#[test]
fn batched_matmul_with_broadcasting() {
    let mut rng = SplitMix64::new(2);
    let a = data(&mut rng, &[2, 1, 17, 40]);
    let b = data(&mut rng, &[3, 40, 45]);
    check("MatMul", 13, &[], vec![In(a.clone()), In(b.clone())]);
    check("MatMul", 13, &[], vec![In(a), Const(b)]);
    let v = data(&mut rng, &[40]);
    let a = data(&mut rng, &[5, 40]);
    check("MatMul", 13, &[], vec![In(a), Const(v)]);
}

#[test]
fn matmul_batch_of_rows_times_one_weight() {
    // [B, 1, K] x [K, N] (TorchScript's sequence-first activations): one
    // (B x N) GEMM; the bias broadcasts over rows, the residual does not.
    let mut rng = SplitMix64::new(7);
    let a = data(&mut rng, &[96, 1, 40]);
    let b = data(&mut rng, &[40, 45]);
    let bias = data(&mut rng, &[45]);
    let res = data(&mut rng, &[96, 1, 45]);
    check("MatMul", 13, &[], vec![In(a.clone()), Const(b.clone())]);
    check(
        "cpucc.FusedMatMul",
        13,
        &[act("Relu")],
        vec![In(a), Const(b), Const(bias), Dying(res)],
    );
    // A batch of 3 under a broadcast batch of 2 still takes per-batch GEMMs.
    let a = data(&mut rng, &[2, 3, 1, 40]);
    let b = data(&mut rng, &[3, 40, 45]);
    check("MatMul", 13, &[], vec![In(a), Const(b)]);
}

/// Asserts that every target's object for `x (x_shape) · w` holds less
/// than `limit` bytes.
fn assert_object_below(x_shape: &[usize], w: Tensor, limit: usize) {
    let mut g = Graph::new("t");
    let x = g
        .add_input("x", ValueType::new(DType::F32, x_shape.to_vec()))
        .unwrap();
    let w = g.add_const("w", w).unwrap();
    let n = g
        .add_node(
            "n",
            "MatMul",
            13,
            Attrs::default(),
            vec![Some(x), Some(w)],
            &["y".to_string()],
        )
        .unwrap();
    g.outputs = g.node(n).outputs.clone();
    for t in targets() {
        let art = cpucc::codegen::artifact::compile(&g, &t, "m", &mut Dumps::default()).unwrap();
        assert!(
            art.object.len() < limit,
            "{}: a {}-byte object, expected under {limit}",
            t.name,
            art.object.len()
        );
    }
}

#[test]
fn broadcast_constant_b_is_packed_once() {
    // 256 batch elements share one 64x64 weight (16 KiB): packing it per
    // batch element made the object 256 times the weight.
    let mut rng = SplitMix64::new(8);
    assert_object_below(&[256, 2, 64], data(&mut rng, &[64, 64]), 256 * 1024);
}

#[test]
fn a_packed_weight_is_not_also_stored_raw() {
    // The object holds the 1 MiB weight once, as the kernel's packed
    // panels: the graph constant itself was defined as data too.
    let mut rng = SplitMix64::new(9);
    assert_object_below(&[8, 512], data(&mut rng, &[512, 512]), 1536 * 1024);
}

#[test]
fn fused_matmul_epilogues() {
    let mut rng = SplitMix64::new(3);
    for &(m, k, n) in SHAPES {
        let a = data(&mut rng, &[m, k]);
        let b = data(&mut rng, &[k, n]);
        let bias = data(&mut rng, &[n]);
        let res = data(&mut rng, &[m, n]);
        let clip = [
            act("Clip"),
            ("act_alpha", Attr::Float(-0.25)),
            ("act_beta", Attr::Float(0.5)),
        ];
        let acts: Vec<Vec<(&str, Attr)>> = vec![
            vec![],
            vec![act("Relu")],
            clip.to_vec(),
            vec![act("Gelu")],
            vec![act("Sigmoid")],
            vec![act("LeakyRelu"), ("act_alpha", Attr::Float(0.1))],
        ];
        for (i, attrs) in acts.iter().enumerate() {
            check(
                "cpucc.FusedMatMul",
                13,
                attrs,
                vec![
                    In(a.clone()),
                    Const(b.clone()),
                    Const(bias.clone()),
                    residual(i, &res),
                ],
            );
        }
    }
}

#[test]
fn fused_gemm_alpha_beta_bias_shapes_and_transposes() {
    let mut rng = SplitMix64::new(4);
    for &(m, k, n) in &SHAPES[1..] {
        for (ta, tb) in [(0, 0), (0, 1), (1, 0)] {
            let a = data(&mut rng, &if ta == 1 { [k, m] } else { [m, k] });
            let b = data(&mut rng, &if tb == 1 { [n, k] } else { [k, n] });
            for cshape in [vec![n], vec![m, 1], vec![1], vec![m, n]] {
                let c = data(&mut rng, &cshape);
                let attrs = [
                    ("transA", Attr::Int(ta)),
                    ("transB", Attr::Int(tb)),
                    ("alpha", Attr::Float(0.75)),
                    ("beta", Attr::Float(-1.5)),
                    act("Relu"),
                ];
                check(
                    "cpucc.FusedGemm",
                    13,
                    &attrs,
                    vec![In(a.clone()), Const(b.clone()), Const(c)],
                );
            }
            // With a residual: alpha 1 may accumulate onto it in place,
            // alpha 0.75 must not (it would scale the residual).
            let (c, res) = (data(&mut rng, &[n]), data(&mut rng, &[m, n]));
            for alpha in [1.0, 0.75] {
                let attrs = [
                    ("transA", Attr::Int(ta)),
                    ("transB", Attr::Int(tb)),
                    ("alpha", Attr::Float(alpha)),
                    act("Relu"),
                ];
                let args = vec![
                    In(a.clone()),
                    Const(b.clone()),
                    Const(c.clone()),
                    Dying(res.clone()),
                ];
                check("cpucc.FusedGemm", 13, &attrs, args);
            }
        }
    }
}

#[test]
fn fused_conv_shapes_groups_and_residual() {
    let mut rng = SplitMix64::new(5);
    // (N, C, H, W, O, kernel, stride, pad, group)
    let cases = [
        (1, 3, 9, 11, 5, 3, 1, 1, 1),
        (2, 16, 13, 10, 33, 3, 2, 0, 1),
        (1, 8, 7, 7, 16, 1, 1, 0, 1),
        (1, 12, 10, 9, 12, 3, 1, 1, 12),
        (1, 6, 8, 8, 9, 3, 2, 1, 3),
        (1, 64, 6, 6, 30, 3, 1, 1, 1),
    ];
    for (n, c, h, w, o, kk, s, p, grp) in cases {
        let x = data(&mut rng, &[n, c, h, w]);
        let wt = data(&mut rng, &[o, c / grp, kk, kk]);
        let b = data(&mut rng, &[o]);
        let oh = (h + 2 * p - kk) / s + 1;
        let ow = (w + 2 * p - kk) / s + 1;
        let res = data(&mut rng, &[n, o, oh, ow]);
        let geo = [
            ("strides", Attr::Ints(vec![s as i64; 2])),
            ("pads", Attr::Ints(vec![p as i64; 4])),
            ("group", Attr::Int(grp as i64)),
        ];
        check_conv(&geo, &["Relu", "HardSwish"], x, wt, b, &res);
    }
}

/// (N, C, H, W, O, kernel, stride, pads, dilation, group)
type NhwcCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    [i64; 4],
    i64,
    i64,
);

#[test]
fn channels_last_conv_as_gemm() {
    let mut rng = SplitMix64::new(6);
    // (N, C, H, W, O, kernel, stride, pads, dilation, group)
    // O = 33, 2 and 66: an edge panel of 1-2 columns (the dot tiles),
    // over depths with a masked last vector (K = 9, 216, 630). Kernel
    // rows of 64 floats or more (`KW * C`, dilation 1) take the direct
    // form: output rows of 31 (two tiles and a tail of 3) split over
    // items, stride 2 with uneven pads, pads as wide as the kernel, and
    // 1024 channels whose tile rows would share an L1 set (the copy spaces
    // its pixels); pads past the kernel and uneven, leftover depths of the
    // segment loops, a kernel row split across depth blocks (C = 100),
    // and blocks of 2, 2 and 1 kernel rows (5x5, C = 16).
    let cases: [NhwcCase; 23] = [
        (2, 3, 5, 4, 33, 3, 1, [4, 3, 0, 5], 1, 1),
        (1, 5, 17, 17, 34, 3, 2, [1, 1, 0, 0], 1, 1),
        (1, 100, 6, 7, 65, 3, 1, [1; 4], 1, 1),
        (1, 16, 9, 8, 20, 5, 1, [2; 4], 1, 1),
        (2, 32, 30, 31, 40, 3, 1, [1; 4], 1, 1),
        (1, 40, 17, 16, 36, 3, 2, [0, 1, 1, 2], 1, 1),
        (1, 16, 6, 7, 8, 5, 1, [4; 4], 1, 1),
        (1, 1024, 3, 10, 8, 3, 1, [1; 4], 1, 1),
        (1, 1, 7, 8, 2, 3, 1, [1; 4], 1, 1),
        (1, 24, 9, 8, 66, 3, 1, [1; 4], 1, 1),
        (2, 16, 5, 7, 33, 1, 1, [0; 4], 1, 1),
        (1, 70, 6, 5, 33, 3, 1, [1; 4], 1, 1),
        (1, 32, 5, 6, 20, 3, 1, [1; 4], 1, 1),
        (2, 4, 20, 17, 35, 3, 1, [1; 4], 1, 1),
        (1, 8, 9, 9, 20, 1, 2, [0; 4], 1, 1),
        (1, 3, 11, 10, 17, 3, 1, [1; 4], 1, 1),
        (2, 5, 12, 9, 40, 3, 2, [1; 4], 1, 1),
        (1, 3, 15, 15, 8, 7, 2, [3; 4], 1, 1),
        (1, 4, 9, 9, 6, 3, 1, [2; 4], 2, 1),
        (1, 6, 8, 7, 5, 3, 1, [1, 0, 0, 1], 1, 1),
        (1, 8, 6, 6, 8, 3, 1, [1; 4], 1, 2),
        // Stride 2 over rows of 29 KiB: 8 output rows per item fit the
        // strided copy's 512 KiB.
        (1, 256, 28, 28, 40, 3, 2, [1; 4], 1, 1),
        // Lines of 16 tiles: kernel rows of 75 depths in steps of 8.
        (1, 25, 3, 224, 20, 3, 1, [1; 4], 1, 1),
    ];
    for (n, c, h, w, o, k, s, pads, d, grp) in cases {
        let x = data(&mut rng, &[n, h, w, c]);
        let wt = data(&mut rng, &[o, c / grp as usize, k, k]);
        let b = data(&mut rng, &[o]);
        let ek = (k as i64 - 1) * d + 1;
        let oh = ((h as i64 + pads[0] + pads[2] - ek) / s as i64 + 1) as usize;
        let ow = ((w as i64 + pads[1] + pads[3] - ek) / s as i64 + 1) as usize;
        let res = data(&mut rng, &[n, oh, ow, o]);
        let geo = [
            ("strides", Attr::Ints(vec![s as i64; 2])),
            ("pads", Attr::Ints(pads.to_vec())),
            ("dilations", Attr::Ints(vec![d; 2])),
            ("group", Attr::Int(grp)),
            ("layout", Attr::String("NHWC".into())),
        ];
        check_conv(&geo, &["Relu", "Tanh", "Sigmoid"], x, wt, b, &res);
    }
}

/// Checks the convolution `geo` of `x` by `wt`: fused with bias,
/// a residual (alternately a graph input and a dying value) and each of
/// `acts` or none, and plain.
fn check_conv(geo: &[(&str, Attr)], acts: &[&str], x: Tensor, wt: Tensor, b: Tensor, res: &Tensor) {
    let acts = std::iter::once(None).chain(acts.iter().map(|&a| Some(a)));
    for (i, a) in acts.enumerate() {
        let mut attrs = geo.to_vec();
        if let Some(a) = a {
            attrs.push(act(a));
        }
        check(
            "cpucc.FusedConv",
            13,
            &attrs,
            vec![
                In(x.clone()),
                Const(wt.clone()),
                Const(b.clone()),
                residual(i, res),
            ],
        );
    }
    check("Conv", 13, geo, vec![In(x), Const(wt)]);
}

/// 3x3 stride-1 convolutions of at least 64 channels and 32 output
/// tiles (2x2 blocks over the batch) take Winograd F(2x2, 3x3): odd
/// output sizes (edge tiles), uneven pads, an edge panel of one column
/// (the dot tiles) and of 16, channels with a scalar tail, several tile
/// blocks and column groups per image, and the input transform by rows
/// (256 x 256) as well as all at once.
#[test]
fn channels_last_winograd_conv() {
    let mut rng = SplitMix64::new(12);
    // (N, C, H, W, O, pads)
    let cases: [(usize, usize, usize, usize, usize, [i64; 4]); 6] = [
        (1, 256, 31, 33, 33, [1; 4]),
        (2, 64, 9, 10, 20, [1, 0, 1, 2]),
        (1, 259, 32, 32, 16, [1; 4]),
        (1, 256, 32, 32, 96, [1; 4]),
        (1, 256, 12, 12, 256, [1; 4]),
        (2, 256, 7, 7, 66, [1; 4]),
    ];
    for (n, c, h, w, o, pads) in cases {
        let x = data(&mut rng, &[n, h, w, c]);
        let wt = data(&mut rng, &[o, c, 3, 3]);
        let b = data(&mut rng, &[o]);
        let oh = (h as i64 + pads[0] + pads[2] - 2) as usize;
        let ow = (w as i64 + pads[1] + pads[3] - 2) as usize;
        let res = data(&mut rng, &[n, oh, ow, o]);
        let geo = [
            ("pads", Attr::Ints(pads.to_vec())),
            ("layout", Attr::String("NHWC".into())),
        ];
        check_conv(&geo, &["Relu", "Sigmoid"], x, wt, b, &res);
    }
}

/// (N, C, H, W, KH, KW, stride, pads, dilation)
type DwCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    [i64; 4],
    i64,
);

/// Channels-last depthwise convolutions (the channel-vectorized kernel):
/// channel counts with and without a scalar tail, strides, asymmetric
/// padding, dilation, non-square kernels, inputs narrower than the kernel
/// (no interior columns) and more taps than stay in registers.
#[test]
fn channels_last_depthwise_conv() {
    let mut rng = SplitMix64::new(7);
    let cases: [DwCase; 11] = [
        (1, 8, 9, 11, 3, 3, 1, [1; 4], 1),
        (1, 40, 8, 14, 3, 3, 1, [1; 4], 1),
        (1, 20, 9, 19, 5, 5, 1, [2; 4], 2),
        (2, 5, 10, 9, 3, 3, 2, [1; 4], 1),
        (1, 32, 7, 8, 3, 3, 2, [0, 1, 1, 0], 1),
        (1, 12, 12, 10, 5, 5, 2, [2; 4], 1),
        (1, 6, 9, 9, 3, 3, 1, [2; 4], 2),
        (1, 7, 6, 3, 3, 5, 1, [1, 2, 1, 2], 1),
        (1, 4, 5, 2, 3, 3, 1, [0, 0, 0, 1], 1),
        (1, 9, 11, 12, 7, 7, 1, [3; 4], 1),
        (2, 3, 4, 4, 1, 1, 1, [0; 4], 1),
    ];
    for (n, c, h, w, kh, kw, s, pads, d) in cases {
        let x = data(&mut rng, &[n, h, w, c]);
        let wt = data(&mut rng, &[c, 1, kh, kw]);
        let b = data(&mut rng, &[c]);
        let oh = ((h as i64 + pads[0] + pads[2] - (kh as i64 - 1) * d - 1) / s as i64 + 1) as usize;
        let ow = ((w as i64 + pads[1] + pads[3] - (kw as i64 - 1) * d - 1) / s as i64 + 1) as usize;
        let res = data(&mut rng, &[n, oh, ow, c]);
        let geo = [
            ("strides", Attr::Ints(vec![s as i64; 2])),
            ("pads", Attr::Ints(pads.to_vec())),
            ("dilations", Attr::Ints(vec![d; 2])),
            ("group", Attr::Int(c as i64)),
            ("layout", Attr::String("NHWC".into())),
        ];
        let relu6 = [
            act("Clip"),
            ("act_alpha", Attr::Float(0.0)),
            ("act_beta", Attr::Float(6.0)),
        ];
        let acts: Vec<Vec<(&str, Attr)>> = vec![vec![], relu6.to_vec(), vec![act("HardSwish")]];
        for (i, a) in acts.into_iter().enumerate() {
            let mut attrs = geo.to_vec();
            attrs.extend(a);
            check(
                "cpucc.FusedConv",
                13,
                &attrs,
                vec![
                    In(x.clone()),
                    Const(wt.clone()),
                    Const(b.clone()),
                    residual(i, &res),
                ],
            );
        }
        check("Conv", 13, &geo, vec![In(x.clone()), Const(wt.clone())]);
        check("Conv", 13, &geo, vec![In(x), Const(wt), In(b)]);
    }
}

#[test]
fn channels_last_global_average_pool() {
    let mut rng = SplitMix64::new(8);
    for shape in [[1, 7, 7, 70], [2, 3, 5, 3], [1, 1, 1, 129]] {
        let x = data(&mut rng, &shape);
        let attrs = [("layout", Attr::String("NHWC".into()))];
        check("GlobalAveragePool", 13, &attrs, vec![In(x)]);
    }
}

/// (shape NHWC, kernel, strides, pads, dilations, ceil_mode)
type PoolCase = ([usize; 4], [i64; 2], [i64; 2], [i64; 4], [i64; 2], i64);

/// Channels-last MaxPool (the depthwise kernel's window walk with max):
/// padding, strides, dilation, ceil_mode and non-square windows.
#[test]
fn channels_last_max_pool() {
    let mut rng = SplitMix64::new(9);
    let cases: [PoolCase; 6] = [
        ([1, 12, 11, 8], [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 0),
        ([1, 5, 21, 40], [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 0),
        ([2, 6, 6, 5], [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], 0),
        ([1, 7, 8, 4], [3, 2], [2, 2], [0, 1, 1, 0], [1, 1], 1),
        ([1, 9, 9, 6], [3, 3], [1, 1], [2, 2, 2, 2], [2, 2], 0),
        ([1, 4, 3, 17], [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 0),
    ];
    for (shape, k, s, p, d, ceil) in cases {
        let x = data(&mut rng, &shape);
        let attrs = [
            ("kernel_shape", Attr::Ints(k.to_vec())),
            ("strides", Attr::Ints(s.to_vec())),
            ("pads", Attr::Ints(p.to_vec())),
            ("dilations", Attr::Ints(d.to_vec())),
            ("ceil_mode", Attr::Int(ceil)),
            ("layout", Attr::String("NHWC".into())),
        ];
        check("MaxPool", 12, &attrs, vec![In(x)]);
    }
}

/// Channels-last MaxPool skips NaNs as the interpreter does: NaN only
/// where every tap inside the input is NaN (here a whole 3x3 window of
/// one channel, and a corner window whose other taps are padding), in
/// the machine-code interior and the CLIF edges alike.
#[test]
fn channels_last_max_pool_skips_nans() {
    let mut rng = SplitMix64::new(10);
    let (h, w, c) = (6, 20, 20);
    let mut v: Vec<f64> = (0..h * w * c).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let at = |y: usize, x: usize, ch: usize| (y * w + x) * c + ch;
    for (i, x) in v.iter_mut().enumerate() {
        if i % 7 == 3 {
            *x = f64::NAN;
        }
    }
    for (y, x) in (2..5).flat_map(|y| (8..11).map(move |x| (y, x))) {
        v[at(y, x, 3)] = f64::NAN;
    }
    for (y, x) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        v[at(y, x, 5)] = f64::NAN;
    }
    let x = Tensor::from_f64s(DType::F32, &[1, h, w, c], &v).unwrap();
    let attrs = [
        ("kernel_shape", Attr::Ints(vec![3, 3])),
        ("pads", Attr::Ints(vec![1; 4])),
        ("layout", Attr::String("NHWC".into())),
    ];
    let (want, got) = outputs("MaxPool", 12, &attrs, vec![In(x)]);
    assert!(want[at(3, 9, 3)].is_nan() && want[at(0, 0, 5)].is_nan());
    assert_eq!(want.iter().filter(|x| x.is_nan()).count(), 2);
    for (name, got) in got {
        for (k, (w, g)) in want.iter().zip(&got).enumerate() {
            let same = if w.is_nan() { g.is_nan() } else { w == g };
            assert!(same, "MaxPool on {name}: element {k}: {g} != {w}");
        }
    }
}

/// The layout transposes (NCHW <-> NHWC as tiled 2-D transposes), with
/// column counts that are and are not multiples of the 16-wide tile.
#[test]
fn layout_transposes() {
    let mut rng = SplitMix64::new(10);
    for (shape, perm) in [
        ([2, 5, 3, 7], [0, 2, 3, 1]),
        ([1, 16, 4, 8], [0, 2, 3, 1]),
        ([2, 3, 7, 17], [0, 3, 1, 2]),
        ([1, 20, 30, 32], [0, 3, 1, 2]),
        ([2, 33, 20, 30], [0, 2, 3, 1]),
        ([1, 32, 16, 16], [0, 2, 3, 1]),
        ([1, 25, 12, 48], [0, 3, 1, 2]),
    ] {
        let x = data(&mut rng, &shape);
        let attrs = [("perm", Attr::Ints(perm.to_vec()))];
        check("Transpose", 13, &attrs, vec![In(x)]);
    }
}

/// Attention's score, softmax and value loops: key counts around the
/// four-key step and head sizes around the sixteen-column step.
#[test]
fn attention_blocked_loops() {
    let mut rng = SplitMix64::new(11);
    for (s, t, d) in [(3, 7, 20), (5, 8, 16), (2, 13, 35), (1, 1, 3)] {
        let q = data(&mut rng, &[2, 3, s, d]);
        let k = data(&mut rng, &[2, 3, t, d]);
        let v = data(&mut rng, &[2, 3, t, d]);
        check(
            "Attention",
            23,
            &[],
            vec![In(q.clone()), In(k.clone()), In(v.clone())],
        );
        let mask = data(&mut rng, &[s, t]);
        check("Attention", 23, &[], vec![In(q), In(k), In(v), In(mask)]);
    }
}

/// Attention on the GEMM tiles (AVX-512 hosts): query rows past one
/// 14-row block, keys past one 32-column panel and past one depth block
/// (200), value widths with an edge panel, grouped heads, the causal mask
/// with a float mask (four keys at a time) and a boolean mask (one).
#[test]
fn attention_on_gemm_tiles() {
    let mut rng = SplitMix64::new(12);
    for (s, t, d, dv) in [
        (30, 70, 40, 33),
        (17, 200, 64, 64),
        (1, 45, 8, 80),
        (2, 300, 16, 24),
    ] {
        let q = data(&mut rng, &[1, 4, s, d]);
        let k = data(&mut rng, &[1, 2, t, d]);
        let v = data(&mut rng, &[1, 2, t, dv]);
        let qkv = || vec![In(q.clone()), In(k.clone()), In(v.clone())];
        check("Attention", 23, &[], qkv());
        let mut args = qkv();
        args.push(In(data(&mut rng, &[s, t])));
        check("Attention", 23, &[("is_causal", Attr::Int(1))], args);
        let keep: Vec<f64> = (0..s * t)
            .map(|_| (rng.uniform(0.0, 1.0) < 0.7) as u8 as f64)
            .collect();
        let mut args = qkv();
        args.push(In(Tensor::from_f64s(DType::Bool, &[s, t], &keep).unwrap()));
        check("Attention", 23, &[], args);
    }
}

/// The scale and float mask folded into the QKᵀ epilogue: masks
/// broadcast from every rank (BERT's `[B, 1, 1, T]` among them), -inf
/// entries and a fully masked row (all zeros), an explicit scale, the
/// causal mask over a key cache, and padded key lengths (opset 24).
#[test]
fn attention_scale_and_mask_in_the_epilogue() {
    let mut rng = SplitMix64::new(14);
    let (b, s, t, d) = (2, 20, 45, 64);
    let q = data(&mut rng, &[b, 4, s, d]);
    let k = data(&mut rng, &[b, 2, t, d]);
    let v = data(&mut rng, &[b, 2, t, 40]);
    let qkv = || vec![In(q.clone()), In(k.clone()), In(v.clone())];
    for mshape in [vec![t], vec![b, 1, 1, t], vec![1, 4, s, t], vec![s, t]] {
        let n: usize = mshape.iter().product();
        let mut m: Vec<f64> = (0..n).map(|_| rng.uniform(-3.0, 3.0)).collect();
        for x in m.iter_mut().step_by(7) {
            *x = f64::NEG_INFINITY;
        }
        if mshape.len() == 2 {
            m[t..2 * t].fill(f64::NEG_INFINITY);
        }
        let mut args = qkv();
        args.push(In(Tensor::from_f64s(DType::F32, &mshape, &m).unwrap()));
        check("Attention", 23, &[("scale", Attr::Float(0.3))], args);
    }
    let mut past = |dv| data(&mut rng, &[b, 2, 9, dv]);
    let (pk, pv) = (past(d), past(40));
    let mut args = qkv();
    args.extend([In(data(&mut rng, &[s, t + 9])), In(pk), In(pv)]);
    check("Attention", 23, &[("is_causal", Attr::Int(1))], args);
    let lens = Tensor::from_vec(&[b], vec![t as i64 - 6, t as i64]).unwrap();
    for causal in [0, 1] {
        let mut args = qkv();
        args.extend([Absent, Absent, Absent, In(lens.clone())]);
        check("Attention", 24, &[("is_causal", Attr::Int(causal))], args);
    }
}

/// A's rows a multiple of 4 KiB apart (K = 1024, 2048) share L1 sets: the
/// microkernel then reads a copy of A with padded rows.
#[test]
fn matmul_rows_on_one_cache_set() {
    let mut rng = SplitMix64::new(13);
    for (m, k, n) in [(30, 1024, 96), (15, 2048, 40)] {
        let a = data(&mut rng, &[2, m, k]);
        let b = data(&mut rng, &[k, n]);
        check("MatMul", 13, &[], vec![In(a.clone()), Const(b.clone())]);
        let bias = data(&mut rng, &[n]);
        let res = data(&mut rng, &[2, m, n]);
        check(
            "cpucc.FusedMatMul",
            13,
            &[act("Relu")],
            vec![In(a), Const(b), Const(bias), Dying(res)],
        );
    }
}

/// The epilogue activations (in registers on AVX-512) across their range,
/// infinities and NaN included: C = A·0 + residual, so each activation
/// sees the residual's values. Agreement: the same NaN/infinity, else
/// within 1e-6 (absolute below 1, relative above).
#[test]
fn epilogue_activations_at_extremes() {
    let vals = [
        f64::NEG_INFINITY,
        -100.0,
        -20.0,
        -9.0,
        -5.0,
        -1.5,
        -1e-3,
        -0.0,
        0.0,
        1e-30,
        1e-3,
        0.7,
        3.0,
        9.0,
        20.0,
        100.0,
        f64::INFINITY,
        f64::NAN,
    ];
    let (m, k, n) = (3, 8, 2 * vals.len());
    let mut rng = SplitMix64::new(14);
    let a = data(&mut rng, &[m, k]);
    let zeros = Tensor::from_f64s(DType::F32, &[k, n], &vec![0.0; k * n]).unwrap();
    let res: Vec<f64> = (0..m * n).map(|i| vals[(i * 7) % vals.len()]).collect();
    let res = Tensor::from_f64s(DType::F32, &[m, n], &res).unwrap();
    let bias = Tensor::from_f64s(DType::F32, &[n], &vec![0.0; n]).unwrap();
    for name in ["Relu", "Sigmoid", "Gelu", "GeluTanh", "Tanh"] {
        let args = vec![
            In(a.clone()),
            Const(zeros.clone()),
            Const(bias.clone()),
            In(res.clone()),
        ];
        let (want, got) = outputs("cpucc.FusedMatMul", 13, &[act(name)], args);
        for (target, got) in got {
            for (i, (w, h)) in want.iter().zip(&got).enumerate() {
                let same = if w.is_nan() || w.is_infinite() {
                    w.is_nan() && h.is_nan() || w == h
                } else {
                    (w - h).abs() <= 1e-6 * w.abs().max(1.0)
                };
                assert!(
                    same,
                    "{name} on {target}: element {i} (x = {}): {h} != {w}",
                    vals[(i * 7) % vals.len()]
                );
            }
        }
    }
}
