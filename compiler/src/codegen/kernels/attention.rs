//! ONNX `Attention` (what the fuse pass turns BERT-style attention into):
//! one work item per (batch, head, query row) computes the scaled scores
//! against every key (f32x4 dot products), adds the mask, applies causal
//! masking, takes a numerically stable softmax and accumulates the weighted
//! values straight into the output row. Scores live in per-item scratch.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32, F32X4};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::math;
use super::{NodeCx, Table};
use crate::codegen::builder::{Kb, mem};
use crate::codegen::lower::Lower;
use crate::error::Result;
use crate::ir::DType;

pub fn register(t: &mut Table) {
    t.add(&["Attention"], attention);
}

/// Element strides (batch, head, sequence) of a Q/K/V operand; the head
/// dimension is contiguous.
fn qkv_strides(shape: &[usize], heads: usize) -> (i64, i64, i64, usize, usize) {
    if shape.len() == 3 {
        let (s, hd) = (shape[1], shape[2]);
        let d = hd / heads;
        ((s * hd) as i64, d as i64, hd as i64, s, d)
    } else {
        let (h, s, d) = (shape[1], shape[2], shape[3]);
        ((h * s * d) as i64, (s * d) as i64, d as i64, s, d)
    }
}

fn attention(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (q, k, v) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let a = cx.attrs();
    if q.ty.dtype != DType::F32 {
        bail!(
            Unsupported,
            "Attention on {} (native Attention is f32)",
            q.ty.dtype
        );
    }
    if cx.ins.iter().skip(4).any(Option::is_some) {
        bail!(
            Unsupported,
            "Attention with a key/value cache or nonpad_kv_seqlen"
        );
    }
    if cx.outs.len() > 1 {
        bail!(
            Unsupported,
            "Attention's optional outputs (present key/value, qk)"
        );
    }
    if a.float("softcap", 0.0)? != 0.0
        || a.int("left_window_size", -1)? >= 0
        || a.int("right_window_size", -1)? >= 0
    {
        bail!(Unsupported, "Attention with softcap or a sliding window");
    }
    let rank = q.ty.shape.len();
    let (qh, kvh) = if rank == 3 {
        (
            a.int("q_num_heads", 0)? as usize,
            a.int("kv_num_heads", 0)? as usize,
        )
    } else {
        (q.ty.shape[1], k.ty.shape[1])
    };
    let batch = q.ty.shape[0];
    let (qsb, qsh, qsi, sq, dh) = qkv_strides(&q.ty.shape, qh);
    let (ksb, ksh, ksj, total, _) = qkv_strides(&k.ty.shape, kvh);
    let (vsb, vsh, vsj, _, dv) = qkv_strides(&v.ty.shape, kvh);
    let out = cx.out(0);
    let (osb, osh, osi, _, _) = qkv_strides(&out.ty.shape, qh);
    let reps = qh / kvh;
    let scale = match a.float_opt("scale")? {
        Some(s) => s as f64,
        None => 1.0 / (dh as f64).sqrt(),
    };
    let causal = a.int("is_causal", 0)? != 0;
    // The mask broadcasts (right-aligned) to [B, H, Sq, total].
    let mask = cx.ins.get(3).and_then(|m| m.clone());
    let mask_info = match &mask {
        Some(m) => {
            let s = &m.ty.shape;
            if s.last().copied() != Some(total) {
                bail!(Unsupported, "an attn_mask shorter than the key length");
            }
            let mut st = [0i64; 4];
            let mut acc = 1i64;
            for (i, &d) in s.iter().enumerate().rev() {
                let j = 4 - (s.len() - i);
                if d != 1 {
                    st[j] = acc;
                }
                acc *= d as i64;
            }
            Some((m.ty.dtype == DType::Bool, st))
        }
        None => None,
    };
    let scores = lw.scratch(batch * qh * sq * total * 4);
    let mut bufs = vec![q.buf, k.buf, v.buf, out.buf, scores];
    if let Some(m) = &mask {
        bufs.push(m.buf);
    }
    lw.kernel(bufs, batch * qh * sq, |kb| {
        let (qp, kp, vp, op, sp) = (kb.arg(0), kb.arg(1), kb.arg(2), kb.arg(3), kb.arg(4));
        let mp = mask_info.map(|_| kb.arg(5));
        let (b0, e0) = (kb.begin, kb.end);
        kb.for_range(b0, e0, 1, |kb, item| {
            let i = kb.b.ins().urem_imm_u(item, sq as i64);
            let bh = kb.b.ins().udiv_imm_u(item, sq as i64);
            let h = kb.b.ins().urem_imm_u(bh, qh as i64);
            let b = kb.b.ins().udiv_imm_u(bh, qh as i64);
            let kh = kb.b.ins().udiv_imm_u(h, reps as i64);
            let row = |kb: &mut Kb, base: Value, sb: i64, sh: i64, hh: Value| {
                let p = kb.gep(base, b, sb * 4);
                kb.gep(p, hh, sh * 4)
            };
            let qrow = row(kb, qp, qsb, qsh, h);
            let qrow = kb.gep(qrow, i, qsi * 4);
            let kbase = row(kb, kp, ksb, ksh, kh);
            let vbase = row(kb, vp, vsb, vsh, kh);
            let orow = row(kb, op, osb, osh, h);
            let orow = kb.gep(orow, i, osi * 4);
            let srow = kb.gep(sp, item, (total * 4) as i64);
            // Scores and their max.
            let ninf = kb.b.ins().f32const(f32::NEG_INFINITY);
            let maxv = kb.var(F32, ninf);
            let z = kb.i(0);
            let tj = kb.i(total as i64);
            kb.for_range(z, tj, 1, |kb, j| {
                let krow = kb.gep(kbase, j, ksj * 4);
                let d = dot(kb, qrow, krow, dh);
                let sc = kb.b.ins().f32const(scale as f32);
                let mut x = kb.b.ins().fmul(d, sc);
                if let (Some((is_bool, st)), Some(mp)) = (mask_info, mp) {
                    let mut off = kb.i(0);
                    for (idx, s) in [b, h, i, j].into_iter().zip(st) {
                        if s != 0 {
                            let t = kb.muli(idx, s);
                            off = kb.b.ins().iadd(off, t);
                        }
                    }
                    if is_bool {
                        let ma = kb.gep(mp, off, 1);
                        let keep = kb.load_elt(DType::Bool, ma, 1);
                        let keep = kb.b.ins().icmp_imm_s(
                            cranelift_codegen::ir::condcodes::IntCC::NotEqual,
                            keep,
                            0,
                        );
                        x = kb.b.ins().select(keep, x, ninf);
                    } else {
                        let ma = kb.gep(mp, off, 4);
                        let m = kb.b.ins().load(F32, mem(), ma, 0);
                        x = kb.b.ins().fadd(x, m);
                    }
                }
                if causal {
                    // Key j is visible to query i when j <= i (no cache).
                    let vis = kb.b.ins().icmp(
                        cranelift_codegen::ir::condcodes::IntCC::SignedLessThanOrEqual,
                        j,
                        i,
                    );
                    x = kb.b.ins().select(vis, x, ninf);
                }
                let sa = kb.gep(srow, j, 4);
                kb.b.ins().store(mem(), x, sa, 0);
                let m = kb.b.use_var(maxv);
                let m = kb.b.ins().fmax(m, x);
                kb.b.def_var(maxv, m);
            });
            // exp(x - max) and the sum; a fully masked row gives zeros.
            let m = kb.b.use_var(maxv);
            let all_masked = kb.b.ins().fcmp(FloatCC::Equal, m, ninf);
            let zero = kb.b.ins().f32const(0.0);
            let m = kb.b.ins().select(all_masked, zero, m);
            let sum = kb.var(F32, zero);
            let z = kb.i(0);
            kb.for_range(z, tj, 1, |kb, j| {
                let sa = kb.gep(srow, j, 4);
                let x = kb.b.ins().load(F32, mem(), sa, 0);
                let x = kb.b.ins().fsub(x, m);
                let p = math::exp(kb, F32, x);
                kb.b.ins().store(mem(), p, sa, 0);
                let s = kb.b.use_var(sum);
                let s = kb.b.ins().fadd(s, p);
                kb.b.def_var(sum, s);
            });
            let s = kb.b.use_var(sum);
            let pos = kb.b.ins().fcmp(FloatCC::GreaterThan, s, zero);
            let one = kb.b.ins().f32const(1.0);
            let inv = kb.b.ins().fdiv(one, s);
            let inv = kb.b.ins().select(pos, inv, zero);
            // y = sum_j p_j v_j, scaled by 1/sum at the end.
            let z = kb.i(0);
            let de = kb.i(dv as i64);
            kb.for_vec(z, de, 4, |kb, e, l| {
                let ty = if l > 1 { F32X4 } else { F32 };
                let init = kb.constant(ty, 0.0);
                let acc = kb.var(ty, init);
                let z = kb.i(0);
                kb.for_range(z, tj, 1, |kb, j| {
                    let sa = kb.gep(srow, j, 4);
                    let p = kb.b.ins().load(F32, mem(), sa, 0);
                    let p = kb.splat(ty, p);
                    let vrow = kb.gep(vbase, j, vsj * 4);
                    let va = kb.gep(vrow, e, 4);
                    let vv = kb.b.ins().load(ty, mem(), va, 0);
                    let a = kb.b.use_var(acc);
                    let a = kb.fmadd(p, vv, a);
                    kb.b.def_var(acc, a);
                });
                let a = kb.b.use_var(acc);
                let iv = kb.splat(ty, inv);
                let y = kb.b.ins().fmul(a, iv);
                let oa = kb.gep(orow, e, 4);
                kb.b.ins().store(mem(), y, oa, 0);
            });
        });
    })
}

/// Dot product of two contiguous f32 rows of length `n`.
fn dot(kb: &mut Kb, a: Value, b: Value, n: usize) -> Value {
    let zero = kb.constant(F32X4, 0.0);
    let acc = kb.var(F32X4, zero);
    let z = kb.i(0);
    let full = kb.i((n - n % 4) as i64);
    kb.for_range(z, full, 4, |kb, d| {
        let x = kb.gep(a, d, 4);
        let y = kb.gep(b, d, 4);
        let x = kb.b.ins().load(F32X4, mem(), x, 0);
        let y = kb.b.ins().load(F32X4, mem(), y, 0);
        let s = kb.b.use_var(acc);
        let s = kb.fmadd(x, y, s);
        kb.b.def_var(acc, s);
    });
    let v = kb.b.use_var(acc);
    let mut s = kb.b.ins().extractlane(v, 0);
    for l in 1..4 {
        let x = kb.b.ins().extractlane(v, l);
        s = kb.b.ins().fadd(s, x);
    }
    for d in n - n % 4..n {
        let x = kb.b.ins().load(F32, mem(), a, (d * 4) as i32);
        let y = kb.b.ins().load(F32, mem(), b, (d * 4) as i32);
        s = kb.fmadd(x, y, s);
    }
    s
}
