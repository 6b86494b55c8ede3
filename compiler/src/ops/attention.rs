//! ONNX `Attention` (opsets 23/24): scaled dot-product attention over 3-D
//! `[B, S, heads * D]` inputs (with `q_num_heads`/`kv_num_heads`) or 4-D
//! `[B, heads, S, D]` inputs, with an additive or boolean `attn_mask` (padded
//! with "masked" up to the total key length), a key/value cache, grouped
//! query heads, causal and sliding-window masking, `softcap`, the
//! `qk_matmul_output` modes and `nonpad_kv_seqlen`. Computed in f64 and
//! rounded once, following the onnx reference implementation.

use ndarray::{ArrayD, Ix4, IxDyn};

use super::{EvalCtx, InferCtx, OpTable};
use crate::error::Result;
use crate::ir::{DType, Tensor, ValueType};

/// The geometry every input agrees on, from inference.
struct Dims {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    q_seq: usize,
    kv_seq: usize,
    past: usize,
    head: usize,
    v_head: usize,
    rank: usize,
}

impl Dims {
    fn total(&self) -> usize {
        self.past + self.kv_seq
    }
}

fn heads_attr(c_attrs: &crate::ir::Attrs, name: &str) -> Result<usize> {
    let h = c_attrs.int(name, 0)?;
    ensure!(
        h > 0,
        Invalid,
        "3-D inputs need attribute '{name}' > 0, found {h}"
    );
    Ok(h as usize)
}

fn split(hidden: usize, heads: usize, what: &str) -> Result<usize> {
    ensure!(
        hidden.is_multiple_of(heads),
        Invalid,
        "{what} hidden size {hidden} is not a multiple of {heads} heads"
    );
    Ok(hidden / heads)
}

fn dims(c: &InferCtx) -> Result<Dims> {
    let (q, k, v) = (c.input(0)?, c.input(1)?, c.input(2)?);
    ensure!(
        q.dtype.is_float() && k.dtype == q.dtype && v.dtype == q.dtype,
        Invalid,
        "Q, K and V must share one float dtype, found {}, {}, {}",
        q.dtype,
        k.dtype,
        v.dtype
    );
    let rank = q.shape.len();
    ensure!(
        (rank == 3 || rank == 4) && k.shape.len() == rank && v.shape.len() == rank,
        Invalid,
        "Q, K and V must all be 3-D or all 4-D, found {:?}, {:?}, {:?}",
        q.shape,
        k.shape,
        v.shape
    );
    let (q_heads, kv_heads, q_seq, kv_seq, head, k_head, v_head);
    if rank == 3 {
        q_heads = heads_attr(c.attrs, "q_num_heads")?;
        kv_heads = heads_attr(c.attrs, "kv_num_heads")?;
        head = split(q.shape[2], q_heads, "Q")?;
        k_head = split(k.shape[2], kv_heads, "K")?;
        v_head = split(v.shape[2], kv_heads, "V")?;
        (q_seq, kv_seq) = (q.shape[1], k.shape[1]);
        ensure!(
            v.shape[1] == kv_seq,
            Invalid,
            "K and V sequence lengths differ"
        );
    } else {
        (q_heads, kv_heads) = (q.shape[1], k.shape[1]);
        (q_seq, kv_seq) = (q.shape[2], k.shape[2]);
        (head, k_head, v_head) = (q.shape[3], k.shape[3], v.shape[3]);
        ensure!(
            v.shape[1] == kv_heads && v.shape[2] == kv_seq,
            Invalid,
            "V {:?} does not match K {:?} in heads and sequence length",
            v.shape,
            k.shape
        );
    }
    let batch = q.shape[0];
    ensure!(
        k.shape[0] == batch && v.shape[0] == batch,
        Invalid,
        "Q, K and V batch sizes differ"
    );
    ensure!(
        k_head == head,
        Invalid,
        "Q head size {head} differs from K head size {k_head}"
    );
    ensure!(
        kv_heads > 0 && q_heads.is_multiple_of(kv_heads),
        Invalid,
        "q heads ({q_heads}) must be a multiple of kv heads ({kv_heads})"
    );
    ensure!(
        c.has(4) == c.has(5),
        Invalid,
        "past_key and past_value must be given together"
    );
    let mut past = 0;
    if c.has(4) {
        let (pk, pv) = (c.input(4)?, c.input(5)?);
        ensure!(
            pk.dtype == q.dtype && pv.dtype == q.dtype,
            Invalid,
            "past_key/past_value dtype must be {}",
            q.dtype
        );
        past = pk.shape.get(2).copied().unwrap_or(0);
        ensure!(
            pk.shape == [batch, kv_heads, past, head]
                && pv.shape == [batch, kv_heads, past, v_head],
            Invalid,
            "past_key {:?} / past_value {:?} must be [{batch}, {kv_heads}, P, {head}] / [.., {v_head}]",
            pk.shape,
            pv.shape
        );
    }
    let d = Dims {
        batch,
        q_heads,
        kv_heads,
        q_seq,
        kv_seq,
        past,
        head,
        v_head,
        rank,
    };
    if c.has(3) {
        let m = c.input(3)?;
        ensure!(
            m.dtype == DType::Bool || m.dtype.is_float(),
            Invalid,
            "attn_mask must be bool or float, found {}",
            m.dtype
        );
        let full = [batch, q_heads, q_seq, d.total()];
        let ok = m.shape.len() <= 4
            && m.shape.last().is_some_and(|&l| l <= d.total())
            && m.shape
                .iter()
                .rev()
                .skip(1)
                .zip(full.iter().rev().skip(1))
                .all(|(&a, &b)| a == 1 || a == b);
        ensure!(
            ok,
            Invalid,
            "attn_mask {:?} does not broadcast to {full:?}",
            m.shape
        );
    }
    if c.has(6) {
        let n = c.input(6)?;
        ensure!(
            !c.has(4),
            Invalid,
            "nonpad_kv_seqlen cannot be combined with past_key"
        );
        ensure!(
            n.dtype == DType::I64 && n.shape == [batch],
            Invalid,
            "nonpad_kv_seqlen must be i64[{batch}], found {n}"
        );
    }
    let mode = c.attrs.int("qk_matmul_output_mode", 0)?;
    ensure!(
        (0..=3).contains(&mode),
        Invalid,
        "qk_matmul_output_mode must be 0..3, found {mode}"
    );
    Ok(d)
}

fn attention_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let d = dims(c)?;
    let t = c.input(0)?.dtype;
    let y = if d.rank == 3 {
        vec![d.batch, d.q_seq, d.q_heads * d.v_head]
    } else {
        vec![d.batch, d.q_heads, d.q_seq, d.v_head]
    };
    Ok(vec![
        ValueType::new(t, y),
        ValueType::new(t, [d.batch, d.kv_heads, d.total(), d.head]),
        ValueType::new(t, [d.batch, d.kv_heads, d.total(), d.v_head]),
        ValueType::new(t, [d.batch, d.q_heads, d.q_seq, d.total()]),
    ])
}

/// A `[B, heads, S, D]` f64 array of a 3-D or 4-D input.
fn heads_first(t: &Tensor, heads: usize) -> Result<ndarray::Array4<f64>> {
    let v = t.to_f64_vec();
    let s = t.shape();
    let a = if s.len() == 3 {
        ArrayD::from_shape_vec(IxDyn(&[s[0], s[1], heads, s[2] / heads]), v)
            .map_err(|e| crate::Error::Internal(e.to_string()))?
            .permuted_axes(IxDyn(&[0, 2, 1, 3]))
            .as_standard_layout()
            .into_owned()
    } else {
        ArrayD::from_shape_vec(IxDyn(s), v).map_err(|e| crate::Error::Internal(e.to_string()))?
    };
    a.into_dimensionality::<Ix4>()
        .map_err(|e| crate::Error::Internal(e.to_string()))
}

fn with_past(past: Option<&Tensor>, x: ndarray::Array4<f64>) -> Result<ndarray::Array4<f64>> {
    let Some(p) = past else { return Ok(x) };
    let p = heads_first(p, p.shape()[1])?;
    ndarray::concatenate(ndarray::Axis(2), &[p.view(), x.view()])
        .map_err(|e| crate::Error::Internal(e.to_string()))
}

/// The additive mask value at (b, h, i, j), padded with -inf past its end.
fn mask_at(m: &Tensor, vals: &[f64], idx: [usize; 4]) -> f64 {
    let s = m.shape();
    let r = s.len();
    if idx[3] >= s[r - 1] {
        return f64::NEG_INFINITY;
    }
    let mut off = 0;
    for (k, &n) in s.iter().enumerate() {
        let i = idx[4 - r + k];
        off = off * n + if n == 1 { 0 } else { i };
    }
    let v = vals[off];
    if m.dtype() == DType::Bool {
        if v != 0.0 { 0.0 } else { f64::NEG_INFINITY }
    } else {
        v
    }
}

fn attention_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let (q, k, v) = (c.input(0)?, c.input(1)?, c.input(2)?);
    let dtype = q.dtype();
    let rank = q.rank();
    let (qh, kvh) = if rank == 3 {
        (
            c.attrs.int("q_num_heads", 0)? as usize,
            c.attrs.int("kv_num_heads", 0)? as usize,
        )
    } else {
        (q.shape()[1], k.shape()[1])
    };
    let q4 = heads_first(q, qh)?;
    let k4 = with_past(c.opt(4), heads_first(k, kvh)?)?;
    let v4 = with_past(c.opt(5), heads_first(v, kvh)?)?;
    let (b_n, _, sq, dh) = q4.dim();
    let total = k4.shape()[2];
    let dv = v4.shape()[3];
    let scale = match c.attrs.float_opt("scale")? {
        Some(s) => s as f64,
        None => 1.0 / (dh as f64).sqrt(),
    };
    let softcap = c.attrs.float("softcap", 0.0)? as f64;
    let causal = c.attrs.int("is_causal", 0)? != 0;
    let left = c.attrs.int("left_window_size", -1)?;
    let right = c.attrs.int("right_window_size", -1)?;
    let mode = c.attrs.int("qk_matmul_output_mode", 0)?;
    let mask = c.opt(3).map(|m| (m, m.to_f64_vec()));
    let nonpad = c.opt(6).map(|t| t.to_i64_vec()).transpose()?;
    let past = c.opt(4).map_or(0, |p| p.shape()[2]) as i64;
    let reps = qh / kvh;

    let mut y = ndarray::Array4::<f64>::zeros((b_n, qh, sq, dv));
    let mut qk = ndarray::Array4::<f64>::zeros((b_n, qh, sq, total));
    let mut s = vec![0.0; total];
    let mut bias = vec![0.0; total];
    for b in 0..b_n {
        let offset = match &nonpad {
            Some(n) => n[b] - sq as i64,
            None => past,
        };
        for h in 0..qh {
            let kh = h / reps;
            for i in 0..sq {
                for j in 0..total {
                    let dot: f64 = (0..dh).map(|d| q4[[b, h, i, d]] * k4[[b, kh, j, d]]).sum();
                    let mut x = dot * scale;
                    if softcap > 0.0 {
                        x = softcap * (x / softcap).tanh();
                    }
                    s[j] = x;
                    let mut m = mask
                        .as_ref()
                        .map_or(0.0, |(t, vals)| mask_at(t, vals, [b, h, i, j]));
                    let diff = i as i64 + offset - j as i64;
                    if causal && diff < 0 {
                        m += f64::NEG_INFINITY;
                    }
                    if (left >= 0 && diff > left) || (right >= 0 && -diff > right) {
                        m += f64::NEG_INFINITY;
                    }
                    if nonpad.as_ref().is_some_and(|n| j as i64 >= n[b]) {
                        m += f64::NEG_INFINITY;
                    }
                    bias[j] = m;
                }
                let masked_row = bias.iter().all(|&m| m == f64::NEG_INFINITY);
                let logits: Vec<f64> = s.iter().zip(&bias).map(|(x, m)| x + m).collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut p: Vec<f64> = if masked_row || max == f64::NEG_INFINITY {
                    vec![0.0; total]
                } else {
                    logits.iter().map(|x| (x - max).exp()).collect()
                };
                let sum: f64 = p.iter().sum();
                if sum > 0.0 {
                    p.iter_mut().for_each(|x| *x /= sum);
                }
                for j in 0..total {
                    qk[[b, h, i, j]] = match mode {
                        0 => s[j],
                        1 if softcap > 0.0 => s[j],
                        1 | 2 => logits[j],
                        _ => p[j],
                    };
                }
                for e in 0..dv {
                    y[[b, h, i, e]] = (0..total).map(|j| p[j] * v4[[b, kh, j, e]]).sum();
                }
            }
        }
    }
    let y = if rank == 3 {
        y.permuted_axes((0, 2, 1, 3))
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((b_n, sq, qh * dv))
            .map_err(|e| crate::Error::Internal(e.to_string()))?
            .into_dyn()
    } else {
        y.into_dyn()
    };
    let cast = |a: ArrayD<f64>| Tensor::F64(a).cast(dtype);
    Ok(vec![
        cast(y),
        cast(k4.into_dyn()),
        cast(v4.into_dyn()),
        cast(qk.into_dyn()),
    ])
}

pub fn register(t: &mut OpTable) {
    t.add("Attention", attention_infer, attention_eval);
}
