//! Model statistics for `cpucc inspect`: op counts, parameters and
//! multiply-accumulates of the compute-heavy ops.

use std::collections::BTreeMap;

use crate::ir::{Graph, Node};

pub struct Stats {
    pub ops: BTreeMap<String, usize>,
    pub params: usize,
    pub macs: u64,
}

pub fn stats(g: &Graph) -> Stats {
    let mut ops = BTreeMap::new();
    let mut macs = 0u64;
    for n in g.topo_order().unwrap_or_default() {
        let node = g.node(n);
        *ops.entry(node.op.clone()).or_insert(0) += 1;
        macs += node_macs(g, node);
    }
    let params = g.constants().map(|(_, v)| v.ty.numel()).sum();
    Stats { ops, params, macs }
}

/// MACs of one node; 0 for ops that do no multiply-accumulate work. Fused
/// Conv/Gemm/MatMul count their base op (the epilogue is not MACs).
pub fn node_macs(g: &Graph, node: &Node) -> u64 {
    let ty = |i: usize| {
        node.inputs
            .get(i)
            .copied()
            .flatten()
            .map(|v| &g.value(v).ty)
    };
    let out = g.value(node.outputs[0]).ty.numel() as u64;
    let op = node.op.strip_prefix("cpucc.Fused").unwrap_or(&node.op);
    match op {
        // Each output element sums C_in/group * prod(kernel) products.
        "Conv" => ty(1).map_or(0, |w| {
            out * w.shape.iter().skip(1).product::<usize>() as u64
        }),
        // Each input element scatters into C_out/group * prod(kernel) outputs.
        "ConvTranspose" => match (ty(0), ty(1)) {
            (Some(x), Some(w)) => {
                x.numel() as u64 * w.shape.iter().skip(1).product::<usize>() as u64
            }
            _ => 0,
        },
        "MatMul" | "Gemm" => {
            let a = ty(0).map(|a| a.shape.clone()).unwrap_or_default();
            let k = match (op, a.len()) {
                ("Gemm", 2) if node.attrs.int("transA", 0).unwrap_or(0) != 0 => a[0],
                (_, 0) => 1,
                (_, r) => a[r - 1],
            };
            out * k as u64
        }
        _ => 0,
    }
}
