//! The MLP 4096-4096-11008-10 on a flattened 64x64 input, as torch exports
//! nn.Sequential(Flatten, Linear, ReLU, Linear, ReLU, Linear): Gemm with
//! transB=1.

use super::builder::{Builder, Dim, float, int};
use cpucc::import::onnx::proto::ModelProto;
use cpucc::ir::DType;

pub fn mlp() -> ModelProto {
    let mut b = Builder::new("mlp", 13, 4);
    let x = b.input(
        "input",
        DType::F32,
        &[Dim::Sym("batch_size"), Dim::Fixed(64), Dim::Fixed(64)],
    );
    let mut h = b.node("/flatten", "Flatten", &[&x], vec![int("axis", 1)]);
    let layers = [(4096, 4096), (4096, 11008), (11008, 10)];
    for (i, (cin, cout)) in layers.into_iter().enumerate() {
        let s = format!("/layers/layers.{}", 2 * i);
        let w = b.weight(&format!("layers.{}.weight", 2 * i), &[cout, cin], cin);
        let bias = b.uniform(&format!("layers.{}.bias", 2 * i), &[cout], -0.01, 0.01);
        h = b.node(
            &s,
            "Gemm",
            &[&h, &w, &bias],
            vec![float("alpha", 1.0), float("beta", 1.0), int("transB", 1)],
        );
        if i + 1 < layers.len() {
            h = b.node(
                &format!("/layers/layers.{}", 2 * i + 1),
                "Relu",
                &[&h],
                vec![],
            );
        }
    }
    b.output(&h, DType::F32, &[Dim::Sym("batch_size"), Dim::Fixed(10)]);
    b.finish()
}
