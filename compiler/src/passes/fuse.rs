//! Operator fusion: finds the subgraphs exporters write for composite
//! layers and replaces each by one node the backend can run as a unit.
//!
//! In order: decomposed LayerNorm -> `LayerNormalization`; erf and tanh GELU
//! -> `Gelu`; BERT-style multi-head attention -> ONNX `Attention` (3-D form);
//! Conv/Gemm/MatMul epilogues (BatchNorm with constant statistics, bias,
//! residual add, activation) -> `cpucc.FusedConv`/`FusedGemm`/`FusedMatMul`;
//! remaining elementwise chains -> `cpucc.Elementwise` (see
//! `ops::fused` for the fused ops' definitions). Every rewrite checks that
//! the absorbed intermediates have no other reader, dtypes are float, and
//! shapes match exactly, so the result computes the same values.

use std::collections::{HashMap, HashSet};

use petgraph::stable_graph::NodeIndex;

use super::rewrite::{
    Replacement, add_const, binary, const_scalar, constant, near, other_operand, out, produced_by,
    producer, replace, sole_user,
};
use crate::error::Result;
use crate::ir::{Attr, Attrs, DType, Graph, Tensor, ValueId};
use crate::ops::{self, fused};

pub fn run(g: &mut Graph) -> Result<()> {
    rewrite_all(g, false, layer_norm)?;
    rewrite_all(g, false, gelu_erf)?;
    rewrite_all(g, false, gelu_tanh)?;
    rewrite_all(g, false, attention)?;
    rewrite_all(g, false, epilogue)?;
    // Chains are grown from their last node towards their inputs.
    rewrite_all(g, true, elementwise)?;
    g.compact();
    Ok(())
}

type Rule = fn(&mut Graph, NodeIndex) -> Result<bool>;

/// Tries `rule` at every node that still exists, in topological order (or
/// its reverse).
fn rewrite_all(g: &mut Graph, reverse: bool, rule: Rule) -> Result<()> {
    let mut order = g.topo_order()?;
    if reverse {
        order.reverse();
    }
    let mut live: HashSet<NodeIndex> = order.iter().copied().collect();
    for n in order {
        if !live.contains(&n) {
            continue;
        }
        // A later index may now hold a node a rewrite created (freed
        // indices are reused); rules do not match their own results, so
        // visiting it is harmless.
        if rule(g, n)? {
            live = g.node_indices().into_iter().collect();
        }
    }
    Ok(())
}

fn is_float(g: &Graph, v: ValueId) -> bool {
    g.value(v).ty.dtype.is_float()
}

fn shape(g: &Graph, v: ValueId) -> &[usize] {
    &g.value(v).ty.shape
}

fn op_is(g: &Graph, n: NodeIndex, op: &str) -> bool {
    g.node(n).op == op
}

/// `sole_user(v)` when it runs `op`.
fn user_op(g: &Graph, v: ValueId, op: &str) -> Option<NodeIndex> {
    sole_user(g, v).filter(|&n| op_is(g, n, op))
}

// ------------------------------------------------------------- LayerNorm

/// The sorted, normalized axes of a ReduceMean with keepdims=1.
fn reduce_axes(g: &Graph, n: NodeIndex) -> Option<Vec<usize>> {
    let node = g.node(n);
    if node.op != "ReduceMean" || node.attrs.int("keepdims", 1).ok()? != 1 {
        return None;
    }
    let rank = shape(g, node.inputs.first().copied().flatten()?).len();
    let axes = if node.opset >= 18 {
        match node.inputs.get(1).copied().flatten() {
            Some(a) => constant(g, a)?.to_i64_vec().ok()?,
            None => Vec::new(),
        }
    } else {
        node.attrs
            .ints_opt("axes")
            .ok()?
            .unwrap_or_default()
            .to_vec()
    };
    if axes.is_empty() {
        return (node.attrs.int("noop_with_empty_axes", 0).ok()? == 0).then(|| (0..rank).collect());
    }
    let mut v = axes
        .iter()
        .map(|&a| ops::axis(a, rank).ok())
        .collect::<Option<Vec<_>>>()?;
    v.sort_unstable();
    v.dedup();
    Some(v)
}

/// `t`'s shape without leading 1s equals `dims`: an affine parameter that
/// LayerNormalization can take as it is.
fn is_affine_param(g: &Graph, t: ValueId, x: ValueId, dims: &[usize]) -> bool {
    let strip = |s: &[usize]| s[s.iter().position(|&d| d != 1).unwrap_or(s.len())..].to_vec();
    let s = shape(g, t);
    g.value(t).ty.dtype == g.value(x).ty.dtype
        && s.len() <= shape(g, x).len()
        && strip(s) == strip(dims)
}

fn layer_norm(g: &mut Graph, n: NodeIndex) -> Result<bool> {
    let Some(m) = layer_norm_match(g, n) else {
        return Ok(false);
    };
    let x = m.x;
    let rank = shape(g, x).len();
    let k = rank - m.first_axis;
    let dims = shape(g, x)[m.first_axis..].to_vec();
    let scale = match m.gamma {
        Some(s) => s,
        None => add_const(
            g,
            &format!("{}.scale", g.node(n).name),
            Tensor::full(g.value(x).ty.dtype, &dims, 1.0),
        )?,
    };
    let mut attrs = Attrs::default();
    attrs.set("axis", Attr::Int(-(k as i64)));
    attrs.set("epsilon", Attr::Float(m.eps as f32));
    let name = g.node(n).name.clone();
    replace(
        g,
        Replacement {
            name: &name,
            op: "LayerNormalization",
            opset: 17,
            attrs,
            inputs: vec![Some(x), Some(scale), m.beta],
        },
        m.last,
        &m.nodes,
    )
}

struct LayerNormMatch {
    x: ValueId,
    first_axis: usize,
    eps: f64,
    gamma: Option<ValueId>,
    beta: Option<ValueId>,
    last: ValueId,
    nodes: Vec<NodeIndex>,
}

/// mean = ReduceMean(x); d = x - mean; var = ReduceMean(d^2);
/// y = d / sqrt(var + eps) [* gamma] [+ beta], over trailing axes.
fn layer_norm_match(g: &Graph, n: NodeIndex) -> Option<LayerNormMatch> {
    let axes = reduce_axes(g, n)?;
    let x = g.node(n).inputs[0]?;
    let rank = shape(g, x).len();
    let first_axis = *axes.first()?;
    if !is_float(g, x) || axes != (first_axis..rank).collect::<Vec<_>>() {
        return None;
    }
    let sub = user_op(g, out(g, n), "Sub")?;
    if binary(g, sub)? != (x, out(g, n)) {
        return None;
    }
    let d = out(g, sub);
    if g.outputs.contains(&d) {
        return None;
    }
    let users: HashSet<NodeIndex> = g.consumers(d).into_iter().map(|(u, _)| u).collect();
    if users.len() != 2 {
        return None;
    }
    let square = *users.iter().find(|&&u| match g.node(u).op.as_str() {
        "Pow" => binary(g, u).is_some_and(|(a, e)| a == d && const_scalar(g, e) == Some(2.0)),
        "Mul" => binary(g, u) == Some((d, d)),
        _ => false,
    })?;
    let div = *users.iter().find(|&&u| u != square)?;
    let var = sole_user(g, out(g, square))?;
    if reduce_axes(g, var)? != axes || g.node(var).inputs[0]? != out(g, square) {
        return None;
    }
    let add_eps = user_op(g, out(g, var), "Add")?;
    let eps = const_scalar(g, other_operand(g, add_eps, out(g, var))?)?;
    let sqrt = user_op(g, out(g, add_eps), "Sqrt")?;
    if sole_user(g, out(g, sqrt))? != div
        || !op_is(g, div, "Div")
        || binary(g, div)? != (d, out(g, sqrt))
    {
        return None;
    }
    let dims = &shape(g, x)[first_axis..];
    let mut nodes = vec![n, sub, square, var, add_eps, sqrt, div];
    let mut last = out(g, div);
    let param = |op: &str, last: &mut ValueId, nodes: &mut Vec<NodeIndex>| {
        let u = user_op(g, *last, op)?;
        let p = other_operand(g, u, *last)?;
        if !is_affine_param(g, p, x, dims) || g.value(out(g, u)).ty != g.value(x).ty {
            return None;
        }
        nodes.push(u);
        *last = out(g, u);
        Some(p)
    };
    let gamma = param("Mul", &mut last, &mut nodes);
    let beta = param("Add", &mut last, &mut nodes);
    Some(LayerNormMatch {
        x,
        first_axis,
        eps,
        gamma,
        beta,
        last,
        nodes,
    })
}

// ------------------------------------------------------------------ GELU

/// From `a` (the `1 + erf(..)` or `1 + tanh(..)` value), the product
/// `x * a * 0.5` in any association: its result and nodes.
fn half_x_product(g: &Graph, a: ValueId, x: ValueId) -> Option<(ValueId, Vec<NodeIndex>)> {
    let m1 = user_op(g, a, "Mul")?;
    let other = other_operand(g, m1, a)?;
    let y1 = out(g, m1);
    if other == x {
        let m2 = user_op(g, y1, "Mul")?;
        near(const_scalar(g, other_operand(g, m2, y1)?), 0.5).then(|| (out(g, m2), vec![m1, m2]))
    } else if near(const_scalar(g, other), 0.5) {
        let m2 = user_op(g, y1, "Mul")?;
        (other_operand(g, m2, y1)? == x).then(|| (out(g, m2), vec![m1, m2]))
    } else {
        let h = produced_by(g, other, "Mul")?;
        let ok =
            sole_user(g, other) == Some(m1) && near(const_scalar(g, other_operand(g, h, x)?), 0.5);
        ok.then(|| (y1, vec![h, m1]))
    }
}

/// `1 + f` where `f` is the output of node `n`.
fn plus_one(g: &Graph, n: NodeIndex) -> Option<(ValueId, NodeIndex)> {
    let add = user_op(g, out(g, n), "Add")?;
    near(const_scalar(g, other_operand(g, add, out(g, n))?), 1.0).then(|| (out(g, add), add))
}

fn replace_gelu(
    g: &mut Graph,
    anchor: NodeIndex,
    x: ValueId,
    approximate: &str,
    last: ValueId,
    nodes: &[NodeIndex],
) -> Result<bool> {
    if !is_float(g, x) || g.value(last).ty != g.value(x).ty {
        return Ok(false);
    }
    let mut attrs = Attrs::default();
    attrs.set("approximate", Attr::String(approximate.into()));
    let name = g.node(anchor).name.clone();
    replace(
        g,
        Replacement {
            name: &name,
            op: "Gelu",
            opset: 20,
            attrs,
            inputs: vec![Some(x)],
        },
        last,
        nodes,
    )
}

/// x * 0.5 * (1 + erf(x / sqrt(2))), with x * (1/sqrt(2)) accepted too.
fn gelu_erf(g: &mut Graph, n: NodeIndex) -> Result<bool> {
    let Some((x, last, nodes)) = gelu_erf_match(g, n) else {
        return Ok(false);
    };
    replace_gelu(g, n, x, "none", last, &nodes)
}

fn gelu_erf_match(g: &Graph, n: NodeIndex) -> Option<(ValueId, ValueId, Vec<NodeIndex>)> {
    if !op_is(g, n, "Erf") {
        return None;
    }
    let e_in = g.node(n).inputs[0]?;
    let scale = producer(g, e_in)?;
    if sole_user(g, e_in) != Some(n) {
        return None;
    }
    let (a, b) = binary(g, scale)?;
    let x = match g.node(scale).op.as_str() {
        "Div" if near(const_scalar(g, b), std::f64::consts::SQRT_2) => a,
        "Mul" if near(const_scalar(g, b), std::f64::consts::FRAC_1_SQRT_2) => a,
        "Mul" if near(const_scalar(g, a), std::f64::consts::FRAC_1_SQRT_2) => b,
        _ => return None,
    };
    let (a1, add) = plus_one(g, n)?;
    let (last, prod) = half_x_product(g, a1, x)?;
    let mut nodes = vec![scale, n, add];
    nodes.extend(prod);
    Some((x, last, nodes))
}

/// 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))).
fn gelu_tanh(g: &mut Graph, n: NodeIndex) -> Result<bool> {
    let Some((x, last, nodes)) = gelu_tanh_match(g, n) else {
        return Ok(false);
    };
    replace_gelu(g, n, x, "tanh", last, &nodes)
}

/// `c * x^3` with `x^3` as Pow(x, 3), x * (x * x) or (x * x) * x.
fn cubic_term(g: &Graph, v: ValueId, x: ValueId) -> Option<Vec<NodeIndex>> {
    let m = produced_by(g, v, "Mul")?;
    let (a, b) = binary(g, m)?;
    let (c, cube) = if const_scalar(g, a).is_some() {
        (a, b)
    } else {
        (b, a)
    };
    if !near(const_scalar(g, c), 0.044715) || sole_user(g, cube) != Some(m) {
        return None;
    }
    let p = producer(g, cube)?;
    let (u, w) = binary(g, p)?;
    match g.node(p).op.as_str() {
        "Pow" if u == x && near(const_scalar(g, w), 3.0) => Some(vec![p, m]),
        "Mul" => {
            let sq = if u == x {
                w
            } else if w == x {
                u
            } else {
                return None;
            };
            let s = produced_by(g, sq, "Mul")?;
            (binary(g, s)? == (x, x) && sole_user(g, sq) == Some(p)).then(|| vec![s, p, m])
        }
        _ => None,
    }
}

fn gelu_tanh_match(g: &Graph, n: NodeIndex) -> Option<(ValueId, ValueId, Vec<NodeIndex>)> {
    if !op_is(g, n, "Tanh") {
        return None;
    }
    let t_in = g.node(n).inputs[0]?;
    let scale = produced_by(g, t_in, "Mul")?;
    if sole_user(g, t_in) != Some(n) {
        return None;
    }
    let (a, b) = binary(g, scale)?;
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let inner = if near(const_scalar(g, a), k) {
        b
    } else if near(const_scalar(g, b), k) {
        a
    } else {
        return None;
    };
    let add = produced_by(g, inner, "Add")?;
    if sole_user(g, inner) != Some(scale) {
        return None;
    }
    let (u, w) = binary(g, add)?;
    let (x, mut nodes) = [(u, w), (w, u)].into_iter().find_map(|(x, t)| {
        let nodes = cubic_term(g, t, x)?;
        (sole_user(g, t) == Some(add)).then_some((x, nodes))
    })?;
    let (a1, add1) = plus_one(g, n)?;
    let (last, prod) = half_x_product(g, a1, x)?;
    nodes.extend([add, scale, n, add1]);
    nodes.extend(prod);
    Some((x, last, nodes))
}

// ------------------------------------------------------------- Attention

/// Follows Transposes (each read only by the next) up from `v` to a Reshape
/// `[B, S, H*D] -> [B, S, H, D]`: the 3-D source, the composed permutation
/// (`v`'s axis i is the Reshape output's axis `perm[i]`) and the nodes.
fn head_split(g: &Graph, v: ValueId) -> Option<(ValueId, Vec<usize>, Vec<NodeIndex>)> {
    let mut perm: Vec<usize> = (0..4).collect();
    let mut nodes = Vec::new();
    let mut cur = v;
    loop {
        let p = producer(g, cur)?;
        sole_user(g, cur)?;
        match g.node(p).op.as_str() {
            "Transpose" => {
                let pp: Vec<usize> = match g.node(p).attrs.ints_opt("perm").ok()? {
                    Some(pp) => pp
                        .iter()
                        .map(|&i| usize::try_from(i).ok())
                        .collect::<Option<_>>()?,
                    None => (0..4).rev().collect(),
                };
                if pp.len() != 4 {
                    return None;
                }
                perm = perm.iter().map(|&i| pp[i]).collect();
                nodes.push(p);
                cur = g.node(p).inputs[0]?;
            }
            "Reshape" => {
                let src = g.node(p).inputs[0]?;
                let (s, r) = (shape(g, src), shape(g, cur));
                let ok = s.len() == 3 && r.len() == 4 && s[..2] == r[..2] && s[2] == r[2] * r[3];
                nodes.push(p);
                return ok.then_some((src, perm, nodes));
            }
            _ => return None,
        }
    }
}

fn attention(g: &mut Graph, n: NodeIndex) -> Result<bool> {
    let Some(m) = attention_match(g, n) else {
        return Ok(false);
    };
    let mut attrs = Attrs::default();
    attrs.set("q_num_heads", Attr::Int(m.heads as i64));
    attrs.set("kv_num_heads", Attr::Int(m.heads as i64));
    attrs.set("scale", Attr::Float(m.scale as f32));
    let name = g.node(m.anchor).name.clone();
    replace(
        g,
        Replacement {
            name: &name,
            op: "Attention",
            opset: 23,
            attrs,
            inputs: vec![Some(m.q), Some(m.k), Some(m.v), m.mask],
        },
        m.last,
        &m.nodes,
    )
}

struct AttentionMatch {
    anchor: NodeIndex,
    q: ValueId,
    k: ValueId,
    v: ValueId,
    mask: Option<ValueId>,
    heads: usize,
    scale: f64,
    last: ValueId,
    nodes: Vec<NodeIndex>,
}

/// `v` = MatMul(..) [ / c or * c ]: the scale, its node and the MatMul.
fn scores_of(g: &Graph, v: ValueId) -> Option<(f64, Option<NodeIndex>, NodeIndex)> {
    if let Some(mm) = produced_by(g, v, "MatMul") {
        return Some((1.0, None, mm));
    }
    let p = producer(g, v)?;
    let (a, b) = binary(g, p)?;
    let (x, c) = match g.node(p).op.as_str() {
        "Div" => (a, 1.0 / const_scalar(g, b)?),
        "Mul" => match (const_scalar(g, a), const_scalar(g, b)) {
            (_, Some(c)) => (a, c),
            (Some(c), None) => (b, c),
            _ => return None,
        },
        _ => return None,
    };
    let mm = produced_by(g, x, "MatMul")?;
    sole_user(g, x)?;
    Some((c, Some(p), mm))
}

/// Softmax(Q K^T * scale [+ mask]) V over heads split from `[B, S, H*D]`
/// projections, merged back to `[B, S, H*Dv]`.
fn attention_match(g: &Graph, n: NodeIndex) -> Option<AttentionMatch> {
    let node = g.node(n);
    if node.op != "Softmax" {
        return None;
    }
    let logits = node.inputs[0]?;
    let s = shape(g, logits).to_vec();
    let default_axis = if node.opset >= 13 { -1 } else { 1 };
    if s.len() != 4 || ops::axis(node.attrs.int("axis", default_axis).ok()?, 4).ok()? != 3 {
        return None;
    }
    // Optional mask: an Add of a value that broadcasts along B, H and S only.
    let (mut nodes, mut mask, mut scores) = (Vec::new(), None, scores_of(g, logits));
    if scores.is_none()
        && let Some(add) = produced_by(g, logits, "Add")
        && sole_user(g, logits) == Some(n)
    {
        let (a, b) = binary(g, add)?;
        let (sc, mk, found) = [(a, b), (b, a)]
            .into_iter()
            .find_map(|(sc, mk)| scores_of(g, sc).map(|f| (sc, mk, f)))?;
        let ms = shape(g, mk);
        let fits = ms.len() <= 4
            && ms.last() == s.last()
            && ms
                .iter()
                .rev()
                .zip(s.iter().rev())
                .all(|(&x, &y)| x == 1 || x == y)
            && g.value(mk).ty.dtype == g.value(logits).ty.dtype
            && shape(g, sc) == s.as_slice()
            && sole_user(g, sc).is_some();
        if !fits {
            return None;
        }
        mask = Some(mk);
        nodes.push(add);
        scores = Some(found);
    }
    if mask.is_none() && sole_user(g, logits) != Some(n) {
        return None;
    }
    let (scale, scale_node, qk) = scores?;
    nodes.extend(scale_node);
    nodes.push(qk);
    let (qh, kt) = binary(g, qk)?;
    let (q, qp, qn) = head_split(g, qh)?;
    let (k, kp, kn) = head_split(g, kt)?;
    let probs = out(g, n);
    let pv = user_op(g, probs, "MatMul")?;
    if g.node(pv).inputs[0]? != probs {
        return None;
    }
    let (v, vp, vn) = head_split(g, g.node(pv).inputs[1]?)?;
    if qp != [0, 2, 1, 3] || kp != [0, 2, 3, 1] || vp != [0, 2, 1, 3] {
        return None;
    }
    let ctx = out(g, pv);
    let tr = user_op(g, ctx, "Transpose")?;
    if g.node(tr).attrs.ints_opt("perm").ok()?? != [0, 2, 1, 3] {
        return None;
    }
    let merge = user_op(g, out(g, tr), "Reshape")?;
    let last = out(g, merge);
    let (ts, ls) = (shape(g, out(g, tr)), shape(g, last));
    let heads = s[1];
    let float = [q, k, v]
        .iter()
        .all(|&x| g.value(x).ty.dtype == g.value(logits).ty.dtype)
        && is_float(g, q);
    let merged = ls.len() == 3 && ls[..2] == ts[..2] && ls[2] == ts[2] * ts[3];
    let vh = g.node(pv).inputs[1]?;
    let same_heads = [qh, kt, vh].iter().all(|&x| shape(g, x)[1] == heads)
        && [q, k, v].iter().all(|&x| shape(g, x)[0] == shape(g, q)[0]);
    if !(float && merged && same_heads) {
        return None;
    }
    let mut all = qn;
    all.extend(kn);
    all.extend(vn);
    all.extend(nodes.into_iter().rev());
    all.extend([n, pv, tr, merge]);
    Some(AttentionMatch {
        anchor: qk,
        q,
        k,
        v,
        mask,
        heads,
        scale,
        last,
        nodes: all,
    })
}

// -------------------------------------------------------------- Epilogue

/// The epilogue activation a node computes: (name, act_alpha, act_beta).
fn activation_of(g: &Graph, n: NodeIndex) -> Option<(&'static str, Option<(f32, f32)>)> {
    let node = g.node(n);
    if node.outputs.len() != 1 || !is_float(g, node.outputs[0]) {
        return None;
    }
    let a = &node.attrs;
    Some(match node.op.as_str() {
        "Relu" => ("Relu", None),
        "Sigmoid" => ("Sigmoid", None),
        "Tanh" => ("Tanh", None),
        "HardSwish" => ("HardSwish", None),
        "LeakyRelu" => ("LeakyRelu", Some((a.float("alpha", 0.01).ok()?, 0.0))),
        "HardSigmoid" => (
            "HardSigmoid",
            Some((a.float("alpha", 0.2).ok()?, a.float("beta", 0.5).ok()?)),
        ),
        "Gelu" => match a.string("approximate", "none").ok()? {
            "none" => ("Gelu", None),
            "tanh" => ("GeluTanh", None),
            _ => return None,
        },
        "Clip" if node.opset < 11 => (
            "Clip",
            Some((
                a.float("min", f32::MIN).ok()?,
                a.float("max", f32::MAX).ok()?,
            )),
        ),
        "Clip" => {
            let bound = |i: usize, absent: f32| -> Option<f32> {
                match node.inputs.get(i).copied().flatten() {
                    None => Some(absent),
                    Some(v) => {
                        let x = const_scalar(g, v)?;
                        // The attribute is an f32: only bounds it holds exactly.
                        (x as f32 as f64 == x).then_some(x as f32)
                    }
                }
            };
            (
                "Clip",
                Some((bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?)),
            )
        }
        _ => return None,
    })
}

/// Folds inference BatchNormalization with constant parameters into the
/// constant weights (and bias) of the convolution before it.
fn fold_batch_norm(
    g: &mut Graph,
    conv: NodeIndex,
    bn: NodeIndex,
) -> Result<Option<(ValueId, ValueId)>> {
    let (cn, bnode) = (g.node(conv), g.node(bn));
    let training = bnode.attrs.int("training_mode", 0)? != 0
        || (bnode.opset < 9 && bnode.attrs.int("spatial", 1)? == 0)
        || (bnode.opset < 7 && bnode.attrs.int("is_test", 0)? == 0);
    if training || bnode.outputs.len() != 1 || bnode.inputs.len() != 5 {
        return Ok(None);
    }
    let consts: Option<Vec<&Tensor>> = (1..5)
        .map(|i| bnode.inputs[i].and_then(|v| constant(g, v)))
        .collect();
    let w = cn.inputs.get(1).copied().flatten();
    let (Some(p), Some(wv)) = (consts, w) else {
        return Ok(None);
    };
    let Some(wt) = constant(g, wv) else {
        return Ok(None);
    };
    let b = match cn.inputs.get(2).copied().flatten() {
        Some(b) => match constant(g, b) {
            Some(t) => Some(t.to_f64_vec()),
            None => return Ok(None),
        },
        None => None,
    };
    let cout = wt.shape()[0];
    if p.iter().any(|t| t.len() != cout) {
        return Ok(None);
    }
    let eps = bnode.attrs.float("epsilon", 1e-5)? as f64;
    let [gamma, beta, mean, var] = [0, 1, 2, 3].map(|i| p[i].to_f64_vec());
    let s: Vec<f64> = (0..cout)
        .map(|c| gamma[c] / (var[c] + eps).sqrt())
        .collect();
    let per = wt.len() / cout.max(1);
    let w2: Vec<f64> = wt
        .to_f64_vec()
        .iter()
        .enumerate()
        .map(|(i, x)| x * s[i / per])
        .collect();
    let b2: Vec<f64> = (0..cout)
        .map(|c| (b.as_ref().map_or(0.0, |b| b[c]) - mean[c]) * s[c] + beta[c])
        .collect();
    let (wd, wshape) = (wt.dtype(), wt.shape().to_vec());
    let name = g.node(bn).name.clone();
    let w_new = Tensor::from_f64s(wd, &wshape, &w2)?;
    let b_new = Tensor::from_f64s(wd, &[cout], &b2)?;
    let wv = add_const(g, &format!("{name}.folded_weight"), w_new)?;
    let bv = add_const(g, &format!("{name}.folded_bias"), b_new)?;
    Ok(Some((wv, bv)))
}

/// A constant that, added to a `[N, C, ...]` conv output, adds one value per
/// channel: returned as a `[C]` tensor.
fn channel_bias(g: &Graph, c: ValueId, y: ValueId) -> Option<Tensor> {
    let t = constant(g, c)?;
    let ys = shape(g, y);
    let cs = t.shape();
    if ys.len() < 2 || cs.len() > ys.len() || t.dtype() != g.value(y).ty.dtype {
        return None;
    }
    let lead = ys.len() - cs.len();
    let ok = cs
        .iter()
        .enumerate()
        .all(|(i, &d)| d == 1 || (i + lead == 1 && d == ys[1]));
    (ok && t.len() == ys[1]).then(|| t.reshape(&[ys[1]]).ok())?
}

/// A constant `[N]` (after leading 1s) bias for a MatMul output `[..., N]`.
fn row_bias(g: &Graph, c: ValueId, y: ValueId) -> Option<ValueId> {
    let t = constant(g, c)?;
    let n = *shape(g, y).last()?;
    let s = t.shape();
    let ok = t.dtype() == g.value(y).ty.dtype
        && s.len() <= shape(g, y).len()
        && s.last() == Some(&n)
        && s[..s.len() - 1].iter().all(|&d| d == 1);
    ok.then_some(c)
}

fn epilogue(g: &mut Graph, n: NodeIndex) -> Result<bool> {
    let node = g.node(n);
    let op = node.op.clone();
    let fused_op = match op.as_str() {
        "Conv" => "cpucc.FusedConv",
        "Gemm" => "cpucc.FusedGemm",
        "MatMul" => "cpucc.FusedMatMul",
        _ => return Ok(false),
    };
    if node.outputs.len() != 1 || !is_float(g, node.outputs[0]) {
        return Ok(false);
    }
    let mut inputs = node.inputs.clone();
    inputs.resize(4, None);
    let mut attrs = node.attrs.clone();
    let (name, opset) = (node.name.clone(), node.opset);
    let mut cur = out(g, n);
    let mut old = vec![n];
    let ty = g.value(cur).ty.clone();
    let same_type = |g: &Graph, v: ValueId| g.value(v).ty == ty;

    if op == "Conv"
        && let Some(bn) = user_op(g, cur, "BatchNormalization")
        && g.node(bn).inputs[0] == Some(cur)
        && same_type(g, out(g, bn))
        && let Some((w, b)) = fold_batch_norm(g, n, bn)?
    {
        (inputs[1], inputs[2]) = (Some(w), Some(b));
        old.push(bn);
        cur = out(g, bn);
    }
    if let Some(add) = user_op(g, cur, "Add")
        && same_type(g, out(g, add))
        && let Some(c) = other_operand(g, add, cur)
    {
        if op == "Conv" && inputs[2].is_none() {
            if let Some(t) = channel_bias(g, c, cur) {
                inputs[2] = Some(add_const(g, &format!("{name}.bias"), t)?);
                old.push(add);
                cur = out(g, add);
            }
        } else if op == "MatMul"
            && let Some(b) = row_bias(g, c, cur)
        {
            let t = constant(g, b).expect("row_bias is constant");
            let n_cols = *t.shape().last().expect("rank >= 1");
            inputs[2] = Some(if t.shape().len() == 1 {
                b
            } else {
                let t = t.reshape(&[n_cols])?;
                add_const(g, &format!("{name}.bias"), t)?
            });
            old.push(add);
            cur = out(g, add);
        }
    }
    if let Some(add) = user_op(g, cur, "Add")
        && same_type(g, out(g, add))
        && let Some(r) = other_operand(g, add, cur)
        && r != cur
        && same_type(g, r)
    {
        inputs[3] = Some(r);
        old.push(add);
        cur = out(g, add);
    }
    if let Some(act) = sole_user(g, cur)
        && g.node(act).inputs.first() == Some(&Some(cur))
        && same_type(g, out(g, act))
        && let Some((a, params)) = activation_of(g, act)
    {
        attrs.set("activation", Attr::String(a.into()));
        if let Some((alpha, beta)) = params {
            attrs.set("act_alpha", Attr::Float(alpha));
            attrs.set("act_beta", Attr::Float(beta));
        }
        old.push(act);
        cur = out(g, act);
    }
    if old.len() == 1 {
        return Ok(false);
    }
    while inputs.last() == Some(&None) {
        inputs.pop();
    }
    replace(
        g,
        Replacement {
            name: &name,
            op: fused_op,
            opset,
            attrs,
            inputs,
        },
        cur,
        &old,
    )
}

// ------------------------------------------------------ Elementwise chains

/// A node a chain may absorb: a supported op with one float output whose
/// inputs (trailing omitted ones aside) are all present and of that dtype.
fn chain_step(g: &Graph, n: NodeIndex) -> Option<(Vec<ValueId>, DType)> {
    let node = g.node(n);
    fused::step_attr_names(&node.op)?;
    if node.outputs.len() != 1 || (node.op == "Clip" && node.opset < 11) {
        return None;
    }
    let dt = g.value(node.outputs[0]).ty.dtype;
    let mut ins = node.inputs.clone();
    while ins.last() == Some(&None) {
        ins.pop();
    }
    let ins: Vec<ValueId> = ins.into_iter().collect::<Option<_>>()?;
    let ok = dt.is_float() && !ins.is_empty() && ins.iter().all(|&v| g.value(v).ty.dtype == dt);
    ok.then_some((ins, dt))
}

fn elementwise(g: &mut Graph, root: NodeIndex) -> Result<bool> {
    if chain_step(g, root).is_none() {
        return Ok(false);
    }
    let opset = g.node(root).opset;
    // Post-order over the tree of single-reader producers: a valid step order.
    let mut order = Vec::new();
    let mut in_group = HashSet::from([root]);
    grow(g, root, opset, &mut in_group, &mut order);
    if order.len() < 2 {
        return Ok(false);
    }
    let step_of: HashMap<NodeIndex, usize> =
        order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let (mut ops_, mut arity, mut args, mut alpha, mut beta) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut externals: Vec<ValueId> = Vec::new();
    for &n in &order {
        let (ins, _) = chain_step(g, n).expect("checked in grow");
        let node = g.node(n);
        ops_.push(node.op.clone());
        arity.push(ins.len() as i64);
        for v in ins {
            let r = match producer(g, v).and_then(|p| step_of.get(&p)) {
                Some(&s) => -(s as i64) - 1,
                None => match externals.iter().position(|&e| e == v) {
                    Some(i) => i as i64,
                    None => {
                        externals.push(v);
                        externals.len() as i64 - 1
                    }
                },
            };
            args.push(r);
        }
        let (an, da, bn, db) = fused::step_attr_names(&node.op).expect("a chain op");
        let get = |name: &str, d: f32| -> Result<f32> {
            if name.is_empty() {
                Ok(0.0)
            } else {
                node.attrs.float(name, d)
            }
        };
        alpha.push(get(an, da)?);
        beta.push(get(bn, db)?);
    }
    let mut attrs = Attrs::default();
    attrs.set("ops", Attr::Strings(ops_));
    attrs.set("arity", Attr::Ints(arity));
    attrs.set("args", Attr::Ints(args));
    attrs.set("alpha", Attr::Floats(alpha));
    attrs.set("beta", Attr::Floats(beta));
    let name = g.node(root).name.clone();
    let last = out(g, root);
    replace(
        g,
        Replacement {
            name: &name,
            op: "cpucc.Elementwise",
            opset,
            attrs,
            inputs: externals.into_iter().map(Some).collect(),
        },
        last,
        &order,
    )
}

fn grow(
    g: &Graph,
    n: NodeIndex,
    opset: i64,
    in_group: &mut HashSet<NodeIndex>,
    order: &mut Vec<NodeIndex>,
) {
    let (ins, _) = chain_step(g, n).expect("only steps are grown");
    for v in ins {
        if let Some(p) = producer(g, v)
            && !in_group.contains(&p)
            && sole_user(g, v) == Some(n)
            && g.node(p).opset == opset
            && chain_step(g, p).is_some()
        {
            in_group.insert(p);
            grow(g, p, opset, in_group, order);
        }
    }
    order.push(n);
}
