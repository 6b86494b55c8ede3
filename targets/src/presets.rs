//! The named CPU presets: ISA features, SVE vector length, cache sizes and a
//! typical core count of the cloud instance or SKU each name stands for.
//! Cache sizes are per core for L1d/L2 and the L3 one core can reach (one
//! socket, one CCD on Zen), in bytes.

use crate::{Arch, Caches};

pub(crate) struct PresetDef {
    pub name: &'static str,
    pub arch: Arch,
    pub about: &'static str,
    pub features: &'static [&'static str],
    pub sve_bits: Option<u32>,
    pub caches: Caches,
    pub cores: Option<u32>,
}

const K: usize = 1024;
const M: usize = 1024 * 1024;

const fn caches(l1d: usize, l2: usize, l3: usize) -> Caches {
    Caches { l1d, l2, l3 }
}

/// What a target with no better knowledge assumes.
pub(crate) const GENERIC_CACHES: Caches = caches(32 * K, 256 * K, 8 * M);

const V2: &[&str] = &["sse4.2", "popcnt"];
const V3: &[&str] = &[
    "sse4.2", "popcnt", "avx2", "fma", "f16c", "bmi1", "bmi2", "lzcnt",
];
const V4: &[&str] = &[
    "sse4.2", "popcnt", "avx2", "fma", "f16c", "bmi1", "bmi2", "lzcnt", "avx512f", "avx512cd",
    "avx512bw", "avx512dq", "avx512vl",
];
const ICX: &[&str] = &[
    "sse4.2",
    "popcnt",
    "avx2",
    "fma",
    "f16c",
    "bmi1",
    "bmi2",
    "lzcnt",
    "avx512f",
    "avx512cd",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512vnni",
    "avx512vbmi",
];
const SPR: &[&str] = &[
    "sse4.2",
    "popcnt",
    "avx2",
    "fma",
    "f16c",
    "bmi1",
    "bmi2",
    "lzcnt",
    "avx512f",
    "avx512cd",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512vnni",
    "avx512vbmi",
    "avx512bf16",
    "avx512fp16",
    "avxvnni",
    "amx-tile",
    "amx-bf16",
    "amx-int8",
];
const ZEN4: &[&str] = &[
    "sse4.2",
    "popcnt",
    "avx2",
    "fma",
    "f16c",
    "bmi1",
    "bmi2",
    "lzcnt",
    "avx512f",
    "avx512cd",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512vnni",
    "avx512vbmi",
    "avx512bf16",
];

pub(crate) const PRESETS: &[PresetDef] = &[
    PresetDef {
        name: "x86-64",
        arch: Arch::X86_64,
        about: "baseline x86-64 (SSE2)",
        features: &["sse2"],
        sve_bits: None,
        caches: GENERIC_CACHES,
        cores: None,
    },
    PresetDef {
        name: "x86-64-v2",
        arch: Arch::X86_64,
        about: "x86-64 level 2 (SSE4.2, POPCNT)",
        features: V2,
        sve_bits: None,
        caches: GENERIC_CACHES,
        cores: None,
    },
    PresetDef {
        name: "x86-64-v3",
        arch: Arch::X86_64,
        about: "x86-64 level 3 (AVX2, FMA, BMI2)",
        features: V3,
        sve_bits: None,
        caches: GENERIC_CACHES,
        cores: None,
    },
    PresetDef {
        name: "x86-64-v4",
        arch: Arch::X86_64,
        about: "x86-64 level 4 (AVX-512 F/CD/BW/DQ/VL)",
        features: V4,
        sve_bits: None,
        caches: caches(32 * K, M, 16 * M),
        cores: None,
    },
    PresetDef {
        name: "skylake-avx512",
        arch: Arch::X86_64,
        about: "Intel Skylake-SP (AWS c5/m5, Xeon Platinum 8175M)",
        features: V4,
        sve_bits: None,
        caches: caches(32 * K, M, 33 * M),
        cores: Some(24),
    },
    PresetDef {
        name: "icelake-server",
        arch: Arch::X86_64,
        about: "Intel Ice Lake-SP (AWS c6i/m6i, Xeon Platinum 8375C)",
        features: ICX,
        sve_bits: None,
        caches: caches(48 * K, 1280 * K, 54 * M),
        cores: Some(32),
    },
    PresetDef {
        name: "sapphirerapids",
        arch: Arch::X86_64,
        about: "Intel Sapphire Rapids (AWS c7i/m7i, Xeon Platinum 8488C; AMX)",
        features: SPR,
        sve_bits: None,
        caches: caches(48 * K, 2 * M, 105 * M),
        cores: Some(48),
    },
    PresetDef {
        name: "emeraldrapids",
        arch: Arch::X86_64,
        about: "Intel Emerald Rapids (Xeon Platinum 8592+; AMX)",
        features: SPR,
        sve_bits: None,
        caches: caches(48 * K, 2 * M, 320 * M),
        cores: Some(64),
    },
    PresetDef {
        name: "znver4",
        arch: Arch::X86_64,
        about: "AMD Zen 4 (AWS c7a/m7a, EPYC 9R14; L3 per CCD)",
        features: ZEN4,
        sve_bits: None,
        caches: caches(32 * K, M, 32 * M),
        cores: Some(96),
    },
    PresetDef {
        name: "aarch64",
        arch: Arch::Aarch64,
        about: "baseline Armv8-A (NEON)",
        features: &["neon"],
        sve_bits: None,
        caches: GENERIC_CACHES,
        cores: None,
    },
    PresetDef {
        name: "graviton2",
        arch: Arch::Aarch64,
        about: "AWS Graviton2 (Neoverse N1; NEON, dotprod, no SVE)",
        features: &["neon", "fp16", "dotprod", "lse"],
        sve_bits: None,
        caches: caches(64 * K, M, 32 * M),
        cores: Some(64),
    },
    PresetDef {
        name: "graviton3",
        arch: Arch::Aarch64,
        about: "AWS Graviton3 (Neoverse V1; SVE 256-bit, bf16, i8mm)",
        features: &["neon", "fp16", "dotprod", "lse", "bf16", "i8mm", "sve"],
        sve_bits: Some(256),
        caches: caches(64 * K, M, 32 * M),
        cores: Some(64),
    },
    PresetDef {
        name: "graviton4",
        arch: Arch::Aarch64,
        about: "AWS Graviton4 (Neoverse V2; SVE2 128-bit, bf16, i8mm)",
        features: &[
            "neon", "fp16", "dotprod", "lse", "bf16", "i8mm", "sve", "sve2",
        ],
        sve_bits: Some(128),
        caches: caches(64 * K, 2 * M, 36 * M),
        cores: Some(96),
    },
];

pub(crate) fn find(name: &str) -> Option<&'static PresetDef> {
    PRESETS.iter().find(|p| p.name == name)
}
