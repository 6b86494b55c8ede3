//! AVX512-BF16 compute function for `--fast-math bf16` on targets without
//! AMX (e.g. Zen 4), driven by `bf16gemm.rs`: a 28x32 f32 block as two
//! 14-row register tiles (28 zmm accumulators, two for the packed B pair
//! row, two for A broadcasts), `vdpbf16ps` over the whole depth. Each
//! step takes one pair of depths: a 128-byte packed B row (two zmm of 16
//! columns x 2 depths) against a broadcast dword of A (the row's two bf16
//! at those depths).

use cranelift_module::FuncId;

use super::bf16gemm::{asm_err, define};
use crate::codegen::lower::Lower;
use crate::error::Result;

/// Rows per compute call.
pub const MB: usize = 28;
const TR: usize = 14;

mod asm {
    use iced_x86::IcedError;
    use iced_x86::code_asm::*;

    use super::{MB, TR};

    const Z: [AsmRegisterZmm; 32] = [
        zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13,
        zmm14, zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26,
        zmm27, zmm28, zmm29, zmm30, zmm31,
    ];

    /// `(a_bf16, b_panel, tile_buf)`: depth `kp` (a multiple of 32), A rows
    /// `ldap` bytes apart; stores 28 rows of 128 bytes.
    pub(super) fn compute(kp: usize, ldap: i64) -> std::result::Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let acc = |i: usize, h: usize| Z[2 * i + h];
        let (b0, b1) = (Z[28], Z[29]);
        for sub in 0..MB / TR {
            a.lea(r8, ptr(rdi + (sub * TR) as i32 * ldap as i32))?;
            a.mov(r9, rsi)?;
            for i in 0..TR {
                for h in 0..2 {
                    a.vpxord(acc(i, h), acc(i, h), acc(i, h))?;
                }
            }
            a.mov(rax, (kp / 4) as u64)?;
            let mut step = a.create_label();
            a.set_label(&mut step)?;
            for pair in 0..2i32 {
                a.vmovups(b0, zmmword_ptr(r9 + pair * 128))?;
                a.vmovups(b1, zmmword_ptr(r9 + (pair * 128 + 64)))?;
                for i in 0..TR {
                    let bc = Z[30 + i % 2];
                    a.vpbroadcastd(bc, dword_ptr(r8 + (i as i32 * ldap as i32 + pair * 4)))?;
                    a.vdpbf16ps(acc(i, 0), b0, bc)?;
                    a.vdpbf16ps(acc(i, 1), b1, bc)?;
                }
            }
            a.add(r8, 8)?;
            a.add(r9, 256)?;
            a.dec(rax)?;
            a.jnz(step)?;
            for i in 0..TR {
                for h in 0..2 {
                    let off = ((sub * TR + i) * 128 + h * 64) as i32;
                    a.vmovups(zmmword_ptr(rdx + off), acc(i, h))?;
                }
            }
        }
        a.vzeroupper()?;
        a.ret()?;
        a.assemble(0)
    }
}

pub fn define_compute(lw: &mut Lower, kp: usize, ldap: usize) -> Result<FuncId> {
    define(
        lw,
        3,
        asm::compute(kp, ldap as i64).map_err(asm_err("AVX512-BF16 tile")),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn compute_assembles() {
        let code = super::asm::compute(96, 256).expect("assembles");
        assert_eq!(code.last(), Some(&0xc3), "ends with ret");
    }
}
