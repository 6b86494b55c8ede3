//! Channels-last nodes (attribute `layout = "NHWC"`, set by the layout
//! pass) for kernels that only have a channels-first form: the data inputs
//! are transposed into workspace scratch, the NCHW kernel runs, and its
//! result is transposed into the NHWC output. Convolutions, the hot path,
//! do not come here: they read NHWC directly.

use super::NodeCx;
use crate::codegen::lower::{Lower, Operand};
use crate::codegen::nest::{self, Access};
use crate::error::Result;
use crate::ir::{Attrs, Node, ValueType};
use crate::ops::nhwc;

/// Element strides of an NHWC tensor, indexed in NCHW order.
fn nhwc_strides_nchw_order(nhwc: &[usize]) -> Vec<i64> {
    let (h, w, c) = (nhwc[1] as i64, nhwc[2] as i64, nhwc[3] as i64);
    vec![h * w * c, 1, w * c, c]
}

fn to_nchw(s: &[usize]) -> Vec<usize> {
    vec![s[0], s[3], s[1], s[2]]
}

/// Whether `cx` is an NHWC node this adapter must wrap.
pub fn wraps(cx: &NodeCx) -> bool {
    nhwc::applies(cx.attrs()) && cx.attrs().string("layout", "NCHW").ok() == Some("NHWC")
}

/// Lowers an NHWC node through `inner`, the op's NCHW lowering.
pub fn adapt(lw: &mut Lower, cx: &NodeCx, inner: super::LowerFn) -> Result<()> {
    let data = nhwc::data_inputs(&cx.node.op).unwrap_or(&[]);
    let mut ins = cx.ins.clone();
    for &i in data {
        let Some(Some(x)) = cx.ins.get(i) else {
            continue;
        };
        let shape = to_nchw(&x.ty.shape);
        let bytes = x.ty.numel() * x.ty.dtype.size_bytes();
        let t = Operand {
            buf: lw.scratch(bytes),
            ty: ValueType::new(x.ty.dtype, shape.clone()),
        };
        let src = Access {
            buf: x.buf,
            dt: x.ty.dtype,
            offset: 0,
            strides: nhwc_strides_nchw_order(&x.ty.shape),
        };
        nest::emit(
            lw,
            &shape,
            &[src],
            &[Access::dense(t.buf, t.ty.dtype, &shape)],
            true,
            |_, v, _| vec![v[0]],
        )?;
        ins[i] = Some(t);
    }
    let out = cx.out(0);
    let oshape = to_nchw(&out.ty.shape);
    let tmp = Operand {
        buf: lw.scratch(out.ty.numel() * out.ty.dtype.size_bytes()),
        ty: ValueType::new(out.ty.dtype, oshape.clone()),
    };
    let mut attrs: Attrs = cx.node.attrs.clone();
    attrs.0.remove("layout");
    let node = Node {
        attrs,
        ..cx.node.clone()
    };
    let inner_cx = NodeCx {
        node: &node,
        ins,
        outs: vec![tmp.clone()],
        consts: cx.consts.clone(),
    };
    inner(lw, &inner_cx)?;
    let dst = Access {
        buf: out.buf,
        dt: out.ty.dtype,
        offset: 0,
        strides: nhwc_strides_nchw_order(&out.ty.shape),
    };
    nest::emit(
        lw,
        &oshape,
        &[Access::dense(tmp.buf, tmp.ty.dtype, &oshape)],
        &[dst],
        true,
        |_, v, _| vec![v[0]],
    )
}
