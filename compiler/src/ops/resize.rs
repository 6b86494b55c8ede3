//! Resize (opsets 10..19+) and its predecessor Upsample.
//!
//! Follows `onnx/reference/ops/op_resize.py`: interpolation is separable,
//! so the input is resized one axis at a time (in f64), each output
//! coordinate mapping back to a source coordinate, a small kernel of
//! weights and the edge-clamped source indices they apply to. The result
//! is saturate-cast to the input dtype (integers round half to even).
//!
//! Before opset 11 (Upsample, Resize-10) there is no coordinate mode: the
//! mapping is `x / scale` and nearest picks floor when upsampling and ceil
//! when downsampling, as onnxruntime does for these opsets.

use half::{bf16, f16};
use ndarray::ArrayD;

use super::{EvalCtx, InferCtx, OpTable, one};
use crate::dispatch_num;
use crate::error::{Error, Result};
use crate::ir::{Attrs, DType, Elem, Tensor, ValueType};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Coord {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
    TfCropAndResize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
    /// Pre-opset-11 behaviour: floor when upsampling, ceil when downsampling.
    Legacy,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Nearest(Nearest),
    Linear,
    Cubic(f64),
}

/// The interpolation settings shared by every axis.
#[derive(Clone, Copy, Debug)]
struct Kernel {
    mode: Mode,
    coord: Coord,
    antialias: bool,
    exclude_outside: bool,
    extrapolation: f64,
}

/// What the inputs and attributes decide: the output shape, the scale of
/// every axis, the (full-rank) roi and the order in which axes are resized.
#[derive(Debug)]
struct Plan {
    out: Vec<usize>,
    scales: Vec<f64>,
    /// Per axis (start, end).
    roi: Option<Vec<(f64, f64)>>,
    order: Vec<usize>,
}

fn kernel(attrs: &Attrs, opset: i64) -> Result<Kernel> {
    let legacy = opset < 11;
    let mode = match attrs.string("mode", "nearest")? {
        "nearest" => Mode::Nearest(if legacy {
            Nearest::Legacy
        } else {
            match attrs.string("nearest_mode", "round_prefer_floor")? {
                "round_prefer_floor" => Nearest::RoundPreferFloor,
                "round_prefer_ceil" => Nearest::RoundPreferCeil,
                "floor" => Nearest::Floor,
                "ceil" => Nearest::Ceil,
                m => bail!(Invalid, "attribute 'nearest_mode': unknown value {m:?}"),
            }
        }),
        "linear" => Mode::Linear,
        "cubic" if !legacy => Mode::Cubic(attrs.float("cubic_coeff_a", -0.75)? as f64),
        m => bail!(Invalid, "attribute 'mode': unknown value {m:?}"),
    };
    let coord = if legacy {
        Coord::Asymmetric
    } else {
        match attrs.string("coordinate_transformation_mode", "half_pixel")? {
            "half_pixel" => Coord::HalfPixel,
            "half_pixel_symmetric" => Coord::HalfPixelSymmetric,
            "pytorch_half_pixel" => Coord::PytorchHalfPixel,
            "align_corners" => Coord::AlignCorners,
            "asymmetric" => Coord::Asymmetric,
            "tf_half_pixel_for_nn" => Coord::TfHalfPixelForNn,
            "tf_crop_and_resize" => Coord::TfCropAndResize,
            m => bail!(
                Invalid,
                "attribute 'coordinate_transformation_mode': unknown value {m:?}"
            ),
        }
    };
    let antialias = attrs.int("antialias", 0)? != 0;
    ensure!(
        !(antialias && matches!(mode, Mode::Nearest(_))),
        Invalid,
        "attribute 'antialias' applies to linear and cubic modes only"
    );
    Ok(Kernel {
        mode,
        coord,
        antialias,
        exclude_outside: attrs.int("exclude_outside", 0)? != 0,
        extrapolation: attrs.float("extrapolation_value", 0.0)? as f64,
    })
}

/// A present, non-empty tensor input (opset 11 passes empty tensors for
/// the unused one of scales and sizes).
fn given(t: Option<&Tensor>) -> Option<&Tensor> {
    t.filter(|t| !t.is_empty())
}

/// Rounds `v` to the precision of a float dtype, because the reference
/// does its roi arithmetic in the roi tensor's dtype.
fn round_to(d: DType, v: f64) -> f64 {
    match d {
        DType::F32 => v as f32 as f64,
        DType::F16 => f16::from_f64(v).to_f64(),
        DType::BF16 => bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// The scales, sizes and roi inputs of a node, by opset.
struct Inputs<'a> {
    roi: Option<&'a Tensor>,
    scales: Option<&'a Tensor>,
    sizes: Option<&'a Tensor>,
}

fn plan(attrs: &Attrs, opset: i64, op: &str, shape: &[usize], inp: Inputs) -> Result<Plan> {
    let rank = shape.len();
    let axes: Vec<usize> = match attrs.ints_opt("axes")? {
        Some(a) if opset >= 18 => {
            let axes = a
                .iter()
                .map(|&x| super::axis(x, rank))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| Error::Invalid(format!("attribute 'axes': {e}")))?;
            for (i, x) in axes.iter().enumerate() {
                ensure!(
                    !axes[..i].contains(x),
                    Invalid,
                    "attribute 'axes': axis {x} is repeated"
                );
            }
            axes
        }
        _ => (0..rank).collect(),
    };
    let n = axes.len();
    let mut scales = vec![1.0; rank];
    let mut out = shape.to_vec();
    match (given(inp.scales), given(inp.sizes)) {
        (Some(_), Some(_)) => bail!(Invalid, "only one of scales and sizes may be given"),
        (Some(s), None) => {
            ensure!(
                s.dtype().is_float(),
                Invalid,
                "scales must be a float tensor, found {}",
                s.dtype()
            );
            let v = s.to_f64_vec();
            ensure!(
                v.len() == n,
                Invalid,
                "scales has {} values, expected {n}",
                v.len()
            );
            for (&d, &s) in axes.iter().zip(&v) {
                ensure!(
                    s > 0.0 && s.is_finite(),
                    Invalid,
                    "scales must be positive, found {s}"
                );
                scales[d] = s;
                out[d] = (s * shape[d] as f64).floor() as usize;
            }
        }
        (None, Some(z)) => {
            ensure!(
                op == "Resize" && opset >= 11,
                Invalid,
                "sizes is not an input of {op}-{opset}"
            );
            let v = z.to_i64_vec()?;
            ensure!(
                v.len() == n,
                Invalid,
                "sizes has {} values, expected {n}",
                v.len()
            );
            for (&d, &z) in axes.iter().zip(&v) {
                ensure!(z >= 0, Invalid, "sizes must not be negative, found {z}");
                ensure!(
                    shape[d] > 0,
                    Invalid,
                    "cannot resize axis {d} of length 0 to {z}"
                );
                scales[d] = z as f64 / shape[d] as f64;
                out[d] = z as usize;
            }
            keep_aspect_ratio(attrs, opset, shape, &axes, &mut scales, &mut out)?;
        }
        (None, None) => bail!(Invalid, "one of scales and sizes must be given"),
    }
    let roi = match given(inp.roi) {
        Some(r) => {
            ensure!(
                r.dtype().is_float(),
                Invalid,
                "roi must be a float tensor, found {}",
                r.dtype()
            );
            let v = r.to_f64_vec();
            ensure!(
                v.len() == 2 * n,
                Invalid,
                "roi has {} values, expected {}",
                v.len(),
                2 * n
            );
            let mut full = vec![(0.0, 1.0); rank];
            for (i, &d) in axes.iter().enumerate() {
                full[d] = (v[i], v[n + i]);
            }
            Some(full)
        }
        None => None,
    };
    Ok(Plan {
        out,
        scales,
        roi,
        order: axes,
    })
}

/// Applies `keep_aspect_ratio_policy` (opset 18) to sizes-derived scales.
fn keep_aspect_ratio(
    attrs: &Attrs,
    opset: i64,
    shape: &[usize],
    axes: &[usize],
    scales: &mut [f64],
    out: &mut [usize],
) -> Result<()> {
    let policy = if opset >= 18 {
        attrs.string("keep_aspect_ratio_policy", "stretch")?
    } else {
        "stretch"
    };
    let pick = axes.iter().map(|&d| scales[d]);
    let scale = match policy {
        "stretch" => return Ok(()),
        "not_larger" => pick.fold(f64::INFINITY, f64::min),
        "not_smaller" => pick.fold(f64::NEG_INFINITY, f64::max),
        p => bail!(
            Invalid,
            "attribute 'keep_aspect_ratio_policy': unknown value {p:?}"
        ),
    };
    for &d in axes {
        scales[d] = scale;
        // Rounds half up, as the spec's round_int.
        out[d] = (scale * shape[d] as f64 + 0.5) as usize;
    }
    Ok(())
}

/// Input slots of roi, scales and sizes, by op and opset.
pub(crate) fn slots(op: &str, opset: i64) -> [Option<usize>; 3] {
    match (op, opset) {
        ("Upsample", ..=8) => [None, None, None],
        ("Upsample", _) | ("Resize", ..=10) => [None, Some(1), None],
        _ => [Some(1), Some(2), Some(3)],
    }
}

/// Upsample-7 keeps its scales in an attribute.
fn attr_scales(attrs: &Attrs, op: &str, opset: i64) -> Result<Option<Tensor>> {
    if op != "Upsample" || opset >= 9 {
        return Ok(None);
    }
    let s = attrs
        .floats_opt("scales")?
        .ok_or_else(|| Error::Invalid("missing required attribute 'scales'".into()))?;
    Tensor::from_vec(&[s.len()], s.to_vec()).map(Some)
}

fn resize_infer(c: &InferCtx, op: &str) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    ensure!(
        x.dtype != DType::Bool,
        Invalid,
        "input must be numeric, found bool"
    );
    kernel(c.attrs, c.opset)?;
    let attr = attr_scales(c.attrs, op, c.opset)?;
    let [roi, scales, sizes] = slots(op, c.opset);
    // Scales and sizes decide the shape; roi only matters at run time.
    let need = |slot: Option<usize>, what| slot.map_or(Ok(None), |i| c.const_input(i, what));
    let inp = Inputs {
        roi: roi.and_then(|i| c.consts.get(i).copied().flatten()),
        scales: attr
            .as_ref()
            .map_or_else(|| need(scales, "scales"), |a| Ok(Some(a)))?,
        sizes: need(sizes, "sizes")?,
    };
    let p = plan(c.attrs, c.opset, op, &x.shape, inp)?;
    one(ValueType::new(x.dtype, p.out))
}

fn resize_eval(c: &EvalCtx, op: &str) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let inputs: Vec<Option<&Tensor>> = (0..c.inputs.len()).map(|i| c.opt(i)).collect();
    let mut data = x.to_f64_vec();
    let mut shape = x.shape().to_vec();
    for (d, taps) in axis_taps(c.attrs, c.opset, op, x.shape(), &inputs)? {
        data = resize_axis(&data, &shape, d, &taps);
        shape[d] = taps.len();
    }
    let out = dispatch_num!(x, a => saturate(a, &shape, data)?,
        o => bail!(Invalid, "input must be numeric, found {}", o.dtype()));
    Ok(vec![out])
}

/// The resampling steps, one per resized axis in order (identities skipped
/// like the reference does): the axis and its taps. `inputs` are the node's
/// inputs where known (the roi, scales and sizes must be).
pub(crate) fn axis_taps(
    attrs: &Attrs,
    opset: i64,
    op: &str,
    shape: &[usize],
    inputs: &[Option<&Tensor>],
) -> Result<Vec<(usize, Vec<Tap>)>> {
    let k = kernel(attrs, opset)?;
    let attr = attr_scales(attrs, op, opset)?;
    let [roi, scales, sizes] = slots(op, opset);
    let get = |slot: Option<usize>| slot.and_then(|i| inputs.get(i).copied().flatten());
    let inp = Inputs {
        roi: get(roi),
        scales: attr.as_ref().or(get(scales)),
        sizes: get(sizes),
    };
    let roi_dtype = given(inp.roi).map(Tensor::dtype);
    let p = plan(attrs, opset, op, shape, inp)?;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
    let mut cur = shape.to_vec();
    let mut steps = Vec::new();
    for &d in &p.order {
        let roi = p.roi.as_ref().map(|r| r[d]);
        let identity = close(p.scales[d], 1.0)
            && p.out[d] == cur[d]
            && roi.is_none_or(|(s, e)| close(s, 0.0) && close(e, 1.0));
        if identity {
            continue;
        }
        steps.push((d, taps(&k, p.scales[d], cur[d], p.out[d], roi, roi_dtype)?));
        cur[d] = p.out[d];
    }
    Ok(steps)
}

/// How one output position is computed: a weighted sum of source
/// positions, or the extrapolation value.
pub(crate) enum Tap {
    Sum(Vec<(usize, f64)>),
    Const(f64),
}

fn resize_axis(data: &[f64], shape: &[usize], axis: usize, taps: &[Tap]) -> Vec<f64> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let n = shape[axis];
    let mut out = Vec::with_capacity(outer * taps.len() * inner);
    for o in 0..outer {
        for t in taps {
            for i in 0..inner {
                out.push(match t {
                    Tap::Const(v) => *v,
                    Tap::Sum(w) => w
                        .iter()
                        .map(|&(j, c)| c * data[(o * n + j) * inner + i])
                        .sum(),
                });
            }
        }
    }
    out
}

/// The source coordinate of output position `y` along one axis, and
/// whether it falls outside the input (tf_crop_and_resize only).
fn source_coord(
    coord: Coord,
    y: f64,
    scale: f64,
    in_w: usize,
    out_int: usize,
    roi: (f64, f64),
    rnd: &dyn Fn(f64) -> f64,
) -> (f64, bool) {
    let out_w = scale * in_w as f64;
    let last = in_w as f64 - 1.0;
    let x = match coord {
        Coord::AlignCorners if out_w == 1.0 => 0.0,
        Coord::AlignCorners => y * last / (out_w - 1.0),
        Coord::Asymmetric => y / scale,
        Coord::TfHalfPixelForNn => (y + 0.5) / scale,
        Coord::PytorchHalfPixel if out_w == 1.0 => -0.5,
        Coord::PytorchHalfPixel | Coord::HalfPixel => (y + 0.5) / scale - 0.5,
        Coord::HalfPixelSymmetric => {
            let adjustment = out_int as f64 / out_w;
            let offset = in_w as f64 / 2.0 * (1.0 - adjustment);
            offset + (y + 0.5) / scale - 0.5
        }
        Coord::TfCropAndResize => {
            // The reference computes the roi terms in the roi's dtype.
            let (s, e) = roi;
            let span = rnd(e - s);
            let x = if out_w == 1.0 {
                rnd(rnd(span * last) / 2.0)
            } else {
                y * span * last / (out_w - 1.0)
            };
            let x = x + rnd(s * last);
            return (x, x < 0.0 || x > last);
        }
    };
    (x, false)
}

/// The weights of a kernel at fractional offset `ratio` in (0, 1] from
/// the source pixel to the left of the sample point.
fn coeffs(k: &Kernel, ratio: f64, scale: f64) -> Vec<f64> {
    match k.mode {
        Mode::Nearest(m) => {
            let right = if ratio == 1.0 {
                true
            } else {
                match m {
                    Nearest::RoundPreferFloor => ratio > 0.5,
                    Nearest::RoundPreferCeil => ratio >= 0.5,
                    Nearest::Floor => false,
                    Nearest::Ceil => true,
                    Nearest::Legacy => scale < 1.0,
                }
            };
            vec![f64::from(u8::from(!right)), f64::from(u8::from(right))]
        }
        Mode::Linear if k.antialias => {
            let s = scale.min(1.0);
            let start = (-1.0 / s).floor() as i64 + 1;
            let c: Vec<f64> = (start..2 - start)
                .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                .collect();
            normalized(c)
        }
        Mode::Linear => vec![1.0 - ratio, ratio],
        Mode::Cubic(a) if k.antialias => {
            let s = scale.min(1.0);
            let start = (-2.0 / s).floor() as i64 + 1;
            let c: Vec<f64> = (start..2 - start)
                .map(|i| cubic(a, s * (i as f64 - ratio)))
                .collect();
            normalized(c)
        }
        Mode::Cubic(a) => [ratio + 1.0, ratio, 1.0 - ratio, 2.0 - ratio]
            .iter()
            .map(|&x| cubic(a, x))
            .collect(),
    }
}

/// Keys' cubic convolution kernel with parameter `a`.
fn cubic(a: f64, x: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

fn normalized(c: Vec<f64>) -> Vec<f64> {
    let s: f64 = c.iter().sum();
    c.into_iter().map(|v| v / s).collect()
}

/// The taps of every output position along one axis.
fn taps(
    k: &Kernel,
    scale: f64,
    in_w: usize,
    out_w: usize,
    roi: Option<(f64, f64)>,
    roi_dtype: Option<DType>,
) -> Result<Vec<Tap>> {
    ensure!(
        in_w > 0 || out_w == 0,
        Invalid,
        "cannot resize an axis of length 0 to {out_w}"
    );
    let roi = match (k.coord, roi) {
        (Coord::TfCropAndResize, None) => bail!(Invalid, "tf_crop_and_resize needs the roi input"),
        (_, r) => r.unwrap_or((0.0, 1.0)),
    };
    let rnd = |v: f64| roi_dtype.map_or(v, |d| round_to(d, v));
    (0..out_w)
        .map(|y| {
            let (x, outside) = source_coord(k.coord, y as f64, scale, in_w, out_w, roi, &rnd);
            if outside {
                return Ok(Tap::Const(k.extrapolation));
            }
            Ok(Tap::Sum(weights(k, x, scale, in_w)))
        })
        .collect()
}

/// The source indices (edge-clamped) and weights for sample point `x`.
fn weights(k: &Kernel, x: f64, scale: f64, in_w: usize) -> Vec<(usize, f64)> {
    let floor = x.floor();
    // A sample exactly on a pixel counts as ratio 1 from its left neighbour.
    let ratio = if x == floor { 1.0 } else { x - floor };
    let mut c = coeffs(k, ratio, scale);
    let n = c.len() as i64;
    let pad = n / 2;
    // Window placement exactly as the reference computes it, in padded
    // coordinates (the kernel length is always even).
    let xp = x + pad as f64;
    let p = xp.floor();
    let start = p as i64 - pad + i64::from(xp != p);
    let idx: Vec<i64> = (0..n).map(|j| start + j - pad).collect();
    if k.exclude_outside {
        for (w, &i) in c.iter_mut().zip(&idx) {
            if i < 0 || i >= in_w as i64 {
                *w = 0.0;
            }
        }
        let s: f64 = c.iter().sum();
        let s = if s == 0.0 { 1.0 } else { s };
        c.iter_mut().for_each(|w| *w /= s);
    }
    idx.iter()
        .zip(c)
        .map(|(&i, w)| (i.clamp(0, in_w as i64 - 1) as usize, w))
        .collect()
}

/// The largest finite value of a float dtype (saturating casts clip to it).
pub(crate) fn float_max(d: DType) -> f64 {
    match d {
        DType::F16 => f16::MAX.to_f64(),
        DType::BF16 => bf16::MAX.to_f64(),
        DType::F32 => f32::MAX as f64,
        _ => f64::MAX,
    }
}

/// The reference's `saturate_cast`: integers round half to even, and both
/// integers and floats clip to the dtype's range.
fn saturate<T: Elem>(_: &ArrayD<T>, shape: &[usize], data: Vec<f64>) -> Result<Tensor> {
    let d = T::DTYPE;
    let (lo, hi) = if d.is_float() {
        (-float_max(d), float_max(d))
    } else {
        let bits = d.size_bytes() as u32 * 8;
        if d.is_signed() {
            (
                -(2f64.powi(bits as i32 - 1)),
                2f64.powi(bits as i32 - 1) - 1.0,
            )
        } else {
            (0.0, 2f64.powi(bits as i32) - 1.0)
        }
    };
    let v = data
        .into_iter()
        .map(|v| {
            let v = if d.is_float() { v } else { v.round_ties_even() };
            T::from_f64(if v.is_nan() { v } else { v.clamp(lo, hi) })
        })
        .collect();
    Tensor::from_vec(shape, v)
}

pub fn register(t: &mut OpTable) {
    t.add(
        "Resize",
        |c| resize_infer(c, "Resize"),
        |c| resize_eval(c, "Resize"),
    );
    t.add(
        "Upsample",
        |c| resize_infer(c, "Upsample"),
        |c| resize_eval(c, "Upsample"),
    );
}

#[cfg(test)]
mod tests {
    use crate::ir::{Attr, Tensor};
    use crate::ops::reduce::tests::{f32s, i64s, run};

    fn mode(m: &str) -> (&'static str, Attr) {
        ("mode", Attr::String(m.into()))
    }

    #[test]
    fn half_pixel_linear_clamps_at_edges() {
        let x = f32s(&[2], &[1., 2.]);
        let y = run(
            "Resize",
            13,
            &[mode("linear")],
            &[x, None, None, i64s(&[4])],
        )
        .unwrap();
        assert_eq!(y[0].to_f64_vec(), vec![1., 1.25, 1.75, 2.]);
    }

    #[test]
    fn integers_round_half_to_even() {
        let x = Some(Tensor::from_vec::<u8>(&[2], vec![0, 1]).unwrap());
        let y = run(
            "Resize",
            13,
            &[mode("linear")],
            &[x, None, None, i64s(&[4])],
        )
        .unwrap();
        assert_eq!(
            y[0],
            Tensor::from_vec::<u8>(&[4], vec![0, 0, 1, 1]).unwrap()
        );
    }

    #[test]
    fn legacy_nearest_floors_up_and_ceils_down() {
        let x = f32s(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
        let s = f32s(&[4], &[1., 1., 2., 2.]);
        let y = run("Upsample", 9, &[], &[x, s]).unwrap();
        assert_eq!(y[0].shape(), &[1, 1, 4, 4]);
        assert_eq!(&y[0].to_f64_vec()[..8], &[1., 1., 2., 2., 1., 1., 2., 2.]);
        let x = f32s(&[4], &[1., 2., 3., 4.]);
        let y = run("Resize", 10, &[], &[x, f32s(&[1], &[0.6])]).unwrap();
        assert_eq!(y[0].to_f64_vec(), vec![1., 3.]);
    }

    #[test]
    fn legacy_linear_is_asymmetric() {
        let x = f32s(&[3], &[1., 2., 3.]);
        let scales = ("scales", Attr::Floats(vec![2.]));
        let y = run("Upsample", 7, &[mode("linear"), scales], &[x]).unwrap();
        assert_eq!(y[0].to_f64_vec(), vec![1., 1.5, 2., 2.5, 3., 3.]);
    }

    #[test]
    fn rejects_bad_inputs() {
        let x = f32s(&[2], &[1., 2.]);
        let both = [x.clone(), None, f32s(&[1], &[2.]), i64s(&[4])];
        assert!(run("Resize", 13, &[], &both).is_err());
        assert!(run("Resize", 13, &[], &[x.clone(), None, f32s(&[2], &[2., 2.])]).is_err());
        assert!(
            run(
                "Resize",
                13,
                &[mode("bicubic")],
                &[x, None, f32s(&[1], &[2.])]
            )
            .is_err()
        );
    }
}
