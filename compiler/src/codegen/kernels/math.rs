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
    exp_above(kb, ty, x, -104.0)
}

/// `exp` for softmax-like sums of exponentials: results below the normal
/// range (under ~1.6e-38 for f32, 3e-308 for f64) become 0. On x86 every
/// operation that makes a subnormal takes a microcode assist of ~150
/// cycles, and masked attention keys (x = -inf or -3.4e38) hit it for
/// every element.
pub fn exp_flush(kb: &mut Kb, ty: Type, x: Value) -> Value {
    let lo = if ty.lane_type() == F32 { -87.0 } else { -708.0 };
    let y = exp_above(kb, ty, x, lo);
    let lov = kb.constant(ty, lo);
    let tiny = kb.b.ins().fcmp(FloatCC::LessThan, x, lov);
    let zero = kb.constant(ty, 0.0);
    kb.sel(tiny, zero, y)
}

/// `exp(max(x, lo))`, with NaN and overflow kept.
fn exp_above(kb: &mut Kb, ty: Type, x: Value, lo: f64) -> Value {
    let lo = kb.constant(ty, lo);
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

/// `x` reduced by multiples of pi/2 (Cody-Waite, three parts of pi/2, good
/// for |x| < 2^13 on f32 lanes): the remainder in [-pi/4, pi/4] and the
/// quadrant as an integer of the lane width.
fn reduce_half_pi(kb: &mut Kb, ty: Type, x: Value) -> (Value, Value) {
    let two_over_pi = kb.constant(ty, std::f64::consts::FRAC_2_PI);
    let t = kb.b.ins().fmul(x, two_over_pi);
    let n = round_small(kb, ty, t);
    let mut r = x;
    let parts: &[f64] = if ty.lane_type() == F32 {
        &[
            -1.570_312_5,
            -4.837_512_969_970_703e-4,
            -7.549_789_954_891_882e-8,
        ]
    } else {
        &[
            -1.570_796_326_734_125_6,
            -6.077_100_506_303_966e-11,
            -2.022_266_248_795_950_6e-21,
        ]
    };
    for &p in parts {
        let c = kb.constant(ty, p);
        r = kb.fmadd(n, c, r);
    }
    let q = kb.b.ins().fcvt_to_sint_sat(int_ty(ty), n);
    (r, q)
}

/// sin(r) and cos(r) on |r| <= pi/4 (Taylor to degree 15/16: below f64
/// rounding there, and plenty for f32).
fn sin_cos_core(kb: &mut Kb, ty: Type, r: Value) -> (Value, Value) {
    let r2 = kb.b.ins().fmul(r, r);
    let mut fact = 1.0f64;
    let mut sc = Vec::new();
    let mut cc = Vec::new();
    for k in 1..=16 {
        fact *= k as f64;
        let sign = if (k / 2) % 2 == 0 { 1.0 } else { -1.0 };
        if k % 2 == 1 {
            sc.push(sign / fact);
        } else {
            cc.push(sign / fact);
        }
    }
    sc.reverse();
    cc.reverse();
    // sin r = r + r * r2 * S(r2), cos r = 1 + r2 * C(r2).
    let ps = poly(kb, ty, r2, &sc[..sc.len() - 1]);
    let ps = kb.b.ins().fmul(ps, r2);
    let s = kb.fmadd(ps, r, r);
    let mut cpoly = cc.clone();
    cpoly.push(1.0);
    let c = poly(kb, ty, r2, &cpoly);
    (s, c)
}

/// Lane mask `q & bit != 0`, shaped for `kb.sel` on `ty` values.
fn quadrant_bit(kb: &mut Kb, ty: Type, q: Value, bit: i64) -> Value {
    use cranelift_codegen::ir::condcodes::IntCC;
    let ity = int_ty(ty);
    let m = kb.bits(ity, bit);
    let a = kb.b.ins().band(q, m);
    let z = kb.bits(ity, 0);
    kb.b.ins().icmp(IntCC::NotEqual, a, z)
}

/// sin (`shift` 0) or cos (`shift` 1: cos x = sin(x + pi/2)).
fn sin_cos(kb: &mut Kb, ty: Type, x: Value, shift: i64) -> Value {
    let (r, q) = reduce_half_pi(kb, ty, x);
    let q = if shift == 0 {
        q
    } else {
        let s = kb.bits(int_ty(ty), shift);
        kb.b.ins().iadd(q, s)
    };
    let (s, c) = sin_cos_core(kb, ty, r);
    let odd = quadrant_bit(kb, ty, q, 1);
    let y = kb.sel(odd, c, s);
    let neg = quadrant_bit(kb, ty, q, 2);
    let ny = kb.b.ins().fneg(y);
    kb.sel(neg, ny, y)
}

pub fn sin(kb: &mut Kb, ty: Type, x: Value) -> Value {
    sin_cos(kb, ty, x, 0)
}

pub fn cos(kb: &mut Kb, ty: Type, x: Value) -> Value {
    sin_cos(kb, ty, x, 1)
}

pub fn tan(kb: &mut Kb, ty: Type, x: Value) -> Value {
    // tan(r + q pi/2) = tan r for even q, -1/tan r = -cos r / sin r for odd.
    let (r, q) = reduce_half_pi(kb, ty, x);
    let (s, c) = sin_cos_core(kb, ty, r);
    let t = kb.b.ins().fdiv(s, c);
    let nc = kb.b.ins().fneg(c);
    let u = kb.b.ins().fdiv(nc, s);
    let odd = quadrant_bit(kb, ty, q, 1);
    kb.sel(odd, u, t)
}

/// atan on all reals (Cephes atanf reduction: |x| > tan(3pi/8) uses
/// pi/2 - atan(1/|x|), |x| > tan(pi/8) uses pi/4 + atan((|x|-1)/(|x|+1))).
pub fn atan(kb: &mut Kb, ty: Type, x: Value) -> Value {
    let ax = kb.b.ins().fabs(x);
    let one = kb.constant(ty, 1.0);
    let zero = kb.constant(ty, 0.0);
    let t3 = kb.constant(ty, 2.414_213_562_373_095);
    let t1 = kb.constant(ty, 0.414_213_562_373_095_1);
    let big = kb.b.ins().fcmp(FloatCC::GreaterThan, ax, t3);
    let mid = kb.b.ins().fcmp(FloatCC::GreaterThan, ax, t1);
    let m1 = kb.constant(ty, -1.0);
    let inv = kb.b.ins().fdiv(m1, ax);
    let num = kb.b.ins().fsub(ax, one);
    let den = kb.b.ins().fadd(ax, one);
    let mv = kb.b.ins().fdiv(num, den);
    let z = kb.sel(mid, mv, ax);
    let z = kb.sel(big, inv, z);
    let q4 = kb.constant(ty, std::f64::consts::FRAC_PI_4);
    let q2 = kb.constant(ty, std::f64::consts::FRAC_PI_2);
    let base = kb.sel(mid, q4, zero);
    let base = kb.sel(big, q2, base);
    // atan z on |z| <= tan(pi/8): z + z^3 P(z^2), P from the Taylor series
    // (|z|^29/29 < 1e-12 there, far below f32 rounding; f64 lanes are
    // good to about 1e-12).
    let z2 = kb.b.ins().fmul(z, z);
    let coeffs: Vec<f64> = (1..14)
        .rev()
        .map(|k| {
            let s = if k % 2 == 1 { -1.0 } else { 1.0 };
            s / (2 * k + 1) as f64
        })
        .collect();
    let p = poly(kb, ty, z2, &coeffs);
    let p = kb.b.ins().fmul(p, z2);
    let a = kb.fmadd(p, z, z);
    let y = kb.b.ins().fadd(base, a);
    let y = kb.copysign(y, x);
    let isnan = kb.b.ins().fcmp(FloatCC::Unordered, x, x);
    kb.sel(isnan, x, y)
}

/// asin t for t in [0, 0.5]: t + t^3 P(t^2) (Taylor to degree 27, error
/// < 3e-11).
fn asin_core(kb: &mut Kb, ty: Type, t: Value) -> Value {
    let mut c = Vec::new();
    // Coefficient of t^(2k+1): (2k)! / (4^k (k!)^2 (2k+1)).
    let mut a = 1.0f64;
    for k in 1..14 {
        a *= (2 * k - 1) as f64 / (2 * k) as f64;
        c.push(a / (2 * k + 1) as f64);
    }
    c.reverse();
    let t2 = kb.b.ins().fmul(t, t);
    let p = poly(kb, ty, t2, &c);
    let p = kb.b.ins().fmul(p, t2);
    kb.fmadd(p, t, t)
}

/// `(p, big)` where for `a = |x|`: `big = a > 0.5` and p = asin(a) if not
/// big, else asin(sqrt((1 - a) / 2)) (asin a = pi/2 - 2 p). |x| > 1 gives
/// NaN through the sqrt.
fn asin_parts(kb: &mut Kb, ty: Type, x: Value) -> (Value, Value) {
    let a = kb.b.ins().fabs(x);
    let half = kb.constant(ty, 0.5);
    let one = kb.constant(ty, 1.0);
    let big = kb.b.ins().fcmp(FloatCC::GreaterThan, a, half);
    let d = kb.b.ins().fsub(one, a);
    let d = kb.b.ins().fmul(d, half);
    let s = kb.b.ins().sqrt(d);
    let t = kb.sel(big, s, a);
    (asin_core(kb, ty, t), big)
}

pub fn asin(kb: &mut Kb, ty: Type, x: Value) -> Value {
    let (p, big) = asin_parts(kb, ty, x);
    let q2 = kb.constant(ty, std::f64::consts::FRAC_PI_2);
    let m2 = kb.constant(ty, -2.0);
    let b = kb.fmadd(p, m2, q2);
    let y = kb.sel(big, b, p);
    let y = kb.copysign(y, x);
    // |x| > 1 (NaN from sqrt when big) and NaN inputs stay NaN.
    let ny = kb.b.ins().fcmp(FloatCC::Unordered, y, y);
    let nan = kb.constant(ty, f64::NAN);
    kb.sel(ny, nan, y)
}

pub fn acos(kb: &mut Kb, ty: Type, x: Value) -> Value {
    let (p, big) = asin_parts(kb, ty, x);
    let q2 = kb.constant(ty, std::f64::consts::FRAC_PI_2);
    let pi = kb.constant(ty, std::f64::consts::PI);
    let two = kb.constant(ty, 2.0);
    let m2 = kb.constant(ty, -2.0);
    let zero = kb.constant(ty, 0.0);
    // |x| <= 0.5: pi/2 - asin x; x > 0.5: 2p; x < -0.5: pi - 2p.
    let sp = kb.copysign(p, x);
    let small = kb.b.ins().fsub(q2, sp);
    let pos = kb.b.ins().fmul(p, two);
    let negv = kb.fmadd(p, m2, pi);
    let isneg = kb.b.ins().fcmp(FloatCC::LessThan, x, zero);
    let b = kb.sel(isneg, negv, pos);
    let y = kb.sel(big, b, small);
    let ny = kb.b.ins().fcmp(FloatCC::Unordered, y, y);
    let nan = kb.constant(ty, f64::NAN);
    kb.sel(ny, nan, y)
}

/// e^|x| / 2 without overflowing before the result does: for large |x|
/// as a * (a / 2) with a = e^(|x|/2) (halving is exact, unlike |x| - ln 2).
fn half_exp_abs(kb: &mut Kb, ty: Type, ax: Value) -> Value {
    let lim = kb.constant(ty, 80.0);
    let big = kb.b.ins().fcmp(FloatCC::GreaterThan, ax, lim);
    let half = kb.constant(ty, 0.5);
    let hx = kb.b.ins().fmul(ax, half);
    let arg = kb.sel(big, hx, ax);
    let e = exp(kb, ty, arg);
    let he = kb.b.ins().fmul(e, half);
    let sq = kb.b.ins().fmul(e, he);
    kb.sel(big, sq, he)
}

/// x + x^3 P(x^2) with the Taylor coefficients of an odd series; `coef(k)`
/// is the coefficient of x^(2k+1), k >= 1.
fn odd_series(kb: &mut Kb, ty: Type, x: Value, terms: u32, coef: impl Fn(u32) -> f64) -> Value {
    let c: Vec<f64> = (1..=terms).rev().map(coef).collect();
    let x2 = kb.b.ins().fmul(x, x);
    let p = poly(kb, ty, x2, &c);
    let p = kb.b.ins().fmul(p, x2);
    kb.fmadd(p, x, x)
}

pub fn sinh(kb: &mut Kb, ty: Type, x: Value) -> Value {
    // |x| < 1: Taylor (degree 21, error < 1e-20); else (e - 1/e) / 2.
    let small = odd_series(kb, ty, x, 10, |k| {
        1.0 / (1..=2 * k + 1).map(|i| i as f64).product::<f64>()
    });
    let ax = kb.b.ins().fabs(x);
    let h = half_exp_abs(kb, ty, ax);
    let q = kb.constant(ty, 0.25);
    let r = kb.b.ins().fdiv(q, h);
    let big = kb.b.ins().fsub(h, r);
    let big = kb.copysign(big, x);
    let one = kb.constant(ty, 1.0);
    let is_small = kb.b.ins().fcmp(FloatCC::LessThan, ax, one);
    let y = kb.sel(is_small, small, big);
    let isnan = kb.b.ins().fcmp(FloatCC::Unordered, x, x);
    kb.sel(isnan, x, y)
}

pub fn cosh(kb: &mut Kb, ty: Type, x: Value) -> Value {
    let ax = kb.b.ins().fabs(x);
    let h = half_exp_abs(kb, ty, ax);
    let q = kb.constant(ty, 0.25);
    let r = kb.b.ins().fdiv(q, h);
    let y = kb.b.ins().fadd(h, r);
    let isnan = kb.b.ins().fcmp(FloatCC::Unordered, x, x);
    kb.sel(isnan, x, y)
}

/// log(a + sqrt(a^2 - 1)) style results for huge `a`: log(a) + ln 2, since
/// a^2 would overflow.
fn log_2a(kb: &mut Kb, ty: Type, a: Value) -> Value {
    let l = log(kb, ty, a);
    let ln2 = kb.constant(ty, std::f64::consts::LN_2);
    kb.b.ins().fadd(l, ln2)
}

pub fn asinh(kb: &mut Kb, ty: Type, x: Value) -> Value {
    // |x| < 0.5: Taylor (degree 41, error < 1e-13); else
    // log(a + sqrt(a^2 + 1)), or log(2a) once a^2 + 1 == a^2.
    let small = odd_series(kb, ty, x, 20, |k| {
        let mut a = 1.0f64;
        for j in 1..=k {
            a *= (2 * j - 1) as f64 / (2 * j) as f64;
        }
        let s = if k % 2 == 1 { -1.0 } else { 1.0 };
        s * a / (2 * k + 1) as f64
    });
    let a = kb.b.ins().fabs(x);
    let one = kb.constant(ty, 1.0);
    let a2 = kb.fmadd(a, a, one);
    let s = kb.b.ins().sqrt(a2);
    let s = kb.b.ins().fadd(a, s);
    let mid = log(kb, ty, s);
    let huge = log_2a(kb, ty, a);
    let hl = kb.constant(ty, 1e9);
    let is_huge = kb.b.ins().fcmp(FloatCC::GreaterThan, a, hl);
    let big = kb.sel(is_huge, huge, mid);
    let big = kb.copysign(big, x);
    let half = kb.constant(ty, 0.5);
    let is_small = kb.b.ins().fcmp(FloatCC::LessThan, a, half);
    let y = kb.sel(is_small, small, big);
    let isnan = kb.b.ins().fcmp(FloatCC::Unordered, x, x);
    kb.sel(isnan, x, y)
}

pub fn acosh(kb: &mut Kb, ty: Type, x: Value) -> Value {
    // log(x + sqrt((x-1)(x+1))).
    let one = kb.constant(ty, 1.0);
    let xm = kb.b.ins().fsub(x, one);
    let xp = kb.b.ins().fadd(x, one);
    let d = kb.b.ins().fmul(xm, xp);
    let s = kb.b.ins().sqrt(d);
    let s = kb.b.ins().fadd(x, s);
    let mid = log(kb, ty, s);
    let huge = log_2a(kb, ty, x);
    let hl = kb.constant(ty, 1e9);
    let is_huge = kb.b.ins().fcmp(FloatCC::GreaterThan, x, hl);
    let y = kb.sel(is_huge, huge, mid);
    // x < 1 (where (x-1)(x+1) may still be positive) and NaN give NaN.
    let ok = kb.b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, one);
    let nan = kb.constant(ty, f64::NAN);
    kb.sel(ok, y, nan)
}

pub fn atanh(kb: &mut Kb, ty: Type, x: Value) -> Value {
    // |x| < 0.5: Taylor (degree 41, error < 1e-14); else
    // log((1 + x) / (1 - x)) / 2 (+-inf at +-1, NaN beyond).
    let small = odd_series(kb, ty, x, 20, |k| 1.0 / (2 * k + 1) as f64);
    let one = kb.constant(ty, 1.0);
    let n = kb.b.ins().fadd(one, x);
    let d = kb.b.ins().fsub(one, x);
    let q = kb.b.ins().fdiv(n, d);
    let l = log(kb, ty, q);
    let half = kb.constant(ty, 0.5);
    let big = kb.b.ins().fmul(l, half);
    let ax = kb.b.ins().fabs(x);
    let is_small = kb.b.ins().fcmp(FloatCC::LessThan, ax, half);
    let y = kb.sel(is_small, small, big);
    let isnan = kb.b.ins().fcmp(FloatCC::Unordered, x, x);
    kb.sel(isnan, x, y)
}
