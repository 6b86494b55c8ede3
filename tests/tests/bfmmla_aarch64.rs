//! `--fast-math bf16` on graviton3: the SVE BFMMLA GEMM under qemu at 128,
//! 256 and 512-bit vectors (the code is vector-length agnostic).
//!
//! Kernel graph: MatMul/Gemm/Conv nodes with constant weights on shapes
//! off the 8-row tile (odd M: a row pair with one row), the 32-column
//! panel, the 8-deep group and the depth block, with alpha/beta, row and
//! column bias, residual, Relu/Clip in registers and Sigmoid after the
//! store, NHWC convolutions (1x1 and im2col). Every value is exactly
//! representable in bf16, so the kernel's conversions are exact and the
//! f32 interpreter is an exact oracle up to the accumulation order (1e-4
//! of the output's magnitude; a wrong depth order or pair layout is off by
//! far more). Models: MLP and conv_relu on random f32 inputs keep cosine
//! similarity >= 0.99 with the interpreter and differ from f32 (bf16 is
//! really used). The object's disassembly contains `bfmmla`; graviton2
//! (no BF16) keeps the f32 NEON kernel. Needs aarch64-linux-gnu-gcc,
//! -objdump and qemu-aarch64 (installed by .ci/run); skips without them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cpucc::codegen::{Dumps, FastMath, Options, Target, artifact};
use cpucc::import::{ImportOptions, onnx};
use cpucc::ir::{DType, Graph, Tensor};
use cpucc::random::SplitMix64;
use cpucc::{cross, interp, passes};
use cpucc_tests::gemm_graph::{
    self,
    Arg::{Const, In},
    Edges,
};
use cpucc_tests::models;
use prost::Message;

const BF16: Options = Options {
    fast_math: FastMath::Bf16,
};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn tools() -> bool {
    let ok = [
        "aarch64-linux-gnu-gcc",
        "aarch64-linux-gnu-objdump",
        "qemu-aarch64",
    ]
    .iter()
    .all(|t| have(t));
    if !ok {
        eprintln!(
            "skipped: needs aarch64-linux-gnu-gcc, -objdump and qemu-aarch64 \
             (apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"
        );
    }
    ok
}

/// Uniform in [-1, 1), rounded to bf16 (8 significant bits).
fn data(rng: &mut SplitMix64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| (rng.uniform(-1.0, 1.0) * 256.0).round() / 256.0)
        .collect();
    Tensor::from_f64s(DType::F32, shape, &v).unwrap()
}

fn graph() -> (Graph, Vec<(String, Tensor)>) {
    let edges = Edges {
        third: [In(vec![8, 16]), Const(vec![16, 64])],
        // Two depth blocks (kc = 512 bf16 for graviton's 64 KiB L1d): the
        // load-C path, and a 5-deep tail.
        depth: 525,
        gemm_rows: 15,
    };
    gemm_graph::graph(11, data, edges)
}

/// Compiles `g` with `--fast-math bf16`; returns object, header and its
/// disassembly.
fn compile(g: &Graph, spec: &str, dir: &Path) -> (PathBuf, PathBuf, String) {
    let t = Target::parse(spec).unwrap();
    let art = artifact::compile_with(g, &t, "t", &BF16, &mut Dumps::default()).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (obj, hdr) = (dir.join("t.o"), dir.join("t.h"));
    std::fs::write(&obj, &art.object).unwrap();
    std::fs::write(&hdr, &art.header).unwrap();
    let out = Command::new("aarch64-linux-gnu-objdump")
        .arg("-d")
        .arg(&obj)
        .output()
        .unwrap();
    (obj, hdr, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(
    obj: &Path,
    hdr: &Path,
    spec: &str,
    bits: u32,
    ins: &[(String, Tensor)],
    dir: &Path,
) -> Vec<Tensor> {
    let mut t = Target::parse(spec).unwrap();
    t.sve_bits = Some(bits);
    // Emulation on a loaded machine: more than the default 120 s.
    let limit = Duration::from_secs(900);
    cross::run_foreign_timeout(
        obj,
        hdr,
        "t",
        &t,
        ins,
        &dir.join(format!("run{bits}")),
        limit,
    )
    .unwrap_or_else(|e| panic!("{spec} at SVE {bits}: {e}"))
}

fn root(name: &str) -> PathBuf {
    let r = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&r);
    r
}

#[test]
fn bfmmla_gemms_match_the_interpreter_on_bf16_values() {
    if !tools() {
        return;
    }
    let (g, inputs) = graph();
    let ins: Vec<Tensor> = inputs.iter().map(|(_, t)| t.clone()).collect();
    let want = interp::run(&g, &ins).unwrap();
    let root = root("bfmmla-aarch64");
    let (obj, hdr, asm) = compile(&g, "graviton3", &root);
    assert!(
        asm.contains("bfmmla\tz"),
        "graviton3: no bfmmla in the object"
    );
    for bits in [128, 256, 512] {
        let got = run(&obj, &hdr, "graviton3", bits, &inputs, &root);
        assert_eq!(got.len(), want.len());
        for (o, (w, h)) in want.iter().zip(&got).enumerate() {
            let (w, h) = (w.to_f64_vec(), h.to_f64_vec());
            let scale = w.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
            for (k, (x, y)) in w.iter().zip(&h).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-4 * scale,
                    "SVE {bits}: output {o} ({}) element {k}: {y} != {x}",
                    g.node(g.node_indices()[o]).op
                );
            }
        }
    }
    // Without BF16 the f32 NEON kernel stays.
    let (_, _, asm) = compile(&g, "graviton2", &root.join("graviton2"));
    assert!(!asm.contains("bfmmla\t"), "graviton2: bfmmla without BF16");
    assert!(asm.contains("fmla\tv"), "graviton2: no NEON GEMM");
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn models_keep_cosine_similarity_under_qemu() {
    if !tools() {
        return;
    }
    let root = root("bfmmla-models");
    for (name, bits) in [("mlp", 256), ("conv_relu", 512)] {
        let m = models::by_name(name).unwrap();
        let mut opts = ImportOptions::default();
        for (input, dims) in m.shapes {
            opts.shapes.insert(input.to_string(), dims.to_vec());
        }
        let g = onnx::load_bytes(&(m.build)().encode_to_vec(), None, &opts).unwrap();
        let mut h = g.clone();
        passes::run_pipeline(&mut h, passes::DEFAULT_PIPELINE).unwrap();
        let mut r = SplitMix64::new(7);
        let inputs: Vec<(String, Tensor)> = g
            .inputs
            .iter()
            .map(|&i| {
                let v = g.value(i);
                (v.name.clone(), r.tensor(v.ty.dtype, &v.ty.shape))
            })
            .collect();
        let ins: Vec<Tensor> = inputs.iter().map(|(_, t)| t.clone()).collect();
        let want = interp::run(&g, &ins).unwrap();
        let dir = root.join(name);
        let (obj, hdr, asm) = compile(&h, "graviton3", &dir);
        assert!(asm.contains("bfmmla\tz"), "{name}: no bfmmla in the object");
        let got = run(&obj, &hdr, "graviton3", bits, &inputs, &dir);
        for (w, x) in want.iter().zip(&got) {
            let (w, x) = (w.to_f64_vec(), x.to_f64_vec());
            let cos = cosine(&w, &x);
            let max_rel = w
                .iter()
                .zip(&x)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
                / w.iter().fold(0f64, |m, a| m.max(a.abs()));
            println!("{name} at SVE {bits}: cosine {cos:.6}, max rel {max_rel:.2e}");
            assert!(cos >= 0.99, "{name}: cosine similarity {cos}");
            // bf16 is really in use: f32 would agree within 1e-5.
            assert!(max_rel > 1e-5, "{name}: output equals f32 ({max_rel:e})");
        }
    }
}
