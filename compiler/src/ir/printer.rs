//! The stable text form of a graph, used by `cpucc inspect` and by snapshot
//! tests. One line per input, constant, node and output, in topological
//! order; constants of at most eight elements show their values.

use std::fmt::Write;

use crate::error::Result;
use crate::ir::{Graph, Layout, ValueId};

const INLINE_CONST: usize = 8;

pub fn print(g: &Graph) -> Result<String> {
    let mut s = String::new();
    let v = |id: ValueId| format!("%{}", g.value(id).name);
    let ty = |id: ValueId| {
        let val = g.value(id);
        match val.layout {
            Layout::Onnx => val.ty.to_string(),
            Layout::Nhwc => format!("{} nhwc", val.ty),
        }
    };
    let _ = writeln!(s, "graph {:?} {{", g.name);
    for &i in &g.inputs {
        let _ = writeln!(s, "  input {}: {}", v(i), ty(i));
    }
    for (id, val) in g.constants() {
        let t = val.constant.as_ref().expect("constants() yields constants");
        let _ = write!(s, "  const {}: {}", v(id), ty(id));
        if t.len() <= INLINE_CONST {
            let vals: Vec<String> = t.to_f64_vec().iter().map(|x| format!("{x}")).collect();
            let _ = write!(s, " = [{}]", vals.join(", "));
        }
        s.push('\n');
    }
    for n in g.topo_order()? {
        let node = g.node(n);
        let outs: Vec<String> = node
            .outputs
            .iter()
            .map(|&o| format!("{}: {}", v(o), ty(o)))
            .collect();
        let ins: Vec<String> = node
            .inputs
            .iter()
            .map(|i| i.map_or_else(|| "_".to_string(), v))
            .collect();
        let _ = write!(s, "  {} = {}({})", outs.join(", "), node.op, ins.join(", "));
        if !node.attrs.0.is_empty() {
            let attrs: Vec<String> = node
                .attrs
                .0
                .iter()
                .map(|(k, a)| format!("{k}={a}"))
                .collect();
            let _ = write!(s, " {{{}}}", attrs.join(", "));
        }
        let _ = write!(s, "  # {}", node.name);
        if !node.fused.is_empty() {
            let _ = write!(s, " <- {}", node.fused.join(", "));
        }
        s.push('\n');
    }
    let outs: Vec<String> = g.outputs.iter().map(|&o| v(o)).collect();
    let _ = writeln!(s, "  output {}", outs.join(", "));
    s.push_str("}\n");
    Ok(s)
}
