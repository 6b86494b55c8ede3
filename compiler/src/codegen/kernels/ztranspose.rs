//! A 16x16 transpose of 4-byte elements in AVX-512 machine code, the tile
//! of the layout pass's NCHW <-> NHWC conversions on AVX-512 targets: 16
//! row loads, four shuffle stages (`vunpck{l,h}ps`, `vunpck{l,h}pd`, two
//! of `vshuff32x4`) and 16 row stores, where the portable form moves one
//! element per load and store.
//!
//! ABI (System V): `(src, dst, ctl)`; rows are `src_stride` / `dst_stride`
//! bytes apart (immediates). The edge form reads only the input columns
//! in `ctl` bits 0-15 of the input rows in bits 16-31, and writes only
//! those output rows and columns.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, FuncRef, InstBuilder, Signature, Value};
use iced_x86::IcedError;
use iced_x86::code_asm::*;

use crate::codegen::builder::Kb;
use crate::codegen::lower::Lower;
use crate::error::{Error, Result};

/// Side of the tile.
pub const T: usize = 16;

/// Defines the tile functions for these strides: [full, edge].
pub fn define(
    lw: &mut Lower,
    src_stride: i64,
    dst_stride: i64,
) -> Result<[cranelift_module::FuncId; 2]> {
    let mut sig = Signature::new(lw.cc);
    sig.params.extend([AbiParam::new(I64); 3]);
    let mut ids = Vec::new();
    for edge in [false, true] {
        let bytes = assemble(src_stride, dst_stride, edge)
            .map_err(|e| Error::Internal(format!("assembling transpose tile: {e}")))?;
        ids.push(lw.machine_code(&sig, &bytes)?);
    }
    Ok([ids[0], ids[1]])
}

/// The `ctl` bits of the input rows of a tile with `left` rows to go
/// (all 16 when at least 16 are left).
pub fn row_bits(kb: &mut Kb, left: Value) -> Value {
    let sixteen = kb.i(T as i64);
    let n = kb.b.ins().smin(left, sixteen);
    let one = kb.i(1);
    let rows = kb.b.ins().ishl(one, n);
    let rows = kb.addi(rows, -1);
    kb.b.ins().ishl_imm_u(rows, 16)
}

/// Calls the tile (`refs`: [`define`]'s pair) on `src`/`dst`: the full
/// form where `ctl` selects everything, else the edge form.
pub fn call(kb: &mut Kb, refs: &[FuncRef], src: Value, dst: Value, ctl: Value) {
    let is_full = kb.b.ins().icmp_imm_s(IntCC::Equal, ctl, 0xffff_ffff);
    let tb = kb.b.create_block();
    let eb = kb.b.create_block();
    let done = kb.b.create_block();
    kb.b.ins().brif(is_full, tb, &[], eb, &[]);
    for (blk, f) in [(tb, refs[0]), (eb, refs[1])] {
        kb.b.switch_to_block(blk);
        kb.b.ins().call(f, &[src, dst, ctl]);
        kb.b.ins().jump(done, &[]);
    }
    kb.b.switch_to_block(done);
}

const Z: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14,
    zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27,
    zmm28, zmm29, zmm30, zmm31,
];

fn assemble(sstride: i64, dstride: i64, edge: bool) -> std::result::Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let (r, t) = (&Z[..T], &Z[T..]);
    if edge {
        a.kmovw(k1, edx)?;
        a.mov(eax, edx)?;
        a.shr(eax, 16)?;
        a.kmovw(k2, eax)?;
    }
    for (i, &reg) in r.iter().enumerate() {
        let src = zmmword_ptr(rdi + i as i64 * sstride);
        if edge {
            let mut skip = a.create_label();
            a.vpxord(reg, reg, reg)?;
            a.bt(edx, (T + i) as u32)?;
            a.jae(skip)?;
            a.vmovups(reg.k1().z(), src)?;
            a.set_label(&mut skip)?;
        } else {
            a.vmovups(reg, src)?;
        }
    }
    // Row i ends up holding input column i in row order (see module docs).
    for p in 0..T / 2 {
        a.vunpcklps(t[2 * p], r[2 * p], r[2 * p + 1])?;
        a.vunpckhps(t[2 * p + 1], r[2 * p], r[2 * p + 1])?;
    }
    for q in 0..T / 4 {
        let b = 4 * q;
        a.vunpcklpd(r[b], t[b], t[b + 2])?;
        a.vunpckhpd(r[b + 1], t[b], t[b + 2])?;
        a.vunpcklpd(r[b + 2], t[b + 1], t[b + 3])?;
        a.vunpckhpd(r[b + 3], t[b + 1], t[b + 3])?;
    }
    for h in 0..2 {
        let b = 8 * h;
        for i in 0..4 {
            a.vshuff32x4(t[b + i], r[b + i], r[b + 4 + i], 0x88)?;
            a.vshuff32x4(t[b + 4 + i], r[b + i], r[b + 4 + i], 0xdd)?;
        }
    }
    for i in 0..8 {
        a.vshuff32x4(r[i], t[i], t[8 + i], 0x88)?;
        a.vshuff32x4(r[8 + i], t[i], t[8 + i], 0xdd)?;
    }
    for (j, &reg) in r.iter().enumerate() {
        let dst = zmmword_ptr(rsi + j as i64 * dstride);
        if edge {
            let mut skip = a.create_label();
            a.bt(edx, j as u32)?;
            a.jae(skip)?;
            a.vmovups(dst.k2(), reg)?;
            a.set_label(&mut skip)?;
        } else {
            a.vmovups(dst, reg)?;
        }
    }
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tiles_assemble() {
        for edge in [false, true] {
            let code = super::assemble(4 * 5000, 4 * 33, edge).expect("assembles");
            assert_eq!(code.last(), Some(&0xc3), "ends with ret");
        }
    }
}
