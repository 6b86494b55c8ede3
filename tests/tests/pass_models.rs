//! The pass pipeline on the test models: ResNet-50 and MobileNetV2 lose
//! every BatchNormalization, the memory plan of ResNet-50 (batch 1) needs at
//! most 30% of the sum of its intermediate tensors, and the interpreter's
//! outputs before and after the pipeline agree within 1e-4 of each output's
//! max magnitude. Run with `--nocapture` to see the figures.

use cpucc::import::{ImportOptions, onnx};
use cpucc::interp;
use cpucc::ir::{Graph, Tensor};
use cpucc::passes::{self, plan};
use cpucc::random::SplitMix64;
use cpucc_tests::models;
use prost::Message;

fn load(name: &str) -> Graph {
    let m = models::by_name(name).unwrap();
    let mut opts = ImportOptions::default();
    for (input, dims) in m.shapes {
        opts.shapes.insert(input.to_string(), dims.to_vec());
    }
    onnx::load_bytes(&(m.build)().encode_to_vec(), None, &opts).unwrap()
}

fn count(g: &Graph, op: &str) -> usize {
    g.node_indices()
        .into_iter()
        .filter(|&n| g.node(n).op == op)
        .count()
}

fn max_rel_diff(want: &[Tensor], got: &[Tensor]) -> f64 {
    want.iter()
        .zip(got)
        .map(|(w, g)| {
            assert_eq!(w.shape(), g.shape());
            let (w, g) = (w.to_f64_vec(), g.to_f64_vec());
            let mag = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let d = w
                .iter()
                .zip(&g)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            d / mag
        })
        .fold(0.0, f64::max)
}

/// Runs the default pipeline, prints the figures and checks the outputs.
fn check(name: &str) -> Graph {
    let g = load(name);
    let mut h = g.clone();
    let reports = passes::run_pipeline(&mut h, passes::DEFAULT_PIPELINE).unwrap();
    let mut r = SplitMix64::new(42);
    let inputs: Vec<Tensor> = g
        .inputs
        .iter()
        .map(|&i| {
            let ty = &g.value(i).ty;
            r.tensor(ty.dtype, &ty.shape)
        })
        .collect();
    let want = interp::run(&g, &inputs).unwrap();
    let got = interp::run(&h, &inputs).unwrap();
    let diff = max_rel_diff(&want, &got);
    let p = plan::plan(&h).unwrap();
    let before = passes::PassReport::measure("(import)", &g, Default::default());
    let mut all = vec![before];
    all.extend(reports);
    println!(
        "{name}: BatchNormalization {} -> {}; max relative output difference {diff:.2e}",
        count(&g, "BatchNormalization"),
        count(&h, "BatchNormalization")
    );
    print!("{}", passes::report_table(&all, &p));
    assert!(
        diff <= 1e-4,
        "{name}: outputs differ by {diff:e} of their max magnitude"
    );
    h
}

#[test]
fn resnet50() {
    let h = check("resnet50");
    assert_eq!(count(&h, "BatchNormalization"), 0);
    let p = plan::plan(&h).unwrap();
    assert!(
        p.arena_bytes * 10 <= p.intermediate_bytes * 3,
        "arena {} bytes is over 30% of {} intermediate bytes",
        p.arena_bytes,
        p.intermediate_bytes
    );
}

#[test]
fn mobilenet_v2() {
    let h = check("mobilenet_v2");
    assert_eq!(count(&h, "BatchNormalization"), 0);
}

#[test]
fn bert_base() {
    check("bert_base");
}
