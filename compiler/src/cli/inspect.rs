//! `cpucc inspect`: the IR text and a summary, optionally after the passes
//! (`--after PASS`, `--passes a,b,c`), the per-pass report (`--stats`), or
//! the kernel the host compilation picked for each node (`--kernels`).

use std::time::Duration;

use cpucc::codegen::Dumps;
use cpucc::codegen::jit::JitModel;
use cpucc::passes::{self, PassReport};
use cpucc::{import, ir};

use super::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Print the IR after this pass of the pipeline (and the passes before
    /// it).
    #[arg(long, value_name = "PASS")]
    after: Option<String>,
    /// The pipeline, comma-separated (default: the compiler's pipeline).
    #[arg(long, value_name = "A,B,C")]
    passes: Option<String>,
    /// Print per-pass node counts, layout conversions, fused groups and
    /// times, and the memory plan's arena size, instead of the IR.
    #[arg(long)]
    stats: bool,
    /// Compile for the host and print, per node, the kernels chosen for it
    /// from its shapes (tile, blocking, thread split).
    #[arg(long)]
    kernels: bool,
}

pub fn main(a: Args) -> cpucc::Result<()> {
    let mut g = import::load(&a.model.model, &a.model.options()?)?;
    let mut pipeline = match &a.passes {
        Some(list) => passes::parse_list(list)?,
        None => passes::DEFAULT_PIPELINE.to_vec(),
    };
    if let Some(after) = &a.after {
        let pass = passes::lookup(after)?;
        let Some(i) = pipeline.iter().position(|p| *p == pass.name) else {
            return Err(cpucc::Error::Invalid(format!(
                "pass '{after}' is not in the pipeline ({})",
                pipeline.join(", ")
            )));
        };
        pipeline.truncate(i + 1);
    }
    let run_passes = a.after.is_some() || a.passes.is_some() || a.stats || a.kernels;
    let mut reports = vec![PassReport::measure("(import)", &g, Duration::ZERO)];
    if run_passes {
        reports.extend(passes::run_pipeline(&mut g, &pipeline)?);
    }
    if a.kernels {
        let target = super::engine::target("native")?;
        let m = JitModel::compile(&g, &target, &mut Dumps::default())?;
        for s in &m.iface.sources {
            let kernel = if s.kernel.is_empty() {
                "clif"
            } else {
                &s.kernel
            };
            println!("{:<40} {:<22} {kernel}", s.node, s.op);
        }
        return Ok(());
    }
    if a.stats {
        let plan = passes::plan::plan(&g)?;
        print!("{}", passes::report_table(&reports, &plan));
        return Ok(());
    }
    print!("{}", ir::print(&g)?);
    let s = ir::stats(&g);
    println!();
    println!("nodes: {}", g.node_count());
    for (op, n) in &s.ops {
        println!("  {op:<24} {n}");
    }
    println!("parameters: {}", s.params);
    println!("MACs: {} ({:.3} G)", s.macs, s.macs as f64 / 1e9);
    Ok(())
}
