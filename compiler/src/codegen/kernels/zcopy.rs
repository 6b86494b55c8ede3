//! f32 copy and zero fill in AVX-512 machine code, behind `Kb::copy_f32`
//! and `Kb::zero_f32` on AVX-512 targets: 64 bytes per instruction and
//! one masked access for the tail, where Cranelift's x86 backend moves 16
//! bytes per loop step. The im2col gathers, A copies and attention's V
//! packing run through them.
//!
//! ABI (System V): copy `(src, dst, n)`, zero `(dst, n)`; `n` floats.
//! Ranges must not overlap.

use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, Signature};
use iced_x86::IcedError;
use iced_x86::code_asm::*;

use crate::codegen::lower::Lower;
use crate::error::{Error, Result};

type R = std::result::Result<(), IcedError>;

/// Defines [copy, zero].
pub fn define(lw: &mut Lower) -> Result<[cranelift_module::FuncId; 2]> {
    let mut ids = Vec::new();
    for zero in [false, true] {
        let bytes =
            assemble(zero).map_err(|e| Error::Internal(format!("assembling f32 copy: {e}")))?;
        let mut sig = Signature::new(lw.cc);
        sig.params
            .extend(vec![AbiParam::new(I64); if zero { 2 } else { 3 }]);
        ids.push(lw.machine_code(&sig, &bytes)?);
    }
    Ok([ids[0], ids[1]])
}

fn assemble(zero: bool) -> std::result::Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    // Registers: source (copy only), destination, count.
    let (src, dst, n, n32) = if zero {
        (rdi, rdi, rsi, esi)
    } else {
        (rdi, rsi, rdx, edx)
    };
    let regs = [zmm0, zmm1, zmm2, zmm3];
    if zero {
        a.vpxord(zmm0, zmm0, zmm0)?;
    }
    // `per` vectors at a time while at least that many remain.
    let body = |a: &mut CodeAssembler, per: usize| -> R {
        let mut lp = a.create_label();
        let mut next = a.create_label();
        let floats = 16 * per as u32;
        a.cmp(n, floats as i32)?;
        a.jb(next)?;
        a.set_label(&mut lp)?;
        for (v, &r) in regs.iter().enumerate().take(per) {
            if !zero {
                a.vmovups(r, zmmword_ptr(src + v as i32 * 64))?;
            }
        }
        for (v, &r) in regs.iter().enumerate().take(per) {
            let r = if zero { zmm0 } else { r };
            a.vmovups(zmmword_ptr(dst + v as i32 * 64), r)?;
        }
        if !zero {
            a.add(src, (floats * 4) as i32)?;
        }
        a.add(dst, (floats * 4) as i32)?;
        a.sub(n, floats as i32)?;
        a.cmp(n, floats as i32)?;
        a.jae(lp)?;
        a.set_label(&mut next)?;
        Ok(())
    };
    body(&mut a, 4)?;
    body(&mut a, 1)?;
    // The last n < 16 floats under a mask.
    a.mov(ecx, n32)?;
    a.mov(eax, 1)?;
    a.shl(eax, cl)?;
    a.dec(eax)?;
    a.kmovw(k1, eax)?;
    if !zero {
        a.vmovups(zmm0.k1().z(), zmmword_ptr(src))?;
    }
    a.vmovups(zmmword_ptr(dst).k1(), zmm0)?;
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}
