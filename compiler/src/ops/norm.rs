//! Normalizations: BatchNormalization (inference), LayerNormalization,
//! RMSNormalization, InstanceNormalization, GroupNormalization, LRN,
//! MeanVarianceNormalization and LpNormalization. Statistics and results are
//! computed in f64 and rounded once to the output dtype, which is at least
//! as precise as any `stash_type` asks for.

use ndarray::{ArrayD, Axis, IxDyn, Zip};

use super::{EvalCtx, InferCtx, OpTable, axis, broadcast, one};
use crate::error::{Error, Result};
use crate::ir::{Attrs, DType, Tensor, ValueType};

fn float_input<'a>(c: &InferCtx<'a>, i: usize, what: &str) -> Result<&'a ValueType> {
    let t = c.input(i)?;
    ensure!(
        t.dtype.is_float(),
        Invalid,
        "{what} must be a float tensor, found {}",
        t.dtype
    );
    Ok(t)
}

fn min_rank(x: &ValueType, r: usize, what: &str) -> Result<()> {
    ensure!(
        x.shape.len() >= r,
        Invalid,
        "X must have rank >= {r} ({what}), found shape {:?}",
        x.shape
    );
    Ok(())
}

fn f64s(t: &Tensor) -> Result<ArrayD<f64>> {
    match t.cast(DType::F64) {
        Tensor::F64(a) => Ok(a),
        o => Err(Error::Internal(format!(
            "cast to f64 produced {}",
            o.dtype()
        ))),
    }
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec()
}

fn epsilon(c: &EvalCtx) -> Result<f64> {
    Ok(c.attrs.float("epsilon", 1e-5)? as f64)
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var)
}

/// Applies `f` to every group of elements that agree on all axes outside
/// `axes`, visiting groups in row-major order of the kept axes.
fn over_groups(
    x: &ArrayD<f64>,
    axes: &[usize],
    mut f: impl FnMut(&mut [f64]),
) -> Result<ArrayD<f64>> {
    let rank = x.ndim();
    let mut perm: Vec<usize> = (0..rank).filter(|d| !axes.contains(d)).collect();
    perm.extend(axes);
    let moved = x.view().permuted_axes(IxDyn(&perm));
    let moved_shape = moved.shape().to_vec();
    let mut v: Vec<f64> = moved.iter().copied().collect();
    let cols: usize = axes.iter().map(|&a| x.shape()[a]).product();
    if cols > 0 {
        v.chunks_mut(cols).for_each(&mut f);
    }
    let mut inv = vec![0; rank];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    let y = ArrayD::from_shape_vec(IxDyn(&moved_shape), v)
        .map_err(|e| Error::Internal(format!("reshape failed: {e}")))?;
    Ok(y.permuted_axes(IxDyn(&inv))
        .as_standard_layout()
        .into_owned())
}

/// `y * scale + bias` with scale and bias broadcast to `y` (unidirectional).
fn affine(
    mut y: ArrayD<f64>,
    scale: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<ArrayD<f64>> {
    for (t, mul) in [(scale, true), (bias, false)] {
        if let Some(t) = t {
            let p = f64s(t)?;
            let pv = broadcast::view(&p, y.shape())?;
            Zip::from(&mut y)
                .and(&pv)
                .for_each(|v, &q| if mul { *v *= q } else { *v += q });
        }
    }
    Ok(y)
}

/// `y[n, c, ...] = y * scale[c] + bias[c]`.
fn per_channel(mut y: ArrayD<f64>, scale: &[f64], bias: &[f64]) -> ArrayD<f64> {
    for mut image in y.axis_iter_mut(Axis(0)) {
        for (c, mut plane) in image.axis_iter_mut(Axis(0)).enumerate() {
            plane.mapv_inplace(|v| v * scale[c] + bias[c]);
        }
    }
    y
}

fn check_len(t: &ValueType, n: usize, what: &str) -> Result<()> {
    ensure!(
        t.shape.iter().product::<usize>() == n && t.shape.len() <= 1,
        Invalid,
        "{what} must have shape [{n}], found {:?}",
        t.shape
    );
    Ok(())
}

// ------------------------------------------------------- BatchNormalization

fn batch_norm_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = float_input(c, 0, "X")?;
    min_rank(x, 2, "N, C, ...")?;
    if c.opset >= 14 {
        ensure!(
            c.attrs.int("training_mode", 0)? == 0,
            Unsupported,
            "BatchNormalization with training_mode=1"
        );
        ensure!(
            c.num_outputs <= 1,
            Invalid,
            "running_mean and running_var exist only in training mode"
        );
    } else {
        ensure!(
            c.num_outputs <= 1,
            Unsupported,
            "BatchNormalization in training mode (the optional statistics outputs)"
        );
        ensure!(
            c.opset >= 7 || c.attrs.int("is_test", 0)? != 0,
            Unsupported,
            "BatchNormalization in training mode (is_test=0)"
        );
    }
    let per_feature = per_feature(c.opset, c.attrs)?;
    let n = if per_feature {
        x.shape[1..].iter().product()
    } else {
        x.shape[1]
    };
    for (i, name) in [(1, "scale"), (2, "B"), (3, "mean"), (4, "var")] {
        let t = float_input(c, i, name)?;
        ensure!(
            t.shape.iter().product::<usize>() == n,
            Invalid,
            "{name} must have {n} values, found shape {:?}",
            t.shape
        );
    }
    one(x.clone())
}

/// Before opset 9, spatial=0 gives every feature (C x D1 x ...) its own
/// statistics instead of every channel.
fn per_feature(opset: i64, attrs: &Attrs) -> Result<bool> {
    Ok(opset < 9 && attrs.int("spatial", 1)? == 0)
}

fn batch_norm_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let eps = epsilon(c)?;
    let [scale, bias, mean, var] = [1, 2, 3, 4].map(|i| c.input(i).map(flat));
    let (scale, bias, mean, var) = (scale?, bias?, mean?, var?);
    let per_feature = per_feature(c.opset, c.attrs)?;
    let chans = x.shape()[1];
    let inner: usize = x.shape()[2..].iter().product();
    let mut y = f64s(x)?.as_standard_layout().into_owned();
    let ys = y
        .as_slice_mut()
        .ok_or_else(|| Error::Internal("standard layout is not contiguous".into()))?;
    for (i, v) in ys.iter_mut().enumerate() {
        let f = if per_feature {
            i % (chans * inner)
        } else {
            i / inner.max(1) % chans
        };
        *v = scale[f] * (*v - mean[f]) / (var[f] + eps).sqrt() + bias[f];
    }
    Ok(vec![Tensor::F64(y).cast(x.dtype())])
}

// ------------------------------------------------ Layer and RMS normalization

/// The first normalized axis (`axis` attribute, default -1).
fn suffix_axis(attrs: &Attrs, rank: usize) -> Result<usize> {
    ensure!(rank >= 1, Invalid, "X must have rank >= 1");
    axis(attrs.int("axis", -1)?, rank)
}

fn stash_dtype(attrs: &Attrs) -> Result<DType> {
    let code = attrs.int("stash_type", 1)?;
    match DType::from_onnx(code as i32) {
        Some(d) if d.is_float() => Ok(d),
        _ => Err(Error::Invalid(format!(
            "attribute 'stash_type' must be a float type code, found {code}"
        ))),
    }
}

fn check_broadcast_to(t: &ValueType, x: &ValueType, what: &str) -> Result<()> {
    let ok = broadcast::shape(&[&x.shape, &t.shape]).is_ok_and(|s| s == x.shape);
    ensure!(
        ok,
        Invalid,
        "{what} of shape {:?} does not broadcast to X {:?}",
        t.shape,
        x.shape
    );
    Ok(())
}

fn layer_norm_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = float_input(c, 0, "X")?;
    let a = suffix_axis(c.attrs, x.shape.len())?;
    let stash = stash_dtype(c.attrs)?;
    for (i, what) in [(1, "Scale"), (2, "B")] {
        if c.has(i) {
            let t = float_input(c, i, what)?;
            ensure!(
                t.dtype == x.dtype,
                Invalid,
                "{what} dtype {} differs from X dtype {}",
                t.dtype,
                x.dtype
            );
            check_broadcast_to(t, x, what)?;
        }
    }
    let mut stat = x.shape.clone();
    stat[a..].fill(1);
    Ok(vec![
        x.clone(),
        ValueType::new(stash, stat.clone()),
        ValueType::new(stash, stat),
    ])
}

fn layer_norm_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let rank = x.rank();
    let a = suffix_axis(c.attrs, rank)?;
    let eps = epsilon(c)?;
    let (mut means, mut invs) = (Vec::new(), Vec::new());
    let norm = over_groups(&f64s(x)?, &(a..rank).collect::<Vec<_>>(), |g| {
        let (mean, var) = mean_var(g);
        let inv = 1.0 / (var + eps).sqrt();
        g.iter_mut().for_each(|v| *v = (*v - mean) * inv);
        means.push(mean);
        invs.push(inv);
    })?;
    let y = affine(norm, c.opt(1), c.opt(2))?;
    let mut out = vec![Tensor::F64(y).cast(x.dtype())];
    if c.outputs.len() > 1 {
        let stat = &c.outputs[1];
        for v in [means, invs] {
            out.push(Tensor::from_vec(&stat.shape, v)?.cast(stat.dtype));
        }
    }
    Ok(out)
}

fn rms_norm_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = float_input(c, 0, "X")?;
    suffix_axis(c.attrs, x.shape.len())?;
    stash_dtype(c.attrs)?;
    let s = float_input(c, 1, "scale")?;
    check_broadcast_to(s, x, "scale")?;
    one(ValueType::new(s.dtype, x.shape.clone()))
}

fn rms_norm_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let rank = x.rank();
    let a = suffix_axis(c.attrs, rank)?;
    let eps = epsilon(c)?;
    let norm = over_groups(&f64s(x)?, &(a..rank).collect::<Vec<_>>(), |g| {
        let ms = g.iter().map(|v| v * v).sum::<f64>() / g.len() as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        g.iter_mut().for_each(|v| *v *= inv);
    })?;
    let y = affine(norm, c.opt(1), None)?;
    Ok(vec![Tensor::F64(y).cast(c.outputs[0].dtype)])
}

// --------------------------------------------- Instance and group normalization

fn standardize(g: &mut [f64], eps: f64) {
    let (mean, var) = mean_var(g);
    let inv = 1.0 / (var + eps).sqrt();
    g.iter_mut().for_each(|v| *v = (*v - mean) * inv);
}

fn instance_norm_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = float_input(c, 0, "input")?;
    min_rank(x, 2, "N, C, ...")?;
    for (i, what) in [(1, "scale"), (2, "B")] {
        let t = float_input(c, i, what)?;
        check_len(t, x.shape[1], what)?;
    }
    one(x.clone())
}

fn instance_norm_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let eps = epsilon(c)?;
    let norm = over_groups(&f64s(x)?, &(2..x.rank()).collect::<Vec<_>>(), |g| {
        standardize(g, eps)
    })?;
    let y = per_channel(norm, &flat(c.input(1)?), &flat(c.input(2)?));
    Ok(vec![Tensor::F64(y).cast(x.dtype())])
}

fn num_groups(attrs: &Attrs, chans: usize) -> Result<usize> {
    let g = attrs.req_int("num_groups")?;
    ensure!(
        g >= 1 && chans.is_multiple_of(g as usize),
        Invalid,
        "attribute 'num_groups' ({g}) must divide the {chans} channels"
    );
    Ok(g as usize)
}

/// Opset 18 gives scale and bias per group, opset 21 per channel.
fn group_param_len(opset: i64, groups: usize, chans: usize) -> usize {
    if opset >= 21 { chans } else { groups }
}

fn group_norm_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = float_input(c, 0, "X")?;
    min_rank(x, 2, "N, C, ...")?;
    let g = num_groups(c.attrs, x.shape[1])?;
    if c.opset >= 21 {
        stash_dtype(c.attrs)?;
    }
    let n = group_param_len(c.opset, g, x.shape[1]);
    for (i, what) in [(1, "scale"), (2, "bias")] {
        let t = float_input(c, i, what)?;
        check_len(t, n, what)?;
    }
    one(x.clone())
}

fn group_norm_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let shape = x.shape();
    let chans = shape[1];
    let g = num_groups(c.attrs, chans)?;
    let eps = epsilon(c)?;
    // Each group's channels are contiguous: view X as [N, G, rest].
    let grouped = f64s(x)?
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&[
            shape[0],
            g,
            shape[1..].iter().product::<usize>() / g,
        ]))
        .map_err(|e| Error::Internal(format!("reshape failed: {e}")))?;
    let norm = over_groups(&grouped, &[2], |v| standardize(v, eps))?
        .into_shape_with_order(IxDyn(shape))
        .map_err(|e| Error::Internal(format!("reshape failed: {e}")))?;
    let (mut scale, mut bias) = (flat(c.input(1)?), flat(c.input(2)?));
    if group_param_len(c.opset, g, chans) == g {
        let per = chans / g;
        scale = (0..chans).map(|ch| scale[ch / per]).collect();
        bias = (0..chans).map(|ch| bias[ch / per]).collect();
    }
    Ok(vec![
        Tensor::F64(per_channel(norm, &scale, &bias)).cast(x.dtype()),
    ])
}

// --------------------------------------------------------------------- LRN

fn lrn_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = float_input(c, 0, "X")?;
    min_rank(x, 2, "N, C, ...")?;
    let size = c.attrs.req_int("size")?;
    ensure!(
        size >= 1,
        Invalid,
        "attribute 'size' must be >= 1, found {size}"
    );
    one(x.clone())
}

/// y = x / (bias + alpha / size * sum of x^2 over the channel window)^beta,
/// the window being [c - floor((size-1)/2), c + ceil((size-1)/2)].
fn lrn_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let size = c.attrs.req_int("size")?.max(1) as usize;
    let alpha = c.attrs.float("alpha", 1e-4)? as f64;
    let beta = c.attrs.float("beta", 0.75)? as f64;
    let bias = c.attrs.float("bias", 1.0)? as f64;
    let xf = f64s(x)?;
    let chans = x.shape()[1];
    let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let mut y = xf.clone();
    for (mut out, img) in y.axis_iter_mut(Axis(0)).zip(xf.axis_iter(Axis(0))) {
        for ch in 0..chans {
            let window = ch.saturating_sub(lo)..(ch + hi + 1).min(chans);
            let mut sq = img.index_axis(Axis(0), ch).mapv(|_| 0.0);
            for j in window {
                Zip::from(&mut sq)
                    .and(img.index_axis(Axis(0), j))
                    .for_each(|s, &v| *s += v * v);
            }
            Zip::from(out.index_axis_mut(Axis(0), ch))
                .and(&sq)
                .for_each(|o, &s| *o /= (bias + alpha / size as f64 * s).powf(beta));
        }
    }
    Ok(vec![Tensor::F64(y).cast(x.dtype())])
}

// ------------------------------------------- MeanVariance and Lp normalization

fn mvn_axes(attrs: &Attrs, rank: usize) -> Result<Vec<usize>> {
    let raw = attrs
        .ints_opt("axes")?
        .map_or(vec![0, 2, 3], <[i64]>::to_vec);
    let mut axes = raw
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<Vec<_>>>()?;
    axes.sort_unstable();
    axes.dedup();
    Ok(axes)
}

fn mvn_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = float_input(c, 0, "X")?;
    mvn_axes(c.attrs, x.shape.len())?;
    one(x.clone())
}

/// (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9), the ONNX function body.
fn mvn_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let axes = mvn_axes(c.attrs, x.rank())?;
    let y = over_groups(&f64s(x)?, &axes, |g| {
        let n = g.len() as f64;
        let mean = g.iter().sum::<f64>() / n;
        let msq = g.iter().map(|v| v * v).sum::<f64>() / n;
        let std = (msq - mean * mean).max(0.0).sqrt();
        g.iter_mut().for_each(|v| *v = (*v - mean) / (std + 1e-9));
    })?;
    Ok(vec![Tensor::F64(y).cast(x.dtype())])
}

fn lp_norm_params(attrs: &Attrs, rank: usize) -> Result<(usize, i64)> {
    let p = attrs.int("p", 2)?;
    ensure!(
        p == 1 || p == 2,
        Invalid,
        "attribute 'p' must be 1 or 2, found {p}"
    );
    ensure!(rank >= 1, Invalid, "input must have rank >= 1");
    Ok((axis(attrs.int("axis", -1)?, rank)?, p))
}

fn lp_norm_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = float_input(c, 0, "input")?;
    lp_norm_params(c.attrs, x.shape.len())?;
    one(x.clone())
}

/// x / ||x||_p along the axis; a zero norm gives zeros.
fn lp_norm_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let (a, p) = lp_norm_params(c.attrs, x.rank())?;
    let y = over_groups(&f64s(x)?, &[a], |g| {
        let norm = if p == 1 {
            g.iter().map(|v| v.abs()).sum::<f64>()
        } else {
            g.iter().map(|v| v * v).sum::<f64>().sqrt()
        };
        g.iter_mut()
            .for_each(|v| *v = if norm == 0.0 { 0.0 } else { *v / norm });
    })?;
    Ok(vec![Tensor::F64(y).cast(x.dtype())])
}

pub fn register(t: &mut OpTable) {
    t.add("BatchNormalization", batch_norm_infer, batch_norm_eval);
    t.add("LayerNormalization", layer_norm_infer, layer_norm_eval);
    t.add("RMSNormalization", rms_norm_infer, rms_norm_eval);
    t.add(
        "InstanceNormalization",
        instance_norm_infer,
        instance_norm_eval,
    );
    t.add("GroupNormalization", group_norm_infer, group_norm_eval);
    t.add("LRN", lrn_infer, lrn_eval);
    t.add("MeanVarianceNormalization", mvn_infer, mvn_eval);
    t.add("LpNormalization", lp_norm_infer, lp_norm_eval);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(shape: &[usize], v: Vec<f64>) -> ArrayD<f64> {
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    #[test]
    fn groups_over_inner_and_outer_axes() {
        let x = arr(&[2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let mut sums = Vec::new();
        let y = over_groups(&x, &[0], |g| {
            sums.push(g.iter().sum::<f64>());
            g.iter_mut().for_each(|v| *v *= 10.0);
        })
        .unwrap();
        assert_eq!(sums, vec![5., 7., 9.]);
        assert_eq!(y, x.mapv(|v| v * 10.0));
        let y = over_groups(&x, &[1], |g| standardize(g, 0.0)).unwrap();
        let s = (2.0f64 / 3.0).sqrt();
        assert!((y[[0, 0]] + 1.0 / s).abs() < 1e-12 && y[[1, 1]].abs() < 1e-12);
    }

    #[test]
    fn per_channel_scales_planes() {
        let y = per_channel(arr(&[1, 2, 2], vec![1., 2., 3., 4.]), &[2., 3.], &[0., 1.]);
        assert_eq!(y, arr(&[1, 2, 2], vec![2., 4., 10., 13.]));
    }
}
