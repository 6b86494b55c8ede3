//! Data movement. The source index of each output element of a pure
//! movement op (Transpose, Slice, Pad, Tile, DepthToSpace, Gather with
//! constant indices, ...) is a compile-time fact: it is computed by running
//! the op's reference implementation on an index tensor ("probe"). When that
//! map is affine the op becomes a strided copy (vectorized when unit-stride);
//! otherwise a gather through a table of source indices in read-only data.
//! Concat and Split are strided copies into/out of sub-boxes. Gather with
//! indices known only at run time has its own kernel with bounds checks
//! (GatherElements, GatherND and Trilu with run-time inputs: indexed.rs).
//! Transposes that are batches of 2-D transposes of 4-byte elements (the
//! layout pass's NCHW <-> NHWC conversions) use a tiled kernel instead.

use crate::codegen::nest::row_major;
use std::sync::Arc;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{I32, I64};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value};

use super::{NodeCx, Table, ztranspose};
use crate::codegen::builder::{Elt, Kb, mem};
use crate::codegen::lower::{Buf, Lower, Operand};
use crate::codegen::nest::{self, Access};
use crate::error::Result;
use crate::ir::{DType, Tensor, ValueType};
use crate::ops;

pub fn register(t: &mut Table) {
    t.add(
        &[
            "Transpose",
            "Reshape",
            "Flatten",
            "Squeeze",
            "Unsqueeze",
            "Expand",
            "Tile",
            "Slice",
            "DepthToSpace",
            "SpaceToDepth",
            "Pad",
            "CenterCropPad",
            "Compress",
        ],
        probed,
    );
    t.add(&["Gather"], gather);
    t.add(&["Concat"], concat);
    t.add(&["Split"], split);
}

/// Above this many elements a non-affine map would need a huge table.
const MAX_TABLE: usize = 1 << 24;

pub fn probed(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let op = cx.node.op.as_str();
    let x = cx.input(0)?;
    if op == "Transpose"
        && let Some((b, r, s)) = layout_transpose(cx)?
    {
        return transpose_2d(lw, x.buf, cx.out(0).buf, (b, r, s));
    }
    let n = x.ty.numel();
    // The probe: element j of the data input becomes j + 1; 0 marks "fill".
    let iota = Tensor::from_vec(&x.ty.shape, (1..=n as i64).collect::<Vec<i64>>())?;
    let mut probe_inputs: Vec<Option<Arc<Tensor>>> = Vec::new();
    for (i, inp) in cx.ins.iter().enumerate() {
        if inp.is_none() {
            probe_inputs.push(None);
            continue;
        }
        if i == 0 {
            probe_inputs.push(Some(Arc::new(iota.clone())));
        } else if op == "Pad" && i == 2 {
            // The fill value is data: probe with the marker.
            probe_inputs.push(Some(Arc::new(Tensor::scalar(0i64))));
        } else if let Some(c) = cx.consts[i] {
            probe_inputs.push(Some(Arc::new(c.clone())));
        } else {
            bail!(
                Unsupported,
                "input {i} of {op} must be a constant for native code (its values decide which elements move)"
            );
        }
    }
    let out_types: Vec<ValueType> = cx
        .outs
        .iter()
        .map(|o| ValueType::new(DType::I64, o.ty.shape.clone()))
        .collect();
    let refs: Vec<Option<&Tensor>> = probe_inputs.iter().map(|t| t.as_deref()).collect();
    let maps = ops::eval(op, cx.attrs(), cx.node.opset, refs, &out_types)?;
    let fill = if op == "Pad" {
        cx.ins.get(2).and_then(|o| o.clone())
    } else {
        None
    };
    for (o, map) in cx.outs.iter().zip(&maps) {
        let map = map.to_i64_vec()?;
        gather_map(lw, x, o, &map, fill.as_ref())?;
    }
    Ok(())
}

/// Emits `out[i] = map[i] == 0 ? fill : x[map[i] - 1]`.
fn gather_map(
    lw: &mut Lower,
    x: &Operand,
    out: &Operand,
    map: &[i64],
    fill: Option<&Operand>,
) -> Result<()> {
    let shape = &out.ty.shape;
    if map.is_empty() {
        return Ok(());
    }
    if let Some(acc) = affine(shape, map) {
        let src = Access {
            buf: x.buf,
            dt: x.ty.dtype,
            offset: acc.0,
            strides: acc.1,
        };
        let dst = Access::dense(out.buf, out.ty.dtype, shape);
        return nest::emit(lw, shape, &[src], &[dst], true, |_, v, _| vec![v[0]]);
    }
    if map.len() > MAX_TABLE {
        bail!(
            Unsupported,
            "a {}-element irregular data movement (table limit {MAX_TABLE})",
            map.len()
        );
    }
    // Table of i32 source indices, -1 for fill.
    let table: Vec<u8> = map
        .iter()
        .flat_map(|&m| ((m - 1) as i32).to_le_bytes())
        .collect();
    let tbuf = lw.data(table)?;
    let dt = x.ty.dtype;
    let esz = dt.size_bytes() as i64;
    let fill_dt = fill.map(|f| f.ty.dtype);
    let mut bufs = vec![x.buf, out.buf, tbuf];
    if let Some(f) = fill {
        bufs.push(f.buf);
    }
    let total = map.len();
    let per = 4096;
    let items = total.div_ceil(per);
    lw.kernel(bufs, items, |kb| {
        let xp = kb.arg(0);
        let op = kb.arg(1);
        let tp = kb.arg(2);
        let fillv = match fill_dt {
            Some(fd) => {
                let fp = kb.arg(3);
                kb.load_elt(fd, fp, 1)
            }
            None => {
                let ty = Elt(dt).compute(1);
                if dt.is_float() {
                    kb.constant(ty, 0.0)
                } else {
                    kb.bits(ty, 0)
                }
            }
        };
        let (b, e) = (kb.begin, kb.end);
        let lo = kb.muli(b, per as i64);
        let hi = kb.muli(e, per as i64);
        let n = kb.i(total as i64);
        let hi = kb.b.ins().smin(hi, n);
        kb.for_range(lo, hi, 1, |kb, i| {
            let ta = kb.gep(tp, i, 4);
            let t = kb.b.ins().load(I32, mem(), ta, 0);
            let t = kb.b.ins().sextend(I64, t);
            let is_fill = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, t, 0);
            let z = kb.i(0);
            let safe = kb.b.ins().select(is_fill, z, t);
            let sa = kb.gep(xp, safe, esz);
            let v = kb.load_elt(dt, sa, 1);
            let v = kb.b.ins().select(is_fill, fillv, v);
            let da = kb.gep(op, i, esz);
            kb.store_elt(dt, v, da, 1);
        });
    })
}

/// `map[idx] - 1 == offset + sum(idx[d] * strides[d])` for every index, if
/// such offset and strides exist.
fn affine(shape: &[usize], map: &[i64]) -> Option<(i64, Vec<i64>)> {
    if map.contains(&0) {
        return None;
    }
    let base = map[0] - 1;
    let rank = shape.len();
    let mut unit = vec![0usize; rank];
    let mut s = 1usize;
    for d in (0..rank).rev() {
        unit[d] = s;
        s *= shape[d];
    }
    let strides: Vec<i64> = (0..rank)
        .map(|d| {
            if shape[d] > 1 {
                map[unit[d]] - 1 - base
            } else {
                0
            }
        })
        .collect();
    // Verify, walking the index like an odometer.
    let mut idx = vec![0usize; rank];
    let mut expect = base;
    for &m in map {
        if m - 1 != expect {
            return None;
        }
        for d in (0..rank).rev() {
            idx[d] += 1;
            expect += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            expect -= strides[d] * shape[d] as i64;
            idx[d] = 0;
        }
    }
    Some((base, strides))
}

fn concat(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let out = cx.out(0);
    let rank = out.ty.shape.len();
    let axis = ops::axis(cx.attrs().int("axis", 0)?, rank)?;
    let ost = row_major(&out.ty.shape);
    let mut at = 0i64;
    for inp in cx.ins.iter().flatten() {
        let shape = &inp.ty.shape;
        let dst = Access {
            buf: out.buf,
            dt: out.ty.dtype,
            offset: at * ost[axis],
            strides: ost.clone(),
        };
        let src = Access::dense(inp.buf, inp.ty.dtype, shape);
        nest::emit(lw, shape, &[src], &[dst], true, |_, v, _| vec![v[0]])?;
        at += shape[axis] as i64;
    }
    Ok(())
}

fn split(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?;
    let rank = x.ty.shape.len();
    let axis = ops::axis(cx.attrs().int("axis", 0)?, rank)?;
    let xst = row_major(&x.ty.shape);
    let mut at = 0i64;
    for o in &cx.outs {
        let shape = &o.ty.shape;
        let src = Access {
            buf: x.buf,
            dt: x.ty.dtype,
            offset: at * xst[axis],
            strides: xst.clone(),
        };
        let dst = Access::dense(o.buf, o.ty.dtype, shape);
        nest::emit(lw, shape, &[src], &[dst], true, |_, v, _| vec![v[0]])?;
        at += shape[axis] as i64;
    }
    Ok(())
}

/// Gather along `axis` with indices read at run time; an index outside
/// `[-len, len)` sets the run's status to "index out of range".
fn gather(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let x = cx.input(0)?;
    let idx = cx.input(1)?;
    if cx.consts[1].is_some() {
        // Constant indices: a compile-time map.
        return probed(lw, cx);
    }
    let out = cx.out(0);
    let rank = x.ty.shape.len();
    let axis = ops::axis(cx.attrs().int("axis", 0)?, rank)?;
    let outer: usize = x.ty.shape[..axis].iter().product();
    let len = x.ty.shape[axis] as i64;
    let inner: usize = x.ty.shape[axis + 1..].iter().product();
    let nidx = idx.ty.numel();
    let esz = x.ty.dtype.size_bytes() as i64;
    let row_bytes = inner as i64 * esz;
    let idt = idx.ty.dtype;
    if out.ty.numel() == 0 {
        return Ok(());
    }
    lw.kernel_checked(
        vec![x.buf, idx.buf, out.buf, Buf::Work(0)],
        outer * nidx,
        true,
        |kb| {
            let (xp, ip, op) = (kb.arg(0), kb.arg(1), kb.arg(2));
            let (b, e) = (kb.begin, kb.end);
            kb.for_range(b, e, 1, |kb, item| {
                let o = kb.b.ins().udiv_imm_u(item, nidx as i64);
                let j = kb.b.ins().urem_imm_u(item, nidx as i64);
                let ia = kb.gep(ip, j, idt.size_bytes() as i64);
                let k = kb.load_elt(idt, ia, 1);
                let k = if idt == DType::I64 {
                    k
                } else {
                    kb.b.ins().sextend(I64, k)
                };
                let neg = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, k, 0);
                let kw = kb.b.ins().iadd_imm_s(k, len);
                let k = kb.b.ins().select(neg, kw, k);
                let bad_lo = kb.b.ins().icmp_imm_s(IntCC::SignedLessThan, k, 0);
                let bad_hi =
                    kb.b.ins()
                        .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, k, len);
                let bad = kb.b.ins().bor(bad_lo, bad_hi);
                let ok = kb.b.create_block();
                let fail = kb.b.create_block();
                let next = kb.b.create_block();
                kb.b.ins().brif(bad, fail, &[], ok, &[]);
                kb.b.switch_to_block(fail);
                // Buffer 3 is the workspace's status word.
                let wp = kb.arg(3);
                let three = kb.i(3);
                kb.b.ins().store(mem(), three, wp, 0);
                kb.b.ins().jump(next, &[]);
                kb.b.switch_to_block(ok);
                let row = kb.muli(o, len);
                let row = kb.b.ins().iadd(row, k);
                let src = kb.gep(xp, row, row_bytes);
                let dst = kb.gep(op, item, row_bytes);
                copy_bytes(kb, dst, src, row_bytes);
                kb.b.ins().jump(next, &[]);
                kb.b.switch_to_block(next);
            });
        },
    )
}

/// Copies a compile-time number of bytes: 16-byte vectors, then 8/4/2/1.
pub fn copy_bytes(
    kb: &mut Kb,
    dst: cranelift_codegen::ir::Value,
    src: cranelift_codegen::ir::Value,
    n: i64,
) {
    use cranelift_codegen::ir::types::{I8, I16, I64X2};
    let vecs = n / 16;
    if vecs > 4 {
        let z = kb.i(0);
        let hi = kb.i(vecs);
        kb.for_range(z, hi, 1, |kb, i| {
            let s = kb.gep(src, i, 16);
            let d = kb.gep(dst, i, 16);
            let v = kb.b.ins().load(I64X2, mem(), s, 0);
            kb.b.ins().store(mem(), v, d, 0);
        });
    } else {
        for i in 0..vecs {
            let v = kb.b.ins().load(I64X2, mem(), src, (i * 16) as i32);
            kb.b.ins().store(mem(), v, dst, (i * 16) as i32);
        }
    }
    let mut off = vecs * 16;
    for (w, ty) in [(8, I64), (4, I32), (2, I16), (1, I8)] {
        while n - off >= w {
            let v =
                kb.b.ins()
                    .load(ty, MemFlagsData::trusted(), src, off as i32);
            kb.b.ins().store(mem(), v, dst, off as i32);
            off += w;
        }
    }
}

/// A rank-4 Transpose of 4-byte elements that is a batch of 2-D
/// transposes (the layout pass's NCHW <-> NHWC conversions): `(batch, R,
/// S)` with `out[b][s][r] = x[b][r][s]`.
fn layout_transpose(cx: &NodeCx) -> Result<Option<(usize, usize, usize)>> {
    let x = cx.input(0)?;
    if x.ty.dtype.size_bytes() != 4 || x.ty.shape.len() != 4 {
        return Ok(None);
    }
    let sh = &x.ty.shape;
    let brs = match cx.attrs().ints_opt("perm")? {
        Some([0, 2, 3, 1]) => (sh[0], sh[1], sh[2] * sh[3]),
        Some([0, 3, 1, 2]) => (sh[0], sh[1] * sh[2], sh[3]),
        _ => return Ok(None),
    };
    // Tile stores use 32-bit displacements.
    Ok((TS * brs.1 * 4 < i32::MAX as usize && brs.1 * brs.2 > 0).then_some(brs))
}

/// Columns of one transpose tile: each input row's run of `TS` elements
/// goes to `TS` output rows.
const TS: usize = 16;
/// Input rows per work item.
const TR: usize = 256;

/// One work item of the batched 2-D transposes: its column block, where
/// its input rows start in `x` and in `out` (at that column block), and
/// its input rows `[r0, r1)`.
struct TileItem {
    sb: Value,
    xs: Value,
    os: Value,
    rows: (Value, Value),
}

fn tile_item(
    kb: &mut Kb,
    item: Value,
    (xp, op): (Value, Value),
    (r, s): (usize, usize),
) -> TileItem {
    let (sblocks, rblocks) = (s.div_ceil(TS) as i64, r.div_ceil(TR) as i64);
    let sb = kb.b.ins().urem_imm_u(item, sblocks);
    let rest = kb.b.ins().udiv_imm_u(item, sblocks);
    let rb = kb.b.ins().urem_imm_u(rest, rblocks);
    let bi = kb.b.ins().udiv_imm_u(rest, rblocks);
    let ximg = kb.gep(xp, bi, (r * s * 4) as i64);
    let oimg = kb.gep(op, bi, (r * s * 4) as i64);
    let s0 = kb.muli(sb, TS as i64);
    let r0 = kb.muli(rb, TR as i64);
    let r1 = kb.addi(r0, TR as i64);
    let rmax = kb.i(r as i64);
    let r1 = kb.b.ins().smin(r1, rmax);
    TileItem {
        sb,
        xs: kb.gep(ximg, s0, 4),
        os: kb.gep(oimg, s0, (r * 4) as i64),
        rows: (r0, r1),
    }
}

/// `out[b][s][r] = x[b][r][s]` (4-byte elements) in tiles of `TR` input
/// rows by `TS` columns: reads are runs of `TS` elements, writes go to
/// `TS` output rows at once, so both sides stream through cache lines
/// instead of striding element by element. Work items: (b, row block,
/// column block).
fn transpose_2d(lw: &mut Lower, x: Buf, out: Buf, (nb, r, s): (usize, usize, usize)) -> Result<()> {
    if lw.avx512 {
        return transpose_2d_avx512(lw, x, out, (nb, r, s));
    }
    let sblocks = s.div_ceil(TS);
    let rblocks = r.div_ceil(TR);
    lw.note_kernel(format!(
        "batched 2-D transpose {nb}x{r}x{s}, tiles {TR}x{TS}"
    ));
    lw.kernel(vec![x, out], nb * rblocks * sblocks, |kb| {
        let (xp, op) = (kb.arg(0), kb.arg(1));
        let (b0, e0) = (kb.begin, kb.end);
        kb.for_range(b0, e0, 1, |kb, item| {
            let TileItem {
                sb,
                xs,
                os,
                rows: (r0, r1),
            } = tile_item(kb, item, (xp, op), (r, s));
            let copy = |kb: &mut Kb, cols: Option<Value>| {
                kb.for_range(r0, r1, 1, |kb, ri| {
                    let src = kb.gep(xs, ri, (s * 4) as i64);
                    let dst = kb.gep(os, ri, 4);
                    match cols {
                        None => {
                            for t in 0..TS {
                                let v = kb.b.ins().load(I32, mem(), src, (t * 4) as i32);
                                kb.b.ins().store(mem(), v, dst, (t * r * 4) as i32);
                            }
                        }
                        Some(n) => {
                            let z = kb.i(0);
                            kb.for_range(z, n, 1, |kb, t| {
                                let a = kb.gep(src, t, 4);
                                let v = kb.b.ins().load(I32, mem(), a, 0);
                                let d = kb.gep(dst, t, (r * 4) as i64);
                                kb.b.ins().store(mem(), v, d, 0);
                            });
                        }
                    }
                });
            };
            if s % TS == 0 {
                copy(kb, None);
            } else {
                let last = kb.b.ins().icmp_imm_s(IntCC::Equal, sb, sblocks as i64 - 1);
                let tb = kb.b.create_block();
                let fb = kb.b.create_block();
                let done = kb.b.create_block();
                kb.b.ins().brif(last, tb, &[], fb, &[]);
                kb.b.switch_to_block(tb);
                let n = kb.i((s - (sblocks - 1) * TS) as i64);
                copy(kb, Some(n));
                kb.b.ins().jump(done, &[]);
                kb.b.switch_to_block(fb);
                copy(kb, None);
                kb.b.ins().jump(done, &[]);
                kb.b.switch_to_block(done);
            }
        });
    })
}

/// [`transpose_2d`] on AVX-512: the same work items, each a column of
/// 16x16 machine-code tiles (`ztranspose`); edge tiles take masks.
fn transpose_2d_avx512(
    lw: &mut Lower,
    x: Buf,
    out: Buf,
    (nb, r, s): (usize, usize, usize),
) -> Result<()> {
    let sblocks = s.div_ceil(TS);
    let rblocks = r.div_ceil(TR);
    let fns = ztranspose::define(lw, (s * 4) as i64, (r * 4) as i64)?;
    lw.note_kernel(format!(
        "batched 2-D transpose {nb}x{r}x{s}, avx512 16x16 tiles in blocks of {TR} rows"
    ));
    let full = (1i64 << 16) - 1;
    let col_mask = |n: usize| (1i64 << n) - 1;
    lw.kernel_calling(
        vec![x, out],
        nb * rblocks * sblocks,
        false,
        &fns,
        |kb, refs| {
            let (xp, op) = (kb.arg(0), kb.arg(1));
            let (b0, e0) = (kb.begin, kb.end);
            kb.for_range(b0, e0, 1, |kb, item| {
                let TileItem {
                    sb,
                    xs,
                    os,
                    rows: (r0, r1),
                } = tile_item(kb, item, (xp, op), (r, s));
                // Input columns this item reads: all 16 but in the last block.
                let last_s = kb.b.ins().icmp_imm_s(IntCC::Equal, sb, sblocks as i64 - 1);
                let fullc = kb.i(full);
                let edgec = kb.i(col_mask(s - (sblocks - 1) * TS));
                let cols = kb.b.ins().select(last_s, edgec, fullc);
                kb.for_range(r0, r1, ztranspose::T as i64, |kb, ri| {
                    let src = kb.gep(xs, ri, (s * 4) as i64);
                    let dst = kb.gep(os, ri, 4);
                    let left = kb.b.ins().isub(r1, ri);
                    let rows = ztranspose::row_bits(kb, left);
                    let ctl = kb.b.ins().bor(rows, cols);
                    ztranspose::call(kb, refs, src, dst, ctl);
                });
            });
        },
    )
}
