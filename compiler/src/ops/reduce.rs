//! Reductions and ops that work along one axis: the Reduce* family,
//! ArgMax/ArgMin, Softmax/LogSoftmax/Hardmax, CumSum/CumProd and TopK.
//!
//! Float math runs in f64 and is rounded once to the element type; integer
//! sums and products wrap like numpy's (they are computed in i128 and
//! truncated, which is the same modular result).

use std::cmp::Ordering;

use ndarray::{ArrayD, IxDyn};

use super::{EvalCtx, InferCtx, OpTable, one};
use crate::error::Result;
use crate::ir::{Attrs, DType, Elem, Tensor, ValueType};
use crate::{dispatch, dispatch_float, dispatch_num};

// --------------------------------------------------------------- helpers

/// The smallest value of `T` (what an empty ReduceMax yields).
fn lowest<T: Elem>() -> T {
    let d = T::DTYPE;
    if d.is_float() {
        T::from_f64(f64::NEG_INFINITY)
    } else if d.is_signed() {
        T::from_i128(-(1i128 << (d.size_bytes() * 8 - 1)))
    } else {
        T::from_i128(0)
    }
}

/// The largest value of `T` (what an empty ReduceMin yields; `true` for
/// bool, as in the reference, which treats bool like a float here).
fn highest<T: Elem>() -> T {
    let d = T::DTYPE;
    if d.is_float() {
        T::from_f64(f64::INFINITY)
    } else if d == DType::Bool {
        T::from_i128(1)
    } else if d.is_signed() {
        T::from_i128((1i128 << (d.size_bytes() * 8 - 1)) - 1)
    } else {
        T::from_i128((1i128 << (d.size_bytes() * 8)) - 1)
    }
}

#[allow(clippy::eq_op)]
fn is_nan<T: Elem>(x: T) -> bool {
    x != x
}

/// A total order for sorting in which NaN is greater than every number.
fn cmp_nan_last<T: Elem>(a: T, b: T) -> Ordering {
    a.partial_cmp(&b)
        .unwrap_or_else(|| is_nan(a).cmp(&is_nan(b)))
}

fn flat<T: Elem>(a: &ArrayD<T>) -> Vec<T> {
    a.iter().copied().collect()
}

/// A tensor viewed as `outer x n x inner`, with the `n` axis being the
/// one an op works along.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Lanes {
    outer: usize,
    n: usize,
    inner: usize,
}

impl Lanes {
    /// Splits `shape` around `axis`; with `flatten_tail` the lane covers
    /// `axis` and every later dimension (the pre-opset-13 Softmax rule).
    fn new(shape: &[usize], axis: usize, flatten_tail: bool) -> Lanes {
        let outer = shape[..axis].iter().product();
        if flatten_tail {
            return Lanes {
                outer,
                n: shape[axis..].iter().product(),
                inner: 1,
            };
        }
        Lanes {
            outer,
            n: shape.get(axis).copied().unwrap_or(1),
            inner: shape.get(axis + 1..).map_or(1, |s| s.iter().product()),
        }
    }

    /// Flat offsets of lane `(o, i)`'s elements, in order along the axis.
    fn lane(&self, o: usize, i: usize) -> impl Iterator<Item = usize> + use<> {
        let (n, inner) = (self.n, self.inner);
        (0..n).map(move |j| (o * n + j) * inner + i)
    }

    fn each(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let inner = self.inner;
        (0..self.outer).flat_map(move |o| (0..inner).map(move |i| (o, i)))
    }
}

/// Normalizes `axis` for an op that accepts rank-0 input (treated as a
/// single lane of one element).
fn lane_axis(a: i64, rank: usize) -> Result<usize> {
    if rank == 0 {
        ensure!(
            a == 0 || a == -1,
            Invalid,
            "axis {a} is out of range for rank 0"
        );
        return Ok(0);
    }
    super::axis(a, rank)
}

fn numeric(ty: &ValueType) -> Result<()> {
    ensure!(
        ty.dtype != DType::Bool,
        Invalid,
        "input must be numeric, found {}",
        ty.dtype
    );
    Ok(())
}

fn float(ty: &ValueType) -> Result<()> {
    ensure!(
        ty.dtype.is_float(),
        Invalid,
        "input must be a float tensor, found {}",
        ty.dtype
    );
    Ok(())
}

// ------------------------------------------------------------ reductions

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

impl Kind {
    /// The opset from which `axes` is an input rather than an attribute.
    fn axes_input_since(self) -> i64 {
        if self == Kind::Sum { 13 } else { 18 }
    }
}

/// Which axes the reduction folds, as a per-dimension mask. Empty or
/// absent axes mean "all", unless `noop_with_empty_axes` asks for none
/// (each element then forms its own one-element group, which is what the
/// reference computes, e.g. ReduceL1 then gives |x|).
fn reduced_mask(
    attrs: &Attrs,
    opset: i64,
    kind: Kind,
    rank: usize,
    axes_input: Option<&Tensor>,
) -> Result<Vec<bool>> {
    let from_input = opset >= kind.axes_input_since();
    let axes = if from_input {
        axes_input.map(Tensor::to_i64_vec).transpose()?
    } else {
        attrs.ints_opt("axes")?.map(<[i64]>::to_vec)
    };
    let noop = from_input && attrs.int("noop_with_empty_axes", 0)? != 0;
    let axes = match axes {
        Some(v) if !v.is_empty() => v,
        _ => return Ok(vec![!noop; rank]),
    };
    let mut mask = vec![false; rank];
    for a in axes {
        let i =
            super::axis(a, rank).map_err(|e| crate::error::Error::Invalid(format!("axes: {e}")))?;
        ensure!(!mask[i], Invalid, "axes: axis {a} is repeated");
        mask[i] = true;
    }
    Ok(mask)
}

fn reduced_shape(shape: &[usize], mask: &[bool], keepdims: bool) -> Vec<usize> {
    shape
        .iter()
        .zip(mask)
        .filter_map(|(&d, &m)| match (m, keepdims) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

fn reduce_infer(c: &InferCtx, kind: Kind) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    if !matches!(kind, Kind::Max | Kind::Min) {
        numeric(x)?;
    }
    let axes = if c.opset >= kind.axes_input_since() {
        c.const_input(1, "axes")?
    } else {
        None
    };
    let mask = reduced_mask(c.attrs, c.opset, kind, x.shape.len(), axes)?;
    let keep = c.attrs.int("keepdims", 1)? != 0;
    one(ValueType::new(
        x.dtype,
        reduced_shape(&x.shape, &mask, keep),
    ))
}

fn reduce_eval(c: &EvalCtx, kind: Kind) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let axes = if c.opset >= kind.axes_input_since() {
        c.opt(1)
    } else {
        None
    };
    let mask = reduced_mask(c.attrs, c.opset, kind, x.rank(), axes)?;
    let out = &c.outputs[0].shape;
    dispatch!(x, a => reduce_array(a, &mask, kind, out)).map(|t| vec![t])
}

/// Regroups `a` so that every reduced group is contiguous, then folds each.
fn reduce_array<T: Elem>(
    a: &ArrayD<T>,
    mask: &[bool],
    kind: Kind,
    out: &[usize],
) -> Result<Tensor> {
    let rank = mask.len();
    let perm: Vec<usize> = (0..rank)
        .filter(|&i| !mask[i])
        .chain((0..rank).filter(|&i| mask[i]))
        .collect();
    let data = flat(&a.view().permuted_axes(IxDyn(&perm)).to_owned());
    let group: usize = (0..rank)
        .filter(|&i| mask[i])
        .map(|i| a.shape()[i])
        .product();
    let groups: usize = out.iter().product();
    let vals = (0..groups)
        .map(|g| fold(kind, &data[g * group..(g + 1) * group]))
        .collect();
    Tensor::from_vec(out, vals)
}

fn fold<T: Elem>(kind: Kind, xs: &[T]) -> T {
    match kind {
        Kind::Max => xs.iter().fold(lowest(), |m, &x| extreme(m, x, true)),
        Kind::Min => xs.iter().fold(highest(), |m, &x| extreme(m, x, false)),
        _ if T::DTYPE.is_float() => T::from_f64(fold_f64(kind, xs.iter().map(|x| x.to_f64()))),
        _ => fold_int(kind, xs),
    }
}

/// The larger (or smaller) of `m` and `x`; NaN propagates, as in numpy.
fn extreme<T: Elem>(m: T, x: T, max: bool) -> T {
    let take_x = is_nan(x) || if max { x > m } else { x < m };
    if is_nan(m) || !take_x { m } else { x }
}

fn fold_f64(kind: Kind, xs: impl Iterator<Item = f64> + Clone) -> f64 {
    let sum = |f: fn(f64) -> f64| xs.clone().map(f).sum::<f64>();
    match kind {
        Kind::Sum => sum(|x| x),
        Kind::Mean => sum(|x| x) / xs.clone().count() as f64,
        Kind::Prod => xs.product(),
        Kind::L1 => sum(f64::abs),
        Kind::L2 => sum(|x| x * x).sqrt(),
        Kind::SumSquare => sum(|x| x * x),
        Kind::LogSum => sum(|x| x).ln(),
        Kind::LogSumExp => {
            // Shifting by the largest finite value keeps exp in range.
            let m = xs
                .clone()
                .filter(|x| x.is_finite())
                .fold(f64::NEG_INFINITY, f64::max);
            let m = if m.is_finite() { m } else { 0.0 };
            xs.map(|x| (x - m).exp()).sum::<f64>().ln() + m
        }
        Kind::Max | Kind::Min => unreachable!("Max and Min fold on the element type"),
    }
}

fn fold_int<T: Elem>(kind: Kind, xs: &[T]) -> T {
    let wsum = |f: fn(i128) -> i128| xs.iter().fold(0i128, |s, x| s.wrapping_add(f(x.to_i128())));
    match kind {
        Kind::Sum => T::from_i128(wsum(|x| x)),
        Kind::Mean => {
            // numpy sums in the element type (wrapping), then divides and truncates.
            let s = T::from_i128(wsum(|x| x)).to_i128();
            T::from_i128(s.checked_div(xs.len() as i128).unwrap_or(0))
        }
        Kind::Prod => T::from_i128(xs.iter().fold(1i128, |p, x| p.wrapping_mul(x.to_i128()))),
        Kind::L1 => T::from_i128(wsum(i128::abs)),
        Kind::SumSquare => T::from_i128(wsum(|x| x.wrapping_mul(x))),
        Kind::L2 => T::from_f64((wsum(|x| x.wrapping_mul(x)) as f64).sqrt()),
        Kind::LogSum | Kind::LogSumExp => {
            T::from_f64(fold_f64(kind, xs.iter().map(|x| x.to_f64())))
        }
        Kind::Max | Kind::Min => unreachable!("Max and Min fold on the element type"),
    }
}

// --------------------------------------------------------- ArgMax/ArgMin

fn arg_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    numeric(x)?;
    let ax = super::axis(c.attrs.int("axis", 0)?, x.shape.len())?;
    ensure!(
        x.shape.get(ax).is_some_and(|&d| d > 0),
        Invalid,
        "cannot take the arg of an empty axis (shape {:?})",
        x.shape
    );
    let mut mask = vec![false; x.shape.len()];
    mask[ax] = true;
    let keep = c.attrs.int("keepdims", 1)? != 0;
    one(ValueType::new(
        DType::I64,
        reduced_shape(&x.shape, &mask, keep),
    ))
}

fn arg_eval(c: &EvalCtx, max: bool) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let ax = super::axis(c.attrs.int("axis", 0)?, x.rank())?;
    let last = c.attrs.int("select_last_index", 0)? != 0;
    let lanes = Lanes::new(x.shape(), ax, false);
    let idx = dispatch!(x, a => arg_lanes(a, lanes, max, last));
    Tensor::from_vec(&c.outputs[0].shape, idx).map(|t| vec![t])
}

/// The index of each lane's extreme; ties go to the first (or, with
/// `last`, the last) occurrence and NaN wins over numbers, like numpy.
fn arg_lanes<T: Elem>(a: &ArrayD<T>, lanes: Lanes, max: bool, last: bool) -> Vec<i64> {
    let data = flat(a);
    let better = |x: T, b: T| (is_nan(x) && !is_nan(b)) || if max { x > b } else { x < b };
    lanes
        .each()
        .map(|(o, i)| {
            let mut order: Vec<(usize, usize)> = lanes.lane(o, i).enumerate().collect();
            if last {
                order.reverse();
            }
            let Some(&first) = order.first() else {
                return 0;
            };
            let mut best = first;
            for &(j, k) in &order[1..] {
                if better(data[k], data[best.1]) {
                    best = (j, k);
                }
            }
            best.0 as i64
        })
        .collect()
}

// ---------------------------------------------- Softmax, LogSoftmax, Hardmax

/// The lanes a softmax-like op normalizes over. Before opset 13 the input
/// is coerced to 2-D at `axis` (default 1), so a lane spans every trailing
/// dimension; from 13 on a lane is one axis (default -1).
fn softmax_lanes(attrs: &Attrs, opset: i64, shape: &[usize]) -> Result<Lanes> {
    let legacy = opset < 13;
    let a = attrs.int("axis", if legacy { 1 } else { -1 })?;
    let rank = shape.len();
    if legacy && a == rank as i64 && rank > 0 {
        // Coercing at axis == rank is allowed: every row has one element.
        return Ok(Lanes {
            outer: shape.iter().product(),
            n: 1,
            inner: 1,
        });
    }
    Ok(Lanes::new(shape, lane_axis(a, rank)?, legacy))
}

fn softmax_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    float(x)?;
    softmax_lanes(c.attrs, c.opset, &x.shape)?;
    one(x.clone())
}

#[derive(Clone, Copy, PartialEq)]
enum Norm {
    Softmax,
    LogSoftmax,
    Hardmax,
}

fn softmax_eval(c: &EvalCtx, norm: Norm) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let lanes = softmax_lanes(c.attrs, c.opset, x.shape())?;
    let out = dispatch_float!(x, a => normalize(a, lanes, norm)?,
        o => bail!(Invalid, "input must be a float tensor, found {}", o.dtype()));
    Ok(vec![out])
}

fn normalize<T: Elem>(a: &ArrayD<T>, lanes: Lanes, norm: Norm) -> Result<Tensor> {
    let x: Vec<f64> = a.iter().map(|v| v.to_f64()).collect();
    let mut y = vec![0.0; x.len()];
    for (o, i) in lanes.each() {
        let idx: Vec<usize> = lanes.lane(o, i).collect();
        if norm == Norm::Hardmax {
            // First maximum wins (numpy argmax), NaN counting as maximal.
            let Some(&(mut best)) = idx.first() else {
                continue;
            };
            for &k in &idx[1..] {
                if (x[k].is_nan() && !x[best].is_nan()) || x[k] > x[best] {
                    best = k;
                }
            }
            y[best] = 1.0;
            continue;
        }
        let m = idx.iter().map(|&k| x[k]).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = idx.iter().map(|&k| (x[k] - m).exp()).sum();
        for &k in &idx {
            y[k] = match norm {
                Norm::LogSoftmax => x[k] - m - sum.ln(),
                _ => (x[k] - m).exp() / sum,
            };
        }
    }
    Tensor::from_vec(a.shape(), y.into_iter().map(T::from_f64).collect())
}

// --------------------------------------------------------- CumSum, CumProd

fn cumulative_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    numeric(x)?;
    let ax = c.input(1)?;
    ensure!(
        ax.dtype.is_int() && ax.shape.iter().product::<usize>() == 1,
        Invalid,
        "axis must be a single integer, found {ax}"
    );
    if let Some(t) = c.consts.get(1).copied().flatten() {
        super::axis(t.to_i64_vec()?[0], x.shape.len())?;
    }
    one(x.clone())
}

fn cumulative_eval(c: &EvalCtx, prod: bool) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let a = c.input(1)?.to_i64_vec()?;
    ensure!(a.len() == 1, Invalid, "axis must be a single integer");
    let lanes = Lanes::new(x.shape(), super::axis(a[0], x.rank())?, false);
    let exclusive = c.attrs.int("exclusive", 0)? != 0;
    let reverse = c.attrs.int("reverse", 0)? != 0;
    let out = dispatch_num!(x, a => cumulative(a, lanes, prod, exclusive, reverse)?,
        o => bail!(Invalid, "input must be numeric, found {}", o.dtype()));
    Ok(vec![out])
}

/// Running sums (or products) along each lane.
fn cumulative<T: Elem>(
    a: &ArrayD<T>,
    lanes: Lanes,
    prod: bool,
    exclusive: bool,
    reverse: bool,
) -> Result<Tensor> {
    let x = flat(a);
    let mut y = vec![T::default(); x.len()];
    let float = T::DTYPE.is_float();
    let unit = if prod { 1 } else { 0 };
    for (o, i) in lanes.each() {
        let mut idx: Vec<usize> = lanes.lane(o, i).collect();
        if reverse {
            idx.reverse();
        }
        // Floats are rounded to T after every step, as numpy accumulates
        // in the element type; integers wrap.
        let (mut fa, mut ia) = (unit as f64, unit as i128);
        for k in idx {
            let before = if float {
                T::from_f64(fa)
            } else {
                T::from_i128(ia)
            };
            if float {
                let v = x[k].to_f64();
                fa = T::from_f64(if prod { fa * v } else { fa + v }).to_f64();
            } else {
                let v = x[k].to_i128();
                // Truncating to T each step keeps i128 products from overflowing.
                ia = T::from_i128(if prod {
                    ia.wrapping_mul(v)
                } else {
                    ia.wrapping_add(v)
                })
                .to_i128();
            }
            let after = if float {
                T::from_f64(fa)
            } else {
                T::from_i128(ia)
            };
            y[k] = if exclusive { before } else { after };
        }
    }
    Tensor::from_vec(a.shape(), y)
}

// -------------------------------------------------------------------- TopK

/// K and the normalized axis of a TopK node over a tensor of `shape`.
fn topk_params(
    attrs: &Attrs,
    opset: i64,
    shape: &[usize],
    k: Option<&Tensor>,
) -> Result<(usize, usize)> {
    let k = if opset < 10 {
        attrs.req_int("k")?
    } else {
        let k =
            k.ok_or_else(|| crate::error::Error::Invalid("missing required input 1 (K)".into()))?;
        let v = k.to_i64_vec()?;
        ensure!(
            v.len() == 1,
            Invalid,
            "K must hold a single value, found shape {:?}",
            k.shape()
        );
        v[0]
    };
    ensure!(!shape.is_empty(), Invalid, "input must have rank >= 1");
    let ax = super::axis(attrs.int("axis", -1)?, shape.len())?;
    ensure!(
        (0..=shape[ax] as i64).contains(&k),
        Invalid,
        "K = {k} is out of range for axis of length {}",
        shape[ax]
    );
    Ok((k as usize, ax))
}

fn topk_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    numeric(x)?;
    let k = if c.opset < 10 {
        None
    } else {
        Some(c.req_const(1, "K")?)
    };
    let (k, ax) = topk_params(c.attrs, c.opset, &x.shape, k)?;
    let mut shape = x.shape.clone();
    shape[ax] = k;
    Ok(vec![
        ValueType::new(x.dtype, shape.clone()),
        ValueType::new(DType::I64, shape),
    ])
}

fn topk_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let (k, ax) = topk_params(c.attrs, c.opset, x.shape(), c.opt(1))?;
    let largest = c.attrs.int("largest", 1)? != 0;
    let lanes = Lanes::new(x.shape(), ax, false);
    let shape = &c.outputs[0].shape;
    let (vals, idx) = dispatch_num!(x, a => {
        let (v, i) = topk(a, lanes, k, largest);
        (Tensor::from_vec(shape, v)?, i)
    }, o => bail!(Invalid, "input must be numeric, found {}", o.dtype()));
    Ok(vec![vals, Tensor::from_vec(shape, idx)?])
}

/// The `k` extreme values of every lane and their indices, always sorted
/// (the spec leaves `sorted=0` order open); ties keep the lower index and
/// NaN ranks above every number, as in the reference's lexsort.
fn topk<T: Elem>(a: &ArrayD<T>, lanes: Lanes, k: usize, largest: bool) -> (Vec<T>, Vec<i64>) {
    let x = flat(a);
    let out_lanes = Lanes { n: k, ..lanes };
    let len = lanes.outer * k * lanes.inner;
    let (mut vals, mut idx) = (vec![T::default(); len], vec![0i64; len]);
    for (o, i) in lanes.each() {
        let mut lane: Vec<(usize, T)> = lanes.lane(o, i).map(|p| x[p]).enumerate().collect();
        lane.sort_by(|(i1, v1), (i2, v2)| {
            let by_value = if largest {
                cmp_nan_last(*v2, *v1)
            } else {
                cmp_nan_last(*v1, *v2)
            };
            by_value.then(i1.cmp(i2))
        });
        for ((j, v), p) in lane.into_iter().zip(out_lanes.lane(o, i)) {
            vals[p] = v;
            idx[p] = j as i64;
        }
    }
    (vals, idx)
}

// ---------------------------------------------------------------- register

macro_rules! reduce_op {
    ($t:ident, $name:literal, $kind:ident) => {
        $t.add(
            $name,
            |c| reduce_infer(c, Kind::$kind),
            |c| reduce_eval(c, Kind::$kind),
        )
    };
}

pub fn register(t: &mut OpTable) {
    reduce_op!(t, "ReduceSum", Sum);
    reduce_op!(t, "ReduceMean", Mean);
    reduce_op!(t, "ReduceMax", Max);
    reduce_op!(t, "ReduceMin", Min);
    reduce_op!(t, "ReduceProd", Prod);
    reduce_op!(t, "ReduceL1", L1);
    reduce_op!(t, "ReduceL2", L2);
    reduce_op!(t, "ReduceLogSum", LogSum);
    reduce_op!(t, "ReduceLogSumExp", LogSumExp);
    reduce_op!(t, "ReduceSumSquare", SumSquare);
    t.add("ArgMax", arg_infer, |c| arg_eval(c, true));
    t.add("ArgMin", arg_infer, |c| arg_eval(c, false));
    t.add("Softmax", softmax_infer, |c| softmax_eval(c, Norm::Softmax));
    t.add("LogSoftmax", softmax_infer, |c| {
        softmax_eval(c, Norm::LogSoftmax)
    });
    t.add("Hardmax", softmax_infer, |c| softmax_eval(c, Norm::Hardmax));
    t.add("CumSum", cumulative_infer, |c| cumulative_eval(c, false));
    t.add("CumProd", cumulative_infer, |c| cumulative_eval(c, true));
    t.add("TopK", topk_infer, topk_eval);
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ir::Attr;

    /// Infers and evaluates one node whose inputs are all known constants.
    pub(in crate::ops) fn run(
        op: &str,
        opset: i64,
        attrs: &[(&str, Attr)],
        inputs: &[Option<Tensor>],
    ) -> Result<Vec<Tensor>> {
        let attrs = Attrs(
            attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        );
        let tys: Vec<Option<ValueType>> = inputs
            .iter()
            .map(|t| t.as_ref().map(ValueType::of))
            .collect();
        let ctx = InferCtx {
            attrs: &attrs,
            opset,
            inputs: tys.iter().map(Option::as_ref).collect(),
            consts: inputs.iter().map(Option::as_ref).collect(),
            names: vec![None; inputs.len()],
            num_outputs: 1,
        };
        let out = (crate::ops::lookup(op)?.infer)(&ctx)?;
        crate::ops::eval(
            op,
            &attrs,
            opset,
            inputs.iter().map(Option::as_ref).collect(),
            &out,
        )
    }

    pub(in crate::ops) fn f32s(shape: &[usize], v: &[f32]) -> Option<Tensor> {
        Some(Tensor::from_vec(shape, v.to_vec()).unwrap())
    }

    pub(in crate::ops) fn i64s(v: &[i64]) -> Option<Tensor> {
        Some(Tensor::from_vec(&[v.len()], v.to_vec()).unwrap())
    }

    fn values(t: &Tensor) -> (Vec<usize>, Vec<f64>) {
        (t.shape().to_vec(), t.to_f64_vec())
    }

    #[test]
    fn axes_attribute_before_opset_13() {
        let x = f32s(&[2, 2], &[1., 2., 3., 4.]);
        let axes = ("axes", Attr::Ints(vec![1]));
        let y = run("ReduceSum", 11, &[axes, ("keepdims", Attr::Int(0))], &[x]).unwrap();
        assert_eq!(values(&y[0]), (vec![2], vec![3., 7.]));
    }

    #[test]
    fn axes_input_and_noop() {
        let x = f32s(&[2, 2], &[1., -2., 3., 4.]);
        let y = run("ReduceSum", 13, &[], &[x.clone(), i64s(&[-2])]).unwrap();
        assert_eq!(values(&y[0]), (vec![1, 2], vec![4., 2.]));
        let noop = [("noop_with_empty_axes", Attr::Int(1))];
        let y = run("ReduceL1", 18, &noop, &[x.clone(), i64s(&[])]).unwrap();
        assert_eq!(values(&y[0]), (vec![2, 2], vec![1., 2., 3., 4.]));
        assert!(run("ReduceMax", 18, &[], &[x, i64s(&[0, -2])]).is_err());
    }

    #[test]
    fn empty_reductions() {
        let x = f32s(&[0, 3], &[]);
        let red = |op| {
            run(
                op,
                13,
                &[("axes", Attr::Ints(vec![0]))],
                std::slice::from_ref(&x),
            )
            .unwrap()
        };
        assert_eq!(red("ReduceMax")[0].to_f64_vec(), vec![f64::NEG_INFINITY; 3]);
        assert_eq!(red("ReduceProd")[0].to_f64_vec(), vec![1.; 3]);
        assert_eq!(
            red("ReduceLogSumExp")[0].to_f64_vec(),
            vec![f64::NEG_INFINITY; 3]
        );
        let i = Some(Tensor::from_vec::<i8>(&[0], vec![]).unwrap());
        let y = run("ReduceMin", 18, &[("keepdims", Attr::Int(0))], &[i]).unwrap();
        assert_eq!(y[0], Tensor::scalar(127i8));
    }

    #[test]
    fn integer_mean_truncates_and_sum_wraps() {
        let x = Some(Tensor::from_vec::<u8>(&[3], vec![200, 100, 1]).unwrap());
        let y = run(
            "ReduceMean",
            18,
            &[("keepdims", Attr::Int(0))],
            std::slice::from_ref(&x),
        )
        .unwrap();
        assert_eq!(y[0], Tensor::scalar(15u8)); // (301 mod 256) / 3
        let y = run("ReduceSum", 18, &[("keepdims", Attr::Int(0))], &[x]).unwrap();
        assert_eq!(y[0], Tensor::scalar(45u8));
    }

    #[test]
    fn argmax_ties() {
        let x = f32s(&[4], &[1., 3., 3., 0.]);
        let y = run("ArgMax", 13, &[], std::slice::from_ref(&x)).unwrap();
        assert_eq!(y[0].to_f64_vec(), vec![1.]);
        let y = run(
            "ArgMax",
            13,
            &[("select_last_index", Attr::Int(1))],
            std::slice::from_ref(&x),
        )
        .unwrap();
        assert_eq!(y[0].to_f64_vec(), vec![2.]);
        let y = run("ArgMin", 13, &[("keepdims", Attr::Int(0))], &[x]).unwrap();
        assert_eq!(y[0], Tensor::scalar(3i64));
    }

    #[test]
    fn softmax_coerces_to_2d_before_opset_13() {
        let x = f32s(&[1, 2, 2], &[0.; 4]);
        let old = run("Softmax", 11, &[], std::slice::from_ref(&x)).unwrap();
        assert_eq!(old[0].to_f64_vec(), vec![0.25; 4]);
        let new = run("Softmax", 13, &[("axis", Attr::Int(1))], &[x]).unwrap();
        assert_eq!(new[0].to_f64_vec(), vec![0.5; 4]);
        let x = f32s(&[2, 2], &[1., 1., 0., 2.]);
        let h = run("Hardmax", 13, &[], &[x]).unwrap();
        assert_eq!(h[0].to_f64_vec(), vec![1., 0., 0., 1.]);
    }

    #[test]
    fn cumulative_variants() {
        let x = f32s(&[3], &[1., 2., 3.]);
        let axis = Some(Tensor::scalar(0i32));
        let flags = [("exclusive", Attr::Int(1)), ("reverse", Attr::Int(1))];
        let y = run("CumSum", 14, &flags, &[x.clone(), axis.clone()]).unwrap();
        assert_eq!(y[0].to_f64_vec(), vec![5., 3., 0.]);
        let y = run("CumProd", 26, &[("exclusive", Attr::Int(1))], &[x, axis]).unwrap();
        assert_eq!(y[0].to_f64_vec(), vec![1., 1., 2.]);
    }

    #[test]
    fn topk_breaks_ties_by_index() {
        let x = f32s(&[4], &[1., 3., 3., 2.]);
        let y = run("TopK", 11, &[], &[x.clone(), i64s(&[2])]).unwrap();
        assert_eq!(y[0].to_f64_vec(), vec![3., 3.]);
        assert_eq!(y[1].to_f64_vec(), vec![1., 2.]);
        let y = run(
            "TopK",
            11,
            &[("largest", Attr::Int(0))],
            &[x.clone(), i64s(&[2])],
        )
        .unwrap();
        assert_eq!(y[1].to_f64_vec(), vec![0., 3.]);
        let y = run("TopK", 9, &[("k", Attr::Int(1))], std::slice::from_ref(&x)).unwrap();
        assert_eq!(y[1].to_f64_vec(), vec![1.]);
        assert!(run("TopK", 11, &[], &[x, i64s(&[5])]).is_err());
    }
}
