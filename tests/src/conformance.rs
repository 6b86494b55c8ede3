//! The ONNX backend node-test runner: imports each test model, runs it
//! through the reference interpreter and compares with the expected outputs
//! at the test's own tolerances (numpy's `assert_allclose` rule:
//! |actual - expected| <= atol + rtol * |expected|).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use cpucc::codegen::jit::JitModel;
use cpucc::codegen::{Dumps, Target, artifact};
use cpucc::cross;
use cpucc::import::{self, ImportOptions, onnx::proto::ModelProto};
use cpucc::ir::{DType, Graph, Tensor};
use cpucc::{Error, interp, io};
use prost::Message;

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Unsupported(String),
}

#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: String,
    /// The op under test (single-node cases), or a group for expanded
    /// function bodies.
    pub op: String,
    pub outcome: Outcome,
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What runs the test models.
#[derive(Clone, Debug)]
pub enum Engine {
    /// The reference interpreter.
    Interp,
    /// Native code for the host, compiled in-process.
    Jit,
    /// An object for another target, linked with the C harness and run
    /// (under qemu for aarch64).
    Cross(Target),
}

impl Engine {
    pub fn run(&self, graph: &Graph, inputs: &[Tensor]) -> cpucc::Result<Vec<Tensor>> {
        match self {
            Engine::Interp => interp::run(graph, inputs),
            Engine::Jit => {
                let m = JitModel::compile(graph, &Target::host(), &mut Dumps::default())?;
                m.run(inputs)
            }
            Engine::Cross(t) => {
                let dir = std::env::temp_dir().join(format!(
                    "cpucc-conf-{}-{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&dir).map_err(|e| cpucc::Error::io(&dir, e))?;
                let art = artifact::compile(graph, t, "model", &mut Dumps::default())?;
                let (obj, hdr) = (dir.join("model.o"), dir.join("model.h"));
                std::fs::write(&obj, &art.object).map_err(|e| cpucc::Error::io(&obj, e))?;
                std::fs::write(&hdr, &art.header).map_err(|e| cpucc::Error::io(&hdr, e))?;
                let named: Vec<(String, Tensor)> = graph
                    .inputs
                    .iter()
                    .zip(inputs)
                    .map(|(&v, t)| (graph.value(v).name.clone(), t.clone()))
                    .collect();
                let out = cross::run_foreign(&obj, &hdr, "model", t, &named, &dir);
                let _ = std::fs::remove_dir_all(&dir);
                out
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct Meta {
    op: Option<String>,
    rtol: f64,
    atol: f64,
    non_tensor: bool,
}

/// Every case directory under `root` whose name contains `filter`, sorted.
pub fn cases(root: &Path, filter: Option<&str>) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("meta.json").exists())
        .filter(|p| {
            filter.is_none_or(|f| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(f))
            })
        })
        .collect();
    v.sort();
    Ok(v)
}

pub fn run_case(dir: &Path, engine: &Engine) -> CaseResult {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (op, outcome) = match catch_unwind(AssertUnwindSafe(|| run_inner(dir, engine))) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => ("?".to_string(), Outcome::Fail(format!("harness: {e}"))),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            ("?".to_string(), Outcome::Fail(format!("PANIC: {msg}")))
        }
    };
    CaseResult { name, op, outcome }
}

fn run_inner(dir: &Path, engine: &Engine) -> anyhow::Result<(String, Outcome)> {
    let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join("meta.json"))?)?;
    let op = meta.op.clone().unwrap_or_else(|| "(expanded)".to_string());
    if meta.non_tensor {
        return Ok((
            op,
            Outcome::Unsupported("sequence, map or optional values".into()),
        ));
    }
    let model_path = dir.join("model.onnx");
    let model = ModelProto::decode(std::fs::read(&model_path)?.as_slice())?;
    let graph = model.graph.unwrap_or_default();
    let init: std::collections::HashSet<_> = graph
        .initializer
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    let input_names: Vec<String> = graph
        .input
        .iter()
        .map(|v| v.name().to_string())
        .filter(|n| !init.contains(n))
        .collect();
    let ds = dir.join("test_data_set_0");
    let read_all = |kind: &str| -> anyhow::Result<Vec<Tensor>> {
        let mut v = Vec::new();
        for j in 0.. {
            let p = ds.join(format!("{kind}_{j}.pb"));
            if !p.exists() {
                break;
            }
            v.push(io::read_tensor(&p)?);
        }
        Ok(v)
    };
    let (inputs, expected) = match (read_all("input"), read_all("output")) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => {
            let e = e
                .downcast::<Error>()
                .map(|e| e.to_string())
                .unwrap_or_else(|e| e.to_string());
            return Ok((op, Outcome::Unsupported(format!("test data: {e}"))));
        }
    };
    let named: HashMap<String, Tensor> = input_names
        .iter()
        .cloned()
        .zip(inputs.iter().cloned())
        .collect();

    // A static-shape compiler needs the values of inputs that decide shapes:
    // retry with integer inputs bound as constants, then with all of them.
    let mut bound: Vec<&str> = Vec::new();
    let graph = loop {
        let opts = ImportOptions {
            bind: bound
                .iter()
                .map(|n| (n.to_string(), named[*n].clone()))
                .collect(),
            ..ImportOptions::default()
        };
        match import::load(&model_path, &opts) {
            Ok(g) => break g,
            Err(Error::NeedsConstant { .. }) if bound.len() < input_names.len() => {
                let ints: Vec<&str> = input_names
                    .iter()
                    .filter(|n| !named[*n].dtype().is_float())
                    .map(String::as_str)
                    .collect();
                bound = if bound.is_empty() && !ints.is_empty() {
                    ints
                } else {
                    input_names.iter().map(String::as_str).collect()
                };
            }
            Err(e) => return Ok((op, classify(e))),
        }
    };
    let run_inputs: Vec<Tensor> = input_names
        .iter()
        .filter(|n| !bound.contains(&n.as_str()))
        .map(|n| named[n].clone())
        .collect();
    let actual = match engine.run(&graph, &run_inputs) {
        Ok(a) => a,
        Err(e) => return Ok((op, classify(e))),
    };
    if actual.len() != expected.len() {
        return Ok((
            op,
            Outcome::Fail(format!(
                "{} outputs, expected {}",
                actual.len(),
                expected.len()
            )),
        ));
    }
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        if let Err(m) = compare(a, e, meta.rtol, meta.atol) {
            return Ok((op, Outcome::Fail(format!("output {i}: {m}"))));
        }
    }
    Ok((op, Outcome::Pass))
}

fn classify(e: Error) -> Outcome {
    match e {
        Error::Unsupported(m) => Outcome::Unsupported(m),
        e => Outcome::Fail(e.to_string()),
    }
}

/// Compares like `np.testing.assert_allclose`: NaNs must match NaNs, and
/// integers and bools compare exactly.
pub fn compare(a: &Tensor, e: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if a.dtype() != e.dtype() {
        return Err(format!("dtype {} != expected {}", a.dtype(), e.dtype()));
    }
    if a.shape() != e.shape() {
        return Err(format!("shape {:?} != expected {:?}", a.shape(), e.shape()));
    }
    let exact = !a.dtype().is_float();
    let (av, ev) = (a.to_f64_vec(), e.to_f64_vec());
    let (ai, ei) = if exact && matches!(a.dtype(), DType::I64 | DType::U64) {
        (exact_ints(a), exact_ints(e))
    } else {
        (Vec::new(), Vec::new())
    };
    for k in 0..av.len() {
        let (x, y) = (av[k], ev[k]);
        let ok = if !ai.is_empty() {
            ai[k] == ei[k]
        } else if exact {
            x == y
        } else if x.is_nan() || y.is_nan() {
            x.is_nan() && y.is_nan()
        } else if x.is_infinite() || y.is_infinite() {
            x == y
        } else {
            (x - y).abs() <= atol + rtol * y.abs()
        };
        if !ok {
            return Err(format!(
                "element {k}: {x} != expected {y} (rtol {rtol}, atol {atol})"
            ));
        }
    }
    Ok(())
}

fn exact_ints(t: &Tensor) -> Vec<i128> {
    match t {
        Tensor::I64(a) => a.iter().map(|&x| x as i128).collect(),
        Tensor::U64(a) => a.iter().map(|&x| x as i128).collect(),
        _ => Vec::new(),
    }
}
