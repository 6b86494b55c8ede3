//! The op table: one entry per op with its shape/dtype inference and its
//! reference semantics. Importers produce op names from this table; the
//! interpreter, constant folding and (later) lowering all read it, so an op
//! is defined once. Each file registers one family of ops.

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::error::{Error, Result};
use crate::ir::{Attrs, Tensor, ValueType};

mod attention;
pub mod broadcast;
pub(crate) mod conv;
mod elementwise;
pub mod fused;
pub(crate) mod linalg;
pub(crate) mod misc;
mod movement;
pub mod nhwc;
mod norm;
mod pool;
pub(crate) use pool::pool_window;
mod reduce;
pub(crate) mod resize;
mod shape;

/// What shape inference sees of a node: its attributes, opset and, per
/// input slot, the type and (for constants) the value.
pub struct InferCtx<'a> {
    pub attrs: &'a Attrs,
    pub opset: i64,
    pub inputs: Vec<Option<&'a ValueType>>,
    pub consts: Vec<Option<&'a Tensor>>,
    pub names: Vec<Option<&'a str>>,
    pub num_outputs: usize,
}

impl<'a> InferCtx<'a> {
    pub fn num_inputs(&self) -> usize {
        self.inputs.len()
    }

    pub fn has(&self, i: usize) -> bool {
        self.inputs.get(i).is_some_and(|t| t.is_some())
    }

    /// The type of required input `i`.
    pub fn input(&self, i: usize) -> Result<&'a ValueType> {
        self.inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| Error::Invalid(format!("missing required input {i}")))
    }

    /// The value of input `i` when the output shape depends on it: `None`
    /// when the input is omitted, an error when it is present but computed
    /// at run time.
    pub fn const_input(&self, i: usize, what: &str) -> Result<Option<&'a Tensor>> {
        if !self.has(i) {
            return Ok(None);
        }
        match self.consts[i] {
            Some(t) => Ok(Some(t)),
            None => Err(Error::NeedsConstant {
                input: self.names[i].unwrap_or("?").to_string(),
                why: format!("input {i} ({what}) must be known at compile time"),
            }),
        }
    }

    pub fn req_const(&self, i: usize, what: &str) -> Result<&'a Tensor> {
        self.const_input(i, what)?
            .ok_or_else(|| Error::Invalid(format!("missing required input {i} ({what})")))
    }
}

/// What evaluation sees: attributes, opset, input tensors and the output
/// types inference promised (evaluation must produce exactly those).
pub struct EvalCtx<'a> {
    pub attrs: &'a Attrs,
    pub opset: i64,
    pub inputs: Vec<Option<&'a Tensor>>,
    pub outputs: &'a [ValueType],
}

impl<'a> EvalCtx<'a> {
    pub fn has(&self, i: usize) -> bool {
        self.inputs.get(i).is_some_and(|t| t.is_some())
    }

    pub fn input(&self, i: usize) -> Result<&'a Tensor> {
        self.inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| Error::Invalid(format!("missing required input {i}")))
    }

    pub fn opt(&self, i: usize) -> Option<&'a Tensor> {
        self.inputs.get(i).copied().flatten()
    }
}

pub type InferFn = fn(&InferCtx) -> Result<Vec<ValueType>>;
pub type EvalFn = fn(&EvalCtx) -> Result<Vec<Tensor>>;
/// Output values determined by the inputs' static types alone, whatever
/// their values (Shape, Size): lets the importer fold shape arithmetic on
/// run-time inputs.
pub type KnownFn = fn(&InferCtx) -> Result<Vec<Tensor>>;

pub struct OpDef {
    pub name: &'static str,
    pub infer: InferFn,
    pub eval: EvalFn,
    pub known: Option<KnownFn>,
}

#[derive(Default)]
pub struct OpTable(HashMap<&'static str, OpDef>);

impl OpTable {
    pub fn add(&mut self, name: &'static str, infer: InferFn, eval: EvalFn) {
        let prev = self.0.insert(
            name,
            OpDef {
                name,
                infer,
                eval,
                known: None,
            },
        );
        assert!(prev.is_none(), "op {name} registered twice");
    }

    /// Marks `name`'s outputs as computable from input types alone.
    pub fn add_known(&mut self, name: &'static str, known: KnownFn) {
        self.0
            .get_mut(name)
            .expect("op registered before add_known")
            .known = Some(known);
    }
}

static TABLE: LazyLock<OpTable> = LazyLock::new(|| {
    let mut t = OpTable::default();
    attention::register(&mut t);
    conv::register(&mut t);
    elementwise::register(&mut t);
    fused::register(&mut t);
    linalg::register(&mut t);
    misc::register(&mut t);
    movement::register(&mut t);
    norm::register(&mut t);
    pool::register(&mut t);
    reduce::register(&mut t);
    resize::register(&mut t);
    shape::register(&mut t);
    t
});

pub fn lookup(op: &str) -> Result<&'static OpDef> {
    TABLE
        .0
        .get(op)
        .ok_or_else(|| Error::Unsupported(format!("op '{op}' is not implemented")))
}

/// Every supported op name, sorted.
pub fn names() -> Vec<&'static str> {
    let mut v: Vec<_> = TABLE.0.keys().copied().collect();
    v.sort_unstable();
    v
}

/// Output types of one node: the op's inference, through the channels-last
/// wrapper when the node has a `layout` attribute (see `nhwc`).
pub fn infer(def: &OpDef, ctx: &InferCtx) -> Result<Vec<ValueType>> {
    if nhwc::applies(ctx.attrs) {
        nhwc::infer(def, ctx)
    } else {
        (def.infer)(ctx)
    }
}

/// Evaluates one node and checks the results against the inferred types.
pub fn eval(
    op: &str,
    attrs: &Attrs,
    opset: i64,
    inputs: Vec<Option<&Tensor>>,
    outputs: &[ValueType],
) -> Result<Vec<Tensor>> {
    let def = lookup(op)?;
    let ctx = EvalCtx {
        attrs,
        opset,
        inputs,
        outputs,
    };
    let mut out = if nhwc::applies(attrs) {
        nhwc::eval(def, &ctx)?
    } else {
        (def.eval)(&ctx)?
    };
    if out.len() < outputs.len() {
        bail!(
            Internal,
            "produced {} outputs, {} expected",
            out.len(),
            outputs.len()
        );
    }
    out.truncate(outputs.len());
    for (i, (t, ty)) in out.iter().zip(outputs).enumerate() {
        if t.dtype() != ty.dtype || t.shape() != ty.shape.as_slice() {
            bail!(
                Internal,
                "output {i} is {}, inference said {ty}",
                ValueType::of(t)
            );
        }
    }
    Ok(out)
}

/// Normalizes a possibly negative axis against `rank`.
pub fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    ensure!(
        (-r..r).contains(&a) || (rank == 0 && (a == 0 || a == -1)),
        Invalid,
        "axis {a} is out of range for rank {rank}"
    );
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// The one output type, as inference returns it.
pub fn one(ty: ValueType) -> Result<Vec<ValueType>> {
    Ok(vec![ty])
}
