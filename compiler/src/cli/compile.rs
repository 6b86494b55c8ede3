//! `cpucc compile`: native code for a target as an object file, a C header
//! and Rust bindings, plus CLIF/assembly dumps on request.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cpucc::codegen::{Dumps, artifact};
use cpucc::{Error, Result, import};
use cpucc_targets::Target;

use super::{FastMathArgs, ModelArgs, PassArgs};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// `N.o`, an ELF relocatable object.
    Obj,
    /// `N.h`, the C interface.
    Header,
    /// `N.rs`, a safe Rust wrapper.
    Rust,
    /// `N.clif/<kernel>.clif`, Cranelift IR per kernel.
    Clif,
    /// `N.asm/<kernel>.s`, machine code per kernel.
    Asm,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Target preset, triple (+features), or `native` (`cpucc targets`).
    #[arg(long, default_value = "native")]
    target: String,
    /// Output directory.
    #[arg(short = 'o', long = "out-dir", default_value = ".")]
    out_dir: PathBuf,
    /// Symbol prefix and file name (default: the model file's stem).
    #[arg(long)]
    name: Option<String>,
    /// What to write.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "obj,header,rust"
    )]
    emit: Vec<Emit>,
    #[command(flatten)]
    fast_math: FastMathArgs,
    #[command(flatten)]
    passes: PassArgs,
}

pub fn main(a: Args) -> Result<()> {
    let start = Instant::now();
    let target = Target::parse(&a.target).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut g = import::load(&a.model.model, &a.model.options()?)?;
    let reports = a.passes.run(&mut g)?;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => default_name(&a.model.model),
    };
    let mut dumps = Dumps {
        clif: a.emit.contains(&Emit::Clif).then(Vec::new),
        asm: a.emit.contains(&Emit::Asm).then(Vec::new),
    };
    let art = artifact::compile_with(&g, &target, &name, &a.fast_math.options()?, &mut dumps)?;
    std::fs::create_dir_all(&a.out_dir).map_err(|e| Error::io(&a.out_dir, e))?;
    let write = |file: String, body: &[u8]| -> Result<()> {
        let p = a.out_dir.join(file);
        std::fs::write(&p, body).map_err(|e| Error::io(&p, e))
    };
    if a.emit.contains(&Emit::Obj) {
        write(format!("{name}.o"), &art.object)?;
    }
    if a.emit.contains(&Emit::Header) {
        write(format!("{name}.h"), art.header.as_bytes())?;
    }
    if a.emit.contains(&Emit::Rust) {
        write(format!("{name}.rs"), art.rust.as_bytes())?;
    }
    for (dir, ext, items) in [("clif", "clif", &dumps.clif), ("asm", "s", &dumps.asm)] {
        if let Some(items) = items {
            let d = a.out_dir.join(format!("{name}.{dir}"));
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
            for (kernel, text) in items {
                let p = d.join(format!("{kernel}.{ext}"));
                std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
            }
        }
    }
    if a.passes.stats {
        let plan = cpucc::passes::plan::plan(&g)?;
        print!("{}", cpucc::passes::report_table(&reports, &plan));
    }
    eprintln!(
        "cpucc: compiled {} for {} in {:.2}s ({} nodes, workspace {} bytes) -> {}",
        a.model.model.display(),
        target.name,
        start.elapsed().as_secs_f64(),
        g.node_count(),
        art.iface.workspace_bytes,
        a.out_dir.display()
    );
    Ok(())
}

/// The model file's stem as a C identifier.
fn default_name(p: &Path) -> String {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut s: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert_str(0, "model_");
    }
    s
}
