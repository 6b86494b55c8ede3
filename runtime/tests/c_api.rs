//! The static library from C: `tests/c/pool_test.c` linked with gcc against
//! `libcpucc_runtime.a`, and the generic harness (`harness/harness.c`) built
//! with `-DCPUCC_USE_POOL` around a tiny hand-written model that splits its
//! work over the pool.

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The staticlib cargo built with this test (deps/ beside the test binary;
/// cargo does not copy it up for test builds). The newest one wins.
fn staticlib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let mut libs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(deps)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("libcpucc_runtime-") && n.ends_with(".a")
        })
        .map(|p| (p.metadata().unwrap().modified().unwrap(), p))
        .collect();
    libs.sort();
    libs.pop()
        .expect("libcpucc_runtime-*.a next to the test binary")
        .1
}

fn gcc(args: &[&Path], extra: &[&str], out: &Path) {
    let lib = staticlib();
    let st = Command::new("gcc")
        .args(["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(manifest().join("include"))
        .args(extra)
        .args(args)
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(out)
        .status()
        .expect("gcc");
    assert!(st.success(), "gcc failed");
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn pool_from_c() {
    let dir = tmp("c-pool");
    let exe = dir.join("pool_test");
    gcc(&[&manifest().join("tests/c/pool_test.c")], &[], &exe);
    let out = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("pool_test ok"),
        "{stdout}"
    );
}

/// A minimal `.npy` v1 file holding f32 `data` of `shape`.
fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((dict.len() as u16).to_le_bytes());
    b.extend(dict.as_bytes());
    for v in data {
        b.extend(v.to_le_bytes());
    }
    b
}

#[test]
fn harness_runs_a_model_on_the_pool() {
    let dir = tmp("c-harness-pool");
    let fixtures = manifest().join("../compiler/tests/fixtures/abi");
    let obj = dir.join("add_one.o");
    let st = Command::new("gcc")
        .args(["-O2", "-c"])
        .arg(fixtures.join("add_one.c"))
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap();
    assert!(st.success());
    let exe = dir.join("add_one_run");
    gcc(
        &[&manifest().join("harness/harness.c"), &obj],
        &[
            "-DCPUCC_NAME=add_one",
            "-DCPUCC_USE_POOL",
            "-include",
            fixtures.join("add_one.h").to_str().unwrap(),
        ],
        &exe,
    );
    let x = [1.0f32, -2.0, 3.5, 0.0, 7.0, -0.5];
    let input = dir.join("x.npy");
    std::fs::write(&input, npy_f32(&[2, 3], &x)).unwrap();
    for threads in ["1", "3"] {
        let out = Command::new(&exe)
            .env("CPUCC_THREADS", threads)
            .arg("-o")
            .arg(&dir)
            .args(["-n", "5"])
            .arg(&input)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("output 0 dtype=1 y"), "{stdout}");
        assert!(stdout.contains("iters=5"), "{stdout}");
        let want: Vec<f32> = x.iter().map(|v| v + 1.0).collect();
        assert_eq!(
            std::fs::read(dir.join("output_0.npy")).unwrap(),
            npy_f32(&[2, 3], &want)
        );
    }
}
