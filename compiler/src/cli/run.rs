//! `cpucc run`: binds inputs from files, runs the model (native code for the
//! host through the JIT; another target's object under qemu; or the
//! interpreter) and writes outputs as `.npy` with an `outputs.json` index.
//! `--check` compares native code with the interpreter and, on a mismatch,
//! names the first node whose compiled output diverges.

use std::collections::HashMap;
use std::path::PathBuf;

use cpucc::codegen::FastMath;
use cpucc::ir::{Tensor, ValueType};
use cpucc::random::SplitMix64;
use cpucc::{Error, Result, import, interp, io};

use super::{FastMathArgs, ModelArgs, PassArgs};
use crate::cli::engine;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// An input as NAME=FILE, or FILE to bind graph inputs in order. Files
    /// are .npy or ONNX TensorProto .pb.
    #[arg(long = "input", value_name = "[NAME=]FILE")]
    inputs: Vec<String>,
    /// Write output_<i>.npy and outputs.json here.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Use the reference interpreter instead of native code.
    #[arg(long, conflicts_with = "check")]
    interp: bool,
    /// Run native code and the interpreter, print the max abs/rel difference
    /// per output, and fail when beyond tolerance.
    #[arg(long)]
    check: bool,
    /// Target of the native code; a non-host target runs under qemu.
    #[arg(long, default_value = "native")]
    target: String,
    /// Seconds a run under qemu may take before it counts as a hang
    /// (emulation is 10-100x slower than the hardware).
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    timeout: u64,
    /// Run an SVE target's code under qemu with N-bit vectors instead of
    /// the target's own length (128..2048, a multiple of 128): the code is
    /// vector-length agnostic.
    #[arg(long, value_name = "N")]
    sve_bits: Option<u32>,
    #[command(flatten)]
    fast_math: FastMathArgs,
    #[command(flatten)]
    passes: PassArgs,
    /// Seed for generated inputs when none are given.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn main(a: Args) -> Result<()> {
    let names = import::input_names(&a.model.model)?;
    let given = bind_inputs(&a.inputs, &names)?;
    let mut opts = a.model.options()?;
    // Input files fix the shapes of symbolic dimensions not given by --shape.
    for (name, t) in &given {
        opts.shapes
            .entry(name.clone())
            .or_insert_with(|| t.shape().to_vec());
    }
    let g = import::load(&a.model.model, &opts)?;
    let inputs: Vec<Tensor> = if given.is_empty() {
        let mut rng = SplitMix64::new(a.seed);
        g.inputs
            .iter()
            .map(|&id| {
                let v = g.value(id);
                eprintln!(
                    "cpucc: no inputs given: '{}' ({}) filled from seed {}",
                    v.name, v.ty, a.seed
                );
                rng.tensor(v.ty.dtype, &v.ty.shape)
            })
            .collect()
    } else {
        g.inputs
            .iter()
            .map(|&id| {
                let name = &g.value(id).name;
                given.get(name).cloned().ok_or_else(|| {
                    Error::Invalid(format!(
                        "input '{name}' is not given (use --input {name}=FILE)"
                    ))
                })
            })
            .collect::<Result<_>>()?
    };
    let outputs = if a.interp {
        interp::run(&g, &inputs)?
    } else {
        let mut target = engine::target(&a.target)?;
        if let Some(bits) = a.sve_bits {
            cpucc::ensure!(
                target.sve_bits.is_some(),
                Invalid,
                "--sve-bits: target '{}' has no SVE",
                target.name
            );
            cpucc::ensure!(
                (128..=2048).contains(&bits) && bits % 128 == 0,
                Invalid,
                "--sve-bits {bits}: SVE vectors are 128 to 2048 bits, a multiple of 128"
            );
            target.sve_bits = Some(bits);
        }
        let mut opt = g.clone();
        a.passes.run(&mut opt)?;
        let limit = std::time::Duration::from_secs(a.timeout);
        let copts = a.fast_math.options()?;
        let native = engine::run_native(&opt, &target, &inputs, limit, &copts)?;
        if a.check {
            let reference = interp::run(&g, &inputs)?;
            if copts.fast_math == FastMath::Bf16 {
                if !engine::report_cosine(&g, &native, &reference) {
                    std::process::exit(1);
                }
            } else if !engine::report_diff(&g, &native, &reference) {
                engine::bisect(&g, &target, &inputs, limit)?;
                std::process::exit(1);
            }
        }
        native
    };
    let mut index = Vec::new();
    for (i, (&id, t)) in g.outputs.iter().zip(&outputs).enumerate() {
        let name = &g.value(id).name;
        let file = format!("output_{i}.npy");
        println!("{name}: {}{}", ValueType::of(t), preview(t));
        if let Some(dir) = &a.output_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            io::write_npy(&dir.join(&file), t)?;
        }
        index.push(serde_json::json!({
            "name": name,
            "dtype": t.dtype().name(),
            "shape": t.shape(),
            "file": file,
        }));
    }
    if let Some(dir) = &a.output_dir {
        let path = dir.join("outputs.json");
        let body =
            serde_json::to_string_pretty(&index).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&path, body + "\n").map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Resolves `NAME=FILE` and positional `FILE` arguments to input tensors.
fn bind_inputs(args: &[String], names: &[String]) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut next = 0;
    for arg in args {
        let (name, file) = match arg.split_once('=') {
            Some((n, f)) if names.iter().any(|x| x == n) => (n.to_string(), f),
            _ => {
                let n = names.get(next).ok_or_else(|| {
                    Error::Invalid(format!(
                        "--input {arg}: the model has only {} inputs",
                        names.len()
                    ))
                })?;
                next += 1;
                (n.clone(), arg.as_str())
            }
        };
        let t = io::read_tensor(&PathBuf::from(file))?;
        if out.insert(name.clone(), t).is_some() {
            return Err(Error::Invalid(format!("input '{name}' is given twice")));
        }
    }
    Ok(out)
}

fn preview(t: &Tensor) -> String {
    let v = t.to_f64_vec();
    let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:.6}")).collect();
    let more = if v.len() > 6 { ", ..." } else { "" };
    format!(" [{}{more}]", head.join(", "))
}
