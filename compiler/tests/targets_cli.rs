//! `cpucc targets`: the listing, one spec in full, and bad specs (exit 2,
//! one line naming what is known).

use std::process::Command;

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

#[test]
fn lists_every_preset_and_the_host() {
    let (code, out, err) = cpucc(&["targets"]);
    assert_eq!(code, 0, "{err}");
    for p in cpucc_targets::presets() {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(p.target.name.as_str()))
            .unwrap_or_else(|| panic!("no row for {}:\n{out}", p.target.name));
        assert!(line.contains(&p.target.triple.to_string()), "{line}");
    }
    let g3 = out.lines().find(|l| l.starts_with("graviton3 ")).unwrap();
    assert!(
        g3.contains(" 256 ") && g3.contains("sve") && g3.contains("64K"),
        "{g3}"
    );
    let native = out.lines().find(|l| l.starts_with("native ")).unwrap();
    assert!(native.contains("(this machine)"), "{native}");
}

#[test]
fn shows_one_spec_in_full() {
    let (code, out, err) = cpucc(&["targets", "graviton3+bf16,-sve"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("aarch64-unknown-linux-gnu"), "{out}");
    assert!(out.contains("sve bits: none"), "{out}");
    let feats = out.lines().find(|l| l.starts_with("features:")).unwrap();
    assert!(feats.contains("bf16") && !feats.contains("sve"), "{feats}");
    let (code, out, _) = cpucc(&["targets", "native"]);
    assert_eq!(code, 0);
    assert!(out.contains("runs on this machine: yes"), "{out}");
}

#[test]
fn bad_specs_exit_2_with_one_line() {
    for (spec, needles) in [
        (
            "graviton9",
            &["unknown target 'graviton9'", "graviton3", "native"][..],
        ),
        (
            "graviton3+avx2",
            &["unknown aarch64 feature 'avx2'", "sve2"][..],
        ),
        (
            "x86_64-apple-darwin",
            &["unsupported triple", "x86_64 and aarch64 Linux"][..],
        ),
    ] {
        let (code, _, err) = cpucc(&["targets", spec]);
        assert_eq!(code, 2, "{spec}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        for n in needles {
            assert!(err.contains(n), "{spec}: {err:?} lacks {n:?}");
        }
    }
}
