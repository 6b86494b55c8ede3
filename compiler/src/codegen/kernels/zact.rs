//! Activations in AVX-512 machine code for the GEMM tile epilogue
//! (`zgemm`): applied to the accumulators in registers before the store,
//! sixteen lanes at a time, instead of an f32x4 CLIF pass over the stored
//! tile. They use four temporary registers; constants sit after the
//! function's `ret` and are read as RIP-relative broadcasts. k1 and k2
//! (the store's column masks) are left alone; k3 and k4 are scratch.
//!
//! exp is 2^n · P7(r) with n = round(x·log2 e), r = x - n·ln 2 (two
//! parts) and `vscalefps`; its argument is clamped to [-80, 80] so no
//! step makes a subnormal (each costs a microcode assist). erf is
//! Abramowitz-Stegun 7.1.26 (absolute error 1.5e-7), whose reciprocal is
//! `vrcp14ps` and one Newton step.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::gemm::Act;

type R = std::result::Result<(), IcedError>;

/// Whether [`apply`] handles `act`.
pub fn in_registers(act: Act) -> bool {
    matches!(
        act,
        Act::None | Act::Relu | Act::Clip(..) | Act::Sigmoid | Act::Gelu | Act::GeluTanh
    )
}

/// Constants the code reads, emitted after it by [`Consts::emit`].
#[derive(Default)]
pub struct Consts(Vec<(CodeLabel, u32)>);

impl Consts {
    fn label(&mut self, a: &mut CodeAssembler, bits: u32) -> CodeLabel {
        if let Some(&(l, _)) = self.0.iter().find(|(_, b)| *b == bits) {
            return l;
        }
        let l = a.create_label();
        self.0.push((l, bits));
        l
    }

    /// `x` broadcast to all lanes, as a memory operand.
    pub(super) fn bc(&mut self, a: &mut CodeAssembler, x: f32) -> AsmMemoryOperand {
        dword_bcst(self.label(a, x.to_bits()))
    }

    fn bits(&mut self, a: &mut CodeAssembler, bits: u32) -> AsmMemoryOperand {
        dword_bcst(self.label(a, bits))
    }

    /// Loads `x` into every lane of `r`.
    pub(super) fn splat(&mut self, a: &mut CodeAssembler, r: AsmRegisterZmm, x: f32) -> R {
        let l = self.label(a, x.to_bits());
        a.vbroadcastss(r, dword_ptr(l))
    }

    pub fn emit(self, a: &mut CodeAssembler) -> R {
        for (mut l, bits) in self.0 {
            a.set_label(&mut l)?;
            a.dd(&[bits])?;
        }
        Ok(())
    }
}

const SIGN: u32 = 0x8000_0000;
const ABS: u32 = 0x7fff_ffff;
pub(super) const LIM: f32 = 80.0;
/// `vcmpps` predicates: ordered, quiet (NaN compares false).
const GT_OQ: i32 = 0x1e;
const GE_OQ: i32 = 0x1d;

/// Applies `act` to each of `regs` in place with temporaries `t`; `zero`
/// is free to hold constants (Relu/Clip). An activation outside
/// [`in_registers`] is left out.
pub fn apply(
    a: &mut CodeAssembler,
    c: &mut Consts,
    act: Act,
    regs: &[AsmRegisterZmm],
    t: [AsmRegisterZmm; 4],
) -> R {
    // vmaxps/vminps return their second source when either is NaN: the
    // value goes second so NaN propagates like the interpreter's.
    match act {
        Act::Relu => {
            a.vpxord(t[0], t[0], t[0])?;
            for &x in regs {
                a.vmaxps(x, t[0], x)?;
            }
        }
        Act::Clip(lo, hi) => {
            c.splat(a, t[0], lo)?;
            c.splat(a, t[1], hi)?;
            for &x in regs {
                a.vmaxps(x, t[0], x)?;
                a.vminps(x, t[1], x)?;
            }
        }
        Act::Sigmoid => {
            for &x in regs {
                let m = c.bits(a, SIGN);
                a.vxorps(t[0], x, m)?;
                clamp(a, c, t[0], t[1])?;
                exp(a, c, t[0], t[1], t[2])?;
                one_plus_recip(a, c, t[1], t[2])?;
                a.vmovaps(x, t[2])?;
            }
        }
        Act::GeluTanh => {
            // 0.5x(1 + tanh(u)) = x·sigmoid(2u), u = √(2/π)(x + 0.044715x³).
            let k = -2.0 * (2.0 / std::f64::consts::PI).sqrt();
            for &x in regs {
                a.vmulps(t[0], x, x)?;
                c.splat(a, t[1], k as f32)?;
                let m = c.bc(a, (k * 0.044_715) as f32);
                a.vfmadd231ps(t[1], t[0], m)?;
                a.vmulps(t[0], t[1], x)?;
                clamp(a, c, t[0], t[1])?;
                exp(a, c, t[0], t[1], t[2])?;
                one_plus_recip(a, c, t[1], t[2])?;
                a.vmulps(x, x, t[2])?;
            }
        }
        Act::Gelu => {
            for &x in regs {
                gelu(a, c, x, t)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `w = min(max(w, -LIM), LIM)`, NaN kept, and k4 set where `w` was above
/// `LIM` (where 1 / (1 + exp(w)) is 0); clobbers `tmp`.
fn clamp(a: &mut CodeAssembler, c: &mut Consts, w: AsmRegisterZmm, tmp: AsmRegisterZmm) -> R {
    c.splat(a, tmp, LIM)?;
    a.vcmpps(k4, w, tmp, GT_OQ)?;
    a.vminps(w, tmp, w)?;
    c.splat(a, tmp, -LIM)?;
    a.vmaxps(w, tmp, w)
}

/// `e = exp(w)` for `w` in [-LIM, LIM]; clobbers `w` and `n`.
pub(super) fn exp(
    a: &mut CodeAssembler,
    c: &mut Consts,
    w: AsmRegisterZmm,
    e: AsmRegisterZmm,
    n: AsmRegisterZmm,
) -> R {
    let m = c.bc(a, std::f32::consts::LOG2_E);
    a.vmulps(n, w, m)?;
    // Round to nearest, precision exception suppressed.
    a.vrndscaleps(n, n, 8)?;
    let m = c.bc(a, -0.693_145_75);
    a.vfmadd231ps(w, n, m)?;
    let m = c.bc(a, -1.428_606_8e-6);
    a.vfmadd231ps(w, n, m)?;
    c.splat(a, e, 1.0 / 5040.0)?;
    for k in [720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        let m = c.bc(a, 1.0 / k);
        a.vfmadd213ps(e, w, m)?;
    }
    a.vscalefps(e, e, n)
}

/// `r = 1 / (1 + e)`, 0 where k4 is set (see [`clamp`]); clobbers `e`.
fn one_plus_recip(
    a: &mut CodeAssembler,
    c: &mut Consts,
    e: AsmRegisterZmm,
    r: AsmRegisterZmm,
) -> R {
    let m = c.bc(a, 1.0);
    a.vaddps(e, e, m)?;
    recip(a, c, e, r)?;
    a.vxorps(r.k4(), r, r)
}

/// `r = 1 / d` for finite `d` ≥ 1 (`vrcp14ps` and a Newton step);
/// clobbers `d`.
fn recip(a: &mut CodeAssembler, c: &mut Consts, d: AsmRegisterZmm, r: AsmRegisterZmm) -> R {
    a.vrcp14ps(r, d)?;
    let m = c.bc(a, 2.0);
    a.vfnmadd213ps(d, r, m)?;
    a.vmulps(r, r, d)
}

/// `x = 0.5x(1 + erf(x/√2))`.
fn gelu(a: &mut CodeAssembler, c: &mut Consts, x: AsmRegisterZmm, t: [AsmRegisterZmm; 4]) -> R {
    // z = |x|/√2, capped at 10 so the reciprocal below stays finite;
    // erfc(z) is 0 in f32 from there on (k4), so -inf gives NaN like
    // the reference's -inf · 0.
    let m = c.bits(a, ABS);
    a.vandps(t[0], x, m)?;
    let m = c.bc(a, std::f32::consts::FRAC_1_SQRT_2);
    a.vmulps(t[0], t[0], m)?;
    let m = c.bc(a, 10.0);
    a.vcmpps(k4, t[0], m, GE_OQ)?;
    a.vminps(t[0], t[0], m)?;
    // t = 1 / (1 + p·z); q = t·(a1 + t·(a2 + ...)); erfc(z) = q·exp(-z²).
    c.splat(a, t[1], 1.0)?;
    let m = c.bc(a, 0.327_591_1);
    a.vfmadd231ps(t[1], t[0], m)?;
    recip(a, c, t[1], t[2])?;
    c.splat(a, t[1], 1.061_405_4)?;
    for k in [-1.453_152_1, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
        let m = c.bc(a, k);
        a.vfmadd213ps(t[1], t[2], m)?;
    }
    a.vmulps(t[1], t[1], t[2])?;
    a.vmulps(t[0], t[0], t[0])?;
    let m = c.bc(a, LIM);
    a.vminps(t[0], t[0], m)?;
    let m = c.bits(a, SIGN);
    a.vxorps(t[0], t[0], m)?;
    exp(a, c, t[0], t[2], t[3])?;
    a.vmulps(t[1], t[1], t[2])?;
    a.vxorps(t[1].k4(), t[1], t[1])?;
    // 1 + erf(x/√2): 2 - erfc(z) for x ≥ 0, erfc(z) for x < 0.
    let m = c.bc(a, 0.0);
    a.vcmpps(k3, x, m, 1)?;
    c.splat(a, t[2], 2.0)?;
    a.vsubps(t[2], t[2], t[1])?;
    a.vmovaps(t[2].k3(), t[1])?;
    a.vmulps(x, x, t[2])?;
    let m = c.bc(a, 0.5);
    a.vmulps(x, x, m)
}
