//! Op lowering: the table from op name to the function that emits its
//! kernels. An op missing here is a compile error naming the node and op.

mod attention;
mod chain;
mod conv_nhwc;
mod conv_transpose;
mod det;
mod einsum;
mod elementwise;
mod gemm;
mod indexed;
mod linalg;
mod math;
mod misc;
mod movement;
mod nhwc;
mod norm;
mod pool;
mod promote;
mod qconv;
mod qmatmul;
mod quant;
mod reduce;
mod resize;
mod sgemm_neon;
mod sgemm_sve;
mod softmax;
mod tiled;
mod topk;
mod zgemm;

use std::collections::HashMap;
use std::sync::LazyLock;

use super::lower::{Lower, Operand};
use super::nest::{self, Access};
use crate::error::{Error, Result};
use crate::ir::{Attrs, Node, Tensor};

/// A node being lowered: its operands (`None` for omitted optional inputs)
/// and the constant value of each input that has one.
#[derive(Clone)]
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
    chain::register(&mut t);
    attention::register(&mut t);
    indexed::register(&mut t);
    misc::register(&mut t);
    quant::register(&mut t);
    qmatmul::register(&mut t);
    qconv::register(&mut t);
    topk::register(&mut t);
    einsum::register(&mut t);
    det::register(&mut t);
    conv_transpose::register(&mut t);
    resize::register(&mut t);
    reduce::register(&mut t);
    norm::register(&mut t);
    pool::register(&mut t);
    softmax::register(&mut t);
    t
});

pub fn lower(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let Some(&f) = TABLE.0.get(cx.node.op.as_str()) else {
        bail!(Unsupported, "no native kernel for {} yet", cx.node.op);
    };
    if promote::wraps(cx) {
        return promote::adapt(lw, cx, lower);
    }
    if conv_nhwc::applies(cx) {
        return conv_nhwc::lower(lw, cx);
    }
    if nhwc::wraps(cx) && !NATIVE_NHWC.contains(&cx.node.op.as_str()) {
        return nhwc::adapt(lw, cx, f);
    }
    f(lw, cx)
}

/// Ops whose kernels read and write channels-last data themselves.
const NATIVE_NHWC: &[&str] = &[];

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
