//! Common-subexpression elimination. Two constants with the same dtype,
//! shape, layout and bit pattern (at most `SMALL_CONST` elements; -0.0 and
//! 0.0 differ, NaNs compare by bits) become one; then, in topological order,
//! a node with the same op, opset, attributes, inputs and output layouts as an
//! earlier one is dropped and its readers read the earlier node's outputs.
//! Binary commutative ops match with their inputs swapped. (The op table
//! has no random ops, so every node is a pure function.) Graph output names are the model's
//! interface: when only the later duplicate produces a graph output, it
//! survives instead of the earlier; when both do, both stay.

use std::collections::HashMap;

use petgraph::stable_graph::NodeIndex;

use crate::error::Result;
use crate::ir::{DType, Graph, Layout, Tensor, ValueId};

/// Constants larger than this are not compared (hashing weights costs more
/// than duplicates of them ever save).
const SMALL_CONST: usize = 4096;

const COMMUTATIVE: &[&str] = &[
    "Add",
    "Mul",
    "Max",
    "Min",
    "And",
    "Or",
    "Xor",
    "Equal",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
];

pub fn run(g: &mut Graph) -> Result<()> {
    merge_constants(g);
    merge_nodes(g)?;
    g.compact();
    Ok(())
}

fn const_key(v: &crate::ir::Value, t: &Tensor) -> (DType, Vec<usize>, Layout, Vec<u128>) {
    let float = t.dtype().is_float();
    let bits = crate::dispatch!(t, a => a
        .iter()
        .map(|&x| {
            use crate::ir::Elem;
            if float {
                x.to_f64().to_bits() as u128
            } else {
                x.to_i128() as u128
            }
        })
        .collect());
    (t.dtype(), t.shape().to_vec(), v.layout, bits)
}

fn merge_constants(g: &mut Graph) {
    let mut seen: HashMap<_, ValueId> = HashMap::new();
    let mut dups = Vec::new();
    for (id, v) in g.constants() {
        let t = v.constant.as_deref().expect("constants() yields constants");
        if t.len() > SMALL_CONST {
            continue;
        }
        match seen.entry(const_key(v, t)) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(e) => {
                if !g.outputs.contains(&id) {
                    dups.push((id, *e.get()));
                }
            }
        }
    }
    for (dup, kept) in dups {
        g.replace_uses(dup, kept);
    }
}

type NodeKey = (String, i64, Vec<Option<ValueId>>, usize);

fn node_key(g: &Graph, n: NodeIndex) -> NodeKey {
    let node = g.node(n);
    let mut inputs = node.inputs.clone();
    if COMMUTATIVE.contains(&node.op.as_str()) && inputs.len() == 2 {
        inputs.sort();
    }
    (node.op.clone(), node.opset, inputs, node.outputs.len())
}

fn same(g: &Graph, a: NodeIndex, b: NodeIndex) -> bool {
    let (na, nb) = (g.node(a), g.node(b));
    let layouts = |n: &crate::ir::Node| -> Vec<Layout> {
        n.outputs.iter().map(|&o| g.value(o).layout).collect()
    };
    na.attrs == nb.attrs && layouts(na) == layouts(nb)
}

fn merge_nodes(g: &mut Graph) -> Result<()> {
    let mut seen: HashMap<NodeKey, Vec<NodeIndex>> = HashMap::new();
    for n in g.topo_order()? {
        let key = node_key(g, n);
        let candidates = seen.entry(key).or_default();
        let Some(pos) = candidates.iter().position(|&m| same(g, m, n)) else {
            candidates.push(n);
            continue;
        };
        let earlier = candidates[pos];
        let is_output = |m: NodeIndex| g.node(m).outputs.iter().any(|o| g.outputs.contains(o));
        let (keep, drop) = match (is_output(earlier), is_output(n)) {
            (_, false) => (earlier, n),
            (false, true) => (n, earlier),
            (true, true) => continue,
        };
        candidates[pos] = keep;
        let pairs: Vec<_> = g
            .node(drop)
            .outputs
            .iter()
            .copied()
            .zip(g.node(keep).outputs.iter().copied())
            .collect();
        for (old, new) in pairs {
            g.replace_uses(old, new);
        }
        g.remove_node(drop);
    }
    Ok(())
}
