//! TopK: for each lane, the k first elements in the interpreter's order
//! (by value, largest or smallest first; NaN above every number; ties by
//! lower index), always sorted. Selection without scratch: the r-th pick is
//! the best element strictly after the (r-1)-th in that total order, so a
//! lane costs k * n branch-free compares. One work item per lane.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{I8, I64};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::{NodeCx, Table};
use crate::codegen::builder::{Elt, Kb};
use crate::codegen::lower::Lower;
use crate::error::Result;
use crate::ir::DType;

pub fn register(t: &mut Table) {
    t.add(&["TopK"], topk);
}

/// Whether (va, ia) comes before (vb, ib).
fn before(kb: &mut Kb, dt: DType, largest: bool, a: (Value, Value), b: (Value, Value)) -> Value {
    let (va, ia) = a;
    let (vb, ib) = b;
    let idx_lt = kb.b.ins().icmp(IntCC::SignedLessThan, ia, ib);
    if dt.is_float() {
        let an = kb.b.ins().fcmp(FloatCC::Unordered, va, va);
        let bn = kb.b.ins().fcmp(FloatCC::Unordered, vb, vb);
        let cc = if largest {
            FloatCC::GreaterThan
        } else {
            FloatCC::LessThan
        };
        let strict = kb.b.ins().fcmp(cc, va, vb);
        let eq = kb.b.ins().fcmp(FloatCC::Equal, va, vb);
        let tie = kb.b.ins().band(eq, idx_lt);
        let num = kb.b.ins().bor(strict, tie);
        // NaN first when largest, last when smallest; NaN vs NaN by index.
        let both = kb.b.ins().band(an, bn);
        let (first, second) = if largest { (an, bn) } else { (bn, an) };
        let f = kb.b.ins().iconst(I8, 0);
        let r = kb.b.ins().select(second, f, num);
        let t = kb.b.ins().iconst(I8, 1);
        let r = kb.b.ins().select(first, t, r);
        kb.b.ins().select(both, idx_lt, r)
    } else {
        let s = Elt(dt).signed();
        let cc = match (largest, s) {
            (true, true) => IntCC::SignedGreaterThan,
            (true, false) => IntCC::UnsignedGreaterThan,
            (false, true) => IntCC::SignedLessThan,
            (false, false) => IntCC::UnsignedLessThan,
        };
        let strict = kb.b.ins().icmp(cc, va, vb);
        let eq = kb.b.ins().icmp(IntCC::Equal, va, vb);
        let tie = kb.b.ins().band(eq, idx_lt);
        kb.b.ins().bor(strict, tie)
    }
}

fn topk(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?;
    let (vals, idxs) = (cx.out(0), cx.out(1));
    let rank = x.ty.shape.len();
    let ax = crate::ops::axis(cx.attrs().int("axis", -1)?, rank)?;
    let largest = cx.attrs().int("largest", 1)? != 0;
    let k = vals.ty.shape[ax];
    let n = x.ty.shape[ax];
    let outer: usize = x.ty.shape[..ax].iter().product();
    let inner: usize = x.ty.shape[ax + 1..].iter().product();
    let lanes = outer * inner;
    if lanes * k == 0 {
        return Ok(());
    }
    let dt = x.ty.dtype;
    let esz = dt.size_bytes() as i64;
    let cty = Elt(dt).compute(1);
    lw.kernel(vec![x.buf, vals.buf, idxs.buf], lanes, |kb| {
        let (xp, vp, ip) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let (bg, e) = (kb.begin, kb.end);
        kb.for_range(bg, e, 1, |kb, lane| {
            let o = kb.b.ins().udiv_imm_u(lane, inner as i64);
            let i = kb.b.ins().urem_imm_u(lane, inner as i64);
            // Element j of the lane is at (o * n + j) * inner + i.
            let xbase = kb.muli(o, (n * inner) as i64);
            let xbase = kb.add(xbase, i);
            let obase = kb.muli(o, (k * inner) as i64);
            let obase = kb.add(obase, i);
            let z = kb.i(0);
            let zv = kb.constant(cty, 0.0);
            let pv = kb.var(cty, zv);
            let m1 = kb.i(-1);
            let pi = kb.var(I64, m1);
            let (kk, nn) = (kb.i(k as i64), kb.i(n as i64));
            kb.for_range(z, kk, 1, |kb, r| {
                let bv = kb.var(cty, zv);
                let bi = kb.var(I64, m1);
                kb.for_range(z, nn, 1, |kb, j| {
                    let p = kb.muli(j, inner as i64);
                    let p = kb.add(xbase, p);
                    let a = kb.gep(xp, p, esz);
                    let v = kb.load_elt(dt, a, 1);
                    let (prv, pri) = (kb.b.use_var(pv), kb.b.use_var(pi));
                    let first = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, pri, 0);
                    let after = before(kb, dt, largest, (prv, pri), (v, j));
                    let cand = kb.b.ins().bor(first, after);
                    let (bvv, biv) = (kb.b.use_var(bv), kb.b.use_var(bi));
                    let none = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, biv, 0);
                    let better = before(kb, dt, largest, (v, j), (bvv, biv));
                    let better = kb.b.ins().bor(none, better);
                    let take = kb.b.ins().band(cand, better);
                    let nv = kb.b.ins().select(take, v, bvv);
                    let ni = kb.b.ins().select(take, j, biv);
                    kb.b.def_var(bv, nv);
                    kb.b.def_var(bi, ni);
                });
                let (bvv, biv) = (kb.b.use_var(bv), kb.b.use_var(bi));
                kb.b.def_var(pv, bvv);
                kb.b.def_var(pi, biv);
                let q = kb.muli(r, inner as i64);
                let q = kb.add(obase, q);
                let va = kb.gep(vp, q, esz);
                kb.store_elt(dt, bvv, va, 1);
                let ia = kb.gep(ip, q, 8);
                kb.store_elt(DType::I64, biv, ia, 1);
            });
        });
    })
}
