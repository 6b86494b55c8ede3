//! Lowering state shared by every op's kernel emitter: the module the
//! kernels go into, the steps the entry function will run in order, constant
//! data objects, and per-node scratch space in the workspace.

use std::sync::Arc;

use cranelift_codegen::Context;
use cranelift_codegen::ir::{FuncRef, Function, Signature, UserFuncName};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module};

use super::builder::{Kb, task_signature};
use super::kernels::zcopy;
use crate::error::{Error, Result};
use crate::ir::{Tensor, ValueType};

/// Where a kernel finds one of its buffers at run time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Buf {
    Input(usize),
    Output(usize),
    /// Byte offset into the workspace (planned arena values and scratch).
    Work(usize),
    Data(DataId),
    /// Graph constant `i` of `Lower::consts`, defined as data only once a
    /// step passes it to a kernel: a GEMM that reads a packed copy of its
    /// weights leaves the original out of the object.
    Const(usize),
}

/// The bf16 matrix instructions `--fast-math bf16` lowers GEMMs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Isa {
    /// AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 (`vdpbf16ps`).
    Avx512,
}

/// One kernel call of the entry function.
pub struct Step {
    pub func: FuncId,
    pub bufs: Vec<Buf>,
    /// Work items; the pool may split `[0, items)` across threads.
    pub items: usize,
    /// Whether the kernel may set the workspace's status word (e.g. an index
    /// out of range), so the entry function checks it afterwards.
    pub checks: bool,
    /// Index into `Lower::sources`: the graph node this step computes.
    pub source: usize,
}

/// The graph node a group of steps comes from, for profiles.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The node's name (or a description for steps of no node).
    pub node: String,
    pub op: String,
    /// Names of the source nodes fused into it.
    pub fused: Vec<String>,
    /// Multiply-accumulates of one run (`ir::stats`).
    pub macs: u64,
    /// The kernels the node was lowered to, as the lowering chose them
    /// from the shapes (`cpucc inspect --kernels`, `cpucc profile`).
    pub kernel: String,
}

/// A tensor operand of a node: where it lives and its type.
#[derive(Clone, Debug)]
pub struct Operand {
    pub buf: Buf,
    pub ty: ValueType,
}

pub struct Lower<'m> {
    pub module: &'m mut dyn Module,
    /// Graph constants (see [`Buf::Const`]) and their data once defined.
    consts: Vec<(Arc<Tensor>, Option<DataId>)>,
    pub cc: CallConv,
    pub fma: bool,
    /// The target has AVX-512F: GEMMs use the machine-code microkernels.
    pub avx512: bool,
    /// The target has SVE: GEMMs use the SVE machine-code microkernels.
    pub sve: bool,
    /// aarch64 without SVE: GEMMs use the NEON machine-code microkernels.
    pub neon: bool,
    /// L1 data cache bytes per core (GEMM depth blocking).
    pub l1d: usize,
    /// L2 bytes per core.
    pub l2: usize,
    pub steps: Vec<Step>,
    prefix: String,
    fctx: FunctionBuilderContext,
    ctx: Context,
    counter: usize,
    /// Workspace bytes below which scratch may not go (status word + arena).
    pub scratch_base: usize,
    scratch_top: usize,
    pub scratch_max: usize,
    /// CLIF text of each kernel, when requested (`--emit clif`).
    pub clif: Option<Vec<(String, String)>>,
    /// Disassembly of each kernel, when requested (`--emit asm`).
    pub asm: Option<Vec<(String, String)>>,
    /// The node being lowered, for kernel names.
    pub node_tag: String,
    /// Nodes the steps come from; the last one is current.
    pub sources: Vec<Source>,
    /// `--fast-math bf16`: the instructions bf16 GEMMs use.
    pub bf16: Option<Bf16Isa>,
    /// `--fast-math bf16` on an aarch64 target with SVE and BF16: GEMMs
    /// with constant B take the SVE BFMMLA kernel (`kernels/bfmmla.rs`).
    pub bfmmla: bool,
    /// Weight panels packed for the bf16 GEMM (`kernels/bf16gemm.rs`,
    /// `kernels/bfmmla.rs`).
    pub bf16_packed: Vec<Buf>,
    /// Constant B panels for the AVX-512 GEMM whose narrow edge panel is
    /// packed K-major for its dot tiles (`zgemm::pack_dot_edge`).
    pub dot_packed: Vec<Buf>,
    /// Some kernel uses AMX tiles: `N_run` asks the kernel for permission.
    pub uses_amx: bool,
    /// The current node's bf16 GEMM scratch (offset, bytes), shared by its
    /// GEMM steps, which run one after another.
    pub bf16_scratch: Option<(Buf, usize)>,
    /// The AVX-512 copy and zero functions, defined with the first kernel.
    zcopy: Option<[FuncId; 2]>,
}

/// Workspace bytes reserved for the status word kernels set on run-time
/// errors; the arena starts after it.
pub const STATUS_BYTES: usize = 64;

impl<'m> Lower<'m> {
    pub fn new(module: &'m mut dyn Module, prefix: &str, fma: bool) -> Self {
        let cc = module.isa().default_call_conv();
        Lower {
            module,
            consts: Vec::new(),
            cc,
            fma,
            avx512: false,
            sve: false,
            neon: false,
            l1d: 32 << 10,
            l2: 1 << 20,
            steps: Vec::new(),
            prefix: prefix.to_string(),
            fctx: FunctionBuilderContext::new(),
            ctx: Context::new(),
            counter: 0,
            scratch_base: STATUS_BYTES,
            scratch_top: 0,
            scratch_max: 0,
            clif: None,
            asm: None,
            node_tag: String::new(),
            sources: Vec::new(),
            bf16: None,
            bfmmla: false,
            bf16_packed: Vec::new(),
            dot_packed: Vec::new(),
            uses_amx: false,
            bf16_scratch: None,
            zcopy: None,
        }
    }

    /// Defines a kernel with `body` and appends a step running it over
    /// `items` work items with `bufs`.
    pub fn kernel(
        &mut self,
        bufs: Vec<Buf>,
        items: usize,
        body: impl FnOnce(&mut Kb),
    ) -> Result<()> {
        self.kernel_checked(bufs, items, false, body)
    }

    pub fn kernel_checked(
        &mut self,
        bufs: Vec<Buf>,
        items: usize,
        checks: bool,
        body: impl FnOnce(&mut Kb),
    ) -> Result<()> {
        self.kernel_calling(bufs, items, checks, &[], |kb, _| body(kb))
    }

    /// Defines a function from machine code (no relocations) and returns
    /// its id, for kernels to call (`kernel_calling`).
    pub fn machine_code(&mut self, sig: &Signature, bytes: &[u8]) -> Result<FuncId> {
        let name = format!("{}_mc{}_{}", self.prefix, self.counter, self.node_tag);
        self.counter += 1;
        let func = self
            .module
            .declare_function(&name, Linkage::Local, sig)
            .map_err(|e| Error::Internal(format!("declare {name}: {e}")))?;
        self.module
            .define_function_bytes(func, 64, bytes, &[])
            .map_err(|e| Error::Internal(format!("define {name}: {e:?}")))?;
        Ok(func)
    }

    /// A kernel whose body may call `callees` (through the `FuncRef`s it is
    /// handed, in the same order).
    pub fn kernel_calling(
        &mut self,
        bufs: Vec<Buf>,
        items: usize,
        checks: bool,
        callees: &[FuncId],
        body: impl FnOnce(&mut Kb, &[FuncRef]),
    ) -> Result<()> {
        if self.avx512 && self.zcopy.is_none() {
            self.zcopy = Some(zcopy::define(self)?);
        }
        let name = format!("{}_k{}_{}", self.prefix, self.counter, self.node_tag);
        self.counter += 1;
        let sig = task_signature(self.cc);
        let func = self
            .module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(|e| Error::Internal(format!("declare {name}: {e}")))?;
        self.ctx.func = Function::with_name_signature(UserFuncName::user(0, func.as_u32()), sig);
        let refs: Vec<FuncRef> = callees
            .iter()
            .map(|&f| self.module.declare_func_in_func(f, &mut self.ctx.func))
            .collect();
        let zcopy = self
            .zcopy
            .map(|fs| fs.map(|f| self.module.declare_func_in_func(f, &mut self.ctx.func)));
        let frontend = self.module.isa().frontend_config();
        let mut kb = Kb::new(
            &mut self.ctx.func,
            &mut self.fctx,
            self.fma,
            frontend,
            zcopy,
        );
        body(&mut kb, &refs);
        kb.finish();
        if let Some(c) = &mut self.clif {
            c.push((name.clone(), self.ctx.func.display().to_string()));
        }
        self.ctx.set_disasm(self.asm.is_some());
        self.module
            .define_function(func, &mut self.ctx)
            .map_err(|e| Error::Internal(format!("compile {name}: {e:?}")))?;
        if let Some(a) = &mut self.asm {
            let text = self
                .ctx
                .compiled_code()
                .and_then(|c| c.vcode.clone())
                .unwrap_or_default();
            a.push((name, text));
        }
        self.module.clear_context(&mut self.ctx);
        self.steps.push(Step {
            func,
            bufs,
            items: items.max(1),
            checks,
            source: self.sources.len().saturating_sub(1),
        });
        Ok(())
    }

    /// Read-only data in the object (weights, tables).
    pub fn data(&mut self, bytes: Vec<u8>) -> Result<Buf> {
        self.data_id(bytes).map(Buf::Data)
    }

    fn data_id(&mut self, bytes: Vec<u8>) -> Result<DataId> {
        let name = format!("{}_d{}", self.prefix, self.counter);
        self.counter += 1;
        let id = self
            .module
            .declare_data(&name, Linkage::Local, false, false)
            .map_err(|e| Error::Internal(format!("declare {name}: {e}")))?;
        let mut d = DataDescription::new();
        // Empty tensors still need an address.
        let bytes = if bytes.is_empty() {
            vec![0u8; 8]
        } else {
            bytes
        };
        d.define(bytes.into_boxed_slice());
        d.set_align(64);
        self.module
            .define_data(id, &d)
            .map_err(|e| Error::Internal(format!("define {name}: {e}")))?;
        Ok(id)
    }

    pub fn tensor_data(&mut self, t: &Tensor) -> Result<Buf> {
        self.data(t.to_le_bytes())
    }

    /// A graph constant, defined as data when a step first uses it.
    pub fn graph_const(&mut self, t: Arc<Tensor>) -> Buf {
        self.consts.push((t, None));
        Buf::Const(self.consts.len() - 1)
    }

    /// The data of graph constant `i`, defined on first use.
    pub fn const_data(&mut self, i: usize) -> Result<DataId> {
        if let Some(d) = self.consts[i].1 {
            return Ok(d);
        }
        let d = self.data_id(self.consts[i].0.to_le_bytes())?;
        self.consts[i].1 = Some(d);
        Ok(d)
    }

    /// Scratch space for the current node; freed when the next node starts.
    pub fn scratch(&mut self, bytes: usize) -> Buf {
        let off = self.scratch_top;
        self.scratch_top += bytes.div_ceil(64) * 64;
        self.scratch_max = self.scratch_max.max(self.scratch_top);
        Buf::Work(self.scratch_base + off)
    }

    /// Records the kernel choice for the current node (once per distinct
    /// description).
    pub fn note_kernel(&mut self, what: impl Into<String>) {
        let what = what.into();
        if let Some(s) = self.sources.last_mut()
            && !s.kernel.split("; ").any(|k| k == what)
        {
            if !s.kernel.is_empty() {
                s.kernel.push_str("; ");
            }
            s.kernel.push_str(&what);
        }
    }

    /// Starts a node: its steps are attributed to `source`.
    pub fn begin_node(&mut self, tag: &str, source: Source) {
        self.sources.push(source);
        self.scratch_top = 0;
        self.bf16_scratch = None;
        self.node_tag = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
    }
}
