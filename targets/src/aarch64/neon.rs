//! NEON (Advanced SIMD) instructions on four f32 lanes (`.4s`) and the
//! `q`/`s` loads and stores around them.

use super::{Asm, V, X};

fn vr(v: V) -> u32 {
    v.0 as u32
}

impl Asm {
    /// `ldr qt, [xn, #bytes]`
    pub fn ldr_q(&mut self, t: V, n: X, bytes: i64) {
        let o = self.scaled("ldr q offset", bytes, 16);
        let i = self.field("ldr q offset", o, 12);
        self.emit(0x3DC0_0000 | i << 10 | (n.0 as u32) << 5 | vr(t));
    }

    /// `ldr qt, [xn, xm]`
    pub fn ldr_q_x(&mut self, t: V, n: X, m: X) {
        self.emit(0x3CE0_6800 | (m.0 as u32) << 16 | (n.0 as u32) << 5 | vr(t));
    }

    /// `str qt, [xn, #bytes]`
    pub fn str_q(&mut self, t: V, n: X, bytes: i64) {
        let o = self.scaled("str q offset", bytes, 16);
        let i = self.field("str q offset", o, 12);
        self.emit(0x3D80_0000 | i << 10 | (n.0 as u32) << 5 | vr(t));
    }

    /// `ldp qa, qb, [xn, #bytes]`
    pub fn ldp_q(&mut self, a: V, b: V, n: X, bytes: i64) {
        let o = self.scaled("ldp q offset", bytes, 16);
        let i = self.sfield("ldp q offset", o, 7);
        self.emit(0xAD40_0000 | i << 15 | vr(b) << 10 | (n.0 as u32) << 5 | vr(a));
    }

    /// `ldr st, [xn, #bytes]`
    pub fn ldr_s(&mut self, t: V, n: X, bytes: i64) {
        let o = self.scaled("ldr s offset", bytes, 4);
        let i = self.field("ldr s offset", o, 12);
        self.emit(0xBD40_0000 | i << 10 | (n.0 as u32) << 5 | vr(t));
    }

    /// `str st, [xn, #bytes]`
    pub fn str_s(&mut self, t: V, n: X, bytes: i64) {
        let o = self.scaled("str s offset", bytes, 4);
        let i = self.field("str s offset", o, 12);
        self.emit(0xBD00_0000 | i << 10 | (n.0 as u32) << 5 | vr(t));
    }

    /// `ldr st, [xn, xm]` (byte offset)
    pub fn ldr_s_x(&mut self, t: V, n: X, m: X) {
        self.emit(0xBC60_6800 | (m.0 as u32) << 16 | (n.0 as u32) << 5 | vr(t));
    }

    /// `str st, [xn, xm]` (byte offset)
    pub fn str_s_x(&mut self, t: V, n: X, m: X) {
        self.emit(0xBC20_6800 | (m.0 as u32) << 16 | (n.0 as u32) << 5 | vr(t));
    }

    /// `ld1r {vt.4s}, [xn]`
    pub fn ld1r_4s(&mut self, t: V, n: X) {
        self.emit(0x4D40_C800 | (n.0 as u32) << 5 | vr(t));
    }

    /// `fmla vd.4s, vn.4s, vm.s[idx]`
    pub fn fmla_4s_idx(&mut self, d: V, n: V, m: V, idx: u32) {
        let i = self.field("fmla lane", idx as i64, 2);
        let (h, l) = (i >> 1, i & 1);
        self.emit(0x4F80_1000 | l << 21 | vr(m) << 16 | h << 11 | vr(n) << 5 | vr(d));
    }

    /// `fmla vd.4s, vn.4s, vm.4s`
    pub fn fmla_4s(&mut self, d: V, n: V, m: V) {
        self.emit(0x4E20_CC00 | vr(m) << 16 | vr(n) << 5 | vr(d));
    }

    /// `fadd vd.4s, vn.4s, vm.4s`
    pub fn fadd_4s(&mut self, d: V, n: V, m: V) {
        self.emit(0x4E20_D400 | vr(m) << 16 | vr(n) << 5 | vr(d));
    }

    /// `fmul vd.4s, vn.4s, vm.4s`
    pub fn fmul_4s(&mut self, d: V, n: V, m: V) {
        self.emit(0x6E20_DC00 | vr(m) << 16 | vr(n) << 5 | vr(d));
    }

    /// `fmax vd.4s, vn.4s, vm.4s` (NaN if either is NaN)
    pub fn fmax_4s(&mut self, d: V, n: V, m: V) {
        self.emit(0x4E20_F400 | vr(m) << 16 | vr(n) << 5 | vr(d));
    }

    /// `fmin vd.4s, vn.4s, vm.4s`
    pub fn fmin_4s(&mut self, d: V, n: V, m: V) {
        self.emit(0x4EA0_F400 | vr(m) << 16 | vr(n) << 5 | vr(d));
    }

    /// `dup vd.4s, wn`
    pub fn dup_4s(&mut self, d: V, n: X) {
        self.emit(0x4E04_0C00 | (n.0 as u32) << 5 | vr(d));
    }

    /// `movi vd.2d, #0`
    pub fn zero_q(&mut self, d: V) {
        self.emit(0x6F00_E400 | vr(d));
    }
}
