//! Channels-last variants of the spatial ops, selected by the attribute
//! `layout="NHWC"` that the layout pass sets. Only the *data* tensors change
//! layout: the op's data inputs and its first output are physically
//! `[N, H, W, C]`; weights, biases, statistics, scales and every attribute
//! keep their ONNX (NCHW) meaning. The reference semantics transpose the data
//! to NCHW, run the standard op and transpose back, so the interpreter checks
//! the layout pass against the same definitions.

use ndarray::{ArrayD, IxDyn};

use super::{EvalCtx, InferCtx, OpDef};
use crate::dispatch;
use crate::error::Result;
use crate::ir::{Attr, Attrs, Elem, Tensor, ValueType};

/// The attribute naming a node's data layout.
pub const ATTR: &str = "layout";

/// NHWC -> NCHW.
pub const TO_NCHW: [usize; 4] = [0, 3, 1, 2];
/// NCHW -> NHWC.
pub const TO_NHWC: [usize; 4] = [0, 2, 3, 1];

/// Whether a node's attributes select a data layout. RNN-family ops have an
/// unrelated integer `layout`; only the string form is ours.
pub fn applies(attrs: &Attrs) -> bool {
    matches!(attrs.get(ATTR), Some(Attr::String(_)))
}

/// The input slots that hold layout-bearing data for an op that accepts
/// the attribute; `None` for ops that have no channels-last form.
pub fn data_inputs(op: &str) -> Option<&'static [usize]> {
    Some(match op {
        "Conv" | "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool"
        | "BatchNormalization" | "Resize" => &[0],
        // X and the residual.
        "cpucc.FusedConv" => &[0, 3],
        _ => return None,
    })
}

/// Reads the attribute: `true` for NHWC, `false` for the explicit default.
fn is_nhwc(op: &str, attrs: &Attrs) -> Result<bool> {
    match attrs.string(ATTR, "NCHW")? {
        "NCHW" => Ok(false),
        "NHWC" => {
            ensure!(
                data_inputs(op).is_some(),
                Unsupported,
                "{op} has no channels-last form (layout=\"NHWC\")"
            );
            Ok(true)
        }
        other => bail!(
            Invalid,
            "attribute 'layout' must be \"NCHW\" or \"NHWC\", found {other:?}"
        ),
    }
}

fn without_layout(attrs: &Attrs) -> Attrs {
    let mut a = attrs.clone();
    a.0.remove(ATTR);
    a
}

fn permute_shape(shape: &[usize], perm: &[usize; 4]) -> Result<Vec<usize>> {
    ensure!(
        shape.len() == 4,
        Invalid,
        "layout=\"NHWC\" needs 4-D data, found shape {shape:?}"
    );
    Ok(perm.iter().map(|&p| shape[p]).collect())
}

fn permute_type(t: &ValueType, perm: &[usize; 4]) -> Result<ValueType> {
    Ok(ValueType::new(t.dtype, permute_shape(&t.shape, perm)?))
}

/// The tensor with its axes permuted (`out.shape[i] = t.shape[perm[i]]`).
pub fn permute(t: &Tensor, perm: &[usize]) -> Result<Tensor> {
    ensure!(
        perm.len() == t.rank(),
        Internal,
        "permutation {perm:?} for a rank-{} tensor",
        t.rank()
    );
    fn go<T: Elem>(a: &ArrayD<T>, perm: &[usize]) -> Tensor {
        T::wrap(
            a.view()
                .permuted_axes(IxDyn(perm))
                .as_standard_layout()
                .into_owned(),
        )
    }
    Ok(dispatch!(t, a => go(a, perm)))
}

pub fn infer(def: &OpDef, c: &InferCtx) -> Result<Vec<ValueType>> {
    if !is_nhwc(def.name, c.attrs)? {
        return (def.infer)(&InferCtx {
            attrs: &without_layout(c.attrs),
            opset: c.opset,
            inputs: c.inputs.clone(),
            consts: c.consts.clone(),
            names: c.names.clone(),
            num_outputs: c.num_outputs,
        });
    }
    ensure!(
        c.num_outputs <= 1,
        Unsupported,
        "layout=\"NHWC\" with more than one output"
    );
    let data = data_inputs(def.name).unwrap_or_default();
    let mut nchw = Vec::with_capacity(c.inputs.len());
    for (i, t) in c.inputs.iter().enumerate() {
        nchw.push(match t {
            Some(t) if data.contains(&i) => Some(permute_type(t, &TO_NCHW)?),
            other => other.cloned(),
        });
    }
    let attrs = without_layout(c.attrs);
    let ctx = InferCtx {
        attrs: &attrs,
        opset: c.opset,
        inputs: nchw.iter().map(Option::as_ref).collect(),
        // Constant data inputs are not passed on in NCHW form; no op in the
        // list reads its data input's value during inference.
        consts: c
            .consts
            .iter()
            .enumerate()
            .map(|(i, t)| if data.contains(&i) { None } else { *t })
            .collect(),
        names: c.names.clone(),
        num_outputs: c.num_outputs,
    };
    let mut out = (def.infer)(&ctx)?;
    out.truncate(1);
    if let Some(y) = out.first_mut() {
        *y = permute_type(y, &TO_NHWC)?;
    }
    Ok(out)
}

pub fn eval(def: &OpDef, c: &EvalCtx) -> Result<Vec<Tensor>> {
    let attrs = without_layout(c.attrs);
    if !is_nhwc(def.name, c.attrs)? {
        return (def.eval)(&EvalCtx {
            attrs: &attrs,
            opset: c.opset,
            inputs: c.inputs.clone(),
            outputs: c.outputs,
        });
    }
    let data = data_inputs(def.name).unwrap_or_default();
    let mut owned = Vec::with_capacity(c.inputs.len());
    for (i, t) in c.inputs.iter().enumerate() {
        owned.push(match t {
            Some(t) if data.contains(&i) => {
                permute_shape(t.shape(), &TO_NCHW)?;
                Some(permute(t, &TO_NCHW)?)
            }
            _ => None,
        });
    }
    let inputs = c
        .inputs
        .iter()
        .zip(&owned)
        .map(|(t, o)| o.as_ref().or(*t))
        .collect();
    let outputs = c
        .outputs
        .iter()
        .map(|t| permute_type(t, &TO_NCHW))
        .collect::<Result<Vec<_>>>()?;
    let mut out = (def.eval)(&EvalCtx {
        attrs: &attrs,
        opset: c.opset,
        inputs,
        outputs: &outputs,
    })?;
    out.truncate(1);
    if let Some(y) = out.first_mut() {
        *y = permute(y, &TO_NHWC)?;
    }
    Ok(out)
}
