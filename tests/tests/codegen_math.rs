//! Error bounds of the native exponential, activation, trigonometric and
//! hyperbolic kernels
//! (codegen/kernels/math.rs) against f64 `std`, on f32 sweeps through a
//! JIT-compiled one-node graph (vector lanes and the scalar tail both run).
//! The interpreter, which computes in f64, must agree with `std` too.
//!
//! Error measure: |y - ref| / max(|ref|, 1), i.e. absolute below 1 and
//! relative above. Stated bounds (f32): sin, cos on |x| <= 100: 4e-7;
//! tan on |x| <= 1.5: 4e-7 (relative, it is steep near the poles);
//! asin, acos, atan: 3e-7; sinh, cosh on |x| <= 88: 6e-7; asinh, acosh,
//! atanh: 4e-7; exp on [-87, 88]: 1.5e-7 relative; log on (0, 3.4e38]:
//! 2e-7; tanh, sigmoid: 1.5e-7; erf: 3e-7; Gelu (erf form): 3e-7.

use cpucc::codegen::jit::JitModel;
use cpucc::codegen::{Dumps, Target};
use cpucc::interp;
use cpucc::ir::{Attrs, DType, Graph, Tensor, ValueType};

fn one_node(op: &str, n: usize) -> Graph {
    let mut g = Graph::new(op);
    let x = g
        .add_input("x", ValueType::new(DType::F32, vec![n]))
        .unwrap();
    // Gelu arrived in opset 20; everything else here exists in 13.
    let opset = if op == "Gelu" { 20 } else { 13 };
    g.add_node(
        op,
        op,
        opset,
        Attrs::default(),
        vec![Some(x)],
        &["y".into()],
    )
    .unwrap();
    g.outputs = vec![g.find("y").unwrap()];
    g
}

fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (lo + (hi - lo) * i as f64 / (n - 1) as f64) as f32)
        .collect()
}

/// +-10^e for e in [lo, hi], 40 points per decade.
fn logspace(lo: i32, hi: i32) -> Vec<f32> {
    let mut v = Vec::new();
    for k in 0..=(hi - lo) * 40 {
        let x = 10f64.powf(lo as f64 + k as f64 / 40.0) as f32;
        v.push(x);
        v.push(-x);
    }
    v
}

/// Runs `op` on `xs` natively and in the interpreter; returns the largest
/// error of the native result against `f` in f64, after checking NaN
/// agreement and the interpreter.
fn max_err(op: &str, xs: &[f32], f: fn(f64) -> f64) -> f64 {
    let g = one_node(op, xs.len());
    let t = Tensor::from_vec(&[xs.len()], xs.to_vec()).unwrap();
    let m = JitModel::compile(&g, &Target::host(), &mut Dumps::default()).unwrap();
    let y = m.run(std::slice::from_ref(&t)).unwrap()[0].to_f64_vec();
    let yi = interp::run(&g, &[t]).unwrap()[0].to_f64_vec();
    let mut worst = 0.0f64;
    for ((&x, &y), &yi) in xs.iter().zip(&y).zip(&yi) {
        let r = f(x as f64);
        let rf = r as f32 as f64;
        if r.is_nan() {
            assert!(y.is_nan(), "{op}({x}) = {y}, expected NaN");
            continue;
        }
        if r.is_infinite() || rf.is_infinite() {
            assert_eq!(y, rf, "{op}({x})");
            continue;
        }
        let e = (y - r).abs() / r.abs().max(1.0);
        let ei = (yi - r).abs() / r.abs().max(1.0);
        assert!(ei <= 1e-7, "interpreter {op}({x}) = {yi}, std {r}");
        worst = worst.max(e);
    }
    worst
}

fn specials() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.0,
        -1.0,
        0.5,
        -0.5,
        1e-30,
        -1e-30,
    ]
}

fn check(op: &str, mut xs: Vec<f32>, f: fn(f64) -> f64, bound: f64) {
    xs.extend(specials());
    // An odd count so the scalar tail runs after the vector loop.
    if xs.len().is_multiple_of(4) {
        xs.push(0.25);
    }
    let e = max_err(op, &xs, f);
    println!("{op}: max error {e:.3e} (bound {bound:.0e})");
    assert!(e <= bound, "{op}: max error {e:e} above {bound:e}");
}

#[test]
fn sin_cos_tan() {
    let xs = linspace(-100.0, 100.0, 20001);
    check("Sin", xs.clone(), f64::sin, 4e-7);
    check("Cos", xs, f64::cos, 4e-7);
    check("Tan", linspace(-1.5, 1.5, 20001), f64::tan, 4e-7);
}

#[test]
fn inverse_trig() {
    let mut xs = linspace(-1.0, 1.0, 20001);
    xs.extend([1.5, -1.5, 1.0000001, -1.0000001]);
    check("Asin", xs.clone(), f64::asin, 3e-7);
    check("Acos", xs, f64::acos, 3e-7);
    let mut xs = linspace(-10.0, 10.0, 20001);
    xs.extend(logspace(-8, 30));
    check("Atan", xs, f64::atan, 3e-7);
}

#[test]
fn hyperbolic() {
    let mut xs = linspace(-88.0, 88.0, 20001);
    xs.extend(linspace(-2.0, 2.0, 4001));
    xs.extend([89.0, -89.0, 89.4, 90.0, -100.0]);
    check("Sinh", xs.clone(), f64::sinh, 6e-7);
    check("Cosh", xs, f64::cosh, 6e-7);
}

#[test]
fn inverse_hyperbolic() {
    let mut xs = linspace(-10.0, 10.0, 20001);
    xs.extend(logspace(-8, 37));
    check("Asinh", xs, f64::asinh, 4e-7);
    let mut xs = linspace(1.0, 10.0, 20001);
    xs.extend(logspace(0, 37));
    xs.extend([0.999, -2.0]);
    check("Acosh", xs, f64::acosh, 4e-7);
    let mut xs = linspace(-1.0, 1.0, 20001);
    xs.extend([0.9999999, -0.9999999, 1.5, -1.5]);
    check("Atanh", xs, f64::atanh, 4e-7);
}

#[test]
fn exp_log() {
    let mut xs = linspace(-87.0, 88.0, 20001);
    xs.extend(linspace(-1.0, 1.0, 4001));
    xs.extend([88.8, 89.0, 100.0, -88.0, -100.0, -104.0]);
    check("Exp", xs, f64::exp, 1.5e-7);
    let mut xs = linspace(1e-3, 10.0, 20001);
    xs.extend(logspace(-37, 38).into_iter().filter(|&x| x > 0.0));
    xs.extend([f32::MIN_POSITIVE, 1e-45, -1.0]);
    check("Log", xs, f64::ln, 2e-7);
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

#[test]
fn activations() {
    let mut xs = linspace(-20.0, 20.0, 20001);
    xs.extend(logspace(-8, 30));
    check("Tanh", xs.clone(), f64::tanh, 1.5e-7);
    check("Sigmoid", xs.clone(), sigmoid, 1.5e-7);
    check("Erf", xs.clone(), libm::erf, 3e-7);
    check("Gelu", xs, gelu, 3e-7);
}
