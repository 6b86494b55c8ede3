//! NEON f32 GEMM for aarch64 targets without SVE (graviton2, generic
//! aarch64): a microkernel in machine code (assembled per GEMM node with
//! `cpucc_targets::aarch64`) called by the `tiled` driver.
//!
//! B is packed in panels of [`NR`] = 16 columns. A tile is [`MR`] = 6 rows
//! x 16 columns: 24 accumulators (v8-v31); per four depth steps one `ldr q`
//! takes A[i][k..k+4] per row (v0-v5), B rows come in pairs of vectors
//! (v6, v7) and 96 `fmla`-by-element follow. On the edge panel (fewer than
//! 16 valid columns, from `ctl`) the tile works on a zero-filled copy of
//! its C, bias and residual rows on the stack and copies the valid columns
//! back, so nothing past N is read or written. Accumulators start at zero
//! or from C; on the last depth block alpha, beta * bias, the residual and
//! Relu/Clip are applied in registers.

use cpucc_targets::aarch64::{Asm, Cond, SP, V, X, XZR};

use super::gemm::{Act, Gemm};
use super::tiled::{self, Packing, Tile};
use crate::codegen::lower::{Buf, Lower};
use crate::error::Result;

pub const NR: usize = 16;
pub const MR: usize = 6;

/// Whether the NEON microkernel handles `g` (aarch64 without SVE).
pub fn fits(lw: &Lower, g: &Gemm) -> bool {
    let unit = |m: &Option<super::gemm::Mat>| m.as_ref().is_none_or(|m| m.cs == 0 || m.cs == 1);
    lw.neon
        && g.m > 0
        && g.n > 0
        && g.k > 0
        && g.a.cs == 1
        && g.c.cs == 1
        && unit(&g.bias)
        && unit(&g.residual)
}

// Arguments: x0 a, x1 b, x2 c, x3 bias, x4 residual, x5 ctl.
const NCOLS: X = X(6);
const DEPTH: X = X(7);
const CNT: X = X(9);
const PA: X = X(10);
const PB: X = X(11);
const PC: X = X(12);
const TMP: X = X(13);
/// Byte offsets of A rows 1..5 from row 0.
const ROWOFF: [X; 5] = [X(14), X(15), X(16), X(17), X(19)];
const J: X = X(20);
const SRC: X = X(21);
const DST: X = X(22);

/// Stack copies on the edge panel: C, bias and residual rows, 64 bytes each.
const ROW: i64 = 64;
const STACK: i64 = 3 * MR as i64 * ROW;

fn acc(i: usize, h: usize) -> V {
    V(8 + 4 * i as u8 + h as u8)
}

fn splat(a: &mut Asm, v: V, x: f32) {
    a.mov_imm(TMP, x.to_bits() as u64);
    a.dup_4s(v, TMP);
}

/// Where the body finds C, bias and residual: base register and row
/// stride in bytes (`vec`: a row of columns, else one value per row).
#[derive(Clone, Copy)]
struct Operands {
    c: (X, i64),
    bias: Option<(X, i64, bool)>,
    res: Option<(X, i64, bool)>,
}

/// Accumulate (from zero or C), epilogue, store, for one 6x16 tile.
fn body(a: &mut Asm, t: &Tile, ops: Operands) {
    let mr = t.mr;
    let (zero, start) = (a.label(), a.label());
    a.tbz(X(5), 32, zero);
    a.add_imm(PC, ops.c.0, 0);
    for i in 0..mr {
        for h in 0..4 {
            a.ldr_q(acc(i, h), PC, 16 * h as i64);
        }
        if i + 1 < mr {
            a.add_bytes(PC, ops.c.1, TMP);
        }
    }
    a.b(start);
    a.bind(zero);
    for i in 0..mr {
        for h in 0..4 {
            a.zero_q(acc(i, h));
        }
    }
    a.bind(start);
    a.add_imm(PA, X(0), 0);
    a.add_imm(PB, X(1), 0);

    let (rem, loop4) = (a.label(), a.label());
    a.ubfx(CNT, DEPTH, 2, 28);
    a.cbz(CNT, rem);
    a.bind(loop4);
    a.ldr_q(V(0), PA, 0);
    for i in 1..mr {
        a.ldr_q_x(V(i as u8), PA, ROWOFF[i - 1]);
    }
    for k in 0..4 {
        for half in 0..2 {
            a.ldp_q(V(6), V(7), PB, (k * 64 + half * 32) as i64);
            for i in 0..mr {
                for h in 0..2 {
                    a.fmla_4s_idx(acc(i, 2 * half + h), V(6 + h as u8), V(i as u8), k as u32);
                }
            }
        }
    }
    a.add_imm(PA, PA, 16);
    a.add_imm(PB, PB, 256);
    a.subs_imm(CNT, CNT, 1);
    a.b_cond(Cond::Ne, loop4);

    a.bind(rem);
    let (loop1, done) = (a.label(), a.label());
    a.ubfx(CNT, DEPTH, 0, 2);
    a.cbz(CNT, done);
    a.bind(loop1);
    a.ldr_s(V(0), PA, 0);
    for i in 1..mr {
        a.ldr_s_x(V(i as u8), PA, ROWOFF[i - 1]);
    }
    for half in 0..2 {
        a.ldp_q(V(6), V(7), PB, half * 32);
        for i in 0..mr {
            for h in 0..2 {
                a.fmla_4s_idx(acc(i, 2 * half as usize + h), V(6 + h as u8), V(i as u8), 0);
            }
        }
    }
    a.add_imm(PA, PA, 4);
    a.add_imm(PB, PB, 64);
    a.subs_imm(CNT, CNT, 1);
    a.b_cond(Cond::Ne, loop1);
    a.bind(done);

    let store = a.label();
    a.tbz(X(5), 33, store);
    if t.alpha != 1.0 {
        splat(a, V(1), t.alpha);
        for i in 0..mr {
            for h in 0..4 {
                a.fmul_4s(acc(i, h), acc(i, h), V(1));
            }
        }
    }
    for (operand, scale) in [(ops.bias, t.beta), (ops.res, 1.0)] {
        let Some((base, rs, vec)) = operand else {
            continue;
        };
        if scale != 1.0 {
            splat(a, V(0), scale);
        }
        a.add_imm(PB, base, 0);
        for i in 0..mr {
            if !vec {
                a.ld1r_4s(V(2), PB);
            }
            for h in 0..4 {
                let tv = if vec { V(2 + (h % 2) as u8) } else { V(2) };
                if vec && h % 2 == 0 {
                    a.ldp_q(V(2), V(3), PB, 16 * h as i64);
                }
                if scale != 1.0 {
                    a.fmla_4s(acc(i, h), tv, V(0));
                } else {
                    a.fadd_4s(acc(i, h), acc(i, h), tv);
                }
            }
            if i + 1 < mr {
                a.add_bytes(PB, rs, TMP);
            }
        }
    }
    // FMAX/FMIN return NaN when either input is NaN, like the interpreter.
    match t.act {
        Act::Relu => {
            a.zero_q(V(0));
            for i in 0..mr {
                for h in 0..4 {
                    a.fmax_4s(acc(i, h), acc(i, h), V(0));
                }
            }
        }
        Act::Clip(lo, hi) => {
            splat(a, V(0), lo);
            splat(a, V(1), hi);
            for i in 0..mr {
                for h in 0..4 {
                    a.fmax_4s(acc(i, h), acc(i, h), V(0));
                    a.fmin_4s(acc(i, h), acc(i, h), V(1));
                }
            }
        }
        _ => {}
    }
    a.bind(store);
    a.add_imm(PC, ops.c.0, 0);
    for i in 0..mr {
        for h in 0..4 {
            a.str_q(acc(i, h), PC, 16 * h as i64);
        }
        if i + 1 < mr {
            a.add_bytes(PC, ops.c.1, TMP);
        }
    }
}

/// Copies `rows` rows of the panel's valid columns (`NCOLS` floats) from
/// `src` (row stride `src_rs` bytes) to `dst` (stride `dst_rs`).
fn copy_rows(a: &mut Asm, src: X, src_rs: i64, dst: X, dst_rs: i64, rows: usize) {
    a.add_imm(SRC, src, 0);
    a.add_imm(DST, dst, 0);
    // TMP = valid bytes per row.
    a.add(TMP, XZR, NCOLS, 2);
    for r in 0..rows {
        let col = a.label();
        a.movz(J, 0, 0);
        a.bind(col);
        a.ldr_s_x(V(0), SRC, J);
        a.str_s_x(V(0), DST, J);
        a.add_imm(J, J, 4);
        a.cmp(J, TMP);
        a.b_cond(Cond::Lt, col);
        if r + 1 < rows {
            // TMP holds the row count (`copy_rows`): large strides go
            // through J, free between rows.
            a.add_bytes(SRC, src_rs, J);
            a.add_bytes(DST, dst_rs, J);
        }
    }
}

/// Assembles the tile function.
pub fn assemble(t: &Tile) -> std::result::Result<Vec<u8>, String> {
    let mut a = Asm::new();
    let mr = t.mr;
    for pair in [[X(19), X(20)], [X(21), X(22)], [X(23), X(24)]] {
        a.stp_pre(pair[0], pair[1], 16);
    }
    a.sub_imm(SP, SP, STACK);
    a.ubfx(NCOLS, X(5), 0, 32);
    a.ubfx(DEPTH, X(5), 34, 30);
    for (i, &r) in ROWOFF.iter().enumerate().take(mr.saturating_sub(1)) {
        a.mov_imm(r, ((i as i64 + 1) * t.lda * 4) as u64);
    }
    let (edge, end) = (a.label(), a.label());
    a.subs_imm(XZR, NCOLS, NR as i64);
    a.b_cond(Cond::Ne, edge);
    let direct = Operands {
        c: (X(2), t.ldc * 4),
        bias: t.bias.map(|(rs, v)| (X(3), rs * 4, v)),
        res: t.res.map(|(rs, v)| (X(4), rs * 4, v)),
    };
    body(&mut a, t, direct);
    a.b(end);

    // Edge panel: through zero-filled stack copies.
    a.bind(edge);
    a.zero_q(V(0));
    for off in (0..STACK).step_by(16) {
        a.str_q(V(0), SP, off);
    }
    let (sc, sb, sr) = (0, mr as i64 * ROW, 2 * mr as i64 * ROW);
    let skip_c = a.label();
    a.tbz(X(5), 32, skip_c);
    a.add_imm(X(8), SP, sc);
    copy_rows(&mut a, X(2), t.ldc * 4, X(8), ROW, mr);
    a.bind(skip_c);
    let stacked = |operand: Option<(i64, bool)>, reg: X, at: i64| {
        operand.map(|(rs, vec)| {
            if vec {
                (SP, if rs == 0 { 0 } else { ROW }, at, true, rs)
            } else {
                (reg, rs * 4, at, false, rs)
            }
        })
    };
    let sbias = stacked(t.bias, X(3), sb);
    let sres = stacked(t.res, X(4), sr);
    let skip_e = a.label();
    a.tbz(X(5), 33, skip_e);
    for (s, src) in [(sbias, X(3)), (sres, X(4))] {
        if let Some((_, stride, at, true, rs)) = s {
            a.add_imm(X(8), SP, at);
            let rows = if stride == 0 { 1 } else { mr };
            copy_rows(&mut a, src, rs * 4, X(8), ROW, rows);
        }
    }
    a.bind(skip_e);
    // The body reads the stack copies through sp-relative registers.
    a.add_imm(X(8), SP, sc);
    let breg = X(23);
    let rreg = X(24);
    a.add_imm(breg, SP, sb);
    a.add_imm(rreg, SP, sr);
    let pick = |s: Option<(X, i64, i64, bool, i64)>, stack_reg: X| {
        s.map(|(reg, stride, _, vec, _)| {
            if vec {
                (stack_reg, stride, true)
            } else {
                (reg, stride, false)
            }
        })
    };
    let staged = Operands {
        c: (X(8), ROW),
        bias: pick(sbias, breg),
        res: pick(sres, rreg),
    };
    body(&mut a, t, staged);
    a.add_imm(X(8), SP, sc);
    copy_rows(&mut a, X(8), ROW, X(2), t.ldc * 4, mr);

    a.bind(end);
    a.add_imm(SP, SP, STACK);
    for pair in [[X(23), X(24)], [X(21), X(22)], [X(19), X(20)]] {
        a.ldp_post(pair[0], pair[1], 16);
    }
    a.ret();
    a.finish()
}

/// C = epilogue(A · packed B); `packed` holds one panel set of
/// `packed_len(n, k, NR)` floats per batch element.
pub fn compute(lw: &mut Lower, g: &Gemm, packed: Buf) -> Result<()> {
    tiled::compute(lw, g, packed, (MR, NR), Packing::F32, "NEON", assemble)
}
