//! The static library from C: `tests/c/pool_test.c` linked with gcc against
//! `libcpucc_runtime.a`, and the generic harness (`harness/harness.c`) built
//! with `-DCPUCC_USE_POOL` around a tiny hand-written model that splits its
//! work over the pool, and its .npy reading (v1-v3, and each rejection).

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

/// A `.npy` file of format `version` with raw little-endian `data`, padded
/// as numpy pads (data at a multiple of 64).
fn npy(version: u8, descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let order = if fortran { "True" } else { "False" };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    let len_bytes = if version == 1 { 2 } else { 4 };
    while (8 + len_bytes + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut b = b"\x93NUMPY".to_vec();
    b.extend([version, 0]);
    if version == 1 {
        b.extend((dict.len() as u16).to_le_bytes());
    } else {
        b.extend((dict.len() as u32).to_le_bytes());
    }
    b.extend(dict.as_bytes());
    b.extend(data);
    b
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A v1 `.npy` of f32 `data` in shape (2, 3), as numpy writes it.
fn npy_f32_2x3(data: &[f32]) -> Vec<u8> {
    npy(1, "<f4", false, "(2, 3)", &f32_bytes(data))
}

/// The harness linked with the add_one fixture (and the pool when `pool`).
fn add_one_harness(dir: &Path, pool: bool) -> PathBuf {
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
    let header = fixtures.join("add_one.h");
    let mut flags = vec!["-DCPUCC_NAME=add_one", "-include", header.to_str().unwrap()];
    if pool {
        flags.push("-DCPUCC_USE_POOL");
    }
    gcc(&[&manifest().join("harness/harness.c"), &obj], &flags, &exe);
    exe
}

#[test]
fn harness_runs_a_model_on_the_pool() {
    let dir = tmp("c-harness-pool");
    let exe = add_one_harness(&dir, true);
    let x = [1.0f32, -2.0, 3.5, 0.0, 7.0, -0.5];
    let input = dir.join("x.npy");
    std::fs::write(&input, npy_f32_2x3(&x)).unwrap();
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
            npy_f32_2x3(&want)
        );
    }
}

#[test]
fn harness_reads_npy_v1_to_v3_and_rejects_what_it_cannot() {
    let dir = tmp("c-harness-npy");
    let exe = add_one_harness(&dir, false);
    let x = [0.5f32, 1.0, 2.0, -4.0, 8.0, 16.0];
    let want: Vec<f32> = x.iter().map(|v| v + 1.0).collect();
    let run = |bytes: Vec<u8>| {
        let input = dir.join("in.npy");
        std::fs::write(&input, bytes).unwrap();
        let _ = std::fs::remove_file(dir.join("output_0.npy"));
        let out = Command::new(&exe)
            .arg("-o")
            .arg(&dir)
            .arg(&input)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for version in [1, 2, 3] {
        let (code, err) = run(npy(version, "<f4", false, "(2, 3)", &f32_bytes(&x)));
        assert_eq!(code, Some(0), "v{version}: {err}");
        assert_eq!(
            std::fs::read(dir.join("output_0.npy")).unwrap(),
            npy_f32_2x3(&want)
        );
    }
    let bad: [(Vec<u8>, &str); 8] = [
        (
            npy(1, "<f4", true, "(2, 3)", &f32_bytes(&x)),
            "Fortran-ordered",
        ),
        (npy(1, ">f4", false, "(2, 3)", &f32_bytes(&x)), "big-endian"),
        (
            npy(1, "<f4", false, "(2, 3)", &f32_bytes(&x[..5])),
            "data shorter than its shape",
        ),
        (
            npy(1, "<f4", false, "(2, 3)", &f32_bytes(&[x, x].concat())),
            "data longer than its shape",
        ),
        (
            npy(1, "<f8", false, "(2, 3)", &[0; 48]),
            "holds f64[2,3], the model expects f32[2,3]",
        ),
        (
            npy(1, "<f4", false, "(6,)", &f32_bytes(&x)),
            "holds f32[6], the model expects f32[2,3]",
        ),
        (
            npy(4, "<f4", false, "(2, 3)", &f32_bytes(&x)),
            ".npy version 4 is not supported",
        ),
        (b"not a numpy file".to_vec(), "is not a .npy file"),
    ];
    for (bytes, needle) in bad {
        let (code, err) = run(bytes);
        assert_eq!(code, Some(1), "{needle}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("cpucc harness: add_one: input 0 'x'") && err.contains(needle),
            "{err}"
        );
    }
}
