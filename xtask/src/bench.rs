//! `cargo xtask bench`: times cpucc (release `cpucc bench`, JIT with the
//! runtime pool) against onnxruntime (CPU provider, all graph optimizations)
//! and, when it installs, OpenVINO (CPU, f32 precision hint) at 1 and 2
//! threads on the workloads, next to the machine's measured fp32 FMA
//! peak; plus the bf16 columns: `cpucc bench --fast-math bf16` beside
//! OpenVINO's bf16 inference-precision hint (`-` where the host has no
//! bf16 instructions). cpucc and onnxruntime alternate in [`ROUNDS`]
//! rounds. Prints a table, writes `target/bench/bench.json` and `bench.svg`.
//! Never fails on speed: it is a measurement, not a test.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use cpucc::import::{self, ImportOptions};
use cpucc_tests::models;
use serde_json::{Value, json};

use crate::{models as write_models, peak, venv};

#[derive(clap::Args)]
pub struct Args {
    /// Only workloads whose label contains this.
    #[arg(long)]
    only: Option<String>,
    /// Thread counts to time.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    threads: Vec<usize>,
    /// Use this cpucc binary instead of building the release one.
    #[arg(long)]
    cpucc: Option<PathBuf>,
    /// Seconds of timed iterations aimed at per measurement (at least 3
    /// iterations, at most 50).
    #[arg(long, default_value_t = 3.0)]
    budget: f64,
    /// Skip OpenVINO even when it is installed.
    #[arg(long)]
    no_openvino: bool,
    /// Skip the bf16 columns (cpucc --fast-math bf16, OpenVINO bf16 hint).
    #[arg(long)]
    no_bf16: bool,
    /// Where the JSON and SVG go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// An aarch64 target (`graviton3`, ...): count executed instructions
    /// per MAC under qemu instead of timing (see `bench_aarch64.rs`).
    #[arg(long)]
    target: Option<String>,
}

struct Workload {
    label: &'static str,
    model: &'static str,
    shapes: &'static [(&'static str, &'static [usize])],
}

const TOKENS: &[usize] = &[1, 128];
const WORKLOADS: &[Workload] = &[
    Workload {
        label: "conv_relu",
        model: "conv_relu",
        shapes: &[],
    },
    Workload {
        label: "mlp_b1",
        model: "mlp",
        shapes: &[("input", &[1, 64, 64])],
    },
    Workload {
        label: "mlp_b32",
        model: "mlp",
        shapes: &[("input", &[32, 64, 64])],
    },
    Workload {
        label: "mlp_b256",
        model: "mlp",
        shapes: &[("input", &[256, 64, 64])],
    },
    Workload {
        label: "resnet50_b1",
        model: "resnet50",
        shapes: &[("input", &[1, 3, 224, 224])],
    },
    Workload {
        label: "resnet50_b32",
        model: "resnet50",
        shapes: &[("input", &[32, 3, 224, 224])],
    },
    Workload {
        label: "mobilenet_v2_b1",
        model: "mobilenet_v2",
        shapes: &[("input", &[1, 3, 224, 224])],
    },
    Workload {
        label: "bert_base_s128",
        model: "bert_base",
        shapes: &[
            ("input_ids", TOKENS),
            ("attention_mask", TOKENS),
            ("token_type_ids", TOKENS),
        ],
    },
];

/// Throughput guess (GFLOP/s) used only to pick iteration counts.
const GUESS_GFLOPS: f64 = 40.0;

/// cpucc and onnxruntime alternate this many times per row, each round a
/// share of the iterations: the host is shared, and a burst of a
/// neighbour's load then falls on both engines' rounds instead of on
/// whichever ran through it.
const ROUNDS: usize = 3;

/// One engine's rounds: the median of the round medians, and the fastest
/// iteration of all (the least disturbed figure).
#[derive(Default)]
struct Rounds {
    medians: Vec<f64>,
    min: f64,
}

impl Rounds {
    fn push(&mut self, (median, min): (f64, f64)) {
        self.min = if self.medians.is_empty() {
            min
        } else {
            self.min.min(min)
        };
        self.medians.push(median);
    }

    fn median(&self) -> f64 {
        let mut v = self.medians.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

pub fn main(a: Args) -> anyhow::Result<()> {
    if let Some(t) = &a.target {
        return crate::bench_aarch64::main(t, a.cpucc.as_deref(), a.only.as_deref(), &a.out);
    }
    let root = venv::root();
    let cpucc = match &a.cpucc {
        Some(p) => p.clone(),
        None => {
            venv::run(Command::new("cargo").args(["build", "--release", "-p", "cpucc"]))?;
            root.join("target/release/cpucc")
        }
    };
    let py = venv::python()?;
    let openvino = !a.no_openvino && ensure_openvino(&py);
    let out_dir = root.join(&a.out);
    std::fs::create_dir_all(&out_dir)?;

    let peaks_before: Vec<(usize, f64)> =
        a.threads.iter().map(|&t| (t, peak::gflops(t).0)).collect();
    let isa = peak::gflops(1).1;

    let mut rows = Vec::new();
    for w in WORKLOADS
        .iter()
        .filter(|w| a.only.as_deref().is_none_or(|o| w.label.contains(o)))
    {
        let m = models::by_name(w.model).context("unknown model")?;
        let path = write_models::ensure(m)?;
        let (flops, shapes) = describe(&path, w)?;
        let guess_ms = flops / (GUESS_GFLOPS * 1e9) * 1e3;
        let iters = ((a.budget * 1e3 / guess_ms).round() as usize).clamp(3, 50);
        let warmup = if guess_ms > 1000.0 { 1 } else { 3 };
        for &t in &a.threads {
            let (mut ours, mut ort) = (Rounds::default(), Rounds::default());
            let per_round = iters.div_ceil(ROUNDS).max(2);
            for _ in 0..ROUNDS {
                ours.push(time_cpucc(&cpucc, &path, w, t, per_round, warmup, None)?);
                ort.push(time_py(&py, "ort", &path, &shapes, t, per_round, warmup)?);
            }
            // bf16 needs AMX or AVX512-BF16: a failure is a missing column.
            let ours_bf16 = (!a.no_bf16)
                .then(|| time_cpucc(&cpucc, &path, w, t, iters, warmup, Some("bf16")).ok())
                .flatten()
                .map(|r| r.0);
            let ov_bf16 = if openvino && !a.no_bf16 {
                time_py(&py, "openvino-bf16", &path, &shapes, t, iters, warmup)
                    .ok()
                    .map(|r| r.0)
            } else {
                None
            };
            let ov = if openvino {
                time_py(&py, "openvino", &path, &shapes, t, iters, warmup)
                    .ok()
                    .map(|r| r.0)
            } else {
                None
            };
            let row = json!({
                "workload": w.label, "threads": t, "gflop": flops / 1e9,
                "iters": per_round * ROUNDS, "rounds": ROUNDS,
                "cpucc_ms": ours.median(), "ort_ms": ort.median(),
                "cpucc_min_ms": ours.min, "ort_min_ms": ort.min, "openvino_ms": ov,
                "cpucc_bf16_ms": ours_bf16, "openvino_bf16_ms": ov_bf16,
            });
            eprintln!("{row}");
            rows.push(row);
        }
    }
    let peaks_after: Vec<(usize, f64)> =
        a.threads.iter().map(|&t| (t, peak::gflops(t).0)).collect();
    // The host is shared: the best of the two measurements is the machine.
    let peaks: Vec<(usize, f64)> = peaks_before
        .iter()
        .zip(&peaks_after)
        .map(|(&(t, x), &(_, y))| (t, x.max(y)))
        .collect();
    let peak_of = |t: usize| peaks.iter().find(|p| p.0 == t).map_or(f64::NAN, |p| p.1);

    let mut table = String::new();
    writeln!(
        table,
        "fp32 FMA peak ({isa}): {}",
        peaks
            .iter()
            .map(|(t, g)| format!("{t} thr {g:.1} GFLOP/s"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    if let (Some(p1), Some(p2)) = (
        peaks.iter().find(|p| p.0 == 1),
        peaks.iter().find(|p| p.0 == 2),
    ) {
        writeln!(
            table,
            "machine 2-thread/1-thread FMA ratio: {:.2}",
            p2.1 / p1.1
        )?;
    }
    writeln!(
        table,
        "{:<16} {:>3} {:>10} {:>10} {:>10} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}",
        "workload",
        "thr",
        "cpucc ms",
        "ort ms",
        "ov ms",
        "GFLOP/s",
        "% peak",
        "vs ort",
        "(min)",
        "vs ov",
        "bf16 ms",
        "ov bf16",
        "bf16/f32"
    )?;
    for r in &mut rows {
        let t = r["threads"].as_u64().unwrap_or(1) as usize;
        let ours = r["cpucc_ms"].as_f64().unwrap_or(f64::NAN);
        let ort = r["ort_ms"].as_f64().unwrap_or(f64::NAN);
        let ov = r["openvino_ms"].as_f64();
        let gflops = r["gflop"].as_f64().unwrap_or(0.0) / (ours / 1e3);
        let pct = 100.0 * gflops / peak_of(t);
        r["cpucc_gflops"] = json!(gflops);
        r["pct_peak"] = json!(pct);
        r["speedup_vs_ort"] = json!(ort / ours);
        let min_ratio = r["ort_min_ms"].as_f64().unwrap_or(f64::NAN)
            / r["cpucc_min_ms"].as_f64().unwrap_or(f64::NAN);
        r["min_speedup_vs_ort"] = json!(min_ratio);
        r["speedup_vs_openvino"] = json!(ov.map(|v| v / ours));
        let bf16 = r["cpucc_bf16_ms"].as_f64();
        let ov_bf16 = r["openvino_bf16_ms"].as_f64();
        r["bf16_speedup_vs_fp32"] = json!(bf16.map(|b| ours / b));
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        writeln!(
            table,
            "{:<16} {:>3} {:>10.2} {:>10.2} {:>10} {:>8.1} {:>6.1}% {:>7.2}x {:>7.2}x {:>8} {:>9} {:>9} {:>8}",
            r["workload"].as_str().unwrap_or(""),
            t,
            ours,
            ort,
            ov.map_or("-".into(), |v| format!("{v:.2}")),
            gflops,
            pct,
            ort / ours,
            min_ratio,
            ov.map_or("-".into(), |v| format!("{:.2}x", v / ours)),
            ms(bf16),
            ms(ov_bf16),
            bf16.map_or("-".into(), |b| format!("{:.2}x", ours / b)),
        )?;
    }
    // Scaling: 2-thread over 1-thread speedup per engine, per workload.
    for w in WORKLOADS {
        let get = |t: u64, k: &str| {
            rows.iter()
                .find(|r| r["workload"] == w.label && r["threads"] == t)
                .and_then(|r| r[k].as_f64())
        };
        if let (Some(c1), Some(c2), Some(o1), Some(o2)) = (
            get(1, "cpucc_ms"),
            get(2, "cpucc_ms"),
            get(1, "ort_ms"),
            get(2, "ort_ms"),
        ) {
            writeln!(
                table,
                "scaling {:<16} cpucc {:.2}  ort {:.2}",
                w.label,
                c1 / c2,
                o1 / o2
            )?;
        }
    }
    let geomean = |key: &str| {
        let v: Vec<f64> = rows
            .iter()
            .filter_map(|r| r[key].as_f64())
            .filter(|x| x.is_finite())
            .collect();
        (!v.is_empty()).then(|| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
    };
    if let (Some(med), Some(min)) = (geomean("speedup_vs_ort"), geomean("min_speedup_vs_ort")) {
        writeln!(
            table,
            "geomean speedup vs onnxruntime: {med:.2}x (medians; {min:.2}x by fastest iterations)"
        )?;
    }
    if !openvino {
        writeln!(
            table,
            "OpenVINO: not installed (pip install openvino failed or --no-openvino)"
        )?;
    }
    print!("{table}");
    let doc = json!({
        "isa": isa,
        "peak_gflops": peaks.iter().map(|(t, g)| json!({"threads": t, "gflops": g})).collect::<Vec<_>>(),
        "rows": rows,
    });
    std::fs::write(
        out_dir.join("bench.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(out_dir.join("bench.txt"), &table)?;
    std::fs::write(out_dir.join("bench.svg"), svg(&rows))?;
    println!("wrote {}/bench.{{json,txt,svg}}", out_dir.display());
    Ok(())
}

/// FLOPs (2 x MACs) and every input's shape for a workload.
fn describe(path: &Path, w: &Workload) -> anyhow::Result<(f64, Value)> {
    let opts = ImportOptions {
        shapes: w
            .shapes
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect(),
        ..ImportOptions::default()
    };
    let g = import::load(path, &opts).with_context(|| format!("importing {}", w.label))?;
    let flops = 2.0 * cpucc::ir::stats(&g).macs as f64;
    let shapes: serde_json::Map<String, Value> = g
        .inputs
        .iter()
        .map(|&v| (g.value(v).name.clone(), json!(g.value(v).ty.shape)))
        .collect();
    Ok((flops, Value::Object(shapes)))
}

fn time_cpucc(
    cpucc: &Path,
    model: &Path,
    w: &Workload,
    threads: usize,
    iters: usize,
    warmup: usize,
    fast_math: Option<&str>,
) -> anyhow::Result<(f64, f64)> {
    let mut cmd = Command::new(cpucc);
    cmd.arg("bench").arg(model).arg("--json");
    if let Some(f) = fast_math {
        cmd.args(["--fast-math", f]);
    }
    cmd.args(["--threads", &threads.to_string()]);
    cmd.args([
        "--iters",
        &iters.to_string(),
        "--warmup",
        &warmup.to_string(),
    ]);
    for (n, s) in w.shapes {
        let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
        cmd.arg("--shape").arg(format!("{n}={}", dims.join(",")));
    }
    median(&mut cmd, "cpucc")
}

fn time_py(
    py: &Path,
    engine: &str,
    model: &Path,
    shapes: &Value,
    threads: usize,
    iters: usize,
    warmup: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut cmd = Command::new(py);
    cmd.arg(venv::root().join("xtask/py/bench_run.py"))
        .arg(engine)
        .arg(model)
        .args([threads, iters, warmup].map(|x| x.to_string()))
        .arg(shapes.to_string());
    median(&mut cmd, engine)
}

/// Runs a timing command and reads `median_ms` and `min_ms` from its last
/// output line.
fn median(cmd: &mut Command, what: &str) -> anyhow::Result<(f64, f64)> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    let v: Value =
        serde_json::from_str(line).with_context(|| format!("{what} printed {line:?}"))?;
    let field = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("{what}: no {k} in {line:?}"))
    };
    Ok((field("median_ms")?, field("min_ms")?))
}

fn ensure_openvino(py: &Path) -> bool {
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", "import openvino"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has(py) {
        return true;
    }
    eprintln!("installing openvino (optional peer)");
    let _ = Command::new(py)
        .args(["-m", "pip", "install", "-q", "openvino"])
        .status();
    has(py)
}

/// A bar chart of the speedup over onnxruntime per workload and thread
/// count (1.0 = as fast as onnxruntime).
fn svg(rows: &[Value]) -> String {
    let bars: Vec<(String, f64)> = rows
        .iter()
        .map(|r| {
            (
                format!("{} {}t", r["workload"].as_str().unwrap_or(""), r["threads"]),
                r["speedup_vs_ort"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let max = bars
        .iter()
        .map(|b| b.1)
        .filter(|x| x.is_finite())
        .fold(1.5f64, f64::max);
    let (w, bh) = (760.0, 22.0);
    let h = 40.0 + bh * bars.len() as f64;
    let x0 = 200.0;
    let scale = (w - x0 - 60.0) / max;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"16\">cpucc speedup over onnxruntime (fp32)</text>\n"
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 28.0 + bh * i as f64;
        let v = if v.is_finite() { *v } else { 0.0 };
        let color = if v >= 1.0 { "#2a7" } else { "#c54" };
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{:.0}\">{label}</text><rect x=\"{x0}\" y=\"{y:.0}\" width=\"{:.1}\" height=\"{:.0}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.0}\">{v:.2}x</text>",
            y + 14.0,
            v * scale,
            bh - 4.0,
            x0 + v * scale + 4.0,
            y + 14.0
        );
    }
    let xl = x0 + scale;
    let _ = writeln!(
        s,
        "<line x1=\"{xl:.1}\" y1=\"24\" x2=\"{xl:.1}\" y2=\"{h}\" stroke=\"#333\" stroke-dasharray=\"4\"/>\n</svg>"
    );
    s
}
