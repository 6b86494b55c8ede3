//! The exported entry points: `N_run`, which checks its arguments and calls
//! every kernel in order (through the caller's thread pool when there is
//! one), and `N_workspace_size`.
//!
//! Profiled builds also define a local `N_ticks` (the cycle counter: x86-64
//! `rdtsc`, aarch64 `mrs cntvct_el0`, as machine code since CLIF has no such
//! instruction) and store its value into the workspace before every step and
//! after the last one; no syscall, and the ABI is unchanged.

use cranelift_codegen::Context;
use cranelift_codegen::ir::types::{I32, I64};
use cranelift_codegen::ir::{
    AbiParam, Function, InstBuilder, Signature, StackSlotData, StackSlotKind, UserFuncName,
    condcodes::IntCC,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{FuncId, Linkage, Module};

use super::builder::{mem, task_signature};
use super::lower::{Buf, Lower};
use crate::error::{Error, Result};

/// Return codes of `N_run` (documented in ARCHITECTURE.md and the header).
pub const RC_NULL_BUFFER: i64 = 1;
pub const RC_NO_WORKSPACE: i64 = 2;
/// Kernels write this status into the workspace's first word.
pub const RC_DATA: i64 = 3;
/// A model with AMX kernels could not get tile permission from the kernel.
pub const RC_NO_AMX: i64 = 4;

/// Byte offsets of `cpucc_pool` fields.
const POOL_CTX: i32 = 0;
const POOL_PARALLEL_FOR: i32 = 16;

pub struct Entry {
    pub run: FuncId,
    pub workspace: FuncId,
    /// Kernels use AMX tiles (`N_run` asks for permission first).
    pub uses_amx: bool,
}

pub fn emit(
    lw: &mut Lower,
    name: &str,
    num_inputs: usize,
    num_outputs: usize,
    workspace_bytes: usize,
    profile_offset: Option<usize>,
) -> Result<Entry> {
    let cc = lw.cc;
    let err = |what: &str, e: String| Error::Internal(format!("{what}: {e}"));
    let ticks = match profile_offset {
        Some(_) => Some(ticks_function(lw, name)?),
        None => None,
    };
    let amx_perm = if lw.uses_amx {
        Some(super::kernels::amx_permission_function(lw)?)
    } else {
        None
    };
    let mut sig = Signature::new(cc);
    for _ in 0..4 {
        sig.params.push(AbiParam::new(I64));
    }
    sig.returns.push(AbiParam::new(I32));
    let run_name = format!("{name}_run");
    let run = lw
        .module
        .declare_function(&run_name, Linkage::Export, &sig)
        .map_err(|e| err(&run_name, e.to_string()))?;
    let mut ctx = Context::new();
    ctx.func = Function::with_name_signature(UserFuncName::user(0, run.as_u32()), sig);
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let (inputs, outputs, ws, pool) = (p[0], p[1], p[2], p[3]);

        let fail = |b: &mut FunctionBuilder, cond, code: i64| {
            let bad = b.create_block();
            let ok = b.create_block();
            b.ins().brif(cond, bad, &[], ok, &[]);
            b.switch_to_block(bad);
            let rc = b.ins().iconst(I32, code);
            b.ins().return_(&[rc]);
            b.switch_to_block(ok);
        };
        for (arr, n) in [(inputs, num_inputs), (outputs, num_outputs)] {
            if n == 0 {
                continue;
            }
            let c = b.ins().icmp_imm_s(IntCC::Equal, arr, 0);
            fail(&mut b, c, RC_NULL_BUFFER);
            for i in 0..n {
                let ptr = b.ins().load(I64, mem(), arr, (i * 8) as i32);
                let c = b.ins().icmp_imm_s(IntCC::Equal, ptr, 0);
                fail(&mut b, c, RC_NULL_BUFFER);
            }
        }
        if workspace_bytes > 0 {
            let c = b.ins().icmp_imm_s(IntCC::Equal, ws, 0);
            fail(&mut b, c, RC_NO_WORKSPACE);
        }
        if let Some(f) = amx_perm {
            // Permission is per process and idempotent: one cheap syscall per
            // run keeps objects self-contained (no runtime call needed).
            let f = lw.module.declare_func_in_func(f, b.func);
            let call = b.ins().call(f, &[]);
            let r = b.inst_results(call)[0];
            let c = b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
            fail(&mut b, c, RC_NO_AMX);
        }
        if lw.steps.iter().any(|s| s.checks) {
            let z = b.ins().iconst(I64, 0);
            b.ins().store(mem(), z, ws, 0);
        }

        let max_bufs = lw.steps.iter().map(|s| s.bufs.len()).max().unwrap_or(0);
        let slot = b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (max_bufs.max(1) * 8) as u32,
            3,
        ));
        let task_sig = b.import_signature(task_signature(cc));
        let mut pf_sig = Signature::new(cc);
        for _ in 0..4 {
            pf_sig.params.push(AbiParam::new(I64));
        }
        let pf_sig = b.import_signature(pf_sig);
        let has_pool = b.ins().icmp_imm_s(IntCC::NotEqual, pool, 0);

        let ticks = ticks.map(|f| lw.module.declare_func_in_func(f, b.func));
        let stamp = |b: &mut FunctionBuilder, i: usize| {
            if let (Some(f), Some(off)) = (ticks, profile_offset) {
                let call = b.ins().call(f, &[]);
                let t = b.inst_results(call)[0];
                b.ins().store(mem(), t, ws, (off + i * 8) as i32);
            }
        };
        let steps = std::mem::take(&mut lw.steps);
        for (i, step) in steps.iter().enumerate() {
            stamp(&mut b, i);
            for (j, buf) in step.bufs.iter().enumerate() {
                let ptr = match *buf {
                    Buf::Input(i) => b.ins().load(I64, mem(), inputs, (i * 8) as i32),
                    Buf::Output(i) => b.ins().load(I64, mem(), outputs, (i * 8) as i32),
                    Buf::Work(off) => b.ins().iadd_imm_s(ws, off as i64),
                    Buf::Data(d) => {
                        let gv = lw.module.declare_data_in_func(d, b.func);
                        b.ins().symbol_value(I64, gv)
                    }
                    Buf::Const(c) => {
                        let d = lw.const_data(c)?;
                        let gv = lw.module.declare_data_in_func(d, b.func);
                        b.ins().symbol_value(I64, gv)
                    }
                };
                b.ins().stack_store(I64, ptr, slot, (j * 8) as i32);
            }
            let args = b.ins().stack_addr(I64, slot, 0);
            let fref = lw.module.declare_func_in_func(step.func, b.func);
            let items = b.ins().iconst(I64, step.items as i64);
            if step.items > 1 {
                let par = b.create_block();
                let seq = b.create_block();
                let done = b.create_block();
                b.ins().brif(has_pool, par, &[], seq, &[]);
                b.switch_to_block(par);
                let ctxv = b.ins().load(I64, mem(), pool, POOL_CTX);
                let pf = b.ins().load(I64, mem(), pool, POOL_PARALLEL_FOR);
                let task = b.ins().func_addr(I64, fref);
                b.ins()
                    .call_indirect(pf_sig, pf, &[ctxv, items, task, args]);
                b.ins().jump(done, &[]);
                b.switch_to_block(seq);
                let zero = b.ins().iconst(I64, 0);
                b.ins().call(fref, &[args, zero, items]);
                b.ins().jump(done, &[]);
                b.switch_to_block(done);
            } else {
                let zero = b.ins().iconst(I64, 0);
                b.ins().call(fref, &[args, zero, items]);
            }
            if step.checks {
                let st = b.ins().load(I64, mem(), ws, 0);
                let c = b.ins().icmp_imm_s(IntCC::NotEqual, st, 0);
                fail(&mut b, c, RC_DATA);
            }
        }
        stamp(&mut b, steps.len());
        let _ = task_sig;
        let z = b.ins().iconst(I32, 0);
        b.ins().return_(&[z]);
        b.seal_all_blocks();
        b.finalize(lw.module.isa().frontend_config());
    }
    lw.module
        .define_function(run, &mut ctx)
        .map_err(|e| err(&run_name, format!("{e:?}")))?;

    let mut sig = Signature::new(cc);
    sig.returns.push(AbiParam::new(I64));
    let ws_name = format!("{name}_workspace_size");
    let workspace = lw
        .module
        .declare_function(&ws_name, Linkage::Export, &sig)
        .map_err(|e| err(&ws_name, e.to_string()))?;
    let mut ctx = Context::new();
    ctx.func = Function::with_name_signature(UserFuncName::user(0, workspace.as_u32()), sig);
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        b.switch_to_block(entry);
        let v = b.ins().iconst(I64, workspace_bytes as i64);
        b.ins().return_(&[v]);
        b.seal_all_blocks();
        b.finalize(lw.module.isa().frontend_config());
    }
    lw.module
        .define_function(workspace, &mut ctx)
        .map_err(|e| err(&ws_name, format!("{e:?}")))?;
    Ok(Entry {
        run,
        workspace,
        uses_amx: lw.uses_amx,
    })
}

/// Defines `{name}_ticks() -> u64`, the cycle counter, as machine code.
fn ticks_function(lw: &mut Lower, name: &str) -> Result<FuncId> {
    use target_lexicon::Architecture;
    let code: &[u8] = match lw.module.isa().triple().architecture {
        // rdtsc; shl rdx, 32; or rax, rdx; ret
        Architecture::X86_64 => &[0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0xc3],
        // mrs x0, cntvct_el0; ret
        Architecture::Aarch64(_) => &[0x40, 0xe0, 0x3b, 0xd5, 0xc0, 0x03, 0x5f, 0xd6],
        a => bail!(Unsupported, "profiling is not available on {a}"),
    };
    let mut sig = Signature::new(lw.cc);
    sig.returns.push(AbiParam::new(I64));
    let f_name = format!("{name}_ticks");
    let id = lw
        .module
        .declare_function(&f_name, Linkage::Local, &sig)
        .map_err(|e| Error::Internal(format!("{f_name}: {e}")))?;
    lw.module
        .define_function_bytes(id, 16, code, &[])
        .map_err(|e| Error::Internal(format!("{f_name}: {e}")))?;
    Ok(id)
}
