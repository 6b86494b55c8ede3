//! AVX-512 f32 GEMM: a microkernel in machine code (assembled with
//! iced-x86 per GEMM node, so depths, strides and the epilogue are
//! immediates) defined in the Cranelift module beside the CLIF driver that
//! calls it.
//!
//! B is packed in panels of [`ZNR`] = 32 columns (`[N/32][K][32]`, zero
//! padded; constant weights at compile time). A tile is [`ZMR`] = 14 rows x
//! 32 columns: 28 zmm accumulators, two for the B row, two for A
//! broadcasts (all 32 registers). The depth is blocked so a panel's block
//! (`kc x 32` floats) stays in L1 while the driver walks the rows; the
//! accumulators start at zero (first depth block) or from C (later ones),
//! and C is stored through column masks, so no scalar tails. On the last
//! depth block the epilogue runs in registers: alpha, beta * bias,
//! residual, and the activation where `zact` has it (Relu, Clip, Sigmoid,
//! Gelu, GeluTanh); others run as a CLIF pass over the just-stored tile
//! while it is in L1.
//!
//! Tile function ABI (System V): `(a, b, c, bias, residual, ctl)` with
//! pointers at the tile's origin and `ctl` = column mask (bits 0-31) |
//! load C (bit 32) | epilogue (bit 33) | prefetch (bit 34) | prefetch
//! phase (bits 35-38) | ahead (bit 39) | back (bits 40-47) | depth (bits
//! 48-63). With the prefetch bit, a one-panel tile also pulls the same
//! depth rows of the next panel into L2: the driver sets it on the first
//! row blocks of a panel that another panel of its item follows. On the
//! item's last panel the ahead bit takes the next depth block of the
//! panel `back` panels before instead, the item's first, whose tiles come
//! next (ResNet-50 b1's layer4 1x1 convolutions, one or two panels per
//! item: 0.87 -> 0.77 ms; BERT-base 158 -> 152 ms at one thread). Consecutive panel blocks are a whole panel
//! apart in memory (`k x 32` floats), so the hardware prefetchers, which
//! stop at page boundaries, start cold on every block; where few row
//! blocks share a block (small M), its loads stalled the tiles (MLP batch
//! 32: 45 -> 37 ms at one thread). The first [`Plan::pf_rate`] row blocks
//! share that prefetch, each taking the cache lines of its phase (modulo
//! the rate): one tile alone issuing a whole block's misses to DRAM ran
//! out of fill buffers and stalled for them. With weights streaming from
//! DRAM, at one thread: BERT-base 170 -> 159 ms, MLP b256 213 -> 205 ms,
//! ResNet-50 b32 1647 -> 1579 ms.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, F32X4, I8, I64};
use cranelift_codegen::ir::{
    AbiParam, FuncRef, InstBuilder, Signature, StackSlotData, StackSlotKind, Value,
};

use super::gemm::{Act, Gemm, Mat};
use super::zact;
use crate::codegen::builder::{Kb, mem};
use crate::codegen::lower::{Buf, Lower};
use crate::error::{Error, Result};

pub const ZNR: usize = 32;
/// `ctl` bits of the tile function (see the module doc).
const CTL_PREFETCH: u32 = 34;
const CTL_PHASE: u32 = 35;
const CTL_AHEAD: u32 = 39;
const CTL_BACK: u32 = 40;
const CTL_DEPTH: u32 = 48;
pub const ZMR: usize = 14;

/// Columns an item's tiles must span for the A copy to pay (it costs about
/// one tile column's work per element).
const COPY_A_MIN_COLS: usize = 256;

/// Column groups past which the per-item copy, repeated for every group,
/// costs more than one restriding pass: ResNet-50 b32's M=6272 K=1024
/// N=256 layer in one group ran 27.4 ms copied, 30.9 restrided; MLP
/// b256's N=4096 layer in 16 groups 2% faster restrided.
const COPY_A_MAX_GROUPS: usize = 2;

/// Whether a tile's A rows (of `m`), `rs` elements apart, pile onto few L1
/// sets: more than [`MAX_ROWS_PER_SET`] rows share a set (which has 12
/// ways on recent cores, about half of them taken by the B panel block),
/// as when rows are a multiple of 4 KiB apart. Each row's cache line is
/// then evicted before its next depth step reads it.
pub(super) fn set_conflicts(rs: i64, m: usize) -> bool {
    let mut per_set = [0usize; 64];
    for i in 0..m.min(ZMR) as i64 {
        per_set[((i * rs * 4).rem_euclid(4096) / 64) as usize] += 1;
    }
    per_set.iter().any(|&n| n > MAX_ROWS_PER_SET)
}

/// Rows 2 KiB apart (7 per set, as ResNet-50's 512-channel 1x1 layers)
/// measured faster read in place than copied (0.73 -> 0.63 ms for
/// M=784 K=512 N=128); 14 per set (K = 4096, the MLP) slower (220 -> 235
/// ms at batch 256).
const MAX_ROWS_PER_SET: usize = 7;

/// `g` reading a copy of A whose rows are padded to a stride free of set
/// conflicts: one pass over A, where copying per work item would repeat
/// for every panel group.
fn restride_a(lw: &mut Lower, g: &Gemm) -> Result<Gemm> {
    let (m, k) = (g.m, g.k);
    let mut rs = k.next_multiple_of(16) as i64;
    while set_conflicts(rs, m) {
        rs += 16;
    }
    let buf = lw.scratch(g.batch * m * rs as usize * 4);
    let offs = lw.data(g.offsets.iter().flat_map(|o| o[0].to_le_bytes()).collect())?;
    let (src_rs, rows) = (g.a.rs, m as i64);
    lw.kernel(vec![g.a.buf, buf, offs], g.batch * m, |kb| {
        let (src, dst, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let len = kb.i(k as i64);
        let (b0, e0) = (kb.begin, kb.end);
        kb.for_range(b0, e0, 1, |kb, item| {
            let b = kb.b.ins().udiv_imm_u(item, rows);
            let r = kb.b.ins().urem_imm_u(item, rows);
            let oa = kb.gep(op, b, 8);
            let o = kb.b.ins().load(I64, mem(), oa, 0);
            let from = kb.gep(src, o, 4);
            let from = kb.gep(from, r, src_rs * 4);
            let to = kb.gep(dst, item, rs * 4);
            kb.copy_f32(from, to, len);
        });
    })?;
    Ok(Gemm {
        a: Mat { buf, rs, cs: 1 },
        bias: g.bias.clone(),
        residual: g.residual.clone(),
        offsets: (0..g.batch)
            .zip(&g.offsets)
            .map(|(b, o)| [(b * m) as i64 * rs, o[1], o[2], o[3], o[4]])
            .collect(),
        c: g.c.clone(),
        ..*g
    })
}

/// Whether the microkernel handles `g` (else the portable CLIF GEMM).
pub fn fits(lw: &Lower, g: &Gemm) -> bool {
    let unit = |m: &Option<Mat>| m.as_ref().is_none_or(|m| m.cs == 0 || m.cs == 1);
    // Row displacements are 32-bit immediates.
    let disp_ok = |rs: i64| (rs.unsigned_abs() as u128) * 4 * (ZMR as u128) < (1u128 << 31);
    lw.avx512
        && g.a.cs == 1
        && g.c.cs == 1
        && unit(&g.bias)
        && unit(&g.residual)
        && disp_ok(g.a.rs)
        && disp_ok(g.c.rs)
        && g.bias.as_ref().is_none_or(|m| disp_ok(m.rs))
        && g.residual.as_ref().is_none_or(|m| disp_ok(m.rs))
}

/// The compile-time shape of one tile function.
struct Tile {
    mr: usize,
    /// Vectors of 16 columns computed (2; 1 for an edge panel of at most
    /// 16 columns, which skips the empty half).
    nv: usize,
    lda: i64,
    ldc: i64,
    /// Row stride (bytes) and whether columns are contiguous (else one
    /// value per row).
    bias: Option<(i64, bool)>,
    beta: f32,
    res: Option<(i64, bool)>,
    alpha: f32,
    act: Act,
    /// Panels side by side (1; [`WIDE_PANELS`] for the wide form, at most
    /// [`WIDE_ROWS`] rows) and the bytes from one packed panel to the next.
    np: usize,
    pstride: i64,
    /// The narrow-edge form ([`DOT_COLS`] columns at most, see
    /// [`asm::assemble_dot`]): columns this many, B's edge panel packed
    /// K-major, `pstride` / 32 bytes apart.
    dot: Option<usize>,
    /// The depth runs in segments (see [`Seg`]).
    seg: Option<Seg>,
    /// C holds the residual (`Gemm::accumulates`): the residual argument
    /// is the C of the tile the driver calls next, which the tile
    /// prefetches.
    next_c: bool,
    /// The tile prefetches one cache line of B in this many (1, 2, 4, 8
    /// or 16), from its phase's line on.
    pf_rate: usize,
}

/// Depth in segments, as a direct convolution's kernel rows: `len`
/// depths of contiguous A columns, then A skips `jump` more bytes to the
/// next segment (B's rows run on). The `ctl` depth field then counts
/// segments.
#[derive(Clone, Copy)]
pub struct Seg {
    len: usize,
    jump: i64,
}

/// An edge panel of at most this many columns is computed as dot products
/// along the depth (B's columns packed K-contiguous), not on a 16-column
/// vector that is almost all padding: Conv(16, 33, 3) spent a third of its
/// time on its 33rd column.
pub const DOT_COLS: usize = 2;

/// A GEMM of at most this many rows streams B from memory once: its tiles
/// span [`WIDE_PANELS`] panels, so the core's prefetchers run that many
/// streams (one 32-column panel is one sequential stream, which leaves
/// DRAM bandwidth unused).
const WIDE_ROWS: usize = 3;
const WIDE_PANELS: usize = 4;

/// Whether a GEMM of `m` rows, `panels` panels and depth `k` takes the
/// wide tiles (more inner panels than one of them spans; panel offsets
/// are 32-bit displacements).
fn wide(m: usize, panels: usize, k: usize) -> bool {
    m <= WIDE_ROWS && panels > WIDE_PANELS && WIDE_PANELS * k * ZNR * 4 < 1 << 31
}

mod asm {
    //! The tile function in x86-64 machine code (register names would
    //! shadow the driver's variables, hence the module).
    use iced_x86::IcedError;
    use iced_x86::code_asm::*;

    use super::{CTL_AHEAD, CTL_BACK, CTL_DEPTH, CTL_PHASE, CTL_PREFETCH, Seg, Tile, ZNR_I64};
    use crate::codegen::kernels::zact;

    const Z: [AsmRegisterZmm; 32] = [
        zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13,
        zmm14, zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26,
        zmm27, zmm28, zmm29, zmm30, zmm31,
    ];

    /// Column vector `h` of a panel takes mask k1 (even) or k2 (odd):
    /// only a one-panel tile can hold the edge, so wide tiles' masks are
    /// all ones.
    fn masked(r: AsmRegisterZmm, h: usize) -> AsmRegisterZmm {
        if h.is_multiple_of(2) { r.k1() } else { r.k2() }
    }

    fn masked_mem(m: AsmMemoryOperand, h: usize) -> AsmMemoryOperand {
        if h.is_multiple_of(2) { m.k1() } else { m.k2() }
    }

    /// Assembles the tile function.
    pub(super) fn assemble(t: &Tile) -> std::result::Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let mut consts = zact::Consts::default();
        // Column vectors: `nv` per panel, panels side by side in C.
        let ncol = t.np * t.nv;
        let acc = |i: usize, h: usize| Z[i * ncol + h];
        let (tmp, bv0, bv1) = (Z[28], Z[28], Z[29]);
        let c_at = |i: usize, h: usize| zmmword_ptr(rdx + (i as i64 * t.ldc + h as i64 * 64));

        // Column masks and depth from ctl.
        a.kmovw(k1, r9d)?;
        a.mov(r10, r9)?;
        a.shr(r10, 16)?;
        a.kmovw(k2, r10d)?;
        a.mov(rax, r9)?;
        a.shr(rax, CTL_DEPTH)?;
        // Prefetch base: the next panel's rows, or (bit clear) this
        // panel's own, which are being loaded anyway.
        if t.np == 1 {
            a.lea(r11, qword_ptr(rsi + t.pstride))?;
            a.bt(r9, CTL_PREFETCH)?;
            a.cmovae(r11, rsi)?;
            if let Ok(pstride) = i32::try_from(t.pstride) {
                // Ahead: r11 = rsi + this block's bytes - back * pstride.
                let mut near = a.create_label();
                a.bt(r9, CTL_AHEAD)?;
                a.jae(near)?;
                let step_bytes = 128 * t.seg.map_or(1, |s| s.len) as i32;
                a.mov(r11, r9)?;
                a.shr(r11, CTL_BACK)?;
                a.and(r11, 255)?;
                a.imul_3(r11, r11, pstride)?;
                a.imul_3(r10, rax, step_bytes)?;
                a.add(r10, rsi)?;
                a.sub(r10, r11)?;
                a.mov(r11, r10)?;
                a.set_label(&mut near)?;
            }
            if t.pf_rate > 1 {
                a.mov(r10, r9)?;
                a.shr(r10, CTL_PHASE)?;
                a.and(r10, 15)?;
                a.shl(r10, 6)?;
                a.add(r11, r10)?;
            }
        }

        // Accumulators: zero, or C's partial sums.
        let mut zero = a.create_label();
        let mut start = a.create_label();
        a.bt(r9, 32)?;
        a.jae(zero)?;
        for i in 0..t.mr {
            for h in 0..ncol {
                a.vmovups(masked(acc(i, h), h).z(), c_at(i, h))?;
            }
        }
        a.jmp(start)?;
        a.set_label(&mut zero)?;
        for i in 0..t.mr {
            for h in 0..ncol {
                a.vpxord(acc(i, h), acc(i, h), acc(i, h))?;
            }
        }
        a.set_label(&mut start)?;
        // The next tile's C (the residual it starts from, cold in memory
        // when large): loaded at its start, it would stall the tile for
        // the whole miss (ResNet-50 b32's layer1 conv3, M=100352 K=64
        // N=256: 33.8 -> 26.0 ms; 25 ms without a residual).
        if t.next_c {
            for i in 0..t.mr {
                for h in 0..ncol {
                    a.prefetchw(byte_ptr(r8 + (i as i64 * t.ldc + h as i64 * 64)))?;
                }
            }
        }

        // One depth step at element offset `ko` from rdi (A) / rsi (B).
        let step = |a: &mut CodeAssembler, ko: i64| -> std::result::Result<(), IcedError> {
            if t.np > 1 {
                // A few rows across several panels: the rows' broadcasts
                // first (z31 down), then each panel's vectors in turn.
                for i in 0..t.mr {
                    a.vbroadcastss(Z[31 - i], dword_ptr(rdi + (i as i64 * t.lda + ko * 4)))?;
                }
                for h in 0..ncol {
                    let bv = Z[24 + h % 4];
                    let panel = (h / t.nv) as i64 * t.pstride;
                    a.vmovups(
                        bv,
                        zmmword_ptr(rsi + (panel + ko * 128 + (h % t.nv) as i64 * 64)),
                    )?;
                    for i in 0..t.mr {
                        a.vfmadd231ps(acc(i, h), bv, Z[31 - i])?;
                    }
                }
                return Ok(());
            }
            a.vmovups(bv0, zmmword_ptr(rsi + ko * 128))?;
            for line in [2 * ko, 2 * ko + 1] {
                if line % t.pf_rate as i64 == 0 {
                    a.prefetcht1(byte_ptr(r11 + line * 64))?;
                }
            }
            if t.nv == 2 {
                a.vmovups(bv1, zmmword_ptr(rsi + (ko * 128 + 64)))?;
            }
            for i in 0..t.mr {
                let bc = Z[30 + i % 2];
                a.vbroadcastss(bc, dword_ptr(rdi + (i as i64 * t.lda + ko * 4)))?;
                a.vfmadd231ps(acc(i, 0), bv0, bc)?;
                if t.nv == 2 {
                    a.vfmadd231ps(acc(i, 1), bv1, bc)?;
                }
            }
            Ok(())
        };
        // Advances A and B (and the prefetch pointer) by `n` depths.
        let advance =
            |a: &mut CodeAssembler, n: i64, skip: i64| -> std::result::Result<(), IcedError> {
                if n * 4 + skip != 0 {
                    a.add(rdi, (n * 4 + skip) as i32)?;
                }
                if n != 0 {
                    a.add(rsi, (n * 128) as i32)?;
                    if t.np == 1 {
                        a.add(r11, (n * 128) as i32)?;
                    }
                }
                Ok(())
            };
        // r10 (> 0) times `unroll` depth steps, which span a whole period
        // of the prefetched lines.
        let unroll = (t.pf_rate / 2).max(4);
        let unrolled = |a: &mut CodeAssembler| -> std::result::Result<(), IcedError> {
            let mut body = a.create_label();
            a.set_label(&mut body)?;
            for ko in 0..unroll as i64 {
                step(a, ko)?;
            }
            advance(a, unroll as i64, 0)?;
            a.dec(r10)?;
            a.jnz(body)
        };
        if let Some(Seg { len, jump }) = t.seg {
            // rax segments of `len` depths. (`start` labels the nop: an
            // instruction takes one label.)
            let mut seg = a.create_label();
            a.nop()?;
            a.set_label(&mut seg)?;
            if len >= unroll {
                a.mov(r10d, (len / unroll) as u32)?;
                unrolled(&mut a)?;
            }
            for ko in 0..(len % unroll) as i64 {
                step(&mut a, ko)?;
            }
            advance(&mut a, (len % unroll) as i64, jump)?;
            a.dec(rax)?;
            a.jnz(seg)?;
        } else {
            // rax depths: `unroll` at a time, then one at a time.
            let mut rem = a.create_label();
            let mut loop1 = a.create_label();
            let mut done = a.create_label();
            a.mov(r10, rax)?;
            a.shr(r10, unroll.trailing_zeros())?;
            a.and(rax, unroll as i32 - 1)?;
            a.test(r10, r10)?;
            a.jz(rem)?;
            unrolled(&mut a)?;
            a.set_label(&mut rem)?;
            a.test(rax, rax)?;
            a.jz(done)?;
            a.set_label(&mut loop1)?;
            step(&mut a, 0)?;
            advance(&mut a, 1, 0)?;
            a.dec(rax)?;
            a.jnz(loop1)?;
            a.set_label(&mut done)?;
        }

        // Epilogue (last depth block only).
        let mut store = a.create_label();
        a.bt(r9, 33)?;
        a.jae(store)?;
        let splat = |a: &mut CodeAssembler,
                     r: AsmRegisterZmm,
                     x: f32|
         -> std::result::Result<(), IcedError> {
            a.mov(eax, x.to_bits())?;
            a.vpbroadcastd(r, eax)
        };
        if t.alpha != 1.0 {
            splat(&mut a, Z[29], t.alpha)?;
            for i in 0..t.mr {
                for h in 0..ncol {
                    a.vmulps(acc(i, h), acc(i, h), Z[29])?;
                }
            }
        }
        for (operand, base, scale) in [(t.bias, rcx, t.beta), (t.res, r8, 1.0)] {
            let Some((rs, vec)) = operand else { continue };
            if scale != 1.0 {
                splat(&mut a, Z[30], scale)?;
            }
            for i in 0..t.mr {
                if !vec {
                    a.vbroadcastss(tmp, dword_ptr(base + i as i64 * rs))?;
                }
                for h in 0..ncol {
                    if vec {
                        a.vmovups(
                            masked(tmp, h).z(),
                            zmmword_ptr(base + (i as i64 * rs + h as i64 * 64)),
                        )?;
                    }
                    if scale != 1.0 {
                        a.vfmadd231ps(acc(i, h), tmp, Z[30])?;
                    } else {
                        a.vaddps(acc(i, h), acc(i, h), tmp)?;
                    }
                }
            }
        }
        let accs: Vec<_> = (0..t.mr)
            .flat_map(|i| (0..ncol).map(move |h| acc(i, h)))
            .collect();
        zact::apply(
            &mut a,
            &mut consts,
            t.act,
            &accs,
            [Z[28], Z[29], Z[30], Z[31]],
        )?;
        a.set_label(&mut store)?;
        for i in 0..t.mr {
            for h in 0..ncol {
                a.vmovups(masked_mem(c_at(i, h), h), acc(i, h))?;
            }
        }
        a.vzeroupper()?;
        a.ret()?;
        consts.emit(&mut a)?;
        a.assemble(0)
    }

    /// The narrow-edge tile: `mr` rows by `e` (at most [`super::DOT_COLS`])
    /// columns, each a dot product along the depth, 16 depths per vector
    /// (a masked last one): A rows and B's K-major columns are both
    /// contiguous there. Each accumulator is summed across its lanes at
    /// the end; C partial sums, alpha, bias, residual and the store go one
    /// element at a time, the activation on all accumulators at once.
    pub(super) fn assemble_dot(t: &Tile, e: usize) -> std::result::Result<Vec<u8>, IcedError> {
        const X: [AsmRegisterXmm; 32] = [
            xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13,
            xmm14, xmm15, xmm16, xmm17, xmm18, xmm19, xmm20, xmm21, xmm22, xmm23, xmm24, xmm25,
            xmm26, xmm27, xmm28, xmm29, xmm30, xmm31,
        ];
        const Y: [AsmRegisterYmm; 32] = [
            ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13,
            ymm14, ymm15, ymm16, ymm17, ymm18, ymm19, ymm20, ymm21, ymm22, ymm23, ymm24, ymm25,
            ymm26, ymm27, ymm28, ymm29, ymm30, ymm31,
        ];
        let mut a = CodeAssembler::new(64)?;
        // EVEX throughout: the scalar and 128/256-bit forms name xmm16+.
        a.set_prefer_vex(false);
        let mut consts = zact::Consts::default();
        let acc = |i: usize, j: usize| i * e + j;
        let n = t.mr * e;
        let bcol = t.pstride / ZNR_I64;
        // Depth (segments with `seg`), in vectors of 16 (r10) and the
        // rest (k3).
        a.mov(rax, r9)?;
        a.shr(rax, CTL_DEPTH)?;
        if let Some(Seg { len, .. }) = t.seg {
            a.mov(r11d, (1u32 << (len % 16)) - 1)?;
        } else {
            a.mov(r10, rax)?;
            a.shr(r10, 4)?;
            a.and(eax, 15)?;
            a.mov(r11d, 1)?;
            a.shlx(r11d, r11d, eax)?;
            a.dec(r11d)?;
        }
        a.kmovw(k3, r11d)?;
        for &r in &Z[..n] {
            a.vpxord(r, r, r)?;
        }
        // One vector of depths; `tail`: the masked last one.
        let step = |a: &mut CodeAssembler, tail: bool| -> std::result::Result<(), IcedError> {
            let ld = |r: AsmRegisterZmm| if tail { r.k3().z() } else { r };
            for j in 0..e {
                a.vmovups(ld(Z[28 + j]), zmmword_ptr(rsi + j as i64 * bcol))?;
            }
            for i in 0..t.mr {
                a.vmovups(ld(Z[30]), zmmword_ptr(rdi + i as i64 * t.lda))?;
                for j in 0..e {
                    a.vfmadd231ps(Z[acc(i, j)], Z[30], Z[28 + j])?;
                }
            }
            Ok(())
        };
        // r10 (> 0) whole vectors of depths.
        let by16 = |a: &mut CodeAssembler| -> std::result::Result<(), IcedError> {
            let mut lp = a.create_label();
            a.set_label(&mut lp)?;
            step(a, false)?;
            a.add(rdi, 64)?;
            a.add(rsi, 64)?;
            a.dec(r10)?;
            a.jnz(lp)
        };
        let mut reduce = a.create_label();
        if let Some(Seg { len, jump }) = t.seg {
            // rax segments: whole vectors, the masked rest, the skip.
            let mut seg = a.create_label();
            a.set_label(&mut seg)?;
            if len >= 16 {
                a.mov(r10d, (len / 16) as u32)?;
                by16(&mut a)?;
            }
            let rest = (len % 16) as i64 * 4;
            if rest > 0 {
                step(&mut a, true)?;
                a.add(rsi, rest as i32)?;
            }
            if rest + jump != 0 {
                a.add(rdi, (rest + jump) as i32)?;
            }
            a.dec(rax)?;
            a.jnz(seg)?;
        } else {
            let mut rest = a.create_label();
            a.test(r10, r10)?;
            a.jz(rest)?;
            by16(&mut a)?;
            a.set_label(&mut rest)?;
            a.test(eax, eax)?;
            a.jz(reduce)?;
            step(&mut a, true)?;
        }
        a.set_label(&mut reduce)?;
        // Each accumulator's lane sum into its lane 0 (the other lanes
        // zero, so the activation sees no stray values).
        let tmp = 31;
        a.mov(eax, 1)?;
        a.kmovw(k4, eax)?;
        for r in 0..n {
            a.vextractf64x4(Y[tmp], Z[r], 1)?;
            a.vaddps(Y[r], Y[r], Y[tmp])?;
            a.vextractf32x4(X[tmp], Y[r], 1)?;
            a.vaddps(X[r], X[r], X[tmp])?;
            a.vmovhlps(X[tmp], X[tmp], X[r])?;
            a.vaddps(X[r], X[r], X[tmp])?;
            a.vmovshdup(X[tmp], X[r])?;
            a.vaddss(X[r], X[r], X[tmp])?;
            a.vmovaps(X[r].k4().z(), X[r])?;
        }
        let c_at = |i: usize, j: usize| dword_ptr(rdx + (i as i64 * t.ldc + j as i64 * 4));
        let mut fresh = a.create_label();
        a.bt(r9, 32)?;
        a.jae(fresh)?;
        for i in 0..t.mr {
            for j in 0..e {
                a.vaddss(X[acc(i, j)], X[acc(i, j)], c_at(i, j))?;
            }
        }
        a.set_label(&mut fresh)?;
        let mut store = a.create_label();
        a.bt(r9, 33)?;
        a.jae(store)?;
        let splat =
            |a: &mut CodeAssembler, r: usize, x: f32| -> std::result::Result<(), IcedError> {
                a.mov(eax, x.to_bits())?;
                a.vmovd(X[r], eax)
            };
        if t.alpha != 1.0 {
            splat(&mut a, 29, t.alpha)?;
            for &r in &X[..n] {
                a.vmulss(r, r, X[29])?;
            }
        }
        for (operand, base, scale) in [(t.bias, rcx, t.beta), (t.res, r8, 1.0)] {
            let Some((rs, vec)) = operand else { continue };
            if scale != 1.0 {
                splat(&mut a, 30, scale)?;
            }
            for i in 0..t.mr {
                for j in 0..e {
                    let col = if vec { j as i64 * 4 } else { 0 };
                    a.vmovss(X[tmp], dword_ptr(base + (i as i64 * rs + col)))?;
                    if scale != 1.0 {
                        a.vfmadd231ss(X[acc(i, j)], X[tmp], X[30])?;
                    } else {
                        a.vaddss(X[acc(i, j)], X[acc(i, j)], X[tmp])?;
                    }
                }
            }
        }
        let accs: Vec<_> = (0..n).map(|r| Z[r]).collect();
        zact::apply(
            &mut a,
            &mut consts,
            t.act,
            &accs,
            [Z[28], Z[29], Z[30], Z[31]],
        )?;
        a.set_label(&mut store)?;
        for i in 0..t.mr {
            for j in 0..e {
                a.vmovss(c_at(i, j), X[acc(i, j)])?;
            }
        }
        a.vzeroupper()?;
        a.ret()?;
        consts.emit(&mut a)?;
        a.assemble(0)
    }
}

const ZNR_I64: i64 = ZNR as i64;

fn define_tile(lw: &mut Lower, t: &Tile) -> Result<cranelift_module::FuncId> {
    let bytes = match t.dot {
        Some(e) => asm::assemble_dot(t, e),
        None => asm::assemble(t),
    }
    .map_err(|e| Error::Internal(format!("assembling GEMM tile: {e}")))?;
    let mut sig = Signature::new(lw.cc);
    sig.params.extend([AbiParam::new(I64); 6]);
    lw.machine_code(&sig, &bytes)
}

/// Depth block: a panel block of `kc x 32` floats fills about half of L1.
pub fn depth_block(lw: &Lower, k: usize) -> usize {
    let kc = ((lw.l1d / 2) / (ZNR * 4)).max(64) & !3;
    k.min(kc)
}

/// How the work splits: (column-panel groups, row-block parts) per batch
/// element. At least 8 items when the shape allows (threads take
/// contiguous item ranges), and row parts small enough that their A block
/// stays in L2. With `rows_first` (B stays in L2, so each thread reading
/// all of it costs little) rows split before columns: a thread then
/// writes whole rows of C, the rows the next layer's thread, split by rows
/// too, reads from its own core's cache instead of the other core's.
/// With `c_cap` (several depth blocks: each tile loads and stores its C
/// once per block) an item's C block stays within that many bytes, so it
/// stays in L2 across the blocks: MLP b256's N=11008 layer, in items of
/// 1376 columns (1.4 MiB of C), ran 6% slower than in items of 256.
fn split(
    batch: usize,
    panels: usize,
    mblocks: usize,
    kc: usize,
    rows_first: bool,
    c_cap: Option<usize>,
) -> (usize, usize) {
    const WANT: usize = 8;
    let max_mb = ((256usize << 10) / (ZMR * kc * 4)).max(1);
    let mut mparts = mblocks.div_ceil(max_mb);
    if rows_first && batch * mparts < WANT {
        mparts = mblocks.min(WANT.div_ceil(batch)).max(mparts);
    }
    let mut groups = 1;
    if batch * mparts < WANT {
        groups = panels.min(WANT.div_ceil(batch * mparts));
    }
    if let Some(cap) = c_cap {
        let panel_bytes = mblocks.div_ceil(mparts) * ZMR * ZNR * 4;
        groups = groups.max(panels.div_ceil((cap / panel_bytes).max(1)));
    }
    if batch * mparts * groups < WANT {
        mparts = mblocks.min(WANT.div_ceil(batch * groups)).max(mparts);
    }
    let (mut groups, mut mparts) = normal(panels, mblocks, groups, mparts);
    // Few items of unequal count per thread leave a thread idle: refine
    // the split dimension (rows where `rows_first`, else columns: the
    // other one would re-read the big operand) while that evens the load.
    let mut best = imbalance(batch, panels, mblocks, groups, mparts);
    let (g0, m0) = (groups, mparts);
    let candidates: Vec<(usize, usize)> = if rows_first {
        (m0..=mblocks.min(4 * m0)).map(|m| (g0, m)).collect()
    } else {
        (g0..=panels.min(4 * g0)).map(|g| (g, m0)).collect()
    };
    for (g, m) in candidates {
        let (g, m) = normal(panels, mblocks, g, m);
        let x = imbalance(batch, panels, mblocks, g, m);
        if x < best - 1e-9 {
            (best, groups, mparts) = (x, g, m);
        }
    }
    (groups, mparts)
}

/// `(groups, parts)` as the items really fall: every group of
/// `panels / groups` panels (rounded up) and part of `mblocks / parts`
/// row blocks is non-empty.
fn normal(panels: usize, mblocks: usize, groups: usize, mparts: usize) -> (usize, usize) {
    let ppg = panels.div_ceil(groups);
    let mbpp = mblocks.div_ceil(mparts);
    (panels.div_ceil(ppg), mblocks.div_ceil(mbpp))
}

/// The slowest thread's work over an even share, averaged over 2 and 4
/// threads, when the pool hands each thread its chunk of the items
/// (batch, row part, panel group).
fn imbalance(batch: usize, panels: usize, mblocks: usize, groups: usize, mparts: usize) -> f64 {
    let (ppg, mbpp) = (panels.div_ceil(groups), mblocks.div_ceil(mparts));
    let span = |i: usize, per: usize, all: usize| per.min(all - i * per);
    let work = |item: usize| {
        let rest = item % (groups * mparts);
        span(rest / groups, mbpp, mblocks) * span(rest % groups, ppg, panels)
    };
    let n = batch * groups * mparts;
    let total = (batch * mblocks * panels) as f64;
    let worst = |t: usize| {
        (0..t)
            .map(|i| {
                let (b, e) = cpucc_runtime::chunk(n, t, i);
                (b..e).map(work).sum::<usize>()
            })
            .max()
            .unwrap_or(0) as f64
            * t as f64
            / total
    };
    (worst(2) + worst(4)) / 2.0
}

/// The blocking of one GEMM and its tile functions (defined by [`plan`]).
pub struct Plan {
    pub panels: usize,
    mblocks: usize,
    /// The longest depth block.
    pub kc: usize,
    /// Depth blocks as (first depth, depth): a panel's block stays in L1
    /// while the tiles walk the rows.
    pub blocks: Vec<(usize, usize)>,
    /// The tiles walk each block's depth in segments.
    seg: Option<Seg>,
    tail_rows: usize,
    edge_cols: usize,
    /// The edge panel has tile functions of its own: one-vector tiles
    /// (at most 16 columns), or the dot tiles.
    edge_fns: bool,
    /// The edge panel takes the dot tiles (packed K-major).
    dot: bool,
    act_in_regs: bool,
    /// A's row stride (elements) as the tiles read it.
    a_rs: i64,
    /// The callee spanning [`WIDE_PANELS`] inner panels (few rows).
    wide: Option<usize>,
    /// Row blocks sharing the prefetch of the next panel's block (one
    /// where a single depth block makes each row block walk the panels).
    pf_rate: usize,
    /// Tile functions: [full rows, tail rows] for inner panels, then the
    /// same for the edge panel when it takes the one-vector form, then the
    /// wide one.
    pub callees: Vec<cranelift_module::FuncId>,
}

/// Blocks `g` and defines its tile functions, which read A rows `a_rs`
/// elements apart (`g.a.rs`, or the depth block where the caller copies A).
/// With `dot_edge`, an edge panel of at most [`DOT_COLS`] columns takes
/// the dot-product tiles: the caller packs that panel K-major
/// ([`pack_dot_edge`]).
pub fn plan(lw: &mut Lower, g: &Gemm, a_rs: i64, dot_edge: bool) -> Result<Plan> {
    let kc = depth_block(lw, g.k);
    let blocks = (0..g.k.div_ceil(kc))
        .map(|i| (i * kc, kc.min(g.k - i * kc)))
        .collect();
    plan_tiles(lw, g, a_rs, dot_edge, g.m, (blocks, None), true)
}

/// A plan for tiles that walk rows of `line` positions (at most
/// [`ZMR`] per tile, the last of a line taking the tail rows; see
/// [`Rows::Grid`]), whose depth runs in segments of `seg` (a convolution's
/// kernel row), each segment's A `seg_pitch` bytes after the previous
/// one's. Segments short enough that several fill a depth block are
/// walked by the tiles themselves ([`Seg`]); longer ones are split into
/// blocks of their own.
pub fn plan_lines(
    lw: &mut Lower,
    g: &Gemm,
    a_rs: i64,
    line: usize,
    (seg, seg_pitch): (usize, i64),
) -> Result<Plan> {
    let segs = g.k / seg;
    let kc = depth_block(lw, g.k);
    if 2 * seg <= kc {
        let per = kc / seg;
        let blocks = (0..segs)
            .step_by(per)
            .map(|s| (s * seg, per.min(segs - s) * seg))
            .collect();
        let walk = Seg {
            len: seg,
            jump: seg_pitch - (seg * 4) as i64,
        };
        return plan_tiles(lw, g, a_rs, true, line, (blocks, Some(walk)), false);
    }
    let kc = depth_block(lw, seg);
    let per = seg.div_ceil(kc);
    let len = seg.div_ceil(per).next_multiple_of(4).min(seg);
    let blocks = (0..segs)
        .flat_map(|s| {
            (0..seg)
                .step_by(len)
                .map(move |i| (s * seg + i, len.min(seg - i)))
        })
        .collect();
    plan_tiles(lw, g, a_rs, true, line, (blocks, None), false)
}

fn plan_tiles(
    lw: &mut Lower,
    g: &Gemm,
    a_rs: i64,
    dot_edge: bool,
    m: usize,
    (blocks, seg): (Vec<(usize, usize)>, Option<Seg>),
    may_widen: bool,
) -> Result<Plan> {
    let (n, k) = (g.n, g.k);
    g.check_accumulate()?;
    let panels = n.div_ceil(ZNR);
    let mblocks = m.div_ceil(ZMR);
    let kc = blocks.iter().map(|b| b.1).max().unwrap_or(0);
    let tail_rows = m - (mblocks - 1) * ZMR;
    // A power of two (the tiles' unrolled loop spans one period of it).
    let pf_rate = if blocks.len() == 1 {
        1
    } else {
        1 << mblocks.clamp(1, 16).ilog2()
    };
    let act_in_regs = zact::in_registers(g.act);
    let edge_cols = n - (panels - 1) * ZNR;
    let tile = |mr, nv| Tile {
        mr,
        nv,
        lda: a_rs * 4,
        ldc: g.c.rs * 4,
        bias: g.bias.as_ref().map(|b| (b.rs * 4, b.cs == 1)),
        beta: g.beta,
        res: g
            .residual
            .as_ref()
            .filter(|_| !g.accumulates())
            .map(|r| (r.rs * 4, r.cs == 1)),
        alpha: g.alpha,
        act: if act_in_regs { g.act } else { Act::None },
        np: 1,
        pstride: (k * ZNR * 4) as i64,
        dot: None,
        seg,
        next_c: g.accumulates(),
        pf_rate,
    };
    let dot = dot_edge && uses_dot_edge(n);
    let rows: &[usize] = if tail_rows == ZMR {
        &[ZMR]
    } else {
        &[ZMR, tail_rows]
    };
    let mut callees = Vec::new();
    for &mr in rows {
        callees.push(define_tile(lw, &tile(mr, 2))?);
    }
    let edge_fns = dot || edge_cols <= 16;
    if edge_fns {
        for &mr in rows {
            let t = Tile {
                dot: dot.then_some(edge_cols),
                ..tile(mr, 1)
            };
            callees.push(define_tile(lw, &t)?);
        }
    }
    let wide = (may_widen && wide(m, panels, k))
        .then(|| {
            callees.push(define_tile(
                lw,
                &Tile {
                    np: WIDE_PANELS,
                    ..tile(m, 2)
                },
            )?);
            Ok::<_, Error>(callees.len() - 1)
        })
        .transpose()?;
    Ok(Plan {
        panels,
        mblocks,
        kc,
        blocks,
        seg,
        tail_rows,
        edge_cols,
        edge_fns,
        dot,
        act_in_regs,
        a_rs,
        wide,
        pf_rate,
        callees,
    })
}

/// Whether a GEMM of `n` columns has an edge panel for the dot tiles.
fn uses_dot_edge(n: usize) -> bool {
    (1..=DOT_COLS).contains(&(n % ZNR))
}

/// Rewrites the edge panel of B packed by `gemm::pack_const` (`k` x `n`)
/// K-major, as the dot tiles read it, where [`plan`] with `dot_edge` will
/// use them.
pub fn pack_dot_edge(packed: &mut [u8], k: usize, n: usize) {
    if !uses_dot_edge(n) {
        return;
    }
    let base = (n / ZNR) * k * ZNR * 4;
    let panel = &mut packed[base..base + k * ZNR * 4];
    let rows = panel.to_vec();
    panel.fill(0);
    for kk in 0..k {
        for j in 0..n % ZNR {
            let from = (kk * ZNR + j) * 4;
            let to = (j * k + kk) * 4;
            panel[to..to + 4].copy_from_slice(&rows[from..from + 4]);
        }
    }
}

/// C = epilogue(A · packed B) with the microkernel; `packed` holds one
/// panel set of `packed_len(n, k, ZNR)` floats per batch element (its edge
/// panel K-major where `lw.dot_packed` lists it).
pub fn compute(lw: &mut Lower, g: &Gemm, packed: Buf) -> Result<()> {
    let (m, n, k) = (g.m, g.n, g.k);
    let kc = depth_block(lw, k);
    let b_bytes = n.next_multiple_of(ZNR) * k * 4;
    let (groups, mparts) = split(
        g.batch,
        n.div_ceil(ZNR),
        m.div_ceil(ZMR),
        kc,
        b_bytes <= lw.l2 / 2,
        (k > kc).then_some(lw.l2 / 4),
    );
    let mut ppg = n.div_ceil(ZNR).div_ceil(groups);
    if wide(m, n.div_ceil(ZNR), k) {
        // Whole wide tiles per group.
        ppg = ppg.next_multiple_of(WIDE_PANELS);
    }
    let groups = n.div_ceil(ZNR).div_ceil(ppg);
    // A's rows would share L1 sets and evict each other within one tile
    // (a multiple of 4 KiB apart, as in wide layers): where an item's
    // tiles span enough columns to repay it and few groups repeat it, it
    // copies its rows per depth block into a buffer of `kc`-float rows,
    // else one pass first copies A to a conflict-free stride. Other A is
    // read in place.
    let conflicts = set_conflicts(g.a.rs, m);
    let copy_a = conflicts && ppg * ZNR >= COPY_A_MIN_COLS && groups <= COPY_A_MAX_GROUPS;
    if conflicts && !copy_a {
        let g = restride_a(lw, g)?;
        return compute(lw, &g, packed);
    }
    let dot = lw.dot_packed.contains(&packed);
    let pl = plan(lw, g, if copy_a { kc as i64 } else { g.a.rs }, dot)?;
    let (panels, mblocks) = (pl.panels, pl.mblocks);
    lw.note_kernel(format!(
        "avx512 gemm {ZMR}x{ZNR} tiles, M={m} N={n} K={k} batch={}, kc={kc}, items {}x{}x{}{}",
        g.batch,
        g.batch,
        groups,
        mparts,
        if copy_a {
            ", A copied per depth block"
        } else {
            ""
        }
    ));
    let mbpp = mblocks.div_ceil(mparts);
    let pset = (panels * k * ZNR) as i64;
    let offs = lw.data(
        g.offsets
            .iter()
            .flat_map(|o| {
                let o = [o[0], o[1] * pset, o[2], o[3], o[4]];
                o.into_iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<_>>()
            })
            .collect(),
    )?;
    let mut bufs = vec![g.a.buf, packed, g.c.buf, offs];
    let bias_arg = g.bias.as_ref().map(|b| {
        bufs.push(b.buf);
        bufs.len() - 1
    });
    let res_arg = g.residual.as_ref().map(|r| {
        bufs.push(r.buf);
        bufs.len() - 1
    });
    let items = g.batch * groups * mparts;
    let callees = pl.callees.clone();
    lw.kernel_calling(bufs, items, false, &callees, |kb, refs| {
        let buf = copy_a.then(|| {
            let slot = kb.b.create_sized_stack_slot(StackSlotData::new(
                StackSlotKind::ExplicitSlot,
                (mbpp * ZMR * kc * 4) as u32,
                6,
            ));
            kb.b.ins().stack_addr(I64, slot, 0)
        });
        let (ap, bp, cp, op) = (kb.arg(0), kb.arg(1), kb.arg(2), kb.arg(3));
        let biasp = bias_arg.map(|j| kb.arg(j));
        let resp = res_arg.map(|j| kb.arg(j));
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let per_batch = (groups * mparts) as i64;
            let bi = kb.b.ins().udiv_imm_u(item, per_batch);
            let rest = kb.b.ins().urem_imm_u(item, per_batch);
            let mpi = kb.b.ins().udiv_imm_u(rest, groups as i64);
            let gi = kb.b.ins().urem_imm_u(rest, groups as i64);
            let ob = kb.gep(op, bi, 40);
            let ld = |kb: &mut Kb, j: i32| kb.b.ins().load(I64, mem(), ob, j * 8);
            let (oa, obp, oc, obias, ores) =
                (ld(kb, 0), ld(kb, 1), ld(kb, 2), ld(kb, 3), ld(kb, 4));
            let base = Bases {
                a: kb.gep(ap, oa, 4),
                b: kb.gep(bp, obp, 4),
                c: kb.gep(cp, oc, 4),
                bias: biasp.map(|p| kb.gep(p, obias, 4)),
                res: resp.map(|p| kb.gep(p, ores, 4)),
            };
            let p_lo = kb.muli(gi, ppg as i64);
            let p_hi = kb.addi(p_lo, ppg as i64);
            let p_hi = min_imm(kb, p_hi, panels as i64);
            let mb_lo = kb.muli(mpi, mbpp as i64);
            let mb_hi = kb.addi(mb_lo, mbpp as i64);
            let mb_hi = min_imm(kb, mb_hi, mblocks as i64);
            let tail_mb = kb.i(mblocks as i64 - 1);
            let r = Ranges {
                p: (p_lo, p_hi),
                mb: (mb_lo, mb_hi),
                rows: Rows::Linear { tail_mb },
            };
            for (kbi, &(k0, len)) in pl.blocks.iter().enumerate() {
                let Some(buf) = buf else {
                    let a = kb.addi(base.a, (k0 * 4) as i64);
                    emit_pass(kb, g, &pl, refs, &Bases { a, ..base }, &r, kbi);
                    continue;
                };
                let r_lo = kb.muli(mb_lo, ZMR as i64);
                let r_hi = kb.muli(mb_hi, ZMR as i64);
                let r_hi = min_imm(kb, r_hi, m as i64);
                let len = kb.i(len as i64);
                kb.for_range(r_lo, r_hi, 1, |kb, row| {
                    let src = kb.gep(base.a, row, g.a.rs * 4);
                    let src = kb.addi(src, (k0 * 4) as i64);
                    let i = kb.b.ins().isub(row, r_lo);
                    let dst = kb.gep(buf, i, (kc * 4) as i64);
                    kb.copy_f32(src, dst, len);
                });
                // The buffer holds row blocks [mb_lo, mb_hi): `a` is where
                // row 0 would be.
                let back = kb.muli(mb_lo, (ZMR * kc * 4) as i64);
                let a = kb.b.ins().isub(buf, back);
                emit_pass(kb, g, &pl, refs, &Bases { a, ..base }, &r, kbi);
            }
        });
    })
}

/// Value ranges of one work item's tiles: panels `[p.0, p.1)` and tiles
/// `[mb.0, mb.1)` laid out as `rows` says.
pub struct Ranges {
    pub p: (Value, Value),
    pub mb: (Value, Value),
    pub rows: Rows,
}

/// Where tile `mb` of a work item reads A and writes C.
pub enum Rows {
    /// Rows `mb * ZMR..` of A and C (A rows `Plan::a_rs` apart); tile
    /// `tail_mb` takes the tail-rows function.
    Linear { tail_mb: Value },
    /// Lines of `line` C rows (the plan's `m`), `per_line` tiles each,
    /// the last taking the tail-rows function: tile `mb` is tile
    /// `mb % per_line` of line `mb / per_line`, whose A rows start
    /// `a_pitch` bytes after the previous line's (a direct convolution:
    /// a line is an output row, read from the input rows it covers).
    Grid {
        per_line: i64,
        line: i64,
        a_pitch: i64,
    },
}

/// Emits depth block `kbi` (`pl.blocks[kbi]`) of the tiles of panels
/// `r.p` by tiles `r.mb` (from `base`'s row origin, laid out as `r.rows`
/// says). `base.a` holds just this depth block's columns, rows `pl.a_rs`
/// apart. `refs` are the kernel's references to `pl.callees`.
pub fn emit_pass(
    kb: &mut Kb,
    g: &Gemm,
    pl: &Plan,
    refs: &[FuncRef],
    base: &Bases,
    r: &Ranges,
    kbi: usize,
) {
    let (panels, k) = (pl.panels, g.k);
    let (tail_rows, edge_cols) = (pl.tail_rows, pl.edge_cols);
    let ((p_lo, p_hi), (mb_lo, mb_hi)) = (r.p, r.mb);
    let edge_mask = if edge_cols == 32 {
        u32::MAX as i64
    } else {
        (1i64 << edge_cols) - 1
    };
    let per = if tail_rows == ZMR { 1 } else { 2 };
    let fns = |edge: bool| {
        let o = if edge && pl.edge_fns { per } else { 0 };
        (refs[o], refs[o + per - 1])
    };
    let p_inner = min_imm(kb, p_hi, panels as i64 - 1);
    let has_edge = kb.b.ins().icmp_imm_s(IntCC::Equal, p_hi, panels as i64);
    let last = kbi == pl.blocks.len() - 1;
    let (k0, depth) = pl.blocks[kbi];
    let steps = pl.seg.map_or(depth, |s| depth / s.len);
    debug_assert!(steps < 1 << (64 - CTL_DEPTH));
    let mut ctl = (steps as i64) << CTL_DEPTH;
    if kbi > 0 || g.accumulates() {
        ctl |= 1 << 32;
    }
    if last {
        ctl |= 1 << 33;
    }
    // The C of the tile after the one at `c` (panel `p`, row `r0`), in
    // the order below; about (a grid's lines may end in short tiles).
    let one_block = pl.blocks.len() == 1;
    let next_c = |kb: &mut Kb, c: Value, p: Value, r0: Value| {
        if !one_block {
            return kb.addi(c, ZMR as i64 * g.c.rs * 4);
        }
        let right = kb.addi(c, (ZNR * 4) as i64);
        let next = kb.addi(p, 1);
        let more = kb.b.ins().icmp(IntCC::SignedLessThan, next, p_hi);
        let r1 = kb.addi(r0, ZMR as i64);
        let j0 = kb.muli(p_lo, ZNR as i64);
        let below = tile_ptr(kb, base.c, &g.c, r1, j0);
        kb.b.ins().select(more, right, below)
    };
    // A tile function's arguments for the tile of panel `p` at row `r0`
    // of C, whose A rows start at `a`.
    let tile_args = |kb: &mut Kb, p: Value, (a, r0): (Value, Value), ctlv: Value, edge: bool| {
        let bpan = kb.gep(base.b, p, (k * ZNR * 4) as i64);
        // Row k0 of the panel block ([K][32], or [cols][K] for the dot tiles).
        let row = if edge && pl.dot { 1 } else { ZNR as i64 };
        let bpan = kb.addi(bpan, k0 as i64 * row * 4);
        let j0 = kb.muli(p, ZNR as i64);
        let c = tile_ptr(kb, base.c, &g.c, r0, j0);
        let bias = opt_ptr(kb, base.bias, g.bias.as_ref(), r0, j0);
        let res = if g.accumulates() {
            next_c(kb, c, p, r0)
        } else {
            opt_ptr(kb, base.res, g.residual.as_ref(), r0, j0)
        };
        [a, bpan, c, bias, res, ctlv]
    };
    // The tile of panel `p` (`edge`: the last panel) at row block `mb`;
    // with `pf` set (and a next panel in the item) it prefetches the next
    // panel's block, the rows of prefetch phase `phase`.
    let tile = |kb: &mut Kb, p: Value, mb: Value, (pf, phase): (Value, Value), edge: bool| {
        let (full_fn, tail_fn) = fns(edge);
        let ctlv = kb.i(ctl | if edge { edge_mask } else { u32::MAX as i64 });
        let cols = if edge { edge_cols } else { ZNR };
        let (at, is_tail) = tile_at(kb, pl, base.a, &r.rows, mb);
        let ctlv = if edge {
            ctlv
        } else {
            let next = kb.addi(p, 1);
            let more = kb.b.ins().icmp(IntCC::SignedLessThan, next, p_hi);
            let to_next = kb.b.ins().band(pf, more);
            let to_next = kb.b.ins().uextend(I64, to_next);
            let to_next = kb.b.ins().ishl_imm_u(to_next, i64::from(CTL_PREFETCH));
            let ctlv = kb.b.ins().bor(ctlv, to_next);
            if last {
                ctlv
            } else {
                // The item's last panel: the first panel's next block.
                let back = kb.b.ins().isub(p, p_lo);
                let near = kb.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, back, 256);
                let ahead = kb.b.ins().band_not(pf, more);
                let ahead = kb.b.ins().band(ahead, near);
                let ahead = kb.b.ins().uextend(I64, ahead);
                let back = kb.b.ins().imul(back, ahead);
                let back = kb.b.ins().ishl_imm_u(back, i64::from(CTL_BACK));
                let ahead = kb.b.ins().ishl_imm_u(ahead, i64::from(CTL_AHEAD));
                let ctlv = kb.b.ins().bor(ctlv, ahead);
                kb.b.ins().bor(ctlv, back)
            }
        };
        let phase = kb.b.ins().ishl_imm_u(phase, i64::from(CTL_PHASE));
        let ctlv = kb.b.ins().bor(ctlv, phase);
        let args = tile_args(kb, p, at, ctlv, edge);
        let c = args[2];
        let post = |kb: &mut Kb, rows: usize| {
            if last && !pl.act_in_regs {
                post_act(kb, g, c, rows, cols);
            }
        };
        if tail_rows == ZMR {
            kb.b.ins().call(full_fn, &args);
            post(kb, ZMR);
        } else {
            let tb = kb.b.create_block();
            let fb = kb.b.create_block();
            let done = kb.b.create_block();
            kb.b.ins().brif(is_tail, tb, &[], fb, &[]);
            kb.b.switch_to_block(tb);
            kb.b.ins().call(tail_fn, &args);
            post(kb, tail_rows);
            kb.b.ins().jump(done, &[]);
            kb.b.switch_to_block(fb);
            kb.b.ins().call(full_fn, &args);
            post(kb, ZMR);
            kb.b.ins().jump(done, &[]);
            kb.b.switch_to_block(done);
        }
    };
    // The row blocks of panel `p`: the first `pf_rate` prefetch the next
    // panel.
    let panel = |kb: &mut Kb, p: Value, edge: bool| {
        kb.for_range(mb_lo, mb_hi, 1, |kb, mb| {
            let j = kb.b.ins().isub(mb, mb_lo);
            let pf =
                kb.b.ins()
                    .icmp_imm_u(IntCC::UnsignedLessThan, j, pl.pf_rate as i64);
            let phase = kb.b.ins().band_imm_u(j, 15);
            tile(kb, p, mb, (pf, phase), edge);
        });
    };
    let p_rest = match pl.wide {
        Some(w) => {
            // One row block (`wide` is planned for few rows only).
            let span = kb.b.ins().isub(p_inner, p_lo);
            let whole = kb.b.ins().udiv_imm_u(span, WIDE_PANELS as i64);
            let whole = kb.muli(whole, WIDE_PANELS as i64);
            let p_mid = kb.b.ins().iadd(p_lo, whole);
            let ctlv = kb.i(ctl | u32::MAX as i64);
            kb.for_range(p_lo, p_mid, WIDE_PANELS as i64, |kb, p| {
                let r0 = kb.i(0);
                let args = tile_args(kb, p, (base.a, r0), ctlv, false);
                kb.b.ins().call(refs[w], &args);
                if last && !pl.act_in_regs {
                    post_act(kb, g, args[2], tail_rows, WIDE_PANELS * ZNR);
                }
            });
            p_mid
        }
        None => p_lo,
    };
    if pl.blocks.len() == 1 {
        // One depth block: each row block walks the item's panels, so its
        // A rows stay in L1 across them and it writes whole rows of C in
        // turn, not a 128-byte strip of each (ResNet-50's K = 64 1x1
        // layer, M=3136 N=256: 0.645 -> 0.625 ms; ResNet-50 b32 1940 ->
        // 1870 ms, MobileNetV2 5.50 -> 5.39 ms, at 1 thread). With several
        // blocks the panel's block stays in L1 instead, while the row
        // blocks walk it (measured no better the other way round).
        let pf = (kb.b.ins().iconst(I8, 1), kb.i(0));
        kb.for_range(mb_lo, mb_hi, 1, |kb, mb| {
            kb.for_range(p_rest, p_inner, 1, |kb, p| tile(kb, p, mb, pf, false));
            kb.if_(has_edge, |kb| {
                let p = kb.i(panels as i64 - 1);
                tile(kb, p, mb, pf, true);
            });
        });
        return;
    }
    kb.for_range(p_rest, p_inner, 1, |kb, p| panel(kb, p, false));
    kb.if_(has_edge, |kb| {
        let p = kb.i(panels as i64 - 1);
        panel(kb, p, true);
    });
}

/// Pointers of one GEMM's operands at a row origin.
#[derive(Clone, Copy)]
pub struct Bases {
    pub a: Value,
    pub b: Value,
    pub c: Value,
    pub bias: Option<Value>,
    pub res: Option<Value>,
}

/// Tile `mb`'s A rows and C row, and whether it takes the tail rows.
fn tile_at(kb: &mut Kb, pl: &Plan, a: Value, rows: &Rows, mb: Value) -> ((Value, Value), Value) {
    let a_rows = pl.a_rs * 4 * ZMR as i64;
    match *rows {
        Rows::Linear { tail_mb } => {
            let r0 = kb.muli(mb, ZMR as i64);
            let a = kb.gep(a, mb, a_rows);
            ((a, r0), kb.b.ins().icmp(IntCC::Equal, mb, tail_mb))
        }
        Rows::Grid {
            per_line,
            line,
            a_pitch,
        } => {
            let l = kb.b.ins().udiv_imm_u(mb, per_line);
            let t = kb.b.ins().urem_imm_u(mb, per_line);
            let a = kb.gep(a, l, a_pitch);
            let a = kb.gep(a, t, a_rows);
            let r0 = kb.muli(l, line);
            let c0 = kb.muli(t, ZMR as i64);
            let r0 = kb.b.ins().iadd(r0, c0);
            let tail = kb.b.ins().icmp_imm_u(IntCC::Equal, t, per_line - 1);
            ((a, r0), tail)
        }
    }
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

/// Applies the activation the tile function left out to the stored tile:
/// `rows` rows of `cols` columns.
fn post_act(kb: &mut Kb, g: &Gemm, c: Value, rows: usize, cols: usize) {
    let cols = kb.i(cols as i64);
    for r in 0..rows {
        let row = kb.addi(c, r as i64 * g.c.rs * 4);
        let z = kb.i(0);
        kb.for_vec(z, cols, 4, |kb, j, lanes| {
            let ty = if lanes == 1 { F32 } else { F32X4 };
            let addr = kb.gep(row, j, 4);
            let v = kb.b.ins().load(ty, mem(), addr, 0);
            let v = g.act.apply(kb, v);
            kb.b.ins().store(mem(), v, addr, 0);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_block_once() {
        for (batch, panels, mblocks) in [(1, 1, 1), (1, 128, 19), (3, 2, 40), (200, 3, 1)] {
            for rows_first in [false, true] {
                let (g, m) = split(batch, panels, mblocks, 128, rows_first, None);
                let ppg = panels.div_ceil(g);
                let mbpp = mblocks.div_ceil(m);
                assert!(g >= 1 && m >= 1);
                assert!((g - 1) * ppg < panels && g * ppg >= panels);
                assert!((m - 1) * mbpp < mblocks && m * mbpp >= mblocks);
            }
        }
    }

    #[test]
    fn split_keeps_an_items_c_within_the_cap() {
        // (panels, row blocks, cap): MLP b256's N=11008 layer, ResNet-50
        // b32's layer3 1x1 layers, and a cap below one panel's C.
        for (panels, mblocks, cap) in [(344, 19, 512 << 10), (32, 448, 512 << 10), (8, 448, 1)] {
            let (g, m) = split(1, panels, mblocks, 192, false, Some(cap));
            let (ppg, mbpp) = (panels.div_ceil(g), mblocks.div_ceil(m));
            assert!(
                ppg == 1 || mbpp * ZMR * ppg * ZNR * 4 <= cap,
                "{panels} {mblocks}: {g}x{m}"
            );
            let (g0, _) = split(1, panels, mblocks, 192, false, None);
            assert!(g >= g0);
        }
    }

    #[test]
    fn split_evens_the_threads_load() {
        // 14 row blocks in 8 parts fall as 7 parts of 2 (4 vs 3 per
        // thread at 2 threads): one block per part splits 7/7.
        assert_eq!(split(1, 18, 14, 128, true, None), (1, 14));
        // 10 panels in groups of 2 make 5 items (3 vs 2): 10 groups of 1.
        assert_eq!(split(1, 10, 4, 128, false, None), (10, 1));
        // Already even: left alone.
        assert_eq!(split(1, 128, 1, 128, false, None), (8, 1));
        assert!(imbalance(1, 10, 4, 10, 1) < imbalance(1, 10, 4, 5, 1));
    }

    #[test]
    fn seg_tiles_assemble() {
        for len in [1, 3, 4, 5, 16, 21, 48, 64] {
            for dot in [None, Some(1), Some(2)] {
                for mr in [ZMR, 3] {
                    let t = Tile {
                        mr,
                        nv: if dot.is_some() { 1 } else { 2 },
                        lda: 24,
                        ldc: 128,
                        bias: None,
                        beta: 1.0,
                        res: None,
                        alpha: 1.0,
                        act: Act::None,
                        np: 1,
                        pstride: 4096,
                        dot,
                        seg: Some(Seg { len, jump: 100 }),
                        next_c: len.is_multiple_of(2),
                        pf_rate: [1, 2, 4, 8, 16][len % 5],
                    };
                    let r = match dot {
                        Some(e) => asm::assemble_dot(&t, e),
                        None => asm::assemble(&t),
                    };
                    r.unwrap_or_else(|e| panic!("len {len} dot {dot:?} mr {mr}: {e}"));
                }
            }
        }
    }

    #[test]
    fn tile_assembles() {
        for act in [Act::None, Act::Relu, Act::Clip(0.0, 6.0)] {
            let t = Tile {
                mr: ZMR,
                nv: 2,
                lda: 4096 * 4,
                ldc: 4096 * 4,
                bias: Some((0, true)),
                beta: 0.5,
                res: Some((4096 * 4, true)),
                alpha: 2.0,
                act,
                np: 1,
                pstride: 0,
                pf_rate: 16,
                dot: None,
                seg: None,
                next_c: false,
            };
            let code = asm::assemble(&t).expect("assembles");
            // The function ends with `ret`, then the constants it reads
            // (Clip's bounds; alpha and beta are immediates).
            let consts: Vec<u8> = match act {
                Act::Clip(lo, hi) => [lo, hi]
                    .iter()
                    .flat_map(|x| x.to_bits().to_le_bytes())
                    .collect(),
                _ => Vec::new(),
            };
            let (body, data) = code.split_at(code.len() - consts.len());
            assert_eq!(body.last(), Some(&0xc3), "{act:?}: ret before the data");
            assert_eq!(data, consts, "{act:?}: constants after the ret");
        }
    }
}
