//! Subcommands and their flags.

mod inspect;
mod run;
mod targets;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use cpucc::Result;
use cpucc::import::{ImportOptions, parse_shape_arg};

#[derive(Parser)]
#[command(
    name = "cpucc",
    version,
    about = "Ahead-of-time graph compiler for CPUs"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the IR, op counts, parameter count and MACs of a model.
    Inspect(inspect::Args),
    /// Run a model on inputs from files (or fixed-seed random inputs).
    Run(run::Args),
    /// List the target presets (features, SVE length, caches) and the host.
    Targets(targets::Args),
}

/// Flags shared by every command that reads a model.
#[derive(clap::Args)]
struct ModelArgs {
    /// The model file (ONNX).
    model: PathBuf,
    /// Fix an input's shape, e.g. `--shape input=1,3,224,224` (needed for
    /// symbolic dimensions).
    #[arg(long = "shape", value_name = "NAME=DIMS")]
    shapes: Vec<String>,
}

impl ModelArgs {
    fn options(&self) -> Result<ImportOptions> {
        let mut o = ImportOptions::default();
        for s in &self.shapes {
            let (name, dims) = parse_shape_arg(s)?;
            o.shapes.insert(name, dims);
        }
        Ok(o)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::Inspect(a) => inspect::main(a),
        Command::Run(a) => run::main(a),
        Command::Targets(a) => targets::main(a),
    }
}
