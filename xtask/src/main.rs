//! Project tasks: `cargo xtask ci | conformance | models | check-ort | bench |
//! torchscript-fixtures`.

mod bench;
mod bench_aarch64;
mod check_ort;
mod ci;
mod conformance;
mod examples;
mod models;
mod peak;
mod torch_fixtures;
mod venv;

use clap::Parser;

#[derive(Parser)]
#[command(name = "xtask")]
enum Task {
    /// Formatting, clippy, all tests, the conformance floor and the
    /// onnxruntime comparison: what `.ci/run` runs.
    Ci(ci::Args),
    /// Run the ONNX backend node tests through the interpreter or native
    /// code.
    Conformance(conformance::Args),
    /// Build and run the C and Rust example apps that embed a model.
    Examples,
    /// Write the test models (ResNet-50, MobileNetV2, BERT-base, MLP,
    /// conv_relu) to target/models/.
    Models(models::Args),
    /// Compare `cpucc run` with onnxruntime on every test model.
    CheckOrt(check_ort::Args),
    /// Time cpucc against onnxruntime (and OpenVINO) at 1 and 2 threads
    /// beside the measured FMA peak; never fails on speed.
    Bench(bench::Args),
    /// Write the torch importer's fixtures (.pt, .pt2, .npy) with torch from
    /// PyPI; `--big` checks full-size models instead (not committed).
    TorchscriptFixtures(torch_fixtures::Args),
}

fn main() -> anyhow::Result<()> {
    match Task::parse() {
        Task::Ci(a) => ci::main(a),
        Task::Conformance(a) => conformance::main(a),
        Task::Examples => examples::main(),
        Task::Models(a) => models::main(a),
        Task::CheckOrt(a) => check_ort::main(a),
        Task::Bench(a) => bench::main(a),
        Task::TorchscriptFixtures(a) => torch_fixtures::main(a),
    }
}
