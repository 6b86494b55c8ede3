//! Channels-last 2-D convolution (`layout = "NHWC"`, set by the layout
//! pass) as one GEMM whose B is the weights, reordered to
//! `[KH*KW*C, O]` and packed at compile time, and whose output `[P, O]` is
//! already NHWC: a 1x1 stride-1 unpadded convolution multiplies the input
//! itself (`[N*H*W, C]`, the whole batch in one GEMM); on AVX-512, most
//! other undilated ones read the input in place ([`conv_direct`]); the
//! rest gather im2col rows (`[OH*OW, KH*KW*C]`, whole channel runs
//! copied), per depth block on AVX-512, else one image's into scratch. Bias,
//! residual and activation are the GEMM's epilogue. Grouped convolutions
//! and run-time weights keep the NCHW path (through the NHWC adapter).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{InstBuilder, StackSlotData, StackSlotKind, Value};

use super::NodeCx;
use super::bf16gemm;
use super::conv_direct;
use super::gemm::{self, Gemm, Mat};
use super::linalg::{ConvGeom, activation, conv_geom_of};
use super::{winograd, zgemm};
use crate::codegen::builder::Kb;
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
    if let Some(wg) = winograd::Wino::new(lw, (n, h, wd, c), o, &geo) {
        let a = Mat {
            buf: x.buf,
            rs: c as i64,
            cs: 1,
        };
        let g = gemm_for(p, a, kk, 0);
        if zgemm::fits(lw, &g) {
            return winograd::lower(lw, &g, x.buf, &wg, &wv);
        }
    }
    if let Some(d) = conv_direct::Direct::new(lw, (n, h, wd, c), &geo) {
        let a = Mat {
            buf: x.buf,
            rs: c as i64,
            cs: 1,
        };
        let g = d.gemm(gemm_for(p, a, kk, 0), x.buf);
        if zgemm::fits(lw, &g) {
            return conv_direct::lower(lw, &g, &d, &bmat);
        }
    }
    if lw.avx512 {
        // A is the gathered depth block: rows of `kc` columns.
        let kc = zgemm::depth_block(lw, kk);
        let g = gemm_for(
            p,
            Mat {
                buf: x.buf,
                rs: kc as i64,
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
                gather_cols(kb, xp, row, (r, q), (h, wd, c), geo, (0, kk));
            });
        });
    })
}

/// Writes columns `[k0, k1)` of output position (`r`, `q`)'s im2col row
/// to `row`. Per kernel row, the columns are one contiguous run of the
/// NHWC input when its taps are adjacent (no dilation) and inside the
/// image, copied at once; otherwise per tap, C channels or zeros where
/// the tap falls into the padding.
fn gather_cols(
    kb: &mut Kb,
    xp: Value,
    row: Value,
    (r, q): (Value, Value),
    (h, wd, c): (usize, usize, usize),
    geo: &ConvGeom,
    (k0, k1): (usize, usize),
) {
    let (kh, kw) = (geo.kernel[0], geo.kernel[1]);
    let (s0, s1) = (geo.strides[0] as i64, geo.strides[1] as i64);
    let (d0, d1) = (geo.dil[0] as i64, geo.dil[1] as i64);
    let (p0, p1) = (geo.pad0[0] as i64, geo.pad0[1] as i64);
    let ih0 = kb.muli(r, s0);
    let ih0 = kb.addi(ih0, -p0);
    let iw0 = kb.muli(q, s1);
    let iw0 = kb.addi(iw0, -p1);
    let span = kw * c;
    let in_range = |kb: &mut Kb, v: Value, n: usize| {
        kb.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, v, n as i64)
    };
    for a in 0..kh {
        let (lo, hi) = (k0.max(a * span), k1.min((a + 1) * span));
        if lo >= hi {
            continue;
        }
        let ih = kb.addi(ih0, a as i64 * d0);
        let okh = in_range(kb, ih, h);
        let (b_lo, b_hi) = ((lo - a * span) / c, (hi - 1 - a * span) / c);
        let pix = kb.muli(ih, wd as i64);
        // Column `k` of this kernel row (tap `b`) reads input pixel
        // (ih, iw0 + b*d1), channel k - a*span - b*c.
        let taps = |kb: &mut Kb| {
            for b in b_lo..=b_hi {
                let t0 = a * span + b * c;
                let (tlo, thi) = (lo.max(t0), hi.min(t0 + c));
                let iw = kb.addi(iw0, b as i64 * d1);
                let okw = in_range(kb, iw, wd);
                let ok = kb.b.ins().band(okh, okw);
                let px = kb.b.ins().iadd(pix, iw);
                let src = kb.gep(xp, px, (c * 4) as i64);
                let src = kb.addi(src, ((tlo - t0) * 4) as i64);
                let dst = kb.addi(row, ((tlo - k0) * 4) as i64);
                copy_or_zero(kb, ok, src, dst, thi - tlo);
            }
        };
        if d1 != 1 || b_lo == b_hi {
            taps(kb);
            continue;
        }
        let first = kb.addi(iw0, b_lo as i64);
        let last = kb.addi(iw0, b_hi as i64);
        let ok_first = in_range(kb, first, wd);
        let ok_last = in_range(kb, last, wd);
        let ok = kb.b.ins().band(ok_first, ok_last);
        let ok = kb.b.ins().band(ok, okh);
        let (run, edge, done) = (
            kb.b.create_block(),
            kb.b.create_block(),
            kb.b.create_block(),
        );
        kb.b.ins().brif(ok, run, &[], edge, &[]);
        kb.b.switch_to_block(run);
        let px = kb.b.ins().iadd(pix, iw0);
        let src = kb.gep(xp, px, (c * 4) as i64);
        let src = kb.addi(src, ((lo - a * span) * 4) as i64);
        let dst = kb.addi(row, ((lo - k0) * 4) as i64);
        let n = kb.i((hi - lo) as i64);
        kb.copy_f32(src, dst, n);
        kb.b.ins().jump(done, &[]);
        kb.b.switch_to_block(edge);
        taps(kb);
        kb.b.ins().jump(done, &[]);
        kb.b.switch_to_block(done);
    }
}

/// Copies `len` floats from `src` to `dst` if `ok`, else writes zeros.
fn copy_or_zero(kb: &mut Kb, ok: Value, src: Value, dst: Value, len: usize) {
    let (yes, no, done) = (
        kb.b.create_block(),
        kb.b.create_block(),
        kb.b.create_block(),
    );
    let n = kb.i(len as i64);
    kb.b.ins().brif(ok, yes, &[], no, &[]);
    kb.b.switch_to_block(yes);
    kb.copy_f32(src, dst, n);
    kb.b.ins().jump(done, &[]);
    kb.b.switch_to_block(no);
    kb.zero_f32(dst, n);
    kb.b.ins().jump(done, &[]);
    kb.b.switch_to_block(done);
}

/// Bytes of A a blocked convolution gathers at a time (rows of one depth
/// block; an eighth of L2, so the block, the C rows it updates and the
/// B panels it meets stay cached).
const A_BLOCK_BYTES: usize = 256 << 10;

/// Work items wanted when the shape allows (threads take contiguous item
/// ranges).
const WANT_ITEMS: usize = 8;

/// Row blocks and panel groups per image: at least [`WANT_ITEMS`] items
/// where the shape allows, by the split that adds the least traffic. Each
/// panel group gathers A's `p` rows again (a copy from cache) and each row
/// block reads all `o` columns of B again: a quarter of a gathered row's
/// cost while B stays in the outer caches, the same cost once it is
/// `far` (several L2s: streamed from DRAM, as by ResNet-50's last 3x3
/// layers, 9.4 MB).
fn split(n: usize, p: usize, panels: usize, max_rb: usize, o: usize, far: bool) -> (usize, usize) {
    let b_weight = if far { 4 } else { 1 };
    let min_blk = p.div_ceil(max_rb);
    let max_blk = p.div_ceil(zgemm::ZMR).min(min_blk.max(WANT_ITEMS));
    let mut best = ((usize::MAX, usize::MAX), (min_blk, 1));
    for nblk in min_blk..=max_blk {
        for groups in 1..=panels.min(WANT_ITEMS) {
            let short = WANT_ITEMS.saturating_sub(n * nblk * groups);
            let key = (short, 4 * groups * p + b_weight * nblk * o);
            if key < best.0 {
                best = (key, (nblk, groups));
            }
        }
    }
    best.1
}

/// The AVX-512 form: work items are (image, block of `rb` output
/// positions, group of column panels). Per depth block, an item gathers
/// its rows' columns of that block into a buffer on the calling thread's
/// stack and runs the microkernel's tiles over it, so B is read once per
/// row block (a row block spans as many positions as fit the buffer) and
/// no image-sized buffer exists. `g.a.rs` is the depth block.
fn blocked(
    lw: &mut Lower,
    g: &Gemm,
    x: Buf,
    (n, h, wd, c): (usize, usize, usize, usize),
    ow: usize,
    geo: &ConvGeom,
    bmat: &[f32],
) -> Result<()> {
    const ZMR: usize = zgemm::ZMR;
    let (p, o, kk) = (g.m, g.n, g.k);
    let mut packed = gemm::pack_const(bmat, kk, o, o, 1, zgemm::ZNR);
    zgemm::pack_dot_edge(&mut packed, kk, o);
    let packed = lw.data(packed)?;
    let pl = zgemm::plan(lw, g, g.a.rs, true)?;
    let (kc, panels) = (pl.kc, pl.panels);
    let max_rb = (A_BLOCK_BYTES / (kc * 4) / ZMR * ZMR).max(ZMR);
    let far = bmat.len() * 4 > 4 * lw.l2;
    let (nblk, groups) = split(n, p, panels, max_rb, o, far);
    let rb = p.div_ceil(nblk).next_multiple_of(ZMR);
    let nblk = p.div_ceil(rb);
    let ppg = panels.div_ceil(groups);
    let groups = panels.div_ceil(ppg);
    lw.note_kernel(format!(
        "nhwc conv: im2col blocks of {rb}x{kc} on the stack + avx512 gemm {ZMR}x{} tiles, \
         K={kk} N={o}, items {n}x{nblk}x{groups}",
        zgemm::ZNR
    ));
    let (bufs, bias_arg, res_arg) = item_bufs(x, packed, g);
    let mblocks = p.div_ceil(ZMR) as i64;
    let per_blk = (rb / ZMR) as i64;
    let callees = pl.callees.clone();
    lw.kernel_calling(bufs, n * nblk * groups, false, &callees, |kb, refs| {
        let buf = stack_buf(kb, rb * kc * 4);
        let (xp, bp, cp) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let biasp = bias_arg.map(|j| kb.arg(j));
        let resp = res_arg.map(|j| kb.arg(j));
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let [img, blk, gi] = item_coords(kb, item, nblk, groups);
            let r0 = kb.muli(blk, rb as i64);
            let left = kb.i(p as i64);
            let left = kb.b.ins().isub(left, r0);
            let rbv = kb.i(rb as i64);
            let lt = kb.b.ins().icmp(IntCC::SignedLessThan, left, rbv);
            let rows = kb.b.ins().select(lt, left, rbv);
            let ximg = kb.gep(xp, img, (h * wd * c * 4) as i64);
            let start = kb.muli(img, p as i64);
            let start = kb.b.ins().iadd(start, r0);
            let base = zgemm::Bases {
                a: buf,
                b: bp,
                c: kb.gep(cp, start, (o * 4) as i64),
                bias: biasp,
                res: resp.map(|rp| kb.gep(rp, start, (o * 4) as i64)),
            };
            let rows13 = kb.addi(rows, ZMR as i64 - 1);
            let mb_hi = kb.b.ins().udiv_imm_u(rows13, ZMR as i64);
            let first = kb.muli(blk, per_blk);
            let last = kb.i(mblocks - 1);
            let p_lo = kb.muli(gi, ppg as i64);
            let p_hi = kb.addi(p_lo, ppg as i64);
            let np = kb.i(panels as i64);
            let lt = kb.b.ins().icmp(IntCC::SignedLessThan, p_hi, np);
            let z = kb.i(0);
            let ranges = zgemm::Ranges {
                p: (p_lo, kb.b.ins().select(lt, p_hi, np)),
                mb: (z, mb_hi),
                rows: zgemm::Rows::Linear {
                    tail_mb: kb.b.ins().isub(last, first),
                },
            };
            for (kbi, &(k0, len)) in pl.blocks.iter().enumerate() {
                let cols = (k0, k0 + len);
                kb.for_range(z, rows, 1, |kb, i| {
                    let pos = kb.b.ins().iadd(r0, i);
                    let r = kb.b.ins().udiv_imm_u(pos, ow as i64);
                    let q = kb.b.ins().urem_imm_u(pos, ow as i64);
                    let row = kb.gep(buf, i, (kc * 4) as i64);
                    gather_cols(kb, ximg, row, (r, q), (h, wd, c), geo, cols);
                });
                zgemm::emit_pass(kb, g, &pl, refs, &base, &ranges, kbi);
            }
        });
    })
}

/// A convolution's item kernel buffers: the input, the packed weights and
/// the output, then the bias and residual where `g` has them (with their
/// argument indices).
pub(super) fn item_bufs(x: Buf, packed: Buf, g: &Gemm) -> (Vec<Buf>, Option<usize>, Option<usize>) {
    let mut bufs = vec![x, packed, g.c.buf];
    let mut push = |m: &Option<Mat>| {
        m.as_ref().map(|m| {
            bufs.push(m.buf);
            bufs.len() - 1
        })
    };
    let (bias, res) = (push(&g.bias), push(&g.residual));
    (bufs, bias, res)
}

/// Work item `item`'s (image, row block, panel group), of `nblk` row
/// blocks and `groups` panel groups per image.
pub(super) fn item_coords(kb: &mut Kb, item: Value, nblk: usize, groups: usize) -> [Value; 3] {
    let img = kb.b.ins().udiv_imm_u(item, (nblk * groups) as i64);
    let rest = kb.b.ins().urem_imm_u(item, (nblk * groups) as i64);
    let blk = kb.b.ins().udiv_imm_u(rest, groups as i64);
    let gi = kb.b.ins().urem_imm_u(rest, groups as i64);
    [img, blk, gi]
}

/// A buffer of `bytes` in the kernel's stack frame, 64-byte aligned.
pub(super) fn stack_buf(kb: &mut Kb, bytes: usize) -> Value {
    let slot = kb.b.create_sized_stack_slot(StackSlotData::new(
        StackSlotKind::ExplicitSlot,
        bytes as u32,
        6,
    ));
    kb.b.ins().stack_addr(I64, slot, 0)
}
