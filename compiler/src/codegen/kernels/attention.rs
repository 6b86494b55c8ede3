//! ONNX `Attention` (what the fuse pass turns BERT-style attention into).
//! Each query row's scores against every key are scaled (and soft-capped),
//! get the mask added, and keys hidden by the causal, sliding-window and
//! padding masks become -inf; a numerically stable softmax follows, and
//! the output row is the probability-weighted sum of the value rows. A
//! key/value cache is concatenated into the `present` outputs first, and
//! the `qk_matmul_output` stage is written out when asked for.
//!
//! On AVX-512 targets the two products run on the GEMM microkernel
//! (`attention_zgemm`); elsewhere one work item per query row computes
//! them with f32x4 dot products. Both share the mask and softmax stage
//! here, except where the scale and mask fold into the QKᵀ epilogue (see
//! [`Fold`]) and the AVX-512 softmax rows (`zsoftmax`) finish the stage.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I8, I32, I32X4, I64};
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;

use super::{NodeCx, Table};
use super::{attention_zgemm, math};
use crate::codegen::builder::{Kb, mem};
use crate::codegen::lower::{Buf, Lower, Operand};
use crate::codegen::nest::{self, Access};
use crate::error::Result;
use crate::ir::DType;

pub fn register(t: &mut Table) {
    t.add(&["Attention"], attention);
}

/// Element strides (batch, head, sequence) of a Q/K/V operand; the head
/// dimension is contiguous.
fn qkv_strides(shape: &[usize], heads: usize) -> (i64, i64, i64, usize, usize) {
    if shape.len() == 3 {
        let (s, hd) = (shape[1], shape[2]);
        let d = hd / heads;
        ((s * hd) as i64, d as i64, hd as i64, s, d)
    } else {
        let (h, s, d) = (shape[1], shape[2], shape[3]);
        ((h * s * d) as i64, (s * d) as i64, d as i64, s, d)
    }
}

/// Where a K or V operand's rows live: its buffer and element strides
/// (batch, head, sequence) over `total` rows.
pub(super) struct Rows {
    pub buf: Buf,
    pub sb: i64,
    pub sh: i64,
    pub sj: i64,
    pub total: usize,
}

/// The key (or value) rows: the input itself, or, with a cache or when the
/// `present` output is wanted, the past rows followed by the new ones,
/// written into `present` (`[B, heads, total, D]`, or scratch).
fn kv_rows(
    lw: &mut Lower,
    x: &Operand,
    past: Option<&Operand>,
    present: Option<&Operand>,
    heads: usize,
) -> Result<Rows> {
    let (sb, sh, sj, s, d) = qkv_strides(&x.ty.shape, heads);
    if past.is_none() && present.is_none() {
        return Ok(Rows {
            buf: x.buf,
            sb,
            sh,
            sj,
            total: s,
        });
    }
    let b = x.ty.shape[0];
    let p = past.map_or(0, |p| p.ty.shape[2]);
    let total = p + s;
    let buf = match present {
        Some(o) => o.buf,
        None => lw.scratch(b * heads * total * d * 4),
    };
    let dst = |offset: usize| Access {
        buf,
        dt: DType::F32,
        offset: offset as i64,
        strides: vec![(heads * total * d) as i64, (total * d) as i64, d as i64, 1],
    };
    if let Some(pk) = past {
        let shape = [b, heads, p, d];
        nest::emit(
            lw,
            &shape,
            &[Access::dense(pk.buf, DType::F32, &shape)],
            &[dst(0)],
            true,
            |_, v, _| vec![v[0]],
        )?;
    }
    let src = Access {
        buf: x.buf,
        dt: DType::F32,
        offset: 0,
        strides: vec![sb, sh, sj, 1],
    };
    nest::emit(
        lw,
        &[b, heads, s, d],
        &[src],
        &[dst(p * d)],
        true,
        |_, v, _| vec![v[0]],
    )?;
    Ok(Rows {
        buf,
        sb: (heads * total * d) as i64,
        sh: (total * d) as i64,
        sj: d as i64,
        total,
    })
}

/// Element strides of the attention mask broadcast (right-aligned) to
/// `[B, H, Sq, total]`, and its own key length (keys past it are masked).
fn mask_strides(m: &Operand) -> ([i64; 4], usize) {
    let s = &m.ty.shape;
    let mut st = [0i64; 4];
    let mut acc = 1i64;
    for (i, &d) in s.iter().enumerate().rev() {
        let j = 4 - (s.len() - i);
        if d != 1 {
            st[j] = acc;
        }
        acc *= d as i64;
    }
    (st, s.last().copied().unwrap_or(1))
}

/// The compile-time shape and options of one Attention node.
pub(super) struct Spec {
    pub batch: usize,
    pub qh: usize,
    pub kvh: usize,
    pub sq: usize,
    pub dh: usize,
    pub dv: usize,
    pub total: usize,
    /// Query / output strides (batch, head, row), elements.
    pub qs: (i64, i64, i64),
    pub os: (i64, i64, i64),
    past: i64,
    scale: f64,
    softcap: f64,
    causal: bool,
    left: i64,
    right: i64,
    mode: i64,
    mask: Option<(bool, ([i64; 4], usize))>,
}

/// The scale and additive float mask (its element strides over
/// `[B, H, Sq, total]`), when they are all the per-key stage has to
/// apply besides masks that hide a suffix of the keys (causal, padding):
/// then they fold into the QKᵀ GEMM's epilogue and a softmax over the
/// live prefix of each row finishes the stage.
pub(super) struct Fold {
    pub scale: f32,
    pub mask: Option<[i64; 4]>,
}

impl Spec {
    pub fn fold(&self, slots: &Slots) -> Option<Fold> {
        if self.softcap > 0.0 || self.left >= 0 || self.right >= 0 || slots.qk.is_some() {
            return None;
        }
        let mask = match self.mask {
            None => None,
            Some((false, (st, mlen))) if mlen == self.total => Some(st),
            Some(_) => return None,
        };
        Some(Fold {
            scale: self.scale as f32,
            mask,
        })
    }

    /// How many leading keys query row `i` of batch `b` may see (before
    /// clamping to `[0, total]`): all, or those the causal and padding
    /// masks leave.
    pub fn live_keys(&self, kb: &mut Kb, o: &Opt, b: Value, i: Value) -> Value {
        let mut live = kb.i(self.total as i64);
        let valid = o.np.map(|np| {
            let a = kb.gep(np, b, 8);
            kb.b.ins().load(I64, mem(), a, 0)
        });
        if self.causal {
            let offset = match valid {
                Some(n) => kb.b.ins().iadd_imm_s(n, 1 - self.sq as i64),
                None => kb.i(self.past + 1),
            };
            live = kb.b.ins().iadd(i, offset);
        }
        match valid {
            Some(n) => kb.b.ins().smin(live, n),
            None => live,
        }
    }
}

/// Kernel argument slots of the optional operands.
#[derive(Clone, Copy)]
pub(super) struct Slots {
    mask: Option<usize>,
    nonpad: Option<usize>,
    qk: Option<usize>,
}

/// Their pointers inside one kernel.
#[derive(Clone, Copy)]
pub(super) struct Opt {
    pub mp: Option<Value>,
    pub np: Option<Value>,
    qkp: Option<Value>,
}

impl Slots {
    pub fn load(self, kb: &mut Kb) -> Opt {
        Opt {
            mp: self.mask.map(|j| kb.arg(j)),
            np: self.nonpad.map(|j| kb.arg(j)),
            qkp: self.qk.map(|j| kb.arg(j)),
        }
    }
}

/// One query row's state in the mask and softmax stage.
pub(super) struct Row {
    b: Value,
    h: Value,
    i: Value,
    /// Its scores (`total` floats) and `qk_matmul_output` row.
    pub srow: Value,
    qkrow: Option<Value>,
    /// Keys at or past `valid` are padding.
    valid: Option<Value>,
    /// The query's key position, for the causal and window masks.
    pos: Value,
    /// The maximum logit, of the keys taken one and four at a time.
    maxv: Variable,
    maxv4: Variable,
    live: Variable,
    /// Lane offsets 0..4 of the keys taken four at a time.
    iota: Value,
}

fn attention(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let (q, k, v) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let a = cx.attrs();
    if q.ty.dtype != DType::F32 {
        bail!(
            Unsupported,
            "Attention on {} (native Attention is f32, f16 and bf16)",
            q.ty.dtype
        );
    }
    let rank = q.ty.shape.len();
    let (qh, kvh) = if rank == 3 {
        (
            a.int("q_num_heads", 0)? as usize,
            a.int("kv_num_heads", 0)? as usize,
        )
    } else {
        (q.ty.shape[1], k.ty.shape[1])
    };
    let (qsb, qsh, qsi, sq, dh) = qkv_strides(&q.ty.shape, qh);
    let opt_in = |i: usize| cx.ins.get(i).and_then(|o| o.as_ref());
    let (past_k, past_v) = (opt_in(4), opt_in(5));
    let kr = kv_rows(lw, k, past_k, cx.outs.get(1), kvh)?;
    let vr = kv_rows(lw, v, past_v, cx.outs.get(2), kvh)?;
    let out = cx.out(0);
    let (osb, osh, osi, _, _) = qkv_strides(&out.ty.shape, qh);
    let spec = Spec {
        batch: q.ty.shape[0],
        qh,
        kvh,
        sq,
        dh,
        dv: v.ty.shape[rank - 1] / if rank == 3 { kvh } else { 1 },
        total: kr.total,
        qs: (qsb, qsh, qsi),
        os: (osb, osh, osi),
        past: past_k.map_or(0, |p| p.ty.shape[2]) as i64,
        scale: match a.float_opt("scale")? {
            Some(s) => s as f64,
            None => 1.0 / (dh as f64).sqrt(),
        },
        softcap: a.float("softcap", 0.0)? as f64,
        causal: a.int("is_causal", 0)? != 0,
        left: a.int("left_window_size", -1)?,
        right: a.int("right_window_size", -1)?,
        mode: a.int("qk_matmul_output_mode", 0)?,
        mask: opt_in(3).map(|m| (m.ty.dtype == DType::Bool, mask_strides(m))),
    };
    let scores = lw.scratch(spec.batch * qh * sq * spec.total * 4);
    let mut bufs = vec![q.buf, kr.buf, vr.buf, out.buf, scores];
    let mut slot = |b: Option<Buf>| {
        b.map(|b| {
            bufs.push(b);
            bufs.len() - 1
        })
    };
    let slots = Slots {
        mask: slot(opt_in(3).map(|m| m.buf)),
        nonpad: slot(opt_in(6).map(|n| n.buf)),
        qk: slot(cx.outs.get(3).map(|o| o.buf)),
    };
    let fold = spec.fold(&slots);
    let mask = slots.mask.map(|j| bufs[j]);
    if let Some(g) =
        attention_zgemm::products(lw, &spec, fold.as_ref(), mask, q.buf, scores, out.buf)
    {
        return attention_zgemm::emit(lw, &spec, fold.as_ref(), &g, (&kr, &vr), bufs, slots);
    }
    rowwise(lw, &spec, &kr, &vr, bufs, slots)
}

/// Starts query row `i` of batch `b`, head `h`; `item` is its index in
/// `[B, heads, Sq]`, which places its scores row.
pub(super) fn begin_row(
    kb: &mut Kb,
    s: &Spec,
    o: &Opt,
    scores: Value,
    (b, h, i): (Value, Value, Value),
    item: Value,
) -> Row {
    let srow = kb.gep(scores, item, (s.total * 4) as i64);
    let qkrow = o.qkp.map(|p| kb.gep(p, item, (s.total * 4) as i64));
    let (valid, offset) = match o.np {
        Some(np) => {
            let a = kb.gep(np, b, 8);
            let n = kb.b.ins().load(I64, mem(), a, 0);
            let off = kb.b.ins().iadd_imm_s(n, -(s.sq as i64));
            (Some(n), off)
        }
        None => (None, kb.i(s.past)),
    };
    let pos = kb.b.ins().iadd(i, offset);
    let ninf = kb.b.ins().f32const(f32::NEG_INFINITY);
    let maxv = kb.var(F32, ninf);
    let ninf4 = kb.splat(F32X4, ninf);
    let maxv4 = kb.var(F32X4, ninf4);
    let no = kb.b.ins().iconst(I8, 0);
    let live = kb.var(I8, no);
    let mut iota = kb.bits(I32X4, 0);
    for l in 1..4 {
        let x = kb.b.ins().iconst(I32, l);
        iota = kb.b.ins().insertlane(iota, x, l as u8);
    }
    Row {
        b,
        h,
        i,
        srow,
        qkrow,
        valid,
        pos,
        maxv,
        maxv4,
        live,
        iota,
    }
}

/// Whether [`score`] takes four keys at a time: no bool mask, and a float
/// mask covering every key.
pub(super) fn vectorizes(s: &Spec) -> bool {
    s.mask
        .is_none_or(|(is_bool, (st, mlen))| !is_bool && mlen == s.total && st[3] <= 1)
}

/// Turns the dot products `d` of keys `j..` (one, or four when `d` is
/// F32X4: see [`vectorizes`]) with the query into their logits: scale,
/// soft cap, the additive mask, -inf where any mask hides the key. Stores
/// them to the scores row (and the `qk_matmul_output` stage asked for) and
/// tracks the row's maximum.
pub(super) fn score(kb: &mut Kb, s: &Spec, o: &Opt, r: &Row, j: Value, d: Value) {
    let ty = kb.b.func.dfg.value_type(d);
    let vec = ty.is_vector();
    let ninf = kb.constant(ty, f64::NEG_INFINITY);
    let sc = kb.constant(ty, s.scale);
    let mut x = kb.b.ins().fmul(d, sc);
    if s.softcap > 0.0 {
        let inv = kb.constant(ty, 1.0 / s.softcap);
        let t = kb.b.ins().fmul(x, inv);
        let t = math::tanh(kb, ty, t);
        let c = kb.constant(ty, s.softcap);
        x = kb.b.ins().fmul(t, c);
    }
    // Key indices as the comparisons see them: j, or its four lanes.
    let lanes = |kb: &mut Kb, v: Value| {
        if vec {
            let v = kb.b.ins().ireduce(I32, v);
            kb.b.ins().splat(I32X4, v)
        } else {
            v
        }
    };
    let jv = lanes(kb, j);
    let jv = if vec { kb.b.ins().iadd(jv, r.iota) } else { jv };
    let cmp_imm = |kb: &mut Kb, cc: IntCC, a: Value, imm: i64| {
        if vec {
            let c = kb.bits(I32X4, imm);
            kb.b.ins().icmp(cc, a, c)
        } else {
            kb.b.ins().icmp_imm_s(cc, a, imm)
        }
    };
    // The additive bias: the float mask's value, or -inf where any mask
    // hides the key.
    let mut bias = kb.constant(ty, 0.0);
    let mut hidden = if vec {
        kb.bits(I32X4, 0)
    } else {
        kb.b.ins().iconst(I8, 0)
    };
    let mut hide = |kb: &mut Kb, cond: Value| {
        hidden = kb.b.ins().bor(hidden, cond);
    };
    if let (Some((is_bool, (st, mlen))), Some(mp)) = (s.mask, o.mp) {
        if mlen < s.total {
            let past_end = cmp_imm(kb, IntCC::SignedGreaterThanOrEqual, jv, mlen as i64);
            hide(kb, past_end);
        }
        // Clamped so padded keys never read past the mask.
        let jm = kb.i(mlen as i64 - 1);
        let jc = kb.b.ins().smin(j, jm);
        let mut off = kb.i(0);
        for (idx, st) in [r.b, r.h, r.i, jc].into_iter().zip(st) {
            if st != 0 {
                let t = kb.muli(idx, st);
                off = kb.b.ins().iadd(off, t);
            }
        }
        if is_bool {
            let ma = kb.gep(mp, off, 1);
            let keep = kb.b.ins().load(I8, mem(), ma, 0);
            let off_ = kb.b.ins().icmp_imm_s(IntCC::Equal, keep, 0);
            hide(kb, off_);
        } else {
            let ma = kb.gep(mp, off, 4);
            bias = if st[3] == 0 {
                let m = kb.b.ins().load(F32, mem(), ma, 0);
                kb.splat(ty, m)
            } else {
                kb.b.ins().load(ty, mem(), ma, 0)
            };
        }
    }
    let pos = lanes(kb, r.pos);
    let diff = kb.b.ins().isub(pos, jv);
    if s.causal {
        let c = cmp_imm(kb, IntCC::SignedLessThan, diff, 0);
        hide(kb, c);
    }
    if s.left >= 0 {
        let c = cmp_imm(kb, IntCC::SignedGreaterThan, diff, s.left);
        hide(kb, c);
    }
    if s.right >= 0 {
        let c = cmp_imm(kb, IntCC::SignedLessThan, diff, -s.right);
        hide(kb, c);
    }
    if let Some(n) = r.valid {
        let n = lanes(kb, n);
        let c = kb.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, jv, n);
        hide(kb, c);
    }
    let bias = kb.sel(hidden, ninf, bias);
    let unmasked = kb.b.ins().fcmp(FloatCC::NotEqual, bias, ninf);
    let any = if vec {
        kb.b.ins().vany_true(unmasked)
    } else {
        unmasked
    };
    let l = kb.b.use_var(r.live);
    let l = kb.b.ins().bor(l, any);
    kb.b.def_var(r.live, l);
    let sum = kb.b.ins().fadd(x, bias);
    let logit = kb.sel(unmasked, sum, ninf);
    if let Some(qr) = r.qkrow {
        let qa = kb.gep(qr, j, 4);
        match s.mode {
            0 => kb.b.ins().store(mem(), x, qa, 0),
            1 if s.softcap > 0.0 => kb.b.ins().store(mem(), x, qa, 0),
            1 | 2 => kb.b.ins().store(mem(), logit, qa, 0),
            _ => kb.b.ins().nop(),
        };
    }
    let sa = kb.gep(r.srow, j, 4);
    kb.b.ins().store(mem(), logit, sa, 0);
    let mv = if vec { r.maxv4 } else { r.maxv };
    let m = kb.b.use_var(mv);
    let m = kb.b.ins().fmax(m, logit);
    kb.b.def_var(mv, m);
}

/// Replaces the row's logits by exp(x - max) and returns 1 / their sum (0
/// for a fully masked row, which so yields zeros); writes the
/// probabilities to `qk_matmul_output` in mode 3.
pub(super) fn softmax(kb: &mut Kb, s: &Spec, r: &Row) -> Value {
    let ninf = kb.b.ins().f32const(f32::NEG_INFINITY);
    let tj = kb.i(s.total as i64);
    let mut m = kb.b.use_var(r.maxv);
    let m4 = kb.b.use_var(r.maxv4);
    for l in 0..4 {
        let x = kb.b.ins().extractlane(m4, l);
        m = kb.b.ins().fmax(m, x);
    }
    let l = kb.b.use_var(r.live);
    let inf_max = kb.b.ins().fcmp(FloatCC::Equal, m, ninf);
    let dead = kb.b.ins().icmp_imm_s(IntCC::Equal, l, 0);
    let dead = kb.b.ins().bor(dead, inf_max);
    let zero = kb.b.ins().f32const(0.0);
    let m = kb.b.ins().select(inf_max, zero, m);
    let sum = kb.var(F32, zero);
    let zv = kb.constant(F32X4, 0.0);
    let sumv = kb.var(F32X4, zv);
    let z = kb.i(0);
    kb.for_vec(z, tj, 4, |kb, j, lanes| {
        let (ty, acc) = if lanes == 1 {
            (F32, sum)
        } else {
            (F32X4, sumv)
        };
        let sa = kb.gep(r.srow, j, 4);
        let x = kb.b.ins().load(ty, mem(), sa, 0);
        let mv = kb.splat(ty, m);
        let x = kb.b.ins().fsub(x, mv);
        let p = math::exp_flush(kb, ty, x);
        kb.b.ins().store(mem(), p, sa, 0);
        let s = kb.b.use_var(acc);
        let s = kb.b.ins().fadd(s, p);
        kb.b.def_var(acc, s);
    });
    let sv = kb.b.use_var(sumv);
    let mut t = kb.b.use_var(sum);
    for l in 0..4 {
        let x = kb.b.ins().extractlane(sv, l);
        t = kb.b.ins().fadd(t, x);
    }
    let pos_sum = kb.b.ins().fcmp(FloatCC::GreaterThan, t, zero);
    let one = kb.b.ins().f32const(1.0);
    let inv = kb.b.ins().fdiv(one, t);
    let inv = kb.b.ins().select(pos_sum, inv, zero);
    let inv = kb.b.ins().select(dead, zero, inv);
    if let (Some(qr), 3) = (r.qkrow, s.mode) {
        let z = kb.i(0);
        kb.for_range(z, tj, 1, |kb, j| {
            let sa = kb.gep(r.srow, j, 4);
            let p = kb.b.ins().load(F32, mem(), sa, 0);
            let p = kb.b.ins().fmul(p, inv);
            let qa = kb.gep(qr, j, 4);
            kb.b.ins().store(mem(), p, qa, 0);
        });
    }
    inv
}

/// The portable form: one work item per (batch, head, query row), f32x4
/// dot products against every key, then the weighted values accumulated
/// straight into the output row.
fn rowwise(
    lw: &mut Lower,
    s: &Spec,
    kr: &Rows,
    vr: &Rows,
    bufs: Vec<Buf>,
    slots: Slots,
) -> Result<()> {
    let (sq, qh, dh, dv, total) = (s.sq, s.qh, s.dh, s.dv, s.total);
    let reps = s.qh / s.kvh;
    let (qsb, qsh, qsi) = s.qs;
    let (osb, osh, osi) = s.os;
    lw.kernel(bufs, s.batch * qh * sq, |kb| {
        let (qp, kp, vp, op, sp) = (kb.arg(0), kb.arg(1), kb.arg(2), kb.arg(3), kb.arg(4));
        let o = slots.load(kb);
        let (b0, e0) = (kb.begin, kb.end);
        kb.for_range(b0, e0, 1, |kb, item| {
            let i = kb.b.ins().urem_imm_u(item, sq as i64);
            let bh = kb.b.ins().udiv_imm_u(item, sq as i64);
            let h = kb.b.ins().urem_imm_u(bh, qh as i64);
            let b = kb.b.ins().udiv_imm_u(bh, qh as i64);
            let kh = kb.b.ins().udiv_imm_u(h, reps as i64);
            let row = |kb: &mut Kb, base: Value, sb: i64, sh: i64, hh: Value| {
                let p = kb.gep(base, b, sb * 4);
                kb.gep(p, hh, sh * 4)
            };
            let qrow = row(kb, qp, qsb, qsh, h);
            let qrow = kb.gep(qrow, i, qsi * 4);
            let kbase = row(kb, kp, kr.sb, kr.sh, kh);
            let vbase = row(kb, vp, vr.sb, vr.sh, kh);
            let orow = row(kb, op, osb, osh, h);
            let orow = kb.gep(orow, i, osi * 4);
            let r = begin_row(kb, s, &o, sp, (b, h, i), item);
            let (z, tj) = (kb.i(0), kb.i(total as i64));
            // Four keys at a time: independent dot products.
            let t4 = kb.i((total - total % 4) as i64);
            kb.for_range(z, t4, 4, |kb, j| {
                let krow = kb.gep(kbase, j, kr.sj * 4);
                let ds = dot4(kb, qrow, krow, kr.sj * 4, dh);
                for (q, d) in ds.into_iter().enumerate() {
                    let jq = kb.addi(j, q as i64);
                    score(kb, s, &o, &r, jq, d);
                }
            });
            kb.for_range(t4, tj, 1, |kb, j| {
                let krow = kb.gep(kbase, j, kr.sj * 4);
                let d = dot(kb, qrow, krow, dh);
                score(kb, s, &o, &r, j, d);
            });
            let inv = softmax(kb, s, &r);
            let srow = r.srow;
            // y = sum_j p_j v_j, scaled by 1/sum at the end: 16 columns
            // at a time (four independent chains), then by 4 and 1.
            let z = kb.i(0);
            let e16 = kb.i((dv - dv % 16) as i64);
            kb.for_range(z, e16, 16, |kb, e| {
                let init = kb.constant(F32X4, 0.0);
                let accs: Vec<_> = (0..4).map(|_| kb.var(F32X4, init)).collect();
                let z = kb.i(0);
                kb.for_range(z, tj, 1, |kb, j| {
                    let sa = kb.gep(srow, j, 4);
                    let p = kb.b.ins().load(F32, mem(), sa, 0);
                    let p = kb.splat(F32X4, p);
                    let vrow = kb.gep(vbase, j, vr.sj * 4);
                    let va = kb.gep(vrow, e, 4);
                    for (t, &acc) in accs.iter().enumerate() {
                        let vv = kb.b.ins().load(F32X4, mem(), va, (16 * t) as i32);
                        let a = kb.b.use_var(acc);
                        let a = kb.fmadd(p, vv, a);
                        kb.b.def_var(acc, a);
                    }
                });
                let iv = kb.splat(F32X4, inv);
                let oa = kb.gep(orow, e, 4);
                for (t, &acc) in accs.iter().enumerate() {
                    let a = kb.b.use_var(acc);
                    let y = kb.b.ins().fmul(a, iv);
                    kb.b.ins().store(mem(), y, oa, (16 * t) as i32);
                }
            });
            let de = kb.i(dv as i64);
            kb.for_vec(e16, de, 4, |kb, e, l| {
                let ty = if l > 1 { F32X4 } else { F32 };
                let init = kb.constant(ty, 0.0);
                let acc = kb.var(ty, init);
                let z = kb.i(0);
                kb.for_range(z, tj, 1, |kb, j| {
                    let sa = kb.gep(srow, j, 4);
                    let p = kb.b.ins().load(F32, mem(), sa, 0);
                    let p = kb.splat(ty, p);
                    let vrow = kb.gep(vbase, j, vr.sj * 4);
                    let va = kb.gep(vrow, e, 4);
                    let vv = kb.b.ins().load(ty, mem(), va, 0);
                    let a = kb.b.use_var(acc);
                    let a = kb.fmadd(p, vv, a);
                    kb.b.def_var(acc, a);
                });
                let a = kb.b.use_var(acc);
                let iv = kb.splat(ty, inv);
                let y = kb.b.ins().fmul(a, iv);
                let oa = kb.gep(orow, e, 4);
                kb.b.ins().store(mem(), y, oa, 0);
            });
        });
    })
}

/// Dot product of two contiguous f32 rows of length `n`.
fn dot(kb: &mut Kb, a: Value, b: Value, n: usize) -> Value {
    let zero = kb.constant(F32X4, 0.0);
    let acc = kb.var(F32X4, zero);
    let z = kb.i(0);
    let full = kb.i((n - n % 4) as i64);
    kb.for_range(z, full, 4, |kb, d| {
        let x = kb.gep(a, d, 4);
        let y = kb.gep(b, d, 4);
        let x = kb.b.ins().load(F32X4, mem(), x, 0);
        let y = kb.b.ins().load(F32X4, mem(), y, 0);
        let s = kb.b.use_var(acc);
        let s = kb.fmadd(x, y, s);
        kb.b.def_var(acc, s);
    });
    let v = kb.b.use_var(acc);
    let mut s = kb.b.ins().extractlane(v, 0);
    for l in 1..4 {
        let x = kb.b.ins().extractlane(v, l);
        s = kb.b.ins().fadd(s, x);
    }
    for d in n - n % 4..n {
        let x = kb.b.ins().load(F32, mem(), a, (d * 4) as i32);
        let y = kb.b.ins().load(F32, mem(), b, (d * 4) as i32);
        s = kb.fmadd(x, y, s);
    }
    s
}

/// Dot products of the row at `a` with four rows from `b` (`bstride`
/// bytes apart), each of length `n`: four independent accumulators.
fn dot4(kb: &mut Kb, a: Value, b: Value, bstride: i64, n: usize) -> [Value; 4] {
    let zero = kb.constant(F32X4, 0.0);
    let accs = [0; 4].map(|_| kb.var(F32X4, zero));
    let z = kb.i(0);
    let full = kb.i((n - n % 4) as i64);
    kb.for_range(z, full, 4, |kb, d| {
        let x = kb.gep(a, d, 4);
        let x = kb.b.ins().load(F32X4, mem(), x, 0);
        let y0 = kb.gep(b, d, 4);
        for (r, &acc) in accs.iter().enumerate() {
            let y = kb.addi(y0, r as i64 * bstride);
            let y = kb.b.ins().load(F32X4, mem(), y, 0);
            let s = kb.b.use_var(acc);
            let s = kb.fmadd(x, y, s);
            kb.b.def_var(acc, s);
        }
    });
    let mut out = [zero; 4];
    for (r, &acc) in accs.iter().enumerate() {
        let v = kb.b.use_var(acc);
        let mut s = kb.b.ins().extractlane(v, 0);
        for l in 1..4 {
            let x = kb.b.ins().extractlane(v, l);
            s = kb.b.ins().fadd(s, x);
        }
        for d in n - n % 4..n {
            let x = kb.b.ins().load(F32, mem(), a, (d * 4) as i32);
            let y = kb.addi(b, r as i64 * bstride);
            let y = kb.b.ins().load(F32, mem(), y, (d * 4) as i32);
            s = kb.fmadd(x, y, s);
        }
        out[r] = s;
    }
    out
}
