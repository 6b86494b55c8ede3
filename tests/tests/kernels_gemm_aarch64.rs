//! The aarch64 GEMM microkernels under qemu against the interpreter: one
//! graph of MatMul/Gemm/Conv nodes on shapes off the 8-row tile, the
//! 32-column panel, the 4-deep unroll and the depth block (constant and
//! run-time B, broadcast batches, per-column and per-row bias, residual,
//! Relu/Clip in registers, Sigmoid after the store, NHWC convolutions),
//! compiled once for `graviton3` (SVE) and run at 128, 256 and 512-bit
//! vectors — the code is vector-length agnostic — and for `graviton2`
//! (NEON kernels) under `-cpu max,sve=off`. Also checks the objects'
//! instructions: SVE in graviton3's, NEON fmla-by-element and no SVE in
//! graviton2's. Needs aarch64-linux-gnu-gcc,
//! -objdump and qemu-aarch64 (installed by .ci/run); skips without them.

use std::path::{Path, PathBuf};
use std::process::Command;

use cpucc::codegen::{Dumps, Target, artifact};
use cpucc::ir::{DType, Graph, Tensor};
use cpucc::random::SplitMix64;
use cpucc::{cross, interp};
use cpucc_tests::gemm_graph::{self, Arg::In, Edges};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn data(rng: &mut SplitMix64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    Tensor::from_f64s(DType::F32, shape, &v).unwrap()
}

fn graph() -> (Graph, Vec<(String, Tensor)>) {
    let edges = Edges {
        third: [In(vec![5, 17]), In(vec![17, 33])],
        // Two depth blocks (kc = 256 for graviton's 64 KiB L1d), load-C path.
        depth: 300,
        gemm_rows: 16,
    };
    gemm_graph::graph(7, data, edges)
}

fn compile(g: &Graph, spec: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let t = Target::parse(spec).unwrap();
    let art = artifact::compile(g, &t, "t", &mut Dumps::default()).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (obj, hdr) = (dir.join("t.o"), dir.join("t.h"));
    std::fs::write(&obj, &art.object).unwrap();
    std::fs::write(&hdr, &art.header).unwrap();
    (obj, hdr)
}

fn disassembly(obj: &Path) -> String {
    let out = Command::new("aarch64-linux-gnu-objdump")
        .arg("-d")
        .arg(obj)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sve_and_neon_gemms_match_the_interpreter_under_qemu() {
    if ![
        "aarch64-linux-gnu-gcc",
        "aarch64-linux-gnu-objdump",
        "qemu-aarch64",
    ]
    .iter()
    .all(|t| have(t))
    {
        eprintln!(
            "skipped: needs aarch64-linux-gnu-gcc, -objdump and qemu-aarch64 \
             (apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"
        );
        return;
    }
    let (g, inputs) = graph();
    let ins: Vec<Tensor> = inputs.iter().map(|(_, t)| t.clone()).collect();
    let want = interp::run(&g, &ins).unwrap();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gemm-aarch64");
    let _ = std::fs::remove_dir_all(&root);
    for (spec, lengths) in [("graviton3", &[128, 256, 512][..]), ("graviton2", &[0][..])] {
        let dir = root.join(spec);
        let (obj, hdr) = compile(&g, spec, &dir);
        let asm = disassembly(&obj);
        let sve = asm.contains("ld1rqw") && asm.contains("fmla\tz");
        assert_eq!(sve, spec == "graviton3", "{spec}: SVE GEMM in the object");
        assert_eq!(
            asm.contains("\tz"),
            spec == "graviton3",
            "{spec}: z registers"
        );
        // The NEON tile's fmla by element (the CLIF GEMM broadcasts; other
        // CLIF kernels may still use by-element fmla on SVE targets).
        if spec == "graviton2" {
            let neon = asm.contains("fmla\tv") && asm.contains(".s[");
            assert!(neon, "{spec}: NEON GEMM in the object");
        }
        for &bits in lengths {
            let mut run_as = Target::parse(spec).unwrap();
            run_as.sve_bits = (bits > 0).then_some(bits);
            let got = cross::run_foreign(&obj, &hdr, "t", &run_as, &inputs, &dir.join("run"))
                .unwrap_or_else(|e| panic!("{spec} at SVE {bits}: {e}"));
            assert_eq!(got.len(), want.len());
            for (o, (w, h)) in want.iter().zip(&got).enumerate() {
                let (w, h) = (w.to_f64_vec(), h.to_f64_vec());
                let scale = w.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
                for (k, (x, y)) in w.iter().zip(&h).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-4 * scale,
                        "{spec} at SVE {bits}: output {o} ({}) element {k}: {y} != {x}",
                        g.node(g.node_indices()[o]).op
                    );
                }
            }
        }
    }
}
