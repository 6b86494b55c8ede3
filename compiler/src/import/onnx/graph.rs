//! `ModelProto` -> IR graph: opsets, initializers, inputs with their shapes,
//! nodes in dependency order (ONNX files need not be sorted), attributes,
//! and outputs. Nodes whose inputs are all constants and whose results are
//! small (shape arithmetic) are evaluated here, so the shapes they feed are
//! static.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;

use prost::Message;

use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_shape_proto::dimension, type_proto,
};
use super::tensor::tensor_from_proto;
use crate::error::{Error, Result};
use crate::import::ImportOptions;
use crate::ir::{Attr, Attrs, DType, Graph, Tensor, ValueId, ValueType};
use crate::ops;

/// Results up to this many elements are computed at import when all their
/// inputs are constants (the `const_fold` pass handles the rest).
const FOLD_LIMIT: usize = 1 << 16;

pub fn load_bytes(bytes: &[u8], dir: Option<&Path>, opts: &ImportOptions) -> Result<Graph> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| Error::Invalid(format!("not an ONNX model (protobuf decode failed: {e})")))?;
    let graph = model.graph.as_ref().ok_or_else(|| {
        Error::Invalid("not an ONNX model: it has no graph (is this a ModelProto?)".into())
    })?;
    if model.opset_import.is_empty() {
        // IR version 3 made opset imports mandatory; older files imply opset 1.
        match model.ir_version {
            None => bail!(
                Invalid,
                "not an ONNX model: no IR version and no opset imports"
            ),
            Some(v) if v >= 3 => bail!(
                Invalid,
                "the model declares IR version {v} but imports no opset"
            ),
            Some(_) => {}
        }
    }
    let mut opsets = HashMap::new();
    for o in &model.opset_import {
        let domain = match o.domain() {
            "ai.onnx" => "",
            d => d,
        };
        opsets.insert(domain.to_string(), o.version());
    }
    // IR version 3 and older models carry no opset import: that is opset 1.
    let default_opset = opsets.get("").copied().unwrap_or(1);
    let functions: HashSet<&str> = model.functions.iter().map(|f| f.name()).collect();
    Builder {
        g: Graph::new(graph.name()),
        dir,
        opts,
        default_opset,
        opsets,
        functions,
    }
    .build(graph)
}

struct Builder<'a> {
    g: Graph,
    dir: Option<&'a Path>,
    opts: &'a ImportOptions,
    default_opset: i64,
    opsets: HashMap<String, i64>,
    functions: HashSet<&'a str>,
}

impl Builder<'_> {
    fn build(mut self, gp: &GraphProto) -> Result<Graph> {
        if !gp.sparse_initializer.is_empty() {
            bail!(Unsupported, "sparse initializers are not supported");
        }
        let mut inits = HashSet::new();
        for t in &gp.initializer {
            let name = t.name();
            let what = format!("initializer '{name}'");
            ensure!(!name.is_empty(), Invalid, "an initializer has no name");
            let value = tensor_from_proto(t, self.dir, &what)?;
            self.g.add_const(name, value)?;
            inits.insert(name);
        }
        for vi in &gp.input {
            let name = vi.name();
            if inits.contains(name) {
                continue; // old exporters list initializers as inputs too
            }
            self.add_input(vi)?;
        }
        for name in self.opts.shapes.keys().chain(self.opts.bind.keys()) {
            ensure!(
                gp.input.iter().any(|v| v.name() == name),
                Invalid,
                "--shape/bind names '{name}', which is not a graph input (inputs: {})",
                gp.input
                    .iter()
                    .map(|v| v.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for (i, np) in sort_nodes(gp, &self.g)? {
            self.add_node(i, np)?;
        }
        for vi in &gp.output {
            let id = self.g.find(vi.name()).ok_or_else(|| {
                Error::Invalid(format!(
                    "graph output '{}' is not computed by any node",
                    vi.name()
                ))
            })?;
            self.check_declared(vi, id)?;
            self.g.outputs.push(id);
        }
        ensure!(
            !self.g.outputs.is_empty(),
            Invalid,
            "the graph has no outputs"
        );
        Ok(self.g)
    }

    fn add_input(&mut self, vi: &ValueInfoProto) -> Result<()> {
        let name = vi.name();
        let (code, dims) = tensor_type(vi)?;
        let dtype = DType::from_onnx(code).ok_or_else(|| {
            Error::Unsupported(format!(
                "input '{name}': dtype {} is not supported",
                DType::onnx_name(code)
            ))
        })?;
        if let Some(t) = self.opts.bind.get(name) {
            ensure!(
                t.dtype() == dtype,
                Invalid,
                "input '{name}': bound value is {}, the model declares {dtype}",
                t.dtype()
            );
            self.g.add_const(name, t.clone())?;
            return Ok(());
        }
        let shape = match self.opts.shapes.get(name) {
            Some(s) => {
                if let Some(dims) = &dims {
                    ensure!(
                        dims.len() == s.len(),
                        Invalid,
                        "input '{name}': shape {s:?} given, but the model declares rank {}",
                        dims.len()
                    );
                    for (i, (d, &g)) in dims.iter().zip(s).enumerate() {
                        if let Ok(d) = d {
                            ensure!(
                                *d == g,
                                Invalid,
                                "input '{name}': shape {s:?} given, but the model fixes dimension {i} to {d}"
                            );
                        }
                    }
                }
                s.clone()
            }
            None => {
                let dims = dims.ok_or_else(|| {
                    Error::Invalid(format!(
                        "input '{name}' has no shape; give it with --shape {name}=D0,D1,..."
                    ))
                })?;
                dims.into_iter()
                    .enumerate()
                    .map(|(i, d)| {
                        d.map_err(|p| {
                            Error::Invalid(format!(
                                "input '{name}' dimension {i} is symbolic ({p}); give it with --shape {name}=D0,D1,..."
                            ))
                        })
                    })
                    .collect::<Result<_>>()?
            }
        };
        self.g.add_input(name, ValueType::new(dtype, shape))?;
        Ok(())
    }

    fn check_declared(&self, vi: &ValueInfoProto, id: ValueId) -> Result<()> {
        let Ok((code, dims)) = tensor_type(vi) else {
            return Ok(()); // outputs may omit their type
        };
        let ty = &self.g.value(id).ty;
        if code != 0 && DType::from_onnx(code) != Some(ty.dtype) {
            bail!(
                Invalid,
                "output '{}' is declared {} but computes {}",
                vi.name(),
                DType::onnx_name(code),
                ty.dtype
            );
        }
        if let Some(dims) = dims {
            let fixed_mismatch = dims.len() != ty.shape.len()
                || dims
                    .iter()
                    .zip(&ty.shape)
                    .any(|(d, &s)| matches!(d, Ok(d) if *d != s));
            ensure!(
                !fixed_mismatch,
                Invalid,
                "output '{}' is declared with shape {:?} but computes {}",
                vi.name(),
                dims.iter()
                    .map(|d| d.clone().map_err(|_| "?"))
                    .collect::<Vec<_>>(),
                ty
            );
        }
        Ok(())
    }

    fn add_node(&mut self, index: usize, np: &NodeProto) -> Result<()> {
        let op = np.op_type();
        let name = if np.name().is_empty() {
            format!("{op}_{index}")
        } else {
            np.name().to_string()
        };
        let ctx = |e: Error| e.in_node(&name, op);
        let domain = match np.domain() {
            "ai.onnx" => "",
            d => d,
        };
        if self.functions.contains(op) {
            return Err(ctx(Error::Unsupported(
                "model-local functions are not supported".into(),
            )));
        }
        if !domain.is_empty() {
            return Err(ctx(Error::Unsupported(format!(
                "op domain '{domain}' is not supported"
            ))));
        }
        let opset = self
            .opsets
            .get(domain)
            .copied()
            .unwrap_or(self.default_opset);
        let mut attrs = Attrs::default();
        for a in &np.attribute {
            attrs
                .0
                .insert(a.name().to_string(), attr(a, self.dir).map_err(ctx)?);
        }
        let inputs: Vec<Option<ValueId>> = np
            .input
            .iter()
            .map(|i| (!i.is_empty()).then(|| self.g.find(i).expect("sort_nodes checked inputs")))
            .collect();
        let outputs: Vec<String> = np
            .output
            .iter()
            .enumerate()
            .map(|(i, o)| {
                if o.is_empty() {
                    format!("{name}:unused{i}")
                } else {
                    o.clone()
                }
            })
            .collect();
        if op == "Constant" {
            let t = constant_value(&attrs).map_err(ctx)?;
            ensure!(
                outputs.len() == 1,
                Invalid,
                "node '{name}' (Constant): needs exactly one output"
            );
            self.g.add_const(&outputs[0], t)?;
            return Ok(());
        }
        let known = match ops::lookup(op) {
            Ok(_) => self
                .g
                .known_values(op, opset, &attrs, &inputs)
                .map_err(ctx)?,
            Err(_) => None,
        };
        if let Some(vals) = known {
            for (oname, t) in outputs.iter().zip(vals) {
                self.g.add_const(oname, t).map_err(ctx)?;
            }
            return Ok(());
        }
        let all_const = inputs
            .iter()
            .flatten()
            .all(|&v| self.g.value(v).constant.is_some());
        if all_const && ops::lookup(op).is_ok() {
            let types = self
                .g
                .infer(op, opset, &attrs, &inputs, outputs.len())
                .map_err(ctx)?;
            if types.iter().map(ValueType::numel).sum::<usize>() <= FOLD_LIMIT {
                let ins = inputs.iter().map(|i| i.map(|i| self.value_of(i))).collect();
                let vals = ops::eval(op, &attrs, opset, ins, &types).map_err(ctx)?;
                for (oname, t) in outputs.iter().zip(vals) {
                    self.g.add_const(oname, t).map_err(ctx)?;
                }
                return Ok(());
            }
        }
        self.g.add_node(&name, op, opset, attrs, inputs, &outputs)?;
        Ok(())
    }

    fn value_of(&self, id: ValueId) -> &Tensor {
        self.g
            .value(id)
            .constant
            .as_deref()
            .expect("checked constant")
    }
}

/// The element type code and dims (`Err(symbol)` for symbolic ones) of a
/// tensor-typed value; `None` dims when the shape is absent.
type Dims = Option<Vec<Result<usize, String>>>;

fn tensor_type(vi: &ValueInfoProto) -> Result<(i32, Dims)> {
    let name = vi.name();
    let t = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        Some(_) => bail!(
            Unsupported,
            "value '{name}' is not a tensor (sequences, maps and optionals are not supported)"
        ),
        None => bail!(Invalid, "value '{name}' has no type"),
    };
    let dims = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(dimension::Value::DimValue(v)) if *v >= 0 => Ok(*v as usize),
                Some(dimension::Value::DimValue(v)) => Err(format!("negative size {v}")),
                Some(dimension::Value::DimParam(p)) => Err(format!("'{p}'")),
                None => Err("unknown".to_string()),
            })
            .collect()
    });
    Ok((t.elem_type(), dims))
}

/// Orders nodes so each comes after the producers of its inputs, and checks
/// that every input is defined somewhere.
fn sort_nodes<'a>(gp: &'a GraphProto, g: &Graph) -> Result<Vec<(usize, &'a NodeProto)>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in gp.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o, i).is_some() || g.find(o).is_some() {
                bail!(Invalid, "value '{o}' is defined more than once");
            }
        }
    }
    let label = |n: &NodeProto, i: usize| {
        if n.name().is_empty() {
            format!("{}_{i}", n.op_type())
        } else {
            n.name().to_string()
        }
    };
    let mut deps: Vec<usize> = vec![0; gp.node.len()];
    let mut users: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, n) in gp.node.iter().enumerate() {
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            match producer.get(inp.as_str()) {
                Some(&p) => {
                    deps[i] += 1;
                    users.entry(p).or_default().push(i);
                }
                None if g.find(inp).is_some() => {}
                None => bail!(
                    Invalid,
                    "node '{}' ({}): input '{inp}' is not defined (no initializer, graph input or node output has that name)",
                    label(n, i),
                    n.op_type()
                ),
            }
        }
    }
    let mut ready: VecDeque<usize> = (0..gp.node.len()).filter(|&i| deps[i] == 0).collect();
    let mut order = Vec::with_capacity(gp.node.len());
    while let Some(i) = ready.pop_front() {
        order.push((i, &gp.node[i]));
        for &u in users.get(&i).into_iter().flatten() {
            deps[u] -= 1;
            if deps[u] == 0 {
                ready.push_back(u);
            }
        }
    }
    if order.len() < gp.node.len() {
        let i = (0..gp.node.len())
            .find(|&i| deps[i] > 0)
            .expect("some node is blocked");
        bail!(
            Invalid,
            "graph has a cycle through node '{}' ({})",
            label(&gp.node[i], i),
            gp.node[i].op_type()
        );
    }
    Ok(order)
}

fn attr(a: &AttributeProto, dir: Option<&Path>) -> Result<Attr> {
    let name = a.name();
    let what = format!("attribute '{name}'");
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if a.ref_attr_name.is_some() {
        bail!(
            Unsupported,
            "{what}: attribute references only occur in functions"
        );
    }
    Ok(match a.r#type() {
        AttributeType::Float => Attr::Float(a.f()),
        AttributeType::Int => Attr::Int(a.i()),
        AttributeType::String => Attr::String(s(a.s())),
        AttributeType::Tensor => Attr::Tensor(tensor_from_proto(
            a.t.as_ref()
                .ok_or_else(|| Error::Invalid(format!("{what}: no tensor")))?,
            dir,
            &what,
        )?),
        AttributeType::Graph => Attr::Graph(
            a.g.as_ref()
                .map(|g| g.name().to_string())
                .unwrap_or_default(),
        ),
        AttributeType::Floats => Attr::Floats(a.floats.clone()),
        AttributeType::Ints => Attr::Ints(a.ints.clone()),
        AttributeType::Strings => Attr::Strings(a.strings.iter().map(|b| s(b)).collect()),
        AttributeType::Tensors => Attr::Tensors(
            a.tensors
                .iter()
                .map(|t| tensor_from_proto(t, dir, &what))
                .collect::<Result<_>>()?,
        ),
        AttributeType::Graphs => {
            Attr::Graphs(a.graphs.iter().map(|g| g.name().to_string()).collect())
        }
        AttributeType::TypeProto | AttributeType::TypeProtos => Attr::Opaque("type_proto"),
        AttributeType::SparseTensor | AttributeType::SparseTensors => Attr::Opaque("sparse_tensor"),
        AttributeType::Undefined => bail!(Invalid, "{what} has no type"),
    })
}

fn constant_value(attrs: &Attrs) -> Result<Tensor> {
    let mut found = attrs
        .0
        .iter()
        .filter(|(k, _)| k.starts_with("value") || *k == "sparse_value");
    let (key, a) = found
        .next()
        .ok_or_else(|| Error::Invalid("Constant has no value attribute".into()))?;
    ensure!(
        found.next().is_none(),
        Invalid,
        "Constant has more than one value attribute"
    );
    Ok(match (key.as_str(), a) {
        ("value", Attr::Tensor(t)) => t.clone(),
        ("value_float", Attr::Float(f)) => Tensor::scalar(*f),
        ("value_floats", Attr::Floats(v)) => Tensor::from_vec(&[v.len()], v.clone())?,
        ("value_int", Attr::Int(i)) => Tensor::scalar(*i),
        ("value_ints", Attr::Ints(v)) => Tensor::from_vec(&[v.len()], v.clone())?,
        ("value_string" | "value_strings", _) => {
            bail!(Unsupported, "string constants are not supported")
        }
        ("sparse_value", _) => bail!(Unsupported, "sparse constants are not supported"),
        (k, a) => bail!(
            Invalid,
            "Constant attribute '{k}' has the wrong kind ({})",
            a.kind()
        ),
    })
}

pub fn input_names(bytes: &[u8]) -> Result<Vec<String>> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| Error::Invalid(format!("not an ONNX model (protobuf decode failed: {e})")))?;
    let g = model.graph.unwrap_or_default();
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    Ok(g.input
        .iter()
        .map(|v| v.name())
        .filter(|n| !inits.contains(n))
        .map(str::to_string)
        .collect())
}
