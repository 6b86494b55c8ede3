//! Channels-last convolution on the AVX-512 GEMM tiles without im2col:
//! the tiles read A in place from a zero-bordered copy of the input rows
//! a work item covers.
//!
//! With dilation 1, one kernel row's taps of output position `(r, q)` are
//! `kw` adjacent input pixels, so their `kw * C` channels are one
//! contiguous run of the (padded) NHWC input, and the next position's run
//! starts `stride * C` floats later. Per kernel row, a tile of output
//! positions along an output row is therefore a GEMM tile whose A rows are
//! `stride * C` floats apart and overlap: the depth blocks follow the
//! kernel rows ([`zgemm::plan_lines`]) and each block's A starts at its
//! kernel row of the copy. The copy costs one pass over the input rows an
//! item covers; the im2col gather it replaces wrote `KH * KW / stride²`
//! times as much (ResNet-50's 3x3 layers: 9x).
//!
//! Short kernel rows (a 3-channel stem's 21 floats) are walked by the
//! tiles themselves, several per depth block ([`zgemm::Seg`]), so the C
//! tile stays in registers across them.
//!
//! Where a tile's A rows would pile onto few L1 sets (`stride * C * 4` a
//! multiple of 4 KiB, as with 1024 channels), the copy spaces pixels
//! `C + 16` floats apart; the gap channels are zero in the copy and their
//! rows of the packed weights are zero too.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};

use super::conv_nhwc::{item_bufs, item_coords, stack_buf};
use super::gemm::{self, Gemm, Mat};
use super::linalg::ConvGeom;
use super::zgemm::{self, ZMR, ZNR};
use crate::codegen::builder::Kb;
use crate::codegen::lower::{Buf, Lower};
use crate::error::Result;

/// A strided convolution takes the direct form only where an item can
/// span this many output rows: the copy of a row of wide input (layers 3
/// and 4 of ResNet-50: 29 x 272 floats) is large, few rows fit the
/// buffer, and every item reads its panels of B again.
const MIN_ROWS_STRIDED: usize = 7;

/// Bytes of the per-item input copy (on the calling thread's stack).
const BUF_BYTES: usize = 256 << 10;

/// The copy's bytes for a strided convolution: an output row covers
/// `stride` input rows, so the rows ResNet-50's stride-2 3x3 layers need
/// (a 29-pixel row of 256 channels is 29 KiB) fit [`MIN_ROWS_STRIDED`]
/// output rows only in twice [`BUF_BYTES`]. Taking the direct form, they
/// ran 1.68 -> 1.54, 1.80 -> 1.73 and 2.26 -> 2.12 ms (b1, one thread).
const STRIDED_BUF_BYTES: usize = 2 * BUF_BYTES;

/// Pixel spacings (`C`, `C + 16`, ...) tried against L1 set conflicts.
const MAX_SPACINGS: usize = 8;

/// Thread counts whose balance the item split weighs.
const THREADS: [usize; 3] = [1, 2, 4];

/// The direct form's geometry of one convolution.
pub struct Direct {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    s: usize,
    pt: usize,
    pl: usize,
    /// Floats from one pixel of the copy to the next (C, or C + 16).
    cp: usize,
    /// Pixels per row of the copy: the span the output row's taps cover.
    wb: usize,
    /// Output rows per work item at most (the copy fits [`BUF_BYTES`], or
    /// [`STRIDED_BUF_BYTES`]).
    rows_max: usize,
}

impl Direct {
    /// The geometry where the direct form applies: AVX-512, dilation 1,
    /// and the input rows of one output row fit the buffer; strided, also
    /// a kernel at least as large as the stride (else the copy would hold
    /// pixels no tap reads) and [`MIN_ROWS_STRIDED`] rows per item.
    pub fn new(
        lw: &Lower,
        (n, h, w, c): (usize, usize, usize, usize),
        geo: &ConvGeom,
    ) -> Option<Self> {
        let (kh, kw) = (geo.kernel[0], geo.kernel[1]);
        let s = geo.strides[0];
        let (oh, ow) = (geo.out_sp[0], geo.out_sp[1]);
        if !lw.avx512
            || geo.dil != [1, 1]
            || geo.strides[1] != s
            || oh * ow == 0
            || kh < s
            || kw < s
        {
            return None;
        }
        let cp = spacing(c, s, ow)?;
        let wb = (ow - 1) * s + kw;
        let row = wb * cp * 4;
        let buf = if s > 1 { STRIDED_BUF_BYTES } else { BUF_BYTES };
        let rows_in = buf / row;
        let rows_max = (rows_in >= kh).then(|| (rows_in - kh) / s + 1)?.min(oh);
        if s > 1 && rows_max < MIN_ROWS_STRIDED.min(oh) {
            return None;
        }
        Some(Self {
            n,
            h,
            w,
            c,
            oh,
            ow,
            kh,
            kw,
            s,
            pt: geo.pad0[0],
            pl: geo.pad0[1],
            cp,
            wb,
            rows_max,
        })
    }

    /// Input rows of the copy for `rows` output rows.
    fn rows_in(&self, rows: usize) -> usize {
        (rows - 1) * self.s + self.kh
    }

    /// Floats of one row of the copy.
    fn row_len(&self) -> usize {
        self.wb * self.cp
    }

    /// `bmat` (`[KH*KW*C, O]`) with `cp - c` zero rows after each tap's C.
    fn spaced(&self, bmat: &[f32], o: usize) -> Vec<f32> {
        let (c, cp) = (self.c, self.cp);
        let mut out = vec![0f32; self.kh * self.kw * cp * o];
        for (t, tap) in bmat.chunks(c * o).enumerate() {
            out[t * cp * o..][..c * o].copy_from_slice(tap);
        }
        out
    }

    /// (output rows per item, column panels per group): the split whose
    /// slowest thread, weighed over [`THREADS`], finishes first. An item
    /// costs its tiles' multiply-adds, its input copy and its reading of
    /// its panels of B (from L2, or from memory when B is `far`).
    fn split(&self, o: usize, kk: usize, far: bool) -> (usize, usize) {
        let panels = o.div_ceil(ZNR);
        let b_rate = if far { 2.0 } else { 8.0 };
        let cost = |rows: usize, np: usize| {
            let work = (rows * self.ow * np * kk) as f64;
            let copy = (self.rows_in(rows) * self.row_len()) as f64 / 8.0;
            let b = (np * ZNR * kk) as f64 / b_rate;
            work + copy + b + 300.0
        };
        let mut best = (f64::INFINITY, (self.rows_max, 1));
        let min_blk = self.oh.div_ceil(self.rows_max);
        let mut seen = Vec::new();
        for nblk in min_blk..=self.oh {
            let rows = self.oh.div_ceil(nblk);
            for groups in 1..=panels.min(8) {
                let ppg = panels.div_ceil(groups);
                let key = (rows, ppg);
                let (nblk, groups) = (self.oh.div_ceil(rows), panels.div_ceil(ppg));
                if seen.contains(&key) || (self.n * nblk * groups > 256 && nblk > min_blk) {
                    continue;
                }
                seen.push(key);
                let item = |i: usize| {
                    let rest = i % (nblk * groups);
                    let (blk, g) = (rest / groups, rest % groups);
                    cost(rows.min(self.oh - blk * rows), ppg.min(panels - g * ppg))
                };
                let items = self.n * nblk * groups;
                let score: f64 = THREADS
                    .iter()
                    .map(|&t| {
                        let worst = (0..t)
                            .map(|i| {
                                let (b, e) = cpucc_runtime::chunk(items, t, i);
                                (b..e).map(item).sum::<f64>()
                            })
                            .fold(0.0, f64::max);
                        worst * t as f64
                    })
                    .sum();
                if score < best.0 {
                    best = (score, key);
                }
            }
        }
        best.1
    }
}

impl Direct {
    /// The convolution's GEMM `g` (C, epilogue) as the tiles see it: A is
    /// the NHWC input `x`, rows a stride apart, over the spaced depth.
    pub fn gemm(&self, g: Gemm, x: Buf) -> Gemm {
        Gemm {
            k: self.kh * self.kw * self.cp,
            a: Mat {
                buf: x,
                rs: (self.s * self.cp) as i64,
                cs: 1,
            },
            ..g
        }
    }
}

/// Floats from one pixel of the copy to the next for `c` channels at
/// stride `s`, `ow` output positions a row: the first of `C`, `C + 16`,
/// ... whose tile rows share no L1 set beyond the limit. None when every
/// spacing tried piles them up (a stride of 64 pixels keeps them on the
/// same sets whatever the spacing).
pub(super) fn spacing(c: usize, s: usize, ow: usize) -> Option<usize> {
    (0..MAX_SPACINGS)
        .map(|i| c + 16 * i)
        .find(|&cp| !zgemm::set_conflicts((s * cp) as i64, ow))
}

/// Lowers the convolution `g` (from [`Direct::gemm`]) of weights `bmat`
/// (`[KH*KW*C, O]`).
pub fn lower(lw: &mut Lower, g: &Gemm, d: &Direct, bmat: &[f32]) -> Result<()> {
    let (o, cp, s, kk, x) = (g.n, d.cp, d.s, g.k, g.a.buf);
    let seg = d.kw * cp;
    let mut packed = gemm::pack_const(&d.spaced(bmat, o), kk, o, o, 1, ZNR);
    zgemm::pack_dot_edge(&mut packed, kk, o);
    let packed = lw.data(packed)?;
    let row_bytes = (d.row_len() * 4) as i64;
    let pl = zgemm::plan_lines(lw, g, (s * cp) as i64, d.ow, (seg, row_bytes))?;
    let far = kk * o * 4 > 4 * lw.l2;
    let (rpb, ppg) = d.split(o, kk, far);
    let (nblk, groups) = (d.oh.div_ceil(rpb), pl.panels.div_ceil(ppg));
    let per_line = d.ow.div_ceil(ZMR);
    lw.note_kernel(format!(
        "nhwc conv direct: {rpb} output rows' input copied to the stack ({} floats a pixel) + avx512 \
         gemm {ZMR}x{ZNR} tiles read in place, K={kk} N={o}, items {}x{nblk}x{groups}",
        cp, d.n
    ));
    let (bufs, bias_arg, res_arg) = item_bufs(x, packed, g);
    let callees = pl.callees.clone();
    lw.kernel_calling(bufs, d.n * nblk * groups, false, &callees, |kb, refs| {
        let buf = stack_buf(kb, d.rows_in(rpb) * d.row_len() * 4);
        let (xp, bp, cp_) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let biasp = bias_arg.map(|j| kb.arg(j));
        let resp = res_arg.map(|j| kb.arg(j));
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let [img, blk, gi] = item_coords(kb, item, nblk, groups);
            let r0 = kb.muli(blk, rpb as i64);
            let left = kb.i(d.oh as i64);
            let left = kb.b.ins().isub(left, r0);
            let rpbv = kb.i(rpb as i64);
            let rows = kb.b.ins().smin(left, rpbv);
            let ximg = kb.gep(xp, img, (d.h * d.w * d.c * 4) as i64);
            copy_rows(kb, d, ximg, buf, r0, rows);
            let start = kb.muli(img, d.oh as i64);
            let start = kb.b.ins().iadd(start, r0);
            let start = kb.muli(start, d.ow as i64);
            let base = zgemm::Bases {
                a: buf,
                b: bp,
                c: kb.gep(cp_, start, (o * 4) as i64),
                bias: biasp,
                res: resp.map(|rp| kb.gep(rp, start, (o * 4) as i64)),
            };
            let p_lo = kb.muli(gi, ppg as i64);
            let p_hi = kb.addi(p_lo, ppg as i64);
            let np = kb.i(pl.panels as i64);
            let p_hi = kb.b.ins().smin(p_hi, np);
            let z = kb.i(0);
            let ranges = zgemm::Ranges {
                p: (p_lo, p_hi),
                mb: (z, kb.muli(rows, per_line as i64)),
                rows: zgemm::Rows::Grid {
                    per_line: per_line as i64,
                    line: d.ow as i64,
                    a_pitch: s as i64 * row_bytes,
                },
            };
            for (kbi, &(k0, _)) in pl.blocks.iter().enumerate() {
                // Kernel row k0 / seg starts that many rows into the copy.
                let at = (k0 / seg) as i64 * row_bytes + (k0 % seg * 4) as i64;
                let a = kb.addi(buf, at);
                zgemm::emit_pass(kb, g, &pl, refs, &zgemm::Bases { a, ..base }, &ranges, kbi);
            }
        });
    })
}

/// Writes the input rows of output rows `[r0, r0 + rows)` to `buf`, one
/// row of the copy per input row (from `r0 * stride - pad`), zero where
/// it falls into the padding.
fn copy_rows(kb: &mut Kb, d: &Direct, ximg: Value, buf: Value, r0: Value, rows: Value) {
    let (c, cp, wb) = (d.c, d.cp, d.wb);
    let left = d.pl.min(wb);
    let cols = d.w.min(wb - left);
    let right = (wb - left - cols) * cp;
    let ih0 = kb.muli(r0, d.s as i64);
    let ih0 = kb.addi(ih0, -(d.pt as i64));
    let n_in = kb.addi(rows, -1);
    let n_in = kb.muli(n_in, d.s as i64);
    let n_in = kb.addi(n_in, d.kh as i64);
    let z = kb.i(0);
    kb.for_range(z, n_in, 1, |kb, i| {
        let ih = kb.b.ins().iadd(ih0, i);
        let inside =
            kb.b.ins()
                .icmp_imm_u(IntCC::UnsignedLessThan, ih, d.h as i64);
        let dst = kb.gep(buf, i, (d.row_len() * 4) as i64);
        let (yes, no, done) = (
            kb.b.create_block(),
            kb.b.create_block(),
            kb.b.create_block(),
        );
        kb.b.ins().brif(inside, yes, &[], no, &[]);
        kb.b.switch_to_block(yes);
        let src = kb.gep(ximg, ih, (d.w * c * 4) as i64);
        if cp == c {
            if left > 0 {
                let n = kb.i((left * c) as i64);
                kb.zero_f32(dst, n);
            }
            let to = kb.addi(dst, (left * c * 4) as i64);
            let n = kb.i((cols * c) as i64);
            kb.copy_f32(src, to, n);
            if right > 0 {
                let to = kb.addi(dst, ((left + cols) * c * 4) as i64);
                let n = kb.i(right as i64);
                kb.zero_f32(to, n);
            }
        } else {
            let n = kb.i(d.row_len() as i64);
            kb.zero_f32(dst, n);
            let (z, e) = (kb.i(0), kb.i(cols as i64));
            let n = kb.i(c as i64);
            kb.for_range(z, e, 1, |kb, px| {
                let from = kb.gep(src, px, (c * 4) as i64);
                let to = kb.gep(dst, px, (cp * 4) as i64);
                let to = kb.addi(to, (left * cp * 4) as i64);
                kb.copy_f32(from, to, n);
            });
        }
        kb.b.ins().jump(done, &[]);
        kb.b.switch_to_block(no);
        let n = kb.i(d.row_len() as i64);
        kb.zero_f32(dst, n);
        kb.b.ins().jump(done, &[]);
        kb.b.switch_to_block(done);
    });
}

#[cfg(test)]
mod tests {
    use super::spacing;

    #[test]
    fn spacing_frees_tile_rows_of_set_conflicts() {
        // Rows 256 B apart spread over the sets; 4 KiB apart (1024
        // channels) share one until spaced by 16 floats.
        assert_eq!(spacing(64, 1, 56), Some(64));
        assert_eq!(spacing(1024, 1, 14), Some(1040));
        // Few rows never conflict.
        assert_eq!(spacing(1024, 1, 7), Some(1024));
        // A 64-pixel stride: 16 * 64 floats is 4 KiB, so no spacing helps.
        assert_eq!(spacing(16, 64, 8), None);
    }
}
