//! cpucc's own fused ops, produced by the `fuse` pass (see ARCHITECTURE.md,
//! "Fused ops"). Their reference semantics run the standard ops they replace
//! through the op table, step by step, so a fused graph evaluates to exactly
//! the values of the graph it came from (up to bias/BatchNorm folding):
//!
//! - `cpucc.FusedConv`, `cpucc.FusedGemm`, `cpucc.FusedMatMul`: the base op's
//!   inputs and attributes, then `y = act(op(x) [+ bias] [+ residual])`.
//!   Input 2 is the base op's bias (Conv `B`, Gemm `C`) or, for MatMul, an
//!   optional `[N]` bias; input 3 is an optional residual of the output's
//!   exact type. Attributes `activation` (string, "" for none), `act_alpha`,
//!   `act_beta` (floats; LeakyRelu alpha, HardSigmoid alpha/beta, Clip
//!   min/max with absent bounds ±inf).
//! - `cpucc.Elementwise`: a chain of elementwise steps; see [`Step`].

use super::{EvalCtx, InferCtx, OpTable, lookup};
use crate::error::{Error, Result};
use crate::ir::{Attr, Attrs, Tensor, ValueType};

/// Activations an epilogue may apply, with their defaults for `act_alpha`
/// and `act_beta`.
const ACTIVATIONS: &[(&str, f32, f32)] = &[
    ("", 0.0, 0.0),
    ("Relu", 0.0, 0.0),
    ("Clip", f32::NEG_INFINITY, f32::INFINITY),
    ("Sigmoid", 0.0, 0.0),
    ("HardSwish", 0.0, 0.0),
    ("HardSigmoid", 0.2, 0.5),
    ("Gelu", 0.0, 0.0),
    ("GeluTanh", 0.0, 0.0),
    ("Tanh", 0.0, 0.0),
    ("LeakyRelu", 0.01, 0.0),
];

const EPILOGUE_ATTRS: [&str; 3] = ["activation", "act_alpha", "act_beta"];

/// The opset the epilogue's standalone ops are evaluated at (Clip with
/// bounds as inputs, Gelu with `approximate`).
const ACT_OPSET: i64 = 20;

fn base_op(op: &str) -> &'static str {
    match op {
        "cpucc.FusedConv" => "Conv",
        "cpucc.FusedGemm" => "Gemm",
        _ => "MatMul",
    }
}

/// How many leading inputs belong to the base op.
fn base_arity(base: &str) -> usize {
    if base == "MatMul" { 2 } else { 3 }
}

fn base_attrs(attrs: &Attrs) -> Attrs {
    let mut a = attrs.clone();
    for k in EPILOGUE_ATTRS {
        a.0.remove(k);
    }
    a
}

/// The activation name and its two parameters, defaults applied.
fn activation(attrs: &Attrs) -> Result<(&str, f32, f32)> {
    let name = attrs.string("activation", "")?;
    let Some(&(_, da, db)) = ACTIVATIONS.iter().find(|(n, _, _)| *n == name) else {
        bail!(
            Invalid,
            "attribute 'activation' must be one of {:?}, found {name:?}",
            ACTIVATIONS.iter().map(|a| a.0).collect::<Vec<_>>()
        );
    };
    Ok((
        name,
        attrs.float("act_alpha", da)?,
        attrs.float("act_beta", db)?,
    ))
}

/// Runs one standard op on known tensors (inference, then evaluation), as
/// the interpreter would for a standalone node.
pub(super) fn step(
    op: &str,
    attrs: &Attrs,
    opset: i64,
    inputs: &[Option<&Tensor>],
) -> Result<Tensor> {
    let types: Vec<Option<ValueType>> = inputs.iter().map(|t| t.map(ValueType::of)).collect();
    let ctx = InferCtx {
        attrs,
        opset,
        inputs: types.iter().map(Option::as_ref).collect(),
        consts: inputs.to_vec(),
        names: vec![None; inputs.len()],
        num_outputs: 1,
    };
    let out = super::infer(lookup(op)?, &ctx)?;
    let mut r = super::eval(op, attrs, opset, inputs.to_vec(), &out[..1])?;
    Ok(r.swap_remove(0))
}

fn head<T: Clone>(v: &[T], n: usize) -> Vec<T> {
    v[..n.min(v.len())].to_vec()
}

fn epilogue_infer(c: &InferCtx, op: &str) -> Result<Vec<ValueType>> {
    let base = base_op(op);
    let n = base_arity(base);
    ensure!(
        c.num_inputs() <= 4,
        Invalid,
        "{op} takes at most 4 inputs, found {}",
        c.num_inputs()
    );
    let attrs = base_attrs(c.attrs);
    let ctx = InferCtx {
        attrs: &attrs,
        opset: c.opset,
        inputs: head(&c.inputs, n),
        consts: head(&c.consts, n),
        names: head(&c.names, n),
        num_outputs: 1,
    };
    let y = super::infer(lookup(base)?, &ctx)?.swap_remove(0);
    ensure!(
        y.dtype.is_float(),
        Invalid,
        "{op} needs a float type, found {}",
        y.dtype
    );
    if base == "MatMul" && c.has(2) {
        let b = c.input(2)?;
        let cols = y.shape.last().copied().unwrap_or(1);
        ensure!(
            b.dtype == y.dtype && b.shape == [cols],
            Invalid,
            "bias must be {}[{cols}], found {b}",
            y.dtype
        );
    }
    if c.has(3) {
        let r = c.input(3)?;
        ensure!(
            *r == y,
            Invalid,
            "residual must have the output's type {y}, found {r}"
        );
    }
    activation(c.attrs)?;
    Ok(vec![y])
}

fn apply_activation(y: Tensor, attrs: &Attrs) -> Result<Tensor> {
    let (name, alpha, beta) = activation(attrs)?;
    let mut a = Attrs::default();
    let op = match name {
        "" => return Ok(y),
        "Clip" => {
            let lo = Tensor::from_f64s(y.dtype(), &[], &[alpha as f64])?;
            let hi = Tensor::from_f64s(y.dtype(), &[], &[beta as f64])?;
            return step("Clip", &a, ACT_OPSET, &[Some(&y), Some(&lo), Some(&hi)]);
        }
        "HardSigmoid" => {
            a.set("alpha", Attr::Float(alpha));
            a.set("beta", Attr::Float(beta));
            "HardSigmoid"
        }
        "LeakyRelu" => {
            a.set("alpha", Attr::Float(alpha));
            "LeakyRelu"
        }
        "Gelu" | "GeluTanh" => {
            let approx = if name == "Gelu" { "none" } else { "tanh" };
            a.set("approximate", Attr::String(approx.into()));
            "Gelu"
        }
        other => other,
    };
    step(op, &a, ACT_OPSET, &[Some(&y)])
}

fn epilogue_eval(c: &EvalCtx, op: &str) -> Result<Vec<Tensor>> {
    let base = base_op(op);
    let n = base_arity(base);
    let attrs = base_attrs(c.attrs);
    let ins: Vec<Option<&Tensor>> = (0..n).map(|i| c.opt(i)).collect();
    let mut y = step(base, &attrs, c.opset, &ins)?;
    let none = Attrs::default();
    if base == "MatMul"
        && let Some(b) = c.opt(2)
    {
        y = step("Add", &none, c.opset, &[Some(&y), Some(b)])?;
    }
    if let Some(r) = c.opt(3) {
        y = step("Add", &none, c.opset, &[Some(&y), Some(r)])?;
    }
    Ok(vec![apply_activation(y, c.attrs)?])
}

// ---------------------------------------------------------------- Elementwise

/// One step of a `cpucc.Elementwise` chain: a standard op applied to node
/// inputs (`r >= 0`) and earlier steps' results (`r < 0` is step `-r-1`).
/// `alpha`/`beta` hold the op's float attributes (see [`STEP_ATTRS`]).
pub struct Step<'a> {
    pub op: &'a str,
    pub args: &'a [i64],
    pub alpha: f32,
    pub beta: f32,
}

/// Ops a chain may contain, with the attributes `alpha` and `beta` carry
/// for them (`""`: none) and those attributes' defaults.
pub const STEP_OPS: &[(&str, &str, f32, &str, f32)] = &[
    ("Add", "", 0.0, "", 0.0),
    ("Sub", "", 0.0, "", 0.0),
    ("Mul", "", 0.0, "", 0.0),
    ("Div", "", 0.0, "", 0.0),
    ("Pow", "", 0.0, "", 0.0),
    ("Max", "", 0.0, "", 0.0),
    ("Min", "", 0.0, "", 0.0),
    ("PRelu", "", 0.0, "", 0.0),
    ("Clip", "", 0.0, "", 0.0),
    ("Relu", "", 0.0, "", 0.0),
    ("Neg", "", 0.0, "", 0.0),
    ("Abs", "", 0.0, "", 0.0),
    ("Exp", "", 0.0, "", 0.0),
    ("Log", "", 0.0, "", 0.0),
    ("Sqrt", "", 0.0, "", 0.0),
    ("Reciprocal", "", 0.0, "", 0.0),
    ("Tanh", "", 0.0, "", 0.0),
    ("Sigmoid", "", 0.0, "", 0.0),
    ("Erf", "", 0.0, "", 0.0),
    ("Sin", "", 0.0, "", 0.0),
    ("Cos", "", 0.0, "", 0.0),
    ("Floor", "", 0.0, "", 0.0),
    ("Ceil", "", 0.0, "", 0.0),
    ("Round", "", 0.0, "", 0.0),
    ("Softplus", "", 0.0, "", 0.0),
    ("Softsign", "", 0.0, "", 0.0),
    ("Mish", "", 0.0, "", 0.0),
    ("HardSwish", "", 0.0, "", 0.0),
    ("LeakyRelu", "alpha", 0.01, "", 0.0),
    ("Elu", "alpha", 1.0, "", 0.0),
    ("Celu", "alpha", 1.0, "", 0.0),
    ("ThresholdedRelu", "alpha", 1.0, "", 0.0),
    ("HardSigmoid", "alpha", 0.2, "beta", 0.5),
    ("Selu", "alpha", 1.673_263_2, "gamma", 1.050_701),
];

/// A chain op's (alpha name, alpha default, beta name, beta default).
pub fn step_attr_names(op: &str) -> Option<(&'static str, f32, &'static str, f32)> {
    STEP_OPS
        .iter()
        .find(|s| s.0 == op)
        .map(|&(_, a, da, b, db)| (a, da, b, db))
}

fn parse_steps(attrs: &Attrs) -> Result<Vec<Step<'_>>> {
    let req = |name: &str| Error::Invalid(format!("missing required attribute '{name}'"));
    let ops = attrs.strings_opt("ops")?.ok_or_else(|| req("ops"))?;
    let arity = attrs.ints_opt("arity")?.ok_or_else(|| req("arity"))?;
    let args = attrs.ints_opt("args")?.ok_or_else(|| req("args"))?;
    let alpha = attrs.floats_opt("alpha")?.ok_or_else(|| req("alpha"))?;
    let beta = attrs.floats_opt("beta")?.ok_or_else(|| req("beta"))?;
    ensure!(!ops.is_empty(), Invalid, "attribute 'ops' is empty");
    ensure!(
        arity.len() == ops.len() && alpha.len() == ops.len() && beta.len() == ops.len(),
        Invalid,
        "attributes 'arity', 'alpha' and 'beta' need one value per step ({})",
        ops.len()
    );
    ensure!(
        arity.iter().all(|&a| (1..=8).contains(&a))
            && arity.iter().sum::<i64>() == args.len() as i64,
        Invalid,
        "attribute 'arity' {arity:?} does not match the {} args",
        args.len()
    );
    let mut steps = Vec::with_capacity(ops.len());
    let mut at = 0;
    for (i, op) in ops.iter().enumerate() {
        ensure!(
            step_attr_names(op).is_some(),
            Unsupported,
            "step {i}: op {op:?} cannot be part of an elementwise chain"
        );
        let n = arity[i] as usize;
        steps.push(Step {
            op,
            args: &args[at..at + n],
            alpha: alpha[i],
            beta: beta[i],
        });
        at += n;
    }
    Ok(steps)
}

fn step_attrs(s: &Step) -> Attrs {
    let mut a = Attrs::default();
    if let Some((an, _, bn, _)) = step_attr_names(s.op) {
        if !an.is_empty() {
            a.set(an, Attr::Float(s.alpha));
        }
        if !bn.is_empty() {
            a.set(bn, Attr::Float(s.beta));
        }
    }
    a
}

/// Resolves a step operand to an index into the node inputs or the results.
fn operand<T: Copy>(r: i64, inputs: &[T], results: &[T], step: usize) -> Result<T> {
    if r >= 0 {
        inputs.get(r as usize).copied()
    } else if ((-r - 1) as usize) < step {
        results.get((-r - 1) as usize).copied()
    } else {
        None
    }
    .ok_or_else(|| Error::Invalid(format!("step {step}: operand {r} does not exist yet")))
}

fn elementwise_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let steps = parse_steps(c.attrs)?;
    let inputs = (0..c.num_inputs())
        .map(|i| c.input(i))
        .collect::<Result<Vec<_>>>()?;
    let mut results: Vec<ValueType> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let ins = s
            .args
            .iter()
            .map(|&r| {
                if r >= 0 {
                    operand(r, &inputs, &[], i).cloned()
                } else {
                    let refs: Vec<&ValueType> = results.iter().collect();
                    operand(r, &[], &refs, i).cloned()
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let attrs = step_attrs(s);
        let ctx = InferCtx {
            attrs: &attrs,
            opset: c.opset,
            inputs: ins.iter().map(Some).collect(),
            consts: vec![None; ins.len()],
            names: vec![None; ins.len()],
            num_outputs: 1,
        };
        let ty = (lookup(s.op)?.infer)(&ctx)
            .map_err(|e| e.in_node(&format!("step {i}"), s.op))?
            .swap_remove(0);
        ensure!(
            ty.dtype.is_float(),
            Invalid,
            "step {i} ({}) yields {}, chains are float-only",
            s.op,
            ty.dtype
        );
        results.push(ty);
    }
    Ok(vec![results.pop().expect("at least one step")])
}

fn elementwise_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let steps = parse_steps(c.attrs)?;
    let inputs = (0..c.inputs.len())
        .map(|i| c.input(i))
        .collect::<Result<Vec<_>>>()?;
    let mut results: Vec<Tensor> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let ins = s
            .args
            .iter()
            .map(|&r| {
                if r >= 0 {
                    operand(r, &inputs, &[], i)
                } else {
                    let refs: Vec<&Tensor> = results.iter().collect();
                    operand(r, &[], &refs, i)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let ins: Vec<Option<&Tensor>> = ins.into_iter().map(Some).collect();
        let y = step(s.op, &step_attrs(s), c.opset, &ins)
            .map_err(|e| e.in_node(&format!("step {i}"), s.op))?;
        results.push(y);
    }
    Ok(vec![results.pop().expect("at least one step")])
}

pub fn register(t: &mut OpTable) {
    t.add(
        "cpucc.FusedConv",
        |c| epilogue_infer(c, "cpucc.FusedConv"),
        |c| epilogue_eval(c, "cpucc.FusedConv"),
    );
    t.add(
        "cpucc.FusedGemm",
        |c| epilogue_infer(c, "cpucc.FusedGemm"),
        |c| epilogue_eval(c, "cpucc.FusedGemm"),
    );
    t.add(
        "cpucc.FusedMatMul",
        |c| epilogue_infer(c, "cpucc.FusedMatMul"),
        |c| epilogue_eval(c, "cpucc.FusedMatMul"),
    );
    t.add("cpucc.Elementwise", elementwise_infer, elementwise_eval);
}
