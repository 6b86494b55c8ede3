//! In-process compilation for the host: the same lowering as objects, into
//! a `JITModule`, called through the artifact ABI.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::sync::Mutex;

use cranelift_jit::{JITBuilder, JITModule};

use super::{Dumps, Interface, Target, isa, lower_graph};
use crate::error::{Error, Result};
use crate::ir::{Graph, Tensor};

type RunFn = unsafe extern "C" fn(*const *const u8, *const *mut u8, *mut u8, *const u8) -> i32;

/// A model compiled into this process.
pub struct JitModel {
    // Keeps the code alive; freed on drop.
    module: Option<JITModule>,
    run: RunFn,
    pub iface: Interface,
    /// The workspace of the last run, reused by the next one that finds it
    /// free (concurrent runs allocate their own): allocating and zeroing a
    /// large workspace per call costs page faults on every run.
    spare: Mutex<Option<AlignedBuf>>,
}

impl JitModel {
    pub fn compile(g: &Graph, target: &Target, dumps: &mut Dumps) -> Result<JitModel> {
        let isa = isa::build(target, false)?;
        let builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        let mut module = JITModule::new(builder);
        let (iface, ent) = lower_graph(g, &mut module, target, "model", dumps)?;
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
            spare: Mutex::new(None),
        })
    }

    /// Runs on the calling thread (`pool` null) or through a
    /// `cpucc_pool`.
    ///
    /// # Safety
    /// `pool` must be null or point to a `cpucc_pool` whose `parallel_for`
    /// honours the ABI for the whole call.
    pub unsafe fn run_with(&self, inputs: &[Tensor], pool: *const u8) -> Result<Vec<Tensor>> {
        if inputs.len() != self.iface.inputs.len() {
            bail!(
                Invalid,
                "model takes {} inputs, got {}",
                self.iface.inputs.len(),
                inputs.len()
            );
        }
        let in_bytes: Vec<Vec<u8>> = inputs.iter().map(|t| t.to_le_bytes()).collect();
        for ((name, ty), t) in self.iface.inputs.iter().zip(inputs) {
            if t.dtype() != ty.dtype || t.shape() != ty.shape.as_slice() {
                bail!(
                    Invalid,
                    "input '{name}' is {}{:?}, the model takes {ty}",
                    t.dtype(),
                    t.shape()
                );
            }
        }
        let mut out_bufs: Vec<AlignedBuf> = self
            .iface
            .outputs
            .iter()
            .map(|(_, ty)| AlignedBuf::new(ty.numel() * ty.dtype.size_bytes()))
            .collect();
        let ws = match self.spare.try_lock().ok().and_then(|mut s| s.take()) {
            Some(ws) => {
                // A fresh status word, as in a zeroed workspace.
                // SAFETY: every workspace has at least 64 bytes.
                unsafe { std::ptr::write_bytes(ws.ptr, 0, 64) };
                ws
            }
            None => AlignedBuf::new(self.iface.workspace_bytes),
        };
        let in_ptrs: Vec<*const u8> = in_bytes
            .iter()
            .map(|b| {
                if b.is_empty() {
                    ws.ptr as *const u8
                } else {
                    b.as_ptr()
                }
            })
            .collect();
        let out_ptrs: Vec<*mut u8> = out_bufs.iter_mut().map(|b| b.ptr).collect();
        // SAFETY: every pointer covers its tensor's bytes (the interface's
        // types were checked above), the workspace has the size the code
        // was planned for, and the code is alive while `self` is.
        let rc = unsafe { (self.run)(in_ptrs.as_ptr(), out_ptrs.as_ptr(), ws.ptr, pool) };
        match rc {
            0 => {}
            super::RC_DATA_I32 => bail!(Invalid, "run failed: an index input is out of range"),
            rc => bail!(Internal, "compiled model returned {rc}"),
        }
        if let Ok(mut s) = self.spare.try_lock() {
            *s = Some(ws);
        }
        self.iface
            .outputs
            .iter()
            .zip(&out_bufs)
            .map(|((_, ty), b)| Tensor::from_le_bytes(ty.dtype, &ty.shape, b.bytes()))
            .collect()
    }

    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        // SAFETY: a null pool runs every kernel on this thread.
        unsafe { self.run_with(inputs, std::ptr::null()) }
    }
}

impl Drop for JitModel {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: no code of this module runs after `self` is dropped.
            unsafe { m.free_memory() };
        }
    }
}

/// Zeroed 64-byte-aligned bytes (workspace and outputs).
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain owned memory; `JitModel` hands it to one run
// at a time (taken out of the mutex).
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len.max(64), 64).expect("valid layout");
        // SAFETY: the layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory allocating {len} bytes");
        AlignedBuf { ptr, len }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` owns `len` initialized (zeroed or written) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len.max(64), 64).expect("valid layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, layout) };
    }
}
