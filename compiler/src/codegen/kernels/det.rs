//! Det: Gaussian elimination with partial pivoting in f64, one work item
//! per matrix, on a per-matrix copy in scratch space. Same pivot choice as
//! the interpreter (the last row of largest magnitude, NaN largest), so
//! results agree to rounding.

use cranelift_codegen::ir::InstBuilder;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F64, I8, I64};

use super::quant::to_f64;
use super::{NodeCx, Table};
use crate::codegen::builder::{Kb, mem};
use crate::codegen::lower::Lower;
use crate::error::Result;
use crate::ir::DType;

pub fn register(t: &mut Table) {
    t.add(&["Det"], det);
}

fn det(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, out) = (cx.input(0)?, cx.out(0));
    let r = x.ty.shape.len();
    let n = x.ty.shape[r - 1];
    let count = out.ty.numel();
    if count == 0 {
        return Ok(());
    }
    let (dt, od) = (x.ty.dtype, out.ty.dtype);
    let scratch = lw.scratch(count * n * n * 8);
    lw.kernel(vec![x.buf, out.buf, scratch], count, |kb| {
        let (xp, op, sp) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let (bg, e) = (kb.begin, kb.end);
        let nn = (n * n) as i64;
        kb.for_range(bg, e, 1, |kb, mi| {
            let base = kb.muli(mi, nn);
            let m = kb.gep(sp, base, 8);
            let (z, hi) = (kb.i(0), kb.i(nn));
            kb.for_range(z, hi, 1, |kb, i| {
                let s = kb.add(base, i);
                let a = kb.gep(xp, s, dt.size_bytes() as i64);
                let v = kb.load_elt(dt, a, 1);
                let v = to_f64(kb, dt, v);
                let d = kb.gep(m, i, 8);
                kb.b.ins().store(mem(), v, d, 0);
            });
            let one = kb.b.ins().f64const(1.0);
            let det = kb.var(F64, one);
            let f0 = kb.b.ins().iconst(I8, 0);
            let zero_flag = kb.var(I8, f0);
            let ni = kb.i(n as i64);
            kb.for_range(z, ni, 1, |kb, col| {
                let at = |kb: &mut Kb, row, c| {
                    let o = kb.muli(row, n as i64);
                    let o = kb.add(o, c);
                    kb.gep(m, o, 8)
                };
                // Pivot: the last row of largest |value| (NaN largest).
                let mone = kb.b.ins().f64const(-1.0);
                let best = kb.var(F64, mone);
                let piv = kb.var(I64, col);
                kb.for_range(col, ni, 1, |kb, i| {
                    let a = at(kb, i, col);
                    let v = kb.b.ins().load(F64, mem(), a, 0);
                    let av = kb.b.ins().fabs(v);
                    let b = kb.b.use_var(best);
                    let an = kb.b.ins().fcmp(FloatCC::Unordered, av, av);
                    let bn = kb.b.ins().fcmp(FloatCC::Unordered, b, b);
                    let ge = kb.b.ins().fcmp(FloatCC::GreaterThanOrEqual, av, b);
                    let f = kb.b.ins().iconst(I8, 0);
                    let ge = kb.b.ins().select(bn, f, ge);
                    let take = kb.b.ins().bor(an, ge);
                    let nb = kb.b.ins().select(take, av, b);
                    kb.b.def_var(best, nb);
                    let p = kb.b.use_var(piv);
                    let np = kb.b.ins().select(take, i, p);
                    kb.b.def_var(piv, np);
                });
                let pr = kb.b.use_var(piv);
                let pa = at(kb, pr, col);
                let p = kb.b.ins().load(F64, mem(), pa, 0);
                let zf = kb.b.ins().f64const(0.0);
                let is0 = kb.b.ins().fcmp(FloatCC::Equal, p, zf);
                let zfl = kb.b.use_var(zero_flag);
                let done = kb.b.ins().bor(zfl, is0);
                kb.b.def_var(zero_flag, done);
                let go = kb.b.ins().icmp_imm_s(IntCC::Equal, done, 0);
                kb.if_(go, |kb| {
                    let swap = kb.b.ins().icmp(IntCC::NotEqual, pr, col);
                    kb.if_(swap, |kb| {
                        kb.for_range(z, ni, 1, |kb, c| {
                            let a = at(kb, pr, c);
                            let b = at(kb, col, c);
                            let va = kb.b.ins().load(F64, mem(), a, 0);
                            let vb = kb.b.ins().load(F64, mem(), b, 0);
                            kb.b.ins().store(mem(), vb, a, 0);
                            kb.b.ins().store(mem(), va, b, 0);
                        });
                        let d = kb.b.use_var(det);
                        let d = kb.b.ins().fneg(d);
                        kb.b.def_var(det, d);
                    });
                    let d = kb.b.use_var(det);
                    let d = kb.b.ins().fmul(d, p);
                    kb.b.def_var(det, d);
                    let c1 = kb.b.ins().iadd_imm_s(col, 1);
                    kb.for_range(c1, ni, 1, |kb, rr| {
                        let a = at(kb, rr, col);
                        let v = kb.b.ins().load(F64, mem(), a, 0);
                        let f = kb.b.ins().fdiv(v, p);
                        kb.for_range(c1, ni, 1, |kb, c| {
                            let a = at(kb, rr, c);
                            let b = at(kb, col, c);
                            let va = kb.b.ins().load(F64, mem(), a, 0);
                            let vb = kb.b.ins().load(F64, mem(), b, 0);
                            let t = kb.b.ins().fmul(f, vb);
                            let r = kb.b.ins().fsub(va, t);
                            kb.b.ins().store(mem(), r, a, 0);
                        });
                    });
                });
            });
            let d = kb.b.use_var(det);
            let zfl = kb.b.use_var(zero_flag);
            let zf = kb.b.ins().f64const(0.0);
            let d = kb.b.ins().select(zfl, zf, d);
            let d = if od == DType::F64 {
                d
            } else {
                kb.b.ins().fdemote(cranelift_codegen::ir::types::F32, d)
            };
            let dst = kb.gep(op, mi, od.size_bytes() as i64);
            kb.store_elt(od, d, dst, 1);
        });
    })
}
