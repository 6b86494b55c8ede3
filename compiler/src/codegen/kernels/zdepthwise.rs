//! The interior of a channels-last depthwise convolution row in AVX-512
//! machine code (`depthwise.rs` keeps the edges, where taps fall outside
//! the input): four output pixels at a time, sixteen channels per vector
//! with a masked last vector, each tap's weights loaded once for the four
//! outputs and the inputs read as FMA memory operands; bias, residual and
//! the activation (`zact`) in registers before the store. The f32x4 CLIF
//! form computed 4 channels per instruction. Channels-last MaxPool takes
//! the same function with `max`: no weights, and a maximum that skips
//! NaNs (the interpreter's rule): each tap's lanes that are numbers update
//! the accumulator, which starts as NaN, so a window of NaNs (and the
//! padding, a NaN row) stays NaN. The CLIF form's NaN-aware maximum took
//! ResNet-50's MaxPool 0.95 ms per run.
//!
//! ABI (System V): `(ptrs, out, res, j0, j1)`: `ptrs` points at the
//! weights (tap-major `[KH*KW][C]`), the bias (or 0) and the `KH` input
//! rows of this output row (the zero row where a tap row is outside);
//! `out` and `res` are the output and residual rows; output columns
//! `[j0, j1)` are computed, all of whose taps lie inside the input row.

use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, Signature};
use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::gemm::Act;
use super::zact::{self, Consts};
use crate::codegen::lower::Lower;
use crate::error::{Error, Result};

/// Tap rows the function keeps in registers.
pub const MAX_KH: usize = 5;

/// The compile-time shape of one depthwise node.
pub struct Shape {
    pub kh: usize,
    pub kw: usize,
    pub c: usize,
    /// Column stride, dilation and left padding.
    pub s1: i64,
    pub d1: i64,
    pub p1: i64,
    pub bias: bool,
    pub res: bool,
    pub act: Act,
    /// MaxPool instead of a convolution (no weights, bias or residual).
    pub max: bool,
}

/// Whether the machine-code interior takes this node.
pub fn fits(lw: &Lower, kh: usize, act: Act) -> bool {
    lw.avx512 && kh <= MAX_KH && zact::in_registers(act)
}

pub fn define(lw: &mut Lower, sh: &Shape) -> Result<cranelift_module::FuncId> {
    let bytes =
        assemble(sh).map_err(|e| Error::Internal(format!("assembling depthwise row: {e}")))?;
    let mut sig = Signature::new(lw.cc);
    sig.params.extend([AbiParam::new(I64); 5]);
    lw.machine_code(&sig, &bytes)
}

const ROWS: [AsmRegister64; MAX_KH] = [rbx, rbp, r12, r13, r14];
const ACC: [AsmRegisterZmm; 4] = [zmm0, zmm1, zmm2, zmm3];
const UNROLL: usize = 4;

fn assemble(sh: &Shape) -> std::result::Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut consts = Consts::default();
    let pix = (sh.c * 4) as i64;
    let saved = [rbx, rbp, r12, r13, r14, r15];
    for &r in &saved {
        a.push(r)?;
    }
    // r10 weights, r11 bias, ROWS the tap rows; rcx the column, r8 the end.
    a.mov(r10, qword_ptr(rdi))?;
    a.mov(r11, qword_ptr(rdi + 8))?;
    for (i, &r) in ROWS.iter().enumerate().take(sh.kh) {
        a.mov(r, qword_ptr(rdi + (16 + 8 * i as i32)))?;
    }
    let full = sh.c / 16;
    let tail = sh.c % 16;
    if tail != 0 {
        a.mov(eax, (1u32 << tail) - 1)?;
        a.kmovw(k1, eax)?;
    }
    // Loop heads: UNROLL outputs at a time, then one, then the end.
    let mut heads = [a.create_label(), a.create_label(), a.create_label()];
    for (i, u) in [UNROLL, 1].into_iter().enumerate() {
        a.set_label(&mut heads[i])?;
        let lp = heads[i];
        a.lea(rax, qword_ptr(rcx + u as i32))?;
        a.cmp(rax, r8)?;
        a.ja(heads[i + 1])?;
        // rdi: byte offset of the column's first tap pixel in a row; r9:
        // of the output pixel; rax: of the channel vector.
        a.imul_3(rdi, rcx, (sh.s1 * pix) as i32)?;
        a.sub(rdi, (sh.p1 * pix) as i32)?;
        a.imul_3(r9, rcx, pix as i32)?;
        a.xor(eax, eax)?;
        if full > 0 {
            let mut chan = a.create_label();
            a.set_label(&mut chan)?;
            channels(&mut a, &mut consts, sh, u, false)?;
            a.add(rax, 64)?;
            a.cmp(rax, (full * 64) as i32)?;
            a.jb(chan)?;
        }
        if tail != 0 {
            channels(&mut a, &mut consts, sh, u, true)?;
        }
        a.add(rcx, u as i32)?;
        a.jmp(lp)?;
    }
    a.set_label(&mut heads[2])?;
    for &r in saved.iter().rev() {
        a.pop(r)?;
    }
    a.vzeroupper()?;
    a.ret()?;
    consts.emit(&mut a)?;
    a.assemble(0)
}

/// One channel vector (at byte offset rax) of `u` outputs; `part`: the
/// masked last vector (k1).
fn channels(
    a: &mut CodeAssembler,
    consts: &mut Consts,
    sh: &Shape,
    u: usize,
    part: bool,
) -> std::result::Result<(), IcedError> {
    if sh.max {
        return max_channels(a, sh, u, part);
    }
    let pix = (sh.c * 4) as i64;
    let acc = &ACC[..u];
    let w = zmm8;
    if sh.bias {
        let src = zmmword_ptr(r11 + rax);
        if part {
            a.vmovups(acc[0].k1().z(), src)?;
        } else {
            a.vmovups(acc[0], src)?;
        }
        for &r in &acc[1..] {
            a.vmovaps(r, acc[0])?;
        }
    } else {
        for &r in acc {
            a.vpxord(r, r, r)?;
        }
    }
    a.lea(r15, qword_ptr(rdi + rax))?;
    for (row, &rr) in ROWS.iter().enumerate().take(sh.kh) {
        for b in 0..sh.kw {
            let t = (row * sh.kw + b) as i64;
            let wsrc = zmmword_ptr(r10 + rax + (t * pix) as i32);
            if part {
                a.vmovups(w.k1().z(), wsrc)?;
            } else {
                a.vmovups(w, wsrc)?;
            }
            for (q, &r) in acc.iter().enumerate() {
                let disp = (b as i64 * sh.d1 + q as i64 * sh.s1) * pix;
                let x = zmmword_ptr(rr + r15 + disp as i32);
                // Masked lanes past C do not fault (the last pixel).
                if part {
                    a.vfmadd231ps(r.k1(), w, x)?;
                } else {
                    a.vfmadd231ps(r, w, x)?;
                }
            }
        }
    }
    a.lea(r15, qword_ptr(r9 + rax))?;
    for (q, &r) in acc.iter().enumerate() {
        if sh.res {
            let src = zmmword_ptr(rdx + r15 + (q as i64 * pix) as i32);
            if part {
                a.vaddps(r.k1(), r, src)?;
            } else {
                a.vaddps(r, r, src)?;
            }
        }
    }
    zact::apply(a, consts, sh.act, acc, [zmm28, zmm29, zmm30, zmm31])?;
    store(a, sh, acc, part)
}

/// The channel vector's `acc` to the output pixels.
fn store(
    a: &mut CodeAssembler,
    sh: &Shape,
    acc: &[AsmRegisterZmm],
    part: bool,
) -> std::result::Result<(), IcedError> {
    let pix = (sh.c * 4) as i64;
    a.lea(r15, qword_ptr(r9 + rax))?;
    for (q, &r) in acc.iter().enumerate() {
        let dst = zmmword_ptr(rsi + r15 + (q as i64 * pix) as i32);
        if part {
            a.vmovups(dst.k1(), r)?;
        } else {
            a.vmovups(dst, r)?;
        }
    }
    Ok(())
}

/// [`channels`] of a MaxPool: per tap and output, the lanes of the input
/// that are numbers (k2; within k1 for the last vector) update the
/// maximum, which starts as NaN (all bits set).
fn max_channels(
    a: &mut CodeAssembler,
    sh: &Shape,
    u: usize,
    part: bool,
) -> std::result::Result<(), IcedError> {
    const ORDERED: i32 = 7;
    let pix = (sh.c * 4) as i64;
    let acc = &ACC[..u];
    let xs = [zmm9, zmm10, zmm11, zmm12];
    for &r in acc {
        a.vpternlogd(r, r, r, 0xff)?;
    }
    a.lea(r15, qword_ptr(rdi + rax))?;
    for &rr in ROWS.iter().take(sh.kh) {
        for b in 0..sh.kw {
            for (q, (&r, &x)) in acc.iter().zip(&xs).enumerate() {
                let disp = (b as i64 * sh.d1 + q as i64 * sh.s1) * pix;
                let src = zmmword_ptr(rr + r15 + disp as i32);
                if part {
                    a.vmovups(x.k1().z(), src)?;
                    a.vcmpps(k2.k1(), x, x, ORDERED)?;
                } else {
                    a.vmovups(x, src)?;
                    a.vcmpps(k2, x, x, ORDERED)?;
                }
                a.vmaxps(r.k2(), r, x)?;
            }
        }
    }
    store(a, sh, acc, part)
}
