//! The harness and cross-execution path (`cpucc::cross`) on hand-written
//! fixtures implementing the artifact ABI (tests/fixtures/abi): natively for
//! the host and under qemu-aarch64 for Graviton presets. Needs gcc, and for
//! aarch64 `aarch64-linux-gnu-gcc` + `qemu-aarch64` (installed by .ci/run);
//! the aarch64 tests say so and skip when those are missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cpucc::cross::{run_foreign, run_foreign_timeout};
use cpucc::ir::{DType, Tensor};
use cpucc::{Error, Result};
use cpucc_targets::Target;
use half::bf16;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/abi")
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn have_cross() -> bool {
    let ok = have("aarch64-linux-gnu-gcc") && have("qemu-aarch64");
    if !ok {
        eprintln!(
            "skipped: needs aarch64-linux-gnu-gcc and qemu-aarch64 \
             (apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"
        );
    }
    ok
}

/// A fresh work directory under the target dir.
fn workdir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cross-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiles fixture `src` (.c) into an object for `target`'s architecture.
fn object(src: &str, target: &Target, extra: &[&str], dir: &Path) -> PathBuf {
    let cc = if target.is_host() {
        "gcc"
    } else {
        "aarch64-linux-gnu-gcc"
    };
    let obj = dir.join(src.replace(".c", ".o"));
    let st = Command::new(cc)
        .args(["-O2", "-c"])
        .args(extra)
        .arg(fixtures().join(src))
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap();
    assert!(st.success(), "{cc} failed on {src}");
    obj
}

fn run(
    fixture: &str,
    name: &str,
    spec: &str,
    extra: &[&str],
    inputs: &[(String, Tensor)],
    tag: &str,
) -> Result<Vec<Tensor>> {
    let target = Target::parse(spec).unwrap();
    let dir = workdir(tag);
    let obj = object(fixture, &target, extra, &dir);
    let header = fixtures().join(format!("{name}.h"));
    run_foreign(&obj, &header, name, &target, inputs, &dir)
}

fn add_one_input() -> (Tensor, Vec<f32>) {
    let x: Vec<f32> = vec![-1.5, 0.0, 2.25, 1e6, -3.0, 0.125];
    let want = x.iter().map(|v| v + 1.0).collect();
    (Tensor::from_vec(&[2, 3], x).unwrap(), want)
}

fn check_add_one(outs: &[Tensor], want: &[f32]) {
    assert_eq!(outs.len(), 1);
    let y = outs[0].typed::<f32>().unwrap();
    assert_eq!(y.shape(), &[2, 3]);
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), want);
}

#[test]
fn add_one_on_the_host() {
    let (x, want) = add_one_input();
    let outs = run(
        "add_one.c",
        "add_one",
        "native",
        &[],
        &[("x".into(), x)],
        "host-add",
    )
    .unwrap();
    check_add_one(&outs, &want);
}

#[test]
fn add_one_on_gravitons_under_qemu() {
    if !have_cross() {
        return;
    }
    for spec in ["graviton2", "graviton3", "graviton4", "aarch64"] {
        let (x, want) = add_one_input();
        let outs = run("add_one.c", "add_one", spec, &[], &[("x".into(), x)], spec).unwrap();
        check_add_one(&outs, &want);
    }
}

fn mixed_inputs(k: u8) -> Vec<(String, Tensor)> {
    let h: Vec<bf16> = [1.5f32, -0.0078125, 3.0e38]
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    // Given out of header order: the harness binds by name.
    vec![
        ("h".into(), Tensor::from_vec(&[3], h).unwrap()),
        ("k".into(), Tensor::scalar(k)),
        (
            "a".into(),
            Tensor::from_vec(&[4], vec![-7i64, 0, 3, 1 << 40]).unwrap(),
        ),
    ]
}

fn check_mixed(outs: &[Tensor]) {
    assert_eq!(outs.len(), 3);
    let s = outs[0].typed::<f64>().unwrap();
    assert_eq!(
        s.iter().copied().collect::<Vec<_>>(),
        [-21.0, 0.0, 9.0, 3.0 * (1u64 << 40) as f64]
    );
    let gt = outs[1].typed::<bool>().unwrap();
    assert_eq!(
        gt.iter().copied().collect::<Vec<_>>(),
        [false, false, false, true]
    );
    assert_eq!(outs[2].dtype(), DType::BF16);
    let neg = outs[2].typed::<bf16>().unwrap();
    let want: Vec<bf16> = [-1.5f32, 0.0078125, -3.0e38]
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    assert_eq!(neg.iter().copied().collect::<Vec<_>>(), want);
}

#[test]
fn mixed_dtypes_scalars_and_bf16() {
    let outs = run(
        "mixed.c",
        "mixed",
        "native",
        &[],
        &mixed_inputs(3),
        "host-mixed",
    )
    .unwrap();
    check_mixed(&outs);
    if have_cross() {
        let outs = run(
            "mixed.c",
            "mixed",
            "graviton3",
            &[],
            &mixed_inputs(3),
            "g3-mixed",
        )
        .unwrap();
        check_mixed(&outs);
    }
}

#[test]
fn a_nonzero_run_code_is_an_error() {
    let e = run(
        "mixed.c",
        "mixed",
        "native",
        &[],
        &mixed_inputs(0),
        "host-code",
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Invalid(_)), "{msg}");
    assert!(
        msg.contains("mixed_run returned 3") && msg.contains("runtime data error"),
        "{msg}"
    );
}

#[test]
fn bad_inputs_are_named() {
    let wrong_shape = Tensor::from_vec(&[3, 2], vec![0f32; 6]).unwrap();
    let e = run(
        "add_one.c",
        "add_one",
        "native",
        &[],
        &[("x".into(), wrong_shape)],
        "host-shape",
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("input 0 'x'") && msg.contains("f32[3,2]") && msg.contains("f32[2,3]"),
        "{msg}"
    );

    let wrong_dtype = Tensor::from_vec(&[2, 3], vec![0i32; 6]).unwrap();
    let e = run(
        "add_one.c",
        "add_one",
        "native",
        &[],
        &[("x".into(), wrong_dtype)],
        "host-dtype",
    )
    .unwrap_err();
    assert!(e.to_string().contains("i32[2,3]"), "{e}");

    let e = run("add_one.c", "add_one", "native", &[], &[], "host-missing").unwrap_err();
    assert!(e.to_string().contains("input 0 'x' is not given"), "{e}");

    let (x, _) = add_one_input();
    let e = run(
        "add_one.c",
        "add_one",
        "native",
        &[],
        &[("z".into(), x)],
        "host-name",
    )
    .unwrap_err();
    assert!(e.to_string().contains("no input named 'z'"), "{e}");
}

#[test]
fn qemu_uses_the_presets_sve_length() {
    if !have_cross() {
        return;
    }
    let sve = ["-march=armv8-a+sve"];
    for (spec, bits) in [("graviton3", 256), ("graviton4", 128), ("aarch64+sve", 128)] {
        let outs = run("sve_vl.c", "sve_vl", spec, &sve, &[], &format!("vl-{spec}")).unwrap();
        assert_eq!(outs[0].shape(), &[] as &[usize]);
        assert_eq!(
            outs[0].typed::<i32>().unwrap().iter().next(),
            Some(&bits),
            "{spec}"
        );
    }
    // Graviton2 has no SVE: the instruction must fault, not run.
    let e = run("sve_vl.c", "sve_vl", "graviton2", &sve, &[], "vl-g2").unwrap_err();
    assert!(e.to_string().contains("illegal instruction"), "{e}");
}

#[test]
fn a_hang_is_a_timeout_naming_the_model() {
    let target = Target::host();
    let dir = workdir("host-spin");
    let obj = object("spin.c", &target, &[], &dir);
    let header = fixtures().join("add_one.h");
    let (x, _) = add_one_input();
    let t0 = std::time::Instant::now();
    let e = run_foreign_timeout(
        &obj,
        &header,
        "add_one",
        &target,
        &[("x".into(), x)],
        &dir,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(30));
    let msg = e.to_string();
    assert!(
        msg.contains("'add_one'") && msg.contains("did not finish within 1 s"),
        "{msg}"
    );
}

#[test]
fn a_relative_workdir_works() {
    let target = Target::host();
    let dir = workdir("relative");
    let obj = object("add_one.c", &target, &[], &dir);
    let header = fixtures().join("add_one.h");
    // `dir` relative to the current directory: `..` up to the common prefix.
    let cwd = std::env::current_dir().unwrap();
    let common = cwd
        .components()
        .zip(dir.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = PathBuf::new();
    for _ in cwd.components().skip(common) {
        rel.push("..");
    }
    rel.extend(dir.components().skip(common));
    assert!(
        rel.is_relative() && rel.join("add_one.o").is_file(),
        "{}",
        rel.display()
    );
    let (x, want) = add_one_input();
    let outs = run_foreign(&obj, &header, "add_one", &target, &[("x".into(), x)], &rel).unwrap();
    check_add_one(&outs, &want);
}

#[test]
fn model_names_must_be_c_identifiers() {
    let dir = workdir("bad-name");
    let e = run_foreign(
        Path::new("m.o"),
        Path::new("m.h"),
        "my-model",
        &Target::host(),
        &[],
        &dir,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("'my-model' is not a C identifier"),
        "{e}"
    );
}
