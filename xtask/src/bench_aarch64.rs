//! `cargo xtask bench --target graviton3`: work, not time, for aarch64
//! targets (time under emulation means nothing). Each workload is compiled
//! with `cpucc compile` for the given target (SVE kernels; and with
//! `--fast-math bf16`, the BFMMLA kernel, when it has SVE and BF16), for
//! `graviton2` (NEON kernels) and for `<target>-neon` (the portable CLIF
//! GEMM: without `neon` no hand-written kernel applies), linked with the C harness
//! and run once under `qemu-aarch64` with an exact instruction counter: a
//! TCG plugin (`qemu/insn_count.c`, built here with gcc) that adds each
//! executed translation block's instruction count to the function it lies
//! in (function bounds from `nm -S`). Reported: executed instructions per
//! multiply-accumulate in the GEMM kernels (the kernels of Gemm, MatMul and
//! Conv nodes, machine-code tiles included) and in the whole model.
//! Writes `target/bench/aarch64.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use cpucc::import::{self, ImportOptions};
use cpucc::random::SplitMix64;
use cpucc_tests::models;
use serde_json::json;

use crate::{models as write_models, venv};

const PLUGIN_C: &str = include_str!("qemu/insn_count.c");

struct Workload {
    label: &'static str,
    model: &'static str,
    shapes: &'static [(&'static str, &'static [usize])],
}

const WORKLOADS: &[Workload] = &[
    Workload {
        label: "mlp_b32",
        model: "mlp",
        shapes: &[("input", &[32, 64, 64])],
    },
    Workload {
        label: "conv_relu",
        model: "conv_relu",
        shapes: &[],
    },
];

/// GEMM-family ops: their nodes' kernels count as GEMM kernels.
const GEMM_OPS: &[&str] = &["Gemm", "MatMul", "Conv"];
/// The same ops as kernel symbols name them (after fusion).
const GEMM_TAGS: &[&str] = &[
    "Gemm",
    "MatMul",
    "Conv",
    "cpucc_FusedGemm",
    "cpucc_FusedMatMul",
    "cpucc_FusedConv",
];

pub fn main(
    target: &str,
    cpucc: Option<&Path>,
    only: Option<&str>,
    out: &Path,
) -> anyhow::Result<()> {
    let t = cpucc::codegen::Target::parse(target).map_err(|e| anyhow::anyhow!("{e}"))?;
    if t.arch().name() != "aarch64" {
        bail!("--target {target}: instruction counting is for aarch64 targets");
    }
    let root = venv::root();
    let cpucc = match cpucc {
        Some(p) => p.to_path_buf(),
        None => {
            // Emulated work does not depend on how fast cpucc itself is.
            venv::run(Command::new("cargo").args(["build", "-p", "cpucc"]))?;
            root.join("target/debug/cpucc")
        }
    };
    let work = root.join(out).join("aarch64");
    std::fs::create_dir_all(&work)?;
    let plugin = build_plugin(&work)?;
    // (target, kernels, --fast-math bf16); `-neon` switches the
    // machine-code GEMMs off (the portable CLIF kernel remains).
    let mut variants = vec![(target.to_string(), "sve", false)];
    if t.has("bf16") && t.has("sve") {
        variants.push((target.to_string(), "bfmmla", true));
    }
    variants.push(("graviton2".to_string(), "neon", false));
    variants.push((format!("{target}-neon"), "clif", false));
    let mut table = String::new();
    writeln!(
        table,
        "{:<10} {:<22} {:>14} {:>16} {:>12} {:>16} {:>12}",
        "workload", "kernels", "GEMM MACs", "GEMM insns", "insns/MAC", "model insns", "model/MAC"
    )?;
    let mut rows = Vec::new();
    for w in WORKLOADS {
        if only.is_some_and(|o| !w.label.contains(o)) {
            continue;
        }
        let m = models::by_name(w.model).context("unknown model")?;
        let path = write_models::ensure(m)?;
        let mut opts = ImportOptions::default();
        for (name, dims) in w.shapes {
            opts.shapes.insert(name.to_string(), dims.to_vec());
        }
        let g = import::load(&path, &opts)?;
        let mut gemm_macs = 0u64;
        let mut all_macs = 0u64;
        for n in g.node_indices() {
            let node = g.node(n);
            let macs = cpucc::ir::node_macs(&g, node);
            all_macs += macs;
            if GEMM_OPS.contains(&node.op.as_str()) {
                gemm_macs += macs;
            }
        }
        let dir = work.join(w.label);
        std::fs::create_dir_all(&dir)?;
        let mut rng = SplitMix64::new(1);
        let mut inputs = Vec::new();
        for (i, &id) in g.inputs.iter().enumerate() {
            let v = g.value(id);
            let p = dir.join(format!("input_{i}.npy"));
            cpucc::io::write_npy(&p, &rng.tensor(v.ty.dtype, &v.ty.shape))?;
            inputs.push((v.name.clone(), p));
        }
        for (spec, kind, bf16) in &variants {
            let vdir = dir.join(kind);
            std::fs::create_dir_all(&vdir)?;
            let counts = count(&cpucc, &path, w, (spec, *bf16), &vdir, &inputs, &plugin)?;
            let gemm: u64 = counts
                .iter()
                .filter(|(name, _)| GEMM_TAGS.iter().any(|t| is_op_kernel(name, t)))
                .map(|(_, c)| c)
                .sum();
            let model: u64 = counts.iter().map(|(_, c)| c).sum();
            let per = gemm as f64 / gemm_macs.max(1) as f64;
            let per_all = model as f64 / all_macs.max(1) as f64;
            writeln!(
                table,
                "{:<10} {:<22} {:>14} {:>16} {:>12.4} {:>16} {:>12.4}",
                w.label,
                format!("{kind} ({spec})"),
                gemm_macs,
                gemm,
                per,
                model,
                per_all
            )?;
            rows.push(json!({
                "workload": w.label, "kernels": kind, "target": spec,
                "gemm_macs": gemm_macs, "gemm_insns": gemm, "gemm_insns_per_mac": per,
                "model_macs": all_macs, "model_insns": model, "model_insns_per_mac": per_all,
            }));
        }
    }
    println!("executed instructions under qemu-aarch64 (exact, TCG plugin)\n{table}");
    let json_path = root.join(out).join("aarch64.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&rows)?)?;
    println!("wrote {}", json_path.display());
    Ok(())
}

/// Whether symbol `sym` (`model_k12_TAG`, `model_mc3_TAG`) is a kernel of
/// a node whose op is tagged `t` (`lower::begin_node`).
fn is_op_kernel(sym: &str, t: &str) -> bool {
    let Some(rest) = sym.strip_prefix("model_") else {
        return false;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    rest.strip_prefix('_') == Some(t)
}

fn build_plugin(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = dir.join("insn_count.c");
    let so = dir.join("libinsn_count.so");
    std::fs::write(&src, PLUGIN_C)?;
    let st = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .context("gcc (needed to build the qemu plugin)")?;
    if !st.success() {
        bail!("building the qemu instruction-count plugin failed");
    }
    Ok(so)
}

/// Compiles, links and runs one workload for `spec` under the counting
/// plugin; returns (function symbol, executed instructions) for every
/// model function.
fn count(
    cpucc: &Path,
    model: &Path,
    w: &Workload,
    (spec, bf16): (&str, bool),
    dir: &Path,
    inputs: &[(String, PathBuf)],
    plugin: &Path,
) -> anyhow::Result<Vec<(String, u64)>> {
    let mut c = Command::new(cpucc);
    c.arg("compile")
        .arg(model)
        .args(["--target", spec, "--name", "model", "-o"])
        .arg(dir);
    if bf16 {
        c.args(["--fast-math", "bf16"]);
    }
    for (name, dims) in w.shapes {
        let d: Vec<String> = dims.iter().map(|x| x.to_string()).collect();
        c.arg("--shape").arg(format!("{name}={}", d.join(",")));
    }
    venv::run(&mut c)?;
    let harness = dir.join("harness.c");
    std::fs::write(&harness, cpucc::cross::HARNESS_C)?;
    let exe = dir.join("model_run");
    venv::run(
        Command::new("aarch64-linux-gnu-gcc")
            .args([
                "-O2",
                "-std=c11",
                "-static",
                "-DCPUCC_NAME=model",
                "-include",
            ])
            .arg(dir.join("model.h"))
            .arg(&harness)
            .arg(dir.join("model.o"))
            .arg("-o")
            .arg(&exe)
            .arg("-lm"),
    )?;
    // Function bounds of the model's code.
    let nm = Command::new("aarch64-linux-gnu-nm")
        .args(["-S", "--defined-only"])
        .arg(&exe)
        .output()
        .context("aarch64-linux-gnu-nm")?;
    let mut funcs = Vec::new();
    for line in String::from_utf8_lossy(&nm.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [addr, size, kind, name] = f[..]
            && kind.eq_ignore_ascii_case("t")
            && name.starts_with("model_")
        {
            let lo = u64::from_str_radix(addr, 16)?;
            let len = u64::from_str_radix(size, 16)?;
            funcs.push((name.to_string(), lo, lo + len));
        }
    }
    if funcs.is_empty() {
        bail!("no model functions with sizes in {}", exe.display());
    }
    let ranges = dir.join("ranges.txt");
    let text: String = funcs
        .iter()
        .map(|(_, lo, hi)| format!("{lo:x} {hi:x}\n"))
        .collect();
    std::fs::write(&ranges, text)?;
    let counts_path = dir.join("counts.txt");
    let sve_off = !cpucc::codegen::Target::parse(spec)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .has("sve");
    let cpu = if sve_off {
        "max,sve=off".to_string()
    } else {
        let t = cpucc::codegen::Target::parse(spec).map_err(|e| anyhow::anyhow!("{e}"))?;
        format!("max,sve{}=on", t.sve_bits.unwrap_or(128))
    };
    let mut q = Command::new("qemu-aarch64");
    q.args(["-cpu", &cpu, "-plugin"])
        .arg(format!(
            "{},ranges={},out={}",
            plugin.display(),
            ranges.display(),
            counts_path.display()
        ))
        .arg(&exe)
        .arg("-o")
        .arg(dir);
    for (name, p) in inputs {
        q.arg("-i").arg(name).arg(p);
    }
    venv::run(q.current_dir(dir))?;
    let text = std::fs::read_to_string(&counts_path)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let ["range", i, n] = f[..] {
            let i: usize = i.parse()?;
            out.push((funcs[i].0.clone(), n.parse()?));
        }
    }
    Ok(out)
}
