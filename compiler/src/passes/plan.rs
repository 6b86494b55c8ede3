//! The static memory plan: where every value lives at run time.
//!
//! Values get one [`Slot`] each (indexed by `ValueId.0`):
//! - `Input(i)` / `Const`: graph inputs (first index when listed twice) and
//!   constants live in caller / model memory. A graph output that is a graph
//!   input or a constant keeps that slot; the backend copies it out.
//! - `Output(i)`: a value a node computes that is graph output `i` (the
//!   first index when listed twice; the backend copies it to the others),
//!   including when a view op computes it (the op then copies).
//! - `View(src)`: the result of Reshape/Squeeze/Unsqueeze/Flatten/Identity
//!   shares the bytes of its data input. `src` is the root: never itself a
//!   `View`, always `Arena`, `Input`, `Output` or `Const`. Only between
//!   `Layout::Onnx` values (a reshape of an NHWC tensor moves elements).
//! - `Arena { offset }`: every other value a node writes, read or not.
//! - `Unused`: values no node, input, constant or output refers to.
//!
//! Arena invariants: offsets are multiples of [`ALIGN`]; a value is live
//! from its producer's position in `Graph::topo_order` to the position of the
//! last node reading it or any view of it (its producer's, when unread); two
//! arena values live at the same time never share a byte, except in-place
//! reuse: an elementwise op (same-index read-before-write) may write its
//! output exactly over an input that is an `Arena` value of the same shape
//! and byte size whose life ends at that op, when no other input of the op
//! is a view of it; a fused Conv/Gemm/MatMul likewise over its residual
//! (input 3) when no other input is it or a view of it and alpha is 1 (the
//! kernels then accumulate onto the residual, `Gemm::accumulates`). Blocks
//! are reused best-fit (the smallest free block that fits, split; freed
//! neighbours coalesce). `arena_bytes` is the peak extent;
//! `intermediate_bytes` the unaligned sum of every value a node computes
//! that is not a graph output, views included.

use std::collections::HashMap;

use crate::error::Result;
use crate::ir::{Graph, Layout, ValueId};

pub const ALIGN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Input(usize),
    Output(usize),
    Const,
    Arena { offset: usize },
    View(ValueId),
    Unused,
}

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub slots: Vec<Slot>,
    pub arena_bytes: usize,
    pub intermediate_bytes: usize,
}

/// Fused GEMM-like ops whose output may take over their residual input
/// (index [`RESIDUAL`]): the kernels then start from the residual in the
/// output and add the products onto it (`Gemm::accumulates`), so a
/// residual block reads and writes one buffer, not two. Gemm's `alpha`
/// would scale the residual too, so only `alpha = 1` qualifies.
const ACCUMULATING: &[&str] = &["cpucc.FusedConv", "cpucc.FusedGemm", "cpucc.FusedMatMul"];
const RESIDUAL: usize = 3;

const VIEW_OPS: &[&str] = &["Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"];

/// Ops computing each output element from the input elements at the same
/// (broadcast) index only, so the output may overwrite a same-shaped input.
const ELEMENTWISE: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "And",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "BitwiseAnd",
    "BitwiseNot",
    "BitwiseOr",
    "BitwiseXor",
    "Cast",
    "Ceil",
    "Celu",
    "Clip",
    "Cos",
    "Cosh",
    "Div",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "IsInf",
    "IsNaN",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "Max",
    "Mean",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "PRelu",
    "Pow",
    "Reciprocal",
    "Relu",
    "Round",
    "Selu",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Softplus",
    "Softsign",
    "Sqrt",
    "Sub",
    "Sum",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Where",
    "Xor",
];

pub fn bytes(g: &Graph, v: ValueId) -> usize {
    let ty = &g.value(v).ty;
    ty.numel() * ty.dtype.size_bytes()
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

pub fn plan(g: &Graph) -> Result<MemoryPlan> {
    let order = g.topo_order()?;
    let mut slots = vec![Slot::Unused; g.value_count()];

    for (i, &v) in g.inputs.iter().enumerate().rev() {
        slots[v.0] = Slot::Input(i);
    }
    for (id, _) in g.constants() {
        slots[id.0] = Slot::Const;
    }
    let mut intermediate_bytes = 0;
    for &n in &order {
        let node = g.node(n);
        for &o in &node.outputs {
            if let Some(i) = g.outputs.iter().position(|&x| x == o) {
                slots[o.0] = Slot::Output(i);
                continue;
            }
            intermediate_bytes += bytes(g, o);
            slots[o.0] = Slot::Arena { offset: 0 };
            if VIEW_OPS.contains(&node.op.as_str())
                && let Some(Some(src)) = node.inputs.first()
                && g.value(*src).layout == Layout::Onnx
                && g.value(o).layout == Layout::Onnx
            {
                let root = match slots[src.0] {
                    Slot::View(r) => r,
                    _ => *src,
                };
                slots[o.0] = Slot::View(root);
            }
        }
    }

    // Lifetimes of arena values, in positions of `order`; a read of a view
    // is a read of its root.
    let mut def = HashMap::new();
    let mut last = HashMap::new();
    for (t, &n) in order.iter().enumerate() {
        let node = g.node(n);
        for &o in &node.outputs {
            if matches!(slots[o.0], Slot::Arena { .. }) {
                def.insert(o, t);
                last.insert(o, t);
            }
        }
        for &i in node.inputs.iter().flatten() {
            let root = root_of(&slots, i);
            if let Some(l) = last.get_mut(&root) {
                *l = t;
            }
        }
    }
    let mut free = FreeList::default();
    let mut ending: HashMap<usize, Vec<ValueId>> = HashMap::new();
    for (&v, &l) in &last {
        ending.entry(l).or_default().push(v);
    }
    for list in ending.values_mut() {
        list.sort();
    }
    let mut offsets: HashMap<ValueId, usize> = HashMap::new();
    let mut taken_over: Vec<ValueId> = Vec::new();
    for (t, &n) in order.iter().enumerate() {
        let node = g.node(n);
        taken_over.clear();
        for &o in &node.outputs {
            if !matches!(slots[o.0], Slot::Arena { .. }) {
                continue;
            }
            let size = align(bytes(g, o));
            let reuse = in_place_source(g, node, o, &slots, &last, t, &taken_over);
            let off = match reuse {
                Some(src) => {
                    taken_over.push(src);
                    offsets[&src]
                }
                None => free.alloc(size),
            };
            offsets.insert(o, off);
        }
        for v in ending.get(&t).into_iter().flatten() {
            if !taken_over.contains(v) {
                free.release(offsets[v], align(bytes(g, *v)));
            }
        }
    }
    for (v, off) in offsets {
        slots[v.0] = Slot::Arena { offset: off };
    }
    Ok(MemoryPlan {
        slots,
        arena_bytes: free.top,
        intermediate_bytes,
    })
}

fn root_of(slots: &[Slot], v: ValueId) -> ValueId {
    match slots[v.0] {
        Slot::View(r) => r,
        _ => v,
    }
}

/// The input whose block `o` may take over, if the op allows it (see the
/// module doc).
fn in_place_source(
    g: &Graph,
    node: &crate::ir::Node,
    o: ValueId,
    slots: &[Slot],
    last: &HashMap<ValueId, usize>,
    t: usize,
    taken: &[ValueId],
) -> Option<ValueId> {
    if node.outputs.len() != 1 {
        return None;
    }
    let accumulating = ACCUMULATING.contains(&node.op.as_str());
    let candidates: Vec<ValueId> = if ELEMENTWISE.contains(&node.op.as_str()) {
        node.inputs.iter().flatten().copied().collect()
    } else if accumulating && node.attrs.float("alpha", 1.0).ok() == Some(1.0) {
        node.inputs
            .get(RESIDUAL)
            .copied()
            .flatten()
            .into_iter()
            .collect()
    } else {
        return None;
    };
    let out = g.value(o);
    candidates.into_iter().find(|&i| {
        let v = g.value(i);
        matches!(slots[i.0], Slot::Arena { .. })
            && last.get(&i) == Some(&t)
            && !taken.contains(&i)
            && v.ty.shape == out.ty.shape
            && v.ty.dtype.size_bytes() == out.ty.dtype.size_bytes()
            && v.layout == out.layout
            && node.inputs.iter().enumerate().all(|(at, j)| {
                // An elementwise op reads an input twice at the same index;
                // a GEMM reads its other inputs everywhere.
                let same_index = !accumulating || at == RESIDUAL;
                j.is_none_or(|j| (j == i && same_index) || root_of(slots, j) != i)
            })
    })
}

/// Free arena blocks, sorted by offset and coalesced, below `top` (the
/// arena's extent so far).
#[derive(Default)]
struct FreeList {
    blocks: Vec<(usize, usize)>,
    top: usize,
}

impl FreeList {
    fn alloc(&mut self, size: usize) -> usize {
        if size == 0 {
            return 0;
        }
        let best = self
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.1 >= size)
            .min_by_key(|(_, b)| b.1)
            .map(|(i, _)| i);
        if let Some(i) = best {
            let (off, len) = self.blocks[i];
            if len == size {
                self.blocks.remove(i);
            } else {
                self.blocks[i] = (off + size, len - size);
            }
            return off;
        }
        // Nothing fits: grow the last free block if it ends at the top.
        if let Some(&(off, len)) = self.blocks.last()
            && off + len == self.top
        {
            self.blocks.pop();
            self.top = off + size;
            return off;
        }
        let off = self.top;
        self.top += size;
        off
    }

    fn release(&mut self, off: usize, size: usize) {
        if size == 0 {
            return;
        }
        let i = self.blocks.partition_point(|b| b.0 < off);
        self.blocks.insert(i, (off, size));
        if i + 1 < self.blocks.len() && off + size == self.blocks[i + 1].0 {
            self.blocks[i].1 += self.blocks[i + 1].1;
            self.blocks.remove(i + 1);
        }
        if i > 0 && self.blocks[i - 1].0 + self.blocks[i - 1].1 == off {
            self.blocks[i - 1].1 += self.blocks[i].1;
            self.blocks.remove(i);
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
