//! The CLIF driver of the aarch64 machine-code GEMM microkernels
//! (`sgemm_sve`, `sgemm_neon`): it walks column panels and row blocks and
//! calls a tile function per (panel, row block, depth block).
//!
//! B is packed in panels of `nr` columns (`[N/nr][K][nr]` f32, zero
//! padded; other element sizes and depth groupings per [`Packing`]).
//! The depth is blocked so a panel's block (`kc x nr` floats) stays in L1
//! while the driver walks the rows; the tile function starts its
//! accumulators at zero (first depth block) or from C (later ones) and
//! runs the epilogue on the last one. Work items are (batch element,
//! group of panels, part of the row blocks), at least 8 when the shape
//! allows.
//!
//! Tile function ABI (AAPCS64): `(a, b, c, bias, residual, ctl)` with
//! pointers at the tile's origin and `ctl` = valid columns of the panel
//! (bits 0-31) | load C (bit 32) | epilogue (bit 33) | depth (bits 34-63).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, F32X4, I64};
use cranelift_codegen::ir::{AbiParam, InstBuilder, Signature, Value};
use cranelift_module::FuncId;

use super::gemm::{Act, Gemm, Mat};
use crate::codegen::builder::{Kb, mem};
use crate::codegen::lower::{Buf, Lower};
use crate::error::{Error, Result};

/// Activations applied in registers.
pub fn in_registers(act: Act) -> bool {
    matches!(act, Act::None | Act::Relu | Act::Clip(..))
}

/// The compile-time shape of one tile function (strides in elements).
pub struct Tile {
    pub mr: usize,
    pub lda: i64,
    pub ldc: i64,
    /// Row stride and whether columns are contiguous (else one value per
    /// row, broadcast).
    pub bias: Option<(i64, bool)>,
    pub beta: f32,
    pub res: Option<(i64, bool)>,
    pub alpha: f32,
    pub act: Act,
}

/// How packed B is laid out: element bytes, and depths per group (a
/// panel's depth is padded to whole groups, and depth blocks are whole
/// groups).
#[derive(Clone, Copy, Debug)]
pub struct Packing {
    pub elt: usize,
    pub kq: usize,
}

impl Packing {
    /// `[N/nr][K][nr]` f32.
    pub const F32: Packing = Packing { elt: 4, kq: 1 };

    /// Bytes of one panel of depth `k`.
    fn panel_bytes(self, k: usize, nr: usize) -> usize {
        k.div_ceil(self.kq) * self.kq * nr * self.elt
    }
}

/// The tile functions of one GEMM node and their blocking.
struct Tiles {
    /// Rows of a full tile and panel width (floats).
    mr: usize,
    nr: usize,
    /// Tile functions for full row blocks and for the last (partial) one;
    /// the same function when `mr` divides M.
    full: FuncId,
    tail: FuncId,
    /// Whether the tile functions apply the activation themselves (else
    /// it runs here over each stored tile while it is in L1).
    act_in_regs: bool,
    packing: Packing,
}

/// Depth block: a panel block of `kc x nr` elements fills about half of
/// L1; a multiple of 4 and of the packing's depth group.
fn depth_block(lw: &Lower, k: usize, nr: usize, pk: Packing) -> usize {
    let q = pk.kq.max(4);
    let kc = ((lw.l1d / 2) / (nr * pk.elt)).max(64) / q * q;
    k.min(kc)
}

/// How the work splits: (column-panel groups, row-block parts) per batch
/// element; row parts small enough that their A block stays in L2.
fn split(batch: usize, panels: usize, mblocks: usize, mr: usize, kc: usize) -> (usize, usize) {
    const WANT: usize = 8;
    let max_mb = ((256usize << 10) / (mr * kc * 4)).max(1);
    let mut mparts = mblocks.div_ceil(max_mb);
    let mut groups = 1;
    if batch * mparts < WANT {
        groups = panels.min(WANT.div_ceil(batch * mparts));
    }
    if batch * mparts * groups < WANT {
        mparts = mblocks.min(WANT.div_ceil(batch * groups)).max(mparts);
    }
    let ppg = panels.div_ceil(groups);
    let mbpp = mblocks.div_ceil(mparts);
    (panels.div_ceil(ppg), mblocks.div_ceil(mbpp))
}

/// C = epilogue(A · packed B) through the tile functions `t`; `packed`
/// holds one panel set per batch element.
fn drive(lw: &mut Lower, g: &Gemm, packed: Buf, t: &Tiles) -> Result<()> {
    let (m, n, k, mr, nr) = (g.m, g.n, g.k, t.mr, t.nr);
    let panels = n.div_ceil(nr);
    let mblocks = m.div_ceil(mr);
    let pk = t.packing;
    let kc = depth_block(lw, k, nr, pk);
    let kblocks = k.div_ceil(kc);
    let klast = k - (kblocks - 1) * kc;
    let (groups, mparts) = split(g.batch, panels, mblocks, mr, kc);
    let ppg = panels.div_ceil(groups);
    let mbpp = mblocks.div_ceil(mparts);
    let tail_rows = m - (mblocks - 1) * mr;
    let panel_bytes = pk.panel_bytes(k, nr) as i64;
    let pset = panels as i64 * panel_bytes;
    let offs = lw.data(
        g.offsets
            .iter()
            .flat_map(|o| {
                let o = [o[0], o[1] * pset, o[2], o[3], o[4]];
                o.into_iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<_>>()
            })
            .collect(),
    )?;
    let mut bufs = vec![g.a.buf, packed, g.c.buf, offs];
    let bias_arg = g.bias.as_ref().map(|b| {
        bufs.push(b.buf);
        bufs.len() - 1
    });
    let res_arg = g.residual.as_ref().map(|r| {
        bufs.push(r.buf);
        bufs.len() - 1
    });
    let edge_cols = n - (panels - 1) * nr;
    let items = g.batch * groups * mparts;
    let act_in_regs = t.act_in_regs;
    lw.kernel_calling(bufs, items, false, &[t.tail, t.full], |kb, refs| {
        let (tail_fn, full_fn) = (refs[0], refs[1]);
        let (ap, bp, cp, op) = (kb.arg(0), kb.arg(1), kb.arg(2), kb.arg(3));
        let biasp = bias_arg.map(|j| kb.arg(j));
        let resp = res_arg.map(|j| kb.arg(j));
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let per_batch = (groups * mparts) as i64;
            let bi = kb.b.ins().udiv_imm_u(item, per_batch);
            let rest = kb.b.ins().urem_imm_u(item, per_batch);
            let gi = kb.b.ins().udiv_imm_u(rest, mparts as i64);
            let mpi = kb.b.ins().urem_imm_u(rest, mparts as i64);
            let ob = kb.gep(op, bi, 40);
            let ld = |kb: &mut Kb, j: i32| kb.b.ins().load(I64, mem(), ob, j * 8);
            let (oa, obp, oc, obias, ores) =
                (ld(kb, 0), ld(kb, 1), ld(kb, 2), ld(kb, 3), ld(kb, 4));
            let base_a = kb.gep(ap, oa, 4);
            let base_b = kb.gep(bp, obp, 1);
            let base_c = kb.gep(cp, oc, 4);
            let base_bias = biasp.map(|p| kb.gep(p, obias, 4));
            let base_res = resp.map(|p| kb.gep(p, ores, 4));
            let p_lo = kb.muli(gi, ppg as i64);
            let p_hi = kb.addi(p_lo, ppg as i64);
            let p_hi = min_imm(kb, p_hi, panels as i64);
            let mb_lo = kb.muli(mpi, mbpp as i64);
            let mb_hi = kb.addi(mb_lo, mbpp as i64);
            let mb_hi = min_imm(kb, mb_hi, mblocks as i64);
            for kbi in 0..kblocks {
                let last = kbi == kblocks - 1;
                let depth = if last { klast } else { kc };
                let mut ctl = (depth as i64) << 34;
                if kbi > 0 || g.accumulates() {
                    ctl |= 1 << 32;
                }
                if last {
                    ctl |= 1 << 33;
                }
                let k0 = (kbi * kc) as i64;
                kb.for_range(p_lo, p_hi, 1, |kb, p| {
                    let is_edge = kb.b.ins().icmp_imm_s(IntCC::Equal, p, panels as i64 - 1);
                    let em = kb.i(ctl | edge_cols as i64);
                    let fm = kb.i(ctl | nr as i64);
                    let ctlv = kb.b.ins().select(is_edge, em, fm);
                    let edge = kb.i(edge_cols as i64);
                    let full = kb.i(nr as i64);
                    let cols = kb.b.ins().select(is_edge, edge, full);
                    let bpan = kb.gep(base_b, p, panel_bytes);
                    let bpan = kb.addi(bpan, k0 * (nr * pk.elt) as i64);
                    let j0 = kb.muli(p, nr as i64);
                    kb.for_range(mb_lo, mb_hi, 1, |kb, mb| {
                        let r0 = kb.muli(mb, mr as i64);
                        let a = kb.gep(base_a, r0, g.a.rs * 4);
                        let a = kb.addi(a, k0 * 4);
                        let c = tile_ptr(kb, base_c, &g.c, r0, j0);
                        let bias = opt_ptr(kb, base_bias, g.bias.as_ref(), r0, j0);
                        let res = opt_ptr(kb, base_res, g.residual.as_ref(), r0, j0);
                        let args = [a, bpan, c, bias, res, ctlv];
                        let call = |kb: &mut Kb, f, rows: usize| {
                            kb.b.ins().call(f, &args);
                            if last && !act_in_regs {
                                post_act(kb, g.act, g.c.rs, c, rows, cols);
                            }
                        };
                        if tail_rows == mr {
                            call(kb, full_fn, mr);
                        } else {
                            let is_tail =
                                kb.b.ins().icmp_imm_s(IntCC::Equal, mb, mblocks as i64 - 1);
                            let tb = kb.b.create_block();
                            let fb = kb.b.create_block();
                            let done = kb.b.create_block();
                            kb.b.ins().brif(is_tail, tb, &[], fb, &[]);
                            kb.b.switch_to_block(tb);
                            call(kb, tail_fn, tail_rows);
                            kb.b.ins().jump(done, &[]);
                            kb.b.switch_to_block(fb);
                            call(kb, full_fn, mr);
                            kb.b.ins().jump(done, &[]);
                            kb.b.switch_to_block(done);
                        }
                    });
                });
            }
        });
    })
}

fn min_imm(kb: &mut Kb, v: Value, hi: i64) -> Value {
    let h = kb.i(hi);
    let lt = kb.b.ins().icmp(IntCC::SignedLessThan, v, h);
    kb.b.ins().select(lt, v, h)
}

fn tile_ptr(kb: &mut Kb, base: Value, m: &Mat, r0: Value, j0: Value) -> Value {
    let p = kb.gep(base, r0, m.rs * 4);
    kb.gep(p, j0, m.cs * 4)
}

fn opt_ptr(kb: &mut Kb, base: Option<Value>, m: Option<&Mat>, r0: Value, j0: Value) -> Value {
    match (base, m) {
        (Some(b), Some(m)) => tile_ptr(kb, b, m, r0, j0),
        _ => kb.i(0),
    }
}

/// Applies `act` to a stored tile: `rows` rows (row stride `ldc`
/// elements) of `cols` columns at `c`.
fn post_act(kb: &mut Kb, act: Act, ldc: i64, c: Value, rows: usize, cols: Value) {
    for r in 0..rows {
        let row = kb.addi(c, r as i64 * ldc * 4);
        let z = kb.i(0);
        kb.for_vec(z, cols, 4, |kb, j, lanes| {
            let ty = if lanes == 1 { F32 } else { F32X4 };
            let addr = kb.gep(row, j, 4);
            let v = kb.b.ins().load(ty, mem(), addr, 0);
            let v = act.apply(kb, v);
            kb.b.ins().store(mem(), v, addr, 0);
        });
    }
}

/// C = epilogue(A · packed B) with the tile functions `assemble` writes
/// for `mr`-row blocks of `nr`-column panels of `packing` (`isa` names
/// them in errors).
pub fn compute(
    lw: &mut Lower,
    g: &Gemm,
    packed: Buf,
    (mr, nr): (usize, usize),
    packing: Packing,
    isa: &str,
    assemble: fn(&Tile) -> std::result::Result<Vec<u8>, String>,
) -> Result<()> {
    g.check_accumulate()?;
    let act_in_regs = in_registers(g.act);
    let tile = |mr| Tile {
        mr,
        lda: g.a.rs,
        ldc: g.c.rs,
        bias: g.bias.as_ref().map(|b| (b.rs, b.cs == 1)),
        beta: g.beta,
        res: g
            .residual
            .as_ref()
            .filter(|_| !g.accumulates())
            .map(|r| (r.rs, r.cs == 1)),
        alpha: g.alpha,
        act: if act_in_regs { g.act } else { Act::None },
    };
    let mut define = |t: &Tile| -> Result<FuncId> {
        let bytes =
            assemble(t).map_err(|e| Error::Internal(format!("assembling {isa} GEMM tile: {e}")))?;
        let mut sig = Signature::new(lw.cc);
        sig.params.extend([AbiParam::new(I64); 6]);
        lw.machine_code(&sig, &bytes)
    };
    let tail_rows = g.m - (g.m.div_ceil(mr) - 1) * mr;
    let full = define(&tile(mr))?;
    let tail = if tail_rows == mr {
        full
    } else {
        define(&tile(tail_rows))?
    };
    let t = Tiles {
        mr,
        nr,
        full,
        tail,
        act_in_regs,
        packing,
    };
    drive(lw, g, packed, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_block_once() {
        for (batch, panels, mblocks) in [(1, 1, 1), (1, 128, 19), (3, 2, 40), (200, 3, 1)] {
            let (g, m) = split(batch, panels, mblocks, 8, 128);
            let ppg = panels.div_ceil(g);
            let mbpp = mblocks.div_ceil(m);
            assert!(g >= 1 && m >= 1);
            assert!((g - 1) * ppg < panels && g * ppg >= panels);
            assert!((m - 1) * mbpp < mblocks && m * mbpp >= mblocks);
        }
    }
}
