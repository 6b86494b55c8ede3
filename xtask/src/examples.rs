//! `cargo xtask examples`: builds and runs the two embedding examples (the C
//! app linked against the runtime library, and the Rust app whose build.rs
//! compiles the model through the cpucc library) and checks they print the
//! same result for the same input.

use std::process::Command;

use anyhow::{Context, bail};

use crate::venv;

fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running the {what}"))?;
    if !out.status.success() {
        bail!(
            "the {what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = String::from_utf8(out.stdout)?;
    Ok(s.lines().last().unwrap_or_default().to_string())
}

pub fn main() -> anyhow::Result<()> {
    let root = venv::root();
    let c = output(
        Command::new("sh").arg(root.join("examples/c-app/run.sh")),
        "C example app",
    )?;
    let rust = output(
        Command::new("cargo")
            .args(["run", "--quiet", "--manifest-path"])
            .arg(root.join("examples/rust-app/Cargo.toml"))
            .env("CARGO_TARGET_DIR", root.join("target/rust-app")),
        "Rust example app",
    )?;
    println!("c-app:    {c}\nrust-app: {rust}");
    if c != rust || c.is_empty() {
        bail!("the example apps disagree");
    }
    Ok(())
}
