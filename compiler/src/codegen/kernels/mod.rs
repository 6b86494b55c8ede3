//! Op lowering: the table from op name to the function that emits its
//! kernels. An op missing here is a compile error naming the node and op.

mod elementwise;
mod gemm;
mod linalg;
mod math;
mod movement;
mod norm;
mod pool;
mod reduce;
mod softmax;

use std::collections::HashMap;
use std::sync::LazyLock;

use super::lower::{Lower, Operand};
use super::nest::{self, Access};
use crate::error::{Error, Result};
use crate::ir::{Attrs, Node, Tensor};

/// A node being lowered: its operands (`None` for omitted optional inputs)
/// and the constant value of each input that has one.
pub struct NodeCx<'g> {
    pub node: &'g Node,
    pub ins: Vec<Option<Operand>>,
    pub outs: Vec<Operand>,
    pub consts: Vec<Option<&'g Tensor>>,
}

impl NodeCx<'_> {
    pub fn input(&self, i: usize) -> Result<&Operand> {
        self.ins
            .get(i)
            .and_then(|o| o.as_ref())
            .ok_or_else(|| Error::Invalid(format!("input {i} is missing")))
    }

    pub fn attrs(&self) -> &Attrs {
        &self.node.attrs
    }

    pub fn out(&self, i: usize) -> &Operand {
        &self.outs[i]
    }
}

pub type LowerFn = fn(&mut Lower, &NodeCx) -> Result<()>;

struct Table(HashMap<&'static str, LowerFn>);

impl Table {
    fn add(&mut self, names: &[&'static str], f: LowerFn) {
        for n in names {
            let prev = self.0.insert(n, f);
            assert!(prev.is_none(), "op {n} lowered twice");
        }
    }
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let mut t = Table(HashMap::new());
    elementwise::register(&mut t);
    movement::register(&mut t);
    linalg::register(&mut t);
    reduce::register(&mut t);
    norm::register(&mut t);
    pool::register(&mut t);
    softmax::register(&mut t);
    t
});

pub fn lower(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    match TABLE.0.get(cx.node.op.as_str()) {
        Some(f) => f(lw, cx),
        None => bail!(Unsupported, "no native kernel for {} yet", cx.node.op),
    }
}

/// Dense copy (same dtype and element count).
pub fn copy(lw: &mut Lower, src: &Operand, dst: &Operand) -> Result<()> {
    let n = dst.ty.numel();
    nest::emit(
        lw,
        &[n],
        &[Access::dense(src.buf, src.ty.dtype, &[n])],
        &[Access::dense(dst.buf, dst.ty.dtype, &[n])],
        true,
        |_, v, _| vec![v[0]],
    )
}
