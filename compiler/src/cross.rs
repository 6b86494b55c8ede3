//! Runs a compiled model object out of process: links it with the generic C
//! harness (`runtime/harness/harness.c`, embedded so an installed `cpucc`
//! has it) and runs the program on `.npy` inputs — directly for targets this
//! machine can run, under `qemu-aarch64` for aarch64 targets on other hosts,
//! with the target's SVE vector length (or SVE off).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cpucc_targets::{Arch, Target};

use crate::error::{Error, Result};
use crate::io::{read_tensor, write_npy};
use crate::ir::{DType, Tensor};

/// The harness source, compiled per model with `-DCPUCC_NAME=N -include N.h`.
pub const HARNESS_C: &str = include_str!("../../runtime/harness/harness.c");

/// How long one run may take before it counts as a hang.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

const INSTALL_HINT: &str =
    "install them with: apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross";

/// How to build and start the harness for one target.
struct Toolchain {
    cc: &'static str,
    cc_flags: &'static [&'static str],
    /// A program (and its flags) that runs the binary, if it is not native.
    runner: Option<Vec<String>>,
}

/// Picks the compiler and runner for `target`, or says what is missing.
fn toolchain(target: &Target) -> Result<Toolchain> {
    let tc = if target.runs_on_host().is_ok() {
        Toolchain {
            cc: "gcc",
            cc_flags: &[],
            runner: None,
        }
    } else if target.arch() == Arch::Aarch64 {
        let cpu = match target.sve_bits {
            Some(bits) => format!("max,sve{bits}=on"),
            None => "max,sve=off".to_string(),
        };
        let cc = if target.is_host() {
            "gcc"
        } else {
            "aarch64-linux-gnu-gcc"
        };
        Toolchain {
            cc,
            // Static: qemu then needs no aarch64 sysroot at run time.
            cc_flags: &["-static"],
            runner: Some(vec!["qemu-aarch64".into(), "-cpu".into(), cpu]),
        }
    } else {
        let why = target.runs_on_host().err().unwrap_or_default();
        bail!(
            Unsupported,
            "cannot run code for target '{}' on this machine: {why}",
            target.name
        );
    };
    let mut missing: Vec<&str> = vec![tc.cc];
    if let Some(r) = &tc.runner {
        missing.push(&r[0]);
    }
    missing.retain(|tool| find_in_path(tool).is_none());
    let sysroot = Path::new("/usr/aarch64-linux-gnu/lib/libc.a");
    if tc.cc == "aarch64-linux-gnu-gcc" && !sysroot.exists() {
        missing.push("the aarch64 C library (libc6-dev-arm64-cross)");
    }
    if !missing.is_empty() {
        let hint = if tc.runner.is_some() {
            INSTALL_HINT
        } else {
            "install it with: apt-get install gcc"
        };
        bail!(
            Unsupported,
            "running code for target '{}' needs {}, not found; {hint}",
            target.name,
            missing.join(", ")
        );
    }
    Ok(tc)
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn is_c_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Runs model `name` (object `obj`, header `header`) built for `target` on
/// `inputs` (bound by input name), in `workdir`; returns the outputs in
/// header order. Hangs longer than [`DEFAULT_TIMEOUT`] are errors.
pub fn run_foreign(
    obj: &Path,
    header: &Path,
    name: &str,
    target: &Target,
    inputs: &[(String, Tensor)],
    workdir: &Path,
) -> Result<Vec<Tensor>> {
    run_foreign_timeout(obj, header, name, target, inputs, workdir, DEFAULT_TIMEOUT)
}

/// [`run_foreign`] with an explicit time limit.
pub fn run_foreign_timeout(
    obj: &Path,
    header: &Path,
    name: &str,
    target: &Target,
    inputs: &[(String, Tensor)],
    workdir: &Path,
    timeout: Duration,
) -> Result<Vec<Tensor>> {
    ensure!(
        is_c_identifier(name),
        Invalid,
        "model name '{name}' is not a C identifier"
    );
    let tc = toolchain(target)?;
    // Absolute, as the harness runs inside it.
    std::fs::create_dir_all(workdir).map_err(|e| Error::io(workdir, e))?;
    let workdir = &workdir.canonicalize().map_err(|e| Error::io(workdir, e))?;
    let outdir = workdir.join("outputs");
    std::fs::create_dir_all(&outdir).map_err(|e| Error::io(&outdir, e))?;

    let src = workdir.join("cpucc_harness.c");
    std::fs::write(&src, HARNESS_C).map_err(|e| Error::io(&src, e))?;
    let exe = workdir.join(format!("{name}_harness"));
    let mut cc = Command::new(tc.cc);
    cc.args(["-O2", "-std=c11"])
        .args(tc.cc_flags)
        .arg(format!("-DCPUCC_NAME={name}"))
        .arg("-include")
        .arg(header)
        .arg(&src)
        .arg(obj)
        .arg("-o")
        .arg(&exe)
        .arg("-lm");
    let out = cc
        .output()
        .map_err(|e| Error::io(PathBuf::from(tc.cc), e))?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr);
        let first = log
            .lines()
            .find(|l| l.contains("error"))
            .or(log.lines().next())
            .unwrap_or("");
        bail!(
            Internal,
            "linking model '{name}' with the harness ({}) failed: {first}",
            tc.cc
        );
    }

    let mut cmd = match &tc.runner {
        Some(r) => {
            let mut c = Command::new(&r[0]);
            c.args(&r[1..]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.arg("-o").arg(&outdir);
    for (i, (input, t)) in inputs.iter().enumerate() {
        let p = workdir.join(format!("input_{i}.npy"));
        write_npy(&p, t)?;
        cmd.arg("-i").arg(input).arg(p);
    }
    let stdout_path = workdir.join("harness.stdout");
    let stderr_path = workdir.join("harness.stderr");
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| Error::io(p, e));
    cmd.current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(file(&stdout_path)?)
        .stderr(file(&stderr_path)?);
    let status = wait_with_timeout(&mut cmd, name, target, timeout)?;
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io(p, e));
    let stderr = read(&stderr_path)?;
    check_status(status, &stderr, name, target)?;

    // "output <i> dtype=<code> <name>", one line per output, in order.
    let mut outputs = Vec::new();
    for line in read(&stdout_path)?.lines() {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        if f.len() < 3 || f[0] != "output" {
            continue;
        }
        let code: Option<i32> = f[2].strip_prefix("dtype=").and_then(|c| c.parse().ok());
        let (Some(dtype), Ok(true)) = (
            code.and_then(DType::from_onnx),
            f[1].parse::<usize>().map(|i| i == outputs.len()),
        ) else {
            bail!(Internal, "harness for '{name}' printed a bad line: {line}");
        };
        let t = read_tensor(&outdir.join(format!("output_{}.npy", f[1])))?;
        // bf16 travels as f32 .npy.
        outputs.push(if dtype == DType::BF16 {
            t.cast(DType::BF16)
        } else {
            t
        });
    }
    Ok(outputs)
}

fn wait_with_timeout(
    cmd: &mut Command,
    name: &str,
    target: &Target,
    timeout: Duration,
) -> Result<ExitStatus> {
    let program = PathBuf::from(cmd.get_program());
    let mut child = cmd.spawn().map_err(|e| Error::io(&program, e))?;
    let start = Instant::now();
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| Error::io(&program, e))? {
            return Ok(status);
        }
        if start.elapsed() > timeout {
            // Ignore errors: the child may exit between the check and the kill.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                Internal,
                "model '{name}' on target '{}' did not finish within {} s (hang?)",
                target.name,
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

fn check_status(status: ExitStatus, stderr: &str, name: &str, target: &Target) -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    let said = stderr
        .lines()
        .find(|l| l.starts_with("cpucc harness:"))
        .map(str::to_string);
    if let Some(line) = said {
        // The harness reports bad inputs and non-zero N_run codes itself.
        bail!(Invalid, "target '{}': {line}", target.name);
    }
    let how = match status.signal() {
        Some(4) => "illegal instruction: the code uses an instruction the target lacks".into(),
        Some(7) => "bus error".into(),
        Some(8) => "arithmetic exception".into(),
        Some(11) => "segmentation fault".into(),
        Some(s) => format!("signal {s}"),
        None => format!("exit code {}", status.code().unwrap_or(-1)),
    };
    bail!(
        Internal,
        "model '{name}' crashed on target '{}' ({how})",
        target.name
    );
}
