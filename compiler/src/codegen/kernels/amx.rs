//! AMX-BF16 machine code for `--fast-math bf16` (driven by `bf16gemm.rs`):
//! the compute function (a 32x32 f32 block in four 16x16 accumulator
//! tiles, `tdpbf16ps` over the whole depth), the tile configuration and
//! release functions the driver calls around each task, and the
//! permission request `N_run` makes before the first step.
//!
//! Tiles: tmm0-3 accumulate C rows 0-15/16-31 x columns 0-15/16-31; tmm4/5
//! hold A rows 0-15/16-31 for 32 depths (16 rows x 64 bytes, stride = the
//! converted A's row stride); tmm6/7 hold B columns 0-15/16-31 for the same
//! 32 depths as 16 pair rows of 64 bytes (stride 128 = one packed pair row
//! of the 32-column panel).

use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, Signature};
use cranelift_module::FuncId;

use super::bf16gemm::{asm_err, define};
use crate::codegen::lower::Lower;
use crate::error::Result;

/// Rows per compute call.
pub const MB: usize = 32;

mod asm {
    use iced_x86::IcedError;
    use iced_x86::code_asm::*;

    type R = std::result::Result<Vec<u8>, IcedError>;

    /// `(a_bf16, b_panel, tile_buf)`: depth `kp` (a multiple of 32), A rows
    /// `ldap` bytes apart; stores the block as 32 rows of 128 bytes.
    pub(super) fn compute(kp: usize, ldap: i64) -> R {
        let mut a = CodeAssembler::new(64)?;
        for t in [tmm0, tmm1, tmm2, tmm3] {
            a.tilezero(t)?;
        }
        a.mov(r10, ldap)?;
        a.mov(r11, 128u64)?;
        a.mov(rax, (kp / 32) as u64)?;
        let mut step = a.create_label();
        a.set_label(&mut step)?;
        a.tileloadd(tmm4, ptr(rdi + r10))?;
        a.tileloadd(tmm6, ptr(rsi + r11))?;
        a.tileloadd(tmm7, ptr(rsi + r11 + 64))?;
        a.tdpbf16ps(tmm0, tmm4, tmm6)?;
        a.tdpbf16ps(tmm1, tmm4, tmm7)?;
        a.tileloadd(tmm5, ptr(rdi + r10 + (16 * ldap) as i32))?;
        a.tdpbf16ps(tmm2, tmm5, tmm6)?;
        a.tdpbf16ps(tmm3, tmm5, tmm7)?;
        a.add(rdi, 64)?;
        a.add(rsi, 16 * 128)?;
        a.dec(rax)?;
        a.jnz(step)?;
        a.tilestored(ptr(rdx + r11), tmm0)?;
        a.tilestored(ptr(rdx + r11 + 64), tmm1)?;
        a.tilestored(ptr(rdx + r11 + 16 * 128), tmm2)?;
        a.tilestored(ptr(rdx + r11 + (16 * 128 + 64)), tmm3)?;
        a.ret()?;
        a.assemble(0)
    }

    /// Loads the palette-1 configuration: tmm0-7 all 16 rows x 64 bytes.
    pub(super) fn config() -> R {
        let mut a = CodeAssembler::new(64)?;
        a.sub(rsp, 64)?;
        a.vpxord(zmm0, zmm0, zmm0)?;
        a.vmovdqu64(zmmword_ptr(rsp), zmm0)?;
        a.mov(byte_ptr(rsp), 1u32)?;
        for t in 0..8 {
            a.mov(word_ptr(rsp + (16 + 2 * t)), 64u32)?;
            a.mov(byte_ptr(rsp + (48 + t)), 16u32)?;
        }
        a.ldtilecfg(ptr(rsp))?;
        a.add(rsp, 64)?;
        a.vzeroupper()?;
        a.ret()?;
        a.assemble(0)
    }

    pub(super) fn release() -> R {
        let mut a = CodeAssembler::new(64)?;
        a.tilerelease()?;
        a.ret()?;
        a.assemble(0)
    }

    /// `() -> i64`: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA),
    /// 0 or a negative errno.
    pub(super) fn permission() -> R {
        let mut a = CodeAssembler::new(64)?;
        a.mov(eax, 158u32)?; // SYS_arch_prctl
        a.mov(edi, cpucc_runtime::amx::ARCH_REQ_XCOMP_PERM as u32)?;
        a.mov(esi, cpucc_runtime::amx::XFEATURE_XTILEDATA as u32)?;
        a.syscall()?;
        a.ret()?;
        a.assemble(0)
    }
}

pub fn define_compute(lw: &mut Lower, kp: usize, ldap: usize) -> Result<FuncId> {
    define(
        lw,
        3,
        asm::compute(kp, ldap as i64).map_err(asm_err("AMX tile")),
    )
}

pub fn define_config(lw: &mut Lower) -> Result<FuncId> {
    define(lw, 0, asm::config().map_err(asm_err("AMX tile config")))
}

pub fn define_release(lw: &mut Lower) -> Result<FuncId> {
    define(lw, 0, asm::release().map_err(asm_err("AMX tile release")))
}

/// `() -> i64` asking Linux for AMX permission (0 when granted).
pub fn permission_function(lw: &mut Lower) -> Result<FuncId> {
    let bytes = asm::permission().map_err(asm_err("AMX permission"))?;
    let mut sig = Signature::new(lw.cc);
    sig.returns.push(AbiParam::new(I64));
    lw.machine_code(&sig, &bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn functions_assemble() {
        for code in [
            super::asm::compute(4096, 8256),
            super::asm::config(),
            super::asm::release(),
            super::asm::permission(),
        ] {
            assert_eq!(
                code.expect("assembles").last(),
                Some(&0xc3),
                "ends with ret"
            );
        }
    }
}
