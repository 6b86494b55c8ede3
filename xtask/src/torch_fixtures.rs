//! `cargo xtask torchscript-fixtures`: writes the torch importer's test
//! fixtures (traced + frozen `.pt`, `torch.export` `.pt2`, inputs and
//! torch's outputs as `.npy`) to tests/fixtures/torch/ with torch from the
//! `.venv-torch` venv. Run by a developer; CI reads the committed files.
//!
//! `--big` instead writes full-size ResNet-50, MobileNetV2 and a BERT-base
//! encoder to target/torch-big/ (not committed), then compiles each with
//! `cpucc compile` (timed) and runs it with `cpucc run`, comparing with
//! torch's output at 1e-4 relative.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::venv;

#[derive(clap::Args)]
pub struct Args {
    /// Write and check the full-size models instead of the fixtures.
    #[arg(long)]
    big: bool,
    /// The cpucc binary for `--big` (default: build the release binary).
    #[arg(long)]
    cpucc: Option<PathBuf>,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let py = venv::torch_python()?;
    let root = venv::root();
    let script = root.join("xtask/py/torch_fixtures.py");
    if !a.big {
        let out = root.join("tests/fixtures/torch");
        venv::run(Command::new(&py).arg(&script).arg(&out))?;
        // The unsupported-op model is only imported, never run.
        for f in std::fs::read_dir(&out)? {
            let p = f?.path();
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("unsupported") && name.ends_with(".npy") {
                std::fs::remove_file(&p)?;
            }
        }
        return Ok(());
    }
    let out = root.join("target/torch-big");
    if !out.join("bert_base.pt2").exists() {
        venv::run(Command::new(&py).arg(&script).arg(&out).arg("--big"))?;
    }
    let cpucc = match a.cpucc {
        Some(p) => p,
        None => {
            venv::run(Command::new("cargo").args(["build", "--release", "-p", "cpucc"]))?;
            root.join("target/release/cpucc")
        }
    };
    let mut failed = Vec::new();
    for name in ["resnet50", "mobilenet_v2", "bert_base"] {
        for ext in ["pt", "pt2"] {
            let model = out.join(format!("{name}.{ext}"));
            match check(&cpucc, &out, name, &model) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    println!("{name}.{ext}: FAILED: {e:#}");
                    failed.push(format!("{name}.{ext}"));
                }
            }
        }
    }
    if !failed.is_empty() {
        bail!("mismatches: {}", failed.join(", "));
    }
    Ok(())
}

/// Compiles (timed) and runs one model; returns its report line.
fn check(cpucc: &Path, dir: &Path, name: &str, model: &Path) -> anyhow::Result<String> {
    let input = dir.join(format!("{name}.input0.npy"));
    let shape = cpucc::io::read_tensor(&input)?.shape().to_vec();
    let names = cpucc::import::input_names(model)?;
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_arg = format!("{}={}", names[0], dims.join(","));
    let tmp = dir.join(format!(
        "out-{}",
        model.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&tmp)?;
    let t = Instant::now();
    let st = Command::new(cpucc)
        .arg("compile")
        .arg(model)
        .args(["--shape", &shape_arg, "-o"])
        .arg(&tmp)
        .status()
        .context("running cpucc compile")?;
    let compile = t.elapsed().as_secs_f64();
    if !st.success() {
        bail!("cpucc compile failed");
    }
    let st = Command::new(cpucc)
        .arg("run")
        .arg(model)
        .arg("--input")
        .arg(&input)
        .arg("--output-dir")
        .arg(&tmp)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running cpucc run")?;
    if !st.success() {
        bail!("cpucc run failed");
    }
    let got = cpucc::io::read_tensor(&tmp.join("output_0.npy"))?;
    let want = cpucc::io::read_tensor(&dir.join(format!("{name}.output0.npy")))?;
    if got.shape() != want.shape() {
        bail!("shape {:?}, torch {:?}", got.shape(), want.shape());
    }
    let (x, y) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = y.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0f64, f64::max);
    let rel = diff / scale.max(1e-30);
    // NaN compares false: it fails too.
    if rel.is_nan() || rel > 1e-4 {
        bail!("max rel difference {rel:.2e} from torch");
    }
    Ok(format!(
        "{}: compile {compile:.1} s, max rel difference from torch {rel:.2e} ok",
        model.file_name().unwrap().to_string_lossy()
    ))
}
