//! A small AArch64 machine-code assembler for the hand-written GEMM
//! microkernels: the base instructions a leaf loop needs (moves, address
//! arithmetic, branches, pair loads/stores), NEON (`neon.rs`) and SVE
//! (`sve.rs`) floating point. Each method appends one instruction; branch
//! targets are labels resolved by [`Asm::finish`], and an immediate out of
//! range is recorded and reported there, so emitting code needs no `?`
//! per instruction. Every encoding is checked against
//! `aarch64-linux-gnu-as` in `tests.rs`.

mod neon;
mod sve;
#[cfg(test)]
mod tests;

pub use sve::{Pattern, Permute};

/// A general-purpose register `x0`..`x30`; 31 is `xzr` or `sp` by
/// instruction (see [`XZR`], [`SP`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X(pub u8);
/// An SVE vector register `z0`..`z31`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Z(pub u8);
/// An SVE predicate register `p0`..`p15`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P(pub u8);
/// A NEON vector register `v0`..`v31` (`q`/`s` views by instruction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V(pub u8);

pub const XZR: X = X(31);
pub const SP: X = X(31);

/// Branch conditions (the architecture's 4-bit codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Eq = 0,
    Ne = 1,
    Hs = 2,
    Lo = 3,
    Ge = 10,
    Lt = 11,
    Gt = 12,
    Le = 13,
}

/// A branch target; bound to a position with [`Asm::bind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

#[derive(Clone, Copy)]
enum Fix {
    /// imm19 at bits 5..24 (B.cond, CBZ/CBNZ).
    Imm19,
    /// imm14 at bits 5..19 (TBZ/TBNZ).
    Imm14,
    /// imm26 at bits 0..26 (B).
    Imm26,
}

#[derive(Default)]
pub struct Asm {
    words: Vec<u32>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label, Fix)>,
    error: Option<String>,
}

impl Asm {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a raw instruction word.
    pub fn emit(&mut self, word: u32) {
        self.words.push(word);
    }

    /// Instructions emitted so far.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn fail(&mut self, what: String) {
        if self.error.is_none() {
            self.error = Some(what);
        }
    }

    /// `v` as an unsigned field of `bits` bits, recording an error if it
    /// does not fit.
    fn field(&mut self, what: &str, v: i64, bits: u32) -> u32 {
        if v < 0 || v >= (1i64 << bits) {
            self.fail(format!("{what}: {v} does not fit {bits} unsigned bits"));
            return 0;
        }
        v as u32
    }

    /// `v` as a two's complement field of `bits` bits.
    fn sfield(&mut self, what: &str, v: i64, bits: u32) -> u32 {
        let half = 1i64 << (bits - 1);
        if v < -half || v >= half {
            self.fail(format!("{what}: {v} does not fit {bits} signed bits"));
            return 0;
        }
        (v as u32) & ((1u32 << bits) - 1)
    }

    /// `v / scale` when `v` is a multiple of `scale`.
    fn scaled(&mut self, what: &str, v: i64, scale: i64) -> i64 {
        if v % scale != 0 {
            self.fail(format!("{what}: {v} is not a multiple of {scale}"));
        }
        v / scale
    }

    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `l` to the next instruction.
    pub fn bind(&mut self, l: Label) {
        if self.labels[l.0].is_some() {
            self.fail(format!("label {} bound twice", l.0));
        }
        self.labels[l.0] = Some(self.words.len());
    }

    fn branch(&mut self, word: u32, l: Label, fix: Fix) {
        self.fixups.push((self.words.len(), l, fix));
        self.words.push(word);
    }

    /// The code as little-endian bytes, or the first encoding error.
    pub fn finish(mut self) -> Result<Vec<u8>, String> {
        for &(at, l, fix) in &self.fixups.clone() {
            let Some(to) = self.labels[l.0] else {
                self.fail(format!("label {} never bound", l.0));
                continue;
            };
            let d = to as i64 - at as i64;
            let (bits, shift) = match fix {
                Fix::Imm19 => (19, 5),
                Fix::Imm14 => (14, 5),
                Fix::Imm26 => (26, 0),
            };
            let f = self.sfield("branch distance", d, bits);
            self.words[at] |= f << shift;
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.words.iter().flat_map(|w| w.to_le_bytes()).collect()),
        }
    }

    // ---- moves and arithmetic ----

    /// `movz xd, #imm16, lsl #(16 * hw)`
    pub fn movz(&mut self, d: X, imm16: u16, hw: u32) {
        let hw = self.field("movz shift", hw as i64, 2);
        self.emit(0xD280_0000 | hw << 21 | (imm16 as u32) << 5 | d.0 as u32);
    }

    /// `movk xd, #imm16, lsl #(16 * hw)`
    pub fn movk(&mut self, d: X, imm16: u16, hw: u32) {
        let hw = self.field("movk shift", hw as i64, 2);
        self.emit(0xF280_0000 | hw << 21 | (imm16 as u32) << 5 | d.0 as u32);
    }

    /// Loads any 64-bit constant (movz plus a movk per further non-zero
    /// half-word).
    pub fn mov_imm(&mut self, d: X, v: u64) {
        let halves: Vec<(u32, u16)> = (0..4)
            .map(|hw| (hw, (v >> (16 * hw)) as u16))
            .filter(|&(_, h)| h != 0)
            .collect();
        match halves.split_first() {
            None => self.movz(d, 0, 0),
            Some((&(hw, h), rest)) => {
                self.movz(d, h, hw);
                for &(hw, h) in rest {
                    self.movk(d, h, hw);
                }
            }
        }
    }

    /// `mov xd, xm` (`orr xd, xzr, xm`)
    pub fn mov(&mut self, d: X, m: X) {
        self.emit(0xAA00_03E0 | (m.0 as u32) << 16 | d.0 as u32);
    }

    /// `add xd, xn, #imm` (0..4095; `xn`/`xd` 31 = sp)
    pub fn add_imm(&mut self, d: X, n: X, imm: i64) {
        let i = self.field("add immediate", imm, 12);
        self.emit(0x9100_0000 | i << 10 | (n.0 as u32) << 5 | d.0 as u32);
    }

    /// `p += bytes` for any sign or size: one add/sub immediate when it
    /// fits, else through `tmp`.
    pub fn add_bytes(&mut self, p: X, bytes: i64, tmp: X) {
        match bytes {
            0 => {}
            b @ 1..4096 => self.add_imm(p, p, b),
            b @ -4095..0 => self.sub_imm(p, p, -b),
            b => {
                self.mov_imm(tmp, b as u64);
                self.add(p, p, tmp, 0);
            }
        }
    }

    /// `sub xd, xn, #imm`
    pub fn sub_imm(&mut self, d: X, n: X, imm: i64) {
        let i = self.field("sub immediate", imm, 12);
        self.emit(0xD100_0000 | i << 10 | (n.0 as u32) << 5 | d.0 as u32);
    }

    /// `subs xd, xn, #imm`
    pub fn subs_imm(&mut self, d: X, n: X, imm: i64) {
        let i = self.field("subs immediate", imm, 12);
        self.emit(0xF100_0000 | i << 10 | (n.0 as u32) << 5 | d.0 as u32);
    }

    /// `add xd, xn, xm, lsl #shift`
    pub fn add(&mut self, d: X, n: X, m: X, shift: u32) {
        let s = self.field("add shift", shift as i64, 6);
        self.emit(0x8B00_0000 | (m.0 as u32) << 16 | s << 10 | (n.0 as u32) << 5 | d.0 as u32);
    }

    /// `sub xd, xn, xm`
    pub fn sub(&mut self, d: X, n: X, m: X) {
        self.emit(0xCB00_0000 | (m.0 as u32) << 16 | (n.0 as u32) << 5 | d.0 as u32);
    }

    /// `cmp xn, xm`
    pub fn cmp(&mut self, n: X, m: X) {
        self.emit(0xEB00_001F | (m.0 as u32) << 16 | (n.0 as u32) << 5);
    }

    /// `csel xd, xn, xm, cond`
    pub fn csel(&mut self, d: X, n: X, m: X, c: Cond) {
        self.emit(
            0x9A80_0000 | (m.0 as u32) << 16 | (c as u32) << 12 | (n.0 as u32) << 5 | d.0 as u32,
        );
    }

    /// `ubfx xd, xn, #lsb, #width`
    pub fn ubfx(&mut self, d: X, n: X, lsb: u32, width: u32) {
        if width == 0 || lsb + width > 64 {
            self.fail(format!("ubfx #{lsb}, #{width}"));
            return;
        }
        self.emit(
            0xD340_0000 | lsb << 16 | (lsb + width - 1) << 10 | (n.0 as u32) << 5 | d.0 as u32,
        );
    }

    // ---- branches ----

    pub fn b(&mut self, l: Label) {
        self.branch(0x1400_0000, l, Fix::Imm26);
    }

    pub fn b_cond(&mut self, c: Cond, l: Label) {
        self.branch(0x5400_0000 | c as u32, l, Fix::Imm19);
    }

    pub fn cbz(&mut self, t: X, l: Label) {
        self.branch(0xB400_0000 | t.0 as u32, l, Fix::Imm19);
    }

    pub fn cbnz(&mut self, t: X, l: Label) {
        self.branch(0xB500_0000 | t.0 as u32, l, Fix::Imm19);
    }

    /// `tbz xt, #bit, l` (branch if the bit is clear)
    pub fn tbz(&mut self, t: X, bit: u32, l: Label) {
        let w = 0x3600_0000 | (bit >> 5) << 31 | (bit & 31) << 19 | t.0 as u32;
        self.branch(w, l, Fix::Imm14);
    }

    /// `tbnz xt, #bit, l`
    pub fn tbnz(&mut self, t: X, bit: u32, l: Label) {
        let w = 0x3700_0000 | (bit >> 5) << 31 | (bit & 31) << 19 | t.0 as u32;
        self.branch(w, l, Fix::Imm14);
    }

    pub fn ret(&mut self) {
        self.emit(0xD65F_03C0);
    }

    // ---- the stack ----

    /// `stp xa, xb, [sp, #-off]!`
    pub fn stp_pre(&mut self, a: X, b: X, off: i64) {
        let o = self.scaled("stp offset", -off, 8);
        let i = self.sfield("stp offset", o, 7);
        self.emit(0xA980_0000 | i << 15 | (b.0 as u32) << 10 | (SP.0 as u32) << 5 | a.0 as u32);
    }

    /// `ldp xa, xb, [sp], #off`
    pub fn ldp_post(&mut self, a: X, b: X, off: i64) {
        let o = self.scaled("ldp offset", off, 8);
        let i = self.sfield("ldp offset", o, 7);
        self.emit(0xA8C0_0000 | i << 15 | (b.0 as u32) << 10 | (SP.0 as u32) << 5 | a.0 as u32);
    }
}
