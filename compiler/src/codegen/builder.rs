//! Helpers for writing kernel bodies in CLIF: the kernel signature, loops,
//! constants, and typed loads/stores that convert between an element's
//! storage type and the type arithmetic is done in.
//!
//! Every kernel has the `cpucc_task` signature `fn(args, begin, end)`:
//! `args` points at an array of buffer pointers (the entry function fills
//! it), and `[begin, end)` is the range of work items this call processes.

use cranelift_codegen::ir::types::{F32, F32X4, F64, I8, I16, I32, I32X4, I64};
use cranelift_codegen::ir::{
    AbiParam, FuncRef, Function, InstBuilder, MemFlagsData, Signature, Type, Value,
    condcodes::IntCC,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};

use crate::ir::DType;

/// The `cpucc_task` signature shared by every kernel.
pub fn task_signature(cc: CallConv) -> Signature {
    let mut s = Signature::new(cc);
    s.params.push(AbiParam::new(I64));
    s.params.push(AbiParam::new(I64));
    s.params.push(AbiParam::new(I64));
    s
}

/// A kernel body under construction.
pub struct Kb<'a> {
    pub b: FunctionBuilder<'a>,
    args: Value,
    pub begin: Value,
    pub end: Value,
    /// Whether `fma` lowers to one instruction on this target.
    pub fma: bool,
    frontend: TargetFrontendConfig,
    /// The AVX-512 [copy, zero] functions (`kernels/zcopy.rs`), where the
    /// target has them.
    zcopy: Option<[FuncRef; 2]>,
}

pub fn mem() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Flags for bitcasts between vector types (Cranelift asks for the lane
/// order).
pub fn vec_flags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

impl<'a> Kb<'a> {
    pub fn new(
        func: &'a mut Function,
        fctx: &'a mut FunctionBuilderContext,
        fma: bool,
        frontend: TargetFrontendConfig,
        zcopy: Option<[FuncRef; 2]>,
    ) -> Self {
        let mut b = FunctionBuilder::new(func, fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        Kb {
            b,
            args: p[0],
            begin: p[1],
            end: p[2],
            fma,
            frontend,
            zcopy,
        }
    }

    pub fn finish(mut self) {
        self.b.ins().return_(&[]);
        self.b.seal_all_blocks();
        self.b.finalize(self.frontend);
    }

    /// The `j`-th buffer pointer.
    pub fn arg(&mut self, j: usize) -> Value {
        self.b.ins().load(I64, mem(), self.args, (j * 8) as i32)
    }

    pub fn i(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().iadd(a, b)
    }

    pub fn addi(&mut self, a: Value, k: i64) -> Value {
        if k == 0 {
            a
        } else {
            self.b.ins().iadd_imm_s(a, k)
        }
    }

    pub fn muli(&mut self, a: Value, k: i64) -> Value {
        match k {
            0 => self.i(0),
            1 => a,
            _ => self.b.ins().imul_imm_s(a, k),
        }
    }

    /// `base + idx * scale`.
    pub fn gep(&mut self, base: Value, idx: Value, scale: i64) -> Value {
        let off = self.muli(idx, scale);
        self.b.ins().iadd(base, off)
    }

    pub fn var(&mut self, ty: Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    /// `for i in (lo..hi).step_by(step)`: the body sees `i`. Loops whose body
    /// would overrun `hi` must handle the tail themselves.
    pub fn for_range(
        &mut self,
        lo: Value,
        hi: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value),
    ) {
        let i = self.var(I64, lo);
        let header = self.b.create_block();
        let bodyb = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let iv = self.b.use_var(i);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, iv, hi);
        self.b.ins().brif(c, bodyb, &[], exit, &[]);
        self.b.switch_to_block(bodyb);
        body(self, iv);
        let iv = self.b.use_var(i);
        let n = self.b.ins().iadd_imm_s(iv, step);
        self.b.def_var(i, n);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(exit);
    }

    /// Vector loop over `[lo, hi)` by `lanes`, then a scalar tail; the body
    /// gets the index and the lane count (`lanes` or 1).
    pub fn for_vec(
        &mut self,
        lo: Value,
        hi: Value,
        lanes: i64,
        mut body: impl FnMut(&mut Self, Value, u32),
    ) -> Value {
        let i = self.var(I64, lo);
        if lanes > 1 {
            let vhi = self.b.ins().iadd_imm_s(hi, -(lanes - 1));
            let header = self.b.create_block();
            let bodyb = self.b.create_block();
            let exit = self.b.create_block();
            self.b.ins().jump(header, &[]);
            self.b.switch_to_block(header);
            let iv = self.b.use_var(i);
            let c = self.b.ins().icmp(IntCC::SignedLessThan, iv, vhi);
            self.b.ins().brif(c, bodyb, &[], exit, &[]);
            self.b.switch_to_block(bodyb);
            body(self, iv, lanes as u32);
            let iv = self.b.use_var(i);
            let n = self.b.ins().iadd_imm_s(iv, lanes);
            self.b.def_var(i, n);
            self.b.ins().jump(header, &[]);
            self.b.switch_to_block(exit);
        }
        let start = self.b.use_var(i);
        self.for_range(start, hi, 1, |kb, iv| body(kb, iv, 1));
        start
    }

    /// Copies `len` f32s from `src` to `dst` (f32x4 with a scalar tail).
    pub fn copy_f32(&mut self, src: Value, dst: Value, len: Value) {
        if let Some([copy, _]) = self.zcopy {
            self.b.ins().call(copy, &[src, dst, len]);
            return;
        }
        let z = self.i(0);
        self.for_vec(z, len, 4, |kb, j, lanes| {
            let ty = if lanes == 1 { F32 } else { F32X4 };
            let s = kb.gep(src, j, 4);
            let v = kb.b.ins().load(ty, mem(), s, 0);
            let d = kb.gep(dst, j, 4);
            kb.b.ins().store(mem(), v, d, 0);
        });
    }

    /// Stores `len` f32 zeros at `dst`.
    pub fn zero_f32(&mut self, dst: Value, len: Value) {
        if let Some([_, zero]) = self.zcopy {
            self.b.ins().call(zero, &[dst, len]);
            return;
        }
        let z = self.i(0);
        self.for_vec(z, len, 4, |kb, j, lanes| {
            let ty = if lanes == 1 { F32 } else { F32X4 };
            let v = kb.constant(ty, 0.0);
            let d = kb.gep(dst, j, 4);
            kb.b.ins().store(mem(), v, d, 0);
        });
    }

    /// `if cond { then }`.
    pub fn if_(&mut self, cond: Value, then: impl FnOnce(&mut Self)) {
        let t = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().brif(cond, t, &[], exit, &[]);
        self.b.switch_to_block(t);
        then(self);
        self.b.ins().jump(exit, &[]);
        self.b.switch_to_block(exit);
    }

    /// A constant of compute type `ty` (scalar or vector), from f64.
    pub fn constant(&mut self, ty: Type, v: f64) -> Value {
        let lane = ty.lane_type();
        let s = if lane == F32 {
            self.b.ins().f32const(v as f32)
        } else if lane == F64 {
            self.b.ins().f64const(v)
        } else {
            self.b.ins().iconst(lane, v as i64)
        };
        self.splat(ty, s)
    }

    pub fn splat(&mut self, ty: Type, s: Value) -> Value {
        if ty.is_vector() {
            self.b.ins().splat(ty, s)
        } else {
            s
        }
    }

    /// Integer constant of (possibly vector) type `ty`, from raw bits.
    pub fn bits(&mut self, ty: Type, v: i64) -> Value {
        let s = self.b.ins().iconst(ty.lane_type(), v);
        self.splat(ty, s)
    }

    /// `cond ? a : b` lane-wise; `cond` comes from `icmp`/`fcmp` on values
    /// of the same shape as `a`.
    pub fn sel(&mut self, cond: Value, a: Value, b: Value) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        if ty.is_vector() {
            let c = self.b.ins().bitcast(ty, vec_flags(), cond);
            self.b.ins().bitselect(c, a, b)
        } else {
            self.b.ins().select(cond, a, b)
        }
    }

    /// `|a|` with the sign of `b` (x86 has no vector copysign in Cranelift).
    pub fn copysign(&mut self, a: Value, b: Value) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        if !ty.is_vector() {
            return self.b.ins().fcopysign(a, b);
        }
        let ity = ty.as_int();
        let ai = self.b.ins().bitcast(ity, vec_flags(), a);
        let bi = self.b.ins().bitcast(ity, vec_flags(), b);
        let lane_bits = ty.lane_bits() as i64;
        let sign = self.bits(ity, 1i64 << (lane_bits - 1));
        let mag = self.b.ins().band_not(ai, sign);
        let sb = self.b.ins().band(bi, sign);
        let r = self.b.ins().bor(mag, sb);
        self.b.ins().bitcast(ty, vec_flags(), r)
    }

    /// `a * b + c`, fused where the target has it.
    pub fn fmadd(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let m = self.b.ins().fmul(a, b);
            self.b.ins().fadd(m, c)
        }
    }

    /// Loads element(s) of storage type `dt` at `addr` and converts them to
    /// the compute type (`Elt::compute`), `lanes` wide.
    pub fn load_elt(&mut self, dt: DType, addr: Value, lanes: u32) -> Value {
        let e = Elt(dt);
        if lanes > 1 {
            return self.b.ins().load(e.compute(lanes), mem(), addr, 0);
        }
        let raw = self.b.ins().load(e.storage(), mem(), addr, 0);
        match dt {
            DType::F32 | DType::F64 | DType::I32 | DType::U32 | DType::I64 | DType::U64 => raw,
            DType::I8 | DType::I16 => self.b.ins().sextend(I32, raw),
            DType::U8 | DType::U16 | DType::Bool => self.b.ins().uextend(I32, raw),
            DType::F16 => {
                let w = self.b.ins().uextend(I32, raw);
                self.f16_to_f32(w)
            }
            DType::BF16 => {
                let w = self.b.ins().uextend(I32, raw);
                let w = self.b.ins().ishl_imm_u(w, 16);
                self.b.ins().bitcast(F32, MemFlagsData::new(), w)
            }
        }
    }

    /// Converts from the compute type and stores.
    pub fn store_elt(&mut self, dt: DType, v: Value, addr: Value, lanes: u32) {
        if lanes > 1 {
            self.b.ins().store(mem(), v, addr, 0);
            return;
        }
        let v = match dt {
            DType::F32 | DType::F64 | DType::I32 | DType::U32 | DType::I64 | DType::U64 => v,
            DType::I8 | DType::U8 => self.b.ins().ireduce(I8, v),
            DType::Bool => self.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0),
            DType::I16 | DType::U16 => self.b.ins().ireduce(I16, v),
            DType::F16 => {
                let h = self.f32_to_f16(v);
                self.b.ins().ireduce(I16, h)
            }
            DType::BF16 => {
                let h = self.f32_to_bf16(v);
                self.b.ins().ireduce(I16, h)
            }
        };
        self.b.ins().store(mem(), v, addr, 0);
    }

    /// IEEE half bits (in an i32) to f32, exact, incl. subnormals/inf/NaN.
    /// An f32 `v` rounded to the precision of `dt` (f16 or bf16), as f32.
    pub fn round_to_half(&mut self, dt: DType, v: Value) -> Value {
        match dt {
            DType::F16 => {
                let h = self.f32_to_f16(v);
                let h = self.b.ins().band_imm_s(h, 0xffff);
                self.f16_to_f32(h)
            }
            DType::BF16 => {
                let h = self.f32_to_bf16(v);
                let h = self.b.ins().band_imm_s(h, 0xffff);
                let w = self.b.ins().ishl_imm_u(h, 16);
                self.b.ins().bitcast(F32, MemFlagsData::new(), w)
            }
            _ => v,
        }
    }

    fn f16_to_f32(&mut self, h: Value) -> Value {
        let sign = self.b.ins().band_imm_s(h, 0x8000);
        let sign = self.b.ins().ishl_imm_u(sign, 16);
        let em = self.b.ins().band_imm_s(h, 0x7fff);
        let o = self.b.ins().ishl_imm_u(em, 13);
        let exp = self.b.ins().band_imm_s(o, 0x0f80_0000);
        let o = self.b.ins().iadd_imm_s(o, (127 - 15) << 23);
        let is_special = self.b.ins().icmp_imm_s(IntCC::Equal, exp, 0x0f80_0000);
        let special = self.b.ins().iadd_imm_s(o, (128 - 16) << 23);
        let is_sub = self.b.ins().icmp_imm_s(IntCC::Equal, exp, 0);
        let sub = self.b.ins().iadd_imm_s(o, 1 << 23);
        let subf = self.b.ins().bitcast(F32, MemFlagsData::new(), sub);
        let magic = self.b.ins().f32const(f32::from_bits(113 << 23));
        let subf = self.b.ins().fsub(subf, magic);
        let sub = self.b.ins().bitcast(I32, MemFlagsData::new(), subf);
        let o = self.b.ins().select(is_special, special, o);
        let o = self.b.ins().select(is_sub, sub, o);
        let o = self.b.ins().bor(o, sign);
        self.b.ins().bitcast(F32, MemFlagsData::new(), o)
    }

    /// f32 to IEEE half bits (in an i32), round to nearest even.
    fn f32_to_f16(&mut self, f: Value) -> Value {
        let u = self.b.ins().bitcast(I32, MemFlagsData::new(), f);
        let sign = self.b.ins().band_imm_s(u, 0x8000_0000u32 as i64);
        let a = self.b.ins().bxor(u, sign);
        // Overflow to inf (or a quiet NaN for NaN inputs).
        let is_big =
            self.b
                .ins()
                .icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, a, (127 + 16) << 23);
        let is_nan = self
            .b
            .ins()
            .icmp_imm_s(IntCC::UnsignedGreaterThan, a, 255 << 23);
        let inf = self.b.ins().iconst(I32, 0x7c00);
        let nan = self.b.ins().iconst(I32, 0x7e00);
        let big = self.b.ins().select(is_nan, nan, inf);
        // Subnormal results: let the FPU round by adding a magic number.
        let denorm_magic: i64 = ((127 - 15) + (23 - 10) + 1) << 23;
        let is_small = self
            .b
            .ins()
            .icmp_imm_s(IntCC::UnsignedLessThan, a, 113 << 23);
        let af = self.b.ins().bitcast(F32, MemFlagsData::new(), a);
        let mf = self.b.ins().f32const(f32::from_bits(denorm_magic as u32));
        let s = self.b.ins().fadd(af, mf);
        let s = self.b.ins().bitcast(I32, MemFlagsData::new(), s);
        let small = self.b.ins().iadd_imm_s(s, -denorm_magic);
        // Normal results: rebias and round to nearest even.
        let odd = self.b.ins().ushr_imm_u(a, 13);
        let odd = self.b.ins().band_imm_s(odd, 1);
        let n = self
            .b
            .ins()
            .iadd_imm_s(a, (((15 - 127) << 23) + 0xfff) as i64);
        let n = self.b.ins().iadd(n, odd);
        let normal = self.b.ins().ushr_imm_u(n, 13);
        let o = self.b.ins().select(is_small, small, normal);
        let o = self.b.ins().select(is_big, big, o);
        let sh = self.b.ins().ushr_imm_u(sign, 16);
        self.b.ins().bor(o, sh)
    }

    /// f32 to bfloat16 bits (in an i32), round to nearest even; NaN stays NaN.
    fn f32_to_bf16(&mut self, f: Value) -> Value {
        let u = self.b.ins().bitcast(I32, MemFlagsData::new(), f);
        let lsb = self.b.ins().ushr_imm_u(u, 16);
        let lsb = self.b.ins().band_imm_s(lsb, 1);
        let r = self.b.ins().iadd_imm_s(u, 0x7fff);
        let r = self.b.ins().iadd(r, lsb);
        let r = self.b.ins().ushr_imm_u(r, 16);
        let is_nan = self
            .b
            .ins()
            .fcmp(cranelift_codegen::ir::condcodes::FloatCC::Unordered, f, f);
        let q = self.b.ins().ushr_imm_u(u, 16);
        let q = self.b.ins().bor_imm_s(q, 0x40);
        self.b.ins().select(is_nan, q, r)
    }
}

/// How an element type is stored and computed on.
#[derive(Clone, Copy, Debug)]
pub struct Elt(pub DType);

impl Elt {
    pub fn storage(self) -> Type {
        match self.0 {
            DType::F32 => F32,
            DType::F64 => F64,
            DType::I8 | DType::U8 | DType::Bool => I8,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => I16,
            DType::I32 | DType::U32 => I32,
            DType::I64 | DType::U64 => I64,
        }
    }

    /// Narrow integers compute in i32, half floats in f32.
    pub fn compute(self, lanes: u32) -> Type {
        let s = match self.0 {
            DType::F32 | DType::F16 | DType::BF16 => F32,
            DType::F64 => F64,
            DType::I64 | DType::U64 => I64,
            _ => I32,
        };
        match (lanes, s) {
            (1, s) => s,
            (4, F32) => F32X4,
            (4, I32) => I32X4,
            _ => unreachable!("only f32x4 and i32x4 vectors are used"),
        }
    }

    /// Whether 4-lane loads/stores work directly on the storage.
    pub fn vectorizes(self) -> bool {
        matches!(self.0, DType::F32 | DType::I32 | DType::U32)
    }

    /// Signedness of the compute type (bool and unsigned types are unsigned).
    pub fn signed(self) -> bool {
        matches!(self.0, DType::I8 | DType::I16 | DType::I32 | DType::I64)
    }
}
