//! `--fast-math bf16`: the bf16 GEMM (AMX tiles on hosts with AMX-BF16,
//! `vdpbf16ps` when AMX is removed from the target) against an exact
//! oracle — the interpreter on inputs and weights rounded to bf16 (nearest
//! even), bias and residual kept f32 — so only the f32 accumulation order
//! differs (tolerance 1e-4 of the output's magnitude; an f32 product or a
//! truncating conversion would be off by ~1e-3). Shapes are not multiples
//! of the 32-row/28-row blocks, 32-column panels or 32-deep steps (K odd
//! included), with alpha/beta, bias of every shape, residuals and
//! activations in and after the epilogue, batches, and channels-last
//! convolutions. Run-time B stays f32 (checked at 1e-4 against the
//! unrounded interpreter). Also: the MLP and conv_relu models keep cosine
//! similarity >= 0.99 with the f32 interpreter, and x86 targets without
//! bf16 instructions are a clear error (aarch64: `bfmmla_aarch64.rs`).

use cpucc::codegen::jit::JitModel;
use cpucc::codegen::{Dumps, FastMath, Options, Target};
use cpucc::import::{ImportOptions, onnx};
use cpucc::interp;
use cpucc::ir::{Attr, Attrs, DType, Graph, Tensor, ValueType};
use cpucc::passes;
use cpucc::random::SplitMix64;
use cpucc_tests::models;
use prost::Message;

const BF16: Options = Options {
    fast_math: FastMath::Bf16,
};

fn data(rng: &mut SplitMix64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    Tensor::from_f64s(DType::F32, shape, &v).unwrap()
}

/// Round to nearest even bf16, as an f32 (inputs here are finite).
fn bf16_round(x: f32) -> f32 {
    let u = x.to_bits();
    let r = u.wrapping_add(0x7fff + ((u >> 16) & 1));
    f32::from_bits(r & 0xffff_0000)
}

fn rounded(t: &Tensor) -> Tensor {
    let v: Vec<f64> = t
        .to_f64_vec()
        .into_iter()
        .map(|x| bf16_round(x as f32) as f64)
        .collect();
    Tensor::from_f64s(DType::F32, t.shape(), &v).unwrap()
}

/// The bf16 instruction sets this host can run: AMX (host) and
/// AVX512-BF16 (host without AMX).
fn targets() -> Vec<Target> {
    let host = Target::host();
    let mut v = Vec::new();
    if host.has("avx512bf16") {
        v.push(Target::parse("native-amx-tile").unwrap());
        if host.has("amx-bf16") {
            v.push(host);
        }
    }
    v
}

/// A node operand: run-time input, constant weight (rounded in the
/// oracle), or an f32 operand of the epilogue (bias, residual: exact).
#[derive(Clone)]
enum Arg {
    /// Run-time input multiplied in bf16 (A).
    In(Tensor),
    /// Run-time input the GEMM does not multiply (residual) or runs in f32
    /// (a run-time B).
    InExact(Tensor),
    /// Constant weights (B).
    W(Tensor),
    /// Constant bias.
    Bias(Tensor),
}
use Arg::{Bias, In, InExact, W};

fn graph(op: &str, attrs: &[(&str, Attr)], args: &[Arg], round: bool) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new("t");
    let mut ids = Vec::new();
    let mut ins = Vec::new();
    let r = |t: &Tensor| if round { rounded(t) } else { t.clone() };
    for (i, arg) in args.iter().enumerate() {
        ids.push(Some(match arg {
            In(t) | InExact(t) => {
                let id = g.add_input(&format!("x{i}"), ValueType::of(t)).unwrap();
                ins.push(if matches!(arg, In(_)) {
                    r(t)
                } else {
                    t.clone()
                });
                id
            }
            W(t) => g.add_const(&format!("c{i}"), r(t)).unwrap(),
            Bias(t) => g.add_const(&format!("c{i}"), t.clone()).unwrap(),
        }));
    }
    let mut a = Attrs::default();
    for (k, v) in attrs {
        a.set(k, v.clone());
    }
    let node = g.add_node("n", op, 13, a, ids, &["y".to_string()]).unwrap();
    g.outputs = g.node(node).outputs.clone();
    (g, ins)
}

/// Compiles `op` with `--fast-math bf16` for each target and compares with
/// the interpreter on bf16-rounded operands (unrounded when B is a
/// run-time input: that GEMM stays f32).
fn check(op: &str, attrs: &[(&str, Attr)], args: Vec<Arg>) {
    // Input 3 of the fused ops is the residual, never multiplied.
    let residual = |i: usize| op.starts_with("cpucc.") && i == 3;
    let exact = args
        .iter()
        .enumerate()
        .any(|(i, a)| matches!(a, InExact(_)) && !residual(i));
    let (oracle, oracle_in) = graph(op, attrs, &args, !exact);
    let want = interp::run(&oracle, &oracle_in)
        .unwrap()
        .remove(0)
        .to_f64_vec();
    let (g, ins) = graph(op, attrs, &args, false);
    let scale = want.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
    for t in targets() {
        let m = JitModel::compile_with(&g, &t, &BF16, &mut Dumps::default())
            .unwrap_or_else(|e| panic!("{op} on {}: {e}", t.name));
        for run in 0..2 {
            let got = m.run(&ins).unwrap().remove(0).to_f64_vec();
            assert_eq!(got.len(), want.len());
            for (k, (w, h)) in want.iter().zip(&got).enumerate() {
                assert!(
                    (w - h).abs() <= 1e-4 * scale,
                    "{op} {attrs:?} on {} (run {run}): element {k}: {h} != {w}",
                    t.name
                );
            }
        }
    }
}

fn act(name: &str) -> (&'static str, Attr) {
    ("activation", Attr::String(name.to_string()))
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 7, 33),
    (13, 5, 31),
    (33, 64, 32),
    (29, 517, 70),
    (70, 96, 65),
    (3, 1000, 17),
];

#[test]
fn matmul_against_rounded_oracle() {
    let mut rng = SplitMix64::new(1);
    for &(m, k, n) in SHAPES {
        let a = data(&mut rng, &[m, k]);
        let b = data(&mut rng, &[k, n]);
        check("MatMul", &[], vec![In(a.clone()), W(b.clone())]);
        // Run-time B: the f32 kernels, exact.
        check("MatMul", &[], vec![In(a), InExact(b)]);
    }
    let a = data(&mut rng, &[2, 3, 17, 40]);
    let b = data(&mut rng, &[40, 45]);
    check("MatMul", &[], vec![In(a), W(b)]);
}

#[test]
fn fused_matmul_epilogues() {
    let mut rng = SplitMix64::new(2);
    for &(m, k, n) in &SHAPES[1..] {
        let a = data(&mut rng, &[m, k]);
        let b = data(&mut rng, &[k, n]);
        let bias = data(&mut rng, &[n]);
        let res = data(&mut rng, &[m, n]);
        for a_name in [
            None,
            Some("Relu"),
            Some("Clip"),
            Some("Gelu"),
            Some("Sigmoid"),
        ] {
            let mut attrs = Vec::new();
            if let Some(x) = a_name {
                attrs.push(act(x));
            }
            if a_name == Some("Clip") {
                attrs.push(("act_alpha", Attr::Float(-0.25)));
                attrs.push(("act_beta", Attr::Float(0.5)));
            }
            check(
                "cpucc.FusedMatMul",
                &attrs,
                vec![
                    In(a.clone()),
                    W(b.clone()),
                    Bias(bias.clone()),
                    InExact(res.clone()),
                ],
            );
        }
    }
}

#[test]
fn gemm_alpha_beta_transposes_and_bias_shapes() {
    let mut rng = SplitMix64::new(3);
    let (m, k, n) = (37, 45, 50);
    let a = data(&mut rng, &[m, k]);
    let bt = data(&mut rng, &[n, k]);
    for bias_shape in [vec![n], vec![m, 1], vec![1], vec![m, n]] {
        let c = data(&mut rng, &bias_shape);
        check(
            "Gemm",
            &[
                ("transB", Attr::Int(1)),
                ("alpha", Attr::Float(0.75)),
                ("beta", Attr::Float(-1.5)),
            ],
            vec![In(a.clone()), W(bt.clone()), Bias(c)],
        );
    }
}

#[test]
fn channels_last_conv() {
    let mut rng = SplitMix64::new(4);
    // (N, C, H, W, O, kernel, stride, pad, dilation): 1x1 multiplies the
    // input, the others gather im2col rows while converting (C past 32,
    // odd, and 3 as in a stem).
    for (n, c, h, w, o, k, s, p, d) in [
        (2, 16, 5, 7, 33, 1, 1, 0, 1),
        (1, 3, 11, 10, 17, 3, 1, 1, 1),
        (2, 5, 12, 9, 40, 3, 2, 1, 1),
        (1, 64, 6, 6, 30, 3, 1, 1, 1),
        (2, 37, 9, 8, 20, 3, 1, 2, 2),
        (1, 40, 9, 9, 20, 1, 2, 0, 1),
        (1, 3, 15, 15, 8, 7, 2, 3, 1),
    ] {
        let x = data(&mut rng, &[n, h, w, c]);
        let wt = data(&mut rng, &[o, c, k, k]);
        let b = data(&mut rng, &[o]);
        let ek = (k - 1) * d + 1;
        let oh = (h + 2 * p - ek) / s + 1;
        let ow = (w + 2 * p - ek) / s + 1;
        let res = data(&mut rng, &[n, oh, ow, o]);
        let mut attrs = vec![
            ("strides", Attr::Ints(vec![s as i64; 2])),
            ("pads", Attr::Ints(vec![p as i64; 4])),
            ("dilations", Attr::Ints(vec![d as i64; 2])),
            ("layout", Attr::String("NHWC".into())),
        ];
        check("Conv", &attrs, vec![In(x.clone()), W(wt.clone())]);
        attrs.push(act("Relu"));
        check(
            "cpucc.FusedConv",
            &attrs,
            vec![In(x), W(wt), Bias(b), InExact(res)],
        );
    }
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn models_keep_cosine_similarity() {
    let Some(t) = targets().pop() else { return };
    for name in ["mlp", "conv_relu"] {
        let m = models::by_name(name).unwrap();
        let mut opts = ImportOptions::default();
        for (input, dims) in m.shapes {
            opts.shapes.insert(input.to_string(), dims.to_vec());
        }
        let g = onnx::load_bytes(&(m.build)().encode_to_vec(), None, &opts).unwrap();
        let mut h = g.clone();
        passes::run_pipeline(&mut h, passes::DEFAULT_PIPELINE).unwrap();
        let mut r = SplitMix64::new(7);
        let inputs: Vec<Tensor> = g
            .inputs
            .iter()
            .map(|&i| r.tensor(g.value(i).ty.dtype, &g.value(i).ty.shape))
            .collect();
        let want = interp::run(&g, &inputs).unwrap();
        let jit = JitModel::compile_with(&h, &t, &BF16, &mut Dumps::default()).unwrap();
        let got = jit.run(&inputs).unwrap();
        for (w, x) in want.iter().zip(&got) {
            let (w, x) = (w.to_f64_vec(), x.to_f64_vec());
            let cos = cosine(&w, &x);
            let max_rel = w
                .iter()
                .zip(&x)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
                / w.iter().fold(0f64, |m, a| m.max(a.abs()));
            println!(
                "{name} on {}: cosine {cos:.6}, max rel {max_rel:.2e}",
                t.name
            );
            assert!(cos >= 0.99, "{name}: cosine similarity {cos}");
            // bf16 is really in use: f32 would agree within 1e-5.
            assert!(max_rel > 1e-5, "{name}: output equals f32 ({max_rel:e})");
        }
    }
}

#[test]
fn targets_without_bf16_are_a_clear_error() {
    let mut rng = SplitMix64::new(5);
    let (g, _) = graph(
        "MatMul",
        &[],
        &[In(data(&mut rng, &[4, 8])), W(data(&mut rng, &[8, 3]))],
        false,
    );
    for (spec, needle) in [
        ("x86-64-v3", "needs AMX-BF16 or AVX512-BF16"),
        ("icelake-server", "needs AMX-BF16 or AVX512-BF16"),
    ] {
        let t = Target::parse(spec).unwrap();
        let e = cpucc::codegen::artifact::compile_with(&g, &t, "m", &BF16, &mut Dumps::default())
            .err()
            .unwrap_or_else(|| panic!("{spec}: compiled"));
        assert!(e.to_string().contains(needle), "{spec}: {e}");
    }
    // The same targets compile without --fast-math.
    let t = Target::parse("x86-64-v3").unwrap();
    cpucc::codegen::artifact::compile(&g, &t, "m", &mut Dumps::default()).unwrap();
}
