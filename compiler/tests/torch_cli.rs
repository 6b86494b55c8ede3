//! `cpucc` on TorchScript and torch.export files: detected by content (not
//! extension), run against torch's recorded output, and bad archives exit
//! with code 2 and one line naming the problem.

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/torch")
}

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("torch_cli");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn cpucc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cpucc"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rejects(args: &[&str], needles: &[&str]) {
    let (code, _, err) = cpucc(args);
    assert_eq!(code, 2, "exit code for {args:?}; stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr {err:?} lacks {n:?}");
    }
}

#[test]
fn pt_and_pt2_are_detected_by_content_and_run() {
    // Copied to names without the usual extension: content decides.
    for ext in ["pt", "pt2"] {
        let model = tmp(&format!("mlp_{ext}.bin"));
        std::fs::copy(fixtures().join(format!("mlp.{ext}")), &model).unwrap();
        let input = fixtures().join("mlp.input0.npy");
        let out = tmp(&format!("out_{ext}"));
        let (code, _, err) = cpucc(&[
            "run",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        let got = cpucc::io::read_tensor(&out.join("output_0.npy")).unwrap();
        let want = cpucc::io::read_tensor(&fixtures().join("mlp.output0.npy")).unwrap();
        let scale = want.to_f64_vec().iter().fold(0f64, |m, v| m.max(v.abs()));
        for (a, b) in got.to_f64_vec().iter().zip(want.to_f64_vec()) {
            assert!((a - b).abs() <= 1e-4 * scale, "{ext}: {a} vs torch {b}");
        }
        let (code, stdout, err) =
            cpucc(&["inspect", model.to_str().unwrap(), "--shape", "input=8,64"]);
        assert_eq!(code, 0, "{err}");
        assert!(stdout.contains("Gemm"), "{stdout}");
    }
}

#[test]
fn bad_torch_files_exit_2_with_one_line() {
    let pt = std::fs::read(fixtures().join("conv_relu.pt")).unwrap();
    let truncated = tmp("truncated.pt");
    std::fs::write(&truncated, &pt[..pt.len() - 100]).unwrap();
    rejects(
        &[
            "inspect",
            truncated.to_str().unwrap(),
            "--shape",
            "x=1,16,32,32",
        ],
        &["zip"],
    );
    let noshape = fixtures().join("conv_relu.pt");
    rejects(&["inspect", noshape.to_str().unwrap()], &["--shape x="]);
    let unsupported = fixtures().join("unsupported_cumsum.pt");
    rejects(
        &[
            "compile",
            unsupported.to_str().unwrap(),
            "--shape",
            "x=2,8",
            "-o",
            tmp("o").to_str().unwrap(),
        ],
        &["aten::cumsum", "line "],
    );
}
