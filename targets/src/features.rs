//! ISA feature names (LLVM spelling) per architecture and the implications
//! between them, so a target's feature set is always closed: `avx512f`
//! brings `avx2`, `fma`, `f16c`, ... and `sve` brings `neon` and `fp16`.

use crate::Arch;

/// `(feature, features it directly implies)` for x86-64.
const X86: &[(&str, &[&str])] = &[
    ("sse2", &[]),
    ("sse3", &["sse2"]),
    ("ssse3", &["sse3"]),
    ("sse4.1", &["ssse3"]),
    ("sse4.2", &["sse4.1"]),
    ("popcnt", &[]),
    ("avx", &["sse4.2"]),
    ("avx2", &["avx"]),
    ("fma", &["avx"]),
    ("f16c", &["avx"]),
    ("bmi1", &[]),
    ("bmi2", &[]),
    ("lzcnt", &[]),
    ("avx512f", &["avx2", "fma", "f16c"]),
    ("avx512cd", &["avx512f"]),
    ("avx512bw", &["avx512f"]),
    ("avx512dq", &["avx512f"]),
    ("avx512vl", &["avx512f"]),
    ("avx512vnni", &["avx512f"]),
    ("avx512vbmi", &["avx512bw"]),
    ("avx512bf16", &["avx512bw"]),
    ("avx512fp16", &["avx512bw", "avx512dq", "avx512vl"]),
    ("avxvnni", &["avx2"]),
    ("amx-tile", &[]),
    ("amx-bf16", &["amx-tile"]),
    ("amx-int8", &["amx-tile"]),
];

/// The same for aarch64.
const AARCH64: &[(&str, &[&str])] = &[
    ("neon", &[]),
    ("fp16", &["neon"]),
    ("dotprod", &["neon"]),
    ("bf16", &["neon"]),
    ("i8mm", &["neon"]),
    ("lse", &[]),
    ("sve", &["neon", "fp16"]),
    ("sve2", &["sve"]),
];

fn table(arch: Arch) -> &'static [(&'static str, &'static [&'static str])] {
    match arch {
        Arch::X86_64 => X86,
        Arch::Aarch64 => AARCH64,
    }
}

/// Every feature name known for `arch`, in table order.
pub fn known(arch: Arch) -> impl Iterator<Item = &'static str> {
    table(arch).iter().map(|(f, _)| *f)
}

pub fn is_known(arch: Arch, feature: &str) -> bool {
    known(arch).any(|f| f == feature)
}

/// `feature` and everything it implies, transitively.
pub fn closure(arch: Arch, feature: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    let mut stack = vec![feature];
    while let Some(f) = stack.pop() {
        if let Some((name, implied)) = table(arch).iter().find(|(n, _)| *n == f)
            && !out.contains(name)
        {
            out.push(name);
            stack.extend(implied.iter().copied());
        }
    }
    out
}

/// `feature` and everything that implies it, transitively: what disabling
/// `feature` must also disable.
pub fn dependents(arch: Arch, feature: &str) -> Vec<&'static str> {
    known(arch)
        .filter(|f| closure(arch, f).contains(&feature))
        .collect()
}
