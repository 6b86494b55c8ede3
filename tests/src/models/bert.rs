//! A BERT-base encoder (12 layers, hidden 768, 12 heads, seq 128) as
//! torch.onnx.export writes HuggingFace's BertModel at opset 13: Linear as
//! MatMul + Add, LayerNorm decomposed into ReduceMean/Sub/Pow/Sqrt/Div, GELU
//! in its erf form, and Shape/Gather/Unsqueeze/Concat chains feeding the
//! head-splitting Reshapes.

use super::builder::{Builder, Dim, int, ints};
use cpucc::import::onnx::proto::ModelProto;
use cpucc::ir::{DType, Tensor};

const HIDDEN: usize = 768;
const HEADS: usize = 12;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 3072;
const LAYERS: usize = 12;
const VOCAB: usize = 30522;
const MAX_POS: usize = 512;
/// HF initializes weights from N(0, 0.02); a uniform with that deviation.
const W: f64 = 0.0346;

fn linear(b: &mut Builder, scope: &str, x: &str, cin: usize, cout: usize) -> String {
    let w = b.uniform(&format!("{scope}.weight_t"), &[cin, cout], -W, W);
    let bias = b.uniform(&format!("{scope}.bias"), &[cout], -W, W);
    let y = b.node(scope, "MatMul", &[x, &w], vec![]);
    b.node(scope, "Add", &[&bias, &y], vec![])
}

fn layer_norm(b: &mut Builder, scope: &str, x: &str) -> String {
    let mean = b.node(scope, "ReduceMean", &[x], vec![ints("axes", &[-1])]);
    let d = b.node(scope, "Sub", &[x, &mean], vec![]);
    let two = b.const_f32(&format!("{scope}.two"), 2.0);
    let sq = b.node(scope, "Pow", &[&d, &two], vec![]);
    let var = b.node(scope, "ReduceMean", &[&sq], vec![ints("axes", &[-1])]);
    let eps = b.const_f32(&format!("{scope}.eps"), 1e-12);
    let ve = b.node(scope, "Add", &[&var, &eps], vec![]);
    let sd = b.node(scope, "Sqrt", &[&ve], vec![]);
    let n = b.node(scope, "Div", &[&d, &sd], vec![]);
    let g = b.uniform(&format!("{scope}.weight"), &[HIDDEN], 0.9, 1.1);
    let beta = b.uniform(&format!("{scope}.bias"), &[HIDDEN], -0.05, 0.05);
    let y = b.node(scope, "Mul", &[&n, &g], vec![]);
    b.node(scope, "Add", &[&y, &beta], vec![])
}

/// `Unsqueeze(Gather(Shape(x), i), 0)`: one dimension of x as a 1-D tensor.
fn dim_of(b: &mut Builder, scope: &str, x: &str, i: i64) -> String {
    let s = b.node(scope, "Shape", &[x], vec![]);
    let idx = b.init(&format!("{scope}.dim{i}"), &Tensor::scalar(i));
    let d = b.node(scope, "Gather", &[&s, &idx], vec![int("axis", 0)]);
    let zero = b.const_i64(&format!("{scope}.axes0"), &[0]);
    b.node(scope, "Unsqueeze", &[&d, &zero], vec![])
}

fn split_heads(b: &mut Builder, scope: &str, x: &str, perm: &[i64]) -> String {
    let bs = dim_of(b, scope, x, 0);
    let sl = dim_of(b, scope, x, 1);
    let heads = b.const_i64(&format!("{scope}.heads"), &[HEADS as i64]);
    let hd = b.const_i64(&format!("{scope}.head_dim"), &[HEAD_DIM as i64]);
    let shape = b.node(
        scope,
        "Concat",
        &[&bs, &sl, &heads, &hd],
        vec![int("axis", 0)],
    );
    let r = b.node(scope, "Reshape", &[x, &shape], vec![]);
    b.node(scope, "Transpose", &[&r], vec![ints("perm", perm)])
}

fn attention(b: &mut Builder, scope: &str, h: &str, mask: &str) -> String {
    let q = linear(b, &format!("{scope}/self/query"), h, HIDDEN, HIDDEN);
    let k = linear(b, &format!("{scope}/self/key"), h, HIDDEN, HIDDEN);
    let v = linear(b, &format!("{scope}/self/value"), h, HIDDEN, HIDDEN);
    let q = split_heads(b, &format!("{scope}/self/q"), &q, &[0, 2, 1, 3]);
    let kt = split_heads(b, &format!("{scope}/self/k"), &k, &[0, 2, 3, 1]);
    let v = split_heads(b, &format!("{scope}/self/v"), &v, &[0, 2, 1, 3]);
    let s = format!("{scope}/self");
    let scores = b.node(&s, "MatMul", &[&q, &kt], vec![]);
    let scale = b.const_f32(&format!("{s}.scale"), (HEAD_DIM as f32).sqrt());
    let scores = b.node(&s, "Div", &[&scores, &scale], vec![]);
    let scores = b.node(&s, "Add", &[&scores, mask], vec![]);
    let probs = b.node(&s, "Softmax", &[&scores], vec![int("axis", -1)]);
    let ctx = b.node(&s, "MatMul", &[&probs, &v], vec![]);
    let ctx = b.node(&s, "Transpose", &[&ctx], vec![ints("perm", &[0, 2, 1, 3])]);
    let bs = dim_of(b, &s, &ctx, 0);
    let sl = dim_of(b, &s, &ctx, 1);
    let hidden = b.const_i64(&format!("{s}.hidden"), &[HIDDEN as i64]);
    let shape = b.node(&s, "Concat", &[&bs, &sl, &hidden], vec![int("axis", 0)]);
    let ctx = b.node(&s, "Reshape", &[&ctx, &shape], vec![]);
    let o = linear(b, &format!("{scope}/output/dense"), &ctx, HIDDEN, HIDDEN);
    let o = b.node(&format!("{scope}/output"), "Add", &[&o, h], vec![]);
    layer_norm(b, &format!("{scope}/output/LayerNorm"), &o)
}

fn gelu(b: &mut Builder, scope: &str, x: &str) -> String {
    let sqrt2 = b.const_f32(&format!("{scope}.sqrt2"), std::f32::consts::SQRT_2);
    let d = b.node(scope, "Div", &[x, &sqrt2], vec![]);
    let e = b.node(scope, "Erf", &[&d], vec![]);
    let one = b.const_f32(&format!("{scope}.one"), 1.0);
    let a = b.node(scope, "Add", &[&e, &one], vec![]);
    let m = b.node(scope, "Mul", &[x, &a], vec![]);
    let half = b.const_f32(&format!("{scope}.half"), 0.5);
    b.node(scope, "Mul", &[&m, &half], vec![])
}

pub fn bert_base() -> ModelProto {
    let mut b = Builder::new("bert_base", 13, 7);
    let dims = [Dim::Sym("batch_size"), Dim::Sym("sequence_length")];
    let ids = b.input("input_ids", DType::I64, &dims);
    let mask = b.input("attention_mask", DType::I64, &dims);
    let types = b.input("token_type_ids", DType::I64, &dims);

    let e = "/embeddings";
    let word_w = b.uniform("embeddings.word_embeddings.weight", &[VOCAB, HIDDEN], -W, W);
    let type_w = b.uniform(
        "embeddings.token_type_embeddings.weight",
        &[2, HIDDEN],
        -W,
        W,
    );
    let pos_w = b.uniform(
        "embeddings.position_embeddings.weight",
        &[MAX_POS, HIDDEN],
        -W,
        W,
    );
    let pos_ids: Vec<i64> = (0..MAX_POS as i64).collect();
    let pos_ids = b.init(
        "embeddings.position_ids",
        &Tensor::from_vec(&[1, MAX_POS], pos_ids).expect("1xN"),
    );
    let word = b.node(e, "Gather", &[&word_w, &ids], vec![int("axis", 0)]);
    let tt = b.node(e, "Gather", &[&type_w, &types], vec![int("axis", 0)]);
    let x = b.node(e, "Add", &[&word, &tt], vec![]);
    let seq = dim_of(&mut b, e, &ids, 1);
    let start = b.const_i64("embeddings.slice_start", &[0]);
    let axis1 = b.const_i64("embeddings.slice_axis", &[1]);
    let step = b.const_i64("embeddings.slice_step", &[1]);
    let pos = b.node(e, "Slice", &[&pos_ids, &start, &seq, &axis1, &step], vec![]);
    let pe = b.node(e, "Gather", &[&pos_w, &pos], vec![int("axis", 0)]);
    let x = b.node(e, "Add", &[&x, &pe], vec![]);
    let mut h = layer_norm(&mut b, "/embeddings/LayerNorm", &x);

    // (1 - mask) * finfo(f32).min, broadcast over heads and query positions.
    let ax1 = b.const_i64("mask.axis1", &[1]);
    let ax2 = b.const_i64("mask.axis2", &[2]);
    let m = b.node("", "Unsqueeze", &[&mask, &ax1], vec![]);
    let m = b.node("", "Unsqueeze", &[&m, &ax2], vec![]);
    let m = b.node(
        "",
        "Cast",
        &[&m],
        vec![int("to", DType::F32.onnx_code() as i64)],
    );
    let one = b.const_f32("mask.one", 1.0);
    let inv = b.node("", "Sub", &[&one, &m], vec![]);
    let min = b.const_f32("mask.min", f32::MIN);
    let mask = b.node("", "Mul", &[&inv, &min], vec![]);

    for l in 0..LAYERS {
        let s = format!("/encoder/layer.{l}");
        h = attention(&mut b, &format!("{s}/attention"), &h, &mask);
        let i = linear(&mut b, &format!("{s}/intermediate/dense"), &h, HIDDEN, FFN);
        let i = gelu(&mut b, &format!("{s}/intermediate/intermediate_act_fn"), &i);
        let o = linear(&mut b, &format!("{s}/output/dense"), &i, FFN, HIDDEN);
        let o = b.node(&format!("{s}/output"), "Add", &[&o, &h], vec![]);
        h = layer_norm(&mut b, &format!("{s}/output/LayerNorm"), &o);
    }
    let first = b.init("pooler.first", &Tensor::scalar(0i64));
    let cls = b.node("/pooler", "Gather", &[&h, &first], vec![int("axis", 1)]);
    let pw = b.uniform("pooler.dense.weight", &[HIDDEN, HIDDEN], -W, W);
    let pb = b.uniform("pooler.dense.bias", &[HIDDEN], -W, W);
    let p = b.node(
        "/pooler/dense",
        "Gemm",
        &[&cls, &pw, &pb],
        vec![int("transB", 1)],
    );
    let p = b.node("/pooler/activation", "Tanh", &[&p], vec![]);
    b.output(&h, DType::F32, &[dims[0], dims[1], Dim::Fixed(HIDDEN)]);
    b.output(&p, DType::F32, &[dims[0], Dim::Fixed(HIDDEN)]);
    b.finish()
}
