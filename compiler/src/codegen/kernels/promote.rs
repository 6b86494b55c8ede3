//! Half-precision nodes (f16, bf16) of ops whose kernels compute in f32:
//! half inputs are widened into f32 workspace scratch (constants at compile
//! time), the f32 kernel runs, and its half outputs are rounded once on the
//! way back. This matches the interpreter, which also rounds only the
//! results, and is how the ML frameworks run these ops on CPUs without
//! native half arithmetic.

use super::NodeCx;
use crate::codegen::lower::{Lower, Operand};
use crate::codegen::nest::{self, Access};
use crate::error::Result;
use crate::ir::{DType, Tensor, ValueType};

/// Ops lowered this way; the rest handle their dtypes themselves.
const PROMOTED: &[&str] = &[
    "Attention",
    "Conv",
    "Gemm",
    "cpucc.FusedConv",
    "cpucc.FusedGemm",
];

fn is_half(dt: DType) -> bool {
    matches!(dt, DType::F16 | DType::BF16)
}

/// Whether `cx` is a half-precision node this adapter must wrap.
pub fn wraps(cx: &NodeCx) -> bool {
    PROMOTED.contains(&cx.node.op.as_str())
        && cx
            .ins
            .iter()
            .flatten()
            .chain(&cx.outs)
            .any(|o| is_half(o.ty.dtype))
}

fn widened(x: &Operand) -> ValueType {
    ValueType::new(DType::F32, x.ty.shape.clone())
}

/// Element-wise conversion of a whole tensor between two buffers.
fn convert(lw: &mut Lower, src: &Operand, dst: &Operand) -> Result<()> {
    let shape = [src.ty.numel()];
    nest::emit(
        lw,
        &shape,
        &[Access::dense(src.buf, src.ty.dtype, &shape)],
        &[Access::dense(dst.buf, dst.ty.dtype, &shape)],
        false,
        |_, v, _| vec![v[0]],
    )
}

/// Lowers a half-precision node through `inner` on f32 operands.
pub fn adapt(lw: &mut Lower, cx: &NodeCx, inner: super::LowerFn) -> Result<()> {
    let consts: Vec<Option<Tensor>> = cx
        .ins
        .iter()
        .zip(&cx.consts)
        .map(|(x, c)| match (x, c) {
            (Some(x), Some(t)) if is_half(x.ty.dtype) => Some(t.cast(DType::F32)),
            _ => None,
        })
        .collect();
    let mut ins = Vec::with_capacity(cx.ins.len());
    for (x, c) in cx.ins.iter().zip(&consts) {
        let Some(x) = x.as_ref().filter(|x| is_half(x.ty.dtype)) else {
            ins.push(x.clone());
            continue;
        };
        let buf = match c {
            Some(t) => lw.tensor_data(t)?,
            None => lw.scratch(x.ty.numel() * 4),
        };
        let w = Operand {
            buf,
            ty: widened(x),
        };
        if c.is_none() {
            convert(lw, x, &w)?;
        }
        ins.push(Some(w));
    }
    let outs: Vec<Operand> = cx
        .outs
        .iter()
        .map(|o| {
            if is_half(o.ty.dtype) {
                Operand {
                    buf: lw.scratch(o.ty.numel() * 4),
                    ty: widened(o),
                }
            } else {
                o.clone()
            }
        })
        .collect();
    let inner_cx = NodeCx {
        node: cx.node,
        ins,
        outs: outs.clone(),
        consts: cx
            .consts
            .iter()
            .zip(&consts)
            .map(|(c, w)| w.as_ref().or(*c))
            .collect(),
    };
    inner(lw, &inner_cx)?;
    for (o, w) in cx.outs.iter().zip(&outs) {
        if is_half(o.ty.dtype) {
            convert(lw, w, o)?;
        }
    }
    Ok(())
}
