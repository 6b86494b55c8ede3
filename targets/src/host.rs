//! What the machine running cpucc is: ISA features (from the CPU, through
//! std's detection), cache sizes and core count (from Linux sysfs, with
//! generic fallbacks when sysfs is absent or unreadable).

use std::collections::{BTreeSet, HashSet};
use std::fs;

use crate::presets::GENERIC_CACHES;
use crate::{Arch, Caches};

#[cfg(target_arch = "x86_64")]
pub(crate) const ARCH: Arch = Arch::X86_64;
#[cfg(target_arch = "aarch64")]
pub(crate) const ARCH: Arch = Arch::Aarch64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("cpucc runs on x86-64 and aarch64 hosts only");

/// The host's features, by the names of [`crate::features`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn features() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    macro_rules! detect {
        ($($f:tt),*) => {
            $(if std::arch::is_x86_feature_detected!($f) { out.insert($f.to_string()); })*
        };
    }
    detect!(
        "sse2",
        "sse3",
        "ssse3",
        "sse4.1",
        "sse4.2",
        "popcnt",
        "avx",
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
        "avxvnni"
    );
    // std's AMX detection is unstable; the kernel's flags say the same.
    let flags = cpuinfo_flags();
    for (flag, name) in [
        ("amx_tile", "amx-tile"),
        ("amx_bf16", "amx-bf16"),
        ("amx_int8", "amx-int8"),
    ] {
        if flags.contains(flag) {
            out.insert(name.to_string());
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
fn cpuinfo_flags() -> HashSet<String> {
    let text = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

#[cfg(target_arch = "aarch64")]
pub(crate) fn features() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    macro_rules! detect {
        ($($f:tt),*) => {
            $(if std::arch::is_aarch64_feature_detected!($f) { out.insert($f.to_string()); })*
        };
    }
    detect!(
        "neon", "fp16", "dotprod", "bf16", "i8mm", "lse", "sve", "sve2"
    );
    out
}

/// The SVE vector length new processes get, in bits.
pub(crate) fn sve_bits(features: &BTreeSet<String>) -> Option<u32> {
    if !features.contains("sve") {
        return None;
    }
    let bytes: u32 = fs::read_to_string("/proc/sys/abi/sve_default_vector_length")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(bytes * 8)
}

/// Cache sizes of CPU 0 from sysfs, each falling back to the generic value.
pub(crate) fn caches() -> Caches {
    let mut c = GENERIC_CACHES;
    let Ok(dir) = fs::read_dir("/sys/devices/system/cpu/cpu0/cache") else {
        return c;
    };
    for entry in dir.flatten() {
        let p = entry.path();
        let read = |f: &str| fs::read_to_string(p.join(f)).map(|s| s.trim().to_string());
        let (Ok(level), Ok(kind), Ok(size)) = (read("level"), read("type"), read("size")) else {
            continue;
        };
        let Some(bytes) = parse_size(&size) else {
            continue;
        };
        match (level.as_str(), kind.as_str()) {
            ("1", "Data") => c.l1d = bytes,
            ("2", "Data" | "Unified") => c.l2 = bytes,
            ("3", "Data" | "Unified") => c.l3 = bytes,
            _ => {}
        }
    }
    c
}

/// sysfs sizes: `48K`, `2048K`, `105M`, or plain bytes.
fn parse_size(s: &str) -> Option<usize> {
    let (num, mul) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1024),
        b'M' => (&s[..s.len() - 1], 1024 * 1024),
        b'G' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<usize>().ok().map(|n| n * mul)
}

/// Physical cores this process may use: distinct (package, core) pairs in
/// sysfs, capped by the CPUs available to the process (affinity, cgroups).
pub fn physical_cores() -> usize {
    let avail = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cores = HashSet::new();
    if let Ok(dir) = fs::read_dir("/sys/devices/system/cpu") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_cpu = name
                .strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !is_cpu {
                continue;
            }
            let topo = entry.path().join("topology");
            let read = |f: &str| fs::read_to_string(topo.join(f)).ok();
            if let (Some(pkg), Some(core)) = (read("physical_package_id"), read("core_id")) {
                cores.insert((pkg.trim().to_string(), core.trim().to_string()));
            }
        }
    }
    if cores.is_empty() {
        avail
    } else {
        cores.len().min(avail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_sizes() {
        assert_eq!(parse_size("48K"), Some(48 * 1024));
        assert_eq!(parse_size("105M"), Some(105 * 1024 * 1024));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("xK"), None);
        assert_eq!(parse_size(""), None);
    }
}
