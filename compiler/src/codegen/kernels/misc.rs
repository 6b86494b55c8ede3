//! Ops whose outputs do not depend on their input values, or only copy
//! them: Dropout in inference (identity, mask all true) and EyeLike (a
//! compile-time constant of the input's shape).

use super::{NodeCx, Table};
use crate::codegen::builder::Elt;
use crate::codegen::lower::{Lower, Operand};
use crate::codegen::nest::{self, Access};
use crate::error::Result;
use crate::ir::{Tensor, ValueType};
use crate::ops;

pub fn register(t: &mut Table) {
    t.add(&["Dropout"], dropout);
    t.add(&["EyeLike"], eye_like);
}

/// Every element of `out` set to `v`.
fn fill(lw: &mut Lower, out: &Operand, v: f64) -> Result<()> {
    let o = Access::dense(out.buf, out.ty.dtype, &out.ty.shape);
    let dt = out.ty.dtype;
    nest::emit(lw, &out.ty.shape, &[], &[o], true, |kb, _, l| {
        vec![kb.constant(Elt(dt).compute(l), v)]
    })
}

fn dropout(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    // The interpreter checks ratio and training_mode when it runs; here they
    // must be known to know the op is the identity.
    for i in 1..cx.ins.len().min(3) {
        if cx.ins[i].is_some() && cx.consts[i].is_none() {
            bail!(
                Unsupported,
                "input {i} of Dropout must be a constant for native code (training mode would need random masking)"
            );
        }
    }
    let x = cx.input(0)?;
    let probe = Tensor::zeros(x.ty.dtype, &[0]);
    let mut ins: Vec<Option<&Tensor>> = vec![Some(&probe)];
    ins.extend((1..cx.ins.len()).map(|i| cx.consts[i]));
    let tys: Vec<ValueType> = cx
        .outs
        .iter()
        .map(|o| ValueType::new(o.ty.dtype, vec![0]))
        .collect();
    ops::eval("Dropout", cx.attrs(), cx.node.opset, ins, &tys)?;
    super::copy(lw, x, cx.out(0))?;
    if let Some(mask) = cx.outs.get(1) {
        fill(lw, mask, 1.0)?;
    }
    Ok(())
}

fn eye_like(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?;
    let out = cx.out(0);
    let zeros = Tensor::zeros(x.ty.dtype, &x.ty.shape);
    let t = ops::eval(
        "EyeLike",
        cx.attrs(),
        cx.node.opset,
        vec![Some(&zeros)],
        std::slice::from_ref(&out.ty),
    )?;
    let buf = lw.tensor_data(&t[0])?;
    let src = Operand {
        buf,
        ty: out.ty.clone(),
    };
    super::copy(lw, &src, out)
}
