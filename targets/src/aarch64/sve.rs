//! SVE and SVE BF16 instructions, 32-bit elements (`.s`) unless noted.
//! Vector-length agnostic: offsets written `mul vl` are in vectors.

use super::{Asm, P, X, Z};

/// Predicate patterns of `ptrue`/`cntw`/`incw`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// The first element only.
    Vl1 = 1,
    /// Every element.
    All = 31,
}

fn zr(z: Z) -> u32 {
    z.0 as u32
}

impl Asm {
    fn pg(&mut self, p: P) -> u32 {
        // Loads, stores and merging arithmetic take p0..p7.
        self.field("governing predicate", p.0 as i64, 3)
    }

    /// `ptrue pd.s, pattern`
    pub fn ptrue(&mut self, d: P, pat: Pattern) {
        self.emit(0x2598_E000 | (pat as u32) << 5 | d.0 as u32);
    }

    /// `ptrue pd.b, pattern`: all-true for every element size.
    pub fn ptrue_b(&mut self, d: P, pat: Pattern) {
        self.emit(0x2518_E000 | (pat as u32) << 5 | d.0 as u32);
    }

    /// `whilelt pd.s, xn, xm`: element i active while `xn + i < xm` (signed).
    pub fn whilelt(&mut self, d: P, n: X, m: X) {
        self.emit(0x25A0_1400 | (m.0 as u32) << 16 | (n.0 as u32) << 5 | d.0 as u32);
    }

    /// `whilelt pd.h, xn, xm`: 16-bit element i active while `xn + i < xm`.
    pub fn whilelt_h(&mut self, d: P, n: X, m: X) {
        self.emit(0x2560_1400 | (m.0 as u32) << 16 | (n.0 as u32) << 5 | d.0 as u32);
    }

    /// `cntw xd`: 32-bit elements per vector.
    pub fn cntw(&mut self, d: X) {
        self.emit(0x04A0_E000 | (Pattern::All as u32) << 5 | d.0 as u32);
    }

    /// `incw xd, all, mul #mul`
    pub fn incw(&mut self, d: X, mul: u32) {
        let m = self.field("incw multiplier", mul as i64 - 1, 4);
        self.emit(0x04B0_E000 | m << 16 | (Pattern::All as u32) << 5 | d.0 as u32);
    }

    /// `ld1w {zt.s}, pg/z, [xn, #vl, mul vl]`
    pub fn ld1w(&mut self, t: Z, g: P, n: X, vl: i64) {
        let (g, i) = (self.pg(g), self.sfield("ld1w offset", vl, 4));
        self.emit(0xA540_A000 | i << 16 | g << 10 | (n.0 as u32) << 5 | zr(t));
    }

    /// `ld1h {zt.h}, pg/z, [xn, #vl, mul vl]`
    pub fn ld1h(&mut self, t: Z, g: P, n: X, vl: i64) {
        let (g, i) = (self.pg(g), self.sfield("ld1h offset", vl, 4));
        self.emit(0xA4A0_A000 | i << 16 | g << 10 | (n.0 as u32) << 5 | zr(t));
    }

    /// `ld1w {zt.s}, pg/z, [xn, xm, lsl #2]`
    pub fn ld1w_x(&mut self, t: Z, g: P, n: X, m: X) {
        let g = self.pg(g);
        self.emit(0xA540_4000 | (m.0 as u32) << 16 | g << 10 | (n.0 as u32) << 5 | zr(t));
    }

    /// `st1w {zt.s}, pg, [xn, #vl, mul vl]`
    pub fn st1w(&mut self, t: Z, g: P, n: X, vl: i64) {
        let (g, i) = (self.pg(g), self.sfield("st1w offset", vl, 4));
        self.emit(0xE540_E000 | i << 16 | g << 10 | (n.0 as u32) << 5 | zr(t));
    }

    /// `st1w {zt.s}, pg, [xn, xm, lsl #2]`
    pub fn st1w_x(&mut self, t: Z, g: P, n: X, m: X) {
        let g = self.pg(g);
        self.emit(0xE540_4000 | (m.0 as u32) << 16 | g << 10 | (n.0 as u32) << 5 | zr(t));
    }

    /// `ld1rw {zt.s}, pg/z, [xn, #bytes]`: one float to every element.
    pub fn ld1rw(&mut self, t: Z, g: P, n: X, bytes: i64) {
        let g = self.pg(g);
        let o = self.scaled("ld1rw offset", bytes, 4);
        let i = self.field("ld1rw offset", o, 6);
        self.emit(0x8540_C000 | i << 16 | g << 10 | (n.0 as u32) << 5 | zr(t));
    }

    /// `ld1rqw {zt.s}, pg/z, [xn, #bytes]`: four floats to every 128-bit
    /// segment.
    pub fn ld1rqw(&mut self, t: Z, g: P, n: X, bytes: i64) {
        let g = self.pg(g);
        let o = self.scaled("ld1rqw offset", bytes, 16);
        let i = self.sfield("ld1rqw offset", o, 4);
        self.emit(0xA500_2000 | i << 16 | g << 10 | (n.0 as u32) << 5 | zr(t));
    }

    /// `ld1rqw {zt.s}, pg/z, [xn, xm, lsl #2]`
    pub fn ld1rqw_x(&mut self, t: Z, g: P, n: X, m: X) {
        let g = self.pg(g);
        self.emit(0xA500_0000 | (m.0 as u32) << 16 | g << 10 | (n.0 as u32) << 5 | zr(t));
    }

    /// `fmla zda.s, pg/m, zn.s, zm.s`
    pub fn fmla(&mut self, da: Z, g: P, n: Z, m: Z) {
        let g = self.pg(g);
        self.emit(0x65A0_0000 | zr(m) << 16 | g << 10 | zr(n) << 5 | zr(da));
    }

    /// `fmla zda.s, zn.s, zm.s[idx]`: `zm` is z0..z7, `idx` picks the
    /// element within each 128-bit segment.
    pub fn fmla_idx(&mut self, da: Z, n: Z, m: Z, idx: u32) {
        let m = self.field("fmla indexed register", m.0 as i64, 3);
        let i = self.field("fmla index", idx as i64, 2);
        self.emit(0x64A0_0000 | i << 19 | m << 16 | zr(n) << 5 | zr(da));
    }

    /// `fadd zd.s, zn.s, zm.s`
    pub fn fadd(&mut self, d: Z, n: Z, m: Z) {
        self.emit(0x6580_0000 | zr(m) << 16 | zr(n) << 5 | zr(d));
    }

    /// `fmul zd.s, zn.s, zm.s`
    pub fn fmul(&mut self, d: Z, n: Z, m: Z) {
        self.emit(0x6580_0800 | zr(m) << 16 | zr(n) << 5 | zr(d));
    }

    /// `fmax zdn.s, pg/m, zdn.s, zm.s` (NaN if either is NaN)
    pub fn fmax(&mut self, dn: Z, g: P, m: Z) {
        let g = self.pg(g);
        self.emit(0x6586_8000 | g << 10 | zr(m) << 5 | zr(dn));
    }

    /// `fmin zdn.s, pg/m, zdn.s, zm.s`
    pub fn fmin(&mut self, dn: Z, g: P, m: Z) {
        let g = self.pg(g);
        self.emit(0x6587_8000 | g << 10 | zr(m) << 5 | zr(dn));
    }

    /// `mov zd.s, wn` (`dup`)
    pub fn dup_w(&mut self, d: Z, n: X) {
        self.emit(0x05A0_3800 | (n.0 as u32) << 5 | zr(d));
    }

    /// `mov zd.s, #imm` (`dup`, -128..127)
    pub fn dup_imm(&mut self, d: Z, imm: i64) {
        let i = self.sfield("dup immediate", imm, 8);
        self.emit(0x25B8_C000 | i << 5 | zr(d));
    }

    /// `bfmmla zda.s, zn.h, zm.h`: per 128-bit segment, a 2x4 by 4x2 bf16
    /// product added to a 2x2 f32 tile.
    pub fn bfmmla(&mut self, da: Z, n: Z, m: Z) {
        self.emit(0x6460_E400 | zr(m) << 16 | zr(n) << 5 | zr(da));
    }

    /// `bfcvt zd.h, pg/m, zn.s`: f32 to bf16 in the low half of each element.
    pub fn bfcvt(&mut self, d: Z, g: P, n: Z) {
        let g = self.pg(g);
        self.emit(0x658A_A000 | g << 10 | zr(n) << 5 | zr(d));
    }

    /// `bfcvtnt zd.h, pg/m, zn.s`: f32 to bf16 in the high half of each
    /// element (the low halves are kept).
    pub fn bfcvtnt(&mut self, d: Z, g: P, n: Z) {
        let g = self.pg(g);
        self.emit(0x648A_A000 | g << 10 | zr(n) << 5 | zr(d));
    }

    /// A permute of 64-bit elements: `zip1 zip2 uzp1 uzp2 trn1 trn2`
    /// `zd.d, zn.d, zm.d`.
    pub fn permute_d(&mut self, op: Permute, d: Z, n: Z, m: Z) {
        self.emit(0x05E0_6000 | (op as u32) << 10 | zr(m) << 16 | zr(n) << 5 | zr(d));
    }
}

/// The two-register permutes of [`Asm::permute_d`] (bits 10-12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permute {
    /// Interleave the low halves of the two vectors.
    Zip1 = 0,
    /// Interleave the high halves.
    Zip2 = 1,
    /// Even elements of `zn` then of `zm`.
    Uzp1 = 2,
    /// Odd elements of `zn` then of `zm`.
    Uzp2 = 3,
    /// Even elements of each pair: `zn[2i], zm[2i]`.
    Trn1 = 4,
    /// Odd elements of each pair: `zn[2i+1], zm[2i+1]`.
    Trn2 = 5,
}
