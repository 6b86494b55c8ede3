//! MatMulInteger and QLinearMatMul: batched, broadcasting integer matmul
//! (scalar code, one work item per output row) with zero points and scales
//! that broadcast numpy-style. MatMulInteger accumulates in wrapping i32
//! like the interpreter; QLinearMatMul requantizes in f64 with the scale
//! product and quotient rounded to the scales' promoted dtype (f16, bf16,
//! f32 or f64).

use cranelift_codegen::ir::types::{F32, F64, I32};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::quant::to_f64;
use super::{NodeCx, Table};
use crate::codegen::builder::Kb;
use crate::codegen::lower::{Lower, Operand};
use crate::error::Result;
use crate::ir::DType;

pub fn register(t: &mut Table) {
    t.add(&["MatMulInteger"], matmul_integer);
    t.add(&["QLinearMatMul"], qlinear_matmul);
}

/// Element strides of a tensor of `shape` broadcast to `to`; errors when it
/// does not broadcast.
fn bstrides(shape: &[usize], to: &[usize], what: &str) -> Result<Vec<i64>> {
    ensure!(
        shape.len() <= to.len()
            && shape
                .iter()
                .rev()
                .zip(to.iter().rev())
                .all(|(&s, &t)| s == 1 || s == t),
        Invalid,
        "{what} of shape {shape:?} does not broadcast to {to:?}"
    );
    let mut st = vec![0i64; to.len()];
    let mut step = 1i64;
    for (k, &d) in shape.iter().enumerate().rev() {
        if d != 1 {
            st[to.len() - shape.len() + k] = step;
        }
        step *= d as i64;
    }
    Ok(st)
}

/// A broadcast operand: where it lives, its dtype and its strides over the
/// loop dimensions (batch.., i, k) or (batch.., k, j) or (batch.., i, j).
struct Arg {
    op: Operand,
    st: Vec<i64>,
}

impl Arg {
    fn new(op: &Operand, shape: &[usize], to: &[usize], what: &str) -> Result<Arg> {
        Ok(Arg {
            op: op.clone(),
            st: bstrides(shape, to, what)?,
        })
    }
}

/// Shapes of a matmul with 1-D operands promoted: (a as [.., m, k], b as
/// [.., k, n], batch).
fn plan(a: &[usize], b: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let a2 = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2 = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (ra, rb) = (a2.len(), b2.len());
    let nb = (ra - 2).max(rb - 2);
    let mut batch = vec![1usize; nb];
    for (sh, r) in [(&a2, ra), (&b2, rb)] {
        for (d, &v) in sh[..r - 2].iter().enumerate() {
            let j = nb - (r - 2) + d;
            if v != 1 {
                batch[j] = v;
            }
        }
    }
    (a2, b2, batch)
}

fn with(batch: &[usize], x: usize, y: usize) -> Vec<usize> {
    batch.iter().copied().chain([x, y]).collect()
}

/// A zero point shaped like the interpreter's: a 1-D point on an operand
/// of rank >= 2 applies per row when `rows`.
fn zp_shape(z: &Operand, operand_rank: usize, rows: bool) -> Vec<usize> {
    let s = &z.ty.shape;
    if z.ty.numel() == 1 {
        vec![]
    } else if rows && s.len() == 1 && operand_rank >= 2 {
        vec![s[0], 1]
    } else {
        s.clone()
    }
}

/// Offset (elements) of an operand at loop coordinates.
fn offset(kb: &mut Kb, st: &[i64], coords: &[Value]) -> Value {
    let mut o = kb.i(0);
    for (&s, &c) in st.iter().zip(coords) {
        if s != 0 {
            let t = kb.muli(c, s);
            o = kb.add(o, t);
        }
    }
    o
}

fn load(kb: &mut Kb, a: &Arg, ptr: Value, coords: &[Value]) -> Value {
    let o = offset(kb, &a.st, coords);
    let addr = kb.gep(ptr, o, a.op.ty.dtype.size_bytes() as i64);
    kb.load_elt(a.op.ty.dtype, addr, 1)
}

/// The shared loop: for each output row (batch.., i) and column j,
/// `acc = sum_k (a - za)(b - zb)` in wrapping i32, then `emit(kb, acc,
/// coords (batch.., i, j), ptrs of extra)` stores the result.
#[allow(clippy::too_many_arguments)]
fn int_matmul(
    lw: &mut Lower,
    a: Arg,
    b: Arg,
    za: Option<Arg>,
    zb: Option<Arg>,
    extra: &[&Arg],
    out: &Operand,
    batch: &[usize],
    (m, k, n): (usize, usize, usize),
    emit: impl Fn(&mut Kb, Value, &[Value], &[Value], Value),
) -> Result<()> {
    let nbatch: usize = batch.iter().product();
    let rows = nbatch * m;
    if rows * n == 0 {
        return Ok(());
    }
    let mut args: Vec<&Arg> = vec![&a, &b];
    args.extend(za.iter());
    args.extend(zb.iter());
    let n_mm = args.len();
    args.extend(extra.iter().copied());
    let mut bufs: Vec<_> = args.iter().map(|x| x.op.buf).collect();
    bufs.push(out.buf);
    let batch = batch.to_vec();
    let (has_za, has_zb) = (za.is_some(), zb.is_some());
    lw.kernel(bufs, rows, |kb| {
        let ptrs: Vec<Value> = (0..args.len()).map(|j| kb.arg(j)).collect();
        let op = kb.arg(args.len());
        let (bg, e) = (kb.begin, kb.end);
        kb.for_range(bg, e, 1, |kb, row| {
            let i = kb.b.ins().urem_imm_u(row, m as i64);
            let mut rem = kb.b.ins().udiv_imm_u(row, m as i64);
            let mut bc = vec![rem; batch.len()];
            for d in (0..batch.len()).rev() {
                if d == 0 {
                    bc[d] = rem;
                } else {
                    bc[d] = kb.b.ins().urem_imm_u(rem, batch[d] as i64);
                    rem = kb.b.ins().udiv_imm_u(rem, batch[d] as i64);
                }
            }
            let (z, nn, kk) = (kb.i(0), kb.i(n as i64), kb.i(k as i64));
            kb.for_range(z, nn, 1, |kb, j| {
                let zero = kb.b.ins().iconst(I32, 0);
                let acc = kb.var(I32, zero);
                kb.for_range(z, kk, 1, |kb, kx| {
                    let ca: Vec<Value> = bc.iter().copied().chain([i, kx]).collect();
                    let cb: Vec<Value> = bc.iter().copied().chain([kx, j]).collect();
                    let mut av = load(kb, args[0], ptrs[0], &ca);
                    let mut bv = load(kb, args[1], ptrs[1], &cb);
                    let mut p = 2;
                    if has_za {
                        let zv = load(kb, args[p], ptrs[p], &ca);
                        av = kb.b.ins().isub(av, zv);
                        p += 1;
                    }
                    if has_zb {
                        let zv = load(kb, args[p], ptrs[p], &cb);
                        bv = kb.b.ins().isub(bv, zv);
                    }
                    let pr = kb.b.ins().imul(av, bv);
                    let s = kb.b.use_var(acc);
                    let s = kb.b.ins().iadd(s, pr);
                    kb.b.def_var(acc, s);
                });
                let s = kb.b.use_var(acc);
                let co: Vec<Value> = bc.iter().copied().chain([i, j]).collect();
                let row_j = kb.muli(row, n as i64);
                let flat = kb.add(row_j, j);
                let dst = kb.gep(op, flat, out.ty.dtype.size_bytes() as i64);
                emit(kb, s, &co, &ptrs[n_mm..], dst);
            });
        });
    })
}

fn opt<'a>(cx: &'a NodeCx, i: usize) -> Option<&'a Operand> {
    cx.ins.get(i).and_then(|o| o.as_ref())
}

fn matmul_integer(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (a, b, out) = (cx.input(0)?, cx.input(1)?, cx.out(0));
    let (a2, b2, batch) = plan(&a.ty.shape, &b.ty.shape);
    let (m, k, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
    let (ta, tb) = (with(&batch, m, k), with(&batch, k, n));
    let aa = Arg::new(a, &a2, &ta, "A")?;
    let ba = Arg::new(b, &b2, &tb, "B")?;
    let za = opt(cx, 2)
        .map(|z| Arg::new(z, &zp_shape(z, a.ty.shape.len(), true), &ta, "a_zero_point"))
        .transpose()?;
    let zb = opt(cx, 3)
        .map(|z| {
            Arg::new(
                z,
                &zp_shape(z, b.ty.shape.len(), false),
                &tb,
                "b_zero_point",
            )
        })
        .transpose()?;
    int_matmul(
        lw,
        aa,
        ba,
        za,
        zb,
        &[],
        out,
        &batch,
        (m, k, n),
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

/// Rounds an f64 to `d`'s precision (f64, f32, f16 or bf16; the narrow
/// ones through f32, exact for the products of two half scales).
fn round_to(kb: &mut Kb, d: DType, v: Value) -> Value {
    if d == DType::F64 {
        return v;
    }
    let r = kb.b.ins().fdemote(F32, v);
    let r = kb.round_to_half(d, r);
    kb.b.ins().fpromote(F64, r)
}

fn qlinear_matmul(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (a, b, out) = (cx.input(0)?, cx.input(3)?, cx.out(0));
    let (sa, sb, sy, zy) = (cx.input(1)?, cx.input(4)?, cx.input(6)?, cx.input(7)?);
    let d = promote(promote(sa.ty.dtype, sb.ty.dtype), sy.ty.dtype);
    let (a2, b2, batch) = plan(&a.ty.shape, &b.ty.shape);
    let (m, k, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
    let (ta, tb) = (with(&batch, m, k), with(&batch, k, n));
    let aa = Arg::new(a, &a2, &ta, "a")?;
    let ba = Arg::new(b, &b2, &tb, "b")?;
    let za = opt(cx, 2)
        .map(|z| Arg::new(z, &zp_shape(z, a.ty.shape.len(), true), &ta, "a_zero_point"))
        .transpose()?;
    let zb = opt(cx, 5)
        .map(|z| {
            Arg::new(
                z,
                &zp_shape(z, b.ty.shape.len(), false),
                &tb,
                "b_zero_point",
            )
        })
        .transpose()?;
    // Scales broadcast against the product, whose dimensions a 1-D operand
    // dropped: strides over the actual output shape, 0 on dropped dims.
    let oshape = &out.ty.shape;
    let to_loop = |p: &Operand, rank: usize, rows: bool, what: &str| -> Result<Arg> {
        let s = zp_shape(p, rank, rows);
        let st = bstrides(&s, oshape, what)?;
        let mut full = st[..batch.len()].to_vec();
        let mut rest = st[batch.len()..].iter();
        let si = if a.ty.shape.len() > 1 {
            *rest.next().unwrap_or(&0)
        } else {
            0
        };
        let sj = if b.ty.shape.len() > 1 {
            *rest.next().unwrap_or(&0)
        } else {
            0
        };
        full.extend([si, sj]);
        Ok(Arg {
            op: p.clone(),
            st: full,
        })
    };
    let ps = [
        to_loop(sa, a.ty.shape.len(), true, "a_scale")?,
        to_loop(sb, b.ty.shape.len(), false, "b_scale")?,
        to_loop(sy, oshape.len(), true, "y_scale")?,
        to_loop(zy, oshape.len(), true, "y_zero_point")?,
    ];
    let od = out.ty.dtype;
    int_matmul(
        lw,
        aa,
        ba,
        za,
        zb,
        &[&ps[0], &ps[1], &ps[2], &ps[3]],
        out,
        &batch,
        (m, k, n),
        |kb, s, co, ptrs, dst| {
            let vals: Vec<Value> = (0..4)
                .map(|q| {
                    let v = load(kb, &ps[q], ptrs[q], co);
                    to_f64(kb, ps[q].op.ty.dtype, v)
                })
                .collect();
            let sab = kb.b.ins().fmul(vals[0], vals[1]);
            let sab = round_to(kb, d, sab);
            let mult = kb.b.ins().fdiv(sab, vals[2]);
            let mult = round_to(kb, d, mult);
            let acc = kb.b.ins().fcvt_from_sint(F64, s);
            let y = kb.b.ins().fmul(acc, mult);
            let y = kb.b.ins().fadd(y, vals[3]);
            let q = super::quant::saturate(kb, od, y);
            kb.store_elt(od, q, dst, 1);
        },
    )
}
