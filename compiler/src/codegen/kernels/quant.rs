//! QuantizeLinear, DequantizeLinear (per tensor, per axis, blocked) and
//! DynamicQuantizeLinear. Arithmetic is done in f64 and rounded to the
//! dtype the interpreter rounds to, so results match it exactly: a
//! quantized value is `saturate(round_half_even(x / s) + zp)`, the division
//! rounded to numpy's promoted dtype of x and s.

use crate::codegen::nest::row_major;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32, F64, I32};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::{NodeCx, Table};
use crate::codegen::builder::{Elt, Kb, mem};
use crate::codegen::lower::{Lower, Operand};
use crate::codegen::nest::{self, Access};
use crate::error::Result;
use crate::ir::DType;

pub fn register(t: &mut Table) {
    t.add(&["QuantizeLinear"], quantize);
    t.add(&["DequantizeLinear"], dequantize);
    t.add(&["DynamicQuantizeLinear"], dynamic_quantize);
}

/// A loaded value of `dt` (in its compute type) as f64.
pub fn to_f64(kb: &mut Kb, dt: DType, v: Value) -> Value {
    match dt {
        DType::F64 => v,
        DType::F32 | DType::F16 | DType::BF16 => kb.b.ins().fpromote(F64, v),
        DType::U32 | DType::U64 => kb.b.ins().fcvt_from_uint(F64, v),
        _ => kb.b.ins().fcvt_from_sint(F64, v),
    }
}

/// An f64 as the compute type of float dtype `dt`.
fn from_f64(kb: &mut Kb, dt: DType, v: Value) -> Value {
    if dt == DType::F64 {
        v
    } else {
        kb.b.ins().fdemote(F32, v)
    }
}

/// Inclusive range of an integer dtype.
fn int_range(d: DType) -> (f64, f64) {
    let bits = d.size_bytes() as i32 * 8;
    if d.is_signed() {
        (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
    } else {
        (0.0, 2f64.powi(bits) - 1.0)
    }
}

/// Rounds half to even, saturates to `d` and converts to its compute type.
pub fn saturate(kb: &mut Kb, d: DType, v: Value) -> Value {
    let (lo, hi) = int_range(d);
    let r = kb.b.ins().nearest(v);
    let lo = kb.b.ins().f64const(lo);
    let hi = kb.b.ins().f64const(hi);
    let r = kb.b.ins().fmax(r, lo);
    let r = kb.b.ins().fmin(r, hi);
    // NaN converts to 0, as `f64 as u8` does.
    kb.b.ins().fcvt_to_sint_sat(Elt(d).compute(1), r)
}

/// How a scale or zero point maps onto the input.
enum Layout {
    Tensor,
    Axis,
    Blocked,
}

fn layout(p: &Operand, shape: &[usize], ax: usize, block: i64, what: &str) -> Result<Layout> {
    if p.ty.numel() == 1 {
        return Ok(Layout::Tensor);
    }
    ensure!(
        !shape.is_empty(),
        Invalid,
        "{what} must be a scalar for a scalar input"
    );
    if block <= 0 {
        ensure!(
            p.ty.shape.len() == 1 && p.ty.shape[0] == shape[ax],
            Invalid,
            "{what} of shape {:?} is neither a scalar nor a vector of {} (axis {ax})",
            p.ty.shape,
            shape[ax]
        );
        return Ok(Layout::Axis);
    }
    let mut want = shape.to_vec();
    want[ax] = shape[ax].div_ceil(block as usize);
    ensure!(
        p.ty.shape == want,
        Invalid,
        "{what} of shape {:?} does not match input {shape:?} blocked by {block} on axis {ax}",
        p.ty.shape
    );
    Ok(Layout::Blocked)
}

/// Emits `outs = f(data, params)` where `data` and `outs` are dense in
/// `shape` and each param is laid out per tensor, per axis or per block of
/// `block` along `axis`. The axis is split into (blocks, block) nest
/// dimensions, with a second nest for a partial last block.
#[allow(clippy::too_many_arguments)]
fn quant_nest(
    lw: &mut Lower,
    shape: &[usize],
    data: &[&Operand],
    params: &[(&Operand, &str)],
    outs: &[&Operand],
    axis: i64,
    block: i64,
    f: impl Fn(&mut Kb, &[Value]) -> Vec<Value>,
) -> Result<()> {
    let rank = shape.len();
    let dense = |o: &Operand| Access::dense(o.buf, o.ty.dtype, shape);
    // Per-tensor parameters ignore the axis (which may not even exist).
    if params.iter().all(|(p, _)| p.ty.numel() == 1) {
        let mut ins: Vec<Access> = data.iter().map(|&o| dense(o)).collect();
        ins.extend(params.iter().map(|(p, _)| Access {
            buf: p.buf,
            dt: p.ty.dtype,
            offset: 0,
            strides: vec![0; rank],
        }));
        let os: Vec<Access> = outs.iter().map(|&o| dense(o)).collect();
        return nest::emit(lw, shape, &ins, &os, false, |kb, v, _| f(kb, v));
    }
    ensure!(
        rank > 0,
        Invalid,
        "scale and zero point must be scalars for a scalar input"
    );
    let ax = crate::ops::axis(axis, rank)?;
    let lays: Vec<Layout> = params
        .iter()
        .map(|(p, what)| layout(p, shape, ax, block, what))
        .collect::<Result<_>>()?;
    let blen = if block > 0 { block as usize } else { 1 };
    let full = shape[ax] / blen;
    let rem = shape[ax] % blen;
    let xs = row_major(shape);
    let mut segs = Vec::new();
    if full > 0 {
        segs.push((0usize, full, blen));
    }
    if rem > 0 {
        segs.push((full * blen, 1, rem));
    }
    for (start, nblk, bl) in segs {
        let mut nshape = shape.to_vec();
        nshape.splice(ax..=ax, [nblk, bl]);
        let split = |st: &[i64], outer: i64, inner: i64| {
            let mut s = st.to_vec();
            s.splice(ax..=ax, [outer, inner]);
            s
        };
        let dacc = |o: &Operand| Access {
            buf: o.buf,
            dt: o.ty.dtype,
            offset: start as i64 * xs[ax],
            strides: split(&xs, xs[ax] * blen as i64, xs[ax]),
        };
        let mut ins: Vec<Access> = data.iter().map(|&o| dacc(o)).collect();
        for ((p, _), l) in params.iter().zip(&lays) {
            let (offset, strides) = match l {
                Layout::Tensor => (0, vec![0; rank + 1]),
                Layout::Axis => {
                    let mut s = vec![0; rank + 1];
                    s[ax] = 1;
                    (start as i64, s)
                }
                Layout::Blocked => {
                    let ps = row_major(&p.ty.shape);
                    ((start / blen) as i64 * ps[ax], split(&ps, ps[ax], 0))
                }
            };
            ins.push(Access {
                buf: p.buf,
                dt: p.ty.dtype,
                offset,
                strides,
            });
        }
        let os: Vec<Access> = outs.iter().map(|&o| dacc(o)).collect();
        nest::emit(lw, &nshape, &ins, &os, false, |kb, v, _| f(kb, v))?;
    }
    Ok(())
}

/// numpy's result dtype for arithmetic between two float dtypes.
fn promote(a: DType, b: DType) -> DType {
    if a == b {
        a
    } else if a == DType::F64 || b == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

fn quant_attrs(cx: &NodeCx) -> Result<(i64, i64)> {
    Ok((cx.attrs().int("axis", 1)?, cx.attrs().int("block_size", 0)?))
}

fn quantize(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, s, out) = (cx.input(0)?, cx.input(1)?, cx.out(0));
    if cx.node.opset >= 23 && cx.attrs().int("precision", 0)? != 0 {
        bail!(Unsupported, "QuantizeLinear with a 'precision' attribute");
    }
    let as_float = |d: DType| if d.is_float() { d } else { DType::F64 };
    let div = promote(as_float(x.ty.dtype), as_float(s.ty.dtype));
    if !matches!(div, DType::F32 | DType::F64) {
        bail!(
            Unsupported,
            "QuantizeLinear dividing in {div} (x is {}, y_scale {})",
            x.ty.dtype,
            s.ty.dtype
        );
    }
    let (axis, block) = quant_attrs(cx)?;
    let (xdt, sdt, od) = (x.ty.dtype, s.ty.dtype, out.ty.dtype);
    let mut params = vec![(s, "y_scale")];
    let zp = cx.ins.get(2).and_then(|o| o.as_ref());
    if let Some(z) = zp {
        params.push((z, "y_zero_point"));
    }
    let zdt = zp.map(|z| z.ty.dtype);
    quant_nest(
        lw,
        &x.ty.shape,
        &[x],
        &params,
        &[out],
        axis,
        block,
        |kb, v| {
            let xv = to_f64(kb, xdt, v[0]);
            let sv = to_f64(kb, sdt, v[1]);
            let mut q = kb.b.ins().fdiv(xv, sv);
            if div == DType::F32 {
                let r = kb.b.ins().fdemote(F32, q);
                q = kb.b.ins().fpromote(F64, r);
            }
            let mut q = kb.b.ins().nearest(q);
            if let Some(zdt) = zdt {
                let z = to_f64(kb, zdt, v[2]);
                q = kb.b.ins().fadd(q, z);
            }
            vec![saturate(kb, od, q)]
        },
    )
}

fn dequantize(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, s, out) = (cx.input(0)?, cx.input(1)?, cx.out(0));
    let (axis, block) = quant_attrs(cx)?;
    let (xdt, sdt, od) = (x.ty.dtype, s.ty.dtype, out.ty.dtype);
    let mut params = vec![(s, "x_scale")];
    let zp = cx.ins.get(2).and_then(|o| o.as_ref());
    if let Some(z) = zp {
        params.push((z, "x_zero_point"));
    }
    let zdt = zp.map(|z| z.ty.dtype);
    quant_nest(
        lw,
        &x.ty.shape,
        &[x],
        &params,
        &[out],
        axis,
        block,
        |kb, v| {
            let mut d = to_f64(kb, xdt, v[0]);
            if let Some(zdt) = zdt {
                let z = to_f64(kb, zdt, v[2]);
                d = kb.b.ins().fsub(d, z);
            }
            let sv = to_f64(kb, sdt, v[1]);
            let y = kb.b.ins().fmul(d, sv);
            vec![from_f64(kb, od, y)]
        },
    )
}

/// uint8 quantization covering the data and zero, in f32 as the spec's
/// formulas: one pass for the range (NaN propagates), then the map.
fn dynamic_quantize(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?;
    let (y, scale, zp) = (cx.out(0), cx.out(1), cx.out(2));
    let n = x.ty.numel() as i64;
    lw.kernel(vec![x.buf, scale.buf, zp.buf], 1, |kb| {
        let (xp, sp, zpp) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let ninf = kb.b.ins().f32const(f32::NEG_INFINITY);
        let inf = kb.b.ins().f32const(f32::INFINITY);
        let mx = kb.var(F32, ninf);
        let mn = kb.var(F32, inf);
        let (z, hi) = (kb.i(0), kb.i(n));
        kb.for_range(z, hi, 1, |kb, i| {
            let a = kb.gep(xp, i, 4);
            let v = kb.b.ins().load(F32, mem(), a, 0);
            let m = kb.b.use_var(mx);
            let m = kb.b.ins().fmax(m, v);
            kb.b.def_var(mx, m);
            let m = kb.b.use_var(mn);
            let m = kb.b.ins().fmin(m, v);
            kb.b.def_var(mn, m);
        });
        let zero = kb.b.ins().f32const(0.0);
        let m = kb.b.use_var(mx);
        let max = kb.b.ins().fmax(m, zero);
        let m = kb.b.use_var(mn);
        let min = kb.b.ins().fmin(m, zero);
        let eq = kb.b.ins().fcmp(FloatCC::Equal, max, min);
        let range = kb.b.ins().fsub(max, min);
        let one = kb.b.ins().f32const(1.0);
        let range = kb.b.ins().select(eq, one, range);
        let c255 = kb.b.ins().f32const(255.0);
        let sc = kb.b.ins().fdiv(range, c255);
        kb.b.ins().store(mem(), sc, sp, 0);
        let q = kb.b.ins().fdiv(min, sc);
        let q = kb.b.ins().fsub(zero, q);
        let q = kb.b.ins().fmax(q, zero);
        let q = kb.b.ins().fmin(q, c255);
        let q = kb.b.ins().nearest(q);
        let q = kb.b.ins().fcvt_to_uint_sat(I32, q);
        kb.store_elt(DType::U8, q, zpp, 1);
    })?;
    let shape = &x.ty.shape;
    let rank = shape.len();
    let bc = |o: &Operand| Access {
        buf: o.buf,
        dt: o.ty.dtype,
        offset: 0,
        strides: vec![0; rank],
    };
    nest::emit(
        lw,
        shape,
        &[Access::dense(x.buf, DType::F32, shape), bc(scale), bc(zp)],
        &[Access::dense(y.buf, DType::U8, shape)],
        false,
        |kb, v, _| {
            let q = kb.b.ins().fdiv(v[0], v[1]);
            let q = kb.b.ins().nearest(q);
            let z = kb.b.ins().fcvt_from_sint(F32, v[2]);
            let q = kb.b.ins().fadd(q, z);
            let zero = kb.b.ins().f32const(0.0);
            let c255 = kb.b.ins().f32const(255.0);
            let q = kb.b.ins().fmax(q, zero);
            let q = kb.b.ins().fmin(q, c255);
            vec![kb.b.ins().fcvt_to_sint_sat(I32, q)]
        },
    )
}
