//! The IR graph: values (named, typed, statically shaped tensors) produced by
//! nodes, graph inputs or constants; nodes held in a `petgraph::StableGraph`
//! whose edges mirror the data dependencies, so passes can rewrite it while
//! node indices stay valid.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;

use crate::error::{Error, Result};
use crate::ir::{Attrs, DType, Tensor};
use crate::ops;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValueType {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl ValueType {
    pub fn new(dtype: DType, shape: impl Into<Vec<usize>>) -> ValueType {
        ValueType {
            dtype,
            shape: shape.into(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn of(t: &Tensor) -> ValueType {
        ValueType::new(t.dtype(), t.shape())
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// How a value's elements are laid out in memory. Importers produce `Onnx`
/// (row-major in the declared dimension order); the layout pass may choose
/// channels-last for convolutional graphs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    #[default]
    Onnx,
    Nhwc,
}

#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub ty: ValueType,
    pub layout: Layout,
    /// The node and output slot that computes this value; `None` for graph
    /// inputs and constants.
    pub producer: Option<(NodeIndex, usize)>,
    pub constant: Option<Arc<Tensor>>,
}

#[derive(Clone, Debug)]
pub struct Node {
    /// The node's name in the source model (generated when it had none), kept
    /// for errors and profiles.
    pub name: String,
    pub op: String,
    /// The opset version the node was written against; ops whose semantics
    /// changed between versions read it.
    pub opset: i64,
    pub attrs: Attrs,
    /// `None` marks an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
    /// Names of the source nodes a fusion merged into this one (empty when
    /// the node was not fused), so profiles and errors can name them.
    pub fused: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    nodes: StableGraph<Node, ValueId>,
    values: Vec<Value>,
    by_name: HashMap<String, ValueId>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

impl Graph {
    pub fn new(name: &str) -> Graph {
        Graph {
            name: name.to_string(),
            ..Graph::default()
        }
    }

    fn new_value(
        &mut self,
        name: &str,
        ty: ValueType,
        constant: Option<Arc<Tensor>>,
    ) -> Result<ValueId> {
        if self.by_name.contains_key(name) {
            bail!(Invalid, "value '{name}' is defined more than once");
        }
        let id = ValueId(self.values.len());
        self.values.push(Value {
            name: name.to_string(),
            ty,
            layout: Layout::Onnx,
            producer: None,
            constant,
        });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    pub fn add_input(&mut self, name: &str, ty: ValueType) -> Result<ValueId> {
        let id = self.new_value(name, ty, None)?;
        self.inputs.push(id);
        Ok(id)
    }

    pub fn add_const(&mut self, name: &str, t: Tensor) -> Result<ValueId> {
        self.new_value(name, ValueType::of(&t), Some(Arc::new(t)))
    }

    /// Adds a node after inferring its output types with the op table; errors
    /// name the node and op.
    pub fn add_node(
        &mut self,
        name: &str,
        op: &str,
        opset: i64,
        attrs: Attrs,
        inputs: Vec<Option<ValueId>>,
        output_names: &[String],
    ) -> Result<NodeIndex> {
        let out_types = self
            .infer(op, opset, &attrs, &inputs, output_names.len())
            .map_err(|e| e.in_node(name, op))?;
        let mut outputs = Vec::with_capacity(out_types.len());
        for (oname, ty) in output_names.iter().zip(out_types) {
            outputs.push(
                self.new_value(oname, ty, None)
                    .map_err(|e| e.in_node(name, op))?,
            );
        }
        let idx = self.nodes.add_node(Node {
            name: name.to_string(),
            op: op.to_string(),
            opset,
            attrs,
            inputs: inputs.clone(),
            outputs: outputs.clone(),
            fused: Vec::new(),
        });
        for (slot, v) in outputs.iter().enumerate() {
            self.values[v.0].producer = Some((idx, slot));
        }
        for v in inputs.into_iter().flatten() {
            if let Some((p, _)) = self.values[v.0].producer {
                self.nodes.add_edge(p, idx, v);
            }
        }
        Ok(idx)
    }

    /// Output types of `op` applied to `inputs`, as the op table infers them.
    pub fn infer(
        &self,
        op: &str,
        opset: i64,
        attrs: &Attrs,
        inputs: &[Option<ValueId>],
        num_outputs: usize,
    ) -> Result<Vec<ValueType>> {
        let def = ops::lookup(op)?;
        let ctx = self.infer_ctx(attrs, opset, inputs, num_outputs);
        let out = ops::infer(def, &ctx)?;
        if out.len() < num_outputs {
            bail!(
                Invalid,
                "{} outputs requested, the op has {}",
                num_outputs,
                out.len()
            );
        }
        Ok(out.into_iter().take(num_outputs.max(1)).collect())
    }

    /// The op's outputs when its input types alone determine them (see
    /// `ops::KnownFn`).
    pub fn known_values(
        &self,
        op: &str,
        opset: i64,
        attrs: &Attrs,
        inputs: &[Option<ValueId>],
    ) -> Result<Option<Vec<Tensor>>> {
        let Some(known) = ops::lookup(op)?.known else {
            return Ok(None);
        };
        known(&self.infer_ctx(attrs, opset, inputs, 1)).map(Some)
    }

    fn infer_ctx<'a>(
        &'a self,
        attrs: &'a Attrs,
        opset: i64,
        inputs: &[Option<ValueId>],
        num_outputs: usize,
    ) -> ops::InferCtx<'a> {
        ops::InferCtx {
            attrs,
            opset,
            inputs: inputs
                .iter()
                .map(|v| v.map(|v| &self.values[v.0].ty))
                .collect(),
            consts: inputs
                .iter()
                .map(|v| v.and_then(|v| self.values[v.0].constant.as_deref()))
                .collect(),
            names: inputs
                .iter()
                .map(|v| v.map(|v| self.values[v.0].name.as_str()))
                .collect(),
            num_outputs,
        }
    }

    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.0]
    }

    pub fn value_mut(&mut self, id: ValueId) -> &mut Value {
        &mut self.values[id.0]
    }

    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.by_name.get(name).copied()
    }

    pub fn node(&self, idx: NodeIndex) -> &Node {
        &self.nodes[idx]
    }

    /// The number of values; `ValueId`s are `0..value_count()`.
    pub fn value_count(&self) -> usize {
        self.values.len()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.node_count()
    }

    /// Values that are constants (weights and folded results).
    pub fn constants(&self) -> impl Iterator<Item = (ValueId, &Value)> {
        self.values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.constant.is_some())
            .map(|(i, v)| (ValueId(i), v))
    }

    /// Nodes in dependency order; ties keep insertion order so the text form
    /// is stable.
    pub fn topo_order(&self) -> Result<Vec<NodeIndex>> {
        let mut indeg: HashMap<NodeIndex, usize> = self
            .nodes
            .node_indices()
            .map(|n| (n, self.nodes.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: std::collections::BTreeSet<NodeIndex> = indeg
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| *n)
            .collect();
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for e in self.nodes.edges_directed(n, Direction::Outgoing) {
                let d = indeg.get_mut(&e.target()).expect("edge target is a node");
                *d -= 1;
                if *d == 0 {
                    ready.insert(e.target());
                }
            }
        }
        if order.len() != indeg.len() {
            let stuck = indeg
                .iter()
                .filter(|(_, d)| **d > 0)
                .map(|(n, _)| self.nodes[*n].name.clone())
                .min()
                .unwrap_or_default();
            return Err(Error::Invalid(format!(
                "graph has a cycle through node '{stuck}'"
            )));
        }
        Ok(order)
    }

    /// Nodes reading `v`, with the input slot.
    pub fn consumers(&self, v: ValueId) -> Vec<(NodeIndex, usize)> {
        self.nodes
            .node_indices()
            .flat_map(|n| {
                self.nodes[n]
                    .inputs
                    .iter()
                    .enumerate()
                    .filter(move |(_, i)| **i == Some(v))
                    .map(move |(slot, _)| (n, slot))
            })
            .collect()
    }

    /// Every node index, in insertion order.
    pub fn node_indices(&self) -> Vec<NodeIndex> {
        self.nodes.node_indices().collect()
    }

    /// Mutable access for attribute, name and `fused` edits. Changing
    /// `inputs` or `outputs` through this breaks the edge invariant: use
    /// [`Graph::set_inputs`] instead.
    pub fn node_mut(&mut self, idx: NodeIndex) -> &mut Node {
        &mut self.nodes[idx]
    }

    /// Replaces a node's inputs and rewires its dependency edges.
    pub fn set_inputs(&mut self, idx: NodeIndex, inputs: Vec<Option<ValueId>>) {
        self.nodes[idx].inputs = inputs;
        self.relink(idx);
    }

    fn relink(&mut self, idx: NodeIndex) {
        let incoming: Vec<_> = self
            .nodes
            .edges_directed(idx, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in incoming {
            self.nodes.remove_edge(e);
        }
        let inputs = self.nodes[idx].inputs.clone();
        for v in inputs.into_iter().flatten() {
            if let Some((p, _)) = self.values[v.0].producer {
                self.nodes.add_edge(p, idx, v);
            }
        }
    }

    /// Removes a node; its outputs are left without a producer, so callers
    /// first redirect their uses ([`Graph::replace_uses`]) or know they are
    /// dead.
    pub fn remove_node(&mut self, idx: NodeIndex) -> Option<Node> {
        let node = self.nodes.remove_node(idx)?;
        for &o in &node.outputs {
            self.values[o.0].producer = None;
        }
        Some(node)
    }

    /// Makes every reader of `old` (nodes and graph outputs) read `new`.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        for (n, _) in self.consumers(old) {
            let inputs = self.nodes[n]
                .inputs
                .iter()
                .map(|&i| if i == Some(old) { Some(new) } else { i })
                .collect();
            self.set_inputs(n, inputs);
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Replaces a value's constant data (same type), e.g. after folding a
    /// scale into weights.
    pub fn set_constant(&mut self, id: ValueId, t: Tensor) -> Result<()> {
        let ty = ValueType::of(&t);
        if ty != self.values[id.0].ty {
            bail!(
                Internal,
                "constant '{}' changes type from {} to {}",
                self.values[id.0].name,
                self.values[id.0].ty,
                ty
            );
        }
        self.values[id.0].constant = Some(Arc::new(t));
        Ok(())
    }

    /// Exchanges the names of two values, so a rewrite can give the value
    /// that replaces another (e.g. a fused node's output) the name the model
    /// used for it, graph outputs included.
    pub fn swap_names(&mut self, a: ValueId, b: ValueId) {
        let (na, nb) = (self.values[a.0].name.clone(), self.values[b.0].name.clone());
        self.by_name.insert(na.clone(), b);
        self.by_name.insert(nb.clone(), a);
        self.values[a.0].name = nb;
        self.values[b.0].name = na;
    }

    /// A value name not yet used, derived from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.by_name.contains_key(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !self.by_name.contains_key(n))
            .expect("an unused name exists")
    }

    /// Drops values nothing refers to (no node reads or writes them and they
    /// are not graph inputs or outputs), renumbering the rest. Removing nodes
    /// leaves such values behind; the printer lists every constant, so
    /// dead-code elimination calls this.
    pub fn compact(&mut self) {
        let mut used = vec![false; self.values.len()];
        for &v in self.inputs.iter().chain(&self.outputs) {
            used[v.0] = true;
        }
        for n in self.nodes.node_indices() {
            let node = &self.nodes[n];
            for v in node.inputs.iter().flatten().chain(&node.outputs) {
                used[v.0] = true;
            }
        }
        let mut remap = vec![None; self.values.len()];
        let mut values = Vec::new();
        for (i, v) in std::mem::take(&mut self.values).into_iter().enumerate() {
            if used[i] {
                remap[i] = Some(ValueId(values.len()));
                values.push(v);
            }
        }
        let m = |v: ValueId| remap[v.0].expect("used values are kept");
        self.values = values;
        self.by_name = self
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.clone(), ValueId(i)))
            .collect();
        self.inputs = self.inputs.iter().map(|&v| m(v)).collect();
        self.outputs = self.outputs.iter().map(|&v| m(v)).collect();
        for n in self.nodes.node_indices().collect::<Vec<_>>() {
            let node = &mut self.nodes[n];
            node.inputs = node.inputs.iter().map(|i| i.map(m)).collect();
            node.outputs = node.outputs.iter().map(|&o| m(o)).collect();
        }
        for w in self.nodes.edge_weights_mut() {
            *w = m(*w);
        }
    }
}
