//! Ops whose element positions come from index tensors known only at run
//! time: GatherElements, GatherND, ScatterElements/Scatter, ScatterND,
//! OneHot, ReverseSequence and Trilu with a run-time `k`. Indices are checked as they are
//! read; an out-of-range one sets the workspace's status word (the run
//! fails with "index out of range", as the interpreter does). Scatters run
//! as one sequential work item so duplicate indices combine in the
//! interpreter's order.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{I8, I64};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::{NodeCx, Table};
use crate::codegen::builder::{Elt, Kb, mem};
use crate::codegen::lower::{Buf, Lower, Operand};
use crate::error::Result;
use crate::ir::DType;
use crate::ops;

pub fn register(t: &mut Table) {
    t.add(&["GatherElements"], |lw, cx| {
        if cx.consts[1].is_some() {
            super::movement::probed(lw, cx)
        } else {
            gather_elements(lw, cx)
        }
    });
    t.add(&["GatherND"], |lw, cx| {
        if cx.consts[1].is_some() {
            super::movement::probed(lw, cx)
        } else {
            gather_nd(lw, cx)
        }
    });
    t.add(&["Trilu"], |lw, cx| {
        match cx.ins.get(1).and_then(|o| o.as_ref()) {
            Some(k) if cx.consts[1].is_none() => trilu(lw, cx, k),
            _ => super::movement::probed(lw, cx),
        }
    });
    t.add(&["ScatterElements", "Scatter"], scatter_elements);
    t.add(&["ScatterND"], scatter_nd);
    t.add(&["OneHot"], one_hot);
    t.add(&["ReverseSequence"], reverse_sequence);
}

/// Row-major element strides of `shape`.
fn strides(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1] as i64;
    }
    s
}

/// Element `j` of an index tensor as i64 (floats truncate, as `to_i128`
/// does in the interpreter).
fn load_index(kb: &mut Kb, dt: DType, base: Value, j: Value) -> Value {
    let a = kb.gep(base, j, dt.size_bytes() as i64);
    let v = kb.load_elt(dt, a, 1);
    match dt {
        DType::I64 | DType::U64 => v,
        DType::U32 => kb.b.ins().uextend(I64, v),
        d if d.is_float() => kb.b.ins().fcvt_to_sint_sat(I64, v),
        _ => kb.b.ins().sextend(I64, v),
    }
}

/// `k` wrapped once if negative, and whether it is outside `[0, len)`.
fn wrap(kb: &mut Kb, k: Value, len: i64) -> (Value, Value) {
    let neg = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, k, 0);
    let kw = kb.b.ins().iadd_imm_s(k, len);
    let k = kb.b.ins().select(neg, kw, k);
    let lo = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, k, 0);
    let hi =
        kb.b.ins()
            .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, k, len);
    (k, kb.b.ins().bor(lo, hi))
}

/// `if bad { status = 3 } else { ok }`; `status` is the argument slot of
/// `Buf::Work(0)`.
fn guarded(kb: &mut Kb, bad: Value, status: usize, ok: impl FnOnce(&mut Kb)) {
    let okb = kb.b.create_block();
    let fail = kb.b.create_block();
    let next = kb.b.create_block();
    kb.b.ins().brif(bad, fail, &[], okb, &[]);
    kb.b.switch_to_block(fail);
    let wp = kb.arg(status);
    let three = kb.i(3);
    kb.b.ins().store(mem(), three, wp, 0);
    kb.b.ins().jump(next, &[]);
    kb.b.switch_to_block(okb);
    ok(kb);
    kb.b.ins().jump(next, &[]);
    kb.b.switch_to_block(next);
}

/// Splits flat index `p` of `shape` into coordinates.
fn coords(kb: &mut Kb, p: Value, shape: &[usize]) -> Vec<Value> {
    let mut out = vec![p; shape.len()];
    let mut rem = p;
    for d in (0..shape.len()).rev() {
        if d == 0 {
            out[d] = rem;
        } else {
            let n = shape[d] as i64;
            out[d] = kb.b.ins().urem_imm_u(rem, n);
            rem = kb.b.ins().udiv_imm_u(rem, n);
        }
    }
    out
}

fn copy_elt(kb: &mut Kb, dt: DType, dst: Value, src: Value) {
    let ty = Elt(dt).storage();
    let v = kb.b.ins().load(ty, mem(), src, 0);
    kb.b.ins().store(mem(), v, dst, 0);
}

fn gather_elements(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, idx, out) = (cx.input(0)?, cx.input(1)?, cx.out(0));
    let rank = x.ty.shape.len();
    let ax = ops::axis(cx.attrs().int("axis", 0)?, rank)?;
    let n = out.ty.numel();
    if n == 0 {
        return Ok(());
    }
    let (xs, oshape) = (strides(&x.ty.shape), out.ty.shape.clone());
    let (dt, idt, len) = (x.ty.dtype, idx.ty.dtype, x.ty.shape[ax] as i64);
    let esz = dt.size_bytes() as i64;
    lw.kernel_checked(vec![x.buf, idx.buf, out.buf, Buf::Work(0)], n, true, |kb| {
        let (xp, ip, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, p| {
            let k = load_index(kb, idt, ip, p);
            let (k, bad) = wrap(kb, k, len);
            guarded(kb, bad, 3, |kb| {
                let c = coords(kb, p, &oshape);
                let mut off = kb.muli(k, xs[ax]);
                for (d, &cd) in c.iter().enumerate() {
                    if d != ax {
                        let t = kb.muli(cd, xs[d]);
                        off = kb.add(off, t);
                    }
                }
                let src = kb.gep(xp, off, esz);
                let dst = kb.gep(op, p, esz);
                copy_elt(kb, dt, dst, src);
            });
        });
    })
}

fn gather_nd(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, idx, out) = (cx.input(0)?, cx.input(1)?, cx.out(0));
    let (d, q) = (&x.ty.shape, &idx.ty.shape);
    let b = cx.attrs().int("batch_dims", 0)?.max(0) as usize;
    let k = q[q.len() - 1];
    let tuples: usize = q[..q.len() - 1].iter().product();
    let per_batch: usize = q[b..q.len() - 1].iter().product();
    let batch_size: usize = d[b..].iter().product();
    let block: usize = d[b + k..].iter().product();
    if out.ty.numel() == 0 {
        return Ok(());
    }
    let st = strides(&d[b..]);
    let dims: Vec<i64> = d[b..b + k].iter().map(|&v| v as i64).collect();
    let (idt, esz) = (idx.ty.dtype, x.ty.dtype.size_bytes() as i64);
    let row = block as i64 * esz;
    lw.kernel_checked(
        vec![x.buf, idx.buf, out.buf, Buf::Work(0)],
        tuples,
        true,
        |kb| {
            let (xp, ip, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
            let (bg, e) = (kb.begin, kb.end);
            kb.for_range(bg, e, 1, |kb, t| {
                let bi = kb.b.ins().udiv_imm_u(t, per_batch.max(1) as i64);
                let mut off = kb.muli(bi, batch_size as i64);
                let mut bad = kb.b.ins().iconst(I8, 0);
                let t0 = kb.muli(t, k as i64);
                for (j, &len) in dims.iter().enumerate() {
                    let jj = kb.addi(t0, j as i64);
                    let v = load_index(kb, idt, ip, jj);
                    let (v, bj) = wrap(kb, v, len);
                    bad = kb.b.ins().bor(bad, bj);
                    let s = kb.muli(v, st[j]);
                    off = kb.add(off, s);
                }
                guarded(kb, bad, 3, |kb| {
                    let src = kb.gep(xp, off, esz);
                    let dst = kb.gep(op, t, row);
                    super::movement::copy_bytes(kb, dst, src, row);
                });
            });
        },
    )
}

/// How a scatter combines the old value with an update.
#[derive(Clone, Copy)]
enum Red {
    None,
    Add,
    Mul,
    Max,
    Min,
}

fn reduction(cx: &NodeCx) -> Result<Red> {
    Ok(match cx.attrs().string("reduction", "none")? {
        "none" => Red::None,
        "add" => Red::Add,
        "mul" => Red::Mul,
        "max" => Red::Max,
        "min" => Red::Min,
        other => bail!(Invalid, "unknown reduction {other:?}"),
    })
}

/// `*dst = red(*dst, *src)` for one element of `dt`.
fn combine(kb: &mut Kb, dt: DType, red: Red, dst: Value, src: Value) {
    if let Red::None = red {
        copy_elt(kb, dt, dst, src);
        return;
    }
    let a = kb.load_elt(dt, dst, 1);
    let u = kb.load_elt(dt, src, 1);
    let r = if dt.is_float() {
        match red {
            Red::Add => kb.b.ins().fadd(a, u),
            Red::Mul => kb.b.ins().fmul(a, u),
            // NaN in either propagates, like the interpreter's reducer.
            Red::Max => kb.b.ins().fmax(a, u),
            _ => kb.b.ins().fmin(a, u),
        }
    } else {
        let s = Elt(dt).signed();
        match red {
            Red::Add => kb.b.ins().iadd(a, u),
            Red::Mul => kb.b.ins().imul(a, u),
            Red::Max if s => kb.b.ins().smax(a, u),
            Red::Max => kb.b.ins().umax(a, u),
            Red::Min if s => kb.b.ins().smin(a, u),
            _ => kb.b.ins().umin(a, u),
        }
    };
    kb.store_elt(dt, r, dst, 1);
}

fn check_reducible(dt: DType, red: Red) -> Result<()> {
    if !matches!(red, Red::None) && dt == DType::Bool {
        bail!(Invalid, "reductions need numeric data, found {dt}");
    }
    Ok(())
}

fn scatter_elements(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, idx, upd, out) = (cx.input(0)?, cx.input(1)?, cx.input(2)?, cx.out(0));
    let red = reduction(cx)?;
    check_reducible(x.ty.dtype, red)?;
    super::copy(lw, x, out)?;
    let rank = x.ty.shape.len();
    let ax = ops::axis(cx.attrs().int("axis", 0)?, rank)?;
    let n = idx.ty.numel();
    if n == 0 {
        return Ok(());
    }
    let (xs, ishape) = (strides(&x.ty.shape), idx.ty.shape.clone());
    let (dt, idt, len) = (x.ty.dtype, idx.ty.dtype, x.ty.shape[ax] as i64);
    let esz = dt.size_bytes() as i64;
    lw.kernel_checked(
        vec![idx.buf, upd.buf, out.buf, Buf::Work(0)],
        1,
        true,
        |kb| {
            let (ip, up, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
            let (z, hi) = (kb.i(0), kb.i(n as i64));
            kb.for_range(z, hi, 1, |kb, p| {
                let k = load_index(kb, idt, ip, p);
                let (k, bad) = wrap(kb, k, len);
                guarded(kb, bad, 3, |kb| {
                    let c = coords(kb, p, &ishape);
                    let mut off = kb.muli(k, xs[ax]);
                    for (d, &cd) in c.iter().enumerate() {
                        if d != ax {
                            let t = kb.muli(cd, xs[d]);
                            off = kb.add(off, t);
                        }
                    }
                    let dst = kb.gep(op, off, esz);
                    let src = kb.gep(up, p, esz);
                    combine(kb, dt, red, dst, src);
                });
            });
        },
    )
}

fn scatter_nd(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, idx, upd, out) = (cx.input(0)?, cx.input(1)?, cx.input(2)?, cx.out(0));
    let red = reduction(cx)?;
    check_reducible(x.ty.dtype, red)?;
    super::copy(lw, x, out)?;
    let (d, q) = (&x.ty.shape, &idx.ty.shape);
    let k = q[q.len() - 1];
    let tuples: usize = q[..q.len() - 1].iter().product();
    let block: usize = d[k..].iter().product();
    if tuples == 0 || x.ty.numel() == 0 {
        return Ok(());
    }
    let st = strides(d);
    let dims: Vec<i64> = d[..k].iter().map(|&v| v as i64).collect();
    let (dt, idt) = (x.ty.dtype, idx.ty.dtype);
    let esz = dt.size_bytes() as i64;
    lw.kernel_checked(
        vec![idx.buf, upd.buf, out.buf, Buf::Work(0)],
        1,
        true,
        |kb| {
            let (ip, up, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
            let (z, hi) = (kb.i(0), kb.i(tuples as i64));
            kb.for_range(z, hi, 1, |kb, t| {
                let mut off = kb.i(0);
                let mut bad = kb.b.ins().iconst(I8, 0);
                let t0 = kb.muli(t, k as i64);
                for (j, &len) in dims.iter().enumerate() {
                    let jj = kb.addi(t0, j as i64);
                    let v = load_index(kb, idt, ip, jj);
                    let (v, bj) = wrap(kb, v, len);
                    bad = kb.b.ins().bor(bad, bj);
                    let s = kb.muli(v, st[j]);
                    off = kb.add(off, s);
                }
                guarded(kb, bad, 3, |kb| {
                    let dst0 = kb.gep(op, off, esz);
                    let ub = kb.muli(t, block as i64);
                    let src0 = kb.gep(up, ub, esz);
                    let (z, bl) = (kb.i(0), kb.i(block as i64));
                    kb.for_range(z, bl, 1, |kb, e| {
                        let dst = kb.gep(dst0, e, esz);
                        let src = kb.gep(src0, e, esz);
                        combine(kb, dt, red, dst, src);
                    });
                });
            });
        },
    )
}

/// OneHot: `out[.., d, ..] = idx[..] (wrapped once if negative) == d ? on
/// : off`; out-of-range indices leave the row off, like the interpreter.
fn one_hot(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (idx, vals, out) = (cx.input(0)?, cx.input(2)?, cx.out(0));
    let rank = idx.ty.shape.len();
    let ax = ops::axis(cx.attrs().int("axis", -1)?, rank + 1)?;
    let depth = out.ty.shape[ax];
    let inner: usize = idx.ty.shape[ax..].iter().product();
    let n = out.ty.numel();
    if n == 0 {
        return Ok(());
    }
    let (idt, dt) = (idx.ty.dtype, vals.ty.dtype);
    let esz = dt.size_bytes() as i64;
    lw.kernel(vec![idx.buf, vals.buf, out.buf], n, |kb| {
        let (ip, vp, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let (b, e) = (kb.begin, kb.end);
        let ty = Elt(dt).storage();
        let off = kb.b.ins().load(ty, mem(), vp, 0);
        let on = kb.b.ins().load(ty, mem(), vp, esz as i32);
        kb.for_range(b, e, 1, |kb, p| {
            // p = (outer * depth + d) * inner + r.
            let r = kb.b.ins().urem_imm_u(p, inner.max(1) as i64);
            let od = kb.b.ins().udiv_imm_u(p, inner.max(1) as i64);
            let dd = kb.b.ins().urem_imm_u(od, depth as i64);
            let o = kb.b.ins().udiv_imm_u(od, depth as i64);
            let j = kb.muli(o, inner as i64);
            let j = kb.add(j, r);
            let k = load_index(kb, idt, ip, j);
            let (k, _) = wrap(kb, k, depth as i64);
            let hit = kb.b.ins().icmp(IntCC::Equal, k, dd);
            let v = kb.b.ins().select(hit, on, off);
            let dst = kb.gep(op, p, esz);
            kb.b.ins().store(mem(), v, dst, 0);
        });
    })
}

/// Trilu with `k` read at run time: zero where `j - i` is on the wrong side
/// of `k`.
fn trilu(lw: &mut Lower, cx: &NodeCx, k: &Operand) -> Result<()> {
    let (x, out) = (cx.input(0)?, cx.out(0));
    let upper = cx.attrs().int("upper", 1)? != 0;
    let r = x.ty.shape.len();
    let (rows, cols) = (x.ty.shape[r - 2], x.ty.shape[r - 1]);
    let n = x.ty.numel();
    if n == 0 {
        return Ok(());
    }
    let (dt, kdt) = (x.ty.dtype, k.ty.dtype);
    let esz = dt.size_bytes() as i64;
    let items = n / cols.max(1);
    lw.kernel(vec![x.buf, k.buf, out.buf], items, |kb| {
        let (xp, kp, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let z = kb.i(0);
        let kv = load_index(kb, kdt, kp, z);
        // Zero bits are 0 (or +0.0) in every type; move elements as ints.
        let ty = Elt(dt).storage().as_int();
        let zero = kb.b.ins().iconst(ty, 0);
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, row| {
            let i = kb.b.ins().urem_imm_u(row, rows as i64);
            let base = kb.muli(row, cols as i64);
            let (z, c) = (kb.i(0), kb.i(cols as i64));
            kb.for_range(z, c, 1, |kb, j| {
                let p = kb.add(base, j);
                let src = kb.gep(xp, p, esz);
                let dst = kb.gep(op, p, esz);
                let v = kb.b.ins().load(ty, mem(), src, 0);
                let dji = kb.b.ins().isub(j, i);
                let cc = if upper {
                    IntCC::SignedGreaterThanOrEqual
                } else {
                    IntCC::SignedLessThanOrEqual
                };
                let keep = kb.b.ins().icmp(cc, dji, kv);
                let v = kb.b.ins().select(keep, v, zero);
                kb.b.ins().store(mem(), v, dst, 0);
            });
        });
    })
}

/// ReverseSequence: along the time axis, the first `sequence_lens[batch]`
/// elements reversed; lengths outside `[0, steps]` fail the run.
fn reverse_sequence(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, lens, out) = (cx.input(0)?, cx.input(1)?, cx.out(0));
    let b = cx.attrs().int("batch_axis", 1)?;
    let t = cx.attrs().int("time_axis", 0)?;
    ensure!(
        matches!((b, t), (0, 1) | (1, 0)),
        Invalid,
        "attributes 'batch_axis' ({b}) and 'time_axis' ({t}) must be 0 and 1 in some order"
    );
    let (b, t) = (b as usize, t as usize);
    let n = x.ty.numel();
    if n == 0 {
        return Ok(());
    }
    let st = strides(&x.ty.shape);
    let (nb, steps) = (x.ty.shape[b] as i64, x.ty.shape[t] as i64);
    let (dt, ldt) = (x.ty.dtype, lens.ty.dtype);
    let esz = dt.size_bytes() as i64;
    lw.kernel_checked(
        vec![x.buf, lens.buf, out.buf, Buf::Work(0)],
        n,
        true,
        |kb| {
            let (xp, lp, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
            let (bg, e) = (kb.begin, kb.end);
            kb.for_range(bg, e, 1, |kb, p| {
                let bq = kb.b.ins().udiv_imm_u(p, st[b]);
                let bi = kb.b.ins().urem_imm_u(bq, nb);
                let tq = kb.b.ins().udiv_imm_u(p, st[t]);
                let pos = kb.b.ins().urem_imm_u(tq, steps);
                let len = load_index(kb, ldt, lp, bi);
                let lo = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, len, 0);
                let hi = kb.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, len, steps);
                let bad = kb.b.ins().bor(lo, hi);
                guarded(kb, bad, 3, |kb| {
                    // Reversed position len - 1 - pos when pos < len.
                    let inside = kb.b.ins().icmp(IntCC::SignedLessThan, pos, len);
                    let r = kb.b.ins().isub(len, pos);
                    let r = kb.b.ins().iadd_imm_s(r, -1);
                    let delta = kb.b.ins().isub(r, pos);
                    let z = kb.i(0);
                    let delta = kb.b.ins().select(inside, delta, z);
                    let d = kb.muli(delta, st[t]);
                    let src = kb.add(p, d);
                    let sa = kb.gep(xp, src, esz);
                    let da = kb.gep(op, p, esz);
                    copy_elt(kb, dt, da, sa);
                });
            });
        },
    )
}
