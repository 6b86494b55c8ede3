//! `cpucc.Elementwise`: a fused chain of elementwise steps in one loop nest.
//! Every step computes in registers; only the node's inputs are loaded and
//! only the last step's result is stored.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32, F64};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::elementwise::{FloatFn, arith2, float_fn, fpow};
use super::{NodeCx, Table};
use crate::codegen::builder::Kb;
use crate::codegen::lower::Lower;
use crate::codegen::nest::{self, Access};
use crate::error::{Error, Result};
use crate::ir::{Attr, Attrs};
use crate::ops::fused::step_attr_names;

pub fn register(t: &mut Table) {
    t.add(&["cpucc.Elementwise"], chain);
}

enum StepFn {
    Unary(FloatFn),
    Arith(&'static str),
    Pow,
    PRelu,
    Clip,
}

fn step_fn(op: &str, alpha: f32, beta: f32) -> Result<StepFn> {
    Ok(match op {
        "Add" => StepFn::Arith("Add"),
        "Sub" => StepFn::Arith("Sub"),
        "Mul" => StepFn::Arith("Mul"),
        "Div" => StepFn::Arith("Div"),
        "Max" => StepFn::Arith("Max"),
        "Min" => StepFn::Arith("Min"),
        "Pow" => StepFn::Pow,
        "PRelu" => StepFn::PRelu,
        "Clip" => StepFn::Clip,
        "Relu" | "Neg" | "Abs" => StepFn::Unary(match op {
            "Relu" => Box::new(|kb: &mut Kb, ty, x| {
                let z = kb.constant(ty, 0.0);
                let neg = kb.b.ins().fcmp(FloatCC::LessThan, x, z);
                kb.sel(neg, z, x)
            }),
            "Neg" => Box::new(|kb: &mut Kb, _, x| kb.b.ins().fneg(x)),
            _ => Box::new(|kb: &mut Kb, _, x| kb.b.ins().fabs(x)),
        }),
        _ => {
            let (an, _, bn, _) = step_attr_names(op)
                .ok_or_else(|| Error::Unsupported(format!("chain step {op}")))?;
            let mut a = Attrs::default();
            if !an.is_empty() {
                a.set(an, Attr::Float(alpha));
            }
            if !bn.is_empty() {
                a.set(bn, Attr::Float(beta));
            }
            StepFn::Unary(float_fn(op, &a)?)
        }
    })
}

fn chain(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let a = cx.attrs();
    let req = |n: &str| Error::Invalid(format!("missing attribute '{n}'"));
    let ops = a.strings_opt("ops")?.ok_or_else(|| req("ops"))?;
    let arity = a.ints_opt("arity")?.ok_or_else(|| req("arity"))?;
    let args = a.ints_opt("args")?.ok_or_else(|| req("args"))?;
    let alpha = a.floats_opt("alpha")?.ok_or_else(|| req("alpha"))?;
    let beta = a.floats_opt("beta")?.ok_or_else(|| req("beta"))?;
    let dt = cx.out(0).ty.dtype;
    if !dt.is_float() {
        bail!(Unsupported, "elementwise chain on {dt}");
    }
    let mut steps = Vec::with_capacity(ops.len());
    let mut at = 0usize;
    for (i, op) in ops.iter().enumerate() {
        let n = *arity.get(i).ok_or_else(|| req("arity"))? as usize;
        let operands: Vec<i64> = args.get(at..at + n).ok_or_else(|| req("args"))?.to_vec();
        at += n;
        let f = step_fn(
            op,
            *alpha.get(i).unwrap_or(&0.0),
            *beta.get(i).unwrap_or(&0.0),
        )?;
        steps.push((f, operands));
    }
    let vector = !steps.iter().any(|(f, _)| matches!(f, StepFn::Pow));
    let out = cx.out(0);
    let ins: Vec<Access> = cx
        .ins
        .iter()
        .map(|o| {
            let o = o.as_ref().ok_or_else(|| req("input"))?;
            Ok(Access::broadcast(
                o.buf,
                o.ty.dtype,
                &o.ty.shape,
                &out.ty.shape,
            ))
        })
        .collect::<Result<_>>()?;
    let dst = Access::dense(out.buf, dt, &out.ty.shape);
    nest::emit(lw, &out.ty.shape, &ins, &[dst], vector, |kb, vals, _| {
        let mut res: Vec<Value> = Vec::with_capacity(steps.len());
        for (f, operands) in &steps {
            let v: Vec<Value> = operands
                .iter()
                .map(|&r| {
                    if r >= 0 {
                        vals[r as usize]
                    } else {
                        res[(-r - 1) as usize]
                    }
                })
                .collect();
            let ty = kb.b.func.dfg.value_type(v[0]);
            let y = match f {
                StepFn::Unary(g) => g(kb, ty, v[0]),
                StepFn::Arith(op) => arith2(kb, op, dt, v[0], v[1]),
                StepFn::Pow => {
                    let wide = |kb: &mut Kb, x| {
                        if ty == F32 {
                            kb.b.ins().fpromote(F64, x)
                        } else {
                            x
                        }
                    };
                    let (x, e) = (wide(kb, v[0]), wide(kb, v[1]));
                    let p = fpow(kb, x, e);
                    if ty == F32 {
                        kb.b.ins().fdemote(F32, p)
                    } else {
                        p
                    }
                }
                StepFn::PRelu => {
                    let z = kb.constant(ty, 0.0);
                    let m = kb.b.ins().fmul(v[0], v[1]);
                    let neg = kb.b.ins().fcmp(FloatCC::LessThan, v[0], z);
                    kb.sel(neg, m, v[0])
                }
                StepFn::Clip => {
                    let mut x = v[0];
                    if let Some(&lo) = v.get(1) {
                        let lt = kb.b.ins().fcmp(FloatCC::LessThan, x, lo);
                        x = kb.sel(lt, lo, x);
                    }
                    if let Some(&hi) = v.get(2) {
                        let gt = kb.b.ins().fcmp(FloatCC::GreaterThan, x, hi);
                        x = kb.sel(gt, hi, x);
                    }
                    x
                }
            };
            res.push(y);
        }
        vec![*res.last().expect("a chain has steps")]
    })
}
