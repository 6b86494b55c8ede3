//! Convolutions: Conv, ConvTranspose and ConvInteger over any number of
//! spatial axes, with groups, strides, dilations and explicit or automatic
//! padding. Conv unfolds each image and group into columns (im2col) and
//! multiplies them by the group's filters with one GEMM; ConvTranspose runs
//! the same GEMM transposed and scatters the columns back (col2im).
//! `Window` (the sliding-window geometry) is shared with the pooling ops.

use ndarray::{Array2, Array3, ArrayD, ArrayView2, IxDyn, s};

use super::linalg::Dot;
use super::{EvalCtx, InferCtx, OpTable, one};
use crate::error::{Error, Result};
use crate::ir::{Attrs, DType, Tensor, ValueType};

// ------------------------------------------------------------------ geometry

#[derive(Clone, Copy, Debug, PartialEq)]
enum AutoPad {
    NotSet,
    Valid,
    SameUpper,
    SameLower,
}

fn auto_pad(attrs: &Attrs) -> Result<AutoPad> {
    Ok(match attrs.string("auto_pad", "NOTSET")? {
        "NOTSET" | "" => AutoPad::NotSet,
        "VALID" => AutoPad::Valid,
        "SAME_UPPER" => AutoPad::SameUpper,
        "SAME_LOWER" => AutoPad::SameLower,
        other => bail!(
            Invalid,
            "attribute 'auto_pad' must be NOTSET, VALID, SAME_UPPER or SAME_LOWER, found {other:?}"
        ),
    })
}

/// A per-axis attribute of `n` values >= `min` (an absent or empty list
/// means `default` on every axis).
pub(super) fn axis_ints(
    attrs: &Attrs,
    name: &str,
    n: usize,
    default: i64,
    min: i64,
) -> Result<Vec<i64>> {
    let v = match attrs.ints_opt(name)? {
        None | Some([]) => return Ok(vec![default; n]),
        Some(v) => v,
    };
    ensure!(
        v.len() == n,
        Invalid,
        "attribute '{name}' has {} values, expected {n} (one per spatial axis)",
        v.len()
    );
    in_range(name, v, min)
}

/// Bounds geometry attributes so that size arithmetic cannot overflow.
const MAX_GEOMETRY: i64 = 1 << 31;

/// Checks that every value of attribute `name` lies in [min, MAX_GEOMETRY].
pub(super) fn in_range(name: &str, v: &[i64], min: i64) -> Result<Vec<i64>> {
    ensure!(
        v.iter().all(|x| (min..=MAX_GEOMETRY).contains(x)),
        Invalid,
        "attribute '{name}' values must be in [{min}, {MAX_GEOMETRY}], found {v:?}"
    );
    Ok(v.to_vec())
}

fn to_usize(v: Vec<i64>) -> Vec<usize> {
    v.into_iter().map(|x| x as usize).collect()
}

/// Explicit `pads` ([begin..., end...], each >= 0), zeros when absent.
fn explicit_pads(attrs: &Attrs, n: usize) -> Result<(Vec<usize>, Vec<usize>)> {
    let p = to_usize(axis_ints_len(attrs, "pads", 2 * n)?);
    Ok((p[..n].to_vec(), p[n..].to_vec()))
}

/// An attribute of exactly `len` values >= 0, zeros when absent or empty.
pub(super) fn axis_ints_len(attrs: &Attrs, name: &str, len: usize) -> Result<Vec<i64>> {
    let v = match attrs.ints_opt(name)? {
        None | Some([]) => return Ok(vec![0; len]),
        Some(v) => v,
    };
    ensure!(
        v.len() == len,
        Invalid,
        "attribute '{name}' has {} values, expected {len}",
        v.len()
    );
    in_range(name, v, 0)
}

/// The geometry of a sliding window over the spatial axes: per axis the
/// kernel, stride, dilation, padding at both ends and the output size.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub begin: Vec<usize>,
    pub end: Vec<usize>,
    pub out: Vec<usize>,
}

impl Window {
    /// Reads strides, dilations, pads and auto_pad for an input of spatial
    /// shape `input`. `ceil_mode` (pools) rounds the output size up, but a
    /// window may not start in the end padding.
    pub fn new(
        attrs: &Attrs,
        input: &[usize],
        kernel: &[usize],
        ceil_mode: bool,
    ) -> Result<Window> {
        let n = input.len();
        ensure!(
            kernel.len() == n,
            Invalid,
            "kernel has {} axes, the input has {n} spatial axes",
            kernel.len()
        );
        ensure!(
            kernel.iter().all(|&k| k >= 1),
            Invalid,
            "kernel sizes must be >= 1, found {kernel:?}"
        );
        let strides = to_usize(axis_ints(attrs, "strides", n, 1, 1)?);
        let dilations = to_usize(axis_ints(attrs, "dilations", n, 1, 1)?);
        let mode = auto_pad(attrs)?;
        let (mut begin, mut end) = match mode {
            AutoPad::NotSet => explicit_pads(attrs, n)?,
            _ => (vec![0; n], vec![0; n]),
        };
        let mut out = vec![0; n];
        for i in 0..n {
            let (x, s) = (input[i], strides[i]);
            let eff = (kernel[i] - 1) * dilations[i] + 1;
            out[i] = match mode {
                AutoPad::SameUpper | AutoPad::SameLower => {
                    let o = x.div_ceil(s);
                    let total = ((o.max(1) - 1) * s + eff).saturating_sub(x);
                    begin[i] = if mode == AutoPad::SameUpper {
                        total / 2
                    } else {
                        total - total / 2
                    };
                    end[i] = total - begin[i];
                    o
                }
                AutoPad::Valid | AutoPad::NotSet => {
                    let padded = x + begin[i] + end[i];
                    ensure!(
                        padded >= eff,
                        Invalid,
                        "spatial axis {i}: padded input size {padded} is smaller than the dilated kernel {eff}"
                    );
                    if ceil_mode {
                        let o = (padded - eff).div_ceil(s) + 1;
                        // The last window must start inside the input or its begin padding.
                        if (o - 1) * s >= x + begin[i] {
                            o - 1
                        } else {
                            o
                        }
                    } else {
                        (padded - eff) / s + 1
                    }
                }
            };
        }
        Ok(Window {
            kernel: kernel.to_vec(),
            strides,
            dilations,
            begin,
            end,
            out,
        })
    }
}

/// Steps a row-major multi-index; false once it wraps around.
pub(super) fn next_index(idx: &mut [usize], shape: &[usize]) -> bool {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < shape[d] {
            return true;
        }
        idx[d] = 0;
    }
    false
}

pub(super) fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut st = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        st[d] = st[d + 1] * shape[d + 1];
    }
    st
}

fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::Internal(format!("reshape failed: {e}"))
}

// ------------------------------------------------------------------ im2col

/// Unfolds `channels` planes of spatial shape `input` into a matrix with
/// one row per (channel, kernel offset) and one column per output position;
/// taps in the padding read as zero.
fn im2col<T: Copy + Default>(
    x: &[T],
    channels: usize,
    input: &[usize],
    w: &Window,
) -> Result<Array2<T>> {
    let nd = input.len();
    let last = nd - 1;
    let ksize: usize = w.kernel.iter().product();
    let osize: usize = w.out.iter().product();
    let isize: usize = input.iter().product();
    let istr = row_major_strides(input);
    let outer: usize = w.out[..last].iter().product();
    let ol = w.out[last];
    let mut cols = vec![T::default(); channels * ksize * osize];
    let mut kidx = vec![0usize; nd];
    for kf in 0..ksize {
        let mut oidx = vec![0usize; last];
        for of in 0..outer {
            // Offset of this output row's tap in all but the last axis.
            let mut base = Some(0usize);
            for d in 0..last {
                let at = (oidx[d] * w.strides[d] + kidx[d] * w.dilations[d]) as isize
                    - w.begin[d] as isize;
                base = base
                    .filter(|_| at >= 0 && (at as usize) < input[d])
                    .map(|b| b + at as usize * istr[d]);
            }
            next_index(&mut oidx, &w.out[..last]);
            let Some(base) = base else { continue };
            let k_off = (kidx[last] * w.dilations[last]) as isize - w.begin[last] as isize;
            for c in 0..channels {
                let plane = &x[c * isize..(c + 1) * isize];
                let row = (c * ksize + kf) * osize + of * ol;
                for (o, dst) in cols[row..row + ol].iter_mut().enumerate() {
                    let at = (o * w.strides[last]) as isize + k_off;
                    if at >= 0 && (at as usize) < input[last] {
                        *dst = plane[base + at as usize];
                    }
                }
            }
        }
        next_index(&mut kidx, &w.kernel);
    }
    Array2::from_shape_vec((channels * ksize, osize), cols).map_err(shape_err)
}

/// Conv of `x` [N, C, ...] with `w` [M, C/group, k...]: per image and
/// group, filters [M/group, C/group*K] times columns [C/group*K, out].
fn conv_nd<T: Dot>(
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    bias: Option<&ArrayD<T>>,
    win: &Window,
    group: usize,
) -> Result<ArrayD<T>> {
    let (n, c, m) = (x.shape()[0], x.shape()[1], w.shape()[0]);
    let (cg, mg) = (c / group, m / group);
    let input = &x.shape()[2..];
    let isize: usize = input.iter().product();
    let osize: usize = win.out.iter().product();
    let ksize: usize = win.kernel.iter().product();
    let xs = x.as_standard_layout();
    let xs = xs
        .as_slice()
        .ok_or_else(|| Error::Internal("standard layout is not contiguous".into()))?;
    let w2 = w
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((m, cg * ksize))
        .map_err(shape_err)?;
    // A 1x1 kernel with unit strides and no padding reads the input as is.
    let pointwise = ksize == 1
        && win.out == input
        && win.strides.iter().all(|&s| s == 1)
        && win.begin.iter().all(|&b| b == 0);
    let mut out = Array3::from_elem((n, m, osize), T::default());
    for b in 0..n {
        for g in 0..group {
            let start = (b * c + g * cg) * isize;
            let chans = &xs[start..start + cg * isize];
            let wg = w2.slice(s![g * mg..(g + 1) * mg, ..]);
            let y = if pointwise {
                T::matmul(
                    wg,
                    ArrayView2::from_shape((cg, isize), chans).map_err(shape_err)?,
                )
            } else {
                T::matmul(wg, im2col(chans, cg, input, win)?.view())
            };
            out.slice_mut(s![b, g * mg..(g + 1) * mg, ..]).assign(&y);
        }
    }
    if let Some(bias) = bias {
        for (mi, &bv) in bias.iter().enumerate() {
            out.slice_mut(s![.., mi, ..]).mapv_inplace(|v| v.add(bv));
        }
    }
    let mut shape = vec![n, m];
    shape.extend(&win.out);
    out.into_shape_with_order(IxDyn(&shape)).map_err(shape_err)
}

// -------------------------------------------------------------------- Conv

/// Checks that X [N, C, ...] and W have one equal rank >= 3 and reads the
/// `group` attribute (>= 1).
fn ranks_and_group(attrs: &Attrs, x: &[usize], w: &[usize]) -> Result<usize> {
    ensure!(
        x.len() >= 3,
        Invalid,
        "X must have rank >= 3 (N, C, spatial...), found shape {x:?}"
    );
    ensure!(
        w.len() == x.len(),
        Invalid,
        "W has rank {}, X has rank {}",
        w.len(),
        x.len()
    );
    let group = attrs.int("group", 1)?;
    ensure!(
        group >= 1,
        Invalid,
        "attribute 'group' must be >= 1, found {group}"
    );
    let group = group as usize;
    Ok(group)
}

/// Checks X [N, C, ...] against W [M, C/group, k...] and reads the window.
pub(crate) fn conv_setup(attrs: &Attrs, x: &[usize], w: &[usize]) -> Result<(Window, usize)> {
    let group = ranks_and_group(attrs, x, w)?;
    ensure!(
        x[1] == w[1] * group && w[0].is_multiple_of(group),
        Invalid,
        "X has {} channels and W shape {w:?}: need C = W[1] * group ({group}) and W[0] divisible by group",
        x[1]
    );
    check_kernel_attr(attrs, &w[2..])?;
    Ok((Window::new(attrs, &x[2..], &w[2..], false)?, group))
}

fn check_kernel_attr(attrs: &Attrs, kernel: &[usize]) -> Result<()> {
    if let Some(k) = attrs.ints_opt("kernel_shape")? {
        ensure!(
            k.len() == kernel.len() && k.iter().zip(kernel).all(|(&a, &b)| a == b as i64),
            Invalid,
            "attribute 'kernel_shape' {k:?} differs from the weights' spatial shape {kernel:?}"
        );
    }
    Ok(())
}

fn check_bias(c: &InferCtx, i: usize, dtype: DType, m: usize) -> Result<()> {
    if c.has(i) {
        let b = c.input(i)?;
        ensure!(
            b.dtype == dtype,
            Invalid,
            "bias dtype {} differs from X dtype {dtype}",
            b.dtype
        );
        ensure!(
            b.shape.len() == 1 && b.shape[0] == m,
            Invalid,
            "bias must have shape [{m}], found {:?}",
            b.shape
        );
    }
    Ok(())
}

fn conv_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, w) = (c.input(0)?, c.input(1)?);
    ensure!(
        x.dtype.is_float(),
        Invalid,
        "X must be a float tensor, found {}",
        x.dtype
    );
    ensure!(
        w.dtype == x.dtype,
        Invalid,
        "W dtype {} differs from X dtype {}",
        w.dtype,
        x.dtype
    );
    let (win, _) = conv_setup(c.attrs, &x.shape, &w.shape)?;
    check_bias(c, 2, x.dtype, w.shape[0])?;
    let mut shape = vec![x.shape[0], w.shape[0]];
    shape.extend(win.out);
    one(ValueType::new(x.dtype, shape))
}

fn conv_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Dot>(c: &EvalCtx, x: &ArrayD<T>) -> Result<Tensor> {
        let w = c.input(1)?.typed::<T>()?;
        let bias = c.opt(2).map(|b| b.typed::<T>()).transpose()?;
        let (win, group) = conv_setup(c.attrs, x.shape(), w.shape())?;
        Ok(T::wrap(conv_nd(x, w, bias, &win, group)?))
    }
    let x = c.input(0)?;
    Ok(vec![match x {
        Tensor::F32(a) => go(c, a)?,
        Tensor::F64(a) => go(c, a)?,
        Tensor::F16(a) => go(c, a)?,
        Tensor::BF16(a) => go(c, a)?,
        o => bail!(Invalid, "X must be a float tensor, found {}", o.dtype()),
    }])
}

// ------------------------------------------------------------- ConvInteger

fn conv_integer_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, w) = (c.input(0)?, c.input(1)?);
    for (i, t) in [(0, x), (1, w)] {
        ensure!(
            matches!(t.dtype, DType::U8 | DType::I8),
            Invalid,
            "input {i} must be u8 or i8, found {}",
            t.dtype
        );
    }
    // x's zero point is per tensor, w's per tensor or per output channel.
    let m = w.shape.first().copied().unwrap_or(1);
    for (i, of, per_channel) in [(2, x, false), (3, w, true)] {
        if c.has(i) {
            let z = c.input(i)?;
            ensure!(
                z.dtype == of.dtype,
                Invalid,
                "zero point {i} dtype {} differs from its input's {}",
                z.dtype,
                of.dtype
            );
            let ok = z.shape.len() <= 1 && (z.numel() == 1 || (per_channel && z.numel() == m));
            ensure!(
                ok,
                Invalid,
                "zero point {i} must be a scalar{}, found shape {:?}",
                if per_channel {
                    format!(" or have {m} values")
                } else {
                    String::new()
                },
                z.shape
            );
        }
    }
    let (win, _) = conv_setup(c.attrs, &x.shape, &w.shape)?;
    let mut shape = vec![x.shape[0], w.shape[0]];
    shape.extend(win.out);
    one(ValueType::new(DType::I32, shape))
}

fn widen(t: &Tensor) -> Result<ArrayD<i32>> {
    match t.cast(DType::I32) {
        Tensor::I32(a) => Ok(a),
        o => Err(Error::Internal(format!(
            "cast to i32 produced {}",
            o.dtype()
        ))),
    }
}

fn conv_integer_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let mut x = widen(c.input(0)?)?;
    let mut w = widen(c.input(1)?)?;
    // Inference checked the zero points' sizes: x's has one value, w's one
    // or one per output channel.
    if let Some(z) = c.opt(2) {
        let z = widen(z)?.iter().copied().next().unwrap_or(0);
        x.mapv_inplace(|v| v - z);
    }
    if let Some(z) = c.opt(3) {
        let zs: Vec<i32> = widen(z)?.iter().copied().collect();
        for (i, mut f) in w.outer_iter_mut().enumerate() {
            let zi = zs.get(i).or(zs.first()).copied().unwrap_or(0);
            f.mapv_inplace(|v| v - zi);
        }
    }
    let (win, group) = conv_setup(c.attrs, x.shape(), w.shape())?;
    Ok(vec![Tensor::I32(conv_nd(&x, &w, None, &win, group)?)])
}

// ----------------------------------------------------------- ConvTranspose

/// ConvTranspose geometry; padding may be negative when `output_shape`
/// asks for more than the full result (it then extends with zeros).
pub(crate) struct Transposed {
    pub(crate) kernel: Vec<usize>,
    pub(crate) strides: Vec<usize>,
    pub(crate) dilations: Vec<usize>,
    pub(crate) begin: Vec<i64>,
    pub(crate) out: Vec<usize>,
    pub(crate) group: usize,
}

/// Follows the ONNX reference: SAME_* derive the padding from the output
/// shape (default input * stride), split with the extra pixel at the end for
/// SAME_UPPER; otherwise explicit pads apply and `output_shape`, if given,
/// only sets the size (cropping or zero-extending at the end).
pub(crate) fn transposed_setup(attrs: &Attrs, x: &[usize], w: &[usize]) -> Result<Transposed> {
    let group = ranks_and_group(attrs, x, w)?;
    ensure!(
        w[0] == x[1] && x[1].is_multiple_of(group),
        Invalid,
        "W shape {w:?} must start with X's {} channels, divisible by group {group}",
        x[1]
    );
    let n = x.len() - 2;
    let input = &x[2..];
    let kernel = w[2..].to_vec();
    check_kernel_attr(attrs, &kernel)?;
    let strides = to_usize(axis_ints(attrs, "strides", n, 1, 1)?);
    let dilations = to_usize(axis_ints(attrs, "dilations", n, 1, 1)?);
    let out_pad = match attrs.ints_opt("output_padding")? {
        Some(v) if v.len() == 2 * n => in_range("output_padding", &v[..n], 0)?,
        _ => axis_ints(attrs, "output_padding", n, 0, 0)?,
    };
    let requested = match attrs.ints_opt("output_shape")? {
        None | Some([]) => None,
        Some(v) if v.len() == n || v.len() == n + 2 => {
            Some(in_range("output_shape", &v[v.len() - n..], 1)?)
        }
        Some(v) => bail!(
            Invalid,
            "attribute 'output_shape' has {} values, expected {n}",
            v.len()
        ),
    };
    let full = |i: usize| -> i64 {
        (strides[i] * (input[i].max(1) - 1)) as i64
            + out_pad[i]
            + ((kernel[i].max(1) - 1) * dilations[i] + 1) as i64
    };
    let mode = auto_pad(attrs)?;
    let mut begin = vec![0i64; n];
    let mut out = vec![0usize; n];
    for i in 0..n {
        match mode {
            AutoPad::SameUpper | AutoPad::SameLower => {
                let o = requested
                    .as_ref()
                    .map_or((input[i] * strides[i]) as i64, |r| r[i]);
                let total = full(i) - o;
                begin[i] = if mode == AutoPad::SameUpper {
                    total.div_euclid(2)
                } else {
                    total - total.div_euclid(2)
                };
                out[i] = o as usize;
            }
            AutoPad::NotSet | AutoPad::Valid => {
                let (b, e) = if mode == AutoPad::NotSet {
                    explicit_pads(attrs, n)?
                } else {
                    (vec![0; n], vec![0; n])
                };
                begin[i] = b[i] as i64;
                let o = match &requested {
                    Some(r) => r[i],
                    None => full(i) - (b[i] + e[i]) as i64,
                };
                ensure!(
                    o >= 1,
                    Invalid,
                    "spatial axis {i}: output size {o} is not positive"
                );
                out[i] = o as usize;
            }
        }
    }
    Ok(Transposed {
        kernel,
        strides,
        dilations,
        begin,
        out,
        group,
    })
}

/// Adds column rows [(m, kernel offset)][input position] into the output
/// planes `out` (`channels` planes of shape `t.out`).
fn col2im<T: Dot>(
    cols: &Array2<T>,
    channels: usize,
    input: &[usize],
    t: &Transposed,
    out: &mut [T],
) {
    let nd = input.len();
    let ksize: usize = t.kernel.iter().product();
    let osize: usize = t.out.iter().product();
    let ostr = row_major_strides(&t.out);
    let mut kidx = vec![0usize; nd];
    for kf in 0..ksize {
        let mut iidx = vec![0usize; nd];
        for pos in 0..cols.ncols() {
            let mut at = Some(0usize);
            for d in 0..nd {
                let o = (iidx[d] * t.strides[d] + kidx[d] * t.dilations[d]) as i64 - t.begin[d];
                at = at
                    .filter(|_| o >= 0 && (o as usize) < t.out[d])
                    .map(|a| a + o as usize * ostr[d]);
            }
            next_index(&mut iidx, input);
            let Some(at) = at else { continue };
            for m in 0..channels {
                let v = cols[[m * ksize + kf, pos]];
                let dst = &mut out[m * osize + at];
                *dst = dst.add(v);
            }
        }
        next_index(&mut kidx, &t.kernel);
    }
}

fn conv_transpose_nd<T: Dot>(
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    bias: Option<&ArrayD<T>>,
    t: &Transposed,
) -> Result<ArrayD<T>> {
    let (n, c, mg) = (x.shape()[0], x.shape()[1], w.shape()[1]);
    let (group, cg) = (t.group, c / t.group);
    let m = mg * group;
    let input = &x.shape()[2..];
    let isize: usize = input.iter().product();
    let osize: usize = t.out.iter().product();
    let ksize: usize = t.kernel.iter().product();
    let xs = x.as_standard_layout();
    let xs = xs
        .as_slice()
        .ok_or_else(|| Error::Internal("standard layout is not contiguous".into()))?;
    let w2 = w
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((c, mg * ksize))
        .map_err(shape_err)?;
    let mut out = vec![T::default(); n * m * osize];
    for b in 0..n {
        for g in 0..group {
            let start = (b * c + g * cg) * isize;
            let xg = ArrayView2::from_shape((cg, isize), &xs[start..start + cg * isize])
                .map_err(shape_err)?;
            let wg = w2.slice(s![g * cg..(g + 1) * cg, ..]);
            let cols = T::matmul(wg.t(), xg);
            let o = (b * m + g * mg) * osize;
            col2im(&cols, mg, input, t, &mut out[o..o + mg * osize]);
        }
    }
    if let Some(bias) = bias {
        let bias: Vec<T> = bias.iter().copied().collect();
        for (i, v) in out.iter_mut().enumerate() {
            *v = v.add(bias[(i / osize.max(1)) % m]);
        }
    }
    let mut shape = vec![n, m];
    shape.extend(&t.out);
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(shape_err)
}

fn conv_transpose_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (x, w) = (c.input(0)?, c.input(1)?);
    ensure!(
        x.dtype.is_float(),
        Invalid,
        "X must be a float tensor, found {}",
        x.dtype
    );
    ensure!(
        w.dtype == x.dtype,
        Invalid,
        "W dtype {} differs from X dtype {}",
        w.dtype,
        x.dtype
    );
    let t = transposed_setup(c.attrs, &x.shape, &w.shape)?;
    let m = w.shape[1] * t.group;
    check_bias(c, 2, x.dtype, m)?;
    let mut shape = vec![x.shape[0], m];
    shape.extend(t.out);
    one(ValueType::new(x.dtype, shape))
}

fn conv_transpose_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Dot>(c: &EvalCtx, x: &ArrayD<T>) -> Result<Tensor> {
        let w = c.input(1)?.typed::<T>()?;
        let bias = c.opt(2).map(|b| b.typed::<T>()).transpose()?;
        let t = transposed_setup(c.attrs, x.shape(), w.shape())?;
        Ok(T::wrap(conv_transpose_nd(x, w, bias, &t)?))
    }
    let x = c.input(0)?;
    Ok(vec![match x {
        Tensor::F32(a) => go(c, a)?,
        Tensor::F64(a) => go(c, a)?,
        Tensor::F16(a) => go(c, a)?,
        Tensor::BF16(a) => go(c, a)?,
        o => bail!(Invalid, "X must be a float tensor, found {}", o.dtype()),
    }])
}

pub fn register(t: &mut OpTable) {
    t.add("Conv", conv_infer, conv_eval);
    t.add("ConvInteger", conv_integer_infer, conv_integer_eval);
    t.add("ConvTranspose", conv_transpose_infer, conv_transpose_eval);
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

    fn arr(shape: &[usize], v: Vec<f32>) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    #[test]
    fn window_shapes() {
        let w = Window::new(
            &attrs(&[("strides", Attr::Ints(vec![2, 2]))]),
            &[5, 5],
            &[3, 3],
            false,
        )
        .unwrap();
        assert_eq!(w.out, vec![2, 2]);
        let a = attrs(&[
            ("auto_pad", Attr::String("SAME_LOWER".into())),
            ("strides", Attr::Ints(vec![2])),
        ]);
        let w = Window::new(&a, &[4], &[3], false).unwrap();
        assert_eq!((w.out[0], w.begin[0], w.end[0]), (2, 1, 0));
        let a = attrs(&[("auto_pad", Attr::String("SAME_UPPER".into()))]);
        let w = Window::new(&a, &[4], &[2], false).unwrap();
        assert_eq!((w.out[0], w.begin[0], w.end[0]), (4, 0, 1));
        // ceil_mode: 4 with k3 s2 -> 2 windows; 2 + pads 1,1 with k3 s3 -> 1.
        let a = attrs(&[("strides", Attr::Ints(vec![2]))]);
        assert_eq!(Window::new(&a, &[4], &[3], true).unwrap().out, vec![2]);
        let a = attrs(&[
            ("strides", Attr::Ints(vec![3])),
            ("pads", Attr::Ints(vec![1, 1])),
        ]);
        assert_eq!(Window::new(&a, &[2], &[3], true).unwrap().out, vec![1]);
        assert!(Window::new(&Attrs::default(), &[2], &[3], false).is_err());
    }

    #[test]
    fn conv_with_padding_and_groups() {
        // 1x1x3x3 input of 0..9, 3x3 ones kernel, pad 1: box sums.
        let x = arr(&[1, 1, 3, 3], (0..9).map(|v| v as f32).collect());
        let w = arr(&[1, 1, 3, 3], vec![1.0; 9]);
        let a = attrs(&[("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
        let (win, g) = conv_setup(&a, x.shape(), w.shape()).unwrap();
        let y = conv_nd(&x, &w, None, &win, g).unwrap();
        assert_eq!(
            y,
            arr(
                &[1, 1, 3, 3],
                vec![8., 15., 12., 21., 36., 27., 20., 33., 24.]
            )
        );
        // Two groups of one channel each with per-group scale and bias.
        let x = arr(&[1, 2, 2], vec![1., 2., 3., 4.]);
        let w = arr(&[2, 1, 1], vec![10., 100.]);
        let b = arr(&[2], vec![1., 2.]);
        let a = attrs(&[("group", Attr::Int(2))]);
        let (win, g) = conv_setup(&a, x.shape(), w.shape()).unwrap();
        let y = conv_nd(&x, &w, Some(&b), &win, g).unwrap();
        assert_eq!(y, arr(&[1, 2, 2], vec![11., 21., 302., 402.]));
        // Dilation 2 and stride 2 in 1-D.
        let x = arr(&[1, 1, 7], (0..7).map(|v| v as f32).collect());
        let w = arr(&[1, 1, 2], vec![1., 1.]);
        let a = attrs(&[
            ("dilations", Attr::Ints(vec![2])),
            ("strides", Attr::Ints(vec![2])),
        ]);
        let (win, g) = conv_setup(&a, x.shape(), w.shape()).unwrap();
        assert_eq!(
            conv_nd(&x, &w, None, &win, g).unwrap(),
            arr(&[1, 1, 3], vec![2., 6., 10.])
        );
    }

    #[test]
    fn conv_transpose_matches_hand_values() {
        // 1-D: [0,1,2] with kernel [1,1,1] -> [0,1,3,3,2].
        let x = arr(&[1, 1, 3], vec![0., 1., 2.]);
        let w = arr(&[1, 1, 3], vec![1., 1., 1.]);
        let t = transposed_setup(&Attrs::default(), x.shape(), w.shape()).unwrap();
        assert_eq!(
            conv_transpose_nd(&x, &w, None, &t).unwrap(),
            arr(&[1, 1, 5], vec![0., 1., 3., 3., 2.])
        );
        // Stride 2 with output_shape 8: the extra position is zero.
        let a = attrs(&[
            ("strides", Attr::Ints(vec![2])),
            ("output_shape", Attr::Ints(vec![8])),
        ]);
        let t = transposed_setup(&a, x.shape(), w.shape()).unwrap();
        let y = conv_transpose_nd(&x, &w, None, &t).unwrap();
        assert_eq!(y, arr(&[1, 1, 8], vec![0., 0., 1., 1., 3., 2., 2., 0.]));
        // SAME_UPPER, stride 2: 6 outputs, the crop is at the end.
        let a = attrs(&[
            ("strides", Attr::Ints(vec![2])),
            ("auto_pad", Attr::String("SAME_UPPER".into())),
        ]);
        let t = transposed_setup(&a, x.shape(), w.shape()).unwrap();
        let y = conv_transpose_nd(&x, &w, None, &t).unwrap();
        assert_eq!(y, arr(&[1, 1, 6], vec![0., 0., 1., 1., 3., 2.]));
    }
}
