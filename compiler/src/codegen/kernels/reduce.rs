//! Reductions (the Reduce* family), ArgMax/ArgMin and CumSum/CumProd, with
//! the interpreter's semantics (compiler/src/ops/reduce.rs).
//!
//! A reduction is planned on the input's shape: size-1 dimensions vanish,
//! adjacent kept (or reduced) dimensions that are contiguous merge. When the
//! innermost input dimension is reduced, each work item is one output
//! element and the innermost reduced loop runs f32x4 accumulators with a
//! horizontal combine at the end. Otherwise the innermost input dimension is
//! kept: each work item is one row of outputs, vectorized across that
//! contiguous kept dimension, with the reduced dimensions as outer loops.
//! Floats fold in their compute type (f16/bf16 in f32); integer sums and
//! products wrap; integer L2/LogSum/LogSumExp fold in f64, like the
//! interpreter.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F64, I64};
use cranelift_codegen::ir::{InstBuilder, Type, Value};

use super::elementwise::convert;
use super::{NodeCx, Table, math};
use crate::codegen::builder::{Elt, Kb, mem};
use crate::codegen::lower::{Buf, Lower};
use crate::error::Result;
use crate::ir::{DType, Tensor};

pub fn register(t: &mut Table) {
    t.add(
        &[
            "ReduceSum",
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceSumSquare",
        ],
        reduce,
    );
    t.add(&["ArgMax", "ArgMin"], arg);
    t.add(&["CumSum", "CumProd"], cumulative);
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

impl Kind {
    fn of(op: &str) -> Kind {
        match op {
            "ReduceSum" => Kind::Sum,
            "ReduceMean" => Kind::Mean,
            "ReduceMax" => Kind::Max,
            "ReduceMin" => Kind::Min,
            "ReduceProd" => Kind::Prod,
            "ReduceL1" => Kind::L1,
            "ReduceL2" => Kind::L2,
            "ReduceLogSum" => Kind::LogSum,
            "ReduceLogSumExp" => Kind::LogSumExp,
            _ => Kind::SumSquare,
        }
    }

    fn axes_input_since(self) -> i64 {
        if self == Kind::Sum { 13 } else { 18 }
    }
}

/// Normalizes a possibly negative axis.
pub fn norm_axis(a: i64, rank: usize) -> Result<usize> {
    crate::ops::axis(a, rank)
}

/// Which axes are folded (the interpreter's `reduced_mask`).
fn reduced_mask(cx: &NodeCx, kind: Kind, rank: usize) -> Result<Vec<bool>> {
    let attrs = cx.attrs();
    let from_input = cx.node.opset >= kind.axes_input_since();
    let axes = if from_input {
        match (cx.ins.get(1).and_then(|o| o.as_ref()), cx.consts.get(1)) {
            (None, _) => None,
            (Some(_), Some(Some(t))) => Some(t.to_i64_vec()?),
            (Some(_), _) => bail!(
                Unsupported,
                "axes of {} must be a constant for native code",
                cx.node.op
            ),
        }
    } else {
        attrs.ints_opt("axes")?.map(<[i64]>::to_vec)
    };
    let noop = from_input && attrs.int("noop_with_empty_axes", 0)? != 0;
    let axes = match axes {
        Some(v) if !v.is_empty() => v,
        _ => return Ok(vec![!noop; rank]),
    };
    let mut mask = vec![false; rank];
    for a in axes {
        let i = norm_axis(a, rank)?;
        ensure!(!mask[i], Invalid, "axes: axis {a} is repeated");
        mask[i] = true;
    }
    Ok(mask)
}

/// A reduction's loop structure in elements: kept dimensions (size, input
/// stride, output stride) and reduced ones (size, input stride).
pub struct Plan {
    pub kept: Vec<(usize, i64, i64)>,
    pub red: Vec<(usize, i64)>,
}

pub fn plan(shape: &[usize], mask: &[bool]) -> Plan {
    let rank = shape.len();
    let mut in_st = vec![1i64; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        in_st[d] = in_st[d + 1] * shape[d + 1] as i64;
    }
    let kept_dims: Vec<usize> = (0..rank).filter(|&d| !mask[d]).collect();
    let mut out_st = vec![0i64; rank];
    let mut s = 1i64;
    for &d in kept_dims.iter().rev() {
        out_st[d] = s;
        s *= shape[d] as i64;
    }
    let mut p = Plan {
        kept: Vec::new(),
        red: Vec::new(),
    };
    let mut last_red: Option<bool> = None;
    for d in 0..rank {
        let n = shape[d];
        if n == 1 {
            continue;
        }
        if mask[d] {
            if last_red == Some(true)
                && let Some(l) = p.red.last_mut()
                && l.1 == in_st[d] * n as i64
            {
                *l = (l.0 * n, in_st[d]);
            } else {
                p.red.push((n, in_st[d]));
            }
        } else if last_red == Some(false)
            && let Some(l) = p.kept.last_mut()
            && l.1 == in_st[d] * n as i64
            && l.2 == out_st[d] * n as i64
        {
            *l = (l.0 * n, in_st[d], out_st[d]);
        } else {
            p.kept.push((n, in_st[d], out_st[d]));
        }
        last_red = Some(mask[d]);
    }
    p
}

/// Base element offsets of `item` in each of the strided operands, given
/// dimensions `(size, strides per operand)` in row-major order.
pub fn offsets(kb: &mut Kb, item: Value, dims: &[(usize, Vec<i64>)], n: usize) -> Vec<Value> {
    let mut bases: Vec<Value> = (0..n).map(|_| kb.i(0)).collect();
    let mut rem = item;
    for (d, (size, st)) in dims.iter().enumerate().rev() {
        let idx = if d == 0 {
            rem
        } else {
            let q = kb.b.ins().udiv_imm_u(rem, *size as i64);
            let r = kb.b.ins().urem_imm_u(rem, *size as i64);
            rem = q;
            r
        };
        for (k, b) in bases.iter_mut().enumerate() {
            if st[k] != 0 {
                let o = kb.muli(idx, st[k]);
                *b = kb.add(*b, o);
            }
        }
    }
    bases
}

/// Loops over the reduced dimensions `dims` (size, element stride) from
/// element offset `off`; the body gets each element's offset and a lane
/// count: 0 where the caller's own width applies, or 4/1 along a contiguous
/// innermost dimension vectorized by `vl`.
pub fn nest(
    kb: &mut Kb,
    dims: &[(usize, i64)],
    off: Value,
    vl: u32,
    body: &mut dyn FnMut(&mut Kb, Value, u32),
) {
    match dims {
        [] => body(kb, off, 0),
        [(n, st)] if vl > 1 && *st == 1 => {
            let (lo, hi) = (kb.i(0), kb.i(*n as i64));
            kb.for_vec(lo, hi, vl as i64, |kb, i, ll| {
                let o = kb.add(off, i);
                body(kb, o, ll)
            });
        }
        [(n, st), rest @ ..] => {
            let (lo, hi) = (kb.i(0), kb.i(*n as i64));
            kb.for_range(lo, hi, 1, |kb, i| {
                let o = kb.gep(off, i, *st);
                nest(kb, rest, o, vl, body)
            });
        }
    }
}

/// How one pass folds: its identity, its step `acc, x -> acc`, and how two
/// partial accumulators combine.
pub struct Pass<'a> {
    pub init: f64,
    pub init_bits: Option<i64>,
    pub step: &'a dyn Fn(&mut Kb, Value, Value) -> Value,
    pub combine: &'a dyn Fn(&mut Kb, Value, Value) -> Value,
}

/// Folds the reduced dimensions starting at byte address `addr`. `l` is the
/// width of the result (mode "kept inner": lanes across outputs); `vl` is
/// the lane count used along a contiguous innermost reduced dimension.
#[allow(clippy::too_many_arguments)]
pub fn fold(
    kb: &mut Kb,
    red: &[(usize, i64)],
    addr: Value,
    sz: i64,
    ty1: Type,
    l: u32,
    vl: u32,
    load: &dyn Fn(&mut Kb, Value, u32) -> Value,
    pass: &Pass,
) -> Value {
    let ty = if l > 1 {
        ty1.by(l).expect("vector")
    } else {
        ty1
    };
    let init = |kb: &mut Kb, ty: Type| match pass.init_bits {
        // Narrow immediates are zero-extended.
        Some(b) if ty.lane_bits() == 32 => kb.bits(ty, b & 0xffff_ffff),
        Some(b) => kb.bits(ty, b),
        None => kb.constant(ty, pass.init),
    };
    let i0 = init(kb, ty);
    let acc = kb.var(ty, i0);
    let vty = ty1.by(4).expect("vector");
    let vacc = if vl > 1 {
        let v0 = init(kb, vty);
        Some(kb.var(vty, v0))
    } else {
        None
    };
    let mut body = |kb: &mut Kb, off: Value, ll: u32| {
        let a = kb.gep(addr, off, sz);
        // `ll == 0`: the accumulator's own width; 4: the vector partial.
        let (var, w) = match (ll, vacc) {
            (4, Some(v)) => (v, 4),
            _ => (acc, if ll == 0 { l } else { 1 }),
        };
        let x = load(kb, a, w);
        let cur = kb.b.use_var(var);
        let n = (pass.step)(kb, cur, x);
        kb.b.def_var(var, n);
    };
    let z = kb.i(0);
    nest(kb, red, z, vl, &mut body);
    let mut r = kb.b.use_var(acc);
    if let Some(v) = vacc {
        let v = kb.b.use_var(v);
        for lane in 0..4 {
            let e = kb.b.ins().extractlane(v, lane);
            r = (pass.combine)(kb, r, e);
        }
    }
    r
}

fn fmax_finite(kb: &mut Kb, acc: Value, x: Value) -> Value {
    let ty = kb.b.func.dfg.value_type(x);
    let d = kb.b.ins().fsub(x, x);
    let z = kb.constant(ty, 0.0);
    let finite = kb.b.ins().fcmp(FloatCC::Equal, d, z);
    let ninf = kb.constant(ty, f64::NEG_INFINITY);
    let v = kb.sel(finite, x, ninf);
    kb.b.ins().fmax(acc, v)
}

fn extreme_bits(dt: DType, max: bool) -> i64 {
    let bits = 8 * dt.size_bytes() as u32;
    match (dt, max) {
        (DType::Bool, true) => 0,
        (DType::Bool, false) => 1,
        (d, true) if d.is_signed() => (-(1i128 << (bits - 1))) as i64,
        (_, true) => 0,
        (d, false) if d.is_signed() => ((1i128 << (bits - 1)) - 1) as i64,
        (_, false) => ((1i128 << bits) - 1) as i64,
    }
}

fn reduce(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let kind = Kind::of(&cx.node.op);
    let x = cx.input(0)?.clone();
    let o = cx.out(0).clone();
    let dt = x.ty.dtype;
    let mask = reduced_mask(cx, kind, x.ty.shape.len())?;
    if o.ty.numel() == 0 {
        return Ok(());
    }
    let p = plan(&x.ty.shape, &mask);
    let count: usize =
        x.ty.shape
            .iter()
            .zip(&mask)
            .filter(|(_, m)| **m)
            .map(|(d, _)| d)
            .product();
    let float = dt.is_float();
    // Integer kinds with a float result fold in f64.
    let f64dom = !float && matches!(kind, Kind::L2 | Kind::LogSum | Kind::LogSumExp);
    let ty1 = if f64dom { F64 } else { Elt(dt).compute(1) };
    let fl = float || f64dom;
    let signed = Elt(dt).signed();
    let vec_ok = dt == DType::F32;
    let inner_red = p.red.last().is_some_and(|r| r.1 == 1);
    type Dim = (usize, i64, i64);
    let (outer, inner): (Vec<Dim>, Dim) = if inner_red {
        (p.kept.clone(), (1, 0, 0))
    } else {
        let mut k = p.kept.clone();
        let inner = k.pop().unwrap_or((1, 0, 0));
        (k, inner)
    };
    let (vl, l) = match (vec_ok, inner_red) {
        (true, true) => (4u32, 1u32),
        (true, false) => (1, 4),
        _ => (1, 1),
    };
    let dims: Vec<(usize, Vec<i64>)> = outer.iter().map(|&(n, a, b)| (n, vec![a, b])).collect();
    let items: usize = outer.iter().map(|d| d.0).product();
    let red = p.red.clone();
    let isz = dt.size_bytes() as i64;
    let load = move |kb: &mut Kb, a: Value, w: u32| {
        let v = kb.load_elt(dt, a, w);
        if f64dom {
            convert(kb, v, dt, DType::F64)
        } else {
            v
        }
    };
    lw.kernel(vec![x.buf, o.buf], items, |kb| {
        let (xp, yp) = (kb.arg(0), kb.arg(1));
        let (begin, end) = (kb.begin, kb.end);
        kb.for_range(begin, end, 1, |kb, item| {
            let b = offsets(kb, item, &dims, 2);
            let xrow = kb.gep(xp, b[0], isz);
            let yrow = kb.gep(yp, b[1], isz);
            let (lo, hi) = (kb.i(0), kb.i(inner.0 as i64));
            kb.for_vec(lo, hi, l as i64, |kb, j, w| {
                let xa = kb.gep(xrow, j, inner.1 * isz);
                let ya = kb.gep(yrow, j, inner.2 * isz);
                let r = reduce_one(
                    kb, kind, &red, xa, isz, ty1, w, vl, &load, fl, signed, dt, count,
                );
                let r = if f64dom {
                    convert(kb, r, DType::F64, dt)
                } else {
                    r
                };
                kb.store_elt(dt, r, ya, w);
            });
        });
    })
}

/// Folds one group (or `w` adjacent groups) and applies the kind's final
/// step.
#[allow(clippy::too_many_arguments)]
fn reduce_one(
    kb: &mut Kb,
    kind: Kind,
    red: &[(usize, i64)],
    addr: Value,
    sz: i64,
    ty1: Type,
    w: u32,
    vl: u32,
    load: &dyn Fn(&mut Kb, Value, u32) -> Value,
    fl: bool,
    signed: bool,
    dt: DType,
    count: usize,
) -> Value {
    let add = |kb: &mut Kb, a: Value, b: Value| {
        if fl {
            kb.b.ins().fadd(a, b)
        } else {
            kb.b.ins().iadd(a, b)
        }
    };
    let mul = |kb: &mut Kb, a: Value, b: Value| {
        if fl {
            kb.b.ins().fmul(a, b)
        } else {
            kb.b.ins().imul(a, b)
        }
    };
    let max = |kb: &mut Kb, a: Value, b: Value| match (fl, signed) {
        (true, _) => kb.b.ins().fmax(a, b),
        (false, true) => kb.b.ins().smax(a, b),
        (false, false) => kb.b.ins().umax(a, b),
    };
    let min = |kb: &mut Kb, a: Value, b: Value| match (fl, signed) {
        (true, _) => kb.b.ins().fmin(a, b),
        (false, true) => kb.b.ins().smin(a, b),
        (false, false) => kb.b.ins().umin(a, b),
    };
    let abs_add = |kb: &mut Kb, a: Value, x: Value| {
        let ax = match (fl, signed) {
            (true, _) => kb.b.ins().fabs(x),
            (false, true) => kb.b.ins().iabs(x),
            (false, false) => x,
        };
        add(kb, a, ax)
    };
    let sq_add = |kb: &mut Kb, a: Value, x: Value| {
        if fl {
            kb.fmadd(x, x, a)
        } else {
            let s = kb.b.ins().imul(x, x);
            kb.b.ins().iadd(a, s)
        }
    };
    let sum_pass = Pass {
        init: 0.0,
        init_bits: None,
        step: &add,
        combine: &add,
    };
    let go = |kb: &mut Kb, pass: &Pass| fold(kb, red, addr, sz, ty1, w, vl, load, pass);
    let ty = if w > 1 {
        ty1.by(w).expect("vector")
    } else {
        ty1
    };
    match kind {
        Kind::Sum => go(kb, &sum_pass),
        Kind::Mean => {
            let s = go(kb, &sum_pass);
            if fl {
                let c = kb.constant(ty, count as f64);
                kb.b.ins().fdiv(s, c)
            } else if count == 0 {
                kb.bits(ty, 0)
            } else {
                // Wrap the sum to the element type, then divide truncating.
                let s = wrap(kb, s, dt);
                let c = kb.bits(ty, count as i64);
                if signed {
                    kb.b.ins().sdiv(s, c)
                } else {
                    kb.b.ins().udiv(s, c)
                }
            }
        }
        Kind::Max | Kind::Min => {
            let is_max = kind == Kind::Max;
            let f: &dyn Fn(&mut Kb, Value, Value) -> Value = if is_max { &max } else { &min };
            let p = Pass {
                init: if is_max {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                },
                init_bits: (!fl).then(|| extreme_bits(dt, is_max)),
                step: f,
                combine: f,
            };
            go(kb, &p)
        }
        Kind::Prod => go(
            kb,
            &Pass {
                init: 1.0,
                init_bits: None,
                step: &mul,
                combine: &mul,
            },
        ),
        Kind::L1 => go(
            kb,
            &Pass {
                init: 0.0,
                init_bits: None,
                step: &abs_add,
                combine: &add,
            },
        ),
        Kind::SumSquare | Kind::L2 => {
            let s = go(
                kb,
                &Pass {
                    init: 0.0,
                    init_bits: None,
                    step: &sq_add,
                    combine: &add,
                },
            );
            if kind == Kind::L2 {
                kb.b.ins().sqrt(s)
            } else {
                s
            }
        }
        Kind::LogSum => {
            let s = go(kb, &sum_pass);
            math::log(kb, ty, s)
        }
        Kind::LogSumExp => {
            let m = go(
                kb,
                &Pass {
                    init: f64::NEG_INFINITY,
                    init_bits: None,
                    step: &fmax_finite,
                    combine: &|kb, a, b| kb.b.ins().fmax(a, b),
                },
            );
            // No finite value: shift by 0.
            let d = kb.b.ins().fsub(m, m);
            let z = kb.constant(ty, 0.0);
            let finite = kb.b.ins().fcmp(FloatCC::Equal, d, z);
            let m = kb.sel(finite, m, z);
            let mv = if vl > 1 {
                Some(kb.b.ins().splat(ty1.by(4).expect("vector"), m))
            } else {
                None
            };
            let step = move |kb: &mut Kb, acc: Value, x: Value| {
                let xt = kb.b.func.dfg.value_type(x);
                let mm = if xt.is_vector() && !ty.is_vector() {
                    mv.expect("vector shift")
                } else {
                    m
                };
                let e = kb.b.ins().fsub(x, mm);
                let e = math::exp(kb, xt, e);
                kb.b.ins().fadd(acc, e)
            };
            let s = go(
                kb,
                &Pass {
                    init: 0.0,
                    init_bits: None,
                    step: &step,
                    combine: &add,
                },
            );
            let ls = math::log(kb, ty, s);
            kb.b.ins().fadd(ls, m)
        }
    }
}

/// Re-extends a narrow integer computed in i32 from its element width.
pub fn wrap(kb: &mut Kb, x: Value, dt: DType) -> Value {
    let bits = 8 * dt.size_bytes() as i64;
    if bits >= 32 {
        return x;
    }
    let sh = 32 - bits;
    let t = kb.b.ins().ishl_imm_u(x, sh);
    if Elt(dt).signed() {
        kb.b.ins().sshr_imm_u(t, sh)
    } else {
        kb.b.ins().ushr_imm_u(t, sh)
    }
}

/// `outer x n x inner` around `axis`.
pub fn lanes(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let n = shape.get(axis).copied().unwrap_or(1);
    let inner = shape.get(axis + 1..).map_or(1, |s| s.iter().product());
    (outer, n, inner)
}

/// ArgMax/ArgMin: one work item per output element; ties go to the first
/// (or with `select_last_index` the last) index, NaN beats numbers.
fn arg(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?.clone();
    let o = cx.out(0).clone();
    let dt = x.ty.dtype;
    let rank = x.ty.shape.len();
    let ax = norm_axis(cx.attrs().int("axis", 0)?, rank)?;
    let last = cx.attrs().int("select_last_index", 0)? != 0;
    let is_max = cx.node.op == "ArgMax";
    let (outer, n, inner) = lanes(&x.ty.shape, ax);
    if outer * inner == 0 {
        return Ok(());
    }
    let isz = dt.size_bytes() as i64;
    let fl = dt.is_float();
    let signed = Elt(dt).signed();
    lw.kernel(vec![x.buf, o.buf], outer * inner, |kb| {
        let (xp, yp) = (kb.arg(0), kb.arg(1));
        let (begin, end) = (kb.begin, kb.end);
        kb.for_range(begin, end, 1, |kb, item| {
            let oi = kb.b.ins().udiv_imm_u(item, inner as i64);
            let ii = kb.b.ins().urem_imm_u(item, inner as i64);
            let base = kb.muli(oi, (n * inner) as i64);
            let base = kb.add(base, ii);
            let row = kb.gep(xp, base, isz);
            let first = if last { kb.i(n as i64 - 1) } else { kb.i(0) };
            let a0 = kb.gep(row, first, inner as i64 * isz);
            let v0 = kb.load_elt(dt, a0, 1);
            let best = kb.var(Elt(dt).compute(1), v0);
            let bi = kb.var(I64, first);
            let (lo, hi) = (kb.i(1), kb.i(n as i64));
            kb.for_range(lo, hi, 1, |kb, k| {
                let j = if last {
                    let t = kb.i(n as i64 - 1);
                    kb.b.ins().isub(t, k)
                } else {
                    k
                };
                let a = kb.gep(row, j, inner as i64 * isz);
                let v = kb.load_elt(dt, a, 1);
                let b = kb.b.use_var(best);
                let better = if fl {
                    let cc = if is_max {
                        FloatCC::GreaterThan
                    } else {
                        FloatCC::LessThan
                    };
                    let c = kb.b.ins().fcmp(cc, v, b);
                    let vn = kb.b.ins().fcmp(FloatCC::Unordered, v, v);
                    let bo = kb.b.ins().fcmp(FloatCC::Ordered, b, b);
                    let nb = kb.b.ins().band(vn, bo);
                    kb.b.ins().bor(c, nb)
                } else {
                    let cc = match (is_max, signed) {
                        (true, true) => IntCC::SignedGreaterThan,
                        (true, false) => IntCC::UnsignedGreaterThan,
                        (false, true) => IntCC::SignedLessThan,
                        (false, false) => IntCC::UnsignedLessThan,
                    };
                    kb.b.ins().icmp(cc, v, b)
                };
                let nb = kb.b.ins().select(better, v, b);
                kb.b.def_var(best, nb);
                let cur = kb.b.use_var(bi);
                let ni = kb.b.ins().select(better, j, cur);
                kb.b.def_var(bi, ni);
            });
            let r = kb.b.use_var(bi);
            let ya = kb.gep(yp, item, 8);
            kb.store_elt(DType::I64, r, ya, 1);
        });
    })
}

/// CumSum/CumProd; floats round to the element type after every step (as
/// the interpreter does), integers wrap. A constant axis fixes the lane
/// geometry at compile time; otherwise the kernel reads the axis, checks
/// its range (run status 3 when out of range) and looks up the lane
/// geometry per axis in a table.
fn cumulative(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?.clone();
    let o = cx.out(0).clone();
    let dt = x.ty.dtype;
    let shape = x.ty.shape.clone();
    let rank = shape.len();
    let numel = x.ty.numel();
    if numel == 0 {
        return Ok(());
    }
    let fixed = match cx.consts.get(1).copied().flatten() {
        Some(t) => {
            let a: Vec<i64> = Tensor::to_i64_vec(t)?;
            ensure!(a.len() == 1, Invalid, "axis must be a single integer");
            Some(lanes(&shape, norm_axis(a[0], rank)?))
        }
        None => None,
    };
    let ax = cx.input(1)?.clone();
    ensure!(
        ax.ty.dtype.is_int() && ax.ty.numel() == 1,
        Invalid,
        "axis must be a single integer"
    );
    // (n, inner) per axis (rank 0: one lane of one element).
    let per_axis: Vec<(usize, usize)> = (0..rank.max(1))
        .map(|d| {
            let (_, n, inner) = lanes(&shape, d);
            (n, inner)
        })
        .collect();
    let table: Vec<u8> = per_axis
        .iter()
        .flat_map(|&(n, i)| [n as i64, i as i64])
        .flat_map(i64::to_le_bytes)
        .collect();
    let tbuf = lw.data(table)?;
    let prod = cx.node.op == "CumProd";
    let exclusive = cx.attrs().int("exclusive", 0)? != 0;
    let reverse = cx.attrs().int("reverse", 0)? != 0;
    let isz = dt.size_bytes() as i64;
    let fl = dt.is_float();
    let ct = Elt(dt).compute(1);
    let adt = ax.ty.dtype;
    let axes = rank.max(1) as i64;
    // Half floats round through the output buffer after each step.
    let reround = matches!(dt, DType::F16 | DType::BF16);
    let items = fixed.map_or(numel, |(outer, _, inner)| outer * inner);
    let bufs = vec![x.buf, o.buf, ax.buf, tbuf, Buf::Work(0)];
    lw.kernel_checked(bufs, items, fixed.is_none(), |kb| {
        let (xp, yp) = (kb.arg(0), kb.arg(1));
        let (n, inner) = match fixed {
            Some((_, n, inner)) => (kb.i(n as i64), kb.i(inner as i64)),
            None => {
                let ap = kb.arg(2);
                let a = kb.load_elt(adt, ap, 1);
                let a = convert(kb, a, adt, DType::I64);
                let neg = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, a, 0);
                let wrapped = kb.addi(a, axes);
                let a = kb.b.ins().select(neg, wrapped, a);
                let bad =
                    kb.b.ins()
                        .icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, a, axes);
                kb.if_(bad, |kb| {
                    let st = kb.arg(4);
                    let three = kb.i(3);
                    kb.b.ins().store(mem(), three, st, 0);
                });
                let z = kb.i(0);
                let a = kb.b.ins().select(bad, z, a);
                let tp = kb.arg(3);
                let e = kb.gep(tp, a, 16);
                let n = kb.b.ins().load(I64, mem(), e, 0);
                let inner = kb.b.ins().load(I64, mem(), e, 8);
                (n, inner)
            }
        };
        let lanes_total = {
            let t = kb.i(numel as i64);
            kb.b.ins().udiv(t, n)
        };
        let (begin, end) = (kb.begin, kb.end);
        let end = kb.b.ins().smin(end, lanes_total);
        let stride = kb.muli(inner, isz);
        kb.for_range(begin, end, 1, |kb, item| {
            let oi = kb.b.ins().udiv(item, inner);
            let ii = kb.b.ins().urem(item, inner);
            let nn = kb.b.ins().imul(n, inner);
            let base = kb.b.ins().imul(oi, nn);
            let base = kb.add(base, ii);
            let xrow = kb.gep(xp, base, isz);
            let yrow = kb.gep(yp, base, isz);
            let unit = kb.constant(ct, if prod { 1.0 } else { 0.0 });
            let acc = kb.var(ct, unit);
            let lo = kb.i(0);
            kb.for_range(lo, n, 1, |kb, k| {
                let j = if reverse {
                    let t = kb.addi(n, -1);
                    kb.b.ins().isub(t, k)
                } else {
                    k
                };
                let off = kb.b.ins().imul(j, stride);
                let xa = kb.add(xrow, off);
                let ya = kb.add(yrow, off);
                let v = kb.load_elt(dt, xa, 1);
                let before = kb.b.use_var(acc);
                let after = match (prod, fl) {
                    (true, true) => kb.b.ins().fmul(before, v),
                    (true, false) => kb.b.ins().imul(before, v),
                    (false, true) => kb.b.ins().fadd(before, v),
                    (false, false) => kb.b.ins().iadd(before, v),
                };
                kb.store_elt(dt, after, ya, 1);
                let after = if reround {
                    kb.load_elt(dt, ya, 1)
                } else {
                    after
                };
                kb.b.def_var(acc, after);
                if exclusive {
                    kb.store_elt(dt, before, ya, 1);
                }
            });
        });
    })
}
