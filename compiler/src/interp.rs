//! The reference interpreter: evaluates a graph node by node with the op
//! table's reference semantics. It is the oracle for every test and the
//! engine of constant folding, so it favours clarity over speed.

use std::borrow::Cow;

use crate::error::Result;
use crate::ir::{Graph, Tensor, ValueType};
use crate::ops;

/// Checks `inputs` against the graph's declared inputs, naming the first
/// that differs.
pub fn check_inputs(g: &Graph, inputs: &[Tensor]) -> Result<()> {
    ensure!(
        inputs.len() == g.inputs.len(),
        Invalid,
        "the model has {} inputs, {} given",
        g.inputs.len(),
        inputs.len()
    );
    for (&id, t) in g.inputs.iter().zip(inputs) {
        let v = g.value(id);
        let got = ValueType::of(t);
        ensure!(
            got == v.ty,
            Invalid,
            "input '{}': expected {}, got {}",
            v.name,
            v.ty,
            got
        );
    }
    Ok(())
}

pub fn run(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    check_inputs(g, inputs)?;
    let order = g.topo_order()?;
    // Values are dropped after their last reader so that large models fit.
    let mut uses = std::collections::HashMap::new();
    for &n in &order {
        for v in g.node(n).inputs.iter().flatten() {
            *uses.entry(*v).or_insert(0usize) += 1;
        }
    }
    for &o in &g.outputs {
        *uses.entry(o).or_insert(0) += 1;
    }
    let mut env: std::collections::HashMap<_, Cow<Tensor>> = std::collections::HashMap::new();
    for (&id, t) in g.inputs.iter().zip(inputs) {
        env.insert(id, Cow::Borrowed(t));
    }
    for (id, v) in g.constants() {
        env.insert(
            id,
            Cow::Borrowed(v.constant.as_deref().expect("a constant")),
        );
    }
    for n in order {
        let node = g.node(n);
        let out_types: Vec<ValueType> = node
            .outputs
            .iter()
            .map(|&o| g.value(o).ty.clone())
            .collect();
        let results = {
            let ins = node
                .inputs
                .iter()
                .map(|i| i.map(|i| env[&i].as_ref()))
                .collect();
            ops::eval(&node.op, &node.attrs, node.opset, ins, &out_types)
                .map_err(|e| e.in_node(&node.name, &node.op))?
        };
        for i in node.inputs.iter().flatten() {
            let left = uses.get_mut(i).expect("counted above");
            *left -= 1;
            if *left == 0 {
                env.remove(i);
            }
        }
        for (&o, t) in node.outputs.iter().zip(results) {
            if uses.get(&o).copied().unwrap_or(0) > 0 {
                env.insert(o, Cow::Owned(t));
            }
        }
    }
    Ok(g.outputs
        .iter()
        .map(|o| env[o].clone().into_owned())
        .collect())
}
