//! Data movement ops: reshapes (Reshape, Flatten, Squeeze, Unsqueeze),
//! permutations (Transpose, DepthToSpace, SpaceToDepth), joins and splits
//! (Concat, Split), selections (Slice, Gather, GatherElements, GatherND,
//! Compress, Trilu), scatters (ScatterElements, Scatter, ScatterND) and ops
//! that grow a tensor (Expand, Tile, Pad, CenterCropPad, OneHot,
//! ReverseSequence).
//!
//! Each op whose output shape depends on attributes or input values has one
//! "plan" function, generic over `Ctx`, that both inference and evaluation
//! call: the shape inference promises and the shape evaluation produces come
//! from the same code. Most selections are expressed as a per-axis index map
//! (`remap`), so Slice, Tile, Pad, Gather, Compress and CenterCropPad share
//! one copy loop.

use std::borrow::Cow;

use ndarray::{ArrayD, Axis, IxDyn};

use super::elementwise::Arith;
use super::{EvalCtx, InferCtx, OpTable, broadcast, one};
use crate::error::{Error, Result};
use crate::ir::{Attrs, DType, Elem, Tensor, ValueType};
use crate::{dispatch, dispatch_num};

// ------------------------------------------------------------ shared helpers

/// What an op's plan reads of its node. In inference an input whose value
/// decides a shape must be a constant (`NeedsConstant` otherwise); in
/// evaluation it is the run-time value.
pub(super) trait Ctx {
    fn attrs(&self) -> &Attrs;
    fn opset(&self) -> i64;
    fn shape(&self, i: usize) -> Result<&[usize]>;
    /// The value of input `i`, `None` when the input is omitted.
    fn value(&self, i: usize, what: &str) -> Result<Option<&Tensor>>;
}

impl Ctx for InferCtx<'_> {
    fn attrs(&self) -> &Attrs {
        self.attrs
    }
    fn opset(&self) -> i64 {
        self.opset
    }
    fn shape(&self, i: usize) -> Result<&[usize]> {
        Ok(&self.input(i)?.shape)
    }
    fn value(&self, i: usize, what: &str) -> Result<Option<&Tensor>> {
        self.const_input(i, what)
    }
}

impl Ctx for EvalCtx<'_> {
    fn attrs(&self) -> &Attrs {
        self.attrs
    }
    fn opset(&self) -> i64 {
        self.opset
    }
    fn shape(&self, i: usize) -> Result<&[usize]> {
        Ok(self.input(i)?.shape())
    }
    fn value(&self, i: usize, _what: &str) -> Result<Option<&Tensor>> {
        Ok(self.opt(i))
    }
}

/// The values of an integer tensor, with an error naming `what`.
pub(super) fn int_values(t: &Tensor, what: &str) -> Result<Vec<i64>> {
    ensure!(
        t.dtype().is_int(),
        Invalid,
        "'{what}' must be an integer tensor, found {}",
        t.dtype()
    );
    t.to_i64_vec()
}

/// The values of integer input `i` (axes, starts, pads...); `None` when the
/// input is omitted.
pub(super) fn ints(c: &impl Ctx, i: usize, what: &str) -> Result<Option<Vec<i64>>> {
    c.value(i, what)?.map(|t| int_values(t, what)).transpose()
}

pub(super) fn req_ints(c: &impl Ctx, i: usize, what: &str) -> Result<Vec<i64>> {
    ints(c, i, what)?.ok_or_else(|| Error::Invalid(format!("missing required input {i} ({what})")))
}

/// An attribute list of ints that a later opset moved to an input.
fn attr_ints(attrs: &Attrs, name: &str) -> Result<Option<Vec<i64>>> {
    Ok(attrs.ints_opt(name)?.map(<[i64]>::to_vec))
}

fn req_attr_ints(attrs: &Attrs, name: &str) -> Result<Vec<i64>> {
    attr_ints(attrs, name)?
        .ok_or_else(|| Error::Invalid(format!("missing required attribute '{name}'")))
}

/// Normalizes a possibly negative axis against `rank`; unlike `ops::axis`
/// a rank-0 tensor has no axis at all.
pub(super) fn norm_axis(a: i64, rank: usize, what: &str) -> Result<usize> {
    let r = rank as i64;
    ensure!(
        (-r..r).contains(&a),
        Invalid,
        "{what} {a} is out of range for rank {rank}"
    );
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// Normalized axes, which must be distinct.
pub(super) fn norm_axes(axes: &[i64], rank: usize, what: &str) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(a, rank, what)?;
        ensure!(!out.contains(&n), Invalid, "{what} {axes:?} repeats axis {n}");
        out.push(n);
    }
    Ok(out)
}

/// A dimension or count given as i64, which must be non-negative.
pub(super) fn dim(v: i64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::Invalid(format!("{what} must be non-negative, found {v}")))
}

/// The element count of a shape computed from user values, which must not
/// overflow.
pub(super) fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::Invalid(format!("shape {shape:?} has too many elements")))
}

fn prod(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Row-major element strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// An index normalized against `dim` (negative counts from the end); out of
/// range is an error, never a panic.
pub(super) fn norm_index(v: i64, dim: usize, what: &str) -> Result<usize> {
    let d = dim as i64;
    let w = if v < 0 { v + d } else { v };
    ensure!(
        (0..d).contains(&w),
        Invalid,
        "{what} value {v} is out of range for a dimension of size {dim}"
    );
    Ok(w as usize)
}

/// An index tensor as i64 values in its own shape.
fn index_array(t: &Tensor, what: &str) -> Result<ArrayD<i64>> {
    ensure!(
        t.dtype().is_int(),
        Invalid,
        "'{what}' must be an integer tensor, found {}",
        t.dtype()
    );
    Ok(dispatch!(t, a => a.mapv(|x| x.to_i128() as i64)))
}

/// The elements of `a` in row-major order, borrowed when already so laid out.
pub(super) fn contiguous<T: Clone>(a: &ArrayD<T>) -> Cow<'_, [T]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().cloned().collect()),
    }
}

/// A per-axis index map: output position `o` on the axis reads input
/// position `map[o]`, or the fill value where it is `None`.
type AxisMap = Vec<Option<usize>>;

fn identity_map(d: usize) -> AxisMap {
    (0..d).map(Some).collect()
}

/// The row-major elements of the tensor whose element at `(o0, o1, ...)` is
/// `a[maps[0][o0], maps[1][o1], ...]`, or `fill` where any map gives `None`.
/// Callers guarantee `maps.len() == a.ndim()` and in-range positions.
fn remap<T: Elem>(a: &ArrayD<T>, maps: &[AxisMap], fill: T) -> Vec<T> {
    fn go<T: Copy>(src: &[T], offs: &[AxisMap], base: usize, fill: T, out: &mut Vec<T>) {
        let Some((first, rest)) = offs.split_first() else {
            out.push(src[base]);
            return;
        };
        let block: usize = rest.iter().map(Vec::len).product();
        for o in first {
            match o {
                Some(o) => go(src, rest, base + o, fill, out),
                None => out.extend(std::iter::repeat_n(fill, block)),
            }
        }
    }
    let src = contiguous(a);
    let offs: Vec<AxisMap> = maps
        .iter()
        .zip(strides(a.shape()))
        .map(|(m, s)| m.iter().map(|o| o.map(|o| o * s)).collect())
        .collect();
    let mut out = Vec::with_capacity(maps.iter().map(Vec::len).product());
    go(&src, &offs, 0, fill, &mut out);
    out
}

/// `remap` on a tensor; `fill` (a tensor of the same dtype, first element
/// used) defaults to zero / false.
fn remap_tensor(t: &Tensor, maps: &[AxisMap], fill: Option<&Tensor>, shape: &[usize]) -> Result<Tensor> {
    fn go<T: Elem>(a: &ArrayD<T>, maps: &[AxisMap], fill: Option<&Tensor>, shape: &[usize]) -> Result<Tensor> {
        let fill = match fill {
            Some(f) => f.typed::<T>()?.iter().next().copied().unwrap_or_default(),
            None => T::default(),
        };
        Tensor::from_vec(shape, remap(a, maps, fill))
    }
    dispatch!(t, a => go(a, maps, fill, shape))
}

fn permute(t: &Tensor, perm: &[usize]) -> Tensor {
    dispatch!(t, a => Tensor::from(a.view().permuted_axes(perm).as_standard_layout().into_owned()))
}

/// The input reshaped to the inferred output shape: the whole evaluation of
/// ops that only relabel dimensions.
fn relabel_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    Ok(vec![c.input(0)?.reshape(&c.outputs[0].shape)?])
}

fn same_dtype(a: DType, b: DType, what: &str) -> Result<()> {
    ensure!(a == b, Invalid, "'{what}' dtype {b} differs from the data dtype {a}");
    Ok(())
}

// ------------------------------------------------------------------ Reshape

/// The output shape of Reshape: 0 copies the input dimension at the same
/// index (unless `allowzero`), one -1 takes whatever is left.
pub(super) fn resolve_reshape(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &d) in spec.iter().enumerate() {
        let n = match d {
            -1 => {
                ensure!(infer_at.is_none(), Invalid, "shape {spec:?} has more than one -1");
                infer_at = Some(i);
                1
            }
            0 if !allowzero => *input.get(i).ok_or_else(|| {
                Error::Invalid(format!(
                    "shape {spec:?} copies dimension {i} (0) but the input has rank {}",
                    input.len()
                ))
            })?,
            d => dim(d, "a shape dimension other than -1")?,
        };
        out.push(n);
    }
    let total = prod(input);
    let known = numel(&out)?;
    if let Some(i) = infer_at {
        ensure!(
            known != 0 && total % known == 0,
            Invalid,
            "cannot infer the -1 in shape {spec:?} for input shape {input:?}"
        );
        out[i] = total / known;
    }
    ensure!(
        prod(&out) == total,
        Invalid,
        "cannot reshape {input:?} ({total} elements) to {spec:?}"
    );
    Ok(out)
}

fn reshape_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let spec = if c.opset < 5 {
        req_attr_ints(c.attrs, "shape")?
    } else {
        req_ints(c, 1, "shape")?
    };
    let allowzero = c.attrs.int("allowzero", 0)? != 0;
    let x = c.input(0)?;
    one(ValueType::new(x.dtype, resolve_reshape(&x.shape, &spec, allowzero)?))
}

fn flatten_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    let r = x.shape.len() as i64;
    let a = c.attrs.int("axis", 1)?;
    ensure!(
        (-r..=r).contains(&a),
        Invalid,
        "attribute 'axis' {a} is out of range for rank {r}"
    );
    let a = (if a < 0 { a + r } else { a }) as usize;
    one(ValueType::new(
        x.dtype,
        vec![prod(&x.shape[..a]), prod(&x.shape[a..])],
    ))
}

/// Squeeze's axes: an attribute before opset 13, an input after; without
/// them every size-1 dimension goes.
fn squeeze_shape(c: &impl Ctx) -> Result<Vec<usize>> {
    let shape = c.shape(0)?;
    let axes = if c.opset() < 13 {
        attr_ints(c.attrs(), "axes")?.filter(|a| !a.is_empty())
    } else {
        ints(c, 1, "axes")?
    };
    let Some(axes) = axes else {
        return Ok(shape.iter().copied().filter(|&d| d != 1).collect());
    };
    let axes = norm_axes(&axes, shape.len(), "axis")?;
    for &a in &axes {
        ensure!(
            shape[a] == 1,
            Invalid,
            "cannot squeeze axis {a}: its size is {}, not 1",
            shape[a]
        );
    }
    Ok(shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect())
}

fn unsqueeze_shape(c: &impl Ctx) -> Result<Vec<usize>> {
    let shape = c.shape(0)?;
    let axes = if c.opset() < 13 {
        req_attr_ints(c.attrs(), "axes")?
    } else {
        req_ints(c, 1, "axes")?
    };
    let rank = shape.len() + axes.len();
    let axes = norm_axes(&axes, rank, "axis")?;
    let mut dims = shape.iter();
    Ok((0..rank)
        .map(|i| {
            if axes.contains(&i) {
                1
            } else {
                dims.next().copied().unwrap_or(1)
            }
        })
        .collect())
}

fn squeeze_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    one(ValueType::new(c.input(0)?.dtype, squeeze_shape(c)?))
}

fn unsqueeze_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    one(ValueType::new(c.input(0)?.dtype, unsqueeze_shape(c)?))
}

// ---------------------------------------------------------------- Transpose

fn perm(c: &impl Ctx) -> Result<Vec<usize>> {
    let r = c.shape(0)?.len();
    let Some(p) = c.attrs().ints_opt("perm")? else {
        return Ok((0..r).rev().collect());
    };
    let bad = || Error::Invalid(format!("attribute 'perm' {p:?} is not a permutation of 0..{r}"));
    if p.len() != r {
        return Err(bad());
    }
    let mut seen = vec![false; r];
    for &v in p {
        let slot = usize::try_from(v).ok().and_then(|v| seen.get_mut(v)).ok_or_else(bad)?;
        if std::mem::replace(slot, true) {
            return Err(bad());
        }
    }
    Ok(p.iter().map(|&v| v as usize).collect())
}

fn transpose_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    let shape = perm(c)?.iter().map(|&p| x.shape[p]).collect::<Vec<_>>();
    one(ValueType::new(x.dtype, shape))
}

fn transpose_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    Ok(vec![permute(c.input(0)?, &perm(c)?)])
}

// ------------------------------------------- DepthToSpace and SpaceToDepth

/// The 6-D view, its permutation and the output shape of a depth/space
/// rearrangement (the numpy formulation in the ONNX spec).
struct Rearrange {
    tmp: Vec<usize>,
    perm: [usize; 6],
    out: Vec<usize>,
}

fn blocks(c: &impl Ctx) -> Result<(usize, usize, usize, usize, usize, bool)> {
    let s = c.shape(0)?;
    ensure!(s.len() == 4, Invalid, "input must be 4-D (N,C,H,W), found shape {s:?}");
    let b = c.attrs().req_int("blocksize")?;
    ensure!(b > 0, Invalid, "attribute 'blocksize' must be positive, found {b}");
    let crd = match c.attrs().string("mode", "DCR")? {
        "DCR" => false,
        "CRD" => true,
        m => bail!(Invalid, "attribute 'mode' must be DCR or CRD, found {m:?}"),
    };
    Ok((s[0], s[1], s[2], s[3], b as usize, crd))
}

fn depth_to_space(c: &impl Ctx) -> Result<Rearrange> {
    let (n, ch, h, w, b, crd) = blocks(c)?;
    let bb = b.checked_mul(b).filter(|&bb| ch % bb == 0).ok_or_else(|| {
        Error::Invalid(format!("channels {ch} are not a multiple of blocksize² ({b}²)"))
    })?;
    let c2 = ch / bb;
    let out = vec![n, c2, numel(&[h, b])?, numel(&[w, b])?];
    Ok(if crd {
        Rearrange { tmp: vec![n, c2, b, b, h, w], perm: [0, 1, 4, 2, 5, 3], out }
    } else {
        Rearrange { tmp: vec![n, b, b, c2, h, w], perm: [0, 3, 4, 1, 5, 2], out }
    })
}

fn space_to_depth(c: &impl Ctx) -> Result<Rearrange> {
    let (n, ch, h, w, b, crd) = blocks(c)?;
    ensure!(
        h % b == 0 && w % b == 0,
        Invalid,
        "height {h} and width {w} must be multiples of blocksize {b}"
    );
    let out = vec![n, numel(&[ch, b, b])?, h / b, w / b];
    let tmp = vec![n, ch, h / b, b, w / b, b];
    let perm = if crd { [0, 1, 3, 5, 2, 4] } else { [0, 3, 5, 1, 2, 4] };
    Ok(Rearrange { tmp, perm, out })
}

fn rearrange_eval(c: &EvalCtx, r: Rearrange) -> Result<Vec<Tensor>> {
    let t = permute(&c.input(0)?.reshape(&r.tmp)?, &r.perm);
    Ok(vec![t.reshape(&r.out)?])
}

// ------------------------------------------------------------ Concat, Split

fn concat_axis(c: &impl Ctx, rank: usize) -> Result<usize> {
    let a = if c.opset() < 4 {
        c.attrs().int("axis", 1)?
    } else {
        c.attrs().req_int("axis")?
    };
    norm_axis(a, rank, "attribute 'axis'")
}

fn concat_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let tys: Vec<&ValueType> = c.inputs.iter().flatten().copied().collect();
    let first = *tys.first().ok_or_else(|| Error::Invalid("needs at least one input".into()))?;
    let ax = concat_axis(c, first.shape.len())?;
    let mut shape = first.shape.clone();
    shape[ax] = 0;
    for (i, t) in tys.iter().enumerate() {
        same_dtype(first.dtype, t.dtype, &format!("input {i}"))?;
        let fits = t.shape.len() == first.shape.len()
            && (0..t.shape.len()).all(|d| d == ax || t.shape[d] == first.shape[d]);
        ensure!(
            fits,
            Invalid,
            "input {i} has shape {:?}, which does not match {:?} outside axis {ax}",
            t.shape,
            first.shape
        );
        shape[ax] += t.shape[ax];
    }
    one(ValueType::new(first.dtype, shape))
}

fn concat_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(_: &ArrayD<T>, ins: &[&Tensor], ax: usize) -> Result<Tensor> {
        let views = ins
            .iter()
            .map(|t| t.typed::<T>().map(|a| a.view()))
            .collect::<Result<Vec<_>>>()?;
        ndarray::concatenate(Axis(ax), &views)
            .map(Tensor::from)
            .map_err(|e| Error::Invalid(format!("cannot concatenate: {e}")))
    }
    let ins: Vec<&Tensor> = c.inputs.iter().flatten().copied().collect();
    let ax = concat_axis(c, c.outputs[0].shape.len())?;
    Ok(vec![dispatch!(c.input(0)?, a => go(a, &ins, ax)?)])
}

/// Split's axis and part sizes. `split` is an attribute before opset 13 and
/// an input after; without it the parts are equal (opset 18's `num_outputs`
/// or the node's output count), the last one smaller when uneven.
fn split_plan(c: &impl Ctx, n_out: usize) -> Result<(usize, Vec<usize>)> {
    let shape = c.shape(0)?;
    let ax = norm_axis(c.attrs().int("axis", 0)?, shape.len(), "attribute 'axis'")?;
    let d = shape[ax];
    let split = if c.opset() < 13 {
        attr_ints(c.attrs(), "split")?.filter(|s| !s.is_empty())
    } else {
        ints(c, 1, "split")?
    };
    if let Some(s) = split {
        ensure!(
            s.len() == n_out,
            Invalid,
            "'split' has {} sizes for {n_out} outputs",
            s.len()
        );
        let sizes = s.iter().map(|&v| dim(v, "'split'")).collect::<Result<Vec<_>>>()?;
        let sum = sizes.iter().try_fold(0usize, |a, &b| a.checked_add(b));
        ensure!(
            sum == Some(d),
            Invalid,
            "'split' {s:?} does not add up to the axis size {d}"
        );
        return Ok((ax, sizes));
    }
    if c.opset() >= 18
        && let Some(k) = c.attrs().int_opt("num_outputs")?
    {
        ensure!(
            k == n_out as i64,
            Invalid,
            "attribute 'num_outputs' is {k} but the node has {n_out} outputs"
        );
    }
    ensure!(n_out > 0, Invalid, "needs at least one output");
    if d % n_out == 0 {
        return Ok((ax, vec![d / n_out; n_out]));
    }
    let part = d / n_out + 1;
    let last = d.checked_sub(part * (n_out - 1)).ok_or_else(|| {
        Error::Invalid(format!("cannot split an axis of size {d} into {n_out} parts"))
    })?;
    let mut sizes = vec![part; n_out - 1];
    sizes.push(last);
    Ok((ax, sizes))
}

fn split_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    let (ax, sizes) = split_plan(c, c.num_outputs)?;
    Ok(sizes
        .into_iter()
        .map(|s| {
            let mut shape = x.shape.clone();
            shape[ax] = s;
            ValueType::new(x.dtype, shape)
        })
        .collect())
}

fn split_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let t = c.input(0)?;
    let (ax, sizes) = split_plan(c, c.outputs.len())?;
    let mut pos = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for s in sizes {
        let range = ndarray::Slice::from(pos..pos + s);
        out.push(dispatch!(t, a => Tensor::from(
            a.slice_axis(Axis(ax), range).as_standard_layout().into_owned()
        )));
        pos += s;
    }
    Ok(out)
}

// -------------------------------------------------------------------- Slice

/// One axis of a slice: `len` elements from `start`, `step` apart.
#[derive(Clone, Copy, Debug, PartialEq)]
struct AxisSlice {
    start: i64,
    step: i64,
    len: usize,
}

/// Effective start, step and length on an axis of size `d`, clamped as the
/// ONNX spec says: starts to `[0, d]` (`[0, d-1]` stepping backwards), ends
/// to `[0, d]` (`[-1, d-1]` stepping backwards).
fn clamp_slice(d: usize, start: i64, end: i64, step: i64) -> AxisSlice {
    if d == 0 {
        return AxisSlice { start: 0, step, len: 0 };
    }
    let n = d as i64;
    let adjust = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (start, end) = (adjust(start), adjust(end));
    let (start, span, stride) = if step > 0 {
        let (s, e) = (start.clamp(0, n), end.clamp(0, n));
        (s, e - s, step.unsigned_abs())
    } else {
        let (s, e) = (start.clamp(0, n - 1), end.clamp(-1, n - 1));
        (s, s - e, step.unsigned_abs())
    };
    let len = if span > 0 { (span as u64).div_ceil(stride) as usize } else { 0 };
    AxisSlice { start, step, len }
}

/// Slice's parameters: attributes `starts`/`ends`/`axes` before opset 10,
/// inputs (plus `steps`) from 10.
fn slice_plan(c: &impl Ctx) -> Result<Vec<AxisSlice>> {
    let shape = c.shape(0)?;
    let (starts, ends, axes, steps) = if c.opset() < 10 {
        let a = c.attrs();
        let axes = attr_ints(a, "axes")?.filter(|x| !x.is_empty());
        (req_attr_ints(a, "starts")?, req_attr_ints(a, "ends")?, axes, None)
    } else {
        (
            req_ints(c, 1, "starts")?,
            req_ints(c, 2, "ends")?,
            ints(c, 3, "axes")?,
            ints(c, 4, "steps")?,
        )
    };
    let n = starts.len();
    ensure!(ends.len() == n, Invalid, "'starts' has {n} values but 'ends' {}", ends.len());
    let axes = match axes {
        Some(a) => {
            ensure!(a.len() == n, Invalid, "'axes' has {} values for {n} starts", a.len());
            norm_axes(&a, shape.len(), "axis")?
        }
        None => {
            ensure!(n <= shape.len(), Invalid, "{n} starts for rank {}", shape.len());
            (0..n).collect()
        }
    };
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    ensure!(steps.len() == n, Invalid, "'steps' has {} values for {n} starts", steps.len());
    let mut plan: Vec<AxisSlice> = shape
        .iter()
        .map(|&d| AxisSlice { start: 0, step: 1, len: d })
        .collect();
    for i in 0..n {
        ensure!(steps[i] != 0, Invalid, "'steps' must not contain 0");
        plan[axes[i]] = clamp_slice(shape[axes[i]], starts[i], ends[i], steps[i]);
    }
    Ok(plan)
}

fn slice_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let shape = slice_plan(c)?.iter().map(|s| s.len).collect::<Vec<_>>();
    one(ValueType::new(c.input(0)?.dtype, shape))
}

fn slice_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let maps: Vec<AxisMap> = slice_plan(c)?
        .iter()
        .map(|s| (0..s.len).map(|i| Some((s.start + i as i64 * s.step) as usize)).collect())
        .collect();
    Ok(vec![remap_tensor(c.input(0)?, &maps, None, &c.outputs[0].shape)?])
}

// ------------------------------------------------------------------- Gather

fn gather_axis(c: &impl Ctx) -> Result<usize> {
    norm_axis(c.attrs().int("axis", 0)?, c.shape(0)?.len(), "attribute 'axis'")
}

fn indices_type<'a>(c: &InferCtx<'a>, i: usize) -> Result<&'a ValueType> {
    let t = c.input(i)?;
    ensure!(t.dtype.is_int(), Invalid, "'indices' must be integers, found {}", t.dtype);
    Ok(t)
}

fn gather_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, idx) = (c.input(0)?, indices_type(c, 1)?);
    let ax = gather_axis(c)?;
    let shape = [&x.shape[..ax], &idx.shape, &x.shape[ax + 1..]].concat();
    one(ValueType::new(x.dtype, shape))
}

fn gather_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let ax = gather_axis(c)?;
    let d = x.shape()[ax];
    let mut maps: Vec<AxisMap> = x.shape().iter().map(|&d| identity_map(d)).collect();
    maps[ax] = int_values(c.input(1)?, "indices")?
        .into_iter()
        .map(|i| norm_index(i, d, "indices").map(Some))
        .collect::<Result<_>>()?;
    Ok(vec![remap_tensor(x, &maps, None, &c.outputs[0].shape)?])
}

/// GatherElements and ScatterElements index one axis of `data` with a
/// tensor of data's rank; elsewhere the index position is the data position.
fn elements_axis(c: &InferCtx, idx: &ValueType) -> Result<usize> {
    let x = c.input(0)?;
    let ax = gather_axis(c)?;
    let fits = idx.shape.len() == x.shape.len()
        && (0..x.shape.len()).all(|d| d == ax || idx.shape[d] <= x.shape[d]);
    ensure!(
        fits,
        Invalid,
        "indices shape {:?} does not fit data shape {:?} outside axis {ax}",
        idx.shape,
        x.shape
    );
    Ok(ax)
}

fn gather_elements_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let idx = indices_type(c, 1)?;
    elements_axis(c, idx)?;
    one(ValueType::new(c.input(0)?.dtype, idx.shape.clone()))
}

fn gather_elements_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(a: &ArrayD<T>, idx: &ArrayD<i64>, ax: usize) -> Result<Tensor> {
        let d = a.shape()[ax];
        let mut out = Vec::with_capacity(idx.len());
        for (mut pos, &i) in idx.indexed_iter() {
            pos[ax] = norm_index(i, d, "indices")?;
            out.push(a[&pos]);
        }
        Tensor::from_vec(idx.shape(), out)
    }
    let idx = index_array(c.input(1)?, "indices")?;
    let ax = gather_axis(c)?;
    Ok(vec![dispatch!(c.input(0)?, a => go(a, &idx, ax)?)])
}

/// GatherND's index depth `k` and output shape.
fn gather_nd_plan(data: &[usize], idx: &[usize], b: i64) -> Result<(usize, Vec<usize>)> {
    let (r, q) = (data.len(), idx.len());
    let b = dim(b, "attribute 'batch_dims'")?;
    ensure!(
        b < r.min(q),
        Invalid,
        "attribute 'batch_dims' {b} must be less than the data rank {r} and the indices rank {q}"
    );
    ensure!(
        data[..b] == idx[..b],
        Invalid,
        "batch dimensions differ: data {data:?}, indices {idx:?}"
    );
    let k = idx[q - 1];
    ensure!(
        k <= r - b,
        Invalid,
        "indices tuples of length {k} exceed the data rank {r} minus batch_dims {b}"
    );
    Ok((k, [&idx[..q - 1], &data[b + k..]].concat()))
}

fn gather_nd_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, idx) = (c.input(0)?, indices_type(c, 1)?);
    let (_, shape) = gather_nd_plan(&x.shape, &idx.shape, c.attrs.int("batch_dims", 0)?)?;
    one(ValueType::new(x.dtype, shape))
}

fn gather_nd_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(a: &ArrayD<T>, idx: &[i64], idx_shape: &[usize], b: usize, k: usize, out_shape: &[usize]) -> Result<Tensor> {
        let data = a.shape();
        let src = contiguous(a);
        let per_batch = prod(&idx_shape[b..idx_shape.len() - 1]);
        let batch_size = prod(&data[b..]);
        let block = prod(&data[b + k..]);
        let st = strides(&data[b..]);
        let mut out = Vec::with_capacity(prod(out_shape));
        for bi in 0..prod(&data[..b]) {
            for t in 0..per_batch {
                let tuple = &idx[(bi * per_batch + t) * k..][..k];
                let mut off = bi * batch_size;
                for (j, &i) in tuple.iter().enumerate() {
                    off += norm_index(i, data[b + j], "indices")? * st[j];
                }
                out.extend_from_slice(&src[off..off + block]);
            }
        }
        Tensor::from_vec(out_shape, out)
    }
    let (x, it) = (c.input(0)?, c.input(1)?);
    let b = c.attrs.int("batch_dims", 0)?;
    let (k, shape) = gather_nd_plan(x.shape(), it.shape(), b)?;
    let idx = int_values(it, "indices")?;
    let b = b as usize;
    Ok(vec![dispatch!(x, a => go(a, &idx, it.shape(), b, k, &shape)?)])
}

// ------------------------------------------------------------------ Scatter

#[derive(Clone, Copy, PartialEq)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

fn reduction(attrs: &Attrs) -> Result<Reduction> {
    Ok(match attrs.string("reduction", "none")? {
        "none" => Reduction::None,
        "add" => Reduction::Add,
        "mul" => Reduction::Mul,
        "max" => Reduction::Max,
        "min" => Reduction::Min,
        r => bail!(Invalid, "attribute 'reduction' must be none, add, mul, max or min, found {r:?}"),
    })
}

fn keep_update<T>(_: T, u: T) -> T {
    u
}

/// The combining function of a reduction; max and min propagate NaN, as
/// numpy's maximum and minimum do.
fn reducer<T: Arith>(r: Reduction) -> fn(T, T) -> T {
    match r {
        Reduction::None => keep_update,
        Reduction::Add => T::add,
        Reduction::Mul => T::mul,
        Reduction::Max => |x, u| if x != x || x >= u { x } else { u },
        Reduction::Min => |x, u| if x != x || x <= u { x } else { u },
    }
}

/// Applies `f` with the reducer `reduction` asks for; reductions other than
/// none need numeric data.
macro_rules! with_reducer {
    ($data:expr, $red:expr, $a:ident, $f:ident => $body:expr) => {
        match $red {
            Reduction::None => dispatch!($data, $a => { let $f = keep_update; $body }),
            r => dispatch_num!($data, $a => { let $f = reducer(r); $body },
                other => bail!(Invalid, "reductions need numeric data, found {}", other.dtype())),
        }
    };
}

fn scatter_elements_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, idx, upd) = (c.input(0)?, indices_type(c, 1)?, c.input(2)?);
    elements_axis(c, idx)?;
    same_dtype(x.dtype, upd.dtype, "updates")?;
    ensure!(
        upd.shape == idx.shape,
        Invalid,
        "updates shape {:?} differs from indices shape {:?}",
        upd.shape,
        idx.shape
    );
    reduction(c.attrs)?;
    one(x.clone())
}

fn scatter_elements_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(a: &ArrayD<T>, idx: &ArrayD<i64>, upd: &Tensor, ax: usize, f: fn(T, T) -> T) -> Result<Tensor> {
        let d = a.shape()[ax];
        let mut out = a.as_standard_layout().into_owned();
        for ((mut pos, &i), &u) in idx.indexed_iter().zip(upd.typed::<T>()?.iter()) {
            pos[ax] = norm_index(i, d, "indices")?;
            let slot = &mut out[&pos];
            *slot = f(*slot, u);
        }
        Ok(T::wrap(out))
    }
    let idx = index_array(c.input(1)?, "indices")?;
    let upd = c.input(2)?;
    let ax = gather_axis(c)?;
    let red = reduction(c.attrs)?;
    Ok(vec![with_reducer!(c.input(0)?, red, a, f => go(a, &idx, upd, ax, f)?)])
}

fn scatter_nd_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, idx, upd) = (c.input(0)?, indices_type(c, 1)?, c.input(2)?);
    same_dtype(x.dtype, upd.dtype, "updates")?;
    let q = idx.shape.len();
    ensure!(q >= 1, Invalid, "indices must have rank >= 1");
    let k = idx.shape[q - 1];
    ensure!(
        k <= x.shape.len(),
        Invalid,
        "indices tuples of length {k} exceed the data rank {}",
        x.shape.len()
    );
    let want = [&idx.shape[..q - 1], &x.shape[k..]].concat();
    ensure!(
        upd.shape == want,
        Invalid,
        "updates shape {:?} should be {want:?}",
        upd.shape
    );
    reduction(c.attrs)?;
    one(x.clone())
}

fn scatter_nd_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(a: &ArrayD<T>, it: &Tensor, upd: &Tensor, f: fn(T, T) -> T) -> Result<Tensor> {
        let data = a.shape();
        let (tuples, k) = match it.shape().split_last() {
            Some((&k, outer)) => (prod(outer), k),
            None => bail!(Invalid, "indices must have rank >= 1"),
        };
        let idx = int_values(it, "indices")?;
        let upd = contiguous(upd.typed::<T>()?);
        let block = prod(&data[k..]);
        let st = strides(data);
        let mut out = contiguous(a).into_owned();
        for t in 0..tuples {
            let mut off = 0;
            for (j, &i) in idx[t * k..][..k].iter().enumerate() {
                off += norm_index(i, data[j], "indices")? * st[j];
            }
            let dst = &mut out[off..off + block];
            for (o, &u) in dst.iter_mut().zip(&upd[t * block..(t + 1) * block]) {
                *o = f(*o, u);
            }
        }
        Tensor::from_vec(data, out)
    }
    let (it, upd) = (c.input(1)?, c.input(2)?);
    let red = reduction(c.attrs)?;
    Ok(vec![with_reducer!(c.input(0)?, red, a, f => go(a, it, upd, f)?)])
}

// ------------------------------------------------------ Expand, Tile, Pad

fn expand_shape(c: &impl Ctx) -> Result<Vec<usize>> {
    let shape = req_ints(c, 1, "shape")?
        .into_iter()
        .map(|d| dim(d, "'shape'"))
        .collect::<Result<Vec<_>>>()?;
    let out = broadcast::shape(&[c.shape(0)?, &shape])?;
    numel(&out)?;
    Ok(out)
}

fn expand_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    one(ValueType::new(c.input(0)?.dtype, expand_shape(c)?))
}

fn expand_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let out = &c.outputs[0].shape;
    Ok(vec![dispatch!(c.input(0)?, a => Tensor::from(broadcast::view(a, out)?.as_standard_layout().into_owned()))])
}

fn tile_repeats(c: &impl Ctx) -> Result<Vec<usize>> {
    let shape = c.shape(0)?;
    let reps = req_ints(c, 1, "repeats")?;
    ensure!(
        reps.len() == shape.len(),
        Invalid,
        "'repeats' has {} values for rank {}",
        reps.len(),
        shape.len()
    );
    reps.into_iter().map(|r| dim(r, "'repeats'")).collect()
}

fn tile_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    let shape = x
        .shape
        .iter()
        .zip(tile_repeats(c)?)
        .map(|(&d, r)| d.checked_mul(r))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Invalid("tiled shape overflows".into()))?;
    numel(&shape)?;
    one(ValueType::new(x.dtype, shape))
}

fn tile_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let out = &c.outputs[0].shape;
    let maps: Vec<AxisMap> = x
        .shape()
        .iter()
        .zip(out)
        .map(|(&d, &o)| (0..o).map(|j| Some(j % d)).collect())
        .collect();
    Ok(vec![remap_tensor(x, &maps, None, out)?])
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

struct PadPlan {
    mode: PadMode,
    /// (begin, end) per axis; negative values remove elements.
    pads: Vec<(i64, i64)>,
    out: Vec<usize>,
}

/// Pad's parameters: attributes `pads` (`paddings` in opset 1) and `value`
/// before opset 11, inputs `pads`, `constant_value` and (from 18) `axes`
/// after.
fn pad_plan(c: &impl Ctx) -> Result<PadPlan> {
    let shape = c.shape(0)?;
    let mode = match c.attrs().string("mode", "constant")? {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        m => bail!(Invalid, "attribute 'mode' must be constant, reflect, edge or wrap, found {m:?}"),
    };
    let (raw, axes) = if c.opset() < 11 {
        let name = if c.opset() < 2 { "paddings" } else { "pads" };
        (req_attr_ints(c.attrs(), name)?, None)
    } else {
        (req_ints(c, 1, "pads")?, ints(c, 3, "axes")?)
    };
    let axes = match axes {
        Some(a) => norm_axes(&a, shape.len(), "axis")?,
        None => (0..shape.len()).collect(),
    };
    let n = axes.len();
    ensure!(
        raw.len() == 2 * n,
        Invalid,
        "'pads' has {} values, {} expected (2 per axis)",
        raw.len(),
        2 * n
    );
    let mut pads = vec![(0, 0); shape.len()];
    for (i, &a) in axes.iter().enumerate() {
        pads[a] = (raw[i], raw[n + i]);
    }
    let mut out = Vec::with_capacity(shape.len());
    for (&d, &(b, e)) in shape.iter().zip(&pads) {
        let o = d as i128 + b as i128 + e as i128;
        let o = usize::try_from(o).map_err(|_| {
            Error::Invalid(format!("pads ({b}, {e}) on an axis of size {d} give size {o}"))
        })?;
        ensure!(
            mode == PadMode::Constant || d > 0 || o == 0,
            Invalid,
            "cannot pad an empty axis in {mode:?} mode"
        );
        out.push(o);
    }
    numel(&out)?;
    Ok(PadPlan { mode, pads, out })
}

/// Where output position `o` of a padded axis reads from (numpy.pad's
/// semantics, including reflections longer than the axis).
fn pad_source(o: usize, begin: i64, d: usize, mode: PadMode) -> Option<usize> {
    let s = o as i128 - begin as i128;
    let n = d as i128;
    if (0..n).contains(&s) {
        return Some(s as usize);
    }
    let s = match mode {
        PadMode::Constant => return None,
        PadMode::Edge => s.clamp(0, n - 1),
        PadMode::Wrap => s.rem_euclid(n),
        PadMode::Reflect if n == 1 => 0,
        PadMode::Reflect => {
            let period = 2 * (n - 1);
            let m = s.rem_euclid(period);
            if m >= n { period - m } else { m }
        }
    };
    Some(s as usize)
}

fn pad_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    if c.opset >= 11 && c.has(2) {
        same_dtype(x.dtype, c.input(2)?.dtype, "constant_value")?;
    }
    one(ValueType::new(x.dtype, pad_plan(c)?.out))
}

fn pad_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let plan = pad_plan(c)?;
    let maps: Vec<AxisMap> = (0..plan.out.len())
        .map(|a| {
            let (begin, d) = (plan.pads[a].0, x.shape()[a]);
            (0..plan.out[a]).map(|o| pad_source(o, begin, d, plan.mode)).collect()
        })
        .collect();
    let attr_value;
    let fill = if c.opset < 11 {
        attr_value = Tensor::full(x.dtype(), &[], c.attrs.float("value", 0.0)? as f64);
        Some(&attr_value)
    } else {
        c.opt(2)
    };
    Ok(vec![remap_tensor(x, &maps, fill, &plan.out)?])
}

/// CenterCropPad's target size per axis (`axes` attribute, all by default).
fn center_crop_pad_plan(c: &impl Ctx) -> Result<Vec<usize>> {
    let shape = c.shape(0)?;
    let target = req_ints(c, 1, "shape")?;
    let axes = match c.attrs().ints_opt("axes")? {
        Some(a) => norm_axes(a, shape.len(), "axis")?,
        None => (0..shape.len()).collect(),
    };
    ensure!(
        target.len() == axes.len(),
        Invalid,
        "'shape' has {} values for {} axes",
        target.len(),
        axes.len()
    );
    let mut out = shape.to_vec();
    for (&a, &t) in axes.iter().zip(&target) {
        out[a] = dim(t, "'shape'")?;
    }
    numel(&out)?;
    Ok(out)
}

fn center_crop_pad_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    one(ValueType::new(c.input(0)?.dtype, center_crop_pad_plan(c)?))
}

fn center_crop_pad_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let out = center_crop_pad_plan(c)?;
    // Both cropping and padding centre the data, with the odd element at
    // the end.
    let maps: Vec<AxisMap> = x
        .shape()
        .iter()
        .zip(&out)
        .map(|(&d, &t)| {
            if t <= d {
                (0..t).map(|o| Some(o + (d - t) / 2)).collect()
            } else {
                let before = (t - d) / 2;
                (0..t).map(|o| o.checked_sub(before).filter(|&s| s < d)).collect()
            }
        })
        .collect();
    Ok(vec![remap_tensor(x, &maps, None, &out)?])
}

// ---------------------------------------------------------- Trilu, OneHot

fn trilu_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    ensure!(x.shape.len() >= 2, Invalid, "input must have rank >= 2, found {}", x.shape.len());
    if c.has(1) {
        ensure!(c.input(1)?.dtype.is_int(), Invalid, "'k' must be an integer");
    }
    one(x.clone())
}

fn trilu_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(a: &ArrayD<T>, upper: bool, k: i64) -> Result<Tensor> {
        let r = a.ndim();
        let (rows, cols) = (a.shape()[r - 2], a.shape()[r - 1]);
        let mut v = contiguous(a).into_owned();
        for (p, x) in v.iter_mut().enumerate() {
            let (i, j) = (((p / cols) % rows) as i64, (p % cols) as i64);
            let keep = if upper { j - i >= k } else { j - i <= k };
            if !keep {
                *x = T::default();
            }
        }
        Tensor::from_vec(a.shape(), v)
    }
    let upper = c.attrs.int("upper", 1)? != 0;
    let k = match c.opt(1) {
        Some(t) => {
            let v = int_values(t, "k")?;
            ensure!(v.len() == 1, Invalid, "'k' must hold one value, found {}", v.len());
            v[0]
        }
        None => 0,
    };
    Ok(vec![dispatch!(c.input(0)?, a => go(a, upper, k)?)])
}

/// OneHot's depth and the axis of the new dimension.
fn one_hot_plan(c: &impl Ctx) -> Result<(usize, usize)> {
    let rank = c.shape(0)?.len();
    let depth = c
        .value(1, "depth")?
        .ok_or_else(|| Error::Invalid("missing required input 1 (depth)".into()))?;
    ensure!(depth.dtype() != DType::Bool, Invalid, "'depth' must be numeric");
    // Non-integer depths are cast to int64, as the spec says.
    let depth = depth.scalar_f64()?;
    ensure!(depth >= 0.0, Invalid, "'depth' must be non-negative, found {depth}");
    let ax = norm_axis(c.attrs().int("axis", -1)?, rank + 1, "attribute 'axis'")?;
    Ok((depth as usize, ax))
}

fn one_hot_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (idx, vals) = (c.input(0)?, c.input(2)?);
    ensure!(idx.dtype != DType::Bool, Invalid, "'indices' must be numeric");
    ensure!(
        vals.numel() == 2 && vals.shape.len() == 1,
        Invalid,
        "'values' must be [off_value, on_value], found shape {:?}",
        vals.shape
    );
    let (depth, ax) = one_hot_plan(c)?;
    let mut shape = idx.shape.clone();
    shape.insert(ax, depth);
    numel(&shape)?;
    one(ValueType::new(vals.dtype, shape))
}

fn one_hot_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(vals: &ArrayD<T>, idx: &[i64], inner: usize, depth: usize, shape: &[usize]) -> Result<Tensor> {
        let v = contiguous(vals);
        let [off, on] = v[..] else {
            bail!(Invalid, "'values' must hold [off_value, on_value], found {} values", v.len());
        };
        let mut out = vec![off; prod(shape)];
        let d = depth as i64;
        for (p, &i) in idx.iter().enumerate() {
            // In-range negative indices count from the end; others stay off.
            let i = if i < 0 { i + d } else { i };
            if (0..d).contains(&i) {
                out[((p / inner) * depth + i as usize) * inner + p % inner] = on;
            }
        }
        Tensor::from_vec(shape, out)
    }
    let (depth, ax) = one_hot_plan(c)?;
    let it = c.input(0)?;
    let idx: Vec<i64> = dispatch!(it, a => a.iter().map(|x| x.to_i128() as i64).collect());
    let inner = prod(&it.shape()[ax..]);
    let shape = &c.outputs[0].shape;
    Ok(vec![dispatch!(c.input(2)?, a => go(a, &idx, inner, depth, shape)?)])
}

// ---------------------------------------------- Compress, ReverseSequence

/// The positions Compress keeps, along `axis` or the flattened input.
fn compress_plan(c: &impl Ctx) -> Result<(Option<usize>, Vec<usize>)> {
    let shape = c.shape(0)?;
    let cond = c
        .value(1, "condition")?
        .ok_or_else(|| Error::Invalid("missing required input 1 (condition)".into()))?;
    let cond = cond.typed::<bool>().map_err(|_| {
        Error::Invalid(format!("'condition' must be bool, found {}", cond.dtype()))
    })?;
    ensure!(cond.ndim() == 1, Invalid, "'condition' must be 1-D, found shape {:?}", cond.shape());
    let axis = c
        .attrs()
        .int_opt("axis")?
        .map(|a| norm_axis(a, shape.len(), "attribute 'axis'"))
        .transpose()?;
    let d = axis.map_or(prod(shape), |a| shape[a]);
    let keep: Vec<usize> = cond.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i).collect();
    if let Some(&last) = keep.last() {
        ensure!(last < d, Invalid, "'condition' selects index {last} of an axis of size {d}");
    }
    Ok((axis, keep))
}

fn compress_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    let (axis, keep) = compress_plan(c)?;
    let shape = match axis {
        Some(a) => {
            let mut s = x.shape.clone();
            s[a] = keep.len();
            s
        }
        None => vec![keep.len()],
    };
    one(ValueType::new(x.dtype, shape))
}

fn compress_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let (axis, keep) = compress_plan(c)?;
    let keep: AxisMap = keep.into_iter().map(Some).collect();
    let out = &c.outputs[0].shape;
    Ok(vec![match axis {
        Some(a) => {
            let mut maps: Vec<AxisMap> = x.shape().iter().map(|&d| identity_map(d)).collect();
            maps[a] = keep;
            remap_tensor(x, &maps, None, out)?
        }
        None => remap_tensor(&x.reshape(&[x.len()])?, &[keep], None, out)?,
    }])
}

fn reverse_sequence_axes(c: &impl Ctx) -> Result<(usize, usize)> {
    let rank = c.shape(0)?.len();
    ensure!(rank >= 2, Invalid, "input must have rank >= 2, found {rank}");
    let b = c.attrs().int("batch_axis", 1)?;
    let t = c.attrs().int("time_axis", 0)?;
    ensure!(
        matches!((b, t), (0, 1) | (1, 0)),
        Invalid,
        "attributes 'batch_axis' ({b}) and 'time_axis' ({t}) must be 0 and 1 in some order"
    );
    Ok((b as usize, t as usize))
}

fn reverse_sequence_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, lens) = (c.input(0)?, c.input(1)?);
    let (b, _) = reverse_sequence_axes(c)?;
    ensure!(lens.dtype.is_int(), Invalid, "'sequence_lens' must be integers");
    ensure!(
        lens.shape == [x.shape[b]],
        Invalid,
        "'sequence_lens' shape {:?} should be [{}]",
        lens.shape,
        x.shape[b]
    );
    one(x.clone())
}

fn reverse_sequence_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(a: &ArrayD<T>, lens: &[usize], b: usize, t: usize) -> Tensor {
        T::wrap(ArrayD::from_shape_fn(a.raw_dim(), |mut ix: IxDyn| {
            let (len, pos) = (lens[ix[b]], ix[t]);
            if pos < len {
                ix[t] = len - 1 - pos;
            }
            a[ix]
        }))
    }
    let x = c.input(0)?;
    let (b, t) = reverse_sequence_axes(c)?;
    let steps = x.shape()[t];
    let lens = int_values(c.input(1)?, "sequence_lens")?
        .into_iter()
        .map(|l| {
            let l = dim(l, "'sequence_lens'")?;
            ensure!(l <= steps, Invalid, "sequence length {l} exceeds the time axis size {steps}");
            Ok(l)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(vec![dispatch!(x, a => go(a, &lens, b, t))])
}

pub fn register(t: &mut OpTable) {
    t.add("Reshape", reshape_infer, relabel_eval);
    t.add("Flatten", flatten_infer, relabel_eval);
    t.add("Squeeze", squeeze_infer, relabel_eval);
    t.add("Unsqueeze", unsqueeze_infer, relabel_eval);
    t.add("Transpose", transpose_infer, transpose_eval);
    t.add(
        "DepthToSpace",
        |c| one(ValueType::new(c.input(0)?.dtype, depth_to_space(c)?.out)),
        |c| rearrange_eval(c, depth_to_space(c)?),
    );
    t.add(
        "SpaceToDepth",
        |c| one(ValueType::new(c.input(0)?.dtype, space_to_depth(c)?.out)),
        |c| rearrange_eval(c, space_to_depth(c)?),
    );
    t.add("Concat", concat_infer, concat_eval);
    t.add("Split", split_infer, split_eval);
    t.add("Slice", slice_infer, slice_eval);
    t.add("Gather", gather_infer, gather_eval);
    t.add("GatherElements", gather_elements_infer, gather_elements_eval);
    t.add("GatherND", gather_nd_infer, gather_nd_eval);
    t.add("ScatterElements", scatter_elements_infer, scatter_elements_eval);
    t.add("Scatter", scatter_elements_infer, scatter_elements_eval);
    t.add("ScatterND", scatter_nd_infer, scatter_nd_eval);
    t.add("Expand", expand_infer, expand_eval);
    t.add("Tile", tile_infer, tile_eval);
    t.add("Pad", pad_infer, pad_eval);
    t.add("CenterCropPad", center_crop_pad_infer, center_crop_pad_eval);
    t.add("Trilu", trilu_infer, trilu_eval);
    t.add("OneHot", one_hot_infer, one_hot_eval);
    t.add("Compress", compress_infer, compress_eval);
    t.add("ReverseSequence", reverse_sequence_infer, reverse_sequence_eval);
}
