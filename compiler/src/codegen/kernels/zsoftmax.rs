//! Softmax of one contiguous f32 row in AVX-512 machine code, sixteen
//! lanes at a time: a max pass, a pass storing exp(x - max) and summing
//! it, and a scaling pass, all with a masked partial vector instead of a
//! scalar tail. The Softmax op runs it on contiguous rows; attention runs
//! it on its score rows after the QKᵀ tile epilogue has applied the scale
//! and the additive mask.
//!
//! ABI (System V): `(src, dst, live)`; the row length `n` is an
//! immediate. The plain form normalizes the whole row and ignores `live`.
//! The attention form normalizes only the first `live` keys (clamped to
//! `[0, n]`: the causal and padding masks hide a suffix), writes 0 over the
//! rest, and gives a row without a finite logit all zeros (ONNX
//! Attention's fully masked row).

use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, Signature};
use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::zact::{self, Consts, LIM};
use crate::codegen::lower::Lower;
use crate::error::{Error, Result};

type R = std::result::Result<(), IcedError>;

/// Defines the row function for rows of `n` floats.
pub fn define(lw: &mut Lower, n: usize, attention: bool) -> Result<cranelift_module::FuncId> {
    let bytes = assemble(n, attention)
        .map_err(|e| Error::Internal(format!("assembling softmax row: {e}")))?;
    let mut sig = Signature::new(lw.cc);
    sig.params.extend([AbiParam::new(I64); 3]);
    lw.machine_code(&sig, &bytes)
}

/// `vcmpps` predicates (ordered, quiet).
const EQ_OQ: i32 = 0x00;
const LT_OQ: i32 = 0x11;

/// Runs `body` over the row's vectors: the `r8` full ones (r9 = byte
/// offset; `false`), then the partial one of lanes k1 (`true`), which may
/// be empty: masked accesses to its absent lanes neither fault nor store.
pub(super) fn each_vector(
    a: &mut CodeAssembler,
    body: &mut dyn FnMut(&mut CodeAssembler, bool) -> R,
) -> R {
    let mut lp = a.create_label();
    let mut tail = a.create_label();
    a.xor(r9d, r9d)?;
    a.mov(r10, r8)?;
    a.test(r10, r10)?;
    a.jz(tail)?;
    a.set_label(&mut lp)?;
    body(a, false)?;
    a.add(r9, 64)?;
    a.dec(r10)?;
    a.jnz(lp)?;
    a.set_label(&mut tail)?;
    body(a, true)
}

/// Loads the row's vector at r9 from `base` (the partial one zero-filled
/// past k1).
pub(super) fn load(a: &mut CodeAssembler, r: AsmRegisterZmm, base: AsmRegister64, part: bool) -> R {
    let src = zmmword_ptr(base + r9);
    if part {
        a.vmovups(r.k1().z(), src)
    } else {
        a.vmovups(r, src)
    }
}

/// Stores `r` to the row at r9 of the destination (rsi), the partial
/// vector's lanes k1 only.
pub(super) fn store(a: &mut CodeAssembler, r: AsmRegisterZmm, part: bool) -> R {
    let dst = zmmword_ptr(rsi + r9);
    if part {
        a.vmovups(dst.k1(), r)
    } else {
        a.vmovups(dst, r)
    }
}

/// Reduces zmm `v` (clobbering `t`) with `op` into lane 0 of its xmm.
pub(super) fn reduce(
    a: &mut CodeAssembler,
    (v, vy, vx): (AsmRegisterZmm, AsmRegisterYmm, AsmRegisterXmm),
    (ty, tx): (AsmRegisterYmm, AsmRegisterXmm),
    max: bool,
) -> R {
    a.vextractf64x4(ty, v, 1)?;
    if max {
        a.vmaxps(vy, vy, ty)?;
    } else {
        a.vaddps(vy, vy, ty)?;
    }
    a.vextractf128(tx, vy, 1)?;
    for step in 0..3 {
        match step {
            0 => {}
            1 => a.vmovhlps(tx, tx, vx)?,
            _ => a.vmovshdup(tx, vx)?,
        }
        if max {
            a.vmaxps(vx, vx, tx)?;
        } else {
            a.vaddps(vx, vx, tx)?;
        }
    }
    Ok(())
}

fn assemble(n: usize, attention: bool) -> std::result::Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut c = Consts::default();
    let nvec = n.div_ceil(16) as i32;
    let last_lanes: u32 = if n.is_multiple_of(16) {
        0xffff
    } else {
        (1 << (n % 16)) - 1
    };
    // zmm0 max, zmm1 sum, zmm2-4 exp, zmm5 1/sum, zmm6 -LIM.
    if attention {
        a.mov(rax, n as i64)?;
        a.cmp(rdx, rax)?;
        a.cmovg(rdx, rax)?;
        a.xor(eax, eax)?;
        a.test(rdx, rdx)?;
        a.cmovl(rdx, rax)?;
    } else {
        a.mov(edx, n as u32)?;
    }
    a.mov(r8, rdx)?;
    a.shr(r8, 4)?;
    a.mov(ecx, edx)?;
    a.and(ecx, 15)?;
    a.mov(eax, 1)?;
    a.shl(eax, cl)?;
    a.dec(eax)?;
    a.kmovw(k1, eax)?;

    c.splat(&mut a, zmm0, f32::NEG_INFINITY)?;
    each_vector(&mut a, &mut |a, part| {
        let src = zmmword_ptr(rdi + r9);
        if part {
            a.vmaxps(zmm0.k1(), zmm0, src)
        } else {
            a.vmaxps(zmm0, zmm0, src)
        }
    })?;
    reduce(&mut a, (zmm0, ymm0, xmm0), (ymm5, xmm5), true)?;
    a.vbroadcastss(zmm0, xmm0)?;
    let mut dead = a.create_label();
    if attention {
        let m = c.bc(&mut a, f32::NEG_INFINITY);
        a.vcmpps(k2, zmm0, m, EQ_OQ)?;
        a.kortestw(k2, k2)?;
        a.jnz(dead)?;
    }

    c.splat(&mut a, zmm6, -LIM)?;
    a.vpxord(zmm1, zmm1, zmm1)?;
    each_vector(&mut a, &mut |a, part| {
        load(a, zmm2, rdi, part)?;
        a.vsubps(zmm2, zmm2, zmm0)?;
        // exp underflows below -LIM: flushed to 0 rather than subnormal.
        a.vcmpps(k3, zmm2, zmm6, LT_OQ)?;
        a.vmaxps(zmm2, zmm6, zmm2)?;
        zact::exp(a, &mut c, zmm2, zmm3, zmm4)?;
        a.vxorps(zmm3.k3(), zmm3, zmm3)?;
        if part {
            a.vmovaps(zmm3.k1().z(), zmm3)?;
        }
        store(a, zmm3, part)?;
        a.vaddps(zmm1, zmm1, zmm3)
    })?;
    reduce(&mut a, (zmm1, ymm1, xmm1), (ymm5, xmm5), false)?;
    a.mov(eax, 1.0f32.to_bits())?;
    a.vmovd(xmm5, eax)?;
    a.vdivss(xmm5, xmm5, xmm1)?;
    a.vbroadcastss(zmm5, xmm5)?;
    each_vector(&mut a, &mut |a, part| {
        load(a, zmm2, rsi, part)?;
        a.vmulps(zmm2, zmm2, zmm5)?;
        store(a, zmm2, part)
    })?;

    if attention {
        // Zeros from key `live` (rdx) on: lanes at or past it of its
        // vector, then whole vectors, the last cut at n.
        let mut fill = a.create_label();
        let mut lp = a.create_label();
        let mut cut = a.create_label();
        let mut done = a.create_label();
        a.jmp(fill)?;
        a.set_label(&mut dead)?;
        a.xor(edx, edx)?;
        a.set_label(&mut fill)?;
        a.mov(r9, rdx)?;
        a.shr(r9, 4)?;
        a.mov(ecx, edx)?;
        a.and(ecx, 15)?;
        a.mov(eax, -1)?;
        a.shl(eax, cl)?;
        a.vpxord(zmm2, zmm2, zmm2)?;
        a.set_label(&mut lp)?;
        a.cmp(r9, nvec)?;
        a.jae(done)?;
        a.mov(r10d, eax)?;
        a.cmp(r9, nvec - 1)?;
        a.jne(cut)?;
        a.and(r10d, last_lanes)?;
        a.set_label(&mut cut)?;
        a.kmovw(k3, r10d)?;
        a.mov(r11, r9)?;
        a.shl(r11, 6)?;
        a.vmovups(zmmword_ptr(rsi + r11).k3(), zmm2)?;
        a.mov(eax, -1)?;
        a.inc(r9)?;
        a.jmp(lp)?;
        a.set_label(&mut done)?;
    }
    a.vzeroupper()?;
    a.ret()?;
    c.emit(&mut a)?;
    a.assemble(0)
}

#[cfg(test)]
mod tests {
    /// Every row length and form encodes (immediates past 8 bits, rows
    /// of one partial vector).
    #[test]
    fn rows_assemble() {
        for n in [1, 16, 128, 5000] {
            for attention in [false, true] {
                super::assemble(n, attention).expect("assembles");
            }
        }
    }
}
