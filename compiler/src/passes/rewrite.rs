//! Small graph queries and edits shared by the rewriting passes: use counts,
//! constant lookups, and replacing a group of nodes by one new node that
//! takes over the group's output (name included, so graph outputs keep
//! their names).

use std::collections::HashMap;

use petgraph::stable_graph::NodeIndex;

use crate::error::Result;
use crate::ir::{Attrs, Graph, Tensor, ValueId};

/// The one node that reads `v` (possibly in several slots), when `v` is not
/// a graph output: the condition for absorbing `v`'s producer into it.
pub fn sole_user(g: &Graph, v: ValueId) -> Option<NodeIndex> {
    if g.outputs.contains(&v) {
        return None;
    }
    let users = g.consumers(v);
    let first = users.first()?.0;
    users.iter().all(|(n, _)| *n == first).then_some(first)
}

/// The node computing `v`.
pub fn producer(g: &Graph, v: ValueId) -> Option<NodeIndex> {
    g.value(v).producer.map(|(n, _)| n)
}

/// The node computing `v` when its op is `op`.
pub fn produced_by(g: &Graph, v: ValueId, op: &str) -> Option<NodeIndex> {
    producer(g, v).filter(|&n| g.node(n).op == op)
}

pub fn constant(g: &Graph, v: ValueId) -> Option<&Tensor> {
    g.value(v).constant.as_deref()
}

/// The value of a one-element float constant.
pub fn const_scalar(g: &Graph, v: ValueId) -> Option<f64> {
    constant(g, v)
        .filter(|t| t.len() == 1 && t.dtype().is_float())
        .map(|t| t.to_f64_vec()[0])
}

/// `x` is within a relative 1e-4 of `want` (exporters round constants
/// like sqrt(2) differently).
pub fn near(x: Option<f64>, want: f64) -> bool {
    x.is_some_and(|x| (x - want).abs() <= 1e-4 * want.abs())
}

/// The two inputs of a binary node, when both are present.
pub fn binary(g: &Graph, n: NodeIndex) -> Option<(ValueId, ValueId)> {
    match g.node(n).inputs.as_slice() {
        [Some(a), Some(b)] => Some((*a, *b)),
        _ => None,
    }
}

/// For a commutative binary node reading `x`, its other operand.
pub fn other_operand(g: &Graph, n: NodeIndex, x: ValueId) -> Option<ValueId> {
    let (a, b) = binary(g, n)?;
    if a == x {
        Some(b)
    } else if b == x {
        Some(a)
    } else {
        None
    }
}

/// The node's only output.
pub fn out(g: &Graph, n: NodeIndex) -> ValueId {
    g.node(n).outputs[0]
}

/// Adds a constant with a fresh name derived from `base`.
pub fn add_const(g: &mut Graph, base: &str, t: Tensor) -> Result<ValueId> {
    let name = g.fresh_name(base);
    g.add_const(&name, t)
}

/// The new node that replaces a group.
pub struct Replacement<'a> {
    pub name: &'a str,
    pub op: &'a str,
    pub opset: i64,
    pub attrs: Attrs,
    pub inputs: Vec<Option<ValueId>>,
}

/// Adds `r`, makes it compute `last` (its readers and its name move to the
/// new output) and removes `old`, whose other outputs must be unused. The
/// new node records the source names of everything it absorbed. Returns
/// `false`, changing nothing, when the op table rejects the new node or it
/// would compute another type than `last`: a pattern that matched a case
/// the fused op cannot express is left alone.
pub fn replace(g: &mut Graph, r: Replacement, last: ValueId, old: &[NodeIndex]) -> Result<bool> {
    match g.infer(r.op, r.opset, &r.attrs, &r.inputs, 1) {
        Ok(t) if t.first() == Some(&g.value(last).ty) => {}
        _ => return Ok(false),
    }
    // Provenance in execution order; a node rewritten alone keeps its own.
    let pos: HashMap<NodeIndex, usize> = g
        .topo_order()?
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    let mut old = old.to_vec();
    old.sort_by_key(|n| pos.get(n).copied());
    let mut fused = Vec::new();
    for &o in &old {
        let node = g.node(o);
        if node.fused.is_empty() && old.len() > 1 {
            fused.push(node.name.clone());
        } else {
            fused.extend(node.fused.iter().cloned());
        }
    }
    let tmp = g.fresh_name(&format!("{}.fused", g.value(last).name));
    let n = g.add_node(r.name, r.op, r.opset, r.attrs, r.inputs, &[tmp])?;
    let new = out(g, n);
    g.value_mut(new).layout = g.value(last).layout;
    g.swap_names(new, last);
    g.replace_uses(last, new);
    for &o in &old {
        g.remove_node(o);
    }
    g.node_mut(n).fused = fused;
    Ok(true)
}
