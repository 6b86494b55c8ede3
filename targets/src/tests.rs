//! Parsing, implication and error tests for target specs.

use super::*;

fn feats(t: &Target) -> Vec<&str> {
    t.features.iter().map(String::as_str).collect()
}

#[test]
fn every_preset_parses_by_name() {
    let all = presets();
    assert_eq!(all.len(), 13);
    for p in all {
        let t = Target::parse(&p.target.name).unwrap();
        assert_eq!(t, p.target);
        let want = match t.arch() {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        };
        assert_eq!(t.triple.to_string(), want);
    }
}

#[test]
fn x86_levels_are_cumulative() {
    let v1 = Target::parse("x86-64").unwrap();
    let v2 = Target::parse("x86-64-v2").unwrap();
    let v3 = Target::parse("x86-64-v3").unwrap();
    let v4 = Target::parse("x86-64-v4").unwrap();
    assert_eq!(feats(&v1), ["sse2"]);
    assert!(v1.features.is_subset(&v2.features));
    assert!(v2.features.is_subset(&v3.features));
    assert!(v3.features.is_subset(&v4.features));
    for f in ["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt"] {
        assert!(v2.has(f), "{f}");
    }
    assert!(!v2.has("avx"));
    for f in ["avx", "avx2", "fma", "bmi2"] {
        assert!(v3.has(f), "{f}");
    }
    assert!(!v3.has("avx512f"));
    for f in ["avx512f", "avx512bw", "avx512dq", "avx512vl"] {
        assert!(v4.has(f), "{f}");
    }
}

#[test]
fn preset_facts() {
    let spr = Target::parse("sapphirerapids").unwrap();
    for f in [
        "amx-tile",
        "amx-bf16",
        "amx-int8",
        "avx512fp16",
        "avx512bf16",
    ] {
        assert!(spr.has(f), "{f}");
    }
    assert!(!Target::parse("znver4").unwrap().has("amx-tile"));
    assert!(!Target::parse("icelake-server").unwrap().has("avx512bf16"));
    let g2 = Target::parse("graviton2").unwrap();
    let g3 = Target::parse("graviton3").unwrap();
    let g4 = Target::parse("graviton4").unwrap();
    assert_eq!(
        (g2.sve_bits, g3.sve_bits, g4.sve_bits),
        (None, Some(256), Some(128))
    );
    assert!(!g2.has("sve") && g2.has("dotprod"));
    assert!(g3.has("sve") && !g3.has("sve2") && g3.has("bf16") && g3.has("i8mm"));
    assert!(g4.has("sve2"));
    assert_eq!(g3.caches.l1d, 64 * 1024);
    assert_eq!(feats(&Target::parse("aarch64").unwrap()), ["neon"]);
}

#[test]
fn implications_close_the_set() {
    let t = Target::parse("x86_64+avx512f").unwrap();
    for f in [
        "avx2", "avx", "fma", "f16c", "sse4.2", "sse4.1", "ssse3", "sse3", "sse2",
    ] {
        assert!(t.has(f), "{f}");
    }
    assert!(!t.has("avx512bw"));
    let t = Target::parse("aarch64+sve2").unwrap();
    assert_eq!(feats(&t), ["fp16", "neon", "sve", "sve2"]);
    assert_eq!(t.sve_bits, Some(128));
    let t = Target::parse("x86_64+amx-int8").unwrap();
    assert!(t.has("amx-tile"));
}

#[test]
fn removal_takes_dependents_along() {
    let t = Target::parse("x86-64-v4-avx2").unwrap();
    assert!(!t.has("avx2"));
    for f in ["avx512f", "avx512bw", "avx512vl"] {
        assert!(!t.has(f), "{f}");
    }
    assert!(t.has("avx") && t.has("fma") && t.has("bmi2"));
    let t = Target::parse("graviton3+bf16,-sve").unwrap();
    assert!(!t.has("sve") && t.has("bf16") && t.has("neon"));
    assert_eq!(t.sve_bits, None);
    let t = Target::parse("graviton4-sve").unwrap();
    assert!(!t.has("sve2"));
}

#[test]
fn triples_and_modifiers() {
    let t = Target::parse("x86_64+avx2,+fma").unwrap();
    assert_eq!(t.triple.to_string(), "x86_64-unknown-linux-gnu");
    assert!(t.has("avx2") && t.has("fma") && !t.has("avx512f"));
    assert_eq!(t.name, "x86_64+avx2,+fma");
    let t = Target::parse("aarch64-unknown-linux-gnu+dotprod").unwrap();
    assert_eq!(t.arch(), Arch::Aarch64);
    assert!(t.has("dotprod") && t.has("neon"));
    let t = Target::parse("x86_64-unknown-linux-gnu").unwrap();
    assert_eq!(feats(&t), ["sse2"]);
    assert!(Target::parse("x86_64-unknown-linux-musl").is_ok());
    // The same feature twice, or added then removed, is fine.
    let t = Target::parse("aarch64+sve,+sve,-sve").unwrap();
    assert!(!t.has("sve"));
}

#[test]
fn errors_name_what_is_known() {
    let e = Target::parse("graviton9").unwrap_err();
    assert!(matches!(e, TargetError::UnknownTarget { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("'graviton9'") && msg.contains("graviton3") && msg.contains("native"));

    let e = Target::parse("graviton3+avx2").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TargetError::UnknownFeature { .. }), "{msg}");
    assert!(msg.contains("'avx2'") && msg.contains("sve2"), "{msg}");

    let e = Target::parse("x86-64-v3-bogus").unwrap_err();
    assert!(e.to_string().contains("'bogus'"), "{e}");

    for bad in [
        "x86_64-apple-darwin",
        "riscv64gc-unknown-linux-gnu",
        "x86_64-pc-windows-msvc",
        "armv7-unknown-linux-gnueabihf",
    ] {
        let e = Target::parse(bad).unwrap_err();
        assert!(
            matches!(e, TargetError::UnsupportedTriple { .. }),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains(bad));
    }

    for bad in [
        "graviton3+",
        "graviton3+sve,",
        "graviton3+sve,bf16",
        "x86_64+avx2,,+fma",
    ] {
        let e = Target::parse(bad).unwrap_err();
        assert!(matches!(e, TargetError::BadModifiers { .. }), "{bad}: {e}");
    }
    assert!(matches!(
        Target::parse(""),
        Err(TargetError::UnknownTarget { .. })
    ));
}

#[test]
fn native_is_the_host() {
    let t = Target::parse("native").unwrap();
    assert_eq!(t, Target::host());
    assert!(t.is_host());
    t.runs_on_host().unwrap();
    assert!(t.has(t.arch().baseline()));
    assert!(t.caches.l1d >= 4096 && t.caches.l2 >= t.caches.l1d);
    assert!(t.cores_hint.is_some_and(|c| c >= 1));
    // Every detected feature is a known one, so it round-trips through specs.
    for f in &t.features {
        assert!(features::is_known(t.arch(), f), "{f}");
    }
}

#[test]
fn foreign_targets_do_not_run_here() {
    let other = match host::ARCH {
        Arch::X86_64 => "graviton3",
        Arch::Aarch64 => "x86-64",
    };
    let t = Target::parse(other).unwrap();
    assert!(!t.is_host());
    let e = t.runs_on_host().unwrap_err();
    assert!(e.contains(other), "{e}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn missing_host_features_are_named() {
    // Pick a feature the host lacks; a host with all of them runs everything.
    let host = Target::host();
    let lacking = features::known(Arch::X86_64).find(|f| !host.has(f));
    match lacking {
        Some(f) => {
            let t = Target::parse(&format!("x86_64+{f}")).unwrap();
            let e = t.runs_on_host().unwrap_err();
            assert!(e.contains(f), "{e}");
        }
        None => Target::parse("sapphirerapids")
            .unwrap()
            .runs_on_host()
            .unwrap(),
    }
}
