//! Op lowering: the table from op name to the function that emits its
//! kernels. An op missing here is a compile error naming the node and op.

mod amx;
mod attention;
mod attention_zgemm;
mod bf16gemm;
mod bfmmla;
mod chain;
mod conv_direct;
mod conv_nhwc;
mod conv_transpose;
mod depthwise;
mod det;
mod dpbf16;
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
mod pool_nhwc;
mod promote;
mod qconv;
mod qmatmul;
mod quant;
mod reduce;
mod resize;
mod sgemm_neon;
mod sgemm_sve;
mod softmax;
mod taps;
mod tiled;
mod topk;
mod winograd;
mod zact;
pub(crate) mod zcopy;
mod zdepthwise;
mod zgemm;
mod znorm;
mod zsoftmax;
mod ztranspose;

use std::collections::HashMap;
use std::sync::LazyLock;

use super::lower::{Bf16Isa, Lower, Operand};
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
    if pool_nhwc::applies(cx) {
        return pool_nhwc::lower(lw, cx);
    }
    if depthwise::applies_maxpool(cx) {
        return depthwise::lower_maxpool(lw, cx);
    }
    if depthwise::applies(cx) {
        return depthwise::lower(lw, cx);
    }
    if conv_nhwc::applies(cx) {
        return conv_nhwc::lower(lw, cx);
    }
    if nhwc::wraps(cx) && !NATIVE_NHWC.contains(&cx.node.op.as_str()) {
        lw.note_kernel("NCHW kernel between NHWC transposes");
        return nhwc::adapt(lw, cx, f);
    }
    f(lw, cx)
}

/// The x86 bf16 instructions `--fast-math bf16` uses on `target`, or why
/// it cannot; `None` on aarch64 (SVE BFMMLA kernels where the target has
/// SVE and BF16, see `Lower::bfmmla`, else the f32 kernels).
pub fn bf16_isa(target: &cpucc_targets::Target) -> Result<Option<Bf16Isa>> {
    use target_lexicon::Architecture;
    match target.triple.architecture {
        Architecture::X86_64 if target.has("amx-bf16") && target.has("avx512bf16") => {
            Ok(Some(Bf16Isa::Amx))
        }
        Architecture::X86_64 if target.has("avx512bf16") => Ok(Some(Bf16Isa::Avx512)),
        Architecture::Aarch64(_) => Ok(None),
        Architecture::X86_64 => bail!(
            Unsupported,
            "--fast-math bf16 needs AMX-BF16 or AVX512-BF16; target '{}' has neither (e.g. sapphirerapids, znver4, or +avx512bf16)",
            target.name
        ),
        _ => bail!(
            Unsupported,
            "--fast-math bf16 is not implemented yet for {} (target '{}')",
            target.triple.architecture,
            target.name
        ),
    }
}

/// `() -> i64` machine code asking the kernel for AMX permission.
pub fn amx_permission_function(lw: &mut Lower) -> Result<cranelift_module::FuncId> {
    amx::permission_function(lw)
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
