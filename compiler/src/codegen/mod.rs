//! Native code generation with Cranelift. A graph lowers to one kernel
//! function per node (or a few: packing, then compute) plus an entry function
//! `N_run` that calls them in order; the same path serves object files and
//! the in-process JIT through `&mut dyn Module`.

mod builder;
mod entry;
mod isa;
mod kernels;
mod lower;
mod nest;

pub mod artifact;
pub mod jit;
mod jit_memory;

use std::collections::HashMap;

pub use cpucc_targets::Target;
use cranelift_module::Module;

use crate::error::{Error, Result};
use crate::ir::{Graph, ValueId, ValueType};
use crate::passes::plan::{self, Slot};
pub use entry::{RC_DATA, RC_NO_AMX, RC_NO_WORKSPACE, RC_NULL_BUFFER};
const RC_DATA_I32: i32 = RC_DATA as i32;
const RC_NO_AMX_I32: i32 = RC_NO_AMX as i32;
use kernels::NodeCx;
pub use lower::{Bf16Isa, Source};
use lower::{Buf, Lower, Operand, STATUS_BYTES};

/// Inspection output requested with `--emit clif` / `--emit asm`.
#[derive(Default)]
pub struct Dumps {
    pub clif: Option<Vec<(String, String)>>,
    pub asm: Option<Vec<(String, String)>>,
}

/// Numerics the compiler may trade for speed (`--fast-math`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FastMath {
    /// Exact f32 (the default).
    #[default]
    None,
    /// GEMMs with constant weights (MatMul, Gemm, NHWC convolutions) take
    /// bf16 inputs with f32 accumulation: AMX tiles where the target has
    /// AMX-BF16, else AVX512-BF16 `vdpbf16ps`; SVE `bfmmla` on aarch64
    /// targets with SVE and BF16 (graviton3/4). Other aarch64 targets
    /// (graviton2, aarch64) keep f32.
    Bf16,
}

impl std::str::FromStr for FastMath {
    type Err = Error;
    fn from_str(s: &str) -> Result<FastMath> {
        match s {
            "none" | "off" => Ok(FastMath::None),
            "bf16" => Ok(FastMath::Bf16),
            other => bail!(Invalid, "--fast-math {other:?}: expected bf16 or none"),
        }
    }
}

/// Code generation options beyond the target.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub fast_math: FastMath,
}

/// A compiled model's interface: tensor names and types, workspace size.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub inputs: Vec<(String, ValueType)>,
    pub outputs: Vec<(String, ValueType)>,
    pub workspace_bytes: usize,
    /// The node each step of `N_run` computes, in run order.
    pub steps: Vec<usize>,
    /// The nodes behind the steps.
    pub sources: Vec<Source>,
    /// With profiling: workspace offset of `steps.len() + 1` tick counts,
    /// read before each step and after the last.
    pub profile_offset: Option<usize>,
}

/// Lowers `g` into `module`, defining `{name}_run` and
/// `{name}_workspace_size`; with `profile`, `{name}_run` also records tick
/// counts around its steps (see `Interface::profile_offset`).
pub fn lower_graph(
    g: &Graph,
    module: &mut dyn Module,
    target: &Target,
    name: &str,
    dumps: &mut Dumps,
    profile: bool,
    opts: &Options,
) -> Result<(Interface, entry::Entry)> {
    let bf16 = match opts.fast_math {
        FastMath::None => None,
        FastMath::Bf16 => kernels::bf16_isa(target)?,
    };
    let plan = plan::plan(g)?;
    let fma = isa::has_fma(target);
    let mut lw = Lower::new(module, name, fma);
    lw.avx512 = isa::has_avx512(target);
    lw.bf16 = bf16;
    lw.sve = isa::has_sve(target);
    lw.bfmmla = opts.fast_math == FastMath::Bf16 && lw.sve && target.has("bf16");
    // `-neon` on an aarch64 target keeps GEMMs on the portable CLIF kernel.
    lw.neon = isa::is_aarch64(target) && target.has("neon") && !lw.sve;
    lw.l1d = target.caches.l1d;
    lw.l2 = target.caches.l2;
    lw.clif = dumps.clif.take();
    lw.asm = dumps.asm.take();
    lw.scratch_base = STATUS_BYTES + plan.arena_bytes.div_ceil(64) * 64;

    let mut bufs: HashMap<ValueId, Buf> = HashMap::new();
    let mut resolve = |lw: &mut Lower, v: ValueId| -> Result<Buf> {
        let mut v = v;
        loop {
            if let Some(b) = bufs.get(&v) {
                return Ok(*b);
            }
            let b = match plan.slots.get(v.0).copied().unwrap_or(Slot::Unused) {
                Slot::Input(i) => Buf::Input(i),
                Slot::Output(i) => Buf::Output(i),
                Slot::Arena { offset } => Buf::Work(STATUS_BYTES + offset),
                Slot::Const => {
                    let t = g.value(v).constant.clone().ok_or_else(|| {
                        Error::Internal(format!("value '{}' planned as constant", g.value(v).name))
                    })?;
                    lw.graph_const(t)
                }
                Slot::View(src) => {
                    v = src;
                    continue;
                }
                Slot::Unused => bail!(Internal, "value '{}' has no planned place", g.value(v).name),
            };
            bufs.insert(v, b);
            return Ok(b);
        }
    };

    for n in g.topo_order()? {
        let node = g.node(n);
        let views_only = node
            .outputs
            .iter()
            .all(|o| matches!(plan.slots.get(o.0), Some(Slot::View(_))));
        if views_only {
            continue;
        }
        lw.begin_node(
            &node.op,
            Source {
                node: node.name.clone(),
                op: node.op.clone(),
                fused: node.fused.clone(),
                macs: crate::ir::node_macs(g, node),
                kernel: String::new(),
            },
        );
        if node
            .inputs
            .iter()
            .flatten()
            .all(|v| g.value(*v).constant.is_some())
        {
            // Everything is known: evaluate now, and copy the results out.
            fold(&mut lw, g, node, &mut resolve).map_err(|e| e.in_node(&node.name, &node.op))?;
            continue;
        }
        let mut ins = Vec::with_capacity(node.inputs.len());
        let mut consts = Vec::with_capacity(node.inputs.len());
        for i in &node.inputs {
            match i {
                Some(v) => {
                    ins.push(Some(Operand {
                        buf: resolve(&mut lw, *v)?,
                        ty: g.value(*v).ty.clone(),
                    }));
                    consts.push(g.value(*v).constant.as_deref());
                }
                None => {
                    ins.push(None);
                    consts.push(None);
                }
            }
        }
        let mut outs = Vec::with_capacity(node.outputs.len());
        for &o in &node.outputs {
            outs.push(Operand {
                buf: resolve(&mut lw, o)?,
                ty: g.value(o).ty.clone(),
            });
        }
        let cx = NodeCx {
            node,
            ins,
            outs,
            consts,
        };
        kernels::lower(&mut lw, &cx).map_err(|e| e.in_node(&node.name, &node.op))?;
    }

    // Graph outputs that no node wrote in place: graph inputs, constants,
    // views and values listed twice.
    for (i, &v) in g.outputs.iter().enumerate() {
        let src = resolve(&mut lw, v)?;
        if src != Buf::Output(i) {
            lw.begin_node(
                "output",
                Source {
                    node: format!("output {}", g.value(v).name),
                    op: "copy".to_string(),
                    fused: Vec::new(),
                    macs: 0,
                    kernel: String::new(),
                },
            );
            let ty = g.value(v).ty.clone();
            kernels::copy(
                &mut lw,
                &Operand {
                    buf: src,
                    ty: ty.clone(),
                },
                &Operand {
                    buf: Buf::Output(i),
                    ty,
                },
            )?;
        }
    }

    let mut workspace_bytes = if lw.steps.is_empty() {
        0
    } else {
        lw.scratch_base + lw.scratch_max
    };
    let profile_offset = profile.then(|| {
        let off = workspace_bytes.max(STATUS_BYTES).div_ceil(64) * 64;
        workspace_bytes = off + (lw.steps.len() + 1) * 8;
        off
    });
    let steps = lw.steps.iter().map(|s| s.source).collect();
    let ent = entry::emit(
        &mut lw,
        name,
        g.inputs.len(),
        g.outputs.len(),
        workspace_bytes,
        profile_offset,
    )?;
    dumps.clif = lw.clif.take();
    dumps.asm = lw.asm.take();
    let iface = Interface {
        name: name.to_string(),
        inputs: g
            .inputs
            .iter()
            .map(|&v| (g.value(v).name.clone(), g.value(v).ty.clone()))
            .collect(),
        outputs: g
            .outputs
            .iter()
            .map(|&v| (g.value(v).name.clone(), g.value(v).ty.clone()))
            .collect(),
        workspace_bytes,
        steps,
        sources: std::mem::take(&mut lw.sources),
        profile_offset,
    };
    Ok((iface, ent))
}

/// Lowers a node whose inputs are all constants: the interpreter computes
/// its outputs at compile time and a copy kernel writes them.
fn fold(
    lw: &mut Lower,
    g: &Graph,
    node: &crate::ir::Node,
    resolve: &mut impl FnMut(&mut Lower, ValueId) -> Result<Buf>,
) -> Result<()> {
    let inputs: Vec<Option<&crate::ir::Tensor>> = node
        .inputs
        .iter()
        .map(|v| v.and_then(|v| g.value(v).constant.as_deref()))
        .collect();
    let types: Vec<ValueType> = node
        .outputs
        .iter()
        .map(|&o| g.value(o).ty.clone())
        .collect();
    let outs = crate::ops::eval(&node.op, &node.attrs, node.opset, inputs, &types)?;
    for (t, &o) in outs.iter().zip(&node.outputs) {
        let src = lw.tensor_data(t)?;
        let dst = resolve(lw, o)?;
        let ty = g.value(o).ty.clone();
        kernels::copy(
            lw,
            &Operand {
                buf: src,
                ty: ty.clone(),
            },
            &Operand { buf: dst, ty },
        )?;
    }
    Ok(())
}
