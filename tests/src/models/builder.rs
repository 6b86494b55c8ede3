//! A small ONNX graph builder for test models, writing the node names and
//! idioms `torch.onnx.export` produces (e.g. `/layer1/layer1.0/conv1/Conv`).

use cpucc::import::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType,
    tensor_shape_proto::{Dimension, dimension},
    type_proto,
};
use cpucc::import::onnx::tensor_to_proto;
use cpucc::ir::{DType, Tensor};
use cpucc::random::SplitMix64;

/// A dimension of a graph input: fixed, or symbolic like torch's dynamic axes.
#[derive(Clone, Copy)]
pub enum Dim {
    Fixed(usize),
    Sym(&'static str),
}

pub struct Builder {
    name: String,
    opset: i64,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    rng: SplitMix64,
    counter: usize,
}

pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

pub fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn value_info(name: &str, dtype: DType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Sym(s) => dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype.onnx_code()),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Builder {
    pub fn new(name: &str, opset: i64, seed: u64) -> Builder {
        Builder {
            name: name.into(),
            opset,
            nodes: Vec::new(),
            inits: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            rng: SplitMix64::new(seed),
            counter: 0,
        }
    }

    pub fn input(&mut self, name: &str, dtype: DType, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, dtype, dims));
        name.into()
    }

    pub fn output(&mut self, value: &str, dtype: DType, dims: &[Dim]) {
        self.outputs.push(value_info(value, dtype, dims));
    }

    /// Adds an initializer, suffixing the name if it is already taken.
    pub fn init(&mut self, name: &str, t: &Tensor) -> String {
        let mut unique = name.to_string();
        while self.inits.iter().any(|i| i.name() == unique) {
            self.counter += 1;
            unique = format!("{name}.{}", self.counter);
        }
        self.inits.push(tensor_to_proto(t, &unique));
        unique
    }

    /// An f32 initializer uniform in [lo, hi).
    pub fn uniform(&mut self, name: &str, shape: &[usize], lo: f64, hi: f64) -> String {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rng.uniform(lo, hi) as f32).collect();
        let t = Tensor::from_vec(shape, v).expect("length matches shape");
        self.init(name, &t)
    }

    /// Weights scaled to keep activations near unit variance (He-uniform).
    pub fn weight(&mut self, name: &str, shape: &[usize], fan_in: usize) -> String {
        let b = (3.0 / fan_in as f64).sqrt();
        self.uniform(name, shape, -b, b)
    }

    pub fn const_i64(&mut self, name: &str, v: &[i64]) -> String {
        let t = Tensor::from_vec(&[v.len()], v.to_vec()).expect("1-D");
        self.init(name, &t)
    }

    pub fn const_f32(&mut self, name: &str, v: f32) -> String {
        self.init(name, &Tensor::scalar(v))
    }

    /// A node with one output named after it, as torch names them.
    pub fn node(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.node_n(scope, op, inputs, attrs, 1).remove(0)
    }

    pub fn node_n(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        n_out: usize,
    ) -> Vec<String> {
        self.counter += 1;
        let name = format!("{scope}/{op}");
        let name = if self.nodes.iter().any(|n| n.name() == name) {
            format!("{name}_{}", self.counter)
        } else {
            name
        };
        let outputs: Vec<String> = (0..n_out).map(|i| format!("{name}_output_{i}")).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            name: Some(name),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
        outputs
    }

    pub fn finish(self) -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            producer_name: Some("cpucc-tests".into()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            graph: Some(GraphProto {
                name: Some(self.name),
                node: self.nodes,
                initializer: self.inits,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
