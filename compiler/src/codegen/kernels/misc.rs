//! Ops whose outputs do not depend on their input values, or only copy
//! them: Dropout in inference (identity, mask all true; a run-time ratio
//! or training_mode is checked when the model runs) and EyeLike (a
//! compile-time constant of the input's shape).

use cranelift_codegen::ir::InstBuilder;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};

use super::{NodeCx, Table, elementwise};
use crate::codegen::builder::{Elt, Kb, mem};
use crate::codegen::lower::{Buf, Lower, Operand};
use crate::codegen::nest::{self, Access};
use crate::error::Result;
use crate::ir::{DType, Tensor, ValueType};
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
    let x = cx.input(0)?;
    let runtime: Vec<usize> = (1..cx.ins.len().min(3))
        .filter(|&i| cx.ins[i].is_some() && cx.consts[i].is_none())
        .collect();
    if runtime.is_empty() {
        // Known ratio and training_mode: the interpreter's checks decide now.
        let probe = Tensor::zeros(x.ty.dtype, &[0]);
        let mut ins: Vec<Option<&Tensor>> = vec![Some(&probe)];
        ins.extend((1..cx.ins.len()).map(|i| cx.consts[i]));
        let tys: Vec<ValueType> = cx
            .outs
            .iter()
            .map(|o| ValueType::new(o.ty.dtype, vec![0]))
            .collect();
        ops::eval("Dropout", cx.attrs(), cx.node.opset, ins, &tys)?;
    } else {
        check_inference(lw, cx)?;
    }
    super::copy(lw, x, cx.out(0))?;
    if let Some(mask) = cx.outs.get(1) {
        fill(lw, mask, 1.0)?;
    }
    Ok(())
}

/// A Dropout scalar input: known at compile time, or the kernel argument
/// it is read from when the model runs.
enum Scalar {
    Known(f64),
    Arg(usize, DType),
}

/// Run-time ratio or training_mode: the run fails with status 3 (as the
/// interpreter fails) unless 0 <= ratio < 1 and the op is the identity,
/// i.e. not training or ratio 0; random masking is not compiled.
fn check_inference(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let mut bufs = vec![Buf::Work(0)];
    let mut scalar = |i: usize, default: f64| -> Result<Scalar> {
        let Some(op) = cx.ins.get(i).and_then(|o| o.as_ref()) else {
            return Ok(Scalar::Known(default));
        };
        Ok(match cx.consts[i] {
            Some(t) => Scalar::Known(t.scalar_f64()?),
            None => {
                bufs.push(op.buf);
                Scalar::Arg(bufs.len() - 1, op.ty.dtype)
            }
        })
    };
    let (ratio, training) = (scalar(1, 0.5)?, scalar(2, 0.0)?);
    lw.kernel_checked(bufs, 1, true, |kb| {
        let load = |kb: &mut Kb, s: &Scalar| match *s {
            Scalar::Known(c) => kb.b.ins().f64const(c),
            Scalar::Arg(j, dt) => {
                let p = kb.arg(j);
                let x = kb.load_elt(dt, p, 1);
                elementwise::convert(kb, x, dt, DType::F64)
            }
        };
        let r = load(kb, &ratio);
        let t = load(kb, &training);
        let zero = kb.b.ins().f64const(0.0);
        let one = kb.b.ins().f64const(1.0);
        let ok_lo = kb.b.ins().fcmp(FloatCC::GreaterThanOrEqual, r, zero);
        let ok_hi = kb.b.ins().fcmp(FloatCC::LessThan, r, one);
        let in_range = kb.b.ins().band(ok_lo, ok_hi);
        let training = kb.b.ins().fcmp(FloatCC::NotEqual, t, zero);
        let drops = kb.b.ins().fcmp(FloatCC::GreaterThan, r, zero);
        let random = kb.b.ins().band(training, drops);
        let ok = kb.b.ins().band_not(in_range, random);
        let bad = kb.b.ins().icmp_imm_s(IntCC::Equal, ok, 0);
        kb.if_(bad, |kb| {
            let wp = kb.arg(0);
            let three = kb.i(3);
            kb.b.ins().store(mem(), three, wp, 0);
        });
    })
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
