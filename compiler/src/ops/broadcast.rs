//! Numpy-style multidirectional broadcasting, shared by every elementwise op.

use ndarray::{ArrayD, IxDyn, Zip};

use crate::error::Result;
use crate::ir::Elem;

pub fn shape(shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                bail!(Invalid, "shapes {:?} do not broadcast", shapes);
            }
        }
    }
    Ok(out)
}

/// `f(a, b)` over the broadcast of `a` and `b` to `out`.
pub fn zip2<A: Elem, B: Elem, R: Elem>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    out: &[usize],
    f: impl Fn(A, B) -> R,
) -> Result<ArrayD<R>> {
    let (av, bv) = (view(a, out)?, view(b, out)?);
    Ok(Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y)))
}

pub fn zip3<A: Elem, B: Elem, C: Elem, R: Elem>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    c: &ArrayD<C>,
    out: &[usize],
    f: impl Fn(A, B, C) -> R,
) -> Result<ArrayD<R>> {
    let (av, bv, cv) = (view(a, out)?, view(b, out)?, view(c, out)?);
    Ok(Zip::from(&av)
        .and(&bv)
        .and(&cv)
        .map_collect(|&x, &y, &z| f(x, y, z)))
}

pub fn view<'a, T>(a: &'a ArrayD<T>, out: &[usize]) -> Result<ndarray::ArrayViewD<'a, T>> {
    a.broadcast(IxDyn(out)).ok_or_else(|| {
        crate::error::Error::Invalid(format!(
            "shape {:?} does not broadcast to {:?}",
            a.shape(),
            out
        ))
    })
}
