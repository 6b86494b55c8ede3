//! Running compiled models from the CLI: the host through the JIT, other
//! targets through their object under qemu, and the `--check` comparison
//! with the interpreter (with bisection to the first diverging node).

use std::time::Duration;

use cpucc::codegen::jit::JitModel;
use cpucc::codegen::{Dumps, Options, artifact};
use cpucc::ir::{Graph, Tensor, ValueType};
use cpucc::{Error, Result, cross, interp};
use cpucc_targets::Target;

/// Relative tolerance (to each output's largest magnitude) of `--check`.
pub const CHECK_RTOL: f64 = 1e-4;
/// `--check` under `--fast-math bf16`: least cosine similarity per output.
pub const CHECK_COSINE: f64 = 0.99;

pub fn target(spec: &str) -> Result<Target> {
    Target::parse(spec).map_err(|e| Error::Invalid(e.to_string()))
}

/// Compiles `g` for `target` and runs it: in-process for a target the host
/// can execute, else cross-linked and run under qemu, where a run longer
/// than `limit` counts as a hang.
pub fn run_native(
    g: &Graph,
    target: &Target,
    inputs: &[Tensor],
    limit: Duration,
    opts: &Options,
) -> Result<Vec<Tensor>> {
    if target.runs_on_host().is_ok() {
        let m = JitModel::compile_with(g, target, opts, &mut Dumps::default())?;
        return m.run(inputs);
    }
    let dir = std::env::temp_dir().join(format!("cpucc-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let art = artifact::compile_with(g, target, "model", opts, &mut Dumps::default())?;
    let (obj, hdr) = (dir.join("model.o"), dir.join("model.h"));
    std::fs::write(&obj, &art.object).map_err(|e| Error::io(&obj, e))?;
    std::fs::write(&hdr, &art.header).map_err(|e| Error::io(&hdr, e))?;
    let named: Vec<(String, Tensor)> = g
        .inputs
        .iter()
        .zip(inputs)
        .map(|(&v, t)| (g.value(v).name.clone(), t.clone()))
        .collect();
    let out = cross::run_foreign_timeout(&obj, &hdr, "model", target, &named, &dir, limit);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Max abs difference and max difference relative to the reference's
/// largest magnitude.
pub fn diff(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = y.iter().fold(0f64, |m, v| m.max(v.abs()));
    let mut abs = 0f64;
    for (p, q) in x.iter().zip(&y) {
        let d = if p == q || (p.is_nan() && q.is_nan()) {
            0.0
        } else {
            (p - q).abs()
        };
        abs = abs.max(if d.is_nan() { f64::INFINITY } else { d });
    }
    (abs, if scale > 0.0 { abs / scale } else { abs })
}

/// Cosine similarity of two tensors as flat vectors (1 when both are 0).
pub fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
    let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
    for (p, q) in x.iter().zip(&y) {
        xy += p * q;
        xx += p * p;
        yy += q * q;
    }
    if xx == 0.0 && yy == 0.0 {
        1.0
    } else {
        xy / (xx.sqrt() * yy.sqrt())
    }
}

/// `--check` under `--fast-math bf16`: prints the cosine similarity (and
/// max differences) per output; true when all reach [`CHECK_COSINE`].
pub fn report_cosine(g: &Graph, native: &[Tensor], reference: &[Tensor]) -> bool {
    let mut ok = true;
    for (&v, (n, r)) in g.outputs.iter().zip(native.iter().zip(reference)) {
        let (abs, rel) = diff(n, r);
        let cos = cosine(n, r);
        // NaN fails too.
        let good = n.shape() == r.shape() && cos >= CHECK_COSINE;
        ok &= good;
        println!(
            "check {}: cosine similarity {cos:.6} (bf16 bound {CHECK_COSINE}), max abs {abs:.3e}, max rel {rel:.3e} {}",
            g.value(v).name,
            if good { "ok" } else { "MISMATCH" }
        );
    }
    ok
}

/// Prints the per-output comparison; true when all are within tolerance.
pub fn report_diff(g: &Graph, native: &[Tensor], reference: &[Tensor]) -> bool {
    let mut ok = true;
    for (&v, (n, r)) in g.outputs.iter().zip(native.iter().zip(reference)) {
        let (abs, rel) = diff(n, r);
        let good = n.shape() == r.shape() && rel <= CHECK_RTOL;
        ok &= good;
        println!(
            "check {}: max abs {abs:.3e}, max rel {rel:.3e} {}",
            g.value(v).name,
            if good { "ok" } else { "MISMATCH" }
        );
    }
    ok
}

fn summary(t: &Tensor) -> String {
    let v = t.to_f64_vec();
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
            (l.min(*x), h.max(*x))
        });
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    format!(
        "{} min {lo:.6} max {hi:.6} mean {mean:.6}",
        ValueType::of(t)
    )
}

/// Compiles the unoptimized graph with every node output exposed and names
/// the first node, in topological order, whose native output differs from
/// the interpreter's.
pub fn bisect(g: &Graph, target: &Target, inputs: &[Tensor], limit: Duration) -> Result<()> {
    let mut probe = g.clone();
    let mut outs = Vec::new();
    for n in g.topo_order()? {
        for &o in &g.node(n).outputs {
            if !outs.contains(&o) {
                outs.push(o);
            }
        }
    }
    probe.outputs = outs.clone();
    let native = run_native(&probe, target, inputs, limit, &Options::default())?;
    let reference = interp::run(&probe, inputs)?;
    for ((&v, n), r) in outs.iter().zip(&native).zip(&reference) {
        let (abs, rel) = diff(n, r);
        if rel > CHECK_RTOL {
            let (node, _) = g.value(v).producer.expect("node outputs have producers");
            let nd = g.node(node);
            println!(
                "first divergence: node '{}' ({}) output '{}': max abs {abs:.3e}, max rel {rel:.3e}\n  native:      {}\n  interpreter: {}",
                nd.name,
                nd.op,
                g.value(v).name,
                summary(n),
                summary(r)
            );
            return Ok(());
        }
    }
    println!("no single node diverges: the difference comes from the passes");
    Ok(())
}
