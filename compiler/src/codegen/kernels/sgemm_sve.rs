//! SVE f32 GEMM: a vector-length agnostic microkernel in machine code
//! (assembled per GEMM node with `cpucc_targets::aarch64`, so depths,
//! strides and the epilogue are immediates) called by the `tiled` driver.
//!
//! B is packed in panels of [`NR`] = 32 columns, the widest two 512-bit
//! vectors hold; the same object runs at any vector length: the tile
//! function walks its panel in steps of two vectors (`incw`), and every B
//! load and C access is governed by `whilelt` predicates on the panel's
//! valid columns, so nothing past the panel or past N is touched. A tile
//! is [`MR`] = 8 rows x two vectors: 16 accumulators (z8-z23); per four
//! depth steps `ld1rqw` replicates four A values of each row into every
//! 128-bit segment (z0-z7) and eight B vectors (z24-z31) feed 64
//! `fmla`-by-element. Accumulators start at zero or from C; on the last
//! depth block alpha, beta * bias, the residual and Relu/Clip are applied
//! in registers before the predicated stores.

use cpucc_targets::aarch64::{Asm, Cond, P, Pattern, X, Z};

use super::gemm::{Act, Gemm, Mat};
use super::tiled::{self, Packing, Tile};
use crate::codegen::lower::{Buf, Lower};
use crate::error::Result;

pub const NR: usize = 32;
pub const MR: usize = 8;

/// Whether the SVE microkernel handles `g`.
pub fn fits(lw: &Lower, g: &Gemm) -> bool {
    let unit = |m: &Option<Mat>| m.as_ref().is_none_or(|m| m.cs == 0 || m.cs == 1);
    lw.sve
        && g.m > 0
        && g.n > 0
        && g.k > 0
        && g.a.cs == 1
        && g.c.cs == 1
        && unit(&g.bias)
        && unit(&g.residual)
}

// Registers. Arguments: x0 a, x1 b, x2 c, x3 bias, x4 residual, x5 ctl.
const NCOLS: X = X(6);
const DEPTH: X = X(7);
const COL: X = X(8);
const CNT: X = X(9);
const PA: X = X(10);
const PB: X = X(11);
const PB1: X = X(12);
const TMP: X = X(13);
/// Element offsets of B rows k+1..k+3 within a panel.
const KOFF: [X; 3] = [X(14), X(15), X(16)];
/// Element offsets of A rows 1..7 from row 0.
const ROWOFF: [X; 7] = [X(17), X(19), X(20), X(21), X(22), X(23), X(24)];
const ALL: P = P(0);
const LO: P = P(1);
const HI: P = P(2);
const ONE: P = P(3);

fn acc(i: usize, h: usize) -> Z {
    Z(8 + 2 * i as u8 + h as u8)
}

fn splat(a: &mut Asm, z: Z, x: f32) {
    a.mov_imm(TMP, x.to_bits() as u64);
    a.dup_w(z, TMP);
}

/// Assembles the tile function.
pub fn assemble(t: &Tile) -> std::result::Result<Vec<u8>, String> {
    let mut a = Asm::new();
    let mr = t.mr;
    let w = NR as i64;
    for pair in [[X(19), X(20)], [X(21), X(22)], [X(23), X(24)]] {
        a.stp_pre(pair[0], pair[1], 16);
    }
    a.ptrue(ALL, Pattern::All);
    a.ptrue(ONE, Pattern::Vl1);
    a.ubfx(NCOLS, X(5), 0, 32);
    a.ubfx(DEPTH, X(5), 34, 30);
    for (j, &r) in KOFF.iter().enumerate() {
        a.mov_imm(r, (j as i64 + 1) as u64 * w as u64);
    }
    for (i, &r) in ROWOFF.iter().enumerate().take(mr.saturating_sub(1)) {
        a.mov_imm(r, ((i as i64 + 1) * t.lda) as u64);
    }
    a.movz(COL, 0, 0);

    // One pass per two vectors of columns.
    let sub = a.label();
    a.bind(sub);
    a.whilelt(LO, COL, NCOLS);
    a.mov(TMP, COL);
    a.incw(TMP, 1);
    a.whilelt(HI, TMP, NCOLS);
    let (zero, start) = (a.label(), a.label());
    a.tbz(X(5), 32, zero);
    a.add(PA, X(2), COL, 2);
    for i in 0..mr {
        a.ld1w(acc(i, 0), LO, PA, 0);
        a.ld1w(acc(i, 1), HI, PA, 1);
        if i + 1 < mr {
            a.add_bytes(PA, 4 * t.ldc, TMP);
        }
    }
    a.b(start);
    a.bind(zero);
    for i in 0..mr {
        a.dup_imm(acc(i, 0), 0);
        a.dup_imm(acc(i, 1), 0);
    }
    a.bind(start);
    a.mov(PA, X(0));
    a.add(PB, X(1), COL, 2);
    a.cntw(TMP);
    a.add(PB1, PB, TMP, 2);

    // Four depth steps per iteration.
    let (rem, loop4) = (a.label(), a.label());
    a.ubfx(CNT, DEPTH, 2, 28);
    a.cbz(CNT, rem);
    a.bind(loop4);
    a.ld1rqw(Z(0), ALL, PA, 0);
    for i in 1..mr {
        a.ld1rqw_x(Z(i as u8), ALL, PA, ROWOFF[i - 1]);
    }
    for k in 0..4 {
        let (b0, b1) = (Z(24 + 2 * k as u8), Z(25 + 2 * k as u8));
        if k == 0 {
            a.ld1w(b0, LO, PB, 0);
            a.ld1w(b1, HI, PB1, 0);
        } else {
            a.ld1w_x(b0, LO, PB, KOFF[k - 1]);
            a.ld1w_x(b1, HI, PB1, KOFF[k - 1]);
        }
    }
    for k in 0..4 {
        for i in 0..mr {
            for h in 0..2 {
                a.fmla_idx(
                    acc(i, h),
                    Z(24 + 2 * k as u8 + h as u8),
                    Z(i as u8),
                    k as u32,
                );
            }
        }
    }
    a.add_imm(PA, PA, 16);
    a.add_imm(PB, PB, 16 * w);
    a.add_imm(PB1, PB1, 16 * w);
    a.subs_imm(CNT, CNT, 1);
    a.b_cond(Cond::Ne, loop4);

    // The remaining 0-3 depth steps: one A value per row (element 0 of
    // each segment, the others zero).
    a.bind(rem);
    let (loop1, done) = (a.label(), a.label());
    a.ubfx(CNT, DEPTH, 0, 2);
    a.cbz(CNT, done);
    a.bind(loop1);
    a.ld1rqw(Z(0), ONE, PA, 0);
    for i in 1..mr {
        a.ld1rqw_x(Z(i as u8), ONE, PA, ROWOFF[i - 1]);
    }
    a.ld1w(Z(24), LO, PB, 0);
    a.ld1w(Z(25), HI, PB1, 0);
    for i in 0..mr {
        for h in 0..2 {
            a.fmla_idx(acc(i, h), Z(24 + h as u8), Z(i as u8), 0);
        }
    }
    a.add_imm(PA, PA, 4);
    a.add_imm(PB, PB, 4 * w);
    a.add_imm(PB1, PB1, 4 * w);
    a.subs_imm(CNT, CNT, 1);
    a.b_cond(Cond::Ne, loop1);
    a.bind(done);

    // Epilogue (last depth block only).
    let store = a.label();
    a.tbz(X(5), 33, store);
    if t.alpha != 1.0 {
        splat(&mut a, Z(31), t.alpha);
        for i in 0..mr {
            for h in 0..2 {
                a.fmul(acc(i, h), acc(i, h), Z(31));
            }
        }
    }
    for (operand, base, scale) in [(t.bias, X(3), t.beta), (t.res, X(4), 1.0)] {
        let Some((rs, vec)) = operand else { continue };
        if scale != 1.0 {
            splat(&mut a, Z(28), scale);
        }
        if vec {
            a.add(PB, base, COL, 2);
        } else {
            a.mov(PB, base);
        }
        for i in 0..mr {
            let (t0, t1) = (Z(29), if vec { Z(30) } else { Z(29) });
            if vec {
                a.ld1w(t0, LO, PB, 0);
                a.ld1w(t1, HI, PB, 1);
            } else {
                a.ld1rw(t0, ALL, PB, 0);
            }
            for (h, tz) in [t0, t1].into_iter().enumerate() {
                if scale != 1.0 {
                    a.fmla(acc(i, h), ALL, tz, Z(28));
                } else {
                    a.fadd(acc(i, h), acc(i, h), tz);
                }
            }
            if i + 1 < mr {
                a.add_bytes(PB, 4 * rs, TMP);
            }
        }
    }
    // FMAX/FMIN return NaN when either input is NaN, like the interpreter.
    match t.act {
        Act::Relu => {
            a.dup_imm(Z(31), 0);
            for i in 0..mr {
                for h in 0..2 {
                    a.fmax(acc(i, h), ALL, Z(31));
                }
            }
        }
        Act::Clip(lo, hi) => {
            splat(&mut a, Z(30), lo);
            splat(&mut a, Z(31), hi);
            for i in 0..mr {
                for h in 0..2 {
                    a.fmax(acc(i, h), ALL, Z(30));
                    a.fmin(acc(i, h), ALL, Z(31));
                }
            }
        }
        _ => {}
    }
    a.bind(store);
    a.add(PA, X(2), COL, 2);
    for i in 0..mr {
        a.st1w(acc(i, 0), LO, PA, 0);
        a.st1w(acc(i, 1), HI, PA, 1);
        if i + 1 < mr {
            a.add_bytes(PA, 4 * t.ldc, TMP);
        }
    }
    a.incw(COL, 2);
    a.cmp(COL, NCOLS);
    a.b_cond(Cond::Lt, sub);

    for pair in [[X(23), X(24)], [X(21), X(22)], [X(19), X(20)]] {
        a.ldp_post(pair[0], pair[1], 16);
    }
    a.ret();
    a.finish()
}

/// C = epilogue(A · packed B); `packed` holds one panel set of
/// `packed_len(n, k, NR)` floats per batch element.
pub fn compute(lw: &mut Lower, g: &Gemm, packed: Buf) -> Result<()> {
    tiled::compute(lw, g, packed, (MR, NR), Packing::F32, "SVE", assemble)
}
