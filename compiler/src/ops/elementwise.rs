//! Elementwise ops: unary math and activations, broadcasting binary
//! arithmetic, comparisons and logic, variadic Sum/Min/Max/Mean, Where, Clip
//! and Cast. Float math is evaluated in f64 and rounded once to the element
//! type, so f16/bf16/f32 results are as exact as the type allows.

use ndarray::ArrayD;

use super::{EvalCtx, InferCtx, OpTable, broadcast, one};
use crate::error::{Error, Result};
use crate::ir::{Attrs, DType, Elem, Tensor, ValueType};
use crate::{dispatch, dispatch_float, dispatch_num};

/// Integer and float arithmetic with ONNX's (numpy's) integer behaviour:
/// wrapping overflow; integer division truncates (by zero gives 0, which
/// ONNX leaves undefined).
pub trait Arith: Elem {
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    fn neg(self) -> Self;
}

macro_rules! arith_int {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            fn sub(self, o: Self) -> Self { self.wrapping_sub(o) }
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            fn div(self, o: Self) -> Self { self.checked_div(o).unwrap_or(0) }
            fn neg(self) -> Self { (0 as $t).wrapping_sub(self) }
        }
    )*};
}
arith_int!(i8, u8, i16, u16, i32, u32, i64, u64);

macro_rules! arith_float {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            fn add(self, o: Self) -> Self { self + o }
            fn sub(self, o: Self) -> Self { self - o }
            fn mul(self, o: Self) -> Self { self * o }
            fn div(self, o: Self) -> Self { self / o }
            fn neg(self) -> Self { -self }
        }
    )*};
}
arith_float!(f32, f64, half::f16, half::bf16);

/// Runs `$body` with `$a` bound to a numeric array, else errors naming the op.
macro_rules! num {
    ($t:expr, $a:ident => $body:expr) => {
        dispatch_num!($t, $a => $body, other => return bad_dtype(other.dtype()))
    };
}

fn bad_dtype<T>(d: DType) -> Result<T> {
    Err(Error::Invalid(format!(
        "dtype {d} is not supported by this op"
    )))
}

// ---------------------------------------------------------------- inference

fn check(ty: &ValueType, ok: fn(DType) -> bool, what: &str) -> Result<()> {
    ensure!(
        ok(ty.dtype),
        Invalid,
        "input must be {what}, found {}",
        ty.dtype
    );
    Ok(())
}

fn same_float(c: &InferCtx) -> Result<Vec<ValueType>> {
    let t = c.input(0)?;
    check(t, DType::is_float, "a float tensor")?;
    one(t.clone())
}

fn same_numeric(c: &InferCtx) -> Result<Vec<ValueType>> {
    let t = c.input(0)?;
    check(t, |d| d != DType::Bool, "numeric")?;
    one(t.clone())
}

fn same_signed(c: &InferCtx) -> Result<Vec<ValueType>> {
    let t = c.input(0)?;
    check(t, DType::is_signed, "a signed numeric tensor")?;
    one(t.clone())
}

fn same_bool(c: &InferCtx) -> Result<Vec<ValueType>> {
    let t = c.input(0)?;
    check(t, |d| d == DType::Bool, "bool")?;
    one(t.clone())
}

fn same_int(c: &InferCtx) -> Result<Vec<ValueType>> {
    let t = c.input(0)?;
    check(t, DType::is_int, "an integer tensor")?;
    one(t.clone())
}

fn float_to_bool(c: &InferCtx) -> Result<Vec<ValueType>> {
    let t = c.input(0)?;
    check(t, DType::is_float, "a float tensor")?;
    one(ValueType::new(DType::Bool, t.shape.clone()))
}

/// Broadcast of all present inputs, which must share one dtype accepted by
/// `ok`; the result has dtype `out` (or the inputs' dtype).
fn broadcast_infer(
    c: &InferCtx,
    ok: fn(DType) -> bool,
    what: &str,
    out: Option<DType>,
) -> Result<Vec<ValueType>> {
    let tys: Vec<&ValueType> = c.inputs.iter().flatten().copied().collect();
    ensure!(!tys.is_empty(), Invalid, "needs at least one input");
    let d = tys[0].dtype;
    for t in &tys {
        ensure!(
            t.dtype == d,
            Invalid,
            "inputs must share one dtype, found {} and {}",
            d,
            t.dtype
        );
    }
    check(tys[0], ok, what)?;
    let shapes: Vec<&[usize]> = tys.iter().map(|t| t.shape.as_slice()).collect();
    one(ValueType::new(out.unwrap_or(d), broadcast::shape(&shapes)?))
}

fn arith_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    broadcast_infer(c, |d| d != DType::Bool, "numeric", None)
}

fn compare_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    broadcast_infer(c, |d| d != DType::Bool, "numeric", Some(DType::Bool))
}

fn equal_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    broadcast_infer(c, |_| true, "any", Some(DType::Bool))
}

fn logic_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    broadcast_infer(c, |d| d == DType::Bool, "bool", None)
}

fn bitwise_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    broadcast_infer(c, DType::is_int, "an integer tensor", None)
}

fn float_broadcast_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    broadcast_infer(c, DType::is_float, "a float tensor", None)
}

// --------------------------------------------------------------- evaluation

fn map_f<T: Elem>(a: &ArrayD<T>, f: impl Fn(f64) -> f64) -> Tensor {
    T::wrap(a.mapv(|x| T::from_f64(f(x.to_f64()))))
}

/// Applies `f` (in f64) to the float input 0.
fn unary_f(c: &EvalCtx, f: impl Fn(f64) -> f64) -> Result<Vec<Tensor>> {
    let t = c.input(0)?;
    Ok(vec![
        dispatch_float!(t, a => map_f(a, &f), o => return bad_dtype(o.dtype())),
    ])
}

fn to_bool<T: Elem>(a: &ArrayD<T>, f: impl Fn(f64) -> bool) -> Tensor {
    Tensor::Bool(a.mapv(|x| f(x.to_f64())))
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn softplus(x: f64) -> f64 {
    if x > 30.0 { x } else { x.exp().ln_1p() }
}

fn gelu(x: f64, tanh_approx: bool) -> f64 {
    if tanh_approx {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
    } else {
        0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
    }
}

/// Registers a float unary op whose parameters come from attributes: `$p`
/// reads them once, `$f` maps one element.
macro_rules! float_op {
    ($t:ident, $name:literal, |$x:ident| $body:expr) => {
        $t.add($name, same_float, |c| unary_f(c, |$x| $body))
    };
    ($t:ident, $name:literal, $attrs:ident => $p:expr, |$x:ident, $q:pat_param| $body:expr) => {
        $t.add($name, same_float, |c| {
            let $attrs: &Attrs = c.attrs;
            let $q = $p;
            unary_f(c, |$x| $body)
        })
    };
}

fn register_unary(t: &mut OpTable) {
    float_op!(t, "Exp", |x| x.exp());
    float_op!(t, "Log", |x| x.ln());
    float_op!(t, "Sqrt", |x| x.sqrt());
    float_op!(t, "Reciprocal", |x| 1.0 / x);
    float_op!(t, "Tanh", |x| x.tanh());
    float_op!(t, "Sigmoid", |x| sigmoid(x));
    float_op!(t, "Erf", |x| libm::erf(x));
    float_op!(t, "Sin", |x| x.sin());
    float_op!(t, "Cos", |x| x.cos());
    float_op!(t, "Tan", |x| x.tan());
    float_op!(t, "Asin", |x| x.asin());
    float_op!(t, "Acos", |x| x.acos());
    float_op!(t, "Atan", |x| x.atan());
    float_op!(t, "Sinh", |x| x.sinh());
    float_op!(t, "Cosh", |x| x.cosh());
    float_op!(t, "Asinh", |x| x.asinh());
    float_op!(t, "Acosh", |x| x.acosh());
    float_op!(t, "Atanh", |x| x.atanh());
    float_op!(t, "Floor", |x| x.floor());
    float_op!(t, "Ceil", |x| x.ceil());
    float_op!(t, "Round", |x| x.round_ties_even());
    float_op!(t, "Softplus", |x| softplus(x));
    float_op!(t, "Softsign", |x| x / (1.0 + x.abs()));
    float_op!(t, "Mish", |x| x * softplus(x).tanh());
    float_op!(t, "HardSwish", |x| x * (x / 6.0 + 0.5).clamp(0.0, 1.0));
    float_op!(t, "LeakyRelu", a => a.float("alpha", 0.01)? as f64,
        |x, alpha| if x < 0.0 { alpha * x } else { x });
    float_op!(t, "Elu", a => a.float("alpha", 1.0)? as f64,
        |x, alpha| if x < 0.0 { alpha * x.exp_m1() } else { x });
    float_op!(t, "Celu", a => a.float("alpha", 1.0)? as f64,
        |x, alpha| x.max(0.0) + (alpha * (x / alpha).exp_m1()).min(0.0));
    float_op!(t, "ThresholdedRelu", a => a.float("alpha", 1.0)? as f64,
        |x, alpha| if x > alpha { x } else { 0.0 });
    float_op!(t, "Selu",
        a => (a.float("alpha", 1.673_263_2)? as f64, a.float("gamma", 1.050_701)? as f64),
        |x, (alpha, gamma)| if x > 0.0 { gamma * x } else { gamma * alpha * x.exp_m1() });
    float_op!(t, "HardSigmoid",
        a => (a.float("alpha", 0.2)? as f64, a.float("beta", 0.5)? as f64),
        |x, (alpha, beta)| (alpha * x + beta).clamp(0.0, 1.0));
    float_op!(t, "Gelu", a => match a.string("approximate", "none")? {
            "none" => false,
            "tanh" => true,
            other => bail!(Invalid, "attribute 'approximate' must be none or tanh, found {other:?}"),
        },
        |x, tanh| gelu(x, tanh));

    t.add("Relu", same_signed, |c| {
        fn relu<T: Elem>(a: &ArrayD<T>) -> Tensor {
            T::wrap(a.mapv(|x| if x < T::default() { T::default() } else { x }))
        }
        Ok(vec![num!(c.input(0)?, a => relu(a))])
    });
    t.add("Neg", same_signed, |c| {
        fn neg<T: Arith>(a: &ArrayD<T>) -> Tensor {
            T::wrap(a.mapv(Arith::neg))
        }
        Ok(vec![num!(c.input(0)?, a => neg(a))])
    });
    t.add("Abs", same_numeric, |c| {
        fn abs<T: Arith>(a: &ArrayD<T>) -> Tensor {
            T::wrap(a.mapv(|x| if x < T::default() { x.neg() } else { x }))
        }
        Ok(vec![num!(c.input(0)?, a => abs(a))])
    });
    t.add("Sign", same_numeric, |c| {
        fn sign<T: Elem>(a: &ArrayD<T>) -> Tensor {
            let z = T::default();
            T::wrap(a.mapv(|x| {
                if x > z {
                    T::from_f64(1.0)
                } else if x < z {
                    T::from_f64(-1.0)
                } else {
                    x
                }
            }))
        }
        Ok(vec![num!(c.input(0)?, a => sign(a))])
    });
    t.add("Shrink", same_numeric, |c| {
        let bias = c.attrs.float("bias", 0.0)? as f64;
        let lambd = c.attrs.float("lambd", 0.5)? as f64;
        let f = move |x: f64| {
            if x < -lambd {
                x + bias
            } else if x > lambd {
                x - bias
            } else {
                0.0
            }
        };
        Ok(vec![num!(c.input(0)?, a => map_f(a, f))])
    });
    t.add("IsNaN", float_to_bool, |c| {
        let t = c.input(0)?;
        Ok(vec![
            dispatch_float!(t, a => to_bool(a, f64::is_nan), o => return bad_dtype(o.dtype())),
        ])
    });
    t.add("IsInf", float_to_bool, |c| {
        let neg = c.attrs.int("detect_negative", 1)? != 0;
        let pos = c.attrs.int("detect_positive", 1)? != 0;
        let f = move |x: f64| (pos && x == f64::INFINITY) || (neg && x == f64::NEG_INFINITY);
        let t = c.input(0)?;
        Ok(vec![
            dispatch_float!(t, a => to_bool(a, f), o => return bad_dtype(o.dtype())),
        ])
    });
    t.add("Not", same_bool, |c| {
        Ok(vec![Tensor::Bool(
            c.input(0)?.typed::<bool>()?.mapv(|x| !x),
        )])
    });
    t.add("BitwiseNot", same_int, |c| {
        let t = c.input(0)?;
        Ok(vec![dispatch!(t, a => bitwise_not(a))])
    });
}

fn bitwise_not<T: Elem>(a: &ArrayD<T>) -> Tensor {
    T::wrap(a.mapv(|x| T::from_i128(!x.to_i128())))
}

// ------------------------------------------------------------------ binary

fn binary<T: Elem, R: Elem>(c: &EvalCtx, a: &ArrayD<T>, f: impl Fn(T, T) -> R) -> Result<Tensor> {
    let b = c.input(1)?.typed::<T>()?;
    Ok(R::wrap(broadcast::zip2(a, b, &c.outputs[0].shape, f)?))
}

macro_rules! arith_op {
    ($t:ident, $name:literal, $m:ident) => {
        $t.add($name, arith_infer, |c| {
            fn go<T: Arith>(c: &EvalCtx, a: &ArrayD<T>) -> Result<Tensor> {
                binary(c, a, T::$m)
            }
            Ok(vec![num!(c.input(0)?, a => go(c, a)?)])
        })
    };
}

macro_rules! compare_op {
    ($t:ident, $name:literal, $infer:ident, |$x:ident, $y:ident| $e:expr) => {
        $t.add($name, $infer, |c| {
            fn go<T: Elem>(c: &EvalCtx, a: &ArrayD<T>) -> Result<Tensor> {
                binary(c, a, |$x: T, $y: T| $e)
            }
            Ok(vec![dispatch!(c.input(0)?, a => go(c, a)?)])
        })
    };
}

macro_rules! logic_op {
    ($t:ident, $name:literal, $op:tt) => {
        $t.add($name, logic_infer, |c| {
            let a = c.input(0)?.typed::<bool>()?;
            Ok(vec![binary(c, a, |x: bool, y: bool| x $op y)?])
        })
    };
}

macro_rules! bitwise_op {
    ($t:ident, $name:literal, $op:tt) => {
        $t.add($name, bitwise_infer, |c| {
            fn go<T: Elem>(c: &EvalCtx, a: &ArrayD<T>) -> Result<Tensor> {
                binary(c, a, |x: T, y: T| T::from_i128(x.to_i128() $op y.to_i128()))
            }
            Ok(vec![dispatch!(c.input(0)?, a => go(c, a)?)])
        })
    };
}

fn pow_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (a, b) = (c.input(0)?, c.input(1)?);
    check(a, |d| d != DType::Bool, "numeric")?;
    check(b, |d| d != DType::Bool, "numeric")?;
    one(ValueType::new(
        a.dtype,
        broadcast::shape(&[&a.shape, &b.shape])?,
    ))
}

fn pow_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(c: &EvalCtx, a: &ArrayD<T>) -> Result<Tensor> {
        let out = &c.outputs[0].shape;
        let b = c.input(1)?;
        let r = dispatch!(b, b => broadcast::zip2(a, b, out, |x: T, y| {
            if T::DTYPE.is_float() {
                T::from_f64(x.to_f64().powf(y.to_f64()))
            } else {
                let (x, y) = (x.to_i128(), y.to_f64());
                T::from_f64((x as f64).powf(y).trunc())
            }
        })?);
        Ok(T::wrap(r))
    }
    Ok(vec![num!(c.input(0)?, a => go(c, a)?)])
}

fn mod_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let fmod = c.attrs.int("fmod", 0)? != 0;
    fn go<T: Elem>(c: &EvalCtx, a: &ArrayD<T>, fmod: bool) -> Result<Tensor> {
        if T::DTYPE.is_float() {
            return binary(c, a, move |x: T, y: T| {
                let (x, y) = (x.to_f64(), y.to_f64());
                let r = x % y;
                // Without fmod the result takes the divisor's sign (numpy.mod).
                let floor_mod = !fmod && r != 0.0 && ((r < 0.0) != (y < 0.0));
                T::from_f64(if floor_mod {
                    r + y
                } else if !fmod && r == 0.0 {
                    0.0f64.copysign(y)
                } else {
                    r
                })
            });
        }
        binary(c, a, move |x: T, y: T| {
            let (x, y) = (x.to_i128(), y.to_i128());
            if y == 0 {
                return T::from_i128(0);
            }
            let r = x % y;
            // Without fmod the result takes the divisor's sign, like Python.
            T::from_i128(if !fmod && r != 0 && ((r < 0) != (y < 0)) {
                r + y
            } else {
                r
            })
        })
    }
    Ok(vec![num!(c.input(0)?, a => go(c, a, fmod)?)])
}

fn bitshift_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let left = match c.attrs.string_opt("direction")? {
        Some("LEFT") => true,
        Some("RIGHT") => false,
        other => bail!(
            Invalid,
            "attribute 'direction' must be LEFT or RIGHT, found {other:?}"
        ),
    };
    // Shifts by a negative amount or by the bit width or more give 0 (or
    // -1 for right shifts of negative values), as the reference does.
    fn go<T: Elem>(c: &EvalCtx, a: &ArrayD<T>, left: bool) -> Result<Tensor> {
        let bits = 8 * T::DTYPE.size_bytes() as i128;
        binary(c, a, move |x: T, y: T| {
            let (x, s) = (x.to_i128(), y.to_i128());
            if s < 0 || s >= bits {
                return T::from_i128(if !left && x < 0 { -1 } else { 0 });
            }
            T::from_i128(if left { x << s } else { x >> s })
        })
    }
    Ok(vec![dispatch!(c.input(0)?, a => go(c, a, left)?)])
}

fn prelu_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, s) = (c.input(0)?, c.input(1)?);
    check(x, |d| d != DType::Bool, "numeric")?;
    ensure!(
        x.dtype == s.dtype,
        Invalid,
        "slope dtype {} differs from input {}",
        s.dtype,
        x.dtype
    );
    let out = broadcast::shape(&[&x.shape, &s.shape])?;
    ensure!(
        out == x.shape,
        Invalid,
        "slope {:?} does not broadcast to input {:?}",
        s.shape,
        x.shape
    );
    one(x.clone())
}

fn prelu_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Arith>(c: &EvalCtx, a: &ArrayD<T>) -> Result<Tensor> {
        binary(
            c,
            a,
            |x: T, s: T| if x < T::default() { x.mul(s) } else { x },
        )
    }
    Ok(vec![num!(c.input(0)?, a => go(c, a)?)])
}

fn register_binary(t: &mut OpTable) {
    arith_op!(t, "Add", add);
    arith_op!(t, "Sub", sub);
    arith_op!(t, "Mul", mul);
    arith_op!(t, "Div", div);
    t.add("Pow", pow_infer, pow_eval);
    t.add("Mod", arith_infer, mod_eval);
    t.add("BitShift", bitwise_infer, bitshift_eval);
    t.add("PRelu", prelu_infer, prelu_eval);
    compare_op!(t, "Equal", equal_infer, |x, y| x == y);
    compare_op!(t, "Less", compare_infer, |x, y| x < y);
    compare_op!(t, "LessOrEqual", compare_infer, |x, y| x <= y);
    compare_op!(t, "Greater", compare_infer, |x, y| x > y);
    compare_op!(t, "GreaterOrEqual", compare_infer, |x, y| x >= y);
    logic_op!(t, "And", &);
    logic_op!(t, "Or", |);
    logic_op!(t, "Xor", ^);
    bitwise_op!(t, "BitwiseAnd", &);
    bitwise_op!(t, "BitwiseOr", |);
    bitwise_op!(t, "BitwiseXor", ^);
}

// ---------------------------------------------------------------- variadic

/// Folds all inputs with `f` after broadcasting each to the output shape.
fn fold_all<T: Elem>(c: &EvalCtx, f: impl Fn(T, T) -> T) -> Result<ArrayD<T>> {
    let out = &c.outputs[0].shape;
    let mut acc: Option<ArrayD<T>> = None;
    for t in c.inputs.iter().flatten() {
        let a = t.typed::<T>()?;
        acc = Some(match acc {
            None => broadcast::view(a, out)?.to_owned(),
            Some(x) => broadcast::zip2(&x, a, out, &f)?,
        });
    }
    acc.ok_or_else(|| Error::Invalid("needs at least one input".into()))
}

fn sum_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Arith>(c: &EvalCtx, _: &ArrayD<T>) -> Result<Tensor> {
        Ok(T::wrap(fold_all(c, T::add)?))
    }
    Ok(vec![num!(c.input(0)?, a => go(c, a)?)])
}

fn mean_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Arith>(c: &EvalCtx, _: &ArrayD<T>) -> Result<Tensor> {
        let n = c.inputs.iter().flatten().count() as f64;
        Ok(T::wrap(
            fold_all(c, T::add)?.mapv(|x| T::from_f64(x.to_f64() / n)),
        ))
    }
    Ok(vec![num!(c.input(0)?, a => go(c, a)?)])
}

fn min_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(c: &EvalCtx, _: &ArrayD<T>) -> Result<Tensor> {
        // NaN propagates, as in numpy's minimum.
        Ok(T::wrap(fold_all(c, |x: T, y: T| {
            if x.partial_cmp(&x).is_none() || x < y {
                x
            } else {
                y
            }
        })?))
    }
    Ok(vec![num!(c.input(0)?, a => go(c, a)?)])
}

fn max_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(c: &EvalCtx, _: &ArrayD<T>) -> Result<Tensor> {
        Ok(T::wrap(fold_all(c, |x: T, y: T| {
            if x.partial_cmp(&x).is_none() || x > y {
                x
            } else {
                y
            }
        })?))
    }
    Ok(vec![num!(c.input(0)?, a => go(c, a)?)])
}

// ------------------------------------------------------- Where, Clip, Cast

fn where_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (cond, x, y) = (c.input(0)?, c.input(1)?, c.input(2)?);
    check(cond, |d| d == DType::Bool, "bool (condition)")?;
    ensure!(
        x.dtype == y.dtype,
        Invalid,
        "X and Y dtypes differ: {} vs {}",
        x.dtype,
        y.dtype
    );
    one(ValueType::new(
        x.dtype,
        broadcast::shape(&[&cond.shape, &x.shape, &y.shape])?,
    ))
}

fn where_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(c: &EvalCtx, x: &ArrayD<T>) -> Result<Tensor> {
        let cond = c.input(0)?.typed::<bool>()?;
        let y = c.input(2)?.typed::<T>()?;
        let out = &c.outputs[0].shape;
        Ok(T::wrap(broadcast::zip3(cond, x, y, out, |k, a, b| {
            if k { a } else { b }
        })?))
    }
    Ok(vec![dispatch!(c.input(1)?, x => go(c, x)?)])
}

fn clip_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    // Opset < 11 carries the bounds as attributes, later opsets as inputs.
    let bound = |i: usize, attr: &str, def: f64| -> Result<f64> {
        if c.opset < 11 {
            return Ok(c.attrs.float_opt(attr)?.map_or(def, |v| v as f64));
        }
        c.opt(i).map_or(Ok(def), |t| t.scalar_f64())
    };
    let lo = bound(1, "min", f64::NEG_INFINITY)?;
    let hi = bound(2, "max", f64::INFINITY)?;
    fn go<T: Elem>(a: &ArrayD<T>, lo: f64, hi: f64) -> Tensor {
        let (l, h) = (T::from_f64(lo), T::from_f64(hi));
        let (has_l, has_h) = (lo.is_finite(), hi.is_finite());
        T::wrap(a.mapv(|x| {
            let x = if has_l && x < l { l } else { x };
            if has_h && x > h { h } else { x }
        }))
    }
    Ok(vec![num!(c.input(0)?, a => go(a, lo, hi))])
}

fn cast_target(c: &Attrs) -> Result<DType> {
    let code = c.req_int("to")? as i32;
    DType::from_onnx(code).ok_or_else(|| {
        Error::Unsupported(format!(
            "Cast to {} is not supported",
            DType::onnx_name(code)
        ))
    })
}

fn cast_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    one(ValueType::new(cast_target(c.attrs)?, x.shape.clone()))
}

fn cast_like_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, like) = (c.input(0)?, c.input(1)?);
    one(ValueType::new(like.dtype, x.shape.clone()))
}

fn cast_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    Ok(vec![c.input(0)?.cast(c.outputs[0].dtype)])
}

pub fn register(t: &mut OpTable) {
    register_unary(t);
    register_binary(t);
    t.add("Sum", arith_infer, sum_eval);
    t.add("Mean", float_broadcast_infer, mean_eval);
    t.add("Min", arith_infer, min_eval);
    t.add("Max", arith_infer, max_eval);
    t.add("Where", where_infer, where_eval);
    t.add("Clip", same_numeric, clip_eval);
    t.add("Cast", cast_infer, cast_eval);
    t.add("CastLike", cast_like_infer, cast_eval);
}
