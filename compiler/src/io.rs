//! Tensor files: `.npy` (numpy) and ONNX `TensorProto` `.pb` (the ONNX test
//! data format), read by content and written as `.npy`.

use std::path::Path;

use ndarray::ArrayD;
use npyz::{TypeChar, WriterBuilder};
use prost::Message;

use crate::error::{Error, Result};
use crate::import::onnx::{proto::TensorProto, tensor_from_proto};
use crate::ir::{DType, Elem, Tensor};

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

pub fn read_tensor(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let what = path.display().to_string();
    if bytes.starts_with(NPY_MAGIC) {
        return read_npy(&bytes).map_err(|e| Error::Invalid(format!("{what}: {e}")));
    }
    let p = TensorProto::decode(bytes.as_slice()).map_err(|e| {
        Error::Invalid(format!(
            "{what}: neither .npy nor an ONNX TensorProto ({e})"
        ))
    })?;
    ensure!(
        p.data_type.is_some(),
        Invalid,
        "{what}: neither .npy nor an ONNX TensorProto (no data type)"
    );
    tensor_from_proto(&p, path.parent(), &what)
}

fn read_npy(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    let npy = npyz::NpyFile::new(bytes).map_err(|e| format!("bad .npy header: {e}"))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() == npyz::Order::Fortran {
        return Err("Fortran-ordered .npy files are not supported".into());
    }
    let npyz::DType::Plain(ts) = npy.dtype() else {
        return Err("structured .npy dtypes are not supported".into());
    };
    let dtype = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 2) => DType::F16,
        (TypeChar::Float, 4) => DType::F32,
        (TypeChar::Float, 8) => DType::F64,
        (TypeChar::Int, 1) => DType::I8,
        (TypeChar::Int, 2) => DType::I16,
        (TypeChar::Int, 4) => DType::I32,
        (TypeChar::Int, 8) => DType::I64,
        (TypeChar::Uint, 1) => DType::U8,
        (TypeChar::Uint, 2) => DType::U16,
        (TypeChar::Uint, 4) => DType::U32,
        (TypeChar::Uint, 8) => DType::U64,
        (TypeChar::Bool, 1) => DType::Bool,
        _ => return Err(format!("dtype {ts} is not supported")),
    };
    fn vec<T: npyz::Deserialize>(f: npyz::NpyFile<&[u8]>) -> std::result::Result<Vec<T>, String> {
        f.into_vec().map_err(|e| format!("bad .npy data: {e}"))
    }
    let t = match dtype {
        DType::F16 => Tensor::from_vec(&shape, vec::<half::f16>(npy)?),
        DType::F32 => Tensor::from_vec(&shape, vec::<f32>(npy)?),
        DType::F64 => Tensor::from_vec(&shape, vec::<f64>(npy)?),
        DType::I8 => Tensor::from_vec(&shape, vec::<i8>(npy)?),
        DType::I16 => Tensor::from_vec(&shape, vec::<i16>(npy)?),
        DType::I32 => Tensor::from_vec(&shape, vec::<i32>(npy)?),
        DType::I64 => Tensor::from_vec(&shape, vec::<i64>(npy)?),
        DType::U8 => Tensor::from_vec(&shape, vec::<u8>(npy)?),
        DType::U16 => Tensor::from_vec(&shape, vec::<u16>(npy)?),
        DType::U32 => Tensor::from_vec(&shape, vec::<u32>(npy)?),
        DType::U64 => Tensor::from_vec(&shape, vec::<u64>(npy)?),
        DType::Bool => Tensor::from_vec(&shape, vec::<bool>(npy)?),
        DType::BF16 => unreachable!("numpy has no bf16"),
    };
    t.map_err(|e| e.to_string())
}

/// Writes a tensor as `.npy`. numpy has no bf16, so bf16 is written as f32
/// (exactly: every bf16 is an f32).
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    fn go<T: Elem + npyz::AutoSerialize>(path: &Path, a: &ArrayD<T>) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let shape: Vec<u64> = a.shape().iter().map(|&d| d as u64).collect();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(file)
            .begin_nd()?;
        w.extend(a.iter().copied())?;
        w.finish()
    }
    let r = match t {
        Tensor::F32(a) => go(path, a),
        Tensor::F16(a) => go(path, a),
        Tensor::BF16(_) => return write_npy(path, &t.cast(DType::F32)),
        Tensor::F64(a) => go(path, a),
        Tensor::I8(a) => go(path, a),
        Tensor::U8(a) => go(path, a),
        Tensor::I16(a) => go(path, a),
        Tensor::U16(a) => go(path, a),
        Tensor::I32(a) => go(path, a),
        Tensor::U32(a) => go(path, a),
        Tensor::I64(a) => go(path, a),
        Tensor::U64(a) => go(path, a),
        Tensor::Bool(a) => go(path, a),
    };
    r.map_err(|e| Error::io(path, e))
}
