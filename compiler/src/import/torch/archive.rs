//! The zip container shared by TorchScript (`.pt`) and `torch.export`
//! (`.pt2`) files, and the tensors inside it.
//!
//! Both put every entry under one top-level folder (the file's stem when it
//! was saved). TorchScript keeps pickles (`data.pkl`, `constants.pkl`) whose
//! tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size,
//! stride, ...)` calls, the storage a persistent id `('storage',
//! torch.FloatStorage, key, device, numel)` naming the raw little-endian
//! file `data/KEY` (or `constants/KEY`). Entries are read whole; torch
//! writes them stored (uncompressed) and aligned, so no decompressor is
//! built in.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use super::pickle::Value;
use crate::error::{Error, Result};
use crate::ir::{DType, Tensor};

/// Which kind of torch archive a zip is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    TorchScript,
    Export,
}

pub struct Archive<'a> {
    zip: zip::ZipArchive<Cursor<&'a [u8]>>,
    /// Entry names under the prefix, without it.
    names: Vec<String>,
    /// The top-level folder, with its trailing `/`.
    pub prefix: String,
    pub kind: Kind,
    total: usize,
}

fn zip_err(e: zip::result::ZipError) -> Error {
    match e {
        zip::result::ZipError::UnsupportedArchive(m) => {
            Error::Unsupported(format!("zip archive: {m}"))
        }
        e => Error::Invalid(format!("corrupt zip archive: {e}")),
    }
}

impl<'a> Archive<'a> {
    pub fn open(bytes: &'a [u8]) -> Result<Archive<'a>> {
        // Torch archives start at byte 0. `.pt2` files hold a nested zip
        // (`sample_inputs/model.pt`) whose end-of-directory record misleads
        // offset detection, so the offset is given.
        let config = zip::read::Config {
            archive_offset: zip::read::ArchiveOffset::Known(0),
        };
        let zip = zip::ZipArchive::with_config(config, Cursor::new(bytes)).map_err(zip_err)?;
        let all: Vec<String> = zip
            .file_names()
            .map(|n| n.map(|n| n.into_owned()))
            .collect::<std::result::Result<_, _>>()
            .map_err(zip_err)?;
        let names: Vec<&str> = all.iter().map(String::as_str).collect();
        let find = |suffix: &str| {
            names
                .iter()
                .filter_map(|n| n.strip_suffix(suffix))
                .find(|p| p.ends_with('/') && p.matches('/').count() == 1)
                .map(str::to_string)
        };
        let (prefix, kind) = if let Some(p) = find("data.pkl").filter(|p| {
            names.contains(&format!("{p}code/__torch__.py").as_str())
                || names.iter().any(|n| n.starts_with(&format!("{p}code/")))
        }) {
            (p, Kind::TorchScript)
        } else if let Some(p) = find("archive_format") {
            (p, Kind::Export)
        } else if find("data.pkl").is_some() {
            bail!(
                Unsupported,
                "this zip is a torch.save checkpoint (pickled Python objects, no code/): save the model with torch.jit.trace + torch.jit.save, or torch.export.save"
            );
        } else {
            bail!(
                Invalid,
                "a zip archive, but neither TorchScript (no */data.pkl with code/) nor torch.export (no */archive_format)"
            );
        };
        let names = all
            .iter()
            .filter_map(|n| n.strip_prefix(&prefix))
            .map(str::to_string)
            .collect();
        Ok(Archive {
            zip,
            names,
            prefix,
            kind,
            total: bytes.len(),
        })
    }

    /// Entry names under the prefix, without it.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// The bytes of `name` (relative to the prefix).
    pub fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        let full = format!("{}{name}", self.prefix);
        let mut f = self.zip.by_name(&full).map_err(|e| match e {
            zip::result::ZipError::FileNotFound => {
                Error::Invalid(format!("the archive has no entry '{full}'"))
            }
            e => zip_err(e),
        })?;
        // A stored entry cannot be larger than the file holding it: do not
        // trust a size field further than that.
        let size = f.size();
        ensure!(
            size <= self.total as u64,
            Invalid,
            "corrupt zip archive: entry '{full}' claims {size} bytes in a {}-byte file",
            self.total
        );
        let mut out = Vec::with_capacity(size as usize);
        f.read_to_end(&mut out)
            .map_err(|e| Error::Invalid(format!("corrupt zip archive: entry '{full}': {e}")))?;
        Ok(out)
    }

    pub fn read_text(&mut self, name: &str) -> Result<String> {
        String::from_utf8(self.read(name)?)
            .map_err(|_| Error::Invalid(format!("{}{name} is not UTF-8 text", self.prefix)))
    }
}

/// The dtype of a `torch.*Storage` class name or a `torch.dtype` name
/// (`float32`, `torch.float32`).
pub fn dtype_of(name: &str) -> Option<DType> {
    let n = name.strip_prefix("torch.").unwrap_or(name);
    Some(match n {
        "FloatStorage" | "float32" | "float" => DType::F32,
        "DoubleStorage" | "float64" | "double" => DType::F64,
        "HalfStorage" | "float16" | "half" => DType::F16,
        "BFloat16Storage" | "bfloat16" => DType::BF16,
        "LongStorage" | "int64" | "long" => DType::I64,
        "IntStorage" | "int32" | "int" => DType::I32,
        "ShortStorage" | "int16" | "short" => DType::I16,
        "CharStorage" | "int8" => DType::I8,
        "ByteStorage" | "uint8" => DType::U8,
        "BoolStorage" | "bool" => DType::Bool,
        "uint16" => DType::U16,
        "uint32" => DType::U32,
        "uint64" => DType::U64,
        _ => return None,
    })
}

/// Gathers a strided view of a raw little-endian storage into a dense
/// tensor, checking that every element lies inside the storage.
pub fn strided(
    dtype: DType,
    raw: &[u8],
    offset: usize,
    size: &[usize],
    stride: &[usize],
    what: &str,
) -> Result<Tensor> {
    ensure!(
        size.len() == stride.len(),
        Invalid,
        "{what}: {} sizes but {} strides",
        size.len(),
        stride.len()
    );
    let es = dtype.size_bytes();
    let numel = size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Invalid(format!("{what}: size {size:?} overflows")))?;
    let avail = raw.len() / es;
    if numel > 0 {
        let last = size
            .iter()
            .zip(stride)
            .try_fold(offset, |a, (&d, &s)| a.checked_add((d - 1).checked_mul(s)?))
            .filter(|&l| l < avail);
        ensure!(
            last.is_some(),
            Invalid,
            "{what}: size {size:?}, stride {stride:?}, offset {offset} reach past its storage of {avail} elements"
        );
    }
    let contiguous = {
        let mut want = 1;
        let mut ok = true;
        for (&d, &s) in size.iter().zip(stride).rev() {
            ok &= d == 1 || s == want;
            want *= d;
        }
        ok
    };
    if contiguous {
        return Tensor::from_le_bytes(dtype, size, &raw[offset * es..(offset + numel) * es]);
    }
    let mut out = Vec::with_capacity(numel * es);
    let mut idx = vec![0usize; size.len()];
    for _ in 0..numel {
        let at = offset + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&raw[at * es..(at + 1) * es]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Tensor::from_le_bytes(dtype, size, &out)
}

/// Non-negative integers of a pickled tuple/list (sizes, strides).
pub fn usizes(v: &Value, what: &str) -> Result<Vec<usize>> {
    let items = match v {
        Value::Tuple(t) | Value::List(t) => t,
        _ => bail!(Invalid, "{what}: expected a tuple, found {}", v.kind()),
    };
    items
        .iter()
        .map(|x| match x {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            _ => bail!(Invalid, "{what}: expected non-negative integers"),
        })
        .collect()
}

/// Turns the pickled values of a TorchScript archive into tensors, reading
/// each storage file once.
pub struct Tensors<'a, 'b> {
    pub archive: &'b mut Archive<'a>,
    /// The folder of this pickle's storages (`data/`, `constants/`).
    pub dir: &'static str,
    storages: HashMap<String, (DType, std::rc::Rc<Vec<u8>>)>,
}

impl<'a, 'b> Tensors<'a, 'b> {
    pub fn new(archive: &'b mut Archive<'a>, dir: &'static str) -> Self {
        Tensors {
            archive,
            dir,
            storages: HashMap::new(),
        }
    }

    /// The tensor a `_rebuild_tensor_v2` call describes, or None when `v`
    /// is not such a call.
    pub fn tensor(&mut self, v: &Value) -> Result<Option<Tensor>> {
        let Value::Call(f, args) = v else {
            return Ok(None);
        };
        let Value::Global(g) = f.as_ref() else {
            return Ok(None);
        };
        match g.as_str() {
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {}
            g if g.starts_with("torch._utils._rebuild") => {
                bail!(
                    Unsupported,
                    "tensor kind {g} (quantized/sparse/meta tensors)"
                )
            }
            _ => return Ok(None),
        }
        let what = "a pickled tensor";
        ensure!(
            args.len() >= 4,
            Invalid,
            "{what}: {g} has {} arguments",
            args.len()
        );
        let (dtype, raw) = self.storage(&args[0])?;
        let Value::Int(offset) = args[1] else {
            bail!(Invalid, "{what}: storage offset is not an integer");
        };
        let offset = usize::try_from(offset)
            .map_err(|_| Error::Invalid(format!("{what}: negative storage offset")))?;
        let size = usizes(&args[2], "tensor size")?;
        let stride = usizes(&args[3], "tensor stride")?;
        strided(dtype, &raw, offset, &size, &stride, what).map(Some)
    }

    fn storage(&mut self, v: &Value) -> Result<(DType, std::rc::Rc<Vec<u8>>)> {
        let Value::Persistent(pid) = v else {
            bail!(Invalid, "tensor storage is not a persistent id");
        };
        let Value::Tuple(t) = pid.as_ref() else {
            bail!(Invalid, "storage persistent id is not a tuple");
        };
        let (Some(Value::Str(tag)), Some(Value::Global(cls)), Some(Value::Str(key))) =
            (t.first(), t.get(1), t.get(2))
        else {
            bail!(
                Invalid,
                "storage persistent id is not ('storage', class, key, ...)"
            );
        };
        ensure!(
            tag == "storage",
            Invalid,
            "persistent id '{tag}' is not a storage"
        );
        let dtype =
            dtype_of(cls).ok_or_else(|| Error::Unsupported(format!("storage type {cls}")))?;
        if let Some(s) = self.storages.get(key) {
            return Ok(s.clone());
        }
        let raw = std::rc::Rc::new(self.archive.read(&format!("{}{key}", self.dir))?);
        self.storages.insert(key.clone(), (dtype, raw.clone()));
        Ok((dtype, raw))
    }
}
