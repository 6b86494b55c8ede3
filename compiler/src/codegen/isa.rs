//! Cranelift ISA for a target: the triple plus the target's features mapped
//! onto Cranelift's ISA flags. Features Cranelift has no flag for (AVX-512
//! BF16, AMX, SVE, ...) only matter to the hand-written microkernels.

use cpucc_targets::Target;
use cranelift_codegen::isa::{self, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use target_lexicon::Architecture;

use crate::error::{Error, Result};

/// Our feature names (LLVM spelling) and the Cranelift flag each enables.
const X86_FLAGS: &[(&str, &str)] = &[
    ("sse3", "has_sse3"),
    ("ssse3", "has_ssse3"),
    ("sse4.1", "has_sse41"),
    ("sse4.2", "has_sse42"),
    ("popcnt", "has_popcnt"),
    ("avx", "has_avx"),
    ("avx2", "has_avx2"),
    ("fma", "has_fma"),
    ("bmi", "has_bmi1"),
    ("bmi2", "has_bmi2"),
    ("lzcnt", "has_lzcnt"),
    ("avx512f", "has_avx512f"),
    ("avx512vl", "has_avx512vl"),
    ("avx512dq", "has_avx512dq"),
    ("avx512vnni", "has_avx512vnni"),
];
const ARM_FLAGS: &[(&str, &str)] = &[
    ("lse", "has_lse"),
    ("fp16", "has_fp16"),
    ("dotprod", "has_dotprod"),
    ("i8mm", "has_i8mm"),
];

/// Builds the ISA. `pic` is for objects linked into position-independent
/// executables; the JIT wants it off.
pub fn build(target: &Target, pic: bool) -> Result<OwnedTargetIsa> {
    let (triple, features) = (&target.triple, &target.features);
    let mut shared = settings::builder();
    let set = |b: &mut settings::Builder, k: &str, v: &str| {
        b.set(k, v)
            .map_err(|e| Error::Internal(format!("cranelift setting {k}={v}: {e}")))
    };
    set(&mut shared, "opt_level", "speed")?;
    set(&mut shared, "is_pic", if pic { "true" } else { "false" })?;
    set(
        &mut shared,
        "enable_verifier",
        if cfg!(debug_assertions) {
            "true"
        } else {
            "false"
        },
    )?;
    set(&mut shared, "preserve_frame_pointers", "true")?;
    if triple.architecture == Architecture::X86_64 {
        // Kernels with stack buffers (blocked convolution) have frames
        // larger than a guard page: probe them page by page.
        set(&mut shared, "enable_probestack", "true")?;
        set(&mut shared, "probestack_strategy", "inline")?;
    }
    let mut b = isa::lookup(triple.clone())
        .map_err(|e| Error::Unsupported(format!("no code generator for {triple}: {e}")))?;
    let table = match triple.architecture {
        Architecture::X86_64 => X86_FLAGS,
        Architecture::Aarch64(_) => ARM_FLAGS,
        a => bail!(
            Unsupported,
            "architecture {a} (cpucc targets x86_64 and aarch64)"
        ),
    };
    for (feat, flag) in table {
        if features.contains(*feat) {
            b.enable(flag)
                .map_err(|e| Error::Internal(format!("cranelift flag {flag}: {e}")))?;
        }
    }
    b.finish(settings::Flags::new(shared))
        .map_err(|e| Error::Internal(format!("cranelift ISA for {triple}: {e}")))
}

/// Whether the target fuses multiply-add in hardware; without it Cranelift
/// would lower `fma` to a libm call, so kernels use mul + add instead.
/// Whether GEMMs may use the AVX-512 machine-code microkernels.
pub fn has_avx512(target: &Target) -> bool {
    matches!(target.triple.architecture, Architecture::X86_64) && target.has("avx512f")
}

/// Whether GEMMs may use the SVE machine-code microkernels.
pub fn has_sve(target: &Target) -> bool {
    is_aarch64(target) && target.has("sve")
}

pub fn is_aarch64(target: &Target) -> bool {
    matches!(target.triple.architecture, Architecture::Aarch64(_))
}

pub fn has_fma(target: &Target) -> bool {
    match target.triple.architecture {
        Architecture::Aarch64(_) => true,
        _ => target.has("fma"),
    }
}
