//! Convolutional test models: ResNet-50, MobileNetV2 and Conv2d+ReLU, laid
//! out as torch.onnx.export writes torchvision models in eval mode without
//! folding BatchNorm (opset 13; Clip takes min/max as inputs; dynamic batch).

use super::builder::{Builder, Dim, float, int, ints};
use cpucc::import::onnx::proto::ModelProto;
use cpucc::ir::DType;

/// Conv + BatchNormalization (+ ReLU), as nn.Sequential(conv, bn, relu).
struct ConvBn {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    groups: usize,
    /// Scale of BN's gamma: small for the last BN of a residual branch, so
    /// that random-weight activations stay bounded through 50 layers.
    gamma: f64,
}

fn conv_bn(b: &mut Builder, scope: &str, x: &str, c: ConvBn) -> String {
    let pad = (c.k / 2) as i64;
    let fan_in = c.cin / c.groups * c.k * c.k;
    let w = b.weight(
        &format!("{scope}.conv.weight"),
        &[c.cout, c.cin / c.groups, c.k, c.k],
        fan_in,
    );
    let y = b.node(
        scope,
        "Conv",
        &[x, &w],
        vec![
            ints("dilations", &[1, 1]),
            int("group", c.groups as i64),
            ints("kernel_shape", &[c.k as i64, c.k as i64]),
            ints("pads", &[pad, pad, pad, pad]),
            ints("strides", &[c.stride as i64, c.stride as i64]),
        ],
    );
    let n = c.cout;
    let gamma = b.uniform(
        &format!("{scope}.bn.weight"),
        &[n],
        0.5 * c.gamma,
        1.0 * c.gamma,
    );
    let beta = b.uniform(&format!("{scope}.bn.bias"), &[n], -0.1, 0.1);
    let mean = b.uniform(&format!("{scope}.bn.running_mean"), &[n], -0.1, 0.1);
    let var = b.uniform(&format!("{scope}.bn.running_var"), &[n], 0.5, 1.5);
    b.node(
        scope,
        "BatchNormalization",
        &[&y, &gamma, &beta, &mean, &var],
        vec![float("epsilon", 1e-5), float("momentum", 0.9)],
    )
}

fn relu(b: &mut Builder, scope: &str, x: &str) -> String {
    b.node(scope, "Relu", &[x], vec![])
}

fn head(b: &mut Builder, x: &str, channels: usize) -> String {
    let p = b.node("", "GlobalAveragePool", &[x], vec![]);
    let f = b.node("", "Flatten", &[&p], vec![int("axis", 1)]);
    let w = b.weight("fc.weight", &[1000, channels], channels);
    let bias = b.uniform("fc.bias", &[1000], -0.01, 0.01);
    b.node(
        "/fc",
        "Gemm",
        &[&f, &w, &bias],
        vec![float("alpha", 1.0), float("beta", 1.0), int("transB", 1)],
    )
}

fn image_input(b: &mut Builder) -> String {
    b.input(
        "input",
        DType::F32,
        &[
            Dim::Sym("batch_size"),
            Dim::Fixed(3),
            Dim::Fixed(224),
            Dim::Fixed(224),
        ],
    )
}

pub fn resnet50() -> ModelProto {
    let mut b = Builder::new("resnet50", 13, 50);
    let x = image_input(&mut b);
    let std = |cin, cout, k, stride| ConvBn {
        cin,
        cout,
        k,
        stride,
        groups: 1,
        gamma: 1.0,
    };
    let mut x = conv_bn(&mut b, "/conv1", &x, std(3, 64, 7, 2));
    x = relu(&mut b, "/relu", &x);
    x = b.node(
        "/maxpool",
        "MaxPool",
        &[&x],
        vec![
            int("ceil_mode", 0),
            ints("kernel_shape", &[3, 3]),
            ints("pads", &[1, 1, 1, 1]),
            ints("strides", &[2, 2]),
        ],
    );
    let mut cin = 64;
    for (li, (blocks, width)) in [(3, 64), (4, 128), (6, 256), (3, 512)]
        .into_iter()
        .enumerate()
    {
        for bi in 0..blocks {
            let s = format!("/layer{}/layer{}.{bi}", li + 1, li + 1);
            let stride = if bi == 0 && li > 0 { 2 } else { 1 };
            let cout = width * 4;
            let mut y = conv_bn(&mut b, &format!("{s}/conv1"), &x, std(cin, width, 1, 1));
            y = relu(&mut b, &format!("{s}/relu"), &y);
            y = conv_bn(
                &mut b,
                &format!("{s}/conv2"),
                &y,
                std(width, width, 3, stride),
            );
            y = relu(&mut b, &format!("{s}/relu_1"), &y);
            y = conv_bn(
                &mut b,
                &format!("{s}/conv3"),
                &y,
                ConvBn {
                    gamma: 0.2,
                    ..std(width, cout, 1, 1)
                },
            );
            let shortcut = if bi == 0 {
                conv_bn(
                    &mut b,
                    &format!("{s}/downsample"),
                    &x,
                    std(cin, cout, 1, stride),
                )
            } else {
                x.clone()
            };
            let sum = b.node(&s, "Add", &[&y, &shortcut], vec![]);
            x = relu(&mut b, &format!("{s}/relu_2"), &sum);
            cin = cout;
        }
    }
    let y = head(&mut b, &x, 2048);
    b.output(&y, DType::F32, &[Dim::Sym("batch_size"), Dim::Fixed(1000)]);
    b.finish()
}

fn relu6(b: &mut Builder, scope: &str, x: &str) -> String {
    let lo = b.const_f32(&format!("{scope}.min"), 0.0);
    let hi = b.const_f32(&format!("{scope}.max"), 6.0);
    b.node(scope, "Clip", &[x, &lo, &hi], vec![])
}

pub fn mobilenet_v2() -> ModelProto {
    let mut b = Builder::new("mobilenet_v2", 13, 2);
    let x = image_input(&mut b);
    let cb = |cin, cout, k, stride, groups| ConvBn {
        cin,
        cout,
        k,
        stride,
        groups,
        gamma: 1.0,
    };
    let mut x = conv_bn(&mut b, "/features/features.0", &x, cb(3, 32, 3, 2, 1));
    x = relu6(&mut b, "/features/features.0/act", &x);
    let mut cin = 32;
    let mut idx = 1;
    for (t, c, n, s) in [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ] {
        for i in 0..n {
            let scope = format!("/features/features.{idx}/conv");
            let stride = if i == 0 { s } else { 1 };
            let hidden = cin * t;
            let mut y = x.clone();
            if t != 1 {
                y = conv_bn(
                    &mut b,
                    &format!("{scope}/conv.0"),
                    &y,
                    cb(cin, hidden, 1, 1, 1),
                );
                y = relu6(&mut b, &format!("{scope}/conv.0/act"), &y);
            }
            y = conv_bn(
                &mut b,
                &format!("{scope}/conv.1"),
                &y,
                cb(hidden, hidden, 3, stride, hidden),
            );
            y = relu6(&mut b, &format!("{scope}/conv.1/act"), &y);
            y = conv_bn(
                &mut b,
                &format!("{scope}/conv.2"),
                &y,
                ConvBn {
                    gamma: 0.5,
                    ..cb(hidden, c, 1, 1, 1)
                },
            );
            x = if stride == 1 && cin == c {
                b.node(
                    &format!("/features/features.{idx}"),
                    "Add",
                    &[&x, &y],
                    vec![],
                )
            } else {
                y
            };
            cin = c;
            idx += 1;
        }
    }
    x = conv_bn(&mut b, "/features/features.18", &x, cb(320, 1280, 1, 1, 1));
    x = relu6(&mut b, "/features/features.18/act", &x);
    let y = head(&mut b, &x, 1280);
    b.output(&y, DType::F32, &[Dim::Sym("batch_size"), Dim::Fixed(1000)]);
    b.finish()
}

/// Conv2d(16, 33, 3, stride=2) + ReLU on a 20x16x50x100 input.
pub fn conv_relu() -> ModelProto {
    let mut b = Builder::new("conv_relu", 13, 3);
    let x = b.input(
        "input",
        DType::F32,
        &[
            Dim::Fixed(20),
            Dim::Fixed(16),
            Dim::Fixed(50),
            Dim::Fixed(100),
        ],
    );
    let w = b.weight("conv.weight", &[33, 16, 3, 3], 16 * 9);
    let bias = b.uniform("conv.bias", &[33], -0.1, 0.1);
    let y = b.node(
        "/conv",
        "Conv",
        &[&x, &w, &bias],
        vec![
            ints("dilations", &[1, 1]),
            int("group", 1),
            ints("kernel_shape", &[3, 3]),
            ints("pads", &[0, 0, 0, 0]),
            ints("strides", &[2, 2]),
        ],
    );
    let y = b.node("/relu", "Relu", &[&y], vec![]);
    let dims = [20, 33, 24, 49].map(Dim::Fixed);
    b.output(&y, DType::F32, &dims);
    b.finish()
}
