//! Softmax, LogSoftmax and Hardmax: per lane a max pass, an exp-sum pass
//! and a normalize pass (ops/reduce.rs semantics: before opset 13 the input
//! is coerced to 2-D at `axis`, from 13 on a lane is one axis). Lanes are
//! independent work items; a contiguous f32 lane runs 4 wide. Also the row
//! helpers the normalization kernels share.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{InstBuilder, Type, Value};

use super::reduce::{lanes, norm_axis};
use super::{NodeCx, Table, math, zsoftmax};
use crate::codegen::builder::{Elt, Kb};
use crate::codegen::lower::Lower;
use crate::error::Result;
use crate::ir::DType;

pub fn register(t: &mut Table) {
    t.add(&["Softmax", "LogSoftmax", "Hardmax"], softmax);
}

/// A strided row of `n` elements of `dt` at byte address `base`, `stride`
/// elements apart; 4-lane access when `stride == 1` and `dt` is f32.
#[derive(Clone, Copy)]
pub struct Row {
    pub base: Value,
    pub n: Value,
    pub stride: i64,
    pub dt: DType,
}

impl Row {
    fn lanes(&self) -> i64 {
        if self.stride == 1 && self.dt == DType::F32 {
            4
        } else {
            1
        }
    }

    fn addr(&self, kb: &mut Kb, j: Value) -> Value {
        kb.gep(self.base, j, self.stride * self.dt.size_bytes() as i64)
    }

    /// Folds the row: `step(acc, x)` per element (scalar or 4-lane),
    /// `combine` merges the vector partial's lanes into the scalar one.
    pub fn fold(
        &self,
        kb: &mut Kb,
        init: f64,
        step: &dyn Fn(&mut Kb, Value, Value) -> Value,
        combine: &dyn Fn(&mut Kb, Value, Value) -> Value,
    ) -> Value {
        let ty = Elt(self.dt).compute(1);
        let l = self.lanes();
        let s0 = kb.constant(ty, init);
        let acc = kb.var(ty, s0);
        let vacc = (l > 1).then(|| {
            let v0 = kb.constant(ty.by(4).expect("vector"), init);
            kb.var(ty.by(4).expect("vector"), v0)
        });
        let lo = kb.i(0);
        let row = *self;
        kb.for_vec(lo, self.n, l, |kb, j, w| {
            let a = row.addr(kb, j);
            let x = kb.load_elt(row.dt, a, w);
            let var = if w > 1 { vacc.expect("vector") } else { acc };
            let cur = kb.b.use_var(var);
            let nv = step(kb, cur, x);
            kb.b.def_var(var, nv);
        });
        let mut r = kb.b.use_var(acc);
        if let Some(v) = vacc {
            let v = kb.b.use_var(v);
            for lane in 0..4 {
                let e = kb.b.ins().extractlane(v, lane);
                r = combine(kb, r, e);
            }
        }
        r
    }

    /// `out[j] = f(x[j])` over the row (`out` laid out like this row).
    pub fn map(&self, kb: &mut Kb, out: &Row, f: &dyn Fn(&mut Kb, Value, Type) -> Value) {
        let l = if out.lanes() == 4 { self.lanes() } else { 1 };
        let lo = kb.i(0);
        let (src, dst) = (*self, *out);
        kb.for_vec(lo, self.n, l, |kb, j, w| {
            let a = src.addr(kb, j);
            let x = kb.load_elt(src.dt, a, w);
            let ty = Elt(src.dt).compute(w);
            let y = f(kb, x, ty);
            let b = dst.addr(kb, j);
            kb.store_elt(dst.dt, y, b, w);
        });
    }
}

pub fn fadd(kb: &mut Kb, a: Value, b: Value) -> Value {
    kb.b.ins().fadd(a, b)
}

pub fn fmax(kb: &mut Kb, a: Value, b: Value) -> Value {
    kb.b.ins().fmax(a, b)
}

/// Splats a scalar to the type of `like` if that is a vector.
pub fn fit(kb: &mut Kb, s: Value, ty: Type) -> Value {
    kb.splat(ty, s)
}

#[derive(Clone, Copy, PartialEq)]
enum Norm {
    Softmax,
    LogSoftmax,
    Hardmax,
}

fn softmax(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?.clone();
    let o = cx.out(0).clone();
    let dt = x.ty.dtype;
    let shape = &x.ty.shape;
    let rank = shape.len();
    let legacy = cx.node.opset < 13;
    let a = cx.attrs().int("axis", if legacy { 1 } else { -1 })?;
    let (outer, n, inner) = if legacy && a == rank as i64 && rank > 0 {
        (shape.iter().product(), 1, 1)
    } else if rank == 0 {
        ensure!(
            a == 0 || a == -1,
            Invalid,
            "axis {a} is out of range for rank 0"
        );
        (1, 1, 1)
    } else {
        let ax = norm_axis(a, rank)?;
        if legacy {
            (
                shape[..ax].iter().product(),
                shape[ax..].iter().product(),
                1,
            )
        } else {
            lanes(shape, ax)
        }
    };
    let norm = match cx.node.op.as_str() {
        "Softmax" => Norm::Softmax,
        "LogSoftmax" => Norm::LogSoftmax,
        _ => Norm::Hardmax,
    };
    if outer * n * inner == 0 {
        return Ok(());
    }
    if lw.avx512 && dt == DType::F32 && inner == 1 && norm == Norm::Softmax {
        let f = zsoftmax::define(lw, n, false)?;
        lw.note_kernel(format!("avx512 softmax rows of {n}"));
        return lw.kernel_calling(vec![x.buf, o.buf], outer, false, &[f], |kb, refs| {
            let (xp, yp) = (kb.arg(0), kb.arg(1));
            let (begin, end) = (kb.begin, kb.end);
            kb.for_range(begin, end, 1, |kb, row| {
                let src = kb.gep(xp, row, (n * 4) as i64);
                let dst = kb.gep(yp, row, (n * 4) as i64);
                let live = kb.i(n as i64);
                kb.b.ins().call(refs[0], &[src, dst, live]);
            });
        });
    }
    let isz = dt.size_bytes() as i64;
    // f32 rows keep exp(x - m) in the output between passes.
    let stash = dt == DType::F32;
    lw.kernel(vec![x.buf, o.buf], outer * inner, |kb| {
        let (xp, yp) = (kb.arg(0), kb.arg(1));
        let (begin, end) = (kb.begin, kb.end);
        kb.for_range(begin, end, 1, |kb, item| {
            let oi = kb.b.ins().udiv_imm_u(item, inner as i64);
            let ii = kb.b.ins().urem_imm_u(item, inner as i64);
            let base = kb.muli(oi, (n * inner) as i64);
            let base = kb.add(base, ii);
            let nv = kb.i(n as i64);
            let xb = kb.gep(xp, base, isz);
            let yb = kb.gep(yp, base, isz);
            let xr = Row {
                base: xb,
                n: nv,
                stride: inner as i64,
                dt,
            };
            let yr = Row { base: yb, ..xr };
            if norm == Norm::Hardmax {
                hardmax(kb, &xr, &yr);
                return;
            }
            let m = xr.fold(kb, f64::NEG_INFINITY, &fmax, &fmax);
            let exp_sub = move |kb: &mut Kb, x: Value, ty: Type| {
                let mm = fit(kb, m, ty);
                let d = kb.b.ins().fsub(x, mm);
                math::exp_flush(kb, ty, d)
            };
            let sum = if stash {
                xr.map(kb, &yr, &exp_sub);
                yr.fold(kb, 0.0, &fadd, &fadd)
            } else {
                xr.fold(
                    kb,
                    0.0,
                    &|kb, acc, x| {
                        let ty = kb.b.func.dfg.value_type(x);
                        let e = exp_sub(kb, x, ty);
                        kb.b.ins().fadd(acc, e)
                    },
                    &fadd,
                )
            };
            match norm {
                Norm::LogSoftmax => {
                    let ls = math::log(kb, kb.b.func.dfg.value_type(sum), sum);
                    let sh = kb.b.ins().fadd(m, ls);
                    xr.map(kb, &yr, &|kb, x, ty| {
                        let s = fit(kb, sh, ty);
                        kb.b.ins().fsub(x, s)
                    });
                }
                _ if stash => {
                    yr.map(kb, &yr, &|kb, e, ty| {
                        let s = fit(kb, sum, ty);
                        kb.b.ins().fdiv(e, s)
                    });
                }
                _ => {
                    xr.map(kb, &yr, &|kb, x, ty| {
                        let e = exp_sub(kb, x, ty);
                        let s = fit(kb, sum, ty);
                        kb.b.ins().fdiv(e, s)
                    });
                }
            }
        });
    })
}

/// 1 at the first maximum (NaN counting as maximal), 0 elsewhere.
fn hardmax(kb: &mut Kb, xr: &Row, yr: &Row) {
    let ty = Elt(xr.dt).compute(1);
    let z = kb.i(0);
    let a0 = xr.addr(kb, z);
    let v0 = kb.load_elt(xr.dt, a0, 1);
    let best = kb.var(ty, v0);
    let bi = kb.var(I64, z);
    let one = kb.i(1);
    kb.for_range(one, xr.n, 1, |kb, j| {
        let a = xr.addr(kb, j);
        let v = kb.load_elt(xr.dt, a, 1);
        let b = kb.b.use_var(best);
        let gt = kb.b.ins().fcmp(FloatCC::GreaterThan, v, b);
        let vn = kb.b.ins().fcmp(FloatCC::Unordered, v, v);
        let bo = kb.b.ins().fcmp(FloatCC::Ordered, b, b);
        let nb = kb.b.ins().band(vn, bo);
        let better = kb.b.ins().bor(gt, nb);
        let n = kb.b.ins().select(better, v, b);
        kb.b.def_var(best, n);
        let cur = kb.b.use_var(bi);
        let ni = kb.b.ins().select(better, j, cur);
        kb.b.def_var(bi, ni);
    });
    let bi = kb.b.use_var(bi);
    xr.map(kb, yr, &|kb, _, t| kb.constant(t, 0.0));
    let a = yr.addr(kb, bi);
    let onef = kb.constant(ty, 1.0);
    kb.store_elt(yr.dt, onef, a, 1);
}
