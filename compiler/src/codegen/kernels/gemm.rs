//! The blocked GEMM behind MatMul, Gemm and convolution:
//! C = act(alpha * A·B + beta * bias + residual), f32.
//!
//! B is packed into panels of `nr` columns (`[N/nr][K][nr]`, zero-padded):
//! at compile time when it is a constant (weights), else by a packing
//! kernel into workspace scratch (im2col for convolutions packs straight
//! into this form). `run` picks the kernel: the AVX-512 machine-code
//! microkernel (`zgemm`, 32-column panels) when the target has it and the
//! operands fit, else the portable CLIF kernel here (8-column panels),
//! which keeps a 4x8 block of C in eight f32x4 accumulators: per k, two
//! panel loads and four broadcasts of A feed eight multiply-adds. Work
//! items are (batch, block of 4 rows); a per-batch offset table in
//! read-only data makes any broadcast batch layout work.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, F32X4, I64};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::elementwise::{gelu, hard_sigmoid};
use super::{bf16gemm, bfmmla, math, sgemm_neon, sgemm_sve, zgemm};
use crate::codegen::builder::{Kb, mem};
use crate::codegen::lower::{Buf, Lower};
use crate::error::{Error, Result};

pub const NR: usize = 8;
pub const MR: usize = 4;

/// A strided matrix operand: element (i, j) of batch b is at
/// `buf + off[b] + i * rs + j * cs` (elements).
#[derive(Clone, Debug)]
pub struct Mat {
    pub buf: Buf,
    pub rs: i64,
    pub cs: i64,
}

/// Activation applied in the epilogue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    None,
    Relu,
    Clip(f32, f32),
    Sigmoid,
    Tanh,
    HardSigmoid(f32, f32),
    HardSwish,
    LeakyRelu(f32),
    Gelu,
    GeluTanh,
}

impl Act {
    pub fn apply(self, kb: &mut Kb, v: Value) -> Value {
        let ty = kb.b.func.dfg.value_type(v);
        match self {
            Act::None => v,
            Act::Relu => {
                let z = kb.constant(ty, 0.0);
                kb.b.ins().fmax(v, z)
            }
            Act::Clip(lo, hi) => {
                let l = kb.constant(ty, lo as f64);
                let h = kb.constant(ty, hi as f64);
                let v = kb.b.ins().fmax(v, l);
                kb.b.ins().fmin(v, h)
            }
            Act::Sigmoid => math::sigmoid(kb, ty, v),
            Act::Tanh => math::tanh(kb, ty, v),
            Act::HardSigmoid(a, b) => hard_sigmoid(kb, ty, v, a as f64, b as f64),
            Act::HardSwish => {
                let h = hard_sigmoid(kb, ty, v, 1.0 / 6.0, 0.5);
                kb.b.ins().fmul(v, h)
            }
            Act::LeakyRelu(a) => {
                let s = kb.constant(ty, a as f64);
                let m = kb.b.ins().fmul(v, s);
                let z = kb.constant(ty, 0.0);
                let neg =
                    kb.b.ins()
                        .fcmp(cranelift_codegen::ir::condcodes::FloatCC::LessThan, v, z);
                kb.sel(neg, m, v)
            }
            Act::Gelu => gelu(kb, ty, v, false),
            Act::GeluTanh => gelu(kb, ty, v, true),
        }
    }
}

/// Everything the compute kernel needs besides the packed B.
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub a: Mat,
    pub c: Mat,
    /// Added with weight `beta`; strides may be 0 for broadcasting.
    pub bias: Option<Mat>,
    pub beta: f32,
    pub residual: Option<Mat>,
    pub alpha: f32,
    pub act: Act,
    /// Per batch element offsets (elements): A, C, bias, residual; the
    /// packed B entry is the index of the batch's panel set.
    pub offsets: Vec<[i64; 5]>,
}

impl Gemm {
    /// C = A·B with no epilogue, one batch element.
    pub fn plain(m: usize, n: usize, k: usize, a: Mat, c: Mat) -> Gemm {
        Gemm {
            m,
            n,
            k,
            batch: 1,
            a,
            c,
            bias: None,
            beta: 1.0,
            residual: None,
            alpha: 1.0,
            act: Act::None,
            offsets: vec![[0; 5]],
        }
    }

    /// Whether C holds the residual when the kernel starts: the memory
    /// plan put the fused op's output over its dying residual
    /// (`plan::ACCUMULATING`). The residual is then read as C: the
    /// depth-blocked kernels load C into the accumulators on the first
    /// block too and add no residual in the epilogue; the others read each
    /// residual element before they write the same element of C. (Same
    /// shape, so same strides: they differ only where a dimension is 1.)
    pub fn accumulates(&self) -> bool {
        self.residual.as_ref().is_some_and(|r| r.buf == self.c.buf)
    }

    /// For the kernels that start from C: the residual in C would be
    /// scaled by alpha too, which the plan rules out.
    pub fn check_accumulate(&self) -> Result<()> {
        if self.accumulates() && self.alpha != 1.0 {
            return Err(Error::Internal(
                "a GEMM accumulating onto its residual has alpha != 1".into(),
            ));
        }
        Ok(())
    }
}

/// The panel width the kernel chosen for `g` reads.
pub fn panel_width(lw: &Lower, g: &Gemm) -> usize {
    if zgemm::fits(lw, g) {
        zgemm::ZNR
    } else if sgemm_sve::fits(lw, g) {
        sgemm_sve::NR
    } else if sgemm_neon::fits(lw, g) {
        sgemm_neon::NR
    } else {
        NR
    }
}

/// Packs the constant B (`b[o + kk * rs + j * cs]`, one panel set per
/// batch offset `o`) into read-only data for the kernel `run` will pick:
/// bf16 panels under `--fast-math bf16` (`bf16gemm`), else f32 panels of
/// `panel_width(lw, g)` columns (for the AVX-512 kernel with a narrow
/// edge panel packed K-major, `zgemm::pack_dot_edge`).
#[allow(clippy::too_many_arguments)]
pub fn pack_weights(
    lw: &mut Lower,
    g: &Gemm,
    b: &[f32],
    offs: &[i64],
    k: usize,
    n: usize,
    rs: usize,
    cs: usize,
) -> Result<Buf> {
    let bf16 = if bfmmla::fits(lw, g) {
        Some(bfmmla::pack(b, offs, k, n, rs, cs))
    } else if bf16gemm::fits(lw, g) {
        Some(bf16gemm::pack(b, offs, k, n, rs, cs))
    } else {
        None
    };
    if let Some(bytes) = bf16 {
        let buf = lw.data(bytes)?;
        lw.bf16_packed.push(buf);
        return Ok(buf);
    }
    let nr = panel_width(lw, g);
    let dot = zgemm::fits(lw, g);
    let mut bytes = Vec::new();
    for &o in offs {
        let mut set = pack_const(&b[o as usize..], k, n, rs, cs, nr);
        if dot {
            zgemm::pack_dot_edge(&mut set, k, n);
        }
        bytes.extend(set);
    }
    let buf = lw.data(bytes)?;
    if dot {
        lw.dot_packed.push(buf);
    }
    Ok(buf)
}

/// C = epilogue(A · packed B), `packed` in `panel_width(lw, g)` panels
/// (or from `pack_weights`).
pub fn run(lw: &mut Lower, g: &Gemm, packed: Buf) -> Result<()> {
    if lw.bf16_packed.contains(&packed) && lw.bfmmla {
        bfmmla::compute(lw, g, packed)
    } else if lw.bf16_packed.contains(&packed) {
        bf16gemm::compute(lw, g, packed)
    } else if zgemm::fits(lw, g) {
        zgemm::compute(lw, g, packed)
    } else if sgemm_sve::fits(lw, g) {
        sgemm_sve::compute(lw, g, packed)
    } else if sgemm_neon::fits(lw, g) {
        sgemm_neon::compute(lw, g, packed)
    } else {
        lw.note_kernel(format!(
            "clif gemm {MR}x{NR} tiles, M={} N={} K={} batch={}",
            g.m, g.n, g.k, g.batch
        ));
        compute(lw, g, packed)
    }
}

/// Floats of one packed B (`n` columns, depth `k`, `nr`-column panels).
pub fn packed_len(n: usize, k: usize, nr: usize) -> usize {
    n.div_ceil(nr) * k * nr
}

/// Bytes of a packed B with `n` columns and depth `k`.
pub fn packed_bytes(n: usize, k: usize, nr: usize) -> usize {
    packed_len(n, k, nr) * 4
}

/// Packs a constant matrix `b[kk * rs + j * cs]` (f32) at compile time.
pub fn pack_const(b: &[f32], k: usize, n: usize, rs: usize, cs: usize, nr: usize) -> Vec<u8> {
    let nb = n.div_ceil(nr);
    let mut out = vec![0f32; nb * k * nr];
    for jb in 0..nb {
        for kk in 0..k {
            for t in 0..nr {
                let j = jb * nr + t;
                if j < n {
                    out[(jb * k + kk) * nr + t] = b[kk * rs + j * cs];
                }
            }
        }
    }
    out.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A kernel packing a run-time f32 matrix (batch, K x N, strided) into
/// panels at `dst`; batch b reads at `src_off[b]` and writes panel set b.
pub fn pack_runtime(
    lw: &mut Lower,
    src: &Mat,
    src_off: &[i64],
    k: usize,
    n: usize,
    nr: usize,
    dst: Buf,
) -> Result<()> {
    let nb = n.div_ceil(nr);
    let batch = src_off.len();
    let offs = lw.data(src_off.iter().flat_map(|o| o.to_le_bytes()).collect())?;
    let (rs, cs) = (src.rs, src.cs);
    lw.kernel(vec![src.buf, dst, offs], batch * nb, |kb| {
        let (sp, dp, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let bi = kb.b.ins().udiv_imm_u(item, nb as i64);
            let jb = kb.b.ins().urem_imm_u(item, nb as i64);
            let oa = kb.gep(op, bi, 8);
            let off = kb.b.ins().load(I64, mem(), oa, 0);
            let base = kb.gep(sp, off, 4);
            let panel = kb.gep(dp, item, (k * nr * 4) as i64);
            let j0 = kb.muli(jb, nr as i64);
            let z = kb.i(0);
            let kk_hi = kb.i(k as i64);
            let full =
                kb.b.ins()
                    .icmp_imm_s(IntCC::SignedLessThanOrEqual, j0, (n - nr.min(n)) as i64);
            let full = if n.is_multiple_of(nr) {
                kb.b.ins().iconst(cranelift_codegen::ir::types::I8, 1)
            } else {
                full
            };
            let col0 = kb.muli(j0, cs);
            kb.for_range(z, kk_hi, 1, |kb, kk| {
                let row = kb.muli(kk, rs);
                let row = kb.b.ins().iadd(row, col0);
                let src_row = kb.gep(base, row, 4);
                let dst_row = kb.gep(panel, kk, (nr * 4) as i64);
                if cs == 1 {
                    let fast = kb.b.create_block();
                    let slow = kb.b.create_block();
                    let done = kb.b.create_block();
                    kb.b.ins().brif(full, fast, &[], slow, &[]);
                    kb.b.switch_to_block(fast);
                    for h in 0..(nr / 4) as i32 {
                        let v = kb.b.ins().load(F32X4, mem(), src_row, h * 16);
                        kb.b.ins().store(mem(), v, dst_row, h * 16);
                    }
                    kb.b.ins().jump(done, &[]);
                    kb.b.switch_to_block(slow);
                    scalar_lanes(kb, src_row, dst_row, j0, n, cs, nr);
                    kb.b.ins().jump(done, &[]);
                    kb.b.switch_to_block(done);
                } else {
                    scalar_lanes(kb, src_row, dst_row, j0, n, cs, nr);
                }
            });
        });
    })
}

/// Copies the `nr` lanes of one packed row element by element, zeroing
/// lanes past column `n`.
fn scalar_lanes(
    kb: &mut Kb,
    src_row: Value,
    dst_row: Value,
    j0: Value,
    n: usize,
    cs: i64,
    nr: usize,
) {
    for t in 0..nr as i64 {
        let j = kb.addi(j0, t);
        let inb = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, j, n as i64);
        let zero = kb.b.ins().f32const(0.0);
        let ld = kb.b.create_block();
        let st = kb.b.create_block();
        kb.b.append_block_param(st, F32);
        kb.b.ins().brif(inb, ld, &[], st, &[zero.into()]);
        kb.b.switch_to_block(ld);
        let v = kb.b.ins().load(F32, mem(), src_row, (t * cs * 4) as i32);
        kb.b.ins().jump(st, &[v.into()]);
        kb.b.switch_to_block(st);
        let v = kb.b.block_params(st)[0];
        kb.b.ins().store(mem(), v, dst_row, (t * 4) as i32);
    }
}

/// The portable compute kernel: C = epilogue(A · packed B).
fn compute(lw: &mut Lower, g: &Gemm, packed: Buf) -> Result<()> {
    let mblocks = g.m.div_ceil(MR);
    let nb = g.n.div_ceil(NR);
    let pset = packed_len(g.n, g.k, NR) as i64;
    let offs = lw.data(
        g.offsets
            .iter()
            .flat_map(|o| {
                let o = [o[0], o[1] * pset, o[2], o[3], o[4]];
                o.into_iter().flat_map(|x| x.to_le_bytes())
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
    lw.kernel(bufs, g.batch * mblocks, |kb| {
        let (ap, bp, cp, op) = (kb.arg(0), kb.arg(1), kb.arg(2), kb.arg(3));
        let biasp = bias_arg.map(|j| kb.arg(j));
        let resp = res_arg.map(|j| kb.arg(j));
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let bi = kb.b.ins().udiv_imm_u(item, mblocks as i64);
            let mb = kb.b.ins().urem_imm_u(item, mblocks as i64);
            let ob = kb.gep(op, bi, 40);
            let ld = |kb: &mut Kb, k: i32| kb.b.ins().load(I64, mem(), ob, k * 8);
            let (oa, obp, oc, obias, ores) =
                (ld(kb, 0), ld(kb, 1), ld(kb, 2), ld(kb, 3), ld(kb, 4));
            let ptrs = Ptrs {
                a: kb.gep(ap, oa, 4),
                b: kb.gep(bp, obp, 4),
                c: kb.gep(cp, oc, 4),
                bias: biasp.map(|p| kb.gep(p, obias, 4)),
                res: resp.map(|p| kb.gep(p, ores, 4)),
            };
            let r0 = kb.muli(mb, MR as i64);
            if g.m.is_multiple_of(MR) {
                row_block(kb, g, &ptrs, r0, MR, nb);
            } else {
                let last =
                    kb.b.ins()
                        .icmp_imm_s(IntCC::Equal, mb, (mblocks - 1) as i64);
                let tail = kb.b.create_block();
                let full = kb.b.create_block();
                let done = kb.b.create_block();
                kb.b.ins().brif(last, tail, &[], full, &[]);
                kb.b.switch_to_block(full);
                row_block(kb, g, &ptrs, r0, MR, nb);
                kb.b.ins().jump(done, &[]);
                kb.b.switch_to_block(tail);
                for r in 0..g.m % MR {
                    let ri = kb.addi(r0, r as i64);
                    row_block(kb, g, &ptrs, ri, 1, nb);
                }
                kb.b.ins().jump(done, &[]);
                kb.b.switch_to_block(done);
            }
        });
    })
}

struct Ptrs {
    a: Value,
    b: Value,
    c: Value,
    bias: Option<Value>,
    res: Option<Value>,
}

/// `rows` (1..=4) rows starting at `r0`, all column panels.
fn row_block(kb: &mut Kb, g: &Gemm, p: &Ptrs, r0: Value, rows: usize, nb: usize) {
    let z = kb.i(0);
    let nbv = kb.i(nb as i64);
    let arow: Vec<Value> = (0..rows)
        .map(|r| {
            let ri = kb.addi(r0, r as i64);
            kb.gep(p.a, ri, g.a.rs * 4)
        })
        .collect();
    kb.for_range(z, nbv, 1, |kb, jb| {
        let panel = kb.gep(p.b, jb, (g.k * NR * 4) as i64);
        let zero = kb.constant(F32X4, 0.0);
        let accs: Vec<_> = (0..rows * 2).map(|_| kb.var(F32X4, zero)).collect();
        let z = kb.i(0);
        let kh = kb.i(g.k as i64);
        kb.for_range(z, kh, 1, |kb, kk| {
            let bro = kb.gep(panel, kk, (NR * 4) as i64);
            let b0 = kb.b.ins().load(F32X4, mem(), bro, 0);
            let b1 = kb.b.ins().load(F32X4, mem(), bro, 16);
            for (r, &ar) in arow.iter().enumerate() {
                let aa = kb.gep(ar, kk, g.a.cs * 4);
                let a = kb.b.ins().load(F32, mem(), aa, 0);
                let a = kb.b.ins().splat(F32X4, a);
                for (h, bv) in [b0, b1].into_iter().enumerate() {
                    let acc = kb.b.use_var(accs[r * 2 + h]);
                    let acc = kb.fmadd(a, bv, acc);
                    kb.b.def_var(accs[r * 2 + h], acc);
                }
            }
        });
        let j0 = kb.muli(jb, NR as i64);
        for r in 0..rows {
            let ri = kb.addi(r0, r as i64);
            let vals: Vec<Value> = (0..2).map(|h| kb.b.use_var(accs[r * 2 + h])).collect();
            store_row(kb, g, p, ri, j0, &vals);
        }
    });
}

/// Epilogue and store of one row's 8 columns at `j0` (fewer at the edge).
fn store_row(kb: &mut Kb, g: &Gemm, p: &Ptrs, ri: Value, j0: Value, vals: &[Value]) {
    let full_ok = g.n.is_multiple_of(NR);
    let fast = kb.b.create_block();
    let slow = kb.b.create_block();
    let done = kb.b.create_block();
    if full_ok {
        kb.b.ins().jump(fast, &[]);
    } else {
        let lim = (g.n - g.n % NR) as i64;
        let c = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, j0, lim);
        kb.b.ins().brif(c, fast, &[], slow, &[]);
    }
    // Full 8 columns: vector epilogue.
    kb.b.switch_to_block(fast);
    for (h, &v) in vals.iter().enumerate() {
        let j = kb.addi(j0, (h * 4) as i64);
        let v = epilogue(kb, g, p, ri, j, v, 4);
        let ca = addr(kb, p.c, &g.c, ri, j);
        kb.b.ins().store(mem(), v, ca, 0);
    }
    kb.b.ins().jump(done, &[]);
    // Edge: lane by lane.
    kb.b.switch_to_block(slow);
    if !full_ok {
        for t in 0..NR {
            let j = kb.addi(j0, t as i64);
            let inb = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, j, g.n as i64);
            kb.if_(inb, |kb| {
                let v = kb.b.ins().extractlane(vals[t / 4], (t % 4) as u8);
                let v = epilogue(kb, g, p, ri, j, v, 1);
                let ca = addr(kb, p.c, &g.c, ri, j);
                kb.b.ins().store(mem(), v, ca, 0);
            });
        }
    }
    kb.b.ins().jump(done, &[]);
    kb.b.switch_to_block(done);
}

fn addr(kb: &mut Kb, base: Value, m: &Mat, i: Value, j: Value) -> Value {
    let a = kb.gep(base, i, m.rs * 4);
    kb.gep(a, j, m.cs * 4)
}

/// Loads `lanes` elements of an operand at (i, j): a vector when columns
/// are contiguous, a broadcast when they repeat.
fn load_mat(kb: &mut Kb, base: Value, m: &Mat, i: Value, j: Value, lanes: u32) -> Value {
    let a = addr(kb, base, m, i, j);
    if lanes == 1 {
        return kb.b.ins().load(F32, mem(), a, 0);
    }
    if m.cs == 1 {
        kb.b.ins().load(F32X4, mem(), a, 0)
    } else if m.cs == 0 {
        let s = kb.b.ins().load(F32, mem(), a, 0);
        kb.b.ins().splat(F32X4, s)
    } else {
        let mut v = kb.constant(F32X4, 0.0);
        for t in 0..4 {
            let s = kb.b.ins().load(F32, mem(), a, (t as i64 * m.cs * 4) as i32);
            v = kb.b.ins().insertlane(v, s, t as u8);
        }
        v
    }
}

fn epilogue(kb: &mut Kb, g: &Gemm, p: &Ptrs, i: Value, j: Value, v: Value, lanes: u32) -> Value {
    let ty = if lanes == 1 { F32 } else { F32X4 };
    let mut v = v;
    if g.alpha != 1.0 {
        let a = kb.constant(ty, g.alpha as f64);
        v = kb.b.ins().fmul(v, a);
    }
    if let (Some(bm), Some(bp)) = (&g.bias, p.bias) {
        let b = load_mat(kb, bp, bm, i, j, lanes);
        v = if g.beta == 1.0 {
            kb.b.ins().fadd(v, b)
        } else {
            let be = kb.constant(ty, g.beta as f64);
            kb.fmadd(b, be, v)
        };
    }
    if let (Some(rm), Some(rp)) = (&g.residual, p.res) {
        let r = load_mat(kb, rp, rm, i, j, lanes);
        v = kb.b.ins().fadd(v, r);
    }
    g.act.apply(kb, v)
}
