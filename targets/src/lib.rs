//! Compilation targets: named CPU presets (`graviton3`, `sapphirerapids`,
//! ...), target triples, and the host (`native`), each with ISA features,
//! SVE vector length and cache sizes for the code generator.
//!
//! Spec grammar (see ARCHITECTURE.md):
//!
//! ```text
//! spec  := base mods?
//! base  := preset | triple | "native"
//! mods  := mod ("," mod)*          e.g. graviton3+bf16,-sve   x86_64+avx2,+fma
//! mod   := ("+" | "-") feature
//! ```
//!
//! The base is the longest prefix of the spec that names a preset or a
//! supported triple and is followed by `+`, `-` or the end, so preset names
//! with dashes (`x86-64-v3-avx2`) still parse. `+f` adds `f` and what it
//! implies; `-f` removes `f` and every feature that implies it.

pub mod aarch64;
pub mod features;
mod host;
mod presets;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use target_lexicon::{Architecture, BinaryFormat, Environment, OperatingSystem, Triple, Vendor};

pub use host::physical_cores;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    fn triple(self) -> Triple {
        let arch = match self {
            Arch::X86_64 => Architecture::X86_64,
            Arch::Aarch64 => Architecture::Aarch64(target_lexicon::Aarch64Architecture::Aarch64),
        };
        Triple {
            architecture: arch,
            vendor: Vendor::Unknown,
            operating_system: OperatingSystem::Linux,
            environment: Environment::Gnu,
            binary_format: BinaryFormat::Elf,
        }
    }

    /// What every CPU of the architecture has.
    fn baseline(self) -> &'static str {
        match self {
            Arch::X86_64 => "sse2",
            Arch::Aarch64 => "neon",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Cache sizes in bytes: L1 data and L2 per core, L3 as one core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caches {
    pub l1d: usize,
    pub l2: usize,
    pub l3: usize,
}

/// A resolved compilation target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The spec it was parsed from (`native` for the host).
    pub name: String,
    /// Always `x86_64-unknown-linux-gnu` or `aarch64-unknown-linux-gnu` (ELF).
    pub triple: Triple,
    /// Closed under implication, LLVM spelling (`avx512f`, `sve`, ...).
    pub features: BTreeSet<String>,
    pub caches: Caches,
    /// The SVE vector length the code may assume; `None` without SVE.
    pub sve_bits: Option<u32>,
    /// Cores of a typical machine of this kind (the host's physical cores for
    /// `native`); `None` for generic targets.
    pub cores_hint: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "unknown target '{spec}'; known targets: {known}; or a triple such as x86_64-unknown-linux-gnu or aarch64 (optionally followed by +feature,-feature)"
    )]
    UnknownTarget { spec: String, known: String },
    #[error(
        "unsupported triple '{triple}': cpucc generates ELF code for x86_64 and aarch64 Linux only"
    )]
    UnsupportedTriple { triple: String },
    #[error("unknown {arch} feature '{feature}' in '{spec}'; known {arch} features: {known}")]
    UnknownFeature {
        spec: String,
        arch: Arch,
        feature: String,
        known: String,
    },
    #[error(
        "bad feature list '{mods}' in '{spec}': expected +feature or -feature items separated by commas"
    )]
    BadModifiers { spec: String, mods: String },
}

/// A named preset and a one-line description, for listings.
pub struct Preset {
    pub about: &'static str,
    pub target: Target,
}

/// Every named preset (not `native`), in a stable order.
pub fn presets() -> Vec<Preset> {
    presets::PRESETS
        .iter()
        .map(|p| Preset {
            about: p.about,
            target: from_preset(p),
        })
        .collect()
}

fn known_targets() -> String {
    let mut names: Vec<&str> = presets::PRESETS.iter().map(|p| p.name).collect();
    names.push("native");
    names.join(", ")
}

fn closed(arch: Arch, fs: &[&str]) -> BTreeSet<String> {
    fs.iter()
        .flat_map(|f| features::closure(arch, f))
        .chain(features::closure(arch, arch.baseline()))
        .map(str::to_string)
        .collect()
}

fn from_preset(p: &presets::PresetDef) -> Target {
    Target {
        name: p.name.to_string(),
        triple: p.arch.triple(),
        features: closed(p.arch, p.features),
        caches: p.caches,
        sve_bits: p.sve_bits,
        cores_hint: p.cores,
    }
}

fn from_arch(name: &str, arch: Arch) -> Target {
    Target {
        name: name.to_string(),
        triple: arch.triple(),
        features: closed(arch, &[]),
        caches: presets::GENERIC_CACHES,
        sve_bits: None,
        cores_hint: None,
    }
}

/// Resolves a base name: `Ok(None)` when it is no target name at all (so a
/// shorter prefix may be tried), an error when it is a triple we reject.
fn base(name: &str) -> Result<Option<Target>, TargetError> {
    if name == "native" {
        return Ok(Some(Target::host()));
    }
    if let Some(p) = presets::find(name) {
        return Ok(Some(from_preset(p)));
    }
    let Ok(t) = Triple::from_str(name) else {
        return Ok(None);
    };
    // target-lexicon takes any word as a custom vendor: a preset name with a
    // modifier glued on (`x86_64-sve`) is not a triple.
    if matches!(t.vendor, Vendor::Custom(_)) {
        return Ok(None);
    }
    let arch = match t.architecture {
        Architecture::X86_64 => Arch::X86_64,
        Architecture::Aarch64(target_lexicon::Aarch64Architecture::Aarch64) => Arch::Aarch64,
        _ => return Err(unsupported(name)),
    };
    let os_ok = matches!(
        t.operating_system,
        OperatingSystem::Linux | OperatingSystem::Unknown
    );
    let env_ok = matches!(
        t.environment,
        Environment::Gnu | Environment::Musl | Environment::Unknown
    );
    let fmt_ok = matches!(t.binary_format, BinaryFormat::Elf | BinaryFormat::Unknown);
    let vendor_ok = matches!(t.vendor, Vendor::Unknown | Vendor::Pc);
    // A short triple (`x86_64`) means Linux; a full one must say so.
    let short = !name.contains('-');
    if !(os_ok && env_ok && fmt_ok && vendor_ok)
        || (!short && t.operating_system != OperatingSystem::Linux)
    {
        return Err(unsupported(name));
    }
    Ok(Some(from_arch(name, arch)))
}

fn unsupported(name: &str) -> TargetError {
    TargetError::UnsupportedTriple {
        triple: name.to_string(),
    }
}

impl Target {
    /// Parses a target spec (grammar in the crate docs).
    pub fn parse(spec: &str) -> Result<Target, TargetError> {
        let spec = spec.trim();
        let mut cuts: Vec<usize> = spec
            .char_indices()
            .filter(|&(i, c)| i > 0 && (c == '+' || c == '-'))
            .map(|(i, _)| i)
            .collect();
        cuts.push(spec.len());
        for &cut in cuts.iter().rev() {
            if let Some(mut t) = base(&spec[..cut])? {
                t.apply(spec, &spec[cut..])?;
                t.name = spec.to_string();
                return Ok(t);
            }
        }
        let shown = spec.split([',', '+']).next().unwrap_or(spec);
        Err(TargetError::UnknownTarget {
            spec: shown.to_string(),
            known: known_targets(),
        })
    }

    /// The machine running this process, with detected features and caches.
    pub fn host() -> Target {
        let features = host::features();
        let arch = host::ARCH;
        Target {
            name: "native".to_string(),
            triple: arch.triple(),
            sve_bits: host::sve_bits(&features),
            features: features
                .iter()
                .flat_map(|f| features::closure(arch, f))
                .map(str::to_string)
                .collect(),
            caches: host::caches(),
            cores_hint: u32::try_from(physical_cores()).ok(),
        }
    }

    fn apply(&mut self, spec: &str, mods: &str) -> Result<(), TargetError> {
        if mods.is_empty() {
            return Ok(());
        }
        let arch = self.arch();
        for item in mods.split(',') {
            let (on, feature) = match item.split_at_checked(1) {
                Some(("+", f)) if !f.is_empty() => (true, f),
                Some(("-", f)) if !f.is_empty() => (false, f),
                _ => {
                    return Err(TargetError::BadModifiers {
                        spec: spec.to_string(),
                        mods: mods.to_string(),
                    });
                }
            };
            if !features::is_known(arch, feature) {
                return Err(TargetError::UnknownFeature {
                    spec: spec.to_string(),
                    arch,
                    feature: feature.to_string(),
                    known: features::known(arch).collect::<Vec<_>>().join(", "),
                });
            }
            if on {
                self.features.extend(
                    features::closure(arch, feature)
                        .into_iter()
                        .map(str::to_string),
                );
            } else {
                for f in features::dependents(arch, feature) {
                    self.features.remove(f);
                }
            }
        }
        self.sve_bits = match (self.has("sve"), self.sve_bits) {
            (false, _) => None,
            // SVE's minimum vector length is the only one every SVE CPU has.
            (true, None) => Some(128),
            (true, bits) => bits,
        };
        Ok(())
    }

    pub fn has(&self, feature: &str) -> bool {
        self.features.contains(feature)
    }

    pub fn arch(&self) -> Arch {
        match self.triple.architecture {
            Architecture::X86_64 => Arch::X86_64,
            _ => Arch::Aarch64,
        }
    }

    /// The target has the host's architecture (its code is native here,
    /// feature support aside: see [`Target::runs_on_host`]).
    pub fn is_host(&self) -> bool {
        self.arch() == host::ARCH
    }

    /// Whether code for this target can run on this machine; the error says
    /// why not (another architecture, missing features, another SVE length).
    pub fn runs_on_host(&self) -> Result<(), String> {
        if !self.is_host() {
            return Err(format!(
                "target '{}' is {}, this machine is {}",
                self.name,
                self.arch(),
                host::ARCH
            ));
        }
        let host = host::features();
        let missing: Vec<&str> = self
            .features
            .iter()
            .filter(|f| !host.contains(*f))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "target '{}' needs {} which this machine lacks",
                self.name,
                missing.join(", ")
            ));
        }
        let host_sve = host::sve_bits(&host);
        if self.sve_bits.is_some() && self.sve_bits != host_sve {
            return Err(format!(
                "target '{}' assumes {}-bit SVE, this machine has {}",
                self.name,
                self.sve_bits.unwrap_or(0),
                host_sve.map_or("none".to_string(), |b| format!("{b}-bit"))
            ));
        }
        Ok(())
    }
}

impl FromStr for Target {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Target, TargetError> {
        Target::parse(s)
    }
}

#[cfg(test)]
mod tests;
