//! Pooling (ops/pool.rs semantics), any spatial rank, NCHW: MaxPool (with
//! the optional Indices output and storage_order), AveragePool, LpPool,
//! their Global forms (a window covering the whole plane) and MaxUnpool.
//!
//! A pooling window is a box: along each spatial axis the taps that land
//! inside the input form one contiguous run, whatever the padding, dilation
//! or ceil_mode. The compiler computes, per axis and output position, the
//! first tap's input coordinate, how many taps are inside and how many are
//! inside the padded extent (for count_include_pad), into a small table;
//! the kernel walks output rows (work items = plane x first output axis)
//! and folds each window with nested loops.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{I8, I64};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::{NodeCx, Table, math};
use crate::codegen::builder::{Elt, Kb, mem};
use crate::codegen::lower::{Buf, Lower};
use crate::error::Result;

pub fn register(t: &mut Table) {
    t.add(
        &[
            "MaxPool",
            "AveragePool",
            "LpPool",
            "GlobalAveragePool",
            "GlobalMaxPool",
            "GlobalLpPool",
        ],
        pool,
    );
    t.add(&["MaxUnpool"], max_unpool);
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Max,
    Avg { include_pad: bool },
    Lp(f64),
}

/// Per spatial axis: input size, output size, dilation, and per output
/// position (first tap coordinate, taps inside, taps inside the padding).
struct Axis {
    input: usize,
    out: usize,
    dil: i64,
    rows: Vec<[i64; 3]>,
}

fn geometry(cx: &NodeCx, spatial: &[usize]) -> Result<Vec<Axis>> {
    if cx.node.op.starts_with("Global") {
        return Ok(spatial
            .iter()
            .map(|&n| Axis {
                input: n,
                out: 1,
                dil: 1,
                rows: vec![[0, n as i64, n as i64]],
            })
            .collect());
    }
    let mut full = vec![0, 0];
    full.extend(spatial);
    let w = crate::ops::pool_window(cx.attrs(), &full)?;
    Ok((0..spatial.len())
        .map(|d| {
            let (n, s, dil, b) = (
                spatial[d] as i64,
                w.strides[d] as i64,
                w.dilations[d] as i64,
                w.begin[d] as i64,
            );
            let e = w.end[d] as i64;
            let rows = (0..w.out[d] as i64)
                .map(|o| {
                    let at = |k: i64| o * s + k * dil - b;
                    let ks = 0..w.kernel[d] as i64;
                    let inside: Vec<i64> =
                        ks.clone().filter(|&k| (0..n).contains(&at(k))).collect();
                    let padded = ks.filter(|&k| at(k) < n + e).count() as i64;
                    match inside.first() {
                        Some(&k) => [at(k), inside.len() as i64, padded],
                        None => [0, 0, padded],
                    }
                })
                .collect();
            Axis {
                input: spatial[d],
                out: w.out[d],
                dil,
                rows,
            }
        })
        .collect())
}

fn pool(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?.clone();
    let y = cx.out(0).clone();
    let idx_out = cx.outs.get(1).cloned();
    let dt = x.ty.dtype;
    let shape = x.ty.shape.clone();
    ensure!(
        shape.len() >= 3 || (cx.node.op.starts_with("Global") && shape.len() >= 2),
        Invalid,
        "X must have rank >= 3 (N, C, spatial...), found shape {shape:?}"
    );
    let op = cx.node.op.as_str();
    let kind = match op {
        "MaxPool" | "GlobalMaxPool" => Kind::Max,
        "AveragePool" | "GlobalAveragePool" => Kind::Avg {
            include_pad: cx.attrs().int("count_include_pad", 0)? != 0,
        },
        _ => {
            let p = cx.attrs().float("p", 2.0)? as f64;
            ensure!(
                p > 0.0,
                Invalid,
                "attribute 'p' must be positive, found {p}"
            );
            Kind::Lp(p)
        }
    };
    let spatial = &shape[2..];
    let axes = geometry(cx, spatial)?;
    let planes = shape[0] * shape[1];
    let isize: usize = spatial.iter().product();
    let osize: usize = axes.iter().map(|a| a.out).product();
    if planes * osize == 0 {
        return Ok(());
    }
    let col_major = cx.attrs().int("storage_order", 0)? == 1;
    let mut table = Vec::new();
    let mut toff = Vec::new();
    for a in &axes {
        toff.push(table.len() as i64);
        for r in &a.rows {
            table.extend(r.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    let tbuf = lw.data(table)?;
    // Row-major input and output strides, and the index output's strides.
    let nd = axes.len();
    let mut ist = vec![1i64; nd];
    let mut ost = vec![1i64; nd];
    for d in (0..nd.saturating_sub(1)).rev() {
        ist[d] = ist[d + 1] * axes[d + 1].input as i64;
        ost[d] = ost[d + 1] * axes[d + 1].out as i64;
    }
    let mut cst = vec![1i64; nd];
    for d in 1..nd {
        cst[d] = cst[d - 1] * axes[d - 1].input as i64;
    }
    let xst = if col_major { cst } else { ist.clone() };
    let out0 = axes.first().map_or(1, |a| a.out);
    let dils: Vec<i64> = axes.iter().map(|a| a.dil).collect();
    let outs: Vec<usize> = axes.iter().map(|a| a.out).collect();
    let mut bufs = vec![x.buf, y.buf, tbuf];
    if let Some(i) = &idx_out {
        bufs.push(i.buf);
    }
    let has_idx = idx_out.is_some();
    let sz = dt.size_bytes() as i64;
    let ct = Elt(dt).compute(1);
    let fl = dt.is_float();
    let signed = Elt(dt).signed();
    let g = Geo {
        toff,
        ist,
        ost,
        xst,
        dils,
        outs,
    };
    lw.kernel(bufs, planes * out0, |kb| {
        let (xp, yp, tp) = (kb.arg(0), kb.arg(1), kb.arg(2));
        let ip = if has_idx { Some(kb.arg(3)) } else { None };
        let (begin, end) = (kb.begin, kb.end);
        kb.for_range(begin, end, 1, |kb, item| {
            let p = kb.b.ins().udiv_imm_u(item, out0 as i64);
            let o0 = kb.b.ins().urem_imm_u(item, out0 as i64);
            let xplane = kb.muli(p, isize as i64);
            let xplane_p = kb.gep(xp, xplane, sz);
            let yplane = kb.muli(p, osize as i64);
            let z = kb.i(0);
            let mut st = State {
                rows: Vec::new(),
                out_off: z,
            };
            let mut at_window = |kb: &mut Kb, st: &State| {
                // Fold the taps: nested loops over each axis's inside run.
                let zero = kb.constant(ct, 0.0);
                let acc = kb.var(ct, zero);
                let neg1 = kb.i(-1);
                let best_i = kb.var(I64, neg1);
                let mut body = |kb: &mut Kb, off: Value, ioff: Value| {
                    let a = kb.gep(xplane_p, off, sz);
                    let v = kb.load_elt(dt, a, 1);
                    let cur = kb.b.use_var(acc);
                    match kind {
                        Kind::Max => {
                            let bi = kb.b.use_var(best_i);
                            let none = kb.b.ins().icmp_imm_s(IntCC::Equal, bi, -1);
                            let better = if fl {
                                let gt = kb.b.ins().fcmp(FloatCC::GreaterThan, v, cur);
                                let bn = kb.b.ins().fcmp(FloatCC::Unordered, cur, cur);
                                let vo = kb.b.ins().fcmp(FloatCC::Ordered, v, v);
                                let r = kb.b.ins().band(bn, vo);
                                kb.b.ins().bor(gt, r)
                            } else {
                                let cc = if signed {
                                    IntCC::SignedGreaterThan
                                } else {
                                    IntCC::UnsignedGreaterThan
                                };
                                kb.b.ins().icmp(cc, v, cur)
                            };
                            let take = kb.b.ins().bor(none, better);
                            let nv = kb.b.ins().select(take, v, cur);
                            kb.b.def_var(acc, nv);
                            let ni = kb.b.ins().select(take, ioff, bi);
                            kb.b.def_var(best_i, ni);
                        }
                        Kind::Avg { .. } => {
                            let nv = kb.b.ins().fadd(cur, v);
                            kb.b.def_var(acc, nv);
                        }
                        Kind::Lp(pw) => {
                            let av = kb.b.ins().fabs(v);
                            let t = if pw == 1.0 {
                                av
                            } else if pw == 2.0 {
                                kb.b.ins().fmul(av, av)
                            } else {
                                let l = math::log(kb, ct, av);
                                let k = kb.constant(ct, pw);
                                let m = kb.b.ins().fmul(l, k);
                                math::exp(kb, ct, m)
                            };
                            let nv = kb.b.ins().fadd(cur, t);
                            kb.b.def_var(acc, nv);
                        }
                    }
                };
                let z = kb.i(0);
                taps(kb, &g, &st.rows, 0, z, z, &mut body);
                let r = kb.b.use_var(acc);
                let r = match kind {
                    Kind::Max => {
                        let bi = kb.b.use_var(best_i);
                        let none = kb.b.ins().icmp_imm_s(IntCC::Equal, bi, -1);
                        kb.b.ins().select(none, zero, r)
                    }
                    Kind::Avg { include_pad } => {
                        let mut n = kb.i(1);
                        for row in &st.rows {
                            let c = if include_pad { row.2 } else { row.1 };
                            n = kb.b.ins().imul(n, c);
                        }
                        let nf = kb.b.ins().fcvt_from_sint(ct, n);
                        kb.b.ins().fdiv(r, nf)
                    }
                    Kind::Lp(pw) => {
                        if pw == 1.0 {
                            r
                        } else if pw == 2.0 {
                            kb.b.ins().sqrt(r)
                        } else {
                            let l = math::log(kb, ct, r);
                            let k = kb.constant(ct, 1.0 / pw);
                            let m = kb.b.ins().fmul(l, k);
                            math::exp(kb, ct, m)
                        }
                    }
                };
                let o = kb.add(yplane, st.out_off);
                let ya = kb.gep(yp, o, sz);
                kb.store_elt(dt, r, ya, 1);
                if let Some(ip) = ip {
                    let bi = kb.b.use_var(best_i);
                    let none = kb.b.ins().icmp_imm_s(IntCC::Equal, bi, -1);
                    let full = kb.add(xplane, bi);
                    let v = kb.b.ins().select(none, bi, full);
                    let ia = kb.gep(ip, o, 8);
                    kb.b.ins().store(mem(), v, ia, 0);
                }
            };
            outputs(kb, &g, tp, 0, Some(o0), &mut st, &mut at_window);
        });
    })
}

struct Geo {
    toff: Vec<i64>,
    ist: Vec<i64>,
    ost: Vec<i64>,
    xst: Vec<i64>,
    dils: Vec<i64>,
    outs: Vec<usize>,
}

/// The current output position: per axis (first tap coordinate, taps
/// inside, padded taps), and the output offset in the plane.
struct State {
    rows: Vec<(Value, Value, Value)>,
    out_off: Value,
}

/// Loops over output positions of axes `d..`; axis 0's position is the
/// work item's.
fn outputs(
    kb: &mut Kb,
    g: &Geo,
    tp: Value,
    d: usize,
    fixed: Option<Value>,
    st: &mut State,
    f: &mut dyn FnMut(&mut Kb, &State),
) {
    if d == g.outs.len() {
        f(kb, st);
        return;
    }
    let mut one = |kb: &mut Kb, o: Value, st: &mut State| {
        let e = kb.muli(o, 24);
        let base = kb.addi(e, g.toff[d]);
        let base = kb.add(tp, base);
        let first = kb.b.ins().load(I64, mem(), base, 0);
        let cnt = kb.b.ins().load(I64, mem(), base, 8);
        let pc = kb.b.ins().load(I64, mem(), base, 16);
        let saved = st.out_off;
        let oo = kb.muli(o, g.ost[d]);
        st.out_off = kb.add(saved, oo);
        st.rows.push((first, cnt, pc));
        outputs(kb, g, tp, d + 1, None, st, f);
        st.rows.pop();
        st.out_off = saved;
    };
    match fixed {
        Some(o) => one(kb, o, st),
        None => {
            let (lo, hi) = (kb.i(0), kb.i(g.outs[d] as i64));
            kb.for_range(lo, hi, 1, |kb, o| one(kb, o, st));
        }
    }
}

/// Loops over the taps of axes `d..` inside the input; the body gets the
/// row-major offset and the offset the Indices output reports.
fn taps(
    kb: &mut Kb,
    g: &Geo,
    rows: &[(Value, Value, Value)],
    d: usize,
    off: Value,
    ioff: Value,
    body: &mut dyn FnMut(&mut Kb, Value, Value),
) {
    if d == rows.len() {
        body(kb, off, ioff);
        return;
    }
    let (first, cnt, _) = rows[d];
    let (lo, hi) = (kb.i(0), cnt);
    kb.for_range(lo, hi, 1, |kb, t| {
        let dt = kb.muli(t, g.dils[d]);
        let pos = kb.add(first, dt);
        let a = kb.muli(pos, g.ist[d]);
        let o = kb.add(off, a);
        let b = kb.muli(pos, g.xst[d]);
        let io = kb.add(ioff, b);
        taps(kb, g, rows, d + 1, o, io, body)
    });
}

/// MaxUnpool: zero the output, then scatter X to the flat positions in I
/// (of the unpooled shape; an output_shape larger than that keeps the
/// values at the same multi-index). Out-of-range indices stop the run.
fn max_unpool(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?.clone();
    let i = cx.input(1)?.clone();
    let y = cx.out(0).clone();
    let shape = &x.ty.shape;
    ensure!(shape.len() >= 3, Invalid, "X must have rank >= 3");
    let n = shape.len() - 2;
    let attrs = cx.attrs();
    let kernel = attrs
        .ints_opt("kernel_shape")?
        .ok_or_else(|| crate::error::Error::Invalid("missing 'kernel_shape'".into()))?
        .to_vec();
    let strides = attrs
        .ints_opt("strides")?
        .map_or(vec![1; n], <[i64]>::to_vec);
    let pads = attrs
        .ints_opt("pads")?
        .map_or(vec![0; 2 * n], <[i64]>::to_vec);
    ensure!(
        kernel.len() == n && strides.len() == n && pads.len() == 2 * n,
        Invalid,
        "kernel_shape, strides and pads must match the {n} spatial axes"
    );
    let mut inferred = shape[..2].to_vec();
    for d in 0..n {
        let v = (shape[d + 2] as i64 - 1) * strides[d] - (pads[d] + pads[d + n]) + kernel[d];
        ensure!(
            v >= 1,
            Invalid,
            "spatial axis {d}: unpooled size {v} is not positive"
        );
        inferred.push(v as usize);
    }
    let out = y.ty.shape.clone();
    let total: usize = inferred.iter().product();
    let dt = y.ty.dtype;
    let sz = dt.size_bytes() as i64;
    let ybytes = y.ty.numel() * sz as usize;
    let count = x.ty.numel();
    lw.kernel(vec![y.buf], 1, |kb| {
        let yp = kb.arg(0);
        let (lo, hi) = (kb.i(0), kb.i(ybytes as i64));
        kb.for_range(lo, hi, 1, |kb, j| {
            let a = kb.add(yp, j);
            let z = kb.b.ins().iconst(I8, 0);
            kb.b.ins().store(mem(), z, a, 0);
        });
    })?;
    let same = out == inferred;
    let mut ost = vec![1i64; out.len()];
    for d in (0..out.len().saturating_sub(1)).rev() {
        ost[d] = ost[d + 1] * out[d + 1] as i64;
    }
    lw.kernel_checked(vec![x.buf, i.buf, y.buf, Buf::Work(0)], 1, true, |kb| {
        let (xp, ip, yp, status) = (kb.arg(0), kb.arg(1), kb.arg(2), kb.arg(3));
        let (lo, hi) = (kb.i(0), kb.i(count as i64));
        kb.for_range(lo, hi, 1, |kb, k| {
            let ia = kb.gep(ip, k, 8);
            let idx = kb.b.ins().load(I64, mem(), ia, 0);
            let bad =
                kb.b.ins()
                    .icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, idx, total as i64);
            let ok = kb.b.ins().icmp_imm_s(IntCC::Equal, bad, 0);
            kb.if_(bad, |kb| {
                let three = kb.i(3);
                kb.b.ins().store(mem(), three, status, 0);
            });
            kb.if_(ok, |kb| {
                let dst = if same {
                    idx
                } else {
                    // Re-index the unpooled multi-index into the output.
                    let mut rem = idx;
                    let mut o = kb.i(0);
                    for d in (0..inferred.len()).rev() {
                        let q = kb.b.ins().udiv_imm_u(rem, inferred[d] as i64);
                        let r = kb.b.ins().urem_imm_u(rem, inferred[d] as i64);
                        let t = kb.muli(r, ost[d]);
                        o = kb.add(o, t);
                        rem = q;
                    }
                    o
                };
                let xa = kb.gep(xp, k, sz);
                let v = kb.b.ins().load(Elt(dt).storage(), mem(), xa, 0);
                let ya = kb.gep(yp, dst, sz);
                kb.b.ins().store(mem(), v, ya, 0);
            });
        });
    })?;
    Ok(())
}
