//! Quantization (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
//! QLinearMatMul, QLinearConv) and the window generators (Hann, Hamming,
//! Blackman). MatMulInteger, ConvInteger and Det live in linalg/conv.
//!
//! Integer matmul and convolution run in f64 through ndarray's `dot`: the
//! products and sums of 8-bit values are exact there, and it is fast.
//! Scale arithmetic is rounded to the scales' dtype step by step, as the
//! numpy reference computes it, so requantized values round identically.

use half::{bf16, f16};
use ndarray::{Array2, ArrayD, ArrayViewD, Axis, IxDyn};

use super::{EvalCtx, InferCtx, OpTable, broadcast, one};
use crate::error::{Error, Result};
use crate::ir::{Attrs, DType, Tensor, ValueType};

// ----------------------------------------------------------------- helpers

/// Rounds `v` to the precision of float dtype `d` (identity for f64).
fn round_to(d: DType, v: f64) -> f64 {
    match d {
        DType::F32 => v as f32 as f64,
        DType::F16 => f16::from_f64(v).to_f64(),
        DType::BF16 => bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// numpy's result dtype for arithmetic between two float dtypes.
fn promote(a: DType, b: DType) -> DType {
    if a == b {
        a
    } else if a == DType::F64 || b == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// The inclusive value range of an integer dtype.
fn int_range(d: DType) -> (f64, f64) {
    let bits = d.size_bytes() as i32 * 8;
    if d.is_signed() {
        (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
    } else {
        (0.0, 2f64.powi(bits) - 1.0)
    }
}

/// Rounds half to even and saturates to `d`'s range.
fn saturate(d: DType, v: f64) -> f64 {
    let (lo, hi) = int_range(d);
    v.round_ties_even().clamp(lo, hi)
}

/// `f(a, b)` over the broadcast of the two arrays' shapes.
fn zip(a: &ArrayD<f64>, b: &ArrayD<f64>, f: impl Fn(f64, f64) -> f64) -> Result<ArrayD<f64>> {
    broadcast::zip2(a, b, &broadcast::shape(&[a.shape(), b.shape()])?, f)
}

fn f64_array(t: &Tensor) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(t.shape()), t.to_f64_vec()).expect("shape matches data")
}

fn from_f64_array(d: DType, a: ArrayD<f64>) -> Result<Tensor> {
    let v: Vec<f64> = a.iter().copied().collect();
    Tensor::from_f64s(d, a.shape(), &v)
}

fn quant_type(d: DType, what: &str) -> Result<()> {
    ensure!(
        matches!(d, DType::U8 | DType::I8 | DType::U16 | DType::I16),
        Invalid,
        "{what} must be int8, uint8, int16 or uint16, found {d}"
    );
    Ok(())
}

fn eight_bit(ty: &ValueType, what: &str) -> Result<()> {
    ensure!(
        matches!(ty.dtype, DType::U8 | DType::I8),
        Invalid,
        "{what} must be int8 or uint8, found {}",
        ty.dtype
    );
    Ok(())
}

fn float_input(ty: &ValueType, what: &str) -> Result<()> {
    ensure!(
        ty.dtype.is_float(),
        Invalid,
        "{what} must be a float tensor, found {}",
        ty.dtype
    );
    Ok(())
}

/// The dtype named by an optional dtype-code attribute (0 or absent: none).
fn dtype_attr(attrs: &Attrs, name: &str) -> Result<Option<DType>> {
    match attrs.int(name, 0)? {
        0 => Ok(None),
        code => {
            let code = i32::try_from(code)
                .map_err(|_| Error::Invalid(format!("attribute '{name}': bad dtype {code}")))?;
            DType::from_onnx(code).map(Some).ok_or_else(|| {
                Error::Unsupported(format!(
                    "attribute '{name}': dtype {}",
                    DType::onnx_name(code)
                ))
            })
        }
    }
}

// ------------------------------------------------- Quantize/DequantizeLinear

/// A scale or zero point laid out to broadcast against an input of `shape`:
/// one value (per tensor), one per index along `axis` (per axis), or with
/// `block` > 0 one per block of `block` indices along `axis`.
fn quant_param(
    p: &Tensor,
    shape: &[usize],
    axis: i64,
    block: i64,
    what: &str,
) -> Result<ArrayD<f64>> {
    let v = f64_array(p);
    if p.len() == 1 {
        return Ok(ArrayD::from_elem(
            IxDyn(&[]),
            v.iter().copied().next().unwrap_or(0.0),
        ));
    }
    ensure!(
        !shape.is_empty(),
        Invalid,
        "{what} must be a scalar for a scalar input"
    );
    let ax = super::axis(axis, shape.len())?;
    if block <= 0 {
        ensure!(
            p.rank() == 1 && p.len() == shape[ax],
            Invalid,
            "{what} of shape {:?} is neither a scalar nor a vector of {} (axis {ax})",
            p.shape(),
            shape[ax]
        );
        let mut s = vec![1; shape.len()];
        s[ax] = shape[ax];
        return v
            .into_shape_with_order(IxDyn(&s))
            .map_err(|e| Error::Internal(e.to_string()));
    }
    let block = block as usize;
    let mut want = shape.to_vec();
    want[ax] = shape[ax].div_ceil(block);
    ensure!(
        p.shape() == want.as_slice(),
        Invalid,
        "{what} of shape {:?} does not match input {shape:?} blocked by {block} on axis {ax}",
        p.shape()
    );
    let idx: Vec<usize> = (0..shape[ax]).map(|i| i / block).collect();
    Ok(v.select(Axis(ax), &idx))
}

fn quant_axis(c: &Attrs) -> Result<(i64, i64)> {
    Ok((c.int("axis", 1)?, c.int("block_size", 0)?))
}

fn quantize_out_dtype(c: &InferCtx) -> Result<DType> {
    let attr = if c.opset >= 21 {
        dtype_attr(c.attrs, "output_dtype")?
    } else {
        None
    };
    let d = match (c.has(2).then(|| c.input(2)).transpose()?, attr) {
        (Some(zp), Some(a)) if zp.dtype != a => {
            bail!(
                Invalid,
                "output_dtype {a} differs from the zero point's dtype {}",
                zp.dtype
            )
        }
        (Some(zp), _) => zp.dtype,
        (None, Some(a)) => a,
        (None, None) => DType::U8,
    };
    quant_type(d, "the quantized type")?;
    Ok(d)
}

fn quantize_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    ensure!(
        x.dtype.is_float() || x.dtype == DType::I32,
        Invalid,
        "input must be a float or int32 tensor, found {}",
        x.dtype
    );
    let s = c.input(1)?;
    ensure!(
        s.dtype.is_float() || s.dtype == DType::I32,
        Invalid,
        "y_scale must be a float or int32 tensor, found {}",
        s.dtype
    );
    one(ValueType::new(quantize_out_dtype(c)?, x.shape.clone()))
}

fn quantize_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let (x, s) = (c.input(0)?, c.input(1)?);
    let (axis, block) = quant_axis(c.attrs)?;
    let out = c.outputs[0].dtype;
    let scale = quant_param(s, x.shape(), axis, block, "y_scale")?;
    let zp = match c.opt(2) {
        Some(z) => quant_param(z, x.shape(), axis, block, "y_zero_point")?,
        None => ArrayD::zeros(IxDyn(&[])),
    };
    let as_float = |d: DType| if d.is_float() { d } else { DType::F64 };
    // The division happens in numpy's promoted dtype, or in `precision`.
    let (pre, div) = match dtype_attr(c.attrs, "precision")?.filter(|_| c.opset >= 23) {
        Some(p) => (Some(p), p),
        None => (None, promote(as_float(x.dtype()), as_float(s.dtype()))),
    };
    let pre = |v: f64| pre.map_or(v, |p| round_to(p, v));
    let xv = f64_array(x);
    let shape = x.shape();
    let q = broadcast::zip2(&xv, &scale, shape, |x, s| round_to(div, pre(x) / pre(s)))?;
    let y = broadcast::zip2(&q, &zp, shape, |q, z| {
        saturate(out, q.round_ties_even() + z)
    })?;
    Ok(vec![from_f64_array(out, y)?])
}

fn dequantize_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    ensure!(
        matches!(
            x.dtype,
            DType::U8 | DType::I8 | DType::U16 | DType::I16 | DType::I32
        ),
        Invalid,
        "input must be an 8-, 16- or 32-bit integer tensor, found {}",
        x.dtype
    );
    let s = c.input(1)?;
    float_input(s, "x_scale")?;
    if c.has(2) {
        let z = c.input(2)?;
        ensure!(
            z.dtype == x.dtype,
            Invalid,
            "x_zero_point is {}, input is {}",
            z.dtype,
            x.dtype
        );
    }
    let attr = if c.opset >= 23 {
        dtype_attr(c.attrs, "output_dtype")?
    } else {
        None
    };
    one(ValueType::new(attr.unwrap_or(s.dtype), x.shape.clone()))
}

fn dequantize_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let (axis, block) = quant_axis(c.attrs)?;
    let scale = quant_param(c.input(1)?, x.shape(), axis, block, "x_scale")?;
    let zp = match c.opt(2) {
        Some(z) => quant_param(z, x.shape(), axis, block, "x_zero_point")?,
        None => ArrayD::zeros(IxDyn(&[])),
    };
    let shape = x.shape();
    let dx = broadcast::zip2(&f64_array(x), &zp, shape, |x, z| x - z)?;
    let y = broadcast::zip2(&dx, &scale, shape, |d, s| d * s)?;
    Ok(vec![from_f64_array(c.outputs[0].dtype, y)?])
}

fn dynamic_quantize_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    ensure!(
        x.dtype == DType::F32,
        Invalid,
        "input must be f32, found {}",
        x.dtype
    );
    ensure!(x.numel() > 0, Invalid, "input must not be empty");
    Ok(vec![
        ValueType::new(DType::U8, x.shape.clone()),
        ValueType::new(DType::F32, vec![]),
        ValueType::new(DType::U8, vec![]),
    ])
}

/// uint8 quantization whose range covers the data and zero, computed in
/// f32 exactly as the spec's formulas (and the reference) do.
fn dynamic_quantize_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?.typed::<f32>()?;
    let nan_max = |a: f32, b: f32| if a.is_nan() || a > b { a } else { b };
    let nan_min = |a: f32, b: f32| if a.is_nan() || a < b { a } else { b };
    let max = nan_max(x.iter().copied().fold(f32::NEG_INFINITY, nan_max), 0.0);
    let min = nan_min(x.iter().copied().fold(f32::INFINITY, nan_min), 0.0);
    let scale = (if max == min { 1.0 } else { max - min }) / 255.0f32;
    let zp = (0.0f32 - min / scale).clamp(0.0, 255.0).round_ties_even();
    let y = x.mapv(|v| ((v / scale).round_ties_even() + zp).clamp(0.0, 255.0) as u8);
    Ok(vec![
        Tensor::U8(y),
        Tensor::scalar(scale),
        Tensor::scalar(zp as u8),
    ])
}

// --------------------------------------------------------- integer matmul

/// numpy matmul's output shape (1-D operands are promoted and the
/// promoted dimension dropped again).
fn matmul_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    ensure!(
        !a.is_empty() && !b.is_empty(),
        Invalid,
        "matmul operands must have rank >= 1"
    );
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    ensure!(
        k == k2,
        Invalid,
        "matmul of {a:?} and {b:?}: inner dimensions differ"
    );
    let mut out = broadcast::shape(&[&a2[..a2.len() - 2], &b2[..b2.len() - 2]])?;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
}

/// Batched matmul with numpy's broadcasting rules, on exact-integer f64s.
fn matmul(a: &ArrayD<f64>, b: &ArrayD<f64>) -> Result<ArrayD<f64>> {
    let out = matmul_shape(a.shape(), b.shape())?;
    let a2 = if a.ndim() == 1 {
        a.view().insert_axis(Axis(0))
    } else {
        a.view()
    };
    let b2 = if b.ndim() == 1 {
        b.view().insert_axis(Axis(1))
    } else {
        b.view()
    };
    let (ra, rb) = (a2.ndim(), b2.ndim());
    let (m, k, n) = (a2.shape()[ra - 2], a2.shape()[ra - 1], b2.shape()[rb - 1]);
    let batch = broadcast::shape(&[&a2.shape()[..ra - 2], &b2.shape()[..rb - 2]])?;
    let nb: usize = batch.iter().product();
    let stack = |v: ArrayViewD<f64>, r: usize, c: usize| -> Result<ndarray::Array3<f64>> {
        let full: Vec<usize> = batch.iter().copied().chain([r, c]).collect();
        let v = v.broadcast(IxDyn(&full)).ok_or_else(|| {
            Error::Internal(format!("{:?} does not broadcast to {full:?}", v.shape()))
        })?;
        v.to_owned()
            .into_shape_with_order((nb, r, c))
            .map_err(|e| Error::Internal(e.to_string()))
    };
    let (a3, b3) = (stack(a2, m, k)?, stack(b2, k, n)?);
    let mut y = Vec::with_capacity(nb * m * n);
    for i in 0..nb {
        y.extend(
            a3.index_axis(Axis(0), i)
                .dot(&b3.index_axis(Axis(0), i))
                .iter(),
        );
    }
    ArrayD::from_shape_vec(IxDyn(&out), y).map_err(|e| Error::Internal(e.to_string()))
}

/// A matmul quantization parameter shaped to broadcast against the
/// product: a per-row vector of `a` (or `y`) becomes a column.
fn mm_param(p: &Tensor, operand_rank: usize, per_row: bool) -> Result<ArrayD<f64>> {
    let v = f64_array(p);
    if p.len() == 1 {
        return Ok(ArrayD::from_elem(
            IxDyn(&[]),
            v.iter().copied().next().unwrap_or(0.0),
        ));
    }
    if per_row && p.rank() == 1 && operand_rank >= 2 {
        return v
            .into_shape_with_order(IxDyn(&[p.len(), 1]))
            .map_err(|e| Error::Internal(e.to_string()));
    }
    Ok(v)
}

/// `x - zero_point` as exact f64s.
fn centered(x: &Tensor, zp: Option<&Tensor>, per_row: bool) -> Result<ArrayD<f64>> {
    let xv = f64_array(x);
    match zp {
        None => Ok(xv),
        Some(z) => {
            ensure!(
                z.dtype() == x.dtype(),
                Invalid,
                "zero point is {}, its input is {}",
                z.dtype(),
                x.dtype()
            );
            let zv = mm_param(z, x.rank(), per_row)?;
            broadcast::zip2(&xv, &zv, x.shape(), |x, z| x - z)
        }
    }
}

fn qlinear_matmul_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (a, b) = (c.input(0)?, c.input(3)?);
    eight_bit(a, "a")?;
    eight_bit(b, "b")?;
    for (i, what) in [(1, "a_scale"), (4, "b_scale"), (6, "y_scale")] {
        float_input(c.input(i)?, what)?;
    }
    let y = c.input(7)?;
    eight_bit(y, "y_zero_point")?;
    one(ValueType::new(y.dtype, matmul_shape(&a.shape, &b.shape)?))
}

fn qlinear_matmul_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let (a, b) = (c.input(0)?, c.input(3)?);
    let prod = matmul(
        &centered(a, c.opt(2), true)?,
        &centered(b, c.opt(5), false)?,
    )?;
    let (sa, sb, sy) = (c.input(1)?, c.input(4)?, c.input(6)?);
    let d = promote(promote(sa.dtype(), sb.dtype()), sy.dtype());
    let sab = zip(
        &mm_param(sa, a.rank(), true)?,
        &mm_param(sb, b.rank(), false)?,
        |x, y| round_to(d, x * y),
    )?;
    let mult = zip(&sab, &mm_param(sy, prod.ndim(), true)?, |x, y| {
        round_to(d, x / y)
    })?;
    requantize(
        c.outputs[0].dtype,
        &prod,
        &mult,
        mm_param(c.input(7)?, prod.ndim(), true)?,
    )
}

/// `saturate(round(acc * mult) + zero_point)` into dtype `d`.
fn requantize(
    d: DType,
    acc: &ArrayD<f64>,
    mult: &ArrayD<f64>,
    zp: ArrayD<f64>,
) -> Result<Vec<Tensor>> {
    let shape = acc.shape();
    let scaled = broadcast::zip2(acc, mult, shape, |a, m| a * m)?;
    let y = broadcast::zip2(&scaled, &zp, shape, |v, z| saturate(d, v + z))?;
    Ok(vec![from_f64_array(d, y)?])
}

// ---------------------------------------------------------- integer conv

/// Convolution geometry from the attributes and the input/weight shapes.
pub(crate) struct ConvGeom {
    pub(crate) group: usize,
    pub(crate) kernel: Vec<usize>,
    pub(crate) strides: Vec<usize>,
    pub(crate) dilations: Vec<usize>,
    pub(crate) pads_begin: Vec<usize>,
    pub(crate) out: Vec<usize>,
}

fn spatial_attr(attrs: &Attrs, name: &str, n: usize, default: i64) -> Result<Vec<usize>> {
    let v = attrs
        .ints_opt(name)?
        .map_or_else(|| vec![default; n], <[i64]>::to_vec);
    ensure!(
        v.len() == n,
        Invalid,
        "attribute '{name}' has {} values, expected {n}",
        v.len()
    );
    v.iter()
        .map(|&x| {
            ensure!(
                x >= 1,
                Invalid,
                "attribute '{name}' must be positive, found {x}"
            );
            Ok(x as usize)
        })
        .collect()
}

pub(crate) fn conv_geom(attrs: &Attrs, x: &[usize], w: &[usize]) -> Result<ConvGeom> {
    ensure!(
        x.len() >= 3,
        Invalid,
        "input must have rank >= 3, found {x:?}"
    );
    ensure!(
        w.len() == x.len(),
        Invalid,
        "weight {w:?} and input {x:?} ranks differ"
    );
    let n = x.len() - 2;
    let group = attrs.int("group", 1)?;
    ensure!(
        group >= 1,
        Invalid,
        "attribute 'group' must be positive, found {group}"
    );
    let group = group as usize;
    ensure!(
        w[1].checked_mul(group) == Some(x[1]) && w[0].is_multiple_of(group),
        Invalid,
        "input channels {} and weight {w:?} do not match group {group}",
        x[1]
    );
    let kernel = w[2..].to_vec();
    if let Some(k) = attrs.ints_opt("kernel_shape")? {
        ensure!(
            k.iter().map(|&v| v as usize).eq(kernel.iter().copied()),
            Invalid,
            "attribute 'kernel_shape' {k:?} differs from the weight's {kernel:?}"
        );
    }
    let strides = spatial_attr(attrs, "strides", n, 1)?;
    let dilations = spatial_attr(attrs, "dilations", n, 1)?;
    let span: Vec<usize> = (0..n)
        .map(|d| (kernel[d].max(1) - 1) * dilations[d] + 1)
        .collect();
    let mut pads_begin = vec![0; n];
    let mut out = vec![0; n];
    let auto_pad = attrs.string("auto_pad", "NOTSET")?;
    for d in 0..n {
        let len = x[d + 2];
        let (b, e) = match auto_pad {
            "NOTSET" => {
                let p = attrs
                    .ints_opt("pads")?
                    .map_or_else(|| vec![0; 2 * n], <[i64]>::to_vec);
                ensure!(
                    p.len() == 2 * n,
                    Invalid,
                    "attribute 'pads' has {} values, expected {}",
                    p.len(),
                    2 * n
                );
                ensure!(
                    p.iter().all(|&v| v >= 0),
                    Invalid,
                    "attribute 'pads' must not be negative"
                );
                (p[d] as usize, p[d + n] as usize)
            }
            "VALID" => (0, 0),
            "SAME_UPPER" | "SAME_LOWER" => {
                let o = len.div_ceil(strides[d]);
                let total = ((o.max(1) - 1) * strides[d] + span[d]).saturating_sub(len);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
            m => bail!(Invalid, "attribute 'auto_pad': unknown value {m:?}"),
        };
        let padded = len + b + e;
        ensure!(
            padded >= span[d],
            Invalid,
            "kernel span {} exceeds padded input length {padded} on spatial axis {d}",
            span[d]
        );
        pads_begin[d] = b;
        out[d] = (padded - span[d]) / strides[d] + 1;
    }
    Ok(ConvGeom {
        group,
        kernel,
        strides,
        dilations,
        pads_begin,
        out,
    })
}

fn conv_shape(g: &ConvGeom, x: &[usize], w: &[usize]) -> Vec<usize> {
    [x[0], w[0]]
        .into_iter()
        .chain(g.out.iter().copied())
        .collect()
}

/// Row-major multi-indices of a shape, as one flat list per index.
fn unravel(i: usize, shape: &[usize]) -> Vec<usize> {
    let mut rest = i;
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = rest % shape[d];
        rest /= shape[d];
    }
    idx
}

/// Direct convolution as im2col + GEMM per batch item and group.
fn conv(x: &ArrayD<f64>, w: &ArrayD<f64>, g: &ConvGeom) -> Result<ArrayD<f64>> {
    let (xs, ws) = (x.shape(), w.shape());
    let spatial = &xs[2..];
    let in_len: usize = spatial.iter().product();
    let k_len: usize = g.kernel.iter().product();
    let p_len: usize = g.out.iter().product();
    // Source offset (within one channel) of each (kernel tap, output pixel).
    let mut src = vec![None; k_len * p_len];
    for k in 0..k_len {
        let kk = unravel(k, &g.kernel);
        for p in 0..p_len {
            let op = unravel(p, &g.out);
            let mut off = 0usize;
            let mut inside = true;
            for d in 0..spatial.len() {
                let pos =
                    (op[d] * g.strides[d] + kk[d] * g.dilations[d]) as i64 - g.pads_begin[d] as i64;
                inside &= (0..spatial[d] as i64).contains(&pos);
                off = off * spatial[d] + pos.max(0) as usize;
            }
            src[k * p_len + p] = inside.then_some(off);
        }
    }
    let (cg, mg) = (ws[1], ws[0] / g.group);
    let xd = x.as_standard_layout();
    let xd = xd
        .as_slice()
        .ok_or_else(|| Error::Internal("non-contiguous input".into()))?;
    let w2 = w
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((ws[0], cg * k_len))
        .map_err(|e| Error::Internal(e.to_string()))?;
    let mut y = Vec::with_capacity(xs[0] * ws[0] * p_len);
    for n in 0..xs[0] {
        for gi in 0..g.group {
            let mut cols = Array2::<f64>::zeros((cg * k_len, p_len));
            for c in 0..cg {
                let base = (n * xs[1] + gi * cg + c) * in_len;
                for k in 0..k_len {
                    let mut row = cols.row_mut(c * k_len + k);
                    for (p, v) in row.iter_mut().enumerate() {
                        if let Some(off) = src[k * p_len + p] {
                            *v = xd[base + off];
                        }
                    }
                }
            }
            let wg = w2.slice(ndarray::s![gi * mg..(gi + 1) * mg, ..]);
            y.extend(wg.dot(&cols).iter());
        }
    }
    let out = conv_shape(g, xs, ws);
    ArrayD::from_shape_vec(IxDyn(&out), y).map_err(|e| Error::Internal(e.to_string()))
}

/// A conv zero point or scale: one value, or one per output channel laid
/// out along `axis` of a rank-`rank` array (1 for the `[N, M, ...]`
/// output, 0 for the `[M, C/group, ...]` weight).
fn per_channel(
    p: &Tensor,
    channels: usize,
    rank: usize,
    axis: usize,
    what: &str,
) -> Result<ArrayD<f64>> {
    let v = f64_array(p);
    if p.len() == 1 {
        return Ok(ArrayD::from_elem(
            IxDyn(&[]),
            v.iter().copied().next().unwrap_or(0.0),
        ));
    }
    ensure!(
        p.rank() == 1 && p.len() == channels,
        Invalid,
        "{what} must be a scalar or hold one value per output channel ({channels}), found shape {:?}",
        p.shape()
    );
    let mut s = vec![1; rank];
    s[axis] = channels;
    v.into_shape_with_order(IxDyn(&s))
        .map_err(|e| Error::Internal(e.to_string()))
}

/// `x - x_zero_point` and `w - w_zero_point` as exact f64s (the weight's
/// zero point may be per output channel).
fn conv_operands(
    x: &Tensor,
    xz: Option<&Tensor>,
    w: &Tensor,
    wz: Option<&Tensor>,
) -> Result<(ArrayD<f64>, ArrayD<f64>)> {
    let mut xv = f64_array(x);
    if let Some(z) = xz {
        ensure!(
            z.len() == 1,
            Invalid,
            "x_zero_point must be a scalar, found shape {:?}",
            z.shape()
        );
        let z = z.to_f64_vec()[0];
        xv.mapv_inplace(|v| v - z);
    }
    let mut wv = f64_array(w);
    if let Some(z) = wz {
        let zc = per_channel(z, w.shape()[0], w.rank(), 0, "w_zero_point")?;
        wv = broadcast::zip2(&wv, &zc, w.shape(), |w, z| w - z)?;
    }
    Ok((xv, wv))
}

fn qlinear_conv_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, w) = (c.input(0)?, c.input(3)?);
    eight_bit(x, "x")?;
    eight_bit(w, "w")?;
    for (i, what) in [(1, "x_scale"), (4, "w_scale"), (6, "y_scale")] {
        float_input(c.input(i)?, what)?;
    }
    let y = c.input(7)?;
    eight_bit(y, "y_zero_point")?;
    if c.has(8) {
        let b = c.input(8)?;
        ensure!(
            b.dtype == DType::I32 && b.shape == [w.shape.first().copied().unwrap_or(0)],
            Invalid,
            "B must be an int32 vector of one value per output channel, found {b}"
        );
    }
    let g = conv_geom(c.attrs, &x.shape, &w.shape)?;
    one(ValueType::new(y.dtype, conv_shape(&g, &x.shape, &w.shape)))
}

fn qlinear_conv_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let (x, w) = (c.input(0)?, c.input(3)?);
    let g = conv_geom(c.attrs, x.shape(), w.shape())?;
    let (xv, wv) = conv_operands(x, c.opt(2), w, c.opt(5))?;
    let mut acc = conv(&xv, &wv, &g)?;
    let (m, rank) = (w.shape()[0], acc.ndim());
    if let Some(b) = c.opt(8) {
        let bias = per_channel(b, m, rank, 1, "B")?;
        acc = zip(&acc, &bias, |a, b| a + b)?;
    }
    let (sx, sw, sy) = (c.input(1)?, c.input(4)?, c.input(6)?);
    for (s, what) in [(sx, "x_scale"), (sy, "y_scale")] {
        ensure!(
            s.len() == 1,
            Invalid,
            "{what} must be a scalar, found shape {:?}",
            s.shape()
        );
    }
    let d = promote(promote(sx.dtype(), sw.dtype()), sy.dtype());
    let (sx, sy) = (sx.to_f64_vec()[0], sy.to_f64_vec()[0]);
    let mult =
        per_channel(sw, m, rank, 1, "w_scale")?.mapv(|s| round_to(d, round_to(d, sx * s) / sy));
    requantize(
        c.outputs[0].dtype,
        &acc,
        &mult,
        per_channel(c.input(7)?, m, rank, 1, "y_zero_point")?,
    )
}

// ----------------------------------------------------------------- windows

#[derive(Clone, Copy)]
enum Window {
    Hann,
    Hamming,
    Blackman,
}

fn window_size(t: &Tensor) -> Result<usize> {
    let v = t.to_i64_vec()?;
    ensure!(
        v.len() == 1,
        Invalid,
        "size must be a single integer, found shape {:?}",
        t.shape()
    );
    usize::try_from(v[0])
        .map_err(|_| Error::Invalid(format!("size must not be negative, found {}", v[0])))
}

fn window_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let size = window_size(c.req_const(0, "size")?)?;
    let d = dtype_attr(c.attrs, "output_datatype")?.unwrap_or(DType::F32);
    ensure!(
        d != DType::Bool,
        Invalid,
        "attribute 'output_datatype' must be numeric"
    );
    one(ValueType::new(d, vec![size]))
}

/// Cosine-sum windows over `N` = size (periodic) or size - 1 (symmetric).
/// The reference computes Hann's and Hamming's leading `n * pi` (and
/// `* 2`) in a float output dtype, the rest in f64; the rounding and the
/// operation order here follow it.
fn window_eval(c: &EvalCtx, w: Window) -> Result<Vec<Tensor>> {
    let size = window_size(c.input(0)?)?;
    let periodic = c.attrs.int("periodic", 1)? != 0;
    let out = &c.outputs[0];
    let r = |v: f64| round_to(out.dtype, v);
    let n = if periodic {
        size as f64
    } else {
        size as f64 - 1.0
    };
    let pi = std::f64::consts::PI;
    let vals: Vec<f64> = (0..size)
        .map(|i| {
            let i = i as f64;
            match w {
                Window::Hann => (r(i * r(pi)) / n).sin().powi(2),
                Window::Hamming => {
                    let alpha = 25.0 / 46.0;
                    alpha - (r(r(i * r(pi)) * 2.0) / n).cos() * (1.0 - alpha)
                }
                Window::Blackman => {
                    -0.5 * (i * (pi * 2.0) / n).cos() + 0.08 * (i * (pi * 4.0) / n).cos() + 0.42
                }
            }
        })
        .collect();
    Ok(vec![Tensor::from_f64s(out.dtype, &out.shape, &vals)?])
}

pub fn register(t: &mut OpTable) {
    t.add("QuantizeLinear", quantize_infer, quantize_eval);
    t.add("DequantizeLinear", dequantize_infer, dequantize_eval);
    t.add(
        "DynamicQuantizeLinear",
        dynamic_quantize_infer,
        dynamic_quantize_eval,
    );
    t.add("QLinearMatMul", qlinear_matmul_infer, qlinear_matmul_eval);
    t.add("QLinearConv", qlinear_conv_infer, qlinear_conv_eval);
    t.add("HannWindow", window_infer, |c| window_eval(c, Window::Hann));
    t.add("HammingWindow", window_infer, |c| {
        window_eval(c, Window::Hamming)
    });
    t.add("BlackmanWindow", window_infer, |c| {
        window_eval(c, Window::Blackman)
    });
}

#[cfg(test)]
mod tests {
    use crate::ir::{Attr, Tensor};
    use crate::ops::reduce::tests::{f32s, run};

    #[test]
    fn quantize_rounds_half_even_and_saturates() {
        let x = f32s(&[4], &[0., 1.5, 2.5, -300.]);
        let zp = Some(Tensor::scalar(128u8));
        let y = run("QuantizeLinear", 13, &[], &[x, f32s(&[], &[1.]), zp]).unwrap();
        assert_eq!(
            y[0],
            Tensor::from_vec::<u8>(&[4], vec![128, 130, 130, 0]).unwrap()
        );
    }

    #[test]
    fn dequantize_per_axis() {
        let x = Some(Tensor::from_vec::<i8>(&[2, 2], vec![1, 2, 3, 4]).unwrap());
        let zp = Some(Tensor::from_vec::<i8>(&[2], vec![0, 1]).unwrap());
        let y = run(
            "DequantizeLinear",
            13,
            &[("axis", Attr::Int(0))],
            &[x, f32s(&[2], &[2., 0.5]), zp],
        )
        .unwrap();
        assert_eq!(y[0].to_f64_vec(), vec![2., 4., 1., 1.5]);
    }

    #[test]
    fn dynamic_quantize_covers_zero() {
        let y = run("DynamicQuantizeLinear", 11, &[], &[f32s(&[2], &[0., 2.55])]).unwrap();
        assert_eq!(y[0], Tensor::from_vec::<u8>(&[2], vec![0, 255]).unwrap());
        assert_eq!(y[1], Tensor::scalar(0.01f32));
        assert_eq!(y[2], Tensor::scalar(0u8));
    }

    #[test]
    fn integer_matmul_and_conv() {
        let a = Some(Tensor::from_vec::<u8>(&[1, 2], vec![3, 4]).unwrap());
        let b = Some(Tensor::from_vec::<u8>(&[2, 1], vec![5, 6]).unwrap());
        let za = Some(Tensor::scalar(1u8));
        let y = run("MatMulInteger", 10, &[], &[a, b, za]).unwrap();
        assert_eq!(
            y[0],
            Tensor::from_vec::<i32>(&[1, 1], vec![2 * 5 + 3 * 6]).unwrap()
        );
        let x = Some(Tensor::from_vec::<u8>(&[1, 1, 3], vec![1, 2, 3]).unwrap());
        let w = Some(Tensor::from_vec::<u8>(&[1, 1, 2], vec![1, 1]).unwrap());
        let pads = ("pads", Attr::Ints(vec![1, 0]));
        let y = run("ConvInteger", 10, &[pads], &[x, w]).unwrap();
        assert_eq!(
            y[0],
            Tensor::from_vec::<i32>(&[1, 1, 3], vec![1, 3, 5]).unwrap()
        );
    }

    #[test]
    fn determinants() {
        let y = run(
            "Det",
            11,
            &[],
            &[f32s(&[2, 2, 2], &[1., 2., 3., 4., 1., 2., 2., 4.])],
        )
        .unwrap();
        assert_eq!(y[0].to_f64_vec(), vec![-2., 0.]);
    }

    #[test]
    fn hann_window() {
        let n = Some(Tensor::scalar(4i64));
        let y = run(
            "HannWindow",
            17,
            &[("output_datatype", Attr::Int(11))],
            &[n],
        )
        .unwrap();
        let v = y[0].to_f64_vec();
        for (a, b) in v.iter().zip([0., 0.5, 1., 0.5]) {
            assert!((a - b).abs() < 1e-12, "{v:?}");
        }
    }
}
