//! MatMul, Gemm and convolution on the blocked GEMM (f32), with a scalar
//! triple loop for other element types. Convolutions of any spatial rank
//! pack im2col columns straight into GEMM panels.

use std::collections::HashMap;

use cranelift_codegen::ir::InstBuilder;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::F32;

use super::gemm::{self, Act, Gemm, Mat};
use super::{NodeCx, Table};
use crate::codegen::builder::{Elt, mem};
use crate::codegen::lower::{Buf, Lower, Operand};
use crate::error::Result;
use crate::ir::{Attrs, DType, Tensor};

pub fn register(t: &mut Table) {
    t.add(&["MatMul", "cpucc.FusedMatMul"], matmul);
    t.add(&["Gemm", "cpucc.FusedGemm"], gemm_op);
    t.add(&["Conv", "cpucc.FusedConv"], conv);
}

/// The fused activation of a `cpucc.Fused*` node (none for plain ops).
pub fn activation(a: &Attrs) -> Result<Act> {
    let alpha = a.float("act_alpha", 0.0)?;
    let beta = a.float("act_beta", 0.0)?;
    Ok(match a.string("activation", "")? {
        "" => Act::None,
        "Relu" => Act::Relu,
        "Clip" => Act::Clip(alpha, beta),
        "Sigmoid" => Act::Sigmoid,
        "Tanh" => Act::Tanh,
        "HardSigmoid" => Act::HardSigmoid(alpha, beta),
        "HardSwish" => Act::HardSwish,
        "LeakyRelu" => Act::LeakyRelu(alpha),
        "Gelu" => Act::Gelu,
        "GeluTanh" => Act::GeluTanh,
        other => bail!(Unsupported, "fused activation {other:?}"),
    })
}

/// Packs B (constant: at compile time; else a packing kernel into scratch)
/// and returns the panels' buffer. `offs[b]` is batch b's element offset.
fn pack_b(
    lw: &mut Lower,
    g: &Gemm,
    konst: Option<&Tensor>,
    m: &Mat,
    offs: &[i64],
    (k, n): (usize, usize),
) -> Result<Buf> {
    if let Some(t) = konst {
        let data: Vec<f32> = t.to_f64_vec().into_iter().map(|x| x as f32).collect();
        let (rs, cs) = (m.rs as usize, m.cs as usize);
        return gemm::pack_weights(lw, g, &data, offs, k, n, rs, cs);
    }
    let nr = gemm::panel_width(lw, g);
    let dst = lw.scratch(offs.len() * gemm::packed_bytes(n, k, nr));
    gemm::pack_runtime(lw, m, offs, k, n, nr, dst)?;
    Ok(dst)
}

/// Element offset of every batch index of `out_batch` in an operand with
/// batch dims `dims` (right-aligned, broadcast) and batch stride `step`.
fn batch_offsets(out_batch: &[usize], dims: &[usize], step: i64) -> Vec<i64> {
    let total: usize = out_batch.iter().product();
    let mut strides = vec![0i64; out_batch.len()];
    let mut s = step;
    for (k, &d) in dims.iter().enumerate().rev() {
        let j = out_batch.len() - (dims.len() - k);
        if d != 1 {
            strides[j] = s;
        }
        s *= d as i64;
    }
    (0..total)
        .map(|mut b| {
            let mut off = 0;
            for d in (0..out_batch.len()).rev() {
                off += (b % out_batch[d]) as i64 * strides[d];
                b /= out_batch[d];
            }
            off
        })
        .collect()
}

fn matmul(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let a = cx.input(0)?;
    let b = cx.input(1)?;
    let out = cx.out(0);
    let (ash, bsh) = (&a.ty.shape, &b.ty.shape);
    let (m, k) = if ash.len() == 1 {
        (1, ash[0])
    } else {
        (ash[ash.len() - 2], ash[ash.len() - 1])
    };
    let n = if bsh.len() == 1 {
        1
    } else {
        bsh[bsh.len() - 1]
    };
    let abatch = if ash.len() > 2 {
        &ash[..ash.len() - 2]
    } else {
        &[][..]
    };
    let bbatch = if bsh.len() > 2 {
        &bsh[..bsh.len() - 2]
    } else {
        &[][..]
    };
    let nb = abatch.len().max(bbatch.len());
    let obatch: Vec<usize> = out.ty.shape
        [..out.ty.shape.len() - (ash.len().min(2) + bsh.len().min(2) - 2)]
        .iter()
        .copied()
        .take(nb)
        .collect();
    let aoff = batch_offsets(&obatch, abatch, (m * k) as i64);
    let boff = batch_offsets(&obatch, bbatch, (k * n) as i64);
    let coff: Vec<i64> = (0..aoff.len()).map(|i| (i * m * n) as i64).collect();
    let am = Mat {
        buf: a.buf,
        rs: k as i64,
        cs: 1,
    };
    let bm = Mat {
        buf: b.buf,
        rs: n as i64,
        cs: 1,
    };
    let cm = Mat {
        buf: out.buf,
        rs: n as i64,
        cs: 1,
    };
    let bias = cx.ins.get(2).and_then(|o| o.clone());
    let fused = cx.node.op.starts_with("cpucc.");
    if a.ty.dtype != DType::F32 {
        if fused {
            bail!(Unsupported, "fused MatMul on {}", a.ty.dtype);
        }
        return scalar_matmul(lw, a, b, out, (m, n, k), &aoff, &boff, &coff);
    }
    let residual = if fused {
        cx.ins.get(3).and_then(|o| o.clone())
    } else {
        None
    };
    // One panel set per distinct B batch offset: a B broadcast over the
    // batch (a 2-D weight times a 3-D activation) is packed once.
    let mut sets: HashMap<i64, i64> = HashMap::new();
    let mut boffs = Vec::new();
    let bset: Vec<i64> = boff
        .iter()
        .map(|&o| {
            *sets.entry(o).or_insert_with(|| {
                boffs.push(o);
                boffs.len() as i64 - 1
            })
        })
        .collect();
    let mut g = Gemm {
        m,
        n,
        k,
        batch: aoff.len(),
        a: am,
        c: cm,
        bias: bias.as_ref().map(bias_mat),
        beta: 1.0,
        residual: residual.as_ref().map(bias_mat),
        alpha: 1.0,
        act: activation(cx.attrs())?,
        offsets: (0..aoff.len())
            .map(|i| [aoff[i], bset[i], coff[i], 0, coff[i]])
            .collect(),
    };
    if let Some(rows) = fold_batch(&g, residual.as_ref(), &out.ty.shape) {
        g.m = rows;
        g.batch = 1;
        g.offsets.truncate(1);
        if let Some(r) = &mut g.residual {
            r.rs = n as i64;
        }
    }
    let packed = pack_b(lw, &g, cx.consts[1], &bm, &boffs, (k, n))?;
    gemm::run(lw, &g, packed)
}

/// The rows of one `(batch * m) x n` product equivalent to `g`, when B is
/// the same for every batch element and A, C (and a residual) are dense
/// batches of rows: `[128, 1, K] x [K, N]` is then one 128-row GEMM
/// rather than 128 one-row ones. A bias must broadcast over rows.
fn fold_batch(g: &Gemm, residual: Option<&Operand>, out: &[usize]) -> Option<usize> {
    let (m, k, n) = (g.m as i64, g.k as i64, g.n as i64);
    let dense = g.offsets.iter().enumerate().all(|(i, o)| {
        let i = i as i64;
        o[0] == i * m * k && o[1] == 0 && o[2] == i * m * n
    });
    let bias_ok = g.bias.as_ref().is_none_or(|b| b.rs == 0);
    let residual_ok = residual.is_none_or(|r| r.ty.shape == out);
    (g.batch > 1 && dense && bias_ok && residual_ok).then_some(g.batch * g.m)
}

/// An operand broadcast to [m, n] (trailing two dims; 0 strides where 1).
pub fn bias_mat(o: &Operand) -> Mat {
    let s = &o.ty.shape;
    let cn = s.last().copied().unwrap_or(1);
    let cm = if s.len() >= 2 { s[s.len() - 2] } else { 1 };
    Mat {
        buf: o.buf,
        rs: if cm == 1 { 0 } else { cn as i64 },
        cs: if cn == 1 { 0 } else { 1 },
    }
}

fn gemm_op(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let a = cx.input(0)?;
    let b = cx.input(1)?;
    let out = cx.out(0);
    let at = cx.attrs().int("transA", 0)? != 0;
    let bt = cx.attrs().int("transB", 0)? != 0;
    let (m, n) = (out.ty.shape[0], out.ty.shape[1]);
    let k = if at { a.ty.shape[0] } else { a.ty.shape[1] };
    let am = if at {
        Mat {
            buf: a.buf,
            rs: 1,
            cs: m as i64,
        }
    } else {
        Mat {
            buf: a.buf,
            rs: k as i64,
            cs: 1,
        }
    };
    let bm = if bt {
        Mat {
            buf: b.buf,
            rs: 1,
            cs: k as i64,
        }
    } else {
        Mat {
            buf: b.buf,
            rs: n as i64,
            cs: 1,
        }
    };
    let alpha = cx.attrs().float("alpha", 1.0)?;
    let beta = cx.attrs().float("beta", 1.0)?;
    if a.ty.dtype != DType::F32 {
        bail!(Unsupported, "Gemm on {} (native Gemm is f32)", a.ty.dtype);
    }
    let bias = cx.ins.get(2).and_then(|o| o.clone());
    let fused = cx.node.op.starts_with("cpucc.");
    let residual = if fused {
        cx.ins.get(3).and_then(|o| o.clone())
    } else {
        None
    };
    let g = Gemm {
        m,
        n,
        k,
        batch: 1,
        a: am,
        c: Mat {
            buf: out.buf,
            rs: n as i64,
            cs: 1,
        },
        bias: bias.as_ref().map(bias_mat),
        beta,
        residual: residual.as_ref().map(bias_mat),
        alpha,
        act: activation(cx.attrs())?,
        offsets: vec![[0; 5]],
    };
    let packed = pack_b(lw, &g, cx.consts[1], &bm, &[0], (k, n))?;
    gemm::run(lw, &g, packed)
}

/// Any-dtype matmul: one work item per output row, scalar accumulation in
/// the compute type (wrapping for integers).
#[allow(clippy::too_many_arguments)]
fn scalar_matmul(
    lw: &mut Lower,
    a: &Operand,
    b: &Operand,
    out: &Operand,
    (m, n, k): (usize, usize, usize),
    aoff: &[i64],
    boff: &[i64],
    coff: &[i64],
) -> Result<()> {
    let dt = a.ty.dtype;
    let odt = out.ty.dtype;
    let offs: Vec<u8> = (0..aoff.len())
        .flat_map(|i| {
            [aoff[i], boff[i], coff[i]]
                .into_iter()
                .flat_map(|x| x.to_le_bytes())
        })
        .collect();
    let offs = lw.data(offs)?;
    let esz = dt.size_bytes() as i64;
    let osz = odt.size_bytes() as i64;
    let batch = aoff.len();
    let float = dt.is_float();
    lw.kernel(vec![a.buf, b.buf, out.buf, offs], batch * m, |kb| {
        let (ap, bp, cp, op) = (kb.arg(0), kb.arg(1), kb.arg(2), kb.arg(3));
        let (bg, en) = (kb.begin, kb.end);
        kb.for_range(bg, en, 1, |kb, item| {
            let bi = kb.b.ins().udiv_imm_u(item, m as i64);
            let i = kb.b.ins().urem_imm_u(item, m as i64);
            let ob = kb.gep(op, bi, 24);
            let oa =
                kb.b.ins()
                    .load(cranelift_codegen::ir::types::I64, mem(), ob, 0);
            let obb =
                kb.b.ins()
                    .load(cranelift_codegen::ir::types::I64, mem(), ob, 8);
            let oc =
                kb.b.ins()
                    .load(cranelift_codegen::ir::types::I64, mem(), ob, 16);
            let arow = kb.gep(ap, oa, esz);
            let arow = kb.gep(arow, i, k as i64 * esz);
            let bbase = kb.gep(bp, obb, esz);
            let crow = kb.gep(cp, oc, osz);
            let crow = kb.gep(crow, i, n as i64 * osz);
            let z = kb.i(0);
            let nh = kb.i(n as i64);
            kb.for_range(z, nh, 1, |kb, j| {
                let ty = Elt(odt).compute(1);
                let init = if float {
                    kb.constant(ty, 0.0)
                } else {
                    kb.bits(ty, 0)
                };
                let acc = kb.var(ty, init);
                let z = kb.i(0);
                let kh = kb.i(k as i64);
                kb.for_range(z, kh, 1, |kb, kk| {
                    let aa = kb.gep(arow, kk, esz);
                    let av = kb.load_elt(dt, aa, 1);
                    let bcol = kb.gep(bbase, j, esz);
                    let ba = kb.gep(bcol, kk, n as i64 * esz);
                    let bv = kb.load_elt(dt, ba, 1);
                    let cur = kb.b.use_var(acc);
                    let nv = if float {
                        let p = kb.b.ins().fmul(av, bv);
                        kb.b.ins().fadd(cur, p)
                    } else {
                        let p = kb.b.ins().imul(av, bv);
                        kb.b.ins().iadd(cur, p)
                    };
                    kb.b.def_var(acc, nv);
                });
                let v = kb.b.use_var(acc);
                let ca = kb.gep(crow, j, osz);
                kb.store_elt(odt, v, ca, 1);
            });
        });
    })
}

/// Convolution attributes resolved against the shapes.
pub struct ConvGeom {
    pub n: usize,
    pub c: usize,
    pub o: usize,
    pub group: usize,
    pub in_sp: Vec<usize>,
    pub out_sp: Vec<usize>,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dil: Vec<usize>,
    /// Padding at the start of each spatial dim.
    pub pad0: Vec<usize>,
}

fn conv_geom(cx: &NodeCx) -> Result<ConvGeom> {
    let x = &cx.input(0)?.ty.shape;
    let w = &cx.input(1)?.ty.shape;
    let y = &cx.out(0).ty.shape;
    conv_geom_of(cx.attrs(), x, w, y)
}

/// The geometry of a convolution with NCHW-ordered input shape `x`,
/// weights `w` and output `y`.
pub fn conv_geom_of(a: &Attrs, x: &[usize], w: &[usize], y: &[usize]) -> Result<ConvGeom> {
    let sp = x.len() - 2;
    let ints = |name: &str, d: i64| -> Result<Vec<usize>> {
        let v = a
            .ints_opt(name)?
            .map(<[i64]>::to_vec)
            .unwrap_or(vec![d; sp]);
        Ok(v.into_iter().map(|x| x as usize).collect())
    };
    let strides = ints("strides", 1)?;
    let dil = ints("dilations", 1)?;
    let kernel: Vec<usize> = w[2..].to_vec();
    let in_sp: Vec<usize> = x[2..].to_vec();
    let out_sp: Vec<usize> = y[2..].to_vec();
    // Start padding: explicit pads, or what auto_pad implies for the output
    // size inference already computed.
    let auto = a.string("auto_pad", "NOTSET")?;
    let pad0: Vec<usize> = match auto {
        "NOTSET" => {
            let p = a
                .ints_opt("pads")?
                .map(<[i64]>::to_vec)
                .unwrap_or(vec![0; 2 * sp]);
            p[..sp].iter().map(|&v| v as usize).collect()
        }
        "VALID" => vec![0; sp],
        "SAME_UPPER" | "SAME_LOWER" => (0..sp)
            .map(|d| {
                let ek = (kernel[d] - 1) * dil[d] + 1;
                let total = ((out_sp[d] - 1) * strides[d] + ek).saturating_sub(in_sp[d]);
                if auto == "SAME_UPPER" {
                    total / 2
                } else {
                    total - total / 2
                }
            })
            .collect(),
        other => bail!(Invalid, "auto_pad {other:?}"),
    };
    Ok(ConvGeom {
        n: x[0],
        c: x[1],
        o: w[0],
        group: a.int("group", 1)? as usize,
        in_sp,
        out_sp,
        kernel,
        strides,
        dil,
        pad0,
    })
}

fn conv(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?;
    let w = cx.input(1)?;
    let out = cx.out(0);
    if x.ty.dtype != DType::F32 {
        bail!(Unsupported, "Conv on {} (native Conv is f32)", x.ty.dtype);
    }
    let geo = conv_geom(cx)?;
    let g = geo.group;
    let (cg, og) = (geo.c / g, geo.o / g);
    let kk: usize = cg * geo.kernel.iter().product::<usize>();
    let p: usize = geo.out_sp.iter().product();
    let isz: usize = geo.in_sp.iter().product();
    let bias = cx.ins.get(2).and_then(|o| o.clone());
    let residual = if cx.node.op.starts_with("cpucc.") {
        cx.ins.get(3).and_then(|o| o.clone())
    } else {
        None
    };
    let act = activation(cx.attrs())?;
    let mut panels = None;
    for img in 0..geo.n {
        let offsets = (0..g)
            .map(|gi| {
                let c_off = (img * geo.o * p + gi * og * p) as i64;
                [
                    (gi * og * kk) as i64,
                    gi as i64,
                    c_off,
                    (gi * og) as i64,
                    c_off,
                ]
            })
            .collect();
        let gm = Gemm {
            m: og,
            n: p,
            k: kk,
            batch: g,
            a: Mat {
                buf: w.buf,
                rs: kk as i64,
                cs: 1,
            },
            c: Mat {
                buf: out.buf,
                rs: p as i64,
                cs: 1,
            },
            bias: bias.as_ref().map(|b| Mat {
                buf: b.buf,
                rs: 1,
                cs: 0,
            }),
            beta: 1.0,
            residual: residual.as_ref().map(|r| Mat {
                buf: r.buf,
                rs: p as i64,
                cs: 1,
            }),
            alpha: 1.0,
            act,
            offsets,
        };
        let nr = gemm::panel_width(lw, &gm);
        let buf = *panels.get_or_insert_with(|| lw.scratch(g * gemm::packed_bytes(p, kk, nr)));
        pack_im2col(lw, x.buf, (img * geo.c * isz) as i64, &geo, nr, buf)?;
        gemm::run(lw, &gm, buf)?;
    }
    Ok(())
}

/// Packs the im2col matrix of one image (all groups) into GEMM panels:
/// row k = (channel in group, kernel position), column = output position.
fn pack_im2col(
    lw: &mut Lower,
    x: Buf,
    x_off: i64,
    geo: &ConvGeom,
    nr: usize,
    dst: Buf,
) -> Result<()> {
    let sp = geo.in_sp.len();
    let g = geo.group;
    let cg = geo.c / g;
    let kpos: usize = geo.kernel.iter().product();
    let kk = cg * kpos;
    let p: usize = geo.out_sp.iter().product();
    let nb = p.div_ceil(nr);
    let isz: usize = geo.in_sp.iter().product();
    let geo_in = geo.in_sp.clone();
    let geo_out = geo.out_sp.clone();
    // Input element strides of the spatial dims.
    let mut ist = vec![1i64; sp];
    for d in (0..sp.saturating_sub(1)).rev() {
        ist[d] = ist[d + 1] * geo_in[d + 1] as i64;
    }
    // Kernel positions as per-dim offsets (dilation and padding folded in).
    let positions: Vec<Vec<i64>> = (0..kpos)
        .map(|mut q| {
            let mut v = vec![0i64; sp];
            for d in (0..sp).rev() {
                let kd = q % geo.kernel[d];
                q /= geo.kernel[d];
                v[d] = (kd * geo.dil[d]) as i64 - geo.pad0[d] as i64;
            }
            v
        })
        .collect();
    let strides = geo.strides.clone();
    lw.kernel(vec![x, dst], g * nb, |kb| {
        let (xp, dp) = (kb.arg(0), kb.arg(1));
        let xp = kb.addi(xp, x_off * 4);
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let gi = kb.b.ins().udiv_imm_u(item, nb as i64);
            let jb = kb.b.ins().urem_imm_u(item, nb as i64);
            let panel = kb.gep(dp, item, (kk * nr * 4) as i64);
            let gbase = kb.gep(xp, gi, (cg * isz * 4) as i64);
            // Output coordinates of the 8 columns (and whether they exist).
            let mut lanes = Vec::with_capacity(nr);
            for t in 0..nr {
                let pcol = kb.muli(jb, nr as i64);
                let pcol = kb.addi(pcol, t as i64);
                let valid = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, pcol, p as i64);
                let mut rem = pcol;
                let mut base = Vec::with_capacity(sp);
                for d in (0..sp).rev() {
                    let c = kb.b.ins().urem_imm_u(rem, geo_out[d] as i64);
                    rem = kb.b.ins().udiv_imm_u(rem, geo_out[d] as i64);
                    base.push(kb.muli(c, strides[d] as i64));
                }
                base.reverse();
                lanes.push((valid, base));
            }
            let z = kb.i(0);
            let ch = kb.i(cg as i64);
            kb.for_range(z, ch, 1, |kb, c| {
                let cbase = kb.gep(gbase, c, (isz * 4) as i64);
                let krow0 = kb.muli(c, kpos as i64);
                for (q, pos) in positions.iter().enumerate() {
                    let krow = kb.addi(krow0, q as i64);
                    let drow = kb.gep(panel, krow, (nr * 4) as i64);
                    for (t, (valid, base)) in lanes.iter().enumerate() {
                        let mut ok = *valid;
                        let mut off = kb.i(0);
                        for d in 0..sp {
                            let coord = kb.addi(base[d], pos[d]);
                            let ge =
                                kb.b.ins()
                                    .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, coord, 0);
                            let lt = kb.b.ins().icmp_imm_s(
                                IntCC::SignedLessThan,
                                coord,
                                geo_in[d] as i64,
                            );
                            ok = kb.b.ins().band(ok, ge);
                            ok = kb.b.ins().band(ok, lt);
                            let o = kb.muli(coord, ist[d]);
                            off = kb.b.ins().iadd(off, o);
                        }
                        let zero = kb.i(0);
                        let off = kb.b.ins().select(ok, off, zero);
                        let a = kb.gep(cbase, off, 4);
                        let v = kb.b.ins().load(F32, mem(), a, 0);
                        let fz = kb.b.ins().f32const(0.0);
                        let v = kb.b.ins().select(ok, v, fz);
                        kb.b.ins().store(mem(), v, drow, (t * 4) as i32);
                    }
                }
            });
        });
    })
}
