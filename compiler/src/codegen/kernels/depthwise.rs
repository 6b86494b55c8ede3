//! Channels-last depthwise 2-D convolution (`group == C == O`, constant
//! weights, `layout = "NHWC"`): each output channel filters its own input
//! channel, so the kernel is vectorized over channels (f32x4, scalar tail)
//! instead of going through a GEMM with one row per group. Channels-last
//! MaxPool (without Indices) is the same window walk with a maximum that
//! skips NaNs instead of multiply-add (the interpreter's rule: NaN only
//! where every tap is NaN), from NaN, and a NaN row for the padding, which
//! the maximum then skips.
//!
//! Weights are repacked at compile time tap-major (`[KH*KW][C]`), so one
//! vector load gives a tap's weights for four channels. Work items are
//! output rows (image, oh); within a row, output pixels are the outer loop
//! and channels the inner one, so reads stream through each input pixel's
//! channels. Rows above or below the input read a zero row (read-only
//! data), so the tap rows need no per-pixel test; columns are split at
//! compile time into a left edge, an interior where every tap is in
//! bounds (four outputs at a time: independent FMA chains sharing each
//! weight load) and a right edge where out-of-bounds taps also read the
//! zero row. Bias, residual and the activation are applied in registers
//! before the store.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I64};
use cranelift_codegen::ir::{InstBuilder, StackSlotData, StackSlotKind, Value};

use super::gemm::Act;
use super::linalg::{ConvGeom, activation, conv_geom_of};
use super::{NodeCx, zdepthwise};
use crate::codegen::builder::{Kb, mem};
use crate::codegen::lower::Lower;
use crate::error::Result;
use crate::ir::DType;

/// Outputs computed together in the interior loop.
const UNROLL: usize = 4;

/// Whether `cx` is a channels-last depthwise convolution this kernel takes.
pub fn applies(cx: &NodeCx) -> bool {
    let nhwc = cx.attrs().string("layout", "NCHW").ok() == Some("NHWC");
    let conv = matches!(cx.node.op.as_str(), "Conv" | "cpucc.FusedConv");
    let Some(Some(x)) = cx.ins.first() else {
        return false;
    };
    let Some(Some(w)) = cx.consts.get(1) else {
        return false;
    };
    let c = x.ty.shape.get(3).copied().unwrap_or(0);
    let group = cx.attrs().int("group", 1).ok();
    nhwc && conv
        && x.ty.dtype == DType::F32
        && x.ty.shape.len() == 4
        && c > 1
        && group == Some(c as i64)
        && w.shape().len() == 4
        && w.shape()[0] == c
        && w.shape()[1] == 1
}

/// Column ranges `[0, lo)`, `[lo, hi)`, `[hi, ow)`: in `[lo, hi)` every tap
/// of an output column lies inside the input row.
fn interior(geo: &ConvGeom, w: usize, ow: usize) -> (usize, usize) {
    let (s, p, d, k) = (geo.strides[1], geo.pad0[1], geo.dil[1], geo.kernel[1]);
    let lo = p.div_ceil(s).min(ow);
    // Last tap of column j: j*s - p + (k-1)*d < w.
    let reach = (k - 1) * d;
    let hi = if w + p > reach {
        ((w + p - reach - 1) / s + 1).min(ow)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// Whether `cx` is a channels-last f32 MaxPool without the Indices output.
pub fn applies_maxpool(cx: &NodeCx) -> bool {
    cx.node.op == "MaxPool"
        && cx.node.outputs.len() == 1
        && cx.attrs().string("layout", "NCHW").ok() == Some("NHWC")
        && cx
            .ins
            .first()
            .and_then(|x| x.as_ref())
            .is_some_and(|x| x.ty.dtype == DType::F32 && x.ty.shape.len() == 4)
}

/// What a window computes.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Weighted sum (+ bias, residual, activation).
    Conv,
    /// Maximum; padding counts as -inf.
    Max,
}

fn dims4(s: &[usize], what: &str) -> Result<[usize; 4]> {
    match s {
        &[a, b, c, d] => Ok([a, b, c, d]),
        _ => bail!(Internal, "NHWC {what} of rank {}", s.len()),
    }
}

pub fn lower_maxpool(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?;
    let out = cx.out(0);
    let [n, h, wd, c] = dims4(&x.ty.shape, "MaxPool input")?;
    let [_, oh, ow, _] = dims4(&out.ty.shape, "MaxPool output")?;
    let ks = cx.attrs().ints_opt("kernel_shape")?.unwrap_or(&[]);
    let [kh, kw] = ks[..] else {
        bail!(Internal, "2-D MaxPool with kernel_shape {ks:?}");
    };
    let wshape = [c, 1, kh as usize, kw as usize];
    let geo = conv_geom_of(cx.attrs(), &[n, c, h, wd], &wshape, &[n, c, oh, ow])?;
    let pad = lw.data(f32::NAN.to_le_bytes().repeat(wd * c))?;
    lw.note_kernel(format!(
        "max pool nhwc {} {kh}x{kw} stride {:?} dilation {:?}",
        if zdepthwise::fits(lw, kh as usize, Act::None) {
            "avx512 interior"
        } else {
            "f32x4"
        },
        geo.strides,
        geo.dil
    ));
    let bufs = vec![x.buf, x.buf, pad, out.buf];
    emit(
        lw,
        bufs,
        None,
        None,
        Act::None,
        &geo,
        (n, h, wd, c),
        (oh, ow),
        Mode::Max,
    )
}

pub fn lower(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?;
    let out = cx.out(0);
    let [n, h, wd, c] = dims4(&x.ty.shape, "depthwise input")?;
    let [_, oh, ow, o] = dims4(&out.ty.shape, "depthwise output")?;
    let Some(wt) = cx.consts[1] else {
        bail!(Internal, "depthwise conv without constant weights");
    };
    let geo = conv_geom_of(cx.attrs(), &[n, c, h, wd], wt.shape(), &[n, o, oh, ow])?;
    let (kh, kw) = (geo.kernel[0], geo.kernel[1]);
    let taps = kh * kw;
    // Tap-major weights: packed[t][ch] = W[ch][0][t].
    let wv = wt.to_f64_vec();
    let mut packed = Vec::with_capacity(taps * c * 4);
    for t in 0..taps {
        for ch in 0..c {
            packed.extend_from_slice(&(wv[ch * taps + t] as f32).to_le_bytes());
        }
    }
    let wbuf = lw.data(packed)?;
    let zeros = lw.data(vec![0u8; wd * c * 4])?;
    let mut bufs = vec![x.buf, wbuf, zeros, out.buf];
    let bias_arg = cx.ins.get(2).and_then(|b| b.as_ref()).map(|b| {
        bufs.push(b.buf);
        bufs.len() - 1
    });
    let res_arg = if cx.node.op == "cpucc.FusedConv" {
        cx.ins.get(3).and_then(|r| r.as_ref()).map(|r| {
            bufs.push(r.buf);
            bufs.len() - 1
        })
    } else {
        None
    };
    let act = activation(cx.attrs())?;
    let (lo, hi) = interior(&geo, wd, ow);
    lw.note_kernel(format!(
        "depthwise nhwc f32x4 {kh}x{kw} stride {:?} dilation {:?}, interior columns {lo}..{hi} of {ow}",
        geo.strides, geo.dil
    ));
    emit(
        lw,
        bufs,
        bias_arg,
        res_arg,
        act,
        &geo,
        (n, h, wd, c),
        (oh, ow),
        Mode::Conv,
    )
}

/// The row kernel over `bufs` = [x, tap-major weights, pad row, out, bias?,
/// residual?].
#[allow(clippy::too_many_arguments)]
fn emit(
    lw: &mut Lower,
    bufs: Vec<crate::codegen::lower::Buf>,
    bias_arg: Option<usize>,
    res_arg: Option<usize>,
    act: Act,
    geo: &ConvGeom,
    (n, h, wd, c): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
    mode: Mode,
) -> Result<()> {
    let (kh, kw) = (geo.kernel[0], geo.kernel[1]);
    let (lo, hi) = interior(geo, wd, ow);
    let (s0, s1) = (geo.strides[0] as i64, geo.strides[1] as i64);
    let (d0, d1) = (geo.dil[0] as i64, geo.dil[1] as i64);
    let (p0, p1) = (geo.pad0[0] as i64, geo.pad0[1] as i64);
    let pix = (c * 4) as i64;
    let row_bytes = wd as i64 * pix;
    let orow = (c * 4) as i64;
    let fast = zdepthwise::fits(lw, kh, act)
        .then(|| {
            zdepthwise::define(
                lw,
                &zdepthwise::Shape {
                    kh,
                    kw,
                    c,
                    s1,
                    d1,
                    p1,
                    bias: bias_arg.is_some(),
                    res: res_arg.is_some(),
                    act,
                    max: mode == Mode::Max,
                },
            )
        })
        .transpose()?;
    let callees: Vec<_> = fast.into_iter().collect();
    lw.kernel_calling(bufs, n * oh, false, &callees, |kb, refs| {
        let (xp, wp, zp, op) = (kb.arg(0), kb.arg(1), kb.arg(2), kb.arg(3));
        let bp = bias_arg.map(|j| kb.arg(j));
        let rp = res_arg.map(|j| kb.arg(j));
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let img = kb.b.ins().udiv_imm_u(item, oh as i64);
            let r = kb.b.ins().urem_imm_u(item, oh as i64);
            // Each tap row's input row, or the zero row.
            let ximg = kb.gep(xp, img, h as i64 * row_bytes);
            let ih0 = kb.muli(r, s0);
            let rows: Vec<Value> = (0..kh as i64)
                .map(|a| {
                    let ih = kb.addi(ih0, a * d0 - p0);
                    let ok = kb.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, ih, h as i64);
                    let real = kb.gep(ximg, ih, row_bytes);
                    kb.b.ins().select(ok, real, zp)
                })
                .collect();
            let orow_p = kb.gep(op, item, ow as i64 * orow);
            let rrow_p = rp.map(|p| kb.gep(p, item, ow as i64 * orow));
            let cx = Cols {
                mode,
                kw,
                w: wp,
                bias: bp,
                c,
                rows: &rows,
                zero: zp,
                s1,
                d1,
                p1,
                iw: wd as i64,
                pix,
                orow,
                out: orow_p,
                res: rrow_p,
                act,
            };
            cx.range(kb, 0, lo, 1, true);
            if let Some(&f) = refs.first() {
                // [weights, bias, tap rows...] for the machine-code interior.
                let slot = kb.b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    ((2 + kh) * 8) as u32,
                    3,
                ));
                let z = kb.i(0);
                let ptrs = [wp, bp.unwrap_or(z)]
                    .into_iter()
                    .chain(rows.iter().copied());
                for (i, v) in ptrs.enumerate() {
                    kb.b.ins().stack_store(I64, v, slot, (i * 8) as i32);
                }
                let arr = kb.b.ins().stack_addr(I64, slot, 0);
                let (j0, j1) = (kb.i(lo as i64), kb.i(hi as i64));
                let res = rrow_p.unwrap_or(z);
                kb.b.ins().call(f, &[arr, orow_p, res, j0, j1]);
            } else {
                let ilo = cx.range(kb, lo, hi, UNROLL, false);
                cx.range_dyn(kb, ilo, hi);
            }
            cx.range(kb, hi, ow, 1, true);
        });
    })
}

/// `max(acc, v)` where a NaN operand yields the other one.
fn max_skipping_nan(kb: &mut Kb, acc: Value, v: Value) -> Value {
    let m = kb.b.ins().fmax(acc, v);
    let acc_nan = kb.b.ins().fcmp(FloatCC::Unordered, acc, acc);
    let t = kb.sel(acc_nan, v, m);
    let v_nan = kb.b.ins().fcmp(FloatCC::Unordered, v, v);
    kb.sel(v_nan, acc, t)
}

/// An output row's operands.
struct Cols<'a> {
    mode: Mode,
    kw: usize,
    /// Tap-major weights and the bias (if any).
    w: Value,
    bias: Option<Value>,
    c: usize,
    /// Per tap row: the input row (or the zero row).
    rows: &'a [Value],
    zero: Value,
    s1: i64,
    d1: i64,
    p1: i64,
    iw: i64,
    pix: i64,
    orow: i64,
    out: Value,
    res: Option<Value>,
    act: Act,
}

impl Cols<'_> {
    /// Outputs `[lo, hi)` in groups of `u` (a multiple of `u` long from
    /// `lo`); returns where the grouped loop stopped.
    fn range(&self, kb: &mut Kb, lo: usize, hi: usize, u: usize, checked: bool) -> Value {
        let full = lo + (hi.saturating_sub(lo)) / u * u;
        let lo_v = kb.i(lo as i64);
        let hi_v = kb.i(full as i64);
        if full > lo {
            kb.for_range(lo_v, hi_v, u as i64, |kb, j| {
                self.outputs(kb, j, u, checked)
            });
        }
        hi_v
    }

    /// The interior's remainder, one output at a time.
    fn range_dyn(&self, kb: &mut Kb, lo: Value, hi: usize) {
        let hi_v = kb.i(hi as i64);
        kb.for_range(lo, hi_v, 1, |kb, j| self.outputs(kb, j, 1, false));
    }

    /// Outputs `j .. j+u` of the row, every channel: the channel loop is
    /// inside so each output pixel's channels stream through consecutive
    /// cache lines (the weights, `KH*KW*C` floats, stay in L1).
    fn outputs(&self, kb: &mut Kb, j: Value, u: usize, checked: bool) {
        let kw = self.kw;
        // Per (tap column, output): the pixel's byte offset in a row and,
        // at the edges, the zero row instead where the column is outside.
        let mut cols = Vec::with_capacity(kw * u);
        for b in 0..kw {
            let iw0 = kb.muli(j, self.s1);
            let iw0 = kb.addi(iw0, b as i64 * self.d1 - self.p1);
            for q in 0..u {
                let iw = kb.addi(iw0, q as i64 * self.s1);
                let ok = if checked {
                    Some(kb.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, iw, self.iw))
                } else {
                    None
                };
                let off = kb.muli(iw, self.pix);
                cols.push((off, ok));
            }
        }
        let z = kb.i(0);
        let cv = kb.i(self.c as i64);
        kb.for_vec(z, cv, 4, |kb, ch, lanes| {
            let ty = if lanes == 1 { F32 } else { F32X4 };
            let cb = kb.muli(ch, 4);
            let wch = kb.b.ins().iadd(self.w, cb);
            let bias = match (self.mode, self.bias) {
                (Mode::Max, _) => kb.constant(ty, f64::NAN),
                (Mode::Conv, Some(p)) => {
                    let a = kb.b.ins().iadd(p, cb);
                    kb.b.ins().load(ty, mem(), a, 0)
                }
                (Mode::Conv, None) => kb.constant(ty, 0.0),
            };
            let zc = kb.b.ins().iadd(self.zero, cb);
            let mut acc = vec![bias; u];
            for (a, &row) in self.rows.iter().enumerate() {
                let rowc = kb.b.ins().iadd(row, cb);
                for b in 0..kw {
                    let t = a * kw + b;
                    let wgt = (self.mode == Mode::Conv)
                        .then(|| kb.b.ins().load(ty, mem(), wch, (t * self.c * 4) as i32));
                    for (q, slot) in acc.iter_mut().enumerate() {
                        let (off, ok) = cols[b * u + q];
                        let real = kb.b.ins().iadd(rowc, off);
                        let addr = match ok {
                            Some(ok) => kb.b.ins().select(ok, real, zc),
                            None => real,
                        };
                        let v = kb.b.ins().load(ty, mem(), addr, 0);
                        *slot = match wgt {
                            Some(wgt) => kb.fmadd(v, wgt, *slot),
                            None => max_skipping_nan(kb, *slot, v),
                        };
                    }
                }
            }
            for (q, v) in acc.into_iter().enumerate() {
                let jq = kb.addi(j, q as i64);
                let off = kb.muli(jq, self.orow);
                let off = kb.b.ins().iadd(off, cb);
                let mut v = v;
                if let Some(rp) = self.res {
                    let a = kb.b.ins().iadd(rp, off);
                    let r = kb.b.ins().load(ty, mem(), a, 0);
                    v = kb.b.ins().fadd(v, r);
                }
                let v = self.act.apply(kb, v);
                let a = kb.b.ins().iadd(self.out, off);
                kb.b.ins().store(mem(), v, a, 0);
            }
        });
    }
}
