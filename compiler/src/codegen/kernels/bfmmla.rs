//! `--fast-math bf16` GEMM on aarch64 targets with SVE and BF16
//! (graviton3/4): a vector-length agnostic SVE `bfmmla` microkernel in
//! machine code, called by the `tiled` driver like `sgemm_sve`.
//!
//! `bfmmla` multiplies, in every 128-bit segment, a 2x4 bf16 block of A
//! (two rows, four depths) by a 4x2 block of B (stored as two columns of
//! four depths) into a 2x2 f32 tile. The constant B is rounded to bf16
//! (nearest even) at compile time and packed in panels of [`NR`] = 32
//! columns, per group of 8 depths two halves (depths 0,4,1,5 and 2,6,3,7,
//! the order the A conversion produces) of 16 column pairs, 16 bytes per
//! pair: `[N/32][Kp/8][2][16][2 columns][4 depths]`, `Kp` = K rounded up
//! to 8, zero padded. One B vector then holds the column pairs of its
//! segments, whatever the vector length.
//!
//! A stays f32 in memory and is converted on the fly: per row pair and 8
//! depths, `ld1rqw` replicates 4 floats of each row into every segment,
//! `bfcvt` / `bfcvtnt` put depths 0-3 and 4-7 of a row in the even and odd
//! halves, and `trn1`/`trn2` on 64-bit elements join the two rows into
//! the two A operands. A tile is [`MR`] = 8 rows (four pairs) x two f32
//! vectors of columns (four B vectors): 16 accumulators z8-z23 holding 2x2
//! blocks; C is read into and written from that layout with `zip`/`uzp`
//! on 64-bit elements, and the epilogue (alpha, beta * bias, residual,
//! Relu/Clip) runs on the un-interleaved rows before the predicated
//! stores. The last 1-7 depths load A under `whilelt` predicates (zeros
//! past K, matching B's zero padding); an odd last row reads its neighbour
//! again and is not stored.

use cpucc_targets::aarch64::{Asm, Cond, P, Pattern, Permute, X, XZR, Z};

use super::gemm::{Act, Gemm};
use super::sgemm_sve;
use super::tiled::{self, Packing, Tile};
use crate::codegen::lower::{Buf, Lower};
use crate::error::Result;

pub const NR: usize = 32;
pub const MR: usize = 8;
/// Depths per packed group.
pub const KQ: usize = 8;

/// The depth order within a group of 8 of each half of the A operands.
const ORDER: [[usize; 4]; 2] = [[0, 4, 1, 5], [2, 6, 3, 7]];

/// Whether `g` takes the BFMMLA kernel (its constant B packed by [`pack`]).
pub fn fits(lw: &Lower, g: &Gemm) -> bool {
    lw.bfmmla && sgemm_sve::fits(lw, g)
}

/// How the tile functions read B.
pub const PACKING: Packing = Packing { elt: 2, kq: KQ };

/// Packs the constant `b[o + kk * rs + j * cs]` (K x N) for each batch
/// offset `o` into bf16 BFMMLA panels (one panel set per offset).
pub fn pack(b: &[f32], offs: &[i64], k: usize, n: usize, rs: usize, cs: usize) -> Vec<u8> {
    let kp = k.div_ceil(KQ) * KQ;
    let set_len = n.div_ceil(NR) * kp * NR;
    let mut out = vec![0u16; offs.len() * set_len];
    for (s, &o) in offs.iter().enumerate() {
        let set = &mut out[s * set_len..(s + 1) * set_len];
        for (kg, kgroup) in (0..k).step_by(KQ).enumerate() {
            for (q, order) in ORDER.iter().enumerate() {
                for (i, &d) in order.iter().enumerate() {
                    let kk = kgroup + d;
                    if kk >= k {
                        continue;
                    }
                    for j in 0..n {
                        let (p, t) = (j / NR, j % NR);
                        let group = (p * kp / KQ + kg) * 2 + q;
                        let at = (group * NR + t) * 4 + i;
                        set[at] = super::bf16gemm::to_bf16(b[o as usize + kk * rs + j * cs]);
                    }
                }
            }
        }
    }
    out.iter().flat_map(|x| x.to_le_bytes()).collect()
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
/// A pointer + 16 bytes (depths 4-7).
const PA4: X = X(14);
/// Element offsets of A rows 1..7 from row 0.
const ROWOFF: [X; 7] = [X(15), X(16), X(17), X(19), X(20), X(21), X(22)];
/// Half-element offset of a B vector within its half group, and its limit.
const OFF: X = X(23);
const LIM: X = X(24);
const ALL: P = P(0);
const LO: P = P(1);
const HI: P = P(2);
/// A depths 0-3 / 4-7 of a group (all, or the tail's).
const A0: P = P(3);
const A1: P = P(4);
/// B vectors 1-3 (vector 0 never leaves the panel, even at 2048 bits).
const BV: [P; 3] = [P(5), P(6), P(7)];

fn acc(rp: usize, v: usize) -> Z {
    Z(8 + 4 * rp as u8 + v as u8)
}

fn splat(a: &mut Asm, z: Z, x: f32) {
    a.mov_imm(TMP, x.to_bits() as u64);
    a.dup_w(z, TMP);
}

/// `ld1rqw` of row `r` (its offset register, or none for row 0).
fn load_row(a: &mut Asm, t: Z, g: P, base: X, r: usize) {
    if r == 0 {
        a.ld1rqw(t, g, base, 0);
    } else {
        a.ld1rqw_x(t, g, base, ROWOFF[r - 1]);
    }
}

/// One group of 8 depths: B vectors, A conversion per row pair, 32
/// `bfmmla`.
fn group(a: &mut Asm, pairs: usize, mr: usize) {
    for v in 0..4 {
        let g = if v == 0 { ALL } else { BV[v - 1] };
        a.ld1h(Z(24 + v as u8), g, PB, v as i64);
        a.ld1h(Z(28 + v as u8), g, PB1, v as i64);
    }
    for rp in 0..pairs {
        let (r, s) = (2 * rp, (2 * rp + 1).min(mr - 1));
        // Alternate temporaries between pairs so loads run ahead.
        let t = if rp % 2 == 0 { 0 } else { 4 };
        let z = |i: u8| Z(t + i);
        load_row(a, z(0), A0, PA, r);
        load_row(a, z(1), A1, PA4, r);
        load_row(a, z(2), A0, PA, s);
        load_row(a, z(3), A1, PA4, s);
        a.bfcvt(z(0), ALL, z(0));
        a.bfcvtnt(z(0), ALL, z(1));
        a.bfcvt(z(2), ALL, z(2));
        a.bfcvtnt(z(2), ALL, z(3));
        a.permute_d(Permute::Trn1, z(1), z(0), z(2));
        a.permute_d(Permute::Trn2, z(3), z(0), z(2));
        for v in 0..4 {
            a.bfmmla(acc(rp, v), z(1), Z(24 + v as u8));
            a.bfmmla(acc(rp, v), z(3), Z(28 + v as u8));
        }
    }
}

/// Stores the tile (rows `0..mr` at `x2 + COL`), with the epilogue when
/// `epi`.
fn store(a: &mut Asm, t: &Tile, epi: bool) {
    let mr = t.mr;
    a.add(PA, X(2), COL, 2);
    let bias = t.bias.filter(|_| epi);
    let res = t.res.filter(|_| epi);
    if epi {
        if t.alpha != 1.0 {
            splat(a, Z(27), t.alpha);
        }
        if t.beta != 1.0 {
            splat(a, Z(28), t.beta);
        }
        match t.act {
            Act::Relu => a.dup_imm(Z(26), 0),
            Act::Clip(lo, hi) => {
                splat(a, Z(25), lo);
                splat(a, Z(26), hi);
            }
            _ => {}
        }
        for (operand, base, ptr) in [(bias, X(3), PB), (res, X(4), PB1)] {
            match operand {
                Some((_, true)) => a.add(ptr, base, COL, 2),
                Some((_, false)) => a.mov(ptr, base),
                None => {}
            }
        }
    }
    for i in 0..mr {
        let rp = i / 2;
        let op = if i % 2 == 0 {
            Permute::Uzp1
        } else {
            Permute::Uzp2
        };
        a.permute_d(op, Z(0), acc(rp, 0), acc(rp, 1));
        a.permute_d(op, Z(1), acc(rp, 2), acc(rp, 3));
        if epi {
            if t.alpha != 1.0 {
                a.fmul(Z(0), Z(0), Z(27));
                a.fmul(Z(1), Z(1), Z(27));
            }
            for (operand, ptr, scale) in [(bias, PB, t.beta), (res, PB1, 1.0)] {
                let Some((_, vec)) = operand else { continue };
                let (t0, t1) = (Z(29), if vec { Z(30) } else { Z(29) });
                if vec {
                    a.ld1w(t0, LO, ptr, 0);
                    a.ld1w(t1, HI, ptr, 1);
                } else {
                    a.ld1rw(t0, ALL, ptr, 0);
                }
                for (h, tz) in [t0, t1].into_iter().enumerate() {
                    if scale != 1.0 {
                        a.fmla(Z(h as u8), ALL, tz, Z(28));
                    } else {
                        a.fadd(Z(h as u8), Z(h as u8), tz);
                    }
                }
            }
            // FMAX/FMIN return NaN when either input is NaN, like the
            // interpreter.
            for h in 0..2 {
                match t.act {
                    Act::Relu => a.fmax(Z(h), ALL, Z(26)),
                    Act::Clip(..) => {
                        a.fmax(Z(h), ALL, Z(25));
                        a.fmin(Z(h), ALL, Z(26));
                    }
                    _ => {}
                }
            }
        }
        a.st1w(Z(0), LO, PA, 0);
        a.st1w(Z(1), HI, PA, 1);
        if i + 1 < mr {
            a.add_bytes(PA, 4 * t.ldc, TMP);
            for (operand, ptr) in [(bias, PB), (res, PB1)] {
                if let Some((rs, _)) = operand {
                    a.add_bytes(ptr, 4 * rs, TMP);
                }
            }
        }
    }
}

/// Assembles the tile function.
pub fn assemble(t: &Tile) -> std::result::Result<Vec<u8>, String> {
    let mut a = Asm::new();
    let mr = t.mr;
    let pairs = mr.div_ceil(2);
    for pair in [[X(19), X(20)], [X(21), X(22)], [X(23), X(24)]] {
        a.stp_pre(pair[0], pair[1], 16);
    }
    // Byte granules: all-true for the .h B loads and the .s arithmetic.
    a.ptrue_b(ALL, Pattern::All);
    a.ubfx(NCOLS, X(5), 0, 32);
    a.ubfx(DEPTH, X(5), 34, 30);
    for (i, &r) in ROWOFF.iter().enumerate().take(mr.saturating_sub(1)) {
        a.mov_imm(r, ((i as i64 + 1) * t.lda) as u64);
    }
    a.mov_imm(LIM, (NR * 4) as u64);
    a.movz(COL, 0, 0);

    // One pass per two f32 vectors of columns (four B vectors).
    let sub = a.label();
    a.bind(sub);
    a.whilelt(LO, COL, NCOLS);
    a.mov(TMP, COL);
    a.incw(TMP, 1);
    a.whilelt(HI, TMP, NCOLS);
    a.add(OFF, XZR, COL, 2);
    for &p in &BV {
        a.incw(OFF, 2);
        a.whilelt_h(p, OFF, LIM);
    }
    let (zero, start) = (a.label(), a.label());
    a.tbz(X(5), 32, zero);
    // Accumulate onto C: rows r, r+1 interleaved into 2x2 blocks.
    a.add(PA, X(2), COL, 2);
    for rp in 0..pairs {
        for (h, g) in [(0, LO), (1, HI)] {
            a.ld1w(Z(0), g, PA, h);
            if 2 * rp + 1 < mr {
                a.add_bytes(PA, 4 * t.ldc, TMP);
                a.ld1w(Z(1), g, PA, h);
                a.add_bytes(PA, -4 * t.ldc, TMP);
            } else {
                a.dup_imm(Z(1), 0);
            }
            a.permute_d(Permute::Zip1, acc(rp, 2 * h as usize), Z(0), Z(1));
            a.permute_d(Permute::Zip2, acc(rp, 2 * h as usize + 1), Z(0), Z(1));
        }
        if rp + 1 < pairs {
            a.add_bytes(PA, 8 * t.ldc, TMP);
        }
    }
    a.b(start);
    a.bind(zero);
    for rp in 0..pairs {
        for v in 0..4 {
            a.dup_imm(acc(rp, v), 0);
        }
    }
    a.bind(start);
    a.mov(PA, X(0));
    a.add_imm(PA4, X(0), 16);
    a.add(PB, X(1), COL, 3);
    a.add_imm(PB1, PB, (NR * 8) as i64);

    // Whole groups of 8 depths.
    let (rem, loop8) = (a.label(), a.label());
    a.ptrue(A0, Pattern::All);
    a.ptrue(A1, Pattern::All);
    a.ubfx(CNT, DEPTH, 3, 27);
    a.cbz(CNT, rem);
    a.bind(loop8);
    group(&mut a, pairs, mr);
    a.add_imm(PA, PA, 32);
    a.add_imm(PA4, PA4, 32);
    a.add_imm(PB, PB, (NR * 16) as i64);
    a.add_imm(PB1, PB1, (NR * 16) as i64);
    a.subs_imm(CNT, CNT, 1);
    a.b_cond(Cond::Ne, loop8);

    // The last 1-7 depths: A past K loads as zeros.
    a.bind(rem);
    let done = a.label();
    a.ubfx(CNT, DEPTH, 0, 3);
    a.cbz(CNT, done);
    a.whilelt(A0, XZR, CNT);
    a.movz(TMP, 4, 0);
    a.whilelt(A1, TMP, CNT);
    group(&mut a, pairs, mr);
    a.bind(done);

    let (plain, next) = (a.label(), a.label());
    a.tbz(X(5), 33, plain);
    store(&mut a, t, true);
    a.b(next);
    a.bind(plain);
    store(&mut a, t, false);
    a.bind(next);
    a.incw(COL, 2);
    a.cmp(COL, NCOLS);
    a.b_cond(Cond::Lt, sub);

    for pair in [[X(23), X(24)], [X(21), X(22)], [X(19), X(20)]] {
        a.ldp_post(pair[0], pair[1], 16);
    }
    a.ret();
    a.finish()
}

/// C = epilogue(A · packed B) with `packed` from [`pack`].
pub fn compute(lw: &mut Lower, g: &Gemm, packed: Buf) -> Result<()> {
    lw.note_kernel(format!(
        "sve bfmmla bf16 gemm {MR}x2vl tiles, M={} N={} K={} batch={}",
        g.m, g.n, g.k, g.batch
    ));
    tiled::compute(lw, g, packed, (MR, NR), PACKING, "BFMMLA", assemble)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_puts_each_weight_where_the_kernel_reads_it() {
        // K = 11 (a group and a tail), N = 35 (a second panel).
        let (k, n) = (11, 35);
        let b: Vec<f32> = (0..k * n).map(|i| i as f32).collect();
        let bytes = pack(&b, &[0], k, n, n, 1);
        let h: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let kp = 16;
        assert_eq!(h.len(), 2 * kp * NR);
        for p in 0..2 {
            for kg in 0..2 {
                for (q, order) in ORDER.iter().enumerate() {
                    for t in 0..NR {
                        for (i, &d) in order.iter().enumerate() {
                            let (kk, j) = (kg * 8 + d, p * NR + t);
                            let want = if kk < k && j < n {
                                half::bf16::from_f32((kk * n + j) as f32).to_bits()
                            } else {
                                0
                            };
                            let at = p * kp * NR + kg * 8 * NR + q * 4 * NR + t * 4 + i;
                            assert_eq!(h[at], want, "k {kk} col {j}");
                        }
                    }
                }
            }
        }
    }
}
