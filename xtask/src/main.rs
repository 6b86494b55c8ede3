//! Project tasks: `cargo xtask ci | conformance | models | check-ort`.

mod conformance;
mod venv;

use clap::Parser;

#[derive(Parser)]
#[command(name = "xtask")]
enum Task {
    /// Run the ONNX backend node tests through the interpreter.
    Conformance(conformance::Args),
}

fn main() -> anyhow::Result<()> {
    match Task::parse() {
        Task::Conformance(a) => conformance::main(a),
    }
}
