//! Dead-code elimination: removes every node none of whose outputs reaches a
//! graph output, then drops values nothing refers to (`Graph::compact`).
//! ONNX inference ops have no side effects, so an unread node is dead; a node
//! with several outputs lives while any one of them is read. Graph inputs are
//! kept even when unread (they are the model's interface).

use std::collections::HashSet;

use crate::error::Result;
use crate::ir::Graph;

pub fn run(g: &mut Graph) -> Result<()> {
    let mut live: HashSet<_> = g.outputs.iter().copied().collect();
    let mut dead = Vec::new();
    for n in g.topo_order()?.into_iter().rev() {
        let node = g.node(n);
        if node.outputs.iter().any(|o| live.contains(o)) {
            live.extend(node.inputs.iter().flatten().copied());
        } else {
            dead.push(n);
        }
    }
    for n in dead {
        g.remove_node(n);
    }
    g.compact();
    Ok(())
}
