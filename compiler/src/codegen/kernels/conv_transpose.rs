//! ConvTranspose (any spatial rank, groups, strides, dilations, pads,
//! auto_pad, output_padding, output_shape — geometry from the interpreter's
//! `transposed_setup`) in gather form: output position o receives x at
//! i = (o + begin - k * dilation) / stride for every kernel offset k where
//! that division is exact and i is inside the input. One work item per
//! output row (batch, channel, all spatial dims but the last); scalar code.

use crate::codegen::nest::row_major;
use cranelift_codegen::ir::InstBuilder;
use cranelift_codegen::ir::types::I8;

use super::taps::{Dim, Direction, taps};
use super::{NodeCx, Table};
use crate::codegen::builder::Elt;
use crate::codegen::lower::Lower;
use crate::error::Result;
use crate::ops::conv::transposed_setup;

pub fn register(t: &mut Table) {
    t.add(&["ConvTranspose"], conv_transpose);
}

fn conv_transpose(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (x, w, out) = (cx.input(0)?, cx.input(1)?, cx.out(0));
    let bias = cx.ins.get(2).and_then(|o| o.clone());
    let t = transposed_setup(cx.attrs(), &x.ty.shape, &w.ty.shape)?;
    let (nb, c, mg) = (x.ty.shape[0], x.ty.shape[1], w.ty.shape[1]);
    let cg = c / t.group;
    let m = mg * t.group;
    let nd = t.out.len();
    let rows = nb * m * t.out[..nd - 1].iter().product::<usize>();
    let last = t.out[nd - 1];
    if rows * last == 0 {
        return Ok(());
    }
    let xs = row_major(&x.ty.shape);
    let ws = row_major(&w.ty.shape);
    let mut obox = vec![nb, m];
    obox.extend(&t.out[..nd - 1]);
    let dt = x.ty.dtype;
    let esz = dt.size_bytes() as i64;
    let mut bufs = vec![x.buf, w.buf, out.buf];
    if let Some(b) = &bias {
        bufs.push(b.buf);
    }
    lw.kernel(bufs, rows, |kb| {
        let (xp, wp, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let bp = bias.as_ref().map(|_| kb.arg(3));
        let ty = Elt(dt).compute(1);
        let (bg, e) = (kb.begin, kb.end);
        kb.for_range(bg, e, 1, |kb, row| {
            // row = ((b * m + mo) * out[0] + o0) ... over obox.
            let mut co = vec![row; obox.len()];
            let mut rem = row;
            for d in (1..obox.len()).rev() {
                co[d] = kb.b.ins().urem_imm_u(rem, obox[d] as i64);
                rem = kb.b.ins().udiv_imm_u(rem, obox[d] as i64);
            }
            co[0] = rem;
            let (b, mo) = (co[0], co[1]);
            let g = kb.b.ins().udiv_imm_u(mo, mg as i64);
            let ml = kb.b.ins().urem_imm_u(mo, mg as i64);
            let (z, ln) = (kb.i(0), kb.i(last as i64));
            kb.for_range(z, ln, 1, |kb, ol| {
                let mut dims = Vec::with_capacity(nd);
                for d in 0..nd {
                    dims.push(Dim {
                        o: if d == nd - 1 { ol } else { co[2 + d] },
                        begin: t.begin[d],
                        stride: t.strides[d] as i64,
                        dil: t.dilations[d] as i64,
                        in_len: x.ty.shape[2 + d] as i64,
                        k_len: t.kernel[d] as i64,
                        x_st: xs[2 + d],
                        w_st: ws[2 + d],
                    });
                }
                let init = match bp {
                    Some(bp) => {
                        let a = kb.gep(bp, mo, esz);
                        kb.load_elt(dt, a, 1)
                    }
                    None => kb.constant(ty, 0.0),
                };
                let acc = kb.var(ty, init);
                let cgv = kb.i(cg as i64);
                kb.for_range(z, cgv, 1, |kb, ci| {
                    // Input channel g * cg + ci; weight [channel][ml][k..].
                    let ch = kb.muli(g, cg as i64);
                    let ch = kb.add(ch, ci);
                    let xo = kb.muli(b, xs[0]);
                    let xc = kb.muli(ch, xs[1]);
                    let xo = kb.add(xo, xc);
                    let wo = kb.muli(ch, ws[0]);
                    let wm = kb.muli(ml, ws[1]);
                    let wo = kb.add(wo, wm);
                    let ok = kb.b.ins().iconst(I8, 1);
                    taps(
                        kb,
                        &dims,
                        Direction::Transposed,
                        xo,
                        wo,
                        ok,
                        &mut |kb, xo, wo| {
                            let xa = kb.gep(xp, xo, esz);
                            let wa = kb.gep(wp, wo, esz);
                            let xv = kb.load_elt(dt, xa, 1);
                            let wv = kb.load_elt(dt, wa, 1);
                            let s = kb.b.use_var(acc);
                            let s = kb.fmadd(xv, wv, s);
                            kb.b.def_var(acc, s);
                        },
                    );
                });
                let s = kb.b.use_var(acc);
                let o = kb.muli(row, last as i64);
                let o = kb.add(o, ol);
                let oa = kb.gep(op, o, esz);
                kb.store_elt(dt, s, oa, 1);
            });
        });
    })
}
