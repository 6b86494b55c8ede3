//! `cargo xtask models`: writes the test models to target/models/, and the
//! small example the README runs to examples/models/.

use std::path::PathBuf;

use cpucc_tests::models::{self, TestModel};
use prost::Message;

use crate::venv;

#[derive(clap::Args)]
pub struct Args {
    /// Only this model.
    #[arg(long)]
    only: Option<String>,
}

pub fn dir() -> PathBuf {
    venv::root().join("target/models")
}

pub fn path(m: &TestModel) -> PathBuf {
    dir().join(format!("{}.onnx", m.name))
}

/// Writes a model unless it is already there.
pub fn ensure(m: &TestModel) -> anyhow::Result<PathBuf> {
    let p = path(m);
    if !p.exists() {
        write(m)?;
    }
    Ok(p)
}

fn write(m: &TestModel) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir())?;
    let bytes = (m.build)().encode_to_vec();
    std::fs::write(path(m), &bytes)?;
    println!(
        "wrote {} ({:.1} MB)",
        path(m).display(),
        bytes.len() as f64 / 1e6
    );
    Ok(())
}

pub fn main(a: Args) -> anyhow::Result<()> {
    for m in models::ALL
        .iter()
        .filter(|m| a.only.as_deref().is_none_or(|o| o == m.name))
    {
        write(m)?;
    }
    let example = venv::root().join(models::EXAMPLE_PATH);
    std::fs::write(&example, (models::example().build)().encode_to_vec())?;
    println!("wrote {}", example.display());
    Ok(())
}
