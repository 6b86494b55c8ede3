//! PyTorch importers: TorchScript archives (`torch.jit.save`, `.pt`) and
//! `torch.export` archives (`torch.export.save`, `.pt2`). Both are zip files
//! (`archive.rs`); TorchScript pickles its module (`pickle.rs`) and keeps
//! Python-like source (`script.rs`, evaluated by `torchscript.rs`), while
//! `.pt2` holds a JSON graph (`export.rs`). Both map ATen ops to IR nodes
//! through the one table in `aten.rs`. No Python or libtorch is involved.

mod archive;
mod aten;
mod export;
mod pickle;
mod script;
mod torchscript;

use crate::error::Result;
use crate::import::ImportOptions;
use crate::ir::Graph;

pub use archive::Kind;
pub use aten::supports as supports_aten;

/// Whether `bytes` is a zip archive (both torch formats are).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// Which torch format a zip holds, by its entries.
pub fn kind(bytes: &[u8]) -> Result<Kind> {
    Ok(archive::Archive::open(bytes)?.kind)
}

pub fn load_bytes(bytes: &[u8], opts: &ImportOptions) -> Result<Graph> {
    match kind(bytes)? {
        Kind::TorchScript => torchscript::load(bytes, opts),
        Kind::Export => export::load(bytes, opts),
    }
}

pub fn input_names(bytes: &[u8]) -> Result<Vec<String>> {
    match kind(bytes)? {
        Kind::TorchScript => torchscript::input_names(bytes),
        Kind::Export => export::input_names(bytes),
    }
}
