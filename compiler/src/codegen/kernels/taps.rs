//! Kernel-tap loops shared by the scalar direct convolutions (ConvInteger,
//! QLinearConv) and ConvTranspose: a nest over kernel offsets in every
//! spatial dimension that yields the x and w element offsets of each tap
//! inside the input.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};

use crate::codegen::builder::Kb;

/// One spatial dimension: the output coordinate and its geometry.
pub struct Dim {
    pub o: Value,
    pub begin: i64,
    pub stride: i64,
    pub dil: i64,
    pub in_len: i64,
    pub k_len: i64,
    pub x_st: i64,
    pub w_st: i64,
}

/// How an output coordinate reaches the input.
#[derive(Clone, Copy)]
pub enum Direction {
    /// Convolution: i = o * stride + k * dilation - begin.
    Forward,
    /// Transposed (gather form): i = (o + begin - k * dilation) / stride,
    /// a tap only when that division is exact.
    Transposed,
}

/// Loops over kernel offsets of `dims`; `tap(kb, x offset, w offset)` runs
/// for taps inside the input (`ok` and every dimension's bounds hold).
pub fn taps(
    kb: &mut Kb,
    dims: &[Dim],
    dir: Direction,
    xo: Value,
    wo: Value,
    ok: Value,
    tap: &mut dyn FnMut(&mut Kb, Value, Value),
) {
    let Some((d, rest)) = dims.split_first() else {
        kb.if_(ok, |kb| tap(kb, xo, wo));
        return;
    };
    let (z, kn) = (kb.i(0), kb.i(d.k_len));
    kb.for_range(z, kn, 1, |kb, k| {
        let kd = kb.muli(k, d.dil);
        let (i, valid) = match dir {
            Direction::Forward => {
                let i = kb.muli(d.o, d.stride);
                let i = kb.add(i, kd);
                let i = kb.addi(i, -d.begin);
                let lo = kb.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, i, 0);
                (i, lo)
            }
            Direction::Transposed => {
                let t = kb.addi(d.o, d.begin);
                let t = kb.b.ins().isub(t, kd);
                let nonneg = kb.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, t, 0);
                if d.stride == 1 {
                    (t, nonneg)
                } else {
                    let r = kb.b.ins().urem_imm_u(t, d.stride);
                    let exact = kb.b.ins().icmp_imm_s(IntCC::Equal, r, 0);
                    let i = kb.b.ins().udiv_imm_u(t, d.stride);
                    (i, kb.b.ins().band(nonneg, exact))
                }
            }
        };
        let inside = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, i, d.in_len);
        let v = kb.b.ins().band(valid, inside);
        let v = kb.b.ins().band(v, ok);
        let xi = kb.muli(i, d.x_st);
        let xo = kb.add(xo, xi);
        let wk = kb.muli(k, d.w_st);
        let wo = kb.add(wo, wk);
        taps(kb, rest, dir, xo, wo, v, tap);
    });
}
