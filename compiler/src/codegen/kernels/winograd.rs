//! Channels-last 3x3 stride-1 convolution as Winograd F(2x2, 3x3) on the
//! AVX-512 GEMM tiles: 16 GEMMs of 4x4-transformed input tiles by
//! transformed weights do the work of 36 multiplies per 2x2 output block
//! with 16, 2.25 times fewer multiply-adds than the direct form.
//!
//! Each 2x2 output block is a *tile*, read from the 4x4 input patch
//! around it. A work item takes a block of an image's tiles (and a group
//! of column panels). It writes the transformed patches `V = B' d B` of
//! its tiles to the stack, for all 16 positions `xi` at once where the
//! buffer holds enough tiles, else one row of the transform (4 positions)
//! at a time; multiplies each `V_xi` (T x C) by the packed
//! `U_xi = (G g G')_xi` (C x O, the weights transformed at compile time)
//! into `M_xi` (T x O, stack); and then computes every output block
//! `A' M A` with the epilogue (bias, residual, activation), storing the
//! positions inside the output.
//!
//! F(2x2, 3x3) transforms hold only 0, +-1 and +-1/2, so its rounding
//! stays within a few ulps of the direct sum (larger tiles, F(4x4, 3x3),
//! would multiply inputs by up to 8 before cancelling).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, F32X4};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::conv_direct::spacing;
use super::conv_nhwc::{item_bufs, item_coords, stack_buf};
use super::gemm::{self, Gemm, Mat};
use super::linalg::ConvGeom;
use super::zgemm::{self, ZMR, ZNR};
use crate::codegen::builder::{Kb, mem};
use crate::codegen::lower::{Buf, Lower};
use crate::error::Result;

/// Fewer input channels than this leave the GEMMs too short to repay the
/// transforms (a few operations per channel and tile; the GEMMs do `O`
/// multiply-adds per channel and tile). At 64 channels (ResNet-50's
/// 56x56 layer, batch 8, one thread) it ran 11.5 -> 8.6 ms.
const MIN_C: usize = 64;

/// Fewer tiles (over the batch) than this leave the weights, 16/9 the
/// direct form's, to dominate: ResNet-50's 7x7x512 layers at batch 1 (16
/// tiles) stream them from memory and ran 1.96 -> 2.08 ms; its 14x14
/// ones (49 tiles) 1.56 -> 1.25 ms.
const MIN_TILES: usize = 32;

/// Stack bytes of an item's transformed input and GEMM results.
const BUF_BYTES: usize = 768 << 10;

/// Tiles per item below which the input transform runs a row of 4
/// positions at a time (2 patch rows of loads each, 4 passes) rather
/// than all 16 at once (each input loaded once), whose buffer holds 4
/// times fewer tiles: at 512 channels (8 or 16 tiles an item) 12.2 ->
/// 8.9 ms, at 64 channels (96 or 48) 11.3 -> 8.6 ms the other way.
const JOINT_TILES: usize = 28;

/// Items the split aims for, so two to four threads share the work.
const WANT_ITEMS: usize = 4;

/// Rows of `B'` (the input transform): `V_i = d[a] + sign * d[b]`.
const BT: [(usize, usize, f32); 4] = [(0, 2, -1.0), (1, 2, 1.0), (2, 1, -1.0), (1, 3, -1.0)];

/// `G` (the weight transform), 4 x 3.
const G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// The Winograd form's geometry of one convolution.
pub struct Wino {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    o: usize,
    oh: usize,
    ow: usize,
    pt: usize,
    pl: usize,
    /// Tiles per image row and column.
    th: usize,
    tw: usize,
    /// Tiles per item, and floats from one row of `V` to the next.
    tb: usize,
    cv: usize,
    /// Column panels per group.
    ppg: usize,
    /// Rows of the transform (of 4 positions each) per input pass.
    rows: usize,
}

impl Wino {
    /// Where the form applies: AVX-512, a 3x3 kernel at stride and
    /// dilation 1, at least [`MIN_C`] channels and [`MIN_TILES`] tiles,
    /// and one tile's buffers fit.
    pub fn new(
        lw: &Lower,
        (n, h, w, c): (usize, usize, usize, usize),
        o: usize,
        geo: &ConvGeom,
    ) -> Option<Self> {
        let (oh, ow) = (geo.out_sp[0], geo.out_sp[1]);
        if !lw.avx512
            || geo.kernel != [3, 3]
            || geo.strides != [1, 1]
            || geo.dil != [1, 1]
            || c < MIN_C
        {
            return None;
        }
        let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
        let tiles = th * tw;
        if n * tiles < MIN_TILES {
            return None;
        }
        // V rows a multiple of 4 KiB apart would share L1 sets.
        let cv = spacing(c, 1, tiles)?;
        let tb_for = |rows: usize| BUF_BYTES / ((4 * rows * cv + 16 * o) * 4);
        let rows = if tb_for(4) >= tiles.min(JOINT_TILES) {
            4
        } else {
            1
        };
        let tb_max = tb_for(rows);
        if tb_max == 0 {
            return None;
        }
        let nblk = tiles.div_ceil(tb_max);
        let tb = tiles.div_ceil(nblk);
        let panels = o.div_ceil(ZNR);
        let groups = panels.min(WANT_ITEMS.div_ceil(n * nblk));
        let ppg = panels.div_ceil(groups);
        Some(Self {
            n,
            h,
            w,
            c,
            o,
            oh,
            ow,
            pt: geo.pad0[0],
            pl: geo.pad0[1],
            th,
            tw,
            tb,
            cv,
            ppg,
            rows,
        })
    }

    fn tiles(&self) -> usize {
        self.th * self.tw
    }

    /// `U_xi` (C x O) for the 16 positions, packed one panel set each.
    fn packed_weights(&self, wv: &[f64]) -> Vec<u8> {
        let (c, o) = (self.c, self.o);
        let mut u = vec![vec![0f32; c * o]; 16];
        for oi in 0..o {
            for ci in 0..c {
                let g = &wv[(oi * c + ci) * 9..][..9];
                // G g (4 x 3), then (G g) G' (4 x 4).
                let mut gg = [[0f64; 3]; 4];
                for (i, row) in gg.iter_mut().enumerate() {
                    for (b, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|a| G[i][a] * g[a * 3 + b]).sum();
                    }
                }
                for (i, row) in gg.iter().enumerate() {
                    for j in 0..4 {
                        let v: f64 = (0..3).map(|b| row[b] * G[j][b]).sum();
                        u[i * 4 + j][ci * o + oi] = v as f32;
                    }
                }
            }
        }
        let mut bytes = Vec::new();
        for ux in &u {
            let mut set = gemm::pack_const(ux, c, o, o, 1, ZNR);
            zgemm::pack_dot_edge(&mut set, c, o);
            bytes.extend(set);
        }
        bytes
    }
}

/// Lowers the convolution whose output, bias, residual and activation
/// `conv` holds (as `conv_nhwc` sets them up), of NHWC input `x` and
/// OIHW weights `wv`.
pub fn lower(lw: &mut Lower, conv: &Gemm, x: Buf, d: &Wino, wv: &[f64]) -> Result<()> {
    let (c, o, tb, cv) = (d.c, d.o, d.tb, d.cv);
    let packed = lw.data(d.packed_weights(wv))?;
    let set_bytes = (gemm::packed_len(o, c, ZNR) * 4) as i64;
    // The GEMM of one position: V (tb x C, rows cv apart) by U into M.
    let mat = |rs: usize| Mat {
        buf: x,
        rs: rs as i64,
        cs: 1,
    };
    let g = Gemm::plain(tb, o, c, mat(cv), mat(o));
    let pl = zgemm::plan(lw, &g, cv as i64, true)?;
    let nblk = d.tiles().div_ceil(tb);
    let groups = pl.panels.div_ceil(d.ppg);
    lw.note_kernel(format!(
        "nhwc conv winograd F(2x2,3x3): {tb} of {} tiles per item, input transform {}, 16 avx512 gemms {ZMR}x{ZNR} tiles M={tb} N={o} K={c}, items {}x{nblk}x{groups}",
        d.tiles(),
        if d.rows == 4 { "all at once" } else { "by rows" },
        d.n
    ));
    let (bufs, bias_arg, res_arg) = item_bufs(x, packed, conv);
    let callees = pl.callees.clone();
    lw.kernel_calling(bufs, d.n * nblk * groups, false, &callees, |kb, refs| {
        let vbuf = stack_buf(kb, 4 * d.rows * tb * cv * 4);
        let mbuf = stack_buf(kb, 16 * tb * o * 4);
        // The patch's taps outside the input read this zero row.
        let zrow = stack_buf(kb, c * 4);
        let cn = kb.i(c as i64);
        kb.zero_f32(zrow, cn);
        let (xp, up, yp) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let biasp = bias_arg.map(|j| kb.arg(j));
        let resp = res_arg.map(|j| kb.arg(j));
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let [img, blk, gi] = item_coords(kb, item, nblk, groups);
            let t0 = kb.muli(blk, tb as i64);
            let ximg = kb.gep(xp, img, (d.h * d.w * c * 4) as i64);
            let p_lo = kb.muli(gi, d.ppg as i64);
            let p_hi = kb.addi(p_lo, d.ppg as i64);
            let np = kb.i(pl.panels as i64);
            let p_hi = kb.b.ins().smin(p_hi, np);
            let z = kb.i(0);
            let mbs = kb.i(tb.div_ceil(ZMR) as i64);
            let tail_mb = kb.i(tb.div_ceil(ZMR) as i64 - 1);
            let ranges = zgemm::Ranges {
                p: (p_lo, p_hi),
                mb: (z, mbs),
                rows: zgemm::Rows::Linear { tail_mb },
            };
            for xi in 0..16 {
                if xi % (4 * d.rows) == 0 {
                    transform_input(kb, d, ximg, zrow, vbuf, t0, xi / 4);
                }
                let vx = kb.addi(vbuf, (xi % (4 * d.rows) * tb * cv * 4) as i64);
                let base = zgemm::Bases {
                    a: vx,
                    b: kb.addi(up, xi as i64 * set_bytes),
                    c: kb.addi(mbuf, (xi * tb * o * 4) as i64),
                    bias: None,
                    res: None,
                };
                for (kbi, &(k0, _)) in pl.blocks.iter().enumerate() {
                    let a = kb.addi(vx, (k0 * 4) as i64);
                    zgemm::emit_pass(kb, &g, &pl, refs, &zgemm::Bases { a, ..base }, &ranges, kbi);
                }
            }
            let ptrs = Out {
                y: yp,
                bias: biasp,
                res: resp,
            };
            transform_output(kb, d, conv, mbuf, &ptrs, (img, t0), (p_lo, p_hi));
        });
    })
}

/// Writes `V_xi` of tiles `[t0, t0 + tb)` for the 4 positions of row `i`
/// of the transform (`xi = 4i..4i+4`): `vbuf` holds their 4 matrices of
/// `tb` rows, `cv` floats apart. Row `i` reads 2 rows of each patch; the
/// 4 positions share their loads and column transforms.
fn transform_input(
    kb: &mut Kb,
    d: &Wino,
    ximg: Value,
    zrow: Value,
    vbuf: Value,
    t0: Value,
    i0: usize,
) {
    let is: Vec<usize> = (i0..i0 + d.rows).collect();
    // The patch rows these transform rows read.
    let mut need: Vec<usize> = is.iter().flat_map(|&i| [BT[i].0, BT[i].1]).collect();
    need.sort();
    need.dedup();
    let (z, tb) = (kb.i(0), kb.i(d.tb as i64));
    kb.for_range(z, tb, 1, |kb, t| {
        let gt = kb.b.ins().iadd(t0, t);
        let valid =
            kb.b.ins()
                .icmp_imm_u(IntCC::UnsignedLessThan, gt, d.tiles() as i64);
        let ty = kb.b.ins().udiv_imm_u(gt, d.tw as i64);
        let tx = kb.b.ins().urem_imm_u(gt, d.tw as i64);
        // Input row and column of the patch's corner (may be negative).
        let r0 = kb.muli(ty, 2);
        let r0 = kb.addi(r0, -(d.pt as i64));
        let c0 = kb.muli(tx, 2);
        let c0 = kb.addi(c0, -(d.pl as i64));
        let mut taps = vec![[z; 4]; need.len()];
        for (row, &r) in taps.iter_mut().zip(&need) {
            let ir = kb.addi(r0, r as i64);
            let rin =
                kb.b.ins()
                    .icmp_imm_u(IntCC::UnsignedLessThan, ir, d.h as i64);
            let rin = kb.b.ins().band(rin, valid);
            let rp = kb.gep(ximg, ir, (d.w * d.c * 4) as i64);
            for (q, tap) in row.iter_mut().enumerate() {
                let ic = kb.addi(c0, q as i64);
                let cin =
                    kb.b.ins()
                        .icmp_imm_u(IntCC::UnsignedLessThan, ic, d.w as i64);
                let inside = kb.b.ins().band(rin, cin);
                let addr = kb.gep(rp, ic, (d.c * 4) as i64);
                *tap = kb.b.ins().select(inside, addr, zrow);
            }
        }
        let dst = kb.gep(vbuf, t, (d.cv * 4) as i64);
        let plane = (d.tb * d.cv * 4) as i32;
        let cn = kb.i(d.c as i64);
        let z = kb.i(0);
        kb.for_vec(z, cn, 4, |kb, j, lanes| {
            let ty = if lanes == 1 { F32 } else { F32X4 };
            let off = kb.muli(j, 4);
            // The two patch rows along the columns (d B), then combined (B' .).
            let rows: Vec<[Value; 4]> = taps
                .iter()
                .map(|row| {
                    let v: Vec<Value> = row
                        .iter()
                        .map(|&p| {
                            let a = kb.b.ins().iadd(p, off);
                            kb.b.ins().load(ty, mem(), a, 0)
                        })
                        .collect();
                    BT.map(|(a, b, s)| signed_add(kb, v[a], v[b], s))
                })
                .collect();
            let out = kb.b.ins().iadd(dst, off);
            let at = |r: usize| need.iter().position(|&x| x == r).unwrap_or(0);
            for (n, &i) in is.iter().enumerate() {
                let (ra, rb, rs) = BT[i];
                let (a, b) = (rows[at(ra)], rows[at(rb)]);
                for (q, (&x, &y)) in a.iter().zip(&b).enumerate() {
                    let v = signed_add(kb, x, y, rs);
                    kb.b.ins().store(mem(), v, out, (n * 4 + q) as i32 * plane);
                }
            }
        });
    });
}

fn signed_add(kb: &mut Kb, a: Value, b: Value, sign: f32) -> Value {
    if sign > 0.0 {
        kb.b.ins().fadd(a, b)
    } else {
        kb.b.ins().fsub(a, b)
    }
}

/// Output, bias and residual pointers of a conv item kernel.
struct Out {
    y: Value,
    bias: Option<Value>,
    res: Option<Value>,
}

/// Stores `A' M A` of the item's tiles (image `img`, from tile `t0`),
/// columns of panels `[p_lo, p_hi)`, with `conv`'s epilogue.
fn transform_output(
    kb: &mut Kb,
    d: &Wino,
    conv: &Gemm,
    mbuf: Value,
    out: &Out,
    (img, t0): (Value, Value),
    (p_lo, p_hi): (Value, Value),
) {
    let o = d.o;
    let left = kb.i(d.tiles() as i64);
    let left = kb.b.ins().isub(left, t0);
    let tbv = kb.i(d.tb as i64);
    let count = kb.b.ins().smin(left, tbv);
    let j_lo = kb.muli(p_lo, ZNR as i64);
    let j_hi = kb.muli(p_hi, ZNR as i64);
    let ov = kb.i(o as i64);
    let j_hi = kb.b.ins().smin(j_hi, ov);
    let z = kb.i(0);
    kb.for_range(z, count, 1, |kb, t| {
        let gt = kb.b.ins().iadd(t0, t);
        let ty = kb.b.ins().udiv_imm_u(gt, d.tw as i64);
        let tx = kb.b.ins().urem_imm_u(gt, d.tw as i64);
        let oy = kb.muli(ty, 2);
        let ox = kb.muli(tx, 2);
        // Output pixel (within the batch) of the tile's corner.
        let pix = kb.muli(img, (d.oh * d.ow) as i64);
        let row = kb.muli(oy, d.ow as i64);
        let pix = kb.b.ins().iadd(pix, row);
        let pix = kb.b.ins().iadd(pix, ox);
        let oy1 = kb.addi(oy, 1);
        let ox1 = kb.addi(ox, 1);
        let down =
            kb.b.ins()
                .icmp_imm_u(IntCC::UnsignedLessThan, oy1, d.oh as i64);
        let right =
            kb.b.ins()
                .icmp_imm_u(IntCC::UnsignedLessThan, ox1, d.ow as i64);
        let both = kb.b.ins().band(down, right);
        let mrow = kb.gep(mbuf, t, (o * 4) as i64);
        kb.for_vec(j_lo, j_hi, 4, |kb, j, lanes| {
            let ty = if lanes == 1 { F32 } else { F32X4 };
            let mat = kb.gep(mrow, j, 4);
            let m: Vec<Value> = (0..16)
                .map(|xi| kb.b.ins().load(ty, mem(), mat, (xi * d.tb * o * 4) as i32))
                .collect();
            // A' = [[1, 1, 1, 0], [0, 1, -1, -1]] on both sides.
            let at = |kb: &mut Kb, v: [Value; 4]| {
                let s = kb.b.ins().fadd(v[1], v[2]);
                let y0 = kb.b.ins().fadd(v[0], s);
                let dlt = kb.b.ins().fsub(v[1], v[2]);
                let y1 = kb.b.ins().fsub(dlt, v[3]);
                [y0, y1]
            };
            let cols: Vec<[Value; 2]> = (0..4)
                .map(|q| at(kb, [m[q], m[4 + q], m[8 + q], m[12 + q]]))
                .collect();
            let y = [
                at(kb, [cols[0][0], cols[1][0], cols[2][0], cols[3][0]]),
                at(kb, [cols[0][1], cols[1][1], cols[2][1], cols[3][1]]),
            ];
            let bias = out.bias.map(|bp| {
                let a = kb.gep(bp, j, 4);
                kb.b.ins().load(ty, mem(), a, 0)
            });
            let store = |kb: &mut Kb, r: usize, s: usize| {
                let p = kb.addi(pix, (r * d.ow + s) as i64);
                let at = kb.muli(p, o as i64);
                let at = kb.b.ins().iadd(at, j);
                let mut v = y[r][s];
                if let Some(b) = bias {
                    v = kb.b.ins().fadd(v, b);
                }
                if let Some(rp) = out.res {
                    let a = kb.gep(rp, at, 4);
                    let rv = kb.b.ins().load(ty, mem(), a, 0);
                    v = kb.b.ins().fadd(v, rv);
                }
                let v = conv.act.apply(kb, v);
                let a = kb.gep(out.y, at, 4);
                kb.b.ins().store(mem(), v, a, 0);
            };
            store(kb, 0, 0);
            kb.if_(right, |kb| store(kb, 0, 1));
            kb.if_(down, |kb| store(kb, 1, 0));
            kb.if_(both, |kb| store(kb, 1, 1));
        });
    });
}
