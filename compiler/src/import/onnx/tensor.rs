//! `TensorProto` <-> `Tensor`: typed fields, little-endian `raw_data`, and
//! external data files next to the model.

use std::path::{Component, Path};

use half::{bf16, f16};

use super::proto::TensorProto;
use super::proto::tensor_proto::DataLocation;
use crate::error::{Error, Result};
use crate::ir::{DType, Tensor};

/// Decodes a tensor; `dir` is the model's directory, where external data
/// files live. `what` names the tensor in errors.
pub fn tensor_from_proto(p: &TensorProto, dir: Option<&Path>, what: &str) -> Result<Tensor> {
    let code = p.data_type();
    let dtype = DType::from_onnx(code).ok_or_else(|| {
        Error::Unsupported(format!(
            "{what}: dtype {} is not supported",
            DType::onnx_name(code)
        ))
    })?;
    let mut shape = Vec::with_capacity(p.dims.len());
    for &d in &p.dims {
        ensure!(
            d >= 0,
            Invalid,
            "{what}: negative dimension {d} in {:?}",
            p.dims
        );
        shape.push(d as usize);
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| {
            n.checked_mul(dtype.size_bytes())
                .is_some_and(|b| b < (1 << 40))
        })
        .ok_or_else(|| Error::Invalid(format!("{what}: shape {shape:?} is too large")))?;
    if p.segment.is_some() {
        bail!(Unsupported, "{what}: segmented tensors are not supported");
    }
    let external;
    let raw: Option<&[u8]> = if p.data_location() == DataLocation::External {
        external = read_external(p, dir, what)?;
        Some(&external)
    } else {
        p.raw_data.as_deref()
    };
    if let Some(raw) = raw {
        let want = numel * dtype.size_bytes();
        ensure!(
            raw.len() == want,
            Invalid,
            "{what}: raw data has {} bytes, {dtype}{shape:?} needs {want}",
            raw.len()
        );
        return Tensor::from_le_bytes(dtype, &shape, raw);
    }
    let n = |len: usize, field: &str| -> Result<()> {
        ensure!(
            len == numel,
            Invalid,
            "{what}: {field} has {len} values, shape {shape:?} needs {numel}"
        );
        Ok(())
    };
    let ints = |f: fn(i32) -> f64| -> Result<Tensor> {
        n(p.int32_data.len(), "int32_data")?;
        let v: Vec<f64> = p.int32_data.iter().map(|&x| f(x)).collect();
        Tensor::from_f64s(dtype, &shape, &v)
    };
    match dtype {
        DType::F32 => {
            n(p.float_data.len(), "float_data")?;
            Tensor::from_vec(&shape, p.float_data.clone())
        }
        DType::F64 => {
            n(p.double_data.len(), "double_data")?;
            Tensor::from_vec(&shape, p.double_data.clone())
        }
        DType::I64 => {
            n(p.int64_data.len(), "int64_data")?;
            Tensor::from_vec(&shape, p.int64_data.clone())
        }
        DType::U64 => {
            n(p.uint64_data.len(), "uint64_data")?;
            Tensor::from_vec(&shape, p.uint64_data.clone())
        }
        DType::U32 => {
            n(p.uint64_data.len(), "uint64_data")?;
            Tensor::from_vec(&shape, p.uint64_data.iter().map(|&x| x as u32).collect())
        }
        // 16-bit floats travel as their bit patterns in int32_data.
        DType::F16 => {
            n(p.int32_data.len(), "int32_data")?;
            Tensor::from_vec(
                &shape,
                p.int32_data
                    .iter()
                    .map(|&x| f16::from_bits(x as u16))
                    .collect(),
            )
        }
        DType::BF16 => {
            n(p.int32_data.len(), "int32_data")?;
            Tensor::from_vec(
                &shape,
                p.int32_data
                    .iter()
                    .map(|&x| bf16::from_bits(x as u16))
                    .collect(),
            )
        }
        DType::I32 | DType::I16 | DType::I8 | DType::U16 | DType::U8 | DType::Bool => {
            ints(|x| x as f64)
        }
    }
}

fn read_external(p: &TensorProto, dir: Option<&Path>, what: &str) -> Result<Vec<u8>> {
    let mut location = None;
    let (mut offset, mut length) = (0u64, None);
    for kv in &p.external_data {
        let v = kv.value();
        match kv.key() {
            "location" => location = Some(v.to_string()),
            "offset" => {
                offset = v
                    .parse()
                    .map_err(|_| Error::Invalid(format!("{what}: bad external offset {v:?}")))?
            }
            "length" => {
                length =
                    Some(v.parse::<u64>().map_err(|_| {
                        Error::Invalid(format!("{what}: bad external length {v:?}"))
                    })?)
            }
            _ => {}
        }
    }
    let loc =
        location.ok_or_else(|| Error::Invalid(format!("{what}: external data has no location")))?;
    let rel = Path::new(&loc);
    // External data must stay beside the model: no absolute paths, no `..`.
    ensure!(
        rel.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
        Invalid,
        "{what}: external data location {loc:?} leaves the model's directory"
    );
    let path = dir.unwrap_or(Path::new(".")).join(rel);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = match length {
        Some(l) => start.saturating_add(usize::try_from(l).unwrap_or(usize::MAX)),
        None => bytes.len(),
    };
    ensure!(
        start <= end && end <= bytes.len(),
        Invalid,
        "{what}: external data [{start}, {end}) is outside {} ({} bytes)",
        path.display(),
        bytes.len()
    );
    Ok(bytes[start..end].to_vec())
}

/// Encodes a tensor with `raw_data`, the compact form exporters write.
pub fn tensor_to_proto(t: &Tensor, name: &str) -> TensorProto {
    let raw = t.to_le_bytes();
    TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(t.dtype().onnx_code()),
        name: Some(name.to_string()),
        raw_data: Some(raw),
        ..TensorProto::default()
    }
}
