//! Model importers. Each turns a file into the IR; nothing downstream knows
//! which importer a graph came from.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::{Graph, Tensor};

pub mod onnx;
pub mod torch;

/// What the user tells an importer beyond the file.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Shapes for inputs with symbolic or missing dimensions (`--shape`).
    pub shapes: HashMap<String, Vec<usize>>,
    /// Graph inputs replaced by these constants, for inputs whose value
    /// decides a shape (a Reshape target fed from outside, say).
    pub bind: HashMap<String, Tensor>,
}

/// Parses `NAME=1,3,224,224` as given to `--shape`.
pub fn parse_shape_arg(s: &str) -> Result<(String, Vec<usize>)> {
    let (name, dims) = s.rsplit_once('=').ok_or_else(|| {
        Error::Invalid(format!(
            "--shape {s:?}: expected NAME=D0,D1,... (e.g. x=1,3,224,224)"
        ))
    })?;
    let dims = if dims.trim().is_empty() {
        Vec::new()
    } else {
        dims.split(',')
            .map(|d| {
                d.trim().parse::<usize>().map_err(|_| {
                    Error::Invalid(format!(
                        "--shape {s:?}: dimension {d:?} is not a non-negative integer"
                    ))
                })
            })
            .collect::<Result<_>>()?
    };
    Ok((name.to_string(), dims))
}

/// Reads a model file, choosing the importer by content.
pub fn load(path: &Path, opts: &ImportOptions) -> Result<Graph> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        bail!(Invalid, "{}: the model file is empty", path.display());
    }
    if torch::is_zip(&bytes) {
        return torch::load_bytes(&bytes, opts).map_err(|e| prefix_file(e, path));
    }
    onnx::load_bytes(&bytes, path.parent(), opts).map_err(|e| prefix_file(e, path))
}

fn prefix_file(e: Error, path: &Path) -> Error {
    let p = path.display();
    match e {
        Error::Invalid(m) => Error::Invalid(format!("{p}: {m}")),
        Error::Unsupported(m) => Error::Unsupported(format!("{p}: {m}")),
        other => other,
    }
}

/// The names of a model's runtime inputs, in order, without building the
/// graph (to bind `--input FILE` arguments by position).
pub fn input_names(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if torch::is_zip(&bytes) {
        return torch::input_names(&bytes).map_err(|e| prefix_file(e, path));
    }
    onnx::input_names(&bytes).map_err(|e| prefix_file(e, path))
}
