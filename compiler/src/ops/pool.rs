//! Pooling: MaxPool (with the optional argmax `Indices` output),
//! AveragePool and LpPool over any number of spatial axes with strides,
//! dilations, explicit or automatic padding and ceil_mode; their Global
//! forms; and MaxUnpool. Windows only read taps inside the input; padding
//! matters only to AveragePool's count_include_pad divisor.

use ndarray::{ArrayD, IxDyn, Slice};

use super::conv::{Window, axis_ints, axis_ints_len, in_range, next_index, row_major_strides};
use super::{EvalCtx, InferCtx, OpTable, one};
use crate::dispatch_num;
use crate::error::{Error, Result};
use crate::ir::{Attrs, DType, Elem, Tensor, ValueType};

fn check_input(x: &ValueType, min_rank: usize, float_only: bool) -> Result<()> {
    ensure!(
        x.shape.len() >= min_rank,
        Invalid,
        "X must have rank >= {min_rank} (N, C, spatial...), found shape {:?}",
        x.shape
    );
    if float_only {
        ensure!(
            x.dtype.is_float(),
            Invalid,
            "X must be a float tensor, found {}",
            x.dtype
        );
    } else {
        ensure!(
            x.dtype != DType::Bool,
            Invalid,
            "X must be numeric, found bool"
        );
    }
    Ok(())
}

fn kernel_shape(attrs: &Attrs, spatial: usize) -> Result<Vec<usize>> {
    let k = attrs
        .ints_opt("kernel_shape")?
        .ok_or_else(|| Error::Invalid("missing required attribute 'kernel_shape'".into()))?;
    ensure!(
        k.len() == spatial,
        Invalid,
        "attribute 'kernel_shape' {k:?} must hold {spatial} values"
    );
    Ok(in_range("kernel_shape", k, 1)?
        .into_iter()
        .map(|v| v as usize)
        .collect())
}

pub(crate) fn pool_window(attrs: &Attrs, x: &[usize]) -> Result<Window> {
    ensure!(
        x.len() >= 3,
        Invalid,
        "X must have rank >= 3 (N, C, spatial...), found shape {x:?}"
    );
    let kernel = kernel_shape(attrs, x.len() - 2)?;
    let ceil = attrs.int("ceil_mode", 0)? != 0;
    Window::new(attrs, &x[2..], &kernel, ceil)
}

fn out_shape(x: &[usize], w: &Window) -> Vec<usize> {
    let mut s = x[..2].to_vec();
    s.extend(&w.out);
    s
}

/// Calls `f(out, taps, padded)` for every output position of one plane:
/// `taps` are the row-major offsets of the window's taps inside the input,
/// `padded` counts the taps inside the padded input.
fn for_each_window(input: &[usize], w: &Window, mut f: impl FnMut(usize, &[usize], usize)) {
    let nd = input.len();
    let istr = row_major_strides(input);
    let osize: usize = w.out.iter().product();
    let mut oidx = vec![0usize; nd];
    let mut taps = Vec::new();
    for o in 0..osize {
        taps.clear();
        let mut padded = 0;
        let mut kidx = vec![0usize; nd];
        loop {
            let (mut inside, mut in_pad_range, mut off) = (true, true, 0);
            for d in 0..nd {
                let at = (oidx[d] * w.strides[d] + kidx[d] * w.dilations[d]) as isize
                    - w.begin[d] as isize;
                inside &= at >= 0 && (at as usize) < input[d];
                in_pad_range &= at < (input[d] + w.end[d]) as isize;
                off += at.max(0) as usize * istr[d];
            }
            if inside {
                taps.push(off);
            }
            padded += usize::from(in_pad_range);
            if !next_index(&mut kidx, &w.kernel) {
                break;
            }
        }
        f(o, &taps, padded);
        next_index(&mut oidx, &w.out);
    }
}

/// Runs `f(plane, out_plane)` over the N*C planes of `x`.
fn planes<T: Copy + Default, R: Copy + Default>(
    x: &ArrayD<T>,
    osize: usize,
    mut f: impl FnMut(&[T], &mut [R]),
) -> Result<Vec<R>> {
    let planes: usize = x.shape()[..2].iter().product();
    let isize: usize = x.shape()[2..].iter().product();
    let xs = x.as_standard_layout();
    let xs = xs
        .as_slice()
        .ok_or_else(|| Error::Internal("standard layout is not contiguous".into()))?;
    let mut out = vec![R::default(); planes * osize];
    for p in 0..planes {
        f(
            &xs[p * isize..(p + 1) * isize],
            &mut out[p * osize..(p + 1) * osize],
        );
    }
    Ok(out)
}

// ----------------------------------------------------------------- MaxPool

/// The first maximal tap; NaN loses to any number (as in the reference,
/// which drops NaNs before taking the max).
fn is_nan<T: Elem>(v: T) -> bool {
    v.partial_cmp(&v).is_none()
}

fn argmax<T: Elem>(plane: &[T], taps: &[usize]) -> Option<(T, usize)> {
    let mut best: Option<(T, usize)> = None;
    for &t in taps {
        let v = plane[t];
        best = match best {
            Some((b, _)) if !(v > b || (is_nan(b) && !is_nan(v))) => best,
            _ => Some((v, t)),
        };
    }
    best
}

fn max_pool_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    check_input(x, 3, false)?;
    let order = c.attrs.int("storage_order", 0)?;
    ensure!(
        order == 0 || order == 1,
        Invalid,
        "attribute 'storage_order' must be 0 or 1, found {order}"
    );
    let shape = out_shape(&x.shape, &pool_window(c.attrs, &x.shape)?);
    Ok(vec![
        ValueType::new(x.dtype, shape.clone()),
        ValueType::new(DType::I64, shape),
    ])
}

fn max_pool_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(c: &EvalCtx, x: &ArrayD<T>) -> Result<Vec<Tensor>> {
        let w = pool_window(c.attrs, x.shape())?;
        let input = &x.shape()[2..];
        let isize: usize = input.iter().product();
        let osize: usize = w.out.iter().product();
        let shape = out_shape(x.shape(), &w);
        let y = planes(x, osize, |plane, out: &mut [T]| {
            for_each_window(input, &w, |o, taps, _| {
                out[o] = argmax(plane, taps).map_or(T::default(), |b| b.0);
            })
        })?;
        let mut res = vec![Tensor::from_vec(&shape, y)?];
        if c.outputs.len() > 1 {
            let col_major = c.attrs.int("storage_order", 0)? == 1;
            let istr = row_major_strides(input);
            // Column-major numbering of a row-major offset within a plane.
            let reorder = |t: usize| -> usize {
                let (mut flat, mut scale) = (0, 1);
                for (d, &n) in input.iter().enumerate() {
                    flat += (t / istr[d]) % n * scale;
                    scale *= n;
                }
                flat
            };
            let mut p = 0;
            let idx = planes(x, osize, |plane, out: &mut [i64]| {
                for_each_window(input, &w, |o, taps, _| {
                    out[o] = argmax(plane, taps).map_or(-1, |(_, t)| {
                        (p * isize + if col_major { reorder(t) } else { t }) as i64
                    });
                });
                p += 1;
            })?;
            res.push(Tensor::from_vec(&shape, idx)?);
        }
        Ok(res)
    }
    dispatch_num!(c.input(0)?, x => go(c, x), o => bail!(Invalid, "X must be numeric, found {}", o.dtype()))
}

// ------------------------------------------------------ AveragePool, LpPool

fn float_pool_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    check_input(x, 3, true)?;
    one(ValueType::new(
        x.dtype,
        out_shape(&x.shape, &pool_window(c.attrs, &x.shape)?),
    ))
}

/// Pools `x` in f64 with `f(plane, taps, padded)` and rounds once to its
/// dtype.
fn f64_pool(c: &EvalCtx, f: impl Fn(&[f64], &[usize], usize) -> f64) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let xf = x.cast(DType::F64);
    let xf = xf.typed::<f64>()?;
    let w = pool_window(c.attrs, x.shape())?;
    let input = &x.shape()[2..];
    let osize: usize = w.out.iter().product();
    let y = planes(xf, osize, |plane, out: &mut [f64]| {
        for_each_window(input, &w, |o, taps, padded| out[o] = f(plane, taps, padded))
    })?;
    Ok(vec![
        Tensor::from_vec(&out_shape(x.shape(), &w), y)?.cast(x.dtype()),
    ])
}

fn avg_pool_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let include_pad = c.attrs.int("count_include_pad", 0)? != 0;
    f64_pool(c, |plane, taps, padded| {
        let sum: f64 = taps.iter().map(|&t| plane[t]).sum();
        sum / if include_pad { padded } else { taps.len() } as f64
    })
}

/// The `p` of LpPool/GlobalLpPool (a float in opset 1, an int later).
fn lp_p(attrs: &Attrs) -> Result<f64> {
    let p = attrs.float("p", 2.0)? as f64;
    let positive = p > 0.0;
    ensure!(
        positive,
        Invalid,
        "attribute 'p' must be positive, found {p}"
    );
    Ok(p)
}

fn lp(vals: impl Iterator<Item = f64>, p: f64) -> f64 {
    vals.map(|v| v.abs().powf(p)).sum::<f64>().powf(1.0 / p)
}

fn lp_pool_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let p = lp_p(c.attrs)?;
    f64_pool(c, |plane, taps, _| lp(taps.iter().map(|&t| plane[t]), p))
}

// ------------------------------------------------------------ Global pools

fn global_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    check_input(x, 2, true)?;
    let mut shape = x.shape.clone();
    shape[2..].fill(1);
    one(ValueType::new(x.dtype, shape))
}

/// Reduces every N*C plane to one value with `f`.
fn global<T: Copy + Default>(
    x: &ArrayD<T>,
    out: &[usize],
    f: impl Fn(&[T]) -> T,
) -> Result<ArrayD<T>> {
    let v = planes(x, 1, |plane, o: &mut [T]| o[0] = f(plane))?;
    ArrayD::from_shape_vec(IxDyn(out), v)
        .map_err(|e| Error::Internal(format!("reshape failed: {e}")))
}

fn global_f64(c: &EvalCtx, f: impl Fn(&[f64]) -> f64) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let xf = x.cast(DType::F64);
    let y = global(xf.typed::<f64>()?, &c.outputs[0].shape, f)?;
    Ok(vec![Tensor::F64(y).cast(x.dtype())])
}

fn global_avg_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    global_f64(c, |p| p.iter().sum::<f64>() / p.len() as f64)
}

fn global_lp_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let p = lp_p(c.attrs)?;
    global_f64(c, |v| lp(v.iter().copied(), p))
}

fn global_max_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(c: &EvalCtx, x: &ArrayD<T>) -> Result<Tensor> {
        let taps: Vec<usize> = (0..x.shape()[2..].iter().product()).collect();
        let y = global(x, &c.outputs[0].shape, |p| {
            argmax(p, &taps).map_or(T::default(), |b| b.0)
        })?;
        Ok(T::wrap(y))
    }
    Ok(vec![
        dispatch_num!(c.input(0)?, x => go(c, x)?, o => bail!(Invalid, "X must be numeric, found {}", o.dtype())),
    ])
}

// --------------------------------------------------------------- MaxUnpool

/// The unpooled shape MaxPool's geometry implies:
/// (in - 1) * stride - pads + kernel per spatial axis.
fn unpool_shape(attrs: &Attrs, x: &[usize]) -> Result<Vec<usize>> {
    ensure!(
        x.len() >= 3,
        Invalid,
        "X must have rank >= 3 (N, C, spatial...), found shape {x:?}"
    );
    let n = x.len() - 2;
    let kernel = kernel_shape(attrs, n)?;
    let strides = axis_ints(attrs, "strides", n, 1, 1)?;
    let pads = axis_ints_len(attrs, "pads", 2 * n)?;
    let mut shape = x[..2].to_vec();
    for i in 0..n {
        let d = (x[i + 2] as i64 - 1) * strides[i] - (pads[i] + pads[i + n]) + kernel[i] as i64;
        ensure!(
            d >= 1,
            Invalid,
            "spatial axis {i}: unpooled size {d} is not positive"
        );
        shape.push(d as usize);
    }
    Ok(shape)
}

fn max_unpool_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, i) = (c.input(0)?, c.input(1)?);
    check_input(x, 3, false)?;
    ensure!(
        i.dtype == DType::I64,
        Invalid,
        "I must be i64, found {}",
        i.dtype
    );
    ensure!(
        i.shape == x.shape,
        Invalid,
        "I shape {:?} differs from X shape {:?}",
        i.shape,
        x.shape
    );
    let inferred = unpool_shape(c.attrs, &x.shape)?;
    let shape = match c.const_input(2, "output_shape")? {
        None => inferred,
        Some(t) => {
            let s = t.to_i64_vec()?;
            ensure!(
                s.len() == inferred.len() && s.iter().zip(&inferred).all(|(&a, &b)| a >= b as i64),
                Invalid,
                "output_shape {s:?} must have rank {} and be at least {inferred:?}",
                inferred.len()
            );
            s.iter().map(|&v| v as usize).collect()
        }
    };
    one(ValueType::new(x.dtype, shape))
}

/// Scatters X into the shape MaxPool's geometry implies (the reference's
/// reading of the indices), then pads with zeros at the end of every axis
/// up to `output_shape`.
fn max_unpool_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Elem>(c: &EvalCtx, x: &ArrayD<T>) -> Result<Tensor> {
        let idx = c.input(1)?.typed::<i64>()?;
        let inferred = unpool_shape(c.attrs, x.shape())?;
        let total: usize = inferred.iter().product();
        let mut buf = vec![T::default(); total];
        for (&v, &i) in x.iter().zip(idx.iter()) {
            ensure!(
                (0..total as i64).contains(&i),
                Invalid,
                "index {i} is outside the unpooled tensor of {total} elements"
            );
            buf[i as usize] = v;
        }
        let y = ArrayD::from_shape_vec(IxDyn(&inferred), buf)
            .map_err(|e| Error::Internal(format!("reshape failed: {e}")))?;
        let out = &c.outputs[0].shape;
        if *out == inferred {
            return Ok(T::wrap(y));
        }
        let mut full = ArrayD::from_elem(IxDyn(out), T::default());
        full.slice_each_axis_mut(|ax| Slice::from(0..inferred[ax.axis.index()]))
            .assign(&y);
        Ok(T::wrap(full))
    }
    Ok(vec![
        dispatch_num!(c.input(0)?, x => go(c, x)?, o => bail!(Invalid, "X must be numeric, found {}", o.dtype())),
    ])
}

pub fn register(t: &mut OpTable) {
    t.add("MaxPool", max_pool_infer, max_pool_eval);
    t.add("AveragePool", float_pool_infer, avg_pool_eval);
    t.add("LpPool", float_pool_infer, lp_pool_eval);
    t.add("GlobalAveragePool", global_infer, global_avg_eval);
    t.add("GlobalMaxPool", global_infer, global_max_eval);
    t.add("GlobalLpPool", global_infer, global_lp_eval);
    t.add("MaxUnpool", max_unpool_infer, max_unpool_eval);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Attr;

    fn attrs(list: &[(&str, Attr)]) -> Attrs {
        let mut a = Attrs::default();
        for (k, v) in list {
            a.set(k, v.clone());
        }
        a
    }

    /// Pools one 1-D plane with `f` and returns the values.
    fn pool1d(a: &Attrs, x: &[f64], f: impl Fn(&[f64], &[usize], usize) -> f64) -> Vec<f64> {
        let w = pool_window(a, &[1, 1, x.len()]).unwrap();
        let mut out = vec![0.0; w.out[0]];
        for_each_window(&[x.len()], &w, |o, taps, padded| {
            out[o] = f(x, taps, padded)
        });
        out
    }

    #[test]
    fn average_counts_padding_on_request() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let base = [
            ("kernel_shape", Attr::Ints(vec![3])),
            ("pads", Attr::Ints(vec![1, 1])),
        ];
        let avg = |include: bool| {
            move |p: &[f64], t: &[usize], n: usize| {
                t.iter().map(|&i| p[i]).sum::<f64>() / if include { n } else { t.len() } as f64
            }
        };
        assert_eq!(
            pool1d(&attrs(&base), &x, avg(false)),
            vec![1.5, 2.0, 3.0, 3.5]
        );
        assert_eq!(
            pool1d(&attrs(&base), &x, avg(true)),
            vec![1.0, 2.0, 3.0, 7.0 / 3.0]
        );
        // ceil_mode: the last window hangs past the end padding; only
        // the padded extent counts.
        let mut a = attrs(&base);
        a.set("strides", Attr::Ints(vec![2]));
        a.set("ceil_mode", Attr::Int(1));
        a.set("pads", Attr::Ints(vec![0, 1]));
        assert_eq!(pool1d(&a, &x, avg(true)), vec![2.0, 7.0 / 3.0]);
    }

    #[test]
    fn maxpool_dilated_and_argmax() {
        let x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0];
        let a = attrs(&[
            ("kernel_shape", Attr::Ints(vec![2])),
            ("dilations", Attr::Ints(vec![3])),
        ]);
        let max = |p: &[f64], t: &[usize], _| argmax(p, t).unwrap().0;
        assert_eq!(pool1d(&a, &x, max), vec![3.0, 5.0, 9.0, 2.0]);
        assert_eq!(argmax(&[1.0, 7.0, 7.0], &[0, 1, 2]), Some((7.0, 1)));
        assert_eq!(argmax(&[f64::NAN, 2.0], &[0, 1]), Some((2.0, 1)));
    }
}
