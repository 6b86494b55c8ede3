//! `cpucc inspect`: the IR text and a summary.

use cpucc::{import, ir};

use super::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
}

pub fn main(a: Args) -> cpucc::Result<()> {
    let g = import::load(&a.model.model, &a.model.options()?)?;
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
