//! Dense tensors of every IR dtype, backed by `ndarray` so the interpreter can
//! say what it computes (broadcasts, axis views, permutations) plainly.

use std::fmt::Debug;

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::ir::DType;

#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    F32(ArrayD<f32>),
    F16(ArrayD<f16>),
    BF16(ArrayD<bf16>),
    F64(ArrayD<f64>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
    I16(ArrayD<i16>),
    U16(ArrayD<u16>),
    I32(ArrayD<i32>),
    U32(ArrayD<u32>),
    I64(ArrayD<i64>),
    U64(ArrayD<u64>),
    Bool(ArrayD<bool>),
}

/// Runs `$body` with `$a` bound to the typed array inside a tensor.
#[macro_export]
macro_rules! dispatch {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            $crate::ir::Tensor::F32($a) => $body,
            $crate::ir::Tensor::F16($a) => $body,
            $crate::ir::Tensor::BF16($a) => $body,
            $crate::ir::Tensor::F64($a) => $body,
            $crate::ir::Tensor::I8($a) => $body,
            $crate::ir::Tensor::U8($a) => $body,
            $crate::ir::Tensor::I16($a) => $body,
            $crate::ir::Tensor::U16($a) => $body,
            $crate::ir::Tensor::I32($a) => $body,
            $crate::ir::Tensor::U32($a) => $body,
            $crate::ir::Tensor::I64($a) => $body,
            $crate::ir::Tensor::U64($a) => $body,
            $crate::ir::Tensor::Bool($a) => $body,
        }
    };
}

/// Like `dispatch!` for numeric tensors; `$other` handles bool.
#[macro_export]
macro_rules! dispatch_num {
    ($t:expr, $a:ident => $body:expr, $other:ident => $err:expr) => {
        match $t {
            $crate::ir::Tensor::F32($a) => $body,
            $crate::ir::Tensor::F16($a) => $body,
            $crate::ir::Tensor::BF16($a) => $body,
            $crate::ir::Tensor::F64($a) => $body,
            $crate::ir::Tensor::I8($a) => $body,
            $crate::ir::Tensor::U8($a) => $body,
            $crate::ir::Tensor::I16($a) => $body,
            $crate::ir::Tensor::U16($a) => $body,
            $crate::ir::Tensor::I32($a) => $body,
            $crate::ir::Tensor::U32($a) => $body,
            $crate::ir::Tensor::I64($a) => $body,
            $crate::ir::Tensor::U64($a) => $body,
            $other => $err,
        }
    };
}

/// Like `dispatch!` for floating-point tensors; `$other` handles the rest.
#[macro_export]
macro_rules! dispatch_float {
    ($t:expr, $a:ident => $body:expr, $other:ident => $err:expr) => {
        match $t {
            $crate::ir::Tensor::F32($a) => $body,
            $crate::ir::Tensor::F16($a) => $body,
            $crate::ir::Tensor::BF16($a) => $body,
            $crate::ir::Tensor::F64($a) => $body,
            $other => $err,
        }
    };
}

/// An element type of `Tensor`. Conversions go through f64 (floats) or i128
/// (integers) so that Cast and mixed-type helpers are exact where ONNX is.
pub trait Elem: Copy + Default + PartialOrd + PartialEq + Debug + Send + Sync + 'static {
    const DTYPE: DType;
    fn wrap(a: ArrayD<Self>) -> Tensor;
    fn unwrap(t: &Tensor) -> Option<&ArrayD<Self>>;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    fn to_i128(self) -> i128;
    /// Wraps like a C cast to a narrower integer.
    fn from_i128(v: i128) -> Self;
}

macro_rules! elem_int {
    ($t:ty, $v:ident, $d:ident) => {
        impl Elem for $t {
            const DTYPE: DType = DType::$d;
            fn wrap(a: ArrayD<Self>) -> Tensor {
                Tensor::$v(a)
            }
            fn unwrap(t: &Tensor) -> Option<&ArrayD<Self>> {
                match t {
                    Tensor::$v(a) => Some(a),
                    _ => None,
                }
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_i128(self) -> i128 {
                self as i128
            }
            fn from_i128(v: i128) -> Self {
                v as $t
            }
        }
    };
}
elem_int!(i8, I8, I8);
elem_int!(u8, U8, U8);
elem_int!(i16, I16, I16);
elem_int!(u16, U16, U16);
elem_int!(i32, I32, I32);
elem_int!(u32, U32, U32);
elem_int!(i64, I64, I64);
elem_int!(u64, U64, U64);

macro_rules! elem_float {
    ($t:ty, $v:ident, $d:ident, $to:expr, $from:expr) => {
        impl Elem for $t {
            const DTYPE: DType = DType::$d;
            fn wrap(a: ArrayD<Self>) -> Tensor {
                Tensor::$v(a)
            }
            fn unwrap(t: &Tensor) -> Option<&ArrayD<Self>> {
                match t {
                    Tensor::$v(a) => Some(a),
                    _ => None,
                }
            }
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn to_i128(self) -> i128 {
                $to(self) as i128
            }
            fn from_i128(v: i128) -> Self {
                $from(v as f64)
            }
        }
    };
}
elem_float!(f32, F32, F32, |x: f32| x as f64, |v: f64| v as f32);
elem_float!(f64, F64, F64, |x: f64| x, |v: f64| v);
elem_float!(f16, F16, F16, f16::to_f64, f16::from_f64);
elem_float!(bf16, BF16, BF16, bf16::to_f64, bf16::from_f64);

impl Elem for bool {
    const DTYPE: DType = DType::Bool;
    fn wrap(a: ArrayD<Self>) -> Tensor {
        Tensor::Bool(a)
    }
    fn unwrap(t: &Tensor) -> Option<&ArrayD<Self>> {
        match t {
            Tensor::Bool(a) => Some(a),
            _ => None,
        }
    }
    fn to_f64(self) -> f64 {
        self as u8 as f64
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn to_i128(self) -> i128 {
        self as i128
    }
    fn from_i128(v: i128) -> Self {
        v != 0
    }
}

impl<T: Elem> From<ArrayD<T>> for Tensor {
    fn from(a: ArrayD<T>) -> Tensor {
        T::wrap(a)
    }
}

fn cast_array<S: Elem, D: Elem>(a: &ArrayD<S>) -> ArrayD<D> {
    if S::DTYPE.is_float() || D::DTYPE.is_float() {
        a.mapv(|x| D::from_f64(x.to_f64()))
    } else {
        a.mapv(|x| D::from_i128(x.to_i128()))
    }
}

impl Tensor {
    pub fn dtype(&self) -> DType {
        dispatch!(self, a => elem_dtype(a))
    }

    pub fn shape(&self) -> &[usize] {
        dispatch!(self, a => a.shape())
    }

    pub fn len(&self) -> usize {
        dispatch!(self, a => a.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn rank(&self) -> usize {
        self.shape().len()
    }

    /// A typed view, or an internal error naming the expected and actual
    /// dtypes (callers have checked dtypes during shape inference).
    pub fn typed<T: Elem>(&self) -> Result<&ArrayD<T>> {
        T::unwrap(self).ok_or_else(|| {
            Error::Internal(format!(
                "expected a {} tensor, found {}",
                T::DTYPE,
                self.dtype()
            ))
        })
    }

    pub fn from_vec<T: Elem>(shape: &[usize], data: Vec<T>) -> Result<Tensor> {
        ArrayD::from_shape_vec(IxDyn(shape), data)
            .map(T::wrap)
            .map_err(|e| Error::Invalid(format!("tensor of shape {shape:?}: {e}")))
    }

    pub fn scalar<T: Elem>(v: T) -> Tensor {
        T::wrap(ArrayD::from_elem(IxDyn(&[]), v))
    }

    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        Tensor::full(dtype, shape, 0.0)
    }

    pub fn full(dtype: DType, shape: &[usize], v: f64) -> Tensor {
        fn mk<T: Elem>(shape: &[usize], v: f64) -> Tensor {
            T::wrap(ArrayD::from_elem(IxDyn(shape), T::from_f64(v)))
        }
        with_dtype!(dtype, T => mk::<T>(shape, v))
    }

    /// Builds a tensor of `dtype` from f64 values (exact for every value an
    /// f64 holds exactly).
    pub fn from_f64s(dtype: DType, shape: &[usize], vals: &[f64]) -> Result<Tensor> {
        fn mk<T: Elem>(shape: &[usize], vals: &[f64]) -> Result<Tensor> {
            Tensor::from_vec(shape, vals.iter().map(|&v| T::from_f64(v)).collect())
        }
        with_dtype!(dtype, T => mk::<T>(shape, vals))
    }

    pub fn cast(&self, to: DType) -> Tensor {
        fn go<S: Elem>(a: &ArrayD<S>, to: DType) -> Tensor {
            with_dtype!(to, D => D::wrap(cast_array::<S, D>(a)))
        }
        dispatch!(self, a => go(a, to))
    }

    pub fn to_f64_vec(&self) -> Vec<f64> {
        dispatch!(self, a => a.iter().map(|x| x.to_f64()).collect())
    }

    /// The values of an integer tensor (shapes, axes, indices) as i64.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        if self.dtype().is_float() || self.dtype() == DType::Bool {
            bail!(
                Invalid,
                "expected an integer tensor, found {}",
                self.dtype()
            );
        }
        Ok(dispatch!(self, a => a.iter().map(|x| x.to_i128() as i64).collect()))
    }

    /// The single value of a one-element tensor, as f64.
    pub fn scalar_f64(&self) -> Result<f64> {
        ensure!(
            self.len() == 1,
            Invalid,
            "expected a single value, found shape {:?}",
            self.shape()
        );
        Ok(self.to_f64_vec()[0])
    }

    /// Decodes dense little-endian element bytes (the layout of ONNX
    /// `raw_data` and of compiled code's buffers).
    pub fn from_le_bytes(dtype: DType, shape: &[usize], raw: &[u8]) -> Result<Tensor> {
        macro_rules! le {
            ($t:ty, $n:literal) => {
                Tensor::from_vec(
                    shape,
                    raw.chunks_exact($n)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            };
        }
        match dtype {
            DType::F32 => le!(f32, 4),
            DType::F64 => le!(f64, 8),
            DType::I8 => le!(i8, 1),
            DType::U8 => le!(u8, 1),
            DType::I16 => le!(i16, 2),
            DType::U16 => le!(u16, 2),
            DType::I32 => le!(i32, 4),
            DType::U32 => le!(u32, 4),
            DType::I64 => le!(i64, 8),
            DType::U64 => le!(u64, 8),
            DType::F16 => Tensor::from_vec(
                shape,
                raw.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::BF16 => Tensor::from_vec(
                shape,
                raw.chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::Bool => Tensor::from_vec(shape, raw.iter().map(|&b| b != 0).collect()),
        }
    }

    /// Dense little-endian element bytes in row-major order.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        // Fixed-size element bytes: no allocation per element (this runs on
        // every JIT call's inputs and on every constant).
        fn bytes<T: Elem, const N: usize>(
            a: &ndarray::ArrayD<T>,
            f: impl Fn(T) -> [u8; N],
        ) -> Vec<u8> {
            let mut out = Vec::with_capacity(a.len() * N);
            for &x in a.iter() {
                out.extend_from_slice(&f(x));
            }
            out
        }
        match self {
            Tensor::F32(a) => bytes(a, |x| x.to_le_bytes()),
            Tensor::F64(a) => bytes(a, |x| x.to_le_bytes()),
            Tensor::F16(a) => bytes(a, |x| x.to_le_bytes()),
            Tensor::BF16(a) => bytes(a, |x| x.to_le_bytes()),
            Tensor::I8(a) => bytes(a, |x| x.to_le_bytes()),
            Tensor::U8(a) => bytes(a, |x| [x]),
            Tensor::I16(a) => bytes(a, |x| x.to_le_bytes()),
            Tensor::U16(a) => bytes(a, |x| x.to_le_bytes()),
            Tensor::I32(a) => bytes(a, |x| x.to_le_bytes()),
            Tensor::U32(a) => bytes(a, |x| x.to_le_bytes()),
            Tensor::I64(a) => bytes(a, |x| x.to_le_bytes()),
            Tensor::U64(a) => bytes(a, |x| x.to_le_bytes()),
            Tensor::Bool(a) => bytes(a, |x| [x as u8]),
        }
    }

    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        dispatch!(self, a => {
            let v: Vec<_> = a.iter().copied().collect();
            Tensor::from_vec(shape, v)
        })
    }
}

fn elem_dtype<T: Elem>(_: &ArrayD<T>) -> DType {
    T::DTYPE
}

/// Binds `$T` to the Rust element type of a `DType` value.
#[macro_export]
macro_rules! with_dtype {
    ($d:expr, $T:ident => $body:expr) => {
        match $d {
            $crate::ir::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::ir::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::ir::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            $crate::ir::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::ir::DType::I8 => {
                type $T = i8;
                $body
            }
            $crate::ir::DType::U8 => {
                type $T = u8;
                $body
            }
            $crate::ir::DType::I16 => {
                type $T = i16;
                $body
            }
            $crate::ir::DType::U16 => {
                type $T = u16;
                $body
            }
            $crate::ir::DType::I32 => {
                type $T = i32;
                $body
            }
            $crate::ir::DType::U32 => {
                type $T = u32;
                $body
            }
            $crate::ir::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::ir::DType::U64 => {
                type $T = u64;
                $body
            }
            $crate::ir::DType::Bool => {
                type $T = bool;
                $body
            }
        }
    };
}
use crate::with_dtype;
