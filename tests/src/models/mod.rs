//! Test and benchmark models built in code (no downloads): the shapes and
//! idioms torch.onnx.export writes, with fixed-seed random weights.

mod bert;
mod builder;
mod cnn;
mod mlp;

pub use builder::{Builder, Dim};
use cpucc::import::onnx::proto::ModelProto;

pub struct TestModel {
    pub name: &'static str,
    pub build: fn() -> ModelProto,
    /// Shapes for the inputs' symbolic dimensions (`--shape` arguments).
    pub shapes: &'static [(&'static str, &'static [usize])],
}

const IMAGE: &[(&str, &[usize])] = &[("input", &[1, 3, 224, 224])];
const TOKENS: &[usize] = &[1, 128];

pub const ALL: &[TestModel] = &[
    TestModel {
        name: "conv_relu",
        build: cnn::conv_relu,
        shapes: &[],
    },
    TestModel {
        name: "mlp",
        build: mlp::mlp,
        shapes: &[("input", &[32, 64, 64])],
    },
    TestModel {
        name: "mobilenet_v2",
        build: cnn::mobilenet_v2,
        shapes: IMAGE,
    },
    TestModel {
        name: "resnet50",
        build: cnn::resnet50,
        shapes: IMAGE,
    },
    TestModel {
        name: "bert_base",
        build: bert::bert_base,
        shapes: &[
            ("input_ids", TOKENS),
            ("attention_mask", TOKENS),
            ("token_type_ids", TOKENS),
        ],
    },
];

pub fn by_name(name: &str) -> Option<&'static TestModel> {
    ALL.iter().find(|m| m.name == name)
}

/// The model shipped in the repo for the README's first command.
pub const EXAMPLE_PATH: &str = "examples/models/conv_relu.onnx";

pub fn example() -> &'static TestModel {
    by_name("conv_relu").expect("conv_relu is in ALL")
}
