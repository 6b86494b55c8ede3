//! Elementwise ops (unary, binary with broadcasting, variadic, Where, Clip,
//! Cast) as strided loop nests. Floats compute in f32/f64 (f16 and bf16 in
//! f32, rounded on store), narrow integers in i32 with wrapping stores, like
//! the interpreter.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F64, I8, I32, I64};
use cranelift_codegen::ir::{InstBuilder, Type, Value};

use super::math;
use super::{NodeCx, Table};
use crate::codegen::builder::{Elt, Kb};
use crate::codegen::lower::Lower;
use crate::codegen::nest::{self, Access};
use crate::error::Result;
use crate::ir::{Attrs, DType};

pub fn register(t: &mut Table) {
    t.add(
        &[
            "Exp",
            "Log",
            "Sqrt",
            "Reciprocal",
            "Tanh",
            "Sigmoid",
            "Erf",
            "Floor",
            "Ceil",
            "Round",
            "Softplus",
            "Softsign",
            "Mish",
            "HardSwish",
            "LeakyRelu",
            "Elu",
            "Celu",
            "ThresholdedRelu",
            "Selu",
            "HardSigmoid",
            "Gelu",
            "Sin",
            "Cos",
            "Tan",
            "Asin",
            "Acos",
            "Atan",
            "Sinh",
            "Cosh",
            "Asinh",
            "Acosh",
            "Atanh",
        ],
        float_unary,
    );
    t.add(&["Relu", "Neg", "Abs", "Sign"], signed_unary);
    t.add(&["Identity"], identity);
    t.add(&["Add", "Sub", "Mul", "Div"], arith);
    t.add(&["Sum", "Mean", "Max", "Min"], variadic);
    t.add(
        &["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"],
        compare,
    );
    t.add(
        &["And", "Or", "Xor", "BitwiseAnd", "BitwiseOr", "BitwiseXor"],
        bitwise,
    );
    t.add(&["Not", "BitwiseNot"], not);
    t.add(&["IsNaN", "IsInf"], classify);
    t.add(&["Where"], where_);
    t.add(&["Clip"], clip);
    t.add(&["Shrink"], shrink);
    t.add(&["Cast", "CastLike"], cast);
    t.add(&["PRelu"], prelu);
    t.add(&["Pow"], pow);
    t.add(&["Mod"], modulo);
    t.add(&["BitShift"], bitshift);
}

/// Accesses for the present inputs `which`, broadcast to output 0.
fn inputs(cx: &NodeCx, which: &[usize]) -> Result<Vec<Access>> {
    let out = &cx.out(0).ty.shape;
    which
        .iter()
        .map(|&i| {
            let o = cx.input(i)?;
            Ok(Access::broadcast(o.buf, o.ty.dtype, &o.ty.shape, out))
        })
        .collect()
}

fn present(cx: &NodeCx) -> Vec<usize> {
    (0..cx.ins.len()).filter(|&i| cx.ins[i].is_some()).collect()
}

fn map(
    lw: &mut Lower,
    cx: &NodeCx,
    which: &[usize],
    vector: bool,
    f: impl Fn(&mut Kb, &[Value], u32) -> Value,
) -> Result<()> {
    let ins = inputs(cx, which)?;
    let o = cx.out(0);
    let out = Access::dense(o.buf, o.ty.dtype, &o.ty.shape);
    nest::emit(lw, &o.ty.shape, &ins, &[out], vector, |kb, v, l| {
        vec![f(kb, v, l)]
    })
}

fn vty(kb: &Kb, v: Value) -> Type {
    kb.b.func.dfg.value_type(v)
}

/// A scalar i8 comparison result widened to the i32 bool compute type.
fn bool32(kb: &mut Kb, c: Value) -> Value {
    kb.b.ins().uextend(I32, c)
}

fn identity(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    super::copy(lw, cx.input(0)?, cx.out(0))
}

pub type FloatFn = Box<dyn Fn(&mut Kb, Type, Value) -> Value>;

/// The float function of a unary op with attributes `a`.
pub fn float_fn(op: &str, a: &Attrs) -> Result<FloatFn> {
    let f = |x: f32| x as f64;
    Ok(match op {
        "Exp" => Box::new(math::exp),
        "Log" => Box::new(math::log),
        "Sqrt" => Box::new(|kb, _, x| kb.b.ins().sqrt(x)),
        "Reciprocal" => Box::new(|kb, ty, x| {
            let one = kb.constant(ty, 1.0);
            kb.b.ins().fdiv(one, x)
        }),
        "Tanh" => Box::new(math::tanh),
        "Sigmoid" => Box::new(math::sigmoid),
        "Erf" => Box::new(math::erf),
        "Sin" => Box::new(math::sin),
        "Cos" => Box::new(math::cos),
        "Tan" => Box::new(math::tan),
        "Asin" => Box::new(math::asin),
        "Acos" => Box::new(math::acos),
        "Atan" => Box::new(math::atan),
        "Sinh" => Box::new(math::sinh),
        "Cosh" => Box::new(math::cosh),
        "Asinh" => Box::new(math::asinh),
        "Acosh" => Box::new(math::acosh),
        "Atanh" => Box::new(math::atanh),
        "Floor" => Box::new(|kb, _, x| kb.b.ins().floor(x)),
        "Ceil" => Box::new(|kb, _, x| kb.b.ins().ceil(x)),
        "Round" => Box::new(|kb, _, x| kb.b.ins().nearest(x)),
        "Softplus" => Box::new(softplus),
        "Softsign" => Box::new(|kb, ty, x| {
            let one = kb.constant(ty, 1.0);
            let ax = kb.b.ins().fabs(x);
            let d = kb.b.ins().fadd(one, ax);
            kb.b.ins().fdiv(x, d)
        }),
        "Mish" => Box::new(|kb, ty, x| {
            let s = softplus(kb, ty, x);
            let t = math::tanh(kb, ty, s);
            kb.b.ins().fmul(x, t)
        }),
        "HardSwish" => Box::new(|kb, ty, x| {
            let h = hard_sigmoid(kb, ty, x, 1.0 / 6.0, 0.5);
            kb.b.ins().fmul(x, h)
        }),
        "HardSigmoid" => {
            let (al, be) = (f(a.float("alpha", 0.2)?), f(a.float("beta", 0.5)?));
            Box::new(move |kb, ty, x| hard_sigmoid(kb, ty, x, al, be))
        }
        "LeakyRelu" => {
            let al = f(a.float("alpha", 0.01)?);
            Box::new(move |kb, ty, x| {
                let z = kb.constant(ty, 0.0);
                let s = kb.constant(ty, al);
                let m = kb.b.ins().fmul(x, s);
                let neg = kb.b.ins().fcmp(FloatCC::LessThan, x, z);
                kb.sel(neg, m, x)
            })
        }
        "ThresholdedRelu" => {
            let al = f(a.float("alpha", 1.0)?);
            Box::new(move |kb, ty, x| {
                let t = kb.constant(ty, al);
                let z = kb.constant(ty, 0.0);
                let gt = kb.b.ins().fcmp(FloatCC::GreaterThan, x, t);
                kb.sel(gt, x, z)
            })
        }
        "Elu" | "Selu" | "Celu" => {
            let op = op.to_string();
            let al = f(a.float("alpha", if op == "Selu" { 1.673_263_2 } else { 1.0 })?);
            let ga = if op == "Selu" {
                f(a.float("gamma", 1.050_701)?)
            } else {
                1.0
            };
            Box::new(move |kb, ty, x| {
                let z = kb.constant(ty, 0.0);
                let one = kb.constant(ty, 1.0);
                let alpha = kb.constant(ty, al);
                let arg = if op == "Celu" {
                    kb.b.ins().fdiv(x, alpha)
                } else {
                    x
                };
                let e = math::exp(kb, ty, arg);
                let em1 = kb.b.ins().fsub(e, one);
                let neg = kb.b.ins().fmul(alpha, em1);
                if op == "Celu" {
                    let p = kb.b.ins().fmax(x, z);
                    let n = kb.b.ins().fmin(neg, z);
                    kb.b.ins().fadd(p, n)
                } else {
                    let isneg = kb.b.ins().fcmp(FloatCC::LessThan, x, z);
                    let isneg = if op == "Selu" {
                        kb.b.ins().fcmp(FloatCC::LessThanOrEqual, x, z)
                    } else {
                        isneg
                    };
                    let y = kb.sel(isneg, neg, x);
                    let g = kb.constant(ty, ga);
                    if op == "Selu" {
                        kb.b.ins().fmul(y, g)
                    } else {
                        y
                    }
                }
            })
        }
        "Gelu" => {
            let tanh = match a.string("approximate", "none")? {
                "none" => false,
                "tanh" => true,
                other => bail!(
                    Invalid,
                    "attribute 'approximate' must be none or tanh, found {other:?}"
                ),
            };
            Box::new(move |kb, ty, x| gelu(kb, ty, x, tanh))
        }
        op => bail!(Internal, "{op} is not a float unary op"),
    })
}

pub fn softplus(kb: &mut Kb, ty: Type, x: Value) -> Value {
    // max(x, 0) + log(1 + exp(-|x|)) never overflows.
    let z = kb.constant(ty, 0.0);
    let one = kb.constant(ty, 1.0);
    let ax = kb.b.ins().fabs(x);
    let nax = kb.b.ins().fneg(ax);
    let e = math::exp(kb, ty, nax);
    let l = kb.b.ins().fadd(one, e);
    let l = math::log(kb, ty, l);
    let m = kb.b.ins().fmax(x, z);
    kb.b.ins().fadd(m, l)
}

pub fn hard_sigmoid(kb: &mut Kb, ty: Type, x: Value, alpha: f64, beta: f64) -> Value {
    let a = kb.constant(ty, alpha);
    let b = kb.constant(ty, beta);
    let z = kb.constant(ty, 0.0);
    let one = kb.constant(ty, 1.0);
    let y = kb.fmadd(x, a, b);
    let y = kb.b.ins().fmax(y, z);
    kb.b.ins().fmin(y, one)
}

pub fn gelu(kb: &mut Kb, ty: Type, x: Value, tanh: bool) -> Value {
    let half = kb.constant(ty, 0.5);
    let one = kb.constant(ty, 1.0);
    let inner = if tanh {
        let c = kb.constant(ty, (2.0 / std::f64::consts::PI).sqrt());
        let k = kb.constant(ty, 0.044_715);
        let x3 = kb.b.ins().fmul(x, x);
        let x3 = kb.b.ins().fmul(x3, x);
        let u = kb.fmadd(k, x3, x);
        let u = kb.b.ins().fmul(c, u);
        math::tanh(kb, ty, u)
    } else {
        let r = kb.constant(ty, std::f64::consts::FRAC_1_SQRT_2);
        let u = kb.b.ins().fmul(x, r);
        math::erf(kb, ty, u)
    };
    let s = kb.b.ins().fadd(one, inner);
    let hx = kb.b.ins().fmul(half, x);
    kb.b.ins().fmul(hx, s)
}

fn float_unary(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let f = float_fn(&cx.node.op, cx.attrs())?;
    map(lw, cx, &[0], true, move |kb, v, _| {
        let ty = vty(kb, v[0]);
        f(kb, ty, v[0])
    })
}

fn signed_unary(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let op = cx.node.op.clone();
    let float = cx.input(0)?.ty.dtype.is_float();
    let signed = Elt(cx.input(0)?.ty.dtype).signed();
    map(lw, cx, &[0], true, move |kb, v, _| {
        let x = v[0];
        let ty = vty(kb, x);
        if float {
            let z = kb.constant(ty, 0.0);
            match op.as_str() {
                "Relu" => {
                    let neg = kb.b.ins().fcmp(FloatCC::LessThan, x, z);
                    kb.sel(neg, z, x)
                }
                "Neg" => kb.b.ins().fneg(x),
                "Abs" => kb.b.ins().fabs(x),
                _ => {
                    let one = kb.constant(ty, 1.0);
                    let m1 = kb.constant(ty, -1.0);
                    let gt = kb.b.ins().fcmp(FloatCC::GreaterThan, x, z);
                    let lt = kb.b.ins().fcmp(FloatCC::LessThan, x, z);
                    let y = kb.sel(lt, m1, x);
                    kb.sel(gt, one, y)
                }
            }
        } else {
            let z = kb.bits(ty, 0);
            match op.as_str() {
                "Relu" if signed => kb.b.ins().smax(x, z),
                "Relu" => x,
                "Neg" => kb.b.ins().ineg(x),
                "Abs" if signed => kb.b.ins().iabs(x),
                "Abs" => x,
                _ => {
                    let one = kb.bits(ty, 1);
                    let m1 = kb.bits(ty, -1);
                    let cc = if signed {
                        IntCC::SignedLessThan
                    } else {
                        IntCC::UnsignedLessThan
                    };
                    let gt = kb.b.ins().icmp(IntCC::NotEqual, x, z);
                    let lt = kb.b.ins().icmp(cc, x, z);
                    let y = kb.sel(gt, one, z);
                    kb.sel(lt, m1, y)
                }
            }
        }
    })
}

/// `a op b` in the compute type of `dt`.
pub fn arith2(kb: &mut Kb, op: &str, dt: DType, a: Value, b: Value) -> Value {
    if dt.is_float() {
        return match op {
            "Add" | "Sum" | "Mean" => kb.b.ins().fadd(a, b),
            "Sub" => kb.b.ins().fsub(a, b),
            "Mul" => kb.b.ins().fmul(a, b),
            "Div" => kb.b.ins().fdiv(a, b),
            "Max" => kb.b.ins().fmax(a, b),
            _ => kb.b.ins().fmin(a, b),
        };
    }
    let signed = Elt(dt).signed();
    match op {
        "Add" | "Sum" | "Mean" => kb.b.ins().iadd(a, b),
        "Sub" => kb.b.ins().isub(a, b),
        "Mul" => kb.b.ins().imul(a, b),
        "Max" if signed => kb.b.ins().smax(a, b),
        "Max" => kb.b.ins().umax(a, b),
        "Min" if signed => kb.b.ins().smin(a, b),
        "Min" => kb.b.ins().umin(a, b),
        _ => int_div(kb, a, b, signed),
    }
}

/// Integer division truncating toward zero; by zero gives 0 (like the
/// interpreter), and MIN / -1 wraps instead of trapping.
fn int_div(kb: &mut Kb, a: Value, b: Value, signed: bool) -> Value {
    let ty = vty(kb, a);
    let z = kb.bits(ty, 0);
    let one = kb.bits(ty, 1);
    let is0 = kb.b.ins().icmp(IntCC::Equal, b, z);
    let safe_b = kb.sel(is0, one, b);
    if !signed {
        let q = kb.b.ins().udiv(a, safe_b);
        return kb.sel(is0, z, q);
    }
    // Only the storage type's MIN / -1 overflows; narrow types compute in
    // i32 where that cannot happen, and their store wraps.
    let m1 = kb.bits(ty, -1);
    let is_m1 = kb.b.ins().icmp(IntCC::Equal, safe_b, m1);
    let safe_b = kb.sel(is_m1, one, safe_b);
    let q = kb.b.ins().sdiv(a, safe_b);
    let nq = kb.b.ins().ineg(a);
    let q = kb.sel(is_m1, nq, q);
    kb.sel(is0, z, q)
}

fn arith(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let op = cx.node.op.clone();
    let dt = cx.out(0).ty.dtype;
    let vector = dt.is_float() || op != "Div";
    map(lw, cx, &[0, 1], vector, move |kb, v, _| {
        arith2(kb, &op, dt, v[0], v[1])
    })
}

fn variadic(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let op = cx.node.op.clone();
    let dt = cx.out(0).ty.dtype;
    let which = present(cx);
    let n = which.len();
    if op == "Mean" && !dt.is_float() {
        bail!(Unsupported, "Mean of {dt} tensors");
    }
    map(lw, cx, &which, true, move |kb, v, _| {
        let mut acc = v[0];
        for &x in &v[1..] {
            acc = arith2(kb, &op, dt, acc, x);
        }
        if op == "Mean" && n > 1 {
            let ty = vty(kb, acc);
            let k = kb.constant(ty, n as f64);
            acc = kb.b.ins().fdiv(acc, k);
        }
        acc
    })
}

fn compare(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let op = cx.node.op.clone();
    let dt = cx.input(0)?.ty.dtype;
    map(lw, cx, &[0, 1], false, move |kb, v, _| {
        let (a, b) = (v[0], v[1]);
        let c = if dt.is_float() {
            let cc = match op.as_str() {
                "Equal" => FloatCC::Equal,
                "Less" => FloatCC::LessThan,
                "LessOrEqual" => FloatCC::LessThanOrEqual,
                "Greater" => FloatCC::GreaterThan,
                _ => FloatCC::GreaterThanOrEqual,
            };
            kb.b.ins().fcmp(cc, a, b)
        } else {
            let s = Elt(dt).signed();
            let cc = match (op.as_str(), s) {
                ("Equal", _) => IntCC::Equal,
                ("Less", true) => IntCC::SignedLessThan,
                ("Less", false) => IntCC::UnsignedLessThan,
                ("LessOrEqual", true) => IntCC::SignedLessThanOrEqual,
                ("LessOrEqual", false) => IntCC::UnsignedLessThanOrEqual,
                ("Greater", true) => IntCC::SignedGreaterThan,
                ("Greater", false) => IntCC::UnsignedGreaterThan,
                (_, true) => IntCC::SignedGreaterThanOrEqual,
                (_, false) => IntCC::UnsignedGreaterThanOrEqual,
            };
            kb.b.ins().icmp(cc, a, b)
        };
        bool32(kb, c)
    })
}

fn bitwise(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let op = cx.node.op.clone();
    map(lw, cx, &[0, 1], true, move |kb, v, _| match op.as_str() {
        "And" | "BitwiseAnd" => kb.b.ins().band(v[0], v[1]),
        "Or" | "BitwiseOr" => kb.b.ins().bor(v[0], v[1]),
        _ => kb.b.ins().bxor(v[0], v[1]),
    })
}

fn not(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let logical = cx.node.op == "Not";
    map(lw, cx, &[0], true, move |kb, v, _| {
        if logical {
            let ty = vty(kb, v[0]);
            let one = kb.bits(ty, 1);
            kb.b.ins().bxor(v[0], one)
        } else {
            kb.b.ins().bnot(v[0])
        }
    })
}

fn classify(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let isnan = cx.node.op == "IsNaN";
    let pos = cx.attrs().int("detect_positive", 1)? != 0;
    let neg = cx.attrs().int("detect_negative", 1)? != 0;
    map(lw, cx, &[0], false, move |kb, v, _| {
        let x = v[0];
        let ty = vty(kb, x);
        let c = if isnan {
            kb.b.ins().fcmp(FloatCC::Unordered, x, x)
        } else {
            let inf = kb.constant(ty, f64::INFINITY);
            let ninf = kb.constant(ty, f64::NEG_INFINITY);
            let p = kb.b.ins().fcmp(FloatCC::Equal, x, inf);
            let n = kb.b.ins().fcmp(FloatCC::Equal, x, ninf);
            match (pos, neg) {
                (true, true) => kb.b.ins().bor(p, n),
                (true, false) => p,
                (false, true) => n,
                (false, false) => kb.b.ins().iconst(I8, 0),
            }
        };
        bool32(kb, c)
    })
}

fn where_(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    map(lw, cx, &[0, 1, 2], false, |kb, v, _| {
        let c = kb.b.ins().icmp_imm_s(IntCC::NotEqual, v[0], 0);
        kb.b.ins().select(c, v[1], v[2])
    })
}

fn clip(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let dt = cx.out(0).ty.dtype;
    // Before opset 11 the bounds are attributes.
    let (amin, amax) = if cx.node.opset < 11 {
        (
            Some(cx.attrs().float("min", f32::MIN)? as f64),
            Some(cx.attrs().float("max", f32::MAX)? as f64),
        )
    } else {
        (None, None)
    };
    let which = present(cx);
    let has_min = which.contains(&1);
    let has_max = which.contains(&2);
    let signed = Elt(dt).signed();
    map(lw, cx, &which, true, move |kb, v, _| {
        let mut x = v[0];
        let ty = vty(kb, x);
        let mut k = 1;
        let lo = if has_min {
            k += 1;
            Some(v[k - 1])
        } else {
            amin.map(|m| kb.constant(ty, m))
        };
        let hi = if has_max {
            Some(v[k])
        } else {
            amax.map(|m| kb.constant(ty, m))
        };
        if let Some(lo) = lo {
            x = if dt.is_float() {
                let lt = kb.b.ins().fcmp(FloatCC::LessThan, x, lo);
                kb.sel(lt, lo, x)
            } else if signed {
                kb.b.ins().smax(x, lo)
            } else {
                kb.b.ins().umax(x, lo)
            };
        }
        if let Some(hi) = hi {
            x = if dt.is_float() {
                let gt = kb.b.ins().fcmp(FloatCC::GreaterThan, x, hi);
                kb.sel(gt, hi, x)
            } else if signed {
                kb.b.ins().smin(x, hi)
            } else {
                kb.b.ins().umin(x, hi)
            };
        }
        x
    })
}

/// `x < -lambd ? x + bias : x > lambd ? x - bias : 0`; integers go through
/// f64 and back with the interpreter's saturating conversion.
fn shrink(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let dt = cx.out(0).ty.dtype;
    let bias = cx.attrs().float("bias", 0.0)? as f64;
    let lambd = cx.attrs().float("lambd", 0.5)? as f64;
    let float = dt.is_float();
    map(lw, cx, &[0], float, move |kb, v, _| {
        let x = if float {
            v[0]
        } else {
            convert(kb, v[0], dt, DType::F64)
        };
        let ty = vty(kb, x);
        let (nl, l, b) = (
            kb.constant(ty, -lambd),
            kb.constant(ty, lambd),
            kb.constant(ty, bias),
        );
        let z = kb.constant(ty, 0.0);
        let up = kb.b.ins().fadd(x, b);
        let down = kb.b.ins().fsub(x, b);
        let lo = kb.b.ins().fcmp(FloatCC::LessThan, x, nl);
        let hi = kb.b.ins().fcmp(FloatCC::GreaterThan, x, l);
        let y = kb.sel(hi, down, z);
        let y = kb.sel(lo, up, y);
        if float {
            y
        } else {
            convert(kb, y, DType::F64, dt)
        }
    })
}

/// Converts a compute value of `from` to the compute type of `to`, with the
/// interpreter's semantics (float to int saturates, NaN gives 0).
pub fn convert(kb: &mut Kb, x: Value, from: DType, to: DType) -> Value {
    let (fe, te) = (Elt(from), Elt(to));
    let (ft, tt) = (fe.compute(1), te.compute(1));
    if to == DType::Bool {
        let c = if from.is_float() {
            let z = kb.constant(ft, 0.0);
            kb.b.ins().fcmp(FloatCC::NotEqual, x, z)
        } else {
            kb.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0)
        };
        return bool32(kb, c);
    }
    if from.is_float() && to.is_float() {
        return match (ft, tt) {
            (F32, F64) => kb.b.ins().fpromote(F64, x),
            (F64, F32) => kb.b.ins().fdemote(F32, x),
            _ => x,
        };
    }
    if from.is_float() {
        // Saturate to the target's range like Rust's `as`.
        let (lo, hi) = int_range(to);
        let l = kb.constant(ft, lo);
        let h = kb.constant(ft, hi);
        let c = kb.b.ins().fmax(x, l);
        let c = kb.b.ins().fmin(c, h);
        let nan = kb.b.ins().fcmp(FloatCC::Unordered, x, x);
        let z = kb.constant(ft, 0.0);
        let c = kb.b.ins().select(nan, z, c);
        return if to == DType::U64 {
            kb.b.ins().fcvt_to_uint_sat(tt, c)
        } else if tt == I32 && to == DType::U32 {
            let w = kb.b.ins().fcvt_to_sint_sat(I64, c);
            kb.b.ins().ireduce(I32, w)
        } else {
            kb.b.ins().fcvt_to_sint_sat(tt, c)
        };
    }
    if to.is_float() {
        return if fe.signed() {
            kb.b.ins().fcvt_from_sint(tt, x)
        } else {
            kb.b.ins().fcvt_from_uint(tt, x)
        };
    }
    match (ft, tt) {
        (I32, I64) if fe.signed() => kb.b.ins().sextend(I64, x),
        (I32, I64) => kb.b.ins().uextend(I64, x),
        (I64, I32) => kb.b.ins().ireduce(I32, x),
        // Narrow integers live sign/zero-extended in i32; re-extend from the
        // target's width so later compute sees the wrapped value.
        _ => narrow(kb, x, to),
    }
}

fn narrow(kb: &mut Kb, x: Value, to: DType) -> Value {
    let bits = 8 * to.size_bytes() as i64;
    if bits >= 32 {
        return x;
    }
    let sh = 32 - bits;
    let t = kb.b.ins().ishl_imm_u(x, sh);
    if Elt(to).signed() {
        kb.b.ins().sshr_imm_u(t, sh)
    } else {
        kb.b.ins().ushr_imm_u(t, sh)
    }
}

fn int_range(d: DType) -> (f64, f64) {
    match d {
        DType::I8 => (-128.0, 127.0),
        DType::U8 => (0.0, 255.0),
        DType::I16 => (-32768.0, 32767.0),
        DType::U16 => (0.0, 65535.0),
        DType::I32 => (-2_147_483_648.0, 2_147_483_647.0),
        DType::U32 => (0.0, 4_294_967_295.0),
        DType::I64 => (i64::MIN as f64, i64::MAX as f64),
        _ => (0.0, u64::MAX as f64),
    }
}

fn cast(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let from = cx.input(0)?.ty.dtype;
    let to = cx.out(0).ty.dtype;
    let same = Elt(from).compute(1) == Elt(to).compute(1)
        && from.is_float() == to.is_float()
        && to != DType::Bool;
    map(lw, cx, &[0], same, move |kb, v, l| {
        if l > 1 {
            v[0]
        } else {
            convert(kb, v[0], from, to)
        }
    })
}

fn prelu(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let dt = cx.out(0).ty.dtype;
    let signed = Elt(dt).signed();
    map(lw, cx, &[0, 1], true, move |kb, v, _| {
        let (x, s) = (v[0], v[1]);
        let ty = vty(kb, x);
        if dt.is_float() {
            let z = kb.constant(ty, 0.0);
            let m = kb.b.ins().fmul(x, s);
            let neg = kb.b.ins().fcmp(FloatCC::LessThan, x, z);
            kb.sel(neg, m, x)
        } else if signed {
            let z = kb.bits(ty, 0);
            let m = kb.b.ins().imul(x, s);
            let neg = kb.b.ins().icmp(IntCC::SignedLessThan, x, z);
            kb.sel(neg, m, x)
        } else {
            x
        }
    })
}

/// Pow in f64 for every type: exact for integer results below 2^53, and
/// sign-correct for negative bases with integral exponents.
fn pow(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let bt = cx.input(0)?.ty.dtype;
    let et = cx.input(1)?.ty.dtype;
    map(lw, cx, &[0, 1], false, move |kb, v, _| {
        let a = convert(kb, v[0], bt, DType::F64);
        let b = convert(kb, v[1], et, DType::F64);
        let y = fpow(kb, a, b);
        convert(kb, y, DType::F64, bt)
    })
}

pub fn fpow(kb: &mut Kb, a: Value, b: Value) -> Value {
    let ty = F64;
    let z = kb.constant(ty, 0.0);
    let one = kb.constant(ty, 1.0);
    let aa = kb.b.ins().fabs(a);
    let l = math::log(kb, ty, aa);
    let t = kb.b.ins().fmul(b, l);
    let r = math::exp(kb, ty, t);
    // Integral exponents: exact by repeated squaring for |b| <= 64 keeps
    // integer powers exact (Pow on ints and x^2, x^3 in models).
    let bi = kb.b.ins().nearest(b);
    let integral = kb.b.ins().fcmp(FloatCC::Equal, bi, b);
    let small = {
        let ab = kb.b.ins().fabs(b);
        let lim = kb.constant(ty, 64.0);
        kb.b.ins().fcmp(FloatCC::LessThanOrEqual, ab, lim)
    };
    let exact = {
        let n = kb.b.ins().fcvt_to_sint_sat(I64, bi);
        let n_abs = kb.b.ins().iabs(n);
        let mut acc = one;
        let mut p = aa;
        for bit in 0..7 {
            let m = kb.b.ins().ushr_imm_u(n_abs, bit);
            let m = kb.b.ins().band_imm_s(m, 1);
            let set = kb.b.ins().icmp_imm_s(IntCC::NotEqual, m, 0);
            let prod = kb.b.ins().fmul(acc, p);
            acc = kb.b.ins().select(set, prod, acc);
            p = kb.b.ins().fmul(p, p);
        }
        let negexp = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, n, 0);
        let inv = kb.b.ins().fdiv(one, acc);
        kb.b.ins().select(negexp, inv, acc)
    };
    let use_exact = kb.b.ins().band(integral, small);
    let mag = kb.b.ins().select(use_exact, exact, r);
    // Sign: negative base with an odd integral exponent.
    let half = kb.constant(ty, 0.5);
    let hb = kb.b.ins().fmul(b, half);
    let hbi = kb.b.ins().nearest(hb);
    let even = kb.b.ins().fcmp(FloatCC::Equal, hbi, hb);
    let neg_base = kb.b.ins().fcmp(FloatCC::LessThan, a, z);
    let nmag = kb.b.ins().fneg(mag);
    let odd = kb.b.ins().bnot(even);
    let flip = kb.b.ins().band(neg_base, odd);
    let flip = kb.b.ins().band(flip, integral);
    let y = kb.b.ins().select(flip, nmag, mag);
    // Negative base, non-integral exponent: NaN. a == 0 handled by log/exp
    // (log 0 = -inf; exp(-inf * b) = 0 for b > 0, inf for b < 0) except b = 0.
    let nan = kb.constant(ty, f64::NAN);
    let nonint = kb.b.ins().bnot(integral);
    let bad = kb.b.ins().band(neg_base, nonint);
    let y = kb.b.ins().select(bad, nan, y);
    let b0 = kb.b.ins().fcmp(FloatCC::Equal, b, z);
    kb.b.ins().select(b0, one, y)
}

fn modulo(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let dt = cx.out(0).ty.dtype;
    let fmod = cx.attrs().int("fmod", 0)? != 0;
    let signed = Elt(dt).signed();
    map(lw, cx, &[0, 1], false, move |kb, v, _| {
        let (a, b) = (v[0], v[1]);
        let ty = vty(kb, a);
        if dt.is_float() {
            // a - trunc(a / b) * b, then numpy's sign rule without fmod.
            let q = kb.b.ins().fdiv(a, b);
            let q = kb.b.ins().trunc(q);
            let p = kb.b.ins().fmul(q, b);
            let r = kb.b.ins().fsub(a, p);
            // A finite dividend modulo an infinite divisor is the dividend.
            let inf = kb.constant(ty, f64::INFINITY);
            let ab = kb.b.ins().fabs(b);
            let aa = kb.b.ins().fabs(a);
            let b_inf = kb.b.ins().fcmp(FloatCC::Equal, ab, inf);
            let a_fin = kb.b.ins().fcmp(FloatCC::LessThan, aa, inf);
            let keep = kb.b.ins().band(b_inf, a_fin);
            let r = kb.b.ins().select(keep, a, r);
            let z = kb.constant(ty, 0.0);
            if fmod {
                return r;
            }
            // A zero result takes the divisor's sign.
            let r0 = kb.b.ins().fcmp(FloatCC::Equal, r, z);
            let sz = kb.copysign(z, b);
            let r = kb.b.ins().select(r0, sz, r);
            let rneg = kb.b.ins().fcmp(FloatCC::LessThan, r, z);
            let bneg = kb.b.ins().fcmp(FloatCC::LessThan, b, z);
            let rnz = kb.b.ins().fcmp(FloatCC::NotEqual, r, z);
            let diff = kb.b.ins().bxor(rneg, bneg);
            let fix = kb.b.ins().band(diff, rnz);
            let rb = kb.b.ins().fadd(r, b);
            kb.b.ins().select(fix, rb, r)
        } else {
            let z = kb.bits(ty, 0);
            let one = kb.bits(ty, 1);
            let is0 = kb.b.ins().icmp(IntCC::Equal, b, z);
            let sb = kb.b.ins().select(is0, one, b);
            let r = if signed {
                let m1 = kb.bits(ty, -1);
                let ism1 = kb.b.ins().icmp(IntCC::Equal, sb, m1);
                let sb2 = kb.b.ins().select(ism1, one, sb);
                kb.b.ins().srem(a, sb2)
            } else {
                kb.b.ins().urem(a, sb)
            };
            let r = kb.b.ins().select(is0, z, r);
            if fmod || !signed {
                return r;
            }
            let rneg = kb.b.ins().icmp(IntCC::SignedLessThan, r, z);
            let bneg = kb.b.ins().icmp(IntCC::SignedLessThan, b, z);
            let rnz = kb.b.ins().icmp(IntCC::NotEqual, r, z);
            let diff = kb.b.ins().bxor(rneg, bneg);
            let fix = kb.b.ins().band(diff, rnz);
            let rb = kb.b.ins().iadd(r, b);
            kb.b.ins().select(fix, rb, r)
        }
    })
}

fn bitshift(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let left = match cx.attrs().string("direction", "")? {
        "LEFT" => true,
        "RIGHT" => false,
        d => bail!(
            Invalid,
            "attribute 'direction' must be LEFT or RIGHT, found {d:?}"
        ),
    };
    let dt = cx.out(0).ty.dtype;
    let signed = Elt(dt).signed();
    let bits = 8 * dt.size_bytes() as i64;
    map(lw, cx, &[0, 1], false, move |kb, v, _| {
        let (a, s) = (v[0], v[1]);
        let ty = vty(kb, a);
        // Shifts by a negative amount or by the width or more give 0, or -1
        // for right shifts of negative values (like the interpreter).
        let cc = if signed {
            IntCC::SignedLessThan
        } else {
            IntCC::UnsignedLessThan
        };
        let z = kb.bits(ty, 0);
        let neg_s = kb.b.ins().icmp(cc, s, z);
        let big = kb.b.ins().icmp_imm_s(
            if signed {
                IntCC::SignedGreaterThanOrEqual
            } else {
                IntCC::UnsignedGreaterThanOrEqual
            },
            s,
            bits,
        );
        let out_of_range = kb.b.ins().bor(neg_s, big);
        let r = if left {
            kb.b.ins().ishl(a, s)
        } else if signed {
            kb.b.ins().sshr(a, s)
        } else {
            kb.b.ins().ushr(a, s)
        };
        let r = narrow(kb, r, dt);
        let fill = if !left && signed {
            let m1 = kb.bits(ty, -1);
            let xneg = kb.b.ins().icmp(IntCC::SignedLessThan, a, z);
            kb.b.ins().select(xneg, m1, z)
        } else {
            z
        };
        kb.b.ins().select(out_of_range, fill, r)
    })
}
