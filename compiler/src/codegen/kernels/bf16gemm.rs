//! `--fast-math bf16` GEMM: bf16 products, f32 accumulation, for GEMMs
//! whose B is a compile-time constant (MatMul/Gemm weights, channels-last
//! convolutions).
//!
//! B is rounded to bf16 (nearest even) at compile time and packed in
//! panels of [`NR`] = 32 columns in the VNNI pair layout both instruction
//! sets read: `[N/32][Kp/2][32][2]` (`Kp` = K rounded up to 32, zero
//! padded), i.e. per pair of depths one 128-byte row holding, for each
//! column, its two consecutive-depth values. An AMX B tile is 16 such pair
//! rows of one 64-byte half; a `vdpbf16ps` B operand is one half row.
//!
//! A is converted on the fly: a work item (batch, column-panel group,
//! row part) first converts its rows to bf16 (`vcvtne2ps2bf16`, round to
//! nearest even, zeros past K) into its own scratch slot, row stride
//! `Kp * 2 + 64` bytes (the extra line keeps the 16 rows of a tile load
//! off one cache set), at most 1.5 MiB so it stays in L2; then, per column panel (32
//! columns of B, also L2-resident while the item's row blocks pass over
//! it), per row block of `MB` rows, the compute function (`amx.rs`: 2x2
//! AMX tiles, `MB` = 32; `dpbf16.rs`: two 14x32 register tiles, `MB` = 28)
//! accumulates the whole depth in f32 and stores the block into the
//! slot's f32 tile buffer, and the epilogue function applies alpha,
//! beta * bias, residual and Relu/Clip while copying the block to C
//! through column masks; other activations then run as a CLIF pass over
//! the stored rows (as `zgemm.rs` does). The AMX driver loads the tile
//! configuration at the start of every task call (the pool may run tasks
//! on any thread) and releases the tiles at its end.
//!
//! Channels-last convolutions with a kernel other than 1x1/stride 1 do
//! not materialize im2col in f32: the conversion function gathers each
//! output position's taps straight from the NHWC input (zeros in the
//! padding), one GEMM over all images (the batch).
//!
//! Machine-code function ABIs (System V): convert `(src, dst, rows, r0)`
//! (`src` = A at row `r0`, or the image for the gather);
//! compute `(a_bf16, b_panel, tile_buf)`; epilogue `(tile_buf, c, bias,
//! residual, ctl)` with `ctl` = column mask (bits 0-31) | rows (bits 32+).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, F32X4, I64};
use cranelift_codegen::ir::{AbiParam, InstBuilder, Signature, Value};
use cranelift_module::FuncId;

use super::gemm::{Act, Gemm, Mat};
use super::{amx, dpbf16};
use crate::codegen::builder::{Kb, mem};
use crate::codegen::lower::{Bf16Isa, Buf, Lower};
use crate::error::{Error, Result};

/// Columns per packed B panel.
pub const NR: usize = 32;

/// Depth padded to whole AMX steps (32 bf16).
pub fn kpad(k: usize) -> usize {
    k.div_ceil(32).max(1) * 32
}

/// Bytes between rows of converted A.
fn a_stride(k: usize) -> usize {
    kpad(k) * 2 + 64
}

/// Rows per compute call.
fn block_rows(isa: Bf16Isa) -> usize {
    match isa {
        Bf16Isa::Amx => amx::MB,
        Bf16Isa::Avx512 => dpbf16::MB,
    }
}

/// Whether `g` takes the bf16 path (with its B packed by [`pack`]).
pub fn fits(lw: &Lower, g: &Gemm) -> bool {
    let unit = |m: &Option<Mat>| m.as_ref().is_none_or(|m| m.cs == 0 || m.cs == 1);
    // Row strides are added as 32-bit immediates.
    let imm = |rs: i64| (rs.unsigned_abs() as u128) * 4 < (1u128 << 31);
    lw.bf16.is_some()
        && g.m > 0
        && g.n > 0
        && g.k > 0
        && g.a.cs == 1
        && g.c.cs == 1
        && unit(&g.bias)
        && unit(&g.residual)
        && imm(g.a.rs)
        && imm(g.c.rs)
        && g.bias.as_ref().is_none_or(|m| imm(m.rs))
        && g.residual.as_ref().is_none_or(|m| imm(m.rs))
}

/// Round to nearest even, NaN kept quiet (as `vcvtne2ps2bf16`).
pub fn to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// Packs the constant `b[o + kk * rs + j * cs]` (K x N) for each batch
/// offset `o` into bf16 VNNI panels (one panel set per offset).
pub fn pack(b: &[f32], offs: &[i64], k: usize, n: usize, rs: usize, cs: usize) -> Vec<u8> {
    let kp = kpad(k);
    let panels = n.div_ceil(NR);
    let mut out = vec![0u16; offs.len() * panels * kp * NR];
    for (s, &o) in offs.iter().enumerate() {
        let set = &mut out[s * panels * kp * NR..(s + 1) * panels * kp * NR];
        for kk in 0..k {
            for j in 0..n {
                let (p, t) = (j / NR, j % NR);
                let at = (p * kp / 2 + kk / 2) * NR * 2 + t * 2 + kk % 2;
                set[at] = to_bf16(b[o as usize + kk * rs + j * cs]);
            }
        }
    }
    out.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A channels-last convolution's A, gathered (im2col) and converted in one
/// pass: row `pos` of image `img` holds, per kernel tap, the `c` input
/// channels at the tap's pixel (zeros in the padding).
#[derive(Clone, Debug)]
pub struct Im2col {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub ow: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dil: [usize; 2],
    pub pad0: [usize; 2],
}

/// The compile-time shape of the conversion and epilogue functions.
pub(super) struct Shape {
    pub k: usize,
    /// Bytes between rows of f32 A, of converted A, of C.
    pub lda: i64,
    pub ldap: i64,
    pub ldc: i64,
    pub bias: Option<(i64, bool)>,
    pub beta: f32,
    pub res: Option<(i64, bool)>,
    pub alpha: f32,
    pub act: Act,
}

mod asm {
    //! Conversion and epilogue functions in machine code.
    use iced_x86::IcedError;
    use iced_x86::code_asm::*;

    use super::{Act, Im2col, Shape};

    type R = std::result::Result<Vec<u8>, IcedError>;

    /// `(image, dst, rows, r0)`: im2col rows `r0..r0 + rows` of one
    /// channels-last image (f32) to bf16 rows of `Kp` at stride `ldap`,
    /// zeros in the padding and past K.
    pub(super) fn gather(s: &Shape, g: &Im2col) -> R {
        let mut a = CodeAssembler::new(64)?;
        let (c, kp) = (g.c, super::kpad(s.k));
        let (full, tail) = (c / 32, c % 32);
        let zero = zmm31;
        let mut done = a.create_label();
        let mut row = a.create_label();
        a.test(rdx, rdx)?;
        a.jz(done)?;
        a.mov(r11, rdx)?;
        a.mov(rax, rcx)?;
        a.xor(edx, edx)?;
        a.mov(r8, g.ow as u64)?;
        a.div(r8)?;
        // r9 = output row, r10 = output column of the current position.
        a.mov(r9, rax)?;
        a.mov(r10, rdx)?;
        a.vpxord(zero, zero, zero)?;
        let mask32 = |a: &mut CodeAssembler, k: AsmRegisterK, bits: usize| {
            let m: u64 = if bits >= 32 {
                u32::MAX as u64
            } else {
                (1u64 << bits) - 1
            };
            a.mov(eax, m as u32)?;
            a.kmovd(k, eax)
        };
        if tail > 0 {
            mask32(&mut a, k3, tail.min(16))?;
            mask32(&mut a, k4, tail.saturating_sub(16))?;
            mask32(&mut a, k5, tail)?;
        }
        if kp > s.k {
            mask32(&mut a, k6, kp - s.k)?;
        }
        a.set_label(&mut row)?;
        for ta in 0..g.kernel[0] {
            for tb in 0..g.kernel[1] {
                let tap = ta * g.kernel[1] + tb;
                let mut zero_tap = a.create_label();
                let mut next = a.create_label();
                let off_y = (ta * g.dil[0]) as i64 - g.pad0[0] as i64;
                let off_x = (tb * g.dil[1]) as i64 - g.pad0[1] as i64;
                a.imul_3(rax, r9, g.strides[0] as i32)?;
                a.add(rax, off_y as i32)?;
                a.cmp(rax, g.h as i32)?;
                a.jae(zero_tap)?;
                a.imul_3(rcx, r10, g.strides[1] as i32)?;
                a.add(rcx, off_x as i32)?;
                a.cmp(rcx, g.w as i32)?;
                a.jae(zero_tap)?;
                a.imul_3(rax, rax, g.w as i32)?;
                a.add(rax, rcx)?;
                a.imul_3(rax, rax, (c * 4) as i32)?;
                a.add(rax, rdi)?;
                a.lea(r8, ptr(rsi + (tap * c * 2) as i32))?;
                if full > 0 {
                    let mut chunk = a.create_label();
                    a.mov(rcx, full as u64)?;
                    a.set_label(&mut chunk)?;
                    a.vmovups(zmm0, zmmword_ptr(rax))?;
                    a.vmovups(zmm1, zmmword_ptr(rax + 64))?;
                    a.vcvtne2ps2bf16(zmm2, zmm1, zmm0)?;
                    a.vmovdqu16(zmmword_ptr(r8), zmm2)?;
                    a.add(rax, 128)?;
                    a.add(r8, 64)?;
                    a.dec(rcx)?;
                    a.jnz(chunk)?;
                }
                if tail > 0 {
                    a.vmovups(zmm0.k3().z(), zmmword_ptr(rax))?;
                    a.vmovups(zmm1.k4().z(), zmmword_ptr(rax + 64))?;
                    a.vcvtne2ps2bf16(zmm2, zmm1, zmm0)?;
                    a.vmovdqu16(zmmword_ptr(r8).k5(), zmm2)?;
                }
                a.jmp(next)?;
                a.set_label(&mut zero_tap)?;
                for j in 0..full {
                    a.vmovdqu16(zmmword_ptr(rsi + ((tap * c + j * 32) * 2) as i32), zero)?;
                }
                if tail > 0 {
                    let at = ((tap * c + full * 32) * 2) as i32;
                    a.vmovdqu16(zmmword_ptr(rsi + at).k5(), zero)?;
                }
                a.set_label(&mut next)?;
            }
        }
        if kp > s.k {
            a.vmovdqu16(zmmword_ptr(rsi + (s.k * 2) as i32).k6(), zero)?;
        }
        let mut same_row = a.create_label();
        a.add(rsi, s.ldap as i32)?;
        a.inc(r10)?;
        a.cmp(r10, g.ow as i32)?;
        a.jb(same_row)?;
        a.xor(r10d, r10d)?;
        a.inc(r9)?;
        a.set_label(&mut same_row)?;
        a.dec(r11)?;
        a.jnz(row)?;
        a.set_label(&mut done)?;
        a.vzeroupper()?;
        a.ret()?;
        a.assemble(0)
    }

    /// `(src, dst, rows, _)`: rows of K f32 at stride `lda` to bf16 rows of
    /// `Kp` at stride `ldap`, zeros past K.
    pub(super) fn convert(s: &Shape) -> R {
        let mut a = CodeAssembler::new(64)?;
        let (full, tail) = (s.k / 32, s.k % 32);
        let mut done = a.create_label();
        let mut row = a.create_label();
        a.test(rdx, rdx)?;
        a.jz(done)?;
        if tail > 0 {
            let lo: u32 = if tail >= 16 { 0xffff } else { (1 << tail) - 1 };
            let hi: u32 = if tail > 16 { (1 << (tail - 16)) - 1 } else { 0 };
            a.mov(eax, lo)?;
            a.kmovw(k3, eax)?;
            a.mov(eax, hi)?;
            a.kmovw(k4, eax)?;
        }
        a.set_label(&mut row)?;
        a.mov(r8, rdi)?;
        a.mov(r9, rsi)?;
        if full > 0 {
            let mut chunk = a.create_label();
            a.mov(rcx, full as u64)?;
            a.set_label(&mut chunk)?;
            a.vmovups(zmm0, zmmword_ptr(r8))?;
            a.vmovups(zmm1, zmmword_ptr(r8 + 64))?;
            // Low half of the result from the second source.
            a.vcvtne2ps2bf16(zmm2, zmm1, zmm0)?;
            a.vmovups(zmmword_ptr(r9), zmm2)?;
            a.add(r8, 128)?;
            a.add(r9, 64)?;
            a.dec(rcx)?;
            a.jnz(chunk)?;
        }
        if tail > 0 {
            a.vmovups(zmm0.k3().z(), zmmword_ptr(r8))?;
            a.vmovups(zmm1.k4().z(), zmmword_ptr(r8 + 64))?;
            a.vcvtne2ps2bf16(zmm2, zmm1, zmm0)?;
            a.vmovups(zmmword_ptr(r9), zmm2)?;
        }
        a.add(rdi, s.lda as i32)?;
        a.add(rsi, s.ldap as i32)?;
        a.dec(rdx)?;
        a.jnz(row)?;
        a.set_label(&mut done)?;
        a.vzeroupper()?;
        a.ret()?;
        a.assemble(0)
    }

    /// `(tile_buf, c, bias, residual, ctl)`: rows of 32 f32 (stride 128
    /// bytes) through the epilogue into C, columns masked.
    pub(super) fn epilogue(s: &Shape) -> R {
        let mut a = CodeAssembler::new(64)?;
        let (alpha, beta, lo, hi, zero) = (zmm25, zmm26, zmm27, zmm28, zmm29);
        let mut done = a.create_label();
        let mut row = a.create_label();
        a.kmovw(k1, r8d)?;
        a.mov(r9, r8)?;
        a.shr(r9, 16)?;
        a.kmovw(k2, r9d)?;
        a.mov(rax, r8)?;
        a.shr(rax, 32)?;
        a.test(rax, rax)?;
        a.jz(done)?;
        let splat = |a: &mut CodeAssembler, r: AsmRegisterZmm, x: f32| {
            a.mov(r9d, x.to_bits())?;
            a.vpbroadcastd(r, r9d)
        };
        if s.alpha != 1.0 {
            splat(&mut a, alpha, s.alpha)?;
        }
        if s.beta != 1.0 {
            splat(&mut a, beta, s.beta)?;
        }
        match s.act {
            Act::Relu => a.vpxord(zero, zero, zero)?,
            Act::Clip(l, h) => {
                splat(&mut a, lo, l)?;
                splat(&mut a, hi, h)?;
            }
            _ => {}
        }
        let acc = [zmm0, zmm1];
        a.set_label(&mut row)?;
        a.vmovups(zmm0, zmmword_ptr(rdi))?;
        a.vmovups(zmm1, zmmword_ptr(rdi + 64))?;
        if s.alpha != 1.0 {
            for r in acc {
                a.vmulps(r, r, alpha)?;
            }
        }
        for (operand, base, scale) in [(s.bias, rdx, s.beta), (s.res, rcx, 1.0)] {
            let Some((_, vec)) = operand else { continue };
            if !vec {
                a.vbroadcastss(zmm2, dword_ptr(base))?;
                a.vmovaps(zmm3, zmm2)?;
            } else {
                a.vmovups(zmm2.k1().z(), zmmword_ptr(base))?;
                a.vmovups(zmm3.k2().z(), zmmword_ptr(base + 64))?;
            }
            for (r, t) in acc.into_iter().zip([zmm2, zmm3]) {
                if scale != 1.0 {
                    a.vfmadd231ps(r, t, beta)?;
                } else {
                    a.vaddps(r, r, t)?;
                }
            }
        }
        // The accumulator goes second so NaN propagates (vmaxps/vminps
        // return the second source when either is NaN).
        for r in acc {
            match s.act {
                Act::Relu => a.vmaxps(r, zero, r)?,
                Act::Clip(..) => {
                    a.vmaxps(r, lo, r)?;
                    a.vminps(r, hi, r)?;
                }
                _ => {}
            }
        }
        a.vmovups(zmmword_ptr(rsi).k1(), zmm0)?;
        a.vmovups(zmmword_ptr(rsi + 64).k2(), zmm1)?;
        a.add(rdi, 128)?;
        a.add(rsi, s.ldc as i32)?;
        if let Some((rs, _)) = s.bias
            && rs != 0
        {
            a.add(rdx, rs as i32)?;
        }
        if let Some((rs, _)) = s.res
            && rs != 0
        {
            a.add(rcx, rs as i32)?;
        }
        a.dec(rax)?;
        a.jnz(row)?;
        a.set_label(&mut done)?;
        a.vzeroupper()?;
        a.ret()?;
        a.assemble(0)
    }
}

/// Defines machine code taking `params` i64 arguments (and returning
/// nothing).
pub(super) fn define(lw: &mut Lower, params: usize, bytes: Result<Vec<u8>>) -> Result<FuncId> {
    let mut sig = Signature::new(lw.cc);
    sig.params
        .extend(std::iter::repeat_n(AbiParam::new(I64), params));
    lw.machine_code(&sig, &bytes?)
}

pub(super) fn asm_err(what: &str) -> impl Fn(iced_x86::IcedError) -> Error + '_ {
    move |e| Error::Internal(format!("assembling {what}: {e}"))
}

/// Activations the epilogue function applies itself.
fn in_registers(act: Act) -> bool {
    matches!(act, Act::None | Act::Relu | Act::Clip(..))
}

/// How the work splits: (column-panel groups, row parts) per batch
/// element; at least 8 items when the shape allows, preferring column
/// groups (each row part streams all of its group's weights) and row parts
/// whose converted A stays within 1.5 MiB (L2).
fn split(batch: usize, panels: usize, mblocks: usize, block_bytes: usize) -> (usize, usize) {
    const WANT: usize = 8;
    let max_mb = ((1536usize << 10) / block_bytes).max(1);
    let mut mparts = mblocks.div_ceil(max_mb);
    let mut groups = 1;
    if batch * mparts < WANT {
        groups = panels.min(WANT.div_ceil(batch * mparts));
    }
    if batch * mparts * groups < WANT {
        mparts = mblocks.min(WANT.div_ceil(batch * groups)).max(mparts);
    }
    let ppg = panels.div_ceil(groups);
    let mbpp = mblocks.div_ceil(mparts);
    (panels.div_ceil(ppg), mblocks.div_ceil(mbpp))
}

/// C = epilogue(A · packed B) in bf16; `packed` is [`pack`]'s output.
pub fn compute(lw: &mut Lower, g: &Gemm, packed: Buf) -> Result<()> {
    run(lw, g, packed, None)
}

/// A channels-last convolution: `g`'s batch is the images, A (`g.a` at
/// each image's offset) the NHWC input, gathered by `geo` while it is
/// converted.
pub fn conv(lw: &mut Lower, g: &Gemm, packed: Buf, geo: &Im2col) -> Result<()> {
    run(lw, g, packed, Some(geo))
}

fn run(lw: &mut Lower, g: &Gemm, packed: Buf, im2col: Option<&Im2col>) -> Result<()> {
    let Some(isa) = lw.bf16 else {
        bail!(Internal, "bf16 GEMM without --fast-math bf16");
    };
    let (m, n, k) = (g.m, g.n, g.k);
    let mb = block_rows(isa);
    let kp = kpad(k);
    let ldap = a_stride(k);
    let panels = n.div_ceil(NR);
    let mblocks = m.div_ceil(mb);
    let (groups, mparts) = split(g.batch, panels, mblocks, mb * ldap);
    let ppg = panels.div_ceil(groups);
    let mbpp = mblocks.div_ceil(mparts);
    let tail_rows = m - (mblocks - 1) * mb;
    let act_in_regs = in_registers(g.act);
    let shape = Shape {
        k,
        lda: g.a.rs * 4,
        ldap: ldap as i64,
        ldc: g.c.rs * 4,
        bias: g.bias.as_ref().map(|b| (b.rs * 4, b.cs == 1)),
        beta: g.beta,
        res: g.residual.as_ref().map(|r| (r.rs * 4, r.cs == 1)),
        alpha: g.alpha,
        act: if act_in_regs { g.act } else { Act::None },
    };
    let cvt = match im2col {
        Some(geo) => asm::gather(&shape, geo),
        None => asm::convert(&shape),
    };
    let cvt = define(lw, 4, cvt.map_err(asm_err("bf16 conversion")))?;
    let epi = define(
        lw,
        5,
        asm::epilogue(&shape).map_err(asm_err("bf16 epilogue")),
    )?;
    let mut callees = vec![cvt, epi];
    match isa {
        Bf16Isa::Amx => {
            callees.push(amx::define_compute(lw, kp, ldap)?);
            callees.push(amx::define_config(lw)?);
            callees.push(amx::define_release(lw)?);
            lw.uses_amx = true;
        }
        Bf16Isa::Avx512 => callees.push(dpbf16::define_compute(lw, kp, ldap)?),
    }

    // Per item: converted rows, then the f32 tile buffer.
    let a_bytes = mbpp * mb * ldap;
    let slot = (a_bytes + mb * NR * 4).div_ceil(64) * 64;
    let items = g.batch * groups * mparts;
    let scratch = match lw.bf16_scratch {
        Some((buf, bytes)) if bytes >= items * slot => buf,
        _ => {
            let buf = lw.scratch(items * slot);
            lw.bf16_scratch = Some((buf, items * slot));
            buf
        }
    };
    let panel_bytes = (kp * NR * 2) as i64;
    let pset = panels as i64 * panel_bytes;
    let offs = lw.data(
        g.offsets
            .iter()
            .flat_map(|o| {
                let o = [o[0] * 4, o[1] * pset, o[2] * 4, o[3] * 4, o[4] * 4];
                o.into_iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<_>>()
            })
            .collect(),
    )?;
    let mut bufs = vec![g.a.buf, packed, g.c.buf, offs, scratch];
    let bias_arg = g.bias.as_ref().map(|b| {
        bufs.push(b.buf);
        bufs.len() - 1
    });
    let res_arg = g.residual.as_ref().map(|r| {
        bufs.push(r.buf);
        bufs.len() - 1
    });
    let edge_cols = n - (panels - 1) * NR;
    let edge_mask = if edge_cols == NR {
        u32::MAX as i64
    } else {
        (1i64 << edge_cols) - 1
    };
    lw.kernel_calling(bufs, items, false, &callees, |kb, refs| {
        let (cvt, epi, comp) = (refs[0], refs[1], refs[2]);
        let tiles = (isa == Bf16Isa::Amx).then(|| (refs[3], refs[4]));
        let (ap, bp, cp, op, sp) = (kb.arg(0), kb.arg(1), kb.arg(2), kb.arg(3), kb.arg(4));
        let biasp = bias_arg.map(|j| kb.arg(j));
        let resp = res_arg.map(|j| kb.arg(j));
        if let Some((cfg, _)) = tiles {
            kb.b.ins().call(cfg, &[]);
        }
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let per_batch = (groups * mparts) as i64;
            let bi = kb.b.ins().udiv_imm_u(item, per_batch);
            let rest = kb.b.ins().urem_imm_u(item, per_batch);
            let gi = kb.b.ins().udiv_imm_u(rest, mparts as i64);
            let mpi = kb.b.ins().urem_imm_u(rest, mparts as i64);
            let ob = kb.gep(op, bi, 40);
            let ld = |kb: &mut Kb, j: i32| kb.b.ins().load(I64, mem(), ob, j * 8);
            let (oa, obp, oc, obias, ores) =
                (ld(kb, 0), ld(kb, 1), ld(kb, 2), ld(kb, 3), ld(kb, 4));
            let a_base = kb.b.ins().iadd(ap, oa);
            let b_base = kb.b.ins().iadd(bp, obp);
            let c_base = kb.b.ins().iadd(cp, oc);
            let bias_base = biasp.map(|p| kb.b.ins().iadd(p, obias));
            let res_base = resp.map(|p| kb.b.ins().iadd(p, ores));
            let slot_p = kb.gep(sp, item, slot as i64);
            let tbuf = kb.addi(slot_p, a_bytes as i64);
            let p_lo = kb.muli(gi, ppg as i64);
            let p_hi = kb.addi(p_lo, ppg as i64);
            let p_hi = min_imm(kb, p_hi, panels as i64);
            let mb_lo = kb.muli(mpi, mbpp as i64);
            let mb_hi = kb.addi(mb_lo, mbpp as i64);
            let mb_hi = min_imm(kb, mb_hi, mblocks as i64);
            let rows_of = |kb: &mut Kb, blk: Value| {
                let last = kb.b.ins().icmp_imm_s(IntCC::Equal, blk, mblocks as i64 - 1);
                let t = kb.i(tail_rows as i64);
                let f = kb.i(mb as i64);
                kb.b.ins().select(last, t, f)
            };
            // Converted A of block `blk` in this slot.
            let a_blk = |kb: &mut Kb, blk: Value| {
                let rel = kb.b.ins().isub(blk, mb_lo);
                kb.gep(slot_p, rel, (mb * ldap) as i64)
            };
            kb.for_range(mb_lo, mb_hi, 1, |kb, blk| {
                let r0 = kb.muli(blk, mb as i64);
                let src = if im2col.is_some() {
                    a_base
                } else {
                    kb.gep(a_base, r0, g.a.rs * 4)
                };
                let dst = a_blk(kb, blk);
                let rows = rows_of(kb, blk);
                kb.b.ins().call(cvt, &[src, dst, rows, r0]);
            });
            kb.for_range(p_lo, p_hi, 1, |kb, p| {
                let is_edge = kb.b.ins().icmp_imm_s(IntCC::Equal, p, panels as i64 - 1);
                let em = kb.i(edge_mask);
                let fm = kb.i(u32::MAX as i64);
                let mask = kb.b.ins().select(is_edge, em, fm);
                let bpan = kb.gep(b_base, p, panel_bytes);
                let j0 = kb.muli(p, NR as i64);
                kb.for_range(mb_lo, mb_hi, 1, |kb, blk| {
                    let apk = a_blk(kb, blk);
                    kb.b.ins().call(comp, &[apk, bpan, tbuf]);
                    let r0 = kb.muli(blk, mb as i64);
                    let rows = rows_of(kb, blk);
                    let c = tile_ptr(kb, c_base, &g.c, r0, j0);
                    let bias = opt_ptr(kb, bias_base, g.bias.as_ref(), r0, j0);
                    let res = opt_ptr(kb, res_base, g.residual.as_ref(), r0, j0);
                    let hi = kb.muli(rows, 1 << 32);
                    let ctl = kb.b.ins().bor(hi, mask);
                    kb.b.ins().call(epi, &[tbuf, c, bias, res, ctl]);
                    if !act_in_regs {
                        let full = kb.i(NR as i64);
                        let edge = kb.i(edge_cols as i64);
                        let cols = kb.b.ins().select(is_edge, edge, full);
                        post_act(kb, g, c, rows, cols);
                    }
                });
            });
        });
        if let Some((_, release)) = tiles {
            kb.b.ins().call(release, &[]);
        }
    })
}

fn min_imm(kb: &mut Kb, v: Value, hi: i64) -> Value {
    let h = kb.i(hi);
    let lt = kb.b.ins().icmp(IntCC::SignedLessThan, v, h);
    kb.b.ins().select(lt, v, h)
}

fn tile_ptr(kb: &mut Kb, base: Value, m: &Mat, r0: Value, j0: Value) -> Value {
    let p = kb.gep(base, r0, m.rs * 4);
    kb.gep(p, j0, m.cs * 4)
}

fn opt_ptr(kb: &mut Kb, base: Option<Value>, m: Option<&Mat>, r0: Value, j0: Value) -> Value {
    match (base, m) {
        (Some(b), Some(m)) => tile_ptr(kb, b, m, r0, j0),
        _ => kb.i(0),
    }
}

/// Applies the activation the epilogue function left out to `rows` stored
/// rows of `cols` columns at `c`.
fn post_act(kb: &mut Kb, g: &Gemm, c: Value, rows: Value, cols: Value) {
    let z = kb.i(0);
    kb.for_range(z, rows, 1, |kb, r| {
        let row = kb.gep(c, r, g.c.rs * 4);
        let z = kb.i(0);
        kb.for_vec(z, cols, 4, |kb, j, lanes| {
            let ty = if lanes == 1 { F32 } else { F32X4 };
            let addr = kb.gep(row, j, 4);
            let v = kb.b.ins().load(ty, mem(), addr, 0);
            let v = g.act.apply(kb, v);
            kb.b.ins().store(mem(), v, addr, 0);
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_places_pairs() {
        // K = 3, N = 33: two panels, Kp = 32.
        let (k, n) = (3, 33);
        let b: Vec<f32> = (0..k * n).map(|i| i as f32).collect();
        let bytes = pack(&b, &[0], k, n, n, 1);
        let v: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(v.len(), 2 * 32 * 32);
        let at = |p: usize, kk: usize, j: usize| v[(p * 16 + kk / 2) * 64 + j * 2 + kk % 2];
        for kk in 0..k {
            for j in 0..n {
                let want = to_bf16((kk * n + j) as f32);
                assert_eq!(at(j / 32, kk, j % 32), want, "k {kk} j {j}");
            }
        }
        // Padding: depth 3 of panel 0 and column 1 of panel 1 are zero.
        assert_eq!(at(0, 3, 0), 0);
        assert_eq!(at(1, 0, 1), 0);
    }

    #[test]
    fn split_covers_every_block_once() {
        for (batch, panels, mblocks) in [(1, 1, 1), (1, 128, 8), (3, 2, 40), (200, 3, 1)] {
            let (g, m) = split(batch, panels, mblocks, 64 << 10);
            let ppg = panels.div_ceil(g);
            let mbpp = mblocks.div_ceil(m);
            assert!((g - 1) * ppg < panels && g * ppg >= panels);
            assert!((m - 1) * mbpp < mblocks && m * mbpp >= mblocks);
        }
    }
}
