//! The TorchScript (`.pt`) and `torch.export` (`.pt2`) importers against
//! torch itself: every committed fixture (written by `cargo xtask
//! torchscript-fixtures` with torch's outputs) runs through the interpreter
//! and through compiled code and must match torch within 1e-4 relative to
//! each output's largest magnitude. Malformed archives are errors, never
//! panics.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use cpucc::codegen::jit::JitModel;
use cpucc::codegen::{Dumps, Target};
use cpucc::import::{ImportOptions, load, torch};
use cpucc::ir::Tensor;
use cpucc::{Error, interp, io, passes};

const RTOL: f64 = 1e-4;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torch")
}

fn npy(name: &str) -> Tensor {
    io::read_tensor(&dir().join(name)).unwrap()
}

/// Inputs (`NAME.inputI.npy`) and torch's outputs (`NAME.outputI.npy`).
fn io_of(name: &str) -> (Vec<Tensor>, Vec<Tensor>) {
    let all = |kind: &str| {
        (0..)
            .map(|i| dir().join(format!("{name}.{kind}{i}.npy")))
            .take_while(|p| p.exists())
            .map(|p| io::read_tensor(&p).unwrap())
            .collect::<Vec<_>>()
    };
    (all("input"), all("output"))
}

/// Max |a - b| relative to b's largest magnitude.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = y.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    x.iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(
            0f64,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        )
        / scale
}

fn check(file: &str) {
    let name = file.rsplit_once('.').unwrap().0;
    let (inputs, want) = io_of(name);
    assert!(!inputs.is_empty() && !want.is_empty(), "fixtures of {name}");
    let path = dir().join(file);
    let names = cpucc::import::input_names(&path).unwrap();
    let mut opts = ImportOptions::default();
    if file.ends_with(".pt") {
        // TorchScript records no shapes: they come from --shape.
        for (n, t) in names.iter().zip(&inputs) {
            opts.shapes.insert(n.clone(), t.shape().to_vec());
        }
    }
    let mut g = load(&path, &opts).unwrap();
    let got = interp::run(&g, &inputs).unwrap();
    assert_eq!(got.len(), want.len(), "{file}: outputs");
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let d = rel_diff(a, b);
        assert!(
            d <= RTOL,
            "{file} output {i}: interpreter differs from torch by {d:.2e}"
        );
    }
    passes::run_pipeline(&mut g, passes::DEFAULT_PIPELINE).unwrap();
    let m = JitModel::compile(&g, &Target::host(), &mut Dumps::default()).unwrap();
    let native = m.run(&inputs).unwrap();
    for (i, (a, b)) in native.iter().zip(&want).enumerate() {
        let d = rel_diff(a, b);
        assert!(
            d <= RTOL,
            "{file} output {i}: compiled code differs from torch by {d:.2e}"
        );
    }
}

macro_rules! fixture_tests {
    ($($test:ident => $file:literal,)*) => {
        $(#[test] fn $test() { check($file); })*
    };
}

fixture_tests! {
    conv_relu_pt => "conv_relu.pt",
    conv_relu_pt2 => "conv_relu.pt2",
    mlp_pt => "mlp.pt",
    mlp_pt2 => "mlp.pt2",
    resnet_small_pt => "resnet_small.pt",
    resnet_small_pt2 => "resnet_small.pt2",
    mobilenetv2_small_pt => "mobilenetv2_small.pt",
    mobilenetv2_small_pt2 => "mobilenetv2_small.pt2",
    encoder2_pt => "encoder2.pt",
    encoder2_pt2 => "encoder2.pt2",
    ops_mix_pt => "ops_mix.pt",
    ops_mix_pt2 => "ops_mix.pt2",
    mlp_unfrozen_pt => "mlp_unfrozen.pt",
    mlp_unfrozen_pt2 => "mlp_unfrozen.pt2",
}

#[test]
fn every_fixture_is_tested_and_small() {
    let mut total = 0;
    for e in std::fs::read_dir(dir()).unwrap() {
        let p = e.unwrap().path();
        total += std::fs::metadata(&p).unwrap().len();
    }
    assert!(total < 5 << 20, "fixtures take {total} bytes");
    let src = include_str!("torch_import.rs");
    for e in std::fs::read_dir(dir()).unwrap() {
        let f = e.unwrap().file_name().into_string().unwrap();
        if (f.ends_with(".pt") || f.ends_with(".pt2")) && !f.starts_with("unsupported") {
            assert!(src.contains(&format!("\"{f}\"")), "{f} has no test");
        }
    }
}

#[test]
fn torchscript_needs_shapes_and_names_the_input() {
    let e = load(&dir().join("conv_relu.pt"), &ImportOptions::default()).unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, Error::Invalid(_)), "{m}");
    assert!(
        m.contains("input 'x' needs a shape") && m.contains("--shape x="),
        "{m}"
    );
}

/// The committed `.pt`s written by torch from a model using `aten::cumsum`,
/// which cpucc does not map.
#[test]
fn unsupported_op_names_the_op_and_source_line() {
    let mut opts = ImportOptions::default();
    opts.shapes.insert("x".into(), vec![2, 8]);
    let e = load(&dir().join("unsupported_cumsum.pt"), &opts).unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, Error::Unsupported(_)), "{m}");
    assert!(m.contains("aten::cumsum"), "{m}");
    let line = source_line(
        &std::fs::read(dir().join("unsupported_cumsum.pt")).unwrap(),
        "cumsum",
    );
    assert!(m.contains(&line), "{m} should name {line}");
    let e = load(&dir().join("unsupported_cumsum.pt2"), &opts).unwrap_err();
    assert!(e.to_string().contains("aten::cumsum"), "{e}");
}

/// `code/FILE.py line N` of the first line mentioning `needle`.
fn source_line(pt: &[u8], needle: &str) -> String {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(pt)).unwrap();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        if name.ends_with(".py") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut f, &mut s).unwrap();
            if let Some(n) = s.lines().position(|l| l.contains(needle)) {
                let rel = name.split_once('/').unwrap().1;
                return format!("{rel} line {}", n + 1);
            }
        }
    }
    panic!("no code mentions {needle}");
}

/// Rewrites one entry of a zip (stored, fresh CRC) so that the archive is
/// well formed and only that entry is wrong.
fn with_entry(pt: &[u8], suffix: &str, mut f: impl FnMut(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(pt)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..z.len() {
        let mut e = z.by_index(i).unwrap();
        let name = e.name().unwrap().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if name.ends_with(suffix) {
            data = f(data);
        }
        out.start_file(name, opts).unwrap();
        out.write_all(&data).unwrap();
    }
    out.finish().unwrap().into_inner()
}

fn import(bytes: &[u8]) -> cpucc::Result<cpucc::ir::Graph> {
    let opts = ImportOptions {
        shapes: HashMap::from([("x".to_string(), vec![1, 16, 32, 32])]),
        ..Default::default()
    };
    torch::load_bytes(bytes, &opts)
}

#[test]
fn control_flow_is_rejected_with_its_line() {
    let pt = std::fs::read(dir().join("conv_relu.pt")).unwrap();
    let bad = with_entry(&pt, ".py", |src| {
        let s = String::from_utf8(src).unwrap();
        s.replace(
            "    return torch.relu(_0)",
            "    if 1:\n      _0 = _0\n    return torch.relu(_0)",
        )
        .into_bytes()
    });
    let e = import(&bad).unwrap_err().to_string();
    let line = source_line(&bad, "if 1:");
    assert!(
        e.contains("control flow ('if')") && e.contains(&line),
        "{e}"
    );
}

#[test]
fn broken_pickles_and_code_are_errors() {
    let pt = std::fs::read(dir().join("conv_relu.pt")).unwrap();
    assert!(import(&pt).is_ok());
    let pkl = with_entry(&pt, "constants.pkl", |p| p[..p.len() / 2].to_vec());
    let e = import(&pkl).unwrap_err();
    assert!(
        matches!(e, Error::Invalid(_)) && e.to_string().contains("constants.pkl"),
        "{e}"
    );
    let missing = with_entry(&pt, "constants/0", |p| p[..100].to_vec());
    let e = import(&missing).unwrap_err();
    assert!(e.to_string().contains("reach past its storage"), "{e}");
    // Every single-byte change of the pickles and the code is an error or
    // a (different) model, never a panic.
    for entry in ["data.pkl", "constants.pkl", ".py"] {
        let mut rng = cpucc::random::SplitMix64::new(5);
        for _ in 0..150 {
            let bad = with_entry(&pt, entry, |mut p| {
                let i = (rng.next_u64() as usize) % p.len();
                p[i] = rng.next_u64() as u8;
                p
            });
            let r = std::panic::catch_unwind(|| import(&bad));
            assert!(r.is_ok(), "panic on a corrupted {entry}");
            if let Ok(Err(Error::Internal(m))) = r {
                panic!("internal error on a corrupted {entry}: {m}");
            }
        }
    }
}

#[test]
fn truncated_and_corrupted_archives_are_errors_not_crashes() {
    for file in ["conv_relu.pt", "conv_relu.pt2"] {
        let full = std::fs::read(dir().join(file)).unwrap();
        let step = (full.len() / 400).max(1);
        for len in (0..full.len()).step_by(step) {
            let r = std::panic::catch_unwind(|| import(&full[..len]));
            match r {
                Err(_) => panic!("{file}: import panicked on the first {len} bytes"),
                Ok(Ok(_)) => panic!("{file}: the first {len} bytes imported"),
                Ok(Err(Error::Internal(m))) => panic!("{file}: internal error: {m}"),
                Ok(Err(_)) => {}
            }
        }
        let mut rng = cpucc::random::SplitMix64::new(3);
        for _ in 0..200 {
            let mut b = full.clone();
            for _ in 0..4 {
                let i = (rng.next_u64() as usize) % b.len();
                b[i] = rng.next_u64() as u8;
            }
            let r = std::panic::catch_unwind(|| import(&b));
            assert!(r.is_ok(), "{file}: import panicked on a corrupted archive");
        }
    }
}

#[test]
fn pt2_shapes_are_checked_against_the_export() {
    let mut opts = ImportOptions::default();
    opts.shapes.insert("x".into(), vec![1, 16, 30, 30]);
    let e = load(&dir().join("conv_relu.pt2"), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match the exported shape"), "{e}");
    let input = npy("conv_relu.input0.npy");
    assert_eq!(input.shape(), [1, 16, 32, 32]);
}
