//! `cargo xtask conformance`: generates the ONNX node tests from the pinned
//! onnx wheel (cached under target/), runs them all, prints a per-op table,
//! and with `--check` fails if any test on the committed pass list regressed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use cpucc_tests::conformance::{self, CaseResult, Engine, Outcome};

use crate::venv;

#[derive(clap::Args)]
pub struct Args {
    /// Only run tests whose name contains this; prints each result.
    #[arg(long)]
    filter: Option<String>,
    /// Fail if a test listed in tests/conformance/expected_pass.txt fails.
    #[arg(long)]
    check: bool,
    /// Rewrite tests/conformance/expected_pass.txt with the passing tests.
    #[arg(long)]
    bless: bool,
    /// Print every failing and unsupported test with its reason.
    #[arg(long)]
    verbose: bool,
    /// What runs the models: the reference interpreter or native code
    /// compiled in-process for the host.
    #[arg(long, value_enum, default_value_t = EngineArg::Interp)]
    engine: EngineArg,
    /// Run native code for this target instead (e.g. graviton3: objects
    /// linked with the C harness and run under qemu-aarch64).
    #[arg(long, conflicts_with = "engine")]
    target: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    Interp,
    Jit,
}

impl Args {
    /// The floor check CI runs.
    pub fn check(engine: EngineArg) -> Args {
        Args {
            filter: None,
            check: true,
            bless: false,
            verbose: false,
            engine,
            target: None,
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(120);

/// The committed pass list of an engine: the floor `--check` enforces.
fn expected_path(args: &Args) -> PathBuf {
    let file = match (&args.target, args.engine) {
        (Some(t), _) => format!("expected_pass_{t}.txt"),
        (None, EngineArg::Interp) => "expected_pass.txt".to_string(),
        (None, EngineArg::Jit) => "expected_pass_jit.txt".to_string(),
    };
    venv::root().join("tests/conformance").join(file)
}

/// Generates the node tests once per requirements file.
fn data_dir() -> anyhow::Result<PathBuf> {
    let root = venv::root();
    let dir = root.join("target/onnx-node-tests");
    let stamp = dir.join(".stamp");
    let want = std::fs::read_to_string(root.join("xtask/py/requirements.txt"))?
        + &std::fs::read_to_string(root.join("xtask/py/gen_node_tests.py"))?;
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        let py = venv::python()?;
        venv::run(
            Command::new(py)
                .arg(root.join("xtask/py/gen_node_tests.py"))
                .arg(&dir),
        )?;
        std::fs::write(&stamp, want)?;
    }
    Ok(dir)
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let dir = data_dir()?;
    let cases = conformance::cases(&dir, args.filter.as_deref())?;
    // A hang is a bug to report, not something to wait out.
    // The watchdog stops once the run clears `current`.
    let current: Arc<Mutex<Option<(String, Instant)>>> = Arc::new(Mutex::new(None));
    let watch = current.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(5));
            let Some((name, since)) = watch.lock().expect("watchdog lock").clone() else {
                return;
            };
            if since.elapsed() > TIMEOUT {
                eprintln!("HANG: {name} ran for more than {TIMEOUT:?}");
                std::process::exit(1);
            }
        }
    });
    // Panics are caught and reported per test; keep their messages short.
    std::panic::set_hook(Box::new(|_| {}));
    let engine = match (&args.target, args.engine) {
        (Some(spec), _) => Engine::Cross(cpucc::codegen::Target::parse(spec)?),
        (None, EngineArg::Interp) => Engine::Interp,
        (None, EngineArg::Jit) => Engine::Jit,
    };
    let start = Instant::now();
    let mut results = Vec::with_capacity(cases.len());
    for c in &cases {
        *current.lock().expect("watchdog lock") = Some((c.display().to_string(), Instant::now()));
        let r = conformance::run_case(c, &engine);
        if args.filter.is_some() {
            println!("{:<60} {}", r.name, describe(&r.outcome));
        }
        results.push(r);
    }
    *current.lock().expect("watchdog lock") = None;
    let _ = std::panic::take_hook();
    report(&results, args.verbose);
    println!(
        "({} tests in {:.1}s)",
        results.len(),
        start.elapsed().as_secs_f64()
    );
    let passing: BTreeSet<&str> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Pass)
        .map(|r| r.name.as_str())
        .collect();
    let panics: Vec<&str> = results
        .iter()
        .filter(|r| matches!(&r.outcome, Outcome::Fail(m) if m.starts_with("PANIC")))
        .map(|r| r.name.as_str())
        .collect();
    if args.bless {
        let body: String = passing.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(expected_path(&args), body)?;
        println!(
            "wrote {} passing tests to {}",
            passing.len(),
            expected_path(&args).display()
        );
    }
    if args.check {
        if !panics.is_empty() {
            bail!("{} tests panicked: {}", panics.len(), panics.join(", "));
        }
        let expected = std::fs::read_to_string(expected_path(&args))?;
        let regressed: Vec<&str> = expected
            .lines()
            .filter(|l| !l.is_empty() && !passing.contains(l))
            .collect();
        if !regressed.is_empty() {
            bail!(
                "{} tests regressed: {}",
                regressed.len(),
                regressed.join(", ")
            );
        }
        println!(
            "conformance floor holds: {} expected, {} passing",
            expected.lines().count(),
            passing.len()
        );
    }
    Ok(())
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Pass => "pass".into(),
        Outcome::Fail(m) => format!("FAIL {m}"),
        Outcome::Unsupported(m) => format!("unsupported: {m}"),
    }
}

fn report(results: &[CaseResult], verbose: bool) {
    let mut by_op: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    for r in results {
        let e = by_op.entry(r.op.as_str()).or_default();
        match &r.outcome {
            Outcome::Pass => e[0] += 1,
            Outcome::Fail(m) => {
                e[1] += 1;
                if verbose {
                    println!("FAIL {}: {m}", r.name);
                }
            }
            Outcome::Unsupported(m) => {
                e[2] += 1;
                if verbose {
                    println!("UNSUPPORTED {}: {m}", r.name);
                }
            }
        }
    }
    println!(
        "{:<32} {:>6} {:>6} {:>11}",
        "op", "passed", "failed", "unsupported"
    );
    for (op, [p, f, u]) in &by_op {
        println!("{op:<32} {p:>6} {f:>6} {u:>11}");
    }
    let t = by_op
        .values()
        .fold([0; 3], |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2]]);
    println!(
        "total: {} passed, {} failed, {} unsupported, of {}",
        t[0],
        t[1],
        t[2],
        results.len()
    );
}
