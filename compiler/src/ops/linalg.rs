//! Matrix products: MatMul (numpy matmul semantics), Gemm, Einsum,
//! MatMulInteger and Det. Every product reduces to `Dot::matmul` on 2-D
//! blocks, so float work reaches matrixmultiply through ndarray's `dot` and
//! integer products wrap like numpy's.

use std::collections::{BTreeMap, BTreeSet};

use half::{bf16, f16};
use ndarray::{Array2, Array3, ArrayD, ArrayView2, ArrayViewD, Axis, Ix2, IxDyn, Zip};

use super::elementwise::Arith;
use super::{EvalCtx, InferCtx, OpTable, broadcast, one};
use crate::dispatch_num;
use crate::error::{Error, Result};
use crate::ir::{Attrs, DType, Elem, Tensor, ValueType};

/// Numeric element types with a 2-D matrix product. f16/bf16 multiply in
/// f32 (as numpy's matmul and the ONNX reference do) and round once.
pub(super) trait Dot: Arith {
    /// `a @ b`; the caller has checked that the inner dimensions agree.
    fn matmul(a: ArrayView2<Self>, b: ArrayView2<Self>) -> Array2<Self>;
}

impl Dot for f32 {
    fn matmul(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
        a.dot(&b)
    }
}

impl Dot for f64 {
    fn matmul(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
        a.dot(&b)
    }
}

macro_rules! dot_via_f32 {
    ($($t:ty),*) => {$(
        impl Dot for $t {
            fn matmul(a: ArrayView2<$t>, b: ArrayView2<$t>) -> Array2<$t> {
                let (a, b) = (a.mapv(<$t>::to_f32), b.mapv(<$t>::to_f32));
                a.dot(&b).mapv(<$t>::from_f32)
            }
        }
    )*};
}
dot_via_f32!(f16, bf16);

macro_rules! dot_loops {
    ($($t:ty),*) => {$(
        impl Dot for $t {
            fn matmul(a: ArrayView2<$t>, b: ArrayView2<$t>) -> Array2<$t> {
                loop_matmul(a, b)
            }
        }
    )*};
}
dot_loops!(i8, u8, i16, u16, i32, u32, i64, u64);

/// Integer products with wrapping arithmetic; the i-k-j order streams rows
/// of `b` and the output.
fn loop_matmul<T: Arith>(a: ArrayView2<T>, b: ArrayView2<T>) -> Array2<T> {
    let (m, k) = a.dim();
    let mut out = Array2::from_elem((m, b.ncols()), T::default());
    for i in 0..m {
        let mut row = out.row_mut(i);
        for p in 0..k {
            let x = a[[i, p]];
            Zip::from(&mut row)
                .and(b.row(p))
                .for_each(|o, &y| *o = o.add(x.mul(y)));
        }
    }
    out
}

/// Runs `$body` with `$a` bound to a numeric array, else errors.
macro_rules! num {
    ($t:expr, $a:ident => $body:expr) => {
        dispatch_num!($t, $a => $body, other => return bad_dtype(other.dtype()))
    };
}

fn bad_dtype<T>(d: DType) -> Result<T> {
    Err(Error::Invalid(format!(
        "dtype {d} is not supported by this op"
    )))
}

fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::Internal(format!("reshape failed: {e}"))
}

fn same_dtype(what: &str, a: &ValueType, b: &ValueType) -> Result<()> {
    ensure!(
        a.dtype == b.dtype,
        Invalid,
        "{what} dtype {} differs from input 0 dtype {}",
        b.dtype,
        a.dtype
    );
    Ok(())
}

fn numeric(t: &ValueType) -> Result<()> {
    ensure!(
        t.dtype != DType::Bool,
        Invalid,
        "input must be numeric, found bool"
    );
    Ok(())
}

// ------------------------------------------------------------ batched GEMM

/// `a @ b` for `a` of shape [..., M, K] and `b` of shape [..., K, N] (both
/// rank >= 2) with numpy broadcasting of the batch dimensions.
pub(super) fn batched<T: Dot>(a: ArrayViewD<T>, b: ArrayViewD<T>) -> Result<ArrayD<T>> {
    let (ra, rb) = (a.ndim(), b.ndim());
    ensure!(
        ra >= 2 && rb >= 2,
        Internal,
        "batched matmul needs rank >= 2 operands"
    );
    let (m, k) = (a.shape()[ra - 2], a.shape()[ra - 1]);
    let (kb, n) = (b.shape()[rb - 2], b.shape()[rb - 1]);
    ensure!(
        k == kb,
        Invalid,
        "inner dimensions differ: {:?} @ {:?}",
        a.shape(),
        b.shape()
    );
    let batch = broadcast::shape(&[&a.shape()[..ra - 2], &b.shape()[..rb - 2]])?;
    let nb: usize = batch.iter().product();
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    if rb == 2 {
        // One matrix for every row of `a`: a single large GEMM.
        let rows = a
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((nb * m, k))
            .map_err(shape_err)?;
        let b2 = b.into_dimensionality::<Ix2>().map_err(shape_err)?;
        return T::matmul(rows.view(), b2)
            .into_shape_with_order(IxDyn(&out_shape))
            .map_err(shape_err);
    }
    let stack = |x: ArrayViewD<T>, r: usize, c: usize| -> Result<Array3<T>> {
        let mut full = batch.clone();
        full.extend([r, c]);
        let v = x.broadcast(IxDyn(&full)).ok_or_else(|| {
            Error::Invalid(format!(
                "shape {:?} does not broadcast to {full:?}",
                x.shape()
            ))
        })?;
        v.as_standard_layout()
            .into_owned()
            .into_shape_with_order((nb, r, c))
            .map_err(shape_err)
    };
    let (a3, b3) = (stack(a, m, k)?, stack(b, k, n)?);
    let mut out = Array3::from_elem((nb, m, n), T::default());
    for i in 0..nb {
        let r = T::matmul(a3.index_axis(Axis(0), i), b3.index_axis(Axis(0), i));
        out.index_axis_mut(Axis(0), i).assign(&r);
    }
    out.into_shape_with_order(IxDyn(&out_shape))
        .map_err(shape_err)
}

// ------------------------------------------------------------------ MatMul

/// numpy matmul's output shape: 1-D operands are promoted to matrices and
/// the promoted dimension dropped again.
fn matmul_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    ensure!(
        !a.is_empty() && !b.is_empty(),
        Invalid,
        "MatMul operands must have rank >= 1, found {a:?} and {b:?}"
    );
    let a2 = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2 = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (ra, rb) = (a2.len(), b2.len());
    ensure!(
        a2[ra - 1] == b2[rb - 2],
        Invalid,
        "inner dimensions differ: {a:?} @ {b:?}"
    );
    let mut out = broadcast::shape(&[&a2[..ra - 2], &b2[..rb - 2]])?;
    if a.len() > 1 {
        out.push(a2[ra - 2]);
    }
    if b.len() > 1 {
        out.push(b2[rb - 1]);
    }
    Ok(out)
}

fn matmul_arrays<T: Dot>(a: &ArrayD<T>, b: &ArrayD<T>, out: &[usize]) -> Result<ArrayD<T>> {
    let av = if a.ndim() == 1 {
        a.view().insert_axis(Axis(0))
    } else {
        a.view()
    };
    let bv = if b.ndim() == 1 {
        b.view().insert_axis(Axis(1))
    } else {
        b.view()
    };
    batched(av, bv)?
        .into_shape_with_order(IxDyn(out))
        .map_err(shape_err)
}

fn matmul_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (a, b) = (c.input(0)?, c.input(1)?);
    numeric(a)?;
    same_dtype("input 1", a, b)?;
    one(ValueType::new(a.dtype, matmul_shape(&a.shape, &b.shape)?))
}

fn matmul_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Dot>(c: &EvalCtx, a: &ArrayD<T>) -> Result<Tensor> {
        let b = c.input(1)?.typed::<T>()?;
        Ok(T::wrap(matmul_arrays(a, b, &c.outputs[0].shape)?))
    }
    Ok(vec![num!(c.input(0)?, a => go(c, a)?)])
}

// ----------------------------------------------------------- MatMulInteger

fn matmul_integer_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (a, b) = (c.input(0)?, c.input(1)?);
    for (i, t) in [(0, a), (1, b)] {
        ensure!(
            matches!(t.dtype, DType::U8 | DType::I8),
            Invalid,
            "input {i} must be u8 or i8, found {}",
            t.dtype
        );
    }
    for (i, of) in [(2, a), (3, b)] {
        if c.has(i) {
            same_dtype(&format!("zero point {i}"), of, c.input(i)?)?;
        }
    }
    one(ValueType::new(
        DType::I32,
        matmul_shape(&a.shape, &b.shape)?,
    ))
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

/// Subtracts a zero point: a scalar, or per row of `x` (`rows`: a 1-D
/// point applies along the second-to-last axis) or per column, or any shape
/// that broadcasts (the N-D forms [.., M, 1] and [.., 1, N]).
fn sub_zero_point(x: &mut ArrayD<i32>, zp: Option<&Tensor>, rows: bool) -> Result<()> {
    let Some(zp) = zp else { return Ok(()) };
    let mut z = widen(zp)?;
    if z.ndim() == 1 && z.len() > 1 && rows && x.ndim() >= 2 {
        z = z.insert_axis(Axis(1));
    }
    let zv = broadcast::view(&z, x.shape())?;
    Zip::from(x)
        .and(&zv)
        .for_each(|v, &z| *v = v.wrapping_sub(z));
    Ok(())
}

fn matmul_integer_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let mut a = widen(c.input(0)?)?;
    let mut b = widen(c.input(1)?)?;
    sub_zero_point(&mut a, c.opt(2), true)?;
    sub_zero_point(&mut b, c.opt(3), false)?;
    Ok(vec![Tensor::I32(matmul_arrays(
        &a,
        &b,
        &c.outputs[0].shape,
    )?)])
}

// -------------------------------------------------------------------- Gemm

fn gemm_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let (a, b) = (c.input(0)?, c.input(1)?);
    numeric(a)?;
    same_dtype("input B", a, b)?;
    ensure!(
        a.shape.len() == 2 && b.shape.len() == 2,
        Invalid,
        "A and B must be matrices, found shapes {:?} and {:?}",
        a.shape,
        b.shape
    );
    let ta = c.attrs.int("transA", 0)? != 0;
    let tb = c.attrs.int("transB", 0)? != 0;
    let (m, k) = if ta {
        (a.shape[1], a.shape[0])
    } else {
        (a.shape[0], a.shape[1])
    };
    let (kb, n) = if tb {
        (b.shape[1], b.shape[0])
    } else {
        (b.shape[0], b.shape[1])
    };
    ensure!(
        k == kb,
        Invalid,
        "inner dimensions differ: A' is {m}x{k}, B' is {kb}x{n}"
    );
    if c.has(2) {
        let cc = c.input(2)?;
        same_dtype("input C", a, cc)?;
        let exact = c.opset < 7 && c.attrs.int("broadcast", 0)? == 0;
        let ok = if exact {
            cc.shape == [m, n]
        } else {
            broadcast::shape(&[&cc.shape, &[m, n]]).is_ok_and(|s| s == [m, n])
        };
        ensure!(
            ok,
            Invalid,
            "C of shape {:?} does not broadcast to [{m}, {n}]",
            cc.shape
        );
    }
    one(ValueType::new(a.dtype, [m, n]))
}

fn gemm_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn matrix<T>(t: &ArrayD<T>, trans: bool) -> Result<ArrayView2<'_, T>> {
        let v = t.view().into_dimensionality::<Ix2>().map_err(shape_err)?;
        Ok(if trans { v.reversed_axes() } else { v })
    }
    fn go<T: Dot>(c: &EvalCtx, a: &ArrayD<T>) -> Result<Tensor> {
        let a2 = matrix(a, c.attrs.int("transA", 0)? != 0)?;
        let b2 = matrix(c.input(1)?.typed::<T>()?, c.attrs.int("transB", 0)? != 0)?;
        let alpha = c.attrs.float("alpha", 1.0)? as f64;
        let beta = c.attrs.float("beta", 1.0)? as f64;
        let mut y = T::matmul(a2, b2).into_dyn();
        if alpha != 1.0 {
            y.mapv_inplace(|v| T::from_f64(v.to_f64() * alpha));
        }
        if let Some(bias) = c.opt(2) {
            let bias = broadcast::view(bias.typed::<T>()?, &c.outputs[0].shape)?;
            Zip::from(&mut y).and(&bias).for_each(|v, &b| {
                *v = if beta == 1.0 {
                    v.add(b)
                } else {
                    T::from_f64(v.to_f64() + beta * b.to_f64())
                }
            });
        }
        Ok(T::wrap(y))
    }
    Ok(vec![num!(c.input(0)?, a => go(c, a)?)])
}

// ------------------------------------------------------------------ Einsum

/// Ellipsis dimensions get labels from here up, right-aligned across
/// operands so that they broadcast like numpy's.
const ELLIPSIS: u32 = 256;

/// A parsed equation: per operand and for the output, one label per
/// dimension (letters as their code, ellipsis dimensions from `ELLIPSIS`).
pub(crate) struct Equation {
    pub(crate) inputs: Vec<Vec<u32>>,
    pub(crate) output: Vec<u32>,
    pub(crate) sizes: BTreeMap<u32, usize>,
}

enum Tok {
    Label(u32),
    Ellipsis,
}

fn tokens(term: &str) -> Result<Vec<Tok>> {
    let mut out = Vec::new();
    let mut rest = term;
    while let Some(ch) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("...") {
            ensure!(
                !out.iter().any(|t| matches!(t, Tok::Ellipsis)),
                Invalid,
                "equation term {term:?} has more than one ellipsis"
            );
            out.push(Tok::Ellipsis);
            rest = r;
        } else if ch.is_ascii_alphabetic() {
            out.push(Tok::Label(ch as u32));
            rest = &rest[1..];
        } else {
            bail!(
                Invalid,
                "equation term {term:?} has an invalid character {ch:?}"
            );
        }
    }
    Ok(out)
}

fn expand(toks: &[Tok], ell: std::ops::Range<usize>) -> Vec<u32> {
    let mut out = Vec::new();
    for t in toks {
        match t {
            Tok::Label(l) => out.push(*l),
            Tok::Ellipsis => out.extend(ell.clone().map(|j| ELLIPSIS + j as u32)),
        }
    }
    out
}

fn label_name(l: u32) -> String {
    if l >= ELLIPSIS {
        format!("...[{}]", l - ELLIPSIS)
    } else {
        char::from_u32(l).map_or_else(|| "?".into(), String::from)
    }
}

pub(crate) fn parse_equation(eq: &str, shapes: &[&[usize]]) -> Result<Equation> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<Vec<Tok>> = lhs.split(',').map(tokens).collect::<Result<_>>()?;
    ensure!(
        terms.len() == shapes.len(),
        Invalid,
        "equation {eq:?} has {} operand terms, {} inputs given",
        terms.len(),
        shapes.len()
    );
    // Each operand's ellipsis covers the dimensions its letters leave.
    let mut ell_dims = Vec::with_capacity(terms.len());
    for (i, (t, s)) in terms.iter().zip(shapes).enumerate() {
        let letters = t.iter().filter(|t| matches!(t, Tok::Label(_))).count();
        let has_ell = t.len() > letters;
        ensure!(
            letters == s.len() || (has_ell && letters < s.len()),
            Invalid,
            "equation term {i} has {letters} labels for input of rank {}",
            s.len()
        );
        ell_dims.push(s.len() - letters);
    }
    let ell = ell_dims.iter().copied().max().unwrap_or(0);
    let inputs: Vec<Vec<u32>> = terms
        .iter()
        .zip(&ell_dims)
        .map(|(t, &e)| expand(t, ell - e..ell))
        .collect();
    let mut sizes: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, (labels, s)) in inputs.iter().zip(shapes).enumerate() {
        for (&l, &d) in labels.iter().zip(s.iter()) {
            let e = sizes.entry(l).or_insert(d);
            if *e == 1 {
                *e = d;
            } else if d != 1 && d != *e {
                bail!(
                    Invalid,
                    "label {} has incompatible sizes {} and {d} (input {i})",
                    label_name(l),
                    *e
                );
            }
        }
    }
    let output = match rhs {
        Some(r) => {
            let toks = tokens(r)?;
            ensure!(
                ell == 0 || toks.iter().any(|t| matches!(t, Tok::Ellipsis)),
                Invalid,
                "the output of {eq:?} must keep the ellipsis dimensions"
            );
            let out = expand(&toks, 0..ell);
            for (i, l) in out.iter().enumerate() {
                ensure!(
                    sizes.contains_key(l),
                    Invalid,
                    "output label {} appears in no input",
                    label_name(*l)
                );
                ensure!(
                    !out[..i].contains(l),
                    Invalid,
                    "output label {} is repeated",
                    label_name(*l)
                );
            }
            out
        }
        None => {
            // Implicit output: ellipsis dims, then the letters used exactly
            // once, in ASCII order (numpy puts upper case first).
            let mut count: BTreeMap<u32, usize> = BTreeMap::new();
            for l in inputs.iter().flatten().filter(|&&l| l < ELLIPSIS) {
                *count.entry(*l).or_default() += 1;
            }
            let mut out: Vec<u32> = (0..ell).map(|j| ELLIPSIS + j as u32).collect();
            out.extend(count.iter().filter(|(_, n)| **n == 1).map(|(l, _)| *l));
            out
        }
    };
    Ok(Equation {
        inputs,
        output,
        sizes,
    })
}

/// One operand during contraction: an array with one label per axis.
struct Term<T> {
    a: ArrayD<T>,
    labels: Vec<u32>,
}

/// Takes the diagonal over repeated labels (`ii` -> `i`).
fn diagonal<T: Elem>(a: ArrayViewD<T>, labels: &[u32]) -> Result<Term<T>> {
    let mut uniq: Vec<u32> = Vec::new();
    for &l in labels {
        if !uniq.contains(&l) {
            uniq.push(l);
        }
    }
    if uniq.len() == labels.len() {
        return Ok(Term {
            a: a.to_owned(),
            labels: uniq,
        });
    }
    let pos: Vec<usize> = labels
        .iter()
        .map(|l| uniq.iter().position(|u| u == l).unwrap_or(0))
        .collect();
    let mut shape = vec![0usize; uniq.len()];
    for (&p, &d) in pos.iter().zip(a.shape()) {
        let first = labels.iter().position(|&l| l == uniq[p]).unwrap_or(0);
        ensure!(
            d == a.shape()[first],
            Invalid,
            "repeated label {} has sizes {} and {d} in one input",
            label_name(uniq[p]),
            a.shape()[first]
        );
        shape[p] = d;
    }
    let out = ArrayD::from_shape_fn(IxDyn(&shape), |idx| {
        let src: Vec<usize> = pos.iter().map(|&p| idx[p]).collect();
        a[IxDyn(&src)]
    });
    Ok(Term {
        a: out,
        labels: uniq,
    })
}

/// Sums away the axes whose label satisfies `drop`.
fn sum_out<T: Arith>(mut t: Term<T>, drop: impl Fn(u32) -> bool) -> Term<T> {
    for i in (0..t.labels.len()).rev() {
        if drop(t.labels[i]) {
            t.a = t.a.fold_axis(Axis(i), T::default(), |acc, &x| acc.add(x));
            t.labels.remove(i);
        }
    }
    t
}

/// Brings `t`'s axes into `order`, broadcast to `shape`, as a 3-D stack of
/// matrices [batch, rows, cols].
fn as_stack<T: Elem>(
    t: &Term<T>,
    order: &[u32],
    shape: &[usize],
    dims: [usize; 3],
) -> Result<Array3<T>> {
    let perm: Vec<usize> = order
        .iter()
        .map(|l| t.labels.iter().position(|x| x == l).unwrap_or(0))
        .collect();
    let v = t.a.view().permuted_axes(IxDyn(&perm));
    let v = v.broadcast(IxDyn(shape)).ok_or_else(|| {
        Error::Invalid(format!(
            "einsum operand {:?} does not broadcast to {shape:?}",
            v.shape()
        ))
    })?;
    v.as_standard_layout()
        .into_owned()
        .into_shape_with_order((dims[0], dims[1], dims[2]))
        .map_err(shape_err)
}

/// Contracts two operands: labels both share and `keep` needs become batch
/// axes, shared labels nobody needs are summed by one batched GEMM.
fn contract<T: Dot>(
    a: Term<T>,
    b: Term<T>,
    keep: &BTreeSet<u32>,
    sizes: &BTreeMap<u32, usize>,
) -> Result<Term<T>> {
    let in_b = |l: &u32| b.labels.contains(l);
    let batch: Vec<u32> = a
        .labels
        .iter()
        .copied()
        .filter(|l| in_b(l) && keep.contains(l))
        .collect();
    let summed: Vec<u32> = a
        .labels
        .iter()
        .copied()
        .filter(|l| in_b(l) && !keep.contains(l))
        .collect();
    let a_only: Vec<u32> = a.labels.iter().copied().filter(|l| !in_b(l)).collect();
    let b_only: Vec<u32> = b
        .labels
        .iter()
        .copied()
        .filter(|l| !a.labels.contains(l))
        .collect();
    let size = |l: &u32| sizes.get(l).copied().unwrap_or(1);
    let own = |t: &Term<T>, l: &u32| {
        t.labels
            .iter()
            .position(|x| x == l)
            .map_or(1, |i| t.a.shape()[i])
    };
    let bs: Vec<usize> = batch.iter().map(size).collect();
    let ks: Vec<usize> = summed.iter().map(size).collect();
    let ms: Vec<usize> = a_only.iter().map(|l| own(&a, l)).collect();
    let ns: Vec<usize> = b_only.iter().map(|l| own(&b, l)).collect();
    let p = |v: &[usize]| v.iter().product::<usize>();
    let (nb, m, k, n) = (p(&bs), p(&ms), p(&ks), p(&ns));
    let a3 = as_stack(
        &a,
        &[&batch[..], &a_only, &summed].concat(),
        &[&bs[..], &ms, &ks].concat(),
        [nb, m, k],
    )?;
    let b3 = as_stack(
        &b,
        &[&batch[..], &summed, &b_only].concat(),
        &[&bs[..], &ks, &ns].concat(),
        [nb, k, n],
    )?;
    let mut out = Array3::from_elem((nb, m, n), T::default());
    for i in 0..nb {
        let r = T::matmul(a3.index_axis(Axis(0), i), b3.index_axis(Axis(0), i));
        out.index_axis_mut(Axis(0), i).assign(&r);
    }
    let shape = [&bs[..], &ms, &ns].concat();
    Ok(Term {
        a: out
            .into_shape_with_order(IxDyn(&shape))
            .map_err(shape_err)?,
        labels: [batch, a_only, b_only].concat(),
    })
}

/// Evaluates an equation by contracting operands left to right, summing
/// each label away as soon as no later operand or the output needs it.
fn einsum<T: Dot>(eq: &Equation, arrays: &[&ArrayD<T>], out_shape: &[usize]) -> Result<ArrayD<T>> {
    let mut terms = arrays
        .iter()
        .zip(&eq.inputs)
        .map(|(a, l)| diagonal(a.view(), l))
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    let mut cur = terms
        .next()
        .ok_or_else(|| Error::Invalid("Einsum needs at least one input".into()))?;
    let rest: Vec<Term<T>> = terms.collect();
    let later: Vec<Vec<u32>> = rest.iter().map(|t| t.labels.clone()).collect();
    for (i, next) in rest.into_iter().enumerate() {
        let keep: BTreeSet<u32> = eq
            .output
            .iter()
            .chain(later[i + 1..].iter().flatten())
            .copied()
            .collect();
        let cur_labels = cur.labels.clone();
        cur = sum_out(cur, |l| !keep.contains(&l) && !next.labels.contains(&l));
        let next = sum_out(next, |l| !keep.contains(&l) && !cur_labels.contains(&l));
        cur = contract(cur, next, &keep, &eq.sizes)?;
    }
    let cur = sum_out(cur, |l| !eq.output.contains(&l));
    let perm: Vec<usize> = eq
        .output
        .iter()
        .map(|l| cur.labels.iter().position(|x| x == l).unwrap_or(0))
        .collect();
    let v = cur.a.view().permuted_axes(IxDyn(&perm));
    let v = v.broadcast(IxDyn(out_shape)).ok_or_else(|| {
        Error::Internal(format!(
            "einsum result {:?} is not {out_shape:?}",
            v.shape()
        ))
    })?;
    Ok(v.as_standard_layout().into_owned())
}

fn einsum_parse(attrs: &Attrs, shapes: &[&[usize]]) -> Result<Equation> {
    let eq = attrs
        .string_opt("equation")?
        .ok_or_else(|| Error::Invalid("missing required attribute 'equation'".into()))?;
    parse_equation(eq, shapes)
}

fn einsum_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let tys: Vec<&ValueType> = (0..c.num_inputs())
        .map(|i| c.input(i))
        .collect::<Result<_>>()?;
    let first = tys
        .first()
        .ok_or_else(|| Error::Invalid("Einsum needs at least one input".into()))?;
    numeric(first)?;
    for (i, t) in tys.iter().enumerate() {
        same_dtype(&format!("input {i}"), first, t)?;
    }
    let shapes: Vec<&[usize]> = tys.iter().map(|t| t.shape.as_slice()).collect();
    let eq = einsum_parse(c.attrs, &shapes)?;
    let shape: Vec<usize> = eq.output.iter().map(|l| eq.sizes[l]).collect();
    one(ValueType::new(first.dtype, shape))
}

fn einsum_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    fn go<T: Dot>(c: &EvalCtx, _: &ArrayD<T>) -> Result<Tensor> {
        let arrays: Vec<&ArrayD<T>> = (0..c.inputs.len())
            .map(|i| c.input(i)?.typed::<T>())
            .collect::<Result<_>>()?;
        let shapes: Vec<&[usize]> = arrays.iter().map(|a| a.shape()).collect();
        let eq = einsum_parse(c.attrs, &shapes)?;
        Ok(T::wrap(einsum(&eq, &arrays, &c.outputs[0].shape)?))
    }
    Ok(vec![num!(c.input(0)?, a => go(c, a)?)])
}

// --------------------------------------------------------------------- Det

fn det_infer(c: &InferCtx) -> Result<Vec<ValueType>> {
    let x = c.input(0)?;
    ensure!(
        x.dtype.is_float(),
        Invalid,
        "input must be a float tensor, found {}",
        x.dtype
    );
    let r = x.shape.len();
    ensure!(
        r >= 2 && x.shape[r - 1] == x.shape[r - 2],
        Invalid,
        "input must be a stack of square matrices, found shape {:?}",
        x.shape
    );
    one(ValueType::new(x.dtype, &x.shape[..r - 2]))
}

/// The determinant by Gaussian elimination with partial pivoting.
fn det(mut m: Vec<f64>, n: usize) -> f64 {
    let mut d = 1.0;
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| m[i * n + col].abs().total_cmp(&m[j * n + col].abs()))
            .unwrap_or(col);
        let p = m[pivot * n + col];
        if p == 0.0 {
            return 0.0;
        }
        if pivot != col {
            for c in 0..n {
                m.swap(pivot * n + c, col * n + c);
            }
            d = -d;
        }
        d *= p;
        for r in col + 1..n {
            let f = m[r * n + col] / p;
            for c in col + 1..n {
                m[r * n + c] -= f * m[col * n + c];
            }
        }
    }
    d
}

fn det_eval(c: &EvalCtx) -> Result<Vec<Tensor>> {
    let x = c.input(0)?;
    let n = x.shape().last().copied().unwrap_or(0);
    let vals = x.to_f64_vec();
    let dets: Vec<f64> = if n == 0 {
        vec![1.0; c.outputs[0].numel()]
    } else {
        vals.chunks(n * n).map(|m| det(m.to_vec(), n)).collect()
    };
    Ok(vec![Tensor::from_f64s(
        x.dtype(),
        &c.outputs[0].shape,
        &dets,
    )?])
}

pub fn register(t: &mut OpTable) {
    t.add("MatMul", matmul_infer, matmul_eval);
    t.add("MatMulInteger", matmul_integer_infer, matmul_integer_eval);
    t.add("Gemm", gemm_infer, gemm_eval);
    t.add("Einsum", einsum_infer, einsum_eval);
    t.add("Det", det_infer, det_eval);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr<T: Elem>(shape: &[usize], v: Vec<T>) -> ArrayD<T> {
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    fn run_einsum(eq: &str, ins: &[&ArrayD<f64>]) -> ArrayD<f64> {
        let shapes: Vec<&[usize]> = ins.iter().map(|a| a.shape()).collect();
        let e = parse_equation(eq, &shapes).unwrap();
        let shape: Vec<usize> = e.output.iter().map(|l| e.sizes[l]).collect();
        einsum(&e, ins, &shape).unwrap()
    }

    #[test]
    fn matmul_promotes_vectors_and_broadcasts() {
        assert_eq!(matmul_shape(&[3], &[3]).unwrap(), Vec::<usize>::new());
        assert_eq!(
            matmul_shape(&[2, 1, 4, 3], &[5, 3, 2]).unwrap(),
            vec![2, 5, 4, 2]
        );
        assert_eq!(matmul_shape(&[4], &[2, 4, 3]).unwrap(), vec![2, 3]);
        assert!(matmul_shape(&[2, 3], &[2, 3]).is_err());
        let a = arr(&[2, 2], vec![1i64, 2, 3, 4]);
        let b = arr(&[2], vec![5i64, 6]);
        assert_eq!(
            matmul_arrays(&a, &b, &[2]).unwrap(),
            arr(&[2], vec![17, 39])
        );
        let a3 = arr(&[2, 1, 2], vec![1.0f32, 2.0, 3.0, 4.0]);
        let b3 = arr(&[2, 1], vec![1.0f32, 1.0]);
        assert_eq!(
            matmul_arrays(&a3, &b3, &[2, 1, 1]).unwrap(),
            arr(&[2, 1, 1], vec![3.0, 7.0])
        );
    }

    #[test]
    fn integer_matmul_wraps() {
        let a = arr(&[1, 1], vec![100i8]);
        let b = arr(&[1, 1], vec![3i8]);
        assert_eq!(matmul_arrays(&a, &b, &[1, 1]).unwrap()[[0, 0]], 44);
    }

    #[test]
    fn einsum_forms() {
        let m = arr(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(run_einsum("ij->ji", &[&m]), m.t().to_owned());
        assert_eq!(run_einsum("ij", &[&m]), m);
        assert_eq!(run_einsum("ji", &[&m]), m.t().to_owned());
        assert_eq!(run_einsum("ij->", &[&m]), arr(&[], vec![21.0]));
        assert_eq!(run_einsum("ij->i", &[&m]), arr(&[2], vec![6.0, 15.0]));
        let sq = arr(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(run_einsum("ii", &[&sq]), arr(&[], vec![5.0]));
        assert_eq!(run_einsum("ii->i", &[&sq]), arr(&[2], vec![1.0, 4.0]));
        assert_eq!(
            run_einsum("ij,jk", &[&m, &m.t().to_owned()]),
            arr(&[2, 2], vec![14.0, 32.0, 32.0, 77.0])
        );
        let v = arr(&[3], vec![1.0, 1.0, 2.0]);
        assert_eq!(run_einsum("i,i", &[&v, &v]), arr(&[], vec![6.0]));
        assert_eq!(
            run_einsum("i,j->ij", &[&v, &arr(&[1], vec![2.0])]),
            arr(&[3, 1], vec![2.0, 2.0, 4.0])
        );
        assert_eq!(
            run_einsum("...j,j->...", &[&m, &v]),
            arr(&[2], vec![9.0, 21.0])
        );
        assert_eq!(
            run_einsum(
                "bij,bjk->bik",
                &[
                    &m.clone().into_shape_with_order(IxDyn(&[1, 2, 3])).unwrap(),
                    &m.t().to_owned().insert_axis(Axis(0))
                ]
            )
            .shape(),
            &[1, 2, 2]
        );
        assert_eq!(run_einsum("i,i,i->", &[&v, &v, &v]), arr(&[], vec![10.0]));
        assert!(parse_equation("ij->k", &[&[2, 3]]).is_err());
        assert!(parse_equation("i,i", &[&[2], &[3]]).is_err());
        assert!(parse_equation("...i->i", &[&[2, 3]]).is_err());
    }

    #[test]
    fn determinant() {
        assert_eq!(det(vec![1.0, 2.0, 3.0, 4.0], 2), -2.0);
        assert_eq!(det(vec![0.0, 1.0, 1.0, 0.0], 2), -1.0);
        assert!((det(vec![2.0, 0.0, 1.0, 1.0, 3.0, 2.0, 1.0, 1.0, 2.0], 3) - 6.0).abs() < 1e-12);
    }
}
