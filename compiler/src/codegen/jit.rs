//! In-process compilation for the host: the same lowering as objects, into
//! a `JITModule`, called through the artifact ABI. A [`Session`] holds one
//! set of preallocated input, output and workspace buffers, so its runs
//! allocate nothing; `JitModel::run` is the convenient allocating form.

use cpucc_runtime::Arena;
use cranelift_jit::{JITBuilder, JITModule};

use super::jit_memory::HugeWeights;
use super::{Dumps, Interface, Options, Target, isa, lower_graph};
use crate::error::{Error, Result};
use crate::ir::{Graph, Tensor};

type RunFn = unsafe extern "C" fn(*const *const u8, *const *mut u8, *mut u8, *const u8) -> i32;

/// A model compiled into this process.
pub struct JitModel {
    // Keeps the code alive; freed on drop.
    module: Option<JITModule>,
    run: RunFn,
    pub iface: Interface,
}

// SAFETY: after finalization the module is only kept to free its memory on
// drop; `&self` methods only call the finished code, which keeps no state
// (every run brings its own workspace), so calls from several threads are
// safe.
unsafe impl Send for JitModel {}
unsafe impl Sync for JitModel {}

impl JitModel {
    pub fn compile(g: &Graph, target: &Target, dumps: &mut Dumps) -> Result<JitModel> {
        JitModel::build(g, target, dumps, false, &Options::default())
    }

    /// Compiles with `opts` (e.g. `--fast-math bf16`).
    pub fn compile_with(
        g: &Graph,
        target: &Target,
        opts: &Options,
        dumps: &mut Dumps,
    ) -> Result<JitModel> {
        JitModel::build(g, target, dumps, false, opts)
    }

    /// Compiles with per-step tick counts (see `Interface::profile_offset`
    /// and [`Session::step_ticks`]).
    pub fn compile_profiled(g: &Graph, target: &Target, opts: &Options) -> Result<JitModel> {
        JitModel::build(g, target, &mut Dumps::default(), true, opts)
    }

    fn build(
        g: &Graph,
        target: &Target,
        dumps: &mut Dumps,
        profile: bool,
        opts: &Options,
    ) -> Result<JitModel> {
        let isa = isa::build(target, false)?;
        let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        builder.memory_provider(Box::new(HugeWeights::new()));
        let mut module = JITModule::new(builder);
        let (iface, ent) = lower_graph(g, &mut module, target, "model", dumps, profile, opts)?;
        if ent.uses_amx {
            // A clear error now rather than status 4 from every run.
            cpucc_runtime::amx::request_permission()
                .map_err(|e| Error::Unsupported(format!("--fast-math bf16 (AMX): {e}")))?;
        }
        module
            .finalize_definitions()
            .map_err(|e| Error::Internal(format!("JIT finalize: {e}")))?;
        let ptr = module.get_finalized_function(ent.run);
        // SAFETY: `ent.run` was defined with exactly the `RunFn` signature
        // in the host's default calling convention.
        let run = unsafe { std::mem::transmute::<*const u8, RunFn>(ptr) };
        Ok(JitModel {
            module: Some(module),
            run,
            iface,
        })
    }

    /// Buffers for runs of this model (inputs zeroed until set).
    pub fn session(&self) -> Result<Session<'_>> {
        let arena = |bytes: usize| {
            Arena::new(bytes).map_err(|e| Error::Internal(format!("allocating {bytes} bytes: {e}")))
        };
        let inputs = self
            .iface
            .inputs
            .iter()
            .map(|(_, ty)| arena(ty.numel() * ty.dtype.size_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let outputs = self
            .iface
            .outputs
            .iter()
            .map(|(_, ty)| arena(ty.numel() * ty.dtype.size_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let workspace = arena(self.iface.workspace_bytes)?;
        Ok(Session {
            in_ptrs: inputs.iter().map(|a| a.as_ptr().cast_const()).collect(),
            out_ptrs: outputs.iter().map(Arena::as_ptr).collect(),
            model: self,
            inputs,
            outputs,
            workspace,
        })
    }

    /// Runs on the calling thread (`pool` null) or through a
    /// `cpucc_pool`.
    ///
    /// # Safety
    /// `pool` must be null or point to a `cpucc_pool` whose `parallel_for`
    /// honours the ABI for the whole call.
    pub unsafe fn run_with(&self, inputs: &[Tensor], pool: *const u8) -> Result<Vec<Tensor>> {
        let mut s = self.session()?;
        s.set_inputs(inputs)?;
        // SAFETY: the caller's contract.
        unsafe { s.run(pool)? };
        s.outputs()
    }

    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        // SAFETY: a null pool runs every kernel on this thread.
        unsafe { self.run_with(inputs, std::ptr::null()) }
    }
}

impl Drop for JitModel {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: no code of this module runs after `self` is dropped
            // (sessions borrow it).
            unsafe { m.free_memory() };
        }
    }
}

/// Preallocated buffers for runs of one model: 64-byte aligned, the
/// workspace on transparent huge pages when large (`cpucc_runtime::Arena`).
pub struct Session<'m> {
    model: &'m JitModel,
    inputs: Vec<Arena>,
    outputs: Vec<Arena>,
    workspace: Arena,
    in_ptrs: Vec<*const u8>,
    out_ptrs: Vec<*mut u8>,
}

// SAFETY: the pointers point into the session's own arenas.
unsafe impl Send for Session<'_> {}

impl Session<'_> {
    /// Copies `inputs` (checked against the interface) into the buffers.
    pub fn set_inputs(&mut self, inputs: &[Tensor]) -> Result<()> {
        let iface = &self.model.iface;
        if inputs.len() != iface.inputs.len() {
            bail!(
                Invalid,
                "model takes {} inputs, got {}",
                iface.inputs.len(),
                inputs.len()
            );
        }
        for (((name, ty), t), buf) in iface.inputs.iter().zip(inputs).zip(&mut self.inputs) {
            if t.dtype() != ty.dtype || t.shape() != ty.shape.as_slice() {
                bail!(
                    Invalid,
                    "input '{name}' is {}{:?}, the model takes {ty}",
                    t.dtype(),
                    t.shape()
                );
            }
            buf.as_mut_slice().copy_from_slice(&t.to_le_bytes());
        }
        Ok(())
    }

    /// One run on the buffers; allocates nothing (except an error message).
    ///
    /// # Safety
    /// As [`JitModel::run_with`].
    pub unsafe fn run(&mut self, pool: *const u8) -> Result<()> {
        // SAFETY: every pointer covers its tensor's bytes (the buffers were
        // sized from the interface), the workspace has the size the code
        // was planned for, and the code lives as long as the model.
        let rc = unsafe {
            (self.model.run)(
                self.in_ptrs.as_ptr(),
                self.out_ptrs.as_ptr(),
                self.workspace.as_ptr(),
                pool,
            )
        };
        match rc {
            0 => Ok(()),
            super::RC_NO_AMX_I32 => bail!(
                Unsupported,
                "run failed: the kernel refused AMX tile permission (arch_prctl ARCH_REQ_XCOMP_PERM)"
            ),
            super::RC_DATA_I32 => bail!(
                Invalid,
                "run failed: a run-time input was out of range (an index, or a Dropout ratio/training_mode the compiled code cannot handle)"
            ),
            rc => bail!(Internal, "compiled model returned {rc}"),
        }
    }

    /// The outputs of the last run.
    pub fn outputs(&self) -> Result<Vec<Tensor>> {
        self.model
            .iface
            .outputs
            .iter()
            .zip(&self.outputs)
            .map(|((_, ty), b)| Tensor::from_le_bytes(ty.dtype, &ty.shape, b.as_slice()))
            .collect()
    }

    pub fn workspace_mut(&mut self) -> &mut Arena {
        &mut self.workspace
    }

    /// Profiled models: the tick counts of the last run, one before each
    /// step and one after the last (`iface.steps.len() + 1` values).
    pub fn step_ticks(&self) -> Option<Vec<u64>> {
        let off = self.model.iface.profile_offset?;
        let n = self.model.iface.steps.len() + 1;
        let bytes = self.workspace.as_slice().get(off..off + n * 8)?;
        Some(
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        )
    }
}
