//! GlobalAveragePool on channels-last data (`layout = "NHWC"`): the mean
//! over H*W of each channel, vectorized over channels (f32x4, scalar
//! tail), read in place instead of through the NCHW adapter's transposes.
//! Work items are (image, block of 64 channels).

use cranelift_codegen::ir::InstBuilder;
use cranelift_codegen::ir::types::{F32, F32X4};

use super::NodeCx;
use crate::codegen::builder::mem;
use crate::codegen::lower::Lower;
use crate::error::Result;
use crate::ir::DType;

const CBLOCK: usize = 64;

/// Whether `cx` is an f32 channels-last GlobalAveragePool.
pub fn applies(cx: &NodeCx) -> bool {
    cx.node.op == "GlobalAveragePool"
        && cx.attrs().string("layout", "NCHW").ok() == Some("NHWC")
        && cx
            .ins
            .first()
            .and_then(|x| x.as_ref())
            .is_some_and(|x| x.ty.dtype == DType::F32 && x.ty.shape.len() == 4)
}

pub fn lower(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?;
    let out = cx.out(0);
    let [n, h, w, c] = x.ty.shape[..] else {
        bail!(
            Internal,
            "NHWC GlobalAveragePool input of rank {}",
            x.ty.shape.len()
        );
    };
    let hw = h * w;
    let blocks = c.div_ceil(CBLOCK);
    lw.note_kernel("global average pool nhwc f32x4");
    lw.kernel(vec![x.buf, out.buf], n * blocks, |kb| {
        let (xp, op) = (kb.arg(0), kb.arg(1));
        let (b, e) = (kb.begin, kb.end);
        kb.for_range(b, e, 1, |kb, item| {
            let img = kb.b.ins().udiv_imm_u(item, blocks as i64);
            let blk = kb.b.ins().urem_imm_u(item, blocks as i64);
            let c0 = kb.muli(blk, CBLOCK as i64);
            let c1 = kb.addi(c0, CBLOCK as i64);
            let cmax = kb.i(c as i64);
            let lt = kb.b.ins().icmp(
                cranelift_codegen::ir::condcodes::IntCC::SignedLessThan,
                c1,
                cmax,
            );
            let c1 = kb.b.ins().select(lt, c1, cmax);
            let ximg = kb.gep(xp, img, (hw * c * 4) as i64);
            let oimg = kb.gep(op, img, (c * 4) as i64);
            kb.for_vec(c0, c1, 4, |kb, ch, lanes| {
                let ty = if lanes == 1 { F32 } else { F32X4 };
                let base = kb.gep(ximg, ch, 4);
                let zero = kb.constant(ty, 0.0);
                let acc = kb.var(ty, zero);
                let z = kb.i(0);
                let hwv = kb.i(hw as i64);
                kb.for_range(z, hwv, 1, |kb, i| {
                    let a = kb.gep(base, i, (c * 4) as i64);
                    let v = kb.b.ins().load(ty, mem(), a, 0);
                    let s = kb.b.use_var(acc);
                    let s = kb.b.ins().fadd(s, v);
                    kb.b.def_var(acc, s);
                });
                let s = kb.b.use_var(acc);
                let inv = kb.constant(ty, 1.0 / hw as f64);
                let m = kb.b.ins().fmul(s, inv);
                let a = kb.gep(oimg, ch, 4);
                kb.b.ins().store(mem(), m, a, 0);
            });
        });
    })
}
