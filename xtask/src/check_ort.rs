//! `cargo xtask check-ort`: runs every test model through onnxruntime and
//! through `cpucc run` on the same fixed-seed inputs, and reports the max
//! absolute and relative difference per output (relative to the output's
//! max magnitude). Fails above 1e-4.

use std::process::Command;

use anyhow::{Context, bail};
use cpucc::import::{self, ImportOptions};
use cpucc::io;
use cpucc::random::SplitMix64;
use cpucc_tests::models;

use crate::{models as write_models, venv};

const TOLERANCE: f64 = 1e-4;

#[derive(clap::Args, Default)]
pub struct Args {
    /// Only this model.
    #[arg(long)]
    only: Option<String>,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let root = venv::root();
    let py = venv::python()?;
    venv::run(Command::new("cargo").args(["build", "--quiet", "-p", "cpucc"]))?;
    let cpucc = root.join("target/debug/cpucc");
    let mut worst = 0.0f64;
    println!(
        "{:<14} {:<24} {:>12} {:>12}",
        "model", "output", "max abs", "max rel"
    );
    for m in models::ALL
        .iter()
        .filter(|m| a.only.as_deref().is_none_or(|o| o == m.name))
    {
        let model = write_models::ensure(m)?;
        let dir = root.join("target/check-ort").join(m.name);
        std::fs::create_dir_all(&dir)?;
        let opts = ImportOptions {
            shapes: m
                .shapes
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_vec()))
                .collect(),
            ..ImportOptions::default()
        };
        let g = import::load(&model, &opts).with_context(|| format!("importing {}", m.name))?;
        let mut rng = SplitMix64::new(0);
        let mut input_files = Vec::new();
        for &id in &g.inputs {
            let v = g.value(id);
            let f = dir.join(format!("input_{}.npy", input_files.len()));
            io::write_npy(&f, &rng.tensor(v.ty.dtype, &v.ty.shape))?;
            input_files.push((v.name.clone(), f));
        }
        let mut run = Command::new(&cpucc);
        run.arg("run").arg(&model).arg("--output-dir").arg(&dir);
        for (n, s) in m.shapes {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            run.arg("--shape").arg(format!("{n}={}", dims.join(",")));
        }
        for (n, f) in &input_files {
            run.arg("--input").arg(format!("{n}={}", f.display()));
        }
        venv::run(run.stdout(std::process::Stdio::null()))?;
        venv::run(
            Command::new(&py)
                .arg(root.join("xtask/py/ort_run.py"))
                .arg(&model)
                .arg(&dir)
                .args(input_files.iter().map(|(_, f)| f)),
        )?;
        for (i, &id) in g.outputs.iter().enumerate() {
            let ours = io::read_tensor(&dir.join(format!("output_{i}.npy")))?.to_f64_vec();
            let theirs = io::read_tensor(&dir.join(format!("ort_output_{i}.npy")))?.to_f64_vec();
            if ours.len() != theirs.len() {
                bail!(
                    "{} output {i}: {} values vs onnxruntime's {}",
                    m.name,
                    ours.len(),
                    theirs.len()
                );
            }
            let scale = theirs
                .iter()
                .fold(0.0f64, |a, x| a.max(x.abs()))
                .max(f64::MIN_POSITIVE);
            let abs = ours
                .iter()
                .zip(&theirs)
                .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
            let rel = abs / scale;
            worst = worst.max(if rel.is_nan() { f64::INFINITY } else { rel });
            println!(
                "{:<14} {:<24} {abs:>12.3e} {rel:>12.3e}",
                m.name,
                g.value(id).name
            );
        }
    }
    if worst > TOLERANCE {
        bail!("max relative difference {worst:.3e} exceeds {TOLERANCE:e}");
    }
    println!("all outputs within {TOLERANCE:e} of onnxruntime (relative to max magnitude)");
    Ok(())
}
