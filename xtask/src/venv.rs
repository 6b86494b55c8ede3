//! The project-local Python venvs, created on first use: `.venv` (onnx,
//! onnxruntime, numpy from `xtask/py/requirements.txt`) and `.venv-torch`
//! (torch, torchvision from `xtask/py/requirements-torch.txt`, kept apart
//! because it is several GB and only fixture writers need it).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

/// The venv's python, installing the pinned requirements when they changed.
pub fn python() -> anyhow::Result<PathBuf> {
    venv_python(".venv", "requirements.txt")
}

/// The torch venv's python.
pub fn torch_python() -> anyhow::Result<PathBuf> {
    venv_python(".venv-torch", "requirements-torch.txt")
}

fn venv_python(dir: &str, requirements: &str) -> anyhow::Result<PathBuf> {
    let root = root();
    let venv = root.join(dir);
    let py = venv.join("bin/python");
    let req = root.join("xtask/py").join(requirements);
    let stamp = venv.join(".requirements");
    let want = std::fs::read_to_string(&req)?;
    if py.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(py);
    }
    if !py.exists() {
        eprintln!("creating Python venv in {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    eprintln!("installing {}", req.display());
    run(Command::new(&py)
        .args(["-m", "pip", "install", "-q", "-r"])
        .arg(&req))?;
    std::fs::write(&stamp, want)?;
    Ok(py)
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
