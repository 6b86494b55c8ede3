//! Attention on the AVX-512 GEMM microkernel. K and V are packed once per
//! (batch, kv head) into the panel layout the tiles read (Kᵀ as
//! `[⌈total/32⌉][D][32]`, V as `[⌈Dv/32⌉][total][32]`, zero padded). Then
//! each (batch, head, row block) work item computes S = Q·Kᵀ on the tiles
//! into its scores rows, runs the mask and softmax stage on each row
//! (normalizing it in place), and O = P·V on the tiles again. Where the
//! scale and mask fold into S's epilogue, that stage is one call of the
//! AVX-512 softmax row function per row.

use cranelift_codegen::ir::InstBuilder;
use cranelift_codegen::ir::types::{F32, F32X4};

use super::attention::{Fold, Rows, Slots, Spec, begin_row, score, softmax, vectorizes};
use super::gemm::{Gemm, Mat};
use super::zgemm::{self, Bases, Ranges, ZMR, ZNR};
use super::{zsoftmax, ztranspose};
use crate::codegen::builder::{Kb, mem};
use crate::codegen::lower::{Buf, Lower};
use crate::error::Result;

/// Work items wanted per node (threads take contiguous item ranges).
const WANT_ITEMS: usize = 8;

/// The two products of one (batch, head): S = Q·Kᵀ into rows of `total`
/// scores (with `fold`'s scale and `mask` in its epilogue), and O = P·V
/// from them; `None` when the microkernel cannot take them.
pub(super) fn products(
    lw: &Lower,
    s: &Spec,
    fold: Option<&Fold>,
    mask: Option<Buf>,
    q: Buf,
    scores: Buf,
    out: Buf,
) -> Option<[Gemm; 2]> {
    let gemm = |n, k, a, c| Gemm::plain(s.sq, n, k, a, c);
    let mat = |buf, rs| Mat { buf, rs, cs: 1 };
    let total = s.total as i64;
    let mut qk = gemm(s.total, s.dh, mat(q, s.qs.2), mat(scores, total));
    if let Some(f) = fold {
        qk.alpha = f.scale;
        qk.bias = f.mask.zip(mask).map(|(st, buf)| Mat {
            buf,
            rs: st[2],
            cs: st[3],
        });
    }
    let g = [
        qk,
        gemm(s.dv, s.total, mat(scores, total), mat(out, s.os.2)),
    ];
    (s.total > 0 && s.dh > 0 && s.dv > 0 && g.iter().all(|g| zgemm::fits(lw, g))).then_some(g)
}

/// Packs K and V (see the module docs); returns the buffers.
fn pack(lw: &mut Lower, s: &Spec, kr: &Rows, vr: &Rows) -> Result<(Buf, Buf)> {
    let (total, dh, dv) = (s.total, s.dh, s.dv);
    let (kset, vset) = panel_sets(s);
    let heads = s.batch * s.kvh;
    let kpack = lw.scratch(heads * kset * 4);
    let vpack = lw.scratch(heads * vset * 4);
    let kvh = s.kvh as i64;
    let tiles = ztranspose::define(lw, kr.sj * 4, (ZNR * 4) as i64)?;
    lw.kernel_calling(
        vec![kr.buf, vr.buf, kpack, vpack],
        heads,
        false,
        &tiles,
        |kb, refs| {
            let (kp, vp, kd, vd) = (kb.arg(0), kb.arg(1), kb.arg(2), kb.arg(3));
            let (b0, e0) = (kb.begin, kb.end);
            kb.for_range(b0, e0, 1, |kb, item| {
                let b = kb.b.ins().udiv_imm_u(item, kvh);
                let kh = kb.b.ins().urem_imm_u(item, kvh);
                let origin = |kb: &mut Kb, base, r: &Rows| {
                    let p = kb.gep(base, b, r.sb * 4);
                    kb.gep(p, kh, r.sh * 4)
                };
                let kbase = origin(kb, kp, kr);
                let vbase = origin(kb, vp, vr);
                let kdst = kb.gep(kd, item, (kset * 4) as i64);
                let vdst = kb.gep(vd, item, (vset * 4) as i64);
                // Key j is column j % 32 of panel j / 32; padding keys are 0.
                let (z, d_end) = (kb.i(0), kb.i(dh as i64));
                let column = |kb: &mut Kb, j| {
                    let p = kb.b.ins().ushr_imm_u(j, 5);
                    let c = kb.b.ins().band_imm_u(j, 31);
                    let dst = kb.gep(kdst, p, (dh * ZNR * 4) as i64);
                    kb.gep(dst, c, 4)
                };
                // 16x16 transpose tiles: keys j0.. (rows, masked at the end)
                // by dimensions d0.. (columns) into 16 columns of one panel.
                let tj = kb.i(total as i64);
                let t16 = ztranspose::T as i64;
                kb.for_range(z, tj, t16, |kb, j0| {
                    let src = kb.gep(kbase, j0, kr.sj * 4);
                    let dst = column(kb, j0);
                    let left = kb.b.ins().isub(tj, j0);
                    let rows = ztranspose::row_bits(kb, left);
                    for d0 in (0..dh).step_by(ztranspose::T) {
                        let cols = (1i64 << (dh - d0).min(ztranspose::T)) - 1;
                        let ctl = kb.b.ins().bor_imm_u(rows, cols);
                        let s = kb.addi(src, (d0 * 4) as i64);
                        let d = kb.addi(dst, (d0 * ZNR * 4) as i64);
                        ztranspose::call(kb, refs, s, d, ctl);
                    }
                });
                let tpad = kb.i((total.div_ceil(ZNR) * ZNR) as i64);
                kb.for_range(tj, tpad, 1, |kb, j| {
                    let dst = column(kb, j);
                    let zero = kb.b.ins().f32const(0.0);
                    kb.for_range(z, d_end, 1, |kb, d| {
                        let y = kb.gep(dst, d, (ZNR * 4) as i64);
                        kb.b.ins().store(mem(), zero, y, 0);
                    });
                });
                // V's panel p holds its columns [32p, 32p + 32) of every row.
                for p in 0..dv.div_ceil(ZNR) {
                    let cols = (dv - p * ZNR).min(ZNR);
                    let (n, pad) = (kb.i(cols as i64), kb.i((ZNR - cols) as i64));
                    let src0 = kb.addi(vbase, (p * ZNR * 4) as i64);
                    let dst0 = kb.addi(vdst, (p * total * ZNR * 4) as i64);
                    kb.for_range(z, tj, 1, |kb, j| {
                        let src = kb.gep(src0, j, vr.sj * 4);
                        let dst = kb.gep(dst0, j, (ZNR * 4) as i64);
                        kb.copy_f32(src, dst, n);
                        if cols < ZNR {
                            let tail = kb.addi(dst, (cols * 4) as i64);
                            kb.zero_f32(tail, pad);
                        }
                    });
                }
            });
        },
    )?;
    Ok((kpack, vpack))
}

/// Floats per (batch, kv head) of packed Kᵀ and of packed V.
fn panel_sets(s: &Spec) -> (usize, usize) {
    (
        s.total.div_ceil(ZNR) * s.dh * ZNR,
        s.dv.div_ceil(ZNR) * s.total * ZNR,
    )
}

/// Emits the node: `bufs` are the row-wise form's (Q, K, V, output,
/// scores, then the optional operands of `slots`); `g` is [`products`].
pub(super) fn emit(
    lw: &mut Lower,
    s: &Spec,
    fold: Option<&Fold>,
    g: &[Gemm; 2],
    (kr, vr): (&Rows, &Rows),
    mut bufs: Vec<Buf>,
    slots: Slots,
) -> Result<()> {
    let (kpack, vpack) = pack(lw, s, kr, vr)?;
    (bufs[1], bufs[2]) = (kpack, vpack);
    let (kset, vset) = panel_sets(s);
    let (sq, qh, total) = (s.sq, s.qh, s.total);
    let reps = s.qh / s.kvh;
    let mblocks = sq.div_ceil(ZMR);
    let mbpp = mblocks.div_ceil(mblocks.min(WANT_ITEMS.div_ceil(s.batch * qh)));
    let mparts = mblocks.div_ceil(mbpp);
    let plans = [
        zgemm::plan(lw, &g[0], s.qs.2, false)?,
        zgemm::plan(lw, &g[1], total as i64, false)?,
    ];
    let split = plans[0].callees.len();
    let mut callees: Vec<_> = plans.iter().flat_map(|p| p.callees.clone()).collect();
    if fold.is_some() {
        callees.push(zsoftmax::define(lw, total, true)?);
    }
    let mask_st = fold.and_then(|f| f.mask);
    lw.note_kernel(format!(
        "avx512 attention: QKᵀ and PV on {ZMR}x{ZNR} gemm tiles, Sq={sq} keys={total} D={} Dv={}, items {}x{qh}x{mparts}{}",
        s.dh,
        s.dv,
        s.batch,
        if fold.is_some() {
            ", scale and mask in the QKᵀ epilogue, avx512 softmax rows"
        } else {
            ""
        }
    ));
    let items = s.batch * qh * mparts;
    let ((qsb, qsh, _), (osb, osh, _)) = (s.qs, s.os);
    lw.kernel_calling(bufs, items, false, &callees, |kb, refs| {
        let (qp, kp, vp, op, sp) = (kb.arg(0), kb.arg(1), kb.arg(2), kb.arg(3), kb.arg(4));
        let o = slots.load(kb);
        let (b0, e0) = (kb.begin, kb.end);
        kb.for_range(b0, e0, 1, |kb, item| {
            let bh = kb.b.ins().udiv_imm_u(item, mparts as i64);
            let mpi = kb.b.ins().urem_imm_u(item, mparts as i64);
            let h = kb.b.ins().urem_imm_u(bh, qh as i64);
            let b = kb.b.ins().udiv_imm_u(bh, qh as i64);
            let kh = kb.b.ins().udiv_imm_u(h, reps as i64);
            let head = kb.muli(b, s.kvh as i64);
            let head = kb.b.ins().iadd(head, kh);
            let mb_lo = kb.muli(mpi, mbpp as i64);
            let mb_hi = kb.addi(mb_lo, mbpp as i64);
            let lim = kb.i(mblocks as i64);
            let mb_hi = kb.b.ins().smin(mb_hi, lim);
            let origin = |kb: &mut Kb, base, sb: i64, sh: i64| {
                let p = kb.gep(base, b, sb * 4);
                kb.gep(p, h, sh * 4)
            };
            let srows = kb.gep(sp, bh, (sq * total * 4) as i64);
            let mask = o.mp.zip(mask_st).map(|(mp, st)| {
                let p = kb.gep(mp, b, st[0] * 4);
                kb.gep(p, h, st[1] * 4)
            });
            let operands = [
                (
                    origin(kb, qp, qsb, qsh),
                    kb.gep(kp, head, (kset * 4) as i64),
                    srows,
                ),
                (
                    srows,
                    kb.gep(vp, head, (vset * 4) as i64),
                    origin(kb, op, osb, osh),
                ),
            ];
            let product = |kb: &mut Kb, which: usize| {
                let (gm, pl, (a, bp, c)) = (&g[which], &plans[which], operands[which]);
                let fns = if which == 0 {
                    &refs[..split]
                } else {
                    &refs[split..]
                };
                let r = Ranges {
                    p: (kb.i(0), kb.i(pl.panels as i64)),
                    mb: (mb_lo, mb_hi),
                    rows: zgemm::Rows::Linear {
                        tail_mb: kb.i(mblocks as i64 - 1),
                    },
                };
                for (kbi, &(k0, _)) in pl.blocks.iter().enumerate() {
                    let a = kb.addi(a, (k0 * 4) as i64);
                    let base = Bases {
                        a,
                        b: bp,
                        c,
                        bias: if which == 0 { mask } else { None },
                        res: None,
                    };
                    zgemm::emit_pass(kb, gm, pl, fns, &base, &r, kbi);
                }
            };
            product(kb, 0);
            let r_lo = kb.muli(mb_lo, ZMR as i64);
            let r_hi = kb.muli(mb_hi, ZMR as i64);
            let sq_end = kb.i(sq as i64);
            let r_hi = kb.b.ins().smin(r_hi, sq_end);
            kb.for_range(r_lo, r_hi, 1, |kb, i| {
                if fold.is_some() {
                    let row = kb.gep(srows, i, (total * 4) as i64);
                    let live = s.live_keys(kb, &o, b, i);
                    let f = refs[refs.len() - 1];
                    kb.b.ins().call(f, &[row, row, live]);
                    return;
                }
                let row_item = kb.muli(bh, sq as i64);
                let row_item = kb.b.ins().iadd(row_item, i);
                let r = begin_row(kb, s, &o, sp, (b, h, i), row_item);
                let (z, tj) = (kb.i(0), kb.i(total as i64));
                let lanes = if vectorizes(s) { 4 } else { 1 };
                kb.for_vec(z, tj, lanes, |kb, j, lanes| {
                    let ty = if lanes == 1 { F32 } else { F32X4 };
                    let a = kb.gep(r.srow, j, 4);
                    let d = kb.b.ins().load(ty, mem(), a, 0);
                    score(kb, s, &o, &r, j, d);
                });
                let inv = softmax(kb, s, &r);
                kb.for_vec(z, tj, 4, |kb, j, lanes| {
                    let ty = if lanes == 1 { F32 } else { F32X4 };
                    let a = kb.gep(r.srow, j, 4);
                    let p = kb.b.ins().load(ty, mem(), a, 0);
                    let iv = kb.splat(ty, inv);
                    let p = kb.b.ins().fmul(p, iv);
                    kb.b.ins().store(mem(), p, a, 0);
                });
            });
            product(kb, 1);
        });
    })
}
