//! Resize and Upsample, every mode the interpreter has (nearest with its
//! rounding modes, linear, cubic, antialias, exclude_outside, every
//! coordinate transformation, tf_crop_and_resize extrapolation): the
//! interpreter's own per-axis tap tables (source index and weight per
//! output position, computed at compile time from the constant scales,
//! sizes and roi) drive one kernel per resized axis. Intermediate axes are
//! kept in f64 in scratch, like the interpreter's f64 pipeline, and the
//! last step saturate-casts to the element type.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F64, I64};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::quant::to_f64;
use super::{NodeCx, Table};
use crate::codegen::builder::{Elt, Kb, mem};
use crate::codegen::lower::{Buf, Lower};
use crate::codegen::nest::{self, Access};
use crate::error::Result;
use crate::ir::DType;
use crate::ops::resize::{Tap, axis_taps, float_max, slots};

pub fn register(t: &mut Table) {
    t.add(&["Resize", "Upsample"], resize);
}

/// The interpreter's saturate cast of an f64 to `d`'s compute type: floats
/// clip to the finite range (NaN stays), integers round half to even and
/// clip.
fn saturate(kb: &mut Kb, d: DType, v: Value) -> Value {
    if d.is_float() {
        let m = float_max(d);
        let lo = kb.b.ins().f64const(-m);
        let hi = kb.b.ins().f64const(m);
        let c = kb.b.ins().fmax(v, lo);
        let c = kb.b.ins().fmin(c, hi);
        let nan = kb.b.ins().fcmp(FloatCC::Unordered, v, v);
        let c = kb.b.ins().select(nan, v, c);
        return if d == DType::F64 {
            c
        } else {
            kb.b.ins().fdemote(F32, c)
        };
    }
    let bits = d.size_bytes() as i32 * 8;
    let (lo, hi) = if d.is_signed() {
        (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
    } else {
        (0.0, 2f64.powi(bits) - 1.0)
    };
    let r = kb.b.ins().nearest(v);
    let lo = kb.b.ins().f64const(lo);
    let hi = kb.b.ins().f64const(hi);
    let r = kb.b.ins().fmax(r, lo);
    let r = kb.b.ins().fmin(r, hi);
    let ty = Elt(d).compute(1);
    match d {
        DType::U32 | DType::U64 => kb.b.ins().fcvt_to_uint_sat(ty, r),
        _ => kb.b.ins().fcvt_to_sint_sat(ty, r),
    }
}

/// Where one step reads or writes: a tensor of the element type, or f64
/// scratch.
#[derive(Clone, Copy)]
struct Side {
    buf: Buf,
    f64_scratch: bool,
}

fn resize(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, out) = (cx.input(0)?, cx.out(0));
    let op = cx.node.op.as_str();
    // The roi only moves the taps in tf_crop_and_resize; elsewhere a
    // run-time roi is read by no one.
    let crops = cx
        .attrs()
        .string("coordinate_transformation_mode", "half_pixel")?
        == "tf_crop_and_resize";
    let roi = slots(op, cx.node.opset)[0].filter(|_| !crops);
    let mut consts = cx.consts.clone();
    for (i, c) in consts.iter_mut().enumerate().skip(1) {
        if Some(i) == roi {
            *c = None;
        } else if cx.ins[i].as_ref().is_some_and(|o| o.ty.numel() > 0) && c.is_none() {
            bail!(
                Unsupported,
                "input {i} of {op} must be a constant for native code (it decides the sampling taps)"
            );
        }
    }
    let steps = axis_taps(cx.attrs(), cx.node.opset, op, &x.ty.shape, &consts)?;
    let dt = x.ty.dtype;
    if out.ty.numel() == 0 {
        return Ok(());
    }
    if steps.is_empty() {
        return nest::emit(
            lw,
            &x.ty.shape,
            &[Access::dense(x.buf, dt, &x.ty.shape)],
            &[Access::dense(out.buf, dt, &out.ty.shape)],
            false,
            |kb, v, _| {
                let f = to_f64(kb, dt, v[0]);
                vec![saturate(kb, dt, f)]
            },
        );
    }
    // Sizes after each step, for the scratch buffers.
    let mut shape = x.ty.shape.clone();
    let mut biggest = 0usize;
    for (d, taps) in &steps {
        shape[*d] = taps.len();
        biggest = biggest.max(shape.iter().product());
    }
    let scratch = [lw.scratch(biggest * 8), lw.scratch(biggest * 8)];
    let mut src = Side {
        buf: x.buf,
        f64_scratch: false,
    };
    let mut shape = x.ty.shape.clone();
    let nsteps = steps.len();
    for (s, (d, taps)) in steps.iter().enumerate() {
        let dst = if s + 1 == nsteps {
            Side {
                buf: out.buf,
                f64_scratch: false,
            }
        } else {
            Side {
                buf: scratch[s % 2],
                f64_scratch: true,
            }
        };
        step(lw, dt, &shape, *d, taps, src, dst)?;
        shape[*d] = taps.len();
        src = dst;
    }
    Ok(())
}

/// One axis: `dst[o, t, i] = sum_k w[t][k] * src[o, j[t][k], i]`, or the
/// extrapolation constant.
fn step(
    lw: &mut Lower,
    dt: DType,
    shape: &[usize],
    axis: usize,
    taps: &[Tap],
    src: Side,
    dst: Side,
) -> Result<()> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let n = shape[axis];
    let out_w = taps.len();
    let k = taps
        .iter()
        .map(|t| match t {
            Tap::Sum(w) => w.len(),
            Tap::Const(_) => 1,
        })
        .max()
        .unwrap_or(1)
        .max(1);
    // Table: per output position, k entries of (index: i64, weight: f64);
    // index -1 marks the constant, held in the first weight.
    let mut table = Vec::with_capacity(out_w * k * 16);
    for t in taps {
        let entries: Vec<(i64, f64)> = match t {
            Tap::Sum(w) => w.iter().map(|&(j, c)| (j as i64, c)).collect(),
            Tap::Const(v) => vec![(-1, *v)],
        };
        for e in 0..k {
            let (j, c) = entries.get(e).copied().unwrap_or((0, 0.0));
            table.extend(j.to_le_bytes());
            table.extend(c.to_le_bytes());
        }
    }
    let tab = lw.data(table)?;
    let items = outer * out_w;
    if items * inner == 0 {
        return Ok(());
    }
    lw.kernel(vec![src.buf, dst.buf, tab], items, |kb| {
        let (sp, dp, tp) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let (bg, e) = (kb.begin, kb.end);
        kb.for_range(bg, e, 1, |kb, item| {
            let o = kb.b.ins().udiv_imm_u(item, out_w as i64);
            let t = kb.b.ins().urem_imm_u(item, out_w as i64);
            let row = kb.muli(t, (k * 16) as i64);
            let row = kb.add(tp, row);
            let j0 = kb.b.ins().load(I64, mem(), row, 0);
            let is_const = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, j0, 0);
            let c0 = kb.b.ins().load(F64, mem(), row, 8);
            let mut ents = Vec::with_capacity(k);
            for e in 0..k {
                let j = kb.b.ins().load(I64, mem(), row, (e * 16) as i32);
                let z = kb.i(0);
                let j = kb.b.ins().smax(j, z);
                let w = kb.b.ins().load(F64, mem(), row, (e * 16 + 8) as i32);
                // Source row start (o * n + j) * inner.
                let base = kb.muli(o, n as i64);
                let base = kb.add(base, j);
                ents.push((kb.muli(base, inner as i64), w));
            }
            let obase = kb.muli(item, inner as i64);
            let (z, ni) = (kb.i(0), kb.i(inner as i64));
            kb.for_range(z, ni, 1, |kb, i| {
                let mut acc = kb.b.ins().f64const(0.0);
                for &(b, w) in &ents {
                    let p = kb.add(b, i);
                    let v = if src.f64_scratch {
                        let a = kb.gep(sp, p, 8);
                        kb.b.ins().load(F64, mem(), a, 0)
                    } else {
                        let a = kb.gep(sp, p, dt.size_bytes() as i64);
                        let v = kb.load_elt(dt, a, 1);
                        to_f64(kb, dt, v)
                    };
                    let m = kb.b.ins().fmul(w, v);
                    acc = kb.b.ins().fadd(acc, m);
                }
                let v = kb.b.ins().select(is_const, c0, acc);
                let p = kb.add(obase, i);
                if dst.f64_scratch {
                    let a = kb.gep(dp, p, 8);
                    kb.b.ins().store(mem(), v, a, 0);
                } else {
                    let r = saturate(kb, dt, v);
                    let a = kb.gep(dp, p, dt.size_bytes() as i64);
                    kb.store_elt(dt, r, a, 1);
                }
            });
        });
    })
}
