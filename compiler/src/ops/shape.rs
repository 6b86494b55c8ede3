//! Ops about shapes and whole tensors: Shape, Size, Identity, Dropout (its
//! inference form), and ops that build a tensor from a shape or from values:
//! ConstantOfShape, EyeLike, Range, NonZero and Unique. Where an output's
//! length depends on input values (Range, NonZero, Unique), inference needs
//! those inputs to be constants; evaluation recomputes from the run-time
//! values with the same function.

use std::cmp::Ordering;

use ndarray::{ArrayD, Axis, IxDyn};

use super::movement::{Ctx, dim, int_values, norm_axis, numel, req_ints};
use super::{EvalCtx, InferCtx, OpTable, one};
use crate::error::{Error, Result};
use crate::ir::{Attrs, DType, Elem, Tensor, ValueType};
use crate::{dispatch, with_dtype};

// -------------------------------------------------- Shape, Size, Identity

/// The dimensions Shape reports: `start`/`end` (opset 15) count from the
/// back when negative and are clamped to `[0, rank]`.
fn shape_range(c: &impl Ctx) -> Result<(usize, usize)> {
    let r = c.shape(0)?.len() as i64;
    let clamp = |v: i64| (if v < 0 { v.saturating_add(r) } else { v }).clamp(0, r) as usize;
    let start = clamp(c.attrs().int("start", 0)?);
    let end = clamp(c.attrs().int("end", r)?);
    Ok((start, end.max(start)))
}

fn shape_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (start, end) = shape_range(c)?;
    one(ValueType::new(DType::I64, vec![end - start]))
}

fn shape_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let (start, end) = shape_range(c)?;
    let dims = c.input(0)?.shape()[start..end].iter().map(|&d| d as i64).collect();
    Ok(vec![Tensor::from_vec(&[end - start], dims)?])
}

fn size_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    c.input(0)?;
    one(ValueType::new(DType::I64, vec![]))
}

fn size_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    Ok(vec![Tensor::scalar(c.input(0)?.len() as i64)])
}

fn identity_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    one(c.input(0)?.clone())
}

fn identity_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    Ok(vec![c.input(0)?.clone()])
}

// ------------------------------------------------------------------ Dropout

/// Dropout in training mode with a non-zero ratio draws random numbers,
/// which a reference interpreter cannot reproduce; otherwise it is the
/// identity.
fn check_not_training(ratio: Option<&Tensor>, training: Option<&Tensor>) -> Result<()> {
    let training = training.map(Tensor::scalar_f64).transpose()?.is_some_and(|t| t != 0.0);
    let ratio = ratio.map(Tensor::scalar_f64).transpose()?.unwrap_or(0.5);
    ensure!(
        (0.0..1.0).contains(&ratio),
        Invalid,
        "'ratio' must be in [0, 1), found {ratio}"
    );
    if training && ratio > 0.0 {
        return Err(Error::Unsupported(
            "Dropout in training mode (random masking)".into(),
        ));
    }
    Ok(())
}

fn dropout_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    ensure!(x.dtype.is_float(), Invalid, "input must be a float tensor, found {}", x.dtype);
    // Ratio and training_mode became inputs in opset 12; reject training as
    // soon as both are known, else evaluation does.
    let known = |i: usize| c.consts.get(i).copied().flatten();
    let ratio_known = !c.has(1) || known(1).is_some();
    if c.opset >= 12 && ratio_known && known(2).is_some() {
        check_not_training(known(1), known(2))?;
    }
    // Before opset 10 the mask has the input's type.
    let mask = if c.opset < 10 { x.dtype } else { DType::Bool };
    Ok(vec![x.clone(), ValueType::new(mask, x.shape.clone())])
}

fn dropout_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    if c.opset >= 12 {
        check_not_training(c.opt(1), c.opt(2))?;
    }
    let x = c.input(0)?;
    let mask = c.outputs.get(1).map_or(DType::Bool, |t| t.dtype);
    Ok(vec![x.clone(), Tensor::full(mask, x.shape(), 1.0)])
}

// --------------------------------------------- ConstantOfShape, EyeLike

fn constant_value(attrs: &Attrs) -> Result<Tensor> {
    match attrs.tensor_opt("value")? {
        Some(t) => {
            ensure!(
                t.len() == 1,
                Invalid,
                "attribute 'value' must hold one element, found {}",
                t.len()
            );
            Ok(t.clone())
        }
        None => Ok(Tensor::scalar(0f32)),
    }
}

fn constant_of_shape_plan(c: &impl Ctx) -> Result<(Tensor, Vec<usize>)> {
    ensure!(
        c.shape(0)?.len() <= 1,
        Invalid,
        "'input' must be a 1-D shape, found rank {}",
        c.shape(0)?.len()
    );
    let shape = req_ints(c, 0, "shape")?
        .into_iter()
        .map(|d| dim(d, "'input' (the shape)"))
        .collect::<Result<Vec<_>>>()?;
    numel(&shape)?;
    Ok((constant_value(c.attrs())?, shape))
}

fn constant_of_shape_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (v, shape) = constant_of_shape_plan(c)?;
    one(ValueType::new(v.dtype(), shape))
}

fn constant_of_shape_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let (v, shape) = constant_of_shape_plan(c)?;
    Ok(vec![dispatch!(&v, a => Tensor::from(ArrayD::from_elem(
        IxDyn(&shape),
        a.iter().next().copied().unwrap_or_default(),
    )))])
}

fn eye_like_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    ensure!(x.shape.len() == 2, Invalid, "input must be 2-D, found shape {:?}", x.shape);
    let dtype = match c.attrs.int_opt("dtype")? {
        Some(code) => i32::try_from(code).ok().and_then(DType::from_onnx).ok_or_else(|| {
            Error::Unsupported(format!(
                "EyeLike to {} is not supported",
                DType::onnx_name(code as i32)
            ))
        })?,
        None => x.dtype,
    };
    one(ValueType::new(dtype, x.shape.clone()))
}

fn eye_like_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let out = &c.outputs[0];
    let (rows, cols) = (out.shape[0], out.shape[1]);
    let k = c.attrs.int("k", 0)? as i128;
    let mut v = vec![0.0; rows * cols];
    for i in 0..rows {
        let j = i as i128 + k;
        if (0..cols as i128).contains(&j) {
            v[i * cols + j as usize] = 1.0;
        }
    }
    Ok(vec![Tensor::from_f64s(out.dtype, &out.shape, &v)?])
}

// -------------------------------------------------------------------- Range

/// Ranges longer than this are refused rather than allocated.
const MAX_RANGE: usize = 1 << 32;

fn range_len(n: f64) -> Result<usize> {
    ensure!(!n.is_nan(), Invalid, "Range length is undefined");
    let n = n.max(0.0);
    ensure!(n <= MAX_RANGE as f64, Invalid, "Range of {n} elements is too long");
    Ok(n as usize)
}

/// numpy.arange's float values: the first two are `start` and
/// `start + delta`, later ones `start + i * (second - first)`, all in the
/// compute type `F`.
fn arange<F: Elem>(start: f64, delta: f64, n: usize) -> Vec<f64> {
    let s = F::from_f64(start).to_f64();
    let second = F::from_f64(start + delta).to_f64();
    let step = F::from_f64(second - s).to_f64();
    (0..n)
        .map(|i| match i {
            0 => s,
            1 => second,
            _ => F::from_f64(s + F::from_f64(i as f64).to_f64() * step).to_f64(),
        })
        .collect()
}

fn range_tensor(c: &impl Ctx) -> Result<Tensor> {
    let names = ["start", "limit", "delta"];
    let mut vals = Vec::with_capacity(3);
    for (i, what) in names.iter().enumerate() {
        let t = c
            .value(i, what)?
            .ok_or_else(|| Error::Invalid(format!("missing required input {i} ({what})")))?;
        ensure!(t.len() == 1, Invalid, "'{what}' must be a scalar, found shape {:?}", t.shape());
        vals.push(t);
    }
    let dtype = vals[0].dtype();
    for (t, what) in vals.iter().zip(names) {
        ensure!(t.dtype() == dtype, Invalid, "'{what}' is {}, 'start' is {dtype}", t.dtype());
    }
    if dtype.is_int() {
        let v: Vec<i128> = vals
            .iter()
            .zip(names)
            .map(|(t, what)| Ok(int_values(t, what)?[0] as i128))
            .collect::<Result<_>>()?;
        let (s, l, d) = (v[0], v[1], v[2]);
        ensure!(d != 0, Invalid, "'delta' must not be 0");
        let (q, r) = ((l - s) / d, (l - s) % d);
        let n = q + i128::from(r != 0 && (r > 0) == (d > 0));
        let n = range_len(n as f64)?;
        return with_dtype!(dtype, T => Tensor::from_vec(
            &[n],
            (0..n).map(|i| T::from_i128(s + i as i128 * d)).collect::<Vec<_>>(),
        ));
    }
    ensure!(dtype.is_float(), Invalid, "Range needs numeric inputs, found {dtype}");
    let (s, l, d) = (vals[0].scalar_f64()?, vals[1].scalar_f64()?, vals[2].scalar_f64()?);
    ensure!(d != 0.0, Invalid, "'delta' must not be 0");
    let n = range_len(((l - s) / d).ceil())?;
    // Opset 27 computes f16/bf16 ranges in the stash type (f32 by default).
    let low = matches!(dtype, DType::F16 | DType::BF16);
    let values = match (low && c.opset() >= 27).then(|| c.attrs().int("stash_type", 1)) {
        None => arange::<f64>(s, d, n),
        Some(Ok(1)) => arange::<f32>(s, d, n),
        Some(Ok(11)) => arange::<f64>(s, d, n),
        Some(Ok(t)) => bail!(Invalid, "attribute 'stash_type' must be 1 or 11, found {t}"),
        Some(Err(e)) => return Err(e),
    };
    Tensor::from_f64s(dtype, &[n], &values)
}

fn range_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    one(ValueType::of(&range_tensor(c)?))
}

fn range_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    Ok(vec![range_tensor(c)?])
}

// ----------------------------------------------------------------- NonZero

/// The `[rank, count]` coordinates of the non-zero elements in row-major
/// order (a scalar gives `[0, count]`, as the reference does).
fn nonzero(t: &Tensor) -> Result<Tensor> {
    fn go<T: Elem>(a: &ArrayD<T>) -> Result<Tensor> {
        let r = a.ndim();
        let hits: Vec<IxDyn> = a
            .indexed_iter()
            .filter(|(_, x)| **x != T::default())
            .map(|(i, _)| i)
            .collect();
        let n = hits.len();
        let mut out = vec![0i64; r * n];
        for (j, ix) in hits.iter().enumerate() {
            for d in 0..r {
                out[d * n + j] = ix[d] as i64;
            }
        }
        Tensor::from_vec(&[r, n], out)
    }
    dispatch!(t, a => go(a))
}

fn nonzero_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    one(ValueType::of(&nonzero(c.req_const(0, "NonZero's input")?)?))
}

fn nonzero_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    Ok(vec![nonzero(c.input(0)?)?])
}

// ------------------------------------------------------------------ Unique

/// A total order for uniqueness: the natural one, with NaN after every
/// number and equal to itself (numpy's `equal_nan`), and -0 equal to 0.
fn cmp_elem<T: Elem>(a: &T, b: &T) -> Ordering {
    a.partial_cmp(b).unwrap_or_else(|| {
        #[allow(clippy::eq_op)]
        let (a_nan, b_nan) = (a != a, b != b);
        a_nan.cmp(&b_nan)
    })
}

fn cmp_items<T: Elem>(a: &[T], b: &[T]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| cmp_elem(x, y))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// Unique's four outputs: values (or sub-tensors along `axis`), the first
/// occurrence of each, the inverse map and the counts.
fn unique(t: &Tensor, axis: Option<usize>, sorted: bool) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(a: &ArrayD<T>, axis: Option<usize>, sorted: bool) -> Result<Vec<Tensor>> {
        let items: Vec<Vec<T>> = match axis {
            Some(ax) => a
                .axis_iter(Axis(ax))
                .map(|s| s.iter().copied().collect())
                .collect(),
            None => a.iter().map(|&x| vec![x]).collect(),
        };
        let n = items.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&i, &j| cmp_items(&items[i], &items[j]).then(i.cmp(&j)));
        // Groups of equal items in sorted order: (first occurrence, count).
        let mut groups: Vec<(usize, i64)> = Vec::new();
        let mut group_of = vec![0usize; n];
        for (p, &i) in order.iter().enumerate() {
            let same = p > 0 && cmp_items(&items[order[p - 1]], &items[i]).is_eq();
            match groups.last_mut() {
                Some(g) if same => g.1 += 1,
                _ => groups.push((i, 1)),
            }
            group_of[i] = groups.len() - 1;
        }
        let mut out_order: Vec<usize> = (0..groups.len()).collect();
        if !sorted {
            out_order.sort_by_key(|&g| groups[g].0);
        }
        let mut slot = vec![0usize; groups.len()];
        for (p, &g) in out_order.iter().enumerate() {
            slot[g] = p;
        }
        let firsts: Vec<usize> = out_order.iter().map(|&g| groups[g].0).collect();
        let k = firsts.len();
        let y = match axis {
            Some(ax) => T::wrap(a.select(Axis(ax), &firsts).as_standard_layout().into_owned()),
            None => Tensor::from_vec(&[k], firsts.iter().map(|&i| items[i][0]).collect())?,
        };
        let ints = |v: Vec<i64>| Tensor::from_vec(&[v.len()], v);
        Ok(vec![
            y,
            ints(firsts.iter().map(|&i| i as i64).collect())?,
            ints(group_of.iter().map(|&g| slot[g] as i64).collect())?,
            ints(out_order.iter().map(|&g| groups[g].1).collect())?,
        ])
    }
    dispatch!(t, a => go(a, axis, sorted))
}

fn unique_params(c: &impl Ctx) -> Result<(Option<usize>, bool)> {
    let rank = c.shape(0)?.len();
    let axis = c
        .attrs()
        .int_opt("axis")?
        .map(|a| norm_axis(a, rank, "attribute 'axis'"))
        .transpose()?;
    Ok((axis, c.attrs().int("sorted", 1)? != 0))
}

fn unique_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (axis, sorted) = unique_params(c)?;
    let outs = unique(c.req_const(0, "Unique's input")?, axis, sorted)?;
    Ok(outs.iter().map(ValueType::of).collect())
}

fn unique_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let (axis, sorted) = unique_params(c)?;
    unique(c.input(0)?, axis, sorted)
}

pub fn register(t: &mut OpTable) {
    t.add("Shape", shape_infer, shape_eval);
    t.add("Size", size_infer, size_eval);
    t.add("Identity", identity_infer, identity_eval);
    t.add("Dropout", dropout_infer, dropout_eval);
    t.add("ConstantOfShape", constant_of_shape_infer, constant_of_shape_eval);
    t.add("EyeLike", eye_like_infer, eye_like_eval);
    t.add("Range", range_infer, range_eval);
    t.add("NonZero", nonzero_infer, nonzero_eval);
    t.add("Unique", unique_infer, unique_eval);
}
