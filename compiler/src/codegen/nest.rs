//! Strided loop nests: the engine behind elementwise ops, broadcasting,
//! casts and every data-movement op whose source index is an affine
//! function of the destination index. Dimensions that are contiguous for
//! every operand are merged first; the innermost loop runs 4 lanes wide when
//! all operands allow it, with a scalar tail. Work items are (outer row,
//! chunk of the inner row), so the pool can split any shape.

use cranelift_codegen::ir::{InstBuilder, Value};

use super::builder::{Elt, Kb};
use super::lower::{Buf, Lower};
use crate::error::Result;
use crate::ir::DType;

/// One operand of a nest: its buffer, element type, and the element offset
/// and stride (per nest dimension) of its element at each index.
#[derive(Clone, Debug)]
pub struct Access {
    pub buf: Buf,
    pub dt: DType,
    pub offset: i64,
    pub strides: Vec<i64>,
}

impl Access {
    /// Row-major access to a tensor of `shape` broadcast (numpy rules) to
    /// `out` (stride 0 on broadcast dimensions).
    pub fn broadcast(buf: Buf, dt: DType, shape: &[usize], out: &[usize]) -> Access {
        let mut strides = vec![0i64; out.len()];
        let mut s = 1i64;
        for (k, &d) in shape.iter().enumerate().rev() {
            let j = out.len() - (shape.len() - k);
            if d != 1 {
                strides[j] = s;
            }
            s *= d as i64;
        }
        Access {
            buf,
            dt,
            offset: 0,
            strides,
        }
    }

    pub fn dense(buf: Buf, dt: DType, shape: &[usize]) -> Access {
        Access::broadcast(buf, dt, shape, shape)
    }
}

/// Row-major element strides of `shape`.
pub fn row_major(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1] as i64;
    }
    s
}

/// Elements per work item of a long inner row.
const CHUNK: usize = 8192;

/// Emits `outs[..] = f(ins[..])` over `shape`. `f` gets the loaded inputs
/// (in compute types, `lanes` wide) and returns one value per output.
/// `vector` says whether `f` handles 4-lane vectors.
pub fn emit(
    lw: &mut Lower,
    shape: &[usize],
    ins: &[Access],
    outs: &[Access],
    vector: bool,
    f: impl Fn(&mut Kb, &[Value], u32) -> Vec<Value>,
) -> Result<()> {
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return Ok(());
    }
    let all: Vec<&Access> = ins.iter().chain(outs).collect();
    // Merge dimensions and drop size-1 ones.
    let mut dims: Vec<(usize, Vec<i64>)> = Vec::new();
    for (d, &n) in shape.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let st: Vec<i64> = all.iter().map(|a| a.strides[d]).collect();
        if let Some((pn, pst)) = dims.last_mut()
            && pst.iter().zip(&st).all(|(p, s)| *p == s * n as i64)
        {
            *pn *= n;
            *pst = st;
            continue;
        }
        dims.push((n, st));
    }
    if dims.is_empty() {
        dims.push((1, vec![0; all.len()]));
    }
    let (inner, inner_st) = dims.pop().expect("at least one dimension");
    let outer = dims;
    let rows: usize = outer.iter().map(|(n, _)| n).product();
    let cpr = inner.div_ceil(CHUNK);
    let items = rows * cpr;

    let lanes = if vector
        && all.iter().all(|a| Elt(a.dt).vectorizes())
        && all
            .iter()
            .all(|a| Elt(a.dt).compute(1) == Elt(all[0].dt).compute(1))
        && ins
            .iter()
            .enumerate()
            .all(|(k, _)| inner_st[k] == 0 || inner_st[k] == 1)
        && outs
            .iter()
            .enumerate()
            .all(|(k, _)| inner_st[ins.len() + k] == 1)
    {
        4
    } else {
        1
    };

    let bufs: Vec<Buf> = all.iter().map(|a| a.buf).collect();
    let accs: Vec<Access> = all.iter().map(|a| (*a).clone()).collect();
    let n_in = ins.len();
    lw.kernel(bufs, items, |kb| {
        let ptrs: Vec<Value> = (0..accs.len()).map(|j| kb.arg(j)).collect();
        let (begin, end) = (kb.begin, kb.end);
        kb.for_range(begin, end, 1, |kb, item| {
            let (row, lo) = if cpr > 1 {
                let row = kb.b.ins().udiv_imm_u(item, cpr as i64);
                let c = kb.b.ins().urem_imm_u(item, cpr as i64);
                (row, kb.muli(c, CHUNK as i64))
            } else {
                (item, kb.i(0))
            };
            // Base element offset of each operand for this row.
            let mut bases: Vec<Value> = accs.iter().map(|a| kb.i(a.offset)).collect();
            let mut rem = row;
            for (d, (n, st)) in outer.iter().enumerate().rev() {
                let idx = if d == 0 {
                    rem
                } else {
                    let q = kb.b.ins().udiv_imm_u(rem, *n as i64);
                    let r = kb.b.ins().urem_imm_u(rem, *n as i64);
                    rem = q;
                    r
                };
                for (k, base) in bases.iter_mut().enumerate() {
                    if st[k] != 0 {
                        let o = kb.muli(idx, st[k]);
                        *base = kb.add(*base, o);
                    }
                }
            }
            // Byte address of each operand's row start.
            let rowp: Vec<Value> = accs
                .iter()
                .enumerate()
                .map(|(k, a)| kb.gep(ptrs[k], bases[k], Elt(a.dt).storage().bytes() as i64))
                .collect();
            let hi = if cpr > 1 {
                let h = kb.addi(lo, CHUNK as i64);
                let n = kb.i(inner as i64);
                kb.b.ins().smin(h, n)
            } else {
                kb.i(inner as i64)
            };
            kb.for_vec(lo, hi, lanes as i64, |kb, i, l| {
                let mut vals = Vec::with_capacity(n_in);
                for (k, a) in accs.iter().take(n_in).enumerate() {
                    let sz = Elt(a.dt).storage().bytes() as i64;
                    let addr = kb.gep(rowp[k], i, inner_st[k] * sz);
                    let v = if l > 1 && inner_st[k] == 0 {
                        let s = kb.load_elt(a.dt, addr, 1);
                        let ty = Elt(a.dt).compute(l);
                        kb.splat(ty, s)
                    } else {
                        kb.load_elt(a.dt, addr, l)
                    };
                    vals.push(v);
                }
                let res = f(kb, &vals, l);
                for (k, a) in accs.iter().enumerate().skip(n_in) {
                    let sz = Elt(a.dt).storage().bytes() as i64;
                    let addr = kb.gep(rowp[k], i, inner_st[k] * sz);
                    kb.store_elt(a.dt, res[k - n_in], addr, l);
                }
            });
        });
    })
}
