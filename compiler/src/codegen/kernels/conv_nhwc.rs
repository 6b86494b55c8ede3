//! Channels-last 2-D convolution (`layout = "NHWC"`, set by the layout
//! pass) as one GEMM whose B is the weights, reordered to
//! `[KH*KW*C, O]` and packed at compile time, and whose output `[P, O]` is
//! already NHWC: a 1x1 stride-1 unpadded convolution multiplies the input
//! itself (`[N*H*W, C]`, the whole batch in one GEMM); any other kernel
//! size, stride, padding or dilation first gathers one image's rows
//! (`[OH*OW, KH*KW*C]`, whole channel runs copied) into scratch. Bias,
//! residual and activation are the GEMM's epilogue. Grouped convolutions
//! and run-time weights keep the NCHW path (through the NHWC adapter).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, F32X4, I64};
use cranelift_codegen::ir::{InstBuilder, StackSlotData, StackSlotKind, Value};

use super::NodeCx;
use super::bf16gemm;
use super::gemm::{self, Gemm, Mat};
use super::linalg::{ConvGeom, activation, conv_geom_of};
use super::zgemm;
use crate::codegen::builder::{Kb, mem};
use crate::codegen::lower::{Buf, Lower};
use crate::error::Result;
use crate::ir::DType;

/// Whether `cx` is a channels-last convolution this lowering takes.
pub fn applies(cx: &NodeCx) -> bool {
    let nhwc = cx.attrs().string("layout", "NCHW").ok() == Some("NHWC");
    let conv = matches!(cx.node.op.as_str(), "Conv" | "cpucc.FusedConv");
    let f32_4d = cx
        .ins
        .first()
        .and_then(|x| x.as_ref())
        .is_some_and(|x| x.ty.dtype == DType::F32 && x.ty.shape.len() == 4);
    let const_w = cx.consts.get(1).is_some_and(|w| w.is_some());
    nhwc && conv && f32_4d && const_w && cx.attrs().int("group", 1).ok() == Some(1)
}

pub fn lower(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?;
    let out = cx.out(0);
    let [n, h, wd, c] = x.ty.shape[..] else {
        bail!(Internal, "NHWC conv input of rank {}", x.ty.shape.len());
    };
    let [_, oh, ow, o] = out.ty.shape[..] else {
        bail!(Internal, "NHWC conv output of rank {}", out.ty.shape.len());
    };
    let wshape = &cx.input(1)?.ty.shape;
    let geo = conv_geom_of(cx.attrs(), &[n, c, h, wd], wshape, &[n, o, oh, ow])?;
    let (kh, kw) = (geo.kernel[0], geo.kernel[1]);
    let kk = kh * kw * c;
    let p = oh * ow;
    let Some(wt) = cx.consts[1] else {
        bail!(Internal, "NHWC conv without constant weights");
    };
    let wv = wt.to_f64_vec();
    // B[(a*KW + b)*C + ci][oi] = W[oi][ci][a][b]
    let mut bmat = vec![0f32; kk * o];
    for oi in 0..o {
        for ci in 0..c {
            for a in 0..kh {
                for b in 0..kw {
                    bmat[((a * kw + b) * c + ci) * o + oi] =
                        wv[((oi * c + ci) * kh + a) * kw + b] as f32;
                }
            }
        }
    }
    let bias = cx.ins.get(2).and_then(|b| b.as_ref()).map(|b| Mat {
        buf: b.buf,
        rs: 0,
        cs: 1,
    });
    let residual = if cx.node.op == "cpucc.FusedConv" {
        cx.ins.get(3).and_then(|r| r.as_ref()).map(|r| Mat {
            buf: r.buf,
            rs: o as i64,
            cs: 1,
        })
    } else {
        None
    };
    let act = activation(cx.attrs())?;
    let pointwise =
        kh == 1 && kw == 1 && geo.strides == [1, 1] && geo.pad0 == [0, 0] && (oh, ow) == (h, wd);
    let gemm_for = |m: usize, a: Mat, k: usize, out_off: i64| Gemm {
        m,
        n: o,
        k,
        batch: 1,
        a,
        c: Mat {
            buf: out.buf,
            rs: o as i64,
            cs: 1,
        },
        bias: bias.clone(),
        beta: 1.0,
        residual: residual.clone(),
        alpha: 1.0,
        act,
        offsets: vec![[0, 0, out_off, 0, out_off]],
    };
    if pointwise {
        lw.note_kernel("nhwc 1x1 conv as one gemm");
        let a = Mat {
            buf: x.buf,
            rs: c as i64,
            cs: 1,
        };
        let g = gemm_for(n * p, a, c, 0);
        let packed = gemm::pack_weights(lw, &g, &bmat, &[0], kk, o, o, 1)?;
        return gemm::run(lw, &g, packed);
    }
    if let Some((g, geo)) = bf16_gather(lw, &gemm_for, x.buf, (n, h, wd, c), ow, &geo) {
        let packed = gemm::pack_weights(lw, &g, &bmat, &[0], kk, o, o, 1)?;
        return bf16gemm::conv(lw, &g, packed, &geo);
    }
    if lw.avx512 {
        let g = gemm_for(
            p,
            Mat {
                buf: x.buf,
                rs: kk as i64,
                cs: 1,
            },
            kk,
            0,
        );
        if zgemm::fits(lw, &g) {
            return blocked(lw, &g, x.buf, (n, h, wd, c), ow, &geo, &bmat);
        }
    }
    lw.note_kernel(format!("nhwc conv: im2col of one image ({p}x{kk}) + gemm"));
    let cols = lw.scratch(p * kk * 4);
    let a = Mat {
        buf: cols,
        rs: kk as i64,
        cs: 1,
    };
    let packed = gemm::pack_weights(lw, &gemm_for(p, a.clone(), kk, 0), &bmat, &[0], kk, o, o, 1)?;
    for img in 0..n {
        im2col(lw, x.buf, img, (h, wd, c), (oh, ow), &geo, cols)?;
        let off = (img * p * o) as i64;
        gemm::run(lw, &gemm_for(p, a.clone(), kk, off), packed)?;
    }
    Ok(())
}

/// `--fast-math bf16`: the GEMM over all images whose A rows the bf16
/// kernel gathers from the NHWC input itself (no f32 im2col).
fn bf16_gather(
    lw: &Lower,
    gemm_for: &dyn Fn(usize, Mat, usize, i64) -> Gemm,
    x: Buf,
    (n, h, wd, c): (usize, usize, usize, usize),
    ow: usize,
    geo: &ConvGeom,
) -> Option<(Gemm, bf16gemm::Im2col)> {
    let kk = geo.kernel[0] * geo.kernel[1] * c;
    let p = geo.out_sp[0] * geo.out_sp[1];
    let mut g = gemm_for(
        p,
        Mat {
            buf: x,
            rs: kk as i64,
            cs: 1,
        },
        kk,
        0,
    );
    g.batch = n;
    g.offsets = (0..n)
        .map(|i| {
            let out = (i * p * g.n) as i64;
            [(i * h * wd * c) as i64, 0, out, 0, out]
        })
        .collect();
    let pair = |v: &[usize]| [v[0], v[1]];
    bf16gemm::fits(lw, &g).then(|| {
        let im = bf16gemm::Im2col {
            h,
            w: wd,
            c,
            ow,
            kernel: pair(&geo.kernel),
            strides: pair(&geo.strides),
            dil: pair(&geo.dil),
            pad0: pair(&geo.pad0),
        };
        (g, im)
    })
}

/// Gathers image `img`'s im2col rows into `cols` (`[OH*OW, KH*KW*C]`):
/// per output position and kernel tap, C contiguous input channels, or
/// zeros where the tap falls into the padding. Work items: output rows.
fn im2col(
    lw: &mut Lower,
    x: Buf,
    img: usize,
    (h, wd, c): (usize, usize, usize),
    (oh, ow): (usize, usize),
    geo: &ConvGeom,
    cols: Buf,
) -> Result<()> {
    let kk = geo.kernel[0] * geo.kernel[1] * c;
    let img_off = (img * h * wd * c * 4) as i64;
    lw.kernel(vec![x, cols], oh, |kb| {
        let xp = kb.arg(0);
        let xp = kb.addi(xp, img_off);
        let cp = kb.arg(1);
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, r| {
            let z = kb.i(0);
            let owv = kb.i(ow as i64);
            kb.for_range(z, owv, 1, |kb, q| {
                let pos = kb.muli(r, ow as i64);
                let pos = kb.b.ins().iadd(pos, q);
                let row = kb.gep(cp, pos, (kk * 4) as i64);
                gather_row(kb, xp, row, r, q, (h, wd, c), geo);
            });
        });
    })
}

/// Writes output position (`r`, `q`)'s im2col row at `row`: per kernel
/// tap, C contiguous input channels of the image at `xp`, or zeros where
/// the tap falls into the padding.
fn gather_row(
    kb: &mut Kb,
    xp: Value,
    row: Value,
    r: Value,
    q: Value,
    (h, wd, c): (usize, usize, usize),
    geo: &ConvGeom,
) {
    let (kh, kw) = (geo.kernel[0], geo.kernel[1]);
    let (s0, s1) = (geo.strides[0] as i64, geo.strides[1] as i64);
    let (d0, d1) = (geo.dil[0] as i64, geo.dil[1] as i64);
    let (p0, p1) = (geo.pad0[0] as i64, geo.pad0[1] as i64);
    let ih0 = kb.muli(r, s0);
    let ih0 = kb.addi(ih0, -p0);
    let iw0 = kb.muli(q, s1);
    let iw0 = kb.addi(iw0, -p1);
    for a in 0..kh {
        for bb in 0..kw {
            let ih = kb.addi(ih0, a as i64 * d0);
            let iw = kb.addi(iw0, bb as i64 * d1);
            let okh = kb.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, ih, h as i64);
            let okw =
                kb.b.ins()
                    .icmp_imm_u(IntCC::UnsignedLessThan, iw, wd as i64);
            let ok = kb.b.ins().band(okh, okw);
            let dst = kb.addi(row, ((a * kw + bb) * c * 4) as i64);
            let copy = kb.b.create_block();
            let zero = kb.b.create_block();
            let done = kb.b.create_block();
            kb.b.ins().brif(ok, copy, &[], zero, &[]);
            kb.b.switch_to_block(copy);
            let pix = kb.muli(ih, wd as i64);
            let pix = kb.b.ins().iadd(pix, iw);
            let src = kb.gep(xp, pix, (c * 4) as i64);
            let z = kb.i(0);
            let cv = kb.i(c as i64);
            kb.for_vec(z, cv, 4, |kb, j, lanes| {
                let ty = if lanes == 1 { F32 } else { F32X4 };
                let s = kb.gep(src, j, 4);
                let v = kb.b.ins().load(ty, mem(), s, 0);
                let d = kb.gep(dst, j, 4);
                kb.b.ins().store(mem(), v, d, 0);
            });
            kb.b.ins().jump(done, &[]);
            kb.b.switch_to_block(zero);
            let z = kb.i(0);
            let cv = kb.i(c as i64);
            kb.for_vec(z, cv, 4, |kb, j, lanes| {
                let ty = if lanes == 1 { F32 } else { F32X4 };
                let v = kb.constant(ty, 0.0);
                let d = kb.gep(dst, j, 4);
                kb.b.ins().store(mem(), v, d, 0);
            });
            kb.b.ins().jump(done, &[]);
            kb.b.switch_to_block(done);
        }
    }
}

/// Bytes of A rows a blocked convolution gathers at a time (about half
/// of L2, so the block and the B panels it meets stay cached).
const A_BLOCK_BYTES: usize = 128 << 10;

/// The AVX-512 form: work items are (image, block of `rb` output
/// positions); each gathers its block's im2col rows into a buffer on the
/// calling thread's stack and runs the microkernel's tiles over it, so
/// the gathered rows never leave L2 and no image-sized buffer exists.
fn blocked(
    lw: &mut Lower,
    g: &Gemm,
    x: Buf,
    (n, h, wd, c): (usize, usize, usize, usize),
    ow: usize,
    geo: &ConvGeom,
    bmat: &[f32],
) -> Result<()> {
    let (p, o, kk) = (g.m, g.n, g.k);
    let fit = (A_BLOCK_BYTES / (kk * 4)) / zgemm::ZMR * zgemm::ZMR;
    let rb = fit
        .clamp(zgemm::ZMR, 8 * zgemm::ZMR)
        .min(p.div_ceil(zgemm::ZMR) * zgemm::ZMR);
    let nblk = p.div_ceil(rb);
    let packed = lw.data(gemm::pack_const(bmat, kk, o, o, 1, zgemm::ZNR))?;
    let pl = zgemm::plan(lw, g)?;
    lw.note_kernel(format!(
        "nhwc conv: im2col blocks of {rb}x{kk} on the stack + avx512 gemm {}x{} tiles, N={o}, items {n}x{nblk}",
        zgemm::ZMR,
        zgemm::ZNR
    ));
    let mut bufs = vec![x, packed, g.c.buf];
    let bias_arg = g.bias.as_ref().map(|b| {
        bufs.push(b.buf);
        bufs.len() - 1
    });
    let res_arg = g.residual.as_ref().map(|r| {
        bufs.push(r.buf);
        bufs.len() - 1
    });
    let mblocks = p.div_ceil(zgemm::ZMR) as i64;
    let per_blk = (rb / zgemm::ZMR) as i64;
    let callees = pl.callees.clone();
    lw.kernel_calling(bufs, n * nblk, false, &callees, |kb, refs| {
        let slot = kb.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (rb * kk * 4) as u32,
            6,
        ));
        let buf = kb.b.ins().stack_addr(I64, slot, 0);
        let (xp, bp, cp) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let biasp = bias_arg.map(|j| kb.arg(j));
        let resp = res_arg.map(|j| kb.arg(j));
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let img = kb.b.ins().udiv_imm_u(item, nblk as i64);
            let blk = kb.b.ins().urem_imm_u(item, nblk as i64);
            let r0 = kb.muli(blk, rb as i64);
            let left = kb.i(p as i64);
            let left = kb.b.ins().isub(left, r0);
            let rbv = kb.i(rb as i64);
            let lt = kb.b.ins().icmp(IntCC::SignedLessThan, left, rbv);
            let rows = kb.b.ins().select(lt, left, rbv);
            let ximg = kb.gep(xp, img, (h * wd * c * 4) as i64);
            let z = kb.i(0);
            kb.for_range(z, rows, 1, |kb, i| {
                let pos = kb.b.ins().iadd(r0, i);
                let r = kb.b.ins().udiv_imm_u(pos, ow as i64);
                let q = kb.b.ins().urem_imm_u(pos, ow as i64);
                let row = kb.gep(buf, i, (kk * 4) as i64);
                gather_row(kb, ximg, row, r, q, (h, wd, c), geo);
            });
            let start = kb.muli(img, p as i64);
            let start = kb.b.ins().iadd(start, r0);
            let base = zgemm::Bases {
                a: buf,
                b: bp,
                c: kb.gep(cp, start, (o * 4) as i64),
                bias: biasp,
                res: resp.map(|rp| kb.gep(rp, start, (o * 4) as i64)),
            };
            let rows13 = kb.addi(rows, zgemm::ZMR as i64 - 1);
            let mb_hi = kb.b.ins().udiv_imm_u(rows13, zgemm::ZMR as i64);
            let first = kb.muli(blk, per_blk);
            let last = kb.i(mblocks - 1);
            let tail_mb = kb.b.ins().isub(last, first);
            let p_hi = kb.i(o.div_ceil(zgemm::ZNR) as i64);
            zgemm::emit_tiles(kb, g, &pl, refs, &base, (z, p_hi), (z, mb_hi), tail_mb);
        });
    })
}
