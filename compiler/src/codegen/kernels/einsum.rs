//! Einsum as loops over its labels: one work item per output element, a
//! loop nest over the summed labels, and per operand an offset that is a
//! linear function of the label coordinates (a repeated label walks the
//! diagonal; a size-1 dimension of a broadcast ellipsis has stride 0).
//! Accumulates in the compute type of the element type, like the
//! interpreter's products in the data type.

use cranelift_codegen::ir::{InstBuilder, Value};

use super::{NodeCx, Table};
use crate::codegen::builder::{Elt, Kb};
use crate::codegen::lower::Lower;
use crate::error::Result;
use crate::ops::linalg::parse_equation;

pub fn register(t: &mut Table) {
    t.add(&["Einsum"], einsum);
}

/// A label's extent and each operand's element stride along it.
struct Label {
    size: usize,
    strides: Vec<i64>,
}

fn nest(kb: &mut Kb, labels: &[Label], offs: Vec<Value>, body: &mut dyn FnMut(&mut Kb, &[Value])) {
    match labels.split_first() {
        None => body(kb, &offs),
        Some((l, rest)) => {
            let (z, n) = (kb.i(0), kb.i(l.size as i64));
            kb.for_range(z, n, 1, |kb, c| {
                let o: Vec<Value> = offs
                    .iter()
                    .zip(&l.strides)
                    .map(|(&o, &s)| {
                        if s == 0 {
                            o
                        } else {
                            let t = kb.muli(c, s);
                            kb.add(o, t)
                        }
                    })
                    .collect();
                nest(kb, rest, o, body);
            });
        }
    }
}

fn einsum(lw: &mut Lower, cx: &NodeCx) -> Result<()> {
    let ins: Vec<_> = (0..cx.ins.len())
        .map(|i| cx.input(i))
        .collect::<Result<_>>()?;
    let out = cx.out(0);
    let shapes: Vec<&[usize]> = ins.iter().map(|o| o.ty.shape.as_slice()).collect();
    let eq_text = cx
        .attrs()
        .string_opt("equation")?
        .ok_or_else(|| crate::Error::Invalid("missing required attribute 'equation'".into()))?;
    let eq = parse_equation(eq_text, &shapes)?;
    let stride_of = |l: u32| -> Vec<i64> {
        ins.iter()
            .zip(&eq.inputs)
            .map(|(o, labels)| {
                let sh = &o.ty.shape;
                let mut s = 0i64;
                let mut step = 1i64;
                for d in (0..sh.len()).rev() {
                    if labels[d] == l && sh[d] != 1 {
                        s += step;
                    }
                    step *= sh[d] as i64;
                }
                s
            })
            .collect()
    };
    let outs: Vec<Label> = eq
        .output
        .iter()
        .map(|&l| Label {
            size: eq.sizes[&l],
            strides: stride_of(l),
        })
        .collect();
    let summed: Vec<Label> = eq
        .sizes
        .iter()
        .filter(|(l, _)| !eq.output.contains(l))
        .map(|(&l, &size)| Label {
            size,
            strides: stride_of(l),
        })
        .collect();
    let n = out.ty.numel();
    if n == 0 {
        return Ok(());
    }
    let dt = out.ty.dtype;
    let dts: Vec<_> = ins.iter().map(|o| o.ty.dtype).collect();
    let mut bufs: Vec<_> = ins.iter().map(|o| o.buf).collect();
    bufs.push(out.buf);
    let k = ins.len();
    let float = dt.is_float();
    lw.kernel(bufs, n, |kb| {
        let ptrs: Vec<Value> = (0..k).map(|j| kb.arg(j)).collect();
        let op = kb.arg(k);
        let ty = Elt(dt).compute(1);
        let (bg, e) = (kb.begin, kb.end);
        kb.for_range(bg, e, 1, |kb, p| {
            // Output coordinates, innermost last.
            let mut offs: Vec<Value> = (0..k).map(|_| kb.i(0)).collect();
            let mut rem = p;
            for (d, l) in outs.iter().enumerate().rev() {
                let c = if d == 0 {
                    rem
                } else {
                    let c = kb.b.ins().urem_imm_u(rem, l.size as i64);
                    rem = kb.b.ins().udiv_imm_u(rem, l.size as i64);
                    c
                };
                for (o, &s) in offs.iter_mut().zip(&l.strides) {
                    if s != 0 {
                        let t = kb.muli(c, s);
                        *o = kb.add(*o, t);
                    }
                }
            }
            let zero = kb.constant(ty, 0.0);
            let acc = kb.var(ty, zero);
            nest(kb, &summed, offs, &mut |kb, o| {
                let mut prod = None;
                for j in 0..k {
                    let a = kb.gep(ptrs[j], o[j], dts[j].size_bytes() as i64);
                    let v = kb.load_elt(dts[j], a, 1);
                    prod = Some(match prod {
                        None => v,
                        Some(p) if float => kb.b.ins().fmul(p, v),
                        Some(p) => kb.b.ins().imul(p, v),
                    });
                }
                let s = kb.b.use_var(acc);
                let v = prod.unwrap_or(zero);
                let s = if float {
                    kb.b.ins().fadd(s, v)
                } else {
                    kb.b.ins().iadd(s, v)
                };
                kb.b.def_var(acc, s);
            });
            let s = kb.b.use_var(acc);
            let dst = kb.gep(op, p, dt.size_bytes() as i64);
            kb.store_elt(dt, s, dst, 1);
        });
    })
}
