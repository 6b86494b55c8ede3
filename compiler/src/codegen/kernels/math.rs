//! Transcendental functions in CLIF, branch-free so they vectorize (f32x4)
//! and never call libm. They work on f32 and f64 lanes alike with f32-grade
//! accuracy; `codegen_math` tests hold them to the interpreter:
//! exp, log: 2 ulp-ish (relative error < 2e-7 on f32);
//! tanh, sigmoid, erf: absolute error < 3e-7.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32, I32, I64};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};

use crate::codegen::builder::Kb;

fn int_ty(ty: Type) -> Type {
    let lane = if ty.lane_type() == F32 { I32 } else { I64 };
    lane.by(ty.lane_count()).expect("vector of ints")
}

fn poly(kb: &mut Kb, ty: Type, x: Value, coeffs: &[f64]) -> Value {
    // Horner, highest degree first.
    let mut acc = kb.constant(ty, coeffs[0]);
    for &c in &coeffs[1..] {
        let c = kb.constant(ty, c);
        acc = kb.fmadd(acc, x, c);
    }
    acc
}

/// 2^n for integer-valued float `n` in [-150, 128], as two normal factors.
fn pow2_parts(kb: &mut Kb, ty: Type, n: Value) -> (Value, Value) {
    let f32lane = ty.lane_type() == F32;
    let ity = int_ty(ty);
    let ni = kb.b.ins().fcvt_to_sint_sat(ity, n);
    let half = kb.b.ins().sshr_imm_u(ni, 1);
    let rest = kb.b.ins().isub(ni, half);
    let (bias, shift) = if f32lane { (127, 23) } else { (1023, 52) };
    let mk = |kb: &mut Kb, e: Value| {
        let b = kb.bits(ity, bias);
        let e = kb.b.ins().iadd(e, b);
        let e = kb.b.ins().ishl_imm_u(e, shift);
        kb.b.ins().bitcast(ty, MemFlagsData::new(), e)
    };
    (mk(kb, half), mk(kb, rest))
}

/// Rounds to the nearest integer (ties to even) without SSE4.1's roundps:
/// adding and subtracting 1.5 * 2^(mantissa bits) does it for |x| < 2^22.
fn round_small(kb: &mut Kb, ty: Type, x: Value) -> Value {
    let magic = if ty.lane_type() == F32 {
        12_582_912.0
    } else {
        6_755_399_441_055_744.0
    };
    let m = kb.constant(ty, magic);
    let t = kb.b.ins().fadd(x, m);
    kb.b.ins().fsub(t, m)
}

pub fn exp(kb: &mut Kb, ty: Type, x: Value) -> Value {
    let lo = kb.constant(ty, -104.0);
    let hi = kb.constant(ty, 89.0);
    let xc = kb.b.ins().fmax(x, lo);
    let xc = kb.b.ins().fmin(xc, hi);
    let log2e = kb.constant(ty, std::f64::consts::LOG2_E);
    let t = kb.b.ins().fmul(xc, log2e);
    let n = round_small(kb, ty, t);
    let ln2_hi = kb.constant(ty, -0.693_145_751_953_125);
    let ln2_lo = kb.constant(ty, -1.428_606_765_330_187e-6);
    let r = kb.fmadd(n, ln2_hi, xc);
    let r = kb.fmadd(n, ln2_lo, r);
    // exp(r) on |r| <= ln2/2: degree-7 Taylor, error below f32 rounding.
    let p = poly(
        kb,
        ty,
        r,
        &[
            1.0 / 5040.0,
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ],
    );
    let (a, b) = pow2_parts(kb, ty, n);
    let y = kb.b.ins().fmul(p, a);
    let y = kb.b.ins().fmul(y, b);
    // Clamping turned NaN into a number and +inf into a finite value.
    let inf = kb.constant(ty, f64::INFINITY);
    let big = kb.b.ins().fcmp(FloatCC::GreaterThan, x, hi);
    let y = kb.sel(big, inf, y);
    let nan = kb.b.ins().fcmp(FloatCC::Unordered, x, x);
    kb.sel(nan, x, y)
}

pub fn log(kb: &mut Kb, ty: Type, x: Value) -> Value {
    let f32lane = ty.lane_type() == F32;
    let ity = int_ty(ty);
    let (shift, bias, mant_mask, one_bits) = if f32lane {
        (23, 127, 0x007f_ffffi64, 0x3f80_0000i64)
    } else {
        (52, 1023, 0x000f_ffff_ffff_ffff, 0x3ff0_0000_0000_0000)
    };
    // Scale subnormals into the normal range first.
    let tiny = kb.constant(
        ty,
        if f32lane {
            1.175_494_4e-38
        } else {
            2.2250738585072014e-308
        },
    );
    let is_sub = kb.b.ins().fcmp(FloatCC::LessThan, x, tiny);
    let scale = kb.constant(
        ty,
        if f32lane {
            8_388_608.0
        } else {
            4_503_599_627_370_496.0
        },
    );
    let xs = kb.b.ins().fmul(x, scale);
    let xv = kb.sel(is_sub, xs, x);
    let sub_adj = kb.constant(ty, if f32lane { -23.0 } else { -52.0 });
    let zero = kb.constant(ty, 0.0);
    let adj = kb.sel(is_sub, sub_adj, zero);

    let bits = kb.b.ins().bitcast(ity, MemFlagsData::new(), xv);
    let e = kb.b.ins().ushr_imm_u(bits, shift);
    let b = kb.bits(ity, bias);
    let e = kb.b.ins().isub(e, b);
    let mm = kb.bits(ity, mant_mask);
    let m = kb.b.ins().band(bits, mm);
    let ob = kb.bits(ity, one_bits);
    let m = kb.b.ins().bor(m, ob);
    let m = kb.b.ins().bitcast(ty, MemFlagsData::new(), m);
    let e = kb.b.ins().fcvt_from_sint(ty, e);
    let e = kb.b.ins().fadd(e, adj);
    // m in [1, 2): move to [sqrt(1/2), sqrt(2)).
    let sqrt2 = kb.constant(ty, std::f64::consts::SQRT_2);
    let big = kb.b.ins().fcmp(FloatCC::GreaterThan, m, sqrt2);
    let half = kb.constant(ty, 0.5);
    let one = kb.constant(ty, 1.0);
    let mh = kb.b.ins().fmul(m, half);
    let m = kb.sel(big, mh, m);
    let e1 = kb.b.ins().fadd(e, one);
    let e = kb.sel(big, e1, e);
    // log(m) = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.172.
    let num = kb.b.ins().fsub(m, one);
    let den = kb.b.ins().fadd(m, one);
    let s = kb.b.ins().fdiv(num, den);
    let s2 = kb.b.ins().fmul(s, s);
    let p = poly(
        kb,
        ty,
        s2,
        &[
            2.0 / 13.0,
            2.0 / 11.0,
            2.0 / 9.0,
            2.0 / 7.0,
            2.0 / 5.0,
            2.0 / 3.0,
            2.0,
        ],
    );
    let lm = kb.b.ins().fmul(p, s);
    let ln2 = kb.constant(ty, std::f64::consts::LN_2);
    let y = kb.fmadd(e, ln2, lm);
    // Special values: log(0) = -inf, log(<0) = NaN, log(inf) = inf, NaN.
    let ninf = kb.constant(ty, f64::NEG_INFINITY);
    let is0 = kb.b.ins().fcmp(FloatCC::Equal, x, zero);
    let y = kb.sel(is0, ninf, y);
    let nan = kb.constant(ty, f64::NAN);
    let neg = kb.b.ins().fcmp(FloatCC::LessThan, x, zero);
    let y = kb.sel(neg, nan, y);
    let inf = kb.constant(ty, f64::INFINITY);
    let isinf = kb.b.ins().fcmp(FloatCC::Equal, x, inf);
    let y = kb.sel(isinf, inf, y);
    let isnan = kb.b.ins().fcmp(FloatCC::Unordered, x, x);
    kb.sel(isnan, x, y)
}

pub fn sigmoid(kb: &mut Kb, ty: Type, x: Value) -> Value {
    let nx = kb.b.ins().fneg(x);
    let e = exp(kb, ty, nx);
    let one = kb.constant(ty, 1.0);
    let d = kb.b.ins().fadd(one, e);
    kb.b.ins().fdiv(one, d)
}

pub fn tanh(kb: &mut Kb, ty: Type, x: Value) -> Value {
    // Small |x|: odd polynomial (Cephes tanhf); else 1 - 2/(e^{2|x|}+1).
    let ax = kb.b.ins().fabs(x);
    let x2 = kb.b.ins().fmul(x, x);
    let p = poly(
        kb,
        ty,
        x2,
        &[
            -5.704_983_8e-3,
            2.063_908_9e-2,
            -5.373_971_9e-2,
            1.333_140_4e-1,
            -3.333_323_9e-1,
        ],
    );
    let p = kb.b.ins().fmul(p, x2);
    let small = kb.fmadd(p, x, x);
    let two = kb.constant(ty, 2.0);
    let a2 = kb.b.ins().fmul(ax, two);
    let e = exp(kb, ty, a2);
    let one = kb.constant(ty, 1.0);
    let d = kb.b.ins().fadd(e, one);
    let q = kb.b.ins().fdiv(two, d);
    let big = kb.b.ins().fsub(one, q);
    let big = kb.copysign(big, x);
    let lim = kb.constant(ty, 0.625);
    let is_small = kb.b.ins().fcmp(FloatCC::LessThan, ax, lim);
    let y = kb.sel(is_small, small, big);
    let isnan = kb.b.ins().fcmp(FloatCC::Unordered, x, x);
    kb.sel(isnan, x, y)
}

pub fn erf(kb: &mut Kb, ty: Type, x: Value) -> Value {
    // |x| < 0.5: Maclaurin series; else Abramowitz-Stegun 7.1.26 refined
    // by the exp of -x^2.
    let ax = kb.b.ins().fabs(x);
    let x2 = kb.b.ins().fmul(x, x);
    let c = 2.0 / std::f64::consts::PI.sqrt();
    let ps = poly(
        kb,
        ty,
        x2,
        &[
            c / 9360.0,
            -c / 1320.0,
            c / 216.0,
            -c / 42.0,
            c / 10.0,
            -c / 3.0,
            c,
        ],
    );
    let small = kb.b.ins().fmul(ps, x);
    let p = kb.constant(ty, 0.327_591_1);
    let one = kb.constant(ty, 1.0);
    let d = kb.fmadd(p, ax, one);
    let t = kb.b.ins().fdiv(one, d);
    let q = poly(
        kb,
        ty,
        t,
        &[
            1.061_405_429,
            -1.453_152_027,
            1.421_413_741,
            -0.284_496_736,
            0.254_829_592,
            0.0,
        ],
    );
    let nx2 = kb.b.ins().fneg(x2);
    let e = exp(kb, ty, nx2);
    let qe = kb.b.ins().fmul(q, e);
    let big = kb.b.ins().fsub(one, qe);
    let big = kb.copysign(big, x);
    let lim = kb.constant(ty, 0.5);
    let is_small = kb.b.ins().fcmp(FloatCC::LessThan, ax, lim);
    let y = kb.sel(is_small, small, big);
    let isnan = kb.b.ins().fcmp(FloatCC::Unordered, x, x);
    kb.sel(isnan, x, y)
}
