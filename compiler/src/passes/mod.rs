//! Graph passes and the pass manager. Every pass is a `fn(&mut Graph) ->
//! Result<()>` listed once in [`ALL`]; [`DEFAULT_PIPELINE`] is the order the
//! compiler runs them in. After each pass the manager re-checks the graph
//! (every node's recorded output types equal what the op table infers, every
//! read value has a producer, is an input or a constant, the graph is
//! acyclic), so a broken rewrite fails at the pass that made it, as an
//! internal error naming that pass. [`plan`] (the memory plan) is not a
//! rewrite: it reads the final graph.

mod const_fold;
mod cse;
mod dce;
pub mod fuse;
pub mod layout;
pub mod plan;
mod rewrite;

use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use petgraph::stable_graph::NodeIndex;

use crate::ir::{Graph, ValueId};
use plan::MemoryPlan;

pub struct Pass {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&mut Graph) -> Result<()>,
}

pub const ALL: &[Pass] = &[
    Pass {
        name: "const_fold",
        about: "evaluate constant subgraphs; fold BatchNormalization and per-channel scale/shift into Conv/Gemm/MatMul weights",
        run: const_fold::run,
    },
    Pass {
        name: "fuse",
        about: "fuse Conv/Gemm/MatMul epilogues (bias, activation, residual), elementwise chains, LayerNorm, GELU and attention",
        run: fuse::run,
    },
    Pass {
        name: "layout",
        about: "run convolutional graphs channels-last (NHWC), converting only at the edges; cancel transposes",
        run: layout::run,
    },
    Pass {
        name: "cse",
        about: "merge nodes with the same op, attributes and inputs, and identical small constants",
        run: cse::run,
    },
    Pass {
        name: "dce",
        about: "remove nodes whose outputs nobody reads, then unreferenced values",
        run: dce::run,
    },
];

/// The compiler's pipeline, in order.
pub const DEFAULT_PIPELINE: &[&str] = &["const_fold", "fuse", "layout", "cse", "dce"];

pub fn lookup(name: &str) -> Result<&'static Pass> {
    ALL.iter().find(|p| p.name == name).ok_or_else(|| {
        let known: Vec<&str> = ALL.iter().map(|p| p.name).collect();
        Error::Invalid(format!(
            "unknown pass '{name}' (known: {})",
            known.join(", ")
        ))
    })
}

/// Splits a `--passes a,b,c` argument; an empty string is the empty pipeline.
pub fn parse_list(s: &str) -> Result<Vec<&'static str>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| lookup(p).map(|p| p.name))
        .collect()
}

/// What one pass left behind.
#[derive(Clone, Debug)]
pub struct PassReport {
    pub name: String,
    pub nodes: usize,
    /// Transposes between NCHW and NHWC on rank-4 values.
    pub layout_conversions: usize,
    /// Nodes with a non-empty `fused` list.
    pub fused_groups: usize,
    pub time: Duration,
}

impl PassReport {
    /// Measures `g` as it stands (e.g. the imported graph, before any pass).
    pub fn measure(name: &str, g: &Graph, time: Duration) -> PassReport {
        let mut conversions = 0;
        let mut fused = 0;
        for n in g.node_indices() {
            let node = g.node(n);
            if !node.fused.is_empty() {
                fused += 1;
            }
            if is_layout_conversion(g, node) {
                conversions += 1;
            }
        }
        PassReport {
            name: name.to_string(),
            nodes: g.node_count(),
            layout_conversions: conversions,
            fused_groups: fused,
            time,
        }
    }
}

/// Makes node `n` write `v` in output `slot` instead of its current output,
/// which must have no readers left (e.g. the node that read it was folded
/// away). `v` must have no producer; its readers are relinked to `n`.
pub(crate) fn retarget(g: &mut Graph, n: NodeIndex, slot: usize, v: ValueId) {
    let old = g.node(n).outputs[slot];
    g.node_mut(n).outputs[slot] = v;
    g.value_mut(old).producer = None;
    g.value_mut(v).producer = Some((n, slot));
    for (reader, _) in g.consumers(v) {
        let inputs = g.node(reader).inputs.clone();
        g.set_inputs(reader, inputs);
    }
}

fn is_layout_conversion(g: &Graph, node: &crate::ir::Node) -> bool {
    if node.op != "Transpose" {
        return false;
    }
    let rank4 = node
        .inputs
        .first()
        .copied()
        .flatten()
        .is_some_and(|v| g.value(v).ty.shape.len() == 4);
    let perm = node.attrs.ints_opt("perm").ok().flatten();
    rank4 && matches!(perm, Some([0, 2, 3, 1]) | Some([0, 3, 1, 2]))
}

/// Runs the named passes in order, checking the graph after each one.
pub fn run_pipeline(g: &mut Graph, names: &[&str]) -> Result<Vec<PassReport>> {
    let passes = names
        .iter()
        .map(|n| lookup(n))
        .collect::<Result<Vec<_>>>()?;
    let mut reports = Vec::with_capacity(passes.len());
    for p in passes {
        let start = Instant::now();
        (p.run)(g).map_err(|e| match e {
            Error::Internal(m) => Error::Internal(format!("pass {}: {m}", p.name)),
            e => e,
        })?;
        let time = start.elapsed();
        check(g).map_err(|e| Error::Internal(format!("after pass {}: {e}", p.name)))?;
        reports.push(PassReport::measure(p.name, g, time));
    }
    Ok(reports)
}

/// The graph invariants every pass preserves.
pub fn check(g: &Graph) -> Result<()> {
    let order = g.topo_order()?;
    ensure!(
        order.len() == g.node_count(),
        Internal,
        "topological order misses nodes"
    );
    let defined = |v: ValueId| {
        let val = g.value(v);
        val.producer.is_some() || val.constant.is_some() || g.inputs.contains(&v)
    };
    for n in order {
        let node = g.node(n);
        for v in node.inputs.iter().flatten() {
            ensure!(
                defined(*v),
                Internal,
                "node '{}' ({}) reads '{}', which nothing defines",
                node.name,
                node.op,
                g.value(*v).name
            );
        }
        for (slot, &o) in node.outputs.iter().enumerate() {
            ensure!(
                g.value(o).producer == Some((n, slot)),
                Internal,
                "value '{}' does not record node '{}' as its producer",
                g.value(o).name,
                node.name
            );
        }
        let inferred = g
            .infer(
                &node.op,
                node.opset,
                &node.attrs,
                &node.inputs,
                node.outputs.len(),
            )
            .map_err(|e| Error::Internal(e.in_node(&node.name, &node.op).to_string()))?;
        let recorded: Vec<_> = node.outputs.iter().map(|&o| &g.value(o).ty).collect();
        ensure!(
            inferred.iter().eq(recorded.iter().copied()),
            Internal,
            "node '{}' ({}): outputs recorded as {} but the op infers {}",
            node.name,
            node.op,
            list(recorded.iter().copied()),
            list(inferred.iter())
        );
    }
    for &o in &g.outputs {
        ensure!(
            defined(o),
            Internal,
            "graph output '{}' is not defined",
            g.value(o).name
        );
    }
    Ok(())
}

fn list<'a>(tys: impl Iterator<Item = &'a crate::ir::ValueType>) -> String {
    tys.map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
}

/// The `--stats` table: one row per pass, then the memory plan's figures.
pub fn report_table(reports: &[PassReport], plan: &MemoryPlan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:>7} {:>12} {:>7} {:>10}",
        "pass", "nodes", "conversions", "fused", "time"
    );
    for r in reports {
        let _ = writeln!(
            s,
            "{:<16} {:>7} {:>12} {:>7} {:>8.1}ms",
            r.name,
            r.nodes,
            r.layout_conversions,
            r.fused_groups,
            r.time.as_secs_f64() * 1e3
        );
    }
    let pct = if plan.intermediate_bytes == 0 {
        0.0
    } else {
        100.0 * plan.arena_bytes as f64 / plan.intermediate_bytes as f64
    };
    let _ = writeln!(
        s,
        "arena: {} bytes; intermediates: {} bytes ({pct:.1}%)",
        plan.arena_bytes, plan.intermediate_bytes
    );
    s
}
