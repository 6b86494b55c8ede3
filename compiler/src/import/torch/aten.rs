//! The one ATen → IR table, shared by the TorchScript (`.pt`) and
//! `torch.export` (`.pt2`) importers (the ONNX importer's counterpart is the
//! op table itself, since IR ops are ONNX ops).
//!
//! Each entry names an aten op, its schema's argument names (so keyword and
//! positional arguments bind alike, and `.pt2` named arguments bind by
//! name), and a function building IR nodes from the bound arguments.
//! Shapes are static, so `aten::size` is a number and shape arithmetic on
//! numbers happens here; small results whose inputs are all constants are
//! evaluated at import, as in the ONNX importer.

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::error::{Error, Result};
use crate::ir::{Attr, Attrs, DType, Graph, Tensor, ValueId, ValueType};
use crate::ops;

/// The opset IR nodes from torch files are built at (ONNX `Attention`
/// needs 23).
pub const OPSET: i64 = 23;

/// Results up to this many elements are computed at import when all their
/// inputs are constants.
const FOLD_LIMIT: usize = 1 << 16;

/// A value of the source program: tensors are IR values, everything else
/// (sizes, flags, lists) is known at import.
#[derive(Clone, Debug)]
pub enum Arg {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tensor(ValueId),
    /// Lists and tuples.
    List(Vec<Arg>),
    Dtype(DType),
    /// `torch.device(...)`, memory formats, layouts: accepted and ignored.
    Opaque(&'static str),
}

impl Arg {
    pub fn kind(&self) -> &'static str {
        match self {
            Arg::None => "None",
            Arg::Bool(_) => "bool",
            Arg::Int(_) => "int",
            Arg::Float(_) => "float",
            Arg::Str(_) => "str",
            Arg::Tensor(_) => "Tensor",
            Arg::List(_) => "list",
            Arg::Dtype(_) => "dtype",
            Arg::Opaque(k) => k,
        }
    }
}

/// Builds the IR graph, folding constant subexpressions.
pub struct Builder {
    pub g: Graph,
    count: usize,
}

impl Builder {
    pub fn new(name: &str) -> Builder {
        Builder {
            g: Graph::new(name),
            count: 0,
        }
    }

    pub fn ty(&self, v: ValueId) -> &ValueType {
        &self.g.value(v).ty
    }

    pub fn rank(&self, v: ValueId) -> usize {
        self.ty(v).shape.len()
    }

    pub fn konst(&mut self, t: Tensor) -> Result<ValueId> {
        let name = self.g.fresh_name("const");
        self.g.add_const(&name, t)
    }

    pub fn const_of(&self, v: ValueId) -> Option<&Tensor> {
        self.g.value(v).constant.as_deref()
    }

    fn ints_const(&mut self, v: &[i64]) -> Result<ValueId> {
        self.konst(Tensor::from_vec(&[v.len()], v.to_vec())?)
    }

    /// Adds `op` (or its value, when its inputs are constants and the
    /// result is small) and returns its outputs.
    pub fn node(
        &mut self,
        op: &str,
        attrs: &[(&str, Attr)],
        inputs: &[Option<ValueId>],
        num_outputs: usize,
    ) -> Result<Vec<ValueId>> {
        let mut a = Attrs::default();
        for (k, v) in attrs {
            a.set(k, v.clone());
        }
        self.count += 1;
        let name = format!("{op}_{}", self.count);
        let ctx = |e: Error| e.in_node(&name, op);
        let outs: Vec<String> = (0..num_outputs)
            .map(|i| self.g.fresh_name(&format!("{name}:{i}")))
            .collect();
        let inputs = inputs.to_vec();
        if let Some(vals) = self.g.known_values(op, OPSET, &a, &inputs).map_err(ctx)? {
            return vals
                .into_iter()
                .take(num_outputs)
                .map(|t| self.konst(t))
                .collect();
        }
        let all_const = inputs
            .iter()
            .flatten()
            .all(|&v| self.g.value(v).constant.is_some());
        if all_const {
            let types = self
                .g
                .infer(op, OPSET, &a, &inputs, num_outputs)
                .map_err(ctx)?;
            if types.iter().map(ValueType::numel).sum::<usize>() <= FOLD_LIMIT {
                let ins = inputs
                    .iter()
                    .map(|i| i.map(|i| self.const_of(i).expect("checked constant")))
                    .collect();
                let vals = ops::eval(op, &a, OPSET, ins, &types).map_err(ctx)?;
                return vals.into_iter().map(|t| self.konst(t)).collect();
            }
        }
        let idx = self.g.add_node(&name, op, OPSET, a, inputs, &outs)?;
        Ok(self.g.node(idx).outputs.clone())
    }

    pub fn one(&mut self, op: &str, attrs: &[(&str, Attr)], inputs: &[ValueId]) -> Result<ValueId> {
        let ins: Vec<_> = inputs.iter().map(|&v| Some(v)).collect();
        Ok(self.node(op, attrs, &ins, 1)?[0])
    }

    /// A tensor argument; numbers become 0-d constants (i64, f32, bool).
    pub fn tensor(&mut self, a: &Arg) -> Result<ValueId> {
        match a {
            Arg::Tensor(v) => Ok(*v),
            Arg::Int(i) => self.konst(Tensor::scalar(*i)),
            Arg::Float(f) => self.konst(Tensor::scalar(*f as f32)),
            Arg::Bool(b) => self.konst(Tensor::scalar(*b)),
            a => bail!(Invalid, "expected a tensor, found {}", a.kind()),
        }
    }

    /// A number as a 0-d tensor of `dtype`.
    fn scalar_as(&mut self, a: &Arg, dtype: DType) -> Result<ValueId> {
        let v = float(a)?;
        self.konst(Tensor::from_f64s(dtype, &[], &[v])?)
    }

    fn cast(&mut self, v: ValueId, to: DType) -> Result<ValueId> {
        if self.ty(v).dtype == to {
            return Ok(v);
        }
        self.one("Cast", &[("to", Attr::Int(to.onnx_code() as i64))], &[v])
    }

    /// An integer argument: ints, bools, and constant one-element tensors
    /// (`prim::NumToTensor` results).
    pub fn int(&self, a: &Arg) -> Result<i64> {
        match a {
            Arg::Int(i) => Ok(*i),
            Arg::Bool(b) => Ok(*b as i64),
            Arg::Tensor(v) => match self.const_of(*v) {
                Some(t) if t.len() == 1 && !t.dtype().is_float() => Ok(t.to_i64_vec()?[0]),
                Some(t) if t.len() == 1 => Ok(t.scalar_f64()? as i64),
                _ => bail!(
                    Unsupported,
                    "an integer computed from tensor data at run time (cpucc needs static shapes)"
                ),
            },
            a => bail!(Invalid, "expected an int, found {}", a.kind()),
        }
    }

    pub fn ints(&self, a: &Arg) -> Result<Vec<i64>> {
        match a {
            Arg::List(l) => l.iter().map(|x| self.int(x)).collect(),
            Arg::Tensor(v) if self.const_of(*v).is_some_and(|t| t.rank() == 1) => {
                self.const_of(*v).expect("checked").to_i64_vec()
            }
            a => Ok(vec![self.int(a)?]),
        }
    }
}

fn float(a: &Arg) -> Result<f64> {
    match a {
        Arg::Float(f) => Ok(*f),
        Arg::Int(i) => Ok(*i as f64),
        Arg::Bool(b) => Ok(*b as i64 as f64),
        a => bail!(Invalid, "expected a number, found {}", a.kind()),
    }
}

fn boolean(a: &Arg, default: bool) -> Result<bool> {
    match a {
        Arg::None => Ok(default),
        Arg::Bool(b) => Ok(*b),
        Arg::Int(i) => Ok(*i != 0),
        a => bail!(Invalid, "expected a bool, found {}", a.kind()),
    }
}

/// The c10 `ScalarType` codes TorchScript passes dtypes as.
pub fn scalar_type(code: i64) -> Result<DType> {
    Ok(match code {
        0 => DType::U8,
        1 => DType::I8,
        2 => DType::I16,
        3 => DType::I32,
        4 => DType::I64,
        5 => DType::F16,
        6 => DType::F32,
        7 => DType::F64,
        11 => DType::Bool,
        15 => DType::BF16,
        27 => DType::U16,
        28 => DType::U32,
        29 => DType::U64,
        c => bail!(Unsupported, "torch scalar type {c}"),
    })
}

fn dtype_arg(a: &Arg) -> Result<Option<DType>> {
    match a {
        Arg::None => Ok(None),
        Arg::Dtype(d) => Ok(Some(*d)),
        Arg::Int(c) => scalar_type(*c).map(Some),
        a => bail!(Invalid, "expected a dtype, found {}", a.kind()),
    }
}

fn axis(d: i64, rank: usize) -> Result<i64> {
    let r = rank.max(1) as i64;
    ensure!(
        (-r..r).contains(&d),
        Invalid,
        "dimension {d} is out of range for rank {rank}"
    );
    Ok(if d < 0 { d + r } else { d })
}

/// `[a, b]` → `[a, b]`; `[a]` → `[a; n]` (torch's int[2] broadcast).
fn expand(v: Vec<i64>, n: usize) -> Vec<i64> {
    if v.len() == 1 { vec![v[0]; n] } else { v }
}

type Handler = fn(&mut Builder, &[Arg]) -> Result<Arg>;

struct Entry {
    params: &'static [&'static str],
    f: Handler,
}

macro_rules! table {
    ($($name:literal ($($p:literal),*) => $f:expr;)*) => {
        static TABLE: LazyLock<HashMap<&'static str, Entry>> = LazyLock::new(|| {
            let mut t = HashMap::new();
            $(
                let old = t.insert($name, Entry { params: &[$($p),*], f: $f });
                assert!(old.is_none(), "aten op {} is listed twice", $name);
            )*
            t
        });
    };
}

table! {
    "conv1d" ("input", "weight", "bias", "stride", "padding", "dilation", "groups") => conv;
    "conv2d" ("input", "weight", "bias", "stride", "padding", "dilation", "groups") => conv;
    "conv3d" ("input", "weight", "bias", "stride", "padding", "dilation", "groups") => conv;
    "_convolution" ("input", "weight", "bias", "stride", "padding", "dilation", "transposed",
        "output_padding", "groups", "benchmark", "deterministic", "cudnn_enabled", "allow_tf32")
        => convolution;
    "convolution" ("input", "weight", "bias", "stride", "padding", "dilation", "transposed",
        "output_padding", "groups") => convolution;
    "conv_transpose2d" ("input", "weight", "bias", "stride", "padding", "output_padding",
        "groups", "dilation") => conv_transpose;
    "linear" ("input", "weight", "bias") => linear;
    "addmm" ("self", "mat1", "mat2", "beta", "alpha") => addmm;
    "matmul" ("self", "other") => |b, a| mm(b, a);
    "mm" ("self", "mat2") => |b, a| mm(b, a);
    "bmm" ("self", "mat2") => |b, a| mm(b, a);
    "relu" ("self") => |b, a| unary(b, a, "Relu");
    "relu_" ("self") => |b, a| unary(b, a, "Relu");
    "sigmoid" ("self") => |b, a| unary(b, a, "Sigmoid");
    "sigmoid_" ("self") => |b, a| unary(b, a, "Sigmoid");
    "tanh" ("self") => |b, a| unary(b, a, "Tanh");
    "tanh_" ("self") => |b, a| unary(b, a, "Tanh");
    "hardswish" ("self") => |b, a| unary(b, a, "HardSwish");
    "hardswish_" ("self") => |b, a| unary(b, a, "HardSwish");
    "exp" ("self") => |b, a| unary(b, a, "Exp");
    "sqrt" ("self") => |b, a| unary(b, a, "Sqrt");
    "erf" ("self") => |b, a| unary(b, a, "Erf");
    "neg" ("self") => |b, a| unary(b, a, "Neg");
    "rsqrt" ("self") => |b, a| {
        let s = unary(b, a, "Sqrt")?;
        binary(b, "Div", &Arg::Float(1.0), &s)
    };
    "hardsigmoid" ("self") => hardsigmoid;
    "hardsigmoid_" ("self") => hardsigmoid;
    "silu" ("self") => silu;
    "silu_" ("self") => silu;
    "gelu" ("self", "approximate") => gelu;
    "hardtanh" ("self", "min_val", "max_val") => hardtanh;
    "hardtanh_" ("self", "min_val", "max_val") => hardtanh;
    "relu6" ("self") => |b, a| hardtanh(b, &[a[0].clone(), Arg::Float(0.0), Arg::Float(6.0)]);
    "add" ("self", "other", "alpha") => |b, a| add_sub(b, a, "Add");
    "add_" ("self", "other", "alpha") => |b, a| add_sub(b, a, "Add");
    "sub" ("self", "other", "alpha") => |b, a| add_sub(b, a, "Sub");
    "sub_" ("self", "other", "alpha") => |b, a| add_sub(b, a, "Sub");
    "rsub" ("self", "other", "alpha") => |b, a| {
        add_sub(b, &[a[1].clone(), a[0].clone(), a[2].clone()], "Sub")
    };
    "mul" ("self", "other") => |b, a| binary(b, "Mul", &a[0], &a[1]);
    "mul_" ("self", "other") => |b, a| binary(b, "Mul", &a[0], &a[1]);
    "div" ("self", "other", "rounding_mode") => div;
    "div_" ("self", "other", "rounding_mode") => div;
    "floordiv" ("self", "other") => |b, a| div(b, &[a[0].clone(), a[1].clone(), Arg::Str("floor".into())]);
    "pow" ("self", "exponent") => |b, a| binary(b, "Pow", &a[0], &a[1]);
    "batch_norm" ("input", "weight", "bias", "running_mean", "running_var", "training",
        "momentum", "eps", "cudnn_enabled") => |b, a| {
        batch_norm(b, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[7])
    };
    "_native_batch_norm_legit_no_training" ("input", "weight", "bias", "running_mean",
        "running_var", "momentum", "eps") => |b, a| {
        let y = batch_norm(b, &a[0], &a[1], &a[2], &a[3], &a[4], &Arg::Bool(false), &a[6])?;
        Ok(Arg::List(vec![y, Arg::None, Arg::None]))
    };
    "layer_norm" ("input", "normalized_shape", "weight", "bias", "eps", "cudnn_enable")
        => |b, a| layer_norm(b, a);
    "native_layer_norm" ("input", "normalized_shape", "weight", "bias", "eps") => |b, a| {
        Ok(Arg::List(vec![layer_norm(b, a)?, Arg::None, Arg::None]))
    };
    "max_pool2d" ("self", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
        => |b, a| max_pool(b, a, 2);
    "max_pool1d" ("self", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
        => |b, a| max_pool(b, a, 1);
    "avg_pool2d" ("self", "kernel_size", "stride", "padding", "ceil_mode",
        "count_include_pad", "divisor_override") => |b, a| avg_pool(b, a, 2);
    "avg_pool1d" ("self", "kernel_size", "stride", "padding", "ceil_mode",
        "count_include_pad") => |b, a| avg_pool(b, a, 1);
    "adaptive_avg_pool2d" ("self", "output_size") => adaptive_avg_pool;
    "adaptive_avg_pool1d" ("self", "output_size") => adaptive_avg_pool;
    "mean" ("self", "dim", "keepdim", "dtype") => |b, a| reduce(b, a, "ReduceMean");
    "sum" ("self", "dim", "keepdim", "dtype") => |b, a| reduce(b, a, "ReduceSum");
    "softmax" ("self", "dim", "dtype") => |b, a| softmax(b, a, "Softmax");
    "_softmax" ("self", "dim", "half_to_float") => |b, a| softmax(b, &a[..2], "Softmax");
    "log_softmax" ("self", "dim", "dtype") => |b, a| softmax(b, a, "LogSoftmax");
    "_log_softmax" ("self", "dim", "half_to_float") => |b, a| softmax(b, &a[..2], "LogSoftmax");
    "flatten" ("self", "start_dim", "end_dim") => flatten;
    "view" ("self", "size") => reshape;
    "reshape" ("self", "shape") => reshape;
    "_unsafe_view" ("self", "size") => reshape;
    "unflatten" ("self", "dim", "sizes") => unflatten;
    "permute" ("self", "dims") => permute;
    "transpose" ("self", "dim0", "dim1") => transpose;
    "t" ("self") => |b, a| {
        let x = b.tensor(&a[0])?;
        match b.rank(x) {
            0 | 1 => Ok(Arg::Tensor(x)),
            _ => transpose(b, &[a[0].clone(), Arg::Int(0), Arg::Int(1)]),
        }
    };
    "contiguous" ("self", "memory_format") => identity;
    "clone" ("self", "memory_format") => identity;
    "detach" ("self") => identity;
    "alias" ("self") => identity;
    "dropout" ("input", "p", "train") => dropout;
    "dropout_" ("input", "p", "train") => dropout;
    "feature_dropout" ("input", "p", "train") => dropout;
    "alpha_dropout" ("input", "p", "train") => dropout;
    "cat" ("tensors", "dim") => cat;
    "concat" ("tensors", "dim") => cat;
    "stack" ("tensors", "dim") => stack;
    "slice" ("self", "dim", "start", "end", "step") => slice;
    "select" ("self", "dim", "index") => select;
    "unsqueeze" ("self", "dim") => unsqueeze;
    "squeeze" ("self", "dim") => squeeze;
    "size" ("self", "dim") => size;
    "sym_size" ("self", "dim") => size;
    "numel" ("self") => |b, a| {
        let x = b.tensor(&a[0])?;
        Ok(Arg::Int(b.ty(x).numel() as i64))
    };
    "dim" ("self") => |b, a| {
        let x = b.tensor(&a[0])?;
        Ok(Arg::Int(b.rank(x) as i64))
    };
    "embedding" ("weight", "indices", "padding_idx", "scale_grad_by_freq", "sparse") => |b, a| {
        let w = b.tensor(&a[0])?;
        let i = b.tensor(&a[1])?;
        Ok(Arg::Tensor(b.one("Gather", &[("axis", Attr::Int(0))], &[w, i])?))
    };
    "scaled_dot_product_attention" ("query", "key", "value", "attn_mask", "dropout_p",
        "is_causal", "scale", "enable_gqa") => sdpa;
    "pad" ("self", "pad", "mode", "value") => pad;
    "constant_pad_nd" ("self", "pad", "value") => |b, a| {
        pad(b, &[a[0].clone(), a[1].clone(), Arg::Str("constant".into()), a[2].clone()])
    };
    "upsample_nearest2d" ("self", "output_size", "scales_h", "scales_w") => |b, a| {
        upsample(b, a, "nearest", false)
    };
    "upsample_bilinear2d" ("self", "output_size", "align_corners", "scales_h", "scales_w")
        => |b, a| {
        let ac = boolean(&a[2], false)?;
        let mut rest = vec![a[0].clone(), a[1].clone()];
        rest.extend_from_slice(&a[3..]);
        upsample(b, &rest, "linear", ac)
    };
    "expand" ("self", "size", "implicit") => expand_to;
    "to" ("self", "dtype", "non_blocking", "copy", "memory_format") => to;
    "_to_copy" ("self", "dtype", "layout", "device", "pin_memory", "non_blocking",
        "memory_format") => to;
    "type_as" ("self", "other") => |b, a| {
        let x = b.tensor(&a[0])?;
        let o = b.tensor(&a[1])?;
        let d = b.ty(o).dtype;
        Ok(Arg::Tensor(b.cast(x, d)?))
    };
    "masked_fill" ("self", "mask", "value") => |b, a| {
        let x = b.tensor(&a[0])?;
        let m = b.tensor(&a[1])?;
        let d = b.ty(x).dtype;
        let v = match &a[2] {
            Arg::Tensor(v) => b.cast(*v, d)?,
            s => b.scalar_as(s, d)?,
        };
        Ok(Arg::Tensor(b.one("Where", &[], &[m, v, x])?))
    };
    "where" ("condition", "self", "other") => |b, a| {
        let c = b.tensor(&a[0])?;
        let (x, y) = promote(b, &a[1], &a[2])?;
        Ok(Arg::Tensor(b.one("Where", &[], &[c, x, y])?))
    };
    "split" ("self", "split_size", "dim") => split;
    "chunk" ("self", "chunks", "dim") => chunk;
    "Int" ("a") => |b, a| Ok(Arg::Int(b.int(&a[0])?));
    "Float" ("a") => |b, a| match &a[0] {
        Arg::Tensor(v) => match b.const_of(*v) {
            Some(t) if t.len() == 1 => Ok(Arg::Float(t.scalar_f64()?)),
            _ => bail!(Unsupported, "a float computed from tensor data at run time"),
        },
        x => Ok(Arg::Float(float(x)?)),
    };
    "ScalarImplicit" ("a") => |b, a| match &a[0] {
        Arg::Tensor(v) => match b.const_of(*v) {
            Some(t) if t.len() == 1 && t.dtype().is_float() => Ok(Arg::Float(t.scalar_f64()?)),
            Some(t) if t.len() == 1 => Ok(Arg::Int(t.to_i64_vec()?[0])),
            _ => bail!(Unsupported, "a number computed from tensor data at run time"),
        },
        x => Ok(x.clone()),
    };
    "NumToTensor" ("a") => |b, a| match &a[0] {
        Arg::Int(i) => Ok(Arg::Tensor(b.konst(Tensor::scalar(*i))?)),
        Arg::Float(f) => Ok(Arg::Tensor(b.konst(Tensor::scalar(*f))?)),
        Arg::Bool(x) => Ok(Arg::Tensor(b.konst(Tensor::scalar(*x))?)),
        Arg::Tensor(v) => Ok(Arg::Tensor(*v)),
        x => bail!(Invalid, "NumToTensor of a {}", x.kind()),
    };
}

/// Whether the table maps `op` (a bare aten name such as `conv2d`).
pub fn supports(op: &str) -> bool {
    TABLE.contains_key(op)
}

/// Applies aten `op` to positional and named arguments.
pub fn call(b: &mut Builder, op: &str, args: Vec<Arg>, named: Vec<(String, Arg)>) -> Result<Arg> {
    let e = TABLE
        .get(op)
        .ok_or_else(|| Error::Unsupported(format!("aten::{op} is not supported")))?;
    ensure!(
        args.len() <= e.params.len(),
        Invalid,
        "aten::{op} takes {} arguments, {} given",
        e.params.len(),
        args.len()
    );
    let mut bound = args;
    bound.resize(e.params.len(), Arg::None);
    for (k, v) in named {
        let i = e.params.iter().position(|p| *p == k).ok_or_else(|| {
            Error::Invalid(format!(
                "aten::{op} has no argument '{k}' (it takes {})",
                e.params.join(", ")
            ))
        })?;
        bound[i] = v;
    }
    (e.f)(b, &bound).map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(format!("aten::{op}: {m}")),
        Error::Unsupported(m) => Error::Unsupported(format!("aten::{op}: {m}")),
        e => e,
    })
}

fn identity(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    Ok(Arg::Tensor(b.tensor(&a[0])?))
}

fn unary(b: &mut Builder, a: &[Arg], op: &str) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    Ok(Arg::Tensor(b.one(op, &[], &[x])?))
}

fn dropout(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    ensure!(
        !boolean(&a[2], false)?,
        Unsupported,
        "dropout in training mode (call model.eval() before tracing)"
    );
    identity(b, a)
}

fn hardsigmoid(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let attrs = [
        ("alpha", Attr::Float(1.0 / 6.0)),
        ("beta", Attr::Float(0.5)),
    ];
    Ok(Arg::Tensor(b.one("HardSigmoid", &attrs, &[x])?))
}

fn silu(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let s = b.one("Sigmoid", &[], &[x])?;
    Ok(Arg::Tensor(b.one("Mul", &[], &[x, s])?))
}

fn gelu(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let approx = match &a[1] {
        Arg::None => "none".to_string(),
        Arg::Str(s) if s == "none" || s == "tanh" => s.clone(),
        x => bail!(Invalid, "approximate must be 'none' or 'tanh', found {x:?}"),
    };
    Ok(Arg::Tensor(b.one(
        "Gelu",
        &[("approximate", Attr::String(approx))],
        &[x],
    )?))
}

fn hardtanh(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let d = b.ty(x).dtype;
    let lo = match &a[1] {
        Arg::None => Arg::Float(-1.0),
        v => v.clone(),
    };
    let hi = match &a[2] {
        Arg::None => Arg::Float(1.0),
        v => v.clone(),
    };
    let lo = b.scalar_as(&lo, d)?;
    let hi = b.scalar_as(&hi, d)?;
    Ok(Arg::Tensor(b.one("Clip", &[], &[x, lo, hi])?))
}

/// Torch's type promotion for two operands, as IR values: numbers take the
/// tensor's dtype unless a float meets an integer tensor; tensors of
/// different dtypes meet at the wider float.
fn promote(b: &mut Builder, x: &Arg, y: &Arg) -> Result<(ValueId, ValueId)> {
    let is_num = |a: &Arg| matches!(a, Arg::Int(_) | Arg::Float(_) | Arg::Bool(_));
    match (x, y) {
        (Arg::Tensor(t), n) | (n, Arg::Tensor(t)) if is_num(n) => {
            let mut t = *t;
            let mut d = b.ty(t).dtype;
            if matches!(n, Arg::Float(_)) && !d.is_float() {
                t = b.cast(t, DType::F32)?;
                d = DType::F32;
            }
            let s = b.scalar_as(n, d)?;
            Ok(if matches!(x, Arg::Tensor(_)) {
                (t, s)
            } else {
                (s, t)
            })
        }
        _ => {
            let (p, q) = (b.tensor(x)?, b.tensor(y)?);
            let (dp, dq) = (b.ty(p).dtype, b.ty(q).dtype);
            if dp == dq {
                return Ok((p, q));
            }
            // Categories (bool < integer < float) decide first; a 0-d
            // operand only wins by category; among floats the wider wins.
            let cat = |d: DType| match d {
                DType::Bool => 0,
                d if d.is_float() => 2,
                _ => 1,
            };
            let width = |d: DType| match d {
                DType::F64 => 3,
                DType::F32 => 2,
                _ => d.size_bytes(),
            };
            let (zp, zq) = (b.rank(p) == 0, b.rank(q) == 0);
            let to = if zp != zq {
                let (dim, zero) = if zp { (dq, dp) } else { (dp, dq) };
                if cat(zero) <= cat(dim) {
                    dim
                } else if cat(zero) == 2 {
                    DType::F32
                } else {
                    zero
                }
            } else if cat(dp) != cat(dq) {
                if cat(dp) > cat(dq) { dp } else { dq }
            } else if width(dp) >= width(dq) {
                dp
            } else {
                dq
            };
            Ok((b.cast(p, to)?, b.cast(q, to)?))
        }
    }
}

/// Python arithmetic on two numbers (shape computations).
fn numeric(op: &str, x: &Arg, y: &Arg) -> Option<Result<Arg>> {
    let ints = match (x, y) {
        (Arg::Int(p), Arg::Int(q)) => Some((*p, *q)),
        _ => None,
    };
    let (fx, fy) = (float(x).ok()?, float(y).ok()?);
    Some(Ok(match (op, ints) {
        ("Add", Some((p, q))) => Arg::Int(p.wrapping_add(q)),
        ("Sub", Some((p, q))) => Arg::Int(p.wrapping_sub(q)),
        ("Mul", Some((p, q))) => Arg::Int(p.wrapping_mul(q)),
        ("FloorDiv", Some((p, q))) => {
            if q == 0 {
                return Some(Err(Error::Invalid("integer division by zero".into())));
            }
            Arg::Int(p.div_euclid(q) - if q < 0 && p.rem_euclid(q) != 0 { 1 } else { 0 })
        }
        ("Add", None) => Arg::Float(fx + fy),
        ("Sub", None) => Arg::Float(fx - fy),
        ("Mul", None) => Arg::Float(fx * fy),
        ("Div", _) => Arg::Float(fx / fy),
        ("FloorDiv", None) => Arg::Float((fx / fy).floor()),
        ("Pow", _) => Arg::Float(fx.powf(fy)),
        _ => return None,
    }))
}

fn binary(b: &mut Builder, op: &str, x: &Arg, y: &Arg) -> Result<Arg> {
    if let Some(r) = numeric(op, x, y) {
        return r;
    }
    let (p, q) = promote(b, x, y)?;
    Ok(Arg::Tensor(b.one(op, &[], &[p, q])?))
}

fn add_sub(b: &mut Builder, a: &[Arg], op: &str) -> Result<Arg> {
    let other = match &a[2] {
        Arg::None => a[1].clone(),
        alpha if float(alpha)? == 1.0 => a[1].clone(),
        alpha => binary(b, "Mul", &a[1], alpha)?,
    };
    binary(b, op, &a[0], &other)
}

fn div(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let mode = match &a[2] {
        Arg::None => None,
        Arg::Str(s) => Some(s.as_str()),
        x => bail!(
            Invalid,
            "rounding_mode must be a string, found {}",
            x.kind()
        ),
    };
    let ints = |b: &Builder, x: &Arg| match x {
        Arg::Int(_) | Arg::Bool(_) => true,
        Arg::Tensor(v) => !b.ty(*v).dtype.is_float(),
        _ => false,
    };
    let both_int = ints(b, &a[0]) && ints(b, &a[1]);
    if let (Arg::Int(p), Arg::Int(q)) = (&a[0], &a[1]) {
        return match mode {
            Some("floor") => numeric("FloorDiv", &a[0], &a[1]).expect("two ints"),
            Some("trunc") if *q != 0 => Ok(Arg::Int(p / q)),
            Some("trunc") => bail!(Invalid, "integer division by zero"),
            _ => Ok(Arg::Float(*p as f64 / *q as f64)),
        };
    }
    match (mode, both_int) {
        // ONNX integer Div truncates toward zero, as trunc does.
        (Some("trunc"), true) => binary(b, "Div", &a[0], &a[1]),
        (Some("floor"), true) => {
            // floor(p / q) = trunc(p / q) - (the remainder's sign differs
            // from q's and is nonzero).
            let (p, q) = promote(b, &a[0], &a[1])?;
            let t = b.one("Div", &[], &[p, q])?;
            let back = b.one("Mul", &[], &[t, q])?;
            let r = b.one("Sub", &[], &[p, back])?;
            let zero = b.scalar_as(&Arg::Int(0), b.ty(r).dtype)?;
            let nz = b.one("Equal", &[], &[r, zero])?;
            let nz = b.one("Not", &[], &[nz])?;
            let rx = b.one("Less", &[], &[r, zero])?;
            let qx = b.one("Less", &[], &[q, zero])?;
            let differ = b.one("Xor", &[], &[rx, qx])?;
            let adjust = b.one("And", &[], &[nz, differ])?;
            let adjust = b.cast(adjust, b.ty(t).dtype)?;
            Ok(Arg::Tensor(b.one("Sub", &[], &[t, adjust])?))
        }
        (None, true) => {
            let p = b.tensor(&a[0])?;
            let q = b.tensor(&a[1])?;
            let p = b.cast(p, DType::F32)?;
            let q = b.cast(q, DType::F32)?;
            Ok(Arg::Tensor(b.one("Div", &[], &[p, q])?))
        }
        (None, false) => binary(b, "Div", &a[0], &a[1]),
        (Some("floor"), false) => {
            let d = binary(b, "Div", &a[0], &a[1])?;
            unary(b, &[d], "Floor")
        }
        (Some("trunc"), false) => {
            let d = binary(b, "Div", &a[0], &a[1])?;
            let d = b.tensor(&d)?;
            let s = b.one("Sign", &[], &[d])?;
            let m = b.one("Abs", &[], &[d])?;
            let f = b.one("Floor", &[], &[m])?;
            Ok(Arg::Tensor(b.one("Mul", &[], &[s, f])?))
        }
        (Some(m), _) => bail!(Invalid, "unknown rounding_mode '{m}'"),
    }
}

fn conv_attrs(
    b: &Builder,
    a: &[Arg],
    spatial: usize,
    stride: &Arg,
    padding: &Arg,
    dilation: &Arg,
    groups: &Arg,
) -> Result<Vec<(&'static str, Attr)>> {
    let or = |v: Vec<i64>, d: i64| {
        if v.is_empty() {
            vec![d; spatial]
        } else {
            expand(v, spatial)
        }
    };
    let stride = or(
        if matches!(stride, Arg::None) {
            vec![]
        } else {
            b.ints(stride)?
        },
        1,
    );
    let dilation = or(
        if matches!(dilation, Arg::None) {
            vec![]
        } else {
            b.ints(dilation)?
        },
        1,
    );
    let pads = match padding {
        Arg::Str(s) if s == "valid" => vec![0; 2 * spatial],
        Arg::Str(s) if s == "same" => {
            let w = b.tensor_ty(&a[1])?;
            let mut begin = Vec::new();
            let mut end = Vec::new();
            for (i, d) in dilation.iter().enumerate().take(spatial) {
                let total = d * (w.shape[2 + i] as i64 - 1);
                begin.push(total / 2);
                end.push(total - total / 2);
            }
            begin.extend(end);
            begin
        }
        Arg::None => vec![0; 2 * spatial],
        p => {
            let p = expand(b.ints(p)?, spatial);
            p.iter().chain(&p).copied().collect()
        }
    };
    let group = match groups {
        Arg::None => 1,
        g => b.int(g)?,
    };
    Ok(vec![
        ("strides", Attr::Ints(stride)),
        ("pads", Attr::Ints(pads)),
        ("dilations", Attr::Ints(dilation)),
        ("group", Attr::Int(group)),
    ])
}

impl Builder {
    fn tensor_ty(&self, a: &Arg) -> Result<ValueType> {
        match a {
            Arg::Tensor(v) => Ok(self.ty(*v).clone()),
            a => bail!(Invalid, "expected a tensor, found {}", a.kind()),
        }
    }

    fn opt_tensor(&mut self, a: &Arg) -> Result<Option<ValueId>> {
        match a {
            Arg::None => Ok(None),
            a => self.tensor(a).map(Some),
        }
    }
}

fn conv(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let w = b.tensor(&a[1])?;
    let spatial = b.rank(w).saturating_sub(2);
    let attrs = conv_attrs(b, a, spatial, &a[3], &a[4], &a[5], &a[6])?;
    let bias = b.opt_tensor(&a[2])?;
    Ok(Arg::Tensor(
        b.node("Conv", &attrs, &[Some(x), Some(w), bias], 1)?[0],
    ))
}

fn convolution(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    if boolean(&a[6], false)? {
        return conv_transpose(
            b,
            &[
                a[0].clone(),
                a[1].clone(),
                a[2].clone(),
                a[3].clone(),
                a[4].clone(),
                a[7].clone(),
                a[8].clone(),
                a[5].clone(),
            ],
        );
    }
    conv(
        b,
        &[
            a[0].clone(),
            a[1].clone(),
            a[2].clone(),
            a[3].clone(),
            a[4].clone(),
            a[5].clone(),
            a[8].clone(),
        ],
    )
}

fn conv_transpose(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let w = b.tensor(&a[1])?;
    let spatial = b.rank(w).saturating_sub(2);
    let mut attrs = conv_attrs(b, a, spatial, &a[3], &a[4], &a[7], &a[6])?;
    if !matches!(a[5], Arg::None) {
        attrs.push((
            "output_padding",
            Attr::Ints(expand(b.ints(&a[5])?, spatial)),
        ));
    }
    let bias = b.opt_tensor(&a[2])?;
    Ok(Arg::Tensor(
        b.node("ConvTranspose", &attrs, &[Some(x), Some(w), bias], 1)?[0],
    ))
}

fn linear(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let w = b.tensor(&a[1])?;
    let bias = b.opt_tensor(&a[2])?;
    if b.rank(x) == 2 && b.rank(w) == 2 {
        let attrs = [("transB", Attr::Int(1))];
        return Ok(Arg::Tensor(
            b.node("Gemm", &attrs, &[Some(x), Some(w), bias], 1)?[0],
        ));
    }
    let wt = if b.rank(w) == 2 {
        b.one("Transpose", &[("perm", Attr::Ints(vec![1, 0]))], &[w])?
    } else {
        w
    };
    let y = b.one("MatMul", &[], &[x, wt])?;
    Ok(Arg::Tensor(match bias {
        Some(c) => b.one("Add", &[], &[y, c])?,
        None => y,
    }))
}

fn addmm(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let c = b.tensor(&a[0])?;
    let m1 = b.tensor(&a[1])?;
    let m2 = b.tensor(&a[2])?;
    let num = |x: &Arg| {
        if matches!(x, Arg::None) {
            Ok(1.0)
        } else {
            float(x)
        }
    };
    let attrs = [
        ("beta", Attr::Float(num(&a[3])? as f32)),
        ("alpha", Attr::Float(num(&a[4])? as f32)),
    ];
    Ok(Arg::Tensor(b.one("Gemm", &attrs, &[m1, m2, c])?))
}

fn mm(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let (x, y) = promote(b, &a[0], &a[1])?;
    Ok(Arg::Tensor(b.one("MatMul", &[], &[x, y])?))
}

#[allow(clippy::too_many_arguments)]
fn batch_norm(
    b: &mut Builder,
    x: &Arg,
    w: &Arg,
    bias: &Arg,
    mean: &Arg,
    var: &Arg,
    training: &Arg,
    eps: &Arg,
) -> Result<Arg> {
    ensure!(
        !boolean(training, false)?,
        Unsupported,
        "batch_norm in training mode (call model.eval() before tracing)"
    );
    let x = b.tensor(x)?;
    let ty = b.ty(x).clone();
    ensure!(
        ty.shape.len() >= 2,
        Invalid,
        "input of rank {} (needs [N, C, ...])",
        ty.shape.len()
    );
    let c = ty.shape[1];
    let mut param = |a: &Arg, fill: f64| -> Result<ValueId> {
        match a {
            Arg::None => b.konst(Tensor::full(ty.dtype, &[c], fill)),
            a => b.tensor(a),
        }
    };
    let (w, bias) = (param(w, 1.0)?, param(bias, 0.0)?);
    let (mean, var) = (param(mean, 0.0)?, param(var, 1.0)?);
    let eps = if matches!(eps, Arg::None) {
        1e-5
    } else {
        float(eps)?
    };
    Ok(Arg::Tensor(b.one(
        "BatchNormalization",
        &[("epsilon", Attr::Float(eps as f32))],
        &[x, w, bias, mean, var],
    )?))
}

fn layer_norm(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let ty = b.ty(x).clone();
    let n = b.ints(&a[1])?.len();
    ensure!(
        n >= 1 && n <= ty.shape.len(),
        Invalid,
        "normalized_shape of {n} dims for an input of rank {}",
        ty.shape.len()
    );
    let inner = &ty.shape[ty.shape.len() - n..];
    let w = match &a[2] {
        Arg::None => b.konst(Tensor::full(ty.dtype, inner, 1.0))?,
        w => b.tensor(w)?,
    };
    let bias = b.opt_tensor(&a[3])?;
    let eps = if matches!(a[4], Arg::None) {
        1e-5
    } else {
        float(&a[4])?
    };
    let attrs = [
        ("axis", Attr::Int(-(n as i64))),
        ("epsilon", Attr::Float(eps as f32)),
    ];
    Ok(Arg::Tensor(
        b.node("LayerNormalization", &attrs, &[Some(x), Some(w), bias], 1)?[0],
    ))
}

fn pool_geometry(b: &Builder, a: &[Arg], n: usize) -> Result<(Vec<i64>, Vec<i64>, Vec<i64>)> {
    let k = expand(b.ints(&a[1])?, n);
    let s = match &a[2] {
        Arg::None => k.clone(),
        s => match b.ints(s)? {
            v if v.is_empty() => k.clone(),
            v => expand(v, n),
        },
    };
    let p = match &a[3] {
        Arg::None => vec![0; n],
        p => expand(b.ints(p)?, n),
    };
    Ok((k, s, p.iter().chain(&p).copied().collect()))
}

fn max_pool(b: &mut Builder, a: &[Arg], n: usize) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let (k, s, p) = pool_geometry(b, a, n)?;
    let d = match &a[4] {
        Arg::None => vec![1; n],
        d => expand(b.ints(d)?, n),
    };
    let attrs = [
        ("kernel_shape", Attr::Ints(k)),
        ("strides", Attr::Ints(s)),
        ("pads", Attr::Ints(p)),
        ("dilations", Attr::Ints(d)),
        ("ceil_mode", Attr::Int(boolean(&a[5], false)? as i64)),
    ];
    Ok(Arg::Tensor(b.one("MaxPool", &attrs, &[x])?))
}

fn avg_pool(b: &mut Builder, a: &[Arg], n: usize) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let (k, s, p) = pool_geometry(b, a, n)?;
    ensure!(
        matches!(a.get(6), None | Some(Arg::None)),
        Unsupported,
        "divisor_override"
    );
    let attrs = [
        ("kernel_shape", Attr::Ints(k)),
        ("strides", Attr::Ints(s)),
        ("pads", Attr::Ints(p)),
        ("ceil_mode", Attr::Int(boolean(&a[4], false)? as i64)),
        ("count_include_pad", Attr::Int(boolean(&a[5], true)? as i64)),
    ];
    Ok(Arg::Tensor(b.one("AveragePool", &attrs, &[x])?))
}

fn adaptive_avg_pool(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let shape = b.ty(x).shape.clone();
    ensure!(shape.len() >= 3, Invalid, "input of rank {}", shape.len());
    let n = shape.len() - 2;
    let out = expand(b.ints(&a[1])?, n);
    let ins = &shape[2..];
    if out.iter().all(|&o| o == 1) {
        return Ok(Arg::Tensor(b.one("GlobalAveragePool", &[], &[x])?));
    }
    // Equal windows when each output size divides the input size; torch's
    // uneven adaptive windows have no ONNX pool.
    let mut k = Vec::new();
    for (&i, &o) in ins.iter().zip(&out) {
        ensure!(
            o > 0 && i as i64 % o == 0,
            Unsupported,
            "adaptive pooling of size {i} to {o} (only sizes that divide evenly)"
        );
        k.push(i as i64 / o);
    }
    let attrs = [
        ("kernel_shape", Attr::Ints(k.clone())),
        ("strides", Attr::Ints(k)),
    ];
    Ok(Arg::Tensor(b.one("AveragePool", &attrs, &[x])?))
}

fn reduce(b: &mut Builder, a: &[Arg], op: &str) -> Result<Arg> {
    let mut x = b.tensor(&a[0])?;
    if let Some(d) = dtype_arg(&a[3])? {
        x = b.cast(x, d)?;
    } else if op == "ReduceSum" && !b.ty(x).dtype.is_float() {
        // torch sums integers and bools in int64.
        x = b.cast(x, DType::I64)?;
    }
    let rank = b.rank(x);
    let dims = match &a[1] {
        Arg::None => Vec::new(),
        d => b.ints(d)?,
    };
    let dims: Vec<i64> = dims.iter().map(|&d| axis(d, rank)).collect::<Result<_>>()?;
    let keep = boolean(&a[2], false)? as i64;
    let mut ins = vec![Some(x)];
    if !dims.is_empty() {
        ins.push(Some(b.ints_const(&dims)?));
    }
    Ok(Arg::Tensor(
        b.node(op, &[("keepdims", Attr::Int(keep))], &ins, 1)?[0],
    ))
}

fn softmax(b: &mut Builder, a: &[Arg], op: &str) -> Result<Arg> {
    let mut x = b.tensor(&a[0])?;
    if let Some(d) = a.get(2).map(dtype_arg).transpose()?.flatten() {
        x = b.cast(x, d)?;
    }
    let dim = axis(b.int(&a[1])?, b.rank(x))?;
    Ok(Arg::Tensor(b.one(op, &[("axis", Attr::Int(dim))], &[x])?))
}

fn reshape_to(b: &mut Builder, x: ValueId, shape: &[i64]) -> Result<Arg> {
    let s = b.ints_const(shape)?;
    Ok(Arg::Tensor(b.one("Reshape", &[], &[x, s])?))
}

fn reshape(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let shape = b.ints(&a[1])?;
    reshape_to(b, x, &shape)
}

fn flatten(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let shape: Vec<i64> = b.ty(x).shape.iter().map(|&d| d as i64).collect();
    if shape.is_empty() {
        return reshape_to(b, x, &[1]);
    }
    let start = axis(
        if matches!(a[1], Arg::None) {
            0
        } else {
            b.int(&a[1])?
        },
        shape.len(),
    )? as usize;
    let end = axis(
        if matches!(a[2], Arg::None) {
            -1
        } else {
            b.int(&a[2])?
        },
        shape.len(),
    )? as usize;
    ensure!(
        start <= end,
        Invalid,
        "start_dim {start} after end_dim {end}"
    );
    let mut out = shape[..start].to_vec();
    out.push(shape[start..=end].iter().product());
    out.extend_from_slice(&shape[end + 1..]);
    reshape_to(b, x, &out)
}

fn unflatten(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let shape: Vec<i64> = b.ty(x).shape.iter().map(|&d| d as i64).collect();
    let d = axis(b.int(&a[1])?, shape.len())? as usize;
    let mut out = shape[..d].to_vec();
    out.extend(b.ints(&a[2])?);
    out.extend_from_slice(&shape[d + 1..]);
    reshape_to(b, x, &out)
}

fn permute(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let r = b.rank(x);
    let perm = b
        .ints(&a[1])?
        .iter()
        .map(|&d| axis(d, r))
        .collect::<Result<Vec<_>>>()?;
    Ok(Arg::Tensor(b.one(
        "Transpose",
        &[("perm", Attr::Ints(perm))],
        &[x],
    )?))
}

fn transpose(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let r = b.rank(x);
    if r < 2 {
        return Ok(Arg::Tensor(x));
    }
    let (p, q) = (axis(b.int(&a[1])?, r)?, axis(b.int(&a[2])?, r)?);
    let mut perm: Vec<i64> = (0..r as i64).collect();
    perm.swap(p as usize, q as usize);
    Ok(Arg::Tensor(b.one(
        "Transpose",
        &[("perm", Attr::Ints(perm))],
        &[x],
    )?))
}

fn tensors(b: &mut Builder, a: &Arg) -> Result<Vec<ValueId>> {
    match a {
        Arg::List(l) => l.iter().map(|x| b.tensor(x)).collect(),
        a => bail!(Invalid, "expected a list of tensors, found {}", a.kind()),
    }
}

fn cat(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let xs = tensors(b, &a[0])?;
    ensure!(!xs.is_empty(), Invalid, "no tensors to concatenate");
    let rank = xs.iter().map(|&x| b.rank(x)).max().unwrap_or(0);
    // torch skips 1-d empty tensors in cat (a legacy rule).
    let xs: Vec<_> = xs
        .into_iter()
        .filter(|&x| !(b.ty(x).shape == [0] && rank > 1))
        .collect();
    let dim = axis(
        if matches!(a[1], Arg::None) {
            0
        } else {
            b.int(&a[1])?
        },
        rank,
    )?;
    let ins: Vec<_> = xs.iter().map(|&x| Some(x)).collect();
    Ok(Arg::Tensor(
        b.node("Concat", &[("axis", Attr::Int(dim))], &ins, 1)?[0],
    ))
}

fn stack(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let xs = tensors(b, &a[0])?;
    ensure!(!xs.is_empty(), Invalid, "no tensors to stack");
    let rank = b.rank(xs[0]) + 1;
    let dim = axis(
        if matches!(a[1], Arg::None) {
            0
        } else {
            b.int(&a[1])?
        },
        rank,
    )?;
    let axes = b.ints_const(&[dim])?;
    let mut ins = Vec::new();
    for x in xs {
        ins.push(Some(b.one("Unsqueeze", &[], &[x, axes])?));
    }
    Ok(Arg::Tensor(
        b.node("Concat", &[("axis", Attr::Int(dim))], &ins, 1)?[0],
    ))
}

fn slice(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let r = b.rank(x);
    let dim = axis(
        if matches!(a[1], Arg::None) {
            0
        } else {
            b.int(&a[1])?
        },
        r,
    )?;
    let start = if matches!(a[2], Arg::None) {
        0
    } else {
        b.int(&a[2])?
    };
    let end = if matches!(a[3], Arg::None) {
        i64::MAX
    } else {
        b.int(&a[3])?
    };
    let step = if matches!(a[4], Arg::None) {
        1
    } else {
        b.int(&a[4])?
    };
    ensure!(
        step > 0,
        Invalid,
        "slice step {step} (torch needs a positive step)"
    );
    let len = b.ty(x).shape[dim as usize] as i64;
    if start == 0 && end >= len && step == 1 {
        return Ok(Arg::Tensor(x));
    }
    let ins = [
        x,
        b.ints_const(&[start])?,
        b.ints_const(&[end])?,
        b.ints_const(&[dim])?,
        b.ints_const(&[step])?,
    ];
    Ok(Arg::Tensor(b.one("Slice", &[], &ins)?))
}

fn select(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let r = b.rank(x);
    let dim = axis(b.int(&a[1])?, r)?;
    let len = b.ty(x).shape[dim as usize] as i64;
    let i = b.int(&a[2])?;
    ensure!(
        (-len..len).contains(&i),
        Invalid,
        "index {i} is out of range for dimension {dim} of size {len}"
    );
    let idx = b.konst(Tensor::scalar(i))?;
    Ok(Arg::Tensor(b.one(
        "Gather",
        &[("axis", Attr::Int(dim))],
        &[x, idx],
    )?))
}

fn unsqueeze(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let dim = axis(b.int(&a[1])?, b.rank(x) + 1)?;
    let axes = b.ints_const(&[dim])?;
    Ok(Arg::Tensor(b.one("Unsqueeze", &[], &[x, axes])?))
}

fn squeeze(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let shape = b.ty(x).shape.clone();
    let dims = match &a[1] {
        Arg::None => (0..shape.len() as i64).collect(),
        d => b.ints(d)?,
    };
    // torch ignores dims whose size is not 1; ONNX rejects them.
    let mut keep = Vec::new();
    for d in dims {
        let d = axis(d, shape.len())?;
        if shape.get(d as usize) == Some(&1) {
            keep.push(d);
        }
    }
    if keep.is_empty() {
        return Ok(Arg::Tensor(x));
    }
    let axes = b.ints_const(&keep)?;
    Ok(Arg::Tensor(b.one("Squeeze", &[], &[x, axes])?))
}

fn size(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let shape = b.ty(x).shape.clone();
    Ok(match &a[1] {
        Arg::None => Arg::List(shape.iter().map(|&d| Arg::Int(d as i64)).collect()),
        d => Arg::Int(shape[axis(b.int(d)?, shape.len())? as usize] as i64),
    })
}

fn expand_to(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let shape = b.ty(x).shape.clone();
    let want = b.ints(&a[1])?;
    ensure!(
        want.len() >= shape.len(),
        Invalid,
        "expand to {} dims from {}",
        want.len(),
        shape.len()
    );
    // -1 keeps the existing size.
    let off = want.len() - shape.len();
    let sizes: Vec<i64> = want
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            if w == -1 && i >= off {
                shape[i - off] as i64
            } else {
                w
            }
        })
        .collect();
    let s = b.ints_const(&sizes)?;
    Ok(Arg::Tensor(b.one("Expand", &[], &[x, s])?))
}

fn to(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    // `to(device, ...)` and `to(other)` overloads put a device or tensor
    // first: only a dtype changes anything on a CPU.
    match &a[1] {
        Arg::Tensor(o) => {
            let d = b.ty(*o).dtype;
            Ok(Arg::Tensor(b.cast(x, d)?))
        }
        d => match dtype_arg(d) {
            Ok(Some(d)) => Ok(Arg::Tensor(b.cast(x, d)?)),
            Ok(None) => Ok(Arg::Tensor(x)),
            Err(_) => match a.get(2).map(dtype_arg) {
                Some(Ok(Some(d))) => Ok(Arg::Tensor(b.cast(x, d)?)),
                _ => Ok(Arg::Tensor(x)),
            },
        },
    }
}

fn sdpa(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let q = b.tensor(&a[0])?;
    let k = b.tensor(&a[1])?;
    let v = b.tensor(&a[2])?;
    ensure!(
        matches!(a[4], Arg::None) || float(&a[4])? == 0.0,
        Unsupported,
        "dropout_p > 0 (attention dropout is training only)"
    );
    ensure!(
        b.rank(q) == 4 && b.rank(k) == 4 && b.rank(v) == 4,
        Unsupported,
        "query/key/value of rank {}/{}/{} (only [B, heads, S, D])",
        b.rank(q),
        b.rank(k),
        b.rank(v)
    );
    let mask = b.opt_tensor(&a[3])?;
    let mut attrs = vec![("is_causal", Attr::Int(boolean(&a[5], false)? as i64))];
    if !matches!(a[6], Arg::None) {
        attrs.push(("scale", Attr::Float(float(&a[6])? as f32)));
    }
    Ok(Arg::Tensor(
        b.node("Attention", &attrs, &[Some(q), Some(k), Some(v), mask], 1)?[0],
    ))
}

fn pad(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let r = b.rank(x);
    let p = b.ints(&a[1])?;
    ensure!(
        p.len() % 2 == 0 && p.len() / 2 <= r,
        Invalid,
        "pad of {} values for rank {r}",
        p.len()
    );
    // torch lists (begin, end) pairs from the last dim backwards; ONNX all
    // begins then all ends, first dim first.
    let mut pads = vec![0i64; 2 * r];
    for (i, pair) in p.chunks(2).enumerate() {
        let d = r - 1 - i;
        pads[d] = pair[0];
        pads[r + d] = pair[1];
    }
    let mode = match &a[2] {
        Arg::None => "constant",
        Arg::Str(m) => match m.as_str() {
            "constant" => "constant",
            "reflect" => "reflect",
            "replicate" => "edge",
            "circular" => "wrap",
            m => bail!(Unsupported, "pad mode '{m}'"),
        },
        m => bail!(Invalid, "pad mode is a {}", m.kind()),
    };
    let pads = b.ints_const(&pads)?;
    let mut ins = vec![Some(x), Some(pads)];
    if mode == "constant" && !matches!(a[3], Arg::None) {
        let d = b.ty(x).dtype;
        ins.push(Some(b.scalar_as(&a[3], d)?));
    }
    Ok(Arg::Tensor(
        b.node("Pad", &[("mode", Attr::String(mode.into()))], &ins, 1)?[0],
    ))
}

/// `upsample_*2d(x, output_size, scales...)` and the `.vec` overloads
/// `(x, output_size, scale_factors)`.
fn upsample(b: &mut Builder, a: &[Arg], mode: &str, align_corners: bool) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let shape = b.ty(x).shape.clone();
    let n = shape.len().saturating_sub(2);
    let mut attrs = vec![("mode", Attr::String(mode.into()))];
    if mode == "nearest" {
        attrs.push((
            "coordinate_transformation_mode",
            Attr::String("asymmetric".into()),
        ));
        attrs.push(("nearest_mode", Attr::String("floor".into())));
    } else {
        let m = if align_corners {
            "align_corners"
        } else {
            "pytorch_half_pixel"
        };
        attrs.push(("coordinate_transformation_mode", Attr::String(m.into())));
    }
    if !matches!(a[1], Arg::None) {
        let out = expand(b.ints(&a[1])?, n);
        let mut sizes: Vec<i64> = shape[..2].iter().map(|&d| d as i64).collect();
        sizes.extend(out);
        let s = b.ints_const(&sizes)?;
        return Ok(Arg::Tensor(
            b.node("Resize", &attrs, &[Some(x), None, None, Some(s)], 1)?[0],
        ));
    }
    let scales: Vec<f64> = match a.get(2) {
        Some(Arg::List(l)) => l.iter().map(float).collect::<Result<_>>()?,
        _ => a[2..]
            .iter()
            .map(|s| match s {
                Arg::None => bail!(Invalid, "neither output_size nor scale factors given"),
                s => float(s),
            })
            .collect::<Result<_>>()?,
    };
    ensure!(
        scales.len() == n,
        Invalid,
        "{} scale factors for {n} spatial dims",
        scales.len()
    );
    let mut all = vec![1.0f32, 1.0];
    all.extend(scales.iter().map(|&s| s as f32));
    let s = b.konst(Tensor::from_vec(&[all.len()], all)?)?;
    Ok(Arg::Tensor(
        b.node("Resize", &attrs, &[Some(x), None, Some(s)], 1)?[0],
    ))
}

fn split(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let shape = b.ty(x).shape.clone();
    let dim = axis(
        if matches!(a[2], Arg::None) {
            0
        } else {
            b.int(&a[2])?
        },
        shape.len(),
    )?;
    let len = shape[dim as usize] as i64;
    let sizes = match &a[1] {
        Arg::List(_) => b.ints(&a[1])?,
        s => {
            let s = b.int(s)?;
            ensure!(s > 0, Invalid, "split size {s}");
            let mut v = vec![s; (len / s) as usize];
            if len % s != 0 {
                v.push(len % s);
            }
            v
        }
    };
    split_sizes(b, x, dim, &sizes)
}

fn split_sizes(b: &mut Builder, x: ValueId, dim: i64, sizes: &[i64]) -> Result<Arg> {
    let s = b.ints_const(sizes)?;
    let outs = b.node(
        "Split",
        &[("axis", Attr::Int(dim))],
        &[Some(x), Some(s)],
        sizes.len(),
    )?;
    Ok(Arg::List(outs.into_iter().map(Arg::Tensor).collect()))
}

fn chunk(b: &mut Builder, a: &[Arg]) -> Result<Arg> {
    let x = b.tensor(&a[0])?;
    let shape = b.ty(x).shape.clone();
    let n = b.int(&a[1])?;
    ensure!(n > 0, Invalid, "chunks {n}");
    let dim = axis(
        if matches!(a[2], Arg::None) {
            0
        } else {
            b.int(&a[2])?
        },
        shape.len(),
    )?;
    let len = shape[dim as usize] as i64;
    let each = (len + n - 1) / n;
    let mut sizes = Vec::new();
    let mut left = len;
    while left > 0 {
        sizes.push(each.min(left));
        left -= each;
    }
    split_sizes(b, x, dim, &sizes)
}
