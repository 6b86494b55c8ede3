//! Subcommands and their flags.

mod bench;
mod compile;
mod engine;
mod inspect;
mod profile;
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
    /// Compile a model to an object file, C header and Rust bindings.
    Compile(compile::Args),
    /// Run a model (compiled for the host, or the interpreter) on inputs
    /// from files or fixed-seed random inputs.
    Run(run::Args),
    /// Time a compiled model: latency percentiles and throughput, on pinned
    /// cores, optionally as several instances on disjoint cores.
    Bench(bench::Args),
    /// Time every kernel of a compiled model: a per-node table and an
    /// optional Chrome/Perfetto trace.
    Profile(profile::Args),
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

/// Which graph passes run before code generation.
#[derive(clap::Args)]
struct PassArgs {
    /// Comma-separated pass list replacing the default pipeline (`none`
    /// for no passes).
    #[arg(long)]
    passes: Option<String>,
    /// Print node counts, layout conversions, fused groups and arena bytes
    /// per pass.
    #[arg(long)]
    stats: bool,
}

impl PassArgs {
    fn run(&self, g: &mut cpucc::ir::Graph) -> Result<Vec<cpucc::passes::PassReport>> {
        let list = match self.passes.as_deref() {
            Some("none") => Vec::new(),
            Some(l) => cpucc::passes::parse_list(l)?,
            None => cpucc::passes::DEFAULT_PIPELINE.to_vec(),
        };
        cpucc::passes::run_pipeline(g, &list)
    }
}

/// `--fast-math`: numerics traded for speed.
#[derive(clap::Args)]
struct FastMathArgs {
    /// `bf16`: GEMMs with constant weights (MatMul, Gemm, convolutions)
    /// multiply in bf16 with f32 accumulation (AMX or AVX512-BF16 x86
    /// targets, SVE BFMMLA on aarch64 with SVE and BF16; other aarch64
    /// targets keep f32); `--check` then reports cosine similarity.
    #[arg(long = "fast-math", value_name = "MODE", value_parser = ["bf16", "none"])]
    fast_math: Option<String>,
}

impl FastMathArgs {
    fn options(&self) -> Result<cpucc::codegen::Options> {
        let fast_math = match &self.fast_math {
            Some(m) => m.parse()?,
            None => cpucc::codegen::FastMath::None,
        };
        Ok(cpucc::codegen::Options { fast_math })
    }
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
        Command::Compile(a) => compile::main(a),
        Command::Run(a) => run::main(a),
        Command::Bench(a) => bench::main(a),
        Command::Profile(a) => profile::main(a),
        Command::Targets(a) => targets::main(a),
    }
}
