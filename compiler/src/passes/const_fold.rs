//! Constant folding.
//!
//! 1. Every node whose present inputs are all constants (or whose outputs
//!    its input types alone decide, like Shape) is evaluated with the op
//!    table (`ops::eval`, the interpreter's semantics) and its outputs become
//!    constants, keeping their names and ids (so graph outputs keep their
//!    names). Size guard: a node is folded when its outputs total at most
//!    2^20 elements, or no more than its largest input (so reshaping,
//!    transposing or casting a weight always folds, while Expand/Tile/
//!    ConstantOfShape cannot inflate the model). A node whose evaluation
//!    fails is left for run time, where it fails the same way.
//! 2. A per-channel affine map `Y = X * s[c] + t[c]` following a Conv, a Gemm
//!    or a 2-D MatMul with constant f32 weights is folded into them when its
//!    input `X` has no other reader and is not a graph output:
//!    `W'[c] = W[c] * s[c]`, `B'[c] = B[c] * s[c] + t[c]`. The maps are
//!    BatchNormalization in inference form (`s = scale / sqrt(var + eps)`,
//!    `t = beta - mean * s`; not the per-feature form of `spatial=0`), and
//!    Mul/Add/Sub (`X - c` only) by a finite constant that broadcasts along
//!    the channel axis (1) alone: a scalar, `[C]` on a Gemm, `[C,1,1]`,
//!    `[1,C,1,1]`... The node then writes `Y` itself. Folded weights are new
//!    constants (a weight shared with another node is never changed). Conv
//!    weights are `[M, C/group, k...]`, so scaling output channel `m` is
//!    group-agnostic; ConvTranspose (`[C, M/group, k...]`) is not folded.
//!    Only f32 is folded: other dtypes would round differently. A MatMul
//!    becomes a Gemm to carry the bias.
//!
//! A node equal to one folded before (same op, attributes and input values)
//! takes that node's constants instead of new copies.
//!
//! Finally unreferenced values are dropped (`Graph::compact`).

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::{ArrayD, Axis, IxDyn};
use petgraph::stable_graph::NodeIndex;

use crate::error::Result;
use crate::ir::{Attr, DType, Graph, Tensor, ValueId};
use crate::ops;
use crate::passes::retarget;

const MAX_FOLD_ELEMS: usize = 1 << 20;

pub fn run(g: &mut Graph) -> Result<()> {
    fold_constants(g)?;
    fold_affine(g)?;
    g.compact();
    Ok(())
}

/// A node's op, opset, attributes (as text) and inputs.
type FoldKey = (String, i64, String, Vec<Option<ValueId>>);

fn fold_constants(g: &mut Graph) -> Result<()> {
    // Folded nodes by (op, opset, attributes, inputs): the same weight
    // transposed for each of its users is computed and stored once.
    let mut folded: HashMap<FoldKey, Vec<ValueId>> = HashMap::new();
    for n in g.topo_order()? {
        let node = g.node(n);
        let is_const = |v: &ValueId| g.value(*v).constant.is_some();
        let all_const = node.inputs.iter().flatten().all(is_const);
        let key = (
            node.op.clone(),
            node.opset,
            format!("{:?}", node.attrs),
            node.inputs.clone(),
        );
        if all_const
            && let Some(prev) = folded.get(&key)
            && !node.outputs.iter().any(|o| g.outputs.contains(o))
        {
            let pairs: Vec<_> = node.outputs.clone().into_iter().zip(prev.clone()).collect();
            g.remove_node(n);
            for (o, p) in pairs {
                g.replace_uses(o, p);
            }
            continue;
        }
        let results = if all_const {
            let out_elems: usize = node.outputs.iter().map(|&o| g.value(o).ty.numel()).sum();
            let in_elems = node
                .inputs
                .iter()
                .flatten()
                .map(|&v| g.value(v).ty.numel())
                .max()
                .unwrap_or(0);
            if out_elems > MAX_FOLD_ELEMS && out_elems > in_elems {
                continue;
            }
            let types: Vec<_> = node
                .outputs
                .iter()
                .map(|&o| g.value(o).ty.clone())
                .collect();
            let ins = node
                .inputs
                .iter()
                .map(|i| i.map(|i| g.value(i).constant.as_deref().expect("checked")))
                .collect();
            match ops::eval(&node.op, &node.attrs, node.opset, ins, &types) {
                Ok(r) => r,
                Err(_) => continue,
            }
        } else {
            match g.known_values(&node.op, node.opset, &node.attrs, &node.inputs) {
                Ok(Some(r)) if r.len() == node.outputs.len() => r,
                _ => continue,
            }
        };
        let outputs = node.outputs.clone();
        if all_const {
            folded.insert(key, outputs.clone());
        }
        g.remove_node(n);
        for (o, t) in outputs.into_iter().zip(results) {
            g.value_mut(o).constant = Some(Arc::new(t));
        }
    }
    Ok(())
}

/// `Y = X * scale + shift`, per channel.
struct Affine {
    scale: Vec<f64>,
    shift: Vec<f64>,
}

fn fold_affine(g: &mut Graph) -> Result<()> {
    for n in g.topo_order()? {
        let node = g.node(n);
        // The operand the weighted node may produce: BN's X, or the
        // non-constant side of a Mul/Add/Sub.
        let x = match node.op.as_str() {
            "BatchNormalization" => node.inputs.first().copied().flatten(),
            "Mul" | "Add" | "Sub" if node.inputs.len() == 2 => {
                if is_const(g, node.inputs[0]) {
                    node.inputs[1]
                } else {
                    node.inputs[0]
                }
            }
            _ => None,
        };
        let Some(x) = x else {
            continue;
        };
        let Some((p, 0)) = g.value(x).producer else {
            continue;
        };
        let producer = g.node(p);
        if !matches!(producer.op.as_str(), "Conv" | "Gemm" | "MatMul")
            || producer.outputs.len() != 1
            || g.outputs.contains(&x)
            || g.consumers(x).len() != 1
            || node.outputs.len() != 1
            || g.value(node.outputs[0]).ty != g.value(x).ty
            || g.value(x).ty.dtype != DType::F32
            || g.value(x).ty.shape.len() < 2
        {
            continue;
        }
        let channels = g.value(x).ty.shape[1];
        let Some(affine) = affine_of(g, n, x, channels)? else {
            continue;
        };
        if fold_into(g, p, &affine)? {
            let y = g.node(n).outputs[0];
            g.remove_node(n);
            retarget(g, p, 0, y);
        }
    }
    Ok(())
}

fn is_const(g: &Graph, v: Option<ValueId>) -> bool {
    v.is_some_and(|v| g.value(v).constant.is_some())
}

fn f32_const(g: &Graph, v: Option<ValueId>) -> Option<&ArrayD<f32>> {
    let t = g.value(v?).constant.as_deref()?;
    t.typed::<f32>().ok()
}

/// The per-channel map node `n` applies to `x`, when it is one.
fn affine_of(g: &Graph, n: NodeIndex, x: ValueId, channels: usize) -> Result<Option<Affine>> {
    let node = g.node(n);
    let ins = &node.inputs;
    if node.op == "BatchNormalization" {
        let per_feature = node.opset < 9 && node.attrs.int("spatial", 1)? == 0;
        if per_feature || ins.len() != 5 {
            return Ok(None);
        }
        let eps = node.attrs.float("epsilon", 1e-5)? as f64;
        let vecs: Option<Vec<Vec<f64>>> = ins[1..]
            .iter()
            .map(|&v| {
                f32_const(g, v)
                    .filter(|a| a.len() == channels)
                    .map(|a| a.iter().map(|&x| x as f64).collect())
            })
            .collect();
        let Some([scale, beta, mean, var]) = vecs.and_then(|v| <[_; 4]>::try_from(v).ok()) else {
            return Ok(None);
        };
        let s: Vec<f64> = (0..channels)
            .map(|c| scale[c] / (var[c] + eps).sqrt())
            .collect();
        let t = (0..channels).map(|c| beta[c] - mean[c] * s[c]).collect();
        return Ok(finite(Affine { scale: s, shift: t }));
    }
    if !matches!(node.op.as_str(), "Mul" | "Add" | "Sub") || ins.len() != 2 {
        return Ok(None);
    }
    let c_slot = if ins[0] == Some(x) { 1 } else { 0 };
    if node.op == "Sub" && c_slot == 0 {
        return Ok(None);
    }
    let Some(c) = f32_const(g, ins[c_slot]) else {
        return Ok(None);
    };
    let Some(per_channel) = channel_values(c, g.value(x).ty.shape.len(), channels) else {
        return Ok(None);
    };
    let ones = vec![1.0; channels];
    let zeros = vec![0.0; channels];
    Ok(finite(match node.op.as_str() {
        "Mul" => Affine {
            scale: per_channel,
            shift: zeros,
        },
        "Add" => Affine {
            scale: ones,
            shift: per_channel,
        },
        _ => Affine {
            scale: ones,
            shift: per_channel.iter().map(|v| -v).collect(),
        },
    }))
}

fn finite(a: Affine) -> Option<Affine> {
    let ok = a.scale.iter().chain(&a.shift).all(|v| v.is_finite());
    ok.then_some(a)
}

/// `c`'s value per channel when it varies along axis 1 only of a rank-`rank`
/// operand (right-aligned broadcasting, no new dimensions).
fn channel_values(c: &ArrayD<f32>, rank: usize, channels: usize) -> Option<Vec<f64>> {
    if c.ndim() > rank {
        return None;
    }
    let lead = rank - c.ndim();
    let mut along = None;
    for (j, &d) in c.shape().iter().enumerate() {
        if lead + j == 1 && d == channels {
            along = Some(j);
        } else if d != 1 {
            return None;
        }
    }
    let flat: Vec<f64> = c.iter().map(|&v| v as f64).collect();
    Some(match along {
        Some(_) => flat,
        None => vec![flat[0]; channels],
    })
}

/// Rewrites the weights of `p` (Conv, Gemm or 2-D MatMul) so that it computes
/// the affine map of its old output; false when its weights do not allow it.
fn fold_into(g: &mut Graph, p: NodeIndex, a: &Affine) -> Result<bool> {
    let node = g.node(p).clone();
    let w_id = node.inputs.get(1).copied().flatten();
    let Some(w) = f32_const(g, w_id) else {
        return Ok(false);
    };
    let bias_slot = 2;
    let b = node.inputs.get(bias_slot).copied().flatten();
    let m = a.scale.len();
    match node.op.as_str() {
        "Conv" => {
            if (b.is_some() && f32_const(g, b).is_none()) || w.shape()[0] != m {
                return Ok(false);
            }
            let w2 = scale_along(w, 0, &a.scale);
            let bias = match f32_const(g, b) {
                Some(b) => b.iter().map(|&v| v as f64).collect(),
                None => vec![0.0; m],
            };
            let b2 = affine_vec(&bias, a);
            let w_new = new_const(g, w_id.expect("checked"), w2)?;
            let mut ins = node.inputs.clone();
            ins[1] = Some(w_new);
            if b.is_some() || b2.iter().any(|&v| v != 0.0) {
                let b_new = new_const_named(g, &format!("{}_bias", node.name), vec_f32(&b2, &[m]))?;
                ins.resize(3, None);
                ins[2] = Some(b_new);
            }
            g.set_inputs(p, ins);
        }
        "Gemm" | "MatMul" => {
            let a_in = node.inputs[0].expect("required input");
            if g.value(a_in).ty.shape.len() != 2 || w.ndim() != 2 {
                return Ok(false);
            }
            let gemm = node.op == "Gemm";
            let trans_b = gemm && node.attrs.int("transB", 0)? != 0;
            let beta = if gemm {
                node.attrs.float("beta", 1.0)? as f64
            } else {
                1.0
            };
            let c_in = if gemm { b } else { None };
            if (c_in.is_some() && f32_const(g, c_in).is_none())
                || (gemm && node.opset < 7 && node.attrs.int("broadcast", 0)? == 0)
            {
                return Ok(false);
            }
            let w2 = scale_along(w, if trans_b { 0 } else { 1 }, &a.scale);
            // C' = (beta * C) * s + t, materialized at C's shape broadcast
            // against [M] so that beta becomes 1.
            let c2 = match f32_const(g, c_in) {
                Some(c) => {
                    let rows = if c.ndim() == 2 { c.shape()[0] } else { 1 };
                    let shape: Vec<usize> = if c.ndim() == 2 {
                        vec![rows, m]
                    } else {
                        vec![m]
                    };
                    let cb = c.broadcast(IxDyn(&shape)).expect("checked by inference");
                    let vals: Vec<f64> = cb
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| beta * v as f64 * a.scale[i % m] + a.shift[i % m])
                        .collect();
                    Some(vec_f32(&vals, &shape))
                }
                None if a.shift.iter().any(|&v| v != 0.0) => Some(vec_f32(&a.shift, &[m])),
                None => None,
            };
            let w_new = new_const(g, w_id.expect("checked"), w2)?;
            let mut ins = vec![Some(a_in), Some(w_new)];
            if let Some(c2) = c2 {
                ins.push(Some(new_const_named(
                    g,
                    &format!("{}_bias", node.name),
                    c2,
                )?));
            }
            let nm = g.node_mut(p);
            if !gemm {
                nm.op = "Gemm".to_string();
                nm.opset = nm.opset.max(11);
            }
            nm.attrs.set("beta", Attr::Float(1.0));
            g.set_inputs(p, ins);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn affine_vec(v: &[f64], a: &Affine) -> Vec<f64> {
    v.iter()
        .zip(a.scale.iter().zip(&a.shift))
        .map(|(&x, (&s, &t))| x * s + t)
        .collect()
}

fn vec_f32(v: &[f64], shape: &[usize]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), v.iter().map(|&x| x as f32).collect())
        .expect("length matches shape")
}

fn scale_along(w: &ArrayD<f32>, axis: usize, s: &[f64]) -> ArrayD<f32> {
    let mut w = w.to_owned();
    for (c, mut sub) in w.axis_iter_mut(Axis(axis)).enumerate() {
        sub.mapv_inplace(|x| (x as f64 * s[c]) as f32);
    }
    w
}

fn new_const(g: &mut Graph, like: ValueId, a: ArrayD<f32>) -> Result<ValueId> {
    let base = format!("{}_folded", g.value(like).name);
    new_const_named(g, &base, a)
}

fn new_const_named(g: &mut Graph, base: &str, a: ArrayD<f32>) -> Result<ValueId> {
    let name = g.fresh_name(base);
    g.add_const(&name, Tensor::F32(a))
}
