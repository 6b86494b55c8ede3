//! `cpucc targets`: the named presets with triple, key features, SVE length
//! and caches, and what `native` (this machine) resolves to.

use cpucc::Result;
use cpucc_targets::{Target, features, presets};

#[derive(clap::Args)]
pub struct Args {
    /// Show one target spec in full (e.g. `graviton3+bf16,-sve`, `native`).
    spec: Option<String>,
}

/// Features worth a column: the widest vector ISA and its extensions.
const KEY: &[&str] = &[
    "sse2",
    "sse4.2",
    "avx2",
    "fma",
    "avx512f",
    "avx512vnni",
    "avx512bf16",
    "avx512fp16",
    "amx-tile",
    "neon",
    "fp16",
    "dotprod",
    "bf16",
    "i8mm",
    "sve",
    "sve2",
];

fn key_features(t: &Target) -> String {
    let shown: Vec<&str> = KEY.iter().copied().filter(|f| t.has(f)).collect();
    // Drop what another shown feature implies (avx2 under avx512f).
    let implied = |f: &str| {
        shown
            .iter()
            .any(|g| *g != f && features::closure(t.arch(), g).contains(&f))
    };
    let keep: Vec<&str> = shown.iter().copied().filter(|f| !implied(f)).collect();
    keep.join(" ")
}

fn size(bytes: usize) -> String {
    const M: usize = 1024 * 1024;
    if bytes >= M && bytes.is_multiple_of(M) {
        format!("{}M", bytes / M)
    } else if bytes >= M {
        format!("{:.2}M", bytes as f64 / M as f64)
    } else {
        format!("{}K", bytes / 1024)
    }
}

fn row(name: &str, t: &Target, host: &str) {
    let sve = t.sve_bits.map_or("-".to_string(), |b| b.to_string());
    let cores = t.cores_hint.map_or("-".to_string(), |c| c.to_string());
    println!(
        "{name:<16} {:<26} {sve:>4} {:>5} {:>6} {:>7} {cores:>5}  {}{host}",
        t.triple.to_string(),
        size(t.caches.l1d),
        size(t.caches.l2),
        size(t.caches.l3),
        key_features(t)
    );
}

pub fn main(a: Args) -> Result<()> {
    if let Some(spec) = a.spec {
        let t = Target::parse(&spec).map_err(|e| cpucc::Error::Invalid(e.to_string()))?;
        println!("target:   {}", t.name);
        println!("triple:   {}", t.triple);
        println!(
            "features: {}",
            t.features.iter().cloned().collect::<Vec<_>>().join(" ")
        );
        println!(
            "sve bits: {}",
            t.sve_bits.map_or("none".to_string(), |b| b.to_string())
        );
        println!(
            "caches:   L1d {} L2 {} (per core), L3 {}",
            size(t.caches.l1d),
            size(t.caches.l2),
            size(t.caches.l3)
        );
        if let Some(c) = t.cores_hint {
            println!("cores:    {c}");
        }
        match t.runs_on_host() {
            Ok(()) => println!("runs on this machine: yes"),
            Err(why) => println!("runs on this machine: no ({why})"),
        }
        return Ok(());
    }
    let host = Target::host();
    println!(
        "{:<16} {:<26} {:>4} {:>5} {:>6} {:>7} {:>5}  key features",
        "name", "triple", "sve", "L1d", "L2", "L3", "cores"
    );
    for p in presets() {
        let mark = if p.target.features == host.features && p.target.arch() == host.arch() {
            "  (= native)"
        } else if p.target.runs_on_host().is_ok() {
            "  (runs here)"
        } else {
            ""
        };
        row(&p.target.name, &p.target, mark);
    }
    row("native", &host, "  (this machine)");
    println!();
    println!("A spec is a name or a triple (x86_64, aarch64-unknown-linux-gnu), optionally");
    println!("followed by +feature,-feature (e.g. graviton3+bf16,-sve). `cpucc targets SPEC`");
    println!("shows one in full.");
    Ok(())
}
