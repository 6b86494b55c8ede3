//! `cargo xtask ci`: everything CI checks, in the order that fails fastest.

use std::process::Command;

use crate::{check_ort, conformance, examples, venv};

#[derive(clap::Args)]
pub struct Args {
    /// Skip the onnxruntime comparison of the large test models.
    #[arg(long)]
    skip_ort: bool,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let cargo =
        |args: &[&str]| venv::run(Command::new("cargo").args(args).current_dir(venv::root()));
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace", "--quiet"])?;
    conformance::main(conformance::Args::check(conformance::EngineArg::Interp))?;
    conformance::main(conformance::Args::check(conformance::EngineArg::Jit))?;
    examples::main()?;
    if !a.skip_ort {
        check_ort::main(check_ort::Args::default())?;
    }
    println!("ci: all checks passed");
    Ok(())
}
