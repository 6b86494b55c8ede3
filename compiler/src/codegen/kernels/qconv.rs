//! ConvInteger and QLinearConv: direct integer convolution (any spatial
//! rank, groups, strides, dilations, pads; geometry from the interpreter's
//! `conv_setup` / `conv_geom`) in wrapping i32, one work item per output
//! row, scalar code. Zero points are subtracted before padding, so padded
//! taps contribute nothing, as in the interpreter. QLinearConv adds the
//! i32 bias and requantizes in f64 with per-channel multipliers rounded to
//! the scales' promoted dtype.

use crate::codegen::nest::row_major;
use cranelift_codegen::ir::types::{F32, F64, I8, I32};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::quant::{saturate, to_f64};
use super::taps::{Dim, Direction, taps};
use super::{NodeCx, Table};
use crate::codegen::builder::Kb;
use crate::codegen::lower::{Lower, Operand};
use crate::error::Result;
use crate::ir::DType;

pub fn register(t: &mut Table) {
    t.add(&["ConvInteger"], conv_integer);
    t.add(&["QLinearConv"], qlinear_conv);
}

/// Convolution geometry in spatial dimensions.
struct Geom {
    group: usize,
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    begin: Vec<usize>,
    out: Vec<usize>,
}

/// `emit(kb, acc, m, dst)` gets the i32 sum over taps and input channels of
/// (x - xz)(w - wz[m]) for each output element.
#[allow(clippy::too_many_arguments)]
fn int_conv(
    lw: &mut Lower,
    x: &Operand,
    w: &Operand,
    xz: Option<&Operand>,
    wz: Option<&Operand>,
    extra: &[&Operand],
    out: &Operand,
    g: &Geom,
    emit: impl Fn(&mut Kb, Value, Value, &[Value], Value),
) -> Result<()> {
    let (nb, c) = (x.ty.shape[0], x.ty.shape[1]);
    let m = w.ty.shape[0];
    let cg = c / g.group;
    let mg = m / g.group;
    let nd = g.out.len();
    let rows = nb * m * g.out[..nd - 1].iter().product::<usize>();
    let last = g.out[nd - 1];
    if rows * last == 0 {
        return Ok(());
    }
    let xs = row_major(&x.ty.shape);
    let ws = row_major(&w.ty.shape);
    let mut obox = vec![nb, m];
    obox.extend(&g.out[..nd - 1]);
    let (xdt, wdt) = (x.ty.dtype, w.ty.dtype);
    let mut bufs = vec![x.buf, w.buf, out.buf];
    let zx = xz.map(|z| (bufs.len(), z.ty.dtype));
    if let Some(z) = xz {
        bufs.push(z.buf);
    }
    let zw = wz.map(|z| (bufs.len(), z.ty.dtype, z.ty.numel() > 1));
    if let Some(z) = wz {
        bufs.push(z.buf);
    }
    let first_extra = bufs.len();
    bufs.extend(extra.iter().map(|o| o.buf));
    let n_extra = extra.len();
    let osz = out.ty.dtype.size_bytes() as i64;
    lw.kernel(bufs, rows, |kb| {
        let (xp, wp, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let xzv = zx.map(|(j, dt)| {
            let p = kb.arg(j);
            kb.load_elt(dt, p, 1)
        });
        let wzp = zw.map(|(j, dt, per)| (kb.arg(j), dt, per));
        let eps: Vec<Value> = (0..n_extra).map(|j| kb.arg(first_extra + j)).collect();
        let (bg, e) = (kb.begin, kb.end);
        kb.for_range(bg, e, 1, |kb, row| {
            let mut co = vec![row; obox.len()];
            let mut rem = row;
            for d in (1..obox.len()).rev() {
                co[d] = kb.b.ins().urem_imm_u(rem, obox[d] as i64);
                rem = kb.b.ins().udiv_imm_u(rem, obox[d] as i64);
            }
            co[0] = rem;
            let (b, mo) = (co[0], co[1]);
            let grp = kb.b.ins().udiv_imm_u(mo, mg as i64);
            let wzv = wzp.map(|(p, dt, per)| {
                let a = if per {
                    kb.gep(p, mo, dt.size_bytes() as i64)
                } else {
                    p
                };
                kb.load_elt(dt, a, 1)
            });
            let (z, ln) = (kb.i(0), kb.i(last as i64));
            kb.for_range(z, ln, 1, |kb, ol| {
                let dims: Vec<Dim> = (0..nd)
                    .map(|d| Dim {
                        o: if d == nd - 1 { ol } else { co[2 + d] },
                        begin: g.begin[d] as i64,
                        stride: g.strides[d] as i64,
                        dil: g.dilations[d] as i64,
                        in_len: x.ty.shape[2 + d] as i64,
                        k_len: g.kernel[d] as i64,
                        x_st: xs[2 + d],
                        w_st: ws[2 + d],
                    })
                    .collect();
                let zero = kb.b.ins().iconst(I32, 0);
                let acc = kb.var(I32, zero);
                let cgv = kb.i(cg as i64);
                kb.for_range(z, cgv, 1, |kb, ci| {
                    let ch = kb.muli(grp, cg as i64);
                    let ch = kb.add(ch, ci);
                    let xo = kb.muli(b, xs[0]);
                    let xc = kb.muli(ch, xs[1]);
                    let xo = kb.add(xo, xc);
                    let wo = kb.muli(mo, ws[0]);
                    let wc = kb.muli(ci, ws[1]);
                    let wo = kb.add(wo, wc);
                    let ok = kb.b.ins().iconst(I8, 1);
                    taps(
                        kb,
                        &dims,
                        Direction::Forward,
                        xo,
                        wo,
                        ok,
                        &mut |kb, xo, wo| {
                            let xa = kb.gep(xp, xo, xdt.size_bytes() as i64);
                            let wa = kb.gep(wp, wo, wdt.size_bytes() as i64);
                            let mut xv = kb.load_elt(xdt, xa, 1);
                            let mut wv = kb.load_elt(wdt, wa, 1);
                            if let Some(zv) = xzv {
                                xv = kb.b.ins().isub(xv, zv);
                            }
                            if let Some(zv) = wzv {
                                wv = kb.b.ins().isub(wv, zv);
                            }
                            let p = kb.b.ins().imul(xv, wv);
                            let s = kb.b.use_var(acc);
                            let s = kb.b.ins().iadd(s, p);
                            kb.b.def_var(acc, s);
                        },
                    );
                });
                let s = kb.b.use_var(acc);
                let o = kb.muli(row, last as i64);
                let o = kb.add(o, ol);
                let dst = kb.gep(op, o, osz);
                emit(kb, s, mo, &eps, dst);
            });
        });
    })
}

fn opt<'a>(cx: &'a NodeCx, i: usize) -> Option<&'a Operand> {
    cx.ins.get(i).and_then(|o| o.as_ref())
}

fn conv_integer(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, w, out) = (cx.input(0)?, cx.input(1)?, cx.out(0));
    let (win, group) = crate::ops::conv::conv_setup(cx.attrs(), &x.ty.shape, &w.ty.shape)?;
    let g = Geom {
        group,
        kernel: win.kernel,
        strides: win.strides,
        dilations: win.dilations,
        begin: win.begin,
        out: win.out,
    };
    let wz = opt(cx, 3);
    if let Some(z) = wz {
        ensure!(
            z.ty.numel() == 1 || z.ty.numel() == w.ty.shape[0],
            Invalid,
            "w_zero_point must be a scalar or one value per output channel"
        );
    }
    int_conv(
        lw,
        x,
        w,
        opt(cx, 2),
        wz,
        &[],
        out,
        &g,
        |kb, s, _, _, dst| kb.store_elt(DType::I32, s, dst, 1),
    )
}

fn promote(a: DType, b: DType) -> DType {
    if a == b {
        a
    } else if a == DType::F64 || b == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

fn qlinear_conv(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, w, out) = (cx.input(0)?, cx.input(3)?, cx.out(0));
    let (sx, sw, sy, zy) = (cx.input(1)?, cx.input(4)?, cx.input(6)?, cx.input(7)?);
    let cg = crate::ops::misc::conv_geom(cx.attrs(), &x.ty.shape, &w.ty.shape)?;
    let g = Geom {
        group: cg.group,
        kernel: cg.kernel,
        strides: cg.strides,
        dilations: cg.dilations,
        begin: cg.pads_begin,
        out: cg.out,
    };
    let m = w.ty.shape[0];
    let scalars = [
        (Some(sx), "x_scale"),
        (Some(sy), "y_scale"),
        (opt(cx, 2), "x_zero_point"),
    ];
    for (s, what) in scalars.iter().filter_map(|(s, w)| s.map(|s| (s, w))) {
        ensure!(
            s.ty.numel() == 1,
            Invalid,
            "{what} must be a scalar, found shape {:?}",
            s.ty.shape
        );
    }
    let per = |p: &Operand, what: &str| -> Result<bool> {
        ensure!(
            p.ty.numel() == 1 || (p.ty.shape.len() == 1 && p.ty.numel() == m),
            Invalid,
            "{what} must be a scalar or hold one value per output channel ({m}), found shape {:?}",
            p.ty.shape
        );
        Ok(p.ty.numel() > 1)
    };
    let d = promote(promote(sx.ty.dtype, sw.ty.dtype), sy.ty.dtype);
    if !matches!(d, DType::F32 | DType::F64) {
        bail!(Unsupported, "QLinearConv with {d} scales");
    }
    if let Some(z) = opt(cx, 5) {
        per(z, "w_zero_point")?;
    }
    let bias = opt(cx, 8);
    let mut extra = vec![sx, sw, sy, zy];
    let per_flags = [false, per(sw, "w_scale")?, false, per(zy, "y_zero_point")?];
    if let Some(b) = bias {
        extra.push(b);
    }
    let dts: Vec<DType> = extra.iter().map(|o| o.ty.dtype).collect();
    let has_bias = bias.is_some();
    let od = out.ty.dtype;
    int_conv(
        lw,
        x,
        w,
        opt(cx, 2),
        opt(cx, 5),
        &extra,
        out,
        &g,
        |kb, s, mo, ptrs, dst| {
            let mut vals = Vec::new();
            for q in 0..4 {
                let a = if per_flags[q] {
                    kb.gep(ptrs[q], mo, dts[q].size_bytes() as i64)
                } else {
                    ptrs[q]
                };
                let v = kb.load_elt(dts[q], a, 1);
                vals.push(to_f64(kb, dts[q], v));
            }
            let acc = if has_bias {
                let a = kb.gep(ptrs[4], mo, 4);
                let bv = kb.load_elt(DType::I32, a, 1);
                kb.b.ins().iadd(s, bv)
            } else {
                s
            };
            let round = |kb: &mut Kb, v: Value| {
                if d == DType::F32 {
                    let r = kb.b.ins().fdemote(F32, v);
                    kb.b.ins().fpromote(F64, r)
                } else {
                    v
                }
            };
            let sxw = kb.b.ins().fmul(vals[0], vals[1]);
            let sxw = round(kb, sxw);
            let mult = kb.b.ins().fdiv(sxw, vals[2]);
            let mult = round(kb, mult);
            let a = kb.b.ins().fcvt_from_sint(F64, acc);
            let y = kb.b.ins().fmul(a, mult);
            let y = kb.b.ins().fadd(y, vals[3]);
            let q = saturate(kb, od, y);
            kb.store_elt(od, q, dst, 1);
        },
    )
}
