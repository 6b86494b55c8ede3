//! Normalizations with the interpreter's semantics (ops/norm.rs):
//! BatchNormalization (inference) as one elementwise nest; Layer, RMS,
//! Instance, Group, MeanVariance and Lp normalization as group kernels (one
//! work item per group of elements that share statistics, statistics pass(es)
//! then a normalize pass, f32x4 along a contiguous innermost axis), followed
//! by an in-place affine nest for scale/bias (f32 Layer and RMS
//! normalization of shared scale and bias rows take `znorm`'s AVX-512
//! row function instead); LRN as a per-(n, c) kernel summing squares over
//! the channel window.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, Type, Value};

use super::elementwise::convert;
use super::reduce::{Pass, fold, nest, norm_axis, offsets, plan};
use super::softmax::fit;
use super::znorm::{self, RowNorm};
use super::{NodeCx, Table, math};
use crate::codegen::builder::{Elt, Kb};
use crate::codegen::lower::{Lower, Operand};
use crate::codegen::nest::{self as lnest, Access};
use crate::error::Result;
use crate::ir::DType;

pub fn register(t: &mut Table) {
    t.add(&["BatchNormalization"], batch_norm);
    t.add(
        &[
            "LayerNormalization",
            "RMSNormalization",
            "InstanceNormalization",
            "GroupNormalization",
            "MeanVarianceNormalization",
            "LpNormalization",
        ],
        group_norm,
    );
    t.add(&["LRN"], lrn);
}

fn batch_norm(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    ensure!(
        cx.outs.len() <= 1 && cx.attrs().int("training_mode", 0)? == 0,
        Unsupported,
        "BatchNormalization in training mode"
    );
    let x = cx.input(0)?;
    let y = cx.out(0);
    let shape = &x.ty.shape;
    ensure!(shape.len() >= 2, Invalid, "X must have rank >= 2");
    let eps = cx.attrs().float("epsilon", 1e-5)? as f64;
    let per_feature = cx.node.opset < 9 && cx.attrs().int("spatial", 1)? == 0;
    // Parameters index by channel (or by feature: every dim after N).
    let pshape: Vec<usize> = if per_feature {
        let mut s = shape.clone();
        s[0] = 1;
        s
    } else {
        let mut s = vec![1; shape.len()];
        s[1] = shape[1];
        s
    };
    let mut ins = vec![Access::dense(x.buf, x.ty.dtype, shape)];
    let mut dts = vec![x.ty.dtype];
    for i in 1..5 {
        let p = cx.input(i)?;
        ensure!(
            p.ty.numel() == pshape.iter().product::<usize>(),
            Invalid,
            "parameter {i} has shape {:?}",
            p.ty.shape
        );
        ins.push(Access::broadcast(p.buf, p.ty.dtype, &pshape, shape));
        dts.push(p.ty.dtype);
    }
    let out = Access::dense(y.buf, y.ty.dtype, shape);
    let xdt = x.ty.dtype;
    lnest::emit(lw, shape, &ins, &[out], true, move |kb, v, l| {
        let v: Vec<Value> = v
            .iter()
            .zip(&dts)
            .map(|(&v, &d)| {
                if l == 1 && Elt(d).compute(1) != Elt(xdt).compute(1) {
                    convert(kb, v, d, xdt)
                } else {
                    v
                }
            })
            .collect();
        let ty = Elt(xdt).compute(l);
        let e = kb.constant(ty, eps);
        let var = kb.b.ins().fadd(v[4], e);
        let sd = kb.b.ins().sqrt(var);
        let d = kb.b.ins().fsub(v[0], v[3]);
        let d = kb.b.ins().fmul(v[1], d);
        let q = kb.b.ins().fdiv(d, sd);
        vec![kb.b.ins().fadd(q, v[2])]
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Standardize,
    Rms,
    Mvn,
    L1,
    L2,
}

fn group_norm(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?.clone();
    let y = cx.out(0).clone();
    let shape = x.ty.shape.clone();
    let rank = shape.len();
    let attrs = cx.attrs();
    let eps = attrs.float("epsilon", 1e-5)? as f64;
    let op = cx.node.op.as_str();
    // The grouping: `gshape` is a view of X (same elements), `mask` marks
    // the axes each group spans.
    let (gshape, mask, kind) = match op {
        "LayerNormalization" | "RMSNormalization" => {
            ensure!(rank >= 1, Invalid, "X must have rank >= 1");
            let a = norm_axis(attrs.int("axis", -1)?, rank)?;
            let k = if op == "RMSNormalization" {
                Kind::Rms
            } else {
                Kind::Standardize
            };
            (shape.clone(), (0..rank).map(|d| d >= a).collect(), k)
        }
        "InstanceNormalization" => {
            ensure!(rank >= 2, Invalid, "input must have rank >= 2");
            (
                shape.clone(),
                (0..rank).map(|d| d >= 2).collect(),
                Kind::Standardize,
            )
        }
        "GroupNormalization" => {
            ensure!(rank >= 2, Invalid, "X must have rank >= 2");
            let g = groups(cx, shape[1])?;
            let rest = shape[1..].iter().product::<usize>() / g;
            (
                vec![shape[0], g, rest],
                vec![false, false, true],
                Kind::Standardize,
            )
        }
        "MeanVarianceNormalization" => {
            let raw = attrs
                .ints_opt("axes")?
                .map_or(vec![0, 2, 3], <[i64]>::to_vec);
            let mut mask = vec![false; rank];
            for a in raw {
                mask[norm_axis(a, rank)?] = true;
            }
            (shape.clone(), mask, Kind::Mvn)
        }
        _ => {
            let p = attrs.int("p", 2)?;
            ensure!(
                p == 1 || p == 2,
                Invalid,
                "attribute 'p' must be 1 or 2, found {p}"
            );
            ensure!(rank >= 1, Invalid, "input must have rank >= 1");
            let a = norm_axis(attrs.int("axis", -1)?, rank)?;
            let k = if p == 1 { Kind::L1 } else { Kind::L2 };
            (shape.clone(), (0..rank).map(|d| d == a).collect(), k)
        }
    };
    if x.ty.numel() == 0 {
        return Ok(());
    }
    if let Some(norm) = row_norm(lw, cx, (&x, &y), eps, &mask) {
        let param = |i: usize| cx.ins.get(i).and_then(Option::as_ref);
        let rows = x.ty.numel() / norm.n;
        return znorm::lower(lw, (&x, &y), (param(1), param(2)), rows, norm);
    }
    let stats: Vec<Operand> = if op == "LayerNormalization" {
        cx.outs.iter().skip(1).cloned().collect()
    } else {
        Vec::new()
    };
    groups_kernel(lw, &x, &y, &stats, &gshape, &mask, kind, eps)?;
    affine(lw, cx, &y)
}

/// The AVX-512 row form of Layer and RMS normalization (`mask`: the
/// normalized axes, trailing): f32, no Mean or InvStdDev outputs, and a
/// scale and bias (where present) of one row that all rows share.
fn row_norm(
    lw: &Lower,
    cx: &NodeCx,
    (x, y): (&Operand, &Operand),
    eps: f64,
    mask: &[bool],
) -> Option<RowNorm> {
    let op = cx.node.op.as_str();
    let rms = op == "RMSNormalization";
    if !lw.avx512
        || !(rms || op == "LayerNormalization")
        || x.ty.dtype != DType::F32
        || y.ty.dtype != DType::F32
        || cx.outs.len() > 1
    {
        return None;
    }
    let shape = &x.ty.shape;
    let a = mask.iter().position(|&m| m)?;
    let dense = lnest::row_major(&shape[a..]);
    // Present and shared by the rows: Some(true); absent: Some(false).
    let param = |i: usize| match cx.ins.get(i).and_then(Option::as_ref) {
        None => Some(false),
        Some(o) => {
            let fits = o.ty.dtype == DType::F32 && o.ty.shape.len() <= shape.len() && {
                let st = Access::broadcast(o.buf, o.ty.dtype, &o.ty.shape, shape).strides;
                st[..a].iter().all(|&s| s == 0)
                    && (a..shape.len()).all(|d| shape[d] == 1 || st[d] == dense[d - a])
            };
            fits.then_some(true)
        }
    };
    Some(RowNorm {
        n: shape[a..].iter().product(),
        eps: eps as f32,
        rms,
        scale: param(1)?,
        bias: if rms { false } else { param(2)? },
    })
}

fn groups(cx: &NodeCx, chans: usize) -> Result<usize> {
    let g = cx.attrs().req_int("num_groups")?;
    ensure!(
        g >= 1 && chans.is_multiple_of(g as usize),
        Invalid,
        "attribute 'num_groups' ({g}) must divide the {chans} channels"
    );
    Ok(g as usize)
}

#[allow(clippy::too_many_arguments)]
fn groups_kernel(
    lw: &mut Lower,
    x: &Operand,
    y: &Operand,
    stats: &[Operand],
    shape: &[usize],
    mask: &[bool],
    kind: Kind,
    eps: f64,
) -> Result<()> {
    let p = plan(shape, mask);
    let count: usize = shape
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(d, _)| d)
        .product();
    let dims: Vec<(usize, Vec<i64>)> = p.kept.iter().map(|&(n, s, _)| (n, vec![s])).collect();
    let items: usize = p.kept.iter().map(|d| d.0).product();
    let red = p.red.clone();
    let (xdt, ydt) = (x.ty.dtype, y.ty.dtype);
    let ty1 = Elt(xdt).compute(1);
    let vl = if xdt == DType::F32 && ydt == DType::F32 {
        4
    } else {
        1
    };
    let (xs, ys) = (xdt.size_bytes() as i64, ydt.size_bytes() as i64);
    let mut bufs = vec![x.buf, y.buf];
    bufs.extend(stats.iter().map(|s| s.buf));
    let sdts: Vec<DType> = stats.iter().map(|s| s.ty.dtype).collect();
    lw.kernel(bufs, items, |kb| {
        let (xp, yp) = (kb.arg(0), kb.arg(1));
        let sps: Vec<Value> = (0..sdts.len()).map(|j| kb.arg(2 + j)).collect();
        let (begin, end) = (kb.begin, kb.end);
        kb.for_range(begin, end, 1, |kb, item| {
            let b = offsets(kb, item, &dims, 1);
            let xa = kb.gep(xp, b[0], xs);
            let ya = kb.gep(yp, b[0], ys);
            let load = move |kb: &mut Kb, a: Value, w: u32| kb.load_elt(xdt, a, w);
            let add = |kb: &mut Kb, a: Value, b: Value| kb.b.ins().fadd(a, b);
            let sum = |kb: &mut Kb, step: &dyn Fn(&mut Kb, Value, Value) -> Value| {
                let pass = Pass {
                    init: 0.0,
                    init_bits: None,
                    step,
                    combine: &add,
                };
                fold(kb, &red, xa, xs, ty1, 1, vl, &load, &pass)
            };
            let n = kb.constant(ty1, count as f64);
            let one = kb.constant(ty1, 1.0);
            let sq = |kb: &mut Kb, a: Value, x: Value| kb.fmadd(x, x, a);
            // y = (x - shift) * scale, or 0 where `zero` (Lp of a zero norm).
            let (shift, scale, zero) = match kind {
                Kind::Standardize | Kind::Mvn => {
                    let s = sum(kb, &add);
                    let mean = kb.b.ins().fdiv(s, n);
                    let inv = if kind == Kind::Standardize {
                        let dev = move |kb: &mut Kb, a: Value, x: Value| {
                            let ty = kb.b.func.dfg.value_type(x);
                            let m = fit(kb, mean, ty);
                            let d = kb.b.ins().fsub(x, m);
                            kb.fmadd(d, d, a)
                        };
                        let v = sum(kb, &dev);
                        let var = kb.b.ins().fdiv(v, n);
                        let e = kb.constant(ty1, eps);
                        let ve = kb.b.ins().fadd(var, e);
                        let sd = kb.b.ins().sqrt(ve);
                        kb.b.ins().fdiv(one, sd)
                    } else {
                        let s2 = sum(kb, &sq);
                        let msq = kb.b.ins().fdiv(s2, n);
                        let m2 = kb.b.ins().fmul(mean, mean);
                        let var = kb.b.ins().fsub(msq, m2);
                        let z = kb.constant(ty1, 0.0);
                        let var = kb.b.ins().fmax(var, z);
                        let sd = kb.b.ins().sqrt(var);
                        let e = kb.constant(ty1, 1e-9);
                        let sde = kb.b.ins().fadd(sd, e);
                        kb.b.ins().fdiv(one, sde)
                    };
                    for (sp, (k, &sdt)) in sps.iter().zip(sdts.iter().enumerate()) {
                        let v = if k == 0 { mean } else { inv };
                        let v = if Elt(sdt).compute(1) != ty1 {
                            convert(kb, v, xdt, sdt)
                        } else {
                            v
                        };
                        let a = kb.gep(*sp, item, sdt.size_bytes() as i64);
                        kb.store_elt(sdt, v, a, 1);
                    }
                    (Some(mean), inv, None)
                }
                Kind::Rms => {
                    let s2 = sum(kb, &sq);
                    let ms = kb.b.ins().fdiv(s2, n);
                    let e = kb.constant(ty1, eps);
                    let me = kb.b.ins().fadd(ms, e);
                    let sd = kb.b.ins().sqrt(me);
                    (None, kb.b.ins().fdiv(one, sd), None)
                }
                Kind::L1 | Kind::L2 => {
                    let norm = if kind == Kind::L1 {
                        let ab = |kb: &mut Kb, a: Value, x: Value| {
                            let ax = kb.b.ins().fabs(x);
                            kb.b.ins().fadd(a, ax)
                        };
                        sum(kb, &ab)
                    } else {
                        let s = sum(kb, &sq);
                        kb.b.ins().sqrt(s)
                    };
                    let z = kb.constant(ty1, 0.0);
                    let is0 = kb.b.ins().fcmp(FloatCC::Equal, norm, z);
                    (None, norm, Some(is0))
                }
            };
            let z = kb.i(0);
            let mut body = |kb: &mut Kb, off: Value, ll: u32| {
                let w = ll.max(1);
                let a = kb.gep(xa, off, xs);
                let v = kb.load_elt(xdt, a, w);
                let ty: Type = Elt(xdt).compute(w);
                let v = match shift {
                    Some(m) => {
                        let m = fit(kb, m, ty);
                        kb.b.ins().fsub(v, m)
                    }
                    None => v,
                };
                let s = fit(kb, scale, ty);
                let r = match zero {
                    // Lp: `scale` is the norm; a zero norm gives zeros.
                    Some(c) => {
                        let q = kb.b.ins().fdiv(v, s);
                        let zv = kb.constant(ty, 0.0);
                        kb.b.ins().select(c, zv, q)
                    }
                    None => kb.b.ins().fmul(v, s),
                };
                let r = if w == 1 && Elt(ydt).compute(1) != ty1 {
                    convert(kb, r, xdt, ydt)
                } else {
                    r
                };
                let b = kb.gep(ya, off, ys);
                kb.store_elt(ydt, r, b, w);
            };
            nest(kb, &red, z, vl, &mut body);
        });
    })
}

/// `y = y * scale + bias` in place. Per-channel (and per-group)
/// parameters index a `[N, G, C / G, rest]` view of Y; Layer and RMS
/// normalization's broadcast to Y.
fn affine(lw: &mut Lower, cx: &NodeCx, y: &Operand) -> Result<()> {
    let shape = &y.ty.shape;
    let op = cx.node.op.as_str();
    let slots: &[usize] = match op {
        "RMSNormalization" => &[1],
        "LayerNormalization" | "InstanceNormalization" | "GroupNormalization" => &[1, 2],
        _ => &[],
    };
    let ydt = y.ty.dtype;
    // The nest runs over `vshape`, a view of Y; parameters get strides in it.
    type Strides = Box<dyn Fn(&Operand) -> Vec<i64>>;
    let (vshape, pstrides): (Vec<usize>, Strides) = match op {
        "InstanceNormalization" | "GroupNormalization" => {
            let rest: usize = shape[2..].iter().product();
            let c = shape[1];
            let g = if op == "GroupNormalization" {
                groups(cx, c)?
            } else {
                c
            };
            let per_group = op == "GroupNormalization" && cx.node.opset < 21;
            (
                vec![shape[0], g, c / g, rest],
                Box::new(move |_| {
                    if per_group {
                        vec![0, 1, 0, 0]
                    } else {
                        vec![0, (c / g) as i64, 1, 0]
                    }
                }),
            )
        }
        _ => {
            let sh = shape.clone();
            (
                shape.clone(),
                Box::new(move |o: &Operand| {
                    Access::broadcast(o.buf, o.ty.dtype, &o.ty.shape, &sh).strides
                }),
            )
        }
    };
    let present: Vec<(usize, &Operand)> = slots
        .iter()
        .filter_map(|&i| cx.ins.get(i).and_then(|o| o.as_ref()).map(|o| (i, o)))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let yacc = Access::dense(y.buf, ydt, &vshape);
    let mut ins = vec![yacc.clone()];
    let mut roles = Vec::new();
    let mut dts = Vec::new();
    for (i, o) in &present {
        ins.push(Access {
            buf: o.buf,
            dt: o.ty.dtype,
            offset: 0,
            strides: pstrides(o),
        });
        roles.push(*i == 2);
        dts.push(o.ty.dtype);
    }
    lnest::emit(lw, &vshape, &ins, &[yacc], true, move |kb, v, l| {
        let mut r = v[0];
        for (k, (&is_bias, &d)) in roles.iter().zip(&dts).enumerate() {
            let p = if l == 1 && Elt(d).compute(1) != Elt(ydt).compute(1) {
                convert(kb, v[k + 1], d, ydt)
            } else {
                v[k + 1]
            };
            r = if is_bias {
                kb.b.ins().fadd(r, p)
            } else {
                kb.b.ins().fmul(r, p)
            };
        }
        vec![r]
    })
}

/// y = x / (bias + alpha / size * sum of x^2 over the channel window)^beta.
fn lrn(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?.clone();
    let y = cx.out(0).clone();
    let shape = x.ty.shape.clone();
    ensure!(shape.len() >= 2, Invalid, "X must have rank >= 2");
    let attrs = cx.attrs();
    let size = attrs.req_int("size")?.max(1) as usize;
    let alpha = attrs.float("alpha", 1e-4)? as f64;
    let beta = attrs.float("beta", 0.75)? as f64;
    let bias = attrs.float("bias", 1.0)? as f64;
    let (n, c) = (shape[0], shape[1]);
    let rest: usize = shape[2..].iter().product();
    if n * c * rest == 0 {
        return Ok(());
    }
    let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let dt = x.ty.dtype;
    let sz = dt.size_bytes() as i64;
    let l = if dt == DType::F32 { 4 } else { 1 };
    lw.kernel(vec![x.buf, y.buf], n * c, |kb| {
        let (xp, yp) = (kb.arg(0), kb.arg(1));
        let (begin, end) = (kb.begin, kb.end);
        kb.for_range(begin, end, 1, |kb, item| {
            let ch = kb.b.ins().urem_imm_u(item, c as i64);
            let img = kb.b.ins().isub(item, ch);
            let jlo = kb.addi(ch, -(lo as i64));
            let z = kb.i(0);
            let jlo = kb.b.ins().smax(jlo, z);
            let jhi = kb.addi(ch, hi as i64 + 1);
            let cc = kb.i(c as i64);
            let jhi = kb.b.ins().smin(jhi, cc);
            let row = kb.muli(item, rest as i64);
            let (s0, s1) = (kb.i(0), kb.i(rest as i64));
            kb.for_vec(s0, s1, l, |kb, s, w| {
                let ty = Elt(dt).compute(w);
                let z = kb.constant(ty, 0.0);
                let acc = kb.var(ty, z);
                kb.for_range(jlo, jhi, 1, |kb, j| {
                    let pj = kb.add(img, j);
                    let o = kb.muli(pj, rest as i64);
                    let o = kb.add(o, s);
                    let a = kb.gep(xp, o, sz);
                    let v = kb.load_elt(dt, a, w);
                    let cur = kb.b.use_var(acc);
                    let nv = kb.fmadd(v, v, cur);
                    kb.b.def_var(acc, nv);
                });
                let sq = kb.b.use_var(acc);
                let k = kb.constant(ty, alpha / size as f64);
                let bb = kb.constant(ty, bias);
                let base = kb.fmadd(sq, k, bb);
                let lg = math::log(kb, ty, base);
                let be = kb.constant(ty, beta);
                let t = kb.b.ins().fmul(lg, be);
                let den = math::exp(kb, ty, t);
                let o = kb.add(row, s);
                let a = kb.gep(xp, o, sz);
                let v = kb.load_elt(dt, a, w);
                let r = kb.b.ins().fdiv(v, den);
                let b = kb.gep(yp, o, sz);
                kb.store_elt(dt, r, b, w);
            });
        });
    })
}
