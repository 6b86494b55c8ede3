//! Compiles the shipped example model to native code for the machine this
//! builds on, archives the object as a static library for rustc to link,
//! and writes the generated Rust bindings into OUT_DIR.

use std::path::PathBuf;
use std::process::Command;

use cpucc::codegen::{Dumps, Target, artifact};
use cpucc::import::{self, ImportOptions};
use cpucc::passes;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let model = manifest.join("../models/conv_relu.onnx");
    println!("cargo:rerun-if-changed={}", model.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    let mut g = import::load(&model, &ImportOptions::default()).expect("import the model");
    passes::run_pipeline(&mut g, passes::DEFAULT_PIPELINE).expect("optimize the model");
    let art = artifact::compile(&g, &Target::host(), "conv_relu", &mut Dumps::default())
        .expect("compile the model");
    std::fs::write(out.join("conv_relu.o"), &art.object).unwrap();
    std::fs::write(out.join("conv_relu.rs"), &art.rust).unwrap();
    let status = Command::new("ar")
        .args(["crs", "libconv_relu.a", "conv_relu.o"])
        .current_dir(&out)
        .status()
        .expect("run ar");
    assert!(status.success(), "ar failed");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=conv_relu");
}
